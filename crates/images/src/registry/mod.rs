//! A client of the OCI distribution protocol (registry API v2): pull, push
//! and login checks, for `vessel-images`.
//!
//! - [`tls`]: which scheme and TLS settings a registry gets (system roots
//!   plus `certs.d` CAs; loopback and `registries.json` hosts insecure).
//! - [`auth`]: `WWW-Authenticate` challenges, bearer tokens, basic auth.
//! - [`client`]: one registry connection with its auth state.
//! - [`pull`] and [`push`]: the transfers, reporting [`TransferEvent`]s.
//! - [`routes`]: the HTTP routes of the image helper that use them.
//!
//! Everything a registry sends is untrusted: documents are size-limited,
//! every blob is hashed before it becomes visible in the store, and
//! malformed answers are errors, never panics.

pub mod auth;
pub mod client;
pub mod pull;
pub mod push;
pub mod routes;
pub mod tls;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use vessel_api::error::{error_chain, ErrorBody, ErrorKind};
use vessel_api::types::TransferEvent;

use crate::ext4::Ext4Error;
use crate::store::StoreError;

pub use client::Registry;

/// Errors of registry operations. Messages are shown to users as they are.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("denied: {0}")]
    Denied(String),
    #[error("manifest unknown: {0} not found")]
    ManifestUnknown(String),
    #[error("{0}")]
    NotFound(String),
    #[error("digest mismatch for {what} {expected}: registry sent {actual}")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("no image for platform {want} in index (available: {available})")]
    NoPlatform { want: String, available: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot connect to registry {host}: {message}")]
    Connect { host: String, message: String },
    #[error("registry {host}: {message}")]
    Protocol { host: String, message: String },
    #[error("toomanyrequests: {0}")]
    TooManyRequests(String),
    #[error("Content store error")]
    Store(#[from] StoreError),
    #[error("Cannot build the image's root filesystem")]
    Ext4(#[from] Ext4Error),
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cancelled: the client went away")]
    Cancelled,
    #[error(transparent)]
    Image(#[from] crate::images::ImagesError),
}

impl RegistryError {
    /// The kind of error this is, in an answer or an `error` event.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::BadRequest(_) => ErrorKind::InvalidArgument,
            RegistryError::Unauthorized(_) => ErrorKind::Unauthorized,
            RegistryError::Denied(_) => ErrorKind::Denied,
            RegistryError::ManifestUnknown(_) => ErrorKind::ImageNotFound,
            RegistryError::NotFound(_) => ErrorKind::NotFound,
            RegistryError::Connect { .. }
            | RegistryError::Protocol { .. }
            | RegistryError::DigestMismatch { .. } => ErrorKind::RegistryError,
            RegistryError::TooManyRequests(_) => ErrorKind::TooManyRequests,
            RegistryError::Image(e) => e.kind(),
            _ => ErrorKind::Internal,
        }
    }

    /// The message with its sources.
    pub fn message(&self) -> String {
        error_chain(self)
    }

    /// The error answer for this error.
    pub fn body(&self) -> ErrorBody {
        let body = ErrorBody::new(self.kind(), self.message());
        match self {
            RegistryError::Image(e) => match e.name() {
                Some(n) => body.with_name(n),
                None => body,
            },
            _ => body,
        }
    }
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `e` comes from a full disk (or quota) anywhere in its chain.
fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Where a transfer reports its progress.
pub trait EventSink: Sync {
    fn emit(&self, event: TransferEvent);
    /// Has the receiver gone away (the transfer should stop)?
    fn cancelled(&self) -> bool {
        false
    }
}

/// A sink that drops every event.
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _: TransferEvent) {}
}

/// A sink collecting events in memory (tests, callers that report later).
#[derive(Default)]
pub struct CollectEvents {
    pub events: std::sync::Mutex<Vec<TransferEvent>>,
    pub cancel: AtomicBool,
}

