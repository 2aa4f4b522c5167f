//! The control socket's streaming operations (see [`crate::control`]): a
//! client attached to the container's main process, an exec'd process, a
//! copy in or out, and statistics. Each is a relay between the client's
//! control connection and a connection to the guest.
//!
//! After the answer line `{"ok":true}` both directions of a streaming
//! connection carry `vessel.agent.v1` frames: the client sends `Stdin`
//! frames, `Data` frames (a copy in) and the control messages `CloseStdin`,
//! `Resize` and `Signal`; it receives what the guest sends about its process
//! (`Started`, `StartFailed`, `Stdout`/`Stderr`, `Exited`, `Data`,
//! `CopyDone`). For exec and copies the runtime opens a connection of their
//! own to the guest, so each has its own flow control, and closing the
//! client's connection closes it (the process gets SIGHUP or EOF).

use crate::transport;
use agent_protocol::{
    decode_message, read_frame, write_frame, write_message, ExecRequest, Frame, FrameKind,
    GuestMessage, HostMessage, StatsSnapshot, AGENT_PORT, FEATURE_STDIN_CREDIT, MAX_STDIO_CHUNK,
    STDIN_WINDOW, VERSION,
};
use std::io::{BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use vessel_api::types::Stream;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The host's side of the agent protocol's stdin flow control: stdin sent
/// to a process and not yet credited by the guest stays under
/// [`STDIN_WINDOW`]. Without the guest's feature it lets everything pass.
#[derive(Debug, Default)]
pub struct StdinWindow {
    state: Mutex<WindowState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct WindowState {
    enabled: bool,
    in_flight: usize,
    closed: bool,
}

impl StdinWindow {
    /// A window for a guest with these features.
    pub fn for_features(features: &[String]) -> Self {
        let w = Self::default();
        if features.iter().any(|f| f == FEATURE_STDIN_CREDIT) {
            w.enable();
        }
        w
    }

    /// The guest credits stdin: count it from now on.
    pub fn enable(&self) {
        lock(&self.state).enabled = true;
    }

    /// Wait until `n` more bytes (at most [`MAX_STDIO_CHUNK`]) may be sent;
    /// false once the window is closed (the process or connection ended).
    pub fn acquire(&self, n: usize) -> bool {
        let mut s = lock(&self.state);
        loop {
            if s.closed {
                return false;
            }
            if !s.enabled {
                return true;
            }
            if s.in_flight + n <= STDIN_WINDOW || s.in_flight == 0 {
                s.in_flight += n;
                return true;
            }
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The guest credited `bytes`.
    pub fn release(&self, bytes: u64) {
        let mut s = lock(&self.state);
        s.in_flight = s.in_flight.saturating_sub(bytes as usize);
        self.changed.notify_all();
    }

    /// Nothing more will be credited: wake and refuse every sender.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }
}

/// Send `payload` as `Stdin` frames of at most [`MAX_STDIO_CHUNK`], each
/// once `window` lets it; false when the window closed or the write failed.
pub fn send_stdin(
    window: &StdinWindow,
    payload: &[u8],
    mut send: impl FnMut(&[u8]) -> bool,
) -> bool {
    payload
        .chunks(MAX_STDIO_CHUNK)
        .all(|chunk| window.acquire(chunk.len()) && send(chunk))
}

/// Frames buffered for one attached client (at most 64 KiB each).
const ATTACH_BACKLOG: usize = 64;
/// How long the container's output waits for an attached client whose
/// backlog is full before that client counts as stuck and is let go. Until
/// then the output waits (as Docker's attach does), so a client that reads
/// slowly slows the container instead of losing output.
const ATTACH_STALL: Duration = Duration::from_secs(10);

/// Opens more connections to the guest's agent.
#[derive(Debug, Clone)]
pub struct GuestDialer {
    pub uds: PathBuf,
    pub timeout: Duration,
}

impl GuestDialer {
    /// A new connection, past the `Hello` exchange; the guest's features.
    pub fn open(&self) -> Result<(UnixStream, Vec<String>), String> {
        let mut s = transport::hybrid_connect(&self.uds, AGENT_PORT, self.timeout)
            .map_err(|e| format!("connecting to the guest: {}", crate::chain(&e)))?;
        s.set_read_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        write_message(&mut s, &HostMessage::Hello { version: VERSION })
            .map_err(|e| format!("talking to the guest: {e}"))?;
        let frame = read_frame(&mut s)
            .map_err(|e| format!("talking to the guest: {e}"))?
            .ok_or("the guest closed the connection")?;
        match decode_message::<GuestMessage>(&frame) {
            Ok(GuestMessage::Hello {
                version, features, ..
            }) if version == VERSION => {
                s.set_read_timeout(None).map_err(|e| e.to_string())?;
                Ok((s, features))
            }
            Ok(other) => Err(format!("the guest answered {other:?}")),
            Err(e) => Err(format!("the guest's answer: {e}")),
        }
    }

    /// A connection to a guest that implements `feature`.
    fn open_with(&self, feature: &str) -> Result<(UnixStream, Vec<String>), String> {
        let (s, features) = self.open()?;
        if !features.iter().any(|f| f == feature) {
            return Err(format!(
                "the guest's vminitd cannot do `{feature}`: its initramfs is older than this \
                 vessel-runtime; install the guest assets built with it (scripts/setup.sh)"
            ));
        }
        Ok((s, features))
    }
}

/// The answer line of a streaming operation.
pub fn answer_line(result: &Result<(), String>) -> String {
    let v = match result {
        Ok(()) => serde_json::json!({"ok": true}),
        Err(e) => serde_json::json!({"ok": false, "error": e}),
    };
    format!("{v}\n")
}

/// One `ReadStats` on a connection of its own.
pub fn read_stats(d: &GuestDialer) -> Result<StatsSnapshot, String> {
    ask_stats(d, &HostMessage::ReadStats)
}

/// One `ReadGroupStats` (a pod container's cgroup) on a connection of its
/// own.
pub fn read_group_stats(d: &GuestDialer, group: &str) -> Result<StatsSnapshot, String> {
    ask_stats(
        d,
        &HostMessage::ReadGroupStats {
            group: group.to_string(),
        },
    )
}

fn ask_stats(d: &GuestDialer, ask: &HostMessage) -> Result<StatsSnapshot, String> {
    let (mut s, _) = d.open_with(agent_protocol::FEATURE_STATS)?;
    s.set_read_timeout(Some(d.timeout))
        .map_err(|e| e.to_string())?;
    write_message(&mut s, ask).map_err(|e| e.to_string())?;
    let frame = read_frame(&mut s)
        .map_err(|e| format!("reading statistics: {e}"))?
        .ok_or("the guest closed the connection")?;
    match decode_message::<GuestMessage>(&frame) {
        Ok(GuestMessage::Stats(st)) => Ok(st),
        Ok(other) => Err(format!("the guest answered {other:?}")),
        Err(e) => Err(format!("the guest's statistics: {e}")),
    }
}

/// One `ReadProcesses` on a connection of its own.
pub fn read_processes(d: &GuestDialer) -> Result<Vec<agent_protocol::ProcessInfo>, String> {
    let (mut s, _) = d.open_with(agent_protocol::FEATURE_TOP)?;
    s.set_read_timeout(Some(d.timeout))
        .map_err(|e| e.to_string())?;
    write_message(&mut s, &HostMessage::ReadProcesses).map_err(|e| e.to_string())?;
    let frame = read_frame(&mut s)
        .map_err(|e| format!("reading the processes: {e}"))?
        .ok_or("the guest closed the connection")?;
    match decode_message::<GuestMessage>(&frame) {
        Ok(GuestMessage::Processes { processes }) => Ok(processes),
        Ok(other) => Err(format!("the guest answered {other:?}")),
        Err(e) => Err(format!("the guest's process list: {e}")),
    }
}

/// What a client may send on a stream: stdin, data, and these messages.
fn allowed_from_client(frame: &Frame) -> Result<(), String> {
    match frame.kind {
        FrameKind::Stdin | FrameKind::Data => Ok(()),
        FrameKind::Control => match decode_message::<HostMessage>(frame) {
            Ok(HostMessage::CloseStdin)
            | Ok(HostMessage::Resize { .. })
            | Ok(HostMessage::Signal { .. }) => Ok(()),
            Ok(other) => Err(format!("a client may not send {other:?}")),
            Err(e) => Err(format!("bad control message from the client: {e}")),
        },
        kind => Err(format!("a client may not send {kind:?} frames")),
    }
}

/// Relay frames from `client` to `guest` until the client goes away (then
/// the guest connection is closed both ways) or breaks the rules.
fn client_to_guest(client: &UnixStream, guest: &UnixStream, window: &StdinWindow) {
    let mut r = BufReader::new(client);
    let mut w = guest;
    while let Ok(Some(f)) = read_frame(&mut r) {
        if let Err(e) = allowed_from_client(&f) {
            crate::log(&format!("stream: {e}"));
            break;
        }
        let sent = if f.kind == FrameKind::Stdin {
            send_stdin(window, &f.payload, |chunk| {
                write_frame(&mut w, FrameKind::Stdin, chunk).is_ok()
            })
        } else {
            write_frame(&mut w, f.kind, &f.payload).is_ok()
        };
        if !sent {
            break;
        }
    }
    let _ = guest.shutdown(Shutdown::Both);
}

/// Relay frames from `guest` to `client` until the guest closes; returns the
/// `Exited` status or the `CopyDone` error seen on the way.
fn guest_to_client(guest: &UnixStream, client: &UnixStream, window: &StdinWindow) -> Seen {
    let mut seen = Seen::default();
    let mut r = BufReader::new(guest);
    let mut w = client;
    while let Ok(Some(f)) = read_frame(&mut r) {
        if f.kind == FrameKind::Control {
            match decode_message::<GuestMessage>(&f) {
                // The runtime's business, not the client's.
                Ok(GuestMessage::StdinCredit { bytes }) => {
                    window.release(bytes);
                    continue;
                }
                Ok(GuestMessage::Exited { exit_code, signal }) => {
                    seen.exit = Some((exit_code, signal))
                }
                Ok(GuestMessage::StartFailed { exit_code, .. }) => {
                    seen.exit = Some((exit_code, None))
                }
                Ok(GuestMessage::CopyDone { error }) => seen.copy_done = Some(error),
                _ => {}
            }
        }
        if write_frame(&mut w, f.kind, &f.payload).is_err() {
            break;
        }
    }
    window.close();
    let _ = client.shutdown(Shutdown::Both);
    seen
}

/// What a relay saw the guest say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    pub exit: Option<(i32, Option<i32>)>,
    pub copy_done: Option<Option<String>>,
}

/// Relay both ways between `client` (the answer line already written) and
/// `guest`, until both are done.
fn relay(client: UnixStream, guest: UnixStream, window: StdinWindow) -> Seen {
    let (c2, g2) = match (client.try_clone(), guest.try_clone()) {
        (Ok(c), Ok(g)) => (c, g),
        _ => {
            let _ = client.shutdown(Shutdown::Both);
            return Seen::default();
        }
    };
    let window = Arc::new(window);
    let w2 = Arc::clone(&window);
    let up = std::thread::spawn(move || client_to_guest(&c2, &g2, &w2));
    let seen = guest_to_client(&guest, &client, &window);
    let _ = guest.shutdown(Shutdown::Both);
    let _ = up.join();
    seen
}

/// Open a guest connection for `first` (after checking `feature`), answer
/// the client, and relay.
fn stream(
    d: &GuestDialer,
    feature: &str,
    first: &HostMessage,
    mut client: UnixStream,
) -> Result<Seen, String> {
    let opened = d.open_with(feature).and_then(|(mut g, features)| {
        write_message(&mut g, first)
            .map(|()| (g, features))
            .map_err(|e| format!("talking to the guest: {e}"))
    });
    let _ = client
        .write_all(answer_line(&opened.as_ref().map(|_| ()).map_err(Clone::clone)).as_bytes());
    let (guest, features) = opened?;
    Ok(relay(client, guest, StdinWindow::for_features(&features)))
}

/// `exec`: one more process; its exit status when it ended.
pub fn exec(d: &GuestDialer, req: ExecRequest, client: UnixStream) -> Result<Seen, String> {
    stream(
        d,
        agent_protocol::FEATURE_EXEC,
        &HostMessage::Exec(req),
        client,
    )
}

/// `exec -d`: start the process, return its pid, and drain its
/// connection on a thread until it ends; `done` gets its exit code.
pub fn exec_detached(
    d: &GuestDialer,
    req: ExecRequest,
    done: impl FnOnce(Option<i32>) + Send + 'static,
) -> Result<i32, String> {
    let (mut g, _) = d.open_with(agent_protocol::FEATURE_EXEC)?;
    write_message(&mut g, &HostMessage::Exec(req)).map_err(|e| e.to_string())?;
    g.set_read_timeout(Some(d.timeout))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(g.try_clone().map_err(|e| e.to_string())?);
    let pid = loop {
        let f = read_frame(&mut r)
            .map_err(|e| format!("starting the process: {e}"))?
            .ok_or("the guest closed the connection")?;
        if f.kind != FrameKind::Control {
            continue;
        }
        match decode_message::<GuestMessage>(&f) {
            Ok(GuestMessage::Started { pid, .. }) => break pid,
            Ok(GuestMessage::StartFailed { message, .. }) => return Err(message),
            Ok(GuestMessage::Error { message }) => return Err(message),
            _ => {}
        }
    };
    g.set_read_timeout(None).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let mut code = None;
        while let Ok(Some(f)) = read_frame(&mut r) {
            if f.kind == FrameKind::Control {
                if let Ok(GuestMessage::Exited { exit_code, .. }) =
                    decode_message::<GuestMessage>(&f)
                {
                    code = Some(exit_code);
                }
            }
        }
        drop(g);
        done(code);
    });
    Ok(pid)
}

/// `copy_out`: a tar stream of `path`.
pub fn copy_out(
    d: &GuestDialer,
    path: String,
    one_file_system: bool,
    client: UnixStream,
) -> Result<Seen, String> {
    let first = HostMessage::CopyOut {
        path,
        one_file_system,
    };
    stream(d, agent_protocol::FEATURE_COPY, &first, client)
}

/// `copy_in`: a tar stream into the directory `path`.
pub fn copy_in(d: &GuestDialer, path: String, client: UnixStream) -> Result<Seen, String> {
    stream(
        d,
        agent_protocol::FEATURE_COPY,
        &HostMessage::CopyIn { path },
        client,
    )
}

/// Does a client that asked for `(stdout, stderr)` get `stream`?
pub fn wants(wanted: (bool, bool), stream: Stream) -> bool {
    match stream {
        Stream::Stdout => wanted.0,
        Stream::Stderr => wanted.1,
    }
}

/// One attached client: where its frames go, and which streams it wants.
#[derive(Debug)]
struct Client {
    id: u64,
    tx: SyncSender<Frame>,
    wanted: (bool, bool),
}

/// Block until the peer of `s` has closed it both ways (or `s` is shut
/// down here), as opposed to a half-close: the end of its input.
pub fn wait_hangup(s: &UnixStream) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        // Nothing asked: only POLLHUP and POLLERR wake it.
        events: 0,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    while unsafe { libc::poll(&mut pfd, 1, -1) } < 0
        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
    {}
}

