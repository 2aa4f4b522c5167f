//! VM templates: start a container by restoring a saved VM instead of
//! booting a kernel (see `vessel_api::template` for where they live).
//!
//! **Building** (once per set of inputs, under a lock, by the first
//! container that needs it): a VM with the template device layout boots
//! our kernel with a placeholder root disk; once vminitd answers on its
//! agent port (the transport's readiness signal), QEMU stops the VM and
//! writes its whole state (memory and devices) through a descriptor handed
//! over QMP (`getfd`, `migrate fd:`), so a confined QEMU needs neither a
//! shell nor a path.
//!
//! **Restoring**: the container's QEMU gets the same device layout, with
//! the container's disk and network behind it, and reads the state from an
//! inherited descriptor (`-incoming fd:N`) into private anonymous memory
//! (pages the template never touched cost nothing, and memory the guest
//! frees can be dropped). The runtime then resizes the root disk to the
//! container's (the guest sees the change), and the first agent message is
//! `Adopt`: fresh entropy and a reseed, the container's MAC, the new disk
//! (see vminitd's `adopt`). The clock is set as for every VM, before the
//! process starts.
//!
//! **What cannot be restored** (QEMU 7.2 refuses to save vhost-user
//! devices): containers with bind mounts or shared volumes (virtio-fs),
//! block volumes, or more than one network boot their kernel, as do those
//! run with `--no-template` or under `VESSEL_TEMPLATES=0`.

use crate::log;
use crate::qmp::{QmpError, Session};
use crate::transport::{AgentTransport, ReadyGate};
use crate::vmm::{qemu_binary, GuestMemory, Nic, NicBackend, Qemu, QemuSpec, Vmm};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vessel_api::fsutil::{read_json, write_json_atomic};
use vessel_api::paths::Home;
use vessel_api::template::{self, TemplateMeta};
use vessel_api::types::now_ms;

/// Bumped whenever the template device layout or what the guest does before
/// it is saved changes: older templates are then rebuilt.
pub const LAYOUT_VERSION: u32 = 2;
/// The MAC of a template's network device; each clone's guest replaces it
/// with the container's.
pub const TEMPLATE_MAC: &str = "02:76:ff:ff:ff:fe";
/// The placeholder root disk a template boots with (1 MiB).
const PLACEHOLDER_BYTES: u64 = 1 << 20;
/// How long a template VM may take to boot, and to save.
const BOOT_LIMIT: Duration = Duration::from_secs(60);
const SAVE_LIMIT: Duration = Duration::from_secs(60);
/// How long a restore may take before the disk is swapped in.
const RESTORE_LIMIT: Duration = Duration::from_secs(20);