impl EventSink for CollectEvents {
    fn emit(&self, event: TransferEvent) {
        if let Ok(mut v) = self.events.lock() {
            v.push(event);
        }
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Options of a pull or push.
#[derive(Debug, Clone, Default)]
pub struct TransferOptions {
    /// The platform asked for; `None`: the host's (and no check of a
    /// single-platform image).
    pub platform: Option<crate::oci::PlatformSpec>,
    /// `false`: skip TLS verification and allow plain HTTP for this registry.
    pub tls_verify: bool,
    pub auth: Option<vessel_api::types::RegistryAuth>,
}

impl crate::images::Images {
    /// Pull `reference` from its registry, record it, and build its ext4
    /// base (reporting `Status "unpacking"`), so a later run has no unpack
    /// work. Emits every event but the final `done`/`error`.
    pub fn pull(
        &self,
        reference: &str,
        opts: &TransferOptions,
        events: &dyn EventSink,
    ) -> Result<vessel_api::types::ImageSummary, RegistryError> {
        let pulled = match pull::pull(self.store(), reference, opts, events) {
            Ok(p) => p,
            Err(e) => {
                if disk_full(&e) {
                    // What this pull verified before the disk filled up
                    // would only keep it full: free it now, not at the
                    // next `rm` or `prune`.
                    let _ = self.store().collect(&Default::default());
                }
                return Err(e);
            }
        };
        let image = pulled.image.clone();
        // The pull is done once every blob is verified and the image is
        // listed. Its ext4 base is built right away in the background, so
        // the pull costs no more than the transfer; a `vessel run` that
        // comes before the base is ready waits on the base's lock in
        // `ensure_rootfs` and never unpacks twice.
        let images = self.clone();
        let spawned = std::thread::Builder::new()
            .name("unpack".into())
            .spawn(move || images.build_base_after_pull(&pulled));
        if let Err(e) = spawned {
            eprintln!("vessel-images: cannot start the unpack thread: {e}");
        }
        Ok(image)
    }

    /// Build the ext4 base of a freshly pulled image. An image whose layers
    /// are refused (a hostile or oversized layer) is not kept under its
    /// name; its blobs go at the next collection, and a `vessel run` of it
    /// reports why. The base is built from the pulled record, not from
    /// whatever the reference names by now: the image may have been removed
    /// (its blobs collected) or named again by a load or tag in the
    /// meantime, and neither is a reason to unlist anything.
    fn build_base_after_pull(&self, pulled: &pull::Pulled) {
        let e = match self.ensure_base(&pulled.record) {
            Ok(_) => {
                // Removed while being built (a collection skips a build in
                // progress): collect its base now rather than at the next
                // `rm` or `prune`.
                let orphan = self
                    .store()
                    .read_index()
                    .is_ok_and(|ix| !ix.images.values().any(|r| r.config == pulled.record.config));
                if orphan {
                    let _ = self.store().collect(&Default::default());
                }
                return;
            }
            Err(e) => e,
        };
        let still_listed = self
            .store()
            .read_index()
            .map(|ix| ix.images.get(&pulled.image.reference) == Some(&pulled.record))
            .unwrap_or(false);
        if !still_listed {
            return; // removed (or renamed) while its base was being built
        }
        eprintln!(
            "vessel-images: cannot build the root filesystem of {}: {}",
            pulled.image.reference,
            error_chain(&e)
        );
        if !e.refuses_content() {
            return; // a host problem (disk full, mkfs): a later run retries
        }
        if let Err(r) = pulled.revert(self.store()) {
            eprintln!(
                "vessel-images: cannot unlist {}: {}",
                pulled.image.reference,
                r.message()
            );
        }
    }

    /// Push the local image `reference` to the registry it names.
    pub fn push(
        &self,
        reference: &str,
        opts: &TransferOptions,
        events: &dyn EventSink,
    ) -> Result<vessel_api::types::ImageSummary, RegistryError> {
        let target = crate::reference::Reference::parse(reference)
            .map_err(|e| RegistryError::BadRequest(error_chain(&e)))?;
        let found = self.lookup(reference)?;
        push::push(self.store(), &found.record, &target, opts, events)
    }

    /// Check that `server` accepts `auth` (`vessel registry login`).
    pub fn registry_login(
        &self,
        server: &str,
        tls_verify: bool,
        auth: Option<vessel_api::types::RegistryAuth>,
    ) -> Result<(), RegistryError> {
        let domain = client::normalize_server(server)?;
        if !auth::has_credentials(&auth) {
            return Err(RegistryError::BadRequest(
                "login needs a username and a password".into(),
            ));
        }
        let reg = Registry::connect(self.store().home(), &domain, tls_verify, auth)?;
        reg.check_login()
    }
}

/// Run `f` on every item of `jobs` with up to `threads` threads; stops
/// starting new jobs after the first error, which is returned.
pub(crate) fn run_parallel<T: Sync>(
    jobs: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<(), RegistryError> + Sync,
) -> Result<(), RegistryError> {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<RegistryError>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let worker = || loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = jobs.get(i) else { return };
        if let Err(e) = f(job) {
            stop.store(true, Ordering::Relaxed);
            let mut slot = failed.lock().unwrap_or_else(|p| p.into_inner());
            // Keep the first real error, not a later "cancelled".
            if slot.is_none() {
                *slot = Some(e);
            }
            return;
        }
    };
    let n = threads.clamp(1, jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 1..n {
            s.spawn(worker);
        }
        worker();
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_runs_all_and_reports_the_error() {
        let jobs: Vec<u32> = (0..20).collect();
        let sum = std::sync::atomic::AtomicU32::new(0);
        run_parallel(&jobs, 4, |j| {
            sum.fetch_add(*j, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        assert_eq!(sum.load(Ordering::Relaxed), 190);
        let err = run_parallel(&jobs, 4, |j| {
            if *j == 3 {
                Err(RegistryError::BadRequest("three".into()))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "three");
        run_parallel(&Vec::<u32>::new(), 4, |_| Ok(())).unwrap();
    }

    /// A failed pull's error comes back only once every download it started
    /// has ended (and given back the space it wrote), and none starts after.
    #[test]
    fn parallel_error_returns_after_every_started_job_ended() {
        use std::sync::atomic::AtomicU32;
        let jobs: Vec<u32> = (0..8).collect();
        let (started, ended) = (AtomicU32::new(0), AtomicU32::new(0));
        let err = run_parallel(&jobs, 4, |j| {
            started.fetch_add(1, Ordering::SeqCst);
            if *j == 0 {
                // Fail once the other three downloads are under way.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while started.load(Ordering::SeqCst) < 4 && std::time::Instant::now() < deadline {
                    std::thread::yield_now();
                }
                ended.fetch_add(1, Ordering::SeqCst);
                return Err(RegistryError::BadRequest("disk full".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
            ended.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        let (s, e) = (started.load(Ordering::SeqCst), ended.load(Ordering::SeqCst));
        assert_eq!(
            s, e,
            "{s} jobs started, only {e} ended when the error came back"
        );
        assert_eq!(s, 4, "the three under way, and none after the failure");
    }

    /// An image imported from a one-file tar, as a pull would have left it.
    fn pulled(
        images: &crate::images::Images,
        dir: &std::path::Path,
        name: &str,
        size: usize,
    ) -> pull::Pulled {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "file", &vec![7u8; size][..]).unwrap();
        let src = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
        std::fs::write(&src, b.into_inner().unwrap()).unwrap();
        let image = images.import(&src, name).unwrap();
        let record = images.store().read_index().unwrap().images[&image.reference].clone();
        pull::Pulled {
            image,
            record,
            previous: None,
        }
    }

    fn listed(images: &crate::images::Images, p: &pull::Pulled) -> bool {
        images
            .store()
            .read_index()
            .unwrap()
            .images
            .get(&p.image.reference)
            == Some(&p.record)
    }

    #[test]
    fn only_refused_content_unlists_a_pulled_image() {
        let dir = tempfile::tempdir().unwrap();
        let home = vessel_api::paths::Home::new(dir.path().join("home"));
        let images = crate::images::Images::open(&home).unwrap();

        // Builds: listed, base present.
        let ok = pulled(&images, dir.path(), "localhost/ok:v1", 100);
        images.build_base_after_pull(&ok);
        assert!(listed(&images, &ok));
        assert!(crate::ext4::rootfs_path(images.store(), &ok.record.config)
            .unwrap()
            .is_file());

        // Over the unpack budget: refused content, unlisted.
        let small = images.clone().with_budget(crate::unpack::Budget {
            max_bytes: 4096,
            max_inodes: 100,
        });
        let big = pulled(&small, dir.path(), "localhost/big:v1", 64 << 10);
        small.build_base_after_pull(&big);
        assert!(
            !listed(&small, &big),
            "an image that cannot unpack is unlisted"
        );

        // Removed while its base was due (blobs collected), then named again
        // with the same record (a load of the same image): the failed build
        // of the removed one must not unlist the new one.
        let gone = pulled(&images, dir.path(), "localhost/gone:v1", 101);
        images.remove(&gone.image.reference).unwrap();
        assert!(!images.store().has_blob(&gone.record.config));
        images.build_base_after_pull(&gone); // nothing listed: nothing to do
        assert!(
            !crate::ext4::rootfs_path(images.store(), &gone.record.config)
                .unwrap()
                .exists()
        );
        images
            .store()
            .update_index(|ix| -> Result<(), crate::store::StoreError> {
                ix.images
                    .insert(gone.image.reference.clone(), gone.record.clone());
                Ok(())
            })
            .unwrap();
        images.build_base_after_pull(&gone);
        assert!(listed(&images, &gone), "a host-side failure never unlists");

        // Unlisted (and collected) while its base was being built: the base
        // that build leaves is collected at once.
        let late = pulled(&images, dir.path(), "localhost/late:v1", 102);
        images
            .store()
            .update_index(|ix| -> Result<(), crate::store::StoreError> {
                ix.images.remove(&late.image.reference);
                Ok(())
            })
            .unwrap();
        images.build_base_after_pull(&late);
        let base = crate::ext4::rootfs_path(images.store(), &late.record.config).unwrap();
        assert!(!base.exists(), "orphan base collected");
        assert!(!images.store().has_blob(&late.record.config));
    }
}
