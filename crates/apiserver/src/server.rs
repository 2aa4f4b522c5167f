//! The API server: routes of `docs/api/openapi.yaml` over a Unix socket.

use crate::accel::Accel;
use crate::containers::Containers;
use crate::error::{helper_answer, helper_failed, ApiError, ApiResult};
use crate::helpers::{Helper, ImagesHelper};
use anyhow::Context;
use std::fs::{self, File};
use std::io;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;
use vessel_api::error::{ErrorBody, ErrorKind};
use vessel_api::fsutil::random_hex;
use vessel_api::http::{
    percent_encode, respond_error, respond_json, respond_stream_head, Request, Response,
};
use vessel_api::network::NetworkCreateRequest;
use vessel_api::paths::Home;
use vessel_api::types::{
    parse_signal, ContainerSummary, CreateRequest, CreateResponse, HelperInfo, ImageSummary,
    LoadResponse, RegistryRequest, ResolvedImage, SystemInfo,
};

/// Options of `vessel-apiserver serve`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Group allowed to use the socket (mode 0660 instead of 0600).
    pub group: Option<String>,
    /// How the apiserver is supervised, for `system status`.
    pub supervisor: String,
}

/// Shared state of the running server.
pub struct Server {
    home: Home,
    accel: Accel,
    containers: Arc<Containers>,
    images: Arc<ImagesHelper>,
    network: Arc<Helper>,
    options: Options,
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
        let images = Helper::images(home.clone());
        let network = Helper::network(home.clone());
        let containers = Containers::new(home.clone(), network.clone());
        // Each time vessel-network (re)starts, before it takes requests.
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
        }))
    }

    /// Bind the API socket and serve forever.
    pub fn serve(self: &Arc<Self>) -> anyhow::Result<()> {
        let sock = self.home.api_socket();
        let _ = fs::remove_file(&sock);
        // SAFETY: umask only changes this process's file mode mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(&sock);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let listener = bound.with_context(|| format!("binding {}", sock.display()))?;
        if let Some(group) = &self.options.group {
            set_group(&sock, group)?;
        }
        vessel_api::fsutil::write_atomic(
            &self.home.apiserver_pid(),
            std::process::id().to_string().as_bytes(),
        )?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || loop {
                // Containers that ended by themselves, were killed, or were
                // found dead give their network back here.
                me.containers.release_ended_networks(&me.containers.list());
                me.containers.reap_auto_remove();
                std::thread::sleep(Duration::from_millis(200));
            })?;
        eprintln!(
            "vessel-apiserver: listening on {} (pid {}, accel {}: {})",
            sock.display(),
            std::process::id(),
            self.accel.name,
            self.accel.reason
        );
        for conn in listener.incoming() {
            match conn {
                Ok(stream) => {
                    let me = self.clone();
                    std::thread::spawn(move || me.handle(stream));
                }
                Err(e) => eprintln!("vessel-apiserver: accept: {e}"),
            }
        }
        Ok(())
    }

    fn handle(self: &Arc<Self>, stream: UnixStream) {
        let mut req = match Request::read(stream) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("vessel-apiserver: bad request: {e}");
                return;
            }
        };
        if let Err(e) = self.route(&mut req) {
            let body = e.body();
            if body.kind == ErrorKind::Internal {
                eprintln!(
                    "vessel-apiserver: {} {}: {}",
                    req.method, req.path, body.message
                );
            }
            let _ = respond_error(req.stream(), &body);
        }
    }

    fn route(self: &Arc<Self>, req: &mut Request) -> ApiResult<()> {
        let path = req.path.trim_end_matches('/').to_string();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let method = req.method.clone();
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["v1", "system", "info"]) => {
                let info = self.system_info();
                respond_json(req.stream(), 200, &info)?;
            }
            ("POST", ["v1", "system", "shutdown"]) => {
                // Shut down even if the client has hung up already.
                let _ = respond_json(req.stream(), 200, &serde_json::json!({"ok": true}));
                self.shutdown();
            }
            ("GET", ["v1", "containers"]) => {
                let all = req.flag("all");
                let list: Vec<ContainerSummary> = self
                    .containers
                    .list()
                    .iter()
                    .filter(|i| all || i.state.status.is_active())
                    .map(ContainerSummary::from_info)
                    .collect();
                respond_json(req.stream(), 200, &list)?;
            }
            ("POST", ["v1", "containers"]) => {
                let create: CreateRequest = req.json().map_err(ApiError::invalid_body)?;
                // `image_not_found` from create is always about this image,
                // named as the request gave it: the CLI pulls on that alone.
                let image = self
                    .resolve_image(&create.image)
                    .map_err(|e| e.naming(ErrorKind::ImageNotFound, &create.image))?;
                let config = self.containers.create(&create, &image, &self.accel)?;
                respond_json(
                    req.stream(),
                    201,
                    &CreateResponse {
                        id: config.id,
                        name: config.name,
                    },
                )?;
            }
            ("GET", ["v1", "containers", key]) => {
                let info = self.containers.find(key)?;
                respond_json(req.stream(), 200, &info)?;
            }
            ("DELETE", ["v1", "containers", key]) => {
                let info = self.containers.remove(key, req.flag("force"))?;
                respond_json(req.stream(), 200, &ContainerSummary::from_info(&info))?;
            }
            ("POST", ["v1", "containers", key, "start"]) => {
                let id = self.containers.find(key)?.config.id;
                if req.flag("attach") {
                    let _guard = self.containers.attach(&id);
                    self.containers.start(&id)?;
                    respond_stream_head(req.stream(), 200, "application/x-ndjson")?;
                    crate::logs::stream(&self.containers, &id, req.stream(), true)?;
                } else {
                    let info = self.containers.start(&id)?;
                    respond_json(req.stream(), 200, &info)?;
                }
            }
            ("GET", ["v1", "containers", key, "logs"]) => {
                let id = self.containers.find(key)?.config.id;
                let _guard = self.containers.attach(&id);
                respond_stream_head(req.stream(), 200, "application/x-ndjson")?;
                let follow = req.flag("follow");
                crate::logs::stream(&self.containers, &id, req.stream(), follow)?;
            }
            ("POST", ["v1", "containers", key, "stop"]) => {
                let t = match req.query("t") {
                    Some(t) => t
                        .parse::<u64>()
                        .map_err(|_| ApiError::invalid(format!("invalid timeout {t:?}")))?,
                    None => 10,
                };
                let info = self.containers.stop(key, t)?;
                respond_json(req.stream(), 200, &info)?;
            }
            ("POST", ["v1", "containers", key, "kill"]) => {
                let sig = parse_signal(req.query("signal").unwrap_or("KILL"))
                    .map_err(ApiError::invalid)?;
                let info = self.containers.kill(key, sig)?;
                respond_json(req.stream(), 200, &info)?;
            }
            ("POST", ["v1", "containers", key, "wait"]) => {
                let w = self.containers.wait(key)?;
                respond_json(req.stream(), 200, &w)?;
            }
            ("GET", ["v1", "networks"]) if self.containers.rootless() => {
                // No networks to list; the others answer why.
                respond_json(req.stream(), 200, &serde_json::json!([]))?;
            }
            ("GET", ["v1", "networks"]) => {
                let resp = self.network_send("GET", "/networks", None)?;
                relay_json(req, resp)?;
            }
            ("POST", ["v1", "networks"]) => {
                let create: NetworkCreateRequest = req.json().map_err(ApiError::invalid_body)?;
                let body = serde_json::to_vec(&create).map_err(|e| anyhow::anyhow!(e))?;
                let resp = self.network_send("POST", "/networks", Some(&body))?;
                relay_json(req, resp)?;
            }
            ("POST", ["v1", "networks", "prune"]) => {
                let resp = self.network_send("POST", "/networks/prune", None)?;
                relay_json(req, resp)?;
            }
            ("GET", ["v1", "networks", name]) => {
                let path = format!("/networks/{}", percent_encode(name));
                let resp = self.network_send("GET", &path, None)?;
                relay_json(req, resp)?;
            }
            ("DELETE", ["v1", "networks", name]) => {
                let path = format!("/networks/{}", percent_encode(name));
                let resp = self.network_send("DELETE", &path, None)?;
                relay_json(req, resp)?;
            }
            ("GET", ["v1", "images"]) => {
                let list: Vec<ImageSummary> = self.images_call("GET", "/images")?;
                respond_json(req.stream(), 200, &list)?;
            }
            ("POST", ["v1", "images", "load"]) => {
                let upload = self.receive_upload(req)?;
                let path = percent_encode(&upload.path.to_string_lossy());
                let res: ApiResult<LoadResponse> =
                    self.images_call("POST", &format!("/images/load?path={path}"));
                respond_json(req.stream(), 200, &res?)?;
            }
            ("POST", ["v1", "images", "import"]) => {
                let reference = req
                    .query("ref")
                    .ok_or_else(|| ApiError::invalid("missing the image reference"))?
                    .to_string();
                let upload = self.receive_upload(req)?;
                let path = percent_encode(&upload.path.to_string_lossy());
                let res: ApiResult<LoadResponse> = self.images_call(
                    "POST",
                    &format!(
                        "/images/import?path={path}&ref={}",
                        percent_encode(&reference)
                    ),
                );
                respond_json(req.stream(), 200, &res?)?;
            }
            ("POST", ["v1", "images", "pull"]) => {
                let q = self.forward_query(req, &["ref", "platform", "tls_verify"], &["ref"])?;
                let body = registry_body(req)?;
                let resp = self.images_send("POST", &format!("/images/pull?{q}"), Some(&body))?;
                relay(req, resp, "application/x-ndjson")?;
            }
            ("POST", ["v1", "images", "push"]) => {
                let q = self.forward_query(req, &["ref", "tls_verify"], &["ref"])?;
                let body = registry_body(req)?;
                let resp = self.images_send("POST", &format!("/images/push?{q}"), Some(&body))?;
                relay(req, resp, "application/x-ndjson")?;
            }
            ("POST", ["v1", "registry", "login"]) => {
                let q = self.forward_query(req, &["server", "tls_verify"], &["server"])?;
                let body = registry_body(req)?;
                let resp =
                    self.images_send("POST", &format!("/registry/login?{q}"), Some(&body))?;
                relay_json(req, resp)?;
            }
            ("GET", ["v1", "images", "inspect"]) => {
                let q = self.forward_query(req, &["ref"], &["ref"])?;
                let resp = self.images_send("GET", &format!("/images/inspect?{q}"), None)?;
                relay_json(req, resp)?;
            }
            ("POST", ["v1", "images", "tag"]) => {
                let q = self.forward_query(req, &["source", "target"], &["source", "target"])?;
                let resp = self.images_send("POST", &format!("/images/tag?{q}"), None)?;
                relay_json(req, resp)?;
            }
            ("POST", ["v1", "images", "prune"]) => {
                let all = req.flag("all");
                let body = self.keep_body()?;
                let resp =
                    self.images_send("POST", &format!("/images/prune?all={all}"), Some(&body))?;
                relay_json(req, resp)?;
            }
            ("GET", ["v1", "images", "save"]) => {
                let q = self.forward_query(req, &["refs"], &["refs"])?;
                let resp = self.images_send("GET", &format!("/images/save?{q}"), None)?;
                relay(req, resp, "application/x-tar")?;
            }
            ("DELETE", ["v1", "images"]) => {
                let reference = req
                    .query("ref")
                    .ok_or_else(|| ApiError::invalid("missing the image reference"))?
                    .to_string();
                if !req.flag("force") {
                    let image = self.resolve_image_id(&reference)?;
                    if let Some(c) = self
                        .containers
                        .list()
                        .iter()
                        .find(|c| c.config.image_id == image)
                    {
                        return Err(ApiError::new(ErrorKind::InUse, format!(
                            "image {reference} is used by container {} ({}); remove the container first or use `vessel image rm -f`",
                            c.config.name,
                            &c.config.id[..12]
                        )));
                    }
                }
                // The helper keeps whatever a container still needs, even with force.
                let body = self.keep_body()?;
                let resp = self.images_send(
                    "DELETE",
                    &format!("/images?ref={}", percent_encode(&reference)),
                    Some(&body),
                )?;
                relay_json(req, resp)?;
            }
            _ => {
                return Err(ApiError::new(
                    ErrorKind::NotFound,
                    format!("no route for {} {}", req.method, req.path),
                ));
            }
        }
        Ok(())
    }

    fn images_call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
    ) -> ApiResult<T> {
        let resp = self.images_send(method, path, None)?;
        helper_answer("vessel-images", resp)
    }

    /// Send a request to the image helper; the raw response, whatever its status.
    fn images_send(&self, method: &str, path: &str, body: Option<&[u8]>) -> ApiResult<Response> {
        let client = self
            .images
            .client()
            .map_err(|e| ApiError::unavailable(format!("{e:#}")))?;
        client
            .request(method, path, body)
            .map_err(helper_failed("vessel-images"))
    }

    /// Send a request to the network helper; the raw response.
    fn network_send(&self, method: &str, path: &str, body: Option<&[u8]>) -> ApiResult<Response> {
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
    fn forward_query(
        &self,
        req: &Request,
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
    fn keep_body(&self) -> ApiResult<Vec<u8>> {
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

    fn resolve_image(&self, reference: &str) -> ApiResult<ResolvedImage> {
        self.images_call(
            "POST",
            &format!("/images/resolve?ref={}", percent_encode(reference)),
        )
    }

    fn resolve_image_id(&self, reference: &str) -> ApiResult<String> {
        let v: serde_json::Value = self.images_call(
            "GET",
            &format!("/images/inspect?ref={}", percent_encode(reference)),
        )?;
        Ok(v.get("id")
            .and_then(|i| i.as_str())
            .unwrap_or_default()
            .to_string())
    }

    fn receive_upload(&self, req: &mut Request) -> ApiResult<Upload> {
        let path = self
            .home
            .tmp_dir()
            .join(format!("upload-{}", random_hex(8)));
        let upload = Upload { path };
        let mut f = File::create(&upload.path)?;
        let expected = req.content_length;
        let n = io::copy(&mut req.body(), &mut f)?;
        if n != expected {
            return Err(ApiError::invalid(format!(
                "the upload ended after {n} of {expected} bytes"
            )));
        }
        f.sync_all()?;
        Ok(upload)
    }

    fn system_info(&self) -> SystemInfo {
        let list = self.containers.list();
        SystemInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            home: self.home.root().to_path_buf(),
            apiserver_pid: std::process::id() as i32,
            supervisor: self.options.supervisor.clone(),
            accel: self.accel.name.clone(),
            accel_reason: self.accel.reason.clone(),
            kernel: crate::assets::kernel(),
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
        }
    }

    /// `system stop`: stop every container, then end the supervisor and ourselves.
    fn shutdown(&self) {
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
        // Before the supervisor is told: its SIGTERM ends us at once.
        let _ = fs::remove_file(self.home.api_socket());
        let _ = fs::remove_file(self.home.apiserver_pid());
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
fn registry_body(req: &mut Request) -> ApiResult<Vec<u8>> {
    let body: RegistryRequest = if req.content_length == 0 {
        RegistryRequest::default()
    } else {
        req.json().map_err(ApiError::invalid_body)?
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
fn relay_json(req: &mut Request, resp: Response) -> ApiResult<()> {
    let resp = helper_ok(resp)?;
    let status = resp.status;
    let v: serde_json::Value = helper_answer("a helper", resp)?;
    respond_json(req.stream(), status, &v)?;
    Ok(())
}

/// Pass a streamed answer of the helper on to the client as it arrives.
fn relay(req: &mut Request, resp: Response, content_type: &str) -> ApiResult<()> {
    let resp = helper_ok(resp)?;
    respond_stream_head(req.stream(), 200, content_type)?;
    let mut from = resp.reader;
    let to = req.stream();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Each chunk is written as soon as it is read: no buffering of events.
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        to.write_all(&buf[..n])?;
    }
}

/// An uploaded file in `tmp/`, removed when dropped.
struct Upload {
    path: std::path::PathBuf,
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
