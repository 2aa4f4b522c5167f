//! Images from a real registry: Debian's `docker-registry` on loopback,
//! filled with `skopeo` (a real client, not vessel's), then `vessel image
//! pull|push|save|load`, `vessel registry login|logout` and `vessel run`
//! against it, with real VMs.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use vessel_api::types::ImageSummary;
use vessel_tests::registry::{Registry, SlowProxy, PASSWORD, USER};
use vessel_tests::small_disk::{output_within, SmallDisk};
use vessel_tests::{assert_ok, required_env, text, Instance, IMAGE};

/// A started instance with nothing loaded.
fn empty_instance() -> Instance {
    let mut v = Instance::new();
    v.start();
    v
}

fn pull(v: &Instance, reference: &str) -> Output {
    v.vessel(&["image", "pull", reference])
}

fn assert_pulled(v: &Instance, reference: &str) -> ImageSummary {
    let out = pull(v, reference);
    assert_ok(&out, &format!("image pull {reference}"));
    image(v, reference)
        .unwrap_or_else(|| panic!("{reference} pulled but not in `image ls`: {:?}", v.images()))
}

/// The `image ls` entry of `reference`.
fn image(v: &Instance, reference: &str) -> Option<ImageSummary> {
    v.images().into_iter().find(|i| i.reference == reference)
}

/// `vessel run --rm IMAGE sh -c SCRIPT`: its standard output.
fn run_sh(v: &Instance, image: &str, script: &str) -> String {
    let out = v.vessel(&["run", "--rm", image, "sh", "-c", script]);
    assert_ok(&out, &format!("run {image}"));
    text(&out.stdout)
}

/// `key=value` lines of a script's output.
fn field(out: &str, key: &str) -> String {
    let prefix = format!("{key}=");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= in output:\n{out}"))
        .trim()
        .to_string()
}

fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running skopeo")
}

/// A file of a gzip layer blob, extracted by GNU tar.
fn file_in_layer(blob: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xzOf")
        .arg(blob)
        .arg(name)
        .output()
        .unwrap();
    assert_ok(&out, "tar -xzO");
    out.stdout
}

