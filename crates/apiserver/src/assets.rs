//! Locating the guest kernel and initramfs.

use std::path::PathBuf;

/// Where to look for a guest asset: `$ENV_VAR`, then `<exe dir>/../share/vessel/NAME`,
/// then `/usr/local/share/vessel/NAME`.
fn locate(env_var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join("../share/vessel").join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("/usr/local/share/vessel").join(name)
}

/// The guest kernel (`VESSEL_KERNEL` overrides).
pub fn kernel() -> PathBuf {
    locate("VESSEL_KERNEL", "vmlinux")
}

/// The initramfs holding vminitd (`VESSEL_INITRD` overrides).
pub fn initrd() -> PathBuf {
    locate("VESSEL_INITRD", "initramfs.img")
}

/// The release of the kernel image at `path` (`6.1.192`), from the banner
/// every Linux image carries (`Linux version 6.1.192 (...)`). Read once
/// per file (path, size and modification time).
pub fn kernel_version(path: &std::path::Path) -> Option<String> {
    use std::sync::Mutex;
    type Key = (PathBuf, u64, Option<std::time::SystemTime>);
    static CACHE: Mutex<Option<(Key, Option<String>)>> = Mutex::new(None);
    let meta = std::fs::metadata(path).ok()?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((k, v)) = cache.as_ref() {
        if *k == key {
            return v.clone();
        }
    }
    let found = std::fs::File::open(path)
        .ok()
        .and_then(|f| find_banner(std::io::BufReader::new(f)));
    *cache = Some((key, found.clone()));
    found
}

/// The word after the first `Linux version ` in `r`.
fn find_banner(mut r: impl std::io::Read) -> Option<String> {
    const NEEDLE: &[u8] = b"Linux version ";
    let mut buf = vec![0u8; 1 << 20];
    let mut keep = 0;
    loop {
        let n = r.read(&mut buf[keep..]).ok()?;
        let eof = n == 0;
        let end = keep + n;
        if let Some(at) = buf[..end].windows(NEEDLE.len()).position(|w| w == NEEDLE) {
            let rest = &buf[at + NEEDLE.len()..end];
            let word: Vec<u8> = rest
                .iter()
                .take_while(|b| b.is_ascii_graphic())
                .take(64)
                .copied()
                .collect();
            // The word may go on in the next read: a release is short, so
            // keep the banner and read on.
            if !eof && word.len() == rest.len() && rest.len() < 64 {
                buf.copy_within(at..end, 0);
                keep = end - at;
                continue;
            }
            return (!word.is_empty()).then(|| String::from_utf8_lossy(&word).into_owned());
        }
        if eof {
            return None;
        }
        // Keep the tail, in case the needle straddles two reads.
        let tail = NEEDLE.len().min(end);
        buf.copy_within(end - tail..end, 0);
        keep = tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_s_release_is_found_across_reads() {
        let mut image = vec![0u8; 3 << 20];
        let at = (1 << 20) - 5; // the needle straddles the first read
        let banner = b"Linux version 6.1.192 (debian@host) #1 SMP";
        image[at..at + banner.len()].copy_from_slice(banner);
        assert_eq!(find_banner(&image[..]).as_deref(), Some("6.1.192"));
        assert_eq!(find_banner(&b"no banner here"[..]), None);
        // A banner at the very end, cut after the release.
        assert_eq!(
            find_banner(&b"xxLinux version 6.1.7"[..]).as_deref(),
            Some("6.1.7")
        );
    }
}
