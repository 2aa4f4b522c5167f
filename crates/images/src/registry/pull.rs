//! `image pull`: resolve a reference to a manifest for the platform,
//! download its config and layers in parallel (each verified against its
//! digest before it becomes visible), record the image and build its ext4
//! base.
//!
//! Blobs are downloaded to `content/ingest/<hex>.partial` under an flock on
//! `content/ingest/<hex>.lock`, so two pulls of one image (in this process
//! or another) download each blob once: the second waits, then finds the
//! blob in the store. An interrupted download leaves only the `.partial`
//! file, never a blob; the next pull resumes it with a `Range` request when
//! the registry supports that, and restarts it otherwise. A store lease
//! protects the image's blobs from a concurrent `image rm`/`prune` until the
//! index names the image.

use sha2::{Digest as _, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vessel_api::types::{BlobInfo, ImageSummary, TransferEvent};

use super::auth::repo_scope;
use super::client::{error_codes, error_text_of, read_small, Body, Registry};
use super::{io_err, run_parallel, EventSink, RegistryError, TransferOptions};
use crate::oci::{self, Descriptor, DocumentKind, ImageConfig, ImageIndex, Manifest, PlatformSpec};
use crate::reference::Reference;
use crate::store::{digest_hex, sha256_digest, Flock, ImageRecord, Store, MAX_DOCUMENT};

/// Parallel blob downloads.
pub const PARALLEL: usize = 4;
/// Media types a manifest request accepts.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
const PROGRESS_BYTES: u64 = 1 << 20;
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Attempts per blob when the connection breaks mid-transfer.
const ATTEMPTS: usize = 3;

/// A manifest fetched from a registry.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub content_type: String,
}

/// `repo:tag` or `repo@digest` for messages.
fn shown(r: &Reference) -> String {
    r.to_string()
}

/// Fetch the manifest or index `reference` (a tag or digest) of `r`'s
/// repository; its digest is always computed, and checked against a
/// digest reference and the registry's `Docker-Content-Digest`.
pub fn fetch_manifest(
    reg: &Registry,
    r: &Reference,
    reference: &str,
    scopes: &[String],
) -> Result<Fetched, RegistryError> {
    let path = format!("/v2/{}/manifests/{reference}", r.path);
    let what = r.repository();
    let resp = reg.request(
        "GET",
        &path,
        scopes,
        &[("Accept", ACCEPT)],
        Body::Empty,
        &what,
    )?;
    let status = resp.status();
    if status == 404 {
        let body = read_small(resp).unwrap_or_default();
        let codes = error_codes(&body);
        let name = if reference.starts_with("sha256:") {
            format!("{}@{reference}", r.repository())
        } else {
            format!("{}:{reference}", r.repository())
        };
        return Err(if codes.iter().any(|c| c == "NAME_UNKNOWN") {
            RegistryError::ManifestUnknown(format!("{name} (repository unknown)"))
        } else if codes.is_empty() || codes.iter().any(|c| c == "MANIFEST_UNKNOWN") {
            RegistryError::ManifestUnknown(name)
        } else {
            RegistryError::ManifestUnknown(format!("{name} ({})", error_text_of(&body)))
        });
    }
    if !(200..300).contains(&status) {
        return Err(reg.status_error(status, resp, &what));
    }
    let content_type = resp.header("content-type").unwrap_or("").to_string();
    let header_digest = resp.header("docker-content-digest").map(str::to_string);
    if let Some(len) = resp
        .header("content-length")
        .and_then(|l| l.trim().parse::<u64>().ok())
    {
        if len > MAX_DOCUMENT {
            return Err(reg.protocol(format!(
                "manifest {reference} of {what} is {len} bytes, more than the {MAX_DOCUMENT} allowed"
            )));
        }
    }
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(MAX_DOCUMENT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| RegistryError::Connect {
            host: reg.domain.clone(),
            message: format!("reading manifest {reference} of {what}: {e}"),
        })?;
    if bytes.len() as u64 > MAX_DOCUMENT {
        return Err(reg.protocol(format!(
            "manifest {reference} of {what} is larger than {MAX_DOCUMENT} bytes"
        )));
    }
    let digest = sha256_digest(&bytes);
    if reference.starts_with("sha256:") && reference != digest {
        return Err(RegistryError::DigestMismatch {
            what: "manifest",
            expected: reference.to_string(),
            actual: digest,
        });
    }
    if let Some(h) = header_digest.filter(|h| h.starts_with("sha256:")) {
        if h != digest {
            return Err(RegistryError::DigestMismatch {
                what: "manifest",
                expected: h,
                actual: digest,
            });
        }
    }
    Ok(Fetched {
        bytes,
        digest,
        content_type,
    })
}

