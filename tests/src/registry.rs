//! A real OCI registry for the tests: Debian's `docker-registry` (the
//! reference distribution registry) on 127.0.0.1 with a free port and
//! filesystem storage in a temporary directory, optionally behind htpasswd
//! basic auth and TLS from a test CA made here with `openssl`, or behind
//! bearer-token auth from a [`TokenServer`] (Docker Hub's scheme). Images are
//! placed in it with `skopeo` (a real client, not vessel's). Dropping a
//! [`Registry`] kills the registry and removes its directory, also when the
//! test panicked.

use crate::token::{TokenServer, ISSUER};
use crate::{text, Instance};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Credentials of the auth-protected registry variant.
pub const USER: &str = "vessel-tester";
pub const PASSWORD: &str = "s3cret pass-word";

/// One running registry.
pub struct Registry {
    child: Child,
    ip: String,
    port: u16,
    tls: bool,
    creds: Option<(String, String)>,
    token: Option<TokenServer>,
    // Last: removed after the registry is dead.
    dir: tempfile::TempDir,
}

impl Registry {
    /// Plain HTTP, anonymous.
    pub fn plain() -> Self {
        Self::start(Auth::None, "127.0.0.1")
    }

    /// Plain HTTP on loopback with bearer-token auth: the registry sends
    /// clients to a [`TokenServer`] (anonymous pulls of `public/*`,
    /// [`USER`]/[`PASSWORD`] for everything).
    pub fn with_token_auth() -> Self {
        Self::start(Auth::Token, "127.0.0.1")
    }

    /// The token server of [`Registry::with_token_auth`].
    pub fn token_server(&self) -> &TokenServer {
        self.token.as_ref().expect("a registry with token auth")
    }

    /// TLS (certificate for IP 127.0.0.1 signed by a test CA made here) and
    /// htpasswd basic auth for [`USER`]/[`PASSWORD`].
    pub fn with_auth_tls() -> Self {
        Self::with_auth_tls_on("127.0.0.1")
    }

    /// Like [`Registry::with_auth_tls`], listening on `ip` (an address of
    /// this machine; the certificate names it and 127.0.0.1). A client
    /// treats a registry off loopback as secure: it must verify the CA.
    pub fn with_auth_tls_on(ip: &str) -> Self {
        Self::start(Auth::HtpasswdTls, ip)
    }

