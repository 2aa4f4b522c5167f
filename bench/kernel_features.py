#!/usr/bin/env python3
"""What the guest kernel's additions cost: two kernels side by side in one
run (interleaved rounds), as ratios after / before.

- boot: a bare QEMU boot to poweroff (the boot_overhead.py baseline) and
  `vessel run --rm --network none IMAGE true`, each kernel in its own
  vessel instance;
- guest uptime when the container's process starts;
- size: the vmlinux file, the sizes of its symbols (code, data, bss, the
  KALLSYMS table) and what the booted kernel reports (`Memory:` line of
  dmesg, MemTotal, MemAvailable in a 512 MiB guest);
- an idle container's host CPU (`sleep`, 10 s measured after 3 s).

usage: bench/kernel_features.py --before VMLINUX --after VMLINUX [--runs N]
Needs: VESSEL_INITRD, VESSEL_TEST_IMAGE (as scripts/test.sh sets them) and the
vessel binaries (VESSEL_BIN_DIR, default target/release).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from boot_overhead import IMAGE, ROOT, baseline_cmd, env_path, timed  # noqa: E402


def symbol_sizes(vmlinux):
    """KiB of the kernel's own symbols by kind, from `nm -S` (section sizes
    include the 2 MiB alignment padding that the kernel frees at boot)."""
    out = subprocess.run(["nm", "-S", vmlinux], check=True, stdout=subprocess.PIPE, text=True).stdout
    kinds = {"code": 0, "data": 0, "bss": 0}
    kallsyms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].startswith("kallsyms_"):
            kallsyms.append(int(parts[0], 16))
        if len(parts) != 4:
            continue
        size, kind = int(parts[1], 16), parts[2].lower()
        if kind == "t":
            kinds["code"] += size
        elif kind in "dr":
            kinds["data"] += size
        elif kind == "b":
            kinds["bss"] += size
    # The symbol table KALLSYMS embeds (kallsyms_* have no sizes; the last
    # one, kallsyms_token_index, is 256 u16).
    kinds["kallsyms"] = (max(kallsyms) + 512 - min(kallsyms)) if kallsyms else 0
    return {k: v // 1024 for k, v in kinds.items()}


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


class Side:
    """One kernel, one vessel instance."""

    def __init__(self, name, kernel, work, bindir):
        self.name, self.kernel = name, kernel
        self.home = os.path.join(work, name)
        self.vessel = os.path.join(bindir, "vessel")
        self.env = dict(os.environ, VESSEL_HOME=self.home, VESSEL_KERNEL=kernel)

    def run(self, *args):
        return timed([self.vessel, *args], self.env)

    def start(self, image):
        subprocess.run([self.vessel, "system", "start"], env=self.env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([self.vessel, "image", "load", "-i", image], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
        self.run("run", "--rm", "--network", "none", IMAGE, "true")  # builds the ext4 base once

    def stop(self):
        subprocess.run([self.vessel, "system", "stop"], env=self.env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def memory(self):
        _, out = self.run("run", "--rm", "--network", "none", IMAGE, "sh", "-c",
                          "dmesg | grep 'Memory:'; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo")
        info = {}
        m = re.search(r"Memory: (\d+)K/(\d+)K available \((\d+)K kernel code, (\d+)K rwdata, (\d+)K rodata, "
                      r"(\d+)K init, (\d+)K bss, (\d+)K reserved", out)
        if m:
            keys = ["available", "total", "code", "rwdata", "rodata", "init", "bss", "reserved"]
            info.update({k: int(v) for k, v in zip(keys, m.groups())})
        for k in ("MemTotal", "MemAvailable"):
            m = re.search(rf"{k}:\s+(\d+) kB", out)
            if m:
                info[k] = int(m.group(1))
        return info

    def idle_cpu(self, seconds=10):
        cid = subprocess.run([self.vessel, "run", "-d", "--network", "none", IMAGE, "sleep", "600"],
                             env=self.env, check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
        try:
            time.sleep(3)
            with open(os.path.join(self.home, "containers", cid, "state.json")) as f:
                pid = json.load(f)["vmm_pid"]
            hz = os.sysconf("SC_CLK_TCK")
            t0, c0 = time.monotonic(), cpu_ticks(pid)
            time.sleep(seconds)
            t1, c1 = time.monotonic(), cpu_ticks(pid)
            return (c1 - c0) / hz / (t1 - t0) * 100
        finally:
            subprocess.run([self.vessel, "rm", "-f", cid], env=self.env, stdout=subprocess.DEVNULL)


def row(label, before, after, fmt="{:.3f}"):
    mb, ma = statistics.median(before), statistics.median(after)
    ratio = ma / mb if mb else float("nan")
    return (f"| {label} | {fmt.format(mb)} ({fmt.format(min(before))}–{fmt.format(max(before))}) "
            f"| {fmt.format(ma)} ({fmt.format(min(after))}–{fmt.format(max(after))}) | {ratio:.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="vmlinux without the additions")
    ap.add_argument("--after", required=True, help="vmlinux with them")
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    for k in (args.before, args.after):
        if not os.path.exists(k):
            sys.exit(f"{k} does not exist; build it with guest/kernel/build.sh")
    env_path("VESSEL_INITRD")
    image = env_path("VESSEL_TEST_IMAGE")
    bindir = os.environ.get("VESSEL_BIN_DIR", os.path.join(ROOT, "target/release"))
    work = tempfile.mkdtemp(prefix="vessel-bench-kernel-")
    sides = [Side("before", args.before, work, bindir), Side("after", args.after, work, bindir)]
    bare = {s.name: [] for s in sides}
    runs = {s.name: [] for s in sides}
    uptime = {s.name: [] for s in sides}
    try:
        init = os.path.join(work, "poweroff")
        subprocess.run(["gcc", "-static", "-O2", "-o", init, os.path.join(ROOT, "bench/poweroff_init.c")],
                       check=True)
        base_initrd = os.path.join(work, "baseline.img")
        subprocess.run([os.path.join(ROOT, "guest/initramfs/build.sh"), init, base_initrd], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for s in sides:
            s.start(image)
        for i in range(args.runs):
            order = sides if i % 2 == 0 else sides[::-1]
            for s in order:
                bare[s.name].append(timed(baseline_cmd(s.kernel, base_initrd))[0])
            for s in order:
                runs[s.name].append(s.run("run", "--rm", "--network", "none", IMAGE, "true")[0])
            for s in order:
                _, out = s.run("run", "--rm", "--network", "none", IMAGE, "cat", "/proc/uptime")
                uptime[s.name].append(float(out.split()[0]))
        mem = {s.name: s.memory() for s in sides}
        idle = {s.name: [] for s in sides}
        for _ in range(2):
            for s in sides:
                idle[s.name].append(s.idle_cpu())
    finally:
        for s in sides:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)

    b, a = "before", "after"
    print(f"accelerator: {os.environ.get('VESSEL_ACCEL') or 'tcg'}, runs: {args.runs}")
    print(f"before: {args.before}")
    print(f"after:  {args.after}")
    print()
    print("| measure | before: median (min–max) | after: median (min–max) | after / before |")
    print("|---|---|---|---|")
    print(row("bare QEMU boot + poweroff (s)", bare[b], bare[a]))
    print(row("`vessel run --rm --network none IMAGE true` (s)", runs[b], runs[a]))
    print(row("guest uptime when the process runs (s)", uptime[b], uptime[a], "{:.2f}"))
    print(row("idle container, host CPU of QEMU (% of a core)", idle[b], idle[a], "{:.1f}"))
    print()
    print("| size | before | after | after / before |")
    print("|---|---|---|---|")
    fb, fa = os.path.getsize(args.before), os.path.getsize(args.after)
    print(f"| vmlinux file (KiB) | {fb // 1024} | {fa // 1024} | {fa / fb:.2f} |")
    sb, sa = symbol_sizes(args.before), symbol_sizes(args.after)
    for key, label in (("code", "code (text symbols)"), ("data", "data and read-only data symbols"),
                       ("bss", "bss symbols"), ("kallsyms", "KALLSYMS symbol table")):
        ratio = f"{sa[key] / sb[key]:.2f}" if sb[key] else "new"
        print(f"| {label} (KiB) | {sb[key]} | {sa[key]} | {ratio} |")
    labels = [("rodata", "rodata"), ("init", "init (freed after boot)"), ("reserved", "reserved at boot"),
              ("MemTotal", "MemTotal"), ("MemAvailable", "MemAvailable after boot")]
    for key, label in labels:
        vb, va = mem[b].get(key), mem[a].get(key)
        if vb and va:
            print(f"| booted: {label} (KiB) | {vb} | {va} | {va / vb:.2f} |")


if __name__ == "__main__":
    main()
