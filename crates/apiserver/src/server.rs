//! The API server: its state, the socket it serves, and what its route
//! handlers ([`crate::api`]) share: the helpers' clients, uploads, system
//! information, shutdown.

use crate::accel::Accel;
use crate::api::call::Call;
use crate::containers::{Containers, StartKind};
use crate::error::{helper_answer, helper_failed, ApiError, ApiResult};
use crate::helpers::{Helper, ImagesHelper};
use anyhow::Context;
use std::fs::{self, File};
use std::io;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;
use vessel_api::error::{ErrorBody, ErrorKind};
use vessel_api::fsutil::random_hex;
use vessel_api::http::{percent_encode, Response};
use vessel_api::paths::Home;
use vessel_api::types::{HelperInfo, RegistryRequest, ResolvedImage, SystemInfo};

/// Options of `vessel-apiserver serve`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Group allowed to use the socket (mode 0660 instead of 0600).
    pub group: Option<String>,
    /// How the apiserver is supervised, for `system status`.
    pub supervisor: String,
    /// The listening socket was passed by a service manager (socket
    /// activation): it owns the socket file, which stays when we exit.
    pub socket_activated: bool,
}

/// Shared state of the running server.
pub struct Server {
    home: Home,
    accel: Accel,
    containers: Arc<Containers>,
    images: Arc<ImagesHelper>,
    network: Arc<Helper>,
    options: Options,
    rt: tokio::runtime::Runtime,
}

