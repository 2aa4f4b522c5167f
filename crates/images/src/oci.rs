//! The OCI image documents vessel reads and writes (image-spec v1), and the
//! media types it accepts.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MT_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MT_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
pub const MT_OCI_LAYER_ND: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const MT_OCI_LAYER_ND_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const MT_OCI_LAYER_ND_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker v2 schema 1 (signed and unsigned): refused, it is long deprecated.
pub const MT_DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const MT_DOCKER_SCHEMA1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Annotation containerd and docker put on an index entry: the full name.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI annotation: a full reference (skopeo) or only a tag.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Default `PATH` of an image that sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config vessel reads; the rest is kept as JSON.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// The `config` object of an image config; every field may be `null`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    /// `VOLUME`s: paths as keys of an object (values are empty objects).
    #[serde(rename = "Volumes", default)]
    pub volumes: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// `HEALTHCHECK`: kept as JSON, read leniently (an odd one is no check,
    /// not an unreadable image).
    #[serde(rename = "Healthcheck", default)]
    pub healthcheck: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    /// What vessel needs to build a container's process.
    pub fn runtime_config(&self) -> vessel_api::types::ImageRuntimeConfig {
        let c = self.config.clone().unwrap_or_default();
        vessel_api::types::ImageRuntimeConfig {
            env: c.env.unwrap_or_default(),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            volumes: c.volumes.unwrap_or_default().into_keys().collect(),
            healthcheck: c
                .healthcheck
                .as_ref()
                .and_then(vessel_api::health::Healthcheck::from_image_config),
        }
    }
}

/// How a layer stream is compressed, by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Look at the first bytes of `r` without consuming them.
    pub fn detect<R: BufRead>(r: &mut R) -> io::Result<Self> {
        let head = r.fill_buf()?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        })
    }

    /// The OCI layer media type of a blob compressed this way.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Compression::None => MT_OCI_LAYER,
            Compression::Gzip => MT_OCI_LAYER_GZIP,
            Compression::Zstd => MT_OCI_LAYER_ZSTD,
        }
    }
}

/// A reader of the uncompressed bytes of `r` (gzip and zstd detected by
/// magic; several concatenated frames or members are read in turn).
pub fn decompressed<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(256 * 1024, r);
    match Compression::detect(&mut br)? {
        Compression::None => Ok(Box::new(br)),
        Compression::Gzip => Ok(Box::new(flate2::bufread::MultiGzDecoder::new(br))),
        Compression::Zstd => Ok(Box::new(zstd::stream::read::Decoder::with_buffer(br)?)),
    }
}

/// Is `mt` a layer media type vessel can unpack?
pub fn is_supported_layer(mt: &str) -> bool {
    matches!(
        mt,
        MT_OCI_LAYER
            | MT_OCI_LAYER_GZIP
            | MT_OCI_LAYER_ZSTD
            | MT_DOCKER_LAYER
            | MT_DOCKER_LAYER_GZIP
            | MT_DOCKER_LAYER_ZSTD
            | MT_OCI_LAYER_ND
            | MT_OCI_LAYER_ND_GZIP
            | MT_OCI_LAYER_ND_ZSTD
            | ""
    )
}

/// Is `mt` the media type of an image index (OCI or Docker manifest list)?
pub fn is_index_media_type(mt: &str) -> bool {
    matches!(mt, MT_OCI_INDEX | MT_DOCKER_LIST)
}

/// Is `mt` the media type of a single-image manifest (OCI or Docker schema 2)?
pub fn is_manifest_media_type(mt: &str) -> bool {
    matches!(mt, MT_OCI_MANIFEST | MT_DOCKER_MANIFEST)
}

/// Is `mt` a container image config media type (empty: unspecified)?
pub fn is_config_media_type(mt: &str) -> bool {
    matches!(mt, MT_OCI_CONFIG | MT_DOCKER_CONFIG | "")
}

