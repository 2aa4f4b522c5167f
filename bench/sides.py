"""The two sides of vessel's benchmarks: a vessel instance of its own and
a podman + runc with its own storage (nothing of the host's podman
touched), each set up with the offline busybox image and torn down whole
(containers, instance, mounts, processes), also after an error.
"""
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "localhost/busybox:latest"
# podman + runc on this host: runc refuses podman's default rlimits ("error
# setting rlimit type 7: operation not permitted").
PODMAN_LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
# Where runc keeps container state when podman runs it as root.
RUNC_ROOT = "/run/runc"

def env_path(name):
    v = os.environ.get(name)
    if not v or not os.path.exists(v):
        sys.exit(f"{name} must point at an existing file (see scripts/test.sh)")
    return os.path.abspath(v)


def free_port():
    """A TCP port on 127.0.0.1 free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def meminfo_kib(field):
    """A /proc/meminfo field (MemAvailable...), KiB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def pss_kib(pid):
    """A process's proportional set size (smaps_rollup), KiB; 0 once gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def must(r, what):
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip() if isinstance(r.stderr, bytes) else r.stderr
        raise RuntimeError(f"{what} failed (exit {r.returncode}): {err}")
    return r

class Vessel:
    name = "vessel"

    def __init__(self, work, bindir, image):
        self.home = os.path.join(work, "vessel-home")
        self.bin = os.path.join(bindir, "vessel")
        self.bindir = bindir
        self.image = image
        cfg = os.path.join(work, "vessel-cli")
        os.makedirs(os.path.join(cfg, "docker"))
        self.env = dict(os.environ, VESSEL_HOME=self.home, VESSEL_BIN_DIR=bindir,
                        VESSEL_CONFIG=os.path.join(cfg, "vessel"), DOCKER_CONFIG=os.path.join(cfg, "docker"))
        self.started = False

    def argv(self, *args):
        return [self.bin, *args]

    def run(self, *args, check=True, timeout=120):
        r = subprocess.run(self.argv(*args), env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
        return must(r, f"vessel {' '.join(args)}") if check else r

    def setup(self):
        self.started = True
        self.run("system", "start")
        self.run("image", "load", "-i", self.image)

    def start_container(self, name):
        self.run("run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "100000")

    def rm(self, name):
        remove(self.argv("rm", "-f", name), self.env)

    def run_i(self, name):
        return self.argv("run", "--rm", "-i", "--name", name, "--network", "none", IMAGE, "cat")

    def teardown(self):
        if self.started:
            try:
                subprocess.run(self.argv("system", "stop"), env=self.env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            except subprocess.TimeoutExpired:
                pass
        # Whatever outlived `system stop` (a stuck VM, a stalled CLI): the
        # processes whose command line names this instance's home or run
        # directory, all started by this script.
        run_base = self.run_base()
        kill_matching([self.home, run_base])
        shutil.rmtree(run_base, ignore_errors=True)
        if os.path.isdir(os.path.join(self.home, "networks")):
            subprocess.run([os.path.join(self.bindir, "vessel-network"), "--home", self.home, "--cleanup"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def run_base(self):
        # Home::run_base in crates/vessel-api/src/paths.rs.
        h = hashlib.sha256(self.home.encode()).hexdigest()[:10]
        if os.geteuid() == 0:
            return os.path.join("/run/vessel", h)
        x = os.environ.get("XDG_RUNTIME_DIR")
        return os.path.join(x, "vessel", h) if x else f"/tmp/vessel-{os.geteuid()}/{h}"

class Podman:
    name = "podman"

    def __init__(self, work, image):
        self.root = os.path.join(work, "podman-root")
        self.runroot = os.path.join(work, "podman-run")
        self.tmpdir = os.path.join(work, "podman-tmp")  # else /run/libpod, the host's podman's
        for d in (self.root, self.runroot, self.tmpdir):
            os.makedirs(d)
        self.image = image
        self.env = dict(os.environ)

    def argv(self, *args):
        return ["podman", "--root", self.root, "--runroot", self.runroot, "--tmpdir", self.tmpdir,
                "--runtime", "/usr/sbin/runc", "--cgroup-manager", "cgroupfs", *args]

    def run(self, *args, check=True, timeout=120):
        r = subprocess.run(self.argv(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
        return must(r, f"podman {' '.join(args)}") if check else r

    def setup(self):
        self.run("load", "-i", self.image)

    def start_container(self, name):
        out = self.run("run", "-d", "--name", name, "--network", "none", *PODMAN_LIMITS, IMAGE, "sleep", "100000")
        self.container_id = out.stdout.decode().strip()

    def runc_exec(self, *args):
        """`runc exec` of the running container straight (podman's own
        layers left out), if runc keeps its state where we can see it."""
        if os.path.isdir(os.path.join(RUNC_ROOT, self.container_id)):
            return ["/usr/sbin/runc", "--root", RUNC_ROOT, "exec", self.container_id, *args]
        return None

    def rm(self, name):
        remove(self.argv("rm", "-f", "-t", "0", name), self.env)

    def run_i(self, name):
        return self.argv("run", "--rm", "-i", "--name", name, "--network", "none", *PODMAN_LIMITS, IMAGE, "cat")

    def teardown(self):
        try:
            subprocess.run(self.argv("rm", "--all", "--force", "-t", "0"), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        except subprocess.TimeoutExpired:
            pass
        kill_matching([self.root, self.runroot, self.tmpdir])
        # Overlay and shm mounts podman may have left under its directories,
        # deepest first.
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        for p in sorted(points, key=len, reverse=True):
            if any(p == d or p.startswith(d + "/") for d in (self.root, self.runroot, self.tmpdir)):
                subprocess.run(["umount", "-l", p], stderr=subprocess.DEVNULL)

def remove(argv, env, limit=60):
    """`rm -f` of a container; a removal that hangs is reported, and the
    teardown kills what is left."""
    t = time.perf_counter()
    try:
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=limit)
    except subprocess.TimeoutExpired:
        print(f"`{' '.join(argv[-3:])}` did not return within {limit} s; left to the teardown", file=sys.stderr)
        return
    dt = time.perf_counter() - t
    if dt > 10:
        print(f"`{' '.join(argv[-3:])}` took {dt:.0f} s", file=sys.stderr)


def kill_matching(needles):
    """SIGKILL the processes whose command line contains one of `needles`
    (unique temporary paths of this run)."""
    me = os.getpid()
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == me:
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmd for n in needles):
            try:
                os.kill(int(p), signal.SIGKILL)
            except OSError:
                pass


# ---------------------------------------------------------------- exec latency


def prepare():
    """Check what a side-by-side run needs (the guest assets, the vessel
    binaries, podman) and make SIGTERM and SIGHUP end it as Ctrl-C does,
    through the cleanup. Returns (vessel's binary directory, the offline
    busybox image archive)."""
    env_path("VESSEL_KERNEL")
    env_path("VESSEL_INITRD")
    image = env_path("VESSEL_TEST_IMAGE")
    bindir = os.path.abspath(os.environ.get("VESSEL_BIN_DIR", os.path.join(ROOT, "target/release")))
    if not os.path.exists(os.path.join(bindir, "vessel")):
        sys.exit(f"no vessel binary in {bindir}: cargo build --release --bins, or set VESSEL_BIN_DIR")
    if shutil.which("podman") is None:
        sys.exit("podman is not installed: scripts/install-deps.sh installs it")

    def leave(sig, _frame):
        raise KeyboardInterrupt(f"signal {sig}")

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGHUP, leave)
    return bindir, image
