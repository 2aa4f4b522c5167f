//! The event bus: what happens to containers, as it happens, for
//! `GET /v1/events`.
//!
//! Each event is appended to `VESSEL_HOME/events.log` (one JSON line) and
//! sent to every subscriber, both under one lock, so a subscriber that
//! reads the log and then listens misses nothing and sees nothing twice.
//! The log is bounded: past [`MAX_LOG`] bytes it becomes `events.log.1`
//! (replacing the older one) and a new log starts, so about the last
//! 2 × [`MAX_LOG`] bytes of events (some 10,000) can be replayed with
//! `since`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::broadcast;
use vessel_api::types::{now_ns, ContainerConfig, Event, EventAction, EventType};

/// Size of the events log before it is rotated.
pub const MAX_LOG: u64 = 1 << 20;
/// Events a subscriber may lag behind before it loses some.
const BACKLOG: usize = 4096;

struct Log {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

/// The bus of one apiserver.
pub struct Events {
    log: Mutex<Log>,
    tx: broadcast::Sender<Event>,
}

impl Events {
    /// The bus, logging to `path` (`VESSEL_HOME/events.log`).
    pub fn new(path: &Path) -> Self {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Self {
            log: Mutex::new(Log {
                path: path.to_path_buf(),
                file: None,
                size,
            }),
            tx: broadcast::channel(BACKLOG).0,
        }
    }

    /// Record and send `action` about container `config`.
    pub fn emit(&self, action: EventAction, config: &ContainerConfig, attrs: &[(&str, String)]) {
        let mut attributes = BTreeMap::new();
        attributes.insert("image".to_string(), config.image.clone());
        for (k, v) in attrs {
            attributes.insert(k.to_string(), v.clone());
        }
        self.send(Event {
            time_ns: now_ns(),
            kind: EventType::Container,
            action,
            id: config.id.clone(),
            name: config.name.clone(),
            attributes,
        });
    }

    /// A volume's event (`create`, `destroy`): its name is the event's
    /// `id` and `name`, with the `driver` attribute (`local`).
    pub fn emit_volume(&self, action: EventAction, name: &str) {
        let mut attributes = BTreeMap::new();
        attributes.insert("driver".to_string(), "local".to_string());
        self.send(Event {
            time_ns: now_ns(),
            kind: EventType::Volume,
            action,
            id: name.to_string(),
            name: name.to_string(),
            attributes,
        });
    }

    fn send(&self, ev: Event) {
        let Ok(mut log) = self.log.lock() else {
            return;
        };
        if let Err(e) = log.append(&ev) {
            eprintln!("vessel-apiserver: writing {}: {e}", log.path.display());
        }
        // No subscriber is not an error.
        let _ = self.tx.send(ev);
    }

    /// The logged events from `since` (nanoseconds) on, and a receiver of
    /// every later one.
    pub fn subscribe(&self, since: Option<u64>) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let Ok(log) = self.log.lock() else {
            return (Vec::new(), self.tx.subscribe());
        };
        let mut past = Vec::new();
        if let Some(since) = since {
            for p in [rotated(&log.path), log.path.clone()] {
                read_log(&p, since, &mut past);
            }
        }
        (past, self.tx.subscribe())
    }
}

