#!/usr/bin/env python3
"""VM templates against cold boots and runc, side by side in one run.

1. `run --rm --network none IMAGE true`, alternating run by run between a
   VM restored from a template (the default), a VM booting its kernel
   (`--no-template`) and podman + runc: p50, mean and the ratios.
2. Host memory per additional idle container (`--memory 128m`): the PSS of
   all its processes (vessel-runtime and QEMU) and the drop of the host's
   MemAvailable, for --idle containers from a template and as many booted.
3. With --density N: N idle 128 MiB containers from a template on the
   default bridge network at once: the start rate, then each one answers
   `exec` and an HTTP request from the host; the host memory they take.

   With --ksm, the idle measurement from a template is made once more with
   the host's KSM merging identical pages (turned on for it, then set back):
   clones of one template hold the same kernel pages.

usage: bench/templates.py [--runs 10] [--idle 10] [--density 0] [--ksm] [--json]
Needs VESSEL_KERNEL, VESSEL_INITRD, VESSEL_TEST_IMAGE (scripts/test.sh
builds them) and vessel's binaries in VESSEL_BIN_DIR (default
target/release). Everything is torn down at the end, also on error.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sides  # noqa: E402


def timed(argv, env):
    t = time.perf_counter()
    r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    sides.must(r, " ".join(argv[-6:]))
    return dt


def mem_available_kib():
    return sides.meminfo_kib("MemAvailable")


pss_kib = sides.pss_kib


def container_pss_kib(v, name):
    """PSS of the container's runtime helper and VMM."""
    j = json.loads(v.run("inspect", name).stdout)
    j = j[0] if isinstance(j, list) else j
    st = j["state"]
    return sum(pss_kib(p) for p in (st.get("runtime_pid"), st.get("vmm_pid")) if p), st.get("template")


def settle():
    subprocess.run(["sync"])
    time.sleep(3)


def idle_memory(v, count, extra, label, wait=5):
    """Start `count` idle 128 MiB containers; per container: PSS and the
    MemAvailable drop."""
    names = [f"{label}-{i}" for i in range(count)]
    settle()
    before = mem_available_kib()
    for n in names:
        v.run("run", "-d", "--name", n, "--network", "none", "--memory", "128m", *extra,
              sides.IMAGE, "sleep", "100000", timeout=300)
    time.sleep(wait)  # let the guests go idle (and KSM scan them)
    settle()
    after = mem_available_kib()
    pss = [container_pss_kib(v, n) for n in names]
    templates = {t for _, t in pss}
    for n in names:
        v.rm(n)
    return {
        "containers": count,
        "pss_mib_per_container": statistics.mean(p for p, _ in pss) / 1024,
        "available_drop_mib_per_container": (before - after) / 1024 / count,
        "from_template": templates != {None},
    }


KSM = "/sys/kernel/mm/ksm"


def with_ksm(f):
    """Run `f` with KSM scanning (merging identical anonymous pages that
    QEMU marks mergeable), and give KSM its settings back after."""
    keys = ("run", "pages_to_scan", "sleep_millisecs")
    old = {k: open(os.path.join(KSM, k)).read().strip() for k in keys}
    try:
        for k, val in (("pages_to_scan", "1000"), ("sleep_millisecs", "20"), ("run", "1")):
            with open(os.path.join(KSM, k), "w") as fh:
                fh.write(val)
        return f()
    finally:
        for k in ("run", "pages_to_scan", "sleep_millisecs"):
            with open(os.path.join(KSM, k), "w") as fh:
                fh.write(old[k])


