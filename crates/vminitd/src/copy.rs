//! `CopyOut` and `CopyIn`: tar streams of files in the container.
//!
//! The archiving runs in a helper process (vminitd started again as
//! `vminitd --copy-out PATH` or `--copy-in DIR`) that first chroots into the
//! container's root, so every path, `..` and symbolic link resolves inside
//! the container, whatever the archive or the container's files say. The
//! session only moves bytes between the helper and the host.

use crate::conn::{decode_host, Conn};
use crate::mounts;
use crate::process::StartError;
use crate::reaper::Reaper;
use agent_protocol::{FrameKind, GuestMessage, HostMessage, MAX_STDIO_CHUNK};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The helper's flags.
pub const COPY_OUT_FLAG: &str = "--copy-out";
pub const EXPORT_FLAG: &str = "--export";
pub const COPY_IN_FLAG: &str = "--copy-in";
/// Where the helper finds the container's root (see [`helper`]).
const ROOT_ENV: &str = "VMINITD_ROOT";

fn helper(flag: &str, path: &str) -> Command {
    let mut c = Command::new("/proc/self/exe");
    // The helper inherits vminitd's root: the initramfs before the
    // container's root is moved over it, the container's root after.
    c.arg(flag).arg(path).env(ROOT_ENV, mounts::root());
    c
}

fn spawn(
    reaper: &Reaper,
    mut cmd: Command,
) -> Result<(std::process::Child, std::sync::Arc<crate::reaper::ExitSlot>), String> {
    reaper
        .spawn(|| {
            let child = cmd
                .spawn()
                .map_err(|e| StartError::new(125, format!("copy helper: {e}")))?;
            let pid = child.id() as i32;
            Ok((child, pid))
        })
        .map_err(|e| e.message)
}

/// Wait for the helper's end; its stderr is the error when it failed.
fn finish(
    slot: &crate::reaper::ExitSlot,
    mut stderr: Option<std::process::ChildStderr>,
) -> Option<String> {
    let mut msg = String::new();
    if let Some(e) = stderr.as_mut() {
        let _ = e.take(64 * 1024).read_to_string(&mut msg);
    }
    while slot.status().is_none() {
        crate::conn::wait_readable(slot.fd(), None);
    }
    match slot.status() {
        Some((0, _)) => None,
        _ if !msg.trim().is_empty() => Some(msg.trim().to_string()),
        Some((code, _)) => Some(format!("the copy failed (exit code {code})")),
        None => Some("the copy failed".into()),
    }
}

/// Serve `CopyOut { path }` on `conn`.
pub fn copy_out(
    conn: &mut Conn,
    reaper: &Reaper,
    path: &str,
    one_file_system: bool,
) -> Result<(), String> {
    let flag = if one_file_system {
        EXPORT_FLAG
    } else {
        COPY_OUT_FLAG
    };
    let mut cmd = helper(flag, path);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, slot) = match spawn(reaper, cmd) {
        Ok(c) => c,
        Err(e) => return conn.send(&GuestMessage::CopyDone { error: Some(e) }),
    };
    let stderr = child.stderr.take();
    if let Some(mut out) = child.stdout.take() {
        let mut buf = vec![0u8; MAX_STDIO_CHUNK];
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => conn.send_data(FrameKind::Data, &buf[..n])?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let error = finish(&slot, stderr);
    conn.send(&GuestMessage::CopyDone { error })
}

/// Serve `CopyIn { path }` on `conn`: `Data` frames until `CloseStdin`.
pub fn copy_in(conn: &mut Conn, reaper: &Reaper, path: &str) -> Result<(), String> {
    let mut cmd = helper(COPY_IN_FLAG, path);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (mut child, slot) = match spawn(reaper, cmd) {
        Ok(c) => c,
        Err(e) => return conn.send(&GuestMessage::CopyDone { error: Some(e) }),
    };
    let stderr = child.stderr.take();
    let mut stdin = child.stdin.take();
    loop {
        let Some(frame) = conn.recv(None)? else {
            return Err("the host went away during a copy".into());
        };
        match frame.kind {
            FrameKind::Data => {
                // A helper that gave up (a bad archive) stops reading: keep
                // consuming the host's frames, report its error at the end.
                if let Some(w) = stdin.as_mut() {
                    if w.write_all(&frame.payload).is_err() {
                        stdin = None;
                    }
                }
            }
            FrameKind::Control => match decode_host(&frame)? {
                HostMessage::CloseStdin => break,
                other => return Err(format!("protocol error: {other:?} during a copy")),
            },
            kind => return Err(format!("protocol error: a {kind:?} frame during a copy")),
        }
    }
    drop(stdin);
    let error = finish(&slot, stderr);
    conn.send(&GuestMessage::CopyDone { error })
}

fn enter_root() -> Result<(), String> {
    let root = std::env::var_os(ROOT_ENV).unwrap_or_else(|| mounts::ROOTFS.into());
    std::os::unix::fs::chroot(&root)
        .map_err(|e| format!("chroot {}: {e}", Path::new(&root).display()))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Add `path` (and, for a directory, everything under it) to `b` as
/// `name`, symbolic links as links; with `dev`, nothing on another
/// filesystem (its mount point is kept, empty).
fn append_tree<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    dev: Option<u64>,
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    b.append_path_with_name(path, name)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_dir() || dev.is_some_and(|d| d != meta.dev()) {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    entries.sort();
    for child in entries {
        append_tree(b, &path.join(&child), &name.join(&child), dev)?;
    }
    Ok(())
}

/// The helper's side of `CopyOut`: a tar of `path` (in the container) on
/// stdout, its entries named after `path`'s last component (`.` for `/`);
/// with `one_file_system`, only the filesystem `path` is on.
pub fn helper_out(path: &str, one_file_system: bool) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    enter_root()?;
    let p = Path::new(path);
    let meta = std::fs::symlink_metadata(p).map_err(|e| format!("{path}: {e}"))?;
    let name: PathBuf = match p.file_name() {
        Some(n) => PathBuf::from(n),
        None => PathBuf::from("."),
    };
    let stdout = std::io::stdout().lock();
    let mut b = tar::Builder::new(std::io::BufWriter::new(stdout));
    b.mode(tar::HeaderMode::Complete);
    b.follow_symlinks(false);
    append_tree(&mut b, p, &name, one_file_system.then_some(meta.dev()))?;
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| format!("writing the archive: {e}"))
}

/// The helper's side of `CopyIn`: unpack the tar on stdin into the
/// directory `dir` (in the container), owners, modes and times as the
/// archive says.
pub fn helper_in(dir: &str) -> Result<(), String> {
    enter_root()?;
    let meta = std::fs::metadata(dir).map_err(|e| format!("{dir}: {e}"))?;
    if !meta.is_dir() {
        return Err(format!("{dir}: not a directory"));
    }
    let mut a = tar::Archive::new(std::io::stdin().lock());
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    a.set_unpack_xattrs(true);
    a.set_overwrite(true);
    a.unpack(dir)
        .map_err(|e| format!("unpacking into {dir}: {e}"))
}
