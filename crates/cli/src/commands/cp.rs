//! `vessel cp` and `vessel export`: tar streams between the host and a
//! container, carried as `vessel.agent.v1` frames over an upgraded
//! connection (`Data` frames, the end of a copy in as `CloseStdin`, its
//! result as `CopyDone`). A container that is not running is copied by a
//! maintenance boot of its VM, which the apiserver starts (the first answer
//! then takes a boot's time); the requests of one `cp` share that boot.
//!
//! Where a copy lands follows Docker's rules (`docker cp --help`):
//! - a file to an existing directory goes into it under its own name; to
//!   any other path it becomes that path (its parent must exist; a path
//!   ending in `/` must be an existing directory);
//! - a directory to an existing directory goes into it under its own name
//!   (with `SRC/.`: its contents go into it); to a path that does not exist
//!   it becomes that directory; onto a file it is refused.
//!
//! Paths in the container start at its root (`/`), whatever its working
//! directory. In the container, the copy is unpacked by vminitd chrooted
//! into its root, so nothing resolves outside it; on the host, the tar
//! crate keeps every entry inside the destination.

use crate::api::Api;
use crate::archive::{self, Owners};
use crate::cli::{CpArgs, ExportArgs};
use agent_protocol::{
    decode_message, read_frame, write_frame, write_message, FrameKind, GuestMessage, HostMessage,
    MAX_STDIO_CHUNK,
};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use vessel_api::client::{UpgradedReader, UpgradedWriter};
use vessel_api::http::percent_encode;

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// `-`: a tar stream on our stdin or stdout.
    Stream,
    Host(String),
    /// `CONTAINER:PATH`, the path made absolute.
    Container {
        key: String,
        path: String,
    },
}

/// Docker's reading of a `cp` argument: `CONTAINER:PATH` when there is a
/// `:` and no `/` before it (so `./a:b` and `/x:y` are host paths).
pub fn side(arg: &str) -> Side {
    if arg == "-" {
        return Side::Stream;
    }
    if arg.starts_with('/') || arg.starts_with('.') {
        return Side::Host(arg.to_string());
    }
    match arg.split_once(':') {
        Some((key, path)) if !key.is_empty() && !key.contains('/') => Side::Container {
            key: key.to_string(),
            path: if path.starts_with('/') {
                path.to_string()
            } else {
                format!("/{path}")
            },
        },
        _ => Side::Host(arg.to_string()),
    }
}

/// Does `p` ask for a directory's contents (`DIR/.`)?
fn contents_of(p: &str) -> bool {
    p == "." || p.ends_with("/.")
}

/// `p` without a trailing `/.` or `/` (the root stays `/`).
fn clean(p: &str) -> String {
    let mut s = p.to_string();
    loop {
        if s.len() > 1 && s.ends_with("/.") {
            s.truncate(s.len() - 2);
        } else if s.len() > 1 && s.ends_with('/') {
            s.pop();
        } else {
            break;
        }
    }
    if s.is_empty() {
        "/".into()
    } else {
        s
    }
}

/// The parent directory and last component of a container path.
fn split_container_path(p: &str) -> (String, String) {
    let c = clean(p);
    match c.rsplit_once('/') {
        Some(("", name)) => ("/".into(), name.into()),
        Some((dir, name)) => (dir.into(), name.into()),
        None => ("/".into(), c),
    }
}

/// A copy's stream, open on an upgraded connection.
struct CopyConn {
    reader: io::BufReader<UpgradedReader>,
    writer: UpgradedWriter,
}

fn open(api: &Api, key: &str, route: &str) -> Result<CopyConn> {
    let conn = api.upgrade(
        "POST",
        &format!("/v1/containers/{}/{route}", percent_encode(key)),
        None,
    )?;
    let (r, w) = conn.split()?;
    Ok(CopyConn {
        reader: io::BufReader::new(r),
        writer: w,
    })
}

/// The tar stream of a copy out, as a reader: `Data` frames until
/// `CopyDone` (its error, if any, becomes a read error).
struct TarFrames {
    conn: CopyConn,
    chunk: Vec<u8>,
    at: usize,
    done: bool,
}

