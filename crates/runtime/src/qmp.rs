//! A minimal client of QEMU's machine protocol (QMP): one command per
//! connection. Every VM has its QMP socket (`RUN/qmp.sock`), for a person
//! diagnosing it and for the runtime. `vessel pause` does not use QMP's
//! `stop`/`cont`, it stops the VMM process (see `Qemu::pause` in
//! `vmm.rs`).
//!
//! QMP is line-delimited JSON: QEMU greets with `{"QMP": ...}`, the client
//! sends `{"execute":"qmp_capabilities"}`, then commands; each answer is
//! `{"return": ...}` or `{"error": {"class", "desc"}}`, and asynchronous
//! `{"event": ...}` lines may come in between.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Errors talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("Could not reach QEMU's control socket {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("QMP I/O error")]
    Io(#[from] std::io::Error),
    #[error("QEMU refused {0}: {1}")]
    Refused(String, String),
    #[error("Malformed QMP line: {0:?}")]
    Malformed(String),
    #[error("QEMU closed its control socket")]
    Closed,
}

/// The answer to a command: `Ok` with what `return` holds, the `desc` of an
/// `error`. `None` for lines that are not answers (greetings, events).
pub fn parse_answer(line: &str) -> Result<Option<Result<serde_json::Value, String>>, QmpError> {
    let mut v: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|_| QmpError::Malformed(line.chars().take(200).collect()))?;
    if let Some(r) = v.get_mut("return") {
        return Ok(Some(Ok(r.take())));
    }
    if let Some(e) = v.get("error") {
        let desc = e
            .get("desc")
            .and_then(|d| d.as_str())
            .unwrap_or("unknown error")
            .to_string();
        return Ok(Some(Err(desc)));
    }
    Ok(None)
}

/// One QMP connection, past the greeting and capabilities negotiation.
pub struct Session {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Session {
    /// Connect to the QMP socket at `path`; every answer must come within
    /// `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .map_err(|e| QmpError::Connect(path.display().to_string(), e))?;
        stream.set_read_timeout(Some(timeout))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut s = Self { stream, reader };
        let mut greeting = String::new();
        if s.reader.read_line(&mut greeting)? == 0 {
            return Err(QmpError::Closed);
        }
        s.call("qmp_capabilities", None)?;
        Ok(s)
    }

    /// Run `command` with `arguments`; what its `return` holds.
    pub fn call(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, QmpError> {
        self.stream
            .write_all(Self::line(command, arguments).as_bytes())?;
        self.answer(command)
    }

    /// Run `command`, passing QEMU a copy of `fd` with it (`getfd`).
    pub fn call_with_fd(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
        fd: RawFd,
    ) -> Result<serde_json::Value, QmpError> {
        send_with_fd(&self.stream, Self::line(command, arguments).as_bytes(), fd)?;
        self.answer(command)
    }

    fn line(command: &str, arguments: Option<serde_json::Value>) -> String {
        let mut cmd = serde_json::json!({ "execute": command });
        if let Some(a) = arguments {
            cmd["arguments"] = a;
        }
        format!("{cmd}\n")
    }

    fn answer(&mut self, what: &str) -> Result<serde_json::Value, QmpError> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(QmpError::Closed);
            }
            match parse_answer(&line)? {
                Some(Ok(v)) => return Ok(v),
                Some(Err(desc)) => return Err(QmpError::Refused(what.to_string(), desc)),
                None => {}
            }
        }
    }
}

/// Write `data` on `stream` with `fd` attached (`SCM_RIGHTS`).
fn send_with_fd(stream: &UnixStream, data: &[u8], fd: RawFd) -> Result<(), QmpError> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `control`, which has room for one cmsghdr
    // carrying one descriptor (CMSG_SPACE above); CMSG_FIRSTHDR is then
    // non-null and CMSG_DATA inside `control`.
    let sent = unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
        libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(QmpError::Io(std::io::Error::last_os_error()));
    }
    if (sent as usize) < data.len() {
        (&*stream).write_all(&data[sent as usize..])?;
    }
    Ok(())
}

/// Run `command` (no arguments) on the QMP socket at `path`.
pub fn execute(path: &Path, command: &str) -> Result<(), QmpError> {
    Session::connect(path, Duration::from_secs(10))?.call(command, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn answers_events_and_errors() {
        assert_eq!(
            parse_answer("{\"return\": {}}").unwrap(),
            Some(Ok(serde_json::json!({})))
        );
        assert_eq!(
            parse_answer("{\"event\":\"STOP\",\"timestamp\":{}}").unwrap(),
            None
        );
        assert_eq!(
            parse_answer("{\"error\":{\"class\":\"GenericError\",\"desc\":\"no\"}}").unwrap(),
            Some(Err("no".into()))
        );
        assert!(parse_answer("nonsense").is_err());
    }

    #[test]
    fn a_command_against_a_fake_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = &s;
            let mut r = BufReader::new(&s);
            w.write_all(b"{\"QMP\": {\"version\": {}}}\n").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            w.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("\"stop\""), "{line}");
            w.write_all(b"{\"event\": \"STOP\"}\n{\"return\": {}}\n")
                .unwrap();
        });
        execute(&path, "stop").unwrap();
        server.join().unwrap();
        assert!(matches!(
            execute(&dir.path().join("none.sock"), "stop"),
            Err(QmpError::Connect(..))
        ));
    }

    #[test]
    fn a_descriptor_travels_with_its_command() {
        use std::os::fd::FromRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = &s;
            let mut r = BufReader::new(&s);
            w.write_all(b"{\"QMP\": {}}\n").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            w.write_all(b"{\"return\": {}}\n").unwrap();
            // The next command comes with a descriptor.
            let mut buf = [0u8; 256];
            let mut control = [0u8; 64];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            // SAFETY: msghdr is plain data; zeroed is a valid empty header.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = control.len() as _;
            // SAFETY: `msg` points at `buf` and `control`, both alive.
            let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, 0) };
            assert!(n > 0);
            let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
            assert!(
                text.contains("\"getfd\"") && text.contains("\"fdname\":\"x\""),
                "{text}"
            );
            // SAFETY: recvmsg filled `control`; the header is checked
            // non-null before its data is read.
            let fd = unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                assert!(!c.is_null());
                std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const RawFd)
            };
            // SAFETY: the descriptor just received is ours alone.
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            f.write_all(b"through the fd").unwrap();
            w.write_all(b"{\"return\": {\"n\": 1}}\n").unwrap();
        });
        let file = dir.path().join("f");
        let f = std::fs::File::create(&file).unwrap();
        let mut s = Session::connect(&path, Duration::from_secs(5)).unwrap();
        let v = s
            .call_with_fd(
                "getfd",
                Some(serde_json::json!({"fdname": "x"})),
                f.as_raw_fd(),
            )
            .unwrap();
        assert_eq!(v["n"], 1);
        server.join().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "through the fd");
    }
}
