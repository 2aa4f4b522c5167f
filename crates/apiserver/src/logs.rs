//! Streaming a container's `stdio.log` to a client, optionally following it
//! until the container ends (attach, `logs -f`).
//!
//! The runtime helper appends one JSON line per output chunk and flushes the
//! log before it records the exit, so a reader that sees the exit and then
//! drains the file has seen every byte. A follower wakes when the log grows
//! or the state changes ([`crate::watch`]), and stops as soon as its client
//! has gone. As Docker does, only a container that runs is followed: for
//! one that was created and never started, or has ended, the log so far is
//! the whole answer (`logs -f`); `start?attach=1` follows to the end.

use crate::api::call::StreamWriter;
use crate::containers::Containers;
use crate::watch::SAFETY_NET;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use vessel_api::types::{LogRecord, StreamEvent};

/// What part of a log to send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Selection {
    /// Go on until the container has ended (the caller decides whether a
    /// container that is not running is followed).
    pub follow: bool,
    /// Of what is there now, only the last this many lines (`--tail`).
    pub tail: Option<usize>,
    /// Only output written from this time on, in ms since the epoch
    /// (`--since`).
    pub since_ms: Option<u64>,
}

/// Write the log of container `id` to `out` as NDJSON [`StreamEvent`]s, as
/// `sel` says. When following, send an `exit` event once the container
/// has ended.
pub fn stream(
    containers: &Containers,
    id: &str,
    out: &mut StreamWriter,
    sel: Selection,
    before_exit: impl FnOnce(&vessel_api::types::ContainerInfo),
) -> io::Result<()> {
    let follow = sel.follow;
    let path = containers.home().container_dir(id).join("stdio.log");
    let mut reader: Option<BufReader<File>> = None;
    let mut partial = String::new();
    let mut logs = containers.changes().logs();
    let mut states = containers.changes().states();
    // `tail` applies to what is there when the request comes.
    let mut tail = sel.tail;
    loop {
        logs.borrow_and_update();
        states.borrow_and_update();
        if reader.is_none() {
            match File::open(&path) {
                Ok(f) => reader = Some(BufReader::new(f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(r) = reader.as_mut() {
            match tail.take() {
                Some(n) => drain_tail(r, &mut partial, out, sel.since_ms, n)?,
                None => drain(r, &mut partial, out, sel.since_ms)?,
            }
        }
        tail = None;
        if !follow {
            return Ok(());
        }
        let info = match containers.load(id) {
            Ok(i) => i,
            Err(_) => return Ok(()), // removed meanwhile
        };
        if !info.state.status.is_active() {
            if reader.is_none() {
                if let Ok(f) = File::open(&path) {
                    reader = Some(BufReader::new(f));
                }
            }
            if let Some(r) = reader.as_mut() {
                drain(r, &mut partial, out, sel.since_ms)?;
            }
            // The exit is reported once the network is given back, so a
            // client that runs again at once finds its ports free.
            containers.note_exit(&info);
            before_exit(&info);
            let ev = StreamEvent::Exit {
                exit_code: info.state.exit_code.unwrap_or(255),
                error: info.state.error,
            };
            return write_event(out, &ev);
        }
        // Until more output, a change of state, or the client leaving.
        let woke = out.wait(SAFETY_NET, async {
            tokio::select! {
                _ = logs.changed() => {},
                _ = states.changed() => {},
            }
        });
        if woke.is_none() {
            return Ok(());
        }
    }
}

/// The next whole record of the log, if there is one yet (a partial line
/// waits in `partial` for its rest); records that do not parse are skipped.
fn next_record(r: &mut BufReader<File>, partial: &mut String) -> io::Result<Option<LogRecord>> {
    loop {
        let n = r.read_line(partial)?;
        if n == 0 || !partial.ends_with('\n') {
            return Ok(None);
        }
        let rec = serde_json::from_str::<LogRecord>(partial.trim_end());
        partial.clear();
        if let Ok(rec) = rec {
            return Ok(Some(rec));
        }
    }
}

fn wanted(rec: &LogRecord, since_ms: Option<u64>) -> bool {
    since_ms.is_none_or(|s| rec.time_ms >= s)
}

fn drain(
    r: &mut BufReader<File>,
    partial: &mut String,
    out: &mut impl Write,
    since_ms: Option<u64>,
) -> io::Result<()> {
    while let Some(rec) = next_record(r, partial)? {
        if wanted(&rec, since_ms) {
            write_event(out, &StreamEvent::Output(rec))?;
        }
    }
    Ok(())
}

/// What the log holds now, its last `n` lines only.
fn drain_tail(
    r: &mut BufReader<File>,
    partial: &mut String,
    out: &mut impl Write,
    since_ms: Option<u64>,
    n: usize,
) -> io::Result<()> {
    let mut last: VecDeque<LogRecord> = VecDeque::with_capacity(n.min(4096));
    while let Some(rec) = next_record(r, partial)? {
        if !wanted(&rec, since_ms) {
            continue;
        }
        for line in rec.lines() {
            if last.len() == n {
                last.pop_front();
            }
            if n > 0 {
                last.push_back(line);
            }
        }
    }
    for rec in last {
        write_event(out, &StreamEvent::Output(rec))?;
    }
    Ok(())
}

fn write_event(out: &mut impl Write, ev: &StreamEvent) -> io::Result<()> {
    let mut line = serde_json::to_vec(ev).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// Write what container `id` logged from `since_ms` on as
/// `vessel.agent.v1` `Stdout`/`Stderr` frames (the streams `wanted` asks
/// for: stdout, stderr): the output of a run that ended before a client
/// could attach to it.
pub fn write_frames_since(
    containers: &Containers,
    id: &str,
    since_ms: u64,
    wanted: (bool, bool),
    out: &mut impl Write,
) -> io::Result<()> {
    let path = containers.home().container_dir(id).join("stdio.log");
    let mut r = match File::open(&path) {
        Ok(f) => BufReader::new(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut partial = String::new();
    while let Some(rec) = next_record(&mut r, &mut partial)? {
        let (kind, want) = match rec.stream {
            vessel_api::types::Stream::Stdout => (agent_protocol::FrameKind::Stdout, wanted.0),
            vessel_api::types::Stream::Stderr => (agent_protocol::FrameKind::Stderr, wanted.1),
        };
        if !want || rec.time_ms < since_ms {
            continue;
        }
        for chunk in rec.data().chunks(agent_protocol::MAX_STDIO_CHUNK) {
            agent_protocol::write_frame(out, kind, chunk).map_err(io::Error::other)?;
        }
    }
    Ok(())
}
