//! Data in containers: bind mounts, named volumes and tmpfs, as the user
//! writes them (`-v`, `--mount`, `--tmpfs`, Docker's syntax) and as the
//! apiserver records them in a container's configuration.
//!
//! The CLI parses the flags into [`MountSpec`]s; the apiserver checks them
//! again with [`validate`] (the API is a boundary of its own) before it
//! resolves them (host paths made canonical, volumes created on first use).

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What a mount is backed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A host directory, shared into the container's VM alone over
    /// virtio-fs.
    Bind,
    /// A named (or anonymous) volume kept by vessel.
    Volume,
    /// Memory of the container's VM.
    Tmpfs,
}

impl MountType {
    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Volume => "volume",
            MountType::Tmpfs => "tmpfs",
        }
    }
}

/// One mount of a container: in a create request as the user asked for it,
/// and in the container's configuration as resolved (bind sources
/// canonical, anonymous volumes named).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    #[serde(rename = "type")]
    pub kind: MountType,
    /// Bind: an absolute host path. Volume: the volume's name, or empty
    /// for an anonymous volume (a new one, named by the apiserver).
    /// Tmpfs: empty.
    #[serde(default)]
    pub source: String,
    /// Absolute path in the container (not `/`).
    pub target: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly: bool,
    /// Bind from `-v`: a source that does not exist is created as a
    /// directory (Docker's `-v`); `--mount` refuses it instead.
    #[serde(default, skip_serializing_if = "is_false")]
    pub create_source: bool,
    /// Volume: do not copy the image's content at `target` into an empty
    /// volume (`nocopy`, `volume-nocopy`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_copy: bool,
    /// Volume: made for this container alone (`-v /path`, the image's
    /// `VOLUME`s), removed with it by `rm -v` and `run --rm`. Set by the
    /// apiserver.
    #[serde(default, skip_serializing_if = "is_false")]
    pub anonymous: bool,
    /// Volume: a shared volume (`backing=shared`), a host directory served
    /// over virtio-fs, that several running containers may mount at once.
    /// Set by the apiserver from the volume store.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shared: bool,
    /// Tmpfs: its size limit in bytes (default: half the VM's memory, as
    /// the kernel's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<u64>,
    /// Tmpfs: the mode of its root (default 1777).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_mode: Option<u32>,
    /// Tmpfs: `noexec`, `nosuid`, `nodev` and their opposites, as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs_flags: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl MountSpec {
    fn new(kind: MountType, source: &str, target: &str) -> Self {
        MountSpec {
            kind,
            source: source.to_string(),
            target: target.to_string(),
            readonly: false,
            create_source: false,
            no_copy: false,
            anonymous: false,
            shared: false,
            tmpfs_size: None,
            tmpfs_mode: None,
            tmpfs_flags: Vec::new(),
        }
    }

    /// A tmpfs at `target` with the kernel's defaults.
    pub fn tmpfs(target: &str) -> Self {
        Self::new(MountType::Tmpfs, "", target)
    }

    /// A volume mount (`name` empty: anonymous).
    pub fn volume(name: &str, target: &str) -> Self {
        Self::new(MountType::Volume, name, target)
    }

    /// A bind mount of the host path `source`.
    pub fn bind(source: &str, target: &str) -> Self {
        Self::new(MountType::Bind, source, target)
    }
}

/// A flag or request that does not describe a mount vessel can make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MountError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, MountError> {
    Err(MountError(msg.into()))
}

