#!/usr/bin/env python3
"""Fault injection, the long run (issue 11): the end-to-end test
tests/tests/faults.rs run longer than CI's round. While worker threads run
`run --rm`, `run -d` (some `--restart always` / `on-failure`), `stop`,
`rm -f`, `pull` from a loopback registry, `exec` and `ls`, SIGKILL hits the
apiserver, vessel-images, vessel-network, a vessel-runtime, a QEMU or the
CLI in the middle of a command; after each
injection the test waits (bounded) for the instance to recover and checks
its invariants (`ls` tells the truth, nothing leaks, restart policies hold,
the CLI never panics, every listed image runs).

This driver builds the binaries and the test, runs the test binary itself
with VESSEL_FAULT_INJECTIONS (and VESSEL_FAULT_SEED to replay a round),
keeps its whole output in a log file, and prints a summary of the report
line the test ends with (`FAULTS-REPORT {json}`): injections per
component, violations, leaks, recoveries and their times, the operations
the workers made.

usage: bench/faults.py [--injections 400] [--seed N] [--recovery-secs 20]
                       [--log FILE] [--no-build] [--json]
Needs: VESSEL_KERNEL, VESSEL_INITRD, VESSEL_TEST_IMAGE (as scripts/test.sh
sets them; `source /work/notes/env.sh` or scripts/test.sh's lines), root,
and the host's tools of the end-to-end tests (docker-registry, skopeo, nft).
It takes the CPU for a long time (about 6 s per injection under TCG): run
it while nothing else heavy runs.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from sides import env_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST = "sigkill_anywhere_leaves_the_truth_and_no_leaks"
COMPONENTS = ["apiserver", "images", "network", "runtime", "qemu", "cli"]


def build():
    """The debug binaries (the test runs them from its target dir) and the
    test binary; the test binary's path."""
    subprocess.run(["cargo", "build", "--workspace", "--bins"], cwd=ROOT, check=True)
    out = subprocess.run(
        ["cargo", "test", "-p", "vessel-tests", "--test", "faults", "--no-run", "--message-format=json"],
        cwd=ROOT, check=True, stdout=subprocess.PIPE).stdout.decode()
    for line in out.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "faults" \
                and m.get("executable"):
            return m["executable"]
    sys.exit("cargo did not name the faults test binary")


def find_built():
    deps = os.path.join(ROOT, "target", "debug", "deps")
    cands = [os.path.join(deps, f) for f in os.listdir(deps)
             if f.startswith("faults-") and os.access(os.path.join(deps, f), os.X_OK)
             and not f.endswith(".d")]
    if not cands:
        sys.exit("no built faults test in target/debug/deps: run without --no-build")
    return max(cands, key=os.path.getmtime)


