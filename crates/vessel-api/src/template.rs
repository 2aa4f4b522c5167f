//! VM templates, as the runtime helper (which builds and restores them) and
//! the apiserver (which lists them in `vessel system status`) both see
//! them.
//!
//! A template is a VM booted once up to the point where vminitd waits for
//! its container, saved with QEMU's migration format (`state`), and a
//! `meta.json` saying what it was built from. New containers start by
//! restoring it instead of booting a kernel. Templates live in
//! `VESSEL_HOME/templates/<key>/`, where the key is a hash of every input
//! that changes the saved VM (kernel, initramfs, QEMU, accelerator, CPUs,
//! memory, device layout): a changed input is a new key, so a template is
//! rebuilt when any of its inputs change.

use crate::paths::Home;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The environment variable that turns templates off (`0`, `false`, `no`,
/// `off`) for every container of an apiserver; `run --no-template` turns
/// them off for one container.
pub const TEMPLATES_ENV: &str = "VESSEL_TEMPLATES";

/// Are templates on? Default yes.
pub fn enabled() -> bool {
    crate::confine::on_unless_off(TEMPLATES_ENV)
}

/// Where templates live.
pub fn dir(home: &Home) -> PathBuf {
    home.root().join("templates")
}

/// What a template was built from and what it holds (`meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMeta {
    /// The hash of its inputs; its directory's name.
    pub key: String,
    pub created_ms: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub accel: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Whether the saved VM has a network device (for containers on a
    /// network) or none (`--network none`).
    pub nic: bool,
    /// `qemu-system-x86_64 --version`'s first line.
    pub qemu_version: String,
    /// The size of the saved state.
    pub state_bytes: u64,
    /// From the template VM's launch to its saved state.
    pub build_ms: u64,
    /// The placeholder root disk's size, in 512-byte sectors (what the
    /// restored guest sees until the host resizes the disk).
    pub placeholder_sectors: u64,
    /// The MAC of the saved VM's network device (replaced in each clone).
    pub mac: String,
}

/// Every complete template, oldest first (a template being built has no
/// `meta.json` yet).
pub fn list(home: &Home) -> Vec<TemplateMeta> {
    let mut out: Vec<TemplateMeta> = std::fs::read_dir(dir(home))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            crate::fsutil::read_json(&e.path().join("meta.json"))
                .ok()
                .flatten()
        })
        .collect();
    out.sort_by_key(|m: &TemplateMeta| m.created_ms);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_complete_templates_only() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path());
        assert!(list(&home).is_empty(), "no directory yet");
        let meta = |key: &str, created_ms| TemplateMeta {
            key: key.into(),
            created_ms,
            kernel: "/k".into(),
            initrd: "/i".into(),
            accel: "tcg".into(),
            cpus: 1,
            memory_mib: 128,
            nic: false,
            qemu_version: "QEMU emulator version 7.2".into(),
            state_bytes: 1,
            build_ms: 2,
            placeholder_sectors: 2048,
            mac: "02:76:ff:ff:ff:fe".into(),
        };
        for (key, t) in [("b", 2), ("a", 1)] {
            let d = dir(&home).join(key);
            std::fs::create_dir_all(&d).unwrap();
            crate::fsutil::write_json_atomic(&d.join("meta.json"), &meta(key, t)).unwrap();
        }
        std::fs::create_dir_all(dir(&home).join("c.building")).unwrap();
        let keys: Vec<String> = list(&home).into_iter().map(|m| m.key).collect();
        assert_eq!(keys, ["a", "b"]);
    }

    #[test]
    fn the_switch() {
        // Only this test touches the variable.
        std::env::set_var(TEMPLATES_ENV, "off");
        assert!(!enabled());
        std::env::set_var(TEMPLATES_ENV, "1");
        assert!(enabled());
        std::env::remove_var(TEMPLATES_ENV);
        assert!(enabled());
    }
}
