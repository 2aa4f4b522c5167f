//! Tar streams on the host side of `vessel cp` and `export`: packing host
//! files (owners set to root unless asked to keep them), renaming the
//! entries of a stream (Docker's rules of where a copy lands), and
//! unpacking a stream from a container, which is untrusted: the tar
//! crate's `unpack` keeps every entry inside the destination (no `..`, no
//! absolute paths, no writing through a symbolic link, no hard link to a
//! file outside).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Owners of what is packed or unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// As the source has them (`cp -a`).
    Keep,
    /// Root's, into a container; the user's who runs vessel, out of one.
    Reset,
}

/// Set `h`'s owner to root.
fn root_owned(h: &mut tar::Header) {
    h.set_uid(0);
    h.set_gid(0);
    // Names of a ustar/GNU header; a plain header has none.
    let _ = h.set_username("root");
    let _ = h.set_groupname("root");
}

/// Add `path` (a directory with everything in it) to `b` as `name`,
/// without following symbolic links (except `path` itself, with
/// `follow`). Sockets are left out, as tar does.
pub fn pack<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    follow: bool,
    owners: Owners,
) -> io::Result<()> {
    let meta = if follow {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    }
    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let ft = meta.file_type();
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_socket() {
            return Ok(());
        }
    }
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    if owners == Owners::Reset {
        root_owned(&mut h);
    }
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    if ft.is_symlink() {
        h.set_size(0);
        let target = std::fs::read_link(path).map_err(with_path)?;
        return b.append_link(&mut h, name, &target);
    }
    if ft.is_file() {
        let len = meta.len();
        let f = std::fs::File::open(path).map_err(with_path)?;
        // Exactly the size in the header, even if the file changes meanwhile.
        let data = f.take(len).chain(io::repeat(0)).take(len);
        return b.append_data(&mut h, name, data);
    }
    h.set_size(0);
    b.append_data(&mut h, name, io::empty())?;
    if ft.is_dir() {
        let mut children: Vec<_> = std::fs::read_dir(path)
            .map_err(with_path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(with_path)?;
        children.sort();
        for c in children {
            pack(b, &path.join(&c), &name.join(&c), false, owners)?;
        }
    }
    Ok(())
}

/// Copy the tar stream `input` to `out`, each entry renamed by `rename`
/// (`None`: left out; it also sees the entry's type), owners as `owners`
/// says. Hard links are renamed like their targets.
pub fn rewrite<R: Read, W: Write>(
    input: R,
    out: W,
    mut rename: impl FnMut(&Path, tar::EntryType) -> io::Result<Option<PathBuf>>,
    owners: Owners,
) -> io::Result<W> {
    let mut a = tar::Archive::new(input);
    let mut b = tar::Builder::new(out);
    for entry in a.entries()? {
        let mut e = entry?;
        let kind = e.header().entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        }
        if kind.is_gnu_sparse() {
            return Err(io::Error::other(format!(
                "{}: sparse files in a tar stream are not supported",
                String::from_utf8_lossy(&e.path_bytes())
            )));
        }
        let path = e.path()?.into_owned();
        let Some(new) = rename(&path, kind)? else {
            continue;
        };
        let mut h = e.header().clone();
        if owners == Owners::Reset {
            root_owned(&mut h);
        }
        if kind.is_hard_link() || kind.is_symlink() {
            let target = e.link_name()?.map(|t| t.into_owned()).ok_or_else(|| {
                io::Error::other(format!("{}: a link without a target", path.display()))
            })?;
            let target = if kind.is_hard_link() {
                match rename(&target, tar::EntryType::Regular)? {
                    Some(t) => t,
                    None => continue,
                }
            } else {
                target
            };
            h.set_size(0);
            b.append_link(&mut h, &new, &target)?;
        } else {
            b.append_data(&mut h, &new, &mut e)?;
        }
    }
    b.into_inner()
}

/// Unpack the tar stream `input` into the directory `dir`, modes and times
/// kept, owners as `owners` says (reset: the user's who runs this), every
/// entry kept inside `dir`.
pub fn unpack<R: Read>(input: R, dir: &Path, owners: Owners) -> io::Result<()> {
    let mut a = tar::Archive::new(input);
    a.set_preserve_permissions(true);
    a.set_preserve_mtime(true);
    a.set_preserve_ownerships(owners == Owners::Keep);
    a.set_overwrite(true);
    a.unpack(dir)
}

