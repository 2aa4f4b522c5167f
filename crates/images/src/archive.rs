//! `vessel image load` and `vessel image import`.
//!
//! [`load`] accepts an OCI image layout tar (`oci-layout`, `index.json`,
//! `blobs/sha256/*`) or a `docker save` tar (`manifest.json`), either one
//! optionally gzip-compressed. The archive is first extracted into a private
//! directory under `tmp/` (regular files and directories only; symlinks and
//! hardlinks are remembered as aliases; unsafe paths, too many entries or too
//! many bytes are errors). Then everything is parsed and every blob hashed
//! against its digest; only when all of it checks out are blobs moved into
//! the content store and references written. A bad archive leaves nothing
//! behind.
//!
//! Naming an image from an OCI layout: the `io.containerd.image.name`
//! annotation; else `org.opencontainers.image.ref.name` when it is a full
//! reference (contains `/` or `:`). An image with neither (or with only a
//! bare tag) is loaded untagged: its "reference" is its image ID, and it can
//! be run, inspected and removed by ID. A docker archive is named by its
//! `RepoTags`.
//!
//! [`save`] writes the reverse: an OCI image layout tar that also carries
//! Docker's `manifest.json`, so `vessel image load`, `docker load` and
//! `skopeo copy oci-archive:…`/`docker-archive:…` all read it. Blobs are
//! stored as they are in the content store, so a save then load gives back
//! the same image ID and manifest digest.
//!
//! [`import`] stores a rootfs tarball (like `docker import`) as a one-layer
//! image with a generated config and manifest.

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use vessel_api::fsutil::random_hex;
use vessel_api::types::ImageSummary;

use crate::oci::{self, Compression, Descriptor, ImageConfig, ImageIndex, Manifest};
use crate::reference::{normalize, ReferenceError};
use crate::store::{
    hash_reader, sha256_digest, ImageRecord, Index, Store, StoreError, MAX_DOCUMENT,
};

/// Bounds on what an archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 30,
            max_entries: 100_000,
        }
    }
}

