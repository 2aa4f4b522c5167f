//! The content store and the image index.
//!
//! ```text
//! content/blobs/sha256/<hex>   verified blobs, immutable
//! content/ingest/<random>      blobs being written (hashed while written)
//! images/index.json            normalized reference -> image record
//! images/.lock                 flock guarding index.json across processes
//! ```
//!
//! A blob becomes visible only once its bytes hash to its digest: writes go
//! to `ingest/`, are fsynced and renamed into `blobs/`. The index is
//! rewritten atomically under a process-wide mutex plus an flock, so two
//! processes (or threads) never lose each other's updates. Registry pull
//! needs only [`Store::lease`], [`Store::write_blob`] and
//! [`Store::update_index`].
//!
//! # Garbage collection and its locking rule
//!
//! [`Store::collect`] deletes every blob and ext4 base that no image of the
//! index (and no image ID in a `keep` list) refers to. The rule:
//!
//! 1. The index lock ([`Store::update_index`]: `INDEX_MUTEX` plus the flock
//!    on `images/.lock`) is held by every index change and by the whole of
//!    a collection. A collection reads the index *committed on disk*, under
//!    that lock, so it never sees a half-made change.
//! 2. A writer whose blobs land in `blobs/` before the index refers to them
//!    (a registry pull) first takes a [`Lease`] and calls
//!    [`Lease::protect`] with each digest *before* writing the blob, keeps
//!    the lease until its `update_index` has committed, then drops it. A
//!    collection lists `blobs/` first and reads the live leases after, so a
//!    blob it sees is either already referenced or already leased.
//!    (Writers that write blobs inside `update_index`, like `load` and
//!    `import`, need no lease.)
//! 3. Removal commits the index first ([`Store::update_index`]), then
//!    collects: a crash in between leaves only unreferenced files, which the
//!    next collection deletes; the index never names a deleted blob.
//!
//! A lease is a file in `content/leases/`, created under a temporary name,
//! flocked, then renamed in; its owner holds the flock until it drops it (or
//! dies). A collection treats a lease file it can flock as dead and deletes
//! it. ext4 bases being built are protected by their per-image build lock
//! (`rootfs/.<hex>.lock`), which a collection only try-locks.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use vessel_api::fsutil::{flock, open_locked, random_hex, read_json, write_json_atomic};
use vessel_api::paths::Home;

use crate::reference::{is_hex64, is_sha256_digest};

/// Largest manifest, index or config document read into memory.
pub const MAX_DOCUMENT: u64 = 8 << 20;

/// Serializes index updates between threads of this process; the flock
/// serializes them between processes.
static INDEX_MUTEX: Mutex<()> = Mutex::new(());

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Invalid digest {0:?}: expected sha256:<64 lowercase hex>")]
    BadDigest(String),
    #[error("Content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("Blob {0} is not in the content store")]
    MissingBlob(String),
    #[error("Document {digest} is larger than {MAX_DOCUMENT} bytes")]
    TooLarge { digest: String },
    #[error("Corrupt image index {path}")]
    CorruptIndex {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One image known by reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Digest of the OCI manifest.
    pub manifest: String,
    /// Digest of the config blob: the image ID.
    pub config: String,
    #[serde(default)]
    pub created: Option<String>,
    /// Size of config plus layers as stored, in bytes.
    #[serde(default)]
    pub size: u64,
}

/// `images/index.json`: normalized reference (or, for an untagged image,
/// its ID) -> record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    #[serde(default)]
    pub images: BTreeMap<String, ImageRecord>,
}

/// What a collection deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Blob digests deleted.
    pub deleted: Vec<String>,
    /// Image IDs whose ext4 base was deleted.
    pub rootfs: Vec<String>,
    /// Bytes freed: blob sizes plus the disk space of ext4 bases.
    pub reclaimed: u64,
}

/// Keeps blobs a writer has put (or is putting) in the store from being
/// collected before the index refers to them. Released when dropped.
#[derive(Debug)]
pub struct Lease {
    file: File,
    path: PathBuf,
}