    fn start(auth: Auth, ip: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vessel-registry-")
            .tempdir_in("/tmp")
            .expect("registry temp dir");
        let tls = auth == Auth::HtpasswdTls;
        let creds = (auth != Auth::None).then(|| (USER.to_string(), PASSWORD.to_string()));
        let token = (auth == Auth::Token).then(|| TokenServer::start(dir.path()));
        if tls {
            make_tls(dir.path(), ip);
            let (u, p) = creds.as_ref().expect("creds");
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("running htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd: {}", text(&out.stderr));
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).expect("htpasswd file");
        }
        let mut last_err = String::new();
        // A free port can be taken between probing and binding: retry.
        for _ in 0..5 {
            let port = free_port_on(ip);
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                config_yaml(dir.path(), ip, port, tls, token.as_ref()),
            )
            .expect("config");
            let log = |name: &str| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.path().join(name))
                    .expect("registry log")
            };
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log("access.log"))
                .stderr(log("registry.log"));
            // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; it only
            // makes the kernel kill the registry if the test process dies.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().expect("starting docker-registry");
            let ca = tls.then(|| dir.path().join("tls/ca.crt"));
            let authed = auth != Auth::None;
            match wait_ready(
                &mut child,
                ip,
                port,
                ca.as_deref(),
                authed,
                Duration::from_secs(20),
            ) {
                Ok(()) => {
                    return Self {
                        child,
                        ip: ip.to_string(),
                        port,
                        tls,
                        creds,
                        token,
                        dir,
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = format!(
                        "{e}; registry log:\n{}",
                        std::fs::read_to_string(dir.path().join("registry.log"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }

    /// `IP:PORT` (`127.0.0.1:PORT` unless made with another address).
    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT/REPO_TAG`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's storage root (`docker/registry/v2/...` below it).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file holding a blob's bytes in the registry's storage.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The test CA's certificate (TLS variant).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("tls/ca.crt")
    }

    /// A directory holding only `ca.crt`, for skopeo's `--*-cert-dir`.
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The registry's access log (one line per request).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// How many `GET` of `digest`'s blob the registry answered with 200.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest} ");
        self.access_log()
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&needle) && l.contains("\" 200 "))
            .count()
    }

    /// Make `v` trust this registry's CA:
    /// `VESSEL_HOME/certs.d/127.0.0.1:PORT/ca.crt`.
    pub fn trust_in(&self, v: &Instance) {
        let d = v.path().join("certs.d").join(self.host());
        std::fs::create_dir_all(&d).expect("certs.d");
        std::fs::copy(self.ca_cert(), d.join("ca.crt")).expect("ca.crt");
    }

    /// skopeo's flags to talk to this registry as `side` ("src" or "dest").
    pub fn skopeo_flags(&self, side: &str) -> Vec<String> {
        let mut v = if self.tls {
            vec![format!("--{side}-cert-dir={}", self.cert_dir().display())]
        } else {
            vec![format!("--{side}-tls-verify=false")]
        };
        if let Some((u, p)) = &self.creds {
            v.push(format!("--{side}-creds={u}:{p}"));
        }
        v
    }

    /// `skopeo copy [EXTRA] SRC docker://127.0.0.1:PORT/REPO_TAG`; panics
    /// on failure.
    pub fn push(&self, src: &str, repo_tag: &str, extra: &[&str]) {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet"])
            .args(self.skopeo_flags("dest"))
            .args(extra)
            .arg(src)
            .arg(format!("docker://{}", self.reference(repo_tag)));
        let out = run(c);
        crate::assert_ok(&out, &format!("skopeo copy {src} → {repo_tag}"));
    }

    /// `skopeo inspect [--raw]` of `docker://127.0.0.1:PORT/REPO_TAG`.
    pub fn inspect(&self, repo_tag: &str, raw: bool) -> serde_json::Value {
        let mut c = Command::new("skopeo");
        c.arg("inspect");
        if raw {
            c.arg("--raw");
        }
        if self.tls {
            c.arg(format!("--cert-dir={}", self.cert_dir().display()));
        } else {
            c.arg("--tls-verify=false");
        }
        if let Some((u, p)) = &self.creds {
            c.arg(format!("--creds={u}:{p}"));
        }
        c.arg(format!("docker://{}", self.reference(repo_tag)));
        let out = run(c);
        crate::assert_ok(&out, &format!("skopeo inspect {repo_tag}"));
        serde_json::from_slice(&out.stdout).expect("skopeo inspect JSON")
    }

    /// Build a fixture image layout (tests/fixtures/make_registry_images.py)
    /// in this registry's directory and push it as `repo_tag`; its summary.
    pub fn put_fixture(
        &self,
        case: &str,
        repo_tag: &str,
        fixture_args: &[&str],
        skopeo_args: &[&str],
    ) -> serde_json::Value {
        let layout = self
            .dir
            .path()
            .join(format!("layout-{}", sanitize(repo_tag)));
        let summary = build_fixture(case, &layout, fixture_args);
        let mut extra = skopeo_args.to_vec();
        if case == "multiarch" {
            extra.push("--all");
        }
        self.push(
            &format!("oci:{}:latest", layout.display()),
            repo_tag,
            &extra,
        );
        summary
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The temporary directory is removed when `dir` drops, after this.
    }
}

/// How a test registry authenticates clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    None,
    HtpasswdTls,
    Token,
}

fn wait_ready(
    child: &mut Child,
    ip: &str,
    port: u16,
    ca: Option<&Path>,
    authed: bool,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("docker-registry exited: {st}"));
        }
        let status = match ca {
            Some(ca) => curl_status(ip, port, ca, "/v2/"),
            None => http_status(port, "/v2/"),
        };
        match (status, authed) {
            (Some(200), false) | (Some(401), true) => return Ok(()),
            (Some(other), _) => return Err(format!("GET /v2/ answered {other}")),
            (None, _) => {}
        }
        if Instant::now() > deadline {
            return Err("GET /v2/ did not answer".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Status of `GET https://ip:port/path` verified with `ca`, by curl.
fn curl_status(ip: &str, port: u16, ca: &Path, path: &str) -> Option<u16> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .arg(format!("https://{ip}:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .ok()?;
    text(&out.stdout).trim().parse().ok().filter(|c| *c != 0)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().expect("running a tool")
}

/// Build a fixture image layout with tests/fixtures/make_registry_images.py
/// on top of the busybox image; its JSON summary (`digest`, `manifests`,
/// `layers`, `base_layer`).
pub fn build_fixture(case: &str, out: &Path, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/make_registry_images.py");
    let o = Command::new("python3")
        .arg(script)
        .arg(case)
        .arg(out)
        .arg("--base")
        .arg(crate::required_env("VESSEL_TEST_IMAGE"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    crate::assert_ok(&o, &format!("fixture {case}"));
    serde_json::from_slice(&o.stdout).expect("fixture summary")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

fn free_port_on(ip: &str) -> u16 {
    let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    l.local_addr().expect("local addr").port()
}

/// An IPv4 address of this machine that is not loopback (for a registry a
/// client must treat as secure), from `ip -4 -o addr show scope global`.
pub fn non_loopback_ipv4() -> Option<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    text(&out.stdout).lines().find_map(|l| {
        let mut w = l.split_whitespace();
        w.find(|x| *x == "inet")?;
        let addr = w.next()?.split('/').next()?.to_string();
        TcpListener::bind((addr.as_str(), 0)).ok().map(|_| addr)
    })
}

/// Status of a plain-HTTP `GET path` on 127.0.0.1:port, if it answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    let _ = s.take(4096).read_to_end(&mut buf);
    let head = text(&buf);
    head.split_whitespace().nth(1)?.parse().ok()
}

fn config_yaml(dir: &Path, ip: &str, port: u16, tls: bool, token: Option<&TokenServer>) -> String {
    let mut y = format!(
        "version: 0.1\n\
         log:\n  level: info\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {ip}:{port}\n  secret: vessel-tests\n",
        dir.join("storage").display()
    );
    if tls {
        y.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n\
             auth:\n  htpasswd:\n    realm: vessel-tests\n    path: {}\n",
            dir.join("tls/server.crt").display(),
            dir.join("tls/server.key").display(),
            dir.join("htpasswd").display()
        ));
    }
    if let Some(t) = token {
        y.push_str(&format!(
            "auth:\n  token:\n    realm: {}\n    service: vessel-test-registry\n    \
             issuer: {ISSUER}\n    rootcertbundle: {}\n",
            t.realm(),
            t.cert().display()
        ));
    }
    y
}

/// A test CA and a server certificate for IPs 127.0.0.1 and `ip` signed by
/// it, in `dir/tls`; the CA certificate also in `dir/certs/ca.crt` (for
/// skopeo).
fn make_tls(dir: &Path, ip: &str) {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).expect("tls dir");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&tls)
            .stdin(Stdio::null())
            .output()
            .expect("running openssl");
        crate::assert_ok(&out, &format!("openssl {}", args.join(" ")));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=vessel test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        tls.join("ext.cnf"),
        format!(
            "subjectAltName=IP:127.0.0.1,IP:{ip}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .expect("ext.cnf");
    let serial = format!("0x{:x}{:x}", std::process::id(), free_port());
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        &serial,
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    std::fs::copy(tls.join("ca.crt"), certs.join("ca.crt")).expect("ca.crt copy");
}

/// A TCP relay on 127.0.0.1 to a registry that slows its answers down to
/// about `bytes_per_sec` per connection, so a test can act in the middle of
/// a transfer. The registry sees every request unchanged. Dropping it stops
/// accepting; open relays end with their connections.
pub struct SlowProxy {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowProxy {
    pub fn new(upstream: &Registry, bytes_per_sec: u64) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let up = (upstream.ip.clone(), upstream.port);
        let flag = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect((up.0.as_str(), up.1)) else {
                    continue;
                };
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                std::thread::spawn(move || relay(client, server, None));
                std::thread::spawn(move || relay(s2, c2, Some(bytes_per_sec)));
            }
        });
        Self { port, stop }
    }

    /// `127.0.0.1:PORT` of the relay.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn relay(mut from: TcpStream, mut to: TcpStream, rate: Option<u64>) {
    let mut buf = vec![0u8; 16 * 1024];
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = from.shutdown(std::net::Shutdown::Read);
}
