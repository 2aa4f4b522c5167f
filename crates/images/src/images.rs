//! The image service: what the apiserver asks of `vessel-images`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use vessel_api::error::ErrorKind;
use vessel_api::paths::Home;
use vessel_api::types::{ImageSummary, ResolvedImage};

use crate::archive::{self, ArchiveError};
use crate::ext4::{self, Ext4Error};
use crate::oci::{ImageConfig, Manifest};
use crate::reference::{is_hex64, is_sha256_digest, normalize, Reference, ReferenceError};
use crate::store::{ImageRecord, Store, StoreError};
use crate::unpack::Budget;

/// Errors of the image service.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("image {0} not found; pull it with `vessel pull {0}`, load one with `vessel image load -i FILE`, or list images with `vessel image ls`")]
    NotFound(String),
    #[error("Image ID prefix {0} matches more than one image; give more digits")]
    Ambiguous(String),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("Cannot load the image")]
    Archive(#[from] ArchiveError),
    #[error("Cannot build the image's root filesystem")]
    Ext4(#[from] Ext4Error),
    #[error("Content store error")]
    Store(#[from] StoreError),
    #[error("Image {0} has a malformed manifest or config")]
    Corrupt(String, #[source] serde_json::Error),
    #[error("Cannot tag as {0}: {1}")]
    BadTag(String, &'static str),
}

impl ImagesError {
    /// The kind of error answer this is (and so its HTTP status).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImagesError::NotFound(_) => ErrorKind::ImageNotFound,
            ImagesError::Ambiguous(_) | ImagesError::Reference(_) | ImagesError::BadTag(..) => {
                ErrorKind::InvalidArgument
            }
            ImagesError::Archive(e) if e.is_user_error() => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        }
    }

    /// The image the request named, for the not-found answer.
    pub fn name(&self) -> Option<&str> {
        match self {
            ImagesError::NotFound(n) => Some(n),
            _ => None,
        }
    }

    /// The image's own content is refused (a hostile or oversized layer, a
    /// malformed manifest or config), as opposed to the host failing to
    /// build it or the image being gone.
    pub fn refuses_content(&self) -> bool {
        match self {
            ImagesError::Corrupt(..) => true,
            ImagesError::Ext4(Ext4Error::Unpack { source, .. }) => source.refuses_content(),
            _ => false,
        }
    }
}

/// `DELETE /images` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveResult {
    /// References (or IDs of untagged images) removed.
    pub removed: Vec<String>,
    /// Blobs deleted because no image uses them any more.
    pub deleted: Vec<String>,
    /// Bytes freed, ext4 bases included.
    #[serde(default)]
    pub reclaimed: u64,
}

/// `POST /images/prune` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneResult {
    /// References (or IDs of untagged images) removed.
    pub removed: Vec<String>,
    /// Blobs deleted.
    pub deleted: Vec<String>,
    /// Bytes freed, ext4 bases included.
    pub reclaimed: u64,
}

/// Body of `DELETE /images` and `POST /images/prune`: image IDs that
/// containers use, whose data must stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepBody {
    #[serde(default)]
    pub keep: Vec<String>,
}

/// How a name matched an image.
#[derive(Debug, Clone)]
pub struct Found {
    /// The index key: a normalized reference, or the ID of an untagged image.
    pub key: String,
    pub record: ImageRecord,
    /// The name was an image ID (or prefix), not a reference.
    pub by_id: bool,
}

/// The images of one instance.
#[derive(Debug, Clone)]
pub struct Images {
    store: Store,
    budget: Budget,
}

impl Images {
    pub fn open(home: &Home) -> Result<Self, ImagesError> {
        Ok(Self {
            store: Store::open(home)?,
            budget: Budget::from_env(),
        })
    }

