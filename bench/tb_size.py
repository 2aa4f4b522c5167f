#!/usr/bin/env python3
"""QEMU's TCG translation cache (`-accel tcg,tb-size=N`) against what a
container costs: for each size, one vessel instance (VESSEL_TCG_TB_MIB),
rounds interleaved: `run --rm IMAGE true` time, the PSS of an idle
container's QEMU, and a CPU-heavy container (busybox `sha256sum` of 50 MiB
of zeros).

usage: bench/tb_size.py [--sizes 256,64,32,16] [--runs N]
Needs: VESSEL_KERNEL, VESSEL_INITRD, VESSEL_TEST_IMAGE, the binaries in
VESSEL_BIN_DIR (default target/release).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from sides import env_path
from boot_overhead import pss_kb, timed, IMAGE, ROOT

HEAVY = ["sh", "-c", "head -c 52428800 /dev/zero | sha256sum"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,64,32,16")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    env_path("VESSEL_KERNEL"), env_path("VESSEL_INITRD")
    image = env_path("VESSEL_TEST_IMAGE")
    vessel = os.path.join(os.environ.get("VESSEL_BIN_DIR", os.path.join(ROOT, "target/release")), "vessel")
    work = tempfile.mkdtemp(prefix="vessel-tb-")
    sizes = [int(s) for s in args.sizes.split(",")]
    envs = {n: dict(os.environ, VESSEL_HOME=os.path.join(work, str(n)), VESSEL_TCG_TB_MIB=str(n)) for n in sizes}
    res = {n: {"true": [], "heavy": [], "pss": []} for n in sizes}
    try:
        for n, env in envs.items():
            subprocess.run([vessel, "system", "start"], env=env, check=True, stdout=subprocess.DEVNULL)
            subprocess.run([vessel, "image", "load", "-i", image], env=env, check=True, stdout=subprocess.DEVNULL)
            timed([vessel, "run", "--rm", IMAGE, "true"], env)
        for _ in range(args.runs):
            for n, env in envs.items():
                r = res[n]
                r["true"].append(timed([vessel, "run", "--rm", "--network", "none", IMAGE, "true"], env)[0])
                r["heavy"].append(timed([vessel, "run", "--rm", "--network", "none", IMAGE, *HEAVY], env)[0])
        for n, env in envs.items():
            cid = subprocess.run([vessel, "run", "-d", "--network", "none", IMAGE, "sleep", "600"], env=env,
                                 check=True, stdout=subprocess.PIPE).stdout.decode().strip()
            time.sleep(4)
            out = subprocess.run([vessel, "inspect", cid], env=env, check=True, stdout=subprocess.PIPE).stdout
            pid = json.loads(out)[0]["state"]["vmm_pid"]
            res[n]["pss"].append(pss_kb(pid))
            subprocess.run([vessel, "rm", "-f", cid], env=env, stdout=subprocess.DEVNULL)
    finally:
        for env in envs.values():
            subprocess.run([vessel, "system", "stop"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    print(f"runs: {args.runs}, median (min-max)")
    cols = ["tb-size (MiB)", "`run --rm IMAGE true` (s)", "sha256sum of 50 MiB (s)"]
    cols.append("idle container's QEMU PSS (MiB)")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for n in sizes:
        r = res[n]
        cells = [str(n)] + [f"{med(r[k]):.2f} ({min(r[k]):.2f}-{max(r[k]):.2f})" for k in ["true", "heavy"]]
        cells.append(f"{r['pss'][0] / 1024:.1f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
