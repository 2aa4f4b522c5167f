//! Applying image layers to a directory, safely.
//!
//! Layers come from anywhere, so every entry is treated as hostile:
//!
//! - paths are normalized; any `..` component is an error ("layer entry
//!   escapes the rootfs"), absolute paths are taken relative to the root;
//! - nothing is ever written through a symlink: every parent component is
//!   checked with `symlink_metadata` (lstat) and a symlink parent is an
//!   error; an existing entry at the final path is unlinked (never followed)
//!   first; regular files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`,
//!   owners set with `fchown`/`lchown`, times with `AT_SYMLINK_NOFOLLOW`,
//!   xattrs with `fsetxattr`/`lsetxattr`. The checks are race-free because
//!   only this unpacker writes to the (private, 0700-parented) staging root;
//! - symlinks may hold any target string: they are created, never followed;
//! - hardlink targets must already exist inside the root, reached through
//!   no symlink, and not be directories, so a hardlink to a host file is
//!   impossible;
//! - a [`Budget`] bounds the bytes and inodes a rootfs may use, and the tar
//!   header records of one entry (PAX, GNU long names, sparse maps, which the
//!   `tar` crate reads into memory) are bounded by [`MAX_HEADER_RECORDS`].
//!
//! Whiteouts follow the OCI spec: `.wh.NAME` deletes `NAME`;
//! `DIR/.wh..wh..opq` hides everything lower layers put in `DIR` (applied
//! at the end of the layer, so entries of the same layer survive).
//!
//! Metadata: owners come from the tar header (PAX `uid`/`gid` records
//! override it); the mode, including setuid/setgid/sticky, is set after the
//! owner (chown clears setuid) and extended attributes after both (chown
//! clears `security.capability`). Extended attributes come from PAX
//! `SCHILY.xattr.NAME` records; `trusted.overlay.*` and `security.selinux`
//! (meaningful only to the host) are skipped, and one the filesystem
//! refuses is skipped with a warning. Modification times are set last;
//! directories' at the end of the layer, after their children are in.
//! Runs of zero bytes in regular files (GNU sparse entries, which the `tar`
//! crate expands, and any other file) become holes.
//!
//! Ownership and device nodes need root. Run as another user (rootless
//! mode), the unpacker gives host files only what that user can, keeping
//! them readable and writable by it (`u+rw`, directories `u+rwx`, no
//! setuid/setgid/sticky on the host), stands in an empty regular file for a
//! device node, and records each entry's real owner, mode and device in a
//! [`Deferred`] map that [`crate::ext4`] applies to the built filesystem
//! image, so the guest sees what the layers say.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// PAX record prefix of an extended attribute.
const PAX_XATTR: &[u8] = b"SCHILY.xattr.";
/// Most bytes of header records (PAX, GNU long name/link, sparse maps) one
/// entry may have; the `tar` crate holds them in memory.
pub const MAX_HEADER_RECORDS: u64 = 4 << 20;
/// Largest extended attribute value an unprivileged unpack keeps (ext4
/// holds an inode's attributes in one block).
const MAX_DEFERRED_XATTR: usize = 4000;
/// Warnings printed per layer before they are only counted.
const MAX_WARNINGS: usize = 10;

/// Errors applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("Layer entry escapes the rootfs: {0}")]
    Escape(String),
    #[error("Layer entry goes through a symlink: {0}")]
    ThroughSymlink(String),
    #[error("Layer entry's parent is not a directory: {0}")]
    NotADirectory(String),
    #[error("Layer hardlink {path} points outside the rootfs or through a symlink: {target}")]
    BadHardlink { path: String, target: String },
    #[error("Layer entry {0} has a missing or invalid link target")]
    BadLink(String),
    #[error("Layer entry {0} has an out-of-range owner")]
    BadOwner(String),
    #[error("Image is too large to unpack: it expands past the unpack budget of {limit} {what}")]
    Budget { what: &'static str, limit: u64 },
    #[error("Malformed layer tar")]
    Tar(#[source] io::Error),
    #[error("Cannot create {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    /// The layer itself is refused (unsafe entries, malformed tar, over the
    /// budget), not the host failing to write it.
    pub fn refuses_content(&self) -> bool {
        !matches!(self, UnpackError::Io { .. })
    }
}

/// Limits on what unpacking may create.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_bytes: u64,
    pub max_inodes: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 30,
            max_inodes: 4_000_000,
        }
    }
}

impl Budget {
    /// The default budget, overridden by `VESSEL_UNPACK_MAX_BYTES` and
    /// `VESSEL_UNPACK_MAX_INODES` when they hold numbers.
    pub fn from_env() -> Self {
        let get = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let d = Self::default();
        Self {
            max_bytes: get("VESSEL_UNPACK_MAX_BYTES").unwrap_or(d.max_bytes),
            max_inodes: get("VESSEL_UNPACK_MAX_INODES").unwrap_or(d.max_inodes),
        }
    }
}

/// Applies layers, in order, to one root directory.
pub struct Unpacker {
    root: PathBuf,
    budget: Budget,
    bytes: u64,
    inodes: u64,
    is_root: bool,
    warnings: usize,
    /// Unprivileged: what each entry should be, beyond what the host got.
    deferred: Option<DeferredTree>,
}

/// A normalized path inside the root: its components, none `.`/`..`/empty.
pub type RelPath = Vec<Vec<u8>>;

/// What a layer entry is, as an unprivileged unpack could not make it on the
/// host: its owner, its mode (permission bits with setuid/setgid/sticky),
/// and for a device node, the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deferred {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub device: Option<DeviceNode>,
}

/// What an unprivileged unpack leaves to be written into the filesystem
/// image, by path (stale for paths removed since: check against the tree).
#[derive(Debug, Default)]
pub struct DeferredTree {
    pub meta: HashMap<RelPath, Deferred>,
    /// Extended attributes, none of which are set on the host files.
    pub xattrs: HashMap<RelPath, Xattrs>,
}

/// A character or block device stood in for on the host by an empty
/// regular file, the inode `placeholder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNode {
    pub block: bool,
    pub major: u32,
    pub minor: u32,
    pub placeholder: u64,
}

fn display(rel: &[Vec<u8>]) -> String {
    let joined: Vec<u8> = rel.join(&b'/');
    format!("/{}", String::from_utf8_lossy(&joined))
}

