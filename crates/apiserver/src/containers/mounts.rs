//! A container's mounts at create time: bind sources checked on the host,
//! volumes found or created.
//!
//! Nothing is made before every mount of the request has been checked: a
//! `-v` source that does not exist yet is created last
//! ([`create_bind_sources`]), and removed again if another one cannot be.

use crate::error::{ApiError, ApiResult};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Component, Path, PathBuf};
use vessel_api::mounts::{MountSpec, MountType};

/// The container's mounts as they will be made: checked against the host.
pub(super) fn resolve(requested: &[MountSpec]) -> ApiResult<Vec<MountSpec>> {
    let mut out = Vec::new();
    let mut to_create = Vec::new();
    for m in requested {
        match m.kind {
            MountType::Tmpfs => out.push(m.clone()),
            MountType::Bind => {
                let (resolved, create) = check_bind(m)?;
                if create {
                    to_create.push(out.len());
                }
                out.push(resolved);
            }
            MountType::Volume => {
                return Err(ApiError::invalid(format!(
                    "{} mounts are not available yet ({})",
                    m.kind.as_str(),
                    m.target
                )))
            }
        }
    }
    create_bind_sources(&mut out, &to_create)?;
    Ok(out)
}

/// What kind of file `meta` describes, for a message.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a file"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_fifo() {
        "a FIFO"
    } else {
        "not a directory"
    }
}