fn sha256_hex(data: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn s(v: &serde_json::Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

/// Every file under `dir` (recursively) whose name contains `needle`.
fn files_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().contains(needle) {
                out.push(p.clone());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn single_arch_image_pulls_runs_and_a_second_pull_downloads_nothing() {
    let reg = Registry::plain();
    reg.push(
        &format!(
            "oci-archive:{}",
            required_env("VESSEL_TEST_IMAGE").display()
        ),
        "busybox:latest",
        &[],
    );
    let remote = reg.inspect("busybox:latest", false);
    let raw = reg.inspect("busybox:latest", true);
    let digest = s(&remote["Digest"]);
    let config = s(&raw["config"]["digest"]);
    let layer = s(&raw["layers"][0]["digest"]);

    let v = empty_instance();
    let reference = reg.reference("busybox:latest");
    let img = assert_pulled(&v, &reference);
    assert_eq!(img.digest, digest, "manifest digest of the pulled image");
    assert_eq!(img.id, config, "image ID is the config digest");
    assert!(v.has_blob(&layer), "layer {layer} in the store");
    assert_eq!(reg.blob_gets(&layer), 1, "{}", reg.access_log());

    // Pulling again: the tag is resolved again, no blob downloaded again.
    assert_pulled(&v, &reference);
    assert_eq!(reg.blob_gets(&layer), 1, "second pull fetched the layer");
    // -q: only the reference on stdout.
    let out = v.vessel(&["image", "pull", "-q", &reference]);
    assert_ok(&out, "pull -q");
    assert_eq!(text(&out.stdout).trim(), reference);
    // By digest, as Docker writes it.
    let by_digest = format!("{}/busybox@{digest}", reg.host());
    assert_ok(&pull(&v, &by_digest), "pull by digest");
    assert_eq!(reg.blob_gets(&layer), 1, "pull by digest fetched the layer");
    let missing = format!("{}/busybox@sha256:{}", reg.host(), "0".repeat(64));
    let out = pull(&v, &missing);
    assert!(!out.status.success(), "pull of a digest the registry lacks");
    assert!(
        text(&out.stderr).to_lowercase().contains("not found")
            || text(&out.stderr).to_lowercase().contains("unknown"),
        "stderr: {}",
        text(&out.stderr)
    );

    let out = run_sh(
        &v,
        &reference,
        "echo image=$VESSEL_IMAGE; echo passwd=$(sha256sum /etc/passwd | cut -d' ' -f1)",
    );
    assert_eq!(field(&out, "image"), "busybox");
    let layer_blob = tempfile::tempdir().unwrap();
    let blob = layer_blob.path().join("layer.tgz");
    std::fs::copy(reg.blob_data(&layer), &blob).unwrap();
    let passwd = file_in_layer(&blob, "etc/passwd");
    assert_eq!(field(&out, "passwd"), sha256_hex(&passwd));
}

#[test]
fn run_pulls_an_image_that_is_not_present() {
    let reg = Registry::plain();
    reg.put_fixture(
        "marker",
        "implicit:v1",
        &["--file", "etc/implicit=implicit-ok"],
        &[],
    );
    let v = empty_instance();
    let reference = reg.reference("implicit:v1");
    assert!(image(&v, &reference).is_none());
    let out = v.vessel(&["run", "--rm", &reference, "cat", "/etc/implicit"]);
    assert_ok(&out, "run of an image not yet pulled");
    assert_eq!(
        text(&out.stdout),
        "implicit-ok\n",
        "only the container's output on stdout (stderr: {})",
        text(&out.stderr)
    );
    assert!(
        image(&v, &reference).is_some(),
        "the implicitly pulled image is in `image ls`"
    );
}

#[test]
fn multi_arch_index_picks_the_host_platform_or_the_asked_one() {
    let reg = Registry::plain();
    let sum = reg.put_fixture("multiarch", "multi:latest", &[], &[]);
    let amd64 = s(&sum["manifests"]["linux/amd64"]);
    let arm64 = s(&sum["manifests"]["linux/arm64"]);
    let arm64_layer = s(&sum["arch_layers"]["linux/arm64"][0]);
    let amd64_layer = s(&sum["arch_layers"]["linux/amd64"][0]);
    // skopeo sees an index at the tag.
    let raw = reg.inspect("multi:latest", true);
    assert_eq!(raw["manifests"].as_array().map(Vec::len), Some(2), "{raw}");

    let v = empty_instance();
    let reference = reg.reference("multi:latest");
    let img = assert_pulled(&v, &reference);
    assert_eq!(img.digest, amd64, "default platform is the host's (amd64)");
    assert_eq!(
        reg.blob_gets(&arm64_layer),
        0,
        "the arm64 layer was downloaded for an amd64 pull"
    );
    let out = run_sh(&v, &reference, "cat /etc/vessel-arch");
    assert_eq!(out, "amd64\n");

    let out = v.vessel(&["image", "pull", "--platform", "linux/arm64", &reference]);
    assert_ok(&out, "pull --platform linux/arm64");
    let img = image(&v, &reference).expect("arm64 image listed");
    assert_eq!(img.digest, arm64, "--platform linux/arm64 picks arm64");
    assert!(v.has_blob(&arm64_layer));
    assert_eq!(reg.blob_gets(&arm64_layer), 1);
    assert_eq!(reg.blob_gets(&amd64_layer), 1);

    let out = v.vessel(&["image", "pull", "--platform", "linux/s390x", &reference]);
    assert!(!out.status.success(), "a platform the index lacks");
    assert!(
        text(&out.stderr).contains("s390x"),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn layered_image_applies_whiteouts_and_keeps_hardlinks() {
    let reg = Registry::plain();
    let sum = reg.put_fixture("layered", "layered:v1", &[], &[]);
    let v = empty_instance();
    let reference = reg.reference("layered:v1");
    let img = assert_pulled(&v, &reference);
    assert_eq!(img.digest, s(&sum["digest"]));
    let script = r#"
echo keep=$(cat /data/keep)
for p in /data/gone /data/subtree /data/subtree/x /data/dir/old1 /data/dir/old2 /bin/wc; do
  if [ -e $p ] || [ -L $p ]; then echo present=$p; fi
done
echo dir=$(ls -A /data/dir | tr '\n' ' ')
echo wh=$(find / -xdev -name '.wh.*' | tr '\n' ' ')
echo h=$(stat -c %i /data/h1) $(stat -c %i /data/h2) $(stat -c %h /data/h1)
echo l3=$(stat -c %i /data/l3a) $(stat -c %i /data/l3b) $(stat -c %i /data/l3c) $(stat -c %h /data/l3a)
echo text=$(cat /data/h2) / $(cat /data/l3c)
echo busybox=$(sha256sum /bin/busybox | cut -d' ' -f1)
echo cat=$(readlink /bin/cat)
"#;
    let out = run_sh(&v, &reference, script);
    assert_eq!(field(&out, "keep"), "keep-v2", "upper layer wins");
    assert!(
        !out.lines().any(|l| l.starts_with("present=")),
        "deleted paths still present:\n{out}"
    );
    assert_eq!(
        field(&out, "dir"),
        "new",
        "opaque dir keeps only the upper layer's entries"
    );
    assert_eq!(field(&out, "wh"), "", "whiteout files left in the rootfs");
    let h: Vec<String> = field(&out, "h")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(h.len(), 3, "{out}");
    assert_eq!(h[0], h[1], "h1 and h2 share an inode");
    assert_eq!(h[2], "2", "link count of h1");
    let l3: Vec<String> = field(&out, "l3")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(l3.len(), 4, "{out}");
    assert!(l3[0] == l3[1] && l3[1] == l3[2], "l3a/b/c share an inode");
    assert_eq!(l3[3], "3", "link count of l3a");
    assert_eq!(field(&out, "text"), "hardlinked / layer3 hardlink");
    assert_eq!(field(&out, "cat"), "busybox", "symlinks kept");
    let base = reg.blob_data(&s(&sum["base_layer"]));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(&base, tmp.path().join("base.tgz")).unwrap();
    let busybox = file_in_layer(&tmp.path().join("base.tgz"), "bin/busybox");
    assert_eq!(field(&out, "busybox"), sha256_hex(&busybox));
}

#[test]
fn zstd_layers_pull_and_run() {
    let reg = Registry::plain();
    reg.put_fixture(
        "marker",
        "zstd:v1",
        &["--file", "etc/zstd-marker=zstd-ok"],
        &["--dest-compress-format", "zstd"],
    );
    let raw = reg.inspect("zstd:v1", true);
    let layers = raw["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{raw}");
    for l in layers {
        assert!(
            s(&l["mediaType"]).ends_with("+zstd"),
            "skopeo did not store zstd layers: {raw}"
        );
    }
    let v = empty_instance();
    let reference = reg.reference("zstd:v1");
    assert_pulled(&v, &reference);
    let out = run_sh(
        &v,
        &reference,
        "cat /etc/zstd-marker; echo $VESSEL_IMAGE; ls /bin/busybox",
    );
    assert_eq!(out, "zstd-ok\nbusybox\n/bin/busybox\n");
}

/// Docker's `config.json` `auth` value for the test user.
fn basic(user: &str, password: &str) -> String {
    vessel_api::types::b64_encode(format!("{user}:{password}").as_bytes())
}

/// A pull of `reference` fails with "unauthorized" and lists nothing.
fn assert_unauthorized_pull(v: &Instance, reference: &str) {
    let out = pull(v, reference);
    assert!(
        !out.status.success(),
        "pull of a private image without credentials"
    );
    let err = text(&out.stderr);
    assert!(err.to_lowercase().contains("unauthorized"), "stderr: {err}");
    assert!(image(v, reference).is_none());
}

/// `vessel registry login -u USER --password-stdin HOST`.
fn login(v: &Instance, host: &str, password: &str) -> Output {
    v.vessel_stdin(
        &["registry", "login", "-u", USER, "--password-stdin", host],
        format!("{password}\n").as_bytes(),
    )
}

#[test]
fn basic_auth_over_tls_login_logout_and_docker_config() {
    use std::os::unix::fs::PermissionsExt;
    let reg = Registry::with_auth_tls();
    for tag in ["v1", "v2", "v3"] {
        reg.put_fixture(
            "marker",
            &format!("private:{tag}"),
            &["--file", "etc/private=private-ok"],
            &[],
        );
    }
    let mut v = empty_instance();
    reg.trust_in(&v);
    let host = reg.host();
    let r1 = reg.reference("private:v1");

    assert_unauthorized_pull(&v, &r1);

    let out = login(&v, &host, "not the password");
    assert!(!out.status.success(), "login with a wrong password");
    assert!(!text(&out.stderr).trim().is_empty());

    assert_ok(&login(&v, &host, PASSWORD), "registry login");
    let config = v.vessel_config_dir().join("config.json");
    let meta = std::fs::metadata(&config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "config.json mode");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(
        json["auths"][&host]["auth"].as_str(),
        Some(basic(USER, PASSWORD).as_str()),
        "Docker's auths format: {json}"
    );

    assert_pulled(&v, &r1);

    let out = v.vessel(&["registry", "logout", &host]);
    assert_ok(&out, "registry logout");
    // The file may be gone (nothing left in it) or kept without the entry.
    let json: serde_json::Value = std::fs::read(&config)
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or_default();
    assert!(
        json["auths"].get(&host).is_none(),
        "credentials left after logout: {json}"
    );
    let r2 = reg.reference("private:v2");
    assert_unauthorized_pull(&v, &r2);

    // The user's Docker config (DOCKER_CONFIG) is read when vessel's has
    // nothing for the registry.
    let docker_cfg = v.docker_config_dir().join("config.json");
    std::fs::write(
        &docker_cfg,
        serde_json::json!({"auths": {&host: {"auth": basic(USER, PASSWORD)}}}).to_string(),
    )
    .unwrap();
    assert_pulled(&v, &r2);

    // A credential helper named by credHelpers.
    let helpers = tempfile::tempdir().unwrap();
    let helper = helpers.path().join("docker-credential-vesseltest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n\
             echo \"$server\" >> {}/asked\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}\\n' \"$server\"\n",
            helpers.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        &docker_cfg,
        serde_json::json!({"credHelpers": {&host: "vesseltest"}}).to_string(),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        helpers.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    v.set_env("PATH", path);
    assert_pulled(&v, &reg.reference("private:v3"));
    let asked = std::fs::read_to_string(helpers.path().join("asked")).unwrap_or_default();
    assert!(asked.contains(&host), "credential helper asked: {asked:?}");
}

#[test]
fn tampered_blob_is_refused_and_nothing_unverified_is_kept() {
    let reg = Registry::plain();
    let sum = reg.put_fixture(
        "marker",
        "tamper:v1",
        &["--file", "etc/tamper=original"],
        &[],
    );
    let layer = s(&sum["layers"][0]);
    let hex = layer.trim_start_matches("sha256:").to_string();
    let data = reg.blob_data(&layer);
    let good = std::fs::read(&data).unwrap();
    // Same length, different bytes: only the digest can tell.
    let bad: Vec<u8> = good.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&data, &bad).unwrap();

    let v = empty_instance();
    let reference = reg.reference("tamper:v1");
    let out = pull(&v, &reference);
    assert!(!out.status.success(), "a tampered blob was accepted");
    let err = text(&out.stderr);
    eprintln!("tampered: {err}");
    assert!(
        err.contains(&hex[..12]),
        "the error names the blob {layer}: {err}"
    );
    assert!(!v.has_blob(&layer), "unverified blob in the store");
    let left = files_named(v.path(), &hex[..12]);
    assert!(left.is_empty(), "files named after the bad blob: {left:?}");
    assert!(
        image(&v, &reference).is_none(),
        "image listed after a failed pull"
    );

    // The registry serves the right bytes again: the same pull now works.
    std::fs::write(&data, &good).unwrap();
    assert_pulled(&v, &reference);
    assert!(v.has_blob(&layer));
}

/// Docker Hub's scheme: the registry answers 401 with a `Bearer` challenge
/// naming a token server; the client gets a token there (anonymously or
/// with Basic credentials) for the scope it needs and presents it.
#[test]
fn bearer_token_auth_anonymous_and_logged_in_pull_and_push() {
    let reg = Registry::with_token_auth();
    reg.put_fixture(
        "marker",
        "public/app:v1",
        &["--file", "etc/who=public"],
        &[],
    );
    reg.put_fixture(
        "marker",
        "private/app:v1",
        &["--file", "etc/who=private"],
        &[],
    );
    let v = empty_instance();
    let host = reg.host();
    let tokens = || reg.token_server().requests();
    let before = tokens().len();

    // Anonymous: a token with pull on public/app, without credentials.
    let public = reg.reference("public/app:v1");
    assert_pulled(&v, &public);
    let anon: Vec<_> = tokens()[before..].to_vec();
    assert!(
        anon.iter().any(|r| r.user.is_none()
            && r.status == 200
            && r.scopes.iter().any(|s| s == "repository:public/app:pull")),
        "token requests: {anon:?}"
    );
    // One token serves the whole pull (manifest, config, every layer).
    assert!(anon.len() <= 2, "a token per request? {anon:?}");

    // Anonymous on a private repository: the token grants nothing and the
    // registry refuses.
    let private = reg.reference("private/app:v1");
    assert_unauthorized_pull(&v, &private);

    // A wrong password is refused by the token server at login.
    let out = login(&v, &host, "not the password");
    assert!(!out.status.success(), "login with a wrong password");
    assert_ok(&login(&v, &host, PASSWORD), "registry login");

    let before = tokens().len();
    assert_pulled(&v, &private);
    let authed: Vec<_> = tokens()[before..].to_vec();
    assert!(
        authed.iter().any(|r| r.user.as_deref() == Some(USER)
            && r.scopes.iter().any(|s| s == "repository:private/app:pull")),
        "token requests: {authed:?}"
    );
    assert_eq!(run_sh(&v, &private, "cat /etc/who"), "private\n");

    // Push with the stored credentials: a token with push on the target
    // (and pull on the source of a cross-repository mount, if tried).
    let target = reg.reference("private/copy:v1");
    assert_ok(&v.vessel(&["image", "tag", &private, &target]), "image tag");
    let local = image(&v, &target).expect("tagged image listed");
    assert_ok(&v.vessel(&["image", "push", &target]), "image push");
    assert!(
        tokens().iter().any(|r| r.user.as_deref() == Some(USER)
            && r.scopes
                .iter()
                .any(|s| s.starts_with("repository:private/copy:") && s.contains("push"))),
        "token requests: {:?}",
        tokens()
    );
    assert_eq!(
        s(&reg.inspect("private/copy:v1", false)["Digest"]),
        local.digest
    );
}

#[test]
fn push_then_skopeo_sees_the_same_manifest_and_copies_it_back() {
    let reg = Registry::plain();
    let v = Instance::started();
    let target = reg.reference("pushed/busybox:v1");
    assert_ok(&v.vessel(&["image", "tag", IMAGE, &target]), "image tag");
    let local = image(&v, &target).expect("tagged image listed");
    let out = v.vessel(&["image", "push", &target]);
    assert_ok(&out, "image push");

    let remote = reg.inspect("pushed/busybox:v1", false);
    let digest = s(&remote["Digest"]);
    assert_eq!(digest, local.digest, "registry's manifest digest");
    let inspect = v.vessel(&["image", "inspect", &target]);
    assert_ok(&inspect, "image inspect");
    assert!(
        text(&inspect.stdout).contains(&digest),
        "image inspect does not show {digest}: {}",
        text(&inspect.stdout)
    );

    let back = tempfile::tempdir().unwrap();
    let dir = back.path().join("oci");
    let out = skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{target}"),
        &format!("oci:{}:v1", dir.display()),
    ]);
    assert_ok(&out, "skopeo copy back");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(s(&index["manifests"][0]["digest"]), digest);

    // A multi-layer image pulled from one repository and pushed to another
    // of the same registry: blobs are mounted or found, never uploaded again.
    let sum = reg.put_fixture("layered", "layered:v1", &[], &[]);
    let src = reg.reference("layered:v1");
    assert_pulled(&v, &src);
    let dst = reg.reference("copy/layered:v2");
    assert_ok(&v.vessel(&["image", "tag", &src, &dst]), "tag");
    assert_ok(&v.vessel(&["image", "push", &dst]), "push layered");
    assert_eq!(
        s(&reg.inspect("copy/layered:v2", false)["Digest"]),
        s(&sum["digest"])
    );
    let log = reg.access_log();
    let uploads: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("/v2/copy/layered/blobs/uploads/") && l.contains("\"PUT "))
        .filter(|l| {
            sum["layers"]
                .as_array()
                .unwrap()
                .iter()
                .chain(std::iter::once(&sum["base_layer"]))
                .any(|d| l.contains(&s(d)) || l.contains(&s(d).replace(':', "%3A")))
        })
        .collect();
    assert!(
        uploads.is_empty(),
        "layers uploaded again instead of mounted: {uploads:?}"
    );

    // A layer past the monolithic limit (8 MiB) to a registry that has
    // nothing: uploaded in chunks (PATCH with Content-Range), then the same
    // manifest digest there.
    let sum = reg.put_fixture(
        "big",
        "big:v1",
        &["--layers", "1", "--layer-mib", "20", "--seed", "3"],
        &[],
    );
    let src = reg.reference("big:v1");
    assert_pulled(&v, &src);
    let other = Registry::plain();
    let dst = other.reference("big/chunked:v1");
    assert_ok(&v.vessel(&["image", "tag", &src, &dst]), "tag big");
    assert_ok(&v.vessel(&["image", "push", &dst]), "push big");
    assert_eq!(
        s(&other.inspect("big/chunked:v1", false)["Digest"]),
        s(&sum["digest"])
    );
    let patches = other
        .access_log()
        .lines()
        .filter(|l| l.contains("\"PATCH /v2/big/chunked/blobs/uploads/") && l.contains("\" 202 "))
        .count();
    assert!(
        patches >= 2,
        "a 20 MiB layer in {patches} PATCH requests:\n{}",
        other.access_log()
    );
}

#[test]
fn save_rm_load_round_trip_and_a_skopeo_docker_archive() {
    let reg = Registry::plain();
    reg.put_fixture("layered", "layered:v1", &[], &[]);
    let v = empty_instance();
    let reference = reg.reference("layered:v1");
    let before = assert_pulled(&v, &reference);

    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("saved.tar");
    let out = v.vessel(&["image", "save", "-o", archive.to_str().unwrap(), &reference]);
    assert_ok(&out, "image save");
    // skopeo reads it as an OCI archive with the same manifest.
    let out = skopeo(&["inspect", &format!("oci-archive:{}", archive.display())]);
    assert_ok(&out, "skopeo inspect of the saved archive");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s(&seen["Digest"]), before.digest);

    assert_ok(&v.vessel(&["image", "rm", &reference]), "image rm");
    assert!(image(&v, &reference).is_none());
    assert!(!v.has_blob(&before.id), "config blob freed by rm");
    let out = v.vessel(&["image", "load", "-i", archive.to_str().unwrap()]);
    assert_ok(&out, "image load");
    let after = image(&v, &reference).expect("loaded image listed under its name");
    assert_eq!(after.id, before.id, "same image ID after the round trip");
    assert_eq!(after.digest, before.digest);

    // `docker save` format, written by skopeo from the registry.
    let docker = tmp.path().join("docker.tar");
    let out = skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!(
            "docker-archive:{}:localhost/layered-docker:v1",
            docker.display()
        ),
    ]);
    assert_ok(&out, "skopeo copy to docker-archive");
    let out = v.vessel(&["image", "load", "-i", docker.to_str().unwrap()]);
    assert_ok(&out, "load docker archive");
    let out = run_sh(
        &v,
        "localhost/layered-docker:v1",
        "cat /data/keep; ls -A /data/dir; [ -e /data/gone ] || echo gone; stat -c %h /data/l3a",
    );
    assert_eq!(out, "keep-v2\nnew\ngone\n3\n");
}

