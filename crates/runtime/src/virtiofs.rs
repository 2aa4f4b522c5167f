//! Host directories shared into one VM over virtio-fs: one `virtiofsd`
//! (rust-vmm's, 1.14) per shared directory, serving that VM alone.
//!
//! Serving a directory is one call, [`Virtiofsd::start`] with a
//! [`ShareSpec`]: the runtime makes one per bind mount (and per volume
//! served over virtio-fs); QEMU then gets a `vhost-user-fs-device` on the
//! socket ([`crate::vmm::FsDevice`]) and the guest mounts it by its tag.
//!
//! Each `virtiofsd` is confined to its directory:
//! - `--sandbox namespace`: it moves into new mount, PID and network
//!   namespaces (and, without root, a new user namespace) and makes the
//!   shared directory its root (`pivot_root`), so no other host path
//!   exists for it; `--seccomp kill` ends it on a system call outside its
//!   list.
//! - `--readonly` for a read-only mount: the host side refuses every
//!   write, whatever the guest (root included) remounts.
//! - As root it keeps only the capabilities it needs to create files as
//!   the guest's users, less `CAP_MKNOD` (`--modcaps=-mknod`): a guest
//!   cannot put device nodes into a host directory.
//! - Without root (rootless mode) it runs as the user, and every guest
//!   uid/gid is written as the user's (`--translate-uid
//!   squash-guest:0:UID:4294967295`): whatever the container writes, the
//!   user can read and delete. The user's files show in the guest as the
//!   container user's (`--translate-uid host:UID:GUEST_UID:1`, from a
//!   numeric `-u`; root otherwise), so what it creates stays its own to
//!   write; other host owners show as their own numbers.
//!
//! Its socket is in the container's run directory and it serves one
//! connection (QEMU's), then exits. It gets the runtime's parent-death
//! signal (its sandboxed child gets one from it in turn), and
//! [`Virtiofsd`] kills it when dropped: none outlives its runtime.
//!
//! [`virtiofsd_args`] builds the command line as a pure function
//! (unit-tested).

use crate::proc::die_with_parent;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors starting a `virtiofsd`.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsError {
    #[error(
        "virtiofsd not found; install it with `cargo install --locked virtiofsd@1.14.0` \
         (it needs Debian's libseccomp-dev and libcap-ng-dev; scripts/install-deps.sh does both) \
         or set VESSEL_VIRTIOFSD"
    )]
    NotFound,
    #[error("VESSEL_VIRTIOFSD={} is not a file", .0.display())]
    BadOverride(PathBuf),
    #[error("Could not open the virtiofsd log {}", .0.display())]
    Log(PathBuf, #[source] std::io::Error),
    #[error("Could not start {}", .0.display())]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("virtiofsd for {} exited ({1}) before creating its socket: {2}", .0.display())]
    Exited(PathBuf, String, String),
    #[error("virtiofsd for {} did not create its socket within {1:?}; see {}", .0.display(), .2.display())]
    NoSocket(PathBuf, Duration, PathBuf),
}

/// `VESSEL_VIRTIOFSD`, else `virtiofsd` from `PATH`, else
/// `/usr/local/bin/virtiofsd` (where scripts/install-deps.sh puts it as
/// root), else `~/.cargo/bin/virtiofsd` (a user's `cargo install`). QEMU's
/// old C `virtiofsd` (`/usr/lib/qemu/virtiofsd`) takes other options and
/// is never used.
pub fn virtiofsd_binary() -> Result<PathBuf, VirtiofsError> {
    if let Some(p) = std::env::var_os("VESSEL_VIRTIOFSD").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(VirtiofsError::BadOverride(p))
        };
    }
    if let Some(p) = vessel_api::paths::find_in_path("virtiofsd") {
        return Ok(p);
    }
    let mut candidates = vec![PathBuf::from("/usr/local/bin/virtiofsd")];
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        candidates.push(PathBuf::from(home).join(".cargo/bin/virtiofsd"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or(VirtiofsError::NotFound)
}

/// How guest ids become host ids for one shared directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdMapping {
    /// As they are (root mode): a file written by guest uid 1000 is uid
    /// 1000's on the host.
    Identity,
    /// Rootless mode: `virtiofsd` runs as this host user and group
    /// (`uid`, `gid`); every guest id is written as them, and their files
    /// show in the guest as owned by `guest_uid`/`guest_gid` (the
    /// container's user, so what it creates stays its own to write).
    User {
        uid: u32,
        gid: u32,
        guest_uid: u32,
        guest_gid: u32,
    },
}

