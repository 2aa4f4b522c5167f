#!/usr/bin/env python3
"""Pack a root filesystem directory into a single-layer OCI image layout
archive (a tar holding oci-layout, index.json and blobs/sha256/...).

Deterministic: entries sorted, mtimes fixed (SOURCE_DATE_EPOCH, default 0),
owners numeric 0:0 except paths under home/<user> given by --user-home,
gzip header without name/mtime. Rebuilding the same rootfs yields the same
digests. Standard library only.

Usage: make_oci.py ROOTFS_DIR OUTPUT.tar [--name busybox] [--tag latest]
                   [--user-home home/vessel:1000:1000] [--volume /data]
                   [--healthcheck 'CMD-SHELL test -f /tmp/ok' [--health-interval-ns N]
                    [--health-retries N]]
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def walk_sorted(root):
    """Yield relative paths (parents before children), sorted bytewise."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            out.append(rel)
    # Sorting by path components keeps parents before children.
    out.sort(key=lambda p: [c.encode() for c in p.split(os.sep)])
    return out


def owner_for(rel, user_homes):
    for prefix, uid, gid in user_homes:
        if rel == prefix or rel.startswith(prefix + "/"):
            return uid, gid
    return 0, 0


def build_layer(root, user_homes):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in walk_sorted(root):
            full = os.path.join(root, rel)
            st = os.lstat(full)
            info = tarfile.TarInfo(rel)
            info.mtime = EPOCH
            info.uid, info.gid = owner_for(rel, user_homes)
            info.uname = info.gname = ""
            info.mode = stat.S_IMODE(st.st_mode)
            data = None
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
                info.mode = 0o777
            elif stat.S_ISREG(st.st_mode):
                info.type = tarfile.REGTYPE
                info.size = st.st_size
                data = open(full, "rb")
            else:
                sys.exit(f"make_oci.py: unsupported file type: {full}")
            try:
                tar.addfile(info, data)
            finally:
                if data:
                    data.close()
    raw = buf.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=9) as z:
        z.write(raw)
    return raw, gz.getvalue()


def add_bytes(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = EPOCH
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar, name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mtime = EPOCH
    info.mode = 0o755
    info.uname = info.gname = ""
    tar.addfile(info)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rootfs")
    ap.add_argument("output")
    ap.add_argument("--name", default="busybox")
    ap.add_argument("--tag", default="latest")
    ap.add_argument("--user-home", action="append", default=[],
                    help="PATH:UID:GID, owner for PATH and everything below it (default owner 0:0)")
    ap.add_argument("--volume", action="append", default=[],
                    help="a VOLUME of the image's config (an absolute path)")
    ap.add_argument("--healthcheck",
                    help="the image's Healthcheck: NONE, 'CMD-SHELL COMMAND...' or 'CMD PROG ARGS...'")
    ap.add_argument("--health-interval-ns", type=int, default=0)
    ap.add_argument("--health-timeout-ns", type=int, default=0)
    ap.add_argument("--health-retries", type=int, default=0)
    args = ap.parse_args()

    healthcheck = None
    if args.healthcheck is not None:
        kind, _, rest = args.healthcheck.strip().partition(" ")
        if kind == "NONE":
            test = ["NONE"]
        elif kind == "CMD-SHELL":
            test = ["CMD-SHELL", rest]
        elif kind == "CMD":
            test = ["CMD"] + rest.split()
        else:
            ap.error(f"--healthcheck: unknown kind {kind!r} (NONE, CMD or CMD-SHELL)")
        healthcheck = {"Test": test}
        for key, value in (("Interval", args.health_interval_ns),
                           ("Timeout", args.health_timeout_ns),
                           ("Retries", args.health_retries)):
            if value:
                healthcheck[key] = value

    user_homes = []
    for spec in args.user_home:
        path, uid, gid = spec.rsplit(":", 2)
        user_homes.append((path.strip("/"), int(uid), int(gid)))

    raw, gz = build_layer(args.rootfs, user_homes)
    diff_id = "sha256:" + sha256(raw)
    layer_digest = "sha256:" + sha256(gz)

    config = {
        "created": "1970-01-01T00:00:00Z" if EPOCH == 0 else
        __import__("datetime").datetime.utcfromtimestamp(EPOCH).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                f"VESSEL_IMAGE={args.name}",
            ],
            "Cmd": ["sh"],
            "WorkingDir": "/",
            **({"Volumes": {v: {} for v in args.volume}} if args.volume else {}),
            **({"Healthcheck": healthcheck} if healthcheck else {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z",
                     "created_by": "vessel images/busybox/build.sh (Debian busybox-static)"}],
    }
    config_bytes = canon(config)
    config_digest = "sha256:" + sha256(config_bytes)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": MT_LAYER, "digest": layer_digest, "size": len(gz)}],
    }
    manifest_bytes = canon(manifest)
    manifest_digest = "sha256:" + sha256(manifest_bytes)

    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "org.opencontainers.image.ref.name": args.tag,
                "io.containerd.image.name": f"localhost/{args.name}:{args.tag}",
            },
        }],
    }

    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, "." + os.path.basename(args.output) + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                add_dir(tar, "blobs")
                add_dir(tar, "blobs/sha256")
                blobs = sorted([
                    (config_digest, config_bytes),
                    (layer_digest, gz),
                    (manifest_digest, manifest_bytes),
                ])
                for digest, data in blobs:
                    add_bytes(tar, "blobs/sha256/" + digest.split(":", 1)[1], data)
                add_bytes(tar, "index.json", canon(index))
                add_bytes(tar, "oci-layout", canon({"imageLayoutVersion": "1.0.0"}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    print(f"make_oci.py: manifest {manifest_digest} layer {layer_digest}", file=sys.stderr)


if __name__ == "__main__":
    main()
