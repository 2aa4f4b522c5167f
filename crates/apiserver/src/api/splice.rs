//! Splicing two Unix stream connections: an upgraded client connection and
//! a connection to a container's runtime helper (`RUN/control.sock`).
//!
//! Bytes flow both ways as they come, through one buffer per direction (a
//! slow reader on one side slows the writer on the other; nothing piles
//! up). Half-close aware: when one side ends its sending (`shutdown(WR)`,
//! as `docker attach` does at the end of stdin), the other side reads the
//! end of its input and can still answer. When either side goes away
//! altogether (it closed its socket, it died), both connections are shut
//! and dropped at once: a client that leaves frees the runtime's
//! connection, and the other way round, even when neither has anything to
//! send. A closed socket is told from a half-closed one by `POLLHUP`, which
//! Linux sets on a Unix socket only when its peer closed both ways.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Size of each direction's buffer.
const BUF: usize = 64 * 1024;
/// How long the last bytes for a side may take to be written once the
/// other side has gone.
const LAST_WORDS: Duration = Duration::from_secs(5);

/// Bytes carried each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

struct Direction {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The source has ended its sending.
    eof: bool,
    /// The destination has been told (`shutdown(WR)`).
    closed: bool,
    carried: u64,
}

impl Direction {
    fn new(first: &[u8]) -> Self {
        let mut buf = vec![0u8; BUF.max(first.len())];
        buf[..first.len()].copy_from_slice(first);
        Self {
            buf,
            start: 0,
            end: first.len(),
            eof: false,
            closed: false,
            carried: 0,
        }
    }

    fn pending(&self) -> bool {
        self.start < self.end
    }

    fn wants_read(&self) -> bool {
        !self.eof && !self.pending()
    }
}

enum Step {
    Go,
    /// A side has gone: end everything.
    End,
}

/// Does `s` show `POLLHUP` (its peer closed both ways) or an error now?
fn hung_up(s: &UnixStream) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: p is a valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Move what can be moved now from `src` to `dst` through `d`.
fn pump(d: &mut Direction, mut src: &UnixStream, mut dst: &UnixStream) -> io::Result<Step> {
    loop {
        while d.pending() {
            match dst.write(&d.buf[d.start..d.end]) {
                Ok(n) => {
                    d.start += n;
                    d.carried += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Go),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The destination has gone.
                Err(_) => return Ok(Step::End),
            }
        }
        d.start = 0;
        d.end = 0;
        if d.eof {
            if !d.closed {
                d.closed = true;
                let _ = dst.shutdown(Shutdown::Write);
            }
            return Ok(Step::Go);
        }
        match src.read(&mut d.buf) {
            Ok(0) => {
                if hung_up(src) {
                    return Ok(Step::End);
                }
                d.eof = true;
            }
            Ok(n) => d.end = n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Go),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(Step::End),
        }
    }
}

/// Write what `d` still holds to `dst`, waiting at most [`LAST_WORDS`].
fn flush_last(d: &mut Direction, mut dst: &UnixStream) {
    if !d.pending() {
        return;
    }
    let _ = dst.set_nonblocking(false);
    let _ = dst.set_write_timeout(Some(LAST_WORDS));
    if dst.write_all(&d.buf[d.start..d.end]).is_ok() {
        d.carried += (d.end - d.start) as u64;
    }
    d.start = d.end;
}