/// Docker's rule for volume names: a letter or digit, then letters,
/// digits, `_`, `.` or `-` (so never `/`, never `..`), at most 255 bytes.
pub fn validate_volume_name(name: &str) -> Result<(), MountError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name.len() > 255 || !first_ok || !rest_ok {
        return err(format!(
            "invalid volume name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// A container path: absolute, not `/`, without `.`/`..` components
/// (Docker cleans `..` away; vessel refuses it, so what is mounted is what
/// was written). Returns it without a trailing `/`.
pub fn clean_target(target: &str) -> Result<String, MountError> {
    if !target.starts_with('/') {
        return err(format!(
            "invalid mount target {target:?}: the path in the container must be absolute"
        ));
    }
    if target.contains('\0') {
        return err("invalid mount target: it contains a NUL byte");
    }
    let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return err("invalid mount target \"/\": the container's root cannot be a mount target");
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return err(format!(
            "invalid mount target {target:?}: '.' and '..' are not allowed in it"
        ));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// A host path: absolute, no NUL. Returns it without a trailing `/`.
fn clean_source(source: &str, flag: &str) -> Result<String, MountError> {
    if source.is_empty() {
        return err(format!(
            "{flag}: a bind mount needs a source (the host path)"
        ));
    }
    if !source.starts_with('/') {
        return err(format!(
            "{flag}: invalid source {source:?}: a host path must be absolute (for example \"$PWD/{}\")",
            source.trim_start_matches("./")
        ));
    }
    if source.contains('\0') {
        return err(format!("{flag}: the source contains a NUL byte"));
    }
    let trimmed = source.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
}

/// The flags a tmpfs accepts besides `size` and `mode`.
const TMPFS_FLAGS: [&str; 6] = ["exec", "noexec", "suid", "nosuid", "dev", "nodev"];

fn tmpfs_option(
    m: &mut MountSpec,
    key: &str,
    value: Option<&str>,
    flag: &str,
) -> Result<(), MountError> {
    match (key, value) {
        ("size" | "tmpfs-size", Some(v)) => {
            let bytes = crate::types::parse_memory(v)
                .map_err(|e| MountError(format!("{flag}: tmpfs size: {e}")))?;
            m.tmpfs_size = Some(bytes);
        }
        ("mode" | "tmpfs-mode", Some(v)) => {
            let mode = u32::from_str_radix(v, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    MountError(format!("{flag}: invalid tmpfs mode {v:?}: an octal mode such as 1777"))
                })?;
            m.tmpfs_mode = Some(mode);
        }
        ("ro" | "readonly", None) => m.readonly = true,
        ("rw", None) => m.readonly = false,
        (f, None) if TMPFS_FLAGS.contains(&f) => m.tmpfs_flags.push(f.to_string()),
        _ => {
            return err(format!(
                "{flag}: unknown tmpfs option {:?} (known: size=, mode=, ro, rw, exec, noexec, suid, nosuid, dev, nodev)",
                match value {
                    Some(v) => format!("{key}={v}"),
                    None => key.to_string(),
                }
            ))
        }
    }
    Ok(())
}

/// Docker mounts every tmpfs `noexec`, `nosuid` and `nodev` unless its
/// options say `exec`, `suid` or `dev`.
fn default_tmpfs_flags() -> Vec<String> {
    vec!["noexec".into(), "nosuid".into(), "nodev".into()]
}

/// `--tmpfs PATH[:OPTIONS]` (options separated by commas: `size=64m`,
/// `mode=1777`, `ro`, `noexec`...). Docker mounts these `noexec`, `nosuid`
/// and `nodev` unless told otherwise.
pub fn parse_tmpfs_flag(s: &str) -> Result<MountSpec, MountError> {
    let (target, opts) = match s.split_once(':') {
        Some((t, o)) => (t, o),
        None => (s, ""),
    };
    let mut m = MountSpec::tmpfs(&clean_target(target)?);
    m.tmpfs_flags = default_tmpfs_flags();
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        let (k, v) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        tmpfs_option(&mut m, k, v, "--tmpfs")?;
    }
    Ok(m)
}

/// `base` joined with the relative `rel`, `.` and `..` resolved by name
/// (as Docker's CLI does for `-v ./dir:...`).
fn lexical_join(base: &std::path::Path, rel: &str) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::from("/");
    for c in base.join(rel).components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// `-v`/`--volume`: `HOST:CTR[:OPTS]` (a bind mount; the host path must be
/// absolute, or start with `./` or `../`, made absolute against `cwd`, as
/// Docker's CLI does), `NAME:CTR[:OPTS]` (a named volume), `CTR` (an
/// anonymous volume). Options, comma-separated: `ro`, `rw`, `nocopy`, and
/// the SELinux labels `z`/`Z` (no meaning in a VM of its own; accepted).
pub fn parse_volume_flag(s: &str, cwd: &std::path::Path) -> Result<MountSpec, MountError> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, opts) = match parts.as_slice() {
        [t] => ("", *t, ""),
        [a, b] if b.starts_with('/') || b.is_empty() => (*a, *b, ""),
        // `CTR:OPTS` (Docker accepts `-v /data:ro` for an anonymous volume).
        [t, o] => ("", *t, *o),
        [a, b, c] => (*a, *b, *c),
        _ => {
            return err(format!(
                "invalid -v {s:?}: expected HOST-PATH:CONTAINER-PATH[:OPTIONS], NAME:CONTAINER-PATH[:OPTIONS] or CONTAINER-PATH"
            ))
        }
    };
    if target.is_empty() {
        return err(format!("invalid -v {s:?}: the container path is empty"));
    }
    let target = clean_target(target)?;
    let mut m = if source.is_empty() {
        MountSpec::volume("", &target)
    } else if source.starts_with('/') {
        let mut m = MountSpec::bind(&clean_source(source, "-v")?, &target);
        m.create_source = true;
        m
    } else if source == "."
        || source == ".."
        || source.starts_with("./")
        || source.starts_with("../")
    {
        let abs = lexical_join(cwd, source);
        let abs = abs
            .to_str()
            .ok_or_else(|| MountError(format!("-v: the path {source:?} is not UTF-8")))?;
        let mut m = MountSpec::bind(&clean_source(abs, "-v")?, &target);
        m.create_source = true;
        m
    } else {
        validate_volume_name(source)?;
        MountSpec::volume(source, &target)
    };
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => m.readonly = true,
            "rw" => m.readonly = false,
            "z" | "Z" => {}
            "nocopy" if m.kind == MountType::Volume => m.no_copy = true,
            _ => {
                return err(format!(
                    "invalid -v {s:?}: unknown option {opt:?} (known: ro, rw, nocopy for volumes, z, Z)"
                ))
            }
        }
    }
    Ok(m)
}