impl IdMapping {
    /// [`IdMapping::Identity`] as root; else the calling user's, shown in
    /// the guest as `guest` (uid, gid).
    pub fn for_this_process(guest: (u32, u32)) -> Self {
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if uid == 0 {
            IdMapping::Identity
        } else {
            IdMapping::User {
                uid,
                gid,
                guest_uid: guest.0,
                guest_gid: guest.1,
            }
        }
    }
}

/// The container's user as numbers, from `-u`/the image's `USER`
/// (`UID[:GID]`): what the user's files look like in the guest in
/// rootless mode. A name, which only the guest's `/etc/passwd` resolves,
/// counts as root; so does a missing group.
pub fn numeric_user(user: &str) -> (u32, u32) {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse().unwrap_or(0);
    let gid = g.parse().unwrap_or(0);
    (uid, gid)
}

/// One host directory to serve to the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// The guest's name for it (the device's tag): short, unique per VM.
    pub tag: String,
    /// The host directory (canonical: the apiserver resolved it).
    pub dir: PathBuf,
    /// Refuse every write on the host side.
    pub readonly: bool,
    /// The vhost-user socket QEMU connects to.
    pub socket: PathBuf,
    pub ids: IdMapping,
}

/// The command line of a `virtiofsd` serving `spec`.
///
/// `--cache auto`: the guest keeps attributes and directory entries for a
/// second and file data until the file's modification time changes on
/// open, so changes made on the host (or by another VM on a shared
/// volume) show within about a second; `always` would keep them until the
/// guest forgets, `never` makes every stat a round trip.
pub fn virtiofsd_args(spec: &ShareSpec) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "--socket-path".into(),
        spec.socket.clone().into_os_string(),
        "--shared-dir".into(),
        spec.dir.clone().into_os_string(),
        "--sandbox".into(),
        "namespace".into(),
        "--seccomp".into(),
        "kill".into(),
        "--cache".into(),
        "auto".into(),
        "--log-level".into(),
        "warn".into(),
        // Directories mounted under the shared one (a bind's submounts, a
        // pod's containers' roots) show in the guest as mounts of their
        // own: their inode numbers cannot clash with the parent's.
        "--announce-submounts".into(),
    ];
    if spec.readonly {
        a.push("--readonly".into());
    }
    match spec.ids {
        IdMapping::Identity => {
            // Root keeps CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID,
            // SETUID, SETFCAP (unused without --xattr) and MKNOD; not the
            // last.
            a.push("--modcaps=-mknod".into());
        }
        IdMapping::User {
            uid,
            gid,
            guest_uid,
            guest_gid,
        } => {
            // No capabilities to drop: it runs as the user.
            for (flag, id, guest) in [
                ("--translate-uid", uid, guest_uid),
                ("--translate-gid", gid, guest_gid),
            ] {
                a.push(flag.into());
                a.push(format!("squash-guest:0:{id}:4294967295").into());
                a.push(flag.into());
                a.push(format!("host:{id}:{guest}:1").into());
            }
        }
    }
    a
}

/// A running `virtiofsd` serving one directory to one VM.
#[derive(Debug)]
pub struct Virtiofsd {
    child: Child,
    spec: ShareSpec,
}

