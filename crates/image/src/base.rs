//! The base images, from the host's static busybox: `busybox` (a shell with every
//! applet), `pause` (a pod's sandbox) and `demo-web` (an HTTP server that says which
//! replica answered).

use std::path::Path;

use crate::image::{build, Image, ImageConfig, Source};
use crate::{io_at, ImageError};

/// Where Debian's `busybox-static` installs it.
pub const BUSYBOX: &str = "/bin/busybox";

/// One base image: its repository (tag `latest`) and the image.
pub struct BaseImage {
    pub repository: &'static str,
    pub image: Image,
}

/// Every applet `busybox` offers (`busybox --list`), as `busybox --install` would link
/// them; upstream's busybox image has them all, and `kubectl cp` needs `tar`.
pub fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let output = std::process::Command::new(busybox)
        .arg("--list")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ImageError::Io {
            path: busybox.to_path_buf(),
            source: std::io::Error::new(
                source.kind(),
                format!("{source} (install Debian's busybox-static: scripts/setup.sh does)"),
            ),
        })?;
    if !output.status.success() {
        return Err(ImageError::Invalid(format!(
            "{} --list failed: {}",
            busybox.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        // Applet names are plain words; anything else would escape /bin.
        .filter(|a| {
            !a.is_empty()
                && *a != "busybox"
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'['))
                && !a.starts_with('.')
        })
        .map(str::to_string)
        .collect();
    applets.sort();
    applets.dedup();
    if !applets.iter().any(|a| a == "sh") {
        return Err(ImageError::Invalid(format!(
            "{} offers no `sh` applet: it is not a busybox Korvet can build images from",
            busybox.display()
        )));
    }
    Ok(applets)
}

/// Lays out a busybox root filesystem in `dir`: `/bin/busybox` (copied from `busybox`,
/// a static binary), a `/bin` link for each of its applets, the usual empty directories,
/// and demo-web's page and CGI script.
pub fn busybox_rootfs(dir: &Path, busybox: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let applets = busybox_applets(busybox)?;
    for sub in [
        "bin", "etc", "tmp", "proc", "sys", "dev", "root", "var", "www",
    ] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(io_at(&d))?;
        let mode = if sub == "tmp" { 0o1777 } else { 0o755 };
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).map_err(io_at(&d))?;
    }
    let target = dir.join("bin/busybox");
    std::fs::copy(busybox, &target).map_err(io_at(busybox))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
        .map_err(io_at(&target))?;
    for applet in &applets {
        let link = dir.join("bin").join(applet);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("busybox", &link).map_err(io_at(&link))?;
    }
    let files: [(&str, &str); 4] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnobody:x:65534:\n"),
        ("etc/hosts", "127.0.0.1 localhost\n"),
        (
            "www/index.html",
            "<!doctype html><title>Korvet</title><h1>Hello from Korvet</h1>\n",
        ),
    ];
    // demo-web's CGI: which replica answered (a pod's hostname is its name), and whom
    // it saw (the client's address as it arrived, and what a proxy said of it).
    let cgi = dir.join("www/cgi-bin");
    std::fs::create_dir_all(&cgi).map_err(io_at(&cgi))?;
    let scripts = [
        (
            "www/cgi-bin/hostname",
            "#!/bin/sh\necho Content-Type: text/plain\necho\nhostname\n",
            0o755,
        ),
        (
            "www/cgi-bin/client",
            "#!/bin/sh\necho Content-Type: text/plain\necho\necho \"client=$REMOTE_ADDR forwarded=$HTTP_X_FORWARDED_FOR pod=$(hostname)\"\n",
            0o755,
        ),
    ];
    for (name, content, mode) in files.map(|(n, c)| (n, c, 0o644)).into_iter().chain(scripts) {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(io_at(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io_at(&path))?;
    }
    Ok(())
}

/// The base images, all over one busybox layer: `busybox` (a shell), `pause` (the pod
/// sandbox: busybox sleeping for ever, since no tiny static pause binary is packaged),
/// and `demo-web` (busybox httpd serving a page on port 8080, and the pod's hostname at
/// `/cgi-bin/hostname`, so that one sees which replica of a Service answered).
pub fn base_images(busybox: &Path) -> Result<Vec<BaseImage>, ImageError> {
    let rootfs = tempfile::tempdir().map_err(io_at(Path::new("<tempdir>")))?;
    busybox_rootfs(rootfs.path(), busybox)?;
    let source = Source::Dir(rootfs.path().to_path_buf());
    let command = |args: &[&str]| Some(args.iter().map(|s| s.to_string()).collect());
    let image = |config: ImageConfig| build(&source, &config);
    Ok(vec![
        BaseImage {
            repository: "busybox",
            image: image(ImageConfig {
                cmd: command(&["sh"]),
                ..Default::default()
            })?,
        },
        BaseImage {
            repository: "pause",
            // The sandbox's only job is to hold the pod's namespaces open.
            image: image(ImageConfig {
                entrypoint: command(&["/bin/sleep", "2147483647"]),
                ..Default::default()
            })?,
        },
        BaseImage {
            repository: "demo-web",
            image: image(ImageConfig {
                entrypoint: command(&["/bin/httpd", "-f", "-v", "-p", "8080", "-h", "/www"]),
                ..Default::default()
            })?,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_links_every_applet_it_lists() {
        let busybox = Path::new(BUSYBOX);
        if !busybox.exists() {
            eprintln!("skipped: {BUSYBOX} is missing (scripts/setup.sh installs it)");
            return;
        }
        let applets = busybox_applets(busybox).unwrap();
        for needed in ["sh", "tar", "vi", "nslookup", "wget", "httpd", "sleep"] {
            assert!(applets.iter().any(|a| a == needed), "{needed}: {applets:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        busybox_rootfs(dir.path(), busybox).unwrap();
        for applet in &applets {
            let link = dir.path().join("bin").join(applet);
            assert_eq!(
                std::fs::read_link(&link).unwrap(),
                Path::new("busybox"),
                "{}",
                link.display()
            );
        }
        let images = base_images(busybox).unwrap();
        let names: Vec<_> = images.iter().map(|b| b.repository).collect();
        assert_eq!(names, ["busybox", "pause", "demo-web"]);
        // One layer under all three.
        assert_eq!(
            images[0].image.layers[0].digest,
            images[2].image.layers[0].digest
        );
        assert_eq!(
            base_images(busybox).unwrap()[1].image.digest(),
            images[1].image.digest()
        );
    }

    #[test]
    fn a_missing_busybox_says_what_to_install() {
        let error = busybox_applets(Path::new("/nonexistent/busybox")).unwrap_err();
        assert!(error.to_string().contains("busybox-static"), "{error}");
    }
}
