//! Talking to the apiserver, with errors a user can act on.

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use std::io::Read;
use vessel_api::client::{Client, Response, Upgraded};
pub use vessel_api::error::{ErrorBody, ErrorKind};
use vessel_api::http::HttpError;
use vessel_api::paths::Home;

/// A client for this instance's apiserver.
pub struct Api {
    pub home: Home,
    client: Client,
}

impl Clone for Api {
    fn clone(&self) -> Self {
        Api::new(self.home.clone())
    }
}

/// The error the apiserver answered with (its kind, message and the name
/// of what it is about), if `e` is one.
pub fn server_error(e: &anyhow::Error) -> Option<&ErrorBody> {
    e.downcast_ref::<ErrorBody>()
}

/// The kind of the apiserver's error `e`, if it is one.
pub fn error_kind(e: &anyhow::Error) -> Option<ErrorKind> {
    server_error(e).map(|b| b.kind)
}

impl Api {
    pub fn new(home: Home) -> Self {
        // Only an exhausted process fails to make its small runtime.
        let client = match Client::new(home.api_socket()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vessel: error: cannot start the API client: {e}");
                std::process::exit(crate::exit::VESSEL_ERROR);
            }
        };
        Self { home, client }
    }

    fn not_running(&self, e: HttpError) -> anyhow::Error {
        if let HttpError::Io(io) = &e {
            if matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) {
                return anyhow!(
                    "cannot connect to the vessel apiserver at {}: it is not running.\nStart it with `vessel system start` (VESSEL_HOME={})",
                    self.client.socket().display(),
                    self.home.root().display()
                );
            }
        }
        anyhow!(e).context("talking to the vessel apiserver")
    }

    /// Is the apiserver answering?
    pub fn is_up(&self) -> bool {
        self.client
            .request("GET", "/v1/system/info", None)
            .map(|r| r.status == 200)
            .unwrap_or(false)
    }

    /// Send a request; the raw response.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response> {
        let res = match body {
            Some(b) => self.client.request_json(method, path, b),
            None => self.client.request(method, path, None),
        };
        res.map_err(|e| self.not_running(e))
    }

    /// Send a request with a streamed body of `len` bytes.
    pub fn upload(&self, path: &str, body: &mut dyn Read, len: u64) -> Result<Response> {
        self.client
            .request_reader("POST", path, body, len)
            .map_err(|e| self.not_running(e))
    }

    /// Ask for an upgraded connection (attach, exec): a byte stream both
    /// ways, or the server's error.
    pub fn upgrade(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Upgraded> {
        let data = body.map(serde_json::to_vec).transpose()?;
        let res = self
            .client
            .upgrade(method, path, data.as_deref())
            .map_err(|e| self.not_running(e))?;
        Ok(res?)
    }

    /// Send a request and decode a JSON answer, turning error statuses into errors.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        let resp = self.send(method, path, body)?;
        decode(resp)
    }
}

/// Decode a JSON answer or the server's error.
pub fn decode<T: DeserializeOwned>(resp: Response) -> Result<T> {
    Ok(resp
        .json::<T>()
        .context("reading the apiserver's answer")??)
}

/// Fail unless the response is a success; the error is the server's.
pub fn check(resp: Response) -> Result<Response> {
    Ok(resp.error().context("reading the apiserver's answer")??)
}