/// The clients attached to the container's main process.
#[derive(Debug, Default)]
pub struct Attachers {
    clients: Mutex<Clients>,
    next_id: std::sync::atomic::AtomicU64,
}

/// The attached clients, and how the main process ended once it has: a
/// client that attaches after that hears it at once (else it would wait,
/// with nothing to come, until the runtime ends).
#[derive(Debug, Default)]
struct Clients {
    list: Vec<Client>,
    ended: Option<Vec<u8>>,
}

impl Attachers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record output with `record` (the log) and pass it to every client,
    /// under one lock, so a client attaching with the log replayed sees
    /// every byte exactly once.
    pub fn output(&self, stream: Stream, data: &[u8], record: impl FnOnce()) {
        let mut clients = lock(&self.clients);
        record();
        let clients = &mut clients.list;
        let kind = match stream {
            Stream::Stdout => FrameKind::Stdout,
            Stream::Stderr => FrameKind::Stderr,
        };
        clients.retain(|c| {
            if !wants(c.wanted, stream) {
                return true;
            }
            send_waiting(
                &c.tx,
                Frame {
                    kind,
                    payload: data.to_vec(),
                },
            )
        });
    }

    /// Attach `client`: first the output so far (`replay`, read under the
    /// lock), then everything live, until [`Attachers::close`].
    pub fn attach(
        &self,
        client: UnixStream,
        wanted: (bool, bool),
        replay: impl FnOnce() -> Vec<(Stream, Vec<u8>)>,
    ) -> u64 {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = sync_channel::<Frame>(ATTACH_BACKLOG);
        // The replay is read under the lock (so no byte is told twice or
        // missed) and written first by the writer thread, whatever its size.
        let mut first = Vec::new();
        {
            let mut clients = lock(&self.clients);
            for (stream, data) in replay() {
                if !wants(wanted, stream) {
                    continue;
                }
                let kind = match stream {
                    Stream::Stdout => FrameKind::Stdout,
                    Stream::Stderr => FrameKind::Stderr,
                };
                first.push(Frame {
                    kind,
                    payload: data,
                });
            }
            match &clients.ended {
                Some(exited) => first.push(Frame {
                    kind: FrameKind::Control,
                    payload: exited.clone(),
                }),
                None => clients.list.push(Client { id, tx, wanted }),
            }
        }
        std::thread::spawn(move || {
            let mut w = &client;
            for f in first.into_iter().chain(rx) {
                let sent = f
                    .payload
                    .chunks(MAX_STDIO_CHUNK)
                    .all(|chunk| write_frame(&mut w, f.kind, chunk).is_ok());
                if !sent {
                    break;
                }
            }
            let _ = client.shutdown(Shutdown::Both);
        });
        id
    }

    /// Let client `id` go (it hung up): its writer ends and closes it.
    pub fn detach(&self, id: u64) {
        lock(&self.clients).list.retain(|c| c.id != id);
    }

    /// The main process ended: tell every client and let them go.
    pub fn close(&self, exit_code: i32, signal: Option<i32>) {
        let mut clients = lock(&self.clients);
        let payload =
            serde_json::to_vec(&GuestMessage::Exited { exit_code, signal }).unwrap_or_default();
        clients.ended = Some(payload.clone());
        for c in clients.list.drain(..) {
            send_waiting(
                &c.tx,
                Frame {
                    kind: FrameKind::Control,
                    payload: payload.clone(),
                },
            );
        }
    }
}