impl Read for TarFrames {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            let frame = read_frame(&mut self.conn.reader)
                .map_err(io::Error::other)?
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the copy was cut short (the connection ended)",
                    )
                })?;
            match frame.kind {
                FrameKind::Data => {
                    self.chunk = frame.payload;
                    self.at = 0;
                }
                FrameKind::Control => match decode_message::<GuestMessage>(&frame) {
                    Ok(GuestMessage::CopyDone { error: None }) => self.done = true,
                    Ok(GuestMessage::CopyDone { error: Some(e) }) => {
                        return Err(io::Error::other(e))
                    }
                    Ok(GuestMessage::Error { message }) => return Err(io::Error::other(message)),
                    _ => {}
                },
                _ => {}
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Writes a tar stream as `Data` frames.
struct DataFrames<'a>(&'a mut UpgradedWriter);

impl Write for DataFrames<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(MAX_STDIO_CHUNK);
        write_frame(self.0, FrameKind::Data, &buf[..n]).map_err(io::Error::other)?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A tar stream of `path` in container `key`.
fn copy_out(api: &Api, key: &str, path: &str) -> Result<TarFrames> {
    let conn = open(api, key, &format!("copy-out?path={}", percent_encode(path)))?;
    Ok(TarFrames {
        conn,
        chunk: Vec::new(),
        at: 0,
        done: false,
    })
}

/// Send what `fill` writes as a tar stream to unpack into the directory
/// `dir` of container `key`; the guest's error, if any.
fn copy_in(
    api: &Api,
    key: &str,
    dir: &str,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<Option<String>> {
    let mut conn = open(api, key, &format!("copy-in?path={}", percent_encode(dir)))?;
    {
        let mut w = io::BufWriter::with_capacity(MAX_STDIO_CHUNK, DataFrames(&mut conn.writer));
        fill(&mut w).context("sending the files")?;
        w.flush().context("sending the files")?;
    }
    write_message(&mut conn.writer, &HostMessage::CloseStdin)
        .map_err(|e| anyhow!("sending the files: {e}"))?;
    loop {
        let frame = read_frame(&mut conn.reader)
            .map_err(|e| anyhow!("waiting for the copy's end: {e}"))?
            .ok_or_else(|| anyhow!("the copy was cut short (the connection ended)"))?;
        if frame.kind != FrameKind::Control {
            continue;
        }
        match decode_message::<GuestMessage>(&frame) {
            Ok(GuestMessage::CopyDone { error }) => return Ok(error),
            Ok(GuestMessage::Error { message }) => return Ok(Some(message)),
            _ => {}
        }
    }
}

/// What a path in a container is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    NotDir,
    Missing,
}

/// Read vminitd's answer to a copy into `dir` (`crates/vminitd/src/copy.rs`,
/// `helper_in`): it unpacks only into an existing directory and says
/// `DIR: not a directory` for anything else that exists.
fn kind_from(dir: &str, error: Option<&str>) -> Kind {
    match error {
        None => Kind::Dir,
        Some(e) if e == format!("{dir}: not a directory") => Kind::NotDir,
        Some(_) => Kind::Missing,
    }
}

/// What `path` is in container `key`: an empty copy into it (a directory
/// takes it; anything else says why not).
fn probe(api: &Api, key: &str, path: &str) -> Result<Kind> {
    let error = copy_in(api, key, path, |w| {
        tar::Builder::new(w).finish()?;
        Ok(())
    })?;
    Ok(kind_from(path, error.as_deref()))
}

pub fn cp(api: &Api, a: CpArgs) -> Result<i32> {
    let owners = if a.archive {
        Owners::Keep
    } else {
        Owners::Reset
    };
    match (side(&a.src), side(&a.dest)) {
        (Side::Container { .. }, Side::Container { .. }) => {
            bail!("copying between containers is not supported; copy to the host first")
        }
        (Side::Container { key, path }, dest) => cp_out(api, &key, &path, &dest, owners)?,
        (src, Side::Container { key, path }) => {
            cp_in(api, &src, &key, &path, a.follow_link, owners)?
        }
        _ => bail!("one of the paths must name a container: `CONTAINER:PATH`"),
    }
    Ok(0)
}

/// How the entries of a copy out are renamed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rename {
    Keep,
    /// Drop the first component (the contents of a directory).
    Strip,
    /// Replace the first component.
    To(PathBuf),
}

