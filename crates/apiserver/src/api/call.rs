//! One API request as its handler sees it: parameters, a blocking reader
//! over the body, and one way to answer (JSON, a stream, or an upgrade).
//!
//! Handlers are synchronous and run on tokio's blocking threads; this is
//! the seam between them and hyper. An answer goes to the connection's task
//! over a oneshot channel; a streamed body is fed through a bounded channel
//! ([`StreamWriter`], a `Write`), so a slow client slows the writer down
//! instead of filling memory. When the client goes away, at any point,
//! [`Gone`] says so: long waits end with it, and writes fail.

use crate::error::{ApiError, ApiResult};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};
use vessel_api::error::ErrorBody;
use vessel_api::http::MAX_JSON_BODY;

/// Chunks a streamed answer may have in flight before the writer waits.
const STREAM_DEPTH: usize = 16;

/// The body of an answer.
pub enum ResponseBody {
    Full(Option<Bytes>),
    /// Chunks from a [`StreamWriter`]; an `Err` cuts the stream short, so the
    /// client sees a broken stream rather than a complete one. The guard
    /// tells the handler when hyper drops the body (the client is gone).
    Stream(mpsc::Receiver<io::Result<Bytes>>, GoneGuard),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Stream(rx, _) => rx.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ResponseBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Stream(..) => SizeHint::default(),
        }
    }
}

/// Set when the client has gone away.
#[derive(Clone)]
pub struct Gone(watch::Receiver<bool>);

/// Marks the client gone when dropped, unless disarmed: held by the
/// connection's task while it waits for the answer, and by a streamed body.
pub struct GoneGuard {
    tx: Option<Arc<watch::Sender<bool>>>,
}

impl GoneGuard {
    pub fn new(tx: &Arc<watch::Sender<bool>>) -> Self {
        Self {
            tx: Some(tx.clone()),
        }
    }

    pub fn disarm(mut self) {
        self.tx = None;
    }
}

impl Drop for GoneGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(true);
        }
    }
}

impl Gone {
    /// A flag and its setter (for [`GoneGuard`]s).
    pub fn new() -> (Self, Arc<watch::Sender<bool>>) {
        let (tx, rx) = watch::channel(false);
        (Self(rx), Arc::new(tx))
    }

    /// Has the client gone?
    pub fn is_gone(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the client has gone (never, for one that stays).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|g| *g).await.is_err() {
            // The flag's sender is gone without setting it: the exchange
            // ended normally; nobody is waiting for an answer anymore.
        }
    }
}

pub use vessel_api::client::BodyReader;

/// The writer of a streamed answer: each `write` is one chunk, sent as it
/// is written. Fails with `BrokenPipe` once the client has gone.
pub struct StreamWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    gone: Gone,
    rt: Handle,
}

impl StreamWriter {
    /// Has the client gone?
    pub fn is_gone(&self) -> bool {
        self.tx.is_closed() || self.gone.is_gone()
    }

    /// Wait for `fut`, unless the client goes first (`None` then) or
    /// `limit` passes (`Some(None)`).
    pub fn wait<F: std::future::Future>(
        &self,
        limit: Duration,
        fut: F,
    ) -> Option<Option<F::Output>> {
        wait_unless_gone(&self.rt, &self.gone, limit, fut)
    }

    /// End the stream as broken: the client sees it cut short.
    pub fn fail(&self, why: &str) {
        let _ = self
            .tx
            .blocking_send(Err(io::Error::other(why.to_string())));
    }

    /// The client's gone flag.
    pub fn gone(&self) -> &Gone {
        &self.gone
    }
}

impl Write for StreamWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client has gone"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Wait for `fut` on `rt`, unless the client goes first (`None`) or
/// `limit` passes (`Some(None)`). For blocking threads only.
pub fn wait_unless_gone<F: std::future::Future>(
    rt: &Handle,
    gone: &Gone,
    limit: Duration,
    fut: F,
) -> Option<Option<F::Output>> {
    rt.block_on(async {
        tokio::select! {
            _ = gone.wait() => None,
            r = tokio::time::timeout(limit, fut) => Some(r.ok()),
        }
    })
}