#[test]
fn concurrent_pulls_of_one_image_download_each_blob_once() {
    let reg = Registry::plain();
    let sum = reg.put_fixture(
        "big",
        "big:v1",
        &["--layers", "3", "--layer-mib", "8", "--seed", "7"],
        &[],
    );
    // Through a relay at 8 MiB/s per connection: each layer takes about a
    // second, so the two pulls surely overlap.
    let proxy = SlowProxy::new(&reg, 8 << 20);
    let v = empty_instance();
    let reference = format!("{}/big:v1", proxy.host());
    let a = v.cmd(&["image", "pull", &reference]);
    let b = v.cmd(&["image", "pull", &reference]);
    let spawn = |mut c: Command| std::thread::spawn(move || c.output().unwrap());
    let ha = spawn(a);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let hb = spawn(b);
    let (oa, ob) = (ha.join().unwrap(), hb.join().unwrap());
    assert_ok(&oa, "first concurrent pull");
    assert_ok(&ob, "second concurrent pull");
    let listed: Vec<ImageSummary> = v
        .images()
        .into_iter()
        .filter(|i| i.reference == reference)
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].digest, s(&sum["digest"]));
    let mut layers: Vec<String> = sum["layers"].as_array().unwrap().iter().map(s).collect();
    layers.push(s(&sum["base_layer"]));
    for l in &layers {
        assert!(v.has_blob(l), "{l} in the store");
        assert_eq!(
            reg.blob_gets(l),
            1,
            "{l} downloaded {} times",
            reg.blob_gets(l)
        );
    }
}

