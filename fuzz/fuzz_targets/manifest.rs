//! Manifest, index and config parsing as the registry pull and archive load
//! use it: classification by content type and body, the serde documents,
//! platform selection. Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vessel_images::oci::{self, ImageConfig, ImageIndex, Manifest, PlatformSpec};

const CONTENT_TYPES: &[&str] = &[
    "",
    "application/json",
    oci::MT_OCI_INDEX,
    oci::MT_OCI_MANIFEST,
    oci::MT_DOCKER_LIST,
    oci::MT_DOCKER_MANIFEST,
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "text/html",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let ct = CONTENT_TYPES[sel as usize % CONTENT_TYPES.len()];
    let _ = oci::classify_document(ct, body);
    let _ = oci::manifest_media_type(body);
    if let Ok(m) = serde_json::from_slice::<Manifest>(body) {
        let _ = oci::is_config_media_type(&m.config.media_type);
        for l in &m.layers {
            let _ = oci::is_supported_layer(&l.media_type);
        }
        let _ = serde_json::to_vec(&m).expect("a parsed manifest serializes");
    }
    if let Ok(ix) = serde_json::from_slice::<ImageIndex>(body) {
        let _ = PlatformSpec::host().select(&ix.manifests);
        let _ = oci::available_platforms(&ix.manifests);
        for spec in ["linux/arm64/v8", "linux/arm/v7", "windows/amd64"] {
            if let Ok(p) = PlatformSpec::parse(spec) {
                let _ = p.select(&ix.manifests);
            }
        }
    }
    if let Ok(c) = serde_json::from_slice::<ImageConfig>(body) {
        let _ = c.runtime_config();
    }
    if let Ok(s) = std::str::from_utf8(body) {
        let _ = PlatformSpec::parse(s);
    }
});