/// A connection handed over after `101 Switching Protocols`.
pub struct Upgraded {
    pub stream: UnixStream,
    /// Bytes the client sent after its request head, already read.
    pub pending: Bytes,
}

/// One request, for its handler.
pub struct Call {
    pub method: String,
    /// The path as sent (percent-encoded), for messages.
    pub path: String,
    params: Vec<(&'static str, String)>,
    query: Vec<(String, String)>,
    headers: hyper::HeaderMap,
    body: Option<Incoming>,
    on_upgrade: Option<OnUpgrade>,
    reply: Option<oneshot::Sender<hyper::Response<ResponseBody>>>,
    /// A clone of the stream's sender, to cut it short on a late error.
    stream: Option<mpsc::Sender<io::Result<Bytes>>>,
    gone: Gone,
    gone_tx: Arc<watch::Sender<bool>>,
    rt: Handle,
}

impl Call {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        method: String,
        path: String,
        params: Vec<(&'static str, String)>,
        query: Vec<(String, String)>,
        headers: hyper::HeaderMap,
        body: Incoming,
        on_upgrade: Option<OnUpgrade>,
        reply: oneshot::Sender<hyper::Response<ResponseBody>>,
        gone: (Gone, Arc<watch::Sender<bool>>),
        rt: Handle,
    ) -> Self {
        Self {
            method,
            path,
            params,
            query,
            headers,
            body: Some(body),
            on_upgrade,
            reply: Some(reply),
            stream: None,
            gone: gone.0,
            gone_tx: gone.1,
            rt,
        }
    }

    /// A path parameter of the route (`{id}`), percent-decoded.
    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    /// The value of query parameter `name`.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean query parameter: `true`/`1`/`yes` or `false`/`0`/`no`
    /// (any case); absent is `false`; anything else is refused.
    pub fn flag(&self, name: &str) -> ApiResult<bool> {
        self.flag_or(name, false)
    }

    /// [`Call::flag`] with another default.
    pub fn flag_or(&self, name: &str, default: bool) -> ApiResult<bool> {
        match self.query(name) {
            None => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| {
                ApiError::invalid(format!(
                    "invalid value {v:?} for the query parameter {name:?}: expected true or false"
                ))
            }),
        }
    }