#[test]
fn hostile_layers_from_a_registry_are_refused() {
    let reg = Registry::plain();
    let v = empty_instance();
    let passwd_before = std::fs::read("/etc/passwd").unwrap();
    for case in ["dotdot", "symlink-escape", "hardlink-escape", "absolute"] {
        let canary = format!("vessel-canary-reg-{}-{case}", std::process::id());
        let tag = format!("hostile-{case}:v1");
        reg.put_fixture(case, &tag, &["--canary", &canary], &[]);
        let reference = reg.reference(&tag);
        let pulled = pull(&v, &reference);
        let pulled_ok = pulled.status.success();
        // Refused at pull (the base is unpacked there) or, at the latest,
        // when a container needs the base; with a message either way.
        let out = if pulled.status.success() {
            v.vessel(&["run", "--rm", &reference, "cat", &format!("/srv/{canary}")])
        } else {
            pulled
        };
        if case == "absolute" && out.status.success() {
            // Contained: the absolute path lands inside the image's root.
            assert_eq!(text(&out.stdout), "contained\n");
        } else {
            assert!(!out.status.success(), "{case}: a hostile layer was used");
            let err = text(&out.stderr);
            eprintln!(
                "{case} (refused at {}): {err}",
                if pulled_ok { "run" } else { "pull" }
            );
            assert!(
                ["escape", "outside", "symlink", "unsafe", "hardlink", "absolute",]
                    .iter()
                    .any(|w| err.contains(w)),
                "{case}: the message does not name the problem: {err}"
            );
        }
        for p in [
            format!("/tmp/{canary}"),
            format!("/srv/{canary}"),
            format!("/{canary}"),
        ] {
            assert!(!Path::new(&p).exists(), "{case} wrote {p} on the host");
        }
        let found = files_named(v.path(), &canary);
        assert!(found.is_empty(), "{case}: {found:?}");
        if !pulled_ok {
            assert!(
                image(&v, &reference).is_none(),
                "{case}: listed after a refused pull"
            );
        }
    }
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd_before);
}