/// Errors loading or importing an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("Cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot read the archive; is it truncated or corrupt?")]
    Read(#[source] io::Error),
    #[error("Archive entry has an unsafe path: {0}")]
    UnsafePath(String),
    #[error("Archive is too large: more than {0} bytes")]
    TooLarge(u64),
    #[error("Archive has too many entries: more than {0}")]
    TooManyEntries(u64),
    #[error("Not an image archive: it has neither an OCI layout (oci-layout, index.json) nor a docker manifest.json")]
    UnknownFormat,
    #[error("Archive lacks {0}")]
    Missing(String),
    #[error("Archive has a malformed {what}")]
    BadDocument {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("Archive document {0} is too large")]
    DocumentTooLarge(String),
    #[error(
        "Archive blob {what} does not match its descriptor: expected {expected}, got {actual}"
    )]
    Mismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("Archive has no linux/amd64 image")]
    NoPlatform,
    #[error("Archive nests image indexes too deeply")]
    TooDeep,
    #[error("Unsupported layer media type {0:?}")]
    UnsupportedLayer(String),
    #[error("Image config lists {config} layers but the manifest has {manifest}")]
    LayerCount { config: usize, manifest: usize },
    #[error("Archive contains no images")]
    Empty,
    #[error("Archive names an invalid image reference")]
    Reference(#[source] ReferenceError),
    #[error("Invalid image reference for import")]
    ImportReference(#[source] ReferenceError),
    #[error("Not a tar archive (plain or gzip): {0}")]
    NotATar(String),
    #[error("Content store error")]
    Store(#[from] StoreError),
    #[error("Cannot write the archive")]
    Write(#[source] io::Error),
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ArchiveError {
    /// Is this the user's input at fault (HTTP 400) rather than the host?
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            ArchiveError::Store(_) | ArchiveError::Io { .. } | ArchiveError::Write(_)
        )
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory removed (recursively) when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An archive extracted into a private directory.
struct Extracted {
    dir: TempDir,
    files: HashSet<String>,
    /// Symlinks and hardlinks: path -> target, both relative to the archive root.
    links: HashMap<String, String>,
}

/// Normalize an archive path; `..` and absolute paths are unsafe.
fn archive_path(raw: &[u8]) -> Result<String, ArchiveError> {
    let unsafe_path = || ArchiveError::UnsafePath(String::from_utf8_lossy(raw).into_owned());
    let s = std::str::from_utf8(raw).map_err(|_| unsafe_path())?;
    if s.starts_with('/') {
        return Err(unsafe_path());
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(unsafe_path()),
            c if c.contains('\0') => return Err(unsafe_path()),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// Resolve `target` of a link at `at` to a root-relative path, if it stays inside.
fn link_target(at: &str, target: &str, symlink: bool) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    if symlink && !target.starts_with('/') {
        parts.extend(at.split('/'));
        parts.pop();
    }
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn extract(src: &Path, tmp_root: &Path, limits: Limits) -> Result<Extracted, ArchiveError> {
    let file = File::open(src).map_err(|source| ArchiveError::Open {
        path: src.to_path_buf(),
        source,
    })?;
    fs::create_dir_all(tmp_root).map_err(io_err(tmp_root))?;
    let dir = TempDir(tmp_root.join(format!("load-{}", random_hex(8))));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir.0)
        .map_err(io_err(&dir.0))?;
    use std::os::unix::fs::DirBuilderExt;
    let reader = oci::decompressed(file).map_err(ArchiveError::Read)?;
    let mut archive = tar::Archive::new(reader);
    let mut files = HashSet::new();
    let mut links = HashMap::new();
    let (mut total, mut count) = (0u64, 0u64);
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        count += 1;
        if count > limits.max_entries {
            return Err(ArchiveError::TooManyEntries(limits.max_entries));
        }
        let rel = archive_path(&entry.path_bytes())?;
        if rel.is_empty() {
            continue;
        }
        let host = dir.0.join(&rel);
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous => {
                let size = entry.size();
                total = total.saturating_add(size);
                if total > limits.max_bytes {
                    return Err(ArchiveError::TooLarge(limits.max_bytes));
                }
                if let Some(parent) = host.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|_| ArchiveError::UnsafePath(rel.clone()))?;
                }
                // Only files and directories exist here, so nothing is followed.
                match fs::symlink_metadata(&host) {
                    Ok(m) if m.is_dir() => return Err(ArchiveError::UnsafePath(rel)),
                    Ok(_) => fs::remove_file(&host).map_err(io_err(&host))?,
                    Err(_) => {}
                }
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&host)
                    .map_err(io_err(&host))?;
                let copied =
                    io::copy(&mut (&mut entry).take(size), &mut f).map_err(ArchiveError::Read)?;
                if copied != size {
                    return Err(ArchiveError::Read(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{rel} is truncated"),
                    )));
                }
                links.remove(&rel);
                files.insert(rel);
            }
            T::Directory => {
                fs::create_dir_all(&host).map_err(|_| ArchiveError::UnsafePath(rel))?;
            }
            kind @ (T::Symlink | T::Link) => {
                let target = entry
                    .link_name_bytes()
                    .and_then(|t| String::from_utf8(t.into_owned()).ok())
                    .and_then(|t| link_target(&rel, &t, kind == T::Symlink));
                if let Some(t) = target {
                    files.remove(&rel);
                    links.insert(rel, t);
                }
            }
            _ => {}
        }
    }
    Ok(Extracted { dir, files, links })
}

impl Extracted {
    fn exists(&self, rel: &str) -> bool {
        self.resolve(rel).is_ok()
    }

    /// The extracted file `rel` names, following archive links.
    fn resolve(&self, rel: &str) -> Result<PathBuf, ArchiveError> {
        let mut p = archive_path(rel.as_bytes())?;
        for _ in 0..16 {
            if self.files.contains(&p) {
                return Ok(self.dir.0.join(&p));
            }
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        Err(ArchiveError::Missing(rel.to_string()))
    }

    fn read_document(&self, rel: &str) -> Result<Vec<u8>, ArchiveError> {
        let p = self.resolve(rel)?;
        let mut data = Vec::new();
        File::open(&p)
            .map_err(io_err(&p))?
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut data)
            .map_err(io_err(&p))?;
        if data.len() as u64 > MAX_DOCUMENT {
            return Err(ArchiveError::DocumentTooLarge(rel.to_string()));
        }
        Ok(data)
    }

