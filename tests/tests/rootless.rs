//! Rootless mode end to end: a whole vessel instance (CLI, apiserver, image
//! helper, runtime helpers, QEMU, passt) runs as an unprivileged user.
//!
//! Run as root, the test uses the user `vessel-rootless-test` (created with
//! `useradd` when missing) through `runuser`, with a home, `VESSEL_HOME` and
//! `XDG_RUNTIME_DIR` that user owns; run as a normal user, it runs vessel as
//! itself. Every address used is on this machine: the host's loopback and,
//! as root, a network namespace the test creates behind a veth pair. The
//! instance, its processes, the namespace and the temporary directory are
//! removed even when the test fails.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vessel_tests::{assert_ok, bin_dir, kill_matching, required_env, text, IMAGE};

const USER: &str = "vessel-rootless-test";

/// A container command serving `/www/index.html` with busybox httpd.
const SERVE: &str =
    "mkdir -p /www && echo hello-rootless > /www/index.html && exec httpd -f -p 80 -h /www";

/// The status note rootless mode must show.
const NOTE: &str = "network:      rootless (passt): outbound NAT and published ports only; \
                    no container-to-container networking, no DNS by name, no user-defined networks";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

/// `(uid, gid)` of the unprivileged user, created when missing (as root).
fn test_user() -> (u32, u32) {
    if !is_root() {
        // SAFETY: getuid/getgid have no preconditions.
        return unsafe { (libc::getuid(), libc::getgid()) };
    }
    // One useradd at a time: tests run on threads, and a user half made by
    // another thread's useradd has been seen without its home.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _making = MAKING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !run("id", &["-u", USER]).status.success() {
        let out = run(
            "useradd",
            &["--create-home", "--shell", "/bin/sh", "--user-group", USER],
        );
        // Another test process may have created it meanwhile.
        if !run("id", &["-u", USER]).status.success() {
            assert_ok(&out, "useradd");
        }
    }
    let id = |flag: &str| -> u32 {
        text(&run("id", &[flag, USER]).stdout)
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

/// A vessel instance run by the unprivileged user.
struct Rootless {
    /// Holds `home/` (HOME and VESSEL_HOME), `xdg/` (XDG_RUNTIME_DIR) and
    /// copies of anything the user could not read.
    dir: tempfile::TempDir,
    bin: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    image: PathBuf,
    started: bool,
    /// `VESSEL_DNS_UPSTREAM` for the instance, if set.
    dns_upstream: Option<String>,
    /// `VESSEL_VIRTIOFSD`: a copy the user can run, when the one on the
    /// machine is not (root's `~/.cargo/bin`).
    virtiofsd: Option<PathBuf>,
}

impl Rootless {
    fn new() -> Self {
        let (uid, gid) = test_user();
        let dir = tempfile::Builder::new()
            .prefix("vessel-rl-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut me = Self {
            bin: bin_dir(),
            kernel: required_env("VESSEL_KERNEL"),
            initrd: required_env("VESSEL_INITRD"),
            image: required_env("VESSEL_TEST_IMAGE"),
            dir,
            started: false,
            dns_upstream: None,
            virtiofsd: None,
        };
        for d in ["home", "xdg", "copies"] {
            std::fs::create_dir(me.dir.path().join(d)).unwrap();
        }
        if is_root() {
            for p in [
                me.dir.path().to_path_buf(),
                me.dir.path().join("home"),
                me.dir.path().join("xdg"),
                me.dir.path().join("copies"),
            ] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
            }
            // What the user cannot read or run is copied where it can.
            if !me.user_can("-x", &me.bin.join("vessel")) {
                let copy = me.dir.path().join("copies/bin");
                std::fs::create_dir(&copy).unwrap();
                for b in [
                    "vessel",
                    "vessel-apiserver",
                    "vessel-images",
                    "vessel-runtime",
                    "vessel-network",
                ] {
                    std::fs::copy(me.bin.join(b), copy.join(b)).unwrap();
                }
                me.bin = copy;
            }
            for f in [&mut me.kernel, &mut me.initrd, &mut me.image] {
                if !Self::user_can_static("-r", f) {
                    let copy = me.dir.path().join("copies").join(f.file_name().unwrap());
                    std::fs::copy(&*f, &copy).unwrap();
                    *f = copy;
                }
            }
            // virtiofsd where the user's PATH finds it, else a copy.
            let usable = ["/usr/local/bin/virtiofsd", "/usr/bin/virtiofsd"]
                .iter()
                .any(|p| Path::new(p).is_file() && Self::user_can_static("-x", Path::new(p)));
            if !usable {
                if let Some(found) = std::env::var_os("VESSEL_VIRTIOFSD")
                    .map(PathBuf::from)
                    .or_else(|| vessel_api::paths::find_in_path("virtiofsd"))
                {
                    let copy = me.dir.path().join("copies/virtiofsd");
                    std::fs::copy(&found, &copy).unwrap();
                    me.virtiofsd = Some(copy);
                }
            }
            // The copies must be the user's to read.
            let _ = run(
                "chmod",
                &["-R", "a+rX", me.dir.path().join("copies").to_str().unwrap()],
            );
        }
        me
    }

    fn user_can(&self, test: &str, p: &Path) -> bool {
        Self::user_can_static(test, p)
    }

    fn user_can_static(test: &str, p: &Path) -> bool {
        run(
            "runuser",
            &["-u", USER, "--", "test", test, p.to_str().unwrap()],
        )
        .status
        .success()
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `vessel ARGS` as the unprivileged user.
    fn vessel(&self, args: &[&str]) -> Output {
        let env: Vec<(&str, OsString)> = vec![
            ("HOME", self.home().into()),
            ("VESSEL_HOME", self.home().join("vessel").into()),
            ("XDG_RUNTIME_DIR", self.dir.path().join("xdg").into()),
            ("VESSEL_KERNEL", self.kernel.clone().into()),
            ("VESSEL_INITRD", self.initrd.clone().into()),
            ("VESSEL_CONFIG", self.home().join("config").into()),
            ("DOCKER_CONFIG", self.home().join("docker").into()),
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        ];
        let mut env = env;
        if let Some(d) = &self.dns_upstream {
            env.push(("VESSEL_DNS_UPSTREAM", d.into()));
        }
        if let Some(p) = &self.virtiofsd {
            env.push(("VESSEL_VIRTIOFSD", p.into()));
        }
        let vessel = self.bin.join("vessel");
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", USER, "--"]).arg(&vessel);
            c
        } else {
            Command::new(&vessel)
        };
        c.env_clear().args(args).stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("running vessel")
    }

    fn start(&mut self) {
        assert_ok(&self.vessel(&["system", "start"]), "system start");
        self.started = true;
        assert_ok(
            &self.vessel(&["image", "load", "-i", self.image.to_str().unwrap()]),
            "image load",
        );
    }
}