#[test]
fn harness_registries_serve_skopeo_with_and_without_auth() {
    let plain = Registry::plain();
    let sum = plain.put_fixture("marker", "h:v1", &["--file", "etc/h=1"], &[]);
    assert_eq!(
        s(&plain.inspect("h:v1", false)["Digest"]),
        s(&sum["digest"])
    );
    let layer = s(&sum["layers"][0]);
    assert!(plain.blob_data(&layer).is_file());

    let private = Registry::with_auth_tls();
    private.put_fixture("marker", "h:v1", &["--file", "etc/h=1"], &[]);
    // Anonymous: refused; the test CA verifies the server.
    let out = skopeo(&[
        "inspect",
        &format!("--cert-dir={}", private.cert_dir().display()),
        &format!("docker://{}", private.reference("h:v1")),
    ]);
    assert!(!out.status.success(), "anonymous inspect succeeded");
    let err = text(&out.stderr).to_lowercase();
    assert!(
        err.contains("unauthorized") || err.contains("authentication required"),
        "{err}"
    );
    // Without the CA: the certificate is not trusted.
    let out = skopeo(&[
        "inspect",
        &format!("--creds={USER}:{PASSWORD}"),
        &format!("docker://{}", private.reference("h:v1")),
    ]);
    assert!(!out.status.success(), "untrusted certificate accepted");
    assert_eq!(
        s(&private.inspect("h:v1", false)["Digest"]),
        s(&sum["digest"])
    );
    let dir = private.dir().to_path_buf();
    drop(private);
    assert!(!dir.exists(), "registry directory removed on drop");
}