    /// The path of blob `d` after checking its digest and size.
    fn verified_blob(&self, d: &Descriptor) -> Result<PathBuf, ArchiveError> {
        let hex = crate::store::digest_hex(&d.digest)?;
        let rel = format!("blobs/sha256/{hex}");
        let p = self.resolve(&rel)?;
        let (actual, size) = hash_file(&p)?;
        if actual != d.digest {
            return Err(ArchiveError::Mismatch {
                what: rel,
                expected: d.digest.clone(),
                actual,
            });
        }
        if size != d.size {
            return Err(ArchiveError::Mismatch {
                what: rel,
                expected: format!("{} bytes", d.size),
                actual: format!("{size} bytes"),
            });
        }
        Ok(p)
    }

    fn verified_document(&self, d: &Descriptor) -> Result<Vec<u8>, ArchiveError> {
        let p = self.verified_blob(d)?;
        if d.size > MAX_DOCUMENT {
            return Err(ArchiveError::DocumentTooLarge(d.digest.clone()));
        }
        fs::read(&p).map_err(io_err(&p))
    }
}

fn hash_file(p: &Path) -> Result<(String, u64), ArchiveError> {
    let mut f = File::open(p).map_err(io_err(p))?;
    hash_reader(&mut f).map_err(io_err(p))
}

fn parse<'a, T: Deserialize<'a>>(data: &'a [u8], what: &str) -> Result<T, ArchiveError> {
    serde_json::from_slice(data).map_err(|source| ArchiveError::BadDocument {
        what: what.to_string(),
        source,
    })
}

/// One verified image, ready to be committed.
struct Prepared {
    reference: Option<String>,
    record: ImageRecord,
}

/// Everything a load will write, all verified.
#[derive(Default)]
struct Plan {
    /// Extracted files to move into the store, by digest.
    files: BTreeMap<String, PathBuf>,
    /// Generated documents (docker-archive manifests).
    documents: Vec<Vec<u8>>,
    images: Vec<Prepared>,
}

/// Check a manifest and its config and layers; returns the record.
fn verify_manifest(
    ex: &Extracted,
    plan: &mut Plan,
    manifest_desc: &Descriptor,
    manifest_bytes: &[u8],
) -> Result<ImageRecord, ArchiveError> {
    let m: Manifest = parse(
        manifest_bytes,
        &format!("manifest {}", manifest_desc.digest),
    )?;
    let config_bytes = ex.verified_document(&m.config)?;
    let config: ImageConfig = parse(&config_bytes, &format!("image config {}", m.config.digest))?;
    check_layer_count(&config, m.layers.len())?;
    let mut size = m.config.size;
    for l in &m.layers {
        if !oci::is_supported_layer(&l.media_type) {
            return Err(ArchiveError::UnsupportedLayer(l.media_type.clone()));
        }
        let p = ex.verified_blob(l)?;
        plan.files.insert(l.digest.clone(), p);
        size += l.size;
    }
    plan.files
        .insert(m.config.digest.clone(), ex.verified_blob(&m.config)?);
    Ok(ImageRecord {
        manifest: manifest_desc.digest.clone(),
        config: m.config.digest.clone(),
        created: config.created.clone(),
        size,
    })
}

fn check_layer_count(config: &ImageConfig, layers: usize) -> Result<(), ArchiveError> {
    if let Some(rootfs) = &config.rootfs {
        if rootfs.diff_ids.len() != layers {
            return Err(ArchiveError::LayerCount {
                config: rootfs.diff_ids.len(),
                manifest: layers,
            });
        }
    }
    Ok(())
}

fn is_amd64(p: &Option<oci::Platform>) -> bool {
    match p {
        None => true,
        Some(p) => p.os == "linux" && p.architecture == "amd64",
    }
}

/// Follow `d` through nested indexes to a linux/amd64 manifest.
fn select_manifest(
    ex: &Extracted,
    d: &Descriptor,
    depth: usize,
) -> Result<(Descriptor, Vec<u8>), ArchiveError> {
    if depth > 4 {
        return Err(ArchiveError::TooDeep);
    }
    let bytes = ex.verified_document(d)?;
    let is_index = matches!(
        d.media_type.as_str(),
        oci::MT_OCI_INDEX | oci::MT_DOCKER_LIST
    ) || (d.media_type.is_empty()
        && serde_json::from_slice::<serde_json::Value>(&bytes)
            .map(|v| v.get("manifests").is_some())
            .unwrap_or(false));
    if !is_index {
        return Ok((d.clone(), bytes));
    }
    let index: ImageIndex = parse(&bytes, &format!("image index {}", d.digest))?;
    let child = index
        .manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or_else(|| match index.manifests.as_slice() {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        })
        .ok_or(ArchiveError::NoPlatform)?;
    select_manifest(ex, child, depth + 1)
}