def cleanup(deps, home):
    """Stop an interrupted round's instance: its containers, its services,
    then every process whose command line names its home or its run
    directory."""
    bindir = os.path.dirname(deps)
    env = dict(os.environ, VESSEL_HOME=home)
    vessel = os.path.join(bindir, "vessel")
    ids = subprocess.run([vessel, "ls", "-aq"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         timeout=60).stdout.decode().split()
    if ids:
        subprocess.run([vessel, "rm", "-f", *ids], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)
    subprocess.run([vessel, "system", "stop"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=120)
    subprocess.run([os.path.join(bindir, "vessel-network"), "--home", home, "--cleanup"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if home in cmd:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
    shutil.rmtree(home, ignore_errors=True)
    print(f"interrupted: stopped the instance {home}", file=sys.stderr)


def ms(v):
    return "-" if v is None else f"{v / 1000:.1f} s"


def summary(r, log, wall):
    print(f"fault injection: {r['injections_total']} injections, seed {r['seed']}, "
          f"{r['duration_s']} s ({wall:.0f} s with the build and setup); log: {log}")
    print()
    rec = r["recoveries"]
    by = rec.get("by_component", {})
    print(f"{'component':<11} {'injections':>10} {'skipped':>8} {'recovered':>9} {'mean':>8} {'max':>8}")
    for c in COMPONENTS:
        b = by.get(c, {})
        print(f"{c:<11} {r['injections'].get(c, 0):>10} {r['skipped'].get(c, 0):>8} {b.get('count', 0):>9} "
              f"{ms(b.get('mean_ms')):>8} {ms(b.get('max_ms')):>8}")
    print()
    print(f"recovery (SIGKILL -> every invariant holds): n={rec['count']} mean {ms(rec['mean_ms'])}, "
          f"p50 {ms(rec['p50_ms'])}, p95 {ms(rec['p95_ms'])}, max {ms(rec['max_ms'])}")
    st = r.get("settle", {})
    print(f"of which after the workers' operations in flight had ended: mean {ms(st.get('mean_ms'))}, "
          f"max {ms(st.get('max_ms'))} (the recovery bound is on this part)")
    print(f"violations: {r['violations']}   leaks: {r['leaks']}   "
          f"keeper (--restart always) came back: {r['keeper_comebacks']} times   "
          f"boots longer than the bound: {r.get('slow_boots', 0)}   "
          f"clear CLI errors while the apiserver was down: {r['cli_errors_while_apiserver_down']}   "
          f"image runs: {r['image_runs']}")
    ops = ", ".join(f"{k} {v['ok']}/{v['ok'] + v['failed']}" for k, v in sorted(r["ops"].items()))
    print(f"worker operations (succeeded/made): {ops}")
    for v in r["violation_list"]:
        print(f"  VIOLATION: {v}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--injections", type=int, default=400)
    ap.add_argument("--seed", type=int, help="replay the round of this seed")
    ap.add_argument("--recovery-secs", type=int, default=20, help="the bound for recovering from one fault")
    ap.add_argument("--log", default=None, help="where the test's whole output goes")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    a = ap.parse_args()
    for v in ("VESSEL_KERNEL", "VESSEL_INITRD", "VESSEL_TEST_IMAGE"):
        env_path(v)
    if os.geteuid() != 0:
        sys.exit("bench/faults.py runs as root (TAP devices, nftables)")
    t0 = time.monotonic()
    binary = find_built() if a.no_build else build()
    env = dict(os.environ, VESSEL_FAULT_INJECTIONS=str(a.injections),
               VESSEL_FAULT_RECOVERY_SECS=str(a.recovery_secs))
    if a.seed is not None:
        env["VESSEL_FAULT_SEED"] = str(a.seed)
    log = a.log or os.path.join(ROOT, "build", f"faults-{time.strftime('%Y%m%d-%H%M%S')}.log")
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    report, home = None, None
    with open(log, "w") as f:
        p = subprocess.Popen([binary, TEST, "--exact", "--nocapture", "--test-threads=1"], cwd=ROOT,
                             env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            for raw in p.stdout:
                line = raw.decode(errors="replace")
                f.write(line)
                f.flush()
                if line.startswith("faults: home "):
                    home = line[len("faults: home "):].strip()
                if line.startswith("FAULTS-REPORT "):
                    report = json.loads(line[len("FAULTS-REPORT "):])
                elif line.startswith("faults: [") or "VIOLATION" in line or "faults: seed" in line:
                    sys.stderr.write(line)
        except KeyboardInterrupt:
            # A test killed by a signal runs no cleanup: stop its instance
            # here (`system stop`, then whatever names its home).
            p.terminate()
            p.wait()
            if home:
                cleanup(os.path.dirname(binary), home)
            raise
        finally:
            p.wait()
    if report is None:
        sys.exit(f"the test ended ({p.returncode}) without its report; see {log}")
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        summary(report, log, time.monotonic() - t0)
    sys.exit(0 if report["violations"] == 0 and p.returncode == 0 else 1)


if __name__ == "__main__":
    main()
