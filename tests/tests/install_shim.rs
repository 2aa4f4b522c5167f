//! `vessel system install-shim` puts the containerd shim where containerd
//! finds it and registers the CRI runtime handler in a configuration real
//! containerd reads (`containerd config dump`). The shim itself running
//! tasks is tests/tests/containerd.rs.

use std::process::Command;
use vessel_tests::{assert_ok, text, Instance};

#[test]
fn install_shim_installs_the_binaries_and_a_handler_containerd_reads() {
    let v = Instance::new();
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    let config = tmp.path().join("containerd/config.toml");
    // Debian's own configuration as the starting point.
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let debian = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n";
    std::fs::write(&config, debian).unwrap();
    let args = [
        "system",
        "install-shim",
        "--bin-dir",
        bin.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let out = v.vessel(&args);
    assert_ok(&out, "install-shim");
    let said = text(&out.stdout);
    assert!(said.contains("handler: vessel"), "{said}");
    for b in ["containerd-shim-vessel-v2", "vessel-runtime"] {
        let p = bin.join(b);
        let meta = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{b}");
    }
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.starts_with(debian),
        "the original is kept:\n{written}"
    );
    // Real containerd reads it and has the runtime.
    let dump = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .args(["config", "dump"])
        .output()
        .expect("containerd");
    assert_ok(&dump, "containerd config dump");
    let dump = text(&dump.stdout);
    let at = dump
        .find("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.vessel]")
        .unwrap_or_else(|| panic!("no vessel runtime in:\n{dump}"));
    let table = &dump[at..];
    let table = &table[..table[1..].find("\n      [").map_or(table.len(), |i| i + 1)];
    assert!(
        table.contains("runtime_type = \"io.containerd.vessel.v2\""),
        "{table}"
    );
    // Again: nothing changes.
    let out = v.vessel(&args);
    assert_ok(&out, "install-shim again");
    assert!(
        text(&out.stdout).contains("already"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);
    // A version 1 configuration is refused, not rewritten.
    std::fs::write(&config, "[plugins.cri]\n").unwrap();
    let out = v.vessel(&args);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("version 1"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "[plugins.cri]\n");
}