/// Split a tar path into components. `.` and empty ones are dropped, a
/// leading `/` is ignored, and any `..` is an error.
fn normalize(raw: &[u8]) -> Result<RelPath, UnpackError> {
    let mut out = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                return Err(UnpackError::Escape(
                    String::from_utf8_lossy(raw).into_owned(),
                ))
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// The layer stream, failing a read once more than the allowance set in
/// `left` has been read (while it is set: around `Entries::next`, where the
/// `tar` crate reads header records into memory).
struct HeaderGuard<'a> {
    inner: Box<dyn Read + 'a>,
    left: Rc<Cell<Option<u64>>>,
}

impl Read for HeaderGuard<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.left.get() {
            None => self.inner.read(buf),
            Some(0) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "an entry's header records (PAX, long names, sparse map) exceed {MAX_HEADER_RECORDS} bytes"
                ),
            )),
            Some(left) => {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..n])?;
                self.left.set(Some(left - n as u64));
                Ok(n)
            }
        }
    }
}

/// What one layer did, for whiteouts and times applied at its end.
#[derive(Default)]
struct LayerState {
    /// Every path this layer created, with all its parents.
    added: HashSet<RelPath>,
    /// Directories marked opaque.
    opaque: BTreeSet<RelPath>,
    /// Directories and their mtimes, set once their children are in.
    dir_times: Vec<(RelPath, u64)>,
}

/// Extended attributes of an entry, from its PAX records.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

