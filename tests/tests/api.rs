//! The API transport end to end, against a real apiserver: keep-alive,
//! chunked streams, upgrades spliced with a container's runtime helper,
//! the event stream, and what a client that goes away leaves behind.
//!
//! The upgrade tests need no VM: the container's runtime helper is played
//! by the test ([`FakeRuntime`]: a container directory whose state says it
//! runs, and its control socket served here), which is exactly the peer
//! the apiserver talks to.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vessel_api::client::Client;
use vessel_api::error::ErrorKind;
use vessel_tests::{assert_ok, text, Instance, IMAGE};

/// A container whose runtime helper is this test: its files say it runs
/// (the helper's pid is a `sleep` of ours), and its control socket is ours.
struct FakeRuntime {
    helper: Child,
    listener: UnixListener,
}

impl FakeRuntime {
    fn install(v: &Instance, name: &str, status: &str) -> Self {
        let id = format!(
            "{:0<64}",
            name.bytes().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let helper = Command::new("sleep").arg("600").spawn().unwrap();
        let pid = helper.id() as i32;
        let dir = v.path().join("containers").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        let config = serde_json::json!({
            "id": id, "name": name, "image": IMAGE, "image_id": "sha256:fake",
            "created_ms": 1, "process": {"args": ["sh"], "env": [], "cwd": "/", "user": ""},
            "hostname": "fake", "cpus": 1, "memory_mib": 64, "auto_remove": false,
            "rootfs_base": "/nonexistent", "kernel": "/nonexistent", "initrd": "/nonexistent",
            "accel": "tcg", "network": "none"
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let state = serde_json::json!({
            "status": status, "runtime_pid": pid,
            "runtime_start_time": vessel_api::fsutil::pid_start_time(pid),
            "started_ms": 1
        });
        std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
        let run = vessel_api::paths::Home::new(v.path()).run_dir(&id);
        std::fs::create_dir_all(&run).unwrap();
        let listener = UnixListener::bind(run.join("control.sock")).unwrap();
        Self { helper, listener }
    }

    /// Serve one control connection with `f` on a thread.
    fn serve_one<T: Send + 'static>(
        &self,
        f: impl FnOnce(String, UnixStream) -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let l = self.listener.try_clone().unwrap();
        thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            // The request line, byte by byte: the rest is the stream's.
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while b[0] != b'\n' {
                assert_eq!((&s).read(&mut b).unwrap(), 1, "request line cut short");
                line.push(b[0]);
            }
            f(String::from_utf8(line).unwrap(), s)
        })
    }
}

impl Drop for FakeRuntime {
    fn drop(&mut self) {
        let _ = self.helper.kill();
        let _ = self.helper.wait();
    }
}

fn client(v: &Instance) -> Client {
    Client::new(v.path().join("vessel.sock")).unwrap()
}