impl Server {
    /// Prepare the instance directories, start the image helper, and build the server.
    pub fn new(home: Home, options: Options) -> anyhow::Result<Arc<Self>> {
        for d in [
            home.root().to_path_buf(),
            home.containers_dir(),
            home.logs_dir(),
            home.tmp_dir(),
        ] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        fs::set_permissions(home.root(), fs::Permissions::from_mode(0o711))?;
        // Uploads that were in flight when a previous apiserver died.
        if let Ok(rd) = fs::read_dir(home.tmp_dir()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("upload-") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let accel = crate::accel::detect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("api")
            .build()
            .context("starting the API's runtime")?;
        let images = Helper::images(home.clone());
        let network = Helper::network(home.clone());
        let containers = Containers::new(home.clone(), network.clone(), rt.handle().clone());
        containers.sweep_unfinished();
        // Each time vessel-network (re)starts, before it takes requests:
        // what ended while it was away gives its network back there.
        let c = containers.clone();
        network.set_on_ready(Box::new(move |client| c.reconcile_network(client)));
        // Rootless: vessel-network could not change the host's network;
        // each VM gets passt from its runtime helper instead.
        if !containers.rootless() {
            network.launch();
        }
        Ok(Arc::new(Self {
            home,
            accel,
            containers,
            images,
            network,
            options,
            rt,
        }))
    }

    pub fn home(&self) -> &Home {
        &self.home
    }

    pub fn containers(&self) -> &Arc<Containers> {
        &self.containers
    }

    pub fn accel(&self) -> &Accel {
        &self.accel
    }

    /// Rootless mode (no vessel-network)?
    pub fn rootless(&self) -> bool {
        self.containers.rootless()
    }

    /// Serve forever on `activated` (the socket passed by a service
    /// manager, see [`crate::activation`]) or, without one, on the API
    /// socket bound here (mode 0600, or 0660 for the `--group`).
    pub fn serve(self: &Arc<Self>, activated: Option<UnixListener>) -> anyhow::Result<()> {
        let sock = self.home.api_socket();
        let listener = match activated {
            Some(l) => l,
            None => self.bind(&sock)?,
        };
        vessel_api::fsutil::write_atomic(
            &self.home.apiserver_pid(),
            std::process::id().to_string().as_bytes(),
        )?;
        // A mark left by an apiserver that did not shut down: this one
        // takes over after a crash.
        let mark = self.home.apiserver_live_mark();
        let start = if mark.exists() {
            StartKind::AfterCrash
        } else {
            StartKind::Fresh
        };
        if let Some(dir) = mark.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        vessel_api::fsutil::write_atomic(&mark, b"")?;
        self.containers.start_bookkeeping(start)?;
        eprintln!(
            "vessel-apiserver: listening on {}{} (pid {}, accel {}: {})",
            sock.display(),
            if self.options.socket_activated {
                " (socket passed by the service manager)"
            } else {
                ""
            },
            std::process::id(),
            self.accel.name,
            self.accel.reason
        );
        listener.set_nonblocking(true)?;
        let me = self.clone();
        self.rt.block_on(async move {
            let listener = tokio::net::UnixListener::from_std(listener)?;
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(crate::api::serve_connection(me.clone(), stream));
                    }
                    Err(e) => {
                        eprintln!("vessel-apiserver: accept: {e}");
                        // Out of descriptors, say: let some close first.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    }

    fn bind(&self, sock: &std::path::Path) -> anyhow::Result<UnixListener> {
        let _ = fs::remove_file(sock);
        // Not by the umask: it is the whole process's, and a helper started
        // by another thread meanwhile inherited 0177 and made its store's
        // directories without search permission (a rootless image helper
        // then could not open its own store). The socket is bound under a
        // name of its own, made 0600, then renamed into place: nobody can
        // connect to it before it has its mode.
        let staged = sock.with_file_name(format!(
            ".{}.{}",
            sock.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        let _ = fs::remove_file(&staged);
        let listener =
            UnixListener::bind(&staged).with_context(|| format!("binding {}", staged.display()))?;
        let placed = fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))
            .and_then(|()| fs::rename(&staged, sock));
        if let Err(e) = placed {
            let _ = fs::remove_file(&staged);
            return Err(e).with_context(|| format!("placing the socket at {}", sock.display()));
        }
        if let Some(group) = &self.options.group {
            set_group(sock, group)?;
        }
        Ok(listener)
    }

    pub fn images_call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
    ) -> ApiResult<T> {
        let resp = self.images_send(method, path, None)?;
        helper_answer("vessel-images", resp)
    }

    /// Send a request to the image helper; the raw response, whatever its status.
    pub fn images_send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> ApiResult<Response> {
        let client = self
            .images
            .client()
            .map_err(|e| ApiError::unavailable(format!("{e:#}")))?;
        client
            .request(method, path, body)
            .map_err(helper_failed("vessel-images"))
    }

    /// Send a request to the network helper; the raw response.
    pub fn network_send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> ApiResult<Response> {
        let client = self.containers.network_client().map_err(|e| match e {
            ApiError::Answer(mut b) if b.kind == ErrorKind::Unavailable => {
                // Not about running a container here: drop that advice.
                if let Some((why, _)) = b.message.split_once("; run the container") {
                    b.message = why.to_string();
                }
                ApiError::Answer(b)
            }
            e => e,
        })?;
        client
            .request(method, path, body)
            .map_err(helper_failed("vessel-network"))
    }

    /// The query string for the helper: the `allowed` parameters of the
    /// client's request, re-encoded; the `required` ones must be there.
    pub fn forward_query(
        &self,
        req: &Call,
        allowed: &[&str],
        required: &[&str],
    ) -> ApiResult<String> {
        let mut parts = Vec::new();
        for name in allowed {
            match req.query(name) {
                Some(v) if !v.is_empty() => {
                    parts.push(format!("{name}={}", percent_encode(v)));
                }
                _ if required.contains(name) => {
                    return Err(ApiError::invalid(format!(
                        "missing the query parameter {name:?}"
                    )));
                }
                _ => {}
            }
        }
        Ok(parts.join("&"))
    }

    /// `{"keep": [image IDs of every container]}`: what the helper must not delete.
    pub fn keep_body(&self) -> ApiResult<Vec<u8>> {
        let mut keep: Vec<String> = self
            .containers
            .list()
            .iter()
            .map(|c| c.config.image_id.clone())
            .filter(|i| !i.is_empty())
            .collect();
        keep.sort();
        keep.dedup();
        Ok(serde_json::to_vec(&serde_json::json!({ "keep": keep }))
            .map_err(|e| anyhow::anyhow!(e))?)
    }

    pub fn resolve_image(&self, reference: &str) -> ApiResult<ResolvedImage> {
        self.images_call(
            "POST",
            &format!("/images/resolve?ref={}", percent_encode(reference)),
        )
    }

    pub fn resolve_image_id(&self, reference: &str) -> ApiResult<String> {
        let v: serde_json::Value = self.images_call(
            "GET",
            &format!("/images/inspect?ref={}", percent_encode(reference)),
        )?;
        Ok(v.get("id")
            .and_then(|i| i.as_str())
            .unwrap_or_default()
            .to_string())
    }

    /// Store the request body in `tmp/` (removed when the upload is dropped).
    pub fn receive_upload(&self, req: &mut Call) -> ApiResult<Upload> {
        let path = self
            .home
            .tmp_dir()
            .join(format!("upload-{}", random_hex(8)));
        let upload = Upload { path };
        let mut f = File::create(&upload.path)?;
        let n = io::copy(&mut req.body(), &mut f).map_err(|e| {
            ApiError::invalid(format!("the upload was cut short: {e}; send it again"))
        })?;
        if n == 0 {
            return Err(ApiError::invalid(
                "the upload is empty: send the archive as the request body",
            ));
        }
        f.sync_all()?;
        Ok(upload)
    }

    pub fn system_info(&self) -> SystemInfo {
        let list = self.containers.list();
        let kernel = crate::assets::kernel();
        SystemInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            home: self.home.root().to_path_buf(),
            apiserver_pid: std::process::id() as i32,
            supervisor: if self.options.socket_activated {
                format!("{}, socket-activated", self.options.supervisor)
            } else {
                self.options.supervisor.clone()
            },
            accel: self.accel.name.clone(),
            accel_reason: self.accel.reason.clone(),
            kernel_version: crate::assets::kernel_version(&kernel),
            kernel,
            initrd: crate::assets::initrd(),
            agent_protocol: agent_protocol::PACKAGE.to_string(),
            helpers: vec![
                HelperInfo {
                    name: "vessel-images".into(),
                    pid: self.images.pid(),
                    running: self.images.pid().is_some(),
                    error: self.images.error(),
                },
                HelperInfo {
                    name: "vessel-network".into(),
                    pid: self.network.pid(),
                    running: self.network.pid().is_some(),
                    error: if self.containers.rootless() {
                        Some("not used in rootless mode".into())
                    } else {
                        self.network.error()
                    },
                },
                HelperInfo {
                    name: "vessel-runtime".into(),
                    pid: None,
                    running: list.iter().any(|i| i.state.status.is_active()),
                    error: None,
                },
            ],
            containers_running: list.iter().filter(|i| i.state.status.is_active()).count(),
            containers_total: list.len(),
            networks: self.containers.networks().unwrap_or_default(),
            network_mode: Some(
                if self.containers.rootless() {
                    crate::rootless::NOTE
                } else {
                    crate::rootless::ROOT_NOTE
                }
                .to_string(),
            ),
            vmm_confinement: Some(vessel_api::confine::describe()),
            templates_enabled: vessel_api::template::enabled(),
            templates: vessel_api::template::list(&self.home),
        }
    }

    /// `system stop`: stop every container, then end the supervisor and ourselves.
    pub fn shutdown(&self) {
        eprintln!("vessel-apiserver: shutting down: stopping containers");
        self.containers.stop_all(5);
        // Then the network helper (its DNS servers and port proxies), and
        // what it put on the host: with no container left, the bridges,
        // TAPs and nftables table go too; the records stay for next time.
        if !self.containers.rootless() {
            eprintln!("vessel-apiserver: shutting down: stopping the network helper");
            self.network.stop(Duration::from_secs(5));
            if let Err(e) = Helper::network_cleanup(&self.home) {
                eprintln!("vessel-apiserver: network cleanup: {e:#}");
            }
        }
        // Before the supervisor is told: its SIGTERM ends us at once. A
        // passed socket belongs to the service manager: it stays.
        if !self.options.socket_activated {
            let _ = fs::remove_file(self.home.api_socket());
        }
        let _ = fs::remove_file(self.home.apiserver_pid());
        let _ = fs::remove_file(self.home.apiserver_live_mark());
        // The instance's run base (`/run/vessel/<hash>`), once nothing of
        // it is left: a container still running keeps its directory there.
        let _ = fs::remove_dir(self.home.run_base());
        let supervisor = fs::read_to_string(self.home.supervisor_pid())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        if supervisor == Some(parent) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(parent, libc::SIGTERM) };
        }
        std::process::exit(0);
    }
}

