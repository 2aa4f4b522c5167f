//! Many byte streams over one: the host↔guest transport on the
//! virtio-serial port [`PORT_NAME`].
//!
//! A virtio-serial port is one byte stream and, unlike vhost-user vsock,
//! survives QEMU's migration (the base of VM templates). This module carries
//! what vsock carried: connections the host opens to a guest port, each a
//! full-duplex byte stream with half-close and abort.
//!
//! ## Frames
//! A 9-byte header, `kind: u8`, `stream: u32 BE`, `len: u32 BE`, then `len`
//! payload bytes:
//!
//! | kind | name        | from  | payload                        |
//! |------|-------------|-------|--------------------------------|
//! | 1    | `HELLO`     | host  | [`MAGIC`], epoch `u64 BE`      |
//! | 2    | `HELLO_ACK` | guest | [`MAGIC`], the same epoch      |
//! | 3    | `OPEN`      | host  | guest port `u32 BE`            |
//! | 4    | `ACCEPT`    | guest | —                              |
//! | 5    | `DATA`      | both  | 1..=[`MAX_DATA`] bytes         |
//! | 6    | `CREDIT`    | both  | bytes consumed `u32 BE`        |
//! | 7    | `EOF`       | both  | — (no more `DATA` this way)    |
//! | 8    | `RESET`     | both  | — (the stream is aborted)      |
//!
//! ## Flow control
//! Each direction of each stream has a window of [`WINDOW`] bytes: a sender
//! sends no more `DATA` than the credit it holds (the window at first), and
//! the receiver returns credit as its local consumer drains the bytes. So
//! the demultiplexing reader only ever appends to bounded buffers and never
//! blocks on a local write: a slow reader of one stream stalls that stream
//! only. A peer that overruns a window, or sends garbage, is an error logged
//! and acted on, never a panic.
//!
//! ## Restarts
//! The host speaks first: [`SYNC_FILLER`] zero bytes (enough to complete any
//! frame a previous host left half-written, so the guest's decoder fails on
//! the zeros and looks for a `HELLO`), then `HELLO` with a fresh epoch. The
//! guest, on any `HELLO`, drops every stream it had (they belonged to a host
//! that is gone) and answers `HELLO_ACK`; the host ignores everything before
//! the answer carrying its epoch. While no host is connected the guest's
//! reads return end-of-file: it drops its streams and waits for the next
//! host (a VM restored from a saved state meets a new host process).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The virtio-serial port's name (`/sys/class/virtio-ports/*/name`).
pub const PORT_NAME: &str = "vessel.agent";
/// Bytes in flight (sent, not yet consumed) per stream and direction.
pub const WINDOW: u32 = 256 * 1024;
/// Largest `DATA` payload.
pub const MAX_DATA: usize = 64 * 1024;
/// Most streams open at once; more `OPEN`s are refused.
pub const MAX_STREAMS: usize = 1024;
/// Marks `HELLO` and `HELLO_ACK`, so a side hunting for one finds it.
pub const MAGIC: [u8; 8] = *b"vsl-mux1";
/// Header size.
pub const HEADER: usize = 9;
/// Zero bytes the host sends before its `HELLO`: longer than any frame.
pub const SYNC_FILLER: usize = HEADER + MAX_DATA;

const HELLO: u8 = 1;
const HELLO_ACK: u8 = 2;
const OPEN: u8 = 3;
const ACCEPT: u8 = 4;
const DATA: u8 = 5;
const CREDIT: u8 = 6;
const EOF: u8 = 7;
const RESET: u8 = 8;

/// How long the guest waits before reading again while no host is there.
const NO_HOST_POLL: Duration = Duration::from_millis(50);

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(u64),
    HelloAck(u64),
    Open { stream: u32, port: u32 },
    Accept(u32),
    Data(u32, Vec<u8>),
    Credit(u32, u32),
    Eof(u32),
    Reset(u32),
}

