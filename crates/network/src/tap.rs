//! Persistent TAP devices, made with the `/dev/net/tun` ioctls (netlink
//! cannot create them). The VMM opens them later by name.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

/// The longest interface name Linux accepts.
pub const MAX_IFNAME: usize = 15;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_int) -> io::Result<IfReq> {
    if name.is_empty() || name.len() > MAX_IFNAME || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}"),
        ));
    }
    let mut r = IfReq {
        name: [0; 16],
        flags: flags as libc::c_short,
        _pad: [0; 22],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(r)
}

/// Create (or take over) the persistent TAP device `name`.
pub fn create_tap(name: &str) -> io::Result<()> {
    let mut req = ifreq(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR)?;
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req`
    // is (40 bytes, name then flags), valid for the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes an integer argument by value.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(ifreq("", 0).is_err());
        assert!(ifreq("0123456789abcdef", 0).is_err());
        assert!(ifreq("a/b", 0).is_err());
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert!(ifreq("vsl0123456789ab", 0).is_ok());
    }
}