/// `--mount type=bind|volume|tmpfs,source=...,target=...[,readonly]`, with
/// Docker's key aliases (`src`, `dst`/`destination`, `ro`) and options
/// (`volume-nocopy`, `tmpfs-size`, `tmpfs-mode`). A bind source must exist
/// (checked by the apiserver).
pub fn parse_mount_flag(s: &str) -> Result<MountSpec, MountError> {
    let mut kind = None;
    let mut source = None;
    let mut target = None;
    let mut readonly = false;
    let mut no_copy = false;
    let mut tmpfs: Vec<(String, Option<String>)> = Vec::new();
    for field in s.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let bool_value = |v: &Option<String>| -> Result<bool, MountError> {
            match v.as_deref() {
                None | Some("1") | Some("true") => Ok(true),
                Some("0") | Some("false") => Ok(false),
                Some(other) => err(format!(
                    "--mount: invalid value {other:?} for {k}: use true or false"
                )),
            }
        };
        match (k.as_str(), &v) {
            ("type", Some(t)) => {
                kind = Some(match t.as_str() {
                    "bind" => MountType::Bind,
                    "volume" => MountType::Volume,
                    "tmpfs" => MountType::Tmpfs,
                    other => {
                        return err(format!(
                            "--mount: unknown type {other:?} (known: bind, volume, tmpfs)"
                        ))
                    }
                })
            }
            ("source" | "src", Some(v)) => source = Some(v.clone()),
            ("target" | "dst" | "destination", Some(v)) => target = Some(v.clone()),
            ("readonly" | "ro", _) => readonly = bool_value(&v)?,
            ("volume-nocopy", _) => no_copy = bool_value(&v)?,
            ("tmpfs-size" | "tmpfs-mode", Some(_)) => tmpfs.push((k.clone(), v.clone())),
            // SELinux relabelling and bind propagation: no meaning for a
            // directory seen by one VM alone.
            ("bind-propagation" | "consistency", Some(_)) => {}
            _ => {
                return err(format!(
                    "--mount: unknown option {field:?} (known: type, source, target, readonly, volume-nocopy, tmpfs-size, tmpfs-mode)"
                ))
            }
        }
    }
    let kind = kind.unwrap_or(MountType::Volume);
    let target = match target {
        Some(t) => clean_target(&t)?,
        None => return err(format!("--mount {s:?}: target is required")),
    };
    let mut m = match kind {
        MountType::Bind => MountSpec::bind(
            &clean_source(source.as_deref().unwrap_or(""), "--mount")?,
            &target,
        ),
        MountType::Volume => {
            let name = source.unwrap_or_default();
            if !name.is_empty() {
                validate_volume_name(&name)?;
            }
            MountSpec::volume(&name, &target)
        }
        MountType::Tmpfs => {
            if source.as_deref().is_some_and(|s| !s.is_empty()) {
                return err("--mount: a tmpfs has no source");
            }
            let mut m = MountSpec::tmpfs(&target);
            m.tmpfs_flags = default_tmpfs_flags();
            m
        }
    };
    if no_copy && kind != MountType::Volume {
        return err("--mount: volume-nocopy is for volumes only");
    }
    if !tmpfs.is_empty() && kind != MountType::Tmpfs {
        return err("--mount: tmpfs-size and tmpfs-mode are for tmpfs only");
    }
    for (k, v) in &tmpfs {
        tmpfs_option(&mut m, k, v.as_deref(), "--mount")?;
    }
    m.readonly = readonly;
    m.no_copy = no_copy;
    Ok(m)
}