/// What kind of document a manifest (or index) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    Index,
    Manifest,
    Schema1,
}

/// Classify a manifest document by the media type the registry gave
/// (`Content-Type`), falling back to its `mediaType` field and shape.
/// `None`: not a document vessel knows.
pub fn classify_document(content_type: &str, data: &[u8]) -> Option<DocumentKind> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        schema_version: Option<u64>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        config: Option<serde_json::Value>,
        #[serde(default)]
        fs_layers: Option<serde_json::Value>,
    }
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let by_type = |mt: &str| {
        if is_index_media_type(mt) {
            Some(DocumentKind::Index)
        } else if is_manifest_media_type(mt) {
            Some(DocumentKind::Manifest)
        } else if mt == MT_DOCKER_SCHEMA1 || mt == MT_DOCKER_SCHEMA1_SIGNED {
            Some(DocumentKind::Schema1)
        } else {
            None
        }
    };
    let probe: Option<Probe> = serde_json::from_slice(data).ok();
    if let Some(p) = &probe {
        if p.schema_version == Some(1) || p.fs_layers.is_some() {
            return Some(DocumentKind::Schema1);
        }
        // The document's own mediaType wins over a generic Content-Type.
        if let Some(k) = p.media_type.as_deref().and_then(by_type) {
            return Some(k);
        }
    }
    if let Some(k) = by_type(ct) {
        return Some(k);
    }
    let p = probe?;
    if p.manifests.is_some() {
        Some(DocumentKind::Index)
    } else if p.config.is_some() {
        Some(DocumentKind::Manifest)
    } else {
        None
    }
}

/// The media type of a stored manifest: its `mediaType` field, else OCI.
pub fn manifest_media_type(data: &[u8]) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(data)
        .ok()
        .and_then(|p| p.media_type)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| MT_OCI_MANIFEST.to_string())
}

/// A platform asked for (`--platform os/arch[/variant]`), normalized the
/// way containerd does (`x86_64` -> `amd64`, `aarch64` -> `arm64`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// A `--platform` value that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/arm64")]
pub struct PlatformError(pub String);

const KNOWN_OS: &[&str] = &[
    "linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos", "aix",
    "android", "ios", "plan9", "js", "wasip1",
];

fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant
        .map(|v| v.to_ascii_lowercase())
        .filter(|v| !v.is_empty());
    match arch.as_str() {
        "x86_64" | "x86-64" | "amd64" => ("amd64".into(), variant),
        "i386" | "i486" | "i586" | "i686" | "x86" | "386" => ("386".into(), None),
        "aarch64" | "arm64" => {
            let v = match variant.as_deref() {
                None | Some("8") | Some("v8") => None,
                Some(_) => variant,
            };
            ("arm64".into(), v)
        }
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => {
            let v = match variant.as_deref() {
                None | Some("7") | Some("v7") => Some("v7".to_string()),
                Some("5") | Some("v5") => Some("v5".to_string()),
                Some("6") | Some("v6") => Some("v6".to_string()),
                Some("8") | Some("v8") => Some("v8".to_string()),
                Some(_) => variant,
            };
            ("arm".into(), v)
        }
        _ => (arch, variant),
    }
}

