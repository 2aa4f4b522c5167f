#!/usr/bin/env python3
"""Side-by-side: `vessel run --rm --no-template IMAGE true` (a cold boot:
VM templates, bench/templates.py, skip the boot) against a bare QEMU boot of
the same kernel with an init that powers off at once, interleaved in one run.
Also: guest uptime when the container's process starts, the host memory of
one idle container's processes (RSS and PSS) beside its guest memory size,
and how long the host takes to get back 300 MiB of the 400 MiB a container
filled and freed (free page reporting).

With --previous-kernel (and --previous-tb-mib), a second vessel instance
runs the previous guest kernel and TCG translation cache, the bare boot
also runs with the previous machine line (no RTC, ACPI), and every measure
is taken for both, interleaved, in the same run. (The previous side's VMs
still get the current machine line: only the kernel and the cache differ.)

usage: bench/boot_overhead.py [--runs N] [--previous-kernel VMLINUX]
                              [--previous-tb-mib MIB]
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

from sides import env_path, meminfo_kib as meminfo_kb, pss_kib as pss_kb

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


# The machine and command line of a container VM (crates/runtime/src/vmm.rs),
# and those before issue 12 (no RTC, ACPI): the bare boots use them.
MACHINE = "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off,memory-backend=mem"
APPEND = "console=ttyS0 quiet panic=-1 reboot=t tsc=reliable acpi=off lapic_bus_hz=1000000000"
PREVIOUS_MACHINE = "microvm,x-option-roms=off,isa-serial=on,rtc=off,memory-backend=mem"
PREVIOUS_APPEND = "console=ttyS0 quiet panic=-1 reboot=t tsc=reliable"


def baseline_cmd(kernel, initrd, previous=False):
    append = PREVIOUS_APPEND if previous else APPEND
    khz = host_tsc_khz()
    if khz:
        append += f" tsc_early_khz={khz}"
    acc = ["-accel", "kvm", "-cpu", "host"] if accel() == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    return [
        "qemu-system-x86_64", "-M", PREVIOUS_MACHINE if previous else MACHINE,
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


def status_kb(pid, fields):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k = line.split(":")[0]
                if k in fields:
                    out[k] = int(line.split()[1])
    except OSError:
        pass
    return out


def rss_kb(pid):
    return status_kb(pid, ["VmRSS"]).get("VmRSS", 0)


def vmm_kb(pid):
    """The memory a VMM holds: anonymous + shared (guest RAM) + file pages."""
    return sum(status_kb(pid, ["RssAnon", "RssShmem", "RssFile"]).values())


class Side:
    """One vessel instance with its own home, kernel and TCG cache size."""

    def __init__(self, name, vessel, work, kernel, tb_mib):
        self.name, self.vessel = name, vessel
        self.home = os.path.join(work, name)
        self.env = dict(os.environ, VESSEL_HOME=self.home, VESSEL_KERNEL=kernel)
        if tb_mib:
            self.env["VESSEL_TCG_TB_MIB"] = str(tb_mib)
        self.tb = tb_mib or "default"
        self.runs, self.uptimes = [], []
        self.idle, self.returned = {}, None

    def cmd(self, *args, **kw):
        return subprocess.run([self.vessel, *args], env=self.env, **kw)

    def start(self, image):
        self.cmd("system", "start", check=True, stdout=subprocess.DEVNULL)
        self.cmd("image", "load", "-i", image, check=True, stdout=subprocess.DEVNULL)
        timed([self.vessel, "run", "--rm", IMAGE, "true"], self.env)  # builds the ext4 base once

    def stop(self):
        self.cmd("system", "stop", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def state(self, cid):
        with open(os.path.join(self.home, "containers", cid, "state.json")) as f:
            return json.load(f)

    def measure_idle(self):
        """One idle container: RSS and PSS of its host processes."""
        cid = self.cmd("run", "-d", "--network", "none", "--memory", "512m", IMAGE, "sleep", "600",
                       check=True, stdout=subprocess.PIPE).stdout.decode().strip()
        time.sleep(3)
        state = self.state(cid)
        procs = {"vessel-runtime": state.get("runtime_pid"), "qemu": state.get("vmm_pid")}
        self.idle = {k: (rss_kb(v), pss_kb(v)) for k, v in procs.items() if v}
        self.cmd("rm", "-f", cid, stdout=subprocess.DEVNULL)

    def measure_return(self):
        """Fill 400 MiB of a 512 MiB guest, free it: seconds until the VMM
        holds 300 MiB less (None: not within 20 s), host MemAvailable drop."""
        cid = self.cmd("run", "-d", "--network", "none", "--memory", "512m", "--tmpfs", "/fill:size=460m",
                       IMAGE, "sleep", "600", check=True, stdout=subprocess.PIPE).stdout.decode().strip()
        try:
            pid = self.state(cid)["vmm_pid"]
            time.sleep(2)
            idle = vmm_kb(pid)
            avail0 = meminfo_kb("MemAvailable")
            self.cmd("exec", cid, "dd", "if=/dev/zero", "of=/fill/x", "bs=1M", "count=400", check=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            full = vmm_kb(pid)
            avail1 = meminfo_kb("MemAvailable")
            self.cmd("exec", cid, "rm", "/fill/x", check=True)
            t = time.monotonic()
            took = None
            while time.monotonic() - t < 20:
                if vmm_kb(pid) + 300 * 1024 <= full:
                    took = time.monotonic() - t
                    break
                time.sleep(0.1)
            time.sleep(1)
            after = vmm_kb(pid)
            avail2 = meminfo_kb("MemAvailable")
            self.returned = dict(idle=idle, full=full, after=after, took=took,
                                 avail_fill=avail0 - avail1, avail_back=avail2 - avail1)
        finally:
            self.cmd("rm", "-f", cid, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--previous-kernel", help="also measure this guest kernel (the previous configuration)")
    ap.add_argument("--previous-tb-mib", type=int, default=256,
                    help="the previous configuration's TCG translation cache (MiB, default 256)")
    args = ap.parse_args()
    kernel, initrd, image = env_path("VESSEL_KERNEL"), env_path("VESSEL_INITRD"), env_path("VESSEL_TEST_IMAGE")
    bindir = os.environ.get("VESSEL_BIN_DIR", os.path.join(ROOT, "target/release"))
    vessel = os.path.join(bindir, "vessel")
    work = tempfile.mkdtemp(prefix="vessel-bench-")
    sides = []
    if args.previous_kernel:
        sides.append(Side("previous", vessel, work, os.path.abspath(args.previous_kernel), args.previous_tb_mib))
    sides.append(Side("current", vessel, work, kernel, None))
    bare, bare_prev = [], []
    try:
        # The baseline initramfs: same builder, an init that powers off.
        init = os.path.join(work, "poweroff")
        subprocess.run(["gcc", "-static", "-O2", "-o", init, os.path.join(ROOT, "bench/poweroff_init.c")], check=True)
        base_initrd = os.path.join(work, "baseline.img")
        subprocess.run([os.path.join(ROOT, "guest/initramfs/build.sh"), init, base_initrd], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for side in sides:
            side.start(image)
        for _ in range(args.runs):
            bare.append(timed(baseline_cmd(kernel, base_initrd))[0])
            if args.previous_kernel:
                bare_prev.append(timed(baseline_cmd(args.previous_kernel, base_initrd, previous=True))[0])
            for side in sides:
                side.runs.append(timed([vessel, "run", "--rm", "--no-template", IMAGE, "true"], side.env)[0])
        for _ in range(max(3, args.runs // 2)):
            for side in sides:
                _, out = timed([vessel, "run", "--rm", "--no-template", IMAGE, "cat", "/proc/uptime"], side.env)
                side.uptimes.append(float(out.split()[0]))
        for side in sides:
            side.measure_idle()
            side.measure_return()
    finally:
        for side in sides:
            side.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    print(f"accelerator: {accel()}, runs: {args.runs}")
    print("| measure | " + " | ".join(f"{s.name} (tb-size {s.tb})" for s in sides) + " |")
    print("|---|" + "---|" * len(sides))

    def row(label, f):
        print(f"| {label} | " + " | ".join(f(s) for s in sides) + " |")

    def bare_of(s):
        return bare_prev if s.name == "previous" else bare

    row("bare QEMU boot + poweroff, its machine line (s), median (min-max)",
        lambda s: f"{med(bare_of(s)):.3f} ({min(bare_of(s)):.3f}-{max(bare_of(s)):.3f})")
    row("`vessel run --rm --no-template IMAGE true` (s), median (min-max)",
        lambda s: f"{med(s.runs):.3f} ({min(s.runs):.3f}-{max(s.runs):.3f})")
    row("ratio vessel / bare", lambda s: f"{med(s.runs) / med(bare_of(s)):.2f}")
    row("guest uptime when the process runs (s), median (min-max)",
        lambda s: f"{med(s.uptimes):.2f} ({min(s.uptimes):.2f}-{max(s.uptimes):.2f})")
    for proc in ["qemu", "vessel-runtime"]:
        row(f"idle 512 MiB container: {proc} RSS / PSS (MiB)",
            lambda s, p=proc: "{:.1f} / {:.1f}".format(*(v / 1024 for v in s.idle.get(p, (0, 0)))))
    row("idle: all its processes, PSS (MiB)", lambda s: f"{sum(v[1] for v in s.idle.values()) / 1024:.1f}")
    row("VMM memory idle / 400 MiB filled / 1 s after the free (MiB)",
        lambda s: f"{s.returned['idle'] / 1024:.0f} / {s.returned['full'] / 1024:.0f} / {s.returned['after'] / 1024:.0f}")
    row("time until 300 MiB are back (s)",
        lambda s: f"{s.returned['took']:.1f}" if s.returned["took"] is not None else "never (20 s)")
    row("host MemAvailable: down by the fill / up again after the free (MiB)",
        lambda s: f"{s.returned['avail_fill'] / 1024:.0f} / {s.returned['avail_back'] / 1024:.0f}")


if __name__ == "__main__":
    main()
