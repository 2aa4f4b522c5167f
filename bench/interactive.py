#!/usr/bin/env python3
"""Interactive containers (issue 9): vessel against podman + runc (no VM),
side by side in one run, interleaved, with ratios vessel / podman.

1. `exec NAME true` latency: one running container on each side (`sleep`),
   --runs execs per side, alternating one by one: p50, p90, p99 and the
   ratio (goal of issue 9: <= 1.0x podman). A third row, `runc exec` of
   podman's container straight, shows what podman's own layers cost.
2. Keystroke round trip under -t: `exec -it NAME sh` on each side in a
   pseudo-terminal this script opens (it is the CLI's controlling
   terminal, 1000 columns wide so the line never wraps). After the prompt,
   one byte (`x`) is written to the terminal and the time taken until it
   comes back as the shell's echo; --keys per side, alternating. Every 100
   keys, Ctrl-C clears the line and the prompt is awaited (not timed).
   p50, p90, p99 and the ratio.
3. Throughput of stdin -> `cat` -> stdout: --mib MiB of (seeded) random
   bytes piped through `run --rm -i IMAGE cat` and through `exec -i NAME
   cat` on each side, --rounds rounds, the order alternating. The sha256
   of what comes back must be the sha256 of what went in. Two rates per
   command (MB = 10^6 bytes): `wall` is size / the whole command (for
   `run -i`: the container's start, a VM boot for vessel, is in it),
   `stream` is the bytes after the first output chunk / the time from that
   chunk to the last (the data path alone, goal of issue 9: >= 0.5x).
   A command whose output makes no progress for --stall seconds is killed
   and reported as stalled with the bytes that came back; the run goes on.
   For scale, in each round: `dd if=/dev/zero | cat >/dev/null` inside each
   container (--mib, or tenfold until it takes 0.5 s), timed there
   (busybox `time`, 10 ms steps): what the container's CPU allows the same
   `cat` without any stream to the host (under TCG, an emulated CPU).

Each side is isolated: vessel runs its own instance (a fresh VESSEL_HOME,
`vessel system start`, `vessel image load -i` of the offline busybox
image); podman runs with its own --root, --runroot and --tmpdir (nothing
of the host's podman is touched), `--runtime /usr/sbin/runc --cgroup-manager
cgroupfs`, the same image loaded from the same archive. Both containers
run with `--network none`. Everything is removed at the end (containers,
the instance, podman's mounts, the temporary directory), also on an error,
Ctrl-C or SIGTERM.

usage: bench/interactive.py [--runs 50] [--keys 200] [--mib 64] [--rounds 3]
                            [--stall 30] [--only exec,tty,stream] [--json]
Needs: VESSEL_KERNEL, VESSEL_INITRD, VESSEL_TEST_IMAGE (as scripts/test.sh
sets them), the vessel binaries (VESSEL_BIN_DIR, default target/release),
podman and runc (scripts/install-deps.sh installs them); root.
"""
import argparse
import fcntl
import hashlib
import json
import os
import pty
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

from sides import RUNC_ROOT, Podman, Vessel, must, pct, prepare

PROMPT = b"RDY> "
KEY = b"x"


def exec_latency(sides, names, runs, podman):
    """`exec NAME true` on each side, and `runc exec` of podman's container
    as a third, lower bound (what podman's exec runs in the end)."""
    cmds = [(s.name, s.argv("exec", names[s.name], "true"), s.env) for s in sides]
    runc = podman.runc_exec("true")
    if runc:
        cmds.append(("runc (podman's container)", runc, podman.env))
    else:
        print(f"no runc state of podman's container under {RUNC_ROOT}: the runc row is left out", file=sys.stderr)
    times = {name: [] for name, _, _ in cmds}

    def one(name, argv, env):
        t = time.perf_counter()
        r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=60)
        dt = time.perf_counter() - t
        must(r, f"{name}: {' '.join(argv)}")
        return dt

    for c in cmds:  # warm up: first exec, page cache
        for _ in range(3):
            one(*c)
    for i in range(runs):
        for c in (cmds if i % 2 == 0 else cmds[::-1]):
            times[c[0]].append(one(*c))
    return times


# ---------------------------------------------------------- keystroke round trip

