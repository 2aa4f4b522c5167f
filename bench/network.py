#!/usr/bin/env python3
"""Networking: what the default network adds to `vessel run --rm IMAGE true`,
and the data path host -> container, side by side in one run.

1. Start cost: `vessel run --rm --network none IMAGE true` (no NIC) against
   `vessel run --rm IMAGE true` (default network: TAP on the bridge, lease,
   DNS registration, nftables) and the same with `-p 127.0.0.1:PORT:80` (the
   userland proxy binds the host port). The variants alternate each round.
2. Data path: one container runs `busybox httpd -f -p 80 -h /www` serving a
   --mib MiB file of random data (made in the guest with dd at start) and a
   tiny one, published with `-p PORT:80`. From the host a Python
   HTTP client fetches (a) the container's IP (from `vessel inspect`)
   directly over the bridge, (b) 127.0.0.1:PORT through vessel-network's
   userland proxy and (c) PORT on a non-loopback address of the host (the
   baseline veth's host end), which the kernel DNATs to the container:
   throughput of the big file (MB/s, 10^6 bytes, over --gets
   GETs in a row, each on a new connection) and the
   latency of --small GETs of the tiny file (a new TCP connection each:
   busybox httpd closes after every response). The no-VM baseline, in the
   same run: the same busybox httpd with the same files in a network
   namespace behind a veth pair. The four targets alternate each round.
3. Container -> container: each round a second container on the default
   network runs busybox wget loops (--gets GETs of the big file, --small of
   the tiny one, one wget process each, the server by its name, so every
   wget also asks vessel-network's DNS), timed in its guest by /proc/uptime
   (10 ms steps). Baseline in the same round: the same busybox wget loops
   from the host into the namespace, timed by the bench.

Only addresses on this machine are used: the vessel network's subnet
(--subnet, default 10.231.0.0/24), a /30 for the baseline veth (the next
/24, 10.231.1.0/30 by default) and 127.0.0.1.

usage: bench/network.py [--runs N] [--mib M] [--gets G] [--small K] [--subnet CIDR] [--json]
Needs root (bridges, TAPs, the baseline's namespace), VESSEL_KERNEL,
VESSEL_INITRD, VESSEL_TEST_IMAGE (as scripts/test.sh sets them), busybox on
the host, and the vessel binaries (VESSEL_BIN_DIR, default target/release).
Everything it starts is stopped at the end, also on error.
"""
import argparse
import http.client
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from sides import env_path, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "localhost/busybox:latest"
NETNS = "vessel-bench-net"
VETH = "vsbench0"


def run(cmd, env=None, check=True, timeout=300):
    r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r


def timed(cmd, env):
    t = time.monotonic()
    run(cmd, env)
    return time.monotonic() - t


def serve_cmd(mib):
    return (f"mkdir -p /www && echo ok > /www/small && "
            f"dd if=/dev/urandom of=/www/big bs=1M count={mib} 2>/dev/null && "
            f"exec busybox httpd -f -p 80 -h /www")


def get(host, port, path, timeout=120):
    """One GET on a new connection; returns (bytes received, seconds)."""
    t = time.monotonic()
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"GET http://{host}:{port}{path}: {r.status}")
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        n = 0
        while True:
            k = r.readinto(view)
            if not k:
                break
            n += k
    finally:
        c.close()
    return n, time.monotonic() - t


def wait_ready(host, port, secs=60):
    end = time.monotonic() + secs
    last = None
    while time.monotonic() < end:
        try:
            n, _ = get(host, port, "/big", timeout=10)
            return n
        except (OSError, RuntimeError, http.client.HTTPException) as e:
            last = e
            time.sleep(0.2)
    raise RuntimeError(f"http://{host}:{port}/ not ready after {secs}s: {last}")


def throughput(host, port, size, gets):
    """MB/s over `gets` GETs of the big file in a row."""
    total = 0.0
    for _ in range(gets):
        n, dt = get(host, port, "/big")
        if n != size:
            raise RuntimeError(f"http://{host}:{port}/big: {n} bytes, expected {size}")
        total += dt
    return gets * size / total / 1e6


