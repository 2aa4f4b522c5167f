//! Atomic file writes: a crash leaves either the old or the new content.
//! On a full disk a small file is rewritten in place instead (see
//! [`write_atomic`]), so a container's final state is still recorded.

use serde::{de::DeserializeOwned, Serialize};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// `flock(2)` on `file` with `op` (`LOCK_EX`, `LOCK_SH`, `| LOCK_NB`),
/// retried when a signal interrupts it. The lock goes with the descriptor.
pub fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: the descriptor is owned by `file` and open for the call;
        // flock has no memory-safety preconditions.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Open (creating, 0600) the lock file `path`; `flock` it with `op`.
pub fn open_locked(path: &Path, op: libc::c_int) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    flock(&file, op)?;
    Ok(file)
}

/// Write `data` to `path` atomically: temporary file in the same directory,
/// fsync, rename, fsync of the directory. When the disk is full and `data`
/// fits in the blocks the existing file already has, it is rewritten in
/// place (not atomic, but it needs no new space): a state file then still
/// says how its container ended.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    match write_via_rename(path, data) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
            rewrite_in_place(path, data).map_err(|_| e)
        }
        other => other,
    }
}

/// [`write_atomic`]'s fallback: overwrite `path` without growing it past
/// the space it holds.
fn rewrite_in_place(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let f = fs::OpenOptions::new().write(true).open(path)?;
    let allocated = f.metadata()?.blocks() * 512;
    if data.len() as u64 > allocated {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    f.write_all_at(data, 0)?;
    f.set_len(data.len() as u64)?;
    f.sync_all()
}

fn write_via_rename(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp-{}", random_hex(6)));
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Whether `name` is one of [`write_atomic`]'s temporary files.
pub fn is_atomic_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Remove the temporary files of [`write_atomic`] that a writer killed
/// between its write and its rename left in `dir`; the number removed.
/// Only for a directory nobody else writes into at the time (a helper's
/// own, when it starts).
pub fn remove_atomic_temporaries(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| is_atomic_temporary(&e.file_name().to_string_lossy()))
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

/// Serialize `value` as pretty JSON and write it atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    data.push(b'\n');
    write_atomic(path, &data)
}

/// Read a JSON document; `Ok(None)` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    hex::encode(bytes)
}

/// Is a process with this pid alive (and not a zombie)?
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state is the first field after the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// The start time of a process (field 22 of `/proc/PID/stat`, in clock ticks
/// since boot), used to tell a process from a later one that reused its pid.
pub fn pid_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts at field 3 (state); field 22 is index 19 here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_fallback_rewrites_within_the_file_s_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        fs::write(&p, vec![b'x'; 3000]).unwrap();
        rewrite_in_place(&p, b"{\"status\":\"exited\"}\n").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"{\"status\":\"exited\"}\n");
        // More than the file holds would need new space: refused, untouched.
        let big = vec![b'y'; 1 << 20];
        let e = rewrite_in_place(&p, &big).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(fs::read(&p).unwrap(), b"{\"status\":\"exited\"}\n");
        assert!(rewrite_in_place(&dir.path().join("missing"), b"{}").is_err());
    }

    #[test]
    fn a_killed_writer_s_temporaries_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        write_json_atomic(&dir.path().join("default.json"), &1).unwrap();
        // What write_via_rename names its copy, left as a kill leaves it.
        fs::write(dir.path().join(".default.json.tmp-0a1b2c3d4e5f"), b"{}").unwrap();
        fs::write(dir.path().join(".hidden"), b"").unwrap();
        assert_eq!(remove_atomic_temporaries(dir.path()), 1);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".hidden", "default.json"]);
    }

    #[test]
    fn atomic_write_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_json_atomic(&p, &vec![1, 2, 3]).unwrap();
        write_json_atomic(&p, &vec![4]).unwrap();
        let v: Vec<i32> = read_json(&p).unwrap().unwrap();
        assert_eq!(v, vec![4]);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary files left"
        );
        assert!(read_json::<Vec<i32>>(&dir.path().join("missing"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn own_pid_is_alive() {
        let me = std::process::id() as i32;
        assert!(pid_alive(me));
        assert!(pid_start_time(me).is_some());
        assert!(!pid_alive(0));
    }
}
