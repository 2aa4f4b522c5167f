//! Registry credentials: vessel's own file in Docker's `config.json` format,
//! and, read-only, the user's Docker configuration with its credential
//! helpers.
//!
//! vessel's file is `$VESSEL_CONFIG/config.json`, or
//! `${XDG_CONFIG_HOME:-$HOME/.config}/vessel/config.json`:
//!
//! ```json
//! {"auths": {"https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
//!            "127.0.0.1:5000": {"auth": "..."}}}
//! ```
//!
//! Keys not vessel's own are kept when the file is rewritten. The directory is
//! 0700 and the file 0600, replaced atomically.

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Map, Value};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vessel_api::types::RegistryAuth;

/// The key Docker (and vessel) stores Docker Hub credentials under.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Where credentials come from: the environment, made explicit for tests.
#[derive(Debug, Clone)]
pub struct Sources {
    /// vessel's `config.json`.
    pub vessel_config: PathBuf,
    /// Docker's `config.json`, if there is a place for one.
    pub docker_config: Option<PathBuf>,
    /// Extra directories searched (before `PATH`) for `docker-credential-*`.
    pub helper_dirs: Vec<PathBuf>,
}

impl Sources {
    /// The files named by the environment.
    pub fn from_env() -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let vessel_config = match std::env::var_os("VESSEL_CONFIG").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d).join("config.json"),
            None => {
                let base = std::env::var_os("XDG_CONFIG_HOME")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| home.as_ref().map(|h| h.join(".config")))
                    .unwrap_or_else(|| PathBuf::from("/root/.config"));
                base.join("vessel").join("config.json")
            }
        };
        let docker_config = match std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
            Some(d) => Some(PathBuf::from(d).join("config.json")),
            None => home.map(|h| h.join(".docker").join("config.json")),
        };
        Self {
            vessel_config,
            docker_config,
            helper_dirs: Vec::new(),
        }
    }
}

/// The registry host of an image reference, as Docker finds it: the first
/// path component when it has a `.` or `:` or is `localhost`, else Docker Hub
/// (`docker.io`).
pub fn registry_of_reference(reference: &str) -> String {
    let name = reference.split('@').next().unwrap_or(reference);
    match name.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            normalize_host(first)
        }
        _ => "docker.io".to_string(),
    }
}

/// A server as the user writes it (`https://ghcr.io/v2/`, `docker.io`,
/// `127.0.0.1:5000`) → its host name (`ghcr.io`, `docker.io`, `127.0.0.1:5000`);
/// Docker Hub's aliases all become `docker.io`.
pub fn normalize_host(server: &str) -> String {
    let s = server.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

/// The key a server's credentials are stored under: Docker Hub's historic
/// URL, or the bare `host[:port]`.
pub fn config_key(server: &str) -> String {
    let host = normalize_host(server);
    if host == "docker.io" {
        DOCKER_HUB_KEY.to_string()
    } else {
        host
    }
}

/// What a credential helper is asked for: Docker Hub's URL or the host.
fn helper_server(host: &str) -> String {
    config_key(host)
}

fn read_json(path: &Path) -> Result<Option<Map<String, Value>>> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if text.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Some(Map::new()));
    }
    match serde_json::from_slice::<Value>(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?
    {
        Value::Object(m) => Ok(Some(m)),
        _ => bail!("{} is not a JSON object", path.display()),
    }
}

/// The entry of `auths` whose key names `host`.
fn auth_entry<'a>(config: &'a Map<String, Value>, host: &str) -> Option<&'a Map<String, Value>> {
    let auths = config.get("auths")?.as_object()?;
    // An exact key first, then any key that normalizes to the host.
    if let Some(Value::Object(e)) = auths.get(&config_key(host)) {
        return Some(e);
    }
    auths.iter().find_map(|(k, v)| match v {
        Value::Object(e) if normalize_host(k) == host => Some(e),
        _ => None,
    })
}

