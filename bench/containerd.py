#!/usr/bin/env python3
"""containerd with vessel's shim against containerd with runc, side by side.

Starts a containerd of its own (root, state and socket in a temporary
directory, as tests/tests/containerd.rs does; never the system's), imports
the offline busybox image (VESSEL_TEST_IMAGE), then alternates, run by run,

    ctr run --rm --runtime io.containerd.vessel.v2 IMAGE ID true
    ctr run --rm --runtime io.containerd.runc.v2   IMAGE ID true

and prints p50 and mean of each and the ratio vessel / runc (p50). One run
at a time: light on the CPU.

usage: bench/containerd.py [--runs 5] [--json]
Needs VESSEL_KERNEL, VESSEL_INITRD, VESSEL_TEST_IMAGE (scripts/test.sh
builds them), containerd and ctr (scripts/install-deps.sh), runc, and
containerd-shim-vessel-v2 with vessel-runtime in VESSEL_BIN_DIR (default
target/release). containerd, its shims and VMs and the directory go at the
end, also on error or Ctrl-C.
"""
import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sides  # noqa: E402

RUNTIMES = {"vessel": "io.containerd.vessel.v2", "runc": "io.containerd.runc.v2"}


class Containerd:
    def __init__(self, work, bindir):
        self.dir = work
        self.sock = os.path.join(work, "c.sock")
        self.child = None
        self.bindir = bindir

    def setup(self, image):
        d = self.dir
        with open(os.path.join(d, "config.toml"), "w") as f:
            f.write(f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
                    f'[grpc]\n  address = "{self.sock}"\n[ttrpc]\n  address = "{self.sock}.ttrpc"\n')
        env = dict(os.environ, PATH=f"{self.bindir}:{os.environ.get('PATH', '')}",
                   VESSEL_SHIM_ROOT=os.path.join(d, "shim"))
        log = open(os.path.join(d, "containerd.log"), "wb")
        self.child = subprocess.Popen(["containerd", "--config", os.path.join(d, "config.toml")], env=env,
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.sock):
            if time.monotonic() > deadline or self.child.poll() is not None:
                raise RuntimeError("containerd did not start: " + open(os.path.join(d, "containerd.log")).read())
            time.sleep(0.05)
        sides.must(subprocess.run(self.argv("images", "import", image), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE), "ctr images import")

    def argv(self, *args):
        return ["ctr", "-a", self.sock, *args]

    def teardown(self):
        # Shims (their -address is our socket), runtimes, VMs, virtiofsd.
        sides.kill_matching([self.sock, os.path.join(self.dir, "shim"), os.path.join(self.dir, "state")])
        if self.child is not None:
            self.child.kill()
            self.child.wait()
        # Snapshot and rootfs mounts left under the directory.
        with open("/proc/self/mounts") as f:
            targets = [ln.split()[1] for ln in f if ln.split()[1].startswith(self.dir)]
        for t in sorted(targets, key=len, reverse=True):
            subprocess.run(["umount", "-l", t], stderr=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", self.dir])
        # runc's state root for the namespace (ctr gives runc no other): it
        # goes if empty, as its parents (a system containerd keeps them).
        for d in ("/run/containerd/runc/default", "/run/containerd/runc", "/run/containerd"):
            try:
                os.rmdir(d)
            except OSError:
                break


def timed(argv):
    t = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=300)
    dt = time.perf_counter() - t
    sides.must(r, " ".join(argv))
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    sides.env_path("VESSEL_KERNEL")
    sides.env_path("VESSEL_INITRD")
    image = sides.env_path("VESSEL_TEST_IMAGE")
    bindir = os.path.abspath(os.environ.get("VESSEL_BIN_DIR", os.path.join(sides.ROOT, "target/release")))
    if not os.path.exists(os.path.join(bindir, "containerd-shim-vessel-v2")):
        sys.exit(f"no containerd-shim-vessel-v2 in {bindir}: cargo build --release --bins, or set VESSEL_BIN_DIR")
    if subprocess.run(["which", "containerd", "ctr", "runc"], stdout=subprocess.DEVNULL).returncode != 0:
        sys.exit("containerd, ctr and runc are needed: scripts/install-deps.sh installs them")

    def leave(sig, _frame):
        raise KeyboardInterrupt(f"signal {sig}")

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGHUP, leave)
    work = tempfile.mkdtemp(prefix="vessel-bench-ctrd-", dir="/tmp")
    c = Containerd(work, bindir)
    times = {k: [] for k in RUNTIMES}
    try:
        c.setup(image)
        for i in range(a.runs):
            for k, runtime in RUNTIMES.items():
                times[k].append(timed(c.argv("run", "--fifo-dir", os.path.join(c.dir, "fifo"), "--rm", "--runtime", runtime, sides.IMAGE, f"{k}-{i}", "true")))
    finally:
        c.teardown()
    out = {
        "command": " ".join(shlex.quote(x) for x in sys.argv),
        "runs": a.runs,
        "load_average": os.getloadavg()[0],
        "ctr_run_rm_true": {k: {"p50_s": statistics.median(x), "mean_s": statistics.mean(x), "all_s": x}
                            for k, x in times.items()},
    }
    out["vessel_over_runc"] = out["ctr_run_rm_true"]["vessel"]["p50_s"] / out["ctr_run_rm_true"]["runc"]["p50_s"]
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"command: {out['command']} (load average {out['load_average']:.1f})")
    for k, r in out["ctr_run_rm_true"].items():
        runs = ", ".join(f"{x:.2f}" for x in r["all_s"])
        print(f"ctr run --rm {RUNTIMES[k]:24} true: p50 {r['p50_s']:.3f} s, mean {r['mean_s']:.3f} s ({runs})")
    print(f"vessel / runc (p50): {out['vessel_over_runc']:.1f}x")


if __name__ == "__main__":
    main()
