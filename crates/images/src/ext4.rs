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
use std::os::unix::fs::MetadataExt;
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
    let _lock = Flock::exclusive(&dir.join(format!(".{hex}.lock")))?;
    if dest.is_file() {
        return Ok(dest); // built by whoever held the lock
    }
    let mkfs = find_mkfs().ok_or(Ext4Error::MkfsMissing)?;

    let tmp = store.home().tmp_dir();
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let staging = TempPath(tmp.join(format!("rootfs-{}", random_hex(8))));
    fs::create_dir(&staging.0).map_err(io_err(&staging.0))?;
    let mut unpacker = Unpacker::new(&staging.0, budget);
    for layer in &manifest.layers {
        let f = store.open_blob(&layer.digest)?;
        unpacker
            .apply_layer(f)
            .map_err(|source| Ext4Error::Unpack {
                digest: layer.digest.clone(),
                source,
            })?;
    }
    let (bytes, inodes) = tree_usage(&staging.0).map_err(io_err(&staging.0))?;
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
        .arg(&staging.0)
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
