//! Building the read-only ext4 base of an image.
//!
//! `rootfs/<image id hex>.ext4` is built once per image: the layers are
//! unpacked ([`crate::unpack`]) into a staging directory under `tmp/`, and
//! `mkfs.ext4 -d` (e2fsprogs ≥ 1.43; run as root it keeps owners, modes,
//! device nodes, symlinks and hardlinks) turns it into a sparse filesystem
//! image with headroom, written to a temporary name and renamed into place.
//! Builds of one image are serialized with an flock on
//! `rootfs/.<hex>.lock`, so concurrent `run`s build once.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use vessel_api::fsutil::random_hex;

use crate::oci::Manifest;
use crate::store::{digest_hex, Flock, Store, StoreError};
use crate::unpack::{Budget, UnpackError, Unpacker};

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
    let mut unpacker = Unpacker::new(staging, budget);
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
    vessel_api::paths::find_in_path("mkfs.ext4").or_else(|| {
        ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
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

    #[test]
    fn mkfs_keeps_owners_modes_devices_xattrs_and_holes() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "run as root (mknod, chown)");
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Home::new(dir.path())).unwrap();
        let data = layer();
        let digest = store.write_blob_bytes(&data).unwrap();
        let desc = |d: &str, size: u64| Descriptor {
            media_type: crate::oci::MT_OCI_LAYER.into(),
            digest: d.into(),
            size,
            platform: None,
            annotations: BTreeMap::new(),
        };
        let config = store.write_blob_bytes(b"{}").unwrap();
        let manifest = Manifest {
            schema_version: 2,
            media_type: None,
            config: desc(&config, 2),
            layers: vec![desc(&digest, data.len() as u64)],
        };
        let img = ensure_rootfs(&store, &config, &manifest, Budget::default()).unwrap();
        // Built once: a second call returns the same file untouched.
        let ino = fs::metadata(&img).unwrap().ino();
        let again = ensure_rootfs(&store, &config, &manifest, Budget::default()).unwrap();
        assert_eq!(
            (again.clone(), fs::metadata(&again).unwrap().ino()),
            (img.clone(), ino)
        );
        // The staging tree is gone.
        assert_eq!(fs::read_dir(store.home().tmp_dir()).unwrap().count(), 0);

        let su = debugfs(&img, "stat /bin/su");
        assert!(su.contains("Mode:  04755"), "{su}");
        assert!(su.contains("Links: 2"), "hardlink kept: {su}");
        let ping = debugfs(&img, "ea_list /bin/ping");
        assert!(ping.contains("security.capability"), "{ping}");
        let f = debugfs(&img, "stat /home/u/file");
        assert!(f.contains("User:  1000   Group:  1001"), "{f}");
        assert!(f.contains("Mode:  02640"), "{f}");
        let t = debugfs(&img, "stat /tmp");
        assert!(t.contains("Mode:  01777"), "{t}");
        let ea = debugfs(&img, "ea_list /data");
        assert!(ea.contains("user.origin") && ea.contains("vessel"), "{ea}");
        let null = debugfs(&img, "stat /dev/null");
        assert!(null.contains("Type: character special"), "{null}");
        assert!(null.contains("Device major/minor number: 01:03"), "{null}");
        let sda = debugfs(&img, "stat /dev/sda");
        assert!(sda.contains("Type: block special"), "{sda}");
        assert!(sda.contains("Device major/minor number: 08:00"), "{sda}");
        let fifo = debugfs(&img, "stat /run/fifo");
        assert!(fifo.contains("Type: FIFO"), "{fifo}");
        let sh = debugfs(&img, "stat /bin/sh");
        assert!(
            sh.contains("Type: symlink") && sh.contains("/bin/busybox"),
            "{sh}"
        );
        let sp = debugfs(&img, "stat /sparse");
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
        let content = debugfs(&img, "cat /home/u/file");
        assert_eq!(content, "u!\n");
        // Inodes have headroom over the content.
        let sb = debugfs(&img, "stats");
        let inodes: u64 = sb
            .lines()
            .find(|l| l.starts_with("Inode count:"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(inodes >= 4096, "{inodes}");
    }
}