/// Errors of the multiplexer.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("Malformed mux frame header (kind {kind}, length {len})")]
    BadHeader { kind: u8, len: u32 },
    #[error("Unexpected mux frame {0} from the peer")]
    Unexpected(&'static str),
    #[error("The guest agent has not answered the mux HELLO yet")]
    NotReady,
    #[error("The mux link is closed")]
    Closed,
    #[error("The guest refused a connection to port {0}")]
    Refused(u32),
    #[error("The guest did not answer a connection to port {0} within {1:?}")]
    Timeout(u32, Duration),
    #[error("Too many open mux streams")]
    TooManyStreams,
    #[error("Writing to the mux link failed")]
    Write(#[source] io::Error),
}

impl Frame {
    /// The frame's bytes, header included.
    pub fn encode(&self) -> Vec<u8> {
        let hello = |e: &u64| {
            let mut p = MAGIC.to_vec();
            p.extend_from_slice(&e.to_be_bytes());
            p
        };
        let (kind, stream, payload): (u8, u32, Cow<'_, [u8]>) = match self {
            Frame::Hello(e) => (HELLO, 0, hello(e).into()),
            Frame::HelloAck(e) => (HELLO_ACK, 0, hello(e).into()),
            Frame::Open { stream, port } => (OPEN, *stream, port.to_be_bytes().to_vec().into()),
            Frame::Accept(s) => (ACCEPT, *s, Cow::Borrowed(&[])),
            Frame::Data(s, d) => return data_frame(*s, d),
            Frame::Credit(s, n) => (CREDIT, *s, n.to_be_bytes().to_vec().into()),
            Frame::Eof(s) => (EOF, *s, Cow::Borrowed(&[])),
            Frame::Reset(s) => (RESET, *s, Cow::Borrowed(&[])),
        };
        let mut out = header(kind, stream, payload.len());
        out.extend_from_slice(&payload);
        out
    }
}

/// A `DATA` frame's bytes.
fn data_frame(stream: u32, data: &[u8]) -> Vec<u8> {
    let mut out = header(DATA, stream, data.len());
    out.extend_from_slice(data);
    out
}

fn header(kind: u8, stream: u32, len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER + len);
    h.push(kind);
    h.extend_from_slice(&stream.to_be_bytes());
    h.extend_from_slice(&(len as u32).to_be_bytes());
    h
}

/// The bytes a side hunting for a `HELLO` (any epoch) looks for.
fn hello_prefix() -> Vec<u8> {
    let mut p = header(HELLO, 0, 16);
    p.extend_from_slice(&MAGIC);
    p
}

/// Frames from a byte stream. Never panics on any input.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Drop everything before the first occurrence of `pattern`; true if
    /// found. Otherwise keep only a tail that may start it.
    pub fn hunt(&mut self, pattern: &[u8]) -> bool {
        if let Some(at) = self.buf.windows(pattern.len()).position(|w| w == pattern) {
            self.buf.drain(..at);
            return true;
        }
        let keep = pattern.len().saturating_sub(1).min(self.buf.len());
        self.buf.drain(..self.buf.len() - keep);
        false
    }

    /// The next complete frame, if buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, MuxError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let kind = self.buf[0];
        let stream = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let len = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]);
        let ok = match kind {
            HELLO | HELLO_ACK => len == 16 && stream == 0,
            OPEN | CREDIT => len == 4,
            ACCEPT | EOF | RESET => len == 0,
            DATA => len >= 1 && len as usize <= MAX_DATA,
            _ => false,
        };
        if !ok {
            return Err(MuxError::BadHeader { kind, len });
        }
        let total = HEADER + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let p = &self.buf[HEADER..total];
        let word = |p: &[u8]| u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        let frame = match kind {
            HELLO | HELLO_ACK => {
                if p[..8] != MAGIC {
                    return Err(MuxError::BadHeader { kind, len });
                }
                let mut e = [0u8; 8];
                e.copy_from_slice(&p[8..16]);
                let epoch = u64::from_be_bytes(e);
                if kind == HELLO {
                    Frame::Hello(epoch)
                } else {
                    Frame::HelloAck(epoch)
                }
            }
            OPEN => Frame::Open {
                stream,
                port: word(p),
            },
            ACCEPT => Frame::Accept(stream),
            DATA => Frame::Data(stream, p.to_vec()),
            CREDIT => Frame::Credit(stream, word(p)),
            EOF => Frame::Eof(stream),
            _ => Frame::Reset(stream),
        };
        self.buf.drain(..total);
        Ok(Some(frame))
    }
}

/// Which end of the link this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Host,
    Guest,
}

/// Called with a guest port when the host opens a stream; returns the
/// local end to pump, or `None` to refuse.
pub type Acceptor = Box<dyn Fn(u32) -> Option<UnixStream> + Send + Sync>;
/// Where the mux logs (a line without newline).
pub type Logger = fn(&str);

#[derive(Default)]
struct StreamState {
    /// Received, not yet written to the local end.
    inbound: VecDeque<Vec<u8>>,
    inbound_bytes: usize,
    inbound_eof: bool,
    /// What we may still send.
    credit: u32,
    reset: bool,
    /// Host: the guest's answer to `OPEN`.
    accepted: Option<bool>,
    out_done: bool,
    in_done: bool,
}

struct Stream {
    id: u32,
    /// The guest's generation (bumped by each `HELLO`) it belongs to.
    generation: u64,
    /// A handle on the local end, to shut it down on abort.
    local: UnixStream,
    st: Mutex<StreamState>,
    cond: Condvar,
}

impl Stream {
    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Abort locally: wake both pumps and the local user.
    fn abort(&self) {
        self.lock().reset = true;
        let _ = self.local.shutdown(Shutdown::Both);
        self.cond.notify_all();
    }
}

struct Writer {
    link: Box<dyn Write + Send>,
    generation: u64,
}

