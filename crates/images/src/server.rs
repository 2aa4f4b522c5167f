//! The HTTP API of `vessel-images`, served on `Home::images_socket()` to
//! the apiserver only (socket mode 0600). One thread per connection.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/health` | `{"ok":true}` |
//! | GET | `/images` | `[ImageSummary]` |
//! | POST | `/images/load?path=ABS` | `LoadResponse` |
//! | POST | `/images/import?path=ABS&ref=REF` | `LoadResponse` |
//! | POST | `/images/resolve?ref=REF` | `ResolvedImage` (builds the ext4) |
//! | GET | `/images/inspect?ref=REF` | config JSON with `id`, `digest` |
//! | DELETE | `/images?ref=REF`, body `{"keep":[IDs]}` (optional) | `{"removed":[..],"deleted":[..],"reclaimed":N}` |
//! | POST | `/images/tag?source=SRC&target=DST` | `ImageSummary` |
//! | POST | `/images/prune?all=BOOL`, body `{"keep":[IDs]}` | `{"removed":[..],"deleted":[..],"reclaimed":N}` |
//! | GET | `/images/save?refs=A,B` | `application/x-tar` stream (OCI layout + `manifest.json`) |
//! | POST | `/images/pull?ref=REF[&platform=P][&tls_verify=false]` | ndjson `TransferEvent`s |
//! | POST | `/images/push?ref=REF[&tls_verify=false]` | ndjson `TransferEvent`s |
//! | POST | `/registry/login?server=HOST[&tls_verify=false]` | `{"ok":true}` |
//!
//! Errors are `vessel_api::error::ErrorBody`s: `image_not_found` (404,
//! with the image's `name`) for an unknown image, `invalid_argument` (400)
//! for bad input, `not_found` for an unknown endpoint, `internal` (500)
//! otherwise.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use vessel_api::error::{error_chain, ErrorBody, ErrorKind};
use vessel_api::http::{respond_error, respond_json, respond_stream_head, Request};
use vessel_api::paths::Home;
use vessel_api::types::LoadResponse;

use crate::images::{Images, ImagesError, KeepBody};

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("Cannot open the image store")]
    Open(#[source] ImagesError),
    #[error("Cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Bind the images socket (replacing a stale one) and serve forever.
pub fn run(home: &Home) -> Result<(), ServerError> {
    let images = Arc::new(Images::open(home).map_err(ServerError::Open)?);
    let path = home.images_socket();
    let listener = vessel_api::http::bind_private(&path).map_err(|source| ServerError::Listen {
        path: path.clone(),
        source,
    })?;
    eprintln!("vessel-images: listening on {}", path.display());
    vessel_api::http::serve_forever(listener, "vessel-images", images, serve_connection);
    Ok(())
}

/// Handle one connection (one request).
pub fn serve_connection(images: &Images, stream: UnixStream) {
    let mut req = match Request::read(stream) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vessel-images: bad request: {}", error_chain(&e));
            return;
        }
    };
    // Registry pull/push (streamed) and login: see crate::registry::routes.
    if crate::registry::routes::handle(images, &mut req) {
        return;
    }
    if req.method == "GET" && req.path.trim_end_matches('/') == "/images/save" {
        return serve_save(images, &mut req);
    }
    let result = match route_with_body(images, &mut req) {
        Some(r) => r,
        None => route(images, &req),
    };
    let (method, path) = (req.method.clone(), req.path.clone());
    let w = req.stream();
    let sent = match result {
        Ok((status, body)) => respond_json(w, status, &body),
        Err(e) => {
            let body = e.body();
            eprintln!(
                "vessel-images: {method} {path}: {}: {}",
                body.kind, body.message
            );
            respond_error(w, &body)
        }
    };
    if let Err(e) = sent {
        eprintln!("vessel-images: cannot send the response: {e}");
    }
}

/// `GET /images/save?refs=A,B`: the archive streams after a 200 head; an
/// error found before the first byte is a JSON error instead.
fn serve_save(images: &Images, req: &mut Request) {
    let refs: Vec<String> = req
        .query("refs")
        .unwrap_or("")
        .split(',')
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    let names: Vec<&str> = refs.iter().map(String::as_str).collect();
    let mut started = false;
    let result = if names.is_empty() {
        Err(RouteError::Bad(BadRequest::Missing("refs")))
    } else {
        let stream = req.stream();
        images
            .save(&names, || {
                started = true;
                respond_stream_head(stream, 200, "application/x-tar")?;
                Ok(io::BufWriter::with_capacity(256 * 1024, &mut *stream))
            })
            .map_err(RouteError::Images)
    };
    if let Err(e) = result {
        let body = e.body();
        eprintln!(
            "vessel-images: GET /images/save: {}: {}",
            body.kind, body.message
        );
        // Once the archive has started, closing early is all that is left.
        if !started {
            let _ = respond_error(req.stream(), &body);
        }
    }
}