impl PlatformSpec {
    /// The platform of the machine vessel runs on.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "arm" => "arm",
            other => other,
        };
        let (architecture, variant) = normalize_arch(arch, None);
        Self {
            os: "linux".into(),
            architecture,
            variant,
        }
    }

    /// Parse `os/arch[/variant]`, `os` alone or `arch` alone (the missing
    /// part is the host's).
    pub fn parse(s: &str) -> Result<Self, PlatformError> {
        let bad = || PlatformError(s.to_string());
        let parts: Vec<&str> = s.trim().split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 32
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if parts.len() > 3 || !parts.iter().all(|p| ok(p)) {
            return Err(bad());
        }
        let host = Self::host();
        let (os, arch, variant) = match parts.as_slice() {
            [one] if KNOWN_OS.contains(&one.to_ascii_lowercase().as_str()) => {
                (one.to_ascii_lowercase(), host.architecture, host.variant)
            }
            [one] => ("linux".to_string(), one.to_string(), None),
            [os, arch] => (os.to_ascii_lowercase(), arch.to_string(), None),
            [os, arch, v] => (
                os.to_ascii_lowercase(),
                arch.to_string(),
                Some(v.to_string()),
            ),
            _ => return Err(bad()),
        };
        let (architecture, variant) = normalize_arch(&arch, variant.as_deref());
        Ok(Self {
            os,
            architecture,
            variant,
        })
    }

    /// Does an index entry's platform match? A variant asked for must match
    /// (`arm64` = `arm64/v8`, `arm` = `arm/v7`); none asked matches any.
    pub fn matches(&self, p: &Platform) -> bool {
        let (arch, variant) = normalize_arch(&p.architecture, p.variant.as_deref());
        p.os.eq_ignore_ascii_case(&self.os)
            && arch == self.architecture
            && (self.variant.is_none() || self.variant == variant)
    }

    /// Pick the entry of an index for this platform: the first match,
    /// preferring the default variant when none was asked for.
    pub fn select<'a>(&self, entries: &'a [Descriptor]) -> Option<&'a Descriptor> {
        let hits: Vec<&Descriptor> = entries
            .iter()
            .filter(|d| d.platform.as_ref().is_some_and(|p| self.matches(p)))
            .collect();
        if self.variant.is_none() {
            let default = normalize_arch(&self.architecture, None).1;
            if let Some(d) = hits.iter().find(|d| {
                d.platform.as_ref().is_some_and(|p| {
                    normalize_arch(&p.architecture, p.variant.as_deref()).1 == default
                })
            }) {
                return Some(d);
            }
        }
        hits.first().copied().or_else(|| match entries {
            // An index of one entry without a platform: take it.
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        })
    }
}

