//! Terminals for container processes (`-t`): a pseudo-terminal pair from
//! the container's own devpts instance, so the process sees its terminal as
//! `/dev/pts/N` inside its root.

use agent_protocol::WinSize;
use nix::errno::Errno;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The default size when the host gives none (Docker's too).
pub const DEFAULT_SIZE: WinSize = WinSize { rows: 24, cols: 80 };

/// A master (kept by vminitd) and its slave (the process's stdio).
pub struct Pty {
    pub master: File,
    pub slave: OwnedFd,
}

/// Open a pair from the devpts mounted at `pts` (e.g. `ROOT/dev/pts`), of
/// size `size`, the slave owned by `uid`.
pub fn open(pts: &Path, size: WinSize, uid: u32) -> Result<Pty, String> {
    let ptmx = CString::new(pts.join("ptmx").as_os_str().as_bytes())
        .map_err(|_| "pty path contains a NUL byte".to_string())?;
    // SAFETY: a NUL-terminated path; open returns a new descriptor or -1.
    let fd = unsafe {
        libc::open(
            ptmx.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "open {}: {}",
            pts.join("ptmx").display(),
            Errno::last().desc()
        ));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let master = unsafe { File::from_raw_fd(fd) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from the valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(format!("unlock pty: {}", Errno::last().desc()));
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let sfd = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if sfd < 0 {
        return Err(format!("open the pty's peer: {}", Errno::last().desc()));
    }
    // SAFETY: `sfd` is a fresh descriptor that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(sfd) };
    // The process's user owns its terminal (programs like `script` or
    // `tmux` chmod it); gid stays (devpts gives gid 5, "tty").
    // SAFETY: fchown on a valid descriptor.
    unsafe { libc::fchown(slave.as_raw_fd(), uid, u32::MAX) };
    resize(&master, size)?;
    Ok(Pty { master, slave })
}

/// Set the terminal's size; the kernel sends SIGWINCH to its foreground
/// process group.
pub fn resize(master: &File, size: WinSize) -> Result<(), String> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(format!("resize the terminal: {}", Errno::last().desc()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_pair_carries_bytes_and_its_size() {
        // The host's own devpts stands in for the container's.
        let pts = Path::new("/dev/pts");
        if !pts.join("ptmx").exists() {
            eprintln!("skipped: no /dev/pts/ptmx");
            return;
        }
        let pty = open(
            pts,
            WinSize {
                rows: 33,
                cols: 101,
            },
            nix::unistd::getuid().as_raw(),
        )
        .unwrap();
        let mut ws: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let size = |ws: &mut libc::winsize| {
            // SAFETY: TIOCGWINSZ fills the valid pointer.
            unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, ws) }
        };
        assert_eq!(size(&mut ws), 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));
        resize(&pty.master, WinSize { rows: 10, cols: 20 }).unwrap();
        assert_eq!(size(&mut ws), 0);
        assert_eq!((ws.ws_row, ws.ws_col), (10, 20));
        let mut slave = File::from(pty.slave);
        slave.write_all(b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = (&pty.master).read(&mut buf).unwrap();
        // The line discipline turns \n into \r\n.
        assert_eq!(&buf[..n], b"hi\r\n");
    }
}
