//! The registry routes of the image helper (the apiserver proxies them):
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | POST | `/images/pull?ref=REF[&platform=os/arch[/variant]][&tls_verify=false]` | `RegistryRequest` | ndjson `TransferEvent`s |
//! | POST | `/images/push?ref=REF[&tls_verify=false]` | `RegistryRequest` | ndjson `TransferEvent`s |
//! | POST | `/registry/login?server=HOST[:PORT][&tls_verify=false]` | `RegistryRequest` | `{"ok":true}` |
//!
//! A pull or push whose parameters are bad (or, for push, whose image is
//! not in the store) answers a JSON error (`invalid_argument`,
//! `image_not_found`) before any stream. Otherwise the answer is 200
//! `application/x-ndjson`: `resolved`, `progress` (throttled), `blob_done`,
//! `status`, and last exactly one `done` or `error` line (the `error` event
//! has the same kinds as error answers). Login answers `unauthorized` (401)
//! for rejected credentials and `registry_error` (502) when the registry
//! cannot be reached.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use vessel_api::error::{error_chain, ErrorBody, ErrorKind};
use vessel_api::http::{respond_error, respond_json, respond_stream_head, Request};
use vessel_api::types::{RegistryRequest, TransferEvent};

use super::{EventSink, RegistryError, TransferOptions};
use crate::images::Images;
use crate::oci::PlatformSpec;
use crate::reference::Reference;

/// Handle a registry route; `false` if `req` is not one.
pub fn handle(images: &Images, req: &mut Request) -> bool {
    let path = req.path.trim_end_matches('/').to_string();
    match (req.method.as_str(), path.as_str()) {
        ("POST", "/images/pull") => transfer(images, req, true),
        ("POST", "/images/push") => transfer(images, req, false),
        ("POST", "/registry/login") => login(images, req),
        _ => return false,
    }
    true
}

/// Events written as JSON lines to the client, flushed one by one.
struct StreamSink {
    w: Mutex<UnixStream>,
    gone: AtomicBool,
}

impl EventSink for StreamSink {
    fn emit(&self, event: TransferEvent) {
        if self.gone.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut line) = serde_json::to_vec(&event) else {
            return;
        };
        line.push(b'\n');
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        if w.write_all(&line).and_then(|_| w.flush()).is_err() {
            self.gone.store(true, Ordering::Relaxed);
        }
    }

    fn cancelled(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }
}

fn tls_verify(req: &Request) -> bool {
    !matches!(
        req.query("tls_verify")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("false" | "0" | "no")
    )
}

fn body(req: &mut Request) -> Result<RegistryRequest, String> {
    if req.content_length == 0 {
        return Ok(RegistryRequest::default());
    }
    req.json::<RegistryRequest>()
        .map_err(|e| format!("Invalid request body: {}", error_chain(&e)))
}

fn fail(req: &mut Request, error: ErrorBody) {
    eprintln!(
        "vessel-images: {} {}: {}: {}",
        req.method, req.path, error.kind, error.message
    );
    if let Err(e) = respond_error(req.stream(), &error) {
        eprintln!("vessel-images: cannot send the response: {e}");
    }
}

fn invalid(message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorKind::InvalidArgument, message)
}

fn transfer(images: &Images, req: &mut Request, is_pull: bool) {
    let reference = match req.query("ref").filter(|r| !r.is_empty()) {
        Some(r) => r.to_string(),
        None => return fail(req, invalid("Missing query parameter ref")),
    };
    let target = match Reference::parse(&reference) {
        Ok(r) => r,
        Err(e) => return fail(req, invalid(error_chain(&e))),
    };
    let platform = match req.query("platform").filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => match PlatformSpec::parse(p) {
            Ok(p) => Some(p),
            Err(e) => return fail(req, invalid(e.to_string())),
        },
    };
    let auth = match body(req) {
        Ok(b) => b.auth,
        Err(m) => return fail(req, invalid(m)),
    };
    let opts = TransferOptions {
        platform,
        tls_verify: tls_verify(req),
        auth,
    };
    // A push needs the image here: say so before streaming.
    let record = if is_pull {
        None
    } else {
        match images.lookup(&reference) {
            Ok(f) => Some(f.record),
            Err(e) => return fail(req, RegistryError::Image(e).body()),
        }
    };
    let w = match req.stream().try_clone() {
        Ok(w) => w,
        Err(e) => {
            let msg = format!("cannot clone the connection: {e}");
            return fail(req, ErrorBody::new(ErrorKind::Internal, msg));
        }
    };
    if respond_stream_head(req.stream(), 200, "application/x-ndjson").is_err() {
        return;
    }
    let sink = StreamSink {
        w: Mutex::new(w),
        gone: AtomicBool::new(false),
    };
    let verb = if is_pull { "pull" } else { "push" };
    let started = std::time::Instant::now();
    let result = match record {
        None => images.pull(&reference, &opts, &sink),
        Some(rec) => super::push::push(images.store(), &rec, &target, &opts, &sink),
    };
    match result {
        Ok(image) => {
            eprintln!(
                "vessel-images: {verb} {} ({}) done in {:.2}s",
                image.reference,
                image.digest,
                started.elapsed().as_secs_f64()
            );
            sink.emit(TransferEvent::Done { image });
        }
        Err(e) => {
            let message = e.message();
            eprintln!("vessel-images: {verb} {reference} failed: {message}");
            sink.emit(TransferEvent::Error {
                kind: e.kind(),
                message,
            });
        }
    }
}

fn login(images: &Images, req: &mut Request) {
    let server = match req.query("server").filter(|s| !s.is_empty()) {
        Some(s) => s.to_string(),
        None => return fail(req, invalid("Missing query parameter server")),
    };
    let verify = tls_verify(req);
    let auth = match body(req) {
        Ok(b) => b.auth,
        Err(m) => return fail(req, invalid(m)),
    };
    match images.registry_login(&server, verify, auth) {
        Ok(()) => {
            let _ = respond_json(req.stream(), 200, &serde_json::json!({"ok": true}));
        }
        Err(e) => {
            // A login either is refused, or could not be checked.
            let kind = match &e {
                RegistryError::Unauthorized(_) | RegistryError::Denied(_) => {
                    ErrorKind::Unauthorized
                }
                RegistryError::BadRequest(_) => ErrorKind::InvalidArgument,
                _ => ErrorKind::RegistryError,
            };
            fail(req, ErrorBody::new(kind, e.message()));
        }
    }
}