/// The reference an OCI index entry names, if any.
fn oci_name(d: &Descriptor) -> Result<Option<String>, ArchiveError> {
    if let Some(n) = d.annotations.get(oci::ANNOTATION_IMAGE_NAME) {
        return normalize(n).map(Some).map_err(ArchiveError::Reference);
    }
    match d.annotations.get(oci::ANNOTATION_REF_NAME) {
        Some(n) if n.contains('/') || n.contains(':') => {
            normalize(n).map(Some).map_err(ArchiveError::Reference)
        }
        _ => Ok(None),
    }
}

fn plan_oci(ex: &Extracted) -> Result<Plan, ArchiveError> {
    let mut plan = Plan::default();
    let index: ImageIndex = parse(&ex.read_document("index.json")?, "index.json")?;
    for d in &index.manifests {
        if !is_amd64(&d.platform) {
            continue;
        }
        let reference = oci_name(d)?;
        let (mdesc, mbytes) = select_manifest(ex, d, 0)?;
        let record = verify_manifest(ex, &mut plan, &mdesc, &mbytes)?;
        plan.files
            .insert(mdesc.digest.clone(), ex.verified_blob(&mdesc)?);
        plan.images.push(Prepared { reference, record });
    }
    Ok(plan)
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn plan_docker(ex: &Extracted) -> Result<Plan, ArchiveError> {
    let mut plan = Plan::default();
    let entries: Vec<DockerEntry> = parse(&ex.read_document("manifest.json")?, "manifest.json")?;
    for e in entries {
        let config_bytes = ex.read_document(&e.config)?;
        let config_digest = sha256_digest(&config_bytes);
        let config: ImageConfig = parse(&config_bytes, &format!("image config {}", e.config))?;
        check_layer_count(&config, e.layers.len())?;
        let diff_ids = config.rootfs.as_ref().map(|r| r.diff_ids.clone());
        let mut layers = Vec::new();
        for (i, l) in e.layers.iter().enumerate() {
            let p = ex.resolve(l)?;
            let (digest, size) = hash_file(&p)?;
            let mut f = File::open(&p).map_err(io_err(&p))?;
            let compression = {
                let mut br = io::BufReader::new(&mut f);
                Compression::detect(&mut br).map_err(io_err(&p))?
            };
            if compression == Compression::Zstd {
                return Err(ArchiveError::UnsupportedLayer(
                    compression.layer_media_type().to_string(),
                ));
            }
            let diff_id = if compression == Compression::None {
                digest.clone()
            } else {
                let f = File::open(&p).map_err(io_err(&p))?;
                let mut r = oci::decompressed(f).map_err(ArchiveError::Read)?;
                hash_reader(&mut r).map_err(ArchiveError::Read)?.0
            };
            if let Some(ids) = &diff_ids {
                if ids.get(i) != Some(&diff_id) {
                    return Err(ArchiveError::Mismatch {
                        what: l.clone(),
                        expected: ids.get(i).cloned().unwrap_or_default(),
                        actual: diff_id,
                    });
                }
            }
            plan.files.insert(digest.clone(), p);
            layers.push(Descriptor {
                media_type: compression.layer_media_type().to_string(),
                digest,
                size,
                platform: None,
                annotations: BTreeMap::new(),
            });
        }
        let config_path = ex.resolve(&e.config)?;
        plan.files.insert(config_digest.clone(), config_path);
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::MT_OCI_MANIFEST.to_string()),
            config: Descriptor {
                media_type: oci::MT_OCI_CONFIG.to_string(),
                digest: config_digest.clone(),
                size: config_bytes.len() as u64,
                platform: None,
                annotations: BTreeMap::new(),
            },
            layers,
        };
        let mbytes = serde_json::to_vec(&manifest).map_err(|source| ArchiveError::BadDocument {
            what: "generated manifest".into(),
            source,
        })?;
        let record = ImageRecord {
            manifest: sha256_digest(&mbytes),
            config: config_digest,
            created: config.created.clone(),
            size: manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
        };
        plan.documents.push(mbytes);
        let tags = e.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            plan.images.push(Prepared {
                reference: None,
                record: record.clone(),
            });
        }
        for t in tags {
            plan.images.push(Prepared {
                reference: Some(normalize(&t).map_err(ArchiveError::Reference)?),
                record: record.clone(),
            });
        }
    }
    Ok(plan)
}

