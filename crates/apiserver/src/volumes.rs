//! The volume store: named and anonymous volumes under
//! `VESSEL_HOME/volumes/<name>/`.
//!
//! Each volume is a directory holding `volume.json` (its record: backing,
//! size, options, labels, whether it is anonymous) and its data:
//!
//! - backing `block` (the default): `disk.img`, a sparse ext4 image of
//!   `size` bytes (default [`DEFAULT_VOLUME_SIZE`]) whose root is owned by
//!   root with mode 0755 and has no `lost+found` (so it is as empty as a
//!   Docker volume: programs that want an empty data directory, such as
//!   PostgreSQL's `initdb`, accept it). A container's VM gets it as a
//!   virtio-blk disk; one running container at a time.
//! - backing `shared`: `data/`, a directory (mode 0755) served over
//!   virtio-fs, so several running containers can use it at once.
//!
//! A volume is built in a temporary directory (`volumes/.tmp-*`) and
//! renamed into place: a failure (a full disk, mkfs failing) leaves nothing
//! behind, and leftovers of a crash are removed when the apiserver starts.
//! Which containers use a volume is not stored: it is read from the
//! containers' configurations ([`Users`]), so it cannot drift.

use crate::error::{ApiError, ApiResult};
use crate::events::Events;
use anyhow::Context;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use vessel_api::error::{ErrorBody, ErrorKind};
use vessel_api::fsutil::{random_hex, read_json, write_json_atomic};
use vessel_api::mounts::{
    validate_volume_name, VolumeBacking, VolumeCreate, VolumeInfo, VolumePruneResponse,
    DEFAULT_VOLUME_SIZE,
};
use vessel_api::paths::{find_sbin_tool, Home};
use vessel_api::types::{now_ms, parse_memory, EventAction};

/// The smallest block volume: room for ext4's metadata and a journal.
pub const MIN_VOLUME_SIZE: u64 = 16 << 20;
/// The largest block volume. A host on ext4 cannot hold a file of 16 TiB,
/// and the filesystem's own metadata grows with its size (about 60 MiB
/// written for 4 TiB, 0.1 s per TiB here).
pub const MAX_VOLUME_SIZE: u64 = 4 << 40;
/// The name of a block volume's image in its directory.
pub const DISK_FILE: &str = "disk.img";
/// The name of a shared volume's directory in its directory.
pub const DATA_DIR: &str = "data";
const RECORD_FILE: &str = "volume.json";

/// What `volume.json` keeps; the rest of [`VolumeInfo`] is computed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Record {
    name: String,
    backing: VolumeBacking,
    created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size_bytes: Option<u64>,
    #[serde(default)]
    options: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    anonymous: bool,
}

/// Which containers use which volume: volume name → container IDs, and
/// the IDs of those that run now.
#[derive(Debug, Default, Clone)]
pub struct Users {
    pub all: HashMap<String, Vec<String>>,
    pub running: HashMap<String, Vec<String>>,
    /// Container ID → name, for messages.
    pub names: HashMap<String, String>,
}

impl Users {
    fn of(&self, name: &str) -> Vec<String> {
        self.all.get(name).cloned().unwrap_or_default()
    }
}

/// The options of `volume create --opt`, checked: backing and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub backing: VolumeBacking,
    pub size_bytes: Option<u64>,
}

fn bool_opt(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!(
            "invalid volume option {key}={v:?}: use true or false"
        )),
    }
}