/// What a pull resolved to.
pub struct Resolved {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub digest: String,
    /// The platform came from an index (so it matches by construction).
    pub from_index: bool,
}

/// Resolve `r` to a single-platform manifest, following indexes.
pub fn resolve(
    reg: &Registry,
    r: &Reference,
    platform: &PlatformSpec,
    scopes: &[String],
) -> Result<Resolved, RegistryError> {
    let first = r
        .digest
        .clone()
        .or_else(|| r.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let mut fetched = fetch_manifest(reg, r, &first, scopes)?;
    let mut from_index = false;
    for _depth in 0..4 {
        match oci::classify_document(&fetched.content_type, &fetched.bytes) {
            Some(DocumentKind::Manifest) => {
                let manifest: Manifest = serde_json::from_slice(&fetched.bytes).map_err(|e| {
                    reg.protocol(format!("malformed manifest {}: {e}", fetched.digest))
                })?;
                return Ok(Resolved {
                    manifest,
                    manifest_bytes: fetched.bytes,
                    digest: fetched.digest,
                    from_index,
                });
            }
            Some(DocumentKind::Index) => {
                let index: ImageIndex = serde_json::from_slice(&fetched.bytes).map_err(|e| {
                    reg.protocol(format!("malformed image index {}: {e}", fetched.digest))
                })?;
                let Some(child) = platform.select(&index.manifests) else {
                    let avail = oci::available_platforms(&index.manifests);
                    return Err(RegistryError::NoPlatform {
                        want: platform.to_string(),
                        available: if avail.is_empty() {
                            "none".into()
                        } else {
                            avail.join(", ")
                        },
                    });
                };
                digest_hex(&child.digest).map_err(|_| {
                    reg.protocol(format!("index entry with invalid digest {:?}", child.digest))
                })?;
                if child.size > MAX_DOCUMENT {
                    return Err(reg.protocol(format!(
                        "index entry {} claims {} bytes, more than {MAX_DOCUMENT}",
                        child.digest, child.size
                    )));
                }
                let child = child.clone();
                fetched = fetch_manifest(reg, r, &child.digest, scopes)?;
                if fetched.bytes.len() as u64 != child.size {
                    return Err(reg.protocol(format!(
                        "manifest {} is {} bytes, the index says {}",
                        child.digest,
                        fetched.bytes.len(),
                        child.size
                    )));
                }
                from_index = true;
            }
            Some(DocumentKind::Schema1) => {
                return Err(RegistryError::Unsupported(format!(
                    "{} is a Docker schema 1 image, which vessel does not support (it is deprecated; push it again with a current Docker or skopeo)",
                    shown(r)
                )))
            }
            None => {
                return Err(RegistryError::Unsupported(format!(
                    "{} is not a container image (content type {:?})",
                    shown(r),
                    fetched.content_type
                )))
            }
        }
    }
    Err(reg.protocol("image indexes nested more than 4 deep"))
}

/// Check a manifest's descriptors before anything is downloaded.
pub fn check_manifest(reg: &Registry, m: &Manifest) -> Result<(), RegistryError> {
    if !oci::is_config_media_type(&m.config.media_type) {
        return Err(RegistryError::Unsupported(format!(
            "not a container image: config media type {:?}",
            m.config.media_type
        )));
    }
    if m.config.size > MAX_DOCUMENT {
        return Err(reg.protocol(format!(
            "image config {} claims {} bytes, more than {MAX_DOCUMENT}",
            m.config.digest, m.config.size
        )));
    }
    for d in std::iter::once(&m.config).chain(&m.layers) {
        digest_hex(&d.digest)
            .map_err(|_| reg.protocol(format!("descriptor with invalid digest {:?}", d.digest)))?;
    }
    for l in &m.layers {
        if !oci::is_supported_layer(&l.media_type) {
            return Err(RegistryError::Unsupported(format!(
                "layer {} has unsupported media type {:?}",
                l.digest, l.media_type
            )));
        }
    }
    Ok(())
}

/// Progress of one blob, throttled.
struct Meter<'a> {
    events: &'a dyn EventSink,
    digest: &'a str,
    total: u64,
    report: bool,
    last_bytes: u64,
    last_time: Instant,
}