impl Lease {
    /// Protect `digest`. Call before the blob is written.
    pub fn protect(&self, digest: &str) -> Result<(), StoreError> {
        digest_hex(digest)?;
        // One write(2) of a whole line with O_APPEND: readers see whole lines.
        (&self.file)
            .write_all(format!("{digest}\n").as_bytes())
            .map_err(io_err(&self.path))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Unlink while still holding the flock, then close.
        let _ = fs::remove_file(&self.path);
    }
}

/// The content store and index of one instance.
#[derive(Debug, Clone)]
pub struct Store {
    home: Home,
}

impl Store {
    /// Open the store, creating its directories.
    pub fn open(home: &Home) -> Result<Self, StoreError> {
        let s = Self { home: home.clone() };
        for d in [
            s.blobs_dir(),
            s.ingest_dir(),
            s.leases_dir(),
            home.images_dir(),
            home.rootfs_dir(),
            home.tmp_dir(),
        ] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(s)
    }

    pub fn home(&self) -> &Home {
        &self.home
    }

    fn blobs_dir(&self) -> PathBuf {
        self.home.content_dir().join("blobs/sha256")
    }

    fn ingest_dir(&self) -> PathBuf {
        self.home.content_dir().join("ingest")
    }

    fn leases_dir(&self) -> PathBuf {
        self.home.content_dir().join("leases")
    }