/// The `{"keep": [...]}` body of a request; no body means an empty list.
fn keep_body(req: &mut Request) -> Result<BTreeSet<String>, BadRequest> {
    if req.content_length == 0 {
        return Ok(BTreeSet::new());
    }
    let body: KeepBody = req.json().map_err(|e| BadRequest::Body(error_chain(&e)))?;
    Ok(body.keep.into_iter().collect())
}

/// Routes that read a request body; `None` for the others.
fn route_with_body(
    images: &Images,
    req: &mut Request,
) -> Option<Result<(u16, serde_json::Value), RouteError>> {
    let path = req.path.trim_end_matches('/').to_string();
    match (req.method.as_str(), path.as_str()) {
        ("DELETE", "/images") => Some((|| {
            let keep = keep_body(req)?;
            let name = param(req, "ref")?;
            Ok((200, to_json(images.remove_keep(name, &keep)?)))
        })()),
        ("POST", "/images/prune") => Some((|| {
            let keep = keep_body(req)?;
            let all = req.flag("all");
            Ok((200, to_json(images.prune(all, &keep)?)))
        })()),
        _ => None,
    }
}

/// A request's problem with its parameters.
#[derive(Debug, thiserror::Error)]
enum BadRequest {
    #[error("Missing query parameter {0}")]
    Missing(&'static str),
    #[error("Parameter path must be an absolute path")]
    NotAbsolute,
    #[error("No such endpoint: {0} {1}")]
    NoRoute(String, String),
    #[error("Invalid request body: {0}")]
    Body(String),
}

enum RouteError {
    Bad(BadRequest),
    Images(ImagesError),
}

impl From<ImagesError> for RouteError {
    fn from(e: ImagesError) -> Self {
        RouteError::Images(e)
    }
}

impl From<BadRequest> for RouteError {
    fn from(e: BadRequest) -> Self {
        RouteError::Bad(e)
    }
}

impl RouteError {
    /// The error answer: kind, message with its causes, and the image not found.
    fn body(&self) -> ErrorBody {
        match self {
            RouteError::Bad(b @ BadRequest::NoRoute(..)) => {
                ErrorBody::new(ErrorKind::NotFound, error_chain(b))
            }
            RouteError::Bad(b) => ErrorBody::new(ErrorKind::InvalidArgument, error_chain(b)),
            RouteError::Images(e) => {
                let body = ErrorBody::new(e.kind(), error_chain(e));
                match e.name() {
                    Some(n) => body.with_name(n),
                    None => body,
                }
            }
        }
    }
}

fn param<'a>(req: &'a Request, name: &'static str) -> Result<&'a str, BadRequest> {
    req.query(name)
        .filter(|v| !v.is_empty())
        .ok_or(BadRequest::Missing(name))
}

fn abs_path(req: &Request) -> Result<PathBuf, BadRequest> {
    let p = PathBuf::from(param(req, "path")?);
    if !p.is_absolute() {
        return Err(BadRequest::NotAbsolute);
    }
    Ok(p)
}

fn to_json<T: serde::Serialize>(v: T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn route(images: &Images, req: &Request) -> Result<(u16, serde_json::Value), RouteError> {
    match (req.method.as_str(), req.path.trim_end_matches('/')) {
        ("GET", "/health") => Ok((200, serde_json::json!({"ok": true}))),
        ("GET", "/images") => Ok((200, to_json(images.list()?))),
        ("POST", "/images/load") => {
            let loaded = images.load(&abs_path(req)?)?;
            Ok((200, to_json(LoadResponse { images: loaded })))
        }
        ("POST", "/images/import") => {
            let path = abs_path(req)?;
            let s = images.import(&path, param(req, "ref")?)?;
            Ok((200, to_json(LoadResponse { images: vec![s] })))
        }
        ("POST", "/images/resolve") => Ok((200, to_json(images.resolve(param(req, "ref")?)?))),
        ("GET", "/images/inspect") => Ok((200, images.inspect(param(req, "ref")?)?)),
        ("POST", "/images/tag") => {
            let s = images.tag(param(req, "source")?, param(req, "target")?)?;
            Ok((200, to_json(s)))
        }
        ("DELETE", "/images") => Ok((200, to_json(images.remove(param(req, "ref")?)?))),
        (m, p) => Err(BadRequest::NoRoute(m.to_string(), p.to_string()).into()),
    }
}
