//! Rootless networking: one `passt` process per user-mode attachment.
//!
//! passt (Debian package `passt`) turns the VM's Ethernet frames into
//! ordinary sockets of the user running it: outbound TCP/UDP/ICMP, DNS
//! forwarding, and host ports forwarded to the guest. The runtime creates a
//! connected socket pair, hands one end to passt (`--fd`) and the other to
//! QEMU (`-netdev stream,addr.type=fd`): no socket file, and passt exits by
//! itself once QEMU's end closes (it is then a one-off). It also gets the
//! runtime's parent-death signal and is killed when the container ends.
//!
//! [`passt_args`] builds the command line as a pure function (unit-tested).

use crate::proc::{die_with_parent, inherit_fds};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vessel_api::network::{Attachment, PortMapping, Protocol};

/// Errors starting passt.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    #[error("passt not found; install it (Debian: `apt install passt`) or set VESSEL_PASST")]
    NotFound,
    #[error("Could not create the socket pair between QEMU and passt")]
    Socket(#[source] std::io::Error),
    #[error("Could not open the passt log {}", .0.display())]
    Log(PathBuf, #[source] std::io::Error),
    #[error("Could not start {}", .0.display())]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("passt exited ({0}) before it was ready: {1}")]
    Exited(String, String),
    #[error("passt was not ready within {0:?}; see {}", .1.display())]
    NotReady(Duration, PathBuf),
    #[error("Published port {0} cannot be forwarded by passt: {1}")]
    Port(String, String),
}

/// `VESSEL_PASST`, else `passt` from `PATH`, else `/usr/bin/passt`.
pub fn passt_binary() -> Result<PathBuf, PasstError> {
    if let Some(p) = std::env::var_os("VESSEL_PASST").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(PasstError::NotFound)
        };
    }
    if let Some(p) = vessel_api::paths::find_in_path("passt") {
        return Ok(p);
    }
    let p = PathBuf::from("/usr/bin/passt");
    if p.is_file() {
        Ok(p)
    } else {
        Err(PasstError::NotFound)
    }
}

/// passt's `-t`/`-u` value for one mapping: `[ADDR/]HOSTPORT:GUESTPORT`.
/// The host port must be concrete (the apiserver resolves 0 and ranges).
pub fn port_spec(m: &PortMapping) -> Result<String, PasstError> {
    if m.host_port == 0 || m.host_port_end.is_some_and(|e| e != m.host_port) {
        return Err(PasstError::Port(
            m.to_string(),
            "the host port must be a single port chosen before the start".into(),
        ));
    }
    let addr = if m.host_ip.is_empty() {
        String::new()
    } else {
        let ip: std::net::IpAddr = m
            .host_ip
            .parse()
            .map_err(|_| PasstError::Port(m.to_string(), "not an IP address".into()))?;
        format!("{ip}/")
    };
    Ok(format!("{addr}{}:{}", m.host_port, m.container_port))
}

/// Everything passt is told, besides its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasstSpec {
    /// The guest's address, prefix and gateway (passt answers ARP and DHCP
    /// with them and uses them for translated traffic).
    pub address: String,
    pub prefix_len: u8,
    pub gateway: String,
    /// The nameserver the guest uses: passt forwards it to `dns_upstream`.
    pub dns_forward: Option<String>,
    /// Upstream resolvers; empty: the host's `/etc/resolv.conf`.
    pub dns_upstream: Vec<String>,
    /// `-t`/`-u` values.
    pub tcp_ports: Vec<String>,
    pub udp_ports: Vec<String>,
}

impl PasstSpec {
    /// The spec of a user-mode attachment.
    pub fn from_attachment(a: &Attachment) -> Result<Self, PasstError> {
        let mut tcp_ports = Vec::new();
        let mut udp_ports = Vec::new();
        for m in &a.ports {
            let spec = port_spec(m)?;
            match m.protocol {
                Protocol::Tcp => tcp_ports.push(spec),
                Protocol::Udp => udp_ports.push(spec),
            }
        }
        Ok(Self {
            address: a.ip.clone(),
            prefix_len: a.prefix_len,
            gateway: a.gateway.clone(),
            // Only when the guest uses passt's forwarder address.
            dns_forward: a
                .dns
                .iter()
                .find(|d| d.as_str() == vessel_api::network::user_mode::DNS)
                .cloned(),
            dns_upstream: a.dns_upstream.clone(),
            tcp_ports,
            udp_ports,
        })
    }
}

