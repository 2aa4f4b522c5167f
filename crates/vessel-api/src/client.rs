//! The apiserver's client, on hyper (HTTP/1.1 over the Unix socket), with a
//! blocking face for a synchronous program such as the CLI.
//!
//! Each [`Client`] owns a current-thread tokio runtime; every call blocks on
//! it. A response body is read through [`Response::reader`], a `BufRead`
//! that pulls the body's chunks as it is read, so streams (logs, pulls,
//! events) are printed as they arrive. A connection whose exchange has ended
//! is kept and used for the next request (keep-alive); one still busy (a
//! stream being read) is not, and the next request opens another.
//!
//! [`Client::upgrade`] asks for `101 Switching Protocols` (Docker's
//! "hijack") and returns the raw connection as an [`Upgraded`] stream: plain
//! blocking I/O on the socket, readable and writable from two threads once
//! [`Upgraded::split`], with a half-close of the writing side.

use crate::error::ErrorBody;
use crate::http::{json_or_error, HttpError, MAX_JSON_BODY};
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Size of the chunks an upload is sent in.
const UPLOAD_CHUNK: usize = 64 * 1024;

/// The body of a request: nothing, bytes in memory, or chunks fed by the
/// caller's thread while the request is sent.
pub enum RequestBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            RequestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Channel(rx) => rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, RequestBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RequestBody::Full(None) => SizeHint::with_exact(0),
            RequestBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// A client for one apiserver socket.
pub struct Client {
    socket: PathBuf,
    rt: Arc<Runtime>,
    /// A connection whose last exchange has ended, for the next request.
    idle: Mutex<Option<SendRequest<RequestBody>>>,
}

/// A response whose body has not been read yet.
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    /// The body, read as it arrives.
    pub reader: BufReader<BodyReader>,
}

/// A blocking reader over a hyper body (a response's here, a request's in
/// the apiserver), for code on a blocking thread.
pub struct BodyReader {
    rt: Blocker,
    body: Option<Incoming>,
    chunk: Bytes,
}

/// What a [`BodyReader`] blocks on.
enum Blocker {
    /// The client's own (current-thread) runtime: only its `block_on`
    /// drives its I/O.
    Owned(Arc<Runtime>),
    /// A multi-thread runtime's handle (the apiserver's), whose workers
    /// drive the I/O.
    Handle(tokio::runtime::Handle),
}

impl BodyReader {
    /// Read `body` by blocking on the multi-thread runtime `rt` (never from
    /// within it).
    pub fn new(rt: tokio::runtime::Handle, body: Option<Incoming>) -> Self {
        Self {
            rt: Blocker::Handle(rt),
            body,
            chunk: Bytes::new(),
        }
    }

    fn owned(rt: &Arc<Runtime>, body: Incoming) -> Self {
        Self {
            rt: Blocker::Owned(Arc::clone(rt)),
            body: Some(body),
            chunk: Bytes::new(),
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            let Some(body) = self.body.as_mut() else {
                return Ok(0);
            };
            let frame = match &self.rt {
                Blocker::Owned(rt) => rt.block_on(body.frame()),
                Blocker::Handle(h) => h.block_on(body.frame()),
            };
            match frame {
                None => {
                    self.body = None;
                    return Ok(0);
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.chunk = data;
                    }
                }
                // A stream cut short (the peer failed mid-way or went
                // away) is an error, not an end.
                Some(Err(e)) => {
                    self.body = None;
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, e));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

impl Response {
    /// Read the whole body (at most [`MAX_JSON_BODY`] bytes).
    pub fn bytes(mut self) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        (&mut self.reader)
            .take(MAX_JSON_BODY + 1)
            .read_to_end(&mut body)?;
        if body.len() as u64 > MAX_JSON_BODY {
            return Err(HttpError::TooLarge(body.len() as u64));
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

/// A connection handed over by `101 Switching Protocols`: a byte stream in
/// both directions, whatever the route carries over it.
pub struct Upgraded {
    stream: UnixStream,
    /// Bytes the server sent right after its answer, already read.
    pending: Bytes,
    /// The headers of the 101 answer.
    headers: hyper::HeaderMap,
}

impl Upgraded {
    /// The stream and the bytes that came with the 101 answer.
    pub fn new(stream: UnixStream, pending: Bytes) -> Self {
        Self {
            stream,
            pending,
            headers: hyper::HeaderMap::new(),
        }
    }

    /// A header of the 101 answer (e.g. the ID of an exec).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A reading half and a writing half, for two threads.
    pub fn split(self) -> io::Result<(UpgradedReader, UpgradedWriter)> {
        let w = self.stream.try_clone()?;
        Ok((
            UpgradedReader {
                stream: self.stream,
                pending: self.pending,
            },
            UpgradedWriter { stream: w },
        ))
    }
}

impl Read for Upgraded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_pending(&mut self.pending, &mut self.stream, buf)
    }
}

impl Write for Upgraded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn read_pending(pending: &mut Bytes, s: &mut UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    if !pending.is_empty() {
        let n = buf.len().min(pending.len());
        buf[..n].copy_from_slice(&pending[..n]);
        pending.advance(n);
        return Ok(n);
    }
    s.read(buf)
}

/// The reading half of an [`Upgraded`] stream.
pub struct UpgradedReader {
    stream: UnixStream,
    pending: Bytes,
}

impl Read for UpgradedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_pending(&mut self.pending, &mut self.stream, buf)
    }
}

/// The writing half of an [`Upgraded`] stream.
pub struct UpgradedWriter {
    stream: UnixStream,
}

