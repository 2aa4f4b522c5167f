//! Applying image layers to a directory, safely.
//!
//! Layers come from anywhere, so every entry is treated as hostile:
//!
//! - paths are normalized; any `..` component is an error ("layer entry
//!   escapes the rootfs"), absolute paths are taken relative to the root;
//! - nothing is ever written through a symlink: every parent component is
//!   checked with `symlink_metadata`, and a symlink parent is an error; an
//!   existing entry at the final path is unlinked (never followed) first,
//!   and regular files are opened with `O_NOFOLLOW | O_EXCL`;
//! - hardlink targets must exist inside the root, reached through no
//!   symlink, and not be directories;
//! - a [`Budget`] bounds the bytes and inodes a rootfs may use.
//!
//! Whiteouts follow the OCI spec: `.wh.NAME` deletes `NAME`;
//! `DIR/.wh..wh..opq` hides everything lower layers put in `DIR` (applied
//! at the end of the layer, so entries of the same layer survive).
//!
//! Ownership and device nodes need root; as another user they are skipped.
//! Extended attributes are not applied.

use std::collections::{BTreeSet, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

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
    #[error("Image is too large to unpack: more than {limit} {what}")]
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

/// Applies layers, in order, to one root directory.
pub struct Unpacker {
    root: PathBuf,
    budget: Budget,
    bytes: u64,
    inodes: u64,
    is_root: bool,
}

/// A normalized path inside the root: its components, none `.`/`..`/empty.
type RelPath = Vec<Vec<u8>>;

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

impl Unpacker {
    pub fn new(root: impl Into<PathBuf>, budget: Budget) -> Self {
        Self {
            root: root.into(),
            budget,
            bytes: 0,
            inodes: 0,
            // SAFETY: geteuid has no preconditions and cannot fail.
            is_root: unsafe { libc::geteuid() } == 0,
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

    /// Make sure every parent of `rel` is a real directory (creating missing
    /// ones), never a symlink.
    fn ensure_parents(&mut self, rel: &[Vec<u8>]) -> Result<(), UnpackError> {
        for i in 1..rel.len() {
            let p = self.host_path(&rel[..i]);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(UnpackError::ThroughSymlink(display(rel)))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(UnpackError::NotADirectory(display(rel))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.charge_inode()?;
                    fs::create_dir(&p).map_err(Self::io_err(&rel[..i]))?;
                    fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                        .map_err(Self::io_err(&rel[..i]))?;
                }
                Err(e) => return Err(Self::io_err(&rel[..i])(e)),
            }
        }
        Ok(())
    }

    /// Remove whatever is at `p` without following it.
    fn remove_existing(p: &Path, keep_dir: bool) -> io::Result<bool> {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
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

    /// Apply one layer (plain or gzip tar) on top of the root.
    pub fn apply_layer(&mut self, layer: impl Read) -> Result<(), UnpackError> {
        let reader = crate::oci::decompressed(layer).map_err(UnpackError::Tar)?;
        let mut archive = tar::Archive::new(reader);
        let mut added: HashSet<RelPath> = HashSet::new();
        let mut opaque: BTreeSet<RelPath> = BTreeSet::new();
        for entry in archive.entries().map_err(UnpackError::Tar)? {
            let mut entry = entry.map_err(UnpackError::Tar)?;
            let rel = normalize(&entry.path_bytes())?;
            let Some(name) = rel.last().cloned() else {
                continue; // the root itself
            };
            if name == OPAQUE_WHITEOUT.as_bytes() {
                self.ensure_parents(&rel)?;
                opaque.insert(rel[..rel.len() - 1].to_vec());
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                if hidden.is_empty() || hidden == b"." {
                    continue;
                }
                let mut target = rel[..rel.len() - 1].to_vec();
                target.push(hidden.to_vec());
                self.ensure_parents(&target)?;
                Self::remove_existing(&self.host_path(&target), false)
                    .map_err(Self::io_err(&target))?;
                continue;
            }
            self.ensure_parents(&rel)?;
            self.apply_entry(&mut entry, &rel)?;
            for i in 1..=rel.len() {
                added.insert(rel[..i].to_vec());
            }
        }
        for dir in opaque {
            self.prune_opaque(&dir, &added)?;
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

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        rel: &[Vec<u8>],
    ) -> Result<(), UnpackError> {
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().map_err(UnpackError::Tar)? & 0o7777;
        let uid = header.uid().map_err(UnpackError::Tar)?;
        let gid = header.gid().map_err(UnpackError::Tar)?;
        let (uid, gid) = match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(u), Ok(g)) => (u, g),
            _ => return Err(UnpackError::BadOwner(display(rel))),
        };
        let mtime = header.mtime().unwrap_or(0);
        let path = self.host_path(rel);
        let err = Self::io_err(rel);
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                let existed = Self::remove_existing(&path, true).map_err(Self::io_err(rel))?;
                if !existed {
                    self.charge_inode()?;
                    fs::create_dir(&path).map_err(Self::io_err(rel))?;
                }
                self.set_owner(&path, uid, gid, rel)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(Self::io_err(rel))?;
                set_mtime(&path, mtime);
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                Self::remove_existing(&path, false).map_err(Self::io_err(rel))?;
                self.charge_inode()?;
                let size = entry.size();
                self.bytes = self.bytes.saturating_add(size);
                if self.bytes > self.budget.max_bytes {
                    return Err(UnpackError::Budget {
                        what: "bytes",
                        limit: self.budget.max_bytes,
                    });
                }
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
                    .map_err(Self::io_err(rel))?;
                let copied = io::copy(&mut entry.take(size), &mut f).map_err(UnpackError::Tar)?;
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
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(Self::io_err(rel))?;
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
                // linkat without AT_SYMLINK_FOLLOW: a symlink target is
                // linked itself, never followed.
                fs::hard_link(&tpath, &path).map_err(Self::io_err(rel))?;
            }
            T::Char | T::Block | T::Fifo => {
                Self::remove_existing(&path, false).map_err(Self::io_err(rel))?;
                if kind != T::Fifo && !self.is_root {
                    return Ok(()); // device nodes need root
                }
                self.charge_inode()?;
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
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
                let rc = unsafe { libc::mknod(c.as_ptr(), fmt | mode, dev) };
                if rc != 0 {
                    return Err(err(io::Error::last_os_error()));
                }
                self.set_owner(&path, uid, gid, rel)?;
                // mknod applies the umask; set the exact mode.
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(Self::io_err(rel))?;
                set_mtime(&path, mtime);
            }
            // PAX and GNU long-name headers are consumed by the tar crate;
            // anything else (global headers, unknown types) carries no file.
            _ => {}
        }
        Ok(())
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

    #[test]
    fn garbage_is_a_tar_error() {
        let fx = fixture();
        let mut data = layer(&[E::File("a", &[7u8; 5000])]);
        data.truncate(1500);
        assert!(fx.unpacker().apply_layer(&data[..]).is_err());
    }
}
