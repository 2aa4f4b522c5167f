//! `image push`: send an image's config, layers and manifest (the stored
//! bytes, so the registry computes the same digest) to a repository.
//!
//! Per blob: `HEAD` (already there: skipped); a cross-repository mount when
//! another repository of the same registry is known (from the local index)
//! to hold it; else an upload session (`POST .../blobs/uploads/`), then a
//! monolithic `PUT ?digest=` for blobs up to [`MONOLITHIC_MAX`], or `PATCH`
//! chunks with `Content-Range` and a final `PUT ?digest=` above.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::time::{Duration, Instant};
use vessel_api::types::{BlobInfo, ImageSummary, TransferEvent};

use super::auth::repo_scope;
use super::client::{add_query, drain, resolve_location, Body, Registry};
use super::{io_err, run_parallel, EventSink, RegistryError, TransferOptions};
use crate::oci::{self, Descriptor, Manifest};
use crate::reference::Reference;
use crate::store::{ImageRecord, Store};

/// Blobs up to this size are uploaded in one `PUT`.
pub const MONOLITHIC_MAX: u64 = 8 << 20;
/// Size of each `PATCH` of a chunked upload.
pub const CHUNK: u64 = 16 << 20;
/// Parallel blob uploads.
pub const PARALLEL: usize = 4;
/// Most repositories a blob is tried to be mounted from.
const MAX_MOUNT_SOURCES: usize = 3;

/// Repositories of `target`'s registry (other than its own) that the local
/// index says hold each blob: digest -> repository paths.
pub fn mount_sources(store: &Store, target: &Reference) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(index) = store.read_index() else {
        return out;
    };
    for (key, rec) in &index.images {
        let Ok(r) = Reference::parse(key) else {
            continue;
        };
        if r.domain != target.domain || r.path == target.path {
            continue;
        }
        let Ok(data) = store.read_blob(&rec.manifest) else {
            continue;
        };
        let Ok(m) = serde_json::from_slice::<Manifest>(&data) else {
            continue;
        };
        for d in std::iter::once(&m.config).chain(&m.layers) {
            let v = out.entry(d.digest.clone()).or_default();
            if !v.contains(&r.path) && v.len() < MAX_MOUNT_SOURCES {
                v.push(r.path.clone());
            }
        }
    }
    out
}

/// Counts bytes read and reports progress.
struct Counting<'a, R> {
    inner: R,
    events: &'a dyn EventSink,
    digest: &'a str,
    done: u64,
    total: u64,
    last: Instant,
    last_bytes: u64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.events.cancelled() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done - self.last_bytes >= 1 << 20
            || self.last.elapsed() >= Duration::from_millis(100)
            || self.done == self.total
        {
            self.last = Instant::now();
            self.last_bytes = self.done;
            self.events.emit(TransferEvent::Progress {
                digest: self.digest.to_string(),
                current: self.done,
                total: self.total,
            });
        }
        Ok(n)
    }
}

enum Start {
    Mounted,
    Session(String),
}

struct Pusher<'a> {
    store: &'a Store,
    reg: &'a Registry,
    target: &'a Reference,
    scopes: Vec<String>,
    events: &'a dyn EventSink,
    what: String,
}

