#!/usr/bin/env python3
"""Soak (issue 11): --sequential `vessel run --rm IMAGE true` one after
another, then --rounds rounds of --width at once, on one instance; every
other container on the default bridge network, the rest without a network.

This runs the end-to-end test tests/tests/soak.rs, which CI runs with a
short round, at the length given here, and prints its report: failures
(the goal is 0), run times, and the resident memory (RSS) and open
descriptors of the supervisor, the apiserver, vessel-images and
vessel-network at the first sample (after 4 warm-up containers) and the
last (after every container was removed). The test itself fails if a run
failed, anything was left behind (containers, processes, TAP devices,
leases), a service was restarted, its descriptors grew by more than 2 or
its RSS by more than a quarter (at least 8 MiB).

Needs VESSEL_KERNEL, VESSEL_INITRD and VESSEL_TEST_IMAGE as scripts/test.sh
sets them (`source` the lines of scripts/test.sh that export them, or run
scripts/test.sh once), and root for the bridge network.

usage: bench/soak.py [--sequential 1000] [--rounds 100] [--width 8] [--json]
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequential", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--json", action="store_true", help="print the report as JSON only")
    args = ap.parse_args()
    for name in ("VESSEL_KERNEL", "VESSEL_INITRD", "VESSEL_TEST_IMAGE"):
        if not os.path.exists(os.environ.get(name, "")):
            sys.exit(f"{name} must point at an existing file (see scripts/test.sh)")
    env = dict(os.environ,
               VESSEL_SOAK_SEQUENTIAL=str(args.sequential),
               VESSEL_SOAK_ROUNDS=str(args.rounds),
               VESSEL_SOAK_WIDTH=str(args.width))
    subprocess.run(["cargo", "build", "--workspace", "--bins"], cwd=ROOT, check=True)
    started = time.monotonic()
    p = subprocess.run(
        ["cargo", "test", "-p", "vessel-tests", "--test", "soak", "--", "--nocapture",
         "--test-threads=1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    wall = time.monotonic() - started
    report = None
    for line in p.stdout.splitlines():
        # The test harness may print "test NAME ... " before it.
        if "SOAK_REPORT " in line:
            report = json.loads(line.split("SOAK_REPORT ", 1)[1])
    if report is None:
        sys.stdout.write(p.stdout)
        sys.exit(f"the soak test printed no report (exit {p.returncode})")
    report["test_passed"] = p.returncode == 0
    report["wall_secs"] = wall
    if args.json:
        print(json.dumps(report))
    else:
        print(f"containers: {report['containers']} ({report['sequential']} sequential, "
              f"{report['rounds']} rounds of {report['width']}), failures: {report['failures']}")
        print(f"sequential: {report['sequential_secs']:.0f} s, run p50 {report['run_p50']:.2f} s, "
              f"p95 {report['run_p95']:.2f} s, max {report['run_max']:.2f} s")
        print(f"parallel: {report['parallel_secs']:.0f} s, round p50 {report['round_p50']:.2f} s, "
              f"max {report['round_max']:.2f} s")
        print(f"{'service':<16}{'RSS first':>12}{'RSS last':>12}{'fds first':>11}{'fds last':>10}")
        for s in report["services"]:
            print(f"{s['name']:<16}{s['rss_kib_first']:>9} KiB{s['rss_kib_last']:>9} KiB"
                  f"{s['fds_first']:>11}{s['fds_last']:>10}")
        print("test:", "passed" if report["test_passed"] else "FAILED (see its output above)")
    if p.returncode != 0:
        sys.stdout.write(p.stdout)
    sys.exit(0 if p.returncode == 0 else 1)


if __name__ == "__main__":
    main()
