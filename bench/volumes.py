#!/usr/bin/env python3
"""Data in containers (issue 10): the same I/O in each place a container
keeps files, vessel against podman + runc (no VM), side by side in one
run, rounds interleaved, with ratios.

Places (the directory the workload runs in):
  vessel rootfs   /work in the container's own root (qcow2 overlay, virtio-blk)
  vessel bind     -v HOSTDIR:/work (virtio-fs, a virtiofsd for this VM)
  vessel volume   -v NAME:/work (a block volume: ext4 image, virtio-blk)
  vessel shared   -v NAME:/work of a `--opt backing=shared` volume (virtio-fs)
  podman rootfs   /work in the container's root (overlayfs)
  podman bind     -v HOSTDIR:/work (the host's filesystem straight)

Workload, timed inside the container (the guest's
clock is kept in step with the host's; busybox sh's $EPOCHREALTIME, in
microseconds) so that neither the VM's boot nor `exec` is in it:
  seq write   dd 256 MiB (--mib) of zeros in 1 MiB blocks, then `sync FILE`
              (written through to the host: fsync reaches the host's disk)
  seq read    the page caches dropped (the guest's and the host's: each
              side reads from its backing store), dd the file to /dev/null
  small files create --files empty files (a shell loop of `: > f`), stat
              them all (`ls -l`), delete them all (`rm`); ops/s = 3 *
              files / the time of the three steps

Reported: the median over --rounds rounds of each place, MB/s (10^6
bytes) and ops/s, and the ratios the issue sets goals for: block volume /
vessel rootfs (goal >= 0.9x), bind mount / block volume for sequential I/O
(goal >= 0.5x), each place / podman's bind mount, and the small-file
ratios.

usage: bench/volumes.py [--mib 256] [--files 5000] [--rounds 3] [--only PLACES] [--json]
Needs: VESSEL_KERNEL, VESSEL_INITRD, VESSEL_TEST_IMAGE (as scripts/test.sh
sets them), the vessel binaries (VESSEL_BIN_DIR, default target/release),
virtiofsd, podman and runc (scripts/install-deps.sh installs them); root.
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

from sides import IMAGE, PODMAN_LIMITS, Podman, Vessel, must, prepare

PLACES = ["vessel rootfs", "vessel bind", "vessel volume", "vessel shared", "podman rootfs", "podman bind"]

# One round in one place; prints `name seconds` lines. $1 MiB, $2 files.
# `drop` is done from outside between write and read (see read_phase).
WRITE = r'''
set -e
now() { t=$EPOCHREALTIME; echo "${t%.*}${t#*.}"; }
mkdir -p /work/b && cd /work/b
t0=$(now); dd if=/dev/zero of=big bs=1M count=$1 2>/dev/null; sync big; t1=$(now)
echo "write $(( (t1 - t0)))"
mkdir -p small && cd small
t0=$(now); i=0; while [ $i -lt $2 ]; do : > f$i; i=$((i + 1)); done; t1=$(now)
ls -l > /dev/null; t2=$(now)
rm -f f*; t3=$(now)
echo "create $(( (t1 - t0)))"
echo "stat $(( (t2 - t1)))"
echo "delete $(( (t3 - t2)))"
'''
READ = r'''
set -e
now() { t=$EPOCHREALTIME; echo "${t%.*}${t#*.}"; }
cd /work/b
t0=$(now); dd if=big of=/dev/null bs=1M 2>/dev/null; t1=$(now)
echo "read $(( (t1 - t0)))"
rm -f big
'''


def drop_host_caches():
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def parse(out):
    r = {}
    for line in out.decode().splitlines():
        k, _, v = line.partition(" ")
        if v.strip().isdigit():
            r[k] = int(v) / 1e6
    return r


class Place:
    """One place: a long-running container whose /work is that place; each
    phase is an `exec` into it."""

    def __init__(self, side, kind, work):
        self.side, self.kind, self.name = side, kind, f"bench-v-{side.name}-{kind}"
        self.label = f"{side.name} {kind}"
        self.hostdir = os.path.join(work, f"bind-{side.name}")
        self.volume = f"benchvol-{kind}"

    def start(self):
        flags = []
        if self.kind == "bind":
            os.makedirs(self.hostdir, exist_ok=True)
            flags = ["-v", f"{self.hostdir}:/work"]
        elif self.kind == "volume":
            self.side.run("volume", "create", self.volume)
            flags = ["-v", f"{self.volume}:/work"]
        elif self.kind == "shared":
            self.side.run("volume", "create", "--opt", "backing=shared", self.volume)
            flags = ["-v", f"{self.volume}:/work"]
        extra = PODMAN_LIMITS if isinstance(self.side, Podman) else ["--memory", "1g"]
        self.side.run("run", "-d", "--name", self.name, "--network", "none", *extra, *flags, IMAGE,
                      "sleep", "1000000", timeout=300)

    def sh(self, script, *args):
        r = self.side.run("exec", self.name, "sh", "-c", script, "sh", *map(str, args), timeout=3600)
        return parse(must(r, f"{self.label}: exec").stdout)

    def drop_caches(self):
        if isinstance(self.side, Vessel):
            self.side.run("exec", self.name, "sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches")
        drop_host_caches()

    def round(self, mib, files):
        r = self.sh(WRITE, mib, files)
        self.drop_caches()
        r.update(self.sh(READ))
        return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(PLACES), help="comma-separated places (see above)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    only = [p.strip() for p in a.only.split(",") if p.strip()]
    if set(only) - set(PLACES):
        sys.exit(f"--only takes {', '.join(PLACES)}")
    bindir, image = prepare()
    # Under the host's /var/tmp rather than /tmp: a tmpfs /tmp would make
    # podman's bind mount a memory benchmark.
    work = tempfile.mkdtemp(prefix="vessel-bench-volumes-", dir="/var/tmp")
    vessel, podman = Vessel(work, bindir, image), Podman(work, image)
    sides = {"vessel": vessel, "podman": podman}
    places = [Place(sides[p.split()[0]], p.split()[1], work) for p in only]
    results = {p.label: [] for p in places}
    load_before = os.getloadavg()
    try:
        for s in {p.side for p in places}:
            s.setup()
        for p in places:
            p.start()
        for i in range(a.rounds):
            # Interleaved, the order turned each round.
            order = places if i % 2 == 0 else list(reversed(places))
            for p in order:
                r = p.round(a.mib, a.files)
                results[p.label].append(r)
                print(f"round {i + 1} {p.label}: " + ", ".join(f"{k} {v:.2f} s" for k, v in r.items()),
                      file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for s in sides.values():
            try:
                s.teardown()
            except Exception as e:
                print(f"cleanup of {s.name}: {e}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)

    mb = a.mib * (1 << 20) / 1e6
    summary = {}
    for label, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        summary[label] = {
            "write_MBps": mb / med["write"],
            "read_MBps": mb / med["read"],
            "small_ops_per_s": 3 * a.files / (med["create"] + med["stat"] + med["delete"]),
            "create_s": med["create"], "stat_s": med["stat"], "delete_s": med["delete"],
        }
    report = {"load_before": load_before, "load_after": os.getloadavg(), "mib": a.mib, "files": a.files,
              "rounds": a.rounds, "places": summary}
    if a.json:
        print(json.dumps(report, indent=2))
        return
    print(f"accelerator: {os.environ.get('VESSEL_ACCEL') or 'tcg (unless KVM works)'}; load average before "
          f"{load_before[0]:.2f}, after {report['load_after'][0]:.2f}; {a.mib} MiB, {a.files} files, "
          f"median of {a.rounds} rounds")
    print(f"{'place':16} {'write MB/s':>11} {'read MB/s':>10} {'small ops/s':>12}")
    for label, s in summary.items():
        print(f"{label:16} {s['write_MBps']:11.1f} {s['read_MBps']:10.1f} {s['small_ops_per_s']:12.0f}")

    def ratio(a_, b_, key):
        if a_ in summary and b_ in summary:
            return f"{summary[a_][key] / summary[b_][key]:.2f}x"
        return "n/a"

    print()
    for a_, b_, goal in [("vessel volume", "vessel rootfs", "goal >= 0.9x"),
                         ("vessel bind", "vessel volume", "goal >= 0.5x for sequential I/O"),
                         ("vessel shared", "vessel volume", ""),
                         ("vessel rootfs", "podman rootfs", ""),
                         ("vessel bind", "podman bind", ""),
                         ("vessel volume", "podman bind", "")]:
        print(f"{a_} / {b_}: write {ratio(a_, b_, 'write_MBps')}, read {ratio(a_, b_, 'read_MBps')}, "
              f"small files {ratio(a_, b_, 'small_ops_per_s')}  {goal}")


if __name__ == "__main__":
    main()