impl Drop for Rootless {
    fn drop(&mut self) {
        if self.started {
            let _ = self.vessel(&["system", "stop"]);
        }
        // Anything left (VMs, passt, helpers) names the temporary directory.
        kill_matching(&[&self.dir.path().to_string_lossy()]);
    }
}

/// A tiny HTTP server on `addr` answering `body`, counting requests.
fn serve_http(listener: TcpListener, body: String) -> Arc<AtomicUsize> {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            h.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    hits
}

/// A DNS server on `sock` answering every A query with 192.0.2.99 and
/// everything else with no answer.
fn serve_dns(sock: std::net::UdpSocket) -> Arc<AtomicUsize> {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            let Some(end) = q.get(12..).and_then(|r| r.iter().position(|&b| b == 0)) else {
                continue;
            };
            let Some(question) = q.get(12..12 + end + 5) else {
                continue;
            };
            h.fetch_add(1, Ordering::SeqCst);
            let is_a = question[question.len() - 4..question.len() - 2] == [0, 1];
            let mut r = vec![q[0], q[1], 0x81, 0x80, 0, 1, 0, u8::from(is_a), 0, 0, 0, 0];
            r.extend_from_slice(question);
            if is_a {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 10, 0, 4, 192, 0, 2, 99]);
            }
            let _ = sock.send_to(&r, from);
        }
    });
    hits
}

