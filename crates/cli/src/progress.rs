//! Rendering a pull or push stream (`TransferEvent`s, one JSON per line) the
//! way `docker pull` does: on a terminal, a progress bar per layer and a
//! total; otherwise a few plain lines; or nothing at all.
//!
//! Everything here goes to stderr; the caller prints the result lines.

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::collections::HashMap;
use std::io::{BufRead, IsTerminal};
use vessel_api::types::{ImageSummary, TransferEvent};

/// How to show a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Progress bars (stderr is a terminal).
    Bars,
    /// One line per layer when it is done, no carriage returns.
    Plain,
    /// Nothing.
    Quiet,
}

impl Mode {
    /// Bars when stderr is a terminal, plain lines otherwise; `quiet` wins.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Plain
        }
    }
}

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pull,
    Push,
}

/// What a successful transfer ended with.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub image: ImageSummary,
    /// Digest of the manifest (from the `resolved` event, else the image's).
    pub digest: String,
    /// Did any blob actually move (not skipped)?
    pub transferred: bool,
}

/// The first 12 hex digits of a digest, as Docker names layers.
pub fn short_digest(digest: &str) -> String {
    let hex = digest.split_once(':').map(|(_, h)| h).unwrap_or(digest);
    hex.chars().take(12).collect()
}

/// `host/repo:tag` → (`host/repo`, `tag`); `repo@sha256:…` → (`repo`, `sha256:…`).
pub fn split_name_tag(reference: &str) -> (String, String) {
    if let Some((name, digest)) = reference.split_once('@') {
        return (name.to_string(), digest.to_string());
    }
    let slash = reference.rfind('/').map(|i| i + 1).unwrap_or(0);
    match reference[slash..].rfind(':') {
        Some(i) => (
            reference[..slash + i].to_string(),
            reference[slash + i + 1..].to_string(),
        ),
        None => (reference.to_string(), "latest".into()),
    }
}

struct Blob {
    bar: Option<ProgressBar>,
    size: u64,
    current: u64,
    done: Option<&'static str>,
    started: bool,
}

struct Renderer {
    kind: Kind,
    mode: Mode,
    multi: Option<MultiProgress>,
    total: Option<ProgressBar>,
    blobs: HashMap<String, Blob>,
    order: Vec<String>,
    last_status: Option<String>,
    digest: Option<String>,
    transferred: bool,
}

/// Bytes as Docker's progress shows them: four significant digits, `38.7MB`.
pub fn bar_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    let decimals = match v {
        x if x >= 1000.0 => 0,
        x if x >= 100.0 => 1,
        x if x >= 10.0 => 2,
        _ => 3,
    };
    let mut t = format!("{v:.decimals$}");
    if t.contains('.') {
        t = t.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    t + units[u]
}

fn sizes(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = match state.len() {
        Some(len) if len > 0 => write!(w, "{}/{}", bar_size(state.pos()), bar_size(len)),
        _ => write!(w, "{}", bar_size(state.pos())),
    };
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("sizes", sizes)
        .progress_chars("=> ")
}

impl Renderer {
    fn new(kind: Kind, mode: Mode) -> Self {
        let (multi, total) = if mode == Mode::Bars {
            let m = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let t = m.add(ProgressBar::new(0));
            t.set_style(style("{prefix:>12}: {msg}"));
            t.set_prefix("Total");
            t.set_message(match kind {
                Kind::Pull => "Resolving",
                Kind::Push => "Preparing",
            });
            (Some(m), Some(t))
        } else {
            (None, None)
        };
        Self {
            kind,
            mode,
            multi,
            total,
            blobs: HashMap::new(),
            order: Vec::new(),
            last_status: None,
            digest: None,
            transferred: false,
        }
    }