struct Table {
    streams: HashMap<u32, Arc<Stream>>,
    next_id: u32,
    ready: bool,
    dead: bool,
}

/// One end of a multiplexed link.
pub struct Mux {
    side: Side,
    epoch: u64,
    writer: Mutex<Writer>,
    table: Mutex<Table>,
    cond: Condvar,
    acceptor: Option<Acceptor>,
    log: Logger,
    stop: AtomicBool,
}

impl Mux {
    /// The host end: greets the guest with a fresh epoch and serves the link
    /// until it closes. `on_ready` runs (on a thread of its own) when the
    /// guest answers.
    pub fn host(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        log: Logger,
        on_ready: Box<dyn FnOnce() + Send>,
    ) -> Result<Arc<Mux>, MuxError> {
        let mux = Arc::new(Mux::new(Side::Host, fresh_epoch(), writer, None, log));
        {
            let mut w = mux.write_lock();
            let mut hello = vec![0u8; SYNC_FILLER];
            hello.extend_from_slice(&Frame::Hello(mux.epoch).encode());
            w.link.write_all(&hello).map_err(MuxError::Write)?;
            w.link.flush().map_err(MuxError::Write)?;
        }
        let m = Arc::clone(&mux);
        std::thread::Builder::new()
            .name("mux-read".into())
            .spawn(move || m.read_loop(reader, Some(on_ready)))
            .map_err(MuxError::Write)?;
        Ok(mux)
    }

    /// The guest end: answers each `HELLO`, hands each stream the host opens
    /// to `acceptor`. Serves the link until [`Mux::close`].
    pub fn guest(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        log: Logger,
        acceptor: Acceptor,
    ) -> Result<Arc<Mux>, MuxError> {
        let mux = Arc::new(Mux::new(Side::Guest, 0, writer, Some(acceptor), log));
        let m = Arc::clone(&mux);
        std::thread::Builder::new()
            .name("mux-read".into())
            .spawn(move || m.read_loop(reader, None))
            .map_err(MuxError::Write)?;
        Ok(mux)
    }

    fn new(
        side: Side,
        epoch: u64,
        writer: impl Write + Send + 'static,
        acceptor: Option<Acceptor>,
        log: Logger,
    ) -> Self {
        Self {
            side,
            epoch,
            writer: Mutex::new(Writer {
                link: Box::new(writer),
                generation: 0,
            }),
            table: Mutex::new(Table {
                streams: HashMap::new(),
                next_id: 1,
                ready: false,
                dead: false,
            }),
            cond: Condvar::new(),
            acceptor,
            log,
            stop: AtomicBool::new(false),
        }
    }

    /// Whether the guest has answered (host) / a host has greeted (guest).
    pub fn is_ready(&self) -> bool {
        self.table().ready
    }

    /// Whether the link has closed for good (host side).
    pub fn is_closed(&self) -> bool {
        self.table().dead
    }