/// GET / from `addr`; the whole answer, if any.
fn http_get(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Pids of passt processes serving the container `id`.
fn passt_pids(id: &str) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("passt") && cmd.contains("--fd") && cmd.contains(id) {
            let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("Uid:"))
                        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
                })
                .and_then(|u| u.parse().ok())
                .unwrap_or(u32::MAX);
            out.push((pid, uid));
        }
    }
    out
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A network namespace behind a veth pair (`198.19.250.N/30`), removed on
/// drop: a host on this machine that is not the host itself.
struct Outside {
    ns: String,
    veth: String,
    server: Option<std::process::Child>,
    addr: String,
}

impl Outside {
    fn new(www: &Path) -> Self {
        let n = std::process::id() % 60;
        let ns = format!("vrl{}", std::process::id());
        let veth = format!("vrlh{}", std::process::id() % 100_000);
        let (host_ip, ns_ip) = (
            format!("198.19.250.{}", n * 4 + 1),
            format!("198.19.250.{}", n * 4 + 2),
        );
        let mut me = Self {
            ns: ns.clone(),
            veth: veth.clone(),
            server: None,
            addr: format!("{ns_ip}:8080"),
        };
        let ok = |out: Output, what: &str| assert_ok(&out, what);
        ok(run("ip", &["netns", "add", &ns]), "ip netns add");
        ok(
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            ),
            "ip link add veth",
        );
        ok(
            run(
                "ip",
                &["addr", "add", &format!("{host_ip}/30"), "dev", &veth],
            ),
            "addr",
        );
        ok(run("ip", &["link", "set", &veth, "up"]), "veth up");
        for args in [
            vec!["addr", "add", &format!("{ns_ip}/30"), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut a = vec!["netns", "exec", &ns, "ip"];
            a.extend(args.iter().map(|s| &**s));
            ok(run("ip", &a), "ip in namespace");
        }
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "busybox", "httpd", "-f", "-p"])
            .arg(&me.addr)
            .arg("-h")
            .arg(www)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        me.server = Some(child);
        let addr = me.addr.clone();
        assert!(
            wait_until(Duration::from_secs(5), || http_get(&addr).is_some()),
            "the outside server did not come up"
        );
        me
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = run("ip", &["link", "del", &self.veth]);
        let _ = run("ip", &["netns", "del", &self.ns]);
    }
}