/// Errors building or restoring a template. None of them fails a container:
/// its VM then boots its kernel.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("the template VM: {0}")]
    Vm(String),
    #[error("QMP")]
    Qmp(#[from] QmpError),
    #[error("qemu-img could not create the placeholder disk: {0}")]
    Placeholder(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TemplateError {
    let what = what.into();
    move |e| TemplateError::Io(what, e)
}

/// Everything a saved VM depends on.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub accel: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// A network device (containers on a network) or none.
    pub nic: bool,
    pub tsc_khz: Option<u64>,
}

impl Inputs {
    /// The template's key: a hash of the inputs, the files by identity
    /// (path, size, modification time, inode: a rebuilt kernel, initramfs,
    /// QEMU or vessel-runtime is a new key), the kernel command line (with
    /// `VESSEL_KERNEL_CMDLINE_EXTRA`) and the layout.
    pub fn key(&self) -> Result<String, TemplateError> {
        self.key_for(&resolve(&qemu_binary()))
    }

    fn key_for(&self, qemu: &Path) -> Result<String, TemplateError> {
        let qemu = qemu.to_path_buf();
        let mut h = Sha256::new();
        for (name, p) in [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("qemu", &qemu),
        ] {
            let m = std::fs::metadata(p).map_err(io(format!("{}", p.display())))?;
            h.update(format!(
                "{name} {} {} {}.{} {}\n",
                p.display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ino()
            ));
        }
        // This runtime itself: a rebuilt one may lay the devices out
        // differently.
        let me = std::env::current_exe()
            .and_then(std::fs::metadata)
            .map(|m| format!("{} {}.{} {}", m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
            .unwrap_or_default();
        h.update(format!(
            "accel {}\ncpus {}\nmemory {}\nnic {}\ncmdline {} {}\nlayout {LAYOUT_VERSION}\nruntime {} {me}\n",
            self.accel,
            self.cpus.max(1),
            self.memory_mib,
            self.nic,
            crate::vmm::kernel_cmdline(self.tsc_khz),
            std::env::var(crate::vmm::CMDLINE_EXTRA_ENV).unwrap_or_default(),
            env!("CARGO_PKG_VERSION"),
        ));
        Ok(hex::encode(&h.finalize()[..8]))
    }
}

/// `qemu-system-x86_64` as found in `PATH`.
fn resolve(p: &Path) -> PathBuf {
    if p.components().count() > 1 {
        return p.to_path_buf();
    }
    vessel_api::paths::find_in_path(&p.to_string_lossy()).unwrap_or_else(|| p.to_path_buf())
}

/// A template ready to restore: what it is, its saved device state (open)
/// and its memory file.
#[derive(Debug)]
pub struct Ready {
    pub meta: TemplateMeta,
    pub state: File,
    pub memory: PathBuf,
}

/// The template for `inputs`, built first if there is none (its VM's
/// sockets in `sockets`, a directory of the container's run directory, so
/// what a killed build leaves goes with the container's). Several runtimes
/// needing the same template wait for one build.
pub fn ensure(home: &Home, inputs: &Inputs, sockets: &Path) -> Result<Ready, TemplateError> {
    let root = template::dir(home);
    std::fs::create_dir_all(&root).map_err(io(format!("create {}", root.display())))?;
    let key = inputs.key()?;
    let lock_path = root.join(format!("{key}.lock"));
    let lock = File::create(&lock_path).map_err(io(format!("open {}", lock_path.display())))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(TemplateError::Io(
            format!("lock {}", lock_path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    let dir = root.join(&key);
    let meta: Option<TemplateMeta> = read_json(&dir.join("meta.json")).ok().flatten();
    let meta = match meta {
        Some(m) => m,
        None => {
            let m = build(inputs, &key, &root, sockets)?;
            remove_stale(&root, &m);
            m
        }
    };
    let state_path = dir.join("state");
    let state = File::open(&state_path).map_err(io(format!("open {}", state_path.display())))?;
    let memory = dir.join("memory");
    std::fs::metadata(&memory).map_err(io(format!("{}", memory.display())))?;
    Ok(Ready {
        meta,
        state,
        memory,
    })
}

/// Templates for the same CPUs, memory, network device and accelerator
/// but other inputs (an older kernel, initramfs or QEMU) will never be
/// used again.
fn remove_stale(root: &Path, new: &TemplateMeta) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(Some(m)) = read_json::<TemplateMeta>(&e.path().join("meta.json")) else {
            continue;
        };
        let same_shape = (m.cpus, m.memory_mib, m.nic, &m.accel)
            == (new.cpus, new.memory_mib, new.nic, &new.accel);
        if m.key != new.key && same_shape {
            log(&format!("removing the outdated VM template {}", m.key));
            let _ = std::fs::remove_dir_all(e.path());
            let _ = std::fs::remove_file(root.join(format!("{}.lock", m.key)));
        }
    }
}

/// The QEMU command line shared by a template and its clones: the same
/// devices in the same order (what the saved state describes).
#[allow(clippy::too_many_arguments)]
pub fn layout(
    inputs: &Inputs,
    disk: PathBuf,
    agent_fd: i32,
    boot_log: PathBuf,
    qmp_socket: PathBuf,
    nic: Option<NicBackend>,
    sandbox: bool,
    memory: GuestMemory,
) -> QemuSpec {
    QemuSpec {
        accel: inputs.accel.clone(),
        cpus: inputs.cpus,
        memory_mib: inputs.memory_mib,
        kernel: inputs.kernel.clone(),
        initrd: inputs.initrd.clone(),
        disk: Some(disk),
        agent_fd,
        boot_log,
        qmp_socket,
        tsc_khz: inputs.tsc_khz,
        nics: nic
            .map(|backend| Nic {
                backend,
                mac: TEMPLATE_MAC.to_string(),
            })
            .into_iter()
            .collect(),
        volumes: Vec::new(),
        fs_devices: Vec::new(),
        sandbox,
        memory,
    }
}

/// Boot a template VM in `root/<key>.building`, save it, and move it to
/// `root/<key>`.
fn build(
    inputs: &Inputs,
    key: &str,
    root: &Path,
    run_dir: &Path,
) -> Result<TemplateMeta, TemplateError> {
    let started = Instant::now();
    log(&format!(
        "building the VM template {key} ({} CPU, {} MiB{}): booting it once",
        inputs.cpus,
        inputs.memory_mib,
        if inputs.nic { ", network device" } else { "" }
    ));
    let work = root.join(format!("{key}.building"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(format!("create {}", work.display())))?;
    let _ = std::fs::remove_dir_all(run_dir);
    let result = (|| {
        std::fs::create_dir(run_dir).map_err(io(format!("create {}", run_dir.display())))?;
        let placeholder = work.join("placeholder.qcow2");
        make_placeholder(&placeholder)?;
        let uds = run_dir.join("vsock.sock");
        let mut gate =
            ReadyGate::bind(&uds, BOOT_LIMIT).map_err(|e| TemplateError::Vm(crate::chain(&e)))?;
        let mut transport = AgentTransport::start(&uds, gate.path.clone())
            .map_err(|e| TemplateError::Vm(crate::chain(&e)))?;
        let agent_fd = transport
            .qemu_fd()
            .ok_or_else(|| TemplateError::Vm("no agent port".into()))?;
        let qmp_socket = run_dir.join("qmp.sock");
        let spec = layout(
            inputs,
            placeholder,
            agent_fd,
            work.join("boot.log"),
            qmp_socket.clone(),
            inputs.nic.then_some(NicBackend::Unplugged),
            true,
            GuestMemory::TemplateFile(work.join("memory")),
        );
        let mut qemu = Qemu::new(qemu_binary(), spec, work.join("vmm.log"));
        let r = (|| {
            qemu.start()
                .map_err(|e| TemplateError::Vm(crate::chain(&e)))?;
            transport.release_qemu_end();
            let deadline = Instant::now() + BOOT_LIMIT;
            loop {
                if gate.open() && gate.signalled_after().is_some() {
                    break;
                }
                if let Ok(Some(code)) = qemu.try_wait() {
                    return Err(TemplateError::Vm(format!(
                        "it exited ({code}) before its agent answered; see {}",
                        work.join("boot.log").display()
                    )));
                }
                if Instant::now() >= deadline {
                    return Err(TemplateError::Vm(format!(
                        "its agent did not answer within {} s; see {}",
                        BOOT_LIMIT.as_secs(),
                        work.join("boot.log").display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let booted = started.elapsed();
            save(&qmp_socket, &work.join("state"), &work.join("memory"))?;
            log(&format!(
                "VM template {key}: booted in {} ms, saved in {} ms",
                booted.as_millis(),
                (started.elapsed() - booted).as_millis()
            ));
            Ok(())
        })();
        let _ = qemu.kill();
        transport.close();
        r
    })();
    let _ = std::fs::remove_dir_all(run_dir);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&work);
        return Err(e);
    }
    let state_bytes = std::fs::metadata(work.join("state"))
        .map(|m| m.len())
        .unwrap_or(0);
    let meta = TemplateMeta {
        key: key.to_string(),
        created_ms: now_ms(),
        kernel: inputs.kernel.clone(),
        initrd: inputs.initrd.clone(),
        accel: inputs.accel.clone(),
        cpus: inputs.cpus,
        memory_mib: inputs.memory_mib,
        nic: inputs.nic,
        qemu_version: qemu_version(),
        state_bytes,
        build_ms: started.elapsed().as_millis() as u64,
        placeholder_sectors: PLACEHOLDER_BYTES / 512,
        mac: TEMPLATE_MAC.to_string(),
    };
    let _ = std::fs::remove_file(work.join("placeholder.qcow2"));
    write_json_atomic(&work.join("meta.json"), &meta).map_err(io("write meta.json"))?;
    let dir = root.join(key);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&work, &dir).map_err(io(format!("move {}", work.display())))?;
    Ok(meta)
}

fn make_placeholder(path: &Path) -> Result<(), TemplateError> {
    let out = std::process::Command::new(crate::run::qemu_img_binary())
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(PLACEHOLDER_BYTES.to_string())
        .output()
        .map_err(|e| TemplateError::Placeholder(e.to_string()))?;
    if !out.status.success() {
        return Err(TemplateError::Placeholder(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// The migration capability that leaves shared memory (the template's
/// memory file) out of the saved state: both sides set it.
fn ignore_shared(qmp: &mut Session) -> Result<(), QmpError> {
    qmp.call(
        "migrate-set-capabilities",
        Some(serde_json::json!({
            "capabilities": [{ "capability": "x-ignore-shared", "state": true }]
        })),
    )
    .map(|_| ())
}

/// Stop the VM and write its device state to `path`; its memory is in
/// `memory` already.
fn save(qmp_socket: &Path, path: &Path, memory: &Path) -> Result<(), TemplateError> {
    let mut qmp = Session::connect(qmp_socket, Duration::from_secs(10))?;
    qmp.call("stop", None)?;
    ignore_shared(&mut qmp)?;
    let file = File::create(path).map_err(io(format!("create {}", path.display())))?;
    qmp.call_with_fd(
        "getfd",
        Some(serde_json::json!({ "fdname": "template" })),
        file.as_raw_fd(),
    )?;
    qmp.call("migrate", Some(serde_json::json!({ "uri": "fd:template" })))?;
    let deadline = Instant::now() + SAVE_LIMIT;
    loop {
        let v = qmp.call("query-migrate", None)?;
        match v.get("status").and_then(|s| s.as_str()).unwrap_or("") {
            "completed" => break,
            "failed" | "cancelled" => {
                return Err(TemplateError::Vm(format!(
                    "saving it failed: {}",
                    v.get("error-desc").and_then(|d| d.as_str()).unwrap_or("?")
                )))
            }
            _ if Instant::now() >= deadline => {
                return Err(TemplateError::Vm(format!(
                    "saving it took more than {} s",
                    SAVE_LIMIT.as_secs()
                )))
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    file.sync_all()
        .map_err(io(format!("sync {}", path.display())))?;
    File::open(memory)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("sync {}", memory.display())))?;
    Ok(())
}

fn qemu_version() -> String {
    std::process::Command::new(qemu_binary())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Once a clone's QEMU has started: wait for the state to be loaded, give
/// the root disk its real size, which tells the guest (virtio's
/// configuration change) what `Adopt` waits for, and let the VM run.
pub fn finish_restore(
    qmp_socket: &Path,
    state_fd: i32,
    disk_bytes: u64,
    vmm_alive: &mut dyn FnMut() -> bool,
) -> Result<(), TemplateError> {
    let deadline = Instant::now() + RESTORE_LIMIT;
    let mut qmp = loop {
        match Session::connect(qmp_socket, Duration::from_secs(10)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline && vmm_alive() => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e.into()),
        }
    };
    ignore_shared(&mut qmp)?;
    qmp.call(
        "migrate-incoming",
        Some(serde_json::json!({ "uri": format!("fd:{state_fd}") })),
    )?;
    // The template was saved stopped, so the restored VM stays paused once
    // its state is in: the disk is swapped in then, and the guest sees the
    // new size as soon as it runs.
    let running = loop {
        let v = qmp.call("query-status", None)?;
        match v.get("status").and_then(|s| s.as_str()).unwrap_or("") {
            "running" => break true,
            "paused" | "postmigrate" => break false,
            "inmigrate" | "prelaunch" | "restore-vm" if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            other => {
                return Err(TemplateError::Vm(format!(
                    "the restored VM is {other:?} after {} ms, not ready to run",
                    RESTORE_LIMIT.as_millis()
                )))
            }
        }
    };
    qmp.call(
        "block_resize",
        Some(serde_json::json!({ "device": "root", "size": disk_bytes })),
    )?;
    if !running {
        qmp.call("cont", None)?;
    }
    Ok(())
}

/// 32 random bytes from the host, hex, for a clone's `Adopt`.
pub fn entropy() -> String {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most the given length into `buf`.
        let n = unsafe {
            libc::getrandom(
                buf[filled..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - filled,
                0,
            )
        };
        if n > 0 {
            filled += n as usize;
        }
    }
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(dir: &Path) -> Inputs {
        let kernel = dir.join("vmlinux");
        let initrd = dir.join("initrd.img");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&initrd, b"i").unwrap();
        Inputs {
            kernel,
            initrd,
            accel: "tcg".into(),
            cpus: 1,
            memory_mib: 128,
            nic: false,
            tsc_khz: Some(2_000_000),
        }
    }

    #[test]
    fn the_key_changes_with_every_input() {
        let tmp = tempfile::tempdir().unwrap();
        let qemu = tmp.path().join("qemu");
        std::fs::write(&qemu, b"q").unwrap();
        let base = inputs(tmp.path());
        let k = base.key_for(&qemu).unwrap();
        assert_eq!(k.len(), 16);
        assert_eq!(base.key_for(&qemu).unwrap(), k, "stable");
        let mut other = Vec::new();
        for f in [
            |i: &mut Inputs| i.cpus = 2,
            |i: &mut Inputs| i.memory_mib = 256,
            |i: &mut Inputs| i.nic = true,
            |i: &mut Inputs| i.accel = "kvm".into(),
            |i: &mut Inputs| i.tsc_khz = None,
        ] {
            let mut i = base.clone();
            f(&mut i);
            other.push(i.key_for(&qemu).unwrap());
        }
        // A rebuilt initramfs (new size), another QEMU: new keys.
        std::fs::write(&base.initrd, b"rebuilt").unwrap();
        other.push(base.key_for(&qemu).unwrap());
        std::fs::write(&qemu, b"qemu 9").unwrap();
        other.push(base.key_for(&qemu).unwrap());
        for o in &other {
            assert_ne!(o, &k);
        }
        let mut missing = base.clone();
        missing.kernel = tmp.path().join("nope");
        assert!(missing.key_for(&qemu).is_err());
    }

    #[test]
    fn entropy_is_fresh() {
        let (a, b) = (entropy(), entropy());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