impl Meter<'_> {
    fn update(&mut self, current: u64) {
        if !self.report {
            return;
        }
        if current - self.last_bytes.min(current) >= PROGRESS_BYTES
            || self.last_time.elapsed() >= PROGRESS_INTERVAL
            || current == self.total
        {
            self.last_bytes = current;
            self.last_time = Instant::now();
            self.events.emit(TransferEvent::Progress {
                digest: self.digest.to_string(),
                current,
                total: self.total,
            });
        }
    }
}

/// Make sure blob `d` of repository `r` is in the store. Returns whether it
/// was already there (or fetched by a concurrent pull).
pub fn fetch_blob(
    store: &Store,
    reg: &Registry,
    r: &Reference,
    d: &Descriptor,
    scopes: &[String],
    events: &dyn EventSink,
    report: bool,
) -> Result<bool, RegistryError> {
    if store.has_blob(&d.digest) {
        return Ok(true);
    }
    let hex = digest_hex(&d.digest)?.to_string();
    let ingest = store.home().content_dir().join("ingest");
    fs::create_dir_all(&ingest).map_err(io_err(&ingest))?;
    let lock_path = ingest.join(format!("{hex}.lock"));
    let _lock = Flock::exclusive(&lock_path)?;
    if store.has_blob(&d.digest) {
        return Ok(true); // another pull fetched it while we waited
    }
    // Named after the blob, so none is left behind by a failure (a
    // `.partial` is kept only when a resumable transfer broke off).
    let _unlink = RemoveOnDrop(lock_path.clone());
    let partial = ingest.join(format!("{hex}.partial"));
    let mut meter = Meter {
        events,
        digest: &d.digest,
        total: d.size,
        report,
        last_bytes: 0,
        last_time: Instant::now(),
    };
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        match download(reg, r, d, scopes, &partial, &mut meter, events) {
            Ok(()) => break Ok(()),
            Err(e @ RegistryError::Connect { .. }) if attempt < ATTEMPTS && !events.cancelled() => {
                eprintln!("vessel-images: retrying blob {}: {}", d.digest, e.message());
                std::thread::sleep(Duration::from_millis(500 * attempt as u64));
            }
            Err(e) => break Err(e),
        }
    };
    result?;
    store.adopt_verified_file(&partial, &d.digest)?;
    let _ = fs::remove_file(&partial);
    Ok(false)
}

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Hash what an earlier attempt left in `partial` (if it can be resumed).
fn resume_state(partial: &Path, size: u64) -> (u64, Sha256) {
    let mut hasher = Sha256::new();
    let Ok(mut f) = File::open(partial) else {
        return (0, hasher);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 || len >= size {
        return (0, Sha256::new());
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                hasher.update(&buf[..k]);
                n += k as u64;
            }
            Err(_) => return (0, Sha256::new()),
        }
    }
    if n != len {
        return (0, Sha256::new());
    }
    (n, hasher)
}