/// Pass what `src` still has buffered to `dst` (bounded by
/// [`LAST_WORDS`]); the bytes passed.
fn drain_rest(mut src: &UnixStream, mut dst: &UnixStream) -> u64 {
    let _ = dst.set_nonblocking(false);
    let _ = dst.set_write_timeout(Some(LAST_WORDS));
    let mut buf = vec![0u8; BUF];
    let mut n = 0u64;
    loop {
        match src.read(&mut buf) {
            Ok(0) => return n,
            Ok(k) => {
                if dst.write_all(&buf[..k]).is_err() {
                    return n;
                }
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return n,
        }
    }
}

/// Carry bytes between `a` and `b` until both directions have ended or
/// either side has gone; `a_first` (already read from `a`) goes to `b`
/// first, `b_first` to `a`. Both connections are shut when this returns.
pub fn splice(a: UnixStream, a_first: &[u8], b: UnixStream, b_first: &[u8]) -> io::Result<Carried> {
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let mut ab = Direction::new(a_first);
    let mut ba = Direction::new(b_first);
    loop {
        let step_ab = pump(&mut ab, &a, &b)?;
        let step_ba = pump(&mut ba, &b, &a)?;
        if matches!(step_ab, Step::End) || matches!(step_ba, Step::End) {
            // One side has gone: what was read from the other side's
            // partner still reaches it, if it is there.
            flush_last(&mut ab, &b);
            flush_last(&mut ba, &a);
            break;
        }
        if ab.closed && ba.closed {
            break;
        }
        let events = |reading: &Direction, writing: &Direction| {
            let mut e = 0;
            if reading.wants_read() {
                e |= libc::POLLIN;
            }
            if writing.pending() {
                e |= libc::POLLOUT;
            }
            e
        };
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: events(&ab, &ba),
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: events(&ba, &ab),
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfds for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // A side that went away (its peer closed both ways): nothing can
        // reach it anymore; what it sent last still goes to the other side.
        let hup = |p: &libc::pollfd| p.revents & (libc::POLLHUP | libc::POLLERR) != 0;
        let (a_gone, b_gone) = (hup(&fds[0]), hup(&fds[1]));
        if a_gone || b_gone {
            flush_last(&mut ab, &b);
            flush_last(&mut ba, &a);
            if a_gone {
                ab.carried += drain_rest(&a, &b);
            }
            if b_gone {
                ba.carried += drain_rest(&b, &a);
            }
            break;
        }
    }
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
    Ok(Carried {
        a_to_b: ab.carried,
        b_to_a: ba.carried,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::thread;
    use std::time::Instant;

    fn spliced(
        a_first: &'static [u8],
        b_first: &'static [u8],
    ) -> (UnixStream, UnixStream, thread::JoinHandle<Carried>) {
        let (client, a) = UnixStream::pair().unwrap();
        let (b, runtime) = UnixStream::pair().unwrap();
        let h = thread::spawn(move || splice(a, a_first, b, b_first).unwrap());
        (client, runtime, h)
    }

    #[test]
    fn bytes_flow_both_ways_and_half_close_passes_through() {
        let (mut client, runtime, h) = spliced(b"early ", b"");
        // The runtime echoes in upper case until its input ends, then says bye.
        let echo = thread::spawn(move || {
            let mut r = std::io::BufReader::new(runtime.try_clone().unwrap());
            let mut w = runtime;
            let mut line = String::new();
            let mut got = String::new();
            while r.read_line(&mut line).unwrap() > 0 {
                got.push_str(&line);
                w.write_all(line.to_uppercase().as_bytes()).unwrap();
                line.clear();
            }
            w.write_all(b"bye\n").unwrap();
            got
        });
        client.write_all(b"hello\n").unwrap();
        let mut r = std::io::BufReader::new(client.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "EARLY HELLO\n");
        // 1 MiB through, more than any buffer on the way.
        let big: Vec<u8> = (0..(1 << 20)).map(|i| b'a' + (i % 26) as u8).collect();
        let mut w = client.try_clone().unwrap();
        let sender = thread::spawn(move || {
            w.write_all(&big).unwrap();
            w.write_all(b"\n").unwrap();
            // stdin's end: the runtime sees EOF, and still answers.
            w.shutdown(Shutdown::Write).unwrap();
        });
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line.len(), (1 << 20) + 1);
        assert!(line.starts_with("ABCDEFGHIJKLMNOPQRSTUVWXYZ"));
        sender.join().unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "bye\n");
        // The runtime is done: its close ends the client's stream.
        let got = echo.join().unwrap();
        assert!(got.starts_with("early hello\n"));
        line.clear();
        assert_eq!(r.read_line(&mut line).unwrap(), 0);
        let carried = h.join().unwrap();
        assert_eq!(carried.a_to_b, 6 + 6 + (1 << 20) + 1);
        assert_eq!(carried.b_to_a, 12 + (1 << 20) + 1 + 4);
    }

    #[test]
    fn a_client_that_goes_away_frees_the_runtime_connection() {
        // The runtime sends nothing: only the client's close can end it.
        let (client, runtime, h) = spliced(b"", b"");
        thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        drop(client);
        h.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(2));
        // The runtime sees its connection end.
        let mut buf = [0u8; 1];
        assert_eq!((&runtime).read(&mut buf).unwrap(), 0);
        assert!(hung_up(&runtime));
    }

    #[test]
    fn a_runtime_that_goes_away_frees_the_client_even_while_it_sends_nothing() {
        let (client, runtime, h) = spliced(b"", b"last words\n");
        drop(runtime);
        h.join().unwrap();
        let mut got = String::new();
        (&client).read_to_string(&mut got).unwrap();
        assert_eq!(got, "last words\n");
        assert!(hung_up(&client));
    }

    #[test]
    fn a_half_closed_side_that_then_closes_ends_it() {
        let (client, runtime, h) = spliced(b"", b"");
        // The client ends its input but keeps reading...
        client.shutdown(Shutdown::Write).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!((&runtime).read(&mut buf).unwrap(), 0, "EOF passed on");
        (&runtime).write_all(b"out").unwrap();
        assert_eq!((&client).read(&mut buf).unwrap(), 3);
        // ...then goes away: the runtime's connection is freed.
        drop(client);
        h.join().unwrap();
        assert!(hung_up(&runtime));
    }
}