    fn index_path(&self) -> PathBuf {
        self.home.images_dir().join("index.json")
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let hex = digest_hex(digest)?;
        Ok(self.blobs_dir().join(hex))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Open an existing blob for reading.
    pub fn open_blob(&self, digest: &str) -> Result<File, StoreError> {
        let p = self.blob_path(digest)?;
        File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob(digest.to_string())
            } else {
                StoreError::Io { path: p, source: e }
            }
        })
    }

    /// Read a small blob (a manifest or config) into memory.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let f = self.open_blob(digest)?;
        let mut data = Vec::new();
        f.take(MAX_DOCUMENT + 1)
            .read_to_end(&mut data)
            .map_err(io_err(&self.blob_path(digest)?))?;
        if data.len() as u64 > MAX_DOCUMENT {
            return Err(StoreError::TooLarge {
                digest: digest.to_string(),
            });
        }
        Ok(data)
    }

    /// Stream `reader` into the store. The bytes are hashed while written to
    /// `ingest/`; when `expected` is given they must match it. Returns the
    /// digest and size. Only a verified, fsynced blob is renamed into place.
    pub fn write_blob(
        &self,
        reader: &mut dyn Read,
        expected: Option<&str>,
    ) -> Result<(String, u64), StoreError> {
        if let Some(e) = expected {
            digest_hex(e)?;
        }
        let tmp = self.ingest_dir().join(random_hex(12));
        let res = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut size = 0u64;
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err(&tmp)(e)),
                };
                hasher.update(&buf[..n]);
                f.write_all(&buf[..n]).map_err(io_err(&tmp))?;
                size += n as u64;
            }
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if let Some(e) = expected {
                if e != actual {
                    return Err(StoreError::DigestMismatch {
                        expected: e.to_string(),
                        actual,
                    });
                }
            }
            f.sync_all().map_err(io_err(&tmp))?;
            let dest = self.blob_path(&actual)?;
            fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
            sync_dir(&self.blobs_dir());
            Ok((actual, size))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Store an in-memory blob.
    pub fn write_blob_bytes(&self, data: &[u8]) -> Result<String, StoreError> {
        let mut r = data;
        self.write_blob(&mut r, None).map(|(d, _)| d)
    }

    /// Move a file the caller has already verified to hash to `digest` into
    /// the store (a rename when on the same filesystem, else a verified copy).
    pub fn adopt_verified_file(&self, path: &Path, digest: &str) -> Result<(), StoreError> {
        let dest = self.blob_path(digest)?;
        if dest.is_file() {
            return Ok(());
        }
        let f = File::open(path).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
        match fs::rename(path, &dest) {
            Ok(()) => {
                sync_dir(&self.blobs_dir());
                Ok(())
            }
            Err(_) => {
                let mut f = f;
                self.write_blob(&mut f, Some(digest)).map(|_| ())
            }
        }
    }

    /// Read the index (without locking: a rename makes each read consistent).
    pub fn read_index(&self) -> Result<Index, StoreError> {
        let p = self.index_path();
        read_json::<Index>(&p)
            .map(|o| o.unwrap_or_default())
            .map_err(|source| StoreError::CorruptIndex { path: p, source })
    }

    /// Run `f` with exclusive access to the index, then write it back
    /// atomically. Blobs written inside `f` cannot be collected by a
    /// concurrent [`Store::gc`], which takes the same lock.
    pub fn update_index<R, E>(&self, f: impl FnOnce(&mut Index) -> Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        let _guard = INDEX_MUTEX.lock().unwrap_or_else(|p| p.into_inner());
        let _flock = self.lock_file()?;
        let mut index = self.read_index()?;
        let before = serde_json::to_vec(&index).unwrap_or_default();
        let r = f(&mut index)?;
        if serde_json::to_vec(&index).unwrap_or_default() != before {
            let p = self.index_path();
            // Under the lock no other save is under way: a temporary copy
            // here was left by a writer killed mid-save.
            if let Some(dir) = p.parent() {
                vessel_api::fsutil::remove_atomic_temporaries(dir);
            }
            write_json_atomic(&p, &index).map_err(io_err(&p))?;
        }
        Ok(r)
    }

    fn lock_file(&self) -> Result<Flock, StoreError> {
        Flock::exclusive(&self.home.images_dir().join(".lock"))
    }

    /// Take a lease protecting blobs about to be written (see the module
    /// docs for the locking rule).
    pub fn lease(&self) -> Result<Lease, StoreError> {
        let dir = self.leases_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let name = format!("{}-{}", std::process::id(), random_hex(8));
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        if let Err(e) = flock(&file, libc::LOCK_EX) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        // Visible to collections only once locked.
        let path = dir.join(name);
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&path)(e));
        }
        Ok(Lease { file, path })
    }

    /// Digests protected by live leases; dead leases' files are deleted.
    fn leased(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let Ok(rd) = fs::read_dir(self.leases_dir()) else {
            return out;
        };
        for entry in rd.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name.as_encoded_bytes().starts_with(b".") {
                // Being created; a crash's leftover once old.
                if is_older_than(&path, STALE_SECS) {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let Ok(file) = File::open(&path) else {
                continue;
            };
            match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
                // Nobody holds it: its owner is gone.
                Ok(()) => {
                    let _ = fs::remove_file(&path);
                }
                Err(_) => {
                    let mut text = String::new();
                    let _ = (&file).take(MAX_DOCUMENT).read_to_string(&mut text);
                    out.extend(
                        text.lines()
                            .filter(|l| is_sha256_digest(l))
                            .map(str::to_string),
                    );
                }
            }
        }
        out
    }

    /// Collect garbage: with the index lock held, delete every blob and ext4
    /// base that no image of the committed index refers to, sparing the
    /// images whose IDs are in `keep` (used by containers) and blobs under a
    /// live [`Lease`].
    pub fn collect(&self, keep: &BTreeSet<String>) -> Result<GcReport, StoreError> {
        let _guard = INDEX_MUTEX.lock().unwrap_or_else(|p| p.into_inner());
        let _flock = self.lock_file()?;
        let index = self.read_index()?;
        self.gc_with(&index, keep)
    }

    /// Delete every blob and rootfs no image of `index` refers to, and stale
    /// ingest files. Call with the index lock held, on the committed index
    /// (inside [`Store::update_index`] only when the closure does not change
    /// it). Returns the digests deleted.
    pub fn gc(&self, index: &Index) -> Result<Vec<String>, StoreError> {
        self.gc_with(index, &BTreeSet::new()).map(|r| r.deleted)
    }

    /// [`Store::gc`], also sparing the images whose IDs are in `keep`.
    pub fn gc_with(&self, index: &Index, keep: &BTreeSet<String>) -> Result<GcReport, StoreError> {
        let mut live: BTreeSet<String> = BTreeSet::new();
        let mut ids: BTreeSet<String> = keep.clone();
        for rec in index.images.values() {
            live.insert(rec.manifest.clone());
            live.insert(rec.config.clone());
            ids.insert(rec.config.clone());
            // An unreadable manifest keeps nothing more; its layers go.
            if let Ok(data) = self.read_blob(&rec.manifest) {
                if let Ok(m) = serde_json::from_slice::<crate::oci::Manifest>(&data) {
                    live.insert(m.config.digest.clone());
                    live.extend(m.layers.iter().map(|l| l.digest.clone()));
                }
            }
        }
        let mut report = GcReport::default();
        let dir = self.blobs_dir();
        let mut candidates = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = format!("sha256:{name}");
            if !live.contains(&digest) {
                candidates.push((digest, entry.path()));
            }
        }
        // Read leases after listing: a blob listed above was leased before
        // it was renamed into place, so its lease is visible now.
        let leased = self.leased();
        for (digest, path) in candidates {
            if leased.contains(&digest) {
                continue;
            }
            let size = fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(&path) {
                Ok(()) => {
                    report.reclaimed += size;
                    report.deleted.push(digest);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        let rootfs = self.home.rootfs_dir();
        if let Ok(rd) = fs::read_dir(&rootfs) {
            let mut hexes = BTreeSet::new();
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // <hex>.ext4, .<hex>.lock, .<hex>.ext4.tmp-<random>
                let hex = name
                    .strip_suffix(".ext4")
                    .or_else(|| name.strip_prefix('.').and_then(|n| n.strip_suffix(".lock")))
                    .or_else(|| {
                        name.strip_prefix('.')
                            .and_then(|n| n.split_once(".ext4.tmp-"))
                            .map(|(h, _)| h)
                    });
                if let Some(hex) = hex.filter(|h| is_hex64(h)) {
                    hexes.insert(hex.to_string());
                }
            }
            for hex in hexes {
                let id = format!("sha256:{hex}");
                let lock_path = rootfs.join(format!(".{hex}.lock"));
                // A build in progress holds this lock: leave it alone.
                let Some(_build) = Flock::try_exclusive(&lock_path)? else {
                    continue;
                };
                if let Ok(rd) = fs::read_dir(&rootfs) {
                    let tmp_prefix = format!(".{hex}.ext4.tmp-");
                    for entry in rd.flatten() {
                        if entry.file_name().to_string_lossy().starts_with(&tmp_prefix) {
                            report.reclaimed += disk_usage(&entry.path());
                            let _ = fs::remove_file(entry.path());
                        }
                    }
                }
                if !ids.contains(&id) {
                    let base = rootfs.join(format!("{hex}.ext4"));
                    let used = disk_usage(&base);
                    match fs::remove_file(&base) {
                        Ok(()) => {
                            report.reclaimed += used;
                            report.rootfs.push(id);
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err(&base)(e)),
                    }
                }
                // Unlinked while locked: a builder waiting on it sees that
                // ([`Flock::is_current`]) and locks a new file.
                let _ = fs::remove_file(&lock_path);
            }
        }
        // Ingest and tmp files untouched for a day are a crash's leftovers,
        // unless a download still holds their `<hex>.lock` (registry pull).
        for dir in [self.ingest_dir(), self.home.tmp_dir()] {
            if let Ok(rd) = fs::read_dir(&dir) {
                for entry in rd.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let stem = name.split('.').next().unwrap_or("");
                    let lock = dir.join(format!("{stem}.lock"));
                    if is_hex64(stem)
                        && lock.exists()
                        && Flock::try_exclusive(&lock).ok().flatten().is_none()
                    {
                        continue; // a download in progress
                    }
                    if is_older_than(&entry.path(), STALE_SECS) {
                        report.reclaimed += disk_usage(&entry.path());
                        let p = entry.path();
                        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                            let _ = fs::remove_dir_all(&p);
                        } else {
                            let _ = fs::remove_file(&p);
                        }
                    }
                }
            }
        }
        report.deleted.sort();
        Ok(report)
    }
}