/// A write to `partial` failed on the host's side (a full disk): delete it,
/// since keeping it would only hold on to the space; the error to return.
fn discard(file: File, partial: &Path, e: io::Error) -> RegistryError {
    drop(file);
    let _ = fs::remove_file(partial);
    io_err(partial)(e)
}

/// Download (or resume) blob `d` into `partial` and verify it.
fn download(
    reg: &Registry,
    r: &Reference,
    d: &Descriptor,
    scopes: &[String],
    partial: &PathBuf,
    meter: &mut Meter<'_>,
    events: &dyn EventSink,
) -> Result<(), RegistryError> {
    let (mut have, mut hasher) = resume_state(partial, d.size);
    let path = format!("/v2/{}/blobs/{}", r.path, d.digest);
    let what = r.repository();
    let range = format!("bytes={have}-");
    let headers: Vec<(&str, &str)> = if have > 0 {
        vec![("Range", range.as_str())]
    } else {
        vec![]
    };
    let resp = reg.request("GET", &path, scopes, &headers, Body::Empty, &what)?;
    let status = resp.status();
    let mut file = match status {
        206 if have > 0 && content_range_start(resp.header("content-range")) == Some(have) => {
            let mut f = OpenOptions::new()
                .write(true)
                .open(partial)
                .map_err(io_err(partial))?;
            f.seek(SeekFrom::Start(have)).map_err(io_err(partial))?;
            f
        }
        200..=299 => {
            have = 0;
            hasher = Sha256::new();
            File::create(partial).map_err(io_err(partial))?
        }
        404 => {
            let _ = read_small(resp);
            return Err(RegistryError::NotFound(format!(
                "blob unknown: {} has no blob {}",
                what, d.digest
            )));
        }
        416 => {
            // The partial file is not a prefix the registry knows: restart.
            let _ = read_small(resp);
            let _ = fs::remove_file(partial);
            return Err(RegistryError::Connect {
                host: reg.domain.clone(),
                message: format!("range request for blob {} refused; restarting", d.digest),
            });
        }
        code => return Err(reg.status_error(code, resp, &what)),
    };
    meter.update(have);
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if events.cancelled() {
            return Err(RegistryError::Cancelled);
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = file.sync_all();
                return Err(RegistryError::Connect {
                    host: reg.domain.clone(),
                    message: format!("reading blob {}: {e}", d.digest),
                });
            }
        };
        if have + n as u64 > d.size {
            drop(file);
            let _ = fs::remove_file(partial);
            return Err(reg.protocol(format!(
                "blob {} is larger than the {} bytes its descriptor says",
                d.digest, d.size
            )));
        }
        hasher.update(&buf[..n]);
        if let Err(e) = file.write_all(&buf[..n]) {
            return Err(discard(file, partial, e));
        }
        have += n as u64;
        meter.update(have);
    }
    if let Err(e) = file.sync_all() {
        return Err(discard(file, partial, e));
    }
    drop(file);
    if have < d.size {
        return Err(RegistryError::Connect {
            host: reg.domain.clone(),
            message: format!("blob {} ended after {have} of {} bytes", d.digest, d.size),
        });
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != d.digest {
        let _ = fs::remove_file(partial);
        return Err(RegistryError::DigestMismatch {
            what: "blob",
            expected: d.digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
pub fn content_range_start(h: Option<&str>) -> Option<u64> {
    let v = h?.trim().strip_prefix("bytes")?.trim_start();
    v.split('-').next()?.trim().parse().ok()
}

/// Pull `reference` into the store and the index (without building the
/// ext4 base). Emits `Resolved`, `Progress` and `BlobDone`.
pub fn pull(
    store: &Store,
    reference: &str,
    opts: &TransferOptions,
    events: &dyn EventSink,
) -> Result<Pulled, RegistryError> {
    let r = Reference::parse(reference)
        .map_err(|e| RegistryError::BadRequest(vessel_api::error::error_chain(&e)))?;
    let platform = opts.platform.clone().unwrap_or_else(PlatformSpec::host);
    let reg = Registry::connect(store.home(), &r.domain, opts.tls_verify, opts.auth.clone())?;
    let scopes = vec![repo_scope(&r.path, "pull")];
    let resolved = resolve(&reg, &r, &platform, &scopes)?;
    let m = &resolved.manifest;
    check_manifest(&reg, m)?;

    let mut layers: Vec<BlobInfo> = Vec::new();
    for l in &m.layers {
        if !layers.iter().any(|b| b.digest == l.digest) {
            layers.push(BlobInfo {
                digest: l.digest.clone(),
                size: l.size,
            });
        }
    }
    events.emit(TransferEvent::Resolved {
        reference: r.to_string(),
        digest: resolved.digest.clone(),
        layers: layers.clone(),
    });

    // The config first: it is small and says what the layers must be.
    let mut jobs: Vec<(Descriptor, bool)> = vec![(m.config.clone(), false)];
    for l in &m.layers {
        if !jobs.iter().any(|(d, _)| d.digest == l.digest) {
            jobs.push((l.clone(), true));
        }
    }
    // A lease keeps a concurrent `image rm`/`prune` from collecting these
    // blobs (new or already present) until the index refers to them.
    let lease = store.lease()?;
    lease.protect(&resolved.digest)?;
    for (d, _) in &jobs {
        lease.protect(&d.digest)?;
    }
    // Up to three tries, should blobs still vanish before the index update.
    let mut tries = 0;
    let mut previous = None;
    let record = loop {
        tries += 1;
        run_parallel(&jobs, PARALLEL, |(d, is_layer)| {
            if events.cancelled() {
                return Err(RegistryError::Cancelled);
            }
            let skipped = fetch_blob(store, &reg, &r, d, &scopes, events, *is_layer)?;
            if *is_layer {
                events.emit(TransferEvent::BlobDone {
                    digest: d.digest.clone(),
                    skipped,
                });
            }
            Ok(())
        })?;
        let config_bytes = store.read_blob(&m.config.digest)?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(|e| {
            reg.protocol(format!("malformed image config {}: {e}", m.config.digest))
        })?;
        check_config(&r, &config, m, opts.platform.as_ref(), resolved.from_index)?;
        let record = ImageRecord {
            manifest: resolved.digest.clone(),
            config: m.config.digest.clone(),
            created: config.created.clone(),
            size: m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>(),
        };
        let key = r.to_string();
        let added = store.update_index(|index| -> Result<bool, RegistryError> {
            let all_there = jobs.iter().all(|(d, _)| store.has_blob(&d.digest));
            if !all_there {
                return Ok(false);
            }
            previous = index.images.get(&key).cloned();
            // The manifest is stored byte for byte, so its digest is the
            // registry's and a push sends the same document back.
            let mut data = &resolved.manifest_bytes[..];
            store.write_blob(&mut data, Some(&resolved.digest))?;
            index.images.insert(key.clone(), record.clone());
            Ok(true)
        })?;
        if added {
            break record;
        }
        if tries >= 3 {
            return Err(RegistryError::Protocol {
                host: reg.domain.clone(),
                message: "blobs were removed while the image was being pulled; try again".into(),
            });
        }
    };
    drop(lease);
    Ok(Pulled {
        image: ImageSummary {
            reference: r.to_string(),
            id: record.config.clone(),
            digest: record.manifest.clone(),
            created: record.created.clone(),
            size: record.size,
        },
        record,
        previous,
    })
}

/// A pulled image, recorded in the index.
pub struct Pulled {
    pub image: ImageSummary,
    pub record: ImageRecord,
    /// What the reference named before the pull, if anything.
    pub previous: Option<ImageRecord>,
}

impl Pulled {
    /// Undo the index change (the image turned out unusable): the reference
    /// names what it named before, unless someone changed it since.
    pub fn revert(&self, store: &Store) -> Result<(), RegistryError> {
        if self.previous.as_ref() == Some(&self.record) {
            return Ok(());
        }
        store.update_index(|index| -> Result<(), RegistryError> {
            let key = &self.image.reference;
            if index.images.get(key) == Some(&self.record) {
                match &self.previous {
                    Some(p) => index.images.insert(key.clone(), p.clone()),
                    None => index.images.remove(key),
                };
            }
            Ok(())
        })
    }
}

/// Check the config against the manifest and the platform asked for.
fn check_config(
    r: &Reference,
    config: &ImageConfig,
    m: &Manifest,
    platform: Option<&PlatformSpec>,
    from_index: bool,
) -> Result<(), RegistryError> {
    if let Some(rootfs) = &config.rootfs {
        if rootfs.diff_ids.len() != m.layers.len() {
            return Err(RegistryError::Protocol {
                host: r.domain.clone(),
                message: format!(
                    "image config lists {} layers, the manifest {}",
                    rootfs.diff_ids.len(),
                    m.layers.len()
                ),
            });
        }
    }
    if let (Some(want), false) = (platform, from_index) {
        let have = oci::Platform {
            architecture: config.architecture.clone(),
            os: config.os.clone(),
            variant: None,
        };
        if !config.architecture.is_empty()
            && !want.matches(&oci::Platform {
                variant: want.variant.clone(),
                ..have.clone()
            })
        {
            return Err(RegistryError::NoPlatform {
                want: want.to_string(),
                available: have.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::CollectEvents;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use vessel_api::paths::Home;

    /// A registry that answers each request with the canned response of the
    /// first route whose key occurs in the request line (else 404).
    fn fake_registry(routes: Vec<(String, Vec<u8>)>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut r = BufReader::new(c.try_clone().unwrap());
                // TLS first (loopback is tried over HTTPS): hang up.
                if r.fill_buf()
                    .map(|b| b.first() == Some(&0x16))
                    .unwrap_or(true)
                {
                    continue;
                }
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let resp = routes
                    .iter()
                    .find(|(k, _)| line.contains(k.as_str()))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| response("404 Not Found", "", b"{}"));
                let _ = c.write_all(&resp);
            }
        });
        addr
    }

    fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut v = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
            body.len()
        )
        .into_bytes();
        v.extend_from_slice(body);
        v
    }

    fn ok_json(body: &[u8]) -> Vec<u8> {
        response("200 OK", "Content-Type: application/json\r\n", body)
    }

    fn try_pull(
        routes: Vec<(String, Vec<u8>)>,
        platform: Option<&str>,
    ) -> (RegistryError, tempfile::TempDir) {
        let mut routes = routes;
        routes.push(("GET /v2/ ".into(), ok_json(b"{}")));
        let addr = fake_registry(routes);
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = Store::open(&home).unwrap();
        let opts = TransferOptions {
            platform: platform.map(|p| PlatformSpec::parse(p).unwrap()),
            tls_verify: true,
            auth: None,
        };
        let events = CollectEvents::default();
        let err = pull(&store, &format!("{addr}/t/img:v1"), &opts, &events)
            .err()
            .expect("the pull should fail");
        assert!(store.read_index().unwrap().images.is_empty());
        (err, dir)
    }

    fn manifest_with(config: &[u8], layer_mt: &str, layer_digest: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::MT_OCI_MANIFEST,
            "config": {"mediaType": oci::MT_OCI_CONFIG, "digest": sha256_digest(config), "size": config.len()},
            "layers": [{"mediaType": layer_mt, "digest": layer_digest, "size": 10}],
        }))
        .unwrap()
    }

    #[test]
    fn hostile_registry_answers_are_errors_not_panics() {
        let m = "/manifests/v1 ".to_string();
        let (e, _) = try_pull(
            vec![(
                m.clone(),
                response("200 OK", "Content-Type: text/html\r\n", b"<html>"),
            )],
            None,
        );
        assert!(e.to_string().contains("not a container image"), "{e}");

        let idx = serde_json::json!({"schemaVersion": 2, "mediaType": oci::MT_OCI_INDEX, "manifests": [
            {"mediaType": oci::MT_OCI_MANIFEST, "digest": sha256_digest(b"x"), "size": 1,
             "platform": {"os": "linux", "architecture": "ppc64le"}}]});
        let (e, _) = try_pull(
            vec![(m.clone(), ok_json(&serde_json::to_vec(&idx).unwrap()))],
            Some("linux/arm64"),
        );
        assert_eq!(
            e.to_string(),
            "no image for platform linux/arm64 in index (available: linux/ppc64le)"
        );

        let (e, _) = try_pull(
            vec![(
                m.clone(),
                ok_json(&manifest_with(
                    b"{}",
                    oci::MT_OCI_LAYER_GZIP,
                    "sha256:../../../etc/passwd",
                )),
            )],
            None,
        );
        assert!(e.to_string().contains("invalid digest"), "{e}");

        let (e, _) = try_pull(
            vec![(
                m.clone(),
                ok_json(&manifest_with(
                    b"{}",
                    "application/x-evil",
                    &sha256_digest(b"l"),
                )),
            )],
            None,
        );
        assert!(e.to_string().contains("unsupported media type"), "{e}");

        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{",
            MAX_DOCUMENT + 1
        );
        let (e, _) = try_pull(vec![(m.clone(), big.into_bytes())], None);
        assert!(e.to_string().contains("more than"), "{e}");

        let (e, _) = try_pull(
            vec![(m.clone(), ok_json(b"{\"schemaVersion\":1,\"fsLayers\":[]}"))],
            None,
        );
        assert!(e.to_string().contains("schema 1"), "{e}");

        // A config blob longer than its descriptor; nothing is kept.
        let config = b"{}";
        let man = manifest_with(config, oci::MT_OCI_LAYER_GZIP, &sha256_digest(b"l"));
        let (e, dir) = try_pull(
            vec![
                (m.clone(), ok_json(&man)),
                (
                    format!("/blobs/{}", sha256_digest(config)),
                    response("200 OK", "", b"{}{}{}"),
                ),
                ("/blobs/".into(), response("200 OK", "", b"l")),
            ],
            None,
        );
        assert!(e.to_string().contains("larger than"), "{e}");
        // Only a resumable `.partial` of the short layer may stay behind.
        let home = Home::new(dir.path());
        let ingest = home.content_dir().join("ingest");
        for e in fs::read_dir(&ingest).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(name.ends_with(".partial"), "{name} left in ingest");
        }
        let blobs = home.content_dir().join("blobs/sha256");
        assert_eq!(fs::read_dir(&blobs).unwrap().count(), 0, "no blob kept");

        // A manifest whose bytes do not match the digest the registry claims.
        let (e, _) = try_pull(
            vec![(
                m.clone(),
                response(
                    "200 OK",
                    &format!("Docker-Content-Digest: {}\r\n", sha256_digest(b"other")),
                    &man,
                ),
            )],
            None,
        );
        assert!(
            e.to_string().starts_with("digest mismatch for manifest"),
            "{e}"
        );

        // 401 without a usable challenge; 500 with a registry error body.
        let (e, _) = try_pull(
            vec![(
                m.clone(),
                response("401 Unauthorized", "WWW-Authenticate: Negotiate\r\n", b""),
            )],
            None,
        );
        assert!(
            e.to_string()
                .starts_with("unauthorized: authentication required"),
            "{e}"
        );
        let (e, _) = try_pull(
            vec![(
                m,
                response(
                    "500 Oops",
                    "",
                    br#"{"errors":[{"code":"X","message":"boom"}]}"#,
                ),
            )],
            None,
        );
        assert!(e.to_string().contains("X: boom"), "{e}");
    }

    #[test]
    fn content_ranges() {
        assert_eq!(content_range_start(Some("bytes 100-199/200")), Some(100));
        assert_eq!(content_range_start(Some("bytes 0-0/*")), Some(0));
        assert_eq!(content_range_start(Some("items 1-2")), None);
        assert_eq!(content_range_start(None), None);
    }
}
