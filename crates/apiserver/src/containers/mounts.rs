//! A container's mounts at create time: bind sources checked on the host,
//! volumes found or created (named ones on first use, anonymous ones for
//! `-v /path` and for the image's `VOLUME`s), and at start time: a block
//! volume is used by one running container at a time.

use crate::error::{ApiError, ApiResult};
use crate::volumes::{Guard, Users, Volumes};
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
    for m in requested {
        let resolved = match m.kind {
            MountType::Tmpfs => m.clone(),
            MountType::Bind => bind(m)?,
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
        let mut m = MountSpec::volume("", &target);
        m = volume(&m, volumes, g, &mut out.anonymous)?;
        out.mounts.push(m);
    }
    sort_for_mounting(&mut out.mounts);
    Ok(())
}

/// Parents before children (`/data` before `/data/cache`), so no mount
/// hides another; otherwise the order given.
pub(super) fn sort_for_mounting(mounts: &mut [MountSpec]) {
    mounts.sort_by_key(|m| m.target.split('/').filter(|p| !p.is_empty()).count());
}

/// A bind mount: not available yet.
fn bind(m: &MountSpec) -> ApiResult<MountSpec> {
    Err(ApiError::invalid(format!(
        "bind mounts are not available yet ({})",
        m.target
    )))
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
    if backing == VolumeBacking::Shared {
        return Err(shared_unavailable(&m.source));
    }
    Ok(m)
}

fn shared_unavailable(name: &str) -> ApiError {
    ApiError::invalid(format!(
        "volume {name} is a shared volume (backing=shared): mounting shared volumes is not available in this build yet; use a block volume (the default)"
    ))
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
            return Err(shared_unavailable(&m.source));
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
        let r = resolve(&requested, &image, &vols, &g).unwrap();
        let targets: Vec<&str> = r.mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["/srv", "/cache", "/logs", "/var/lib/db"]);
        assert_eq!(r.anonymous.len(), 2);
        let db = &r.mounts[3];
        assert!(db.anonymous && db.source.len() == 64);
        assert!(vols.exists("named") && vols.exists(&db.source));
        assert!(!r.mounts[0].anonymous);

        // A failure later on removes the anonymous volumes made so far.
        vols.create_locked_for_test(&g, "sh", true);
        let requested = vec![MountSpec::volume("", "/a"), MountSpec::volume("sh", "/b")];
        let before = vols.list(&Users::default()).len();
        let e = resolve(&requested, &[], &vols, &g).unwrap_err();
        assert!(
            e.body().message.contains("shared volume"),
            "{}",
            e.body().message
        );
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