    /// Override the unpack budget (tests).
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every reference, sorted.
    pub fn list(&self) -> Result<Vec<ImageSummary>, ImagesError> {
        let index = self.store.read_index()?;
        Ok(index
            .images
            .iter()
            .map(|(k, r)| ImageSummary {
                reference: k.clone(),
                id: r.config.clone(),
                digest: r.manifest.clone(),
                created: r.created.clone(),
                size: r.size,
            })
            .collect())
    }

    pub fn load(&self, path: &Path) -> Result<Vec<ImageSummary>, ImagesError> {
        Ok(archive::load(&self.store, path)?)
    }

    pub fn import(&self, path: &Path, reference: &str) -> Result<ImageSummary, ImagesError> {
        Ok(archive::import(&self.store, path, reference)?)
    }

    /// Find an image by reference (normalized), image ID, or unique ID prefix
    /// (at least 4 hex digits, with or without `sha256:`). A short name
    /// (`busybox`) that is not on docker.io locally also finds `localhost/busybox`.
    pub fn lookup(&self, name: &str) -> Result<Found, ImagesError> {
        let index = self.store.read_index()?;
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        let is_hex = hex.len() >= 4 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let by_id = |matches: &dyn Fn(&str) -> bool| -> Vec<(&String, &ImageRecord)> {
            let mut v: Vec<_> = index
                .images
                .iter()
                .filter(|(_, r)| matches(&r.config[7..]))
                .collect();
            // Prefer a real reference over the ID key of an untagged image.
            v.sort_by_key(|(k, _)| k.starts_with("sha256:"));
            v
        };
        if is_hex64(hex) {
            if let Some((k, r)) = by_id(&|id| id == hex).first() {
                return Ok(found(k, r, true));
            }
        }
        if let Ok(full) = normalize(name) {
            if let Some(r) = index.images.get(&full) {
                return Ok(found(&full, r, false));
            }
            // Like podman: a short name also finds a local `localhost/` image.
            if !name.starts_with("docker.io/") && full.starts_with("docker.io/") {
                if let Ok(local) = normalize(&format!("localhost/{name}")) {
                    if let Some(r) = index.images.get(&local) {
                        return Ok(found(&local, r, false));
                    }
                }
            }
        }
        if is_hex {
            let hits = by_id(&|id| id.starts_with(hex));
            let mut ids: Vec<&str> = hits.iter().map(|(_, r)| r.config.as_str()).collect();
            ids.dedup();
            match ids.len() {
                0 => {}
                1 => return Ok(found(hits[0].0, hits[0].1, true)),
                _ => return Err(ImagesError::Ambiguous(name.to_string())),
            }
        }
        // A malformed name is a 400, an unknown one a 404.
        let shown = match normalize(name) {
            Ok(full) => full,
            Err(e) if !is_hex => return Err(e.into()),
            Err(_) => name.to_string(),
        };
        Err(ImagesError::NotFound(shown))
    }

    fn manifest(&self, r: &ImageRecord) -> Result<Manifest, ImagesError> {
        serde_json::from_slice(&self.store.read_blob(&r.manifest)?)
            .map_err(|e| ImagesError::Corrupt(r.config.clone(), e))
    }

    fn manifest_and_config(
        &self,
        r: &ImageRecord,
    ) -> Result<(Manifest, serde_json::Value), ImagesError> {
        let m = self.manifest(r)?;
        let c: serde_json::Value = serde_json::from_slice(&self.store.read_blob(&r.config)?)
            .map_err(|e| ImagesError::Corrupt(r.config.clone(), e))?;
        Ok((m, c))
    }

    /// The ext4 base of the image `record`, built if missing.
    pub fn ensure_base(&self, record: &ImageRecord) -> Result<std::path::PathBuf, ImagesError> {
        self.base_of(record, &self.manifest(record)?)
    }

    fn base_of(
        &self,
        record: &ImageRecord,
        manifest: &Manifest,
    ) -> Result<std::path::PathBuf, ImagesError> {
        Ok(ext4::ensure_rootfs(
            &self.store,
            &record.config,
            manifest,
            self.budget,
        )?)
    }