/// Wait until `f` holds, up to `limit`.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn attach_upgrades_the_connection_and_splices_it_with_the_runtime() {
    let mut v = Instance::new();
    v.start();
    let fake = FakeRuntime::install(&v, "fake", "running");
    let c = client(&v);

    // The runtime agrees, greets, echoes in upper case until its input
    // ends (a half-close), says bye, then waits for the connection's end.
    let runtime = fake.serve_one(|line, s| {
        let mut w = s.try_clone().unwrap();
        w.write_all(b"{\"ok\":true}\nhello from the runtime\n")
            .unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut l = String::new();
        while r.read_line(&mut l).unwrap() > 0 {
            w.write_all(l.to_uppercase().as_bytes()).unwrap();
            l.clear();
        }
        w.write_all(b"bye\n").unwrap();
        drop(w);
        line
    });
    let up = c
        .upgrade("POST", "/v1/containers/fake/attach?stdin=true", None)
        .unwrap()
        .expect("101 Switching Protocols");
    let (mut r, mut w) = up.split().unwrap();
    // Two threads: one writes the input and ends it, one reads.
    let writer = thread::spawn(move || {
        w.write_all(b"first line\n").unwrap();
        let big = vec![b'x'; 1 << 20];
        w.write_all(&big).unwrap();
        w.write_all(b"\n").unwrap();
        w.close_write().unwrap();
    });
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    writer.join().unwrap();
    let request = runtime.join().unwrap();
    let request: serde_json::Value = serde_json::from_str(&request).unwrap();
    assert_eq!(
        request,
        serde_json::json!({"op": "attach", "stdin": true, "stdout": true, "stderr": true, "logs": false})
    );
    let want = format!(
        "hello from the runtime\nFIRST LINE\n{}\nbye\n",
        "X".repeat(1 << 20)
    );
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the stream differs from what the runtime sent");

    // A client that goes away without a word frees the runtime's
    // connection: the runtime reads its end.
    let (tx, rx) = mpsc::channel();
    let _runtime = fake.serve_one(move |_, s| {
        (&s).write_all(b"{\"ok\":true}\n").unwrap();
        let mut buf = [0u8; 64];
        let n = (&s).read(&mut buf);
        tx.send(n.map_err(|e| e.to_string())).unwrap();
    });
    let up = c
        .upgrade("POST", "/v1/containers/fake/attach", None)
        .unwrap()
        .expect("101");
    thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    drop(up);
    let n = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("runtime freed");
    assert_eq!(n, Ok(0));
    assert!(t.elapsed() < Duration::from_secs(3));

    // The runtime goes away: the client's stream ends, though the client
    // sends nothing.
    let _runtime = fake.serve_one(|_, s| {
        (&s).write_all(b"{\"ok\":true}\nlast words\n").unwrap();
    });
    let mut up = c
        .upgrade("POST", "/v1/containers/fake/attach", None)
        .unwrap()
        .expect("101");
    let mut got = String::new();
    up.read_to_string(&mut got).unwrap();
    assert_eq!(got, "last words\n");

    // A refusal is an error answer, before any upgrade, with its kind.
    let _runtime = fake.serve_one(|_, s| {
        (&s).write_all(b"{\"ok\":false,\"error\":\"no terminal here\",\"kind\":\"conflict\"}\n")
            .unwrap();
    });
    let e = c
        .upgrade("POST", "/v1/containers/fake/attach", None)
        .unwrap()
        .err()
        .expect("refused");
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(e.message.contains("no terminal here"), "{}", e.message);
    // Today's runtime knows no `attach`: said so.
    let _runtime = fake.serve_one(|_, s| {
        (&s).write_all(
            b"{\"ok\":false,\"error\":\"Invalid control request: unknown variant `attach`\"}\n",
        )
        .unwrap();
    });
    let e = c
        .upgrade("POST", "/v1/containers/fake/attach", None)
        .unwrap()
        .err()
        .expect("refused");
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(
        e.message.contains("does not support attach"),
        "{}",
        e.message
    );

    // Without an upgrade request; a missing container; one not running.
    let resp = c
        .request("POST", "/v1/containers/fake/attach", None)
        .unwrap();
    let e = resp.json::<serde_json::Value>().unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("Upgrade: tcp"), "{}", e.message);
    let e = c
        .upgrade("POST", "/v1/containers/nosuch/attach", None)
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::ContainerNotFound);
    let _idle = FakeRuntime::install(&v, "idle", "created");
    let e = c
        .upgrade("POST", "/v1/containers/idle/attach", None)
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(e.message.contains("not running"), "{}", e.message);
}