#[test]
fn layers_expanding_past_the_unpack_budget_are_refused() {
    let reg = Registry::plain();
    let mut v = Instance::new();
    // The image helper's budget (inherited from `system start`): far above
    // busybox (~2 MiB, ~300 entries), far below the bombs.
    v.set_env("VESSEL_UNPACK_MAX_BYTES", (32u64 << 20).to_string());
    v.set_env("VESSEL_UNPACK_MAX_INODES", "3000");
    v.start();
    // The budget does not refuse a normal image.
    reg.put_fixture("marker", "fine:v1", &["--file", "etc/fine=1"], &[]);
    assert_pulled(&v, &reg.reference("fine:v1"));
    wait_for_bases(&v, 1);
    let bases_before = files_named(&v.path().join("rootfs"), ".ext4").len();
    assert_eq!(
        bases_before, 1,
        "the base of a normal image within the budget"
    );
    for (case, args) in [
        ("bomb", ["--bomb-mib", "96"]),
        ("inode-bomb", ["--bomb-files", "5000"]),
    ] {
        let tag = format!("{case}:v1");
        reg.put_fixture(case, &tag, &args, &[]);
        let reference = reg.reference(&tag);
        let pulled = pull(&v, &reference);
        let out = if pulled.status.success() {
            v.vessel(&["run", "--rm", &reference, "true"])
        } else {
            assert!(
                image(&v, &reference).is_none(),
                "{case}: listed after a refused pull"
            );
            pulled
        };
        assert!(!out.status.success(), "{case}: image past the budget used");
        let err = text(&out.stderr);
        eprintln!("{case}: {err}");
        assert!(err.contains("budget"), "{case}: {err}");
        // Nothing left: no staging directory, no base for it. (The pull's
        // own background build may still be at work on it, after the
        // `run` that failed first: wait for it to give up too.)
        let tmp_dir = v.path().join("tmp");
        let emptied = v.wait_for(Duration::from_secs(60), || names_in(&tmp_dir).is_empty());
        assert!(emptied, "{case}: left in tmp/: {:?}", names_in(&tmp_dir));
        assert_eq!(
            files_named(&v.path().join("rootfs"), ".ext4").len(),
            bases_before,
            "{case}: an ext4 base (or a partial one) was left"
        );
    }
}