/// Age after which a leftover in `ingest/`, `tmp/` or `leases/` is a crash's.
const STALE_SECS: u64 = 24 * 3600;

fn is_older_than(p: &Path, secs: u64) -> bool {
    fs::symlink_metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > secs)
}

/// Disk space of a file (its allocated blocks; ext4 bases are sparse).
fn disk_usage(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(p)
        .map(|m| if m.is_file() { m.blocks() * 512 } else { 0 })
        .unwrap_or(0)
}

/// The hex part of a `sha256:<hex>` digest.
pub fn digest_hex(digest: &str) -> Result<&str, StoreError> {
    if !is_sha256_digest(digest) {
        return Err(StoreError::BadDigest(digest.to_string()));
    }
    Ok(&digest[7..])
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Hash everything `r` yields; returns the digest and the byte count.
pub fn hash_reader(r: &mut dyn Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// An exclusive `flock` held until dropped.
pub struct Flock {
    _file: File,
}

impl Flock {
    /// Open (creating) `path` and take an exclusive lock on it, waiting.
    pub fn exclusive(path: &Path) -> Result<Self, StoreError> {
        // The lock is released when the descriptor is closed.
        let file = open_locked(path, libc::LOCK_EX).map_err(io_err(path))?;
        Ok(Self { _file: file })
    }

    /// Is the locked file still the one at `path`? (A collection unlinks
    /// the build lock of a base it deletes, while holding it.)
    pub fn is_current(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self._file.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Like [`Flock::exclusive`], but `None` instead of waiting when
    /// someone else holds the lock.
    pub fn try_exclusive(path: &Path) -> Result<Option<Self>, StoreError> {
        match open_locked(path, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(file) => Ok(Some(Self { _file: file })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(io_err(path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_before_they_appear() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Home::new(dir.path())).unwrap();
        let d = sha256_digest(b"hello");
        let wrong = sha256_digest(b"other");
        let err = store
            .write_blob(&mut &b"hello"[..], Some(&wrong))
            .unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }));
        assert!(!store.has_blob(&wrong) && !store.has_blob(&d));
        assert_eq!(fs::read_dir(store.ingest_dir()).unwrap().count(), 0);
        let (got, n) = store.write_blob(&mut &b"hello"[..], Some(&d)).unwrap();
        assert_eq!((got.as_str(), n), (d.as_str(), 5));
        assert_eq!(store.read_blob(&d).unwrap(), b"hello");
        assert!(store.blob_path("sha256:../../etc").is_err());
        assert!(matches!(
            store.open_blob(&wrong),
            Err(StoreError::MissingBlob(_))
        ));
    }

    #[test]
    fn index_updates_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Home::new(dir.path())).unwrap();
        let config = store.write_blob_bytes(b"{}").unwrap();
        let layer = store.write_blob_bytes(b"layer").unwrap();
        let orphan = store.write_blob_bytes(b"orphan").unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "x", "digest": config, "size": 2},
            "layers": [{"mediaType": "y", "digest": layer, "size": 5}],
        });
        let manifest = store
            .write_blob_bytes(&serde_json::to_vec(&manifest).unwrap())
            .unwrap();
        let rec = ImageRecord {
            manifest: manifest.clone(),
            config: config.clone(),
            created: None,
            size: 7,
        };
        let deleted = store
            .update_index(|ix| {
                ix.images.insert("localhost/a:latest".into(), rec.clone());
                store.gc(ix)
            })
            .map_err(|e: StoreError| e)
            .unwrap();
        assert_eq!(deleted, vec![orphan]);
        assert_eq!(store.read_index().unwrap().images.len(), 1);
        let deleted = store
            .update_index(|ix| {
                ix.images.clear();
                store.gc(ix)
            })
            .map_err(|e: StoreError| e)
            .unwrap();
        assert_eq!(deleted.len(), 3);
        assert!(!store.has_blob(&layer));
    }
    #[test]
    fn leases_protect_blobs_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Home::new(dir.path())).unwrap();
        let d = sha256_digest(b"pulled");
        let lease = store.lease().unwrap();
        lease.protect(&d).unwrap();
        assert!(lease.protect("sha256:nope").is_err());
        store.write_blob(&mut &b"pulled"[..], Some(&d)).unwrap();
        let r = store.collect(&BTreeSet::new()).unwrap();
        assert!(r.deleted.is_empty(), "leased blob kept: {r:?}");
        assert!(store.has_blob(&d));
        drop(lease);
        assert_eq!(fs::read_dir(store.leases_dir()).unwrap().count(), 0);
        let r = store.collect(&BTreeSet::new()).unwrap();
        assert_eq!(r.deleted, vec![d.clone()]);
        assert_eq!(r.reclaimed, 6);

        // A lease whose owner died (no flock held) protects nothing and goes.
        fs::write(store.leases_dir().join("1-dead"), format!("{d}\n")).unwrap();
        store.write_blob(&mut &b"pulled"[..], Some(&d)).unwrap();
        let r = store.collect(&BTreeSet::new()).unwrap();
        assert_eq!(r.deleted, vec![d]);
        assert_eq!(fs::read_dir(store.leases_dir()).unwrap().count(), 0);
    }

    #[test]
    fn collect_spares_bases_being_built_and_kept_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Home::new(dir.path())).unwrap();
        let rootfs = store.home().rootfs_dir();
        let (h1, h2, h3) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
        for h in [&h1, &h2, &h3] {
            fs::write(rootfs.join(format!("{h}.ext4")), b"base").unwrap();
        }
        fs::write(rootfs.join(format!(".{h3}.ext4.tmp-abc")), b"half").unwrap();
        // h2 is being built: its lock is held.
        let building = Flock::exclusive(&rootfs.join(format!(".{h2}.lock"))).unwrap();
        let keep: BTreeSet<String> = [format!("sha256:{h1}")].into_iter().collect();
        let r = store.collect(&keep).unwrap();
        assert_eq!(r.rootfs, vec![format!("sha256:{h3}")]);
        assert!(rootfs.join(format!("{h1}.ext4")).exists(), "kept ID");
        assert!(
            rootfs.join(format!("{h2}.ext4")).exists(),
            "build in progress"
        );
        assert!(!rootfs.join(format!(".{h3}.ext4.tmp-abc")).exists());
        drop(building);
        let r = store.collect(&keep).unwrap();
        assert_eq!(r.rootfs, vec![format!("sha256:{h2}")]);
        let left: Vec<_> = fs::read_dir(&rootfs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec![format!("{h1}.ext4")]);
    }

    #[test]
    fn a_crash_between_commit_and_collect_leaves_a_consistent_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Home::new(dir.path())).unwrap();
        let config = store.write_blob_bytes(b"{}").unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "x", "digest": config, "size": 2},
            "layers": [],
        });
        let manifest = store
            .write_blob_bytes(&serde_json::to_vec(&manifest).unwrap())
            .unwrap();
        let rec = ImageRecord {
            manifest,
            config,
            created: None,
            size: 2,
        };
        store
            .update_index(|ix| -> Result<(), StoreError> {
                ix.images.insert("localhost/a:1".into(), rec.clone());
                Ok(())
            })
            .unwrap();
        // "Crash" after the removal was committed, before collecting: the
        // index names nothing missing, and the next collection cleans up.
        store
            .update_index(|ix| -> Result<(), StoreError> {
                ix.images.clear();
                Ok(())
            })
            .unwrap();
        assert!(store.read_index().unwrap().images.is_empty());
        assert_eq!(store.collect(&BTreeSet::new()).unwrap().deleted.len(), 2);
    }
}