/// Credentials in one `auths` entry: `auth` (base64 `user:pass`),
/// `identitytoken`, or legacy `username`/`password`.
fn from_entry(entry: &Map<String, Value>) -> Result<Option<RegistryAuth>> {
    let text = |k: &str| {
        entry
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let mut auth = RegistryAuth::default();
    if let Some(b64) = text("auth") {
        let raw = STANDARD
            .decode(b64.trim())
            .map_err(|_| anyhow!("the stored \"auth\" value is not base64"))?;
        let raw = String::from_utf8(raw)
            .map_err(|_| anyhow!("the stored \"auth\" value is not UTF-8"))?;
        let (user, pass) = raw
            .split_once(':')
            .ok_or_else(|| anyhow!("the stored \"auth\" value is not user:password"))?;
        auth.username = user.to_string();
        auth.password = pass.to_string();
    } else {
        if let Some(u) = text("username") {
            auth.username = u;
        }
        if let Some(p) = text("password") {
            auth.password = p;
        }
    }
    auth.identity_token = text("identitytoken");
    if auth.username.is_empty() && auth.password.is_empty() && auth.identity_token.is_none() {
        return Ok(None);
    }
    Ok(Some(auth))
}

/// Run `docker-credential-<helper> get` for `server`.
fn run_helper(helper: &str, server: &str, dirs: &[PathBuf]) -> Result<Option<RegistryAuth>> {
    if helper.is_empty()
        || !helper
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("invalid credential helper name {helper:?}");
    }
    let name = format!("docker-credential-{helper}");
    let program = dirs
        .iter()
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(&name));
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run the credential helper {name}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading makes this fail: its exit status tells.
        let _ = stdin.write_all(server.as_bytes());
    }
    // Bounded: a helper waiting for a keychain prompt must not hang a pull forever.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait()?.is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if child.try_wait()?.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the credential helper {name} did not answer within 60 s");
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let msg = format!(
            "{}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if msg.to_ascii_lowercase().contains("not found") {
            return Ok(None);
        }
        bail!("the credential helper {name} failed: {}", msg.trim());
    }
    let v: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("the credential helper {name} answered something not JSON"))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (user, secret) = (field("Username"), field("Secret"));
    if secret.is_empty() {
        return Ok(None);
    }
    if user == "<token>" {
        return Ok(Some(RegistryAuth {
            username: String::new(),
            password: String::new(),
            identity_token: Some(secret),
        }));
    }
    Ok(Some(RegistryAuth {
        username: user,
        password: secret,
        identity_token: None,
    }))
}

/// Credentials for registry `host` (as [`normalize_host`] gives it), or
/// `None` for anonymous access. Order: vessel's file; then Docker's config:
/// `credHelpers[host]`, `auths[host]`, `credsStore`.
pub fn lookup(sources: &Sources, host: &str) -> Result<Option<RegistryAuth>> {
    let host = normalize_host(host);
    if let Some(cfg) = read_json(&sources.vessel_config)? {
        if let Some(e) = auth_entry(&cfg, &host) {
            if let Some(a) =
                from_entry(e).with_context(|| format!("in {}", sources.vessel_config.display()))?
            {
                return Ok(Some(a));
            }
        }
    }
    let Some(docker) = &sources.docker_config else {
        return Ok(None);
    };
    let Some(cfg) = read_json(docker)? else {
        return Ok(None);
    };
    if let Some(helpers) = cfg.get("credHelpers").and_then(|v| v.as_object()) {
        let helper = helpers
            .get(&config_key(&host))
            .or_else(|| {
                helpers
                    .iter()
                    .find(|(k, _)| normalize_host(k) == host)
                    .map(|(_, v)| v)
            })
            .and_then(|v| v.as_str());
        if let Some(h) = helper {
            return run_helper(h, &helper_server(&host), &sources.helper_dirs);
        }
    }
    if let Some(e) = auth_entry(&cfg, &host) {
        if let Some(a) = from_entry(e).with_context(|| format!("in {}", docker.display()))? {
            return Ok(Some(a));
        }
    }
    if let Some(store) = cfg.get("credsStore").and_then(|v| v.as_str()) {
        return run_helper(store, &helper_server(&host), &sources.helper_dirs);
    }
    Ok(None)
}