def latency_ms(host, port, count):
    return statistics.median(get(host, port, "/small")[1] for _ in range(count)) * 1000


def wget_script(host, gets, small, clock):
    """busybox wget loops: `gets` GETs of /big, then `small` of /small, each
    a new wget process; with `clock`, prints guest uptime stamps."""
    t = "u() { cut -d' ' -f1 /proc/uptime; }; " if clock else ""
    stamp = (lambda tag: f"echo {tag} $(u); ") if clock else (lambda tag: "")
    return (f"{t}{stamp('s')}i=0; while [ $i -lt {gets} ]; do wget -q -O /dev/null http://{host}/big || exit 1; "
            f"i=$((i+1)); done; {stamp('m')}i=0; while [ $i -lt {small} ]; do "
            f"wget -q -O /dev/null http://{host}/small || exit 1; i=$((i+1)); done; {stamp('e')}")


def c2c(vessel, env, gets, small, size):
    """Container -> container by name: (MB/s, ms per wget of /small),
    timed in the client guest (/proc/uptime, 10 ms steps)."""
    out = run([vessel, "run", "--rm", IMAGE, "sh", "-c", wget_script("bench-httpd", gets, small, True)],
              env).stdout.decode()
    t = {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if len(line.split()) == 2}
    if set(t) != {"s", "m", "e"} or t["m"] <= t["s"]:
        raise RuntimeError(f"container -> container: unexpected output {out!r}")
    return gets * size / (t["m"] - t["s"]) / 1e6, (t["e"] - t["m"]) / small * 1000


def wget_host(ip, gets, small, size):
    """The same busybox wget loops from the host into the baseline's netns."""
    t0 = time.monotonic()
    run(["busybox", "sh", "-c", wget_script(ip, gets, 0, False)])
    t1 = time.monotonic()
    run(["busybox", "sh", "-c", wget_script(ip, 0, small, False)])
    t2 = time.monotonic()
    return gets * size / (t1 - t0) / 1e6, (t2 - t1) / small * 1000


