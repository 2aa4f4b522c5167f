//! Building the read-only ext4 base of an image.
//!
//! `rootfs/<image id hex>.ext4` is built once per image: the layers are
//! unpacked ([`crate::unpack`]) into a staging directory under `tmp/`, and
//! `mkfs.ext4 -d` (e2fsprogs ≥ 1.43; run as root it keeps owners, modes,
//! device nodes, symlinks and hardlinks) turns it into a sparse filesystem
//! image with headroom, written to a temporary name and renamed into place.
//! Builds of one image are serialized with an flock on
//! `rootfs/.<hex>.lock`, so concurrent `run`s build once.
//!
//! Unprivileged (rootless mode), `mkfs.ext4 -d` can only copy what the
//! host files have: this user's owner and the modes it could give. The
//! unpacker's [`Deferred`] record of each entry is then written into the
//! image with `debugfs -w` (`set_inode_field` of uid, gid and mode, and
//! `mknod` for device nodes in place of their stand-ins), before the image
//! is renamed into place.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use vessel_api::fsutil::random_hex;

use crate::oci::Manifest;
use crate::store::{digest_hex, Flock, Store, StoreError};
use crate::unpack::{Budget, Deferred, DeferredTree, RelPath, UnpackError, Unpacker};

/// Filesystem label of every rootfs.
pub const LABEL: &str = "vessel-rootfs";
const MIB: u64 = 1 << 20;