#[test]
fn rootless_containers_get_outbound_access_and_published_ports_through_passt() {
    let (uid, _) = test_user();
    let mut v = Rootless::new();
    // As root, a DNS server on the host's loopback stands for the host's
    // resolver (guests reach 127.0.0.1 through the gateway).
    let dns = if is_root() {
        std::net::UdpSocket::bind("127.0.0.1:53").ok()
    } else {
        None
    };
    let dns_hits = dns.map(|s| {
        v.dns_upstream = Some("127.0.0.1".into());
        serve_dns(s)
    });
    v.start();

    // The status says what differs from root mode.
    let st = v.vessel(&["system", "status"]);
    assert_ok(&st, "system status");
    let st = text(&st.stdout);
    assert!(st.contains(NOTE), "{st}");
    assert!(
        st.contains("vessel-network: not running: not used in rootless mode"),
        "{st}"
    );

    // Outbound: a server on the host's loopback, reached through the
    // gateway (passt maps it to the host).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = serve_http(l, "host-loopback-ok".into());
    let url = format!("http://10.0.2.2:{port}/");
    let started = Instant::now();
    let out = v.vessel(&["run", "--rm", IMAGE, "sh", "-c", &format!(
        "stat -c 'owner %n %u:%g %a' /bin/busybox /root /home/vessel; ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route | grep default; cat /etc/resolv.conf; wget -q -O - {url}"
    )]);
    let took = started.elapsed();
    assert_ok(&out, "run wget to the host");
    let o = text(&out.stdout);
    // Unpacked by the user, the image still has the owners and modes its
    // layers give (debugfs writes them into the ext4 base).
    assert!(o.contains("owner /bin/busybox 0:0 755\n"), "{o}");
    assert!(o.contains("owner /root 0:0 700\n"), "{o}");
    assert!(o.contains("owner /home/vessel 1000:1000 755\n"), "{o}");
    assert!(o.contains("inet 10.0.2.15/24"), "{o}");
    assert!(o.contains("default via 10.0.2.2"), "{o}");
    assert!(o.contains("host-loopback-ok"), "{o}");
    assert!(hits.load(Ordering::SeqCst) >= 1);
    eprintln!("run --rm with wget to the host: {took:?}");

    if let Some(hits) = &dns_hits {
        let out = v.vessel(&[
            "run",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            "cat /etc/resolv.conf; nslookup example.test",
        ]);
        assert_ok(&out, "run nslookup");
        let o = text(&out.stdout);
        assert!(o.contains("nameserver 10.0.2.2"), "{o}");
        assert!(o.contains("192.0.2.99"), "{o}");
        assert!(hits.load(Ordering::SeqCst) >= 1);
    } else {
        eprintln!("DNS check skipped: not root or 127.0.0.1:53 is taken");
    }

    // Outbound to another address on this machine: a namespace behind a
    // veth (needs root to create; skipped otherwise).
    if is_root() {
        let www = v.dir.path().join("www");
        std::fs::create_dir(&www).unwrap();
        std::fs::write(www.join("index.html"), "outside-ok\n").unwrap();
        let outside = Outside::new(&www);
        let out = v.vessel(&[
            "run",
            "--rm",
            IMAGE,
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{}/", outside.addr),
        ]);
        assert_ok(&out, "run wget to the outside namespace");
        assert!(
            text(&out.stdout).contains("outside-ok"),
            "{}",
            text(&out.stdout)
        );
    }

    // A published port on the host's loopback.
    let hp = free_port();
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("127.0.0.1:{hp}:80"),
        IMAGE,
        "sh",
        "-c",
        SERVE,
    ]);
    assert_ok(&out, "run -d -p");
    let id = text(&out.stdout).trim().to_string();
    let addr = format!("127.0.0.1:{hp}");
    let mut page = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            page = http_get(&addr).unwrap_or_default();
            page.contains("hello-rootless")
        }),
        "no page from {addr}: {page:?}"
    );
    let passts = passt_pids(&id);
    assert_eq!(passts.len(), 1, "{passts:?}");
    assert_eq!(passts[0].1, uid, "passt runs as the unprivileged user");

    // inspect and ls show the address and the port.
    let out = v.vessel(&["inspect", "web"]);
    assert_ok(&out, "inspect");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let net = &info[0]["networks"][0];
    assert_eq!(net["ip"], "10.0.2.15", "{net}");
    assert_eq!(net["mode"], "user", "{net}");
    assert_eq!(net["ports"][0]["host_port"], hp, "{net}");
    let ls = text(&v.vessel(&["ls"]).stdout);
    assert!(ls.contains(&format!("127.0.0.1:{hp}->80/tcp")), "{ls}");

    // After stop: passt is gone and the port is free.
    assert_ok(&v.vessel(&["stop", "web"]), "stop");
    assert!(passt_pids(&id).is_empty(), "passt outlived stop");
    assert!(
        TcpListener::bind(&addr).is_ok(),
        "{addr} still bound after stop"
    );
    assert_ok(&v.vessel(&["rm", "web"]), "rm");

    // kill -9 of the runtime helper takes QEMU and passt with it.
    let hp2 = free_port();
    let out = v.vessel(&[
        "run",
        "-d",
        "-p",
        &format!("127.0.0.1:{hp2}:80"),
        IMAGE,
        "sleep",
        "300",
    ]);
    assert_ok(&out, "run -d sleep");
    let id2 = text(&out.stdout).trim().to_string();
    let state: Value = serde_json::from_slice(
        &std::fs::read(
            v.home()
                .join("vessel/containers")
                .join(&id2)
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let runtime = state["runtime_pid"].as_i64().unwrap() as i32;
    let vmm = state["vmm_pid"].as_i64().unwrap() as i32;
    assert_eq!(passt_pids(&id2).len(), 1);
    // The VMM's jail, rootless: the user's own ids, seccomp, no new
    // privileges, and (user namespaces allowing) its own mount namespace.
    let field = |f: &str| {
        std::fs::read_to_string(format!("/proc/{vmm}/status"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{f}:"))
                    .map(|x| x.trim().to_string())
            })
            .unwrap_or_default()
    };
    assert_eq!(field("Seccomp"), "2");
    assert_eq!(field("NoNewPrivs"), "1");
    assert!(
        field("Uid").starts_with(&format!("{uid}\t")),
        "{}",
        field("Uid")
    );
    if vessel_api::confine::userns_allowed() {
        let root = PathBuf::from(format!("/proc/{vmm}/root"));
        assert!(!root.join("etc/shadow").exists());
        assert!(!root.join("etc/passwd").exists());
        assert!(root.join("usr/bin").exists());
        assert!(state.get("vmm_uid").is_none());
    }
    // SAFETY: kill has no memory-safety preconditions; the pid is the
    // container's runtime helper, read from its state.
    unsafe { libc::kill(runtime, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(5), || passt_pids(&id2).is_empty()
            && !Path::new(&format!("/proc/{vmm}")).exists()),
        "passt or QEMU outlived their runtime helper"
    );
    assert!(wait_until(Duration::from_secs(5), || TcpListener::bind((
        "127.0.0.1",
        hp2
    ))
    .is_ok()));
    let _ = v.vessel(&["rm", "-f", &id2]);

    // What rootless mode refuses, with the reason.
    let fails = |args: &[&str], want: &str| {
        let out = v.vessel(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        if args[0] == "run" {
            assert_eq!(out.status.code(), Some(125), "{args:?}");
        }
        let e = text(&out.stderr);
        assert!(e.contains(want), "{args:?}: {e}");
    };
    fails(&["run", "--rm", "-p", "80:80", IMAGE, "true"], "below 1024");
    fails(
        &["network", "create", "mynet"],
        "not available in rootless mode",
    );
    fails(
        &["run", "--rm", "--network", "mynet", IMAGE, "true"],
        "not available in rootless mode",
    );
    fails(
        &["run", "--rm", "--network-alias", "db", IMAGE, "true"],
        "rootless mode",
    );
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    fails(
        &[
            "run",
            "--rm",
            "-p",
            &format!("127.0.0.1:{taken}:80"),
            IMAGE,
            "true",
        ],
        &format!("Bind for 127.0.0.1:{taken} failed: port is already allocated"),
    );
    let all = text(&v.vessel(&["ls", "-a", "-q"]).stdout);
    assert!(all.trim().is_empty(), "refused runs left containers: {all}");
    // `--network none` still works.
    let out = v.vessel(&["run", "--rm", "--network", "none", IMAGE, "true"]);
    assert_ok(&out, "run --network none");
}

/// Owner uid and gid of a host file.
fn owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

#[test]
fn rootless_bind_mounts_write_as_the_user_whatever_the_guest_uid() {
    let (uid, gid) = test_user();
    let mut v = Rootless::new();
    v.start();
    // The user's directory, with a file of theirs in it (in the guest the
    // user's files are the container user's).
    let data = v.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("in.txt"), "from-the-host\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    if is_root() {
        for p in [data.clone(), data.join("in.txt")] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        }
    }
    let mount = format!("{}:/data", data.display());
    let out = v.vessel(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-u",
        "1000:1000",
        "-v",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "cat /data/in.txt && stat -c 'owner-in-guest %u:%g' /data/in.txt && \
         echo by-1000 > /data/by1000 && mkdir /data/dir1000 && echo deep > /data/dir1000/f",
    ]);
    assert_ok(&out, "run -u 1000 with a bind mount (rootless)");
    let o = text(&out.stdout);
    assert!(o.contains("from-the-host"), "{o}");
    assert!(
        o.contains("owner-in-guest 1000:1000"),
        "the user's files are the container user's in the guest: {o}"
    );
    let out = v.vessel(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "echo by-root > /data/byroot && chown 4242:4242 /data/byroot; mknod /data/null c 1 3; true",
    ]);
    assert_ok(&out, "run as root with a bind mount (rootless)");
    // Everything the container wrote is the user's on the host.
    for f in ["by1000", "dir1000", "dir1000/f", "byroot"] {
        assert_eq!(owner(&data.join(f)), (uid, gid), "{f} on the host");
    }
    assert_eq!(
        std::fs::read_to_string(data.join("by1000")).unwrap(),
        "by-1000\n"
    );
    assert!(
        !data.join("null").exists(),
        "a device node was made in a host directory"
    );
    // And the user can delete it all.
    if is_root() {
        let out = run(
            "runuser",
            &[
                "-u",
                USER,
                "--",
                "rm",
                "-r",
                data.join("dir1000").to_str().unwrap(),
                data.join("by1000").to_str().unwrap(),
                data.join("byroot").to_str().unwrap(),
            ],
        );
        assert_ok(&out, "rm as the user");
    }
    assert!(!data.join("dir1000").exists());
}