impl Virtiofsd {
    /// Start it and wait (up to `limit`) for its socket. Call from the
    /// thread that starts the VM (it dies with that thread).
    pub fn start(
        binary: &Path,
        spec: &ShareSpec,
        log: &Path,
        limit: Duration,
    ) -> Result<Self, VirtiofsError> {
        let _ = std::fs::remove_file(&spec.socket);
        let open = || OpenOptions::new().create(true).append(true).open(log);
        let out = open().map_err(|e| VirtiofsError::Log(log.to_path_buf(), e))?;
        let err = open().map_err(|e| VirtiofsError::Log(log.to_path_buf(), e))?;
        let mut cmd = Command::new(binary);
        cmd.args(virtiofsd_args(spec))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| VirtiofsError::Spawn(binary.to_path_buf(), e))?;
        let mut me = Self {
            child,
            spec: spec.clone(),
        };
        let deadline = Instant::now() + limit;
        loop {
            if spec.socket.exists() {
                return Ok(me);
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(VirtiofsError::Exited(
                    spec.dir.clone(),
                    status.to_string(),
                    last_lines(log),
                ));
            }
            if Instant::now() >= deadline {
                me.kill();
                return Err(VirtiofsError::NoSocket(
                    spec.dir.clone(),
                    limit,
                    log.to_path_buf(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Its pid (the outer process; the sandboxed server is its child).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn spec(&self) -> &ShareSpec {
        &self.spec
    }

    /// Kill and reap it. Its sandboxed child gets SIGTERM from its
    /// parent-death signal and exits (it also exits when QEMU's
    /// connection closes).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.spec.socket);
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last few lines of a log, for an error message.
fn last_lines(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    if tail.is_empty() {
        format!("no output; see {}", log.display())
    } else {
        tail
    }
}

/// Start one `virtiofsd` per share (in order). On a failure the ones
/// already started are killed (dropped) before the error returns.
pub fn start_all(
    shares: &[ShareSpec],
    logs_dir: &Path,
    limit: Duration,
) -> Result<Vec<Virtiofsd>, VirtiofsError> {
    if shares.is_empty() {
        return Ok(Vec::new());
    }
    let binary = virtiofsd_binary()?;
    let mut started = Vec::with_capacity(shares.len());
    for s in shares {
        let log = logs_dir.join(format!("virtiofsd-{}.log", s.tag));
        started.push(Virtiofsd::start(&binary, s, &log, limit)?);
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(readonly: bool, ids: IdMapping) -> ShareSpec {
        ShareSpec {
            tag: "m0".into(),
            dir: "/srv/data".into(),
            readonly,
            socket: "/run/vessel/x/fs-m0.sock".into(),
            ids,
        }
    }

    fn line(s: &ShareSpec) -> String {
        virtiofsd_args(s)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn root_mode_command_line() {
        assert_eq!(
            line(&spec(false, IdMapping::Identity)),
            "--socket-path /run/vessel/x/fs-m0.sock --shared-dir /srv/data \
             --sandbox namespace --seccomp kill --cache auto --log-level warn \
             --announce-submounts --modcaps=-mknod"
        );
    }

    #[test]
    fn read_only_is_enforced_by_virtiofsd() {
        let l = line(&spec(true, IdMapping::Identity));
        assert!(l.contains(" --readonly"), "{l}");
        assert!(!line(&spec(false, IdMapping::Identity)).contains("--readonly"));
    }

    #[test]
    fn rootless_maps_every_guest_id_to_the_user() {
        let ids = IdMapping::User {
            uid: 1001,
            gid: 1002,
            guest_uid: 1000,
            guest_gid: 0,
        };
        let l = line(&spec(false, ids));
        assert!(l.contains("--sandbox namespace"), "{l}");
        assert!(l.contains(
            "--translate-uid squash-guest:0:1001:4294967295 --translate-uid host:1001:1000:1 \
             --translate-gid squash-guest:0:1002:4294967295 --translate-gid host:1002:0:1"
        ));
        assert!(!l.contains("--modcaps"), "{l}");
    }

    #[test]
    fn container_user_as_numbers() {
        assert_eq!(numeric_user("1000:1000"), (1000, 1000));
        assert_eq!(numeric_user("1000"), (1000, 0));
        assert_eq!(numeric_user(""), (0, 0));
        assert_eq!(numeric_user("nobody:nogroup"), (0, 0));
        assert_eq!(numeric_user("33:www"), (33, 0));
    }

    #[test]
    fn no_tag_option() {
        // QEMU 7.1 to 8.0 crash on a backend that offers its tag.
        assert!(!line(&spec(false, IdMapping::Identity)).contains("--tag"));
    }

    #[test]
    fn missing_binary_override_is_named() {
        let e = VirtiofsError::BadOverride("/nope/virtiofsd".into());
        assert!(e.to_string().contains("/nope/virtiofsd"));
        assert!(VirtiofsError::NotFound
            .to_string()
            .contains("cargo install --locked virtiofsd@1.14.0"));
    }
}
