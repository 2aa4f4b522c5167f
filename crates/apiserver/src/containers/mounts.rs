//! A container's mounts at create time: bind sources checked on the host,
//! volumes found or created (named ones on first use, anonymous ones for
//! `-v /path` and for the image's `VOLUME`s), and at start time: a block
//! volume is used by one running container at a time.
//!
//! Nothing is made before every bind mount of the request has been
//! checked; volumes are made next (and removed again if anything after
//! fails); a `-v` source that does not exist yet is created last
//! ([`create_bind_sources`]), and removed again if another one cannot be.

use crate::error::{ApiError, ApiResult};
use crate::volumes::{Guard, Users, Volumes};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Component, Path, PathBuf};
use vessel_api::mounts::{clean_target, MountSpec, MountType, VolumeBacking};

/// The container's mounts as they will be made, and the anonymous volumes
/// made for them (to remove if the container is not created after all).
#[derive(Debug, Default)]
pub(super) struct Resolved {
    pub mounts: Vec<MountSpec>,
    pub anonymous: Vec<String>,
}

/// Resolve `requested` (validated) and the image's `VOLUME`s against the
/// host, with the volume store's lock held. Nothing is left behind on
/// failure.
pub(super) fn resolve(
    requested: &[MountSpec],
    image_volumes: &[String],
    volumes: &Volumes,
    g: &Guard<'_>,
) -> ApiResult<Resolved> {
    let mut out = Resolved::default();
    if let Err(e) = resolve_into(&mut out, requested, image_volumes, volumes, g) {
        forget_anonymous(&out.anonymous, volumes, g);
        return Err(e);
    }
    Ok(out)
}

/// Remove anonymous volumes made for a container that was not created.
pub(super) fn forget_anonymous(names: &[String], volumes: &Volumes, g: &Guard<'_>) {
    for name in names {
        if let Err(e) = volumes.remove_locked(g, name, true, &Users::default()) {
            eprintln!("vessel-apiserver: removing the anonymous volume {name}: {e}");
        }
    }
}

fn resolve_into(
    out: &mut Resolved,
    requested: &[MountSpec],
    image_volumes: &[String],
    volumes: &Volumes,
    g: &Guard<'_>,
) -> ApiResult<()> {
    // A block volume twice: refused before anything is made.
    check_block_volumes_once(requested, volumes)?;
    // Bind sources first: checked, nothing made.
    let mut checked = Vec::new();
    let mut to_create = Vec::new();
    for m in requested {
        if m.kind == MountType::Bind {
            let (resolved, create) = check_bind(m)?;
            checked.push((resolved, create));
        }
    }
    let mut binds = checked.into_iter();
    for m in requested {
        let resolved = match m.kind {
            MountType::Tmpfs => m.clone(),
            MountType::Bind => {
                let Some((resolved, create)) = binds.next() else {
                    return Err(ApiError::Internal(anyhow::anyhow!(
                        "bind mounts out of step"
                    )));
                };
                if create {
                    to_create.push(out.mounts.len());
                }
                resolved
            }
            MountType::Volume => volume(m, volumes, g, &mut out.anonymous)?,
        };
        out.mounts.push(resolved);
    }
    // The image's VOLUMEs: an anonymous volume each, unless a mount of the
    // container is at that very path (Docker's rule).
    for path in image_volumes {
        let Ok(target) = clean_target(path) else {
            eprintln!(
                "vessel-apiserver: ignoring the image's VOLUME {path:?}: not a clean absolute path"
            );
            continue;
        };
        if out.mounts.iter().any(|m| m.target == target) {
            continue;
        }
        let m = volume(
            &MountSpec::volume("", &target),
            volumes,
            g,
            &mut out.anonymous,
        )?;
        out.mounts.push(m);
    }
    // Last: the missing `-v` sources (undone by themselves on failure).
    create_bind_sources(&mut out.mounts, &to_create)?;
    sort_for_mounting(&mut out.mounts);
    Ok(())
}