    /// What a container of `name` needs; builds the ext4 base if missing.
    pub fn resolve(&self, name: &str) -> Result<ResolvedImage, ImagesError> {
        let f = self.lookup(name)?;
        let (manifest, config_json) = self.manifest_and_config(&f.record)?;
        let config: ImageConfig = serde_json::from_value(config_json)
            .map_err(|e| ImagesError::Corrupt(f.record.config.clone(), e))?;
        let rootfs = self.base_of(&f.record, &manifest)?;
        Ok(ResolvedImage {
            reference: f.key,
            id: f.record.config.clone(),
            config: config.runtime_config(),
            rootfs,
        })
    }

    /// The image config plus its ID, manifest digest and references.
    pub fn inspect(&self, name: &str) -> Result<serde_json::Value, ImagesError> {
        let f = self.lookup(name)?;
        let (_, config) = self.manifest_and_config(&f.record)?;
        let index = self.store.read_index()?;
        let references: Vec<&String> = index
            .images
            .iter()
            .filter(|(_, r)| r.config == f.record.config)
            .map(|(k, _)| k)
            .collect();
        Ok(serde_json::json!({
            "id": f.record.config,
            "digest": f.record.manifest,
            "references": references,
            "created": f.record.created,
            "size": f.record.size,
            "config": config,
        }))
    }

    /// Remove a reference (or, given an ID, every reference of that image),
    /// then delete blobs and rootfs images nothing refers to any more. The
    /// caller checks that no container uses the image.
    pub fn remove(&self, name: &str) -> Result<RemoveResult, ImagesError> {
        self.remove_keep(name, &BTreeSet::new())
    }

    /// [`Images::remove`], keeping the data of images whose IDs are in
    /// `keep` (used by containers): such an image that loses its last
    /// reference stays, untagged (its ID is its key), like Docker's
    /// `rmi -f` of an image in use. The index change is committed before
    /// anything is deleted.
    pub fn remove_keep(
        &self,
        name: &str,
        keep: &BTreeSet<String>,
    ) -> Result<RemoveResult, ImagesError> {
        let f = self.lookup(name)?;
        let removed = self
            .store
            .update_index(|index| -> Result<Vec<String>, ImagesError> {
                let keys: Vec<String> = if f.by_id {
                    index
                        .images
                        .iter()
                        .filter(|(_, r)| r.config == f.record.config)
                        .map(|(k, _)| k.clone())
                        .collect()
                } else {
                    vec![f.key.clone()]
                };
                let mut removed = Vec::new();
                for k in keys {
                    if let Some(rec) = index.images.remove(&k) {
                        removed.push((k, rec));
                    }
                }
                if removed.is_empty() {
                    return Err(ImagesError::NotFound(name.to_string()));
                }
                let mut out = Vec::new();
                for (k, rec) in removed {
                    let still_named = index.images.values().any(|r| r.config == rec.config);
                    if !still_named && keep.contains(&rec.config) {
                        index.images.insert(rec.config.clone(), rec.clone());
                    }
                    if !index.images.contains_key(&k) {
                        out.push(k);
                    }
                }
                Ok(out)
            })?;
        let gc = self.store.collect(keep)?;
        Ok(RemoveResult {
            removed,
            deleted: gc.deleted,
            reclaimed: gc.reclaimed,
        })
    }

    /// Remove untagged images (with `all`, every image) whose IDs are not in
    /// `keep`, then collect garbage.
    pub fn prune(&self, all: bool, keep: &BTreeSet<String>) -> Result<PruneResult, ImagesError> {
        let removed = self
            .store
            .update_index(|index| -> Result<Vec<String>, ImagesError> {
                let doomed: Vec<String> = index
                    .images
                    .iter()
                    .filter(|(k, r)| (all || is_sha256_digest(k)) && !keep.contains(&r.config))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &doomed {
                    index.images.remove(k);
                }
                Ok(doomed)
            })?;
        let gc = self.store.collect(keep)?;
        Ok(PruneResult {
            removed,
            deleted: gc.deleted,
            reclaimed: gc.reclaimed,
        })
    }