/// Put `record` in the index under `reference` (or, untagged, its ID). An
/// image that loses its last reference stays, untagged, so containers using
/// it keep their rootfs until it is removed by ID.
pub(crate) fn tag(index: &mut Index, reference: Option<String>, record: ImageRecord) -> String {
    let key = reference.unwrap_or_else(|| record.config.clone());
    if key != record.config {
        index.images.remove(&record.config);
    }
    if let Some(old) = index.images.insert(key.clone(), record) {
        let still_used = index.images.values().any(|r| r.config == old.config);
        if !still_used {
            index.images.insert(old.config.clone(), old);
        }
    }
    key
}

fn summary(key: &str, r: &ImageRecord) -> ImageSummary {
    ImageSummary {
        reference: key.to_string(),
        id: r.config.clone(),
        digest: r.manifest.clone(),
        created: r.created.clone(),
        size: r.size,
    }
}

/// Commit a verified plan: blobs first, then references, under the index lock.
fn commit(store: &Store, plan: Plan) -> Result<Vec<ImageSummary>, ArchiveError> {
    let res = store.update_index(|index| -> Result<Vec<ImageSummary>, ArchiveError> {
        for (digest, path) in &plan.files {
            store.adopt_verified_file(path, digest)?;
        }
        for doc in &plan.documents {
            store.write_blob_bytes(doc)?;
        }
        let mut out = Vec::new();
        for img in plan.images {
            let rec = img.record.clone();
            let key = tag(index, img.reference, img.record);
            out.push(summary(&key, &rec));
        }
        Ok(out)
    });
    if res.is_err() {
        // Drop whatever blobs made it in before the failure.
        let _ = store.update_index(|ix| store.gc(ix).map(|_| ()));
    }
    res
}

/// Load an OCI layout or docker-save archive (optionally gzip-compressed).
pub fn load(store: &Store, path: &Path) -> Result<Vec<ImageSummary>, ArchiveError> {
    load_with_limits(store, path, Limits::default())
}

/// [`load`] with explicit bounds.
pub fn load_with_limits(
    store: &Store,
    path: &Path,
    limits: Limits,
) -> Result<Vec<ImageSummary>, ArchiveError> {
    let ex = extract(path, &store.home().tmp_dir(), limits)?;
    let plan = if ex.exists("oci-layout") && ex.exists("index.json") {
        plan_oci(&ex)?
    } else if ex.exists("manifest.json") {
        plan_docker(&ex)?
    } else {
        return Err(ArchiveError::UnknownFormat);
    };
    if plan.images.is_empty() {
        return Err(ArchiveError::Empty);
    }
    commit(store, plan)
}

/// One image to [`save`]: its record and, unless saved by ID, its reference.
#[derive(Debug, Clone)]
pub struct SaveItem {
    pub name: Option<String>,
    pub record: ImageRecord,
}

/// One image of a save, with every reference it is saved under.
struct SavedImage {
    manifest: Descriptor,
    config: String,
    layers: Vec<String>,
    names: Vec<String>,
}

/// `blobs/sha256/<hex>` of a digest.
fn blob_entry(digest: &str) -> Result<String, ArchiveError> {
    Ok(format!(
        "blobs/sha256/{}",
        crate::store::digest_hex(digest)?
    ))
}