class TtySession:
    """A command on a pseudo-terminal of ours (its controlling terminal)."""

    def __init__(self, argv, env, rows=50, cols=1000):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

        def ctty():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        env = dict(env, TERM="xterm")
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, preexec_fn=ctty, close_fds=True)
        os.close(slave)
        self.seen = b""

    def read_until(self, want, timeout):
        """Read until `want` appears in what came since the last call."""
        buf = b""
        deadline = time.perf_counter() + timeout
        while want not in buf:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RuntimeError(f"{want!r} did not come back within {timeout} s; got {buf[-300:]!r}")
            r, _, _ = select.select([self.master], [], [], left)
            if r:
                try:
                    d = os.read(self.master, 65536)
                except OSError:
                    d = b""
                if not d:
                    raise RuntimeError(f"the terminal closed before {want!r}; got {buf[-300:]!r}")
                buf += d
        self.seen = buf
        return buf

    def drain(self):
        while select.select([self.master], [], [], 0)[0]:
            try:
                if not os.read(self.master, 65536):
                    return
            except OSError:
                return

    def write(self, b):
        os.write(self.master, b)

    def prompt(self, timeout=60):
        # The shell's own first prompt (root's `# `) first: what is typed
        # before the CLI has put our terminal in raw mode can be flushed
        # by that switch.
        self.read_until(b"# ", timeout)
        # The CLI must have put our terminal in raw mode: with our own line
        # discipline still echoing, a key would "come back" without ever
        # reaching the container.
        deadline = time.perf_counter() + 10
        while termios.tcgetattr(self.master)[3] & termios.ECHO:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{' '.join(self.proc.args[:2])} left its terminal echoing (not raw): a "
                                   "round trip would be measured on this host alone")
            time.sleep(0.01)
        # A prompt of ours, set by a command whose echo does not contain it.
        self.write(b"PS1='RD''Y> '\r")
        self.read_until(PROMPT, timeout)

    def key(self, timeout=30):
        self.drain()
        t = time.perf_counter()
        self.write(KEY)
        self.read_until(KEY, timeout)
        return time.perf_counter() - t

    def clear_line(self):
        self.write(b"\x03")
        self.read_until(PROMPT, 30)

    def close(self):
        try:
            self.write(b"\x03exit\r")
        except OSError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def keystrokes(sides, names, keys):
    times = {s.name: [] for s in sides}
    start = {}
    sessions = {}
    try:
        for s in sides:
            t = time.perf_counter()
            sessions[s.name] = TtySession(s.argv("exec", "-it", names[s.name], "sh"), s.env)
            sessions[s.name].prompt()
            start[s.name] = time.perf_counter() - t
        for s in sides:  # warm up
            for _ in range(5):
                sessions[s.name].key()
            sessions[s.name].clear_line()
        for i in range(keys):
            for s in (sides if i % 2 == 0 else sides[::-1]):
                sess = sessions[s.name]
                if i and i % 100 == 0:
                    sess.clear_line()
                times[s.name].append(sess.key())
    finally:
        for sess in sessions.values():
            sess.close()
    return times, start


# ------------------------------------------------------------------ throughput