#[test]
fn tls_registry_off_loopback_is_verified_with_the_certs_d_ca() {
    // Loopback registries are insecure by design (like Docker's), so the CA
    // is only really checked for a registry on another address.
    let ip = vessel_tests::registry::non_loopback_ipv4()
        .expect("this test needs a non-loopback IPv4 address on the machine");
    let reg = Registry::with_auth_tls_on(&ip);
    reg.put_fixture("marker", "secure:v1", &["--file", "etc/secure=1"], &[]);
    let mut v = Instance::new();
    // Straight to the registry even where a proxy is configured.
    v.set_env("NO_PROXY", &ip);
    v.set_env("no_proxy", &ip);
    v.start();
    let host = reg.host();
    let login = |v: &Instance| {
        v.vessel_stdin(
            &["registry", "login", "-u", USER, "--password-stdin", &host],
            format!("{PASSWORD}\n").as_bytes(),
        )
    };
    let out = login(&v);
    assert!(
        !out.status.success(),
        "login to a registry whose CA is not trusted"
    );
    let err = text(&out.stderr).to_lowercase();
    eprintln!("untrusted CA: {err}");
    assert!(
        err.contains("certificate") || err.contains("tls") || err.contains("issuer"),
        "the error names the TLS problem: {err}"
    );
    reg.trust_in(&v);
    assert_ok(&login(&v), "login with the CA in certs.d");
    assert_pulled(&v, &reg.reference("secure:v1"));
}

/// PIDs of this instance's image helper.
fn image_helpers(v: &Instance) -> Vec<i32> {
    let home = v.path().to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = text(&cmd).replace('\0', " ");
            (cmd.contains("vessel-images") && cmd.contains(&home)).then_some(pid)
        })
        .collect()
}

/// The names in a directory (none when it is missing).
fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every blob in the store holds what its name says.
fn assert_store_verified(v: &Instance) {
    let dir = v.path().join("content/blobs/sha256");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(
            sha256_hex(&data),
            name,
            "blob {name} does not match its digest"
        );
    }
}

#[test]
fn pull_interrupted_by_a_helper_crash_leaves_a_consistent_store() {
    let reg = Registry::plain();
    let sum = reg.put_fixture(
        "big",
        "big:v1",
        &["--layers", "2", "--layer-mib", "8", "--seed", "3"],
        &[],
    );
    let layers: Vec<String> = sum["layers"].as_array().unwrap().iter().map(s).collect();
    // 4 MiB/s per connection: each 8 MiB layer takes about 2 s.
    let proxy = SlowProxy::new(&reg, 4 << 20);
    let v = empty_instance();
    let reference = format!("{}/big:v1", proxy.host());
    let before = image_helpers(&v);
    assert_eq!(before.len(), 1, "one image helper: {before:?}");
    let child = v
        .cmd(&["image", "pull", &reference])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(before[0], libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "pull survived its helper's death");
    assert!(!text(&out.stderr).trim().is_empty(), "no error message");
    for l in &layers {
        assert!(
            !v.has_blob(l),
            "{l} complete before the crash: the test did not interrupt"
        );
    }
    assert_store_verified(&v);
    assert!(
        image(&v, &reference).is_none(),
        "image listed after the crash"
    );

    // The supervisor restarts the helper; the same pull then completes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        let out = pull(&v, &reference);
        if out.status.success() {
            last = None;
            break;
        }
        last = Some(text(&out.stderr));
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(last.is_none(), "pull after the restart: {last:?}");
    let after = image_helpers(&v);
    assert!(!after.contains(&before[0]), "{after:?}");
    assert_eq!(
        image(&v, &reference).map(|i| i.digest),
        Some(s(&sum["digest"]))
    );
    for l in &layers {
        assert!(v.has_blob(l));
    }
    assert_store_verified(&v);
}