impl Unpacker {
    /// An unpacker with the privileges of this process: as root it sets
    /// owners and makes device nodes, else it defers them (see
    /// [`Unpacker::take_deferred`]).
    pub fn new(root: impl Into<PathBuf>, budget: Budget) -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        Self::with_privilege(root, budget, unsafe { libc::geteuid() } == 0)
    }

    /// An unpacker that sets owners and makes device nodes itself only when
    /// `privileged` (which then needs root).
    pub fn with_privilege(root: impl Into<PathBuf>, budget: Budget, privileged: bool) -> Self {
        Self {
            root: root.into(),
            budget,
            bytes: 0,
            inodes: 0,
            is_root: privileged,
            warnings: 0,
            deferred: (!privileged).then(DeferredTree::default),
        }
    }

    /// Unprivileged: every entry's owner, mode, device node and extended
    /// attributes. `None` when the host files have it all.
    pub fn take_deferred(&mut self) -> Option<DeferredTree> {
        self.deferred.take()
    }

    /// A path is created anew without an entry of its own (a missing
    /// parent): nothing recorded for an earlier one there applies.
    fn forget(&mut self, rel: &[Vec<u8>]) {
        if let Some(d) = &mut self.deferred {
            d.meta.remove(rel);
            d.xattrs.remove(rel);
        }
    }

    fn defer(
        &mut self,
        rel: &[Vec<u8>],
        uid: u32,
        gid: u32,
        mode: u32,
        device: Option<DeviceNode>,
    ) {
        if let Some(d) = &mut self.deferred {
            d.xattrs.remove(rel);
            d.meta.insert(
                rel.to_vec(),
                Deferred {
                    uid,
                    gid,
                    mode,
                    device,
                },
            );
        }
    }

    /// The mode a host file gets: the entry's own, or unprivileged, its
    /// permission bits plus `need` for the owner (so this user can still
    /// write into it and read it back), without setuid/setgid/sticky.
    fn host_mode(&self, mode: u32, need: u32) -> u32 {
        if self.is_root {
            mode
        } else {
            (mode & 0o777) | need
        }
    }

    /// Bytes of regular files written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Inodes created so far.
    pub fn inodes(&self) -> u64 {
        self.inodes
    }

    /// Warnings (refused xattrs) so far.
    pub fn warnings(&self) -> usize {
        self.warnings
    }

    fn warn(&mut self, msg: String) {
        self.warnings += 1;
        if self.warnings <= MAX_WARNINGS {
            eprintln!("vessel-images: warning: {msg}");
        } else if self.warnings == MAX_WARNINGS + 1 {
            eprintln!("vessel-images: warning: more warnings for this image are not shown");
        }
    }

    fn host_path(&self, rel: &[Vec<u8>]) -> PathBuf {
        let mut p = self.root.clone();
        for c in rel {
            p.push(OsStr::from_bytes(c));
        }
        p
    }

    fn io_err(rel: &[Vec<u8>]) -> impl FnOnce(io::Error) -> UnpackError {
        let path = display(rel);
        move |source| UnpackError::Io { path, source }
    }

    fn charge_inode(&mut self) -> Result<(), UnpackError> {
        self.inodes += 1;
        if self.inodes > self.budget.max_inodes {
            return Err(UnpackError::Budget {
                what: "inodes",
                limit: self.budget.max_inodes,
            });
        }
        Ok(())
    }

    fn charge_bytes(&mut self, n: u64) -> Result<(), UnpackError> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.budget.max_bytes {
            return Err(UnpackError::Budget {
                what: "bytes",
                limit: self.budget.max_bytes,
            });
        }
        Ok(())
    }

    /// Check that every parent of `rel` is a real directory, never a
    /// symlink. Missing ones are created when `create`, else the answer is
    /// `false`.
    fn check_parents(&mut self, rel: &[Vec<u8>], create: bool) -> Result<bool, UnpackError> {
        for i in 1..rel.len() {
            let p = self.host_path(&rel[..i]);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(UnpackError::ThroughSymlink(display(rel)))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(UnpackError::NotADirectory(display(rel))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(false);
                    }
                    self.charge_inode()?;
                    self.forget(&rel[..i]);
                    fs::create_dir(&p).map_err(Self::io_err(&rel[..i]))?;
                    fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                        .map_err(Self::io_err(&rel[..i]))?;
                }
                Err(e) => return Err(Self::io_err(&rel[..i])(e)),
            }
        }
        Ok(true)
    }

    /// Make sure every parent of `rel` is a real directory (creating missing
    /// ones), never a symlink.
    fn ensure_parents(&mut self, rel: &[Vec<u8>]) -> Result<(), UnpackError> {
        self.check_parents(rel, true).map(|_| ())
    }

    /// Remove whatever is at `p` without following it. With `keep_dir`, an
    /// existing directory stays (the answer is then `true`).
    fn remove_existing(p: &Path, keep_dir: bool) -> io::Result<bool> {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
                // Does not follow symlinks inside (openat-based since Rust 1.58).
                fs::remove_dir_all(p)?;
                Ok(false)
            }
            Ok(_) => {
                fs::remove_file(p)?;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Apply one layer (plain, gzip or zstd tar, as [`crate::oci::decompressed`]
    /// reads) on top of the root.
    pub fn apply_layer(&mut self, layer: impl Read) -> Result<(), UnpackError> {
        let reader = crate::oci::decompressed(layer).map_err(UnpackError::Tar)?;
        let left = Rc::new(Cell::new(None));
        let mut archive = tar::Archive::new(HeaderGuard {
            inner: reader,
            left: Rc::clone(&left),
        });
        let mut entries = archive.entries().map_err(UnpackError::Tar)?;
        let mut state = LayerState::default();
        loop {
            left.set(Some(MAX_HEADER_RECORDS));
            let next = entries.next();
            left.set(None);
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(UnpackError::Tar)?;
            self.apply_one(&mut entry, &mut state)?;
            // Consume what the entry did not use, so the next header read
            // only skips padding.
            io::copy(&mut entry, &mut io::sink()).map_err(UnpackError::Tar)?;
        }
        for dir in std::mem::take(&mut state.opaque) {
            self.prune_opaque(&dir, &state.added)?;
        }
        for (rel, mtime) in state.dir_times.iter().rev() {
            let p = self.host_path(rel);
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                set_mtime(&p, *mtime);
            }
        }
        Ok(())
    }

    fn apply_one<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        state: &mut LayerState,
    ) -> Result<(), UnpackError> {
        let rel = normalize(&entry.path_bytes())?;
        let Some(name) = rel.last().cloned() else {
            // The root itself: take its owner, mode and times.
            if entry.header().entry_type() == tar::EntryType::Directory {
                self.apply_entry(entry, &rel, state)?;
            }
            return Ok(());
        };
        if name == OPAQUE_WHITEOUT.as_bytes() {
            self.ensure_parents(&rel)?;
            state.opaque.insert(rel[..rel.len() - 1].to_vec());
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden == b"." {
                return Ok(());
            }
            let mut target = rel[..rel.len() - 1].to_vec();
            target.push(hidden.to_vec());
            // Nothing to delete under a missing parent; never create one.
            if self.check_parents(&target, false)? {
                Self::remove_existing(&self.host_path(&target), false)
                    .map_err(Self::io_err(&target))?;
            }
            return Ok(());
        }
        self.ensure_parents(&rel)?;
        self.apply_entry(entry, &rel, state)?;
        for i in 1..=rel.len() {
            state.added.insert(rel[..i].to_vec());
        }
        Ok(())
    }

    /// Remove from `dir` (recursively) everything this layer did not add.
    fn prune_opaque(
        &mut self,
        dir: &[Vec<u8>],
        added: &HashSet<RelPath>,
    ) -> Result<(), UnpackError> {
        let host = self.host_path(dir);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => {}
            _ => return Ok(()),
        }
        for child in fs::read_dir(&host).map_err(Self::io_err(dir))? {
            let child = child.map_err(Self::io_err(dir))?;
            let mut rel = dir.to_vec();
            rel.push(child.file_name().as_bytes().to_vec());
            if added.contains(&rel) {
                let is_dir = child.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir {
                    self.prune_opaque(&rel, added)?;
                }
            } else {
                Self::remove_existing(&child.path(), false).map_err(Self::io_err(&rel))?;
            }
        }
        Ok(())
    }

    /// The entry's extended attributes (PAX `SCHILY.xattr.*` records).
    fn xattrs<R: Read>(entry: &mut tar::Entry<R>) -> Result<Xattrs, UnpackError> {
        let mut out = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(UnpackError::Tar)? {
            for ext in exts {
                let ext = ext.map_err(UnpackError::Tar)?;
                if let Some(name) = ext.key_bytes().strip_prefix(PAX_XATTR) {
                    out.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        Ok(out)
    }

    /// Set extended attributes on `path` (not following it), or through
    /// `fd` when given. Refusals by the filesystem are warnings.
    fn set_xattrs(
        &mut self,
        path: &Path,
        fd: Option<&File>,
        xattrs: &Xattrs,
        rel: &[Vec<u8>],
    ) -> Result<(), UnpackError> {
        for (name, value) in xattrs {
            let shown = String::from_utf8_lossy(name).into_owned();
            let host_only = name.starts_with(b"trusted.overlay.") || name == b"security.selinux";
            let Ok(cname) = CString::new(name.as_slice()) else {
                self.warn(format!(
                    "skipping xattr {shown:?} of {}: invalid name",
                    display(rel)
                ));
                continue;
            };
            if host_only {
                self.warn(format!(
                    "skipping xattr {shown} of {}: host-specific",
                    display(rel)
                ));
                continue;
            }
            if self.deferred.is_some() {
                // Unprivileged: none on the host (it may refuse some, like
                // security.capability); all go into the image afterwards.
                if value.len() > MAX_DEFERRED_XATTR {
                    self.warn(format!(
                        "skipping xattr {shown} of {}: {} bytes (more than {MAX_DEFERRED_XATTR})",
                        display(rel),
                        value.len()
                    ));
                    continue;
                }
                self.charge_bytes((name.len() + value.len()) as u64)?;
                if let Some(d) = &mut self.deferred {
                    d.xattrs
                        .entry(rel.to_vec())
                        .or_default()
                        .push((name.clone(), value.clone()));
                }
                continue;
            }
            let rc = match fd {
                // SAFETY: the fd is open for the call, `cname` is a valid
                // NUL-terminated string, `value` is valid for its length.
                Some(f) => unsafe {
                    libc::fsetxattr(
                        f.as_raw_fd(),
                        cname.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                },
                None => {
                    let cpath = CString::new(path.as_os_str().as_bytes())
                        .map_err(|_| UnpackError::BadLink(display(rel)))?;
                    // SAFETY: both strings are valid and NUL-terminated,
                    // `value` is valid for its length; all outlive the call.
                    unsafe {
                        libc::lsetxattr(
                            cpath.as_ptr(),
                            cname.as_ptr(),
                            value.as_ptr().cast(),
                            value.len(),
                            0,
                        )
                    }
                }
            };
            if rc != 0 {
                let e = io::Error::last_os_error();
                let refused = matches!(
                    e.raw_os_error(),
                    Some(
                        libc::EOPNOTSUPP
                            | libc::EPERM
                            | libc::EACCES
                            | libc::EINVAL
                            | libc::E2BIG
                            | libc::ERANGE
                            | libc::ENOSPC
                            | libc::EDQUOT
                    )
                );
                if !refused {
                    return Err(Self::io_err(rel)(e));
                }
                self.warn(format!(
                    "the filesystem refused xattr {shown} of {}: {e}",
                    display(rel)
                ));
            }
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        rel: &[Vec<u8>],
        state: &mut LayerState,
    ) -> Result<(), UnpackError> {
        let xattrs = Self::xattrs(entry)?;
        let header = entry.header();
        let kind = header.entry_type();
        let old = header.as_old();
        let mode = numeric(header.mode().map(u64::from), &old.mode)? as u32 & 0o7777;
        let uid = numeric(header.uid(), &old.uid)?;
        let gid = numeric(header.gid(), &old.gid)?;
        // u32::MAX is chown's "leave unchanged".
        let (uid, gid) = match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(u), Ok(g)) if u != u32::MAX && g != u32::MAX => (u, g),
            _ => return Err(UnpackError::BadOwner(display(rel))),
        };
        let mtime = header.mtime().unwrap_or(0);
        let path = self.host_path(rel);
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                let existed = Self::remove_existing(&path, true).map_err(Self::io_err(rel))?;
                if !existed {
                    self.charge_inode()?;
                    fs::create_dir(&path).map_err(Self::io_err(rel))?;
                }
                self.set_owner(&path, uid, gid, rel)?;
                fs::set_permissions(
                    &path,
                    fs::Permissions::from_mode(self.host_mode(mode, 0o700)),
                )
                .map_err(Self::io_err(rel))?;
                self.defer(rel, uid, gid, mode, None);
                self.set_xattrs(&path, None, &xattrs, rel)?;
                state.dir_times.push((rel.to_vec(), mtime));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                Self::remove_existing(&path, false).map_err(Self::io_err(rel))?;
                self.charge_inode()?;
                let size = entry.size();
                self.charge_bytes(size)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
                    .map_err(Self::io_err(rel))?;
                let copied =
                    write_with_holes(&mut entry.take(size), &mut f).map_err(|e| match e {
                        CopyError::Read(e) => UnpackError::Tar(e),
                        CopyError::Write(e) => Self::io_err(rel)(e),
                    })?;
                if copied != size {
                    return Err(UnpackError::Tar(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} is truncated", display(rel)),
                    )));
                }
                if self.is_root {
                    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                        .map_err(Self::io_err(rel))?;
                }
                // After chown, which clears setuid/setgid.
                f.set_permissions(fs::Permissions::from_mode(self.host_mode(mode, 0o600)))
                    .map_err(Self::io_err(rel))?;
                self.defer(rel, uid, gid, mode, None);
                // After chown and the data, which clear security.capability.
                self.set_xattrs(&path, Some(&f), &xattrs, rel)?;
                drop(f);
                set_mtime(&path, mtime);
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| UnpackError::BadLink(display(rel)))?
                    .into_owned();
                Self::remove_existing(&path, false).map_err(Self::io_err(rel))?;
                self.charge_inode()?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(Self::io_err(rel))?;
                self.set_owner(&path, uid, gid, rel)?;
                self.defer(rel, uid, gid, 0o777, None);
                self.set_xattrs(&path, None, &xattrs, rel)?;
                set_mtime(&path, mtime);
            }
            T::Link => {
                let raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::BadLink(display(rel)))?
                    .into_owned();
                let bad = || UnpackError::BadHardlink {
                    path: display(rel),
                    target: String::from_utf8_lossy(&raw).into_owned(),
                };
                let target = normalize(&raw).map_err(|_| bad())?;
                if target.is_empty() || target == rel {
                    return Err(bad());
                }
                // Every component up to the target's parent must be a real
                // directory; the target itself must exist and not be a dir.
                for i in 1..target.len() {
                    match fs::symlink_metadata(self.host_path(&target[..i])) {
                        Ok(m) if m.is_dir() => {}
                        _ => return Err(bad()),
                    }
                }
                let tpath = self.host_path(&target);
                match fs::symlink_metadata(&tpath) {
                    Ok(m) if !m.is_dir() => {}
                    _ => return Err(bad()),
                }
                Self::remove_existing(&path, false).map_err(Self::io_err(rel))?;
                let target_meta = self
                    .deferred
                    .as_ref()
                    .and_then(|d| d.meta.get(&target))
                    .copied();
                if let Some((t, mut dev)) = target_meta.and_then(|t| Some((t, t.device?))) {
                    // A link to a device stand-in: a stand-in of its own, so
                    // replacing one by the node never frees the other.
                    self.charge_inode()?;
                    dev.placeholder = Self::placeholder(&path, rel)?;
                    self.defer(rel, t.uid, t.gid, t.mode, Some(dev));
                    return Ok(());
                }
                // linkat without AT_SYMLINK_FOLLOW: a symlink target is
                // linked itself, never followed.
                fs::hard_link(&tpath, &path).map_err(Self::io_err(rel))?;
                if let Some(t) = target_meta {
                    self.defer(rel, t.uid, t.gid, t.mode, None);
                    // The same inode: its attributes, should the target
                    // path go.
                    if let Some(d) = &mut self.deferred {
                        if let Some(x) = d.xattrs.get(&target).cloned() {
                            d.xattrs.insert(rel.to_vec(), x);
                        }
                    }
                }
            }
            T::Char | T::Block | T::Fifo => {
                Self::remove_existing(&path, false).map_err(Self::io_err(rel))?;
                self.charge_inode()?;
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                if kind != T::Fifo && !self.is_root {
                    let placeholder = Self::placeholder(&path, rel)?;
                    let device = DeviceNode {
                        block: kind == T::Block,
                        major,
                        minor,
                        placeholder,
                    };
                    self.defer(rel, uid, gid, mode, Some(device));
                    return Ok(());
                }
                let fmt = match kind {
                    T::Char => libc::S_IFCHR,
                    T::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let c = CString::new(path.as_os_str().as_bytes())
                    .map_err(|_| UnpackError::BadLink(display(rel)))?;
                let dev = libc::makedev(major, minor);
                // SAFETY: `c` is a valid NUL-terminated path that outlives the
                // call; mknod has no memory-safety preconditions.
                let rc = unsafe { libc::mknod(c.as_ptr(), fmt | (mode & 0o777), dev) };
                if rc != 0 {
                    return Err(Self::io_err(rel)(io::Error::last_os_error()));
                }
                self.set_owner(&path, uid, gid, rel)?;
                // mknod applies the umask and chown clears setuid: set the
                // exact mode now (chmod does not open the node).
                fs::set_permissions(
                    &path,
                    fs::Permissions::from_mode(self.host_mode(mode, 0o600)),
                )
                .map_err(Self::io_err(rel))?;
                self.defer(rel, uid, gid, mode, None);
                self.set_xattrs(&path, None, &xattrs, rel)?;
                set_mtime(&path, mtime);
            }
            // PAX and GNU long-name headers are consumed by the tar crate;
            // anything else (global headers, unknown types) carries no file.
            _ => {}
        }
        Ok(())
    }

    /// An empty regular file standing in for a device node; its inode.
    fn placeholder(path: &Path, rel: &[Vec<u8>]) -> Result<u64, UnpackError> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(path)
            .map_err(Self::io_err(rel))?;
        Ok(f.metadata().map_err(Self::io_err(rel))?.ino())
    }

    fn set_owner(
        &self,
        path: &Path,
        uid: u32,
        gid: u32,
        rel: &[Vec<u8>],
    ) -> Result<(), UnpackError> {
        if self.is_root {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(Self::io_err(rel))?;
        }
        Ok(())
    }
}

