//! Socket activation: the listening socket handed over by a service manager
//! (systemd's `vessel.socket`, or `systemd-socket-activate` by hand).
//!
//! The protocol is systemd's `sd_listen_fds`: `LISTEN_PID` names the process
//! the sockets are for, `LISTEN_FDS` says how many there are, and they are
//! file descriptors 3, 4, ... in order. Variables meant for another process
//! (a parent that exported them and forked us) are ignored; either way they
//! are removed from the environment so no helper inherits them. vessel wants
//! exactly one socket: a listening Unix stream socket at the instance's API
//! socket path (the path the CLI connects to).

use std::fs;
use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The first file descriptor passed by the service manager.
pub const LISTEN_FDS_START: RawFd = 3;

/// Why a passed socket cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("LISTEN_FDS={0:?} is not a number of file descriptors")]
    BadCount(String),
    #[error("LISTEN_PID={0:?} is not a process id")]
    BadPid(String),
    #[error(
        "the service manager passed {0} sockets; vessel-apiserver listens on one: \
         give its socket unit a single ListenStream= line"
    )]
    TooMany(usize),
    #[error(
        "file descriptor {fd} passed by the service manager is not a listening \
         Unix stream socket ({what}); the socket unit needs ListenStream=PATH"
    )]
    NotUnixStream { fd: RawFd, what: String },
    #[error(
        "the service manager listens on {passed}, but this instance's API socket is \
         {wanted} (where `vessel` connects): set ListenStream={wanted} in the socket \
         unit, or VESSEL_HOME to the directory of {passed}"
    )]
    WrongPath { passed: String, wanted: PathBuf },
}

/// How many sockets were passed to process `me`, from the values of
/// `LISTEN_PID` and `LISTEN_FDS` (`sd_listen_fds` semantics: none when the
/// variables are absent or name another process).
pub fn passed_count(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    me: u32,
) -> Result<usize, ActivationError> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(0);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadPid(pid.to_string()))?;
    if pid != me {
        return Ok(0);
    }
    fds.trim()
        .parse()
        .map_err(|_| ActivationError::BadCount(fds.to_string()))
}

/// Take the listening socket passed by a service manager, if any, and
/// remove the activation variables from the environment.
///
/// Call it first thing in `main`, before any thread is started: it changes
/// the environment.
pub fn take_listener(api_socket: &Path) -> anyhow::Result<Option<UnixListener>> {
    let var = |k| std::env::var(k).ok();
    let count = passed_count(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        std::process::id(),
    );
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    let count = count?;
    if count == 0 {
        return Ok(None);
    }
    // Not inherited by the helpers and runtimes we start (sd_listen_fds
    // does the same).
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count as RawFd {
        // SAFETY: fcntl on a descriptor number has no memory-safety
        // preconditions; an invalid one only returns EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    if count > 1 {
        return Err(ActivationError::TooMany(count).into());
    }
    let fd = LISTEN_FDS_START;
    let path = listening_unix_path(fd)?;
    if !same_socket(&path, api_socket) {
        return Err(ActivationError::WrongPath {
            passed: path,
            wanted: api_socket.to_path_buf(),
        }
        .into());
    }
    // SAFETY: descriptor 3 was handed to this process by the service
    // manager (LISTEN_PID is ours), it is an open listening socket (checked
    // above), and nothing else in this process owns it.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    Ok(Some(listener))
}

/// The path of the listening Unix stream socket `fd`.
fn listening_unix_path(fd: RawFd) -> Result<String, ActivationError> {
    let bad = |what: &str| ActivationError::NotUnixStream {
        fd,
        what: what.to_string(),
    };
    let int_opt = |opt| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, a valid local.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    };
    match int_opt(libc::SO_TYPE) {
        None => return Err(bad("not an open socket")),
        Some(t) if t != libc::SOCK_STREAM => return Err(bad("not a stream socket")),
        Some(_) => {}
    }
    if int_opt(libc::SO_ACCEPTCONN) != Some(1) {
        return Err(bad("not listening"));
    }
    // SAFETY: an all-zero sockaddr_un is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr`, a valid local.
    let rc = unsafe {
        libc::getsockname(
            fd,
            &mut addr as *mut libc::sockaddr_un as *mut libc::sockaddr,
            &mut len,
        )
    };
    if rc != 0 || addr.sun_family != libc::AF_UNIX as libc::sa_family_t {
        return Err(bad("not a Unix socket"));
    }
    let offset = std::mem::size_of::<libc::sa_family_t>();
    let n = (len as usize)
        .saturating_sub(offset)
        .min(addr.sun_path.len());
    let raw: Vec<u8> = addr.sun_path[..n].iter().map(|c| *c as u8).collect();
    if raw.first().is_none_or(|b| *b == 0) {
        return Err(bad("an abstract or unnamed socket"));
    }
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    Ok(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// Whether `passed` and `wanted` name the same socket file (same path, or
/// the same inode reached through another path).
fn same_socket(passed: &str, wanted: &Path) -> bool {
    if Path::new(passed) == wanted {
        return true;
    }
    match (fs::metadata(passed), fs::metadata(wanted)) {
        (Ok(a), Ok(b)) => a.st_dev() == b.st_dev() && a.st_ino() == b.st_ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_follows_sd_listen_fds() {
        assert_eq!(passed_count(None, None, 7).unwrap(), 0);
        assert_eq!(passed_count(Some("7"), None, 7).unwrap(), 0);
        assert_eq!(passed_count(None, Some("1"), 7).unwrap(), 0);
        assert_eq!(passed_count(Some("7"), Some("1"), 7).unwrap(), 1);
        assert_eq!(passed_count(Some(" 7\n"), Some("2"), 7).unwrap(), 2);
        // Meant for another process (a parent that exported them).
        assert_eq!(passed_count(Some("8"), Some("1"), 7).unwrap(), 0);
        assert!(matches!(
            passed_count(Some("x"), Some("1"), 7),
            Err(ActivationError::BadPid(_))
        ));
        assert!(matches!(
            passed_count(Some("7"), Some("-1"), 7),
            Err(ActivationError::BadCount(_))
        ));
    }

    #[test]
    fn a_listening_unix_socket_is_recognised_by_path_and_inode() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let path = listening_unix_path(l.as_raw_fd()).unwrap();
        assert_eq!(Path::new(&path), sock);
        assert!(same_socket(&path, &sock));
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        assert!(same_socket(&path, &link));
        assert!(!same_socket(&path, &dir.path().join("other.sock")));
    }

    #[test]
    fn other_descriptors_are_refused_with_the_reason() {
        use std::os::fd::AsRawFd;
        let f = tempfile::tempfile().unwrap();
        let e = listening_unix_path(f.as_raw_fd()).unwrap_err();
        assert!(e.to_string().contains("not an open socket"), "{e}");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = listening_unix_path(a.as_raw_fd()).unwrap_err();
        assert!(e.to_string().contains("not listening"), "{e}");
        let d = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let e = listening_unix_path(d.as_raw_fd()).unwrap_err();
        assert!(e.to_string().contains("not a stream socket"), "{e}");
    }
}