    /// A required query parameter.
    pub fn required(&self, name: &str) -> ApiResult<&str> {
        match self.query(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::invalid(format!(
                "missing the query parameter {name:?}"
            ))),
        }
    }

    /// A request header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The client's gone flag.
    pub fn gone(&self) -> &Gone {
        &self.gone
    }

    /// The runtime, to wait on its futures from this blocking thread.
    pub fn rt(&self) -> &Handle {
        &self.rt
    }

    /// A blocking reader over the request body.
    pub fn body(&mut self) -> BodyReader {
        BodyReader::new(self.rt.clone(), self.body.take())
    }

    /// The whole body (at most [`MAX_JSON_BODY`] bytes).
    pub fn body_bytes(&mut self) -> ApiResult<Vec<u8>> {
        let mut data = Vec::new();
        self.body()
            .take(MAX_JSON_BODY + 1)
            .read_to_end(&mut data)
            .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))?;
        if data.len() as u64 > MAX_JSON_BODY {
            return Err(ApiError::invalid(format!(
                "invalid request body: larger than {MAX_JSON_BODY} bytes"
            )));
        }
        Ok(data)
    }

    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&mut self) -> ApiResult<T> {
        let data = self.body_bytes()?;
        serde_json::from_slice(&data)
            .map_err(|e| ApiError::invalid(format!("invalid request body: Invalid JSON body: {e}")))
    }

    fn send(&mut self, resp: hyper::Response<ResponseBody>) -> ApiResult<()> {
        let tx = self.reply.take().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "{} {}: answered twice",
                self.method,
                self.path
            ))
        })?;
        // The client may have gone already; the handler's work stands.
        let _ = tx.send(resp);
        Ok(())
    }

    /// Has the handler answered?
    pub fn answered(&self) -> bool {
        self.reply.is_none()
    }

    /// Answer with a JSON document.
    pub fn respond_json<T: Serialize>(&mut self, status: u16, body: &T) -> ApiResult<()> {
        let data = serde_json::to_vec(body).map_err(|e| anyhow::anyhow!(e))?;
        let resp = hyper::Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(ResponseBody::Full(Some(Bytes::from(data))))
            .map_err(|e| anyhow::anyhow!(e))?;
        self.send(resp)
    }

    /// Answer with an error document, with the status of its kind.
    pub fn respond_error(&mut self, body: &ErrorBody) -> ApiResult<()> {
        self.respond_json(body.status(), body)
    }

    /// Answer with a stream (chunked): what is written to the returned
    /// writer reaches the client as it is written; the stream ends when
    /// the writer and this call are dropped.
    pub fn respond_stream(&mut self, status: u16, content_type: &str) -> ApiResult<StreamWriter> {
        let (tx, rx) = mpsc::channel(STREAM_DEPTH);
        let guard = GoneGuard::new(&self.gone_tx);
        let resp = hyper::Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(ResponseBody::Stream(rx, guard))
            .map_err(|e| anyhow::anyhow!(e))?;
        self.stream = Some(tx.clone());
        self.send(resp)?;
        Ok(StreamWriter {
            tx,
            gone: self.gone.clone(),
            rt: self.rt.clone(),
        })
    }

    /// The request asks for an upgrade to `protocol` (`Connection: Upgrade`
    /// and `Upgrade: PROTOCOL`)?
    pub fn wants_upgrade(&self, protocol: &str) -> bool {
        let connection = self.header("connection").is_some_and(|c| {
            c.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
        let upgrade = self.header("upgrade").is_some_and(|u| {
            u.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(protocol))
        });
        connection && upgrade
    }

    /// Answer `101 Switching Protocols` and take the raw connection.
    pub fn upgrade(&mut self, protocol: &str) -> ApiResult<Upgraded> {
        self.upgrade_with(protocol, &[])
    }

    /// [`Call::upgrade`], with more headers in the 101 answer.
    pub fn upgrade_with(
        &mut self,
        protocol: &str,
        headers: &[(&str, String)],
    ) -> ApiResult<Upgraded> {
        let on_upgrade = self
            .on_upgrade
            .take()
            .ok_or_else(|| anyhow::anyhow!("the connection cannot be upgraded"))?;
        let mut resp = hyper::Response::builder()
            .status(hyper::StatusCode::SWITCHING_PROTOCOLS)
            .header(hyper::header::CONNECTION, "Upgrade")
            .header(hyper::header::UPGRADE, protocol);
        for (name, value) in headers {
            resp = resp.header(*name, value.as_str());
        }
        let resp = resp
            .body(ResponseBody::Full(None))
            .map_err(|e| anyhow::anyhow!(e))?;
        self.send(resp)?;
        let upgraded = self
            .rt
            .block_on(on_upgrade)
            .map_err(|e| anyhow::anyhow!("upgrading the connection: {e}"))?;
        let parts = upgraded
            .downcast::<TokioIo<tokio::net::UnixStream>>()
            .map_err(|_| anyhow::anyhow!("the upgraded connection is not a Unix socket"))?;
        let stream = parts
            .io
            .into_inner()
            .into_std()
            .map_err(|e| anyhow::anyhow!("taking the upgraded connection: {e}"))?;
        stream.set_nonblocking(false)?;
        Ok(Upgraded {
            stream,
            pending: parts.read_buf,
        })
    }

    /// After the handler: answer its error, or, when it failed after it had
    /// started a stream, cut that stream short.
    pub fn finish(mut self, result: ApiResult<()>) {
        let Err(e) = result else {
            return;
        };
        let body = e.body();
        if body.kind == vessel_api::error::ErrorKind::Internal {
            eprintln!(
                "vessel-apiserver: {} {}: {}",
                self.method, self.path, body.message
            );
        }
        if !self.answered() {
            let _ = self.respond_error(&body);
        } else if let Some(tx) = self.stream.take() {
            let _ = tx.blocking_send(Err(io::Error::other(body.message)));
        }
    }
}

/// `true`/`1`/`yes` or `false`/`0`/`no`, in any case.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Some(true),
        "0" | "false" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_are_strict() {
        for t in ["1", "true", "TRUE", "True", "yes"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "false", "False", "no"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["", "-1", "2", "tru", "on", "null", "false "] {
            assert_eq!(parse_bool(bad), None, "{bad:?}");
        }
    }
}