/// Check one bind mount: its source must be a directory, or, with
/// `create_source` (`-v`), be creatable as one. Returns the mount with
/// its source canonical (symbolic links resolved once, now) and whether
/// the source is still to be created.
fn check_bind(m: &MountSpec) -> ApiResult<(MountSpec, bool)> {
    let source = Path::new(&m.source);
    if !source.is_absolute() {
        return Err(ApiError::invalid(format!(
            "invalid bind source {:?}: a host path must be absolute",
            m.source
        )));
    }
    match std::fs::canonicalize(source) {
        Ok(real) => {
            let meta = std::fs::metadata(&real)
                .map_err(|e| ApiError::invalid(format!("bind source path {}: {e}", m.source)))?;
            if meta.is_file() {
                return Err(ApiError::invalid(format!(
                    "bind source path {} is a file: bind-mounting a single file is not \
                     supported yet; mount its directory instead",
                    m.source
                )));
            }
            if !meta.is_dir() {
                return Err(ApiError::invalid(format!(
                    "bind source path {} is {}: only directories can be bind-mounted",
                    m.source,
                    kind_of(&meta)
                )));
            }
            let real = real.to_str().ok_or_else(|| {
                ApiError::invalid(format!(
                    "bind source path {}: its real path {} is not UTF-8",
                    m.source,
                    real.display()
                ))
            })?;
            let mut out = m.clone();
            out.source = real.to_string();
            Ok((out, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !m.create_source {
                return Err(ApiError::invalid(format!(
                    "bind source path does not exist: {} (--mount type=bind does not create it; \
                     create the directory first, or use -v, which does)",
                    m.source
                )));
            }
            check_creatable(source)?;
            Ok((m.clone(), true))
        }
        Err(e) => {
            if e.raw_os_error() == Some(libc::ENOTDIR) {
                // Names the part that is not a directory.
                check_creatable(source)?;
            }
            Err(ApiError::invalid(format!(
                "bind source path {}: {e}",
                m.source
            )))
        }
    }
}

/// A missing `-v` source can be made with `mkdir -p`: no `..` after the
/// part that exists, and that part is a directory.
fn check_creatable(source: &Path) -> ApiResult<()> {
    if source.components().any(|c| c == Component::ParentDir) {
        return Err(ApiError::invalid(format!(
            "bind source path {} does not exist and contains '..': write the path without it",
            source.display()
        )));
    }
    let mut existing = source;
    while let Some(parent) = existing.parent() {
        existing = parent;
        match std::fs::metadata(existing) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(meta) => {
                return Err(ApiError::invalid(format!(
                    "cannot create the bind source {}: {} is {}",
                    source.display(),
                    existing.display(),
                    kind_of(&meta)
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ApiError::invalid(format!(
                    "cannot create the bind source {}: {}: {e}",
                    source.display(),
                    existing.display()
                )))
            }
        }
    }
    Ok(())
}

/// `mkdir -p` (mode 0755) the sources of `mounts[i]` for each `i` in
/// `which`, and make those sources canonical. When one fails, the
/// directories made for this request are removed again.
fn create_bind_sources(mounts: &mut [MountSpec], which: &[usize]) -> ApiResult<()> {
    let mut made: Vec<PathBuf> = Vec::new();
    let undo = |made: &[PathBuf]| {
        // Deepest first; `remove_dir` leaves anything not empty alone.
        for d in made.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    };
    for &i in which {
        let source = PathBuf::from(&mounts[i].source);
        // The missing directories, outermost first.
        let mut missing = Vec::new();
        let mut p = source.as_path();
        while !p.exists() {
            missing.push(p.to_path_buf());
            match p.parent() {
                Some(parent) => p = parent,
                None => break,
            }
        }
        missing.reverse();
        for d in missing {
            match std::fs::DirBuilder::new().mode(0o755).create(&d) {
                Ok(()) => made.push(d),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
                Err(e) => {
                    undo(&made);
                    return Err(ApiError::invalid(format!(
                        "cannot create the bind source {}: {}: {e}",
                        source.display(),
                        d.display()
                    )));
                }
            }
        }
        match std::fs::canonicalize(&source).map(|r| r.to_str().map(str::to_string)) {
            Ok(Some(real)) => mounts[i].source = real,
            Ok(None) | Err(_) => {
                undo(&made);
                return Err(ApiError::invalid(format!(
                    "cannot resolve the bind source {} after creating it",
                    source.display()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::mounts::{parse_mount_flag, parse_volume_flag};

    fn v(s: &str) -> MountSpec {
        parse_volume_flag(s, Path::new("/")).unwrap()
    }

    #[test]
    fn existing_directory_is_made_canonical() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, t.path().join("link")).unwrap();
        let m = v(&format!("{}/link:/data:ro", t.path().display()));
        let out = resolve(&[m]).unwrap();
        assert_eq!(
            Path::new(&out[0].source),
            std::fs::canonicalize(&real).unwrap()
        );
        assert!(out[0].readonly);
    }

    #[test]
    fn missing_source_is_an_error_for_mount_and_created_for_v() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("a/b");
        let m =
            parse_mount_flag(&format!("type=bind,source={},target=/d", missing.display())).unwrap();
        let e = resolve(&[m]).unwrap_err().to_string();
        assert!(e.contains("bind source path does not exist"), "{e}");
        assert!(!t.path().join("a").exists(), "nothing created");

        let out = resolve(&[v(&format!("{}:/d", missing.display()))]).unwrap();
        assert!(missing.is_dir());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&missing).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755 & !umask());
        assert_eq!(
            Path::new(&out[0].source),
            std::fs::canonicalize(&missing).unwrap()
        );
    }

    fn umask() -> u32 {
        // SAFETY: umask has no preconditions; the old value is put back.
        unsafe {
            let old = libc::umask(0o022);
            libc::umask(old);
            old
        }
    }

    #[test]
    fn nothing_is_created_when_a_later_mount_is_bad() {
        let t = tempfile::tempdir().unwrap();
        let new = t.path().join("new/dir");
        let file = t.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let mounts = [
            v(&format!("{}:/a", new.display())),
            v(&format!("{}:/b", file.display())),
        ];
        let e = resolve(&mounts).unwrap_err().to_string();
        assert!(e.contains("single file is not supported yet"), "{e}");
        assert!(!t.path().join("new").exists());

        // A missing path under a file cannot be made: refused before
        // anything is.
        let mounts = [
            v(&format!("{}:/a", new.display())),
            v(&format!("{}/sub:/b", file.display())),
        ];
        let e = resolve(&mounts).unwrap_err().to_string();
        assert!(e.contains("is a file"), "{e}");
        assert!(!t.path().join("new").exists());
    }

    #[test]
    fn sockets_and_devices_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = resolve(&[v(&format!("{}:/s", sock.display()))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a socket"), "{e}");
        let e = resolve(&[v("/dev/null:/n")]).unwrap_err().to_string();
        assert!(e.contains("is a device"), "{e}");
    }

    #[test]
    fn relative_and_dotdot_sources_are_refused() {
        let mut m = v("/x:/d");
        m.source = "x".into();
        assert!(resolve(&[m]).is_err());
        let t = tempfile::tempdir().unwrap();
        let m = v(&format!("{}/no/../such:/d", t.path().display()));
        let e = resolve(&[m]).unwrap_err().to_string();
        assert!(e.contains("'..'"), "{e}");
        assert!(!t.path().join("no").exists());
    }
}