/// Read one HTTP/1.1 response with a Content-Length body from `r`.
fn read_response(r: &mut BufReader<UnixStream>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        let (k, val) = line.trim_end().split_once(':').unwrap();
        headers.push((k.to_ascii_lowercase(), val.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    (status, headers, body)
}

#[test]
fn keep_alive_chunked_streams_and_bad_input() {
    let v = Instance::started();
    let sock = v.path().join("vessel.sock");
    // Two requests on one connection (keep-alive).
    let s = UnixStream::connect(&sock).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..3 {
        (&s).write_all(b"GET /v1/system/info HTTP/1.1\r\nHost: vessel\r\n\r\n")
            .unwrap();
        let (status, _, body) = read_response(&mut r);
        assert_eq!(status, 200);
        let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(info["apiserver_pid"].as_i64().unwrap() > 0);
    }
    // A stream is chunked, and the connection stays usable after it.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    write!(
        &s,
        "GET /v1/events?since=0&until={now} HTTP/1.1\r\nHost: vessel\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        chunked |= line.eq_ignore_ascii_case("transfer-encoding: chunked\r\n");
    }
    assert!(chunked, "events is a chunked stream");
    // Chunks until the last one (size 0).
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let size = usize::from_str_radix(line.trim_end(), 16).unwrap();
        let mut data = vec![0u8; size + 2];
        r.read_exact(&mut data).unwrap();
        if size == 0 {
            break;
        }
    }
    (&s).write_all(b"GET /v1/containers?all=true HTTP/1.1\r\nHost: vessel\r\n\r\n")
        .unwrap();
    let (status, _, body) = read_response(&mut r);
    assert_eq!(status, 200, "{}", text(&body));

    // Unknown method on a known path: 405, with the methods it takes.
    (&s).write_all(b"PUT /v1/containers HTTP/1.1\r\nHost: vessel\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let (status, headers, body) = read_response(&mut r);
    assert_eq!(status, 405, "{}", text(&body));
    assert!(
        headers.contains(&("allow".into(), "GET, POST".into())),
        "{headers:?}"
    );
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["kind"], "method_not_allowed");

    let c = client(&v);
    let error = |method: &str, path: &str, body: Option<serde_json::Value>| {
        let resp = match &body {
            Some(b) => c.request_json(method, path, b).unwrap(),
            None => c.request(method, path, None).unwrap(),
        };
        let status = resp.status;
        let e = resp.json::<serde_json::Value>().unwrap().unwrap_err();
        assert_eq!(status, e.kind.status(), "{method} {path}");
        e
    };
    let e = error("GET", "/v1/nothing/here", None);
    assert_eq!(e.kind, ErrorKind::NotFound);
    // Booleans are booleans.
    for (method, path) in [
        ("POST", "/v1/images/prune?all=-1"),
        ("GET", "/v1/containers?all=maybe"),
        ("DELETE", "/v1/containers/x?force=2"),
        ("POST", "/v1/images/pull?ref=x&tls_verify=nope"),
    ] {
        let e = error(method, path, None);
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{path}: {e:?}");
        assert!(
            e.message.contains("expected true or false"),
            "{}",
            e.message
        );
    }
    assert_eq!(v.images().len(), 1, "the bad prune deleted nothing");
    // More memory than the host has: refused at create, naming the limit.
    let e = error(
        "POST",
        "/v1/containers",
        Some(serde_json::json!({"image": IMAGE, "memory_mib": 1u64 << 40, "network": "none"})),
    );
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(
        e.message.contains("more than this host has"),
        "{}",
        e.message
    );
    let out = v.vessel(&["create", "--network", "none", "-m", "100t", IMAGE, "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("more than this host has"),
        "{}",
        text(&out.stderr)
    );
    // Bad times and filters of the event stream.
    for q in [
        "since=yesterday",
        "until=-1",
        "filters=%7Bx",
        "filters=%7B%22event%22%3A%5B%22explode%22%5D%7D",
    ] {
        let e = error("GET", &format!("/v1/events?{q}"), None);
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{q}");
    }
}

/// The apiserver's pid and its count of open descriptors and threads.
fn apiserver_load(v: &Instance) -> (usize, usize) {
    let pid = std::fs::read_to_string(v.path().join("apiserver.pid")).unwrap();
    let pid = pid.trim();
    let count = |d: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{d}"))
            .unwrap()
            .count()
    };
    (count("fd"), count("task"))
}