/// passt's arguments: foreground, the connected socket `fd`, a pid file
/// written once its ports are bound (readiness), its log file, IPv4 only,
/// the guest's addresses, DNS forwarding and the published ports.
pub fn passt_args(spec: &PasstSpec, fd: i32, pid_file: &Path, log: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(OsString::from(s));
    push("--foreground");
    push("--fd");
    push(&fd.to_string());
    push("--pid");
    a.push(pid_file.as_os_str().to_owned());
    a.push("--log-file".into());
    a.push(log.as_os_str().to_owned());
    let mut push = |s: &str| a.push(OsString::from(s));
    push("--ipv4-only");
    push("--address");
    push(&spec.address);
    push("--netmask");
    push(&spec.prefix_len.to_string());
    push("--gateway");
    push(&spec.gateway);
    if let Some(d) = &spec.dns_forward {
        push("--dns-forward");
        push(d);
    }
    for d in &spec.dns_upstream {
        push("--dns");
        push(d);
    }
    for t in &spec.tcp_ports {
        push("--tcp-ports");
        push(t);
    }
    // Without `-u`, passt also forwards UDP on every forwarded TCP port.
    if spec.udp_ports.is_empty() {
        push("--udp-ports");
        push("none");
    }
    for u in &spec.udp_ports {
        push("--udp-ports");
        push(u);
    }
    a
}

/// A running passt serving one VM NIC.
#[derive(Debug)]
pub struct Passt {
    child: Child,
    /// QEMU's end of the socket pair, until QEMU has inherited it.
    qemu_end: Option<OwnedFd>,
}

