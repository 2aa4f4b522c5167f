#!/usr/bin/env python3
"""Pull of a multi-layer image from a loopback registry: `vessel image pull`
against `skopeo copy docker://... oci:DIR` of the same image, interleaved in
one run; the time until every layer blob is in vessel's store and until the
ext4 base is ready; and whether a second `vessel run` of the image does any
unpack work.

The image is built here (tests/fixtures/make_registry_images.py big): the
busybox layer plus --layers layers of --layer-mib MiB of random,
incompressible data each (seeded, so every run builds the same image),
pushed with skopeo to Debian's docker-registry on 127.0.0.1 (filesystem
storage in a temporary directory). Every vessel pull starts from a fresh
VESSEL_HOME (empty store); every skopeo copy into a fresh directory.

usage: bench/pull.py [--runs N] [--layers L] [--layer-mib M] [--json]
Needs: VESSEL_KERNEL, VESSEL_INITRD, VESSEL_TEST_IMAGE (as scripts/test.sh
sets them), docker-registry, skopeo, and the vessel binaries (VESSEL_BIN_DIR,
default target/release). Everything it starts is stopped at the end.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from sides import env_path, free_port, kill_matching

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests/fixtures/make_registry_images.py")


def run(cmd, env=None, quiet=True, check=True):
    r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE if quiet else None, stderr=subprocess.PIPE)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r


class Registry:
    def __init__(self, work):
        self.dir = os.path.join(work, "registry")
        os.makedirs(self.dir)
        self.port = free_port()
        cfg = os.path.join(self.dir, "config.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {self.dir}/storage\n"
                    f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: vessel-bench\n")
        self.log = open(os.path.join(self.dir, "registry.log"), "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("docker-registry exited; see " + self.log.name)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not answer /v2/")
            time.sleep(0.05)

    def host(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


class Watch:
    """Poll a VESSEL_HOME: when every expected blob is in the store and when
    the first ext4 base is in place (bases are renamed into place, so their
    appearance is the moment they are ready)."""

    def __init__(self, home, blobs, t0):
        self.home, self.blobs, self.t0 = home, [b.split(":", 1)[1] for b in blobs], t0
        self.blobs_at = self.base_at = None
        self.stop_flag = False
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def base_path(self):
        d = os.path.join(self.home, "rootfs")
        try:
            for n in os.listdir(d):
                if n.endswith(".ext4") and not n.startswith("."):
                    return os.path.join(d, n)
        except OSError:
            pass
        return None

    def loop(self):
        bdir = os.path.join(self.home, "content", "blobs", "sha256")
        while not self.stop_flag and (self.blobs_at is None or self.base_at is None):
            now = time.monotonic() - self.t0
            if self.blobs_at is None and all(os.path.exists(os.path.join(bdir, h)) for h in self.blobs):
                self.blobs_at = now
            if self.base_at is None and self.base_path():
                self.base_at = now
            time.sleep(0.005)

    def finish(self, grace=0.05, base_timeout=120):
        """Stop watching once the base is ready (the pull returns when the
        blobs are verified; the base is built right after, in the
        background)."""
        time.sleep(grace)
        deadline = time.monotonic() + base_timeout
        while self.base_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        self.stop_flag = True
        self.thread.join()


def vessel_env(home, cfg):
    return dict(os.environ, VESSEL_HOME=home, VESSEL_CONFIG=os.path.join(cfg, "vessel"),
                DOCKER_CONFIG=os.path.join(cfg, "docker"))


def vessel_round(vessel, work, i, ref, blobs, with_runs):
    home = os.path.join(work, f"home{i}")
    cfg = os.path.join(work, f"cfg{i}")
    os.makedirs(os.path.join(cfg, "docker"))
    env = vessel_env(home, cfg)
    res = {}
    try:
        run([vessel, "system", "start"], env)
        store = os.path.join(home, "content", "blobs", "sha256")
        if os.path.isdir(store) and os.listdir(store):
            raise RuntimeError("the fresh store is not empty")
        t0 = time.monotonic()
        w = Watch(home, blobs, t0)
        run([vessel, "image", "pull", ref], env)
        res["pull"] = time.monotonic() - t0
        w.finish()
        res["blobs"] = w.blobs_at
        res["base_at_pull"] = w.base_at
        if with_runs:
            t = time.monotonic()
            run([vessel, "run", "--rm", ref, "true"], env)
            res["run1"] = time.monotonic() - t
            base = w.base_path()
            if base is None:
                raise RuntimeError("no ext4 base after the first run")
            st1 = os.stat(base)
            t = time.monotonic()
            run([vessel, "run", "--rm", ref, "true"], env)
            res["run2"] = time.monotonic() - t
            st2 = os.stat(base)
            res["base_untouched"] = (st1.st_ino, st1.st_mtime_ns, st1.st_size) == (
                st2.st_ino, st2.st_mtime_ns, st2.st_size)
            res["bases"] = len([n for n in os.listdir(os.path.join(home, "rootfs"))
                                if n.endswith(".ext4") and not n.startswith(".")])
            res["base_size"] = st2.st_size
            res["base_allocated"] = st2.st_blocks * 512
    finally:
        run([vessel, "system", "stop"], env, check=False)
        kill_matching([home])
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(cfg, ignore_errors=True)
    return res


def skopeo_round(work, i, ref):
    out = os.path.join(work, f"oci{i}")
    t = time.monotonic()
    run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{out}:latest"])
    dt = time.monotonic() - t
    shutil.rmtree(out, ignore_errors=True)
    return dt


def fmt(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a | | "
    return f"{statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--layer-mib", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="also print the raw numbers as JSON")
    args = ap.parse_args()
    env_path("VESSEL_KERNEL")
    env_path("VESSEL_INITRD")
    base = env_path("VESSEL_TEST_IMAGE")
    bindir = os.environ.get("VESSEL_BIN_DIR", os.path.join(ROOT, "target/release"))
    vessel = os.path.join(bindir, "vessel")
    if not os.access(vessel, os.X_OK):
        sys.exit(f"{vessel} missing: cargo build --release --bins (or set VESSEL_BIN_DIR)")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    work = tempfile.mkdtemp(prefix="vessel-bench-pull-")
    reg = None
    try:
        layout = os.path.join(work, "layout")
        summary = json.loads(run(["python3", FIXTURE, "big", layout, "--base", base,
                                  "--layers", str(args.layers), "--layer-mib", str(args.layer_mib),
                                  "--seed", str(args.seed)]).stdout)
        blobs = [summary["base_layer"]] + summary["layers"]
        size = sum(os.path.getsize(os.path.join(layout, "blobs/sha256", b.split(":", 1)[1])) for b in blobs)
        reg = Registry(work)
        ref = f"{reg.host()}/big:latest"
        run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{ref}"])
        shutil.rmtree(layout)

        sk, ve = [], []
        for i in range(args.runs):
            last = i == args.runs - 1
            if i % 2 == 0:
                sk.append(skopeo_round(work, i, ref))
                ve.append(vessel_round(vessel, work, i, ref, blobs, last))
            else:
                ve.append(vessel_round(vessel, work, i, ref, blobs, last))
                sk.append(skopeo_round(work, i, ref))
    finally:
        if reg:
            reg.stop()
        shutil.rmtree(work, ignore_errors=True)

    pulls = [r["pull"] for r in ve]
    ratio = statistics.median(pulls) / statistics.median(sk)
    last = ve[-1]
    print(f"image: {len(blobs)} layers, {size / 2**20:.1f} MiB compressed "
          f"({args.layers} x {args.layer_mib} MiB random + busybox), runs: {args.runs}, "
          f"accelerator: {os.environ.get('VESSEL_ACCEL') or 'tcg'}")
    print()
    print("| measure | median | min | max |")
    print("|---|---|---|---|")
    print(f"| `skopeo copy docker://… oci:DIR` (s) | {fmt(sk)} |")
    print(f"| `vessel image pull` (s) | {fmt(pulls)} |")
    print(f"| ratio vessel / skopeo | {ratio:.2f} | | |")
    print(f"| vessel: every layer blob verified in the store (s) | {fmt([r['blobs'] for r in ve])} |")
    print(f"| vessel: ext4 base ready, from the start of the pull (s) | {fmt([r['base_at_pull'] for r in ve])} |")
    print(f"| vessel: of which building the base after the blobs (s) | "
          f"{fmt([r['base_at_pull'] - r['blobs'] if r['base_at_pull'] and r['blobs'] else None for r in ve])} |")
    blob_ratio = statistics.median([r["blobs"] for r in ve if r["blobs"]] or [float("nan")]) / statistics.median(sk)
    print(f"| ratio vessel blobs-in-store / skopeo | {blob_ratio:.2f} | | |")
    print()
    if last.get("base_at_pull") is None:
        print("The ext4 base was not built by the pull; the first run built it.")
    print(f"Last round: first `vessel run --rm IMAGE true` {last['run1']:.2f} s, "
          f"second {last['run2']:.2f} s; ext4 base ({last['base_size'] / 2**20:.0f} MiB apparent, "
          f"{last['base_allocated'] / 2**20:.0f} MiB allocated) "
          f"{'untouched (same inode, mtime, size)' if last['base_untouched'] else 'CHANGED'} "
          f"by the second run; {last['bases']} base(s) in the store.")
    if args.json:
        print(json.dumps({"skopeo": sk, "vessel": ve, "ratio": ratio, "compressed_bytes": size}))


if __name__ == "__main__":
    main()
