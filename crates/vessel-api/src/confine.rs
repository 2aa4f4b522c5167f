//! What confines a container's VMM on this host, shared by the runtime
//! helper (which applies it) and the apiserver (which reports it in
//! `vessel system status`).
//!
//! The confinement itself lives in the runtime (`vessel-runtime`'s `jail`
//! module); this module only decides what applies: whether confinement is
//! on at all (`VESSEL_VMM_CONFINE=0` turns it off, for debugging), which
//! mechanism enforces the resource ceilings (cgroup v2, cgroup v1 or
//! rlimits), and where the cgroup hierarchy is (`VESSEL_CGROUP_ROOT`,
//! default `/sys/fs/cgroup`).

use std::path::{Path, PathBuf};

/// The environment variable that turns confinement off (`0`, `false`, `no`,
/// `off`).
pub const CONFINE_ENV: &str = "VESSEL_VMM_CONFINE";
/// Where the cgroup hierarchy is mounted; the tests point it elsewhere.
pub const CGROUP_ROOT_ENV: &str = "VESSEL_CGROUP_ROOT";
/// The parent of every VM's cgroup, under each hierarchy.
pub const CGROUP_PARENT: &str = "vessel";

/// Is VMM confinement on? Default yes.
pub fn enabled() -> bool {
    on_unless_off(CONFINE_ENV)
}

/// A switch that is on unless the variable `name` says `0`, `false`, `no`
/// or `off`.
pub(crate) fn on_unless_off(name: &str) -> bool {
    match std::env::var(name) {
        Ok(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        ),
        Err(_) => true,
    }
}

/// May an unprivileged process make a user namespace here (for a mount
/// namespace of its own)? `user.max_user_namespaces` above 0 and, on
/// kernels with Debian's switch, `kernel.unprivileged_userns_clone` 1.
pub fn userns_allowed() -> bool {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    read("/proc/sys/user/max_user_namespaces").unwrap_or(0) > 0
        && read("/proc/sys/kernel/unprivileged_userns_clone").unwrap_or(1) == 1
}

/// The root of the cgroup hierarchy.
pub fn cgroup_root() -> PathBuf {
    std::env::var_os(CGROUP_ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// What enforces a VM's memory and pids ceilings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ceilings {
    /// A cgroup v2 directory (the unified hierarchy, with the memory and
    /// pids controllers available), under which `vessel/<id>` is made.
    CgroupV2(PathBuf),
    /// The cgroup v1 memory and pids hierarchies.
    CgroupV1 { memory: PathBuf, pids: PathBuf },
    /// Neither is usable: per-process rlimits (RLIMIT_NPROC per VM user as
    /// the pids limit, RLIMIT_NOFILE); no memory ceiling.
    Rlimits,
}

impl Ceilings {
    /// Find what this host offers under `root` to the current user.
    pub fn detect(root: &Path) -> Self {
        // A pure cgroup2 mount, or the unified mount of a hybrid host.
        for dir in [root.to_path_buf(), root.join("unified")] {
            if v2_usable(&dir) {
                return Self::CgroupV2(dir);
            }
        }
        let (memory, pids) = (root.join("memory"), root.join("pids"));
        if memory.join("memory.limit_in_bytes").is_file()
            && pids.join("cgroup.procs").is_file()
            && writable(&memory)
            && writable(&pids)
        {
            return Self::CgroupV1 { memory, pids };
        }
        Self::Rlimits
    }

    /// `cgroup v2`, `cgroup v1` or `rlimits`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CgroupV2(_) => "cgroup v2",
            Self::CgroupV1 { .. } => "cgroup v1",
            Self::Rlimits => "rlimits",
        }
    }
}

fn v2_usable(dir: &Path) -> bool {
    let Ok(controllers) = std::fs::read_to_string(dir.join("cgroup.controllers")) else {
        return false;
    };
    let has = |c: &str| controllers.split_whitespace().any(|w| w == c);
    has("memory") && has("pids") && writable(dir)
}

fn writable(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// The cgroup directories a VM of container `id` may have under `root`.
pub fn cgroup_dirs(root: &Path, id: &str) -> Vec<PathBuf> {
    ["", "unified", "memory", "pids"]
        .iter()
        .map(|h| root.join(h).join(CGROUP_PARENT).join(id))
        .collect()
}

/// Remove what is left of container `id`'s cgroups (its runtime helper
/// was killed before it could): SIGKILL any process still in them, then
/// rmdir. Called by the apiserver when it finds a runtime helper gone and
/// when it removes a container.
pub fn remove_cgroups(id: &str) {
    if id.is_empty() || id.contains('/') {
        return;
    }
    for dir in cgroup_dirs(&cgroup_root(), id) {
        if !dir.is_dir() {
            continue;
        }
        for _ in 0..25 {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill has no memory-safety preconditions; the
                // process is in this container's VM cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// One line for `vessel system status`: which confinement applies to the
/// VMMs that start now.
pub fn describe() -> String {
    if !enabled() {
        return format!("off ({CONFINE_ENV}=0): QEMU and its backends run unconfined");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let ceilings = Ceilings::detect(&cgroup_root());
    let ceilings = match ceilings {
        Ceilings::Rlimits => "rlimits (no usable cgroup: no memory ceiling)".to_string(),
        c => format!("{} (memory and pids)", c.name()),
    };
    if root {
        format!("seccomp, per-VM user, mount namespace, ceilings: {ceilings}")
    } else {
        let ns = if userns_allowed() {
            "mount namespace (in a user namespace)"
        } else {
            "no mount namespace (user namespaces are off)"
        };
        format!(
            "seccomp, no new privileges, {ns} (rootless: the VMM runs as you), ceilings: {ceilings}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_v1_v2_and_nothing() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Ceilings::detect(d.path()), Ceilings::Rlimits);
        std::fs::create_dir_all(d.path().join("memory")).unwrap();
        std::fs::create_dir_all(d.path().join("pids")).unwrap();
        std::fs::write(d.path().join("memory/memory.limit_in_bytes"), "9").unwrap();
        std::fs::write(d.path().join("pids/cgroup.procs"), "").unwrap();
        let v1 = Ceilings::detect(d.path());
        assert_eq!(v1.name(), "cgroup v1");
        // A hybrid host's unified mount without controllers does not count.
        std::fs::create_dir_all(d.path().join("unified")).unwrap();
        std::fs::write(d.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        assert_eq!(Ceilings::detect(d.path()), v1);
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory io pids\n").unwrap();
        assert_eq!(
            Ceilings::detect(d.path()),
            Ceilings::CgroupV2(d.path().to_path_buf())
        );
    }
}
