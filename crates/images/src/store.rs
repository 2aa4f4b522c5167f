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
//! needs only [`Store::write_blob`] and [`Store::update_index`].

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use vessel_api::fsutil::{random_hex, read_json, write_json_atomic};
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
            write_json_atomic(&p, &index).map_err(io_err(&p))?;
        }
        Ok(r)
    }

    fn lock_file(&self) -> Result<Flock, StoreError> {
        Flock::exclusive(&self.home.images_dir().join(".lock"))
    }

    /// Delete every blob and rootfs no image of `index` refers to, and stale
    /// ingest files. Call inside [`Store::update_index`]. Returns the
    /// digests deleted.
    pub fn gc(&self, index: &Index) -> Result<Vec<String>, StoreError> {
        let mut keep: BTreeSet<String> = BTreeSet::new();
        let mut ids: BTreeSet<String> = BTreeSet::new();
        for rec in index.images.values() {
            keep.insert(rec.manifest.clone());
            keep.insert(rec.config.clone());
            ids.insert(rec.config.clone());
            // An unreadable manifest keeps nothing more; its layers go.
            if let Ok(data) = self.read_blob(&rec.manifest) {
                if let Ok(m) = serde_json::from_slice::<crate::oci::Manifest>(&data) {
                    keep.insert(m.config.digest.clone());
                    keep.extend(m.layers.iter().map(|l| l.digest.clone()));
                }
            }
        }
        let mut deleted = Vec::new();
        let dir = self.blobs_dir();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = format!("sha256:{name}");
            if !keep.contains(&digest) {
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                deleted.push(digest);
            }
        }
        let rootfs = self.home.rootfs_dir();
        if let Ok(rd) = fs::read_dir(&rootfs) {
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(hex) = name.strip_suffix(".ext4") {
                    if is_hex64(hex) && !ids.contains(&format!("sha256:{hex}")) {
                        let _ = fs::remove_file(entry.path());
                        let _ = fs::remove_file(rootfs.join(format!(".{hex}.lock")));
                    }
                }
            }
        }
        // Ingest files are only live inside write_blob; a leftover is a crash's.
        if let Ok(rd) = fs::read_dir(self.ingest_dir()) {
            for entry in rd.flatten() {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 24 * 3600);
                if stale {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        deleted.sort();
        Ok(deleted)
    }
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
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err(path))?;
        loop {
            // SAFETY: the descriptor is owned by `file` and open for the call;
            // flock has no memory-safety preconditions.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io_err(path)(e));
            }
        }
        // The lock is released when the descriptor is closed.
        Ok(Self { _file: file })
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
}