impl Pusher<'_> {
    fn blob_exists(&self, digest: &str) -> Result<bool, RegistryError> {
        let path = format!("/v2/{}/blobs/{digest}", self.target.path);
        let resp = self
            .reg
            .request("HEAD", &path, &self.scopes, &[], Body::Empty, &self.what)?;
        match resp.status() {
            200..=299 => Ok(true),
            404 => Ok(false),
            code => Err(self.reg.status_error(code, resp, &self.what)),
        }
    }

    fn start(&self, mount: Option<(&str, &str)>) -> Result<Start, RegistryError> {
        let mut path = format!("/v2/{}/blobs/uploads/", self.target.path);
        if let Some((digest, from)) = mount {
            path = add_query(&path, "mount", digest);
            path = add_query(&path, "from", from);
        }
        let url = self.reg.url(&path);
        let resp = self
            .reg
            .request("POST", &url, &self.scopes, &[], Body::Empty, &self.what)?;
        match resp.status() {
            201 if mount.is_some() => {
                let _ = drain(resp);
                Ok(Start::Mounted)
            }
            201 | 202 => {
                let loc = resp.header("location").map(str::to_string);
                let _ = drain(resp);
                match loc {
                    Some(l) if !l.trim().is_empty() => {
                        Ok(Start::Session(resolve_location(&url, &l)))
                    }
                    _ => Err(self
                        .reg
                        .protocol("upload session started without a Location header")),
                }
            }
            code => Err(self.reg.status_error(code, resp, &self.what)),
        }
    }

    fn open(&self, d: &Descriptor) -> Result<File, RegistryError> {
        let f = self.store.open_blob(&d.digest)?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len != d.size {
            return Err(RegistryError::BadRequest(format!(
                "blob {} is {len} bytes in the store, the manifest says {}",
                d.digest, d.size
            )));
        }
        Ok(f)
    }

    fn counting<'b, R: Read>(
        &'b self,
        inner: R,
        d: &'b Descriptor,
        done: u64,
        report: bool,
    ) -> Counting<'b, R> {
        Counting {
            inner,
            events: if report {
                self.events
            } else {
                &super::NoEvents
            },
            digest: &d.digest,
            done,
            total: d.size,
            last: Instant::now(),
            last_bytes: done,
        }
    }

    fn finish(&self, loc: &str, d: &Descriptor, body: Body<'_>) -> Result<String, RegistryError> {
        let url = add_query(loc, "digest", &d.digest);
        let resp = self.reg.request(
            "PUT",
            &url,
            &self.scopes,
            &[("Content-Type", "application/octet-stream")],
            body,
            &self.what,
        )?;
        match resp.status() {
            200..=299 => {
                let got = resp.header("docker-content-digest").map(str::to_string);
                let _ = drain(resp);
                if let Some(g) = got.filter(|g| g.starts_with("sha256:") && *g != d.digest) {
                    return Err(RegistryError::DigestMismatch {
                        what: "uploaded blob",
                        expected: d.digest.clone(),
                        actual: g,
                    });
                }
                Ok(url)
            }
            code => Err(self.reg.status_error(code, resp, &self.what)),
        }
    }

    fn upload(&self, d: &Descriptor, loc: String, report: bool) -> Result<(), RegistryError> {
        let mut f = self.open(d)?;
        if d.size <= MONOLITHIC_MAX {
            let mut c = self.counting(&mut f, d, 0, report);
            self.finish(&loc, d, Body::Reader(&mut c, d.size))?;
            return self.check_cancel();
        }
        let mut loc = loc;
        let mut offset = 0u64;
        while offset < d.size {
            self.check_cancel()?;
            let n = CHUNK.min(d.size - offset);
            let blob = self.store.blob_path(&d.digest)?;
            f.seek(SeekFrom::Start(offset)).map_err(io_err(&blob))?;
            let range = format!("{}-{}", offset, offset + n - 1);
            let mut c = self.counting(&mut f, d, offset, report);
            let resp = self.reg.request(
                "PATCH",
                &loc,
                &self.scopes,
                &[
                    ("Content-Type", "application/octet-stream"),
                    ("Content-Range", &range),
                ],
                Body::Reader(&mut c, n),
                &self.what,
            )?;
            match resp.status() {
                200..=299 => {
                    if let Some(l) = resp.header("location").filter(|l| !l.trim().is_empty()) {
                        loc = resolve_location(&loc, l);
                    }
                    let _ = drain(resp);
                }
                code => return Err(self.reg.status_error(code, resp, &self.what)),
            }
            offset += n;
        }
        self.finish(&loc, d, Body::Empty)?;
        Ok(())
    }

    fn check_cancel(&self) -> Result<(), RegistryError> {
        if self.events.cancelled() {
            Err(RegistryError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Push one blob; returns whether it was skipped (present or mounted).
    fn push_blob(
        &self,
        d: &Descriptor,
        sources: &[String],
        report: bool,
    ) -> Result<bool, RegistryError> {
        self.check_cancel()?;
        if self.blob_exists(&d.digest)? {
            return Ok(true);
        }
        let mut session = None;
        for src in sources {
            match self.start(Some((&d.digest, src))) {
                Ok(Start::Mounted) => return Ok(true),
                Ok(Start::Session(loc)) => {
                    session = Some(loc);
                    break;
                }
                // A refused mount is not fatal: upload instead.
                Err(e @ RegistryError::Connect { .. }) => return Err(e),
                Err(_) => continue,
            }
        }
        let loc = match session {
            Some(l) => l,
            None => match self.start(None)? {
                Start::Session(l) => l,
                Start::Mounted => return Ok(true),
            },
        };
        self.upload(d, loc, report)?;
        Ok(false)
    }
}

/// Push the image `record` (known locally as `key`) to `target`.
pub fn push(
    store: &Store,
    record: &ImageRecord,
    target: &Reference,
    opts: &TransferOptions,
    events: &dyn EventSink,
) -> Result<ImageSummary, RegistryError> {
    let manifest_bytes = store.read_blob(&record.manifest)?;
    let m: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        RegistryError::BadRequest(format!(
            "stored manifest {} is malformed: {e}",
            record.manifest
        ))
    })?;
    if let Some(d) = &target.digest {
        if *d != record.manifest {
            return Err(RegistryError::BadRequest(format!(
                "{target} names digest {d}, but the local image's manifest is {}",
                record.manifest
            )));
        }
    }
    let sources = mount_sources(store, target);
    let mut scopes = vec![repo_scope(&target.path, "pull,push")];
    let mut src_repos: BTreeSet<&String> = BTreeSet::new();
    for d in std::iter::once(&m.config).chain(&m.layers) {
        if let Some(v) = sources.get(&d.digest) {
            src_repos.extend(v.iter());
        }
    }
    scopes.extend(src_repos.iter().take(8).map(|p| repo_scope(p, "pull")));
    let reg = Registry::connect(
        store.home(),
        &target.domain,
        opts.tls_verify,
        opts.auth.clone(),
    )?;
    let p = Pusher {
        store,
        reg: &reg,
        target,
        scopes,
        events,
        what: target.repository(),
    };

    let mut layers: Vec<BlobInfo> = Vec::new();
    let mut jobs: Vec<(Descriptor, bool)> = vec![(m.config.clone(), false)];
    for l in &m.layers {
        if !layers.iter().any(|b| b.digest == l.digest) {
            layers.push(BlobInfo {
                digest: l.digest.clone(),
                size: l.size,
            });
            jobs.push((l.clone(), true));
        }
    }
    events.emit(TransferEvent::Resolved {
        reference: target.to_string(),
        digest: record.manifest.clone(),
        layers,
    });
    run_parallel(&jobs, PARALLEL, |(d, is_layer)| {
        let srcs = sources.get(&d.digest).cloned().unwrap_or_default();
        let skipped = p.push_blob(d, &srcs, *is_layer)?;
        if *is_layer {
            events.emit(TransferEvent::BlobDone {
                digest: d.digest.clone(),
                skipped,
            });
        }
        Ok(())
    })?;

    events.emit(TransferEvent::Status {
        message: "pushing manifest".into(),
    });
    let media_type = oci::manifest_media_type(&manifest_bytes);
    let reference = target
        .tag
        .clone()
        .unwrap_or_else(|| record.manifest.clone());
    let path = format!("/v2/{}/manifests/{reference}", target.path);
    let resp = reg.request(
        "PUT",
        &path,
        &p.scopes,
        &[("Content-Type", &media_type)],
        Body::Bytes(&manifest_bytes),
        &p.what,
    )?;
    match resp.status() {
        200..=299 => {
            let got = resp.header("docker-content-digest").map(str::to_string);
            let _ = drain(resp);
            if let Some(g) = got.filter(|g| g.starts_with("sha256:") && *g != record.manifest) {
                return Err(RegistryError::DigestMismatch {
                    what: "pushed manifest",
                    expected: record.manifest.clone(),
                    actual: g,
                });
            }
        }
        code => return Err(reg.status_error(code, resp, &p.what)),
    }
    Ok(ImageSummary {
        reference: target.to_string(),
        id: record.config.clone(),
        digest: record.manifest.clone(),
        created: record.created.clone(),
        size: record.size,
    })
}
