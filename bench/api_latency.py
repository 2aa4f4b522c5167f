#!/usr/bin/env python3
"""API request latency, before and after a change of the API server, side
by side in one run.

Two instances are started, each with its own VESSEL_HOME: one from the
binaries in --old (e.g. a build of the commit before the move to hyper),
one from --new. Then, alternating between them request by request:

1. `GET /v1/system/info` over the Unix socket, a new connection each time
   (what the old server, one request per connection, allows), --runs
   requests per server: p50, p90, p99 and the ratio new / old;
2. the same on one kept-alive connection (the new server only; the old
   one closes after each answer): p50;
3. `vessel ls -a` (a whole CLI process: start, connect, request, print),
   --cli-runs per side: p50 and the ratio.

usage: bench/api_latency.py --old DIR --new DIR [--runs 200] [--cli-runs 50] [--json]
DIR holds vessel, vessel-apiserver, vessel-images, vessel-network,
vessel-runtime. No VM is started; VESSEL_KERNEL and VESSEL_INITRD need not
exist. Both instances are stopped at the end, also on error.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Instance:
    def __init__(self, name, bindir):
        self.name = name
        self.bindir = os.path.abspath(bindir)
        self.home = tempfile.mkdtemp(prefix=f"vessel-bench-{name}-", dir="/tmp")
        self.env = dict(os.environ, VESSEL_HOME=self.home, VESSEL_BIN_DIR=self.bindir)
        self.sock = os.path.join(self.home, "vessel.sock")

    def vessel(self, *args, check=True):
        return subprocess.run([os.path.join(self.bindir, "vessel"), *args], env=self.env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, check=check)

    def start(self):
        self.vessel("system", "start")

    def stop(self):
        self.vessel("system", "stop", check=False)
        shutil.rmtree(self.home, ignore_errors=True)


REQUEST = b"GET /v1/system/info HTTP/1.1\r\nHost: vessel\r\n\r\n"


def read_answer(s, buf):
    """Read one answer with a Content-Length body; the rest of buf."""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise RuntimeError("connection closed before the head ended")
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(rest) < length:
        d = s.recv(65536)
        if not d:
            raise RuntimeError("connection closed before the body ended")
        rest += d
    if status != 200:
        raise RuntimeError(f"status {status}")
    return rest[length:]


def one_request(sock_path):
    t = time.perf_counter()
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.sendall(REQUEST)
    read_answer(s, b"")
    s.close()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--cli-runs", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    old, new = Instance("old", a.old), Instance("new", a.new)
    try:
        old.start()
        new.start()
        for i in (old, new):  # warm up
            for _ in range(10):
                one_request(i.sock)
        fresh = {"old": [], "new": []}
        for _ in range(a.runs):
            for i in (old, new):
                fresh[i.name].append(one_request(i.sock))
        kept = []
        s = socket.socket(socket.AF_UNIX)
        s.connect(new.sock)
        rest = b""
        for _ in range(a.runs):
            t = time.perf_counter()
            s.sendall(REQUEST)
            rest = read_answer(s, rest)
            kept.append(time.perf_counter() - t)
        s.close()
        cli = {"old": [], "new": []}
        for _ in range(a.cli_runs):
            for i in (old, new):
                t = time.perf_counter()
                i.vessel("ls", "-a")
                cli[i.name].append(time.perf_counter() - t)
    finally:
        old.stop()
        new.stop()
    ms = lambda x: round(x * 1000, 3)
    result = {
        "runs": a.runs,
        "info_new_connection_ms": {k: {"p50": ms(pct(v, 50)), "p90": ms(pct(v, 90)), "p99": ms(pct(v, 99))}
                                   for k, v in fresh.items()},
        "info_ratio_new_old_p50": round(pct(fresh["new"], 50) / pct(fresh["old"], 50), 2),
        "info_kept_alive_new_ms": {"p50": ms(pct(kept, 50)), "p99": ms(pct(kept, 99))},
        "cli_runs": a.cli_runs,
        "vessel_ls_ms": {k: {"p50": ms(pct(v, 50))} for k, v in cli.items()},
        "vessel_ls_ratio_new_old_p50": round(pct(cli["new"], 50) / pct(cli["old"], 50), 2),
    }
    if a.json:
        print(json.dumps(result, indent=2))
        return
    f = result["info_new_connection_ms"]
    print(f"GET /v1/system/info, a new connection each, {a.runs} per server, interleaved")
    print("| server | p50 ms | p90 ms | p99 ms |")
    print("|---|---|---|---|")
    for k in ("old", "new"):
        print(f"| {k} | {f[k]['p50']} | {f[k]['p90']} | {f[k]['p99']} |")
    print(f"ratio new / old (p50): {result['info_ratio_new_old_p50']}")
    k = result["info_kept_alive_new_ms"]
    print(f"new, one kept-alive connection: p50 {k['p50']} ms, p99 {k['p99']} ms")
    c = result["vessel_ls_ms"]
    print(f"`vessel ls -a`, {a.cli_runs} per side: old p50 {c['old']['p50']} ms, new p50 {c['new']['p50']} ms, "
          f"ratio {result['vessel_ls_ratio_new_old_p50']}")


if __name__ == "__main__":
    sys.exit(main())