/// Credentials for pulling or pushing `reference`; a failing lookup is
/// reported on stderr and the transfer goes on anonymously.
pub fn for_reference(reference: &str) -> Option<RegistryAuth> {
    let host = registry_of_reference(reference);
    match lookup(&Sources::from_env(), &host) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("WARNING! cannot read the credentials for {host}: {e:#}; trying anonymously");
            None
        }
    }
}

/// The username stored for `server` in vessel's file, for a login prompt.
pub fn stored_username(sources: &Sources, server: &str) -> Option<String> {
    let cfg = read_json(&sources.vessel_config).ok()??;
    let e = auth_entry(&cfg, &normalize_host(server))?;
    from_entry(e).ok()?.map(|a| a.username)
}

fn write_config(path: &Path, cfg: &Map<String, Value>) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", path.display()))?;
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    let mut data = serde_json::to_vec_pretty(&Value::Object(cfg.clone()))?;
    data.push(b'\n');
    let tmp = dir.join(format!(
        ".config.json.tmp-{}-{}",
        std::process::id(),
        vessel_api::fsutil::random_hex(4)
    ));
    let result = (|| -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&data)?;
        f.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Store `user`/`password` for `server` in vessel's file.
pub fn store(sources: &Sources, server: &str, user: &str, password: &str) -> Result<()> {
    let path = &sources.vessel_config;
    let mut cfg = read_json(path)?.unwrap_or_default();
    let auths = cfg
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    let Some(auths) = auths.as_object_mut() else {
        bail!("{}: \"auths\" is not an object", path.display());
    };
    let host = normalize_host(server);
    // Other spellings of the same server would shadow the new entry.
    auths.retain(|k, _| normalize_host(k) != host);
    let mut entry = Map::new();
    entry.insert(
        "auth".into(),
        Value::String(STANDARD.encode(format!("{user}:{password}"))),
    );
    auths.insert(config_key(server), Value::Object(entry));
    write_config(path, &cfg)
}

