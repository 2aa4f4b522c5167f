//! The image service: what the apiserver asks of `vessel-images`.

use serde::{Deserialize, Serialize};
use std::path::Path;
use vessel_api::paths::Home;
use vessel_api::types::{ImageSummary, ResolvedImage};

use crate::archive::{self, ArchiveError};
use crate::ext4::{self, Ext4Error};
use crate::oci::{ImageConfig, Manifest};
use crate::reference::{is_hex64, normalize, ReferenceError};
use crate::store::{ImageRecord, Store, StoreError};
use crate::unpack::Budget;

/// Errors of the image service.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("image {0} not found; load it with `vessel image load -i FILE` or list images with `vessel image ls`")]
    NotFound(String),
    #[error("Image ID prefix {0} matches more than one image; give more digits")]
    Ambiguous(String),
    #[error("Invalid image reference")]
    Reference(#[from] ReferenceError),
    #[error("Cannot load the image")]
    Archive(#[from] ArchiveError),
    #[error("Cannot build the image's root filesystem")]
    Ext4(#[from] Ext4Error),
    #[error("Content store error")]
    Store(#[from] StoreError),
    #[error("Image {0} has a malformed manifest or config")]
    Corrupt(String, #[source] serde_json::Error),
}

impl ImagesError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            ImagesError::NotFound(_) => 404,
            ImagesError::Ambiguous(_) | ImagesError::Reference(_) => 400,
            ImagesError::Archive(e) if e.is_user_error() => 400,
            _ => 500,
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
            budget: Budget::default(),
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

    fn manifest_and_config(
        &self,
        r: &ImageRecord,
    ) -> Result<(Manifest, serde_json::Value), ImagesError> {
        let m: Manifest = serde_json::from_slice(&self.store.read_blob(&r.manifest)?)
            .map_err(|e| ImagesError::Corrupt(r.config.clone(), e))?;
        let c: serde_json::Value = serde_json::from_slice(&self.store.read_blob(&r.config)?)
            .map_err(|e| ImagesError::Corrupt(r.config.clone(), e))?;
        Ok((m, c))
    }

    /// What a container of `name` needs; builds the ext4 base if missing.
    pub fn resolve(&self, name: &str) -> Result<ResolvedImage, ImagesError> {
        let f = self.lookup(name)?;
        let (manifest, config_json) = self.manifest_and_config(&f.record)?;
        let config: ImageConfig = serde_json::from_value(config_json)
            .map_err(|e| ImagesError::Corrupt(f.record.config.clone(), e))?;
        let rootfs = ext4::ensure_rootfs(&self.store, &f.record.config, &manifest, self.budget)?;
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
        let f = self.lookup(name)?;
        self.store
            .update_index(|index| -> Result<RemoveResult, ImagesError> {
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
                    if index.images.remove(&k).is_some() {
                        removed.push(k);
                    }
                }
                if removed.is_empty() {
                    return Err(ImagesError::NotFound(name.to_string()));
                }
                let deleted = self.store.gc(index)?;
                Ok(RemoveResult { removed, deleted })
            })
    }
}

fn found(key: &str, r: &ImageRecord, by_id: bool) -> Found {
    Found {
        key: key.to_string(),
        record: r.clone(),
        by_id,
    }
}
