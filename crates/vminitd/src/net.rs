//! Guest networking from the host's `NetworkConfig`: `lo` up, each
//! virtio-net interface (found by its MAC) addressed and up, the default
//! route, and `/etc/resolv.conf`, `/etc/hosts`, `/etc/hostname` in the
//! container's root filesystem. Plain ioctls on an `AF_INET` socket.

use agent_protocol::NetworkConfig;
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long to wait for a virtio-net device to show up in sysfs.
const DEVICE_WAIT: Duration = Duration::from_secs(2);

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > 15 {
            return Err(format!("bad interface name {name:?}"));
        }
        let mut r = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(r)
    }

    fn set_addr(&mut self, ip: Ipv4Addr) {
        let sa = sockaddr_in(ip);
        // SAFETY: sockaddr_in is 16 plain bytes; `data` has room for 24.
        let bytes: [u8; 16] = unsafe { std::mem::transmute(sa) };
        self.data[..16].copy_from_slice(&bytes);
    }

    fn flags(&self) -> libc::c_short {
        libc::c_short::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_flags(&mut self, f: libc::c_short) {
        self.data[..2].copy_from_slice(&f.to_ne_bytes());
    }

    fn set_int(&mut self, v: libc::c_int) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }
}

/// The kernel's `struct rtentry` (x86_64 layout).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr_in,
    rt_gateway: libc::sockaddr_in,
    rt_genmask: libc::sockaddr_in,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn socket() -> Result<OwnedFd, String> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl<T>(fd: &OwnedFd, req: libc::c_ulong, arg: &mut T, what: &str) -> Result<(), String> {
    // SAFETY: every request used here takes a pointer to the struct type
    // passed (ifreq or rtentry), valid for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) } < 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn set_up(fd: &OwnedFd, name: &str) -> Result<(), String> {
    let mut r = IfReq::new(name)?;
    ioctl(
        fd,
        libc::SIOCGIFFLAGS,
        &mut r,
        &format!("{name}: get flags"),
    )?;
    let f = r.flags() | libc::IFF_UP as libc::c_short;
    r.set_flags(f);
    ioctl(fd, libc::SIOCSIFFLAGS, &mut r, &format!("{name}: up"))
}

fn prefix_mask(len: u8) -> Ipv4Addr {
    if len == 0 {
        Ipv4Addr::UNSPECIFIED
    } else {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(len.min(32))))
    }
}

/// The interface whose MAC is `mac`, waiting a little for it to appear.
fn find_interface(mac: &str) -> Result<String, String> {
    let want = mac.to_ascii_lowercase();
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
            for e in dir.flatten() {
                let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
                if addr.trim().eq_ignore_ascii_case(&want) {
                    return Ok(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("no network interface with MAC {mac}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Give the interface whose MAC is `from` the address `to` (a VM restored
/// from a template carries the template's MAC; see `adopt`).
pub fn set_mac(from: &str, to: &str) -> Result<(), String> {
    let name = find_interface(from)?;
    let mac = parse_mac(to)?;
    let fd = socket()?;
    let mut req = IfReq::new(&name)?;
    // struct sockaddr: family, then the address bytes.
    req.data[..2].copy_from_slice(&(libc::ARPHRD_ETHER as libc::c_ushort).to_ne_bytes());
    req.data[2..8].copy_from_slice(&mac);
    ioctl(
        &fd,
        libc::SIOCSIFHWADDR,
        &mut req,
        &format!("set the MAC of {name}"),
    )
}

/// `aa:bb:cc:dd:ee:ff` as six bytes.
fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("invalid MAC address {s:?}"));
    }
    for (o, p) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).map_err(|_| format!("invalid MAC address {s:?}"))?;
    }
    Ok(out)
}

fn parse_ip(s: &str) -> Result<Ipv4Addr, String> {
    s.parse().map_err(|_| format!("invalid address {s:?}"))
}

/// Configure the interfaces and routes. Returns the names configured.
pub fn configure(cfg: &NetworkConfig) -> Result<Vec<String>, String> {
    let fd = socket()?;
    set_up(&fd, "lo")?;
    let mut names = Vec::new();
    let mut routed = false;
    for i in &cfg.interfaces {
        let name = find_interface(&i.mac)?;
        let ip = parse_ip(&i.address)?;
        if !(1..=30).contains(&i.prefix_len) {
            return Err(format!("invalid prefix length {}", i.prefix_len));
        }
        let mut r = IfReq::new(&name)?;
        r.set_addr(ip);
        ioctl(&fd, libc::SIOCSIFADDR, &mut r, &format!("{name}: address"))?;
        let mut r = IfReq::new(&name)?;
        r.set_addr(prefix_mask(i.prefix_len));
        ioctl(
            &fd,
            libc::SIOCSIFNETMASK,
            &mut r,
            &format!("{name}: netmask"),
        )?;
        if let Some(mtu) = i.mtu {
            let mut r = IfReq::new(&name)?;
            r.set_int(mtu.min(65535) as libc::c_int);
            ioctl(&fd, libc::SIOCSIFMTU, &mut r, &format!("{name}: mtu"))?;
        }
        set_up(&fd, &name)?;
        if let (Some(gw), false) = (&i.gateway, routed) {
            let gw = parse_ip(gw)?;
            let dev = CString::new(name.clone()).map_err(|_| "bad name".to_string())?;
            let mut rt = RtEntry {
                rt_pad1: 0,
                rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
                rt_gateway: sockaddr_in(gw),
                rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
                rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
                rt_pad2: 0,
                rt_pad3: 0,
                rt_pad4: std::ptr::null_mut(),
                rt_metric: 0,
                rt_dev: dev.as_ptr() as *mut libc::c_char,
                rt_mtu: 0,
                rt_window: 0,
                rt_irtt: 0,
            };
            ioctl(&fd, libc::SIOCADDRT, &mut rt, "default route")?;
            routed = true;
        }
        names.push(format!("{name} {}/{}", i.address, i.prefix_len));
    }
    Ok(names)
}