    fn active_verb(&self) -> &'static str {
        match self.kind {
            Kind::Pull => "Downloading",
            Kind::Push => "Pushing",
        }
    }

    fn done_text(&self, skipped: bool) -> &'static str {
        match (self.kind, skipped) {
            (Kind::Pull, false) => "Pull complete",
            (Kind::Pull, true) => "Already exists",
            (Kind::Push, false) => "Pushed",
            (Kind::Push, true) => "Layer already exists",
        }
    }

    fn line(&self, text: &str) {
        match (&self.multi, self.mode) {
            (Some(m), _) => {
                let _ = m.println(text);
            }
            (None, Mode::Plain) => eprintln!("{text}"),
            _ => {}
        }
    }

    fn blob(&mut self, digest: &str, size: u64) -> &mut Blob {
        if !self.blobs.contains_key(digest) {
            let bar = match (&self.multi, &self.total) {
                (Some(m), Some(t)) => {
                    let b = m.insert_before(t, ProgressBar::new(size));
                    b.set_style(style("{prefix}: {msg}"));
                    b.set_prefix(short_digest(digest));
                    b.set_message(match self.kind {
                        Kind::Pull => "Waiting",
                        Kind::Push => "Preparing",
                    });
                    Some(b)
                }
                _ => None,
            };
            self.order.push(digest.to_string());
            self.blobs.insert(
                digest.to_string(),
                Blob {
                    bar,
                    size,
                    current: 0,
                    done: None,
                    started: false,
                },
            );
        }
        self.blobs
            .get_mut(digest)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    fn update_total(&self) {
        if let Some(t) = &self.total {
            let len: u64 = self.blobs.values().map(|b| b.size.max(b.current)).sum();
            let pos: u64 = self.blobs.values().map(|b| b.current).sum();
            t.set_length(len);
            t.set_position(pos.min(len));
        }
    }

    fn event(&mut self, ev: TransferEvent) -> Option<Result<ImageSummary>> {
        match ev {
            TransferEvent::Resolved {
                reference,
                digest,
                layers,
            } => {
                let (name, tag) = split_name_tag(&reference);
                self.line(&match self.kind {
                    Kind::Pull => format!("{tag}: Pulling from {name}"),
                    Kind::Push => format!("The push refers to repository [{name}]"),
                });
                self.digest = Some(digest);
                for l in &layers {
                    self.blob(&l.digest, l.size);
                }
                if let Some(t) = &self.total {
                    t.set_style(style("{prefix:>12}: {msg:<11} [{bar:50}] {sizes}"));
                    t.set_message(self.active_verb());
                }
                self.update_total();
            }
            TransferEvent::Progress {
                digest,
                current,
                total,
            } => {
                let verb = self.active_verb();
                let b = self.blob(&digest, total);
                if total > 0 {
                    b.size = total;
                }
                b.current = current.min(b.size.max(current));
                if let Some(bar) = &b.bar {
                    if !b.started {
                        bar.set_style(style("{prefix}: {msg} [{bar:50}] {sizes}"));
                        bar.set_message(verb);
                    }
                    bar.set_length(b.size);
                    bar.set_position(b.current);
                }
                b.started = true;
                self.update_total();
            }
            TransferEvent::BlobDone { digest, skipped } => {
                let text = self.done_text(skipped);
                if !skipped {
                    self.transferred = true;
                }
                let b = self.blob(&digest, 0);
                b.current = b.size;
                b.done = Some(text);
                if let Some(bar) = &b.bar {
                    bar.set_style(style("{prefix}: {msg}"));
                    bar.finish_with_message(text);
                }
                if self.mode == Mode::Plain {
                    eprintln!("{}: {text}", short_digest(&digest));
                }
                self.update_total();
            }
            TransferEvent::Status { message } => {
                if let Some(t) = &self.total {
                    t.set_message(message.clone());
                } else if self.mode == Mode::Plain && self.last_status.as_ref() != Some(&message) {
                    eprintln!("{message}");
                }
                self.last_status = Some(message);
            }
            TransferEvent::Done { image } => {
                self.finish();
                return Some(Ok(image));
            }
            TransferEvent::Error { kind, message } => {
                self.finish();
                return Some(Err(vessel_api::error::ErrorBody::new(kind, message).into()));
            }
        }
        None
    }

    /// Replace the bars by plain lines, one per finished layer (the
    /// terminal then holds what plain mode would have printed).
    fn finish(&mut self) {
        if let Some(m) = self.multi.take() {
            let _ = m.clear();
            // Nothing may be drawn any more: the lines below take the bars' place.
            m.set_draw_target(ProgressDrawTarget::hidden());
            for b in self.blobs.values() {
                if let Some(bar) = &b.bar {
                    bar.finish_and_clear();
                }
            }
            if let Some(t) = self.total.take() {
                t.finish_and_clear();
            }
            for d in &self.order {
                if let Some(Blob {
                    done: Some(text), ..
                }) = self.blobs.get(d)
                {
                    eprintln!("{}: {text}", short_digest(d));
                }
            }
        }
    }
}

