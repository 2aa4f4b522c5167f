//! A token server for [`crate::registry::Registry::with_token_auth`]: the
//! bearer-token flow Docker Hub uses, with the real registry checking the
//! tokens. The registry's 401 names this server as its `realm`; a client
//! asks it for a token (`GET /token?service=…&scope=repository:NAME:ACTIONS`,
//! with Basic credentials or none) and presents the token to the registry.
//!
//! Tokens are JWTs signed RS256 with a key made here by `openssl`, its
//! self-signed certificate in the header's `x5c` and in the registry's
//! `rootcertbundle`. Policy: [`USER`]/[`PASSWORD`] gets every action asked
//! for; anonymous clients get `pull` on repositories under `public/`;
//! wrong credentials get 401. Every request is recorded.

use crate::registry::{PASSWORD, USER};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use vessel_api::types::{b64_decode, b64_encode};

/// The `iss` of every token, and the registry's `issuer`.
pub const ISSUER: &str = "vessel-test-token-issuer";

/// One request to the token server.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The user of valid Basic credentials; `None`: anonymous.
    pub user: Option<String>,
    /// `scope` parameters as sent.
    pub scopes: Vec<String>,
    pub status: u16,
}

/// A running token server; stops when dropped.
pub struct TokenServer {
    port: u16,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    cert: PathBuf,
}

impl TokenServer {
    /// Start on 127.0.0.1 with a signing key and certificate made in `dir`.
    pub fn start(dir: &Path) -> Self {
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "token.key",
                "-out",
                "token.crt",
                "-days",
                "2",
                "-subj",
                "/CN=vessel test token issuer",
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("running openssl");
        crate::assert_ok(&out, "openssl req (token signing key)");
        let pem = std::fs::read_to_string(dir.join("token.crt")).expect("token.crt");
        let der_b64: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let listener = TcpListener::bind("127.0.0.1:0").expect("token server bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let key = dir.join("token.key");
        {
            let (requests, stop) = (Arc::clone(&requests), Arc::clone(&stop));
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (requests, key, x5c) =
                        (Arc::clone(&requests), key.clone(), der_b64.clone());
                    std::thread::spawn(move || serve(conn, &requests, &key, &x5c));
                }
            });
        }
        Self {
            port,
            requests,
            stop,
            cert: dir.join("token.crt"),
        }
    }

    /// The `realm` the registry names.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The certificate the registry checks tokens against.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn b64url(data: &[u8]) -> String {
    b64_encode(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%' && i + 2 < b.len())
            .then(|| Some(hex(b[i + 1])? * 16 + hex(b[i + 2])?))
            .flatten();
        match (escaped, b[i]) {
            (Some(v), _) => {
                out.push(v as u8);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve(conn: TcpStream, requests: &Mutex<Vec<TokenRequest>>, key: &Path, x5c: &str) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut auth = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            if name.trim().eq_ignore_ascii_case("authorization") {
                auth = Some(value.trim().to_string());
            }
        }
    }
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let (mut service, mut scopes) = (String::new(), Vec::new());
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "service" => service = percent_decode(v),
            "scope" => scopes.extend(percent_decode(v).split(' ').map(str::to_string)),
            _ => {}
        }
    }
    scopes.retain(|s| !s.is_empty());
    let user = match auth.as_deref().and_then(|a| a.strip_prefix("Basic ")) {
        None => Ok(None),
        Some(b) => {
            let creds = b64_decode(b.trim()).map(|d| String::from_utf8_lossy(&d).into_owned());
            match creds.as_deref().and_then(|c| c.split_once(':')) {
                Some((u, p)) if u == USER && p == PASSWORD => Ok(Some(u.to_string())),
                _ => Err(()),
            }
        }
    };
    let (status, body) = match &user {
        Err(()) => (
            401,
            r#"{"details":"incorrect username or password"}"#.to_string(),
        ),
        Ok(user) => match token(user.as_deref(), &service, &scopes, key, x5c) {
            Some(t) => (
                200,
                serde_json::json!({"token": t, "access_token": t, "expires_in": 300}).to_string(),
            ),
            None => (500, r#"{"details":"signing failed"}"#.to_string()),
        },
    };
    if let Ok(mut r) = requests.lock() {
        r.push(TokenRequest {
            user: user.ok().flatten(),
            scopes,
            status,
        });
    }
    let reason = if status == 200 { "OK" } else { "Error" };
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A signed token granting what the policy allows of `scopes`.
fn token(
    user: Option<&str>,
    service: &str,
    scopes: &[String],
    key: &Path,
    x5c: &str,
) -> Option<String> {
    let mut access = Vec::new();
    for s in scopes {
        let mut parts = s.splitn(3, ':');
        let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let granted: Vec<&str> = actions
            .split(',')
            .filter(|a| user.is_some() || (*a == "pull" && name.starts_with("public/")))
            .collect();
        access.push(serde_json::json!({"type": kind, "name": name, "actions": granted}));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user.unwrap_or(""),
        "aud": service,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", std::process::id()),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(input.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(format!("{input}.{}", b64url(&out.stdout)))
}
