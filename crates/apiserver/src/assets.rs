//! Locating the guest kernel and initramfs.

use std::path::PathBuf;

/// Where to look for a guest asset: `$ENV_VAR`, then `<exe dir>/../share/vessel/NAME`,
/// then `/usr/local/share/vessel/NAME`.
fn locate(env_var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join("../share/vessel").join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("/usr/local/share/vessel").join(name)
}

/// The guest kernel (`VESSEL_KERNEL` overrides).
pub fn kernel() -> PathBuf {
    locate("VESSEL_KERNEL", "vmlinux")
}

/// The initramfs holding vminitd (`VESSEL_INITRD` overrides).
pub fn initrd() -> PathBuf {
    locate("VESSEL_INITRD", "initramfs.img")
}
