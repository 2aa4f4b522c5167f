//! One VM per Kubernetes pod: the sandbox (pause) container's VM runs the
//! pod's other containers too.
//!
//! The sandbox's task gets a host directory, the pod directory
//! (`VESSEL_SHIM_ROOT/NAMESPACE/SANDBOX.pod`), bind-mounted on itself and
//! made a shared mount before its VM starts, and shared into the VM over
//! virtio-fs at [`GUEST_DIR`]. Each later container of the pod has its
//! rootfs (the snapshot containerd prepared, mounted on `BUNDLE/rootfs`)
//! bind-mounted at `POD_DIR/ID`: the mount propagates into the running
//! `virtiofsd` (its namespace is a slave of the host's), which announces
//! it to the guest as a submount. The container's processes then run in
//! the sandbox's VM with that directory as their root, in a mount
//! namespace of their own (vminitd, `ProcessSpec::root`).

use std::path::{Path, PathBuf};

/// Where the pod directory is in the sandbox's VM.
pub const GUEST_DIR: &str = "/.vessel-pod";

/// The CRI annotations that place a task in a pod.
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

type Annotations = std::collections::BTreeMap<String, String>;

/// The pod's sandbox task id, for a pod's application container.
pub fn sandbox_of(annotations: &Annotations) -> Option<&str> {
    is_container(annotations)
        .then(|| pod_id(annotations))
        .flatten()
}

/// The sandbox id CRI gives every task of a pod, the sandbox's own
/// included (what groups a pod's tasks under one shim).
pub fn pod_id(annotations: &Annotations) -> Option<&str> {
    annotations
        .get(SANDBOX_ID)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

/// Whether the task is a pod's sandbox (its pause container).
pub fn is_sandbox(annotations: &Annotations) -> bool {
    annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox")
}

/// Whether the task is a pod's application container (not its sandbox).
pub fn is_container(annotations: &Annotations) -> bool {
    annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("container")
}

/// The pod directory of sandbox `id` (beside the task's own home, never
/// inside it: a home is removed whole).
pub fn host_dir(namespace: &str, id: &str) -> PathBuf {
    let home = crate::vm::home_for(namespace, id);
    let mut p = home.root().as_os_str().to_owned();
    p.push(".pod");
    PathBuf::from(p)
}

/// Where container `id`'s root is in the VM.
pub fn guest_root(id: &str) -> String {
    format!("{GUEST_DIR}/{id}")
}

/// Errors preparing the pod directory or a container's place in it.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("Could not create {}", .0.display())]
    Mkdir(PathBuf, #[source] std::io::Error),
    #[error("Could not mount {} on {}", .0.display(), .1.display())]
    Mount(PathBuf, PathBuf, #[source] nix::Error),
    #[error("The container id {0:?} cannot name a directory")]
    BadId(String),
}

/// Make the pod directory: a shared mount, so what is mounted under it
/// later reaches the `virtiofsd` serving it.
pub fn make_dir(dir: &Path) -> Result<(), PodError> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(dir).map_err(|e| PodError::Mkdir(dir.to_path_buf(), e))?;
    let err = |e| PodError::Mount(dir.to_path_buf(), dir.to_path_buf(), e);
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(err)?;
    if let Err(e) = mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    ) {
        remove_dir(dir);
        return Err(err(e));
    }
    Ok(())
}

/// Bind container `id`'s root filesystem into the pod directory.
pub fn add_container(dir: &Path, id: &str, rootfs: &Path) -> Result<(), PodError> {
    use nix::mount::{mount, MsFlags};
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(PodError::BadId(id.to_string()));
    }
    let target = dir.join(id);
    std::fs::create_dir(&target).map_err(|e| PodError::Mkdir(target.clone(), e))?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    if let Err(e) = mount(Some(rootfs), &target, None::<&str>, flags, None::<&str>) {
        let _ = std::fs::remove_dir(&target);
        return Err(PodError::Mount(rootfs.to_path_buf(), target, e));
    }
    Ok(())
}