/// Errors building a rootfs.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("Content store error")]
    Store(#[from] StoreError),
    #[error("Cannot unpack layer {digest}")]
    Unpack {
        digest: String,
        #[source]
        source: UnpackError,
    },
    #[error("mkfs.ext4 not found; install e2fsprogs (apt-get install e2fsprogs)")]
    MkfsMissing,
    #[error("mkfs.ext4 failed ({status}): {stderr}")]
    Mkfs { status: String, stderr: String },
    #[error("debugfs not found; install e2fsprogs (apt-get install e2fsprogs)")]
    DebugfsMissing,
    #[error("debugfs could not set owners and modes: {0}")]
    Debugfs(String),
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Ext4Error + '_ {
    move |source| Ext4Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the rootfs of image `id` (`sha256:<hex>`) lives.
pub fn rootfs_path(store: &Store, id: &str) -> Result<PathBuf, Ext4Error> {
    Ok(store
        .home()
        .rootfs_dir()
        .join(format!("{}.ext4", digest_hex(id)?)))
}

/// Return the ext4 base of the image whose config is `id` and manifest is
/// `manifest`, building it first if it does not exist.
pub fn ensure_rootfs(
    store: &Store,
    id: &str,
    manifest: &Manifest,
    budget: Budget,
) -> Result<PathBuf, Ext4Error> {
    // SAFETY: geteuid has no preconditions.
    let privileged = unsafe { libc::geteuid() } == 0;
    ensure_rootfs_as(store, id, manifest, budget, privileged)
}

/// [`ensure_rootfs`], unpacking as root would (`privileged`) or as any
/// other user does.
pub fn ensure_rootfs_as(
    store: &Store,
    id: &str,
    manifest: &Manifest,
    budget: Budget,
    privileged: bool,
) -> Result<PathBuf, Ext4Error> {
    let dest = rootfs_path(store, id)?;
    if dest.is_file() {
        return Ok(dest);
    }
    let hex = digest_hex(id)?;
    let dir = store.home().rootfs_dir();
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let lock_path = dir.join(format!(".{hex}.lock"));
    let _lock = loop {
        let lock = Flock::exclusive(&lock_path)?;
        if lock.is_current(&lock_path) {
            break lock;
        }
    };
    if dest.is_file() {
        return Ok(dest); // built by whoever held the lock
    }
    let mkfs = find_mkfs().ok_or(Ext4Error::MkfsMissing)?;

    let tmp = store.home().tmp_dir();
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    // The unpacked tree holds setuid files, capabilities and device nodes of
    // an untrusted image: keep it under a directory only root can enter.
    let private = TempPath(tmp.join(format!("rootfs-{}", random_hex(8))));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&private.0)
        .map_err(io_err(&private.0))?;
    let staging = private.0.join("root");
    fs::create_dir(&staging).map_err(io_err(&staging))?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o755)).map_err(io_err(&staging))?;
    let staging = &staging;
    let mut unpacker = Unpacker::with_privilege(staging, budget, privileged);
    for layer in &manifest.layers {
        let f = store.open_blob(&layer.digest)?;
        unpacker
            .apply_layer(f)
            .map_err(|source| Ext4Error::Unpack {
                digest: layer.digest.clone(),
                source,
            })?;
    }
    let (bytes, inodes) = tree_usage(staging).map_err(io_err(staging))?;
    let size = image_size(bytes);
    let inode_count = (inodes * 2 + 4096).max(size / 16384);

    let out = TempPath(dir.join(format!(".{hex}.ext4.tmp-{}", random_hex(6))));
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&out.0)
        .map_err(io_err(&out.0))?;
    f.set_len(size).map_err(io_err(&out.0))?;
    drop(f);
    let output = Command::new(&mkfs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-E",
            "root_owner=0:0",
            "-L",
            LABEL,
        ])
        .arg("-N")
        .arg(inode_count.to_string())
        .arg("-d")
        .arg(staging)
        .arg(&out.0)
        .arg(format!("{}k", size / 1024))
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Ext4Error::MkfsMissing
            } else {
                Ext4Error::Io {
                    path: mkfs.clone(),
                    source: e,
                }
            }
        })?;
    if !output.status.success() {
        return Err(Ext4Error::Mkfs {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    if let Some(deferred) = unpacker.take_deferred() {
        apply_deferred(&out.0, staging, &deferred, &private.0)?;
    }
    let f = fs::File::open(&out.0).map_err(io_err(&out.0))?;
    f.sync_all().map_err(io_err(&out.0))?;
    fs::set_permissions(&out.0, fs::Permissions::from_mode(0o644)).map_err(io_err(&out.0))?;
    fs::rename(&out.0, &dest).map_err(io_err(&dest))?;
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(dest)
}

use std::os::unix::fs::PermissionsExt;

/// Longest command line `debugfs -f` reads whole (its buffer is `BUFSIZ`).
const DEBUGFS_LINE_MAX: usize = 8000;

/// `"…"` for debugfs's command parser: inside quotes only `"` is special,
/// and it is doubled. `None` for a name it cannot take (a line break, or
/// too long for one command line).
fn debugfs_quote(path: &[u8]) -> Option<Vec<u8>> {
    if path.iter().any(|&b| b == b'\n' || b == b'\r') || path.len() * 2 + 64 > DEBUGFS_LINE_MAX {
        return None;
    }
    let mut q = Vec::with_capacity(path.len() + 2);
    q.push(b'"');
    for &b in path {
        if b == b'"' {
            q.push(b'"');
        }
        q.push(b);
    }
    q.push(b'"');
    Some(q)
}

/// The debugfs commands giving every path under `staging` (its root
/// included) its deferred owner and mode, and device nodes in place of
/// their stand-ins. Paths nothing was recorded for (parents a layer did
/// not list) become root's. Returns how many paths debugfs cannot name.
fn deferred_script(
    staging: &Path,
    deferred: &DeferredTree,
    out: &mut impl io::Write,
    xattrs: &mut impl io::Write,
    scratch: &Path,
) -> Result<usize, Ext4Error> {
    let w = |out: &mut dyn io::Write, parts: &[&[u8]]| -> Result<(), Ext4Error> {
        out.write_all(&parts.join(&b' '))
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| Ext4Error::Io {
                path: PathBuf::from("debugfs script"),
                source: e,
            })
    };
    // A path in the image, `/` and the components.
    let image_path = |rel: &[Vec<u8>]| [&b"/"[..], &rel.join(&b'/')].concat();
    let mut values = 0usize;
    let mut skipped = 0;
    let mut stack: Vec<RelPath> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let mut host = staging.to_path_buf();
        for c in &rel {
            host.push(std::ffi::OsStr::from_bytes(c));
        }
        let m = fs::symlink_metadata(&host).map_err(io_err(&host))?;
        if m.is_dir() {
            for e in fs::read_dir(&host).map_err(io_err(&host))? {
                let e = e.map_err(io_err(&host))?;
                let mut child = rel.clone();
                child.push(e.file_name().as_bytes().to_vec());
                stack.push(child);
            }
        }
        let Some(q) = debugfs_quote(&image_path(&rel)) else {
            skipped += 1;
            continue;
        };
        let want = deferred.meta.get(&rel).copied().unwrap_or(Deferred {
            uid: 0,
            gid: 0,
            mode: m.mode() & 0o7777,
            device: None,
        });
        let device = want
            .device
            .filter(|d| m.is_file() && d.placeholder == m.ino());
        // The name the `sif`s below use, and the file type bits of the mode
        // they set (none for a symlink).
        let (target, mode) = match device {
            Some(dev) => {
                // Replace the stand-in by the node, from inside its
                // directory (debugfs's mknod takes a name, not a path).
                let Some((name, parent)) = rel.split_last() else {
                    continue; // the root is a directory, never a stand-in
                };
                let (Some(pq), Some(nq)) =
                    (debugfs_quote(&image_path(parent)), debugfs_quote(name))
                else {
                    skipped += 1;
                    continue;
                };
                let (kind, fmt) = if dev.block {
                    (&b"b"[..], libc::S_IFBLK)
                } else {
                    (&b"c"[..], libc::S_IFCHR)
                };
                let (maj, min) = (dev.major.to_string(), dev.minor.to_string());
                w(out, &[b"cd", &pq])?;
                w(out, &[b"rm", &nq])?;
                w(out, &[b"mknod", &nq, kind, maj.as_bytes(), min.as_bytes()])?;
                (nq, Some(fmt))
            }
            None => {
                let fmt = (!m.file_type().is_symlink()).then(|| m.mode() & libc::S_IFMT);
                (q.clone(), fmt)
            }
        };
        let (uid, gid) = (want.uid.to_string(), want.gid.to_string());
        w(out, &[b"sif", &target, b"uid", uid.as_bytes()])?;
        w(out, &[b"sif", &target, b"gid", gid.as_bytes()])?;
        if let Some(fmt) = mode {
            let mode = format!("0{:o}", fmt | (want.mode & 0o7777));
            w(out, &[b"sif", &target, b"mode", mode.as_bytes()])?;
        }
        if device.is_some() {
            w(out, &[b"cd", b"/"])?;
            continue; // a device node: no attributes
        }
        // Values go through files (`ea_set -f`): they are binary.
        for (name, value) in deferred.xattrs.get(&rel).into_iter().flatten() {
            let Some(nq) = debugfs_quote(name) else {
                continue;
            };
            let file = scratch.join(format!("xattr-{values}"));
            values += 1;
            fs::write(&file, value).map_err(io_err(&file))?;
            let fq = debugfs_quote(file.as_os_str().as_bytes()).ok_or_else(|| {
                Ext4Error::Debugfs(format!("debugfs cannot name {}", file.display()))
            })?;
            w(xattrs, &[b"ea_set", b"-f", &fq, &q, &nq])?;
        }
    }
    Ok(skipped)
}

