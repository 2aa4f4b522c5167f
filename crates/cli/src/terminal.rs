//! The host's terminal under `-t`: raw mode (restored on every way out),
//! its size, and Docker's detach keys.

use anyhow::{bail, Result};
use std::io::IsTerminal;
use std::os::fd::RawFd;
use std::sync::Mutex;

/// The termios that was in effect before raw mode, for every restorer
/// (the guard's drop and the signal-driven exit).
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);

/// Raw mode on a terminal, while this guard lives.
pub struct RawMode(());

impl RawMode {
    /// Put `fd` (stdin) in raw mode, if it is a terminal.
    pub fn enable(fd: RawFd) -> Result<Option<RawMode>> {
        // SAFETY: isatty has no memory-safety preconditions.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: termios is a plain C struct; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a valid pointer.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            bail!(
                "reading the terminal's settings: {}",
                std::io::Error::last_os_error()
            );
        }
        let saved = t;
        // SAFETY: cfmakeraw edits the valid struct in place.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: a valid descriptor and a valid pointer.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
            bail!(
                "setting the terminal to raw mode: {}",
                std::io::Error::last_os_error()
            );
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some((fd, saved));
        Ok(Some(RawMode(())))
    }
}

/// Put the terminal back as it was (idempotent; safe from any thread).
pub fn restore() {
    if let Some((fd, t)) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // SAFETY: a valid descriptor and a valid pointer.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// The size of the terminal on `fd`, if it is one.
pub fn size(fd: RawFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the valid pointer.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Is stdin a terminal?
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Parse Docker's `--detach-keys` (`ctrl-p,ctrl-q`, `a`, `ctrl-@`...): the
/// byte sequence that detaches.
pub fn parse_detach_keys(spec: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for key in spec.split(',') {
        let key = key.trim();
        let b = match key.strip_prefix("ctrl-") {
            Some(c) if c.len() == 1 => {
                let c = c.as_bytes()[0].to_ascii_lowercase();
                match c {
                    b'a'..=b'z' => c - b'a' + 1,
                    b'@' => 0,
                    b'[' => 27,
                    b'\\' => 28,
                    b']' => 29,
                    b'^' => 30,
                    b'_' => 31,
                    _ => bail!(
                        "invalid detach key {key:?}: ctrl- is followed by a-z, @, [, \\, ], ^ or _"
                    ),
                }
            }
            Some(_) => bail!("invalid detach key {key:?}"),
            None if key.len() == 1 && key.is_ascii() => key.as_bytes()[0],
            None => bail!("invalid detach key {key:?}: a single character or ctrl-X"),
        };
        out.push(b);
    }
    if out.is_empty() {
        bail!("empty --detach-keys");
    }
    Ok(out)
}

/// Docker's default detach keys: Ctrl-P Ctrl-Q.
pub const DEFAULT_DETACH_KEYS: &[u8] = &[16, 17];

/// Watches typed input for the detach sequence.
#[derive(Debug)]
pub struct DetachWatch {
    keys: Vec<u8>,
    matched: usize,
}

/// What to do with a chunk of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// Send these bytes on (a partial match is held back).
    Forward(Vec<u8>),
    /// The sequence was typed: detach, after sending these bytes.
    Detach(Vec<u8>),
}

impl DetachWatch {
    pub fn new(keys: Vec<u8>) -> Self {
        Self { keys, matched: 0 }
    }

    pub fn feed(&mut self, data: &[u8]) -> Input {
        let mut out = Vec::with_capacity(data.len());
        for &b in data {
            if self.keys.is_empty() {
                out.push(b);
                continue;
            }
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return Input::Detach(out);
                }
            } else {
                // The held-back prefix was ordinary input after all.
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
                if b == self.keys[0] {
                    self.matched = 1;
                } else {
                    out.push(b);
                }
            }
        }
        Input::Forward(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_as_docker_writes_them() {
        assert_eq!(
            parse_detach_keys("ctrl-p,ctrl-q").unwrap(),
            DEFAULT_DETACH_KEYS
        );
        assert_eq!(
            parse_detach_keys("a,ctrl-@,ctrl-[").unwrap(),
            vec![b'a', 0, 27]
        );
        for bad in ["", "ctrl-", "ctrl-1", "ab", "ctrl-pq"] {
            assert!(parse_detach_keys(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_sequence_detaches_and_a_false_start_is_forwarded() {
        let mut w = DetachWatch::new(DEFAULT_DETACH_KEYS.to_vec());
        assert_eq!(w.feed(b"ls\r"), Input::Forward(b"ls\r".to_vec()));
        // Ctrl-P alone is held back, then released with what follows.
        assert_eq!(w.feed(&[16]), Input::Forward(vec![]));
        assert_eq!(w.feed(b"x"), Input::Forward(vec![16, b'x']));
        // Ctrl-P Ctrl-P Ctrl-Q: the first Ctrl-P is input.
        assert_eq!(w.feed(&[16, 16]), Input::Forward(vec![16]));
        assert_eq!(w.feed(&[17]), Input::Detach(vec![]));
        assert_eq!(w.feed(&[b'a', 16, 17, b'b']), Input::Detach(vec![b'a']));
        let mut none = DetachWatch::new(vec![]);
        assert_eq!(none.feed(&[16, 17]), Input::Forward(vec![16, 17]));
    }
}
