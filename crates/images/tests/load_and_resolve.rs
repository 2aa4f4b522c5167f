//! End-to-end through the library and the HTTP server: an OCI layout archive
//! built here is loaded, resolved to an ext4 rootfs (mkfs.ext4; run as
//! root), checked with debugfs; bad archives leave the store empty.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use serde_json::json;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;
use std::process::Command;
use vessel_api::http::Client;
use vessel_api::paths::Home;
use vessel_images::Images;

fn digest(d: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(d)))
}

fn add(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    data: &[u8],
    link: Option<&str>,
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    match link {
        Some(l) => b.append_link(&mut h, path, l).unwrap(),
        None => b.append_data(&mut h, path, data).unwrap(),
    }
}

fn gzip(d: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut e, d).unwrap();
    e.finish().unwrap()
}

/// An OCI layout: layer 1 (gzip) has a file, a dir, a symlink and a
/// hardlink; layer 2 (plain) whites out one file and adds another.
fn oci_archive() -> Vec<u8> {
    use tar::EntryType as T;
    let mut l1 = tar::Builder::new(Vec::new());
    add(&mut l1, "etc/", T::Directory, b"", None);
    add(&mut l1, "etc/hello", T::Regular, b"hello\n", None);
    add(&mut l1, "etc/doomed", T::Regular, b"bye\n", None);
    add(&mut l1, "etc/link", T::Symlink, b"", Some("hello"));
    add(&mut l1, "etc/hard", T::Link, b"", Some("etc/hello"));
    let l1 = l1.into_inner().unwrap();
    let mut l2 = tar::Builder::new(Vec::new());
    add(&mut l2, "etc/.wh.doomed", T::Regular, b"", None);
    add(&mut l2, "etc/added", T::Regular, b"new\n", None);
    let l2 = l2.into_inner().unwrap();
    let l1gz = gzip(&l1);
    let config = serde_json::to_vec(&json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/etc", "User": null},
        "rootfs": {"type": "layers", "diff_ids": [digest(&l1), digest(&l2)]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&l1gz), "size": l1gz.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&l2), "size": l2.len()},
        ],
    }))
    .unwrap();
    // A nested index, as `docker save` and multi-platform tools write.
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest), "size": manifest.len(),
            "platform": {"os": "linux", "architecture": "amd64"},
        }],
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest(&nested), "size": nested.len(),
            "annotations": {"io.containerd.image.name": "localhost/itest:v1", "org.opencontainers.image.ref.name": "v1"},
        }],
    }))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    add(
        &mut b,
        "oci-layout",
        tar::EntryType::Regular,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        None,
    );
    add(&mut b, "index.json", tar::EntryType::Regular, &index, None);
    for blob in [&l1gz, &l2, &config, &manifest, &nested] {
        let p = format!("blobs/sha256/{}", &digest(blob)[7..]);
        add(&mut b, &p, tar::EntryType::Regular, blob, None);
    }
    b.into_inner().unwrap()
}

fn debugfs(image: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs) is installed");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn blob_count(home: &Home) -> usize {
    fs::read_dir(home.content_dir().join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn load_resolve_and_check_the_ext4() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::new(dir.path().join("home"));
    let images = Images::open(&home).unwrap();
    let src = dir.path().join("img.tar.gz");
    fs::write(&src, gzip(&oci_archive())).unwrap();
    let loaded = images.load(&src).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].reference, "localhost/itest:v1");
    assert_eq!(blob_count(&home), 4, "layers, config, manifest");
    assert_eq!(fs::read_dir(home.tmp_dir()).unwrap().count(), 0);

    if !is_root() {
        eprintln!("not root: skipping the ext4 part");
        return;
    }
    let r = images.resolve("localhost/itest:v1").unwrap();
    assert_eq!(r.id, loaded[0].id);
    assert_eq!(r.config.cmd, vec!["/bin/sh"]);
    assert_eq!(r.config.working_dir, "/etc");
    assert_eq!(r.config.user, "");
    assert!(r.rootfs.is_file());
    // By ID prefix, and no rebuild.
    let mtime = fs::metadata(&r.rootfs).unwrap().modified().unwrap();
    let r2 = images.resolve(&loaded[0].id[7..19]).unwrap();
    assert_eq!(r2.rootfs, r.rootfs);
    assert_eq!(fs::metadata(&r.rootfs).unwrap().modified().unwrap(), mtime);

    let ls = debugfs(&r.rootfs, "ls -l /etc");
    assert!(
        ls.contains("hello") && ls.contains("added") && ls.contains("link"),
        "{ls}"
    );
    assert!(!ls.contains("doomed"), "whiteout applied: {ls}");
    let stat = debugfs(&r.rootfs, "stat /etc/hello");
    assert!(stat.contains("Links: 2"), "hardlink kept: {stat}");
    assert!(stat.contains("User:  1000"), "owner kept: {stat}");
    let link = debugfs(&r.rootfs, "stat /etc/link");
    assert!(
        link.contains("Type: symlink") && link.contains("\"hello\""),
        "{link}"
    );
    let cat = debugfs(&r.rootfs, "cat /etc/added");
    assert!(cat.contains("new"), "{cat}");

    // Remove: blobs and the rootfs go.
    let res = images.remove("localhost/itest:v1").unwrap();
    assert_eq!(res.removed, vec!["localhost/itest:v1"]);
    assert_eq!(res.deleted.len(), 4);
    assert!(!r.rootfs.exists());
    assert_eq!(blob_count(&home), 0);
    assert!(images.resolve("localhost/itest:v1").is_err());
}

