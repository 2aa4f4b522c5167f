//! A small HTTP/1.1 layer over Unix sockets, enough for vessel's local APIs.
//!
//! Every exchange is one request per connection (`Connection: close`). A
//! response either has a `Content-Length` or, for streams (attach, logs), is
//! read until the server closes. Request heads are bounded
//! ([`MAX_HEAD`]) and bodies are read only up to their declared length.

use crate::error::ErrorBody;
use serde::{de::DeserializeOwned, Serialize};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Largest request or response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest JSON body read into memory.
pub const MAX_JSON_BODY: u64 = 16 << 20;

/// Errors of the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("I/O error")]
    Io(#[from] io::Error),
    #[error("Malformed HTTP message: {0}")]
    Malformed(String),
    #[error("Body of {0} bytes is too large")]
    TooLarge(u64),
    #[error("Invalid JSON body")]
    Json(#[from] serde_json::Error),
}

/// A parsed request: head plus a reader positioned at the body.
pub struct Request {
    pub method: String,
    /// Path without the query string, percent-decoded.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub content_length: u64,
    pub reader: BufReader<UnixStream>,
}

impl Request {
    /// Read and parse one request head from `stream`.
    pub fn read(stream: UnixStream) -> Result<Self, HttpError> {
        let mut reader = BufReader::new(stream);
        let head = read_head(&mut reader)?;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(HttpError::Malformed("incomplete head".into()))
            }
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        }
        let method = req.method.unwrap_or("GET").to_string();
        let target = req.path.unwrap_or("/");
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, parse_query(q)),
            None => (target, Vec::new()),
        };
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let content_length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.trim().parse::<u64>())
            .transpose()
            .map_err(|_| HttpError::Malformed("bad content-length".into()))?
            .unwrap_or(0);
        Ok(Self {
            method,
            path: percent_decode(path),
            query,
            headers,
            content_length,
            reader,
        })
    }

    /// The value of query parameter `name`.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Is query parameter `name` set to a true value (`1`, `true`, `yes`)?
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.query(name), Some("1" | "true" | "yes"))
    }

    /// Read the body as JSON (bounded by [`MAX_JSON_BODY`]).
    pub fn json<T: DeserializeOwned>(&mut self) -> Result<T, HttpError> {
        if self.content_length > MAX_JSON_BODY {
            return Err(HttpError::TooLarge(self.content_length));
        }
        let mut body = Vec::with_capacity(self.content_length as usize);
        (&mut self.reader)
            .take(self.content_length)
            .read_to_end(&mut body)?;
        if (body.len() as u64) < self.content_length {
            return Err(HttpError::Malformed("truncated body".into()));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// A reader over exactly the body.
    pub fn body(&mut self) -> io::Take<&mut BufReader<UnixStream>> {
        let n = self.content_length;
        (&mut self.reader).take(n)
    }

    /// The underlying stream, for writing the response.
    pub fn stream(&mut self) -> &mut UnixStream {
        self.reader.get_mut()
    }
}

fn read_head<R: BufRead>(r: &mut R) -> Result<Vec<u8>, HttpError> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r
            .by_ref()
            .take((MAX_HEAD - head.len()) as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(HttpError::Malformed(
                "connection closed before the head ended".into(),
            ));
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(HttpError::Malformed("head too large".into()));
        }
        if line == b"\r\n" || line == b"\n" {
            return Ok(head);
        }
    }
}

/// The `name=value` pairs of a query string, percent-decoded.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect()
}

/// Decode `%XX` escapes and `+` (as space) in a URL component.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encode a URL component.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Write a complete JSON response.
pub fn respond_json<T: Serialize>(w: &mut impl Write, status: u16, body: &T) -> io::Result<()> {
    let data = serde_json::to_vec(body).map_err(io::Error::other)?;
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        data.len()
    )?;
    w.write_all(&data)?;
    w.flush()
}

/// Write an error response: the [`ErrorBody`], with the status of its kind.
pub fn respond_error(w: &mut impl Write, error: &ErrorBody) -> io::Result<()> {
    respond_json(w, error.status(), error)
}

/// Start a streamed response: the body runs until the connection closes.
pub fn respond_stream_head(w: &mut impl Write, status: u16, content_type: &str) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n",
        reason(status)
    )?;
    w.flush()
}

/// A client for one Unix-socket HTTP server.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Option<Duration>,
}

/// A response whose body has not been read yet.
pub struct Response {
    pub status: u16,
    pub reader: BufReader<UnixStream>,
    content_length: Option<u64>,
}

impl Response {
    /// Read the whole body.
    pub fn bytes(mut self) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        match self.content_length {
            Some(n) => {
                if n > MAX_JSON_BODY {
                    return Err(HttpError::TooLarge(n));
                }
                (&mut self.reader).take(n).read_to_end(&mut body)?;
            }
            None => {
                (&mut self.reader)
                    .take(MAX_JSON_BODY)
                    .read_to_end(&mut body)?;
            }
        }
        Ok(body)
    }

    /// Parse the body as JSON when the status is 2xx, or return the server's
    /// error otherwise.
    pub fn json<T: DeserializeOwned>(self) -> Result<Result<T, ErrorBody>, HttpError> {
        let status = self.status;
        json_or_error(status, &self.bytes()?)
    }

    /// The server's error when the status is not 2xx (the body is read);
    /// the response itself otherwise.
    pub fn error(self) -> Result<Result<Self, ErrorBody>, HttpError> {
        if (200..300).contains(&self.status) {
            return Ok(Ok(self));
        }
        let status = self.status;
        Ok(Err(ErrorBody::decode(status, &self.bytes()?)))
    }
}