/// Remove `server`'s entry from vessel's file; `false` if there was none.
pub fn erase(sources: &Sources, server: &str) -> Result<bool> {
    let path = &sources.vessel_config;
    let Some(mut cfg) = read_json(path)? else {
        return Ok(false);
    };
    let host = normalize_host(server);
    let Some(auths) = cfg.get_mut("auths").and_then(|a| a.as_object_mut()) else {
        return Ok(false);
    };
    let before = auths.len();
    auths.retain(|k, _| normalize_host(k) != host);
    if auths.len() == before {
        return Ok(false);
    }
    write_config(path, &cfg)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sources(dir: &Path) -> Sources {
        Sources {
            vessel_config: dir.join("vessel").join("config.json"),
            docker_config: Some(dir.join("docker").join("config.json")),
            helper_dirs: vec![dir.join("bin")],
        }
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn helper(dir: &Path, name: &str, script: &str) {
        let p = dir.join("bin").join(format!("docker-credential-{name}"));
        write(&p, &format!("#!/bin/sh\n{script}\n"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn basic(user: &str, pass: &str) -> RegistryAuth {
        RegistryAuth {
            username: user.into(),
            password: pass.into(),
            identity_token: None,
        }
    }

    #[test]
    fn hosts_normalize_like_docker() {
        assert_eq!(registry_of_reference("busybox"), "docker.io");
        assert_eq!(registry_of_reference("library/busybox:1"), "docker.io");
        assert_eq!(registry_of_reference("ghcr.io/a/b:v1"), "ghcr.io");
        assert_eq!(registry_of_reference("127.0.0.1:5000/x"), "127.0.0.1:5000");
        assert_eq!(registry_of_reference("localhost/busybox"), "localhost");
        assert_eq!(
            registry_of_reference("host:5000/r@sha256:0000"),
            "host:5000"
        );
        assert_eq!(
            registry_of_reference("index.docker.io/library/x"),
            "docker.io"
        );
        for hub in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "https://index.docker.io/v1/",
        ] {
            assert_eq!(config_key(hub), DOCKER_HUB_KEY, "{hub}");
        }
        assert_eq!(config_key("https://Quay.io/v2/token"), "quay.io");
        assert_eq!(config_key("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn store_lookup_erase_keep_other_keys_and_modes() {
        let t = tempfile::tempdir().unwrap();
        let s = sources(t.path());
        assert_eq!(lookup(&s, "127.0.0.1:5000").unwrap(), None);
        // The directory is created 0700.
        store(&s, "first.io", "a", "b").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(s.vessel_config.parent().unwrap()), 0o700);
        write(
            &s.vessel_config,
            r#"{"auths": {"other.io": {"auth": "eDp5"}}, "psFormat": "x"}"#,
        );
        store(&s, "http://127.0.0.1:5000/v2/", "alice", "pa:ss").unwrap();
        store(&s, "registry-1.docker.io", "bob", "pw").unwrap();
        let cfg: Value = serde_json::from_slice(&fs::read(&s.vessel_config).unwrap()).unwrap();
        assert_eq!(cfg["psFormat"], "x");
        assert_eq!(cfg["auths"]["other.io"]["auth"], "eDp5");
        assert_eq!(
            cfg["auths"]["127.0.0.1:5000"]["auth"],
            STANDARD.encode("alice:pa:ss")
        );
        assert!(cfg["auths"][DOCKER_HUB_KEY]["auth"].is_string());
        assert_eq!(mode(&s.vessel_config), 0o600);
        assert_eq!(mode(s.vessel_config.parent().unwrap()), 0o700);
        assert_eq!(
            lookup(&s, "127.0.0.1:5000").unwrap(),
            Some(basic("alice", "pa:ss"))
        );
        assert_eq!(lookup(&s, "docker.io").unwrap(), Some(basic("bob", "pw")));
        assert_eq!(lookup(&s, "other.io").unwrap(), Some(basic("x", "y")));
        assert_eq!(
            stored_username(&s, "index.docker.io").as_deref(),
            Some("bob")
        );
        assert!(erase(&s, "127.0.0.1:5000").unwrap());
        assert!(!erase(&s, "127.0.0.1:5000").unwrap());
        assert_eq!(lookup(&s, "127.0.0.1:5000").unwrap(), None);
        assert!(erase(&s, "docker.io").unwrap());
        let cfg: Value = serde_json::from_slice(&fs::read(&s.vessel_config).unwrap()).unwrap();
        assert_eq!(cfg["psFormat"], "x");
        assert_eq!(mode(&s.vessel_config), 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(s.vessel_config.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("config.json")]);
    }

    #[test]
    fn vessel_file_wins_over_docker() {
        let t = tempfile::tempdir().unwrap();
        let s = sources(t.path());
        write(
            s.docker_config.as_ref().unwrap(),
            &format!(
                r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#,
                STANDARD.encode("docker:d")
            ),
        );
        assert_eq!(lookup(&s, "r.io").unwrap(), Some(basic("docker", "d")));
        store(&s, "r.io", "vessel", "v").unwrap();
        assert_eq!(lookup(&s, "r.io").unwrap(), Some(basic("vessel", "v")));
    }

    #[test]
    fn docker_auths_identity_tokens_and_hub_aliases() {
        let t = tempfile::tempdir().unwrap();
        let s = sources(t.path());
        write(
            s.docker_config.as_ref().unwrap(),
            &format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{}"}},
                    "https://tok.io": {{"auth": "{}", "identitytoken": "refresh"}},
                    "empty.io": {{}}
                }}}}"#,
                STANDARD.encode("hub:secret"),
                STANDARD.encode("u:")
            ),
        );
        assert_eq!(
            lookup(&s, "docker.io").unwrap(),
            Some(basic("hub", "secret"))
        );
        assert_eq!(
            lookup(&s, "tok.io").unwrap(),
            Some(RegistryAuth {
                username: "u".into(),
                password: String::new(),
                identity_token: Some("refresh".into()),
            })
        );
        assert_eq!(lookup(&s, "empty.io").unwrap(), None);
        assert_eq!(lookup(&s, "absent.io").unwrap(), None);
    }

    #[test]
    fn bad_auth_values_are_errors_not_panics() {
        let t = tempfile::tempdir().unwrap();
        let s = sources(t.path());
        write(&s.vessel_config, r#"{"auths": {"a.io": {"auth": "%%%"}}}"#);
        assert!(lookup(&s, "a.io").is_err());
        write(
            &s.vessel_config,
            &format!(
                r#"{{"auths": {{"a.io": {{"auth": "{}"}}}}}}"#,
                STANDARD.encode("nocolon")
            ),
        );
        assert!(lookup(&s, "a.io").is_err());
        write(&s.vessel_config, "[1]");
        assert!(lookup(&s, "a.io").is_err());
        write(&s.vessel_config, "not json");
        assert!(lookup(&s, "a.io").is_err());
    }

    #[test]
    fn credential_helpers() {
        let t = tempfile::tempdir().unwrap();
        let s = sources(t.path());
        // Echo what was asked into the answer so the server passed is checked.
        helper(
            t.path(),
            "fake",
            r#"read server; printf '{"ServerURL":"%s","Username":"user-%s","Secret":"s3cret"}' "$server" "$server""#,
        );
        helper(
            t.path(),
            "token",
            r#"read server; printf '{"ServerURL":"%s","Username":"<token>","Secret":"idtok"}' "$server""#,
        );
        helper(
            t.path(),
            "none",
            r#"echo "credentials not found in native keychain"; exit 1"#,
        );
        helper(t.path(), "broken", r#"echo "boom" >&2; exit 3"#);
        write(
            s.docker_config.as_ref().unwrap(),
            &format!(
                r#"{{"credHelpers": {{"h.io": "fake", "docker.io": "fake", "t.io": "token",
                                      "n.io": "none", "b.io": "broken", "x.io": "../evil"}},
                    "auths": {{"a.io": {{"auth": "{}"}}, "h.io": {{"auth": "{}"}}}},
                    "credsStore": "fake"}}"#,
                STANDARD.encode("plain:p"),
                STANDARD.encode("shadowed:p")
            ),
        );
        // credHelpers first, even over auths.
        assert_eq!(
            lookup(&s, "h.io").unwrap(),
            Some(basic("user-h.io", "s3cret"))
        );
        // Docker Hub is asked for under its historic URL.
        assert_eq!(
            lookup(&s, "registry-1.docker.io").unwrap(),
            Some(basic("user-https://index.docker.io/v1/", "s3cret"))
        );
        assert_eq!(
            lookup(&s, "t.io")
                .unwrap()
                .unwrap()
                .identity_token
                .as_deref(),
            Some("idtok")
        );
        assert_eq!(lookup(&s, "n.io").unwrap(), None);
        let err = format!("{:#}", lookup(&s, "b.io").unwrap_err());
        assert!(err.contains("boom"), "{err}");
        assert!(lookup(&s, "x.io").is_err());
        // auths before credsStore; credsStore for the rest.
        assert_eq!(lookup(&s, "a.io").unwrap(), Some(basic("plain", "p")));
        assert_eq!(
            lookup(&s, "other.io").unwrap(),
            Some(basic("user-other.io", "s3cret"))
        );
    }

    #[test]
    fn missing_helper_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let s = sources(t.path());
        write(
            s.docker_config.as_ref().unwrap(),
            r#"{"credsStore": "vessel-test-does-not-exist"}"#,
        );
        assert!(lookup(&s, "q.io").is_err());
    }
}
