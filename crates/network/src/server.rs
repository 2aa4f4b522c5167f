//! The HTTP API of `vessel-network`, on `VESSEL_HOME/network.sock` (0600,
//! for the apiserver). One thread per connection; JSON bodies are the
//! types of `vessel_api::network`.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/health` | | `{"ok":true}` |
//! | GET | `/networks` | | `[NetworkInfo]` |
//! | POST | `/networks` | `NetworkCreateRequest` | 201 `NetworkInfo` |
//! | GET | `/networks/<name or id>` | | `NetworkInfo` |
//! | DELETE | `/networks/<name>` | | `RemovedNetworks` (409 while in use) |
//! | POST | `/networks/prune` | | `RemovedNetworks` |
//! | POST | `/networks/<name>/connect` | `ConnectRequest` | `Attachment` (creates `default` on first use) |
//! | POST | `/networks/<name>/disconnect` | `DisconnectRequest` | `{"disconnected":bool}` |
//! | POST | `/disconnect` | `DisconnectRequest` | `{"networks":[names left]}` |
//! | POST | `/reconcile` | `ReconcileRequest` | `ReconcileReport` |
//!
//! Errors are `vessel_api::error::ErrorBody`s: `invalid_argument` (400),
//! `network_not_found` (404, with the network's `name`), `not_found` (no
//! such endpoint), `conflict` (409: exists, port already allocated, subnet
//! overlap), `in_use` (409: active endpoints) or `internal` (500).

use crate::manager::{Manager, NetError};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use vessel_api::error::{error_chain, ErrorBody, ErrorKind};
use vessel_api::http::{respond_error, respond_json, HttpError, Request};
use vessel_api::network::{
    socket_path, ConnectRequest, DisconnectRequest, NetworkCreateRequest, ReconcileRequest,
    RemovedNetworks,
};
use vessel_api::paths::Home;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("Cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Bind the socket (replacing a stale one) and serve forever.
/// How often attachments of removed containers are looked for
/// ([`Manager::sweep_removed`]).
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

pub fn run(home: &Home, manager: Manager) -> Result<(), ServerError> {
    let manager = Arc::new(manager);
    let path = socket_path(home);
    let listener = vessel_api::http::bind_private(&path).map_err(|source| ServerError::Listen {
        path: path.clone(),
        source,
    })?;
    eprintln!("vessel-network: listening on {}", path.display());
    {
        let manager = Arc::clone(&manager);
        std::thread::spawn(move || loop {
            std::thread::sleep(SWEEP_INTERVAL);
            for r in manager.sweep_removed() {
                eprintln!("vessel-network: released {r}, held by a removed container");
            }
        });
    }
    vessel_api::http::serve_forever(listener, "vessel-network", manager, serve_connection);
    Ok(())
}

enum RouteError {
    Net(NetError),
    Http(HttpError),
    NoRoute(String, String),
}

impl From<NetError> for RouteError {
    fn from(e: NetError) -> Self {
        RouteError::Net(e)
    }
}
impl From<HttpError> for RouteError {
    fn from(e: HttpError) -> Self {
        RouteError::Http(e)
    }
}

/// Handle one connection (one request).
pub fn serve_connection(m: &Manager, stream: UnixStream) {
    let mut req = match Request::read(stream) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vessel-network: bad request: {}", error_chain(&e));
            return;
        }
    };
    let result = route(m, &mut req);
    let (method, path) = (req.method.clone(), req.path.clone());
    let w = req.stream();
    let sent = match result {
        Ok((status, body)) => respond_json(w, status, &body),
        Err(e) => {
            let body = match &e {
                RouteError::Net(n) => n.body(),
                RouteError::Http(h) => ErrorBody::new(ErrorKind::InvalidArgument, error_chain(h)),
                RouteError::NoRoute(m, p) => {
                    ErrorBody::new(ErrorKind::NotFound, format!("No such endpoint: {m} {p}"))
                }
            };
            eprintln!(
                "vessel-network: {method} {path}: {}: {}",
                body.kind, body.message
            );
            respond_error(w, &body)
        }
    };
    if let Err(e) = sent {
        eprintln!("vessel-network: cannot send the response: {e}");
    }
}

fn to_json<T: serde::Serialize>(v: T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn route(m: &Manager, req: &mut Request) -> Result<(u16, serde_json::Value), RouteError> {
    let path = req.path.trim_end_matches('/').to_string();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    match (req.method.as_str(), parts.as_slice()) {
        ("GET", ["health"]) => Ok((200, serde_json::json!({"ok": true}))),
        ("GET", ["networks"]) => Ok((200, to_json(m.list()))),
        ("POST", ["networks"]) => {
            let body: NetworkCreateRequest = req.json()?;
            Ok((201, to_json(m.create(&body)?)))
        }
        ("POST", ["networks", "prune"]) => Ok((
            200,
            to_json(RemovedNetworks {
                removed: m.prune()?,
            }),
        )),
        ("GET", ["networks", name]) => Ok((200, to_json(m.inspect(name)?))),
        ("DELETE", ["networks", name]) => {
            let info = m.inspect(name)?;
            m.remove(&info.name)?;
            Ok((
                200,
                to_json(RemovedNetworks {
                    removed: vec![info.name],
                }),
            ))
        }
        ("POST", ["networks", name, "connect"]) => {
            let name = name.to_string();
            let body: ConnectRequest = req.json()?;
            Ok((200, to_json(m.connect(&name, &body)?)))
        }
        ("POST", ["networks", name, "disconnect"]) => {
            let name = name.to_string();
            let body: DisconnectRequest = req.json()?;
            let done = m.disconnect(&name, &body.container_id)?;
            Ok((200, serde_json::json!({ "disconnected": done })))
        }
        ("POST", ["disconnect"]) => {
            let body: DisconnectRequest = req.json()?;
            let nets = m.disconnect_all(&body.container_id)?;
            Ok((200, serde_json::json!({ "networks": nets })))
        }
        ("POST", ["reconcile"]) => {
            let body: ReconcileRequest = req.json()?;
            Ok((200, to_json(m.reconcile(Some(&body.live))?)))
        }
        (method, _) => Err(RouteError::NoRoute(method.to_string(), path.clone())),
    }
}
