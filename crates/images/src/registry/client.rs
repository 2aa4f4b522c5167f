//! One registry: its base URL (scheme decided by a `GET /v2/` ping), its
//! HTTP agent and its auth state (the challenge, bearer tokens per scope).

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;
use vessel_api::http::percent_encode;
use vessel_api::paths::Home;
use vessel_api::types::RegistryAuth;

use super::auth::{self, Challenge};
use super::{tls, RegistryError};

/// Largest error or token answer read from a registry.
const MAX_SMALL_BODY: u64 = 1 << 20;

/// The API host of a reference domain (`docker.io` is served by
/// `registry-1.docker.io`).
pub fn api_host(domain: &str) -> &str {
    match domain {
        "docker.io" | "index.docker.io" | "registry.hub.docker.com" => "registry-1.docker.io",
        d => d,
    }
}

/// Normalize what users type as a login server: `https://index.docker.io/v1/`
/// -> `docker.io`, `host:5000/` -> `host:5000`.
pub fn normalize_server(server: &str) -> Result<String, RegistryError> {
    let s = server.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or("").to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
    if !ok {
        return Err(RegistryError::BadRequest(format!(
            "invalid registry server {server:?}: expected HOST[:PORT]"
        )));
    }
    Ok(match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    })
}

/// Resolve a `Location` header against the URL of the request that got it.
pub fn resolve_location(request_url: &str, location: &str) -> String {
    let loc = location.trim();
    if loc.contains("://") {
        return loc.to_string();
    }
    let (scheme, rest) = request_url
        .split_once("://")
        .unwrap_or(("https", request_url));
    if let Some(l) = loc.strip_prefix("//") {
        return format!("{scheme}://{l}");
    }
    let authority = rest.split('/').next().unwrap_or(rest);
    if loc.starts_with('/') {
        return format!("{scheme}://{authority}{loc}");
    }
    // Relative to the directory of the request path.
    let path = rest[authority.len()..]
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let dir = match path.rfind('/') {
        Some(i) => &path[..=i],
        None => "/",
    };
    format!("{scheme}://{authority}{dir}{loc}")
}

/// `url` with `key=value` added to its query.
pub fn add_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={}", percent_encode(value))
}

/// A request body.
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// A stream of exactly this many bytes (not retried).
    Reader(&'a mut dyn Read, u64),
}

/// A registry being talked to.
pub struct Registry {
    /// The reference domain (`docker.io`, `localhost:5000`).
    pub domain: String,
    /// `https://host[:port]` or `http://...`.
    base: String,
    agent: ureq::Agent,
    auth: Option<RegistryAuth>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, String>>,
}

fn agent(tls: Option<std::sync::Arc<rustls::ClientConfig>>, proxy: Option<String>) -> ureq::Agent {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .timeout_write(Duration::from_secs(120))
        .max_idle_connections_per_host(8)
        .redirects(8)
        .user_agent(concat!("vessel/", env!("CARGO_PKG_VERSION")));
    if let Some(t) = tls {
        b = b.tls_config(t);
    }
    if let Some(p) = proxy {
        match ureq::Proxy::new(&p) {
            Ok(p) => b = b.proxy(p),
            Err(e) => eprintln!("vessel-images: ignoring proxy {p:?}: {e}"),
        }
    }
    b.build()
}

/// A transport error as a short message (without the URL).
fn transport_message(e: &ureq::Transport) -> String {
    let mut parts = vec![e.kind().to_string()];
    if let Some(m) = e.message() {
        parts.push(m.to_string());
    }
    if let Some(src) = std::error::Error::source(e) {
        let src = src.to_string();
        if !parts.iter().any(|p| p.contains(&src)) {
            parts.push(src);
        }
    }
    parts.join(": ")
}

