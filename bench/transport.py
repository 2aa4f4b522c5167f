#!/usr/bin/env python3
"""The agent transport, side by side: two vessel instances, each with its
own binaries and initramfs (e.g. before: main's, vhost-device-vsock; after:
this tree's, virtio-serial + mux), measured interleaved in one run:

- `vessel run --rm IMAGE true` wall time;
- `vessel cp` of a 64 MiB file into and out of a running container;
- `vessel exec C cat FILE` of 64 MiB to /dev/null on the host.

usage: bench/transport.py --before BIN_DIR:INITRD --after BIN_DIR:INITRD [--runs N]
Needs VESSEL_KERNEL and VESSEL_TEST_IMAGE (as scripts/test.sh sets them).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from sides import env_path

IMAGE = "localhost/busybox:latest"
MIB = 64


def timed(cmd, env, stdout=subprocess.DEVNULL):
    t = time.monotonic()
    r = subprocess.run(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE, timeout=300)
    dt = time.monotonic() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return dt


class Side:
    def __init__(self, name, spec, work):
        bindir, initrd = spec.split(":", 1)
        self.name = name
        self.vessel = os.path.join(bindir, "vessel")
        self.home = os.path.join(work, name)
        self.env = dict(os.environ, VESSEL_HOME=self.home, VESSEL_INITRD=os.path.abspath(initrd))
        self.times = {"run --rm true": [], "cp in": [], "cp out": [], "exec cat": []}

    def v(self, *args, stdout=subprocess.DEVNULL):
        return timed([self.vessel, *args], self.env, stdout)

    def start(self, image, blob):
        self.v("system", "start")
        self.v("image", "load", "-i", image)
        self.v("run", "--rm", IMAGE, "true")  # builds the ext4 base once
        out = subprocess.run([self.vessel, "run", "-d", IMAGE, "sleep", "3600"], env=self.env,
                             stdout=subprocess.PIPE, check=True)
        self.cid = out.stdout.decode().strip()
        self.blob = blob
        self.v("cp", blob, f"{self.cid}:/blob")

    def round(self, out_dir):
        self.times["run --rm true"].append(self.v("run", "--rm", IMAGE, "true"))
        self.times["cp in"].append(self.v("cp", self.blob, f"{self.cid}:/in"))
        dest = os.path.join(out_dir, f"{self.name}.out")
        self.times["cp out"].append(self.v("cp", f"{self.cid}:/blob", dest))
        if os.path.getsize(dest) != MIB << 20:
            sys.exit(f"{self.name}: cp out gave {os.path.getsize(dest)} bytes")
        os.unlink(dest)
        self.times["exec cat"].append(self.v("exec", self.cid, "cat", "/blob"))

    def stop(self):
        subprocess.run([self.vessel, "rm", "-f", getattr(self, "cid", "none")], env=self.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([self.vessel, "system", "stop"], env=self.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    image = env_path("VESSEL_TEST_IMAGE")
    env_path("VESSEL_KERNEL")
    work = tempfile.mkdtemp(prefix="vessel-transport-")
    sides = [Side("before", args.before, work), Side("after", args.after, work)]
    try:
        blob = os.path.join(work, "blob")
        with open(blob, "wb") as f:
            f.write(os.urandom(MIB << 20))
        for s in sides:
            s.start(image, blob)
        for _ in range(args.runs):
            for s in sides:
                s.round(work)
        print(f"{args.runs} rounds, interleaved; median (min-max) seconds; MB/s of the median for {MIB} MiB")
        for what in sides[0].times:
            row = [f"{what:14}"]
            for s in sides:
                xs = s.times[what]
                med = statistics.median(xs)
                rate = "" if what.startswith("run") else f" = {MIB * 1.048576 / med:5.1f} MB/s"
                row.append(f"{s.name}: {med:6.2f} ({min(xs):.2f}-{max(xs):.2f}){rate}")
            print("  ".join(row))
    finally:
        for s in sides:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