#[test]
fn truncated_and_garbage_archives_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::new(dir.path().join("home"));
    let images = Images::open(&home).unwrap();
    let good = oci_archive();
    let gz = gzip(&good);
    let bad: Vec<Vec<u8>> = vec![
        good[..good.len() * 2 / 3].to_vec(),
        gz[..gz.len() / 2].to_vec(),
        b"\x1f\x8bgarbage that claims to be gzip".to_vec(),
        vec![0xAB; 10_000],
    ];
    for (i, data) in bad.into_iter().enumerate() {
        let src = dir.path().join("bad.tar");
        fs::write(&src, data).unwrap();
        let e = images.load(&src).unwrap_err();
        assert_eq!(
            e.kind(),
            vessel_api::error::ErrorKind::InvalidArgument,
            "case {i}: {e}"
        );
        assert_eq!(blob_count(&home), 0, "case {i}");
        assert_eq!(fs::read_dir(home.tmp_dir()).unwrap().count(), 0, "case {i}");
        assert!(images.list().unwrap().is_empty());
    }
}

#[test]
fn http_api() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::new(dir.path().join("h"));
    let h2 = home.clone();
    std::thread::spawn(move || vessel_images::server::run(&h2));
    let sock = home.images_socket();
    for _ in 0..200 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let c = Client::new(&sock);
    let get = |m: &str, p: &str| {
        let r = c.request(m, p, None).unwrap();
        let status = r.status;
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
        (status, v)
    };
    assert_eq!(get("GET", "/health"), (200, json!({"ok": true})));
    let src = dir.path().join("img.tar");
    fs::write(&src, oci_archive()).unwrap();
    let (s, v) = get("POST", &format!("/images/load?path={}", src.display()));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["images"][0]["reference"], "localhost/itest:v1");
    let (s, v) = get("GET", "/images");
    assert_eq!((s, v.as_array().map(|a| a.len())), (200, Some(1)));
    let (s, v) = get("GET", "/images/inspect?ref=localhost/itest:v1");
    assert_eq!(s, 200);
    assert_eq!(v["config"]["config"]["Cmd"][0], "/bin/sh");
    let (s, v) = get("POST", "/images/resolve?ref=nope");
    assert_eq!(s, 404);
    assert_eq!(
        v["message"],
        "image docker.io/library/nope:latest not found; pull it with `vessel pull docker.io/library/nope:latest`, load one with `vessel image load -i FILE`, or list images with `vessel image ls`"
    );
    assert_eq!(get("POST", "/images/resolve?ref=Bad%20Ref").0, 400);
    assert_eq!(get("POST", "/images/load?path=relative.tar").0, 400);
    let (s, v) = get("DELETE", "/images?ref=localhost/itest:v1");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["removed"][0], "localhost/itest:v1");
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(&sock).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode, 0o600);
}

/// The project's offline default image, when its build script is present.
#[test]
fn loads_the_busybox_image() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/busybox/build.sh");
    if !script.exists() || !Path::new("/bin/busybox").exists() {
        eprintln!("skipping: no busybox build script or /bin/busybox");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bb.tar");
    let st = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "build.sh failed");
    let home = Home::new(dir.path().join("home"));
    let images = Images::open(&home).unwrap();
    let loaded = images.load(&out).unwrap();
    assert_eq!(loaded[0].reference, "localhost/busybox:latest");
    if is_root() {
        let short = images.resolve("busybox").unwrap();
        assert_eq!(short.reference, "localhost/busybox:latest");
        let r = images.resolve("localhost/busybox").unwrap();
        let ls = debugfs(&r.rootfs, "stat /bin/busybox");
        assert!(ls.contains("Type: regular"), "{ls}");
    }
}
