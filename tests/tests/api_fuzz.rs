//! The API against its description, by an OpenAPI-driven fuzzer:
//! schemathesis (pinned, installed into `build/venv` by
//! `scripts/install-deps.sh`) sends generated requests for every operation
//! of `docs/api/openapi.yaml` to a live apiserver of this test's own
//! instance (the default image loaded, a created container there), and
//! fails on any 5xx, any answer outside the operation's schema, or any
//! status the file does not list for it.
//!
//! Left out, each for a reason: `POST /v1/system/shutdown` (it ends the
//! server under test), `/v1/networks` (creating networks puts bridges and
//! nftables rules on the host, which other instances on the machine use),
//! `GET /v1/events` (a stream that lasts until the client goes: a fuzzer
//! waits for its end; `tests/tests/api.rs` checks its bad input), and
//! `POST /v1/registry/login` (it reaches out to whatever registry host a
//! generated name resolves to; an unreachable one is its documented 502),
//! and `POST /v1/containers/prune` (it removes the container the other
//! operations are aimed at).
//!
//! schemathesis speaks TCP; a forwarder on 127.0.0.1 carries each of its
//! connections to the API's Unix socket.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use vessel_tests::{assert_ok, text, Instance, IMAGE};

/// Examples per operation; the run stays within a couple of minutes here.
const MAX_EXAMPLES: &str = "50";

fn copy(mut from: impl Read, mut to: impl Write, done: impl FnOnce()) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    done();
}

/// Forward TCP connections on a free loopback port to `socket`; the port.
fn forward(socket: PathBuf) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(tcp) = c else { continue };
            let Ok(unix) = UnixStream::connect(&socket) else {
                continue;
            };
            let (t2, u2) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
            thread::spawn(move || {
                let u3 = unix.try_clone().unwrap();
                copy(tcp, unix, move || {
                    let _ = u3.shutdown(Shutdown::Write);
                })
            });
            thread::spawn(move || {
                let t3: TcpStream = t2.try_clone().unwrap();
                copy(u2, t2, move || {
                    let _ = t3.shutdown(Shutdown::Write);
                })
            });
        }
    });
    port
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn the_live_api_keeps_to_its_description_under_a_fuzzer() {
    let schemathesis = repo().join("build/venv/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: run scripts/install-deps.sh, which installs the API fuzzer",
        schemathesis.display()
    );
    let v = Instance::started();
    assert_ok(
        &v.vessel(&[
            "create",
            "--name",
            "made",
            "--network",
            "none",
            IMAGE,
            "true",
        ]),
        "create",
    );
    let port = forward(v.path().join("vessel.sock"));
    let out = Command::new(&schemathesis)
        .arg("run")
        .arg(repo().join("docs/api/openapi.yaml"))
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance",
        ])
        .args(["--exclude-path", "/v1/system/shutdown"])
        .args(["--exclude-path", "/v1/networks"])
        .args(["--exclude-path", "/v1/networks/prune"])
        .args(["--exclude-path", "/v1/networks/{name}"])
        .args(["--exclude-path", "/v1/events"])
        .args(["--exclude-path", "/v1/registry/login"])
        .args(["--exclude-path", "/v1/containers/prune"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--request-timeout", "60"])
        .args(["--seed", "20261201"])
        .arg("--no-color")
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(v.path())
        .output()
        .expect("running schemathesis");
    let report = text(&out.stdout);
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "schemathesis found the API and its description at odds (exit {}):\n{report}\n{}",
        out.status,
        text(&out.stderr)
    );
    // It did test something.
    assert!(report.contains("passed"), "{report}");
    // The server is still there, and still answers.
    assert_ok(&v.vessel(&["ls", "-a"]), "ls after the fuzzer");
}
