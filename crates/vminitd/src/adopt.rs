//! Making a VM restored from a template this container's own
//! (`HostMessage::Adopt`): every clone of a template wakes up with the same
//! memory, so the same random generator state, the template's MAC and the
//! template's placeholder root disk. Before anything else runs in the
//! guest: fresh entropy from the host and a reseed, the container's MACs,
//! and the container's root disk as the host resized it in.

use agent_protocol::AdoptRequest;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `_IOW('R', 0x03, int[2])`: add entropy, crediting it.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the generator now from the pool.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// `_IO(0x12, 97)`: drop a block device's cached buffers.
const BLKFLSBUF: libc::c_ulong = 0x1261;
/// How long the resized root disk may take to show its new size.
const DISK_WAIT: Duration = Duration::from_secs(5);

static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Apply `req`, once per boot.
pub fn adopt(req: &AdoptRequest) -> Result<(), String> {
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err("this VM was already adopted".into());
    }
    reseed(&decode_hex(&req.entropy)?)?;
    for m in &req.macs {
        crate::net::set_mac(&m.from, &m.to)?;
    }
    if !req.root_device.is_empty() {
        wait_disk_size(&req.root_device, req.root_sectors)?;
        flush_buffers(&req.root_device)?;
    }
    Ok(())
}

fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) || s.len() < 32 {
        return Err("the host's entropy is missing or malformed".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| "the host's entropy is not hex".to_string())
        })
        .collect()
}

/// Mix `seed` into the kernel's pool, credited as entropy, and reseed the
/// generator from it at once (`getrandom` and `/dev/urandom` then differ
/// from every other clone's).
fn reseed(seed: &[u8]) -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("open /dev/urandom: {e}"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as libc::c_int).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as libc::c_int).to_ne_bytes());
    info.extend_from_slice(seed);
    // Whole u32 words.
    info.resize(8 + seed.len().div_ceil(4) * 4, 0);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of buf_size bytes after
    // its header from the pointer, which `info` holds.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } < 0 {
        return Err(format!(
            "add the host's entropy: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) } < 0 {
        return Err(format!(
            "reseed the random generator: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `/dev/vda` -> `/sys/block/vda/size`, in 512-byte sectors.
fn sysfs_size(device: &str) -> Result<u64, String> {
    let name = device.rsplit('/').next().unwrap_or(device);
    let path = format!("/sys/block/{name}/size");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{path} says {text:?}"))
}

fn wait_disk_size(device: &str, sectors: u64) -> Result<(), String> {
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        let now = sysfs_size(device)?;
        if now == sectors {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{device} still has {now} sectors, not the container disk's {sectors}, after {} s",
                DISK_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn flush_buffers(device: &str) -> Result<(), String> {
    let f = std::fs::File::open(device).map_err(|e| format!("open {device}: {e}"))?;
    // SAFETY: BLKFLSBUF takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF as _) } < 0 {
        return Err(format!(
            "drop {device}'s cached blocks: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_must_be_hex_and_long_enough() {
        assert_eq!(decode_hex(&"ab".repeat(16)).unwrap(), vec![0xab; 16]);
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex(&"zz".repeat(16)).is_err());
        assert!(decode_hex("abcd").is_err(), "too short to matter");
    }
}