/// A response body as the JSON `T` when `status` is 2xx, else as the
/// server's error.
pub(crate) fn json_or_error<T: DeserializeOwned>(
    status: u16,
    body: &[u8],
) -> Result<Result<T, ErrorBody>, HttpError> {
    if (200..300).contains(&status) {
        Ok(Ok(serde_json::from_slice(body)?))
    } else {
        Ok(Err(ErrorBody::decode(status, body)))
    }
}

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_path_buf(),
            timeout: None,
        }
    }

    /// Set a read timeout for responses (none by default: attach may wait long).
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Connect to the server.
    pub fn connect(&self) -> io::Result<UnixStream> {
        let s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(self.timeout)?;
        Ok(s)
    }

    /// Send a request with an optional in-memory body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let body = body.unwrap_or(&[]);
        self.request_reader(method, path, &mut &body[..], body.len() as u64)
    }

    /// Send a request with a JSON body.
    pub fn request_json<T: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: &T,
    ) -> Result<Response, HttpError> {
        let data = serde_json::to_vec(body)?;
        self.request(method, path, Some(&data))
    }

    /// Send a request whose body of `len` bytes comes from `body`.
    pub fn request_reader(
        &self,
        method: &str,
        path: &str,
        body: &mut dyn Read,
        len: u64,
    ) -> Result<Response, HttpError> {
        let mut stream = self.connect()?;
        let sent = (|| {
            write!(
                stream,
                "{method} {path} HTTP/1.1\r\nHost: vessel\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            )?;
            let copied = io::copy(&mut body.take(len), &mut stream)?;
            stream.flush()?;
            Ok::<u64, io::Error>(copied)
        })();
        match sent {
            Ok(copied) if copied != len => Err(HttpError::Malformed(format!(
                "body ended after {copied} of {len} bytes"
            ))),
            Ok(_) => read_response(stream),
            // The server answered before it read the whole request (it
            // refused it on its head) and closed: its answer is what counts.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                read_response(stream).map_err(|_| HttpError::Io(e))
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn read_response(stream: UnixStream) -> Result<Response, HttpError> {
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader)?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::Malformed("incomplete response head".into()))
        }
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    }
    let status = resp.code.unwrap_or(500);
    let content_length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
    Ok(Response {
        status,
        reader,
        content_length,
    })
}

/// Bind a Unix socket only its owner may use (0600), replacing a stale one
/// left by an earlier process.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Accept connections on `listener` forever, each handled by `handle` on a
/// thread of its own; `who` names the process in accept errors.
pub fn serve_forever<S: Send + Sync + 'static>(
    listener: UnixListener,
    who: &str,
    state: Arc<S>,
    handle: fn(&S, UnixStream),
) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let state = Arc::clone(&state);
                std::thread::spawn(move || handle(&state, stream));
            }
            Err(e) => eprintln!("{who}: accept failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn bind_private_is_0600_and_replaces_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.sock");
        let first = bind_private(&path).unwrap();
        drop(first); // a dead process leaves its socket file behind
        let _l = bind_private(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn an_answer_sent_before_the_body_was_read_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Read a little of the head, refuse, close with the rest unread.
            let mut first = [0u8; 16];
            s.read_exact(&mut first).unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno")
                .unwrap();
        });
        let c = Client::new(&sock);
        let body = vec![b'x'; 8 << 20];
        let resp = c.request("POST", "/refused", Some(&body)).unwrap();
        server.join().unwrap();
        assert_eq!(resp.status, 400);
    }

    #[test]
    fn request_response_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut req = Request::read(s).unwrap();
            assert_eq!(req.method, "POST");
            assert_eq!(req.path, "/v1/things/a b");
            assert_eq!(req.query("x"), Some("1"));
            assert!(req.flag("x"));
            let v: serde_json::Value = req.json().unwrap();
            respond_json(req.stream(), 201, &v).unwrap();
        });
        let c = Client::new(&sock);
        let resp = c
            .request_json(
                "POST",
                "/v1/things/a%20b?x=1",
                &serde_json::json!({"k": "v"}),
            )
            .unwrap();
        assert_eq!(resp.status, 201);
        let v: serde_json::Value = resp.json().unwrap().unwrap();
        assert_eq!(v["k"], "v");
        server.join().unwrap();
    }

    #[test]
    fn error_answers_carry_their_kind_and_its_status() {
        use crate::error::ErrorKind;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("e.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let sent =
            ErrorBody::new(ErrorKind::ContainerNotFound, "no such container: x").with_name("x");
        let answer = sent.clone();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (s, _) = listener.accept().unwrap();
                let mut req = Request::read(s).unwrap();
                respond_error(req.stream(), &answer).unwrap();
            }
        });
        let c = Client::new(&sock);
        let resp = c.request("GET", "/x", None).unwrap();
        assert_eq!(resp.status, 404);
        assert_eq!(resp.json::<serde_json::Value>().unwrap().unwrap_err(), sent);
        let resp = c.request("GET", "/x", None).unwrap();
        assert_eq!(resp.error().unwrap().err(), Some(sent));
        server.join().unwrap();
    }

    #[test]
    fn garbage_is_an_error() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"\x00\x01 nonsense\r\n\r\n").unwrap();
        assert!(Request::read(a).is_err());
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert!(Request::read(a).is_err());
    }

    #[test]
    fn percent() {
        assert_eq!(percent_decode("a%2Fb+c%zz%"), "a/b c%zz%");
        assert_eq!(
            percent_encode("localhost/busybox:latest"),
            "localhost%2Fbusybox%3Alatest"
        );
    }
}