/// The writing end of [`pipe`].
pub struct PipeWriter(SyncSender<Vec<u8>>);

/// The reading end of [`pipe`].
pub struct PipeReader {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

/// A pipe between two threads, a few chunks deep: the writer waits when
/// the reader lags. The reader sees the end when the writer is dropped.
pub fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(8);
    (
        PipeWriter(tx),
        PipeReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        },
    )
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.0
            .send(buf.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reader has gone"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        std::fs::create_dir_all(t.join("sub")).unwrap();
        std::fs::write(t.join("a.txt"), b"alpha").unwrap();
        std::fs::write(t.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(t.join("sub/run.sh"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        std::os::unix::fs::symlink("a.txt", t.join("link")).unwrap();
        d
    }

    fn names(tar: &[u8]) -> Vec<(String, u64)> {
        tar::Archive::new(tar)
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().uid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn packing_names_the_tree_and_resets_owners() {
        let d = tree();
        let mut b = tar::Builder::new(Vec::new());
        pack(
            &mut b,
            &d.path().join("t"),
            Path::new("copy"),
            false,
            Owners::Reset,
        )
        .unwrap();
        let tar = b.into_inner().unwrap();
        let got = names(&tar);
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "copy",
                "copy/a.txt",
                "copy/link",
                "copy/sub",
                "copy/sub/run.sh"
            ]
        );
        assert!(got.iter().all(|(_, uid)| *uid == 0));
        // Unpacked again: contents, modes and the link survive.
        let out = tempfile::tempdir().unwrap();
        unpack(&tar[..], out.path(), Owners::Reset).unwrap();
        let c = out.path().join("copy");
        assert_eq!(std::fs::read(c.join("a.txt")).unwrap(), b"alpha");
        let mode = std::fs::metadata(c.join("sub/run.sh")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o750);
        assert_eq!(
            std::fs::read_link(c.join("link")).unwrap(),
            Path::new("a.txt")
        );
    }

    #[test]
    fn rewriting_renames_and_leaves_out() {
        let d = tree();
        let mut b = tar::Builder::new(Vec::new());
        pack(
            &mut b,
            &d.path().join("t"),
            Path::new("t"),
            false,
            Owners::Keep,
        )
        .unwrap();
        let tar = b.into_inner().unwrap();
        let out = rewrite(
            &tar[..],
            Vec::new(),
            |p, _| {
                let rest = p.strip_prefix("t").unwrap();
                let new = if rest.as_os_str().is_empty() {
                    PathBuf::from("renamed")
                } else {
                    Path::new("renamed").join(rest)
                };
                Ok((!rest.starts_with("sub")).then_some(new))
            },
            Owners::Reset,
        )
        .unwrap();
        let paths: Vec<String> = names(&out).into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["renamed", "renamed/a.txt", "renamed/link"]);
    }

    #[test]
    fn a_hostile_stream_stays_inside() {
        // Entries that try to leave: `..`, an absolute path, a symlink
        // out and a file written through it, a hard link to a host file.
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            // Raw names, as a hostile writer puts them.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, data).unwrap();
        };
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        add("../escape", tar::EntryType::Regular, None, b"x");
        add("/abs", tar::EntryType::Regular, None, b"x");
        add(
            "out",
            tar::EntryType::Symlink,
            Some(outside.path().to_str().unwrap()),
            b"",
        );
        add("out/victim", tar::EntryType::Regular, None, b"owned");
        add(
            "hard",
            tar::EntryType::Link,
            Some(victim.to_str().unwrap()),
            b"",
        );
        let tar = b.into_inner().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let _ = unpack(&tar[..], dest.path(), Owners::Reset);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!dest.path().parent().unwrap().join("escape").exists());
        assert!(
            !dest.path().join("hard").exists() || std::fs::read(&victim).unwrap() == b"precious"
        );
    }

    #[test]
    fn the_pipe_carries_bytes_between_threads() {
        let (mut w, mut r) = pipe();
        let h = std::thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            got
        });
        for _ in 0..100 {
            w.write_all(&[7u8; 1000]).unwrap();
        }
        drop(w);
        assert_eq!(h.join().unwrap(), vec![7u8; 100_000]);
    }
}