def density(v, count):
    names = [f"d-{i}" for i in range(count)]
    settle()
    before = mem_available_kib()
    t = time.perf_counter()
    serve = "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 80 -h /w"
    for n in names:
        v.run("run", "-d", "--name", n, "--memory", "128m", sides.IMAGE, "sh", "-c", serve, timeout=300)
    started = time.perf_counter() - t
    time.sleep(5)
    settle()
    after = mem_available_kib()
    pss = sum(container_pss_kib(v, n)[0] for n in names)
    answered = pinged = 0
    for n in names:
        if v.run("exec", n, "true", check=False, timeout=120).returncode == 0:
            answered += 1
        j = json.loads(v.run("inspect", n).stdout)
        j = j[0] if isinstance(j, list) else j
        ip = json.dumps(j).split('"ip": "')[1].split('"')[0] if '"ip": "' in json.dumps(j) else None
        try:
            if ip and urllib.request.urlopen(f"http://{ip}/", timeout=10).read().strip():
                pinged += 1
        except OSError:
            pass
    for n in names:
        v.rm(n)
    return {
        "containers": count,
        "start_seconds": started,
        "starts_per_second": count / started,
        "answered_exec": answered,
        "answered_http": pinged,
        "host_memory_used_mib": (before - after) / 1024,
        "pss_mib_total": pss / 1024,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--idle", type=int, default=10)
    ap.add_argument("--density", type=int, default=0)
    ap.add_argument("--ksm", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    bindir, image = sides.prepare()
    work = tempfile.mkdtemp(prefix="vessel-bench-templates-")
    v = sides.Vessel(work, bindir, image)
    p = sides.Podman(work, image)
    out = {}
    try:
        v.setup()
        p.setup()
        # The first run builds the template for this size.
        t = time.perf_counter()
        v.run("run", "--rm", "--network", "none", sides.IMAGE, "true", timeout=300)
        out["first_run_with_template_build_s"] = time.perf_counter() - t
        sides_argv = {
            "template": v.argv("run", "--rm", "--network", "none", sides.IMAGE, "true"),
            "cold": v.argv("run", "--rm", "--network", "none", "--no-template", sides.IMAGE, "true"),
            "podman": p.argv("run", "--rm", "--network", "none", *sides.PODMAN_LIMITS, sides.IMAGE, "true"),
        }
        times = {k: [] for k in sides_argv}
        for _ in range(a.runs):
            for k, argv in sides_argv.items():
                times[k].append(timed(argv, v.env if k != "podman" else p.env))
        out["run_rm_true"] = {k: {"p50_s": statistics.median(x), "mean_s": statistics.mean(x), "runs": len(x)}
                              for k, x in times.items()}
        med = {k: statistics.median(x) for k, x in times.items()}
        out["run_rm_true"]["template_over_cold"] = med["template"] / med["cold"]
        out["run_rm_true"]["template_over_podman"] = med["template"] / med["podman"]
        out["run_rm_true"]["cold_over_podman"] = med["cold"] / med["podman"]
        if a.idle:
            out["idle_128m_template"] = idle_memory(v, a.idle, [], "t")
            out["idle_128m_cold"] = idle_memory(v, a.idle, ["--no-template"], "c")
            if a.ksm:
                out["idle_128m_template_ksm"] = with_ksm(lambda: idle_memory(v, a.idle, [], "k", wait=40))
        if a.density:
            out["density"] = density(v, a.density)
    finally:
        v.teardown()
        p.teardown()
        subprocess.run(["rm", "-rf", work])
    if a.json:
        print(json.dumps(out, indent=2))
        return
    r = out["run_rm_true"]
    print(f"first run (builds the template): {out['first_run_with_template_build_s']:.2f} s")
    for k in ("template", "cold", "podman"):
        print(f"run --rm true, {k:9}: p50 {r[k]['p50_s']:.3f} s, mean {r[k]['mean_s']:.3f} s ({r[k]['runs']} runs)")
    print(f"template / cold {r['template_over_cold']:.2f}x, template / podman {r['template_over_podman']:.2f}x, "
          f"cold / podman {r['cold_over_podman']:.2f}x")
    for k in ("idle_128m_template", "idle_128m_cold", "idle_128m_template_ksm"):
        if k in out:
            m = out[k]
            print(f"{k}: {m['containers']} containers, PSS {m['pss_mib_per_container']:.1f} MiB each, "
                  f"MemAvailable -{m['available_drop_mib_per_container']:.1f} MiB each (from template: {m['from_template']})")
    if "density" in out:
        d = out["density"]
        print(f"density: {d['containers']} containers of 128 MiB started in {d['start_seconds']:.1f} s "
              f"({d['starts_per_second']:.2f}/s); exec answered {d['answered_exec']}, HTTP from the host {d['answered_http']}; "
              f"host memory used {d['host_memory_used_mib']:.0f} MiB, PSS {d['pss_mib_total']:.0f} MiB")


if __name__ == "__main__":
    main()