/// Check `--opt` values: `size=SIZE` (block volumes, at least 16m),
/// `backing=block|shared`, `shared=true|false`.
pub fn parse_options(opts: &BTreeMap<String, String>) -> Result<Options, String> {
    let mut backing = None;
    let mut size = None;
    for (k, v) in opts {
        match k.as_str() {
            "size" => {
                let bytes = parse_memory(v).map_err(|_| {
                    format!(
                        "invalid volume option size={v:?}: expected a size such as 512m, 10g or 1t"
                    )
                })?;
                if bytes < MIN_VOLUME_SIZE {
                    return Err(format!(
                        "invalid volume option size={v}: a volume needs at least 16m"
                    ));
                }
                if bytes > MAX_VOLUME_SIZE {
                    return Err(format!("invalid volume option size={v}: at most 4t"));
                }
                size = Some(bytes);
            }
            "backing" => {
                let b = match v.as_str() {
                    "block" => VolumeBacking::Block,
                    "shared" => VolumeBacking::Shared,
                    _ => {
                        return Err(format!(
                            "invalid volume option backing={v:?}: use `block` (an ext4 disk, one running container at a time) or `shared` (a directory over virtio-fs, several at once)"
                        ))
                    }
                };
                if backing.is_some_and(|old| old != b) {
                    return Err("conflicting volume options backing and shared".into());
                }
                backing = Some(b);
            }
            "shared" => {
                let b = if bool_opt(k, v)? {
                    VolumeBacking::Shared
                } else {
                    VolumeBacking::Block
                };
                if backing.is_some_and(|old| old != b) {
                    return Err("conflicting volume options backing and shared".into());
                }
                backing = Some(b);
            }
            other => {
                return Err(format!(
                "unknown volume option {other:?} (known: size, backing=block|shared, shared=true)"
            ))
            }
        }
    }
    let backing = backing.unwrap_or(VolumeBacking::Block);
    if backing == VolumeBacking::Shared && size.is_some() {
        return Err(
            "invalid volume options: size is for block volumes; a shared volume is a directory and grows as the host's disk allows".into(),
        );
    }
    Ok(Options {
        backing,
        size_bytes: size,
    })
}

/// Bytes a file or tree takes on the host: its allocated blocks.
pub fn usage_bytes(path: &Path) -> u64 {
    let Ok(md) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = md.blocks() * 512;
    if md.is_dir() {
        if let Ok(rd) = fs::read_dir(path) {
            for e in rd.flatten() {
                total += usage_bytes(&e.path());
            }
        }
    }
    total
}

/// Make `img` (a new sparse file of `size` bytes) an empty ext4 filesystem
/// whose root is root's, mode 0755, without `lost+found`.
pub fn make_ext4(img: &Path, size: u64) -> anyhow::Result<()> {
    let mkfs = find_sbin_tool("mkfs.ext4")
        .context("mkfs.ext4 not found; install e2fsprogs (apt-get install e2fsprogs)")?;
    let debugfs = find_sbin_tool("debugfs")
        .context("debugfs not found; install e2fsprogs (apt-get install e2fsprogs)")?;
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(img)
        .with_context(|| format!("creating {}", img.display()))?;
    f.set_len(size)
        .with_context(|| format!("sizing {}", img.display()))?;
    drop(f);
    // The file is new and sparse: its holes read as zeros, so the inode
    // tables and the journal need no zeroing, now or later in the guest.
    let out = Command::new(&mkfs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-E",
            "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
            "-L",
            "vessel-volume",
        ])
        .arg(img)
        .arg(format!("{}k", size / 1024))
        .env("LC_ALL", "C")
        .output()
        .with_context(|| format!("running {}", mkfs.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "mkfs.ext4 failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let out = Command::new(&debugfs)
        .args(["-w", "-R", "rmdir lost+found"])
        .arg(img)
        .env("LC_ALL", "C")
        .output()
        .with_context(|| format!("running {}", debugfs.display()))?;
    let said = String::from_utf8_lossy(&out.stderr);
    // debugfs says its version on stderr, and exits 0 even when a command
    // fails: anything else it says is the failure.
    let complaint: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !out.status.success() || !complaint.is_empty() {
        anyhow::bail!(
            "debugfs could not remove lost+found ({}): {}",
            out.status,
            complaint.join("; ")
        );
    }
    fs::File::open(img)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", img.display()))?;
    Ok(())
}

/// Is `e` (or a cause of it) the disk being full?
fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
            || c.to_string().contains("No space left on device")
    })
}