/// The client's `RegistryRequest` (an empty body is one without credentials),
/// re-serialized for the helper.
pub fn registry_body(req: &mut Call) -> ApiResult<Vec<u8>> {
    let data = req.body_bytes()?;
    let body: RegistryRequest = if data.is_empty() {
        RegistryRequest::default()
    } else {
        serde_json::from_slice(&data).map_err(|e| {
            ApiError::invalid(format!("invalid request body: Invalid JSON body: {e}"))
        })?
    };
    Ok(serde_json::to_vec(&body).map_err(|e| anyhow::anyhow!(e))?)
}

/// The helper's answer when it succeeded; its error (kind, message, name)
/// as this request's error otherwise.
fn helper_ok(resp: Response) -> ApiResult<Response> {
    let resp: Result<Response, ErrorBody> = resp.error().map_err(helper_failed("a helper"))?;
    Ok(resp?)
}

/// Pass a JSON answer of the helper on to the client.
pub fn relay_json(req: &mut Call, resp: Response) -> ApiResult<()> {
    let resp = helper_ok(resp)?;
    let status = resp.status;
    let v: serde_json::Value = helper_answer("a helper", resp)?;
    req.respond_json(status, &v)
}

/// Pass a streamed answer of the helper on to the client as it arrives.
pub fn relay(req: &mut Call, resp: Response, content_type: &str) -> ApiResult<()> {
    let resp = helper_ok(resp)?;
    let mut to = req.respond_stream(200, content_type)?;
    let mut from = resp.reader;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Each chunk is written as soon as it is read: no buffering of events.
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        // A client that has gone ends the relay (and the helper's stream).
        to.write_all(&buf[..n])?;
    }
}

/// An uploaded file in `tmp/`, removed when dropped.
pub struct Upload {
    pub path: std::path::PathBuf,
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn set_group(sock: &std::path::Path, group: &str) -> anyhow::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cname = CString::new(group)?;
    // SAFETY: getgrnam takes a valid C string; we read gr_gid at once, before any other call.
    let gid = unsafe {
        let g = libc::getgrnam(cname.as_ptr());
        if g.is_null() {
            anyhow::bail!("group {group:?} does not exist");
        }
        (*g).gr_gid
    };
    let cpath = CString::new(sock.as_os_str().as_bytes())?;
    // SAFETY: chown takes a valid C string path.
    if unsafe { libc::chown(cpath.as_ptr(), u32::MAX, gid) } != 0 {
        return Err(io::Error::last_os_error()).context("changing the socket's group");
    }
    fs::set_permissions(sock, fs::Permissions::from_mode(0o660))?;
    Ok(())
}