    /// Give the image `source` (reference, ID or ID prefix) the reference
    /// `target` (normalized). An image `target` named before keeps its data,
    /// untagged, if nothing else names it.
    pub fn tag(&self, source: &str, target: &str) -> Result<ImageSummary, ImagesError> {
        let r = Reference::parse(target)?;
        if r.digest.is_some() {
            return Err(ImagesError::BadTag(
                target.to_string(),
                "a tag cannot contain a digest",
            ));
        }
        if r.path.rsplit('/').next().is_some_and(is_hex64) {
            return Err(ImagesError::BadTag(
                target.to_string(),
                "a repository name cannot be a 64-digit hexadecimal string",
            ));
        }
        let target = r.to_string();
        let f = self.lookup(source)?;
        self.store
            .update_index(|index| -> Result<ImageSummary, ImagesError> {
                // Removed meanwhile? Its blobs may be gone.
                if !index.images.values().any(|r| r.config == f.record.config) {
                    return Err(ImagesError::NotFound(source.to_string()));
                }
                let key = archive::tag(index, Some(target.clone()), f.record.clone());
                Ok(ImageSummary {
                    reference: key,
                    id: f.record.config.clone(),
                    digest: f.record.manifest.clone(),
                    created: f.record.created.clone(),
                    size: f.record.size,
                })
            })
    }

    /// Write an archive of the images `names` to `w`: an OCI image layout
    /// that is also a `docker save` archive ([`archive::save`]). Every name
    /// is resolved and every blob opened before the first byte is written,
    /// so a failure is an error, not a truncated archive; `start` is called
    /// then (to send the response head).
    pub fn save<W: Write>(
        &self,
        names: &[&str],
        start: impl FnOnce() -> std::io::Result<W>,
    ) -> Result<(), ImagesError> {
        if names.is_empty() {
            return Err(ImagesError::NotFound(String::new()));
        }
        let mut items = Vec::new();
        for n in names {
            let f = self.lookup(n)?;
            items.push(archive::SaveItem {
                name: if f.by_id { None } else { Some(f.key) },
                record: f.record,
            });
        }
        Ok(archive::save(&self.store, &items, start)?)
    }
}