/// The text of `/etc/resolv.conf`.
pub fn resolv_conf(cfg: &NetworkConfig) -> String {
    let mut s = String::from("# written by vessel\n");
    for n in &cfg.nameservers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !cfg.search.is_empty() {
        s.push_str(&format!("search {}\n", cfg.search.join(" ")));
    }
    s
}

/// The text of `/etc/hosts`.
pub fn hosts(cfg: &NetworkConfig, hostname: &str) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let mut named = false;
    for h in &cfg.hosts {
        if !h.names.is_empty() {
            s.push_str(&format!("{}\t{}\n", h.address, h.names.join(" ")));
            named |= h.names.iter().any(|n| n == hostname);
        }
    }
    if !named && !hostname.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

/// Replace `root/etc/NAME` by a regular file (a symlink there is removed
/// first, so nothing outside `etc` is written through it).
fn write_etc(root: &Path, name: &str, text: &str) -> Result<(), String> {
    let etc = root.join("etc");
    match std::fs::symlink_metadata(&etc) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err("/etc in the image is not a directory".into()),
        Err(_) => std::fs::create_dir(&etc).map_err(|e| format!("create /etc: {e}"))?,
    }
    let path = etc.join(name);
    if let Ok(m) = std::fs::symlink_metadata(&path) {
        if !m.is_file() {
            let _ = std::fs::remove_file(&path);
        }
    }
    std::fs::write(&path, text).map_err(|e| format!("write /etc/{name}: {e}"))
}

/// Write the resolver and hosts files into the container's root.
pub fn write_files(root: &Path, cfg: &NetworkConfig, hostname: &str) -> Result<(), String> {
    write_etc(root, "resolv.conf", &resolv_conf(cfg))?;
    write_etc(root, "hosts", &hosts(cfg, hostname))?;
    if !hostname.is_empty() {
        write_etc(root, "hostname", &format!("{hostname}\n"))?;
    }
    Ok(())
}

/// A container without a network (`--network none`) still has what Docker
/// gives it: the loopback interface up, and `/etc/hosts` with localhost
/// and its own name (`/etc/hostname` too).
pub fn configure_none(root: &Path, hostname: &str) -> Result<(), String> {
    let fd = socket()?;
    set_up(&fd, "lo")?;
    let none = NetworkConfig::default();
    write_etc(root, "hosts", &hosts(&none, hostname))?;
    if !hostname.is_empty() {
        write_etc(root, "hostname", &format!("{hostname}\n"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::HostEntry;

    fn cfg() -> NetworkConfig {
        NetworkConfig {
            interfaces: vec![],
            nameservers: vec!["10.88.0.1".into()],
            search: vec![],
            hosts: vec![HostEntry {
                address: "10.88.0.2".into(),
                names: vec!["abc".into(), "web".into()],
            }],
        }
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:76:0A:58:00:ff").unwrap(),
            [2, 0x76, 0x0a, 0x58, 0, 0xff]
        );
        assert!(parse_mac("02:76:0a:58:00").is_err());
        assert!(parse_mac("02:76:0a:58:00:zz").is_err());
    }

    #[test]
    fn files() {
        assert_eq!(
            resolv_conf(&cfg()),
            "# written by vessel\nnameserver 10.88.0.1\n"
        );
        let h = hosts(&cfg(), "abc");
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("10.88.0.2\tabc web\n"));
        assert!(!h.contains("127.0.1.1"));
        assert!(hosts(&NetworkConfig::default(), "x").contains("127.0.1.1\tx\n"));
        assert_eq!(prefix_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }

    #[test]
    fn etc_symlinks_are_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/resolv.conf")).unwrap();
        write_files(&root, &cfg(), "abc").unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert!(std::fs::read_to_string(root.join("etc/resolv.conf"))
            .unwrap()
            .contains("nameserver 10.88.0.1"));
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "abc\n"
        );
    }
}