/// Docker's rule for a copy out of a source whose first entry is `first`
/// (a directory or not) to `dest` on the host: where to unpack and how to
/// rename.
fn plan_out(
    first_is_dir: bool,
    contents: bool,
    dest: &Path,
    dest_arg: &str,
) -> Result<(PathBuf, Rename)> {
    let meta = std::fs::metadata(dest).ok();
    let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
    let parent = || -> Result<PathBuf> {
        let p = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !p.is_dir() {
            bail!(
                "no such directory: {} (the destination's parent)",
                p.display()
            );
        }
        Ok(p.to_path_buf())
    };
    let name = || -> Result<PathBuf> {
        dest.file_name()
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("invalid destination {dest_arg:?}"))
    };
    if !first_is_dir {
        if is_dir {
            return Ok((dest.to_path_buf(), Rename::Keep));
        }
        if dest_arg.ends_with('/') {
            bail!("the destination directory {dest_arg} does not exist");
        }
        return Ok((parent()?, Rename::To(name()?)));
    }
    if meta.is_some() && !is_dir {
        bail!("cannot copy a directory to a file: {dest_arg} is a file");
    }
    if is_dir {
        let how = if contents {
            Rename::Strip
        } else {
            Rename::Keep
        };
        return Ok((dest.to_path_buf(), how));
    }
    Ok((parent()?, Rename::To(name()?)))
}

/// `entry` renamed as `how` says, `first` being the source's own name.
fn renamed(entry: &Path, first: &Path, how: &Rename) -> Option<PathBuf> {
    let rest = entry.strip_prefix(first).ok()?;
    match how {
        Rename::Keep => Some(entry.to_path_buf()),
        Rename::Strip if rest.as_os_str().is_empty() => None,
        Rename::Strip => Some(rest.to_path_buf()),
        // (joining an empty path would add a `/`: a directory's name)
        Rename::To(name) if rest.as_os_str().is_empty() => Some(name.clone()),
        Rename::To(name) => Some(name.join(rest)),
    }
}

fn cp_out(api: &Api, key: &str, src: &str, dest: &Side, owners: Owners) -> Result<()> {
    let contents = contents_of(src);
    let path = clean(src);
    let not_found =
        |e: &dyn std::fmt::Display| anyhow!("could not copy {path} out of container {key}: {e}");
    let mut tar = copy_out(api, key, &path)?;
    let dest_arg = match dest {
        Side::Stream => {
            if std::io::stdout().is_terminal() {
                bail!("refusing to write a tar stream to a terminal: redirect stdout, or give a destination path");
            }
            let mut out = io::stdout().lock();
            io::copy(&mut tar, &mut out).map_err(|e| not_found(&e))?;
            out.flush()?;
            return Ok(());
        }
        Side::Host(d) => d.clone(),
        Side::Container { .. } => unreachable!("checked by the caller"),
    };
    let dest_path = PathBuf::from(&dest_arg);
    // The plan is made at the first entry (the source itself), and the
    // unpacking thread learns where to unpack then.
    let (root_tx, root_rx) = std::sync::mpsc::channel::<PathBuf>();
    let (pipe_w, pipe_r) = archive::pipe();
    let unpacker = std::thread::spawn(move || -> io::Result<()> {
        let Ok(root) = root_rx.recv() else {
            // Nothing came: drain the pipe so the writer can finish.
            let mut r = pipe_r;
            io::copy(&mut r, &mut io::sink())?;
            return Ok(());
        };
        archive::unpack(pipe_r, &root, owners)
    });
    let mut plan: Option<(PathBuf, Rename)> = None;
    let mut root_tx = Some(root_tx);
    let rewritten = archive::rewrite(
        &mut tar,
        pipe_w,
        |entry, kind| {
            if plan.is_none() {
                let first = entry.to_path_buf();
                let (root, how) = plan_out(kind.is_dir(), contents, &dest_path, &dest_arg)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:#}")))?;
                if let Some(tx) = root_tx.take() {
                    let _ = tx.send(root);
                }
                plan = Some((first, how));
            }
            let (first, how) = plan.as_ref().ok_or_else(|| io::Error::other("no plan"))?;
            Ok(renamed(entry, first, how))
        },
        owners,
    );
    drop(root_tx);
    let written = match rewritten {
        Ok(w) => {
            drop(w);
            Ok(())
        }
        Err(e) => Err(e),
    };
    let unpacked = unpacker
        .join()
        .map_err(|_| anyhow!("the unpacking thread failed"))?;
    match written {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => bail!("{e}"),
        Err(e) => return Err(not_found(&e)),
        Ok(()) => {}
    }
    unpacked.with_context(|| format!("writing into {dest_arg}"))?;
    if plan.is_none() {
        bail!("could not copy {path} out of container {key}: the container sent nothing");
    }
    Ok(())
}