/// A pull builds the image's base in the background, right after it: wait
/// (bounded) until `n` bases are in place.
fn wait_for_bases(v: &Instance, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while ext4_bases(v) < n && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn ext4_bases(v: &Instance) -> usize {
    std::fs::read_dir(v.path().join("rootfs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ext4"))
        .count()
}

#[test]
fn rm_and_prune_free_what_no_image_references() {
    let reg = Registry::plain();
    let a = reg.put_fixture("marker", "a:v1", &["--file", "etc/a=a"], &[]);
    let b = reg.put_fixture("layered", "b:v1", &[], &[]);
    let shared = s(&a["base_layer"]);
    assert_eq!(shared, s(&b["base_layer"]));
    let a_layer = s(&a["layers"][0]);
    let v = empty_instance();
    let (ra, rb) = (reg.reference("a:v1"), reg.reference("b:v1"));
    let ia = assert_pulled(&v, &ra);
    let ib = assert_pulled(&v, &rb);
    wait_for_bases(&v, 2);
    assert_eq!(ext4_bases(&v), 2, "one ext4 base per pulled image");

    assert_ok(&v.vessel(&["image", "rm", &ra]), "rm a");
    assert!(!v.has_blob(&a_layer), "a's own layer freed");
    assert!(!v.has_blob(&ia.id), "a's config freed");
    assert!(v.has_blob(&shared), "the layer b still uses is kept");
    assert_eq!(ext4_bases(&v), 1, "a's base freed");

    // Another tag keeps the image alive.
    let rb2 = reg.reference("b:v2");
    assert_ok(&v.vessel(&["image", "tag", &rb, &rb2]), "tag");
    assert_ok(&v.vessel(&["image", "rm", &rb]), "rm b:v1");
    assert_eq!(image(&v, &rb2).map(|i| i.id), Some(ib.id.clone()));
    assert!(v.has_blob(&ib.id) && v.has_blob(&shared));
    assert_eq!(ext4_bases(&v), 1);

    let out = v.vessel(&["image", "prune", "-a", "-f"]);
    assert_ok(&out, "prune -a");
    assert!(v.images().is_empty(), "{:?}", v.images());
    let left = names_in(&v.path().join("content/blobs/sha256"));
    assert!(left.is_empty(), "blobs left after prune -a: {left:?}");
    assert_eq!(ext4_bases(&v), 0, "bases left after prune -a");
}

#[test]
fn a_pull_that_fills_the_disk_fails_clearly_and_leaves_the_store_usable() {
    // The arithmetic: a 48 MiB disk; the big image is busybox (1 MiB) and
    // two layers of 32 MiB (random, so compression saves nothing). Either
    // big layer fits alone, both (65 MiB in all) never do: the pull fails
    // with ENOSPC whatever the order of its parallel downloads. What the
    // rest needs is small: the small image is busybox and one file (1 MiB
    // of blobs, 2.5 MiB of ext4 base, a sparse file), each container under
    // 1 MiB of overlay; the filler writes 80 MiB, more than the whole disk.
    const DISK_MIB: u32 = 48;
    const LAYER_MIB: u32 = 32;
    let reg = Registry::plain();
    let _big = reg.put_fixture(
        "big",
        "big:v1",
        &[
            "--layers",
            "2",
            "--layer-mib",
            &LAYER_MIB.to_string(),
            "--seed",
            "11",
        ],
        &[],
    );
    reg.put_fixture("marker", "small:v1", &["--file", "etc/small=fits"], &[]);
    let disk = SmallDisk::new(DISK_MIB);
    let v = disk.v();
    let before = disk.free();
    assert!(before > u64::from(LAYER_MIB) << 20 && before < u64::from(2 * LAYER_MIB) << 20);

    let reference = reg.reference("big:v1");
    let out = pull(v, &reference);
    assert!(!out.status.success(), "64 MiB of layers on a 48 MiB disk");
    let err = text(&out.stderr);
    assert!(err.contains("No space left on device"), "stderr: {err}");
    // Right when the failed pull returns, not eventually: every download it
    // started has stopped, and nothing it wrote holds on to the space (no
    // file left, and no deleted file a thread still has open).
    disk.assert_given_back(before, "the failed pull");
    assert!(image(v, &reference).is_none(), "listed after a failed pull");
    // Nothing unverified, no partial download holding on to the space, and
    // what the failed pull verified is freed.
    assert_store_verified(v);
    let ingest = names_in(&v.path().join("content/ingest"));
    assert!(ingest.is_empty(), "left in ingest: {ingest:?}");
    let kept = names_in(&v.path().join("content/blobs/sha256"));
    assert!(kept.is_empty(), "blobs of the failed pull kept: {kept:?}");

    // The instance goes on: a small image pulls and runs.
    let small = reg.reference("small:v1");
    assert_pulled(v, &small);
    assert_eq!(run_sh(v, &small, "cat /etc/small"), "fits\n");

    // A container that fills the disk gets I/O errors and ends (QEMU would
    // pause the VM on ENOSPC by default), its exit is recorded, and
    // removing it gives the space back.
    let before_filler = disk.free();
    let mut cmd = v.cmd(&[
        "run",
        "--name",
        "filler",
        "--network",
        "none",
        &small,
        "sh",
        "-c",
        "dd if=/dev/urandom of=/big bs=1M count=80; sync; exit 3",
    ]);
    let out = output_within(&mut cmd, Duration::from_secs(120)).unwrap_or_else(|| {
        panic!(
            "a container on a full disk hung instead of ending\n{}",
            container_logs(v, "filler")
        )
    });
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(disk.free() < 1 << 20, "the filler did not fill the disk");
    let inspect = v.vessel(&["inspect", "filler"]);
    assert_ok(&inspect, "inspect filler");
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(json[0]["state"]["exit_code"], 3, "{json}");
    // Right after `rm` returns: the exit is recorded before the VM has
    // powered off, and a VMM still running holds the deleted overlay.
    assert_ok(&v.vessel(&["rm", "filler"]), "rm filler");
    disk.assert_given_back(before_filler, "`vessel rm` of the filler");
    assert_eq!(run_sh(v, &small, "echo again"), "again\n");
}

/// The state, runtime log and end of the console of container `name`, for
/// a failure message.
fn container_logs(v: &Instance, name: &str) -> String {
    let inspect = v.vessel(&["inspect", name]);
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap_or_default();
    let Some(id) = json[0]["config"]["id"].as_str() else {
        return format!("(no container {name}: {})", text(&inspect.stderr));
    };
    let dir = v.path().join("containers").join(id);
    let tail = |file: &str, lines: usize| {
        let all = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        let v: Vec<&str> = all.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    };
    format!(
        "state: {}\n--- runtime.log\n{}\n--- boot.log (end)\n{}",
        json[0]["state"],
        tail("runtime.log", 40),
        tail("boot.log", 40)
    )
}