/// Follow a transfer stream to its end. `Err` carries the registry's or
/// helper's message as it should be shown after `Error: `.
pub fn follow(reader: &mut dyn BufRead, kind: Kind, mode: Mode) -> Result<Outcome> {
    let mut r = Renderer::new(kind, mode);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .context("reading the transfer's progress from the apiserver")?;
        if n == 0 {
            r.finish();
            bail!("the connection to the apiserver ended before the transfer finished");
        }
        let Ok(ev) = serde_json::from_str::<TransferEvent>(line.trim_end()) else {
            continue; // an event kind this client does not know
        };
        if let Some(res) = r.event(ev) {
            let image = res?;
            let digest = r.digest.clone().unwrap_or_else(|| image.digest.clone());
            return Ok(Outcome {
                image,
                digest,
                transferred: r.transferred,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::types::BlobInfo;

    fn image() -> ImageSummary {
        ImageSummary {
            reference: "127.0.0.1:5000/busybox:latest".into(),
            id: "sha256:c0".into(),
            digest: "sha256:m1".into(),
            created: None,
            size: 10,
        }
    }

    fn stream(events: &[TransferEvent]) -> Vec<u8> {
        let mut s = Vec::new();
        for e in events {
            s.extend(serde_json::to_vec(e).unwrap());
            s.push(b'\n');
        }
        s
    }

    #[test]
    fn sizes_like_docker() {
        assert_eq!(bar_size(38_702_000), "38.7MB");
        assert_eq!(bar_size(40_852_000), "40.85MB");
        assert_eq!(bar_size(40_000_000), "40MB");
        assert_eq!(bar_size(123_456_789), "123.5MB");
        assert_eq!(bar_size(1500), "1.5kB");
        assert_eq!(bar_size(999), "999B");
    }

    #[test]
    fn names() {
        assert_eq!(short_digest("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(
            split_name_tag("h:5000/a/b:v1"),
            ("h:5000/a/b".into(), "v1".into())
        );
        assert_eq!(
            split_name_tag("h:5000/a"),
            ("h:5000/a".into(), "latest".into())
        );
        assert_eq!(
            split_name_tag("a@sha256:ff"),
            ("a".into(), "sha256:ff".into())
        );
    }

    #[test]
    fn follows_to_done_in_every_mode() {
        let d = "sha256:aaaaaaaaaaaaaaaaaaaa".to_string();
        let events = vec![
            TransferEvent::Resolved {
                reference: "127.0.0.1:5000/busybox:latest".into(),
                digest: "sha256:m1".into(),
                layers: vec![BlobInfo {
                    digest: d.clone(),
                    size: 100,
                }],
            },
            TransferEvent::Progress {
                digest: d.clone(),
                current: 50,
                total: 100,
            },
            TransferEvent::Status {
                message: "unpacking".into(),
            },
            TransferEvent::BlobDone {
                digest: d,
                skipped: false,
            },
            TransferEvent::Done { image: image() },
        ];
        let mut data = stream(&events);
        data.extend(b"{\"event\":\"future_kind\"}\nnot json\n");
        for mode in [Mode::Bars, Mode::Plain, Mode::Quiet] {
            let out = follow(&mut &data[..], Kind::Pull, mode).unwrap();
            assert_eq!(out.image, image());
            assert_eq!(out.digest, "sha256:m1");
            assert!(out.transferred);
        }
    }

    #[test]
    fn errors_and_truncated_streams() {
        let events = vec![
            TransferEvent::Status {
                message: "resolving".into(),
            },
            TransferEvent::Error {
                kind: vessel_api::error::ErrorKind::Unauthorized,
                message: "unauthorized: authentication required".into(),
            },
        ];
        let e = follow(&mut &stream(&events)[..], Kind::Pull, Mode::Quiet).unwrap_err();
        assert_eq!(e.to_string(), "unauthorized: authentication required");
        assert_eq!(
            crate::api::error_kind(&e),
            Some(vessel_api::error::ErrorKind::Unauthorized)
        );
        // An error event of an older helper, without a kind.
        let old = b"{\"event\":\"error\",\"message\":\"boom\"}\n";
        let e = follow(&mut &old[..], Kind::Pull, Mode::Quiet).unwrap_err();
        assert_eq!(
            crate::api::error_kind(&e),
            Some(vessel_api::error::ErrorKind::Internal)
        );
        let e = follow(&mut &stream(&events[..1])[..], Kind::Push, Mode::Plain).unwrap_err();
        assert!(e.to_string().contains("ended before"), "{e}");
        // Unknown lines are skipped, skipped blobs are not "transferred".
        let mut data = b"{\"event\":\"new_thing\"}\ngarbage\n".to_vec();
        data.extend(stream(&[
            TransferEvent::BlobDone {
                digest: "sha256:bb".into(),
                skipped: true,
            },
            TransferEvent::Done { image: image() },
        ]));
        let out = follow(&mut &data[..], Kind::Pull, Mode::Bars).unwrap();
        assert!(!out.transferred);
        assert_eq!(out.digest, "sha256:m1");
    }
}