/// Does `p` still exist (without following a link)?
fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

#[test]
fn rootless_volumes_block_and_shared_are_the_user_s() {
    let (uid, gid) = test_user();
    let mut v = Rootless::new();
    v.start();
    let volumes = v.home().join("vessel/volumes");
    let run_ok = |args: &[&str], what: &str| -> String {
        let mut a = vec!["run", "--rm", "--network", "none"];
        a.extend_from_slice(args);
        let out = v.vessel(&a);
        assert_ok(&out, what);
        text(&out.stdout)
    };

    // A block volume, made by the user (mkfs.ext4 and debugfs as the
    // user): an ext4 disk whose ids are the guest's own.
    assert_ok(
        &v.vessel(&["volume", "create", "--opt", "size=64m", "blk"]),
        "volume create (block, rootless)",
    );
    assert_eq!(owner(&volumes.join("blk/disk.img")), (uid, gid));
    let o = run_ok(
        &[
            "-v",
            "blk:/data",
            IMAGE,
            "sh",
            "-c",
            "ls -A /data; stat -c 'root %u:%g %a' /data; echo by-root > /data/r && \
             mkdir /data/home && chown 1000:1000 /data/home",
        ],
        "run as root with a block volume (rootless)",
    );
    assert!(o.starts_with("root 0:0 755\n"), "empty, root's: {o}");
    run_ok(
        &[
            "-u",
            "1000:1000",
            "-v",
            "blk:/data",
            IMAGE,
            "sh",
            "-c",
            "echo by-1000 > /data/home/u && ! touch /data/denied 2>/dev/null",
        ],
        "run -u 1000 with a block volume (rootless)",
    );
    let o = run_ok(
        &[
            "-v",
            "blk:/data",
            IMAGE,
            "sh",
            "-c",
            "cat /data/r /data/home/u; stat -c '%n %u:%g' /data/r /data/home/u",
        ],
        "the next container reads the block volume",
    );
    assert_eq!(
        o, "by-root\nby-1000\n/data/r 0:0\n/data/home/u 1000:1000\n",
        "data and guest owners kept"
    );
    // A second running container on it is refused by the apiserver and
    // the runtime's flock, as the user.
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "holder",
        "--network",
        "none",
        "-v",
        "blk:/data",
        IMAGE,
        "sleep",
        "300",
    ]);
    assert_ok(&out, "run -d with the block volume");
    let e = text(
        &v.vessel(&["run", "--rm", "-v", "blk:/data", IMAGE, "true"])
            .stderr,
    );
    assert!(e.contains("holder"), "{e}");
    assert_ok(&v.vessel(&["rm", "-f", "holder"]), "rm -f holder");

    // A shared volume: a directory of the user's, served by a virtiofsd
    // running as the user that writes every guest id as the user's.
    assert_ok(
        &v.vessel(&["volume", "create", "--opt", "backing=shared", "team"]),
        "volume create (shared, rootless)",
    );
    let data = volumes.join("team/data");
    assert_eq!(owner(&data), (uid, gid));
    // First use copies the image's /home/vessel (1000:1000) in.
    let o = run_ok(
        &[
            "-v",
            "team:/home/vessel",
            IMAGE,
            "sh",
            "-c",
            "stat -c 'root %u:%g' /home/vessel; echo by-root > /home/vessel/r; \
             chown 4242:4242 /home/vessel/r; mkdir -p /home/vessel/deep/er; \
             echo x > /home/vessel/deep/er/f; chmod 0 /home/vessel/deep/er/f; \
             chmod 500 /home/vessel/deep/er; mknod /home/vessel/null c 1 3; true",
        ],
        "run as root with a shared volume (rootless)",
    );
    assert!(o.contains("root 0:0"), "{o}");
    let o = run_ok(
        &[
            "-u",
            "1000:1000",
            "-v",
            "team:/s",
            IMAGE,
            "sh",
            "-c",
            "stat -c 'dir %u:%g' /s; cat /s/r; echo by-1000 > /s/u && mkdir /s/d1000 && \
             echo in > /s/d1000/f && echo wrote",
        ],
        "run -u 1000 with a shared volume (rootless)",
    );
    assert!(
        o.contains("dir 1000:1000"),
        "the user's directory is the container user's: {o}"
    );
    assert!(o.contains("by-root\n") && o.contains("wrote\n"), "{o}");
    let o = run_ok(
        &["-v", "team:/s", IMAGE, "cat", "/s/u", "/s/d1000/f"],
        "the next container reads the shared volume",
    );
    assert_eq!(o, "by-1000\nin\n");
    // On the host, everything the containers wrote is the user's, and no
    // device node was made.
    for f in ["r", "u", "d1000", "d1000/f", "deep", "deep/er", "deep/er/f"] {
        assert_eq!(owner(&data.join(f)), (uid, gid), "{f} on the host");
    }
    assert!(!exists(&data.join("null")), "a device node in a volume");
    if is_root() {
        // The user reads what the container wrote, and deletes it.
        let out = run(
            "runuser",
            &["-u", USER, "--", "cat", data.join("r").to_str().unwrap()],
        );
        assert_ok(&out, "cat as the user");
        assert_eq!(text(&out.stdout), "by-root\n");
        let out = run(
            "runuser",
            &[
                "-u",
                USER,
                "--",
                "rm",
                "-r",
                data.join("u").to_str().unwrap(),
                data.join("d1000").to_str().unwrap(),
            ],
        );
        assert_ok(&out, "rm as the user");
        assert!(!exists(&data.join("d1000")));
    }

    // `volume rm` as the user removes both, even a directory the guest
    // left without write permission.
    let out = v.vessel(&["volume", "rm", "blk", "team"]);
    assert_ok(&out, "volume rm (rootless)");
    assert!(!exists(&volumes.join("blk")) && !exists(&volumes.join("team")));
    let left: Vec<_> = std::fs::read_dir(&volumes)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