/// Write the unpacker's deferred owners, modes and device nodes into the
/// ext4 image `img` built from `staging` (see the module docs).
fn apply_deferred(
    img: &Path,
    staging: &Path,
    deferred: &DeferredTree,
    scratch: &Path,
) -> Result<(), Ext4Error> {
    let debugfs = find_tool("debugfs").ok_or(Ext4Error::DebugfsMissing)?;
    let script_path = scratch.join("debugfs.cmds");
    let xattr_path = scratch.join("debugfs-xattrs.cmds");
    let skipped = {
        let create = |p: &Path| {
            fs::File::create(p)
                .map(io::BufWriter::new)
                .map_err(io_err(p))
        };
        let (mut out, mut xattrs) = (create(&script_path)?, create(&xattr_path)?);
        let n = deferred_script(staging, deferred, &mut out, &mut xattrs, scratch)?;
        io::Write::flush(&mut out).map_err(io_err(&script_path))?;
        io::Write::flush(&mut xattrs).map_err(io_err(&xattr_path))?;
        n
    };
    if skipped > 0 {
        eprintln!(
            "vessel-images: warning: {skipped} paths with line breaks in their names keep the unpacking user as owner"
        );
    }
    // Owners, modes and nodes must all apply; an attribute the filesystem
    // refuses is a warning, as it is for a privileged unpack.
    let errors = run_debugfs(&debugfs, &script_path, img)?;
    if !errors.is_empty() {
        return Err(Ext4Error::Debugfs(summarize(&errors)));
    }
    let errors = run_debugfs(&debugfs, &xattr_path, img)?;
    if !errors.is_empty() {
        eprintln!(
            "vessel-images: warning: the image's filesystem refused {} extended attributes: {}",
            errors.len(),
            summarize(&errors)
        );
    }
    Ok(())
}