def stream_through(argv, env, data_path, size, digest, stall):
    """Pipe data_path through argv; the timing and what came back."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = {"bytes": 0, "first": None, "first_bytes": 0, "last": None, "progress": time.perf_counter()}
    h = hashlib.sha256()
    err = []

    def feed():
        try:
            with open(data_path, "rb") as f:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    p.stdin.write(chunk)
            p.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass

    def read_out():
        while True:
            d = p.stdout.read1(1 << 20)
            if not d:
                return
            now = time.perf_counter()
            if state["first"] is None:
                state["first"], state["first_bytes"] = now, len(d)
            state["last"] = now
            state["bytes"] += len(d)
            state["progress"] = now
            h.update(d)

    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=read_out, daemon=True),
               threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)]
    for t in threads:
        t.start()
    stalled = False
    try:
        while threads[1].is_alive():
            threads[1].join(1)
            if threads[1].is_alive() and time.perf_counter() - state["progress"] > stall:
                stalled = True
                p.kill()  # a CLI whose stdin is stuck may not leave on SIGTERM
                break
        try:
            p.wait(timeout=60)  # the output ended: the command should too
        except subprocess.TimeoutExpired:
            pass
    finally:
        if p.poll() is None:  # timed out, interrupted
            p.kill()
            p.wait()
    wall = time.perf_counter() - t0
    for t in threads:
        t.join(5)
    out = {"bytes": state["bytes"], "wall": wall, "stalled": stalled, "rc": p.returncode,
           "stderr": (err[0] if err else b"").decode(errors="replace").strip()[-500:]}
    out["ok"] = (not stalled and p.returncode == 0 and state["bytes"] == size and h.hexdigest() == digest)
    if out["ok"]:
        out["wall_mbs"] = size / wall / 1e6
        span = state["last"] - state["first"]
        out["stream_mbs"] = (size - state["first_bytes"]) / span / 1e6 if span > 0 else float("nan")
    return out


def throughput(sides, names, work, mib, rounds, stall):
    size = mib << 20
    data = os.path.join(work, "data.bin")
    rng = random.Random(9)
    h = hashlib.sha256()
    with open(data, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 1 << 22))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    digest = h.hexdigest()
    res = {kind: {s.name: [] for s in sides} for kind in ("run", "exec", "inside")}
    for r in range(rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for s in order:
            name = f"bench-i-run-{r}"
            try:
                res["run"][s.name].append(stream_through(s.run_i(name), s.env, data, size, digest, stall))
            finally:
                s.rm(name)  # only does something when the run did not end by itself
        for s in order:
            argv = s.argv("exec", "-i", names[s.name], "cat")
            res["exec"][s.name].append(stream_through(argv, s.env, data, size, digest, stall))
            # A killed exec may leave its `cat` in the container: harmless,
            # the container is removed at the end.
        for s in order:
            res["inside"][s.name].append(pipe_inside(s, names[s.name], mib))
    return res


def pipe_inside(side, name, mib):
    """MB/s of `dd | cat` inside the container, timed there: what its CPU
    (an emulated one under TCG) allows a pipe through busybox `cat`,
    without any stream to the host. busybox `time` counts in 10 ms steps:
    the size grows tenfold until the pipe takes at least 0.5 s."""
    while True:
        script = f"time -p sh -c 'dd if=/dev/zero bs=65536 count={mib * 16} 2>/dev/null | cat >/dev/null'"
        r = side.run("exec", name, "sh", "-c", script, timeout=600)
        real = None
        for line in r.stderr.decode(errors="replace").splitlines():
            if line.startswith("real "):
                real = float(line.split()[1])
        if real is None:
            raise RuntimeError(f"no `real` time from busybox time in {side.name}: {r.stderr!r}")
        if real >= 0.5 or mib >= 1 << 16:
            return (mib << 20) / real / 1e6
        mib *= 10


# ---------------------------------------------------------------------- report

def ms(x):
    return round(x * 1000, 2)


def latency_table(title, times, out):
    out.append(title)
    out.append("| side | p50 ms | p90 ms | p99 ms | min ms | max ms |")
    out.append("|---|---|---|---|---|---|")
    for k, v in times.items():
        out.append(f"| {k} | {ms(pct(v, 50))} | {ms(pct(v, 90))} | {ms(pct(v, 99))} | {ms(min(v))} | {ms(max(v))} |")
    v = times["vessel"]
    for k, p in times.items():
        if k != "vessel":
            out.append(f"ratio vessel / {k}: p50 {pct(v, 50) / pct(p, 50):.2f}, p99 {pct(v, 99) / pct(p, 99):.2f}")
    out.append("")


def rate_table(title, results, mib, out):
    out.append(title)
    out.append("| side | ok / rounds | wall MB/s median (min–max) | stream MB/s median (min–max) | failures |")
    out.append("|---|---|---|---|---|")
    med = {}
    for k, rs in results.items():
        good = [r for r in rs if r["ok"]]
        fails = []
        for r in rs:
            if r["stalled"]:
                fails.append(f"stalled after {r['bytes']} of {mib << 20} bytes")
            elif not r["ok"]:
                fails.append(f"exit {r['rc']}, {r['bytes']} bytes back, {r['stderr'] or 'no error'}")
        if good:
            w = [r["wall_mbs"] for r in good]
            s = [r["stream_mbs"] for r in good]
            med[k] = (pct(w, 50), pct(s, 50))
            cells = (f"{pct(w, 50):.1f} ({min(w):.1f}–{max(w):.1f}) | "
                     f"{pct(s, 50):.1f} ({min(s):.1f}–{max(s):.1f})")
        else:
            cells = "– | –"
        out.append(f"| {k} | {len(good)} / {len(rs)} | {cells} | {'; '.join(fails) or 'none'} |")
    if "vessel" in med and "podman" in med:
        out.append(f"ratio vessel / podman: wall {med['vessel'][0] / med['podman'][0]:.2f}, "
                   f"stream {med['vessel'][1] / med['podman'][1]:.2f}")
    out.append("")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50, help="execs of `true` per side")
    ap.add_argument("--keys", type=int, default=200, help="keystrokes per side")
    ap.add_argument("--mib", type=int, default=64, help="MiB piped through `cat`")
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds")
    ap.add_argument("--stall", type=float, default=30, help="seconds without output before a pipe counts as stalled")
    ap.add_argument("--only", default="exec,tty,stream", help="comma-separated: exec, tty, stream")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    only = set(a.only.split(","))
    if only - {"exec", "tty", "stream"}:
        sys.exit(f"--only takes exec, tty, stream; got {a.only}")
    bindir, image = prepare()

    work = tempfile.mkdtemp(prefix="vessel-bench-interactive-", dir="/tmp")
    vessel, podman = Vessel(work, bindir, image), Podman(work, image)
    sides = [vessel, podman]
    names = {"vessel": "bench-i-vessel", "podman": "bench-i-podman"}
    result = {"load_before": os.getloadavg()}
    try:
        for s in sides:
            s.setup()
            s.start_container(names[s.name])
        if "exec" in only:
            result["exec_true"] = exec_latency(sides, names, a.runs, podman)
        if "tty" in only:
            result["keystroke"], result["tty_prompt"] = keystrokes(sides, names, a.keys)
        if "stream" in only:
            result["throughput"] = throughput(sides, names, work, a.mib, a.rounds, a.stall)
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for s in sides:
            try:
                s.teardown()
            except Exception as e:  # keep cleaning the other side
                print(f"cleanup of {s.name}: {e}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = os.getloadavg()

    if a.json:
        print(json.dumps(result, indent=2))
        return
    out = [f"accelerator: {os.environ.get('VESSEL_ACCEL') or 'tcg (unless KVM works)'}; "
           f"load average before {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f}; "
           f"{os.cpu_count()} CPUs", ""]
    if "exec_true" in result:
        latency_table(f"`exec NAME true`, {a.runs} per side, interleaved", result["exec_true"], out)
    if "keystroke" in result:
        latency_table(f"keystroke round trip under `exec -it NAME sh`, {a.keys} per side, interleaved",
                      result["keystroke"], out)
        p = result["tty_prompt"]
        out.append(f"`exec -it NAME sh` to its first prompt: vessel {ms(p['vessel'])} ms, "
                   f"podman {ms(p['podman'])} ms")
        out.append("")
    if "throughput" in result:
        t = result["throughput"]
        rate_table(f"stdin → `cat` → stdout, `run --rm -i IMAGE cat`, {a.mib} MiB, {a.rounds} rounds",
                   t["run"], a.mib, out)
        rate_table(f"stdin → `cat` → stdout, `exec -i NAME cat`, {a.mib} MiB, {a.rounds} rounds",
                   t["exec"], a.mib, out)
        inside = t["inside"]
        out.append(f"inside the container, no stream to the host: `dd if=/dev/zero bs=65536 | cat >/dev/null`, "
                   f"{a.mib} MiB or more (>= 0.5 s), timed by busybox `time` there, {a.rounds} rounds")
        out.append("| side | MB/s median (min–max) |")
        out.append("|---|---|")
        for k, v in inside.items():
            out.append(f"| {k} | {pct(v, 50):.1f} ({min(v):.1f}–{max(v):.1f}) |")
        out.append(f"ratio vessel / podman: {pct(inside['vessel'], 50) / pct(inside['podman'], 50):.2f}")
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        sys.exit(f"interrupted ({str(e) or 'Ctrl-C'}); everything this run started was removed")
