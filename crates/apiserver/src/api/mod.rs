//! The HTTP API on hyper: the route table ([`routes::ROUTES`], one handler
//! per route), the router, and the service that runs a handler for each
//! request.
//!
//! HTTP/1.1 with keep-alive, chunked streamed answers and upgrades. A
//! handler is a plain function run on one of tokio's blocking threads
//! ([`call::Call`] is its view of the request), so the containers'
//! bookkeeping and the helpers' clients stay synchronous code.

pub mod call;
mod containers;
mod events;
mod images;
mod networks;
pub mod routes;
pub mod splice;
mod system;
mod volumes;

use crate::server::Server;
use call::{Call, Gone, GoneGuard, ResponseBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use vessel_api::error::{ErrorBody, ErrorKind};
use vessel_api::http::parse_query;

/// A handler: answers `call` through it (JSON, stream or upgrade).
pub type Handler = fn(&Arc<Server>, &mut Call) -> crate::error::ApiResult<()>;

/// One route: a method, a path pattern with `{name}` segments, a handler.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub handler: Handler,
}

/// What the router found for a request.
pub enum Found {
    Route(&'static Route, Vec<(&'static str, String)>),
    /// The path exists with these methods only.
    MethodNotAllowed(Vec<&'static str>),
    NotFound,
}

/// Decode `%XX` escapes in one path segment (`+` stays a plus).
fn decode_segment(s: &str) -> String {
    vessel_api::http::percent_decode(&s.replace('+', "%2B"))
}

/// The parameters of `pattern` in `segments`, if the path matches it.
fn matches(pattern: &'static str, segments: &[&str]) -> Option<Vec<(&'static str, String)>> {
    let pat: Vec<&'static str> = pattern.trim_start_matches('/').split('/').collect();
    if pat.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (p, s) in pat.iter().zip(segments) {
        if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if s.is_empty() {
                return None;
            }
            params.push((name, decode_segment(s)));
        } else if p != s {
            return None;
        }
    }
    Some(params)
}

/// Literal segments of a pattern: the more, the more specific.
fn literals(pattern: &str) -> usize {
    pattern.split('/').filter(|s| !s.starts_with('{')).count()
}

/// The route for `method` `path` in `table`: the most specific pattern
/// that matches (literal segments before parameters).
pub fn find(table: &'static [Route], method: &str, path: &str) -> Found {
    let trimmed = path.trim_end_matches('/');
    let segments: Vec<&str> = trimmed.trim_start_matches('/').split('/').collect();
    let mut best: Option<(&'static Route, Vec<(&'static str, String)>)> = None;
    let mut allowed = Vec::new();
    for r in table {
        let Some(params) = matches(r.path, &segments) else {
            continue;
        };
        if r.method != method {
            allowed.push(r.method);
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(b, _)| literals(r.path) > literals(b.path))
        {
            best = Some((r, params));
        }
    }
    match best {
        Some((r, p)) => Found::Route(r, p),
        None if !allowed.is_empty() => {
            allowed.sort();
            allowed.dedup();
            Found::MethodNotAllowed(allowed)
        }
        None => Found::NotFound,
    }
}

fn error_response(body: &ErrorBody, allow: Option<String>) -> hyper::Response<ResponseBody> {
    let data = serde_json::to_vec(body).unwrap_or_default();
    let mut b = hyper::Response::builder()
        .status(body.status())
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(allow) = allow {
        b = b.header(hyper::header::ALLOW, allow);
    }
    b.body(ResponseBody::Full(Some(data.into())))
        .unwrap_or_else(|_| hyper::Response::new(ResponseBody::Full(None)))
}

