#!/usr/bin/env python3
"""Compare the guest kernel's configuration with Debian's own kernel for the
same source version, and check that every option Debian enables and the
guest does not is a decision listed in guest/kernel/config-omitted.list.

usage: guest/kernel/compare-config.py [--ours CONFIG] [--debian CONFIG]
                                      [--list FILE] [--show-decided]

--ours    the guest's .config (default: the one guest/kernel/build.sh built
          for the current fragment, next to its vmlinux)
--debian  Debian's config (default: /boot/config-* from the linux-image
          package that linux-image-amd64 depends on, downloaded once with
          `apt-get download` and cached under $VESSEL_CACHE/debian-config)

Each option is placed by the Kconfig file that defines it (read from
/usr/src/linux-source-6.1.tar.xz, cached), so the list can decide whole
areas at once: `kconfig:drivers/gpu/*` or `CONFIG_NFT_*`. The list has the
format of guest/kernel/features.list: `[omitted] REASON` sections of
patterns, `*` matching any run of characters.

Exit status: 0 when every difference is decided, 1 when some are not (they
are printed with their Kconfig file), 2 on a usage or setup error.
"""
import argparse
import fnmatch
import glob
import os
import re
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("VESSEL_CACHE", "/var/cache/vessel")
SOURCE = "/usr/src/linux-source-6.1.tar.xz"


def die(msg):
    print(f"compare-config: error: {msg}", file=sys.stderr)
    sys.exit(2)


def log(msg):
    print(f"compare-config: {msg}", file=sys.stderr)


def read_config(path):
    """{SYMBOL: value} of the options set (y, m, strings, numbers)."""
    out = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"CONFIG_([A-Za-z0-9_]+)=(.*)", line)
            if m:
                out[m.group(1)] = m.group(2)
    return out