/// Bind container `id`'s host files and directories into the pod
/// directory (`ID.mounts/N`, read-only where asked): what its first
/// process binds in the VM.
pub fn add_binds(
    dir: &Path,
    id: &str,
    binds: &[crate::spec::HostBind],
) -> Result<Vec<agent_protocol::Bind>, PodError> {
    use nix::mount::{mount, MsFlags};
    let base = dir.join(format!("{id}.mounts"));
    std::fs::create_dir(&base).map_err(|e| PodError::Mkdir(base.clone(), e))?;
    let mut out = Vec::new();
    for (n, b) in binds.iter().enumerate() {
        let target = base.join(n.to_string());
        let made = if b.source.is_dir() {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        };
        made.map_err(|e| PodError::Mkdir(target.clone(), e))?;
        let err = |e| PodError::Mount(b.source.clone(), target.clone(), e);
        let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount(Some(&b.source), &target, None::<&str>, flags, None::<&str>).map_err(err)?;
        if b.readonly {
            let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, &target, None::<&str>, ro, None::<&str>).map_err(err)?;
        }
        out.push(agent_protocol::Bind {
            source: format!("{GUEST_DIR}/{id}.mounts/{n}"),
            target: b.destination.clone(),
            readonly: b.readonly,
        });
    }
    Ok(out)
}

/// Undo [`add_container`] and [`add_binds`] (nothing if not done).
pub fn remove_container(dir: &Path, id: &str) {
    let target = dir.join(id);
    if target.exists() {
        unmount_under(&target);
        let _ = std::fs::remove_dir(&target);
    }
    let base = dir.join(format!("{id}.mounts"));
    if base.exists() {
        unmount_under(&base);
        remove_empty_entries(&base);
        let _ = std::fs::remove_dir(&base);
    }
}

/// Remove the empty files and directories in `dir` (mount points whose
/// mounts are gone), never descending.
fn remove_empty_entries(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                let _ = std::fs::remove_dir(&p);
            }
            Ok(_) if e.metadata().is_ok_and(|m| m.len() == 0) => {
                let _ = std::fs::remove_file(&p);
            }
            _ => {}
        }
    }
}

/// Unmount the pod directory and everything under it, then remove the
/// (by then empty) directories: never a recursive delete, which would
/// reach into a container's root still mounted there.
pub fn remove_dir(dir: &Path) {
    if !dir.exists() {
        return;
    }
    unmount_under(dir);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_entries(&e.path());
            let _ = std::fs::remove_dir(e.path());
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        log::warn!("removing {}: {e}", dir.display());
    }
}

fn unmount_under(p: &Path) {
    if let Some(s) = p.to_str() {
        if let Err(e) = containerd_shim::mount::umount_recursive(Some(s), libc::MNT_DETACH) {
            log::warn!("unmounting {s}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn annotations(kind: &str, sandbox: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (CONTAINER_TYPE.to_string(), kind.to_string()),
            (SANDBOX_ID.to_string(), sandbox.to_string()),
        ])
    }

    #[test]
    fn pod_roles_come_from_the_cri_annotations() {
        assert_eq!(sandbox_of(&annotations("container", "s1")), Some("s1"));
        assert_eq!(sandbox_of(&annotations("sandbox", "s1")), None);
        assert_eq!(sandbox_of(&annotations("container", "")), None);
        assert_eq!(sandbox_of(&BTreeMap::new()), None);
        assert!(is_sandbox(&annotations("sandbox", "s1")));
        assert!(!is_sandbox(&annotations("container", "s1")));
        assert_eq!(guest_root("abc"), "/.vessel-pod/abc");
    }

    #[test]
    fn the_pod_directory_is_beside_the_home() {
        let home = crate::vm::home_for("k8s.io", "s1");
        let dir = host_dir("k8s.io", "s1");
        assert_eq!(dir.parent(), home.root().parent());
        assert_eq!(dir.file_name().and_then(|n| n.to_str()), Some("s1.pod"));
        assert!(!dir.starts_with(home.root()));
    }

    #[test]
    fn a_container_id_that_is_not_a_name_is_refused() {
        let d = Path::new("/nonexistent");
        for id in ["", "a/b", ".hidden", ".."] {
            assert!(matches!(
                add_container(d, id, Path::new("/")),
                Err(PodError::BadId(_))
            ));
        }
    }
}