/// A block volume is one disk: the VM gets it once, so a container mounts
/// it at one path. (Two disks on one image would be two filesystems
/// writing one disk; the runtime's lock refuses the second.) A shared
/// volume may be mounted at several paths. A volume that does not exist
/// yet will be a block one.
fn check_block_volumes_once(requested: &[MountSpec], volumes: &Volumes) -> ApiResult<()> {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for m in requested
        .iter()
        .filter(|m| m.kind == MountType::Volume && !m.source.is_empty())
    {
        if let Some((_, first)) = seen.iter().find(|(name, _)| *name == m.source) {
            if volumes.backing(&m.source).ok() != Some(VolumeBacking::Shared) {
                return Err(ApiError::invalid(format!(
                    "volume {} is mounted twice ({first} and {}): a block volume is one disk,                      mounted at one path per container; mount it once, or keep the data in a                      shared volume (`vessel volume create --opt backing=shared NAME`), which                      can be mounted at several",
                    m.source, m.target
                )));
            }
        } else {
            seen.push((&m.source, &m.target));
        }
    }
    Ok(())
}

/// Parents before children (`/data` before `/data/cache`), so no mount
/// hides another; otherwise the order given.
pub(super) fn sort_for_mounting(mounts: &mut [MountSpec]) {
    mounts.sort_by_key(|m| m.target.split('/').filter(|p| !p.is_empty()).count());
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

/// A volume mount: a named volume made with the defaults if it does not
/// exist; an anonymous one made now and named.
fn volume(
    m: &MountSpec,
    volumes: &Volumes,
    g: &Guard<'_>,
    anonymous: &mut Vec<String>,
) -> ApiResult<MountSpec> {
    let mut m = m.clone();
    let backing = if m.source.is_empty() {
        let name = volumes.create_anonymous_locked(g)?;
        anonymous.push(name.clone());
        m.source = name;
        m.anonymous = true;
        VolumeBacking::Block
    } else {
        volumes.ensure_locked(g, &m.source)?
    };
    // What the store says, whatever the request said.
    m.shared = backing == VolumeBacking::Shared;
    Ok(m)
}

/// At start: each block volume of `mounts` is used by no other running
/// container (`running`: volume name → IDs of running containers).
pub(super) fn check_exclusive(
    id: &str,
    mounts: &[MountSpec],
    volumes: &Volumes,
    users: &Users,
    name_of: &dyn Fn(&str) -> String,
) -> ApiResult<()> {
    for m in mounts.iter().filter(|m| m.kind == MountType::Volume) {
        let backing = volumes.backing(&m.source).map_err(|e| match e {
            ApiError::Answer(b) if b.kind.is_not_found() => ApiError::conflict(format!(
                "the volume {} of this container is gone from the volume store; remove the container and create it again",
                m.source
            )),
            e => e,
        })?;
        if backing == VolumeBacking::Shared {
            // Served over virtio-fs by a virtiofsd per VM: any number of
            // running containers at once.
            continue;
        }
        let others: Vec<String> = users
            .running
            .get(&m.source)
            .into_iter()
            .flatten()
            .filter(|other| other.as_str() != id)
            .map(|other| name_of(other))
            .collect();
        if let Some(other) = others.first() {
            return Err(ApiError::conflict(in_use_message(&m.source, other)));
        }
    }
    Ok(())
}

/// Why a block volume cannot be mounted now, and what to do.
pub fn in_use_message(volume: &str, container: &str) -> String {
    format!(
        "volume {volume} is mounted by the running container {container}: a block volume is a disk of one VM at a time; stop {container} first, or keep the data in a shared volume (`vessel volume create --opt backing=shared NAME`) that several running containers can mount"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::mounts::{parse_mount_flag, parse_volume_flag};

    /// Resolve without image volumes, against a store of its own.
    fn resolve(requested: &[MountSpec]) -> ApiResult<Vec<MountSpec>> {
        let d = tempfile::tempdir().unwrap();
        let events = std::sync::Arc::new(crate::events::Events::new(&d.path().join("ev")));
        let vols = Volumes::new(vessel_api::paths::Home::new(d.path()), events);
        let g = vols.lock().unwrap();
        super::resolve(requested, &[], &vols, &g).map(|r| r.mounts)
    }

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

    #[test]
    fn parents_mount_before_children() {
        let mut list = vec![
            MountSpec::volume("a", "/data/cache/x"),
            MountSpec::tmpfs("/data/cache"),
            MountSpec::volume("b", "/data"),
            MountSpec::tmpfs("/run"),
        ];
        sort_for_mounting(&mut list);
        let order: Vec<&str> = list.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(order, ["/data", "/run", "/data/cache", "/data/cache/x"]);
    }

    #[test]
    fn image_volumes_and_anonymous_ones() {
        let d = tempfile::tempdir().unwrap();
        let events = std::sync::Arc::new(crate::events::Events::new(&d.path().join("ev")));
        let vols = Volumes::new(vessel_api::paths::Home::new(d.path()), events);
        let g = vols.lock().unwrap();
        let requested = vec![
            MountSpec::volume("named", "/srv"),
            MountSpec::volume("", "/var/lib/db"),
            MountSpec::tmpfs("/cache"),
        ];
        let image = vec![
            "/var/lib/db".to_string(),
            "/logs/".to_string(),
            "relative".to_string(),
        ];
        let r = super::resolve(&requested, &image, &vols, &g).unwrap();
        let targets: Vec<&str> = r.mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["/srv", "/cache", "/logs", "/var/lib/db"]);
        assert_eq!(r.anonymous.len(), 2);
        let db = &r.mounts[3];
        assert!(db.anonymous && db.source.len() == 64);
        assert!(vols.exists("named") && vols.exists(&db.source));
        assert!(!r.mounts[0].anonymous);

        // A shared volume is marked so (the runtime serves it over
        // virtio-fs), whatever the request said.
        vols.create_locked_for_test(&g, "sh", true);
        let mut claims = MountSpec::volume("named", "/n");
        claims.shared = true;
        let requested = vec![MountSpec::volume("sh", "/b"), claims];
        let r2 = super::resolve(&requested, &[], &vols, &g).unwrap();
        assert!(r2.mounts[0].shared && !r2.mounts[1].shared);

        // A block volume at two paths is refused, before anything is
        // made; a shared one may be.
        let twice = vec![
            MountSpec::volume("", "/anon"),
            MountSpec::volume("fresh", "/a"),
            MountSpec::volume("fresh", "/b"),
        ];
        let before = vols.list(&Users::default()).len();
        let e = super::resolve(&twice, &[], &vols, &g).unwrap_err();
        let msg = e.body().message;
        assert!(
            msg.contains("volume fresh is mounted twice (/a and /b)"),
            "{msg}"
        );
        assert_eq!(vols.list(&Users::default()).len(), before);
        assert!(!vols.exists("fresh"));
        let twice = vec![MountSpec::volume("sh", "/a"), MountSpec::volume("sh", "/b")];
        assert_eq!(
            super::resolve(&twice, &[], &vols, &g).unwrap().mounts.len(),
            2
        );

        // A failure later on removes the anonymous volumes made so far.
        vols.create_locked_for_test(&g, "broken", false);
        std::fs::write(d.path().join("volumes/broken/volume.json"), b"{not json").unwrap();
        let requested = vec![
            MountSpec::volume("", "/a"),
            MountSpec::volume("broken", "/b"),
        ];
        let before = vols.list(&Users::default()).len();
        assert!(super::resolve(&requested, &[], &vols, &g).is_err());
        assert_eq!(vols.list(&Users::default()).len(), before);
        drop(g);

        // At start: the block volume of a running container is refused.
        let mut users = Users::default();
        users.running.insert("named".into(), vec!["other".into()]);
        let e =
            check_exclusive("me", &r.mounts, &vols, &users, &|id| format!("c-{id}")).unwrap_err();
        let msg = e.body().message;
        assert!(
            msg.contains("c-other") && msg.contains("backing=shared"),
            "{msg}"
        );
        users.running.insert("named".into(), vec!["me".into()]);
        check_exclusive("me", &r.mounts, &vols, &users, &|id| id.to_string()).unwrap();
    }
}