def baseline_up(work, mib, host_ip, ns_ip, prefix):
    """busybox httpd in a network namespace behind a veth, same files."""
    www = os.path.join(work, "www")
    os.makedirs(www)
    with open(os.path.join(www, "small"), "w") as f:
        f.write("ok\n")
    with open(os.path.join(www, "big"), "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    run(["ip", "netns", "add", NETNS])
    run(["ip", "link", "add", VETH, "type", "veth", "peer", "name", "eth0", "netns", NETNS])
    run(["ip", "addr", "add", f"{host_ip}/{prefix}", "dev", VETH])
    run(["ip", "link", "set", VETH, "up"])
    run(["ip", "-n", NETNS, "addr", "add", f"{ns_ip}/{prefix}", "dev", "eth0"])
    run(["ip", "-n", NETNS, "link", "set", "eth0", "up"])
    run(["ip", "-n", NETNS, "link", "set", "lo", "up"])
    return subprocess.Popen(["ip", "netns", "exec", NETNS, "busybox", "httpd", "-f", "-p", "80", "-h", www],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def baseline_down(proc):
    if proc is not None:
        proc.kill()
        proc.wait()
    run(["ip", "link", "del", VETH], check=False)
    run(["ip", "netns", "del", NETNS], check=False)


def stats(xs):
    return statistics.median(xs), min(xs), max(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=32, help="size of the big file")
    ap.add_argument("--gets", type=int, default=3, help="GETs of the big file per target and round")
    ap.add_argument("--small", type=int, default=200, help="GETs of the tiny file per target and round")
    ap.add_argument("--subnet", default="10.231.0.0/24", help="the vessel default network's subnet")
    ap.add_argument("--json", action="store_true", help="also print the raw samples as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/network.py needs root (bridges, TAPs, a network namespace)")
    env_path("VESSEL_KERNEL"), env_path("VESSEL_INITRD")
    image = env_path("VESSEL_TEST_IMAGE")
    bindir = os.environ.get("VESSEL_BIN_DIR", os.path.join(ROOT, "target/release"))
    vessel = os.path.join(bindir, "vessel")
    subnet = ipaddress.ip_network(args.subnet)
    # The baseline's /30: the first one after the vessel subnet.
    bnet = ipaddress.ip_network(f"{subnet.broadcast_address + 1}/30")
    b_host, b_ns = str(bnet[1]), str(bnet[2])
    for a in (subnet, bnet):
        if not a.is_private:
            sys.exit(f"{a} is not a private range")
    routes = run(["ip", "-4", "route", "show"]).stdout.decode()
    for line in routes.splitlines():
        dst = line.split()[0]
        if dst != "default":
            try:
                net = ipaddress.ip_network(dst, strict=False)
            except ValueError:
                continue
            if net.overlaps(subnet) or net.overlaps(bnet):
                sys.exit(f"{args.subnet} or {bnet} overlaps the host route {line!r}: pick another --subnet")
    if os.path.exists(f"/run/netns/{NETNS}"):
        sys.exit(f"network namespace {NETNS} exists (an earlier run?): ip netns del {NETNS}")

    work = tempfile.mkdtemp(prefix="vessel-bench-net-")
    home = os.path.join(work, "home")
    env = dict(os.environ, VESSEL_HOME=home)
    size = args.mib << 20
    started = False
    base_proc = None
    start = {"none": [], "default": [], "default -p": []}
    tput = {"netns": [], "direct": [], "proxy": [], "dnat": []}
    lat = {"netns": [], "direct": [], "proxy": [], "dnat": []}
    wg_tput = {"netns": [], "c2c": []}
    wg_lat = {"netns": [], "c2c": []}
    try:
        started = True  # stop even a half-started instance
        run([vessel, "system", "start", "--subnet", args.subnet], env)
        run([vessel, "image", "load", "-i", image], env)
        run([vessel, "run", "--rm", "--network", "none", IMAGE, "true"], env)  # builds the ext4 base once
        run([vessel, "run", "--rm", IMAGE, "true"], env)  # creates the default network once

        # 1. Start cost, variants rotated each round.
        port = free_port()
        variants = {
            "none": [vessel, "run", "--rm", "--network", "none", IMAGE, "true"],
            "default": [vessel, "run", "--rm", IMAGE, "true"],
            "default -p": [vessel, "run", "--rm", "-p", f"127.0.0.1:{port}:80", IMAGE, "true"],
        }
        names = list(variants)
        for i in range(args.runs):
            for k in names[i % 3:] + names[:i % 3]:
                start[k].append(timed(variants[k], env))

        # 2. Data path.
        base_proc = baseline_up(work, args.mib, b_host, b_ns, bnet.prefixlen)
        hport = free_port()
        run([vessel, "run", "-d", "--name", "bench-httpd", "-p", f"{hport}:80", IMAGE,
             "sh", "-c", serve_cmd(args.mib)], env)
        info = json.loads(run([vessel, "inspect", "bench-httpd"], env).stdout)[0]
        cip = info["networks"][0]["ip"]
        if ipaddress.ip_address(cip) not in subnet:
            raise RuntimeError(f"container IP {cip} is not in {subnet}")
        targets = {"netns": (b_ns, 80), "direct": (cip, 80), "proxy": ("127.0.0.1", hport),
                   "dnat": (b_host, hport)}
        for name, (h, p) in targets.items():
            if wait_ready(h, p, 120) != size:
                raise RuntimeError(f"{name}: /big is not {size} bytes")
        tnames = list(targets)
        nt = len(tnames)
        for i in range(args.runs):
            for k in tnames[i % nt:] + tnames[:i % nt]:
                tput[k].append(throughput(*targets[k], size, args.gets))
                lat[k].append(latency_ms(*targets[k], args.small))
            # busybox wget clients: container -> container, host -> netns.
            pair = [("c2c", lambda: c2c(vessel, env, args.gets, args.small, size)),
                    ("netns", lambda: wget_host(b_ns, args.gets, args.small, size))]
            for k, f in pair[i % 2:] + pair[:i % 2]:
                mbps, ms = f()
                wg_tput[k].append(mbps)
                wg_lat[k].append(ms)
    finally:
        if started:
            run([vessel, "rm", "-f", "bench-httpd"], env, check=False)
            run([vessel, "system", "stop"], env, check=False)
        baseline_down(base_proc)
        shutil.rmtree(work, ignore_errors=True)

    accel = os.environ.get("VESSEL_ACCEL") or "tcg"
    med = statistics.median
    print(f"accelerator: {accel}, runs: {args.runs}, big file: {args.mib} MiB, "
          f"big GETs per round: {args.gets}, small GETs per round: {args.small}, cores: {os.cpu_count()}")
    print()
    print("| start: `vessel run --rm ... IMAGE true` (s) | median | min | max |")
    print("|---|---|---|---|")
    labels = {"none": "`--network none`", "default": "default network",
              "default -p": "default network + `-p 127.0.0.1:PORT:80`"}
    for k, xs in start.items():
        print("| {} | {:.3f} | {:.3f} | {:.3f} |".format(labels[k], *stats(xs)))
    n0 = med(start["none"])
    for k in ("default", "default -p"):
        print(f"| {labels[k]}: ratio to `none` | {med(start[k]) / n0:.2f} | | |")
        print(f"| {labels[k]}: added (ms) | {(med(start[k]) - n0) * 1000:.0f} | | |")
    print()
    tl = {"netns": "baseline: netns over veth (no VM)", "direct": "container IP over the bridge",
          "proxy": "published port on 127.0.0.1 (userland proxy)",
          "dnat": "published port on a host address (kernel DNAT)"}
    print(f"| throughput, {args.mib} MiB GET (MB/s) | median | min | max |")
    print("|---|---|---|---|")
    for k, xs in tput.items():
        print("| {} | {:.1f} | {:.1f} | {:.1f} |".format(tl[k], *stats(xs)))
    print(f"| ratio direct / netns | {med(tput['direct']) / med(tput['netns']):.3f} | | |")
    print(f"| ratio proxy / direct | {med(tput['proxy']) / med(tput['direct']):.2f} | | |")
    print(f"| ratio dnat / direct | {med(tput['dnat']) / med(tput['direct']):.2f} | | |")
    print()
    print("| tiny GET, new connection each (ms, median per round) | median | min | max |")
    print("|---|---|---|---|")
    for k, xs in lat.items():
        print("| {} | {:.2f} | {:.2f} | {:.2f} |".format(tl[k], *stats(xs)))
    print(f"| ratio direct / netns | {med(lat['direct']) / med(lat['netns']):.1f} | | |")
    print(f"| ratio proxy / direct | {med(lat['proxy']) / med(lat['direct']):.2f} | | |")
    print(f"| ratio dnat / direct | {med(lat['dnat']) / med(lat['direct']):.2f} | | |")
    print()
    wl = {"netns": "baseline: host -> netns over veth (no VM)", "c2c": "container -> container by name (bridge)"}
    print("| busybox wget client | MB/s, median | min | max | ms per tiny GET, median | min | max |")
    print("|---|---|---|---|---|---|---|")
    for k in wl:
        print("| {} | {:.1f} | {:.1f} | {:.1f} | {:.2f} | {:.2f} | {:.2f} |".format(
            wl[k], *stats(wg_tput[k]), *stats(wg_lat[k])))
    print(f"| ratio container / netns | {med(wg_tput['c2c']) / med(wg_tput['netns']):.3f} | | "
          f"| {med(wg_lat['c2c']) / med(wg_lat['netns']):.1f} | | |")
    if args.json:
        print(json.dumps({"start_s": start, "throughput_mbps": tput, "latency_ms": lat,
                          "wget_mbps": wg_tput, "wget_ms": wg_lat}))


if __name__ == "__main__":
    main()