impl std::fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The platforms an index offers, for error messages (attestation entries
/// with os `unknown` are left out).
pub fn available_platforms(entries: &[Descriptor]) -> Vec<String> {
    let mut v: Vec<String> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| p.os != "unknown" && !p.os.is_empty())
        .map(|p| p.to_string())
        .collect();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_image_s_healthcheck_is_read_leniently() {
        let cfg: ImageConfig = serde_json::from_str(
            r#"{"config":{"Cmd":["sh"],"Healthcheck":{"Test":["CMD-SHELL","test -f /ok"],"Interval":2000000000,"Retries":5}}}"#,
        )
        .unwrap();
        let h = cfg.runtime_config().healthcheck.unwrap();
        assert_eq!(h.test, vec!["CMD-SHELL", "test -f /ok"]);
        assert_eq!((h.interval_ms, h.retries), (2000, 5));
        // HEALTHCHECK NONE is kept (it turns an inherited check off).
        let cfg: ImageConfig =
            serde_json::from_str(r#"{"config":{"Healthcheck":{"Test":["NONE"]}}}"#).unwrap();
        assert!(cfg.runtime_config().healthcheck.unwrap().is_none());
        // An odd one is no check, and the image still reads.
        let cfg: ImageConfig =
            serde_json::from_str(r#"{"config":{"Cmd":["sh"],"Healthcheck":{"Test":"oops"}}}"#)
                .unwrap();
        let rc = cfg.runtime_config();
        assert_eq!((rc.healthcheck, rc.cmd), (None, vec!["sh".to_string()]));
        let cfg: ImageConfig = serde_json::from_str(r#"{"config":{"Healthcheck":null}}"#).unwrap();
        assert_eq!(cfg.runtime_config().healthcheck, None);
    }

    fn entry(os: &str, arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: MT_OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: variant.map(String::from),
            }),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn parses_platforms() {
        let p = PlatformSpec::parse("linux/arm64").unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "arm64"));
        assert_eq!(p.variant, None);
        assert_eq!(PlatformSpec::parse("linux/arm64/v8").unwrap().variant, None);
        assert_eq!(
            PlatformSpec::parse("linux/arm").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(
            PlatformSpec::parse("linux/arm/v6").unwrap().to_string(),
            "linux/arm/v6"
        );
        assert_eq!(
            PlatformSpec::parse("linux/x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            PlatformSpec::parse("arm64").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(PlatformSpec::parse("linux").unwrap().os, "linux");
        for bad in ["", "/", "linux/", "a/b/c/d", "linux/am d64", "linux//v7"] {
            assert!(PlatformSpec::parse(bad).is_err(), "{bad:?}");
        }
        let host = PlatformSpec::host();
        assert_eq!(host.os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(host.to_string(), "linux/amd64");
        #[cfg(target_arch = "aarch64")]
        assert_eq!(host.to_string(), "linux/arm64");
    }

    #[test]
    fn selects_manifests() {
        let idx = vec![
            entry("linux", "amd64", None, "a"),
            entry("linux", "arm", Some("v6"), "b"),
            entry("linux", "arm", Some("v7"), "c"),
            entry("linux", "arm64", Some("v8"), "d"),
            entry("unknown", "unknown", None, "e"),
        ];
        let sel = |s: &str| {
            PlatformSpec::parse(s)
                .unwrap()
                .select(&idx)
                .map(|d| d.digest.clone())
        };
        assert_eq!(sel("linux/amd64").as_deref(), Some("a"));
        assert_eq!(sel("linux/arm").as_deref(), Some("c"));
        assert_eq!(sel("linux/arm/v6").as_deref(), Some("b"));
        assert_eq!(sel("linux/arm64").as_deref(), Some("d"));
        assert_eq!(sel("linux/arm64/v8").as_deref(), Some("d"));
        assert_eq!(sel("linux/s390x"), None);
        assert_eq!(sel("windows/amd64"), None);
        assert_eq!(
            available_platforms(&idx),
            [
                "linux/amd64",
                "linux/arm/v6",
                "linux/arm/v7",
                "linux/arm64/v8"
            ]
        );
        let mut only = entry("linux", "amd64", None, "z");
        only.platform = None;
        assert_eq!(
            PlatformSpec::parse("linux/arm64")
                .unwrap()
                .select(std::slice::from_ref(&only))
                .map(|d| d.digest.as_str()),
            Some("z")
        );
    }

    #[test]
    fn classifies_documents() {
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(classify_document("", idx), Some(DocumentKind::Index));
        assert_eq!(
            classify_document(MT_DOCKER_LIST, idx),
            Some(DocumentKind::Index)
        );
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{}}"#;
        assert_eq!(
            classify_document("application/json", m),
            Some(DocumentKind::Manifest)
        );
        let s1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert_eq!(
            classify_document(MT_DOCKER_SCHEMA1_SIGNED, s1),
            Some(DocumentKind::Schema1)
        );
        assert_eq!(classify_document("text/html", b"<html>"), None);
        assert_eq!(manifest_media_type(m), MT_DOCKER_MANIFEST);
        assert_eq!(manifest_media_type(b"{}"), MT_OCI_MANIFEST);
    }

    #[test]
    fn decompresses_zstd() {
        let data = b"hello zstd layer".repeat(1000);
        let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        z.write_all(&data).unwrap();
        let mut frames = z.finish().unwrap();
        // Two concatenated frames read as one stream.
        let second = zstd::encode_all(&b"tail"[..], 1).unwrap();
        frames.extend_from_slice(&second);
        let mut out = Vec::new();
        decompressed(&frames[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        let mut want = data.clone();
        want.extend_from_slice(b"tail");
        assert_eq!(out, want);
        assert!(is_supported_layer(MT_OCI_LAYER_ZSTD));
    }
}