fn cp_in(api: &Api, src: &Side, key: &str, dest: &str, follow: bool, owners: Owners) -> Result<()> {
    let dest_clean = clean(dest);
    let kind = probe(api, key, &dest_clean)?;
    let fail = |e: String| anyhow!("could not copy into {dest} in container {key}: {e}");
    let src = match src {
        Side::Stream => {
            // A tar stream: unpacked into the destination, a directory.
            if kind != Kind::Dir {
                bail!("the destination {dest} in container {key} must be an existing directory for a tar stream");
            }
            let error = copy_in(api, key, &dest_clean, |w| {
                let stdin = io::stdin().lock();
                archive::rewrite(stdin, w, |p, _| Ok(Some(p.to_path_buf())), owners)?;
                Ok(())
            })?;
            return error.map_or(Ok(()), |e| Err(fail(e)));
        }
        Side::Host(s) => s.clone(),
        Side::Container { .. } => unreachable!("checked by the caller"),
    };
    let contents = contents_of(&src);
    let src_path = PathBuf::from(clean(&src));
    let meta = if follow {
        std::fs::metadata(&src_path)
    } else {
        std::fs::symlink_metadata(&src_path)
    }
    .with_context(|| format!("cannot copy {}", src_path.display()))?;
    let src_is_dir = meta.is_dir();
    let src_name = || -> Result<PathBuf> {
        src_path
            .file_name()
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("cannot tell the name of {}", src_path.display()))
    };
    // (directory in the container, name of the copy; None: the contents)
    let (dir, name): (String, Option<PathBuf>) = match kind {
        Kind::Dir if src_is_dir && contents => (dest_clean.clone(), None),
        Kind::Dir => (dest_clean.clone(), Some(src_name()?)),
        Kind::NotDir if src_is_dir => {
            bail!("cannot copy a directory to a file: {dest} in container {key} is a file")
        }
        Kind::NotDir | Kind::Missing => {
            if kind == Kind::Missing && dest.ends_with('/') && !src_is_dir {
                bail!("the destination directory {dest} does not exist in container {key}");
            }
            let (parent, last) = split_container_path(dest);
            if probe(api, key, &parent)? != Kind::Dir {
                bail!("no such directory in container {key}: {parent} (the destination's parent)");
            }
            (parent, Some(PathBuf::from(last)))
        }
    };
    let error = copy_in(api, key, &dir, |w| {
        let mut b = tar::Builder::new(w);
        match &name {
            Some(n) => archive::pack(&mut b, &src_path, n, follow, owners)?,
            None => {
                let mut children: Vec<_> = std::fs::read_dir(&src_path)?
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<io::Result<_>>()?;
                children.sort();
                for c in children {
                    archive::pack(&mut b, &src_path.join(&c), Path::new(&c), false, owners)?;
                }
            }
        }
        b.finish()
    })?;
    error.map_or(Ok(()), |e| Err(fail(e)))
}