impl Log {
    fn append(&mut self, ev: &Event) -> std::io::Result<()> {
        if self.size >= MAX_LOG {
            self.file = None;
            std::fs::rename(&self.path, rotated(&self.path))?;
            self.size = 0;
        }
        if self.file.is_none() {
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let mut line = serde_json::to_vec(ev).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if let Some(f) = self.file.as_mut() {
            f.write_all(&line)?;
        }
        self.size += line.len() as u64;
        Ok(())
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

fn read_log(path: &Path, since: u64, out: &mut Vec<Event>) {
    let Ok(f) = File::open(path) else {
        return;
    };
    for line in BufReader::new(f).lines() {
        let Ok(line) = line else {
            return;
        };
        // A line cut short by a crash, or of a newer kind: skipped.
        if let Ok(ev) = serde_json::from_str::<Event>(&line) {
            if ev.time_ns >= since {
                out.push(ev);
            }
        }
    }
}

/// Which events a subscriber wants: Docker's `filters` (a JSON object of
/// lists: the same key is any of its values, several keys must all hold).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filter {
    types: Vec<String>,
    actions: Vec<EventAction>,
    containers: Vec<String>,
    images: Vec<String>,
    volumes: Vec<String>,
}

impl Filter {
    /// Parse `filters`, e.g. `{"event":["die"],"container":["web"]}`.
    pub fn parse(json: &str) -> Result<Self, String> {
        let map: BTreeMap<String, Vec<String>> = serde_json::from_str(json).map_err(|e| {
            format!(
                "invalid filters {json:?}: expected a JSON object of lists such as {{\"event\":[\"die\"]}} ({e})"
            )
        })?;
        let mut f = Filter::default();
        for (key, values) in map {
            match key.as_str() {
                "type" => {
                    for v in &values {
                        if v != EventType::Container.as_str() && v != EventType::Volume.as_str() {
                            return Err(format!(
                                "invalid filter type={v}: the types are `container` and `volume`"
                            ));
                        }
                    }
                    f.types = values;
                }
                "event" | "action" => {
                    for v in values {
                        let a = EventAction::parse(&v).ok_or_else(|| {
                            format!(
                                "invalid filter event={v}: events are {}",
                                EventAction::ALL
                                    .iter()
                                    .map(|a| a.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        })?;
                        f.actions.push(a);
                    }
                }
                "container" => f.containers = values,
                "image" => f.images = values,
                "volume" => f.volumes = values,
                other => {
                    return Err(format!(
                        "invalid filter {other:?}: filters are type, event, container, image and volume"
                    ))
                }
            }
        }
        Ok(f)
    }

    /// Does `ev` pass?
    pub fn matches(&self, ev: &Event) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == ev.kind.as_str()))
            && (self.actions.is_empty() || self.actions.contains(&ev.action))
            && (self.containers.is_empty()
                || (ev.kind == EventType::Container
                    && self.containers.iter().any(|c| {
                        c == &ev.name || (!c.is_empty() && ev.id.starts_with(c.as_str()))
                    })))
            && (self.volumes.is_empty()
                || (ev.kind == EventType::Volume && self.volumes.iter().any(|v| v == &ev.name)))
            && (self.images.is_empty()
                || self
                    .images
                    .iter()
                    .any(|i| ev.attributes.get("image") == Some(i)))
    }
}

/// A time of `since`/`until`: Unix seconds, with a fraction if wanted
/// (`1700000000`, `1700000000.25`); in nanoseconds.
pub fn parse_time(name: &str, v: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid {name} {v:?}: expected Unix time in seconds, such as 1700000000 or 1700000000.5")
    };
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || secs.len() > 11 {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    let mut nanos = 0u64;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += u64::from(d - b'0') * 10u64.pow(8 - i as u32);
    }
    secs.checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(nanos))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: &str, name: &str) -> ContainerConfig {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "image": "localhost/busybox:latest", "image_id": "sha256:x",
            "created_ms": 0, "process": {"args": ["true"], "env": [], "cwd": "/", "user": ""},
            "hostname": "h", "cpus": 1, "memory_mib": 64, "auto_remove": false,
            "rootfs_base": "/r", "kernel": "/k", "initrd": "/i", "accel": "tcg",
            "network": "none"
        }))
        .unwrap()
    }

    #[test]
    fn events_are_logged_replayed_and_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let bus = Events::new(&path);
        let c = config("abcdef0123", "web");
        let t0 = now_ns();
        bus.emit(EventAction::Create, &c, &[]);
        let (past, mut rx) = bus.subscribe(Some(t0));
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].action, EventAction::Create);
        assert_eq!(past[0].attributes["image"], "localhost/busybox:latest");
        bus.emit(EventAction::Die, &c, &[("exit_code", "3".into())]);
        let ev = rx.try_recv().unwrap();
        assert_eq!(ev.action, EventAction::Die);
        assert_eq!(ev.attributes["exit_code"], "3");
        // A new apiserver replays what the old one logged.
        let again = Events::new(&path);
        let (past, _) = again.subscribe(Some(0));
        assert_eq!(past.len(), 2);
        let (past, _) = again.subscribe(Some(ev.time_ns + 1));
        assert!(past.is_empty());
        let (past, _) = again.subscribe(None);
        assert!(past.is_empty(), "no since: only what comes");
    }

    #[test]
    fn the_log_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let bus = Events::new(&path);
        let c = config(&"a".repeat(64), "x");
        let mut n = 0;
        while !rotated(&path).exists() || std::fs::metadata(&path).unwrap().len() < MAX_LOG / 2 {
            bus.emit(EventAction::Kill, &c, &[("signal", "15".into())]);
            n += 1;
        }
        for _ in 0..n * 2 {
            bus.emit(EventAction::Kill, &c, &[("signal", "15".into())]);
        }
        let total = std::fs::metadata(&path).unwrap().len()
            + std::fs::metadata(rotated(&path)).unwrap().len();
        assert!(total <= 2 * MAX_LOG + 1024, "{total}");
        let (past, _) = bus.subscribe(Some(0));
        assert!(past.len() > 1000, "{}", past.len());
    }

    #[test]
    fn filters() {
        let c = config("abcdef0123", "web");
        let ev = |a| Event {
            time_ns: 1,
            kind: EventType::Container,
            action: a,
            id: c.id.clone(),
            name: c.name.clone(),
            attributes: [("image".to_string(), c.image.clone())].into(),
        };
        let f = Filter::parse(r#"{"event":["die","stop"],"container":["web"]}"#).unwrap();
        assert!(f.matches(&ev(EventAction::Die)));
        assert!(!f.matches(&ev(EventAction::Start)));
        let f = Filter::parse(r#"{"container":["abc"],"type":["container"]}"#).unwrap();
        assert!(f.matches(&ev(EventAction::Start)));
        let f = Filter::parse(r#"{"container":["other"]}"#).unwrap();
        assert!(!f.matches(&ev(EventAction::Start)));
        let f = Filter::parse(r#"{"image":["localhost/busybox:latest"]}"#).unwrap();
        assert!(f.matches(&ev(EventAction::Start)));
        assert!(Filter::parse("{}")
            .unwrap()
            .matches(&ev(EventAction::Destroy)));
        // Volumes: their own type and filter; a container filter leaves them out.
        let vol = Event {
            time_ns: 1,
            kind: EventType::Volume,
            action: EventAction::Create,
            id: "web".into(),
            name: "web".into(),
            attributes: [("driver".to_string(), "local".to_string())].into(),
        };
        assert!(!Filter::parse(r#"{"container":["web"]}"#)
            .unwrap()
            .matches(&vol));
        let f = Filter::parse(r#"{"type":["volume"],"volume":["web"]}"#).unwrap();
        assert!(f.matches(&vol));
        assert!(!f.matches(&ev(EventAction::Create)));
        for bad in [
            "",
            "[]",
            r#"{"event":"die"}"#,
            r#"{"event":["explode"]}"#,
            r#"{"type":["image"]}"#,
            r#"{"colour":["red"]}"#,
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("since", "12").unwrap(), 12_000_000_000);
        assert_eq!(parse_time("since", "12.5").unwrap(), 12_500_000_000);
        assert_eq!(parse_time("since", "0.000000001").unwrap(), 1);
        for bad in ["", "-1", "x", "1e9", "1.2.3", ".5", "99999999999999999999"] {
            assert!(parse_time("since", bad).is_err(), "{bad}");
        }
    }
}