fn found(key: &str, r: &ImageRecord, by_id: bool) -> Found {
    Found {
        key: key.to_string(),
        record: r.clone(),
        by_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Read;

    struct Fx {
        dir: tempfile::TempDir,
        images: Images,
    }

    fn fixture() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::open(&Home::new(dir.path().join("home"))).unwrap();
        Fx { dir, images }
    }

    impl Fx {
        /// Import a one-file image named `reference` with `content`.
        fn import(&self, reference: &str, content: &[u8]) -> ImageSummary {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, "file", content).unwrap();
            let src = self.dir.path().join("in.tar");
            fs::write(&src, b.into_inner().unwrap()).unwrap();
            self.images.import(&src, reference).unwrap()
        }

        fn blobs(&self) -> usize {
            let d = self
                .images
                .store()
                .home()
                .content_dir()
                .join("blobs/sha256");
            fs::read_dir(d).unwrap().count()
        }

        fn keys(&self) -> Vec<String> {
            self.images
                .list()
                .unwrap()
                .into_iter()
                .map(|s| s.reference)
                .collect()
        }
    }

    fn keep(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tag_by_reference_id_and_prefix() {
        let fx = fixture();
        let a = fx.import("localhost/a:1", b"a");
        let s = fx.images.tag("localhost/a:1", "b").unwrap();
        assert_eq!(s.reference, "docker.io/library/b:latest");
        assert_eq!(
            (s.id.as_str(), s.digest.as_str()),
            (a.id.as_str(), a.digest.as_str())
        );
        let s = fx.images.tag(&a.id[7..19], "localhost/c:2").unwrap();
        assert_eq!(s.id, a.id);
        assert_eq!(
            fx.keys(),
            [
                "docker.io/library/b:latest",
                "localhost/a:1",
                "localhost/c:2"
            ]
        );
        // Retagging a name onto another image leaves the old one untagged
        // only if nothing else names it.
        let other = fx.import("localhost/o:1", b"o");
        fx.images.tag("localhost/a:1", "localhost/o:1").unwrap();
        assert!(fx.keys().contains(&other.id), "{:?}", fx.keys());
        for (bad, why) in [
            (
                "localhost/x@sha256:".to_string() + &"0".repeat(64),
                "digest",
            ),
            ("0".repeat(64), "hexadecimal"),
        ] {
            let e = fx.images.tag("localhost/a:1", &bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(e.to_string().contains(why), "{e}");
        }
        let e = fx.images.tag("nope:1", "x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ImageNotFound);
        // Named in full: the apiserver names it as its client did.
        assert_eq!(e.name(), Some("docker.io/library/nope:1"));
        assert_eq!(
            fx.images.tag("localhost/a:1", "Bad").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn remove_frees_blobs_and_bases_but_keeps_images_in_use() {
        let fx = fixture();
        let a = fx.import("localhost/a:1", b"a");
        fx.images.tag("localhost/a:1", "localhost/a:2").unwrap();
        let b = fx.import("localhost/b:1", b"b");
        assert_eq!(fx.blobs(), 6);
        // Build a's ext4 base.
        let base = fx.images.resolve("localhost/a:1").unwrap().rootfs;
        assert!(base.is_file());

        // Untag one of two names: nothing is freed.
        let r = fx.images.remove_keep("localhost/a:2", &keep(&[])).unwrap();
        assert_eq!(r.removed, ["localhost/a:2"]);
        assert!(r.deleted.is_empty());
        // The last name of an image in use: untagged, data kept.
        let r = fx
            .images
            .remove_keep("localhost/a:1", &keep(&[&a.id]))
            .unwrap();
        assert_eq!(r.removed, ["localhost/a:1"]);
        assert!(r.deleted.is_empty() && r.reclaimed == 0, "{r:?}");
        assert!(base.is_file());
        assert_eq!(fx.keys(), ["localhost/b:1".to_string(), a.id.clone()]);
        // Dangling prune spares it while in use...
        let p = fx.images.prune(false, &keep(&[&a.id])).unwrap();
        assert!(p.removed.is_empty() && p.deleted.is_empty(), "{p:?}");
        // ...and frees it, ext4 base included, once not.
        let p = fx.images.prune(false, &keep(&[])).unwrap();
        assert_eq!(p.removed, vec![a.id.clone()]);
        assert_eq!(p.deleted.len(), 3);
        assert!(!base.exists());
        let rootfs = fx.images.store().home().rootfs_dir();
        assert_eq!(
            fs::read_dir(&rootfs).unwrap().count(),
            0,
            "lock file gone too"
        );
        assert!(p.reclaimed > 0);
        assert_eq!(fx.blobs(), 3);
        // prune -a spares images in use, removes the rest.
        let p = fx.images.prune(true, &keep(&[&b.id])).unwrap();
        assert!(p.removed.is_empty());
        let p = fx.images.prune(true, &keep(&[])).unwrap();
        assert_eq!(p.removed, ["localhost/b:1"]);
        assert_eq!(fx.blobs(), 0);
        assert!(fx.keys().is_empty());
    }

    #[test]
    fn remove_by_id_removes_every_name() {
        let fx = fixture();
        let a = fx.import("localhost/a:1", b"a");
        fx.images.tag(&a.id, "localhost/a:2").unwrap();
        let r = fx.images.remove(&a.id[7..20]).unwrap();
        assert_eq!(r.removed, ["localhost/a:1", "localhost/a:2"]);
        assert_eq!(r.deleted.len(), 3);
        assert_eq!(fx.blobs(), 0);
    }

    #[test]
    fn save_then_remove_then_load_round_trips() {
        let fx = fixture();
        let a = fx.import("localhost/a:1", b"hello");
        fx.images
            .tag("localhost/a:1", "example.com/team/a:v2")
            .unwrap();
        let b = fx.import("b", b"bbb");
        let mut out = Vec::new();
        fx.images
            .save(&["localhost/a:1", "example.com/team/a:v2", "b"], || {
                Ok(&mut out)
            })
            .unwrap();

        // The archive: OCI layout plus docker's manifest.json.
        let mut files = std::collections::BTreeMap::new();
        let mut ar = tar::Archive::new(&out[..]);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            files.insert(p, data);
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let ms = index["manifests"].as_array().unwrap();
        assert_eq!(ms.len(), 3);
        assert_eq!(ms[0]["digest"], a.digest.as_str());
        assert_eq!(
            ms[0]["annotations"]["io.containerd.image.name"],
            "localhost/a:1"
        );
        assert_eq!(
            ms[0]["annotations"]["org.opencontainers.image.ref.name"],
            "1"
        );
        assert_eq!(
            ms[1]["annotations"]["io.containerd.image.name"],
            "example.com/team/a:v2"
        );
        let docker: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(docker.as_array().unwrap().len(), 2, "one entry per image");
        assert_eq!(
            docker[0]["RepoTags"],
            serde_json::json!(["localhost/a:1", "example.com/team/a:v2"])
        );
        assert_eq!(docker[1]["RepoTags"], serde_json::json!(["b:latest"]));
        let cfg = docker[0]["Config"].as_str().unwrap();
        assert_eq!(cfg, format!("blobs/sha256/{}", &a.id[7..]));
        assert!(files.contains_key(cfg));
        for l in docker[0]["Layers"].as_array().unwrap() {
            assert!(files.contains_key(l.as_str().unwrap()));
        }
        assert_eq!(
            crate::store::sha256_digest(&files[&format!("blobs/sha256/{}", &a.digest[7..])]),
            a.digest
        );
        assert!(files.contains_key("oci-layout"));

        // rm everything, then load: same IDs and manifest digests.
        fx.images.prune(true, &BTreeSet::new()).unwrap();
        assert_eq!(fx.blobs(), 0);
        let path = fx.dir.path().join("saved.tar");
        fs::write(&path, &out).unwrap();
        let loaded = fx.images.load(&path).unwrap();
        let mut got: Vec<(String, String, String)> = loaded
            .into_iter()
            .map(|s| (s.reference, s.id, s.digest))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                (
                    "docker.io/library/b:latest".to_string(),
                    b.id.clone(),
                    b.digest.clone()
                ),
                (
                    "example.com/team/a:v2".to_string(),
                    a.id.clone(),
                    a.digest.clone()
                ),
                ("localhost/a:1".to_string(), a.id.clone(), a.digest.clone()),
            ]
        );
        // Saved by ID: untagged in the archive, loads untagged.
        let mut out = Vec::new();
        fx.images.save(&[&a.id], || Ok(&mut out)).unwrap();
        fx.images.prune(true, &BTreeSet::new()).unwrap();
        fs::write(&path, &out).unwrap();
        let loaded = fx.images.load(&path).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(
            (loaded[0].reference.as_str(), loaded[0].digest.as_str()),
            (a.id.as_str(), a.digest.as_str())
        );
    }

    #[test]
    fn save_of_a_missing_image_writes_nothing() {
        let fx = fixture();
        fx.import("localhost/a:1", b"a");
        let mut started = false;
        let e = fx
            .images
            .save(&["localhost/a:1", "localhost/nope:1"], || {
                started = true;
                Ok(Vec::new())
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ImageNotFound);
        assert!(!started);
    }
}