/// Check a container's mounts as a whole and each on its own (what the
/// apiserver does with a request, whoever sent it): targets absolute, not
/// `/`, clean and distinct; bind sources absolute; volume names valid;
/// options only where they mean something.
pub fn validate(mounts: &[MountSpec]) -> Result<(), MountError> {
    let mut targets = BTreeSet::new();
    for m in mounts {
        let target = clean_target(&m.target)?;
        if target != m.target {
            return err(format!(
                "invalid mount target {:?}: write it as {target:?}",
                m.target
            ));
        }
        if !targets.insert(target.clone()) {
            return err(format!(
                "duplicate mount target {target:?}: each path can have one mount"
            ));
        }
        match m.kind {
            MountType::Bind => {
                clean_source(&m.source, "bind mount")?;
            }
            MountType::Volume => {
                if !m.source.is_empty() {
                    validate_volume_name(&m.source)?;
                }
            }
            MountType::Tmpfs => {
                if !m.source.is_empty() {
                    return err("a tmpfs mount has no source");
                }
            }
        }
        if m.kind != MountType::Tmpfs
            && (m.tmpfs_size.is_some() || m.tmpfs_mode.is_some() || !m.tmpfs_flags.is_empty())
        {
            return err(format!(
                "{}: tmpfs options are for tmpfs mounts only",
                m.target
            ));
        }
        if let Some(f) = m
            .tmpfs_flags
            .iter()
            .find(|f| !TMPFS_FLAGS.contains(&f.as_str()))
        {
            return err(format!("{}: unknown tmpfs flag {f:?}", m.target));
        }
        if m.tmpfs_mode.is_some_and(|mode| mode > 0o7777) {
            return err(format!("{}: invalid tmpfs mode", m.target));
        }
        if m.create_source && m.kind != MountType::Bind {
            return err(format!(
                "{}: create_source is for bind mounts only",
                m.target
            ));
        }
        if m.no_copy && m.kind != MountType::Volume {
            return err(format!("{}: nocopy is for volumes only", m.target));
        }
        if m.shared && m.kind != MountType::Volume {
            return err(format!("{}: shared is for volumes only", m.target));
        }
    }
    Ok(())
}

/// One mount as `vessel inspect` shows it (Docker's `Mounts`): what is
/// mounted where, and whether the container may write to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPoint {
    #[serde(rename = "type")]
    pub kind: MountType,
    /// Bind: the host directory (canonical). Volume: the volume's name.
    /// Tmpfs: empty.
    pub source: String,
    /// The path in the container.
    pub destination: String,
    /// Writable by the container.
    pub rw: bool,
}

