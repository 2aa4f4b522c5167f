//! containerd runs tasks in vessel VMs through `containerd-shim-vessel-v2`:
//! Debian's real containerd and `ctr`, started by each test with its own
//! root, state and socket under a temporary directory (never the system's
//! containerd).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use vessel_api::confine::{cgroup_dirs, cgroup_root};
use vessel_api::paths::Home;
use vessel_tests::{bin_dir, kill_matching, required_env, text, IMAGE};

const RUNTIME: &str = "io.containerd.vessel.v2";

/// One containerd of our own; everything it and its shims made goes at drop.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    fn start() -> Self {
        let kernel = required_env("VESSEL_KERNEL");
        let initrd = required_env("VESSEL_INITRD");
        let dir = tempfile::Builder::new()
            .prefix("vessel-ctrd-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "vessel"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.vessel]
  runtime_type = "{RUNTIME}"
"#,
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config).expect("config");
        let path = format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .env("VESSEL_KERNEL", kernel)
            .env("VESSEL_INITRD", initrd)
            .env("VESSEL_SHIM_ROOT", d.join("shim"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("containerd (install it: scripts/install-deps.sh)");
        let c = Containerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.dir.path().join("c.sock").exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let image = required_env("VESSEL_TEST_IMAGE");
        let out = c.ctr(&["images", "import", image.to_str().expect("path")]);
        assert!(out.status.success(), "import: {}", text(&out.stderr));
        c
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a").arg(self.path().join("c.sock"));
        // The stdio FIFOs of `run`, `task exec` and `task start` in the
        // test's directory: ctr's default (/run/containerd/fifo) keeps
        // those of a task whose shim was killed.
        let fifo = self.path().join("fifo");
        let at = match args {
            ["run", ..] => Some(1),
            ["task", "exec" | "start", ..] => Some(2),
            _ => None,
        };
        match at {
            Some(n) => {
                cmd.args(&args[..n])
                    .arg("--fifo-dir")
                    .arg(&fifo)
                    .args(&args[n..]);
            }
            None => {
                cmd.args(args);
            }
        }
        cmd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr")
    }

    /// `ctr run --rm --runtime vessel IMAGE ID ARGS...`
    fn run_rm(&self, id: &str, args: &[&str]) -> Output {
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME, IMAGE, id];
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// `ctr run -d --runtime vessel IMAGE ID sleep 1000`, asserted to
    /// succeed: a task that stays up while a test looks at it.
    fn run_idle(&self, id: &str) {
        let out = self.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            IMAGE,
            id,
            "sleep",
            "1000",
        ]);
        assert!(
            out.status.success(),
            "run -d: {}\n{}",
            text(&out.stderr),
            self.log()
        );
    }

    fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr(&["task", "ls"]);
        text(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
    }

    /// Processes that belong to this containerd's tasks: runtimes, QEMU,
    /// virtiofsd (their command lines name the shim's home or a bundle).
    fn leftovers(&self) -> Vec<String> {
        let needles = [
            self.path().join("shim").display().to_string(),
            self.path().join("state").display().to_string(),
        ];
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if needles.iter().any(|n| cmd.contains(n.as_str())) {
                found.push(format!("{pid}: {cmd}"));
            }
        }
        found
    }

    /// What task `id` may leave on the host besides processes: the
    /// runtime's run directory (under the shim home's run base), the VM's
    /// cgroups (`vessel/<id>` in each hierarchy), mounts under the task's
    /// bundle or the shim's home.
    fn task_leftovers(&self, id: &str) -> Vec<String> {
        let home = Home::new(self.path().join("shim/default").join(id));
        let mut found: Vec<String> = [home.run_dir(id), home.run_base()]
            .into_iter()
            .chain(cgroup_dirs(&cgroup_root(), id))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let under = [
            self.path().join("shim/default").join(id),
            self.path()
                .join("state/io.containerd.runtime.v2.task/default")
                .join(id),
        ];
        found.extend(
            mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|t| under.iter().any(|u| Path::new(t).starts_with(u)))
                .map(|t| format!("mount {t}")),
        );
        found
    }

    fn wait_for(&self, limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        f()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let d = self.path().display().to_string();
        // Shims (their -address is our socket), runtimes, VMs, virtiofsd.
        kill_matching(&[
            &format!("{d}/c.sock"),
            &format!("{d}/shim"),
            &format!("{d}/state"),
        ]);
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Snapshot mounts containerd or a shim left under our directory.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut targets: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|t| t.starts_with(&d))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for t in targets {
            let _ = Command::new("umount").arg("-l").arg(t).status();
        }
        let _ = Command::new("rm").arg("-rf").arg(self.path()).status();
    }
}