impl Registry {
    /// Find how to talk to `domain` and what auth it wants (`GET /v2/`).
    pub fn connect(
        home: &Home,
        domain: &str,
        tls_verify: bool,
        auth: Option<RegistryAuth>,
    ) -> Result<Self, RegistryError> {
        let host = api_host(domain);
        let mut candidates = Vec::new();
        if tls::is_insecure(home, domain, tls_verify) {
            candidates.push((
                format!("https://{host}"),
                agent(
                    Some(tls::unverified_config()?),
                    tls::proxy_for(domain, "https"),
                ),
            ));
            candidates.push((
                format!("http://{host}"),
                agent(None, tls::proxy_for(domain, "http")),
            ));
        } else {
            candidates.push((
                format!("https://{host}"),
                agent(
                    Some(tls::verifying_config(home, domain)?),
                    tls::proxy_for(domain, "https"),
                ),
            ));
        }
        let mut errors = Vec::new();
        for (base, agent) in candidates {
            let url = format!("{base}/v2/");
            match agent.get(&url).call() {
                Ok(resp) => {
                    let _ = drain(resp);
                    return Ok(Self::new(domain, base, agent, auth, None));
                }
                Err(ureq::Error::Status(status, resp)) => {
                    let values: Vec<String> = resp
                        .all("www-authenticate")
                        .into_iter()
                        .map(String::from)
                        .collect();
                    let _ = drain(resp);
                    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                    let challenge = if status == 401 {
                        auth::select_challenge(&refs)
                    } else {
                        None
                    };
                    if status == 401 && challenge.is_none() {
                        return Err(RegistryError::Protocol {
                            host: domain.to_string(),
                            message:
                                "GET /v2/ answered 401 without a usable WWW-Authenticate challenge"
                                    .into(),
                        });
                    }
                    return Ok(Self::new(domain, base, agent, auth, challenge));
                }
                Err(ureq::Error::Transport(t)) => {
                    errors.push((url, transport_message(&t)));
                }
            }
        }
        let message = match errors.as_slice() {
            [(url, m)] => format!("{m} ({url})"),
            [(u1, m1), (u2, m2)] if m1 == m2 => format!("{m1} (tried {u1} and {u2})"),
            _ => errors
                .iter()
                .map(|(u, m)| format!("{u}: {m}"))
                .collect::<Vec<_>>()
                .join("; "),
        };
        let message = if message.contains("certificate") {
            format!(
                "{message}; if the registry uses a private CA, put its certificate in {}/ca.crt (or /etc/docker/certs.d/{domain}/)",
                home.certs_dir().join(domain).display()
            )
        } else {
            message
        };
        Err(RegistryError::Connect {
            host: domain.to_string(),
            message,
        })
    }

