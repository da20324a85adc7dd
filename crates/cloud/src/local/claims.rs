//! Host-wide claims on shared resources (network indexes, external addresses): several
//! providers with their own state directories may share one host, so each resource is
//! an `O_EXCL` file under `/run/korvet/claims` naming its owner (a state directory and
//! a key there). A claim whose owner has no record of it is stale and may be taken over;
//! claims are made under one `flock`, and the owner's record is written before the lock
//! is released, so that no other provider can find the claim stale meanwhile.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub(crate) const CLAIMS_DIR: &str = "/run/korvet/claims";

/// Who holds a claim: a provider's state directory and a key within it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub state_dir: PathBuf,
    pub key: String,
}

impl Owner {
    fn text(&self) -> String {
        format!("{}\n{}\n", self.state_dir.display(), self.key)
    }

    fn parse(text: &str) -> Option<Owner> {
        let mut lines = text.lines();
        let (state_dir, key) = (lines.next()?, lines.next()?);
        Some(Owner {
            state_dir: PathBuf::from(state_dir),
            key: key.to_string(),
        })
    }
}

fn path(name: &str) -> PathBuf {
    Path::new(CLAIMS_DIR).join(name)
}

/// Claims the first free name of `candidates` for `owner`, then calls `record` (which
/// writes the owner's own record of it) while still holding the lock. `still_held`
/// says whether a claim's recorded owner still has it. `None` when every candidate is
/// taken.
pub(crate) fn claim_first<T>(
    candidates: impl IntoIterator<Item = (T, String)>,
    owner: &Owner,
    still_held: impl Fn(&Owner, &T) -> bool,
    record: impl FnOnce(&T) -> io::Result<()>,
) -> io::Result<Option<T>> {
    std::fs::create_dir_all(CLAIMS_DIR)?;
    let lock_file = File::create(path(".lock"))?;
    let _flock = Flock::lock(&lock_file)?;
    for (item, name) in candidates {
        let claim = path(&name);
        let free = match OpenOptions::new().write(true).create_new(true).open(&claim) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let stale = is_stale(&claim, &item, &still_held);
                if stale {
                    tracing::info!(claim = %claim.display(), "taking over a stale claim");
                }
                stale
            }
            Err(e) => return Err(e),
        };
        if !free {
            continue;
        }
        write_synced(&claim, owner.text().as_bytes())?;
        record(&item)?;
        return Ok(Some(item));
    }
    Ok(None)
}

fn is_stale<T>(claim: &Path, item: &T, still_held: &impl Fn(&Owner, &T) -> bool) -> bool {
    let Ok(text) = std::fs::read_to_string(claim) else {
        return false;
    };
    match Owner::parse(&text) {
        Some(owner) => !still_held(&owner, item),
        // Empty: torn by a claimer that crashed between create and write (claims are
        // made under the lock, so nobody is writing it now).
        None => text.is_empty(),
    }
}

/// Puts our claim back where it is missing (after a host reboot /run is empty again).
pub(crate) fn ensure(name: &str, owner: &Owner) -> io::Result<()> {
    let claim = path(name);
    match std::fs::read_to_string(&claim) {
        Ok(text) if text == owner.text() => Ok(()),
        Ok(text) => {
            tracing::warn!(claim = %claim.display(), holder = %text.trim(), "claimed by another provider too");
            Ok(())
        }
        Err(_) => {
            std::fs::create_dir_all(CLAIMS_DIR)?;
            std::fs::write(&claim, owner.text())
        }
    }
}

/// Drops our claim on `name` (someone else's stays).
pub(crate) fn release(name: &str, owner: &Owner) {
    let claim = path(name);
    if std::fs::read_to_string(&claim).is_ok_and(|t| t == owner.text()) {
        let _ = std::fs::remove_file(&claim);
    }
}

fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    fn lock(file: &'a File) -> io::Result<Flock<'a>> {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on an open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Flock(file))
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on an open descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_round_trip_and_torn_claims_are_stale() {
        let owner = Owner {
            state_dir: "/var/lib/korvet/provider".into(),
            key: "c1".into(),
        };
        assert_eq!(Owner::parse(&owner.text()), Some(owner.clone()));
        let dir = tempfile::tempdir().unwrap();
        let claim = dir.path().join("x");
        std::fs::write(&claim, owner.text()).unwrap();
        assert!(!is_stale(&claim, &7, &|o: &Owner, i: &i32| o.key == "c1" && *i == 7));
        assert!(is_stale(&claim, &8, &|o: &Owner, i: &i32| o.key == "c1" && *i == 7));
        std::fs::write(&claim, "").unwrap();
        assert!(is_stale(&claim, &7, &|_: &Owner, _: &i32| true));
    }
}
