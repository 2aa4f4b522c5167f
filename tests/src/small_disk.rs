//! A small disk for tests of a full disk: an instance whose `VESSEL_HOME`
//! is a tmpfs of a few MiB (mounting it needs root).

use crate::{assert_ok, Instance};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// An instance whose home is a tmpfs of `mib` MiB: a small disk. The
/// instance stops before the tmpfs goes, also when the test fails.
/// A tmpfs counts a file's pages until its last open descriptor closes, so
/// [`SmallDisk::free`] also sees a deleted file that a process still holds.
pub struct SmallDisk {
    v: Option<Instance>,
    mount: PathBuf,
}

impl SmallDisk {
    pub fn new(mib: u32) -> Self {
        let v = Instance::new();
        let mount = v.path().to_path_buf();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "vessel-test",
            ])
            .arg(&mount)
            .output()
            .unwrap();
        assert_ok(&out, "mount tmpfs");
        let mut me = Self { v: Some(v), mount };
        me.v.as_mut().unwrap().start();
        me
    }

    pub fn v(&self) -> &Instance {
        self.v.as_ref().unwrap()
    }

    /// Bytes free on the disk now.
    pub fn free(&self) -> u64 {
        let path = std::ffi::CString::new(self.mount.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: path is a NUL-terminated string and st a valid statvfs,
        // both alive for the call.
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs {}", self.mount.display());
        st.f_bavail * st.f_frsize
    }

    /// Fail unless the disk has (almost) `before` bytes free again now: no
    /// more than `SLACK` less, which log lines and directories may take.
    pub fn assert_given_back(&self, before: u64, what: &str) {
        const SLACK: u64 = 64 << 10;
        let now = self.free();
        assert!(
            now + SLACK >= before,
            "{what} kept {} KiB of the small disk ({} KiB free before, {} KiB right after)",
            (before - now) >> 10,
            before >> 10,
            now >> 10
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        drop(self.v.take());
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// Run `cmd` to its end, or kill it after `limit` (`None`).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(child.wait_with_output().unwrap())
}