/// Write an OCI image layout tar of `items` that is also a `docker save`
/// archive: `oci-layout`, `index.json` (one manifest descriptor per
/// reference, annotated with `io.containerd.image.name` = the full reference
/// and `org.opencontainers.image.ref.name` = its tag), `manifest.json`
/// (`Config`, `RepoTags`, `Layers` pointing into `blobs/sha256/`) and the
/// blobs. Every blob is opened before `start` is called and the first byte
/// is written, so missing content is an error and never a truncated archive.
pub fn save<W: io::Write>(
    store: &Store,
    items: &[SaveItem],
    start: impl FnOnce() -> io::Result<W>,
) -> Result<(), ArchiveError> {
    let mut images: Vec<SavedImage> = Vec::new();
    let mut blobs: BTreeMap<String, (File, u64)> = BTreeMap::new();
    let mut open = |digest: &str| -> Result<u64, ArchiveError> {
        if let Some((_, size)) = blobs.get(digest) {
            return Ok(*size);
        }
        let f = store.open_blob(digest)?;
        let size = f
            .metadata()
            .map_err(io_err(&store.blob_path(digest)?))?
            .len();
        blobs.insert(digest.to_string(), (f, size));
        Ok(size)
    };
    for item in items {
        let rec = &item.record;
        let i = match images
            .iter()
            .position(|i| i.manifest.digest == rec.manifest)
        {
            Some(i) => i,
            None => {
                let bytes = store.read_blob(&rec.manifest)?;
                let m: Manifest = parse(&bytes, &format!("manifest {}", rec.manifest))?;
                let media_type = m
                    .media_type
                    .clone()
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| oci::MT_OCI_MANIFEST.to_string());
                let size = open(&rec.manifest)?;
                open(&m.config.digest)?;
                for l in &m.layers {
                    open(&l.digest)?;
                }
                images.push(SavedImage {
                    manifest: Descriptor {
                        media_type,
                        digest: rec.manifest.clone(),
                        size,
                        platform: None,
                        annotations: BTreeMap::new(),
                    },
                    config: m.config.digest.clone(),
                    layers: m.layers.iter().map(|l| l.digest.clone()).collect(),
                    names: Vec::new(),
                });
                images.len() - 1
            }
        };
        if let Some(n) = &item.name {
            if !images[i].names.contains(n) {
                images[i].names.push(n.clone());
            }
        }
    }
    // index.json: one descriptor per reference (one bare one for an image
    // saved by ID only).
    let mut descriptors = Vec::new();
    let mut docker = Vec::new();
    for img in &images {
        let mut repo_tags = Vec::new();
        for n in &img.names {
            let r = crate::reference::Reference::parse(n).map_err(ArchiveError::Reference)?;
            let mut d = img.manifest.clone();
            d.annotations
                .insert(oci::ANNOTATION_IMAGE_NAME.to_string(), n.clone());
            if let (Some(t), None) = (&r.tag, &r.digest) {
                d.annotations
                    .insert(oci::ANNOTATION_REF_NAME.to_string(), t.clone());
                repo_tags.push(r.short());
            }
            descriptors.push(d);
        }
        if img.names.is_empty() {
            descriptors.push(img.manifest.clone());
        }
        docker.push(serde_json::json!({
            "Config": blob_entry(&img.config)?,
            "RepoTags": if repo_tags.is_empty() { serde_json::Value::Null } else { repo_tags.into() },
            "Layers": img.layers.iter().map(|l| blob_entry(l)).collect::<Result<Vec<_>, _>>()?,
        }));
    }
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(oci::MT_OCI_INDEX.to_string()),
        manifests: descriptors,
    };
    let index_bytes = json_bytes(&index)?;
    let docker_bytes = json_bytes(&docker)?;
    let layout_bytes = json_bytes(&serde_json::json!({"imageLayoutVersion": "1.0.0"}))?;

    let w = start().map_err(ArchiveError::Write)?;
    let mut b = tar::Builder::new(w);
    let header = |kind: tar::EntryType, size: u64, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    let write = |b: &mut tar::Builder<W>, path: &str, data: &mut dyn Read, size: u64| {
        let mut h = header(tar::EntryType::Regular, size, 0o644);
        b.append_data(&mut h, path, data)
            .map_err(ArchiveError::Write)
    };
    write(
        &mut b,
        "oci-layout",
        &mut &layout_bytes[..],
        layout_bytes.len() as u64,
    )?;
    write(
        &mut b,
        "index.json",
        &mut &index_bytes[..],
        index_bytes.len() as u64,
    )?;
    write(
        &mut b,
        "manifest.json",
        &mut &docker_bytes[..],
        docker_bytes.len() as u64,
    )?;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0, 0o755);
        b.append_data(&mut h, dir, io::empty())
            .map_err(ArchiveError::Write)?;
    }
    for (digest, (f, size)) in blobs {
        // Exactly `size` bytes: the header promised them.
        let mut r = f.take(size);
        write(&mut b, &blob_entry(&digest)?, &mut r, size)?;
    }
    let mut w = b.into_inner().map_err(ArchiveError::Write)?;
    w.flush().map_err(ArchiveError::Write)?;
    Ok(())
}

fn json_bytes<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, ArchiveError> {
    serde_json::to_vec(v).map_err(|source| ArchiveError::BadDocument {
        what: "generated document".into(),
        source,
    })
}

/// Hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Import a rootfs tarball (plain or gzip) as a one-layer image named `reference`.
pub fn import(store: &Store, path: &Path, reference: &str) -> Result<ImageSummary, ArchiveError> {
    let reference = normalize(reference).map_err(ArchiveError::ImportReference)?;
    let open = || {
        File::open(path).map_err(|source| ArchiveError::Open {
            path: path.to_path_buf(),
            source,
        })
    };
    // Pass 1: check it is a tar and compute the diff ID of the uncompressed stream.
    let mut f = open()?;
    let compression =
        Compression::detect(&mut io::BufReader::new(&mut f)).map_err(ArchiveError::Read)?;
    if compression == Compression::Zstd {
        return Err(ArchiveError::NotATar(
            "zstd compression is not supported".into(),
        ));
    }
    let mut hr = HashingReader {
        inner: oci::decompressed(open()?).map_err(ArchiveError::Read)?,
        hasher: Sha256::new(),
    };
    let mut entries = 0u64;
    {
        let mut archive = tar::Archive::new(&mut hr);
        let iter = archive
            .entries()
            .map_err(|e| ArchiveError::NotATar(e.to_string()))?;
        for e in iter {
            let e = e.map_err(|e| ArchiveError::NotATar(e.to_string()))?;
            archive_path_lenient(&e.path_bytes())?;
            entries += 1;
        }
    }
    io::copy(&mut hr, &mut io::sink()).map_err(ArchiveError::Read)?;
    if entries == 0 {
        return Err(ArchiveError::NotATar("it contains no files".into()));
    }
    let diff_id = format!("sha256:{}", hex::encode(hr.hasher.finalize()));
    let created = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let config = serde_json::json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": [oci::DEFAULT_PATH] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": created, "created_by": "vessel image import" }],
    });
    let config_bytes = serde_json::to_vec(&config).map_err(|source| ArchiveError::BadDocument {
        what: "generated config".into(),
        source,
    })?;
    store.update_index(|index| -> Result<ImageSummary, ArchiveError> {
        let mut f = open()?;
        let (layer_digest, layer_size) = store.write_blob(&mut f, None)?;
        let config_digest = store.write_blob_bytes(&config_bytes)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::MT_OCI_MANIFEST.to_string()),
            config: Descriptor {
                media_type: oci::MT_OCI_CONFIG.to_string(),
                digest: config_digest.clone(),
                size: config_bytes.len() as u64,
                platform: None,
                annotations: BTreeMap::new(),
            },
            layers: vec![Descriptor {
                media_type: compression.layer_media_type().to_string(),
                digest: layer_digest,
                size: layer_size,
                platform: None,
                annotations: BTreeMap::new(),
            }],
        };
        let mbytes = serde_json::to_vec(&manifest).map_err(|source| ArchiveError::BadDocument {
            what: "generated manifest".into(),
            source,
        })?;
        let manifest_digest = store.write_blob_bytes(&mbytes)?;
        let record = ImageRecord {
            manifest: manifest_digest,
            config: config_digest,
            created: Some(created.clone()),
            size: config_bytes.len() as u64 + layer_size,
        };
        let key = tag(index, Some(reference.clone()), record.clone());
        Ok(summary(&key, &record))
    })
}