/// Run the commands of `script` on `img`; the lines of its errors.
fn run_debugfs(debugfs: &Path, script: &Path, img: &Path) -> Result<Vec<String>, Ext4Error> {
    let output = Command::new(debugfs)
        .arg("-w")
        .arg("-f")
        .arg(script)
        .arg(img)
        .env("LC_ALL", "C")
        .stdout(std::process::Stdio::null())
        .output()
        .map_err(io_err(debugfs))?;
    // debugfs answers 0 whatever its commands did; each failure is a line
    // on stderr, after its banner.
    let mut errors: Vec<String> = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .map(str::to_string)
        .collect();
    if !output.status.success() {
        errors.push(format!("debugfs: {}", output.status));
    }
    Ok(errors)
}

fn summarize(errors: &[String]) -> String {
    let shown: Vec<&str> = errors.iter().take(5).map(String::as_str).collect();
    let more = if errors.len() > 5 { "; …" } else { "" };
    format!("{}{more}", shown.join("; "))
}

/// Size of the filesystem image for `bytes` of content: 30 % plus 512 MiB
/// of headroom (free, since the file is sparse), rounded up to a MiB.
pub fn image_size(bytes: u64) -> u64 {
    let raw = bytes + bytes / 10 * 3 + 512 * MIB;
    raw.div_ceil(MIB) * MIB
}

/// Bytes (file sizes rounded to 4 KiB blocks, plus 256 bytes of metadata per
/// inode) and inode count of a tree, not following symlinks.
fn tree_usage(root: &Path) -> io::Result<(u64, u64)> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let m = entry.metadata()?; // DirEntry::metadata does not follow symlinks
            inodes += 1;
            bytes += m.size().div_ceil(4096) * 4096 + 256;
            if m.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}

fn find_mkfs() -> Option<PathBuf> {
    find_tool("mkfs.ext4")
}

/// An e2fsprogs tool on `PATH` or in the sbin directories a normal user's
/// `PATH` often lacks.
fn find_tool(name: &str) -> Option<PathBuf> {
    vessel_api::paths::find_sbin_tool(name)
}

/// A file or directory removed when dropped.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.0) {
            Ok(m) if m.is_dir() => {
                let _ = fs::remove_dir_all(&self.0);
            }
            Ok(_) => {
                let _ = fs::remove_file(&self.0);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_has_headroom() {
        assert_eq!(image_size(0), 512 * MIB);
        assert_eq!(image_size(100 * MIB), 642 * MIB);
        assert_eq!(image_size(1) % MIB, 0);
    }
}

#[cfg(test)]
mod debugfs_tests {
    //! Build a real ext4 base and check with debugfs that `mkfs.ext4 -d`
    //! kept what the unpacker made.
    use super::*;
    use std::collections::BTreeMap;
    use tar::{Builder, EntryType, Header};
    use vessel_api::paths::Home;

    use crate::oci::Descriptor;

    fn pax(b: &mut Builder<Vec<u8>>, key: &str, value: &[u8]) {
        let body_len = key.len() + value.len() + 3;
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        let mut rec = format!("{len} {key}=").into_bytes();
        rec.extend_from_slice(value);
        rec.push(b'\n');
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(rec.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "PaxHeaders/x", &rec[..]).unwrap();
    }

    fn header(kind: EntryType, mode: u32, uid: u64, gid: u64) -> Header {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(0);
        h.set_mtime(1_600_000_000);
        h
    }

