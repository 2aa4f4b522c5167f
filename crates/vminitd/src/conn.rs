//! One connection from the host: framed messages over a stream socket.

use agent_protocol::{
    decode_message, write_frame, write_message, Frame, FrameDecoder, FrameKind, GuestMessage,
    HostMessage, MAX_STDIO_CHUNK,
};
use nix::errno::Errno;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Wait until `fd` is readable (or hung up), at most `timeout` (None = forever).
/// Returns false on timeout.
pub fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    loop {
        // SAFETY: `pfd` is a valid pollfd array of length 1 for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        return r != 0;
    }
}

/// The host connection.
pub struct Conn {
    file: File,
    dec: FrameDecoder,
}

impl Conn {
    pub fn new(fd: OwnedFd) -> Self {
        Self {
            file: File::from(fd),
            dec: FrameDecoder::new(),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn send(&mut self, msg: &GuestMessage) -> Result<(), String> {
        write_message(&mut self.file, msg).map_err(|e| format!("send to host: {e}"))
    }

    pub fn send_data(&mut self, kind: FrameKind, data: &[u8]) -> Result<(), String> {
        for chunk in data.chunks(MAX_STDIO_CHUNK) {
            write_frame(&mut self.file, kind, chunk).map_err(|e| format!("send to host: {e}"))?;
        }
        Ok(())
    }

    /// A buffered frame, if a complete one is there.
    pub fn buffered(&mut self) -> Result<Option<Frame>, String> {
        self.dec
            .next_frame()
            .map_err(|e| format!("protocol error: {e}"))
    }

    /// One read from the socket into the decoder. Returns false at EOF.
    pub fn fill(&mut self) -> Result<bool, String> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.dec.feed(&buf[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read from host: {e}")),
            }
        }
    }

    /// Next frame, blocking up to `timeout`. `Ok(None)` at EOF or timeout.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Frame>, String> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(f) = self.buffered()? {
                return Ok(Some(f));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) || !wait_readable(self.fd(), left) {
                return Ok(None);
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }
}

/// Decode a control frame from the host.
pub fn decode_host(frame: &Frame) -> Result<HostMessage, String> {
    decode_message::<HostMessage>(frame).map_err(|e| {
        let src = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        format!("protocol error: {e}{src}")
    })
}