    /// Wait up to `limit` for [`Mux::is_ready`].
    pub fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut t = self.table();
        while !t.ready && !t.dead {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            t = self
                .cond
                .wait_timeout(t, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        t.ready
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.table().streams.len()
    }

    /// Stop serving: every stream is aborted. The guest's reader stops at
    /// its next end-of-file; the owner closes the link itself.
    pub fn close(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.die();
    }

    /// Host: open a stream to guest `port` carrying `local`, waiting up to
    /// `limit` for the guest to accept it. Once it has, `greeting` is
    /// written to `local` before any byte from the guest.
    pub fn connect(
        self: &Arc<Self>,
        port: u32,
        mut local: UnixStream,
        limit: Duration,
        greeting: &[u8],
    ) -> Result<(), MuxError> {
        let handle = local.try_clone().map_err(MuxError::Write)?;
        let stream = {
            let mut t = self.table();
            if t.dead {
                return Err(MuxError::Closed);
            }
            if !t.ready {
                return Err(MuxError::NotReady);
            }
            if t.streams.len() >= MAX_STREAMS {
                return Err(MuxError::TooManyStreams);
            }
            let mut id = t.next_id;
            while id == 0 || t.streams.contains_key(&id) {
                id = id.wrapping_add(1);
            }
            t.next_id = id.wrapping_add(1);
            let s = Arc::new(new_stream(id, 0, handle));
            t.streams.insert(id, Arc::clone(&s));
            s
        };
        self.send(
            None,
            &Frame::Open {
                stream: stream.id,
                port,
            },
        )?;
        let deadline = Instant::now() + limit;
        let answer = {
            let mut st = stream.lock();
            loop {
                if st.reset {
                    break Some(false);
                }
                if let Some(a) = st.accepted {
                    break Some(a);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break None;
                }
                st = stream
                    .cond
                    .wait_timeout(st, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        match answer {
            Some(true) => {
                if let Err(e) = local.write_all(greeting) {
                    self.abort(&stream);
                    return Err(MuxError::Write(e));
                }
                self.spawn_pumps(&stream, local);
                Ok(())
            }
            other => {
                self.remove(stream.id);
                if other.is_none() {
                    let _ = self.send(None, &Frame::Reset(stream.id));
                    return Err(MuxError::Timeout(port, limit));
                }
                if self.is_closed() {
                    return Err(MuxError::Closed);
                }
                Err(MuxError::Refused(port))
            }
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Write one frame; with `generation`, only if the guest has not been
    /// greeted again since (a stale stream's frame must not reach the new
    /// host).
    fn send(&self, generation: Option<u64>, frame: &Frame) -> Result<(), MuxError> {
        self.send_bytes(generation, &frame.encode())
    }

    fn send_bytes(&self, generation: Option<u64>, bytes: &[u8]) -> Result<(), MuxError> {
        let mut w = self.write_lock();
        if generation.is_some_and(|g| g != w.generation) {
            return Err(MuxError::Closed);
        }
        w.link.write_all(bytes).map_err(MuxError::Write)?;
        w.link.flush().map_err(MuxError::Write)
    }

    fn stream(&self, id: u32) -> Option<Arc<Stream>> {
        self.table().streams.get(&id).cloned()
    }

    fn remove(&self, id: u32) -> Option<Arc<Stream>> {
        self.table().streams.remove(&id)
    }

    /// Abort every stream.
    fn drop_streams(&self) {
        let streams: Vec<_> = self.table().streams.drain().map(|(_, s)| s).collect();
        for s in streams {
            s.abort();
        }
    }

    fn die(&self) {
        {
            let mut t = self.table();
            t.dead = self.side == Side::Host || t.dead;
            t.ready = false;
        }
        self.drop_streams();
        self.cond.notify_all();
    }

    fn read_loop(
        self: Arc<Self>,
        mut reader: impl Read,
        mut on_ready: Option<Box<dyn FnOnce() + Send>>,
    ) {
        let mut dec = Decoder::new();
        let mut buf = vec![0u8; 2 * MAX_DATA];
        let pattern = match self.side {
            Side::Host => Frame::HelloAck(self.epoch).encode(),
            Side::Guest => hello_prefix(),
        };
        let mut hunting = true;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            match reader.read(&mut buf) {
                Ok(0) if self.side == Side::Guest => {
                    // No host (or it went away): its streams are gone.
                    if !hunting || self.open_streams() > 0 {
                        self.drop_streams();
                        self.table().ready = false;
                    }
                    hunting = true;
                    dec = Decoder::new();
                    std::thread::sleep(NO_HOST_POLL);
                    continue;
                }
                Ok(0) => return self.die(),
                Ok(n) => dec.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if self.side == Side::Guest => {
                    (self.log)(&format!("mux: reading the link: {e}"));
                    std::thread::sleep(NO_HOST_POLL);
                    continue;
                }
                Err(e) => {
                    (self.log)(&format!("mux: reading the link: {e}"));
                    return self.die();
                }
            }
            loop {
                if hunting {
                    if !dec.hunt(&pattern) {
                        break;
                    }
                    hunting = false;
                }
                let frame = match dec.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) if self.side == Side::Guest => {
                        (self.log)(&format!("mux: {e}; waiting for the host's HELLO"));
                        self.drop_streams();
                        hunting = true;
                        continue;
                    }
                    Err(e) => {
                        (self.log)(&format!("mux: {e}"));
                        return self.die();
                    }
                };
                if let Err(e) = self.handle(frame, &mut on_ready) {
                    (self.log)(&format!("mux: {e}"));
                    if self.side == Side::Host {
                        return self.die();
                    }
                    self.drop_streams();
                    hunting = true;
                }
            }
        }
    }

    fn handle(
        self: &Arc<Self>,
        frame: Frame,
        on_ready: &mut Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<(), MuxError> {
        match (self.side, frame) {
            (Side::Guest, Frame::Hello(epoch)) => {
                // A new host: whatever we had belongs to the old one.
                self.drop_streams();
                {
                    let mut w = self.write_lock();
                    w.generation += 1;
                    let ack = Frame::HelloAck(epoch).encode();
                    // A failed answer is retried by the host's next HELLO.
                    let _ = w.link.write_all(&ack).and_then(|_| w.link.flush());
                }
                self.table().ready = true;
                self.cond.notify_all();
            }
            (Side::Host, Frame::HelloAck(epoch)) if epoch == self.epoch => {
                self.table().ready = true;
                self.cond.notify_all();
                if let Some(f) = on_ready.take() {
                    let _ = std::thread::Builder::new()
                        .name("mux-ready".into())
                        .spawn(f);
                }
            }
            (Side::Guest, Frame::Open { stream, port }) => self.accept(stream, port)?,
            (Side::Host, Frame::Accept(id)) => {
                if let Some(s) = self.stream(id) {
                    s.lock().accepted = Some(true);
                    s.cond.notify_all();
                }
            }
            (_, Frame::Data(id, data)) => {
                let Some(s) = self.stream(id) else {
                    // Aborted here already; the peer learns by our RESET.
                    return Ok(());
                };
                let mut st = s.lock();
                if st.inbound_eof || st.inbound_bytes + data.len() > WINDOW as usize {
                    drop(st);
                    (self.log)(&format!("mux: stream {id} overran its window; aborted"));
                    self.abort(&s);
                    return Ok(());
                }
                st.inbound_bytes += data.len();
                st.inbound.push_back(data);
                drop(st);
                s.cond.notify_all();
            }
            (_, Frame::Credit(id, n)) => {
                let Some(s) = self.stream(id) else {
                    return Ok(());
                };
                let mut st = s.lock();
                match st.credit.checked_add(n).filter(|c| *c <= WINDOW) {
                    Some(c) => st.credit = c,
                    None => {
                        drop(st);
                        (self.log)(&format!("mux: stream {id} got credit past its window"));
                        self.abort(&s);
                        return Ok(());
                    }
                }
                drop(st);
                s.cond.notify_all();
            }
            (_, Frame::Eof(id)) => {
                if let Some(s) = self.stream(id) {
                    s.lock().inbound_eof = true;
                    s.cond.notify_all();
                }
            }
            (_, Frame::Reset(id)) => {
                if let Some(s) = self.remove(id) {
                    s.abort();
                }
            }
            (_, Frame::Hello(_)) => return Err(MuxError::Unexpected("HELLO")),
            (_, Frame::HelloAck(_)) => {} // An older host's answer.
            (_, Frame::Open { .. }) => return Err(MuxError::Unexpected("OPEN")),
            (_, Frame::Accept(_)) => return Err(MuxError::Unexpected("ACCEPT")),
        }
        Ok(())
    }

    /// Guest: the host opens stream `id` to `port`.
    fn accept(self: &Arc<Self>, id: u32, port: u32) -> Result<(), MuxError> {
        let generation = self.write_lock().generation;
        let refuse = {
            let t = self.table();
            t.streams.len() >= MAX_STREAMS || t.streams.contains_key(&id)
        };
        let local = if refuse {
            None
        } else {
            self.acceptor.as_ref().and_then(|a| a(port))
        };
        let Some(local) = local else {
            return self.send(Some(generation), &Frame::Reset(id));
        };
        let Ok(handle) = local.try_clone() else {
            return self.send(Some(generation), &Frame::Reset(id));
        };
        let s = Arc::new(new_stream(id, generation, handle));
        self.table().streams.insert(id, Arc::clone(&s));
        self.send(Some(generation), &Frame::Accept(id))?;
        self.spawn_pumps(&s, local);
        Ok(())
    }

    /// Abort `s` and tell the peer.
    fn abort(&self, s: &Arc<Stream>) {
        if self.remove(s.id).is_some() {
            let _ = self.send(self.generation_of(s), &Frame::Reset(s.id));
        }
        s.abort();
    }

    fn generation_of(&self, s: &Stream) -> Option<u64> {
        (self.side == Side::Guest).then_some(s.generation)
    }

    /// Forget `s` once both directions have ended.
    fn finish_half(&self, s: &Arc<Stream>, out: bool) {
        let both = {
            let mut st = s.lock();
            if out {
                st.out_done = true;
            } else {
                st.in_done = true;
            }
            st.out_done && st.in_done
        };
        if both {
            let mut t = self.table();
            if t.streams.get(&s.id).is_some_and(|x| Arc::ptr_eq(x, s)) {
                t.streams.remove(&s.id);
            }
        }
    }

    fn spawn_pumps(self: &Arc<Self>, s: &Arc<Stream>, local: UnixStream) {
        let Ok(local_in) = local.try_clone() else {
            return self.abort(s);
        };
        let (m, st) = (Arc::clone(self), Arc::clone(s));
        let out = std::thread::Builder::new()
            .name("mux-out".into())
            .spawn(move || m.pump_out(&st, local));
        let (m, st) = (Arc::clone(self), Arc::clone(s));
        let inp = std::thread::Builder::new()
            .name("mux-in".into())
            .spawn(move || m.pump_in(&st, local_in));
        if out.is_err() || inp.is_err() {
            self.abort(s);
        }
    }

    /// Local end -> peer, within the credit the peer gave.
    fn pump_out(&self, s: &Arc<Stream>, mut local: UnixStream) {
        let generation = self.generation_of(s);
        let mut buf = vec![0u8; MAX_DATA];
        loop {
            let allowed = {
                let mut st = s.lock();
                while st.credit == 0 && !st.reset {
                    st = s.cond.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.reset {
                    return;
                }
                (st.credit as usize).min(MAX_DATA)
            };
            match local.read(&mut buf[..allowed]) {
                Ok(0) => {
                    if s.lock().reset {
                        return;
                    }
                    if self.send(generation, &Frame::Eof(s.id)).is_err() {
                        return self.abort(s);
                    }
                    return self.finish_half(s, true);
                }
                Ok(n) => {
                    {
                        let mut st = s.lock();
                        if st.reset {
                            return;
                        }
                        st.credit -= n as u32;
                    }
                    if self
                        .send_bytes(generation, &data_frame(s.id, &buf[..n]))
                        .is_err()
                    {
                        return self.abort(s);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.abort(s),
            }
        }
    }

    /// Peer -> local end; credit goes back as the local end drains.
    fn pump_in(&self, s: &Arc<Stream>, mut local: UnixStream) {
        let generation = self.generation_of(s);
        let mut owed: u32 = 0;
        loop {
            let chunk = {
                let mut st = s.lock();
                while st.inbound.is_empty() && !st.inbound_eof && !st.reset {
                    st = s.cond.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.reset {
                    return;
                }
                match st.inbound.pop_front() {
                    Some(c) => c,
                    None => break,
                }
            };
            if local.write_all(&chunk).is_err() {
                return self.abort(s);
            }
            owed += chunk.len() as u32;
            let drained = {
                let mut st = s.lock();
                st.inbound_bytes -= chunk.len();
                st.inbound.is_empty()
            };
            if drained || owed >= WINDOW / 4 {
                if self.send(generation, &Frame::Credit(s.id, owed)).is_err() {
                    return self.abort(s);
                }
                owed = 0;
            }
        }
        let _ = local.shutdown(Shutdown::Write);
        self.finish_half(s, false);
    }
}

fn new_stream(id: u32, generation: u64, local: UnixStream) -> Stream {
    Stream {
        id,
        generation,
        local,
        st: Mutex::new(StreamState {
            credit: WINDOW,
            ..StreamState::default()
        }),
        cond: Condvar::new(),
    }
}

/// An epoch no earlier host of this VM used: time and pid mixed.
fn fresh_epoch() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_nanos() as u64) ^ ((std::process::id() as u64) << 48) | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const ECHO: u32 = 1024;
    const HANDOFF: u32 = 7;
    const LIMIT: Duration = Duration::from_secs(10);

    fn quiet(_: &str) {}

    /// Port ECHO echoes; port HANDOFF hands the guest's end to the test;
    /// anything else is refused.
    fn acceptor(handoff: mpsc::Sender<UnixStream>) -> Acceptor {
        let handoff = Mutex::new(handoff);
        Box::new(move |port| {
            let (mine, theirs) = UnixStream::pair().ok()?;
            match port {
                ECHO => {
                    std::thread::spawn(move || {
                        let mut r = mine.try_clone().unwrap();
                        let mut w = mine;
                        let _ = io::copy(&mut r, &mut w);
                        let _ = w.shutdown(Shutdown::Write);
                    });
                }
                HANDOFF => handoff.lock().unwrap().send(mine).ok()?,
                _ => return None,
            }
            Some(theirs)
        })
    }

    fn guest_on(link: UnixStream) -> (Arc<Mux>, mpsc::Receiver<UnixStream>) {
        let (tx, rx) = mpsc::channel();
        let r = link.try_clone().unwrap();
        (Mux::guest(r, link, quiet, acceptor(tx)).unwrap(), rx)
    }

    fn host_on(link: UnixStream) -> Arc<Mux> {
        let r = link.try_clone().unwrap();
        let host = Mux::host(r, link, quiet, Box::new(|| {})).unwrap();
        assert!(host.wait_ready(LIMIT), "the guest answers HELLO");
        host
    }

    fn linked() -> (Arc<Mux>, Arc<Mux>, mpsc::Receiver<UnixStream>) {
        let (h, g) = UnixStream::pair().unwrap();
        let (guest, rx) = guest_on(g);
        (host_on(h), guest, rx)
    }

    /// A connection from the host to `port`: the test's end.
    fn dial(host: &Arc<Mux>, port: u32) -> Result<UnixStream, MuxError> {
        let (mine, theirs) = UnixStream::pair().unwrap();
        host.connect(port, theirs, LIMIT, b"")?;
        Ok(mine)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn wait_until(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn many_streams_carry_their_own_bytes_past_the_window() {
        let (host, guest, _rx) = linked();
        let workers: Vec<_> = (0..16u8)
            .map(|i| {
                let mut s = dial(&host, ECHO).unwrap();
                std::thread::spawn(move || {
                    let data = pattern(WINDOW as usize * 3 + 17, i);
                    let mut w = s.try_clone().unwrap();
                    let sent = data.clone();
                    let writer = std::thread::spawn(move || {
                        w.write_all(&sent).unwrap();
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut back = Vec::new();
                    s.read_to_end(&mut back).unwrap();
                    writer.join().unwrap();
                    assert!(back == data, "stream {i} got its own bytes back");
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert!(wait_until(
            || host.open_streams() == 0 && guest.open_streams() == 0
        ));
    }

    #[test]
    fn half_close_works_both_ways() {
        let (host, _guest, rx) = linked();
        let mut h = dial(&host, HANDOFF).unwrap();
        let mut g = rx.recv_timeout(LIMIT).unwrap();
        h.write_all(b"to guest").unwrap();
        h.shutdown(Shutdown::Write).unwrap();
        let mut got = String::new();
        g.read_to_string(&mut got).unwrap();
        assert_eq!(got, "to guest", "the guest sees the host's EOF");
        g.write_all(b"still open").unwrap();
        g.shutdown(Shutdown::Write).unwrap();
        got.clear();
        h.read_to_string(&mut got).unwrap();
        assert_eq!(
            got, "still open",
            "the host's read side outlives its write side"
        );

        // The other way round: the guest closes first.
        let mut h = dial(&host, HANDOFF).unwrap();
        let mut g = rx.recv_timeout(LIMIT).unwrap();
        g.write_all(b"bye").unwrap();
        g.shutdown(Shutdown::Write).unwrap();
        got.clear();
        h.read_to_string(&mut got).unwrap();
        assert_eq!(got, "bye");
        h.write_all(b"late").unwrap();
        drop(h);
        got.clear();
        g.read_to_string(&mut got).unwrap();
        assert_eq!(got, "late");
        assert!(wait_until(|| host.open_streams() == 0));
    }

    #[test]
    fn a_stalled_reader_blocks_no_other_stream() {
        let (host, _guest, rx) = linked();
        let stalled = dial(&host, HANDOFF).unwrap();
        let g = rx.recv_timeout(LIMIT).unwrap();
        // The guest floods a stream the host never reads.
        let flood = std::thread::spawn(move || {
            let mut g = g;
            let chunk = vec![1u8; 64 * 1024];
            let mut sent = 0usize;
            while sent < 64 * 1024 * 1024 {
                if g.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        for i in 0..3u8 {
            let mut s = dial(&host, ECHO).unwrap();
            let data = pattern(512 * 1024, i);
            let mut w = s.try_clone().unwrap();
            let sent = data.clone();
            std::thread::spawn(move || w.write_all(&sent));
            let mut back = vec![0u8; data.len()];
            s.read_exact(&mut back).unwrap();
            assert!(back == data);
        }
        assert!(
            !flood.is_finished(),
            "the flooded stream is held by its window"
        );
        // Its reader goes away: the host aborts the stream, the flood ends.
        drop(stalled);
        flood.join().unwrap();
    }

    #[test]
    fn abort_reaches_the_other_side() {
        let (host, guest, rx) = linked();
        let h = dial(&host, HANDOFF).unwrap();
        let mut g = rx.recv_timeout(LIMIT).unwrap();
        // The host's end goes away unread while the guest keeps writing:
        // the host cannot deliver, aborts, and the guest's writes fail.
        let writer = std::thread::spawn(move || {
            let chunk = vec![2u8; 64 * 1024];
            for _ in 0..4096 {
                if g.write_all(&chunk).is_err() {
                    return true;
                }
            }
            false
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(h);
        assert!(
            writer.join().unwrap(),
            "the guest's writes fail after the abort"
        );
        assert!(wait_until(
            || host.open_streams() == 0 && guest.open_streams() == 0
        ));
        // The link is fine: other streams go on.
        let mut s = dial(&host, ECHO).unwrap();
        s.write_all(b"ok").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ok");
    }

    #[test]
    fn refused_ports_are_errors() {
        let (host, _guest, _rx) = linked();
        assert!(matches!(dial(&host, 9), Err(MuxError::Refused(9))));
    }

    #[test]
    fn the_decoder_never_panics_on_garbage() {
        let mut seed = 0x1234_5678u32;
        for round in 0..2000 {
            let mut d = Decoder::new();
            let len = round % 64;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed % 10) as u8 // mostly valid kinds, to reach payloads
                })
                .collect();
            d.feed(&bytes);
            while let Ok(Some(_)) = d.next_frame() {}
        }
        let mut d = Decoder::new();
        d.feed(&header(DATA, 1, MAX_DATA + 1));
        assert!(d.next_frame().is_err(), "an oversized frame is refused");
        let f = Frame::Open {
            stream: 3,
            port: 1024,
        };
        let mut d = Decoder::new();
        let bytes = f.encode();
        d.feed(&bytes[..5]);
        assert_eq!(d.next_frame().unwrap(), None, "truncated: wait for more");
        d.feed(&bytes[5..]);
        assert_eq!(d.next_frame().unwrap(), Some(f));
    }

    #[test]
    fn garbage_from_the_guest_closes_the_host_side() {
        let (h, mut g) = UnixStream::pair().unwrap();
        let r = h.try_clone().unwrap();
        let host = Mux::host(r, h, quiet, Box::new(|| {})).unwrap();
        let mut filler = vec![0u8; SYNC_FILLER + 16 + HEADER];
        g.read_exact(&mut filler).unwrap();
        g.write_all(b"noise before the answer is skipped").unwrap();
        g.write_all(&Frame::HelloAck(host.epoch).encode()).unwrap();
        assert!(host.wait_ready(LIMIT));
        g.write_all(&[0xee; 32]).unwrap();
        assert!(wait_until(|| host.is_closed()), "garbage closes the link");
        let (_a, b) = UnixStream::pair().unwrap();
        assert!(matches!(
            host.connect(ECHO, b, LIMIT, b""),
            Err(MuxError::Closed)
        ));
    }

    /// The host side of a link, written by hand.
    fn raw_hello(h: &mut UnixStream, epoch: u64) {
        let mut hello = vec![0u8; SYNC_FILLER];
        hello.extend_from_slice(&Frame::Hello(epoch).encode());
        h.write_all(&hello).unwrap();
    }

    fn raw_next(h: &mut UnixStream, dec: &mut Decoder) -> Frame {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = dec.next_frame().unwrap() {
                return f;
            }
            let n = h.read(&mut buf).unwrap();
            assert!(n > 0, "the guest closed the link");
            dec.feed(&buf[..n]);
        }
    }

    #[test]
    fn a_hello_resets_the_guest_side_even_mid_frame() {
        let (mut h, g) = UnixStream::pair().unwrap();
        h.set_read_timeout(Some(LIMIT)).unwrap();
        let (guest, rx) = guest_on(g);
        let mut dec = Decoder::new();
        h.write_all(b"garbage before any host").unwrap();
        raw_hello(&mut h, 1);
        assert_eq!(raw_next(&mut h, &mut dec), Frame::HelloAck(1));
        h.write_all(
            &Frame::Open {
                stream: 5,
                port: HANDOFF,
            }
            .encode(),
        )
        .unwrap();
        assert_eq!(raw_next(&mut h, &mut dec), Frame::Accept(5));
        let mut local = rx.recv_timeout(LIMIT).unwrap();
        assert_eq!(guest.open_streams(), 1);
        // The old host dies halfway through a frame; a new one greets.
        h.write_all(&data_frame(5, &[9u8; 1000])[..300]).unwrap();
        raw_hello(&mut h, 2);
        let mut dec = Decoder::new();
        assert!(
            wait_until(|| {
                dec.hunt(&Frame::HelloAck(2).encode());
                let mut buf = [0u8; 4096];
                if let Ok(n) = h.read(&mut buf) {
                    dec.feed(&buf[..n]);
                }
                dec.hunt(&Frame::HelloAck(2).encode())
            }),
            "the guest answers the new host"
        );
        assert_eq!(dec.next_frame().unwrap(), Some(Frame::HelloAck(2)));
        assert_eq!(guest.open_streams(), 0, "the old host's streams are gone");
        let mut rest = Vec::new();
        let _ = local.read_to_end(&mut rest);
        assert!(local.write_all(b"x").is_err(), "the old stream is shut");
    }

    /// A guest link whose host can go away and come back, like a
    /// virtio-serial port: reads return EOF while no host is there.
    #[derive(Clone, Default)]
    struct Port(Arc<Mutex<Option<UnixStream>>>);

    impl Port {
        fn current(&self) -> Option<UnixStream> {
            self.0
                .lock()
                .unwrap()
                .as_ref()
                .map(|s| s.try_clone().unwrap())
        }
    }

    impl Read for Port {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.current() {
                Some(mut s) => s.read(buf),
                None => Ok(0),
            }
        }
    }

    impl Write for Port {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            loop {
                // Writes wait while no host is connected.
                if let Some(mut s) = self.current() {
                    return s.write(buf);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_guest_side_serves_a_new_host_after_the_old_one_went_away() {
        let port = Port::default();
        let (tx, rx) = mpsc::channel();
        let guest = Mux::guest(port.clone(), port.clone(), quiet, acceptor(tx)).unwrap();
        for round in 0..3u8 {
            let (h, g) = UnixStream::pair().unwrap();
            *port.0.lock().unwrap() = Some(g);
            let host = host_on(h.try_clone().unwrap());
            let mut s = dial(&host, ECHO).unwrap();
            s.write_all(&[round; 100]).unwrap();
            let mut b = [0u8; 100];
            s.read_exact(&mut b).unwrap();
            assert_eq!(b, [round; 100]);
            let _held = dial(&host, HANDOFF).unwrap();
            let mut local = rx.recv_timeout(LIMIT).unwrap();
            assert!(wait_until(|| guest.open_streams() == 2));
            // The host process goes away with its streams open.
            *port.0.lock().unwrap() = None;
            h.shutdown(Shutdown::Both).unwrap();
            drop(host);
            assert!(wait_until(|| guest.open_streams() == 0), "dropped");
            let mut rest = Vec::new();
            let _ = local.read_to_end(&mut rest);
        }
        guest.close();
    }
}