    fn new(
        domain: &str,
        base: String,
        agent: ureq::Agent,
        auth: Option<RegistryAuth>,
        challenge: Option<Challenge>,
    ) -> Self {
        Self {
            domain: domain.to_string(),
            base,
            agent,
            auth,
            challenge: Mutex::new(challenge),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// `https://host` or `http://host`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Does the registry ask for authentication at all?
    pub fn challenge(&self) -> Option<Challenge> {
        self.challenge.lock().ok().and_then(|c| c.clone())
    }

    /// The full URL of an API path (`/v2/...`) or of a `Location`.
    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.contains("://") {
            path_or_url.to_string()
        } else {
            resolve_location(&format!("{}/v2/", self.base), path_or_url)
        }
    }

    fn unauthorized_for(&self, what: &str) -> RegistryError {
        if auth::has_credentials(&self.auth) {
            let user = self
                .auth
                .as_ref()
                .map(|a| a.username.as_str())
                .unwrap_or("");
            RegistryError::Unauthorized(format!(
                "incorrect username or password, or no access to {what} for user {user:?} (run `vessel registry login {}`)",
                self.domain
            ))
        } else {
            RegistryError::Unauthorized(format!(
                "authentication required for {what} (run `vessel registry login {}`)",
                self.domain
            ))
        }
    }

    /// Fetch a bearer token for `scopes` with the credentials, if any.
    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        what: &str,
    ) -> Result<String, RegistryError> {
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(self.protocol(format!("bad token realm {realm:?}")));
        }
        let refresh = self
            .auth
            .as_ref()
            .and_then(|a| a.identity_token.clone())
            .filter(|t| !t.is_empty());
        let result = if let Some(rt) = refresh {
            let scope = scopes.join(" ");
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", "refresh_token"),
                ("client_id", "vessel"),
                ("refresh_token", &rt),
            ];
            if let Some(s) = service {
                form.push(("service", s));
            }
            if !scope.is_empty() {
                form.push(("scope", &scope));
            }
            self.agent.post(realm).send_form(&form)
        } else {
            let mut url = realm.to_string();
            if let Some(s) = service {
                url = add_query(&url, "service", s);
            }
            for s in scopes {
                url = add_query(&url, "scope", s);
            }
            let mut req = self.agent.get(&url);
            if let Some(a) = self.auth.as_ref().filter(|a| !a.username.is_empty()) {
                req = req.set("Authorization", &auth::basic_header(a));
            }
            req.call()
        };
        match result {
            Ok(resp) => {
                let body = read_small(resp).map_err(|e| self.protocol(e))?;
                auth::parse_token(&body).ok_or_else(|| {
                    self.protocol(format!("token endpoint {realm} sent no usable token"))
                })
            }
            Err(ureq::Error::Status(401 | 403, resp)) => {
                let _ = drain(resp);
                Err(self.unauthorized_for(what))
            }
            Err(ureq::Error::Status(code, resp)) => {
                let msg = error_text(resp);
                Err(self.protocol(format!("token endpoint {realm} answered {code}: {msg}")))
            }
            Err(ureq::Error::Transport(t)) => Err(RegistryError::Connect {
                host: self.domain.clone(),
                message: format!("token endpoint {realm}: {}", transport_message(&t)),
            }),
        }
    }

    /// The `Authorization` value for a request needing `scopes`.
    pub fn authorization(
        &self,
        scopes: &[String],
        what: &str,
    ) -> Result<Option<String>, RegistryError> {
        match self.challenge() {
            None => Ok(None),
            Some(Challenge::Basic { .. }) => Ok(self
                .auth
                .as_ref()
                .filter(|a| !a.username.is_empty())
                .map(auth::basic_header)),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let key = scopes.join(" ");
                if let Some(t) = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned()) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let t = self.fetch_token(&realm, service.as_deref(), scopes, what)?;
                if let Ok(mut m) = self.tokens.lock() {
                    m.insert(key, t.clone());
                }
                Ok(Some(format!("Bearer {t}")))
            }
        }
    }

    /// Check that the credentials are accepted (`registry login`).
    pub fn check_login(&self) -> Result<(), RegistryError> {
        if !auth::has_credentials(&self.auth) {
            return Err(RegistryError::BadRequest(
                "login needs a username and a password".into(),
            ));
        }
        let what = format!("registry {}", self.domain);
        let result = if let Some(Challenge::Bearer { realm, service, .. }) = self.challenge() {
            // A token endpoint checks the credentials even without a scope.
            self.fetch_token(&realm, service.as_deref(), &[], &what)
                .map(|_| ())
        } else {
            let resp = self.request("GET", "/v2/", &[], &[], Body::Empty, &what)?;
            match resp.status() {
                200..=299 => Ok(()),
                401 | 403 => Err(self.unauthorized_for(&what)),
                code => Err(self.status_error(code, resp, &what)),
            }
        };
        result.map_err(|e| match e {
            RegistryError::Unauthorized(_) => RegistryError::Unauthorized(format!(
                "incorrect username or password for {}",
                self.domain
            )),
            e => e,
        })
    }

    /// Send a request with the auth `scopes` need. A 401 answer to a
    /// replayable request is retried once with a fresh challenge and token.
    /// Any HTTP status is returned as a response; transport failures are
    /// errors.
    pub fn request(
        &self,
        method: &str,
        path_or_url: &str,
        scopes: &[String],
        headers: &[(&str, &str)],
        mut body: Body<'_>,
        what: &str,
    ) -> Result<ureq::Response, RegistryError> {
        let url = self.url(path_or_url);
        let mut retried = false;
        loop {
            let authz = self.authorization(scopes, what)?;
            let mut req = self.agent.request(method, &url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(a) = &authz {
                req = req.set("Authorization", a);
            }
            let replayable = !matches!(body, Body::Reader(..));
            let result = match &mut body {
                Body::Empty => {
                    if matches!(method, "PUT" | "POST" | "PATCH") {
                        req.set("Content-Length", "0").send_bytes(&[])
                    } else {
                        req.call()
                    }
                }
                Body::Bytes(b) => req.send_bytes(b),
                Body::Reader(r, len) => req
                    .set("Content-Length", &len.to_string())
                    .send(&mut (&mut **r).take(*len)),
            };
            let resp = match result {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(ureq::Error::Transport(t)) => {
                    return Err(RegistryError::Connect {
                        host: self.domain.clone(),
                        message: format!("{method} {url}: {}", transport_message(&t)),
                    })
                }
            };
            if resp.status() == 401 && replayable && !retried {
                let values: Vec<String> = resp
                    .all("www-authenticate")
                    .into_iter()
                    .map(String::from)
                    .collect();
                let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                if let Some(c) = auth::select_challenge(&refs) {
                    // The scope a 401 names does not make it a new challenge.
                    let key = |c: &Challenge| match c {
                        Challenge::Basic { realm } => (false, realm.clone(), None),
                        Challenge::Bearer { realm, service, .. } => {
                            (true, realm.clone(), service.clone())
                        }
                    };
                    let changed = self.challenge().as_ref().map(key) != Some(key(&c));
                    let had_auth = authz.is_some();
                    if changed || !had_auth {
                        if let Ok(mut cur) = self.challenge.lock() {
                            *cur = Some(c);
                        }
                        if let Ok(mut t) = self.tokens.lock() {
                            t.remove(&scopes.join(" "));
                        }
                        retried = true;
                        let _ = drain(resp);
                        continue;
                    }
                }
            }
            return Ok(resp);
        }
    }

    pub(crate) fn protocol(&self, message: impl Into<String>) -> RegistryError {
        RegistryError::Protocol {
            host: self.domain.clone(),
            message: message.into(),
        }
    }

    /// The error for an unexpected status, with the registry's message.
    pub fn status_error(&self, code: u16, resp: ureq::Response, what: &str) -> RegistryError {
        match code {
            401 => {
                let _ = drain(resp);
                self.unauthorized_for(what)
            }
            403 => {
                let msg = error_text(resp);
                RegistryError::Denied(format!("requested access to {what} is denied ({msg})"))
            }
            429 => RegistryError::TooManyRequests(error_text(resp)),
            _ => {
                let msg = error_text(resp);
                self.protocol(format!("{what}: answered HTTP {code}: {msg}"))
            }
        }
    }
}

