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
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use vessel_api::types::{LogRecord, StreamEvent};

/// Write the log of container `id` to `out` as NDJSON [`StreamEvent`]s.
/// With `follow`, keep going until the container has ended, then send an
/// `exit` event (the caller decides whether a container that is not
/// running is followed).
pub fn stream(
    containers: &Containers,
    id: &str,
    out: &mut StreamWriter,
    follow: bool,
    before_exit: impl FnOnce(&vessel_api::types::ContainerInfo),
) -> io::Result<()> {
    let path = containers.home().container_dir(id).join("stdio.log");
    let mut reader: Option<BufReader<File>> = None;
    let mut partial = String::new();
    let mut logs = containers.changes().logs();
    let mut states = containers.changes().states();
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
            drain(r, &mut partial, out)?;
        }
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
                drain(r, &mut partial, out)?;
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

fn drain(r: &mut BufReader<File>, partial: &mut String, out: &mut impl Write) -> io::Result<()> {
    loop {
        let n = r.read_line(partial)?;
        if n == 0 || !partial.ends_with('\n') {
            return Ok(()); // at the end; a partial line waits for its rest
        }
        if let Ok(rec) = serde_json::from_str::<LogRecord>(partial.trim_end()) {
            write_event(out, &StreamEvent::Output(rec))?;
        }
        partial.clear();
    }
}

fn write_event(out: &mut impl Write, ev: &StreamEvent) -> io::Result<()> {
    let mut line = serde_json::to_vec(ev).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}
