//! The on-disk layout of one vessel instance (`VESSEL_HOME`).
//!
//! ```text
//! VESSEL_HOME/
//!   vessel.sock            the apiserver's API socket (0600, or 0660 with a group)
//!   images.sock            the image helper's socket (apiserver only)
//!   apiserver.pid          supervisor.pid   logs/
//!   content/blobs/sha256/  verified blobs      content/ingest/  partial writes
//!   images/index.json      references → manifest digests
//!   rootfs/<id>.ext4       ext4 base per image
//!   containers/<id>/       config.json state.json overlay.qcow2 stdio.log boot.log runtime.log
//!                          maintenance.json (while a maintenance boot runs)
//!   volumes/<name>/        volume.json, and disk.img (an ext4 image: backing `block`)
//!                          or data/ (a directory: backing `shared`)
//!   tmp/                   uploads in flight
//! ```
//!
//! Unix socket paths are limited to 108 bytes, so each container's sockets
//! live in a short run directory ([`Home::run_dir`]) instead of under
//! `containers/<id>/`.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Environment variable selecting an instance.
pub const HOME_ENV: &str = "VESSEL_HOME";

/// One instance's data root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `VESSEL_HOME` if set, else `/var/lib/vessel` for root and
    /// `$XDG_DATA_HOME/vessel` (or `~/.local/share/vessel`) for other users.
    pub fn from_env() -> Self {
        if let Some(h) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
            return Self::new(absolute(PathBuf::from(h)));
        }
        Self::new(Self::default_root())
    }

    /// The data root when `VESSEL_HOME` is not set: `/var/lib/vessel` as
    /// root, `$XDG_DATA_HOME/vessel` (`~/.local/share/vessel`) otherwise.
    pub fn default_root() -> PathBuf {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return PathBuf::from("/var/lib/vessel");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("vessel");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        home.join(".local/share/vessel")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn api_socket(&self) -> PathBuf {
        self.root.join("vessel.sock")
    }
    pub fn images_socket(&self) -> PathBuf {
        self.root.join("images.sock")
    }
    pub fn apiserver_pid(&self) -> PathBuf {
        self.root.join("apiserver.pid")
    }
    pub fn supervisor_pid(&self) -> PathBuf {
        self.root.join("supervisor.pid")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn content_dir(&self) -> PathBuf {
        self.root.join("content")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }
    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// Named and anonymous volumes: `volumes/<name>/`.
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }
    /// One volume's directory (`name` checked by the caller with
    /// [`crate::mounts::validate_volume_name`]).
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.volumes_dir().join(name)
    }
    /// Extra CA certificates per registry: `certs.d/<host[:port]>/*.crt`.
    pub fn certs_dir(&self) -> PathBuf {
        self.root.join("certs.d")
    }
    /// Registry settings: `{"insecure": ["host:port", ...]}`.
    pub fn registries_file(&self) -> PathBuf {
        self.root.join("registries.json")
    }

    /// A short directory for one container's Unix sockets:
    /// `/run/vessel/<hash of VESSEL_HOME>/<first 12 of id>` as root,
    /// `$XDG_RUNTIME_DIR/vessel/...` (or `/tmp/vessel-<uid>/...`) otherwise.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        let short: String = id.chars().take(12).collect();
        self.run_base().join(short)
    }

    /// The run directory of a container's maintenance boot (`vessel cp`
    /// and `vessel export` of a container that is not running): a sibling
    /// of [`Home::run_dir`], so neither run touches the other's sockets.
    pub fn maintenance_run_dir(&self, id: &str) -> PathBuf {
        let short: String = id.chars().take(12).collect();
        self.run_base().join(format!("{short}.m"))
    }

    /// A mark that an apiserver of this instance has served since the host
    /// booted and has not shut down (`system stop` removes it): an
    /// apiserver that finds it at its start takes over from one that
    /// crashed. It lives in the run directory, which a reboot empties.
    pub fn apiserver_live_mark(&self) -> PathBuf {
        self.run_base().join("apiserver.live")
    }

    /// The per-instance base of [`Home::run_dir`].
    pub fn run_base(&self) -> PathBuf {
        let hash = hex::encode(&Sha256::digest(self.root.as_os_str().as_encoded_bytes())[..5]);
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let base = if uid == 0 {
            PathBuf::from("/run/vessel")
        } else if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            PathBuf::from(x).join("vessel")
        } else {
            PathBuf::from(format!("/tmp/vessel-{uid}"))
        };
        base.join(hash)
    }
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
}

/// Locate a sibling executable: the directory of the current executable first,
/// then `PATH`.
pub fn sibling_binary(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    find_in_path(name).unwrap_or_else(|| PathBuf::from(name))
}

/// A system tool (e2fsprogs' `mkfs.ext4`, `debugfs`...) on `PATH` or in
/// the sbin directories a normal user's `PATH` often lacks.
pub fn find_sbin_tool(name: &str) -> Option<PathBuf> {
    find_in_path(name).or_else(|| {
        ["/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
    })
}

/// Look a program up in `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_is_short_and_distinct_per_home() {
        let a = Home::new(
            "/tmp/a-very-long-directory-name-for-a-test-instance-of-vessel-xxxxxxxxxxxxxxxx",
        );
        let b = Home::new("/tmp/b");
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_ne!(a.run_dir(id), b.run_dir(id));
        assert!(a.run_dir(id).join("vsock.sock_1024").as_os_str().len() < 100);
        let m = a.maintenance_run_dir(id);
        assert_ne!(m, a.run_dir(id));
        assert!(m.join("vsock.sock_1024").as_os_str().len() < 100);
    }
}