/// `export`: the container's root filesystem as a tar archive.
pub fn export(api: &Api, a: ExportArgs) -> Result<i32> {
    let out: Box<dyn Write> = match &a.output {
        Some(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None if std::io::stdout().is_terminal() => {
            bail!("refusing to write an archive to a terminal: use -o FILE or redirect stdout")
        }
        None => Box::new(io::stdout().lock()),
    };
    let conn = open(api, &a.container, "export")?;
    let mut tar = TarFrames {
        conn,
        chunk: Vec::new(),
        at: 0,
        done: false,
    };
    let mut out = io::BufWriter::new(out);
    let copied = io::copy(&mut tar, &mut out).and_then(|_| out.flush());
    if let Err(e) = copied {
        if let Some(p) = &a.output {
            let _ = std::fs::remove_file(p);
        }
        bail!("exporting container {}: {e}", a.container);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_as_docker_reads_them() {
        assert_eq!(side("-"), Side::Stream);
        assert_eq!(
            side("web:/etc/hosts"),
            Side::Container {
                key: "web".into(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(
            side("web:tmp/x"),
            Side::Container {
                key: "web".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(side("./a:b"), Side::Host("./a:b".into()));
        assert_eq!(side("/x:y"), Side::Host("/x:y".into()));
        assert_eq!(side("dir/a:b"), Side::Host("dir/a:b".into()));
        assert_eq!(side("plain"), Side::Host("plain".into()));
    }

    #[test]
    fn paths_are_cleaned_and_split() {
        assert!(contents_of("/srv/."));
        assert!(!contents_of("/srv"));
        assert_eq!(clean("/srv/./"), "/srv");
        assert_eq!(clean("/"), "/");
        assert_eq!(clean("/."), "/");
        assert_eq!(
            split_container_path("/tmp/new/"),
            ("/tmp".into(), "new".into())
        );
        assert_eq!(split_container_path("/top"), ("/".into(), "top".into()));
    }

    #[test]
    fn vminitd_s_answers_tell_what_a_path_is() {
        assert_eq!(kind_from("/tmp", None), Kind::Dir);
        assert_eq!(
            kind_from("/etc/hosts", Some("/etc/hosts: not a directory")),
            Kind::NotDir
        );
        assert_eq!(
            kind_from(
                "/nope",
                Some("/nope: No such file or directory (os error 2)")
            ),
            Kind::Missing
        );
        assert_eq!(
            kind_from(
                "/etc/hosts/x",
                Some("/etc/hosts/x: Not a directory (os error 20)")
            ),
            Kind::Missing
        );
    }

    #[test]
    fn where_a_copy_out_lands() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        std::fs::write(dir.join("file"), b"x").unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        // A file into a directory; as a new name; over a file.
        assert_eq!(
            plan_out(false, false, dir, &s(dir)).unwrap(),
            (dir.to_path_buf(), Rename::Keep)
        );
        let new = dir.join("new");
        assert_eq!(
            plan_out(false, false, &new, &s(&new)).unwrap(),
            (dir.to_path_buf(), Rename::To("new".into()))
        );
        assert!(plan_out(false, false, &new, &format!("{}/", s(&new))).is_err());
        // A directory: into one, its contents, as a new one, not onto a file.
        assert_eq!(plan_out(true, false, dir, &s(dir)).unwrap().1, Rename::Keep);
        assert_eq!(plan_out(true, true, dir, &s(dir)).unwrap().1, Rename::Strip);
        assert_eq!(
            plan_out(true, false, &new, &s(&new)).unwrap().1,
            Rename::To("new".into())
        );
        assert!(plan_out(true, false, &dir.join("file"), &s(&dir.join("file"))).is_err());
        // A parent that does not exist.
        let deep = dir.join("no/such");
        assert!(plan_out(false, false, &deep, &s(&deep)).is_err());
    }

    #[test]
    fn entries_are_renamed_from_the_source_s_name() {
        let first = Path::new("etc");
        assert_eq!(
            renamed(Path::new("etc/hosts"), first, &Rename::Keep),
            Some("etc/hosts".into())
        );
        assert_eq!(renamed(Path::new("etc"), first, &Rename::Strip), None);
        assert_eq!(
            renamed(Path::new("etc/hosts"), first, &Rename::Strip),
            Some("hosts".into())
        );
        assert_eq!(
            renamed(Path::new("etc/hosts"), first, &Rename::To("conf".into())),
            Some("conf/hosts".into())
        );
        assert_eq!(
            renamed(
                Path::new("hosts"),
                Path::new("hosts"),
                &Rename::To("h2".into())
            ),
            Some("h2".into())
        );
        // The root's own tar starts with `.`.
        assert_eq!(
            renamed(Path::new("./bin/sh"), Path::new("."), &Rename::Strip),
            Some("bin/sh".into())
        );
        // Something not under the source is left out.
        assert_eq!(renamed(Path::new("other"), first, &Rename::Keep), None);
    }
}