    fn layer() -> Vec<u8> {
        let mut b = Builder::new(Vec::new());
        let mut h = header(EntryType::Directory, 0o755, 0, 0);
        b.append_data(&mut h, "bin/", &b""[..]).unwrap();
        let mut h = header(EntryType::Regular, 0o4755, 0, 0);
        h.set_size(4);
        b.append_data(&mut h, "bin/su", &b"su!\n"[..]).unwrap();
        // cap_net_raw+ep (VFS_CAP_REVISION_2).
        let mut cap = Vec::new();
        for w in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
            cap.extend_from_slice(&w.to_le_bytes());
        }
        pax(&mut b, "SCHILY.xattr.security.capability", &cap);
        let mut h = header(EntryType::Regular, 0o755, 0, 0);
        h.set_size(5);
        b.append_data(&mut h, "bin/ping", &b"ping\n"[..]).unwrap();
        let mut h = header(EntryType::Link, 0o4755, 0, 0);
        b.append_link(&mut h, "bin/su2", "bin/su").unwrap();
        let mut h = header(EntryType::Symlink, 0o777, 0, 0);
        b.append_link(&mut h, "bin/sh", "/bin/busybox").unwrap();
        let mut h = header(EntryType::Regular, 0o2640, 1000, 1001);
        h.set_size(3);
        b.append_data(&mut h, "home/u/file", &b"u!\n"[..]).unwrap();
        let mut h = header(EntryType::Directory, 0o1777, 0, 0);
        b.append_data(&mut h, "tmp/", &b""[..]).unwrap();
        pax(&mut b, "SCHILY.xattr.user.origin", b"vessel");
        let mut h = header(EntryType::Directory, 0o755, 0, 0);
        b.append_data(&mut h, "data/", &b""[..]).unwrap();
        for (p, kind, maj, min) in [
            ("dev/null", EntryType::Char, 1, 3),
            ("dev/sda", EntryType::Block, 8, 0),
        ] {
            let mut h = header(kind, 0o666, 0, 0);
            h.set_device_major(maj).unwrap();
            h.set_device_minor(min).unwrap();
            b.append_data(&mut h, p, &b""[..]).unwrap();
        }
        let mut h = header(EntryType::Fifo, 0o600, 0, 0);
        b.append_data(&mut h, "run/fifo", &b""[..]).unwrap();
        // 64 MiB, one 4 KiB block of data at the end.
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(4096);
        {
            let g = h.as_gnu_mut().unwrap();
            g.set_real_size(64 << 20);
            g.sparse[0].set_offset((64 << 20) - 4096);
            g.sparse[0].set_length(4096);
        }
        b.append_data(&mut h, "sparse", &vec![b's'; 4096][..])
            .unwrap();
        b.into_inner().unwrap()
    }

    fn debugfs(img: &Path, cmd: &str) -> String {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(cmd)
            .arg(img)
            .env("LC_ALL", "C")
            .output()
            .expect("debugfs (e2fsprogs) is installed");
        assert!(out.status.success(), "debugfs {cmd}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A layer an unprivileged unpack cannot reproduce on the host: a
    /// read-only directory with a child, an unreadable file, a device
    /// replaced by another, a hardlink to a device, odd names.
    fn restrictive_layer() -> Vec<u8> {
        let mut b = Builder::new(Vec::new());
        let mut h = header(EntryType::Directory, 0o555, 0, 0);
        b.append_data(&mut h, "ro/", &b""[..]).unwrap();
        let mut h = header(EntryType::Regular, 0o000, 0, 42);
        h.set_size(7);
        b.append_data(&mut h, "ro/secret", &b"secret\n"[..])
            .unwrap();
        let mut h = header(EntryType::Regular, 0o600, 7, 8);
        h.set_size(2);
        b.append_data(&mut h, "ro/a \"q\" b\\c", &b"q\n"[..])
            .unwrap();
        let mut h = header(EntryType::Link, 0o666, 0, 0);
        b.append_link(&mut h, "dev/null2", "dev/null").unwrap();
        // A node, then another at the same path.
        for (kind, maj, min) in [(EntryType::Block, 8, 1), (EntryType::Char, 4, 1)] {
            let mut h = header(kind, 0o620, 0, 5);
            h.set_device_major(maj).unwrap();
            h.set_device_minor(min).unwrap();
            b.append_data(&mut h, "dev/tty1", &b""[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// The ext4 base of `layers`, unpacked with or without privilege.
    fn build(layers: &[Vec<u8>], privileged: bool) -> (tempfile::TempDir, PathBuf) {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "run as root (mknod, chown)");
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Home::new(dir.path())).unwrap();
        let desc = |d: &str, size: u64| Descriptor {
            media_type: crate::oci::MT_OCI_LAYER.into(),
            digest: d.into(),
            size,
            platform: None,
            annotations: BTreeMap::new(),
        };
        let layers = layers
            .iter()
            .map(|data| desc(&store.write_blob_bytes(data).unwrap(), data.len() as u64))
            .collect();
        let config = store.write_blob_bytes(b"{}").unwrap();
        let manifest = Manifest {
            schema_version: 2,
            media_type: None,
            config: desc(&config, 2),
            layers,
        };
        let img =
            ensure_rootfs_as(&store, &config, &manifest, Budget::default(), privileged).unwrap();
        // Built once: a second call returns the same file untouched.
        let ino = fs::metadata(&img).unwrap().ino();
        let again = ensure_rootfs(&store, &config, &manifest, Budget::default()).unwrap();
        assert_eq!(
            (again.clone(), fs::metadata(&again).unwrap().ino()),
            (img.clone(), ino)
        );
        // The staging tree is gone.
        assert_eq!(fs::read_dir(store.home().tmp_dir()).unwrap().count(), 0);
        (dir, img)
    }

    /// What `layer()` says, as the guest will see it.
    fn check_layer(img: &Path) {
        let su = debugfs(img, "stat /bin/su");
        assert!(su.contains("Mode:  04755"), "{su}");
        assert!(su.contains("Links: 2"), "hardlink kept: {su}");
        let ping = debugfs(img, "ea_list /bin/ping");
        assert!(ping.contains("security.capability"), "{ping}");
        let f = debugfs(img, "stat /home/u/file");
        assert!(f.contains("User:  1000   Group:  1001"), "{f}");
        assert!(f.contains("Mode:  02640"), "{f}");
        let t = debugfs(img, "stat /tmp");
        assert!(t.contains("Mode:  01777"), "{t}");
        let ea = debugfs(img, "ea_list /data");
        assert!(ea.contains("user.origin") && ea.contains("vessel"), "{ea}");
        let null = debugfs(img, "stat /dev/null");
        assert!(null.contains("Type: character special"), "{null}");
        assert!(null.contains("Device major/minor number: 01:03"), "{null}");
        let sda = debugfs(img, "stat /dev/sda");
        assert!(sda.contains("Type: block special"), "{sda}");
        assert!(sda.contains("Device major/minor number: 08:00"), "{sda}");
        let fifo = debugfs(img, "stat /run/fifo");
        assert!(fifo.contains("Type: FIFO"), "{fifo}");
        let sh = debugfs(img, "stat /bin/sh");
        assert!(
            sh.contains("Type: symlink") && sh.contains("/bin/busybox"),
            "{sh}"
        );
        let sp = debugfs(img, "stat /sparse");
        assert!(sp.contains("Size: 67108864"), "{sp}");
        // A 64 MiB file with one block of data: a few blocks, not 16384.
        let blocks: u64 = sp
            .split("Blockcount: ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX);
        assert!(
            blocks < 256,
            "holes kept in the ext4 base: {blocks} sectors"
        );
        let content = debugfs(img, "cat /home/u/file");
        assert_eq!(content, "u!\n");
        // Inodes have headroom over the content.
        let sb = debugfs(img, "stats");
        let inodes: u64 = sb
            .lines()
            .find(|l| l.starts_with("Inode count:"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(inodes >= 4096, "{inodes}");
    }

    #[test]
    fn mkfs_keeps_owners_modes_devices_xattrs_and_holes() {
        let (_dir, img) = build(&[layer()], true);
        check_layer(&img);
    }

    #[test]
    fn unprivileged_builds_get_owners_modes_and_devices_from_debugfs() {
        let (_dir, img) = build(&[layer(), restrictive_layer()], false);
        check_layer(&img);
        let stat = |p: &str| debugfs(&img, &format!("stat \"{p}\""));
        let ro = stat("/ro");
        assert!(
            ro.contains("Mode:  0555") && ro.contains("User:     0"),
            "{ro}"
        );
        let secret = stat("/ro/secret");
        assert!(secret.contains("Mode:  0000"), "{secret}");
        assert!(secret.contains("Group:    42"), "{secret}");
        assert_eq!(debugfs(&img, "cat /ro/secret"), "secret\n");
        let odd = stat("/ro/a \"\"q\"\" b\\c");
        assert!(odd.contains("User:     7   Group:     8"), "{odd}");
        // A hardlink to a device is a node of its own.
        let null2 = stat("/dev/null2");
        assert!(null2.contains("Type: character special"), "{null2}");
        assert!(
            null2.contains("Device major/minor number: 01:03"),
            "{null2}"
        );
        // A node replaces the one before it at its path.
        let tty = stat("/dev/tty1");
        assert!(tty.contains("Type: character special"), "{tty}");
        assert!(tty.contains("Device major/minor number: 04:01"), "{tty}");
        assert!(
            tty.contains("Mode:  0620") && tty.contains("Group:     5"),
            "{tty}"
        );
        // Parents no entry listed are root's.
        let run = stat("/run");
        assert!(run.contains("User:     0   Group:     0"), "{run}");
        // The filesystem is consistent after debugfs's edits.
        let out = Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(&img)
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "e2fsck: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