def our_config():
    try:
        vmlinux = subprocess.run([os.path.join(HERE, "build.sh")], check=True,
                                 stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
    except (subprocess.CalledProcessError, IndexError):
        die("guest/kernel/build.sh failed; run it to see why, or pass --ours CONFIG")
    path = os.path.join(os.path.dirname(vmlinux), "config")
    if not os.path.exists(path):
        die(f"{path} not found next to {vmlinux}; rebuild the kernel or pass --ours CONFIG")
    return path


def debian_config():
    try:
        deps = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], check=True,
                              stdout=subprocess.PIPE, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        die("`apt-cache depends linux-image-amd64` failed; run apt-get update, or pass --debian CONFIG")
    m = re.search(r"Depends: (linux-image-(\S+)-amd64)\b", deps)
    if not m:
        die("cannot tell which linux-image package linux-image-amd64 depends on; pass --debian CONFIG")
    package, abi = m.group(1), m.group(2)
    cached = os.path.join(CACHE, "debian-config", f"config-{abi}-amd64")
    if os.path.exists(cached):
        return cached
    log(f"downloading {package} (once) to read its /boot/config-{abi}-amd64")
    with tempfile.TemporaryDirectory(prefix="vessel-debconfig-") as tmp:
        r = subprocess.run(["apt-get", "download", package], cwd=tmp,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        debs = glob.glob(os.path.join(tmp, "*.deb"))
        if r.returncode != 0 or not debs:
            die(f"apt-get download {package} failed: {r.stderr.strip()}; pass --debian CONFIG")
        subprocess.run(["dpkg-deb", "-x", debs[0], os.path.join(tmp, "x")], check=True)
        found = glob.glob(os.path.join(tmp, "x", "boot", "config-*"))
        if not found:
            die(f"{package} has no /boot/config-*")
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        with open(found[0]) as src, open(cached + ".tmp", "w") as dst:
            dst.write(src.read())
        os.replace(cached + ".tmp", cached)
    return cached


def source_version():
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "linux-source-6.1"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return r.stdout.strip() or "unknown"


def kconfig_rank(path):
    """Which definition names a symbol defined in several Kconfig files:
    x86's own first, then generic code, then other architectures."""
    if path.startswith("arch/x86/") or path == "arch/Kconfig":
        return 0
    if not path.startswith("arch/"):
        return 1
    return 2


def kconfig_map():
    """{SYMBOL: Kconfig path} from the kernel source, cached per version."""
    cached = os.path.join(CACHE, "kernel", f"kconfig-map-v2-{source_version()}.tsv")
    if os.path.exists(cached):
        with open(cached) as f:
            return dict(line.rstrip("\n").split("\t", 1) for line in f if "\t" in line)
    if not os.path.exists(SOURCE):
        die(f"{SOURCE} not found; run: apt-get install linux-source-6.1")
    log(f"reading the Kconfig files of {SOURCE} (once)")
    defs = {}
    with tarfile.open(SOURCE, "r:xz") as tar:
        for member in tar:
            name = member.name.split("/", 1)[-1]
            if not os.path.basename(name).startswith("Kconfig") or not member.isfile():
                continue
            text = tar.extractfile(member).read().decode(errors="replace")
            for m in re.finditer(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)", text, re.M):
                sym = m.group(1)
                if sym not in defs or kconfig_rank(name) < kconfig_rank(defs[sym]):
                    defs[sym] = name
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    with open(cached + ".tmp", "w") as f:
        for sym, path in sorted(defs.items()):
            f.write(f"{sym}\t{path}\n")
    os.replace(cached + ".tmp", cached)
    return defs


def read_list(path):
    """[(pattern, reason, line)] of the [omitted] sections."""
    out, reason = [], None
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("[omitted]"):
                reason = line[len("[omitted]"):].strip()
                if not reason:
                    die(f"{path}:{n}: an [omitted] section needs its reason on the same line")
                continue
            if line.startswith("["):
                die(f"{path}:{n}: unknown section {line!r}; this list has only [omitted] REASON sections")
            if reason is None:
                die(f"{path}:{n}: pattern {line!r} before any [omitted] section")
            if not (line.startswith("CONFIG_") or line.startswith("kconfig:")):
                die(f"{path}:{n}: expected CONFIG_NAME or kconfig:PATH (with * allowed), got {line!r}")
            out.append((line, reason, n))
    return out


def decide(sym, kconfig, decisions):
    for pattern, reason, n in decisions:
        subject = f"kconfig:{kconfig}" if pattern.startswith("kconfig:") else f"CONFIG_{sym}"
        if fnmatch.fnmatchcase(subject, pattern):
            return pattern, reason, n
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ours")
    ap.add_argument("--debian")
    ap.add_argument("--list", default=os.path.join(HERE, "config-omitted.list"))
    ap.add_argument("--show-decided", action="store_true",
                    help="also print every decided option with its reason")
    args = ap.parse_args()

    ours_path = args.ours or our_config()
    deb_path = args.debian or debian_config()
    ours, deb = read_config(ours_path), read_config(deb_path)
    kmap = kconfig_map()
    decisions = read_list(args.list)

    enabled = lambda v: v in ("y", "m")  # noqa: E731
    missing = sorted(s for s, v in deb.items() if enabled(v) and not enabled(ours.get(s, "")))
    extra = sorted(s for s, v in ours.items() if enabled(v) and not enabled(deb.get(s, "")))
    both = sum(1 for s, v in deb.items() if enabled(v) and enabled(ours.get(s, "")))

    by_reason, undecided, used = {}, [], set()
    for sym in missing:
        k = kmap.get(sym, "?")
        d = decide(sym, k, decisions)
        if d is None:
            undecided.append((sym, deb[sym], k))
            continue
        used.add(d[2])
        by_reason.setdefault(d[1], []).append(sym)

    # An exact CONFIG_ entry for an option the guest now has is stale.
    stale = [(p, n) for p, _, n in decisions
             if "*" not in p and p.startswith("CONFIG_") and enabled(ours.get(p[len("CONFIG_"):], ""))]

    print(f"guest:  {ours_path}")
    print(f"debian: {deb_path}")
    print(f"options Debian enables (y or m): {sum(1 for v in deb.values() if enabled(v))}; "
          f"the guest has {both} of them and {len(extra)} Debian does not")
    print(f"Debian enables, the guest does not: {len(missing)}, "
          f"decided {len(missing) - len(undecided)}, undecided {len(undecided)}")
    print()
    print("| reason (guest/kernel/config-omitted.list) | options |")
    print("|---|---|")
    for reason, syms in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        print(f"| {reason} | {len(syms)} |")
    if args.show_decided:
        print()
        for reason, syms in sorted(by_reason.items()):
            print(f"[{reason}]")
            for s in syms:
                print(f"  CONFIG_{s}={deb[s]}  ({kmap.get(s, '?')})")
    unused = [(p, n) for p, _, n in decisions if n not in used]
    if unused:
        print()
        print(f"{len(unused)} patterns of the list match nothing today (kept, harmless):")
        for p, n in unused:
            print(f"  line {n}: {p}")
    status = 0
    if stale:
        status = 1
        print()
        print("stale: listed as omitted, but the guest enables it (remove the line):")
        for p, n in stale:
            print(f"  line {n}: {p}")
    if undecided:
        status = 1
        print()
        print("undecided: Debian enables these, the guest does not, and no line of the list decides them.")
        print("Add each to guest/kernel/vessel.config, or to config-omitted.list under a reason:")
        for sym, val, k in undecided:
            print(f"  CONFIG_{sym}={val}  ({k})")
    return status


if __name__ == "__main__":
    sys.exit(main())