/// Queue `frame` for a client, waiting up to [`ATTACH_STALL`] while its
/// backlog is full; false when the client is gone or stuck.
fn send_waiting(tx: &SyncSender<Frame>, mut frame: Frame) -> bool {
    let deadline = Instant::now() + ATTACH_STALL;
    let mut nap = Duration::from_millis(1);
    loop {
        match tx.try_send(frame) {
            Ok(()) => return true,
            Err(TrySendError::Disconnected(_)) => return false,
            Err(TrySendError::Full(f)) if Instant::now() < deadline => {
                frame = f;
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(20));
            }
            Err(TrySendError::Full(_)) => {
                crate::log(&format!(
                    "an attached client read nothing for {} s; detaching it",
                    ATTACH_STALL.as_secs()
                ));
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_may_send_only_stdin_data_and_a_few_messages() {
        let frame = |m: &HostMessage| Frame {
            kind: FrameKind::Control,
            payload: serde_json::to_vec(m).unwrap(),
        };
        assert!(allowed_from_client(&Frame {
            kind: FrameKind::Stdin,
            payload: b"x".to_vec()
        })
        .is_ok());
        assert!(allowed_from_client(&frame(&HostMessage::CloseStdin)).is_ok());
        assert!(allowed_from_client(&frame(&HostMessage::Resize { rows: 1, cols: 2 })).is_ok());
        assert!(allowed_from_client(&frame(&HostMessage::Shutdown)).is_err());
        assert!(allowed_from_client(&frame(&HostMessage::Hello { version: 1 })).is_err());
        assert!(allowed_from_client(&Frame {
            kind: FrameKind::Stdout,
            payload: vec![]
        })
        .is_err());
    }

    #[test]
    fn a_relay_passes_both_ways_and_reports_the_exit() {
        let (client_side, client) = UnixStream::pair().unwrap();
        let (guest, guest_side) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || relay(client_side, guest, StdinWindow::default()));
        // The client types, the guest echoes and exits.
        let mut c = &client;
        write_frame(&mut c, FrameKind::Stdin, b"hi").unwrap();
        let mut g = BufReader::new(&guest_side);
        let f = read_frame(&mut g).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.payload.as_slice()),
            (FrameKind::Stdin, &b"hi"[..])
        );
        let mut gw = &guest_side;
        write_frame(&mut gw, FrameKind::Stdout, b"hi").unwrap();
        write_message(
            &mut gw,
            &GuestMessage::Exited {
                exit_code: 7,
                signal: None,
            },
        )
        .unwrap();
        drop(g);
        guest_side.shutdown(Shutdown::Both).unwrap();
        let mut cr = BufReader::new(&client);
        let f = read_frame(&mut cr).unwrap().unwrap();
        assert_eq!(f.payload, b"hi");
        let f = read_frame(&mut cr).unwrap().unwrap();
        assert_eq!(f.kind, FrameKind::Control);
        assert!(
            read_frame(&mut cr).unwrap().is_none(),
            "closed after the guest"
        );
        assert_eq!(h.join().unwrap().exit, Some((7, None)));
    }

    #[test]
    fn stdin_waits_for_the_guests_credit_which_the_client_never_sees() {
        let (client_side, client) = UnixStream::pair().unwrap();
        let (guest, guest_side) = UnixStream::pair().unwrap();
        let window = StdinWindow::for_features(&[FEATURE_STDIN_CREDIT.to_string()]);
        let h = std::thread::spawn(move || relay(client_side, guest, window));
        // One client frame of 3 chunks: two fill the window, the third
        // waits for a credit.
        let big = vec![7u8; 3 * MAX_STDIO_CHUNK];
        let mut c = &client;
        write_frame(&mut c, FrameKind::Stdin, &big).unwrap();
        let mut g = BufReader::new(&guest_side);
        for _ in 0..STDIN_WINDOW / MAX_STDIO_CHUNK {
            let f = read_frame(&mut g).unwrap().unwrap();
            assert_eq!(
                (f.kind, f.payload.len()),
                (FrameKind::Stdin, MAX_STDIO_CHUNK)
            );
        }
        guest_side
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(read_frame(&mut g).is_err(), "nothing past the window");
        let mut gw = &guest_side;
        write_message(
            &mut gw,
            &GuestMessage::StdinCredit {
                bytes: MAX_STDIO_CHUNK as u64,
            },
        )
        .unwrap();
        guest_side.set_read_timeout(None).unwrap();
        let f = read_frame(&mut g).unwrap().unwrap();
        assert_eq!(f.payload.len(), MAX_STDIO_CHUNK);
        write_frame(&mut gw, FrameKind::Stdout, b"out").unwrap();
        drop(g);
        guest_side.shutdown(Shutdown::Both).unwrap();
        let mut cr = BufReader::new(&client);
        let f = read_frame(&mut cr).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.payload.as_slice()),
            (FrameKind::Stdout, &b"out"[..])
        );
        assert!(read_frame(&mut cr).unwrap().is_none(), "the credit stays");
        h.join().unwrap();
    }

    #[test]
    fn a_slow_client_slows_the_output_and_loses_none_of_it() {
        let a = Arc::new(Attachers::new());
        let (mine, theirs) = UnixStream::pair().unwrap();
        let replay: Vec<(Stream, Vec<u8>)> = (0..3 * ATTACH_BACKLOG)
            .map(|_| (Stream::Stdout, b"r".to_vec()))
            .collect();
        a.attach(mine, (true, true), move || replay);
        let n = 4 * ATTACH_BACKLOG;
        let a2 = Arc::clone(&a);
        let producer = std::thread::spawn(move || {
            for i in 0..n {
                a2.output(Stream::Stdout, format!("{i};").as_bytes(), || {});
            }
            a2.close(0, None);
        });
        std::thread::sleep(Duration::from_millis(200));
        let mut r = BufReader::new(&theirs);
        let (mut replayed, mut live, mut exited) = (0, String::new(), false);
        while let Some(f) = read_frame(&mut r).unwrap() {
            match f.kind {
                FrameKind::Stdout if f.payload == b"r" => replayed += 1,
                FrameKind::Stdout => live.push_str(std::str::from_utf8(&f.payload).unwrap()),
                _ => {
                    exited = true;
                    break;
                }
            }
        }
        producer.join().unwrap();
        assert!(exited, "the exit is told too");
        assert_eq!(replayed, 3 * ATTACH_BACKLOG);
        let want: String = (0..n).map(|i| format!("{i};")).collect();
        assert_eq!(live, want);
    }

    #[test]
    fn a_closed_window_frees_a_waiting_sender() {
        let w = Arc::new(StdinWindow::default());
        w.enable();
        assert!(w.acquire(STDIN_WINDOW));
        let w2 = Arc::clone(&w);
        let t = std::thread::spawn(move || w2.acquire(1));
        std::thread::sleep(Duration::from_millis(50));
        w.close();
        assert!(!t.join().unwrap());
    }

    #[test]
    fn a_client_that_goes_away_closes_the_guest_connection() {
        let (client_side, client) = UnixStream::pair().unwrap();
        let (guest, guest_side) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || relay(client_side, guest, StdinWindow::default()));
        drop(client);
        let mut g = BufReader::new(&guest_side);
        assert!(read_frame(&mut g).unwrap().is_none());
        drop(guest_side);
        assert_eq!(h.join().unwrap(), Seen::default());
    }

    #[test]
    fn attached_clients_get_the_replay_then_live_output_then_the_exit() {
        let a = Attachers::new();
        let (mine, theirs) = UnixStream::pair().unwrap();
        a.attach(mine, (true, true), || {
            vec![(Stream::Stdout, b"old".to_vec())]
        });
        // Another client wants stdout only.
        let (mine2, theirs2) = UnixStream::pair().unwrap();
        a.attach(mine2, (true, false), Vec::new);
        let mut logged = Vec::new();
        a.output(Stream::Stderr, b"new", || logged.push("new"));
        a.close(3, None);
        let mut r = BufReader::new(&theirs);
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.payload.as_slice()),
            (FrameKind::Stdout, &b"old"[..])
        );
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.payload.as_slice()),
            (FrameKind::Stderr, &b"new"[..])
        );
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(
            decode_message::<GuestMessage>(&f).unwrap(),
            GuestMessage::Exited {
                exit_code: 3,
                signal: None
            }
        );
        assert!(read_frame(&mut r).unwrap().is_none());
        assert_eq!(logged, vec!["new"]);
        let mut r2 = BufReader::new(&theirs2);
        let f = read_frame(&mut r2).unwrap().unwrap();
        assert_eq!(
            f.kind,
            FrameKind::Control,
            "no stderr for a stdout-only client"
        );
    }

    #[test]
    fn a_client_attaching_after_the_end_hears_the_output_and_the_exit() {
        // The main process can end between the attach request's check of
        // the state and its registration: the client must not wait for an
        // exit already told.
        let a = Attachers::new();
        a.close(5, None);
        let (mine, theirs) = UnixStream::pair().unwrap();
        a.attach(mine, (true, true), || {
            vec![(Stream::Stdout, b"hi".to_vec())]
        });
        theirs
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut r = BufReader::new(&theirs);
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.payload.as_slice()),
            (FrameKind::Stdout, &b"hi"[..])
        );
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(
            decode_message::<GuestMessage>(&f).unwrap(),
            GuestMessage::Exited {
                exit_code: 5,
                signal: None
            }
        );
        assert!(read_frame(&mut r).unwrap().is_none(), "and the end");
    }
}