/// A numeric header field; like Go's archive/tar (which wrote most image
/// layers), a field of only NULs and spaces is 0.
fn numeric(parsed: io::Result<u64>, raw: &[u8]) -> Result<u64, UnpackError> {
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        Err(e) => Err(UnpackError::Tar(e)),
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Block size for hole detection.
const HOLE_BLOCK: usize = 4096;

/// Copy `src` to the start of the new file `f`, seeking over 4 KiB blocks of
/// zeros instead of writing them, so they stay (or become) holes. Returns
/// the bytes copied.
fn write_with_holes(src: &mut impl Read, f: &mut File) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 64 * HOLE_BLOCK];
    let mut total = 0u64;
    let mut hole = 0u64; // zeros not yet written
    loop {
        // Fill the buffer so blocks stay aligned with the file's.
        let mut n = 0;
        while n < buf.len() {
            match src.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CopyError::Read(e)),
            }
        }
        if n == 0 {
            break;
        }
        for block in buf[..n].chunks(HOLE_BLOCK) {
            if block.iter().all(|&b| b == 0) {
                hole += block.len() as u64;
            } else {
                if hole > 0 {
                    let off = i64::try_from(hole)
                        .map_err(|_| CopyError::Write(io::Error::other("file too large")))?;
                    f.seek(SeekFrom::Current(off)).map_err(CopyError::Write)?;
                    hole = 0;
                }
                f.write_all(block).map_err(CopyError::Write)?;
            }
        }
        total += n as u64;
        if n < buf.len() {
            break;
        }
    }
    // A trailing hole: extend the file without writing.
    f.set_len(total).map_err(CopyError::Write)?;
    Ok(total)
}