/// Read and discard a body (bounded), so the connection can be reused.
pub fn drain(resp: ureq::Response) -> std::io::Result<()> {
    std::io::copy(
        &mut resp.into_reader().take(MAX_SMALL_BODY),
        &mut std::io::sink(),
    )
    .map(|_| ())
}

/// Read a small body (tokens, errors).
pub fn read_small(resp: ureq::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_SMALL_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    if body.len() as u64 > MAX_SMALL_BODY {
        return Err("answer too large".into());
    }
    Ok(body)
}

/// The registry's error message: `CODE: message; ...` from its JSON errors,
/// else the start of the body.
pub fn error_text(resp: ureq::Response) -> String {
    let body = read_small(resp).unwrap_or_default();
    error_text_of(&body)
}

/// [`error_text`] of a body already read.
pub fn error_text_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body) {
        if !e.errors.is_empty() {
            return e
                .errors
                .iter()
                .map(|i| match (i.code.is_empty(), i.message.is_empty()) {
                    (false, false) => format!("{}: {}", i.code, i.message),
                    (false, true) => i.code.clone(),
                    _ => i.message.clone(),
                })
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if text.trim().is_empty() {
        "no details".into()
    } else {
        text.trim().to_string()
    }
}

/// Registry error codes of a body (`MANIFEST_UNKNOWN`, ...).
pub fn error_codes(body: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<Code>,
    }
    #[derive(serde::Deserialize)]
    struct Code {
        #[serde(default)]
        code: String,
    }
    serde_json::from_slice::<Errors>(body)
        .map(|e| e.errors.into_iter().map(|c| c.code).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let req = "http://127.0.0.1:5000/v2/a/b/blobs/uploads/?mount=x";
        assert_eq!(
            resolve_location(req, "/v2/a/b/blobs/uploads/uuid?_state=s"),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/uuid?_state=s"
        );
        assert_eq!(
            resolve_location(req, "https://other.example/up/1"),
            "https://other.example/up/1"
        );
        assert_eq!(
            resolve_location(req, "//cdn.example/x"),
            "http://cdn.example/x"
        );
        assert_eq!(
            resolve_location(req, "uuid-1"),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/uuid-1"
        );
        assert_eq!(resolve_location("https://h", "x"), "https://h/x");
        assert_eq!(
            add_query("http://h/u?_state=a", "digest", "sha256:ab"),
            "http://h/u?_state=a&digest=sha256%3Aab"
        );
        assert_eq!(add_query("http://h/u", "n", "1"), "http://h/u?n=1");
    }

    #[test]
    fn servers_and_hosts() {
        assert_eq!(
            normalize_server("https://index.docker.io/v1/").unwrap(),
            "docker.io"
        );
        assert_eq!(
            normalize_server("Localhost:5000/").unwrap(),
            "localhost:5000"
        );
        assert_eq!(normalize_server("ghcr.io").unwrap(), "ghcr.io");
        assert!(normalize_server("").is_err());
        assert!(normalize_server("a b").is_err());
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("quay.io"), "quay.io");
    }

    #[test]
    fn registry_errors() {
        let b = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#;
        assert_eq!(error_text_of(b), "MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(error_codes(b), ["MANIFEST_UNKNOWN"]);
        assert_eq!(error_text_of(b"<html>\n oops"), "<html> oops");
        assert_eq!(error_text_of(b""), "no details");
        assert!(error_codes(b"{").is_empty());
    }
}
