//! Images: loading archives made by other tools, importing root filesystems,
//! and refusing malformed archives and hostile layers.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use vessel_tests::{assert_ok, required_env, text, Instance, IMAGE};

fn fixture(case: &str, out: &Path, canary: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/make_rootfs_tar.py");
    let st = Command::new("python3")
        .arg(script)
        .arg(case)
        .arg(out)
        .arg(canary)
        .status()
        .unwrap();
    assert!(st.success(), "fixture {case}");
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}

#[test]
fn truncated_or_garbage_archives_leave_the_store_untouched() {
    let mut v = Instance::new();
    v.start();
    let good = std::fs::read(required_env("VESSEL_TEST_IMAGE")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("tiny", good[..700].to_vec()),
        (
            "garbage",
            (0..100_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
        ),
        ("empty", Vec::new()),
    ];
    for (name, data) in cases {
        let p = dir.path().join(format!("{name}.tar"));
        std::fs::write(&p, data).unwrap();
        let out = v.vessel(&["image", "load", "-i", p.to_str().unwrap()]);
        assert!(!out.status.success(), "{name} archive was accepted");
        assert!(
            !text(&out.stderr).trim().is_empty(),
            "{name}: no error message"
        );
        assert_eq!(
            files_under(&v.path().join("content/blobs/sha256")),
            0,
            "{name}: blobs left in the store"
        );
        assert_eq!(
            files_under(&v.path().join("tmp")),
            0,
            "{name}: temporary files left"
        );
        let ls = text(&v.vessel(&["image", "ls", "-q"]).stdout);
        assert!(ls.trim().is_empty(), "{name}: an image appeared: {ls}");
    }
    let out = v.vessel(&["image", "load", "-i", "/nonexistent/archive.tar"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/archive.tar"));
}

#[test]
fn docker_save_archive_from_skopeo_loads_and_runs() {
    let mut v = Instance::new();
    v.start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("docker.tar");
    let st = Command::new("skopeo")
        .arg("copy")
        .arg("--quiet")
        .arg(format!(
            "oci-archive:{}",
            required_env("VESSEL_TEST_IMAGE").display()
        ))
        .arg(format!(
            "docker-archive:{}:localhost/dockerfmt:v1",
            archive.display()
        ))
        .status()
        .unwrap();
    assert!(st.success(), "skopeo copy");
    let out = v.vessel(&["image", "load", "-i", archive.to_str().unwrap()]);
    assert_ok(&out, "load docker archive");
    assert!(
        text(&out.stdout).contains("localhost/dockerfmt:v1"),
        "{}",
        text(&out.stdout)
    );
    let out = v.vessel(&[
        "run",
        "--rm",
        "localhost/dockerfmt:v1",
        "sh",
        "-c",
        "echo $VESSEL_IMAGE",
    ]);
    assert_ok(&out, "run docker-format image");
    assert_eq!(text(&out.stdout).trim(), "busybox");
    let ls = text(&v.vessel(&["image", "ls"]).stdout);
    assert!(
        ls.contains("localhost/dockerfmt") && ls.contains("v1"),
        "{ls}"
    );
}

#[test]
fn import_rootfs_then_rm_refuses_while_used() {
    let v = Instance::started();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("rootfs.tar");
    fixture("busybox", &tar, "unused");
    let out = v.vessel(&[
        "image",
        "import",
        tar.to_str().unwrap(),
        "localhost/imported:1",
    ]);
    assert_ok(&out, "import");
    assert!(text(&out.stdout).starts_with("sha256:"));
    let out = v.vessel(&[
        "run",
        "--rm",
        "localhost/imported:1",
        "cat",
        "/etc/imported",
    ]);
    assert_ok(&out, "run imported");
    assert_eq!(text(&out.stdout), "imported-ok\n");

    let out = v.vessel(&["run", "-d", "--name", "user", IMAGE, "sleep", "60"]);
    assert_ok(&out, "run -d");
    let out = v.vessel(&["image", "rm", IMAGE]);
    assert!(!out.status.success(), "rm of an image in use");
    assert!(text(&out.stderr).contains("user"), "{}", text(&out.stderr));
    assert_ok(&v.vessel(&["rm", "-f", "user"]), "rm -f");
    assert_ok(&v.vessel(&["image", "rm", IMAGE]), "image rm");
    assert_ok(
        &v.vessel(&["image", "rm", "localhost/imported:1"]),
        "image rm",
    );
    assert!(text(&v.vessel(&["image", "ls", "-q"]).stdout)
        .trim()
        .is_empty());
    assert_eq!(
        files_under(&v.path().join("content/blobs/sha256")),
        0,
        "blobs freed"
    );
    assert_eq!(files_under(&v.path().join("rootfs")), 0, "ext4 bases freed");
}

#[test]
fn hostile_layers_never_write_outside_the_rootfs() {
    let v = Instance::started();
    let dir = tempfile::tempdir().unwrap();
    let passwd_before = std::fs::read("/etc/passwd").unwrap();
    for case in ["dotdot", "symlink-escape", "hardlink-escape", "absolute"] {
        let canary = format!("vessel-canary-{}-{case}", std::process::id());
        let tar = dir.path().join(format!("{case}.tar"));
        fixture(case, &tar, &canary);
        let reference = format!("localhost/hostile-{case}:1");
        let imported = v.vessel(&["image", "import", tar.to_str().unwrap(), &reference]);
        // Refused at import (checked while reading) or at unpack: either way
        // with a message, and nothing written outside.
        let out = if imported.status.success() {
            v.vessel(&["run", "--rm", &reference, "cat", &format!("/srv/{canary}")])
        } else {
            imported
        };
        if case == "absolute" {
            // Contained: the absolute path lands inside the container's root.
            assert_ok(&out, "absolute path contained");
            assert_eq!(text(&out.stdout), "contained\n");
            assert!(!Path::new(&format!("/srv/{canary}")).exists());
        } else {
            assert!(!out.status.success(), "{case}: a hostile layer ran");
            let err = text(&out.stderr);
            assert!(
                ["escape", "outside", "symlink", "unsafe"]
                    .iter()
                    .any(|w| err.contains(w)),
                "{case}: {err}"
            );
        }
        assert!(
            !Path::new(&format!("/tmp/{canary}")).exists(),
            "{case} wrote to the host's /tmp"
        );
        let found = Command::new("find")
            .arg(v.path())
            .arg("-name")
            .arg(&canary)
            .output()
            .unwrap();
        assert!(
            text(&found.stdout).trim().is_empty(),
            "{case}: {}",
            text(&found.stdout)
        );
    }
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd_before);
}