/// Set the modification (and access) time of `path`, not following symlinks.
/// Best effort: a wrong mtime does not make a rootfs unusable.
fn set_mtime(path: &Path, mtime: u64) {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    let t = libc::timespec {
        tv_sec: mtime.min(i64::MAX as u64) as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: `c` is a valid NUL-terminated path and `times` points to two
    // timespecs; both outlive the call.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use tar::{Builder, EntryType, Header};

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Fifo(&'a str),
    }

    fn set_path_raw(h: &mut Header, path: &str) {
        // Bypass the tar crate's own `..` checks to build hostile archives.
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
    }

    fn layer(entries: &[E]) -> Vec<u8> {
        let mut b = Builder::new(Vec::new());
        for e in entries {
            let mut h = Header::new_gnu();
            h.set_mtime(1_600_000_000);
            h.set_uid(0);
            h.set_gid(0);
            let (path, data): (&str, &[u8]) = match e {
                E::File(p, d) => {
                    h.set_entry_type(EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(d.len() as u64);
                    (p, d)
                }
                E::Dir(p) => {
                    h.set_entry_type(EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    (p, b"")
                }
                E::Symlink(p, t) | E::Hardlink(p, t) => {
                    h.set_entry_type(if matches!(e, E::Symlink(..)) {
                        EntryType::Symlink
                    } else {
                        EntryType::Link
                    });
                    h.set_mode(0o777);
                    h.set_size(0);
                    let ln = &mut h.as_old_mut().linkname;
                    ln.fill(0);
                    ln[..t.len()].copy_from_slice(t.as_bytes());
                    (p, b"")
                }
                E::Fifo(p) => {
                    h.set_entry_type(EntryType::Fifo);
                    h.set_mode(0o600);
                    h.set_size(0);
                    (p, b"")
                }
            };
            set_path_raw(&mut h, path);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        outer: PathBuf,
        root: PathBuf,
    }

    /// A root inside an outer directory, so escapes would land in `outer`.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let outer = dir.path().join("outer");
        let root = outer.join("root");
        fs::create_dir_all(&root).unwrap();
        Fixture {
            _dir: dir,
            outer,
            root,
        }
    }

    impl Fixture {
        fn unpacker(&self) -> Unpacker {
            Unpacker::new(&self.root, Budget::default())
        }
        /// Nothing but `root` may exist in `outer`.
        fn assert_contained(&self) {
            let names: Vec<_> = fs::read_dir(&self.outer)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from("root")]);
        }
    }

    #[test]
    fn applies_files_dirs_links_and_modes() {
        let fx = fixture();
        let mut u = fx.unpacker();
        let h = layer(&[
            E::Dir("etc/"),
            E::File("etc/hello", b"hi\n"),
            E::Symlink("etc/link", "/etc/hello"),
            E::Hardlink("etc/hard", "etc/hello"),
            E::File("/abs/file", b"x"),
            E::Fifo("run/fifo"),
        ]);
        u.apply_layer(&h[..]).unwrap();
        let r = &fx.root;
        assert_eq!(fs::read(r.join("etc/hello")).unwrap(), b"hi\n");
        assert_eq!(
            fs::read_link(r.join("etc/link")).unwrap(),
            PathBuf::from("/etc/hello")
        );
        let a = fs::metadata(r.join("etc/hello")).unwrap();
        let b = fs::metadata(r.join("etc/hard")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.mode() & 0o7777, 0o644);
        assert_eq!(a.mtime(), 1_600_000_000);
        assert_eq!(fs::read(r.join("abs/file")).unwrap(), b"x");
        assert!(fs::symlink_metadata(r.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo_like());
        fx.assert_contained();
    }

    trait FifoLike {
        fn is_fifo_like(&self) -> bool;
    }
    impl FifoLike for fs::FileType {
        fn is_fifo_like(&self) -> bool {
            use std::os::unix::fs::FileTypeExt;
            self.is_fifo()
        }
    }

    #[test]
    fn setuid_bits_are_kept() {
        let fx = fixture();
        let mut b = Builder::new(Vec::new());
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o4755);
        h.set_size(1);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, "bin/su", &b"x"[..]).unwrap();
        let data = b.into_inner().unwrap();
        fx.unpacker().apply_layer(&data[..]).unwrap();
        let m = fs::metadata(fx.root.join("bin/su")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o4755);
    }

    #[test]
    fn dotdot_paths_are_rejected() {
        for p in ["../evil", "a/../../evil", "./../evil", "a/b/../../../evil"] {
            let fx = fixture();
            let err = fx
                .unpacker()
                .apply_layer(&layer(&[E::File(p, b"pwned")])[..])
                .unwrap_err();
            assert!(matches!(err, UnpackError::Escape(_)), "{p}: {err}");
            assert!(err
                .to_string()
                .starts_with("Layer entry escapes the rootfs"));
            fx.assert_contained();
        }
    }

    #[test]
    fn never_writes_through_a_symlink() {
        let fx = fixture();
        let outer = fx.outer.to_str().unwrap().to_string();
        let err = fx
            .unpacker()
            .apply_layer(&layer(&[E::Symlink("escape", &outer), E::File("escape/pwned", b"x")])[..])
            .unwrap_err();
        assert!(matches!(err, UnpackError::ThroughSymlink(_)), "{err}");
        fx.assert_contained();

        // Symlink to / then a file through it, and a whiteout through it.
        let fx = fixture();
        let err = fx
            .unpacker()
            .apply_layer(
                &layer(&[
                    E::Symlink("rootlink", "/"),
                    E::File("rootlink/tmp/pwned", b"x"),
                ])[..],
            )
            .unwrap_err();
        assert!(matches!(err, UnpackError::ThroughSymlink(_)), "{err}");
        let fx2 = fixture();
        fs::write(fx2.outer.join("victim"), b"v").unwrap();
        let err = fx2
            .unpacker()
            .apply_layer(
                &layer(&[
                    E::Symlink("up", &outer2(&fx2)),
                    E::File("up/.wh.victim", b""),
                ])[..],
            )
            .unwrap_err();
        assert!(matches!(err, UnpackError::ThroughSymlink(_)), "{err}");
        assert!(fx2.outer.join("victim").exists());
    }

    fn outer2(fx: &Fixture) -> String {
        fx.outer.to_str().unwrap().to_string()
    }

    #[test]
    fn replaces_a_symlink_instead_of_following_it() {
        let fx = fixture();
        let victim = fx.outer.join("victim");
        fs::write(&victim, b"original").unwrap();
        let mut u = fx.unpacker();
        u.apply_layer(&layer(&[E::Symlink("f", victim.to_str().unwrap())])[..])
            .unwrap();
        u.apply_layer(&layer(&[E::File("f", b"new")])[..]).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"original");
        assert_eq!(fs::read(fx.root.join("f")).unwrap(), b"new");
        assert!(!fs::symlink_metadata(fx.root.join("f"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn hostile_hardlinks_are_rejected() {
        for (entries, name) in [
            (vec![E::Hardlink("passwd", "/etc/passwd")], "missing target"),
            (vec![E::Hardlink("passwd", "../../etc/passwd")], "dotdot"),
            (
                vec![
                    E::Symlink("etc", "/etc"),
                    E::Hardlink("passwd", "etc/passwd"),
                ],
                "through symlink",
            ),
            (vec![E::Dir("d/"), E::Hardlink("dl", "d")], "directory"),
        ] {
            let fx = fixture();
            let err = fx.unpacker().apply_layer(&layer(&entries)[..]).unwrap_err();
            assert!(
                matches!(err, UnpackError::BadHardlink { .. }),
                "{name}: {err}"
            );
            assert!(!fx.root.join("passwd").exists());
            fx.assert_contained();
        }
    }

    #[test]
    fn budget_is_enforced() {
        let fx = fixture();
        let mut u = Unpacker::new(
            &fx.root,
            Budget {
                max_bytes: 10,
                max_inodes: 100,
            },
        );
        let err = u
            .apply_layer(&layer(&[E::File("a", b"123456"), E::File("b", b"123456")])[..])
            .unwrap_err();
        assert!(
            matches!(err, UnpackError::Budget { what: "bytes", .. }),
            "{err}"
        );
        let fx = fixture();
        let mut u = Unpacker::new(
            &fx.root,
            Budget {
                max_bytes: 1000,
                max_inodes: 3,
            },
        );
        let err = u
            .apply_layer(&layer(&[E::File("a/b/c/d", b"1")])[..])
            .unwrap_err();
        assert!(
            matches!(err, UnpackError::Budget { what: "inodes", .. }),
            "{err}"
        );
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let fx = fixture();
        let mut u = fx.unpacker();
        u.apply_layer(
            &layer(&[
                E::File("keep", b"k"),
                E::File("gone", b"g"),
                E::File("dir/lower1", b"1"),
                E::File("dir/sub/lower2", b"2"),
                E::File("other/x", b"x"),
            ])[..],
        )
        .unwrap();
        u.apply_layer(
            &layer(&[
                E::File(".wh.gone", b""),
                E::File("dir/new", b"n"),
                E::File("dir/.wh..wh..opq", b""),
                E::File("dir/sub/upper", b"u"),
                E::File(".wh.other", b""),
            ])[..],
        )
        .unwrap();
        let r = &fx.root;
        assert!(r.join("keep").exists());
        assert!(!r.join("gone").exists());
        assert!(!r.join(".wh.gone").exists());
        assert!(!r.join("other").exists());
        assert!(
            r.join("dir/new").exists(),
            "same-layer entry survives opaque"
        );
        assert!(r.join("dir/sub/upper").exists());
        assert!(!r.join("dir/lower1").exists());
        assert!(!r.join("dir/sub/lower2").exists());
        assert!(!r.join("dir/.wh..wh..opq").exists());
        fx.assert_contained();
    }

    /// One PAX record: "LEN key=value\n", LEN counting itself.
    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let body_len = 1 + key.len() + 1 + value.len() + 1;
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    /// Append a PAX header with `records`, then `h` with `data` at `path`.
    fn append_with_pax(
        b: &mut Builder<Vec<u8>>,
        records: &[(&str, &[u8])],
        h: &mut Header,
        path: &str,
        data: &[u8],
    ) {
        let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let mut ph = Header::new_ustar();
        ph.set_entry_type(EntryType::XHeader);
        ph.set_size(body.len() as u64);
        ph.set_mode(0o644);
        b.append_data(&mut ph, "PaxHeaders/x", &body[..]).unwrap();
        b.append_data(h, path, data).unwrap();
    }

    fn file_header(mode: u32, uid: u64, gid: u64, size: u64) -> Header {
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(size);
        h.set_mtime(1_500_000_000);
        h
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
        let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
        let cn = CString::new(name).unwrap();
        let mut buf = vec![0u8; 4096];
        // SAFETY: valid strings and buffer, all outliving the call.
        let n = unsafe {
            libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }

    /// A security.capability value (VFS_CAP_REVISION_2) granting
    /// cap_net_raw (bit 13) permitted and effective.
    pub(crate) fn cap_net_raw() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes()); // rev 2, effective
        v.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted lo
        v.extend_from_slice(&0u32.to_le_bytes()); // inheritable lo
        v.extend_from_slice(&0u32.to_le_bytes()); // permitted hi
        v.extend_from_slice(&0u32.to_le_bytes()); // inheritable hi
        v
    }

    #[test]
    fn ownership_modes_and_pax_owners() {
        assert!(is_root(), "unpack tests run as root (chown, mknod)");
        let fx = fixture();
        let mut b = Builder::new(Vec::new());
        // Plain header owner.
        let mut h = file_header(0o4755, 1000, 1001, 1);
        b.append_data(&mut h, "bin/suid", &b"x"[..]).unwrap();
        // PAX owners override the header's (and exceed the octal field).
        let mut h = file_header(0o2750, 1, 1, 1);
        append_with_pax(
            &mut b,
            &[("uid", b"3000000"), ("gid", b"3000001")],
            &mut h,
            "bin/sgid",
            b"y",
        );
        // A sticky, setgid directory owned by someone else.
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Directory);
        h.set_mode(0o3777);
        h.set_uid(42);
        h.set_gid(43);
        h.set_size(0);
        h.set_mtime(1_400_000_000);
        b.append_data(&mut h, "tmp/", &b""[..]).unwrap();
        // A child added after the directory must not change its mtime.
        let mut h = file_header(0o644, 0, 0, 1);
        b.append_data(&mut h, "tmp/child", &b"z"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let mut u = fx.unpacker();
        u.apply_layer(&data[..]).unwrap();
        let m = fs::metadata(fx.root.join("bin/suid")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o4755, 1000, 1001));
        let m = fs::metadata(fx.root.join("bin/sgid")).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (0o2750, 3_000_000, 3_000_001)
        );
        assert_eq!(m.mtime(), 1_500_000_000);
        let m = fs::metadata(fx.root.join("tmp")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o3777, 42, 43));
        assert_eq!(m.mtime(), 1_400_000_000, "directory mtime set last");
        fx.assert_contained();
    }

    #[test]
    fn out_of_range_owner_is_refused() {
        let fx = fixture();
        let mut b = Builder::new(Vec::new());
        let mut h = file_header(0o644, 0, 0, 1);
        append_with_pax(&mut b, &[("uid", b"4294967295")], &mut h, "f", b"x");
        let data = b.into_inner().unwrap();
        let err = fx.unpacker().apply_layer(&data[..]).unwrap_err();
        assert!(matches!(err, UnpackError::BadOwner(_)), "{err}");
    }

    #[test]
    fn device_nodes_and_fifos() {
        use std::os::unix::fs::FileTypeExt;
        assert!(is_root(), "unpack tests run as root (mknod)");
        let fx = fixture();
        let mut b = Builder::new(Vec::new());
        for (path, kind, major, minor, mode) in [
            ("dev/null", EntryType::Char, 1, 3, 0o666),
            ("dev/loop9", EntryType::Block, 7, 9, 0o660),
            ("dev/big", EntryType::Char, 4095, 1_048_575, 0o600),
            ("run/fifo", EntryType::Fifo, 0, 0, 0o620),
        ] {
            let mut h = Header::new_ustar();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(6);
            h.set_size(0);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            b.append_data(&mut h, path, &b""[..]).unwrap();
        }
        let data = b.into_inner().unwrap();
        fx.unpacker().apply_layer(&data[..]).unwrap();
        let m = fs::symlink_metadata(fx.root.join("dev/null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), libc::makedev(1, 3));
        assert_eq!((m.mode() & 0o7777, m.gid()), (0o666, 6));
        let m = fs::symlink_metadata(fx.root.join("dev/loop9")).unwrap();
        assert!(m.file_type().is_block_device());
        assert_eq!(m.rdev(), libc::makedev(7, 9));
        assert_eq!(m.mode() & 0o7777, 0o660);
        let m = fs::symlink_metadata(fx.root.join("dev/big")).unwrap();
        assert_eq!(m.rdev(), libc::makedev(4095, 1_048_575));
        let m = fs::symlink_metadata(fx.root.join("run/fifo")).unwrap();
        assert!(m.file_type().is_fifo());
        assert_eq!(m.mode() & 0o7777, 0o620);
        fx.assert_contained();
    }

    #[test]
    fn xattrs_are_applied_after_chown() {
        assert!(is_root(), "unpack tests run as root (security.capability)");
        let fx = fixture();
        let cap = cap_net_raw();
        let mut b = Builder::new(Vec::new());
        let mut h = file_header(0o755, 1000, 1000, 2);
        append_with_pax(
            &mut b,
            &[
                ("SCHILY.xattr.security.capability", &cap),
                ("SCHILY.xattr.user.note", b"hello\0bin"),
            ],
            &mut h,
            "bin/ping",
            b"#!",
        );
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        append_with_pax(
            &mut b,
            &[
                ("SCHILY.xattr.user.dir", b"d"),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ],
            &mut h,
            "data/",
            b"",
        );
        // A name the kernel refuses (no namespace): a warning, not an error.
        let mut h = file_header(0o644, 0, 0, 0);
        append_with_pax(&mut b, &[("SCHILY.xattr.bogus", b"1")], &mut h, "f", b"");
        let data = b.into_inner().unwrap();
        let mut u = fx.unpacker();
        u.apply_layer(&data[..]).unwrap();
        let ping = fx.root.join("bin/ping");
        assert_eq!(get_xattr(&ping, "security.capability"), Some(cap));
        assert_eq!(
            get_xattr(&ping, "user.note").as_deref(),
            Some(&b"hello\0bin"[..])
        );
        assert_eq!(fs::metadata(&ping).unwrap().uid(), 1000);
        let d = fx.root.join("data");
        assert_eq!(get_xattr(&d, "user.dir").as_deref(), Some(&b"d"[..]));
        assert_eq!(get_xattr(&d, "trusted.overlay.opaque"), None);
        assert!(fx.root.join("f").is_file());
        assert_eq!(u.warnings(), 2, "overlay xattr and bogus name");
    }

    #[test]
    fn gnu_sparse_files_keep_their_holes() {
        let fx = fixture();
        let mut b = Builder::new(Vec::new());
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_size(8192); // stored bytes
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.set_real_size(8 << 20);
            gnu.sparse[0].set_offset(4 << 20);
            gnu.sparse[0].set_length(4096);
            gnu.sparse[1].set_offset((8 << 20) - 4096);
            gnu.sparse[1].set_length(4096);
        }
        let mut data = vec![b'a'; 4096];
        data.extend(vec![b'b'; 4096]);
        b.append_data(&mut h, "sparse", &data[..]).unwrap();
        // A plain file with a long run of zeros becomes sparse too.
        let mut zeros = vec![0u8; 1 << 20];
        zeros.extend_from_slice(b"end");
        let mut h = file_header(0o644, 0, 0, zeros.len() as u64);
        b.append_data(&mut h, "zeros", &zeros[..]).unwrap();
        let layer = b.into_inner().unwrap();
        fx.unpacker().apply_layer(&layer[..]).unwrap();
        let p = fx.root.join("sparse");
        let content = fs::read(&p).unwrap();
        assert_eq!(content.len(), 8 << 20);
        assert!(content[..4 << 20].iter().all(|&b| b == 0));
        assert!(content[4 << 20..(4 << 20) + 4096]
            .iter()
            .all(|&b| b == b'a'));
        assert!(content[(8 << 20) - 4096..].iter().all(|&b| b == b'b'));
        let m = fs::metadata(&p).unwrap();
        assert!(
            m.blocks() * 512 <= 64 * 1024,
            "holes stay holes: {} bytes allocated",
            m.blocks() * 512
        );
        let z = fx.root.join("zeros");
        assert_eq!(fs::read(&z).unwrap(), zeros);
        assert!(fs::metadata(&z).unwrap().blocks() * 512 <= 64 * 1024);
    }

    #[test]
    fn symlinks_keep_any_target_and_are_never_followed() {
        let fx = fixture();
        let mut u = fx.unpacker();
        u.apply_layer(
            &layer(&[
                E::Symlink("up", "../../../../etc/passwd"),
                E::Symlink("abs", "/etc/shadow"),
                E::Symlink("dir", "/"),
                E::Hardlink("up2", "up"),
            ])[..],
        )
        .unwrap();
        assert_eq!(
            fs::read_link(fx.root.join("up")).unwrap(),
            PathBuf::from("../../../../etc/passwd")
        );
        // A hardlink to a symlink links the symlink itself.
        let m = fs::symlink_metadata(fx.root.join("up2")).unwrap();
        assert!(m.file_type().is_symlink());
        // Replacing, whiting out and chmod-ing through them touch only the link.
        u.apply_layer(&layer(&[E::File(".wh.abs", b""), E::Dir("dir/")])[..])
            .unwrap();
        assert!(fs::symlink_metadata(fx.root.join("abs")).is_err());
        assert!(fs::symlink_metadata(fx.root.join("dir")).unwrap().is_dir());
        fx.assert_contained();
    }

    #[test]
    fn whiteout_under_a_missing_parent_creates_nothing() {
        let fx = fixture();
        fx.unpacker()
            .apply_layer(&layer(&[E::File("a/b/.wh.c", b"")])[..])
            .unwrap();
        assert_eq!(fs::read_dir(&fx.root).unwrap().count(), 0);
    }

    #[test]
    fn root_entry_sets_the_root_mode() {
        let fx = fixture();
        let mut b = Builder::new(Vec::new());
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Directory);
        h.set_mode(0o700);
        h.set_size(0);
        h.set_mtime(1_234_567_890);
        b.append_data(&mut h, "./", &b""[..]).unwrap();
        let data = b.into_inner().unwrap();
        fx.unpacker().apply_layer(&data[..]).unwrap();
        let m = fs::metadata(&fx.root).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o700);
        assert_eq!(m.mtime(), 1_234_567_890);
    }

    #[test]
    fn huge_header_records_are_refused() {
        let fx = fixture();
        let mut b = Builder::new(Vec::new());
        let big = vec![b'x'; (MAX_HEADER_RECORDS + 1024) as usize];
        let mut h = file_header(0o644, 0, 0, 1);
        append_with_pax(&mut b, &[("comment", &big)], &mut h, "f", b"x");
        let data = b.into_inner().unwrap();
        let err = fx.unpacker().apply_layer(&data[..]).unwrap_err();
        assert!(matches!(err, UnpackError::Tar(_)), "{err}");
        let mut chain = err.to_string();
        if let Some(src) = std::error::Error::source(&err) {
            chain.push_str(&src.to_string());
        }
        assert!(chain.contains("header records"), "{chain}");
        // Large but allowed records, and big file data after them, are fine.
        let fx = fixture();
        let mut b = Builder::new(Vec::new());
        let mut h = file_header(0o644, 0, 0, 6 << 20);
        let body = vec![1u8; 6 << 20];
        append_with_pax(
            &mut b,
            &[("comment", &vec![b'y'; 1 << 20])],
            &mut h,
            "f",
            &body,
        );
        let data = b.into_inner().unwrap();
        fx.unpacker().apply_layer(&data[..]).unwrap();
        assert_eq!(fs::metadata(fx.root.join("f")).unwrap().len(), 6 << 20);
    }

    #[test]
    fn budget_message_names_the_budget() {
        let fx = fixture();
        let err = Unpacker::new(
            &fx.root,
            Budget {
                max_bytes: 3,
                max_inodes: 10,
            },
        )
        .apply_layer(&layer(&[E::File("a", b"1234")])[..])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Image is too large to unpack: it expands past the unpack budget of 3 bytes"
        );
    }

    #[test]
    fn garbage_is_a_tar_error() {
        let fx = fixture();
        let mut data = layer(&[E::File("a", &[7u8; 5000])]);
        data.truncate(1500);
        assert!(fx.unpacker().apply_layer(&data[..]).is_err());
    }
}