#[test]
fn a_client_that_goes_away_frees_what_it_held() {
    let v = Instance::started();
    // Follow a container that was never started: the answer comes at once
    // (Docker's rule: only a running container is followed).
    let out = v.vessel(&[
        "create",
        "--name",
        "never",
        "--network",
        "none",
        IMAGE,
        "true",
    ]);
    assert_ok(&out, "create");
    let t = Instant::now();
    let out = v.vessel(&["logs", "-f", "never"]);
    assert_ok(&out, "logs -f of a created container");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    v.run_idle("quiet", &[], IMAGE);
    // Settle: the first requests start the runtime's threads.
    let _ = v.vessel(&["ls"]);
    let (fds0, threads0) = apiserver_load(&v);
    let mut clients: Vec<Child> = Vec::new();
    for args in [
        &["logs", "-f", "quiet"][..],
        &["wait", "quiet"][..],
        &["events"][..],
    ] {
        for _ in 0..8 {
            clients.push(
                v.cmd(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
    }
    // They are all waiting, each holding its connection.
    assert!(
        eventually(Duration::from_secs(20), || apiserver_load(&v).0
            >= fds0 + 24),
        "24 clients connected: {:?} (before {fds0})",
        apiserver_load(&v)
    );
    for c in &mut clients {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Everything they held is given back at once.
    assert!(
        eventually(Duration::from_secs(5), || apiserver_load(&v).0 <= fds0),
        "descriptors after the clients left: {:?}, before: {fds0}",
        apiserver_load(&v)
    );
    // Threads: the blocking threads that served them end once idle (10 s).
    assert!(
        eventually(Duration::from_secs(20), || apiserver_load(&v).1
            <= threads0 + 2),
        "threads after the clients left: {:?}, before: {threads0}",
        apiserver_load(&v)
    );
    assert_ok(&v.vessel(&["rm", "-f", "quiet"]), "rm -f");
}

/// `vessel events --format json` lines, as (action, name, attributes).
fn parse_events(out: &str) -> Vec<(String, String, serde_json::Value)> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["action"].as_str().unwrap().to_string(),
                v["name"].as_str().unwrap().to_string(),
                v["attributes"].clone(),
            )
        })
        .collect()
}

fn now_secs() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

#[test]
fn events_show_each_run_as_it_happens_and_replay_with_since() {
    let v = Instance::started();
    let t0 = now_secs();
    let mut follower = v
        .cmd(&["events", "--format", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    thread::sleep(Duration::from_millis(300));

    let out = v.vessel(&[
        "run",
        "--rm",
        "--name",
        "once",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    v.run_idle("long", &[], IMAGE);
    // SIGWINCH: ignored by `sleep`, so it keeps running.
    assert_ok(&v.vessel(&["kill", "-s", "28", "long"]), "kill -s 28");
    assert_ok(&v.vessel(&["stop", "-t", "1", "long"]), "stop");
    assert_ok(&v.vessel(&["rm", "long"]), "rm");

    // As they happened, in order.
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines.len() < 10 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let seen = parse_events(&lines.join("\n"));
    let names: Vec<(String, String)> = seen
        .iter()
        .map(|(a, n, _)| (a.clone(), n.clone()))
        .collect();
    let want: Vec<(String, String)> = [
        ("create", "once"),
        ("start", "once"),
        ("die", "once"),
        ("destroy", "once"),
        ("create", "long"),
        ("start", "long"),
        ("kill", "long"),
        ("die", "long"),
        ("stop", "long"),
        ("destroy", "long"),
    ]
    .iter()
    .map(|(a, n)| (a.to_string(), n.to_string()))
    .collect();
    assert_eq!(names, want, "{lines:#?}");
    assert_eq!(seen[2].2["exit_code"], "3");
    assert_eq!(seen[6].2["signal"], "28");
    assert_eq!(seen[0].2["image"], IMAGE);

    // Replayed from the log, filtered, up to `until`.
    let until = now_secs();
    let out = v.vessel(&[
        "events", "--since", &t0, "--until", &until, "--format", "json",
    ]);
    assert_ok(&out, "events --since --until");
    let replay: Vec<(String, String)> = parse_events(&text(&out.stdout))
        .into_iter()
        .map(|(a, n, _)| (a, n))
        .collect();
    assert_eq!(replay, want);
    let out = v.vessel(&[
        "events",
        "--since",
        &t0,
        "--until",
        &until,
        "--filter",
        "event=die",
        "--filter",
        "container=long",
    ]);
    assert_ok(&out, "events --filter");
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(" container die ") && lines[0].contains("name=long"),
        "{}",
        lines[0]
    );
    let out = v.vessel(&[
        "events",
        "--since",
        "1m",
        "--until",
        &until,
        "--filter",
        "type=container,event=destroy",
    ]);
    assert_ok(&out, "events --since 1m");
    assert_eq!(
        text(&out.stdout).lines().count(),
        2,
        "{}",
        text(&out.stdout)
    );
    let out = v.vessel(&["events", "--filter", "colour=red", "--until", &until]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("invalid filter"),
        "{}",
        text(&out.stderr)
    );
}
