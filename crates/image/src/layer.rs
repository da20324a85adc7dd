//! Deterministic layer tarballs: from a directory tree or from one static binary.

use std::path::{Path, PathBuf};

use crate::{io_at, ImageError};

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

pub(crate) fn file_name(path: &Path) -> Result<String, ImageError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| ImageError::Invalid(format!("{} has no file name", path.display())))
}

/// The file as `/<its name>`, mode 0755.
pub(crate) fn tar_binary(file: &Path) -> Result<Vec<u8>, ImageError> {
    let data = std::fs::read(file).map_err(io_at(file))?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Regular, 0o755, data.len() as u64);
    builder
        .append_data(&mut h, file_name(file)?, data.as_slice())
        .map_err(io_at(file))?;
    builder.into_inner().map_err(io_at(file))
}

/// The directory's contents as the root of the layer.
pub(crate) fn tar_dir(root: &Path) -> Result<Vec<u8>, ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(root).map_err(io_at(root))?;
    if !meta.is_dir() {
        return Err(ImageError::Invalid(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let mut builder = tar::Builder::new(Vec::new());
    let mut stack = vec![PathBuf::new()];
    // Depth-first with sorted children, so the entry order never depends on readdir.
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io_at(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_at(&dir))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel_path = rel.join(&name);
            let path = root.join(&rel_path);
            let meta = std::fs::symlink_metadata(&path).map_err(io_at(&path))?;
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            if ft.is_dir() {
                let mut h = header(tar::EntryType::Directory, mode, 0);
                builder
                    .append_data(&mut h, format!("{}/", rel_path.display()), std::io::empty())
                    .map_err(io_at(&path))?;
                subdirs.push(rel_path);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io_at(&path))?;
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                builder
                    .append_link(&mut h, &rel_path, &target)
                    .map_err(io_at(&path))?;
            } else if ft.is_file() {
                let file = std::fs::File::open(&path).map_err(io_at(&path))?;
                let mut h = header(tar::EntryType::Regular, mode, meta.len());
                builder
                    .append_data(&mut h, &rel_path, file)
                    .map_err(io_at(&path))?;
            } else {
                tracing::warn!(path = %path.display(), "skipping a special file: images hold files, directories and symlinks");
            }
        }
        // Reversed onto the stack so they come off in sorted order.
        stack.extend(subdirs.into_iter().rev());
    }
    builder.into_inner().map_err(io_at(root))
}

/// A tarball of `(path, bytes)` entries, in that order, with zero times: how the OCI
/// layout archive a node imports is packed.
pub(crate) fn tar_files(entries: &[(String, &[u8])]) -> Result<Vec<u8>, ImageError> {
    let mut builder = tar::Builder::new(Vec::new());
    let at = Path::new("<archive>");
    for (path, bytes) in entries {
        let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        builder
            .append_data(&mut h, path, *bytes)
            .map_err(io_at(at))?;
    }
    builder.into_inner().map_err(io_at(at))
}
