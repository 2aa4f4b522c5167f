//! `vessel-probe`: run inside a container, print what the kernel offers it
//! (see the `vessel_probe::report` module for the format).
//!
//! usage: vessel-probe [SECTION...]
//! SECTION: syscalls, files, fs, mem, net, process (default: all of them).
//!
//! Run it as root in the container (a vessel VM, or `podman run
//! --privileged` on the host for comparison): namespaces, mounts, BPF and
//! the like need privileges, and the system call sweep drops them itself.

mod probes;

use probes::sys;
use std::io::Write;
use vessel_probe::Report;

const SECTIONS: &[&str] = &["syscalls", "files", "fs", "mem", "net", "process"];

fn uname() -> String {
    // SAFETY: uname fills a zeroed struct we own.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("{} {}", field(&u.release), field(&u.machine))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: vessel-probe [SECTION...]\nsections: {}",
            SECTIONS.join(" ")
        );
        return;
    }
    if let Some(bad) = args.iter().find(|a| !SECTIONS.contains(&a.as_str())) {
        eprintln!(
            "vessel-probe: unknown section {bad:?}; sections are: {}",
            SECTIONS.join(" ")
        );
        std::process::exit(2);
    }
    let wanted = |s: &str| args.is_empty() || args.iter().any(|a| a == s);

    sys::block_sigchld();
    let mut r = Report::new();
    r.yes("info:kernel", &uname());
    // SAFETY: getuid has no preconditions.
    r.yes("info:uid", &unsafe { libc::getuid() }.to_string());

    // The sweep first: no other child exists yet.
    if wanted("syscalls") {
        probes::syscalls::probe(&mut r);
    }
    // A scratch directory on the root filesystem (ext4 in a vessel VM).
    let scratch = sys::ScratchDir::new("", ".vessel-probe");
    let scratch_path = scratch.as_ref().map(|s| s.path.as_str());
    if wanted("files") {
        probes::files::probe(&mut r);
    }
    if wanted("fs") {
        probes::fs::probe(&mut r, scratch_path);
    }
    if wanted("mem") {
        probes::mem::probe(&mut r, scratch_path);
    }
    if wanted("net") {
        probes::net::probe(&mut r);
    }
    if wanted("process") {
        probes::process::probe(&mut r);
    }
    drop(scratch);

    let mut out = std::io::stdout().lock();
    if out.write_all(r.render().as_bytes()).is_err() {
        std::process::exit(1);
    }
}
