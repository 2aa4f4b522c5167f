#!/usr/bin/env python3
"""Side-by-side: `vessel run --rm IMAGE true` against a bare QEMU boot of the
same kernel with an init that powers off at once, interleaved in one run.
Also: guest uptime when the container's process starts, and the host RSS of
one idle container's processes beside its guest memory size.

usage: bench/boot_overhead.py [--runs N]
Needs: VESSEL_KERNEL, VESSEL_INITRD, VESSEL_TEST_IMAGE (as scripts/test.sh
sets them) and the debug or release binaries (VESSEL_BIN_DIR, default
target/release).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from sides import env_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "localhost/busybox:latest"


def host_tsc_khz():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return None


def accel():
    return os.environ.get("VESSEL_ACCEL") or "tcg"


def baseline_cmd(kernel, initrd):
    append = "console=ttyS0 quiet panic=-1 reboot=t"
    khz = host_tsc_khz()
    if khz:
        append += f" tsc_early_khz={khz}"
    acc = ["-accel", "kvm", "-cpu", "host"] if accel() == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    return [
        "qemu-system-x86_64", "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off,memory-backend=mem",
        "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-m", "512", *acc,
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "null", "-no-reboot",
        "-kernel", kernel, "-initrd", initrd, "-append", append,
    ]


def timed(cmd, env=None):
    t = time.monotonic()
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    dt = time.monotonic() - t
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return dt, r.stdout.decode()


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    kernel, initrd, image = env_path("VESSEL_KERNEL"), env_path("VESSEL_INITRD"), env_path("VESSEL_TEST_IMAGE")
    bindir = os.environ.get("VESSEL_BIN_DIR", os.path.join(ROOT, "target/release"))
    vessel = os.path.join(bindir, "vessel")
    work = tempfile.mkdtemp(prefix="vessel-bench-")
    home = os.path.join(work, "home")
    env = dict(os.environ, VESSEL_HOME=home)
    try:
        # The baseline initramfs: same builder, an init that powers off.
        init = os.path.join(work, "poweroff")
        subprocess.run(["gcc", "-static", "-O2", "-o", init, os.path.join(ROOT, "bench/poweroff_init.c")], check=True)
        base_initrd = os.path.join(work, "baseline.img")
        subprocess.run([os.path.join(ROOT, "guest/initramfs/build.sh"), init, base_initrd], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([vessel, "system", "start"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([vessel, "image", "load", "-i", image], env=env, check=True, stdout=subprocess.DEVNULL)
        timed([vessel, "run", "--rm", IMAGE, "true"], env)  # builds the ext4 base once
        bare, ours, uptimes = [], [], []
        for _ in range(args.runs):
            bare.append(timed(baseline_cmd(kernel, base_initrd))[0])
            ours.append(timed([vessel, "run", "--rm", IMAGE, "true"], env)[0])
        for _ in range(max(3, args.runs // 2)):
            _, out = timed([vessel, "run", "--rm", IMAGE, "cat", "/proc/uptime"], env)
            uptimes.append(float(out.split()[0]))
        # One idle container: RSS of its host processes.
        cid = subprocess.run([vessel, "run", "-d", "--memory", "512m", IMAGE, "sleep", "600"], env=env,
                             check=True, stdout=subprocess.PIPE).stdout.decode().strip()
        time.sleep(3)
        with open(os.path.join(home, "containers", cid, "state.json")) as f:
            state = json.load(f)
        procs = {"vessel-runtime": state.get("runtime_pid"), "qemu": state.get("vmm_pid")}
        rss = {k: rss_kb(v) for k, v in procs.items() if v}
        subprocess.run([vessel, "rm", "-f", cid], env=env, stdout=subprocess.DEVNULL)
    finally:
        subprocess.run([vessel, "system", "stop"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    print(f"accelerator: {accel()}, runs: {args.runs}")
    print("| measure | median | min | max |")
    print("|---|---|---|---|")
    print(f"| bare QEMU boot + poweroff (s) | {med(bare):.3f} | {min(bare):.3f} | {max(bare):.3f} |")
    print(f"| `vessel run --rm IMAGE true` (s) | {med(ours):.3f} | {min(ours):.3f} | {max(ours):.3f} |")
    print(f"| ratio vessel / bare | {med(ours) / med(bare):.2f} | | |")
    print(f"| stack cost above the VM (s) | {med(ours) - med(bare):.3f} | | |")
    print(f"| guest uptime when the process runs (s) | {med(uptimes):.2f} | {min(uptimes):.2f} | {max(uptimes):.2f} |")
    total = sum(rss.values())
    print()
    print("Idle container (`sleep 600`, --memory 512m), host RSS:")
    for k, v in rss.items():
        print(f"- {k}: {v / 1024:.1f} MiB")
    print(f"- total: {total / 1024:.1f} MiB for a 512 MiB guest ({100 * total / (512 * 1024):.0f}% of guest memory)")


if __name__ == "__main__":
    main()