/// The [`MountPoint`]s of a container's resolved mounts, in order.
pub fn mount_points(mounts: &[MountSpec]) -> Vec<MountPoint> {
    mounts
        .iter()
        .map(|m| MountPoint {
            kind: m.kind,
            source: m.source.clone(),
            destination: m.target.clone(),
            rw: !m.readonly,
        })
        .collect()
}

/// How a volume keeps its data on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeBacking {
    /// An ext4 image (`disk.img`) attached to the VM as a virtio-blk disk:
    /// block-level and fast, one running container at a time (Apple
    /// `container`'s design). The default.
    Block,
    /// A host directory (`data/`) served over virtio-fs by a `virtiofsd`
    /// per container: any number of running containers at once.
    Shared,
}

/// The default size of a block volume's filesystem (sparse: it takes on
/// the host only what is written).
pub const DEFAULT_VOLUME_SIZE: u64 = 16 << 30;

/// `POST /v1/volumes`: `vessel volume create [--opt K=V] [--label K=V] [NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeCreate {
    /// Empty: a generated name (64 hex digits, as Docker's).
    #[serde(default)]
    pub name: String,
    /// `size=SIZE` (block volumes; default [`DEFAULT_VOLUME_SIZE`]),
    /// `backing=block|shared` (`shared=true` likewise).
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A volume as `volume inspect`, `volume ls` and `system df` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    /// Always `local`.
    pub driver: String,
    pub backing: VolumeBacking,
    /// Where its data is on the host: the ext4 image or the directory.
    pub mountpoint: std::path::PathBuf,
    pub created_ms: u64,
    /// The filesystem's size (block volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Bytes it takes on the host now.
    #[serde(default)]
    pub usage_bytes: u64,
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Made for one container (`-v /path`, an image's `VOLUME`).
    #[serde(default)]
    pub anonymous: bool,
    /// The containers that mount it (IDs), running or not.
    #[serde(default)]
    pub containers: Vec<String>,
}

