#!/usr/bin/env python3
"""Write the seed corpora under fuzz/corpus/<target>/ (committed; rerun to
regenerate). Small inputs that reach the interesting paths of each target."""
import gzip, hashlib, io, json, os, subprocess, tarfile, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def tar_of(entries, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for e in entries:
            name, kind = e[0], e[1]
            ti = tarfile.TarInfo(name)
            ti.mtime = 1600000000
            data = b""
            if kind == "file":
                data = e[2]
                ti.size = len(data)
                ti.mode = e[3] if len(e) > 3 else 0o644
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
            elif kind == "sym":
                ti.type = tarfile.SYMTYPE
                ti.linkname = e[2]
            elif kind == "hard":
                ti.type = tarfile.LNKTYPE
                ti.linkname = e[2]
            elif kind == "chr":
                ti.type = tarfile.CHRTYPE
                ti.devmajor, ti.devminor = 1, 3
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            if len(e) > 4:
                ti.pax_headers = e[4]
            if len(e) > 5:
                ti.uid, ti.gid = e[5]
            t.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()

# reference
for i, s in enumerate([
    "busybox", "alpine:3.19", "localhost:5000/team/app:v1", "ghcr.io/o/r@sha256:" + "a" * 64,
    "quay.io/a/b:c@sha256:" + "0" * 64, "docker.io/library/debian:bookworm-slim",
    "[::1]:5000/x", "127.0.0.1:5000/a/b/c:1.0-rc_1", "UPPER/case", "a//b", "x:", "@sha256:",
]):
    put("reference", f"seed{i}", s)

# manifest (first byte picks the content type)
layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "1" * 64, "size": 10}
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "2" * 64, "size": 5},
            "layers": [layer]}
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "3" * 64, "size": 7,
     "platform": {"architecture": "amd64", "os": "linux"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "4" * 64, "size": 7,
     "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "5" * 64, "size": 7,
     "platform": {"architecture": "unknown", "os": "unknown"}}]}
config = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "User": "1:1"},
          "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "6" * 64]}}
schema1 = {"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}
for i, (sel, doc) in enumerate([(3, manifest), (2, index), (1, config), (4, index), (5, manifest), (6, schema1), (0, {"manifests": None})]):
    put("manifest", f"seed{i}", bytes([sel]) + json.dumps(doc).encode())

# unpack
put("unpack", "basic", tar_of([
    ("etc/", "dir"), ("etc/hello", "file", b"hi\n"), ("etc/link", "sym", "/etc/hello"),
    ("etc/hard", "hard", "etc/hello"), ("bin/su", "file", b"x", 0o4755),
    ("dev/null", "chr"), ("run/fifo", "fifo"),
    ("bin/ping", "file", b"p", 0o755, {"SCHILY.xattr.user.k": "v"}),
    ("home/u", "file", b"u", 0o600, {"uid": "3000000", "gid": "3000001"}),
]))
put("unpack", "whiteouts", tar_of([
    ("a/", "dir"), ("a/x", "file", b"x"), ("a/.wh..wh..opq", "file", b""), (".wh.b", "file", b""),
    ("c/.wh.d", "file", b""),
]))
put("unpack", "hostile", tar_of([
    ("up", "sym", "../../"), ("up/evil", "file", b"e"), ("/abs/x", "file", b"a"),
    ("h", "hard", "/etc/passwd"), ("../x", "file", b"x"),
], fmt=tarfile.GNU_FORMAT))
put("unpack", "gzip", gzip.compress(tar_of([("f", "file", b"0" * 1000), ("g/", "dir")]), mtime=0))
with tempfile.TemporaryDirectory() as d:
    src = os.path.join(d, "sparse")
    with open(src, "wb") as f:
        f.seek(200000)
        f.write(b"end")
    out = os.path.join(d, "s.tar")
    subprocess.run(["tar", "--sparse", "--format=gnu", "-C", d, "-cf", out, "sparse"], check=True)
    with open(out, "rb") as f:
        put("unpack", "gnu_sparse", f.read())

# archive_load: a tiny OCI layout and the same image as a docker save
layer_tar = tar_of([("hello", "file", b"hi\n")], fmt=tarfile.USTAR_FORMAT)
def sha(b): return "sha256:" + hashlib.sha256(b).hexdigest()
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"]},
                  "rootfs": {"type": "layers", "diff_ids": [sha(layer_tar)]}}).encode()
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(cfg), "size": len(cfg)},
                  "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer_tar), "size": len(layer_tar)}]}).encode()
idx = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "digest": sha(man), "size": len(man),
                  "annotations": {"io.containerd.image.name": "localhost/f:1", "org.opencontainers.image.ref.name": "1"}}]}).encode()
def archive(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()
blob = lambda b: ("blobs/sha256/" + hashlib.sha256(b).hexdigest(), b)
put("archive_load", "oci", archive([("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", idx),
                                    blob(man), blob(cfg), blob(layer_tar)]))
dock = json.dumps([{"Config": "c.json", "RepoTags": ["f:1"], "Layers": ["l/layer.tar"]}]).encode()
put("archive_load", "docker", archive([("manifest.json", dock), ("c.json", cfg), ("l/layer.tar", layer_tar)]))