impl UpgradedWriter {
    /// Half-close: the other side reads the end of the stream, and can
    /// still answer.
    pub fn close_write(&self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)
    }

    /// End the connection both ways (the reading half sees its end too).
    pub fn close(&self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Both)
    }

    /// Another handle on the same connection.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            stream: self.stream.try_clone()?,
        })
    }
}

impl Write for UpgradedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn hyper_io(e: hyper::Error) -> HttpError {
    HttpError::Io(io::Error::other(e))
}

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        Ok(Self {
            socket: socket.as_ref().to_path_buf(),
            rt: Arc::new(rt),
            idle: Mutex::new(None),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A new connection, its exchange driven by a task of our runtime.
    async fn connect(&self) -> io::Result<SendRequest<RequestBody>> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// The idle connection if it can take a request now.
    async fn reuse(&self) -> Option<SendRequest<RequestBody>> {
        let s = self.idle.lock().ok()?.take()?;
        // Let its task see a close by the server first.
        tokio::task::yield_now().await;
        s.is_ready().then_some(s)
    }

    fn build(
        method: &str,
        path: &str,
        body: RequestBody,
        len: Option<u64>,
        upgrade: bool,
    ) -> Result<hyper::Request<RequestBody>, HttpError> {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "vessel");
        if let Some(len) = len {
            b = b.header(hyper::header::CONTENT_LENGTH, len);
        }
        if upgrade {
            b = b
                .header(hyper::header::CONNECTION, "Upgrade")
                .header(hyper::header::UPGRADE, "tcp");
        }
        b.body(body)
            .map_err(|e| HttpError::Malformed(format!("request {method} {path}: {e}")))
    }

    /// Send a request with an optional in-memory body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let data = body.map(Bytes::copy_from_slice);
        let len = data.as_ref().map(|d| d.len() as u64);
        let resp = self.rt.block_on(async {
            // A kept connection the server closed meanwhile fails the send
            // at once; the request (in memory) then goes on a new one.
            if let Some(mut s) = self.reuse().await {
                let req = Self::build(method, path, RequestBody::Full(data.clone()), len, false)?;
                match s.send_request(req).await {
                    Ok(r) => return Ok((s, r)),
                    Err(e) if !e.is_canceled() && !e.is_closed() => return Err(hyper_io(e)),
                    Err(_) => {}
                }
            }
            let mut s = self.connect().await?;
            let req = Self::build(method, path, RequestBody::Full(data), len, false)?;
            let r = s.send_request(req).await.map_err(hyper_io)?;
            Ok::<_, HttpError>((s, r))
        })?;
        Ok(self.finish(resp))
    }

    /// Keep the connection for the next request; wrap the response.
    fn finish(
        &self,
        (sender, resp): (SendRequest<RequestBody>, hyper::Response<Incoming>),
    ) -> Response {
        if let Ok(mut idle) = self.idle.lock() {
            *idle = Some(sender);
        }
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        Response {
            status,
            headers: parts.headers,
            reader: BufReader::new(BodyReader::owned(&self.rt, body)),
        }
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

    /// Send a request whose body of `len` bytes comes from `body`, read
    /// while it is sent.
    pub fn request_reader(
        &self,
        method: &str,
        path: &str,
        body: &mut dyn Read,
        len: u64,
    ) -> Result<Response, HttpError> {
        let resp = self.rt.block_on(async {
            let mut s = self.connect().await?;
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            let req = Self::build(method, path, RequestBody::Channel(rx), Some(len), false)?;
            let feed = async move {
                let mut left = len;
                let mut buf = vec![0u8; UPLOAD_CHUNK];
                while left > 0 {
                    let want = buf.len().min(left as usize);
                    let n = match body.read(&mut buf[..want]) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(HttpError::Io(e)),
                    };
                    left -= n as u64;
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        // The server answered without reading it all.
                        return Ok(());
                    }
                }
                if left > 0 {
                    return Err(HttpError::Malformed(format!(
                        "body ended after {} of {len} bytes",
                        len - left
                    )));
                }
                Ok(())
            };
            let (fed, resp) = tokio::join!(feed, s.send_request(req));
            let resp = resp.map_err(hyper_io)?;
            fed?;
            Ok::<_, HttpError>((s, resp))
        })?;
        Ok(self.finish(resp))
    }

    /// Ask for an upgrade of the connection (`Connection: Upgrade`,
    /// `Upgrade: tcp`): the raw stream when the server switches protocols
    /// (101), its error answer otherwise.
    pub fn upgrade(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Result<Upgraded, ErrorBody>, HttpError> {
        let data = body.map(Bytes::copy_from_slice);
        let len = data.as_ref().map(|d| d.len() as u64);
        let rt = self.rt.clone();
        let out = rt.block_on(async {
            let mut s = self.connect().await?;
            let req = Self::build(method, path, RequestBody::Full(data), len, true)?;
            let resp = s.send_request(req).await.map_err(hyper_io)?;
            if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
                return Ok(Err((s, resp)));
            }
            let headers = resp.headers().clone();
            let upgraded = hyper::upgrade::on(resp).await.map_err(hyper_io)?;
            let parts = upgraded
                .downcast::<TokioIo<tokio::net::UnixStream>>()
                .map_err(|_| HttpError::Malformed("the upgraded connection is not ours".into()))?;
            let stream = parts.io.into_inner().into_std()?;
            stream.set_nonblocking(false)?;
            let mut u = Upgraded::new(stream, parts.read_buf);
            u.headers = headers;
            Ok::<_, HttpError>(Ok(u))
        })?;
        match out {
            Ok(u) => Ok(Ok(u)),
            Err(resp) => {
                let resp = self.finish(resp);
                let status = resp.status;
                let body = resp.bytes()?;
                Ok(Err(ErrorBody::decode(status, &body)))
            }
        }
    }
}