/// `POST /v1/volumes/prune` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePruneResponse {
    pub removed: Vec<String>,
    pub reclaimed_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn v(s: &str) -> Result<MountSpec, MountError> {
        parse_volume_flag(s, Path::new("/home/u/proj"))
    }

    #[test]
    fn volume_flag_forms() {
        let m = v("/srv/data:/data").unwrap();
        assert_eq!(
            (m.kind, m.source.as_str(), m.target.as_str()),
            (MountType::Bind, "/srv/data", "/data")
        );
        assert!(m.create_source && !m.readonly);
        let m = v("/srv/data/:/data/:ro").unwrap();
        assert_eq!(
            (m.source.as_str(), m.target.as_str(), m.readonly),
            ("/srv/data", "/data", true)
        );
        let m = v("./site:/usr/share/www:ro,z").unwrap();
        assert_eq!(m.source, "/home/u/proj/site");
        let m = v("../x/./y:/y").unwrap();
        assert_eq!(m.source, "/home/u/x/y");
        let m = v("cache:/var/cache").unwrap();
        assert_eq!((m.kind, m.source.as_str()), (MountType::Volume, "cache"));
        let m = v("cache:/var/cache:nocopy,ro").unwrap();
        assert!(m.no_copy && m.readonly);
        let m = v("/var/lib/db").unwrap();
        assert_eq!(
            (m.kind, m.source.as_str(), m.target.as_str()),
            (MountType::Volume, "", "/var/lib/db")
        );
        let m = v("/var/lib/db:ro").unwrap();
        assert!(m.readonly && m.source.is_empty());
    }

    #[test]
    fn volume_flag_errors() {
        for bad in [
            "/a:/",
            "/a:relative",
            "/a:/b:rx",
            "/a:/b:nocopy",
            "a/b:/x",
            "..:/x:q",
            "../..:/x:wat",
            "-bad:/x",
            "/a:/b:c:d",
            "/a:",
            "/a:/b/../c",
        ] {
            assert!(v(bad).is_err(), "{bad} should fail");
        }
        let e = v("my/vol:/x").unwrap_err().0;
        assert!(e.contains("invalid volume name"), "{e}");
        let e = v("/a:/").unwrap_err().0;
        assert!(e.contains("root"), "{e}");
    }

    #[test]
    fn mount_flag_forms() {
        let m = parse_mount_flag("type=bind,source=/srv,target=/data,readonly").unwrap();
        assert_eq!(
            (
                m.kind,
                m.source.as_str(),
                m.target.as_str(),
                m.readonly,
                m.create_source
            ),
            (MountType::Bind, "/srv", "/data", true, false)
        );
        let m = parse_mount_flag("type=volume,src=v1,dst=/data,volume-nocopy=true").unwrap();
        assert_eq!(
            (m.kind, m.source.as_str(), m.no_copy),
            (MountType::Volume, "v1", true)
        );
        let m = parse_mount_flag("target=/anon").unwrap();
        assert_eq!((m.kind, m.source.as_str()), (MountType::Volume, ""));
        let m =
            parse_mount_flag("type=tmpfs,destination=/run,tmpfs-size=64m,tmpfs-mode=700").unwrap();
        assert_eq!((m.tmpfs_size, m.tmpfs_mode), (Some(64 << 20), Some(0o700)));
        assert_eq!(m.tmpfs_flags, ["noexec", "nosuid", "nodev"]);
        let m = parse_mount_flag("type=bind,source=/srv,target=/d,ro=false").unwrap();
        assert!(!m.readonly);
    }

    #[test]
    fn mount_flag_errors() {
        for bad in [
            "type=bind,source=rel,target=/d",
            "type=bind,target=/d",
            "type=bind,source=/s",
            "type=nfs,source=/s,target=/d",
            "type=bind,source=/s,target=/d,colour=red",
            "type=bind,source=/s,target=/d,volume-nocopy",
            "type=volume,source=a/../b,target=/d",
            "type=tmpfs,source=x,target=/d",
            "type=volume,target=/d,tmpfs-size=1m",
            "type=bind,source=/s,target=/d,readonly=maybe",
        ] {
            assert!(parse_mount_flag(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn tmpfs_flag() {
        let m = parse_tmpfs_flag("/tmp").unwrap();
        assert_eq!(m.target, "/tmp");
        assert_eq!(m.tmpfs_flags, ["noexec", "nosuid", "nodev"]);
        let m = parse_tmpfs_flag("/run:size=16m,mode=755,exec").unwrap();
        assert_eq!((m.tmpfs_size, m.tmpfs_mode), (Some(16 << 20), Some(0o755)));
        assert!(m.tmpfs_flags.contains(&"exec".to_string()));
        for bad in ["/", "tmp", "/t:size=lots", "/t:mode=9", "/t:uid=5"] {
            assert!(parse_tmpfs_flag(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn names() {
        for good in ["a", "db-data", "x.y_z", "0abc"] {
            validate_volume_name(good).unwrap();
        }
        for bad in ["", "..", ".hidden", "a/b", "_x", "a b", &"x".repeat(256)] {
            assert!(validate_volume_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validate_whole_list() {
        let ok = vec![v("/srv:/data").unwrap(), parse_tmpfs_flag("/tmp").unwrap()];
        validate(&ok).unwrap();
        let dup = vec![v("/srv:/data").unwrap(), v("vol:/data/").unwrap()];
        assert!(validate(&dup).unwrap_err().0.contains("duplicate"));
        let mut unclean = v("/srv:/data").unwrap();
        unclean.target = "/data/".into();
        assert!(validate(&[unclean]).is_err());
        let mut rel = v("/srv:/data").unwrap();
        rel.source = "srv".into();
        assert!(validate(&[rel]).is_err());
        let mut t = parse_tmpfs_flag("/t").unwrap();
        t.tmpfs_flags.push("mand".into());
        assert!(validate(&[t]).is_err());
    }
}
