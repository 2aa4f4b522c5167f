//! Choosing the accelerator: hardware KVM where it works, TCG otherwise.

use std::path::Path;

/// The accelerator to use and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accel {
    /// `kvm` or `tcg`.
    pub name: String,
    pub reason: String,
}

/// Decide from the environment and the host (`/dev/kvm`, loaded modules).
pub fn detect() -> Accel {
    let forced = std::env::var("VESSEL_ACCEL").ok();
    decide(
        forced.as_deref(),
        Path::new("/dev/kvm"),
        Path::new("/sys/module"),
    )
}

/// The decision, with its inputs explicit so it can be tested.
pub fn decide(forced: Option<&str>, dev_kvm: &Path, sys_module: &Path) -> Accel {
    let acc = |name: &str, reason: String| Accel {
        name: name.to_string(),
        reason,
    };
    match forced.map(str::trim) {
        Some("kvm") => return acc("kvm", "forced by VESSEL_ACCEL=kvm".into()),
        Some("tcg") => return acc("tcg", "forced by VESSEL_ACCEL=tcg".into()),
        _ => {}
    }
    if !dev_kvm.exists() {
        return acc(
            "tcg",
            format!(
                "{} does not exist: software emulation (TCG)",
                dev_kvm.display()
            ),
        );
    }
    let hw = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| sys_module.join(m).exists());
    let Some(module) = hw else {
        if sys_module.join("kvm_pvm").exists() {
            return acc(
                "tcg",
                format!(
                    "{} is provided by kvm_pvm, which runs only paravirtual guests and cannot boot an ordinary kernel at usable speed: software emulation (TCG)",
                    dev_kvm.display()
                ),
            );
        }
        return acc(
            "tcg",
            "neither kvm_intel nor kvm_amd is loaded: software emulation (TCG)".to_string(),
        );
    };
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
    {
        Ok(_) => acc("kvm", format!("hardware virtualization through {module}")),
        Err(e) => acc(
            "tcg",
            format!(
                "{} cannot be opened ({e}): software emulation (TCG)",
                dev_kvm.display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_is_not_kvm() {
        let d = tempfile::tempdir().unwrap();
        let kvm = d.path().join("kvm");
        std::fs::write(&kvm, b"").unwrap();
        let modules = d.path().join("module");
        std::fs::create_dir_all(modules.join("kvm_pvm")).unwrap();
        let a = decide(None, &kvm, &modules);
        assert_eq!(a.name, "tcg");
        assert!(a.reason.contains("kvm_pvm"));
        std::fs::create_dir_all(modules.join("kvm_intel")).unwrap();
        assert_eq!(decide(None, &kvm, &modules).name, "kvm");
        assert_eq!(decide(Some("tcg"), &kvm, &modules).name, "tcg");
        assert_eq!(decide(None, &d.path().join("nope"), &modules).name, "tcg");
    }
}