/// The release in a kernel image's banner (`Linux version 6.1.192 ...`).
fn kernel_release(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("kernel");
    let needle = b"Linux version ";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("kernel banner");
    let rest = &bytes[at + needle.len()..];
    let end = rest.iter().position(|b| *b == b' ').unwrap_or(0);
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

/// `ctr events` until killed: the task topics, in the order containerd
/// published them.
struct EventWatch(Child);

impl EventWatch {
    fn start(c: &Containerd) -> Self {
        let child = c
            .ctr_cmd(&["events"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("ctr events");
        // It subscribes as it starts.
        std::thread::sleep(Duration::from_millis(500));
        EventWatch(child)
    }

    /// `(topic, container id, exec id or task id)` of each task event.
    fn stop(mut self) -> Vec<(String, String, String)> {
        let _ = self.0.kill();
        let out = self.0.wait_with_output().expect("ctr events");
        text(&out.stdout)
            .lines()
            .filter_map(|l| {
                let topic = l.split_whitespace().find(|w| w.starts_with("/tasks/"))?;
                let json: serde_json::Value = serde_json::from_str(&l[l.find('{')?..]).ok()?;
                let id = json["exec_id"]
                    .as_str()
                    .or(json["id"].as_str())
                    .unwrap_or("")
                    .to_string();
                Some((
                    topic.to_string(),
                    json["container_id"].as_str().unwrap_or("").to_string(),
                    id,
                ))
            })
            .collect()
    }
}

fn topics_of(events: &[(String, String, String)], container: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.1 == container)
        .map(|e| format!("{} {}", e.0, e.2))
        .collect()
}

#[test]
fn ctr_run_prints_from_a_vessel_vm_and_exit_codes_propagate() {
    let c = Containerd::start();
    let events = EventWatch::start(&c);
    let out = c.run_rm("hello", &["sh", "-c", "echo hello; uname -r"]);
    assert!(
        out.status.success(),
        "ctr run: {}\n{}",
        text(&out.stderr),
        c.log()
    );
    let want = kernel_release(&required_env("VESSEL_KERNEL"));
    assert_eq!(text(&out.stdout), format!("hello\n{want}\n"));
    // containerd's order: create, start, exit, delete.
    let topics = topics_of(&events.stop(), "hello");
    assert_eq!(
        topics,
        [
            "/tasks/create ",
            "/tasks/start ",
            "/tasks/exit hello",
            "/tasks/delete hello"
        ],
        "{topics:?}"
    );
    let out = c.run_rm("seven", &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err\n"), "{}", text(&out.stderr));
    // A process killed by a signal: 128 + n, as runc reports it.
    let out = c.run_rm("sig", &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    assert!(
        c.wait_for(Duration::from_secs(15), || c.leftovers().is_empty()),
        "left behind: {:?}",
        c.leftovers()
    );
    for id in ["hello", "seven", "sig"] {
        assert_eq!(c.task_leftovers(id), Vec::<String>::new(), "task {id}");
    }
}

#[test]
fn ctr_task_commands_reach_the_vm() {
    let c = Containerd::start();
    c.run_idle("idle");
    assert_eq!(c.task_status("idle").as_deref(), Some("RUNNING"));
    // ps: the guest's processes (sleep).
    let out = c.ctr(&["task", "ps", "idle"]);
    assert!(out.status.success(), "ps: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).lines().count() >= 2,
        "{}",
        text(&out.stdout)
    );
    // metrics: the guest's memory and pids.
    let out = c.ctr(&["task", "metrics", "idle"]);
    assert!(out.status.success(), "metrics: {}", text(&out.stderr));
    let m = text(&out.stdout);
    let usage = m
        .lines()
        .find(|l| l.starts_with("memory.usage_in_bytes"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(usage > 1 << 20, "{m}");
    // exec: output, exit code, stdin, and a terminal; its events in order.
    let events = EventWatch::start(&c);
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "idle",
        "sh",
        "-c",
        "echo in-vm; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "in-vm\n");
    let topics = topics_of(&events.stop(), "idle");
    assert_eq!(
        topics,
        [
            "/tasks/exec-added e1",
            "/tasks/exec-started e1",
            "/tasks/exit e1"
        ],
        "{topics:?}"
    );
    let mut child = c
        .ctr_cmd(&["task", "exec", "--exec-id", "e2", "idle", "sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ctr exec");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"echo typed; exit 5\n").expect("write");
    }
    let out = child.wait_with_output().expect("exec");
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(text(&out.stdout), "typed\n");
    let ctr = format!("ctr -a {}/c.sock", c.path().display());
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{ctr} task exec -t --exec-id e3 idle sh -c 'tty; exit 4'"
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .expect("script");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("/dev/pts/"),
        "{}",
        text(&out.stdout)
    );
    // pause / resume: the whole VM.
    assert!(c.ctr(&["task", "pause", "idle"]).status.success());
    assert_eq!(c.task_status("idle").as_deref(), Some("PAUSED"));
    assert!(c.ctr(&["task", "resume", "idle"]).status.success());
    assert_eq!(c.task_status("idle").as_deref(), Some("RUNNING"));
    // kill: SIGTERM ends sleep (PID 1 of the container gets it, as in runc).
    assert!(c.ctr(&["task", "kill", "idle"]).status.success());
    assert!(
        c.wait_for(Duration::from_secs(20), || c.task_status("idle").as_deref()
            == Some("STOPPED")),
        "{:?}",
        c.task_status("idle")
    );
    let out = c.ctr(&["task", "rm", "idle"]);
    assert!(out.status.success(), "task rm: {}", text(&out.stderr));
    assert!(c.ctr(&["container", "rm", "idle"]).status.success());
    assert!(
        c.wait_for(Duration::from_secs(15), || c.leftovers().is_empty()),
        "left behind: {:?}",
        c.leftovers()
    );
}

#[test]
fn a_killed_shim_ends_its_task_and_leaves_nothing() {
    let c = Containerd::start();
    c.run_idle("doomed");
    assert!(!c.leftovers().is_empty(), "the VM should be running");
    let shim = format!("-id doomed -address {}/c.sock", c.path().display());
    let socket = shim_socket(&shim);
    assert!(socket.exists(), "{}", socket.display());
    assert_eq!(kill_matching(&[&shim]), 1, "one shim");
    // The runtime gets its parent-death signal and takes the VM down.
    assert!(
        c.wait_for(Duration::from_secs(20), || c.leftovers().is_empty()),
        "left behind: {:?}",
        c.leftovers()
    );
    // containerd noticed: the task is gone or stopped, and can be removed.
    assert!(
        c.wait_for(Duration::from_secs(10), || c
            .task_status("doomed")
            .as_deref()
            != Some("RUNNING")),
        "{:?}",
        c.task_status("doomed")
    );
    let _ = c.ctr(&["task", "rm", "-f", "doomed"]);
    assert!(c.ctr(&["container", "rm", "doomed"]).status.success());
    let shim_home: PathBuf = c.path().join("shim/default/doomed");
    assert!(!shim_home.exists(), "{} left", shim_home.display());
    assert!(
        !socket.exists(),
        "the shim's socket {} left",
        socket.display()
    );
    // Nor the run directory, the cgroups, a mount or a process.
    assert_eq!(c.task_leftovers("doomed"), Vec::<String>::new());
    assert!(c.leftovers().is_empty(), "left behind: {:?}", c.leftovers());
}

/// The ttrpc socket of the shim whose command line contains `needle`
/// (its `-socket unix://PATH` argument).
fn shim_socket(needle: &str) -> PathBuf {
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.join(" ").contains(needle) {
            continue;
        }
        if let Some(i) = args.iter().position(|a| a == "-socket") {
            if let Some(s) = args.get(i + 1) {
                return PathBuf::from(s.trim_start_matches("unix://"));
            }
        }
    }
    panic!("no shim with {needle}");
}

#[test]
fn a_killed_vm_ends_its_task_with_255() {
    let c = Containerd::start();
    c.run_idle("lost");
    let home = c.path().join("shim/default/lost").display().to_string();
    // QEMU's command line names the task's files in the shim's home.
    let qemu = c
        .leftovers()
        .into_iter()
        .find(|l| l.contains("qemu-system") && l.contains(&home))
        .expect("the task's QEMU");
    let pid: i32 = qemu
        .split(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("pid");
    // SAFETY: kill(2) on the QEMU this test's containerd started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(
        c.wait_for(Duration::from_secs(20), || c.task_status("lost").as_deref()
            == Some("STOPPED")),
        "{:?}",
        c.task_status("lost")
    );
    let out = c.ctr(&["task", "rm", "lost"]);
    assert!(out.status.success(), "task rm: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("255"),
        "the exit status: {}",
        text(&out.stderr)
    );
    assert!(c.ctr(&["container", "rm", "lost"]).status.success());
    assert!(
        c.wait_for(Duration::from_secs(15), || c.leftovers().is_empty()),
        "left behind: {:?}",
        c.leftovers()
    );
}

/// A network namespace of the test's own with an interface from Debian's
/// reference CNI `bridge` plugin (its own bridge and subnet, host-local
/// IPAM in a temporary directory); everything goes at drop: CNI DEL, the
/// namespace, the bridge.
struct CniNetns {
    name: String,
    bridge: String,
    config: String,
    dir: tempfile::TempDir,
}

impl CniNetns {
    const PLUGINS: &'static str = "/usr/lib/cni";

    fn add() -> Self {
        let pid = std::process::id();
        let name = format!("vsl-test-{pid}");
        let bridge = format!("vslcni{}", pid % 100_000);
        let dir = tempfile::Builder::new()
            .prefix("vessel-cni-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let config = format!(
            r#"{{"cniVersion": "0.4.0", "name": "vsl-test", "type": "bridge",
                "bridge": "{bridge}", "isGateway": true, "ipMasq": false,
                "ipam": {{"type": "host-local", "subnet": "10.231.{}.0/24",
                          "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{}"}}}}"#,
            Self::free_third_octet(pid),
            dir.path().join("ipam").display()
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip netns add: {}", text(&out.stderr));
        CniNetns {
            name,
            bridge,
            config,
            dir,
        }
    }

    /// X of a 10.231.X.0/24 no route of the host covers yet (other tests'
    /// and workers' networks), starting from one picked by `pid`.
    fn free_third_octet(pid: u32) -> u32 {
        let routes = Command::new("ip")
            .args(["-4", "route", "show", "table", "all"])
            .output()
            .map(|o| text(&o.stdout))
            .unwrap_or_default();
        (0..250)
            .map(|i| (pid + i) % 250)
            .find(|x| !routes.contains(&format!("10.231.{x}.")))
            .expect("a free 10.231.X.0/24")
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Run the `bridge` plugin with `command` (ADD, DEL).
    fn plugin(&self, command: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(Path::new(Self::PLUGINS).join("bridge"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.name)
            .env("CNI_NETNS", self.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", Self::PLUGINS)
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the CNI bridge plugin (install containernetworking-plugins)");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(self.config.as_bytes()).expect("config");
        drop(stdin);
        child.wait_with_output().expect("plugin")
    }

    /// ADD: the address the plugin gave eth0.
    fn add_interface(&self) -> String {
        let out = self.plugin("ADD");
        assert!(
            out.status.success(),
            "CNI ADD: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("CNI result");
        let cidr = result["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address in {result}"));
        cidr.split('/').next().expect("address").to_string()
    }

    /// What is in the namespace now (`ip -o link`, `tc qdisc`).
    fn inside(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec");
        text(&out.stdout)
    }
}

impl Drop for CniNetns {
    fn drop(&mut self) {
        let _ = self.plugin("DEL");
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// `GET /` from `ip:80`, the body (None until something answers).
fn http_get(ip: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{ip}:80").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: vessel\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    reply
        .split_once("\r\n\r\n")
        .filter(|(head, _)| head.starts_with("HTTP/1.") && head.contains(" 200 "))
        .map(|(_, body)| body.to_string())
}

#[test]
fn a_task_in_a_cni_network_namespace_answers_from_its_vm() {
    let netns = CniNetns::add();
    let c = Containerd::start();
    let with_ns = format!("network:{}", netns.path());
    // Before the plugin ran: nothing to connect, the task is refused and
    // leaves nothing in the namespace.
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &with_ns,
        IMAGE,
        "early",
        "true",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no interface with an IPv4 address"),
        "{}",
        text(&out.stderr)
    );
    assert!(!netns.inside(&["ip", "-o", "link"]).contains("vsl-tap0"));
    let _ = c.ctr(&["container", "rm", "early"]);
    let ip = netns.add_interface();
    let script = "mkdir -p /www && echo served-from-vessel > /www/index.html && \
                  ip -4 addr show dev eth0 && ip route && exec httpd -f -p 80 -h /www";
    let mut run = c
        .ctr_cmd(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--with-ns",
            &with_ns,
            IMAGE,
            "web",
            "sh",
            "-c",
            script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr");
    let mut body = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while body.is_none() && Instant::now() < deadline {
        if let Ok(Some(_)) = run.try_wait() {
            break;
        }
        body = http_get(&ip);
        if body.is_none() {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    // The TAP and the redirects are there while the task runs.
    let links = netns.inside(&["ip", "-o", "link"]);
    let qdiscs = netns.inside(&["tc", "qdisc", "show"]);
    // A second task in the namespace is refused, and takes nothing from
    // the first.
    let second = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &with_ns,
        IMAGE,
        "second",
        "true",
    ]);
    let _ = c.ctr(&["container", "rm", "second"]);
    let again = http_get(&ip);
    let _ = c.ctr(&["task", "kill", "-s", "KILL", "web"]);
    let out = run.wait_with_output().expect("ctr run");
    let stdout = text(&out.stdout);
    assert_eq!(
        body.as_deref(),
        Some("served-from-vessel\n"),
        "no answer from {ip}\nctr run: {stdout}{}\n{}",
        text(&out.stderr),
        c.log()
    );
    assert!(
        stdout.contains(&format!("inet {ip}/24")),
        "the guest's eth0 has {ip}: {stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "default via {}.1",
            ip.rsplitn(2, '.').last().unwrap()
        )),
        "{stdout}"
    );
    assert!(links.contains("vsl-tap0"), "{links}");
    assert_eq!(qdiscs.matches("ingress").count(), 2, "{qdiscs}");
    assert!(!second.status.success());
    assert!(
        text(&second.stderr).contains("already has vsl-tap0"),
        "{}",
        text(&second.stderr)
    );
    assert_eq!(again.as_deref(), Some("served-from-vessel\n"));
    // Deleted with the task: the TAP and the qdiscs; the namespace and its
    // CNI interface stay (they are CNI's).
    assert!(
        c.wait_for(Duration::from_secs(15), || c.leftovers().is_empty()),
        "left behind: {:?}",
        c.leftovers()
    );
    let links = netns.inside(&["ip", "-o", "link"]);
    assert!(!links.contains("vsl-tap0"), "{links}");
    assert!(links.contains("eth0"), "{links}");
    let qdiscs = netns.inside(&["tc", "qdisc", "show"]);
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    // A killed shim: containerd's `delete` call removes them too.
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &with_ns,
        IMAGE,
        "doomed",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    assert!(netns.inside(&["ip", "-o", "link"]).contains("vsl-tap0"));
    let shim = format!("-id doomed -address {}/c.sock", c.path().display());
    assert_eq!(kill_matching(&[&shim]), 1, "one shim");
    assert!(
        c.wait_for(Duration::from_secs(20), || c.leftovers().is_empty()),
        "left behind: {:?}",
        c.leftovers()
    );
    assert!(
        c.wait_for(Duration::from_secs(10), || c
            .task_status("doomed")
            .as_deref()
            != Some("RUNNING")),
        "{:?}",
        c.task_status("doomed")
    );
    let _ = c.ctr(&["task", "rm", "-f", "doomed"]);
    let _ = c.ctr(&["container", "rm", "doomed"]);
    let links = netns.inside(&["ip", "-o", "link"]);
    assert!(!links.contains("vsl-tap0"), "{links}");
    let qdiscs = netns.inside(&["tc", "qdisc", "show"]);
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
}