/// Remove the tree at `path`, also where a container left a directory
/// without write or search permission for its owner (`chmod 500 dir` in a
/// shared volume): the apiserver may not be root (rootless mode, where
/// every file in a shared volume is the user's), so such directories are
/// given `u+rwx` and the removal is tried again. Symbolic links are never
/// followed; iterative, so a deep tree cannot overflow the stack.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            open_up(path);
            fs::remove_dir_all(path)
        }
        other => other,
    }
}

/// Give every directory under `path` (itself included) `u+rwx`, without
/// following symbolic links.
fn open_up(path: &Path) {
    let mut dirs = vec![path.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(md) = fs::symlink_metadata(&d) else {
            continue;
        };
        if !md.is_dir() {
            continue;
        }
        if md.mode() & 0o700 != 0o700 {
            let _ =
                fs::set_permissions(&d, fs::Permissions::from_mode((md.mode() | 0o700) & 0o7777));
        }
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
    }
}

/// A directory removed when dropped, unless kept.
struct Staging(Option<PathBuf>);

impl Staging {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = remove_tree(&p);
        }
    }
}

/// The volumes of one instance.
pub struct Volumes {
    home: Home,
    /// Held while volumes are made or removed, and by a container's
    /// creation from its volumes' resolution until its configuration is
    /// written, so a volume is never removed between the two.
    lock: Mutex<()>,
    events: Arc<Events>,
}

/// Proof that [`Volumes::lock`] is held.
pub type Guard<'a> = MutexGuard<'a, ()>;