/// Layer paths may be absolute (taken relative to the root when unpacked),
/// but never contain `..`.
fn archive_path_lenient(raw: &[u8]) -> Result<(), ArchiveError> {
    if raw.split(|&b| b == b'/').any(|c| c == b"..") {
        return Err(ArchiveError::UnsafePath(
            String::from_utf8_lossy(raw).into_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::paths::Home;

    #[test]
    fn archive_paths() {
        assert_eq!(archive_path(b"./blobs/sha256/x").unwrap(), "blobs/sha256/x");
        assert!(archive_path(b"../x").is_err());
        assert!(archive_path(b"/etc/passwd").is_err());
        assert!(archive_path(b"a/../../x").is_err());
        assert_eq!(
            link_target("a/layer.tar", "../b/layer.tar", true).as_deref(),
            Some("b/layer.tar")
        );
        assert_eq!(link_target("a", "../../x", true), None);
        assert_eq!(link_target("a/b", "c/d", false).as_deref(), Some("c/d"));
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, d) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, p, *d).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn assert_store_empty(home: &Home) {
        let blobs = home.content_dir().join("blobs/sha256");
        assert_eq!(fs::read_dir(&blobs).unwrap().count(), 0, "no blobs");
        assert_eq!(
            fs::read_dir(home.tmp_dir()).unwrap().count(),
            0,
            "tmp is clean"
        );
        assert!(!home.images_dir().join("index.json").exists());
    }

    fn docker_archive(gzip_layer: bool) -> Vec<u8> {
        let layer = tar_of(&[("hello", b"hi")]);
        let diff_id = sha256_digest(&layer);
        let layer_file = if gzip_layer {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut enc, &layer).unwrap();
            enc.finish().unwrap()
        } else {
            layer
        };
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/hello"], "Env": null},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": "cfg.json", "RepoTags": ["app:1"], "Layers": ["abc/layer.tar"],
        }]))
        .unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (p, d) in [
            ("manifest.json", &manifest[..]),
            ("cfg.json", &config[..]),
            ("real/layer.tar", &layer_file[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, p, d).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "abc/layer.tar", "../real/layer.tar")
            .unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn loads_docker_archives() {
        for gz in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let home = Home::new(dir.path().join("home"));
            let store = Store::open(&home).unwrap();
            let src = dir.path().join("a.tar");
            fs::write(&src, docker_archive(gz)).unwrap();
            let imgs = load(&store, &src).unwrap();
            assert_eq!(imgs.len(), 1);
            assert_eq!(imgs[0].reference, "docker.io/library/app:1");
            let rec = &store.read_index().unwrap().images["docker.io/library/app:1"];
            let m: Manifest =
                serde_json::from_slice(&store.read_blob(&rec.manifest).unwrap()).unwrap();
            let want = if gz {
                oci::MT_OCI_LAYER_GZIP
            } else {
                oci::MT_OCI_LAYER
            };
            assert_eq!(m.layers[0].media_type, want);
            assert!(store.has_blob(&m.layers[0].digest));
            assert_eq!(fs::read_dir(home.tmp_dir()).unwrap().count(), 0);
        }
    }

    #[test]
    fn bad_archives_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("home"));
        let store = Store::open(&home).unwrap();
        let good = docker_archive(false);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", b"this is not an archive at all".repeat(100)),
            ("truncated", good[..good.len() / 2].to_vec()),
            ("empty tar", tar_of(&[])),
            ("no format", tar_of(&[("x", b"y")])),
            ("escape", {
                let mut d = tar_of(&[("zz/evil", b"y")]);
                d[..2].copy_from_slice(b"..");
                let mut h = tar::Header::from_byte_slice(&d[..512]).clone();
                h.set_cksum();
                d[..512].copy_from_slice(h.as_bytes());
                d
            }),
            ("bad json", tar_of(&[("manifest.json", b"{nope")])),
        ];
        for (name, data) in cases {
            let src = dir.path().join("in.tar");
            fs::write(&src, &data).unwrap();
            let err = load(&store, &src).unwrap_err();
            assert!(err.is_user_error(), "{name}: {err}");
            assert_store_empty(&home);
        }
        // Too many entries.
        let src = dir.path().join("in.tar");
        fs::write(&src, good).unwrap();
        let err = load_with_limits(
            &store,
            &src,
            Limits {
                max_bytes: 1 << 30,
                max_entries: 2,
            },
        )
        .unwrap_err();
        assert!(matches!(err, ArchiveError::TooManyEntries(2)));
        assert_store_empty(&home);
    }

    #[test]
    fn import_makes_a_one_layer_image() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("home"));
        let store = Store::open(&home).unwrap();
        let src = dir.path().join("rootfs.tar");
        let layer = tar_of(&[("bin/sh", b"#!")]);
        fs::write(&src, &layer).unwrap();
        let s = import(&store, &src, "localhost/imp").unwrap();
        assert_eq!(s.reference, "localhost/imp:latest");
        let cfg: serde_json::Value =
            serde_json::from_slice(&store.read_blob(&s.id).unwrap()).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][0], sha256_digest(&layer));
        assert_eq!(cfg["os"], "linux");
        fs::write(&src, b"garbage garbage").unwrap();
        assert!(import(&store, &src, "localhost/x").is_err());
        assert!(matches!(
            import(&store, &src, "Bad Ref"),
            Err(ArchiveError::ImportReference(_))
        ));
    }
}
