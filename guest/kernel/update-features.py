#!/usr/bin/env python3
"""Add what a guest probe report offers to the [offered] section of
guest/kernel/features.list, after a deliberate kernel change.

usage: guest/kernel/update-features.py REPORT [--list FILE]

REPORT is the guest report the end-to-end test keeps
(target/tmp/kernel-features/guest.txt) or the output of
`vessel run --rm IMAGE /probe`. Keys the guest offers that the list does not
have are added to [offered] (kept sorted); nothing is ever removed: keys the
list offers that the report lacks, and omitted patterns the guest now
offers, are printed for a person to decide (edit vessel.config, or move the
key to an [omitted] section with its reason).
"""
import argparse
import fnmatch
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def read_report(path):
    offered = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split(" ", 2)
            if len(parts) >= 2 and ":" in parts[0]:
                offered[parts[0]] = parts[1] == "yes"
    return offered


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("--list", default=os.path.join(HERE, "features.list"))
    args = ap.parse_args()

    report = read_report(args.report)
    with open(args.list) as f:
        lines = f.read().splitlines()

    section, start, end = None, None, len(lines)
    offered, omitted = [], []
    for i, raw in enumerate(lines):
        line = raw.strip()
        if line == "[offered]":
            section, start = "offered", i
            continue
        if line.startswith("["):
            if section == "offered":
                end = i
            section = line
            continue
        if not line or line.startswith("#"):
            continue
        if section == "offered":
            offered.append(line)
        elif section:
            omitted.append((line, section))
    if start is None:
        sys.exit(f"{args.list}: no [offered] section")
    # The [offered] block ends at its last key, before any comment of the
    # next section.
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1

    have = set(offered)
    new = sorted(k for k, yes in report.items()
                 if yes and not k.startswith("info:") and k not in have
                 and not any(fnmatch.fnmatchcase(k, p) for p, _ in omitted))
    stale = sorted(k for k, yes in report.items()
                   if yes and any(fnmatch.fnmatchcase(k, p) for p, s in omitted if s.startswith("[omitted]")))
    missing = sorted(k for k in offered if not report.get(k, False))

    keys = sorted(have | set(new))
    body = [l for l in lines[start + 1:end] if l.strip().startswith("#")]
    lines[start + 1:end] = body + keys
    with open(args.list + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(args.list + ".tmp", args.list)

    print(f"added {len(new)} keys to [offered]")
    for k in new:
        print(f"  + {k}")
    if missing:
        print(f"{len(missing)} offered keys are not offered by this report (decide each; nothing removed):")
        for k in missing:
            print(f"  ? {k}")
    if stale:
        print(f"{len(stale)} keys the report offers match an [omitted] pattern (move them to [offered]):")
        for k in stale:
            print(f"  ! {k}")


if __name__ == "__main__":
    main()