impl Passt {
    /// Start passt and wait (up to `limit`) until it is ready: its ports are
    /// bound and it wrote `pid_file`. `log` is passt's own log; its stdout
    /// and stderr go to `log` + `.out` (early errors).
    pub fn start(
        binary: &Path,
        spec: &PasstSpec,
        pid_file: &Path,
        log: &Path,
        limit: Duration,
    ) -> Result<Self, PasstError> {
        let (qemu_end, passt_end) = UnixStream::pair().map_err(PasstError::Socket)?;
        let out_path = PathBuf::from(format!("{}.out", log.display()));
        let open = || OpenOptions::new().create(true).append(true).open(&out_path);
        let out = open().map_err(|e| PasstError::Log(out_path.clone(), e))?;
        let err = open().map_err(|e| PasstError::Log(out_path.clone(), e))?;
        let _ = std::fs::remove_file(pid_file);
        let fd = passt_end.as_raw_fd();
        let mut cmd = Command::new(binary);
        cmd.args(passt_args(spec, fd, pid_file, log))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut cmd);
        inherit_fds(&mut cmd, vec![fd]);
        let child = cmd
            .spawn()
            .map_err(|e| PasstError::Spawn(binary.to_path_buf(), e))?;
        // Only passt holds its end now: it sees EOF when QEMU's end closes.
        drop(passt_end);
        let mut passt = Self {
            child,
            qemu_end: Some(qemu_end.into()),
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = passt.child.try_wait() {
                return Err(PasstError::Exited(
                    status.to_string(),
                    last_error(log, &out_path),
                ));
            }
            if std::fs::metadata(pid_file).is_ok_and(|m| m.len() > 0) {
                return Ok(passt);
            }
            if Instant::now() >= deadline {
                passt.kill();
                return Err(PasstError::NotReady(limit, log.to_path_buf()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The descriptor QEMU inherits.
    pub fn qemu_fd(&self) -> Option<i32> {
        self.qemu_end.as_ref().map(|f| f.as_raw_fd())
    }

    /// Close the runtime's copy of QEMU's end (once QEMU runs, or failed).
    pub fn release_qemu_end(&mut self) {
        self.qemu_end = None;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has passt exited? Never blocks.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Kill and reap passt.
    pub fn kill(&mut self) {
        self.qemu_end = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last error line passt wrote (its log file, else its stderr).
fn last_error(log: &Path, out: &Path) -> String {
    for p in [log, out] {
        if let Ok(text) = std::fs::read_to_string(p) {
            let line = text
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with("passt "));
            if let Some(l) = line {
                // The log file prefixes `seconds: LEVEL:`.
                let l = l.split_once("ERROR:").map_or(l, |(_, r)| r.trim());
                return l.to_string();
            }
        }
    }
    format!("see {}", log.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::network::user_mode;

    fn strings(a: Vec<OsString>) -> Vec<String> {
        a.into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    fn mapping(ip: &str, host: u16, guest: u16, protocol: Protocol) -> PortMapping {
        PortMapping {
            host_ip: ip.into(),
            host_port: host,
            host_port_end: None,
            container_port: guest,
            protocol,
        }
    }

    #[test]
    fn user_mode_attachment_command_line() {
        let a = Attachment::user_mode(
            "default",
            vec![
                mapping("127.0.0.1", 18080, 80, Protocol::Tcp),
                mapping("", 8443, 443, Protocol::Tcp),
            ],
            vec![],
        );
        let spec = PasstSpec::from_attachment(&a).unwrap();
        let line = strings(passt_args(
            &spec,
            5,
            Path::new("/run/x/passt-0.pid"),
            Path::new("/c/passt-0.log"),
        ))
        .join(" ");
        assert_eq!(
            line,
            format!(
                "--foreground --fd 5 --pid /run/x/passt-0.pid --log-file /c/passt-0.log \
                 --ipv4-only --address {} --netmask 24 --gateway {} --dns-forward {} \
                 --tcp-ports 127.0.0.1/18080:80 --tcp-ports 8443:443 --udp-ports none",
                user_mode::GUEST_IP,
                user_mode::GATEWAY,
                user_mode::DNS
            )
        );
    }

    #[test]
    fn udp_ports_and_dns_upstream() {
        let a = Attachment::user_mode(
            "default",
            vec![mapping("::1", 5353, 53, Protocol::Udp)],
            vec!["127.0.0.1".into(), "192.0.2.53".into()],
        );
        let spec = PasstSpec::from_attachment(&a).unwrap();
        let line = strings(passt_args(&spec, 9, Path::new("/p"), Path::new("/l"))).join(" ");
        assert!(line.contains("--dns 127.0.0.1 --dns 192.0.2.53 --udp-ports ::1/5353:53"));
        assert!(!line.contains("--tcp-ports") && !line.contains("none"));
    }

    #[test]
    fn unresolved_host_ports_are_refused() {
        let mut m = mapping("", 0, 80, Protocol::Tcp);
        assert!(port_spec(&m).is_err());
        m.host_port = 8000;
        m.host_port_end = Some(8010);
        assert!(port_spec(&m).is_err());
        m.host_port_end = Some(8000);
        assert_eq!(port_spec(&m).unwrap(), "8000:80");
        let bad = mapping("not-an-ip", 1, 80, Protocol::Tcp);
        assert!(port_spec(&bad).is_err());
    }

    #[test]
    fn last_error_reads_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("passt.log");
        let out = dir.path().join("passt.log.out");
        std::fs::write(
            &log,
            "passt unknown version: /usr/bin/passt.avx2 (1)\n0.85: ERROR:   Failed to bind any port for '-t 80:80', exiting\n",
        )
        .unwrap();
        assert_eq!(
            last_error(&log, &out),
            "Failed to bind any port for '-t 80:80', exiting"
        );
        std::fs::remove_file(&log).unwrap();
        std::fs::write(&out, "Invalid --fd: x\n").unwrap();
        assert_eq!(last_error(&log, &out), "Invalid --fd: x");
    }

    /// A real passt (skipped when it is not installed): ready once its port
    /// is bound, gone once QEMU's end closes, and a taken port is an error
    /// that names it.
    #[test]
    fn real_passt_binds_ports_and_ends_with_the_vm_socket() {
        let Ok(bin) = passt_binary() else {
            eprintln!("skipped: passt is not installed");
            return;
        };
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // As root, passt drops to `nobody` before it writes its pid file.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let a = Attachment::user_mode(
            "default",
            vec![mapping("127.0.0.1", port, 80, Protocol::Tcp)],
            vec!["127.0.0.1".into()],
        );
        let spec = PasstSpec::from_attachment(&a).unwrap();
        let (pid, log) = (dir.path().join("p.pid"), dir.path().join("passt.log"));
        let mut p = Passt::start(&bin, &spec, &pid, &log, Duration::from_secs(10)).unwrap();
        assert!(p.qemu_fd().is_some());
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_err(),
            "passt holds the port"
        );
        p.release_qemu_end();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.exited() {
            assert!(Instant::now() < deadline, "passt outlived the VM's socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port released"
        );

        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let a = Attachment::user_mode(
            "default",
            vec![mapping("127.0.0.1", port, 80, Protocol::Tcp)],
            vec![],
        );
        let spec = PasstSpec::from_attachment(&a).unwrap();
        let err = Passt::start(&bin, &spec, &pid, &log, Duration::from_secs(10)).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, PasstError::Exited(..)) && text.contains(&format!("127.0.0.1/{port}:80")),
            "{text}"
        );
    }
}