/// Answer one request: find its route and run the handler on a blocking
/// thread; the answer comes back as soon as the handler gives it (a
/// streaming handler goes on writing after that).
async fn service(
    server: Arc<Server>,
    mut req: hyper::Request<Incoming>,
) -> Result<hyper::Response<ResponseBody>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(parse_query).unwrap_or_default();
    let (route, params) = match find(routes::ROUTES, &method, &path) {
        Found::Route(r, p) => (r, p),
        Found::MethodNotAllowed(allow) => {
            let body = ErrorBody::new(
                ErrorKind::MethodNotAllowed,
                format!(
                    "{path} does not take {method}; it takes {}",
                    allow.join(", ")
                ),
            );
            return Ok(error_response(&body, Some(allow.join(", "))));
        }
        Found::NotFound => {
            let body = ErrorBody::new(
                ErrorKind::NotFound,
                format!(
                    "no route for {method} {path}; the API is described in docs/api/openapi.yaml"
                ),
            );
            return Ok(error_response(&body, None));
        }
    };
    let on_upgrade = req
        .headers()
        .contains_key(hyper::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    let (gone, gone_tx) = Gone::new();
    // Dropped with this future if hyper drops it: the client has gone.
    let guard = GoneGuard::new(&gone_tx);
    let mut call = Call::new(
        method,
        path,
        params,
        query,
        parts.headers,
        body,
        on_upgrade,
        reply_tx,
        (gone, gone_tx),
        tokio::runtime::Handle::current(),
    );
    let handler = route.handler;
    tokio::task::spawn_blocking(move || {
        let result = handler(&server, &mut call);
        call.finish(result);
    });
    let resp = match reply_rx.await {
        Ok(r) => r,
        // The handler ended (or panicked) without an answer.
        Err(_) => error_response(
            &ErrorBody::new(
                ErrorKind::Internal,
                "the request's handler ended without an answer; see the apiserver's log",
            ),
            None,
        ),
    };
    guard.disarm();
    Ok(resp)
}

/// Serve one client connection until it closes.
pub async fn serve_connection(server: Arc<Server>, stream: tokio::net::UnixStream) {
    let svc = hyper::service::service_fn(move |req| service(server.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        // A client that hangs up mid-way is not the server's problem.
        if !e.is_incomplete_message() && !e.is_canceled() {
            let io = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .map(|e| e.kind());
            if !matches!(
                io,
                Some(std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
            ) {
                eprintln!("vessel-apiserver: connection: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(_: &Arc<Server>, _: &mut Call) -> crate::error::ApiResult<()> {
        Ok(())
    }

    static TABLE: [Route; 4] = [
        Route {
            method: "GET",
            path: "/v1/networks/{name}",
            handler: ok,
        },
        Route {
            method: "DELETE",
            path: "/v1/networks/{name}",
            handler: ok,
        },
        Route {
            method: "POST",
            path: "/v1/networks/prune",
            handler: ok,
        },
        Route {
            method: "POST",
            path: "/v1/containers/{id}/start",
            handler: ok,
        },
    ];

    #[test]
    fn routes_match_literals_first_and_decode_parameters() {
        match find(&TABLE, "POST", "/v1/networks/prune") {
            Found::Route(r, p) => {
                assert_eq!(r.path, "/v1/networks/prune");
                assert!(p.is_empty());
            }
            _ => panic!("prune"),
        }
        match find(&TABLE, "GET", "/v1/networks/prune") {
            Found::Route(r, p) => {
                assert_eq!(r.path, "/v1/networks/{name}");
                assert_eq!(p, vec![("name", "prune".to_string())]);
            }
            _ => panic!("a network named prune"),
        }
        match find(&TABLE, "POST", "/v1/containers/a%20b+c/start/") {
            Found::Route(_, p) => assert_eq!(p, vec![("id", "a b+c".to_string())]),
            _ => panic!("start"),
        }
        match find(&TABLE, "PUT", "/v1/networks/x") {
            Found::MethodNotAllowed(m) => assert_eq!(m, vec!["DELETE", "GET"]),
            _ => panic!("405"),
        }
        assert!(matches!(
            find(&TABLE, "GET", "/v1/containers//start"),
            Found::NotFound
        ));
        assert!(matches!(
            find(&TABLE, "GET", "/v2/nothing"),
            Found::NotFound
        ));
    }
}