impl Volumes {
    /// The store, with what a crashed creation left removed.
    pub fn new(home: Home, events: Arc<Events>) -> Self {
        let dir = home.volumes_dir();
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = remove_tree(&e.path());
                }
            }
        }
        Self {
            home,
            lock: Mutex::new(()),
            events,
        }
    }

    /// Take the store's lock.
    pub fn lock(&self) -> ApiResult<Guard<'_>> {
        self.lock
            .lock()
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("volume lock poisoned")))
    }

    fn not_found(name: &str) -> ApiError {
        ApiError::Answer(
            ErrorBody::new(
                ErrorKind::VolumeNotFound,
                format!("no such volume: {name}; list volumes with `vessel volume ls`"),
            )
            .with_name(name),
        )
    }

    fn record(&self, name: &str) -> ApiResult<Record> {
        if validate_volume_name(name).is_err() {
            return Err(Self::not_found(name));
        }
        let path = self.home.volume_dir(name).join(RECORD_FILE);
        match read_json::<Record>(&path) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(Self::not_found(name)),
            Err(e) => Err(ApiError::Internal(
                anyhow::Error::new(e).context(format!("reading {}", path.display())),
            )),
        }
    }

    /// Where the volume's data is on the host: `disk.img` or `data/`.
    pub fn data_path(&self, name: &str, backing: VolumeBacking) -> PathBuf {
        let dir = self.home.volume_dir(name);
        match backing {
            VolumeBacking::Block => dir.join(DISK_FILE),
            VolumeBacking::Shared => dir.join(DATA_DIR),
        }
    }

    fn info(&self, r: Record, users: &Users) -> VolumeInfo {
        let mountpoint = self.data_path(&r.name, r.backing);
        VolumeInfo {
            driver: "local".into(),
            backing: r.backing,
            usage_bytes: usage_bytes(&mountpoint),
            mountpoint,
            created_ms: r.created_ms,
            size_bytes: r.size_bytes,
            options: r.options,
            labels: r.labels,
            anonymous: r.anonymous,
            containers: users.of(&r.name),
            name: r.name,
        }
    }

    /// One volume.
    pub fn get(&self, name: &str, users: &Users) -> ApiResult<VolumeInfo> {
        Ok(self.info(self.record(name)?, users))
    }

    /// The backing of volume `name`, if it exists.
    pub fn backing(&self, name: &str) -> ApiResult<VolumeBacking> {
        Ok(self.record(name)?.backing)
    }

    /// Does volume `name` exist?
    pub fn exists(&self, name: &str) -> bool {
        self.record(name).is_ok()
    }

    /// Every volume, by name.
    pub fn list(&self, users: &Users) -> Vec<VolumeInfo> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.home.volumes_dir()) {
            for e in rd.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if let Ok(r) = self.record(&name) {
                    out.push(self.info(r, users));
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// `POST /v1/volumes`: a new volume (a conflict if the name is taken).
    pub fn create(&self, req: &VolumeCreate) -> ApiResult<VolumeInfo> {
        let g = self.lock()?;
        let r = self.create_locked(&g, req, false)?;
        Ok(self.info(r, &Users::default()))
    }

    /// A volume a container names (`-v NAME:/path`): made with the
    /// defaults if it does not exist. With the lock held.
    pub fn ensure_locked(&self, g: &Guard<'_>, name: &str) -> ApiResult<VolumeBacking> {
        match self.record(name) {
            Ok(r) => Ok(r.backing),
            Err(ApiError::Answer(b)) if b.kind == ErrorKind::VolumeNotFound => {
                let req = VolumeCreate {
                    name: name.to_string(),
                    ..Default::default()
                };
                Ok(self.create_locked(g, &req, false)?.backing)
            }
            Err(e) => Err(e),
        }
    }

    /// A new anonymous volume (generated name) for one container. With the
    /// lock held.
    pub fn create_anonymous_locked(&self, g: &Guard<'_>) -> ApiResult<String> {
        let r = self.create_locked(g, &VolumeCreate::default(), true)?;
        Ok(r.name)
    }

    fn create_locked(
        &self,
        _g: &Guard<'_>,
        req: &VolumeCreate,
        anonymous: bool,
    ) -> ApiResult<Record> {
        let name = if req.name.is_empty() {
            random_hex(32)
        } else {
            req.name.clone()
        };
        validate_volume_name(&name).map_err(|e| ApiError::invalid(e.0))?;
        let opts = parse_options(&req.options).map_err(ApiError::invalid)?;
        for k in req.labels.keys() {
            if k.is_empty() {
                return Err(ApiError::invalid("invalid volume label: empty key"));
            }
        }
        let dest = self.home.volume_dir(&name);
        if fs::symlink_metadata(&dest).is_ok() {
            return Err(ApiError::conflict(format!(
                "a volume named {name:?} already exists; choose another name, or use it with `-v {name}:/PATH`"
            )));
        }
        let root = self.home.volumes_dir();
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let tmp = root.join(format!(".tmp-{}", random_hex(8)));
        fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let staging = Staging(Some(tmp.clone()));
        let record = Record {
            name: name.clone(),
            backing: opts.backing,
            created_ms: now_ms(),
            size_bytes: match opts.backing {
                VolumeBacking::Block => Some(opts.size_bytes.unwrap_or(DEFAULT_VOLUME_SIZE)),
                VolumeBacking::Shared => None,
            },
            options: req.options.clone(),
            labels: req.labels.clone(),
            anonymous,
        };
        let built = (|| -> anyhow::Result<()> {
            match record.backing {
                VolumeBacking::Block => {
                    make_ext4(&tmp.join(DISK_FILE), record.size_bytes.unwrap_or_default())?
                }
                VolumeBacking::Shared => {
                    let data = tmp.join(DATA_DIR);
                    fs::create_dir(&data)?;
                    fs::set_permissions(&data, fs::Permissions::from_mode(0o755))?;
                }
            }
            write_json_atomic(&tmp.join(RECORD_FILE), &record)?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))?;
            fs::rename(&tmp, &dest).with_context(|| format!("renaming into {}", dest.display()))?;
            if let Ok(d) = fs::File::open(&root) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if let Err(e) = built {
            let full = is_disk_full(&e);
            let e = e.context(format!("creating the volume {name}"));
            return Err(if full {
                ApiError::Answer(ErrorBody::new(
                    ErrorKind::Internal,
                    format!(
                        "{e:#}; the disk holding {} is full: free some space (`vessel system df`, `vessel volume prune`, `vessel image prune`) and try again",
                        self.home.root().display()
                    ),
                ))
            } else {
                ApiError::Internal(e)
            });
        }
        staging.keep();
        self.events.emit_volume(EventAction::Create, &name);
        Ok(record)
    }

    /// A volume made with the lock held (tests of other modules).
    #[cfg(test)]
    pub fn create_locked_for_test(&self, g: &Guard<'_>, name: &str, shared: bool) {
        let mut req = VolumeCreate {
            name: name.into(),
            ..Default::default()
        };
        if shared {
            req.options.insert("backing".into(), "shared".into());
        }
        self.create_locked(g, &req, false).unwrap();
    }

    /// Remove volume `name`: refused while a container uses it, running or
    /// not (as Docker; `force` does not change that, as in Docker since
    /// 17.04: it only makes a missing volume no error). Returns false when
    /// there was none (with `force`).
    pub fn remove(&self, name: &str, force: bool, users: &Users) -> ApiResult<bool> {
        let g = self.lock()?;
        self.remove_locked(&g, name, force, users)
    }

    pub fn remove_locked(
        &self,
        _g: &Guard<'_>,
        name: &str,
        force: bool,
        users: &Users,
    ) -> ApiResult<bool> {
        match self.record(name) {
            Ok(_) => {}
            Err(ApiError::Answer(b)) if force && b.kind == ErrorKind::VolumeNotFound => {
                return Ok(false)
            }
            Err(e) => return Err(e),
        }
        let using = users.of(name);
        if !using.is_empty() {
            let short: Vec<String> = using
                .iter()
                .map(|i| {
                    users
                        .names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| i.chars().take(12).collect())
                })
                .collect();
            return Err(ApiError::Answer(
                ErrorBody::new(
                    ErrorKind::InUse,
                    format!(
                        "volume {name} is in use by container {}: remove the container first (`vessel rm {}`), then the volume",
                        short.join(", "),
                        short[0]
                    ),
                )
                .with_name(name),
            ));
        }
        self.destroy(name)?;
        Ok(true)
    }

    /// Remove the volume's directory (first renamed away, so a crash in
    /// the middle leaves a `.tmp-` leftover, not half a volume).
    fn destroy(&self, name: &str) -> ApiResult<()> {
        let dir = self.home.volume_dir(name);
        let gone = self
            .home
            .volumes_dir()
            .join(format!(".tmp-rm-{}", random_hex(8)));
        fs::rename(&dir, &gone).with_context(|| format!("removing {}", dir.display()))?;
        // From here the volume is gone from the store (its name is free);
        // what is left of its data is removed again at the next start.
        self.events.emit_volume(EventAction::Destroy, name);
        remove_tree(&gone).with_context(|| {
            format!(
                "the volume {name} is removed, but deleting its data in {} failed; delete that directory by hand",
                gone.display()
            )
        })?;
        Ok(())
    }

    /// `POST /v1/volumes/prune`: remove the volumes no container uses:
    /// the anonymous ones, and with `all` the named ones too (Docker 23's
    /// rule). With the lock held, `users` read under it.
    pub fn prune_locked(
        &self,
        g: &Guard<'_>,
        all: bool,
        users: &Users,
    ) -> ApiResult<VolumePruneResponse> {
        let mut out = VolumePruneResponse::default();
        for v in self.list(users) {
            if !v.containers.is_empty() || !(all || v.anonymous) {
                continue;
            }
            if let Err(e) = self.remove_locked(g, &v.name, true, users) {
                eprintln!("vessel-apiserver: pruning volume {}: {e}", v.name);
                continue;
            }
            out.reclaimed_bytes += v.usage_bytes;
            out.removed.push(v.name);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Volumes) {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path());
        let events = Arc::new(Events::new(&d.path().join("events.log")));
        (d, Volumes::new(home, events))
    }

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options() {
        let o = parse_options(&opts(&[])).unwrap();
        assert_eq!((o.backing, o.size_bytes), (VolumeBacking::Block, None));
        let o = parse_options(&opts(&[("size", "1g")])).unwrap();
        assert_eq!(o.size_bytes, Some(1 << 30));
        for shared in [&[("backing", "shared")][..], &[("shared", "true")][..]] {
            assert_eq!(
                parse_options(&opts(shared)).unwrap().backing,
                VolumeBacking::Shared
            );
        }
        for (bad, says) in [
            (&[("size", "lots")][..], "expected a size"),
            (&[("size", "1m")][..], "at least 16m"),
            (&[("size", "100t")][..], "at most"),
            (&[("backing", "nfs")][..], "backing"),
            (&[("shared", "maybe")][..], "true or false"),
            (&[("colour", "red")][..], "unknown volume option"),
            (
                &[("backing", "block"), ("shared", "true")][..],
                "conflicting",
            ),
            (
                &[("backing", "shared"), ("size", "1g")][..],
                "block volumes",
            ),
        ] {
            let e = parse_options(&opts(bad)).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn create_inspect_remove_prune() {
        let (d, v) = store();
        let users = Users::default();
        let info = v
            .create(&VolumeCreate {
                name: "db".into(),
                options: opts(&[("size", "64m")]),
                labels: opts(&[("team", "a")]),
            })
            .unwrap();
        assert_eq!(info.backing, VolumeBacking::Block);
        assert_eq!(info.size_bytes, Some(64 << 20));
        assert_eq!(info.mountpoint, d.path().join("volumes/db/disk.img"));
        let md = fs::metadata(&info.mountpoint).unwrap();
        assert_eq!(md.len(), 64 << 20);
        // Sparse: a few MiB of metadata, not 64.
        assert!(
            info.usage_bytes > 0 && info.usage_bytes < 16 << 20,
            "{}",
            info.usage_bytes
        );
        // The root is empty: no lost+found.
        let ls = Command::new(find_sbin_tool("debugfs").unwrap())
            .args(["-R", "ls -l /"])
            .arg(&info.mountpoint)
            .output()
            .unwrap();
        let ls = String::from_utf8_lossy(&ls.stdout);
        assert!(!ls.contains("lost+found"), "{ls}");
        assert!(ls.contains("40755"), "{ls}");

        let e = v
            .create(&VolumeCreate {
                name: "db".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);

        let shared = v
            .create(&VolumeCreate {
                name: "sh".into(),
                options: opts(&[("shared", "true")]),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(shared.mountpoint, d.path().join("volumes/sh/data"));
        assert!(shared.mountpoint.is_dir());
        assert_eq!(
            fs::metadata(&shared.mountpoint)
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o755
        );

        let g = v.lock().unwrap();
        let anon = v.create_anonymous_locked(&g).unwrap();
        drop(g);
        assert_eq!(anon.len(), 64);
        assert!(v.get(&anon, &users).unwrap().anonymous);
        let names: Vec<String> = v.list(&users).into_iter().map(|i| i.name).collect();
        assert_eq!(names.len(), 3);

        // In use: refused, with or without force.
        let mut using = Users::default();
        using.all.insert("db".into(), vec!["c".repeat(64)]);
        for force in [false, true] {
            let e = v.remove("db", force, &using).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InUse);
            assert!(
                e.body().message.contains("cccccccccccc"),
                "{}",
                e.body().message
            );
        }
        assert_eq!(v.get("db", &using).unwrap().containers.len(), 1);

        // Prune: the anonymous one only; with all, the unused named ones.
        let g = v.lock().unwrap();
        let p = v.prune_locked(&g, false, &using).unwrap();
        assert_eq!(p.removed, vec![anon.clone()]);
        let p = v.prune_locked(&g, true, &using).unwrap();
        drop(g);
        assert_eq!(p.removed, vec!["sh".to_string()]);
        assert!(v.exists("db"));

        assert!(v.remove("db", false, &users).unwrap());
        assert_eq!(
            v.get("db", &users).unwrap_err().kind(),
            ErrorKind::VolumeNotFound
        );
        assert_eq!(
            v.remove("db", false, &users).unwrap_err().kind(),
            ErrorKind::VolumeNotFound
        );
        assert!(!v.remove("db", true, &users).unwrap());
        // Nothing left behind.
        let left: Vec<_> = fs::read_dir(d.path().join("volumes")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn bad_input_leaves_nothing() {
        let (d, v) = store();
        for (name, o) in [
            ("a/b", opts(&[])),
            ("..", opts(&[])),
            ("ok", opts(&[("size", "nope")])),
            ("ok", opts(&[("colour", "red")])),
        ] {
            let e = v
                .create(&VolumeCreate {
                    name: name.into(),
                    options: o,
                    ..Default::default()
                })
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{name}");
        }
        let left: Vec<_> = fs::read_dir(d.path().join("volumes"))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(
            v.get("../etc", &Users::default()).unwrap_err().kind(),
            ErrorKind::VolumeNotFound
        );
    }

    /// A tmpfs of 2 MiB mounted at a temporary directory (root only),
    /// unmounted when dropped, also when the test fails.
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        fn mount() -> Option<Self> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return None;
            }
            let d = tempfile::tempdir().unwrap();
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
                .arg(d.path())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(SmallDisk(d))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0.path()).status();
        }
    }

    #[test]
    fn a_full_disk_leaves_nothing_half_made() {
        let Some(disk) = SmallDisk::mount() else {
            eprintln!("skipped: mounting a small tmpfs needs root");
            return;
        };
        let home = Home::new(disk.0.path());
        let events = Arc::new(Events::new(&disk.0.path().join("events.log")));
        let v = Volumes::new(home, events);
        let e = v
            .create(&VolumeCreate {
                name: "big".into(),
                ..Default::default()
            })
            .unwrap_err();
        let msg = e.body().message;
        assert!(msg.contains("is full"), "{msg}");
        assert!(msg.contains("creating the volume big"), "{msg}");
        let left: Vec<_> = fs::read_dir(disk.0.path().join("volumes"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // A shared volume (a directory) still fits.
        v.create(&VolumeCreate {
            name: "small".into(),
            options: opts(&[("backing", "shared")]),
            ..Default::default()
        })
        .unwrap();
    }

    #[test]
    fn removal_opens_up_directories_a_container_closed() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o500)).unwrap();
        let tree = d.path().join("vol/data");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), "x").unwrap();
        symlink(&outside, tree.join("a/link")).unwrap();
        for (p, mode) in [("a/b", 0o500), ("a", 0o000)] {
            fs::set_permissions(tree.join(p), fs::Permissions::from_mode(mode)).unwrap();
        }
        open_up(&d.path().join("vol"));
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&tree.join("a")), 0o700);
        assert_eq!(mode(&tree.join("a/b")), 0o700);
        // A link is not followed.
        assert_eq!(mode(&outside), 0o500);
        for (p, m) in [("a/b", 0o500), ("a", 0o000)] {
            fs::set_permissions(tree.join(p), fs::Permissions::from_mode(m)).unwrap();
        }
        remove_tree(&d.path().join("vol")).unwrap();
        assert!(!d.path().join("vol").exists());
        assert!(outside.is_dir());
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_crashed_creation_is_cleaned_up() {
        let d = tempfile::tempdir().unwrap();
        let left = d.path().join("volumes/.tmp-0123");
        fs::create_dir_all(left.join("x")).unwrap();
        let events = Arc::new(Events::new(&d.path().join("events.log")));
        let _v = Volumes::new(Home::new(d.path()), events);
        assert!(!left.exists());
    }
}
