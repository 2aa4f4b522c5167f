//! The shim (`start`, `delete`) and its ttrpc Task service.
//!
//! One shim per pod (the grouping key is the pod's sandbox id) and one VM
//! per pod: the sandbox's task starts the VM, the pod's other containers
//! run in it, each in its own root and mount namespace (see [`crate::pod`]).
//! A task outside a pod has a shim and a VM of its own.
//!
//! Events, in containerd's order: `Create` publishes TaskCreate; `Start`
//! publishes TaskStart once the process runs, before the thread that
//! reports its end exists, so TaskExit always follows it; `Delete`
//! publishes TaskDelete. An exec: `Exec` → TaskExecAdded, its `Start` →
//! TaskExecStarted, its end → TaskExit with the exec id.

use crate::exit::{exit_status, LOST};
use crate::pod;
use crate::podnet;
use crate::spec::{self, VmSettings};
use crate::vm::{self, Outputs, Runtime};
use containerd_shim::api::Empty;
use containerd_shim::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, ExecProcessRequest, KillRequest, PidsRequest, PidsResponse, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, Flags, StartOpts, Task, TtrpcContext, TtrpcResult};
use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use vessel_api::control::{AttachRequest, ControlRequest};
use vessel_api::network::ContainerNetworks;
use vessel_api::paths::Home;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn err(code: ttrpc_code::Code, msg: impl Into<String>) -> containerd_shim::protos::ttrpc::Error {
    containerd_shim::protos::ttrpc::Error::RpcStatus(containerd_shim::protos::ttrpc::get_status(
        code,
        msg.into(),
    ))
}

mod ttrpc_code {
    pub use containerd_shim::protos::ttrpc::Code;
}
use ttrpc_code::Code;

/// The shim process (the library calls it for `start`, `delete` and to serve).
pub struct VesselShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    /// containerd's socket (the shim's own socket address derives from it).
    address: String,
}

impl containerd_shim::Shim for VesselShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        VesselShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            address: args.address.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // One shim per pod later: the sandbox id groups a pod's containers.
        let grouping = std::env::current_dir()
            .ok()
            .and_then(|b| spec::read(&b).ok())
            .and_then(|s| pod::pod_id(&s.annotations).map(str::to_string))
            .unwrap_or_else(|| opts.id.clone());
        // The bare address on stdout (the library writes it): what
        // containerd 1.6 (Debian 12) reads; 1.7 and 2.x accept it too.
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        // BUNDLE/address: where the serving shim finds its socket to remove
        // at its end.
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // The shim is gone: end what it left (its runtime dies with it, by
        // the parent-death signal; make sure) and remove its files.
        let home = vm::home_for(&self.namespace, &self.id);
        let state: Option<vessel_api::types::ContainerState> =
            vessel_api::fsutil::read_json(&home.container_dir(&self.id).join("state.json"))
                .ok()
                .flatten();
        if let Some(s) = state {
            if let Some(pid) = s.runtime_pid {
                end_runtime(pid, s.runtime_start_time);
            }
        }
        if let Ok(bundle) = std::env::current_dir() {
            // A pod's container: its place in the pod directory; a pod's
            // sandbox: the pod directory.
            if let Some(sandbox) = spec::read(&bundle)
                .ok()
                .and_then(|s| pod::sandbox_of(&s.annotations).map(str::to_string))
            {
                pod::remove_container(&pod::host_dir(&self.namespace, &sandbox), &self.id);
            }
            pod::remove_dir(&pod::host_dir(&self.namespace, &self.id));
            unmount_rootfs(&bundle.join("rootfs"));
        }
        sweep_runtime(&home, &self.id);
        unwire_network(&home.container_dir(&self.id));
        // A killed shim leaves its ttrpc socket; nobody answers on it now.
        let socket = containerd_shim::socket_address(&self.address, &self.namespace, &self.id);
        let socket = socket.trim_start_matches("unix://");
        if std::os::unix::net::UnixStream::connect(socket).is_err() {
            let _ = std::fs::remove_file(socket);
        }
        if std::env::var_os("VESSEL_SHIM_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(home.root());
        }
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(Timestamp::now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        Service {
            exit: Arc::clone(&self.exit),
            events: Arc::new(RemoteEvents {
                publisher,
                namespace: self.namespace.clone(),
            }),
            namespace: self.namespace.clone(),
            tasks: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Where the task's events go: containerd (or a recorder in tests).
pub trait Events: Send + Sync {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>);
}

/// Publishes events to containerd over its ttrpc socket.
pub struct RemoteEvents {
    publisher: RemotePublisher,
    namespace: String,
}

impl Events for RemoteEvents {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
        {
            log::warn!("publishing {topic}: {e}");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

/// A process of the task (the main one, or an exec).
struct Proc {
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    pid: u32,
    state: State,
    exit: Option<(u32, Timestamp)>,
    /// The stream to the process (stdin, resize, close).
    conn: Option<UnixStream>,
    /// An exec's process, as vminitd takes it.
    exec: Option<agent_protocol::ProcessSpec>,
    /// The stdin FIFO, open from Create/Exec until the process starts.
    stdin_file: Option<std::fs::File>,
}

impl Proc {
    fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Self {
        Proc {
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
            terminal,
            pid: 0,
            state: State::Created,
            exit: None,
            conn: None,
            exec: None,
            stdin_file: vm::open_stdin(stdin),
        }
    }
}

/// One container: its VM and its processes ("" is the main one).
struct Container {
    bundle: String,
    home: Home,
    env: Vec<String>,
    runtime: Option<Runtime>,
    procs: HashMap<String, Proc>,
    /// A pod's sandbox: the pod directory its VM shares.
    pod_dir: Option<PathBuf>,
    /// A pod's container in its sandbox's VM.
    in_pod: Option<InPod>,
}

/// Where a pod's container runs: its sandbox's VM.
struct InPod {
    /// The sandbox's task id (in this shim).
    sandbox: String,
    /// The pod directory, where its root is bound.
    pod_dir: PathBuf,
    /// Its main process, with its root in the VM.
    process: agent_protocol::ProcessSpec,
}

type Tasks = Arc<Mutex<HashMap<String, (Arc<Mutex<Container>>, Arc<Condvar>)>>>;

pub struct Service {
    exit: Arc<ExitSignal>,
    events: Arc<dyn Events>,
    namespace: String,
    tasks: Tasks,
}

fn vm_settings() -> VmSettings {
    VmSettings {
        kernel: vessel_apiserver::assets::kernel(),
        initrd: vessel_apiserver::assets::initrd(),
        accel: vessel_apiserver::accel::detect().name,
        cpus: std::env::var("VESSEL_SHIM_CPUS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        memory_mib: std::env::var("VESSEL_SHIM_MEMORY_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(vessel_apiserver::containers::DEFAULT_MEMORY_MIB),
    }
}

fn now_ms() -> u64 {
    vessel_api::types::now_ms()
}

impl Service {
    fn get(&self, id: &str) -> TtrpcResult<(Arc<Mutex<Container>>, Arc<Condvar>)> {
        lock(&self.tasks)
            .get(id)
            .cloned()
            .ok_or_else(|| err(Code::NOT_FOUND, format!("task {id} not found")))
    }

    /// Record a process's end and tell containerd (TaskExit).
    fn exited(
        events: &dyn Events,
        c: &Mutex<Container>,
        cv: &Condvar,
        id: &str,
        exec_id: &str,
        status: u32,
    ) {
        let pid = {
            let mut c = lock(c);
            let Some(p) = c.procs.get_mut(exec_id) else {
                return;
            };
            if p.exit.is_some() {
                return;
            }
            p.state = State::Stopped;
            p.exit = Some((status, Timestamp::now()));
            p.conn = None;
            p.pid
        };
        cv.notify_all();
        events.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: id.into(),
                id: if exec_id.is_empty() { id } else { exec_id }.into(),
                pid,
                exit_status: status,
                exited_at: MessageField::some(Timestamp::now()),
                ..Default::default()
            }),
        );
    }

    fn start_main(
        &self,
        id: &str,
        c: &Arc<Mutex<Container>>,
        cv: &Arc<Condvar>,
    ) -> TtrpcResult<u32> {
        let in_pod = lock(c).in_pod.as_ref().map(|p| p.process.clone());
        if let Some(process) = in_pod {
            return self.start_in_pod(id, c, cv, process);
        }
        let (home, stdin, stdout, stderr, terminal) = {
            let c = lock(c);
            let p = &c.procs[""];
            if p.state != State::Created {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    "the task was started already",
                ));
            }
            (
                c.home.clone(),
                p.stdin.clone(),
                p.stdout.clone(),
                p.stderr.clone(),
                p.terminal,
            )
        };
        let mut runtime = Runtime::spawn(&home, id).map_err(internal)?;
        let up = runtime.wait_control(Duration::from_secs(120));
        let control = runtime.control.clone();
        let runtime_pid = runtime.child.id();
        lock(c).runtime = Some(runtime);
        up.map_err(internal)?;
        let conn = vm::open_stream(
            &control,
            &ControlRequest::Attach(AttachRequest {
                stdin: !stdin.is_empty(),
                stdout: true,
                stderr: true,
                logs: true,
            }),
        )
        .map_err(internal)?;
        let mut out = Outputs::open(&stdout, &stderr, terminal);
        let stdin_file = lock(c).procs.get_mut("").and_then(|p| p.stdin_file.take());
        if let Some(f) = stdin_file {
            if let Ok(w) = conn.try_clone() {
                vm::pump_stdin(f, w);
            }
        }
        let pid = runtime_pid;
        {
            let mut c = lock(c);
            if let Some(p) = c.procs.get_mut("") {
                p.pid = pid;
                p.state = State::Running;
                p.conn = conn.try_clone().ok();
            }
        }
        self.events.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: id.into(),
                pid,
                ..Default::default()
            }),
        );
        let (events, c2, cv2, id2) = (
            Arc::clone(&self.events),
            Arc::clone(c),
            Arc::clone(cv),
            id.to_string(),
        );
        std::thread::spawn(move || {
            let seen = vm::pump_output(&conn, &mut out, |_| {});
            drop(out);
            let status = match seen.exit {
                Some((code, signal)) => exit_status(code, signal),
                None => {
                    // The stream broke: the VM or the runtime died. Its
                    // record may still say how the process ended.
                    let state = lock(&c2).runtime.as_ref().and_then(|r| r.read_state());
                    log::warn!(
                        "task {id2}: the VM went away ({})",
                        state
                            .as_ref()
                            .and_then(|s| s.error.clone())
                            .unwrap_or_else(|| "no reason recorded".into())
                    );
                    state
                        .and_then(|s| s.exit_code)
                        .map_or(LOST, |code| exit_status(code, None))
                }
            };
            Service::exited(&*events, &c2, &cv2, &id2, "", status);
        });
        Ok(pid)
    }

    fn start_exec(
        &self,
        id: &str,
        exec_id: &str,
        c: &Arc<Mutex<Container>>,
        cv: &Arc<Condvar>,
    ) -> TtrpcResult<u32> {
        let (control, process) = {
            let c = lock(c);
            let control = self
                .control_of(&c)
                .ok_or_else(|| err(Code::FAILED_PRECONDITION, "the task is not running"))?;
            let p = c
                .procs
                .get(exec_id)
                .ok_or_else(|| err(Code::NOT_FOUND, format!("exec {exec_id} not found")))?;
            let process = p
                .exec
                .clone()
                .ok_or_else(|| err(Code::INTERNAL, "exec without a process"))?;
            (control, process)
        };
        let (pid, handle) = match self.launch(&control, exec_id, exec_id, process, c) {
            Ok(started) => started,
            Err(e) => {
                lock(c).procs.remove(exec_id);
                return Err(e);
            }
        };
        self.events.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id.into(),
                exec_id: exec_id.into(),
                pid,
                ..Default::default()
            }),
        );
        self.report_exit(id, exec_id, c, cv, handle);
        Ok(pid)
    }

    /// When the output thread of a [`Self::launch`]ed process ends, record
    /// how the process ended and tell containerd.
    fn report_exit(
        &self,
        id: &str,
        exec_id: &str,
        c: &Arc<Mutex<Container>>,
        cv: &Arc<Condvar>,
        handle: std::thread::JoinHandle<vm::Seen>,
    ) {
        let (events, c2, cv2, id2, exec2) = (
            Arc::clone(&self.events),
            Arc::clone(c),
            Arc::clone(cv),
            id.to_string(),
            exec_id.to_string(),
        );
        std::thread::spawn(move || {
            let seen = handle.join().unwrap_or_default();
            let status = seen.exit.map_or(LOST, |(c, s)| exit_status(c, s));
            Service::exited(&*events, &c2, &cv2, &id2, &exec2, status);
        });
    }

    /// A pod's container: its main process starts in the sandbox's VM,
    /// in its own root ([`crate::pod`]).
    fn start_in_pod(
        &self,
        id: &str,
        c: &Arc<Mutex<Container>>,
        cv: &Arc<Condvar>,
        process: agent_protocol::ProcessSpec,
    ) -> TtrpcResult<u32> {
        let control = {
            let c = lock(c);
            if c.procs[""].state != State::Created {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    "the task was started already",
                ));
            }
            self.control_of(&c)
                .ok_or_else(|| err(Code::FAILED_PRECONDITION, "the pod's VM is not running"))?
        };
        let (pid, handle) = self.launch(&control, id, "", process, c)?;
        self.events.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: id.into(),
                pid,
                ..Default::default()
            }),
        );
        self.report_exit(id, "", c, cv, handle);
        Ok(pid)
    }

    /// Start `process` in the VM behind `control` (vminitd knows it as
    /// `vm_id`) as process `key` of `c` (an exec, or a pod container's main
    /// process): its pid once it runs, and the thread that copies its
    /// output and returns how it ended.
    fn launch(
        &self,
        control: &Path,
        vm_id: &str,
        key: &str,
        process: agent_protocol::ProcessSpec,
        c: &Arc<Mutex<Container>>,
    ) -> TtrpcResult<(u32, std::thread::JoinHandle<vm::Seen>)> {
        let (stdin, stdout, stderr, terminal) = {
            let c = lock(c);
            let p = c
                .procs
                .get(key)
                .ok_or_else(|| err(Code::NOT_FOUND, format!("process {key} not found")))?;
            (
                p.stdin.clone(),
                p.stdout.clone(),
                p.stderr.clone(),
                p.terminal,
            )
        };
        let conn = vm::open_stream(
            control,
            &ControlRequest::Exec(agent_protocol::ExecRequest {
                exec_id: vm_id.to_string(),
                process,
                tty_size: None,
            }),
        )
        .map_err(internal)?;
        let mut out = Outputs::open(&stdout, &stderr, terminal);
        // Up to `Started` (or an early end), on this thread.
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = conn
            .try_clone()
            .map_err(|e| internal(vm::VmError::Control(e)))?;
        let started_tx = tx.clone();
        let handle = std::thread::spawn(move || {
            let seen = vm::pump_output(&reader, &mut out, |pid| {
                let _ = started_tx.send(Some(pid));
            });
            drop(out);
            if seen.pid.is_none() {
                let _ = tx.send(None);
            }
            seen
        });
        let pid = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(pid)) => u32::try_from(pid).unwrap_or(0),
            _ => {
                let seen = handle.join().unwrap_or_default();
                let code = seen.exit.map_or(LOST, |(c, s)| exit_status(c, s));
                let why = seen.failed.map(|m| format!(": {m}")).unwrap_or_default();
                return Err(err(
                    Code::INTERNAL,
                    format!("{vm_id} did not start (exit status {code}){why}"),
                ));
            }
        };
        let stdin_file = lock(c).procs.get_mut(key).and_then(|p| p.stdin_file.take());
        if let (Some(f), false) = (stdin_file, stdin.is_empty()) {
            if let Ok(w) = conn.try_clone() {
                vm::pump_stdin(f, w);
            }
        }
        {
            let mut c = lock(c);
            if let Some(p) = c.procs.get_mut(key) {
                p.pid = pid;
                p.state = State::Running;
                p.conn = Some(conn);
            }
        }
        Ok((pid, handle))
    }

    /// The control socket of the VM `c` runs in: its own, or its pod's.
    fn control_of(&self, c: &Container) -> Option<PathBuf> {
        match &c.in_pod {
            None => c.runtime.as_ref().map(|r| r.control.clone()),
            Some(p) => {
                let (sandbox, _) = self.get(&p.sandbox).ok()?;
                let sandbox = lock(&sandbox);
                sandbox.runtime.as_ref().map(|r| r.control.clone())
            }
        }
    }

    fn control(&self, id: &str) -> TtrpcResult<PathBuf> {
        let (c, _) = self.get(id)?;
        let c = lock(&c);
        self.control_of(&c)
            .ok_or_else(|| err(Code::FAILED_PRECONDITION, "the task is not running"))
    }
}

fn internal(e: vm::VmError) -> containerd_shim::protos::ttrpc::Error {
    let mut msg = e.to_string();
    let mut cur = std::error::Error::source(&e);
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    err(Code::INTERNAL, msg)
}

fn status_of(s: State) -> Status {
    match s {
        State::Created => Status::CREATED,
        State::Running => Status::RUNNING,
        State::Paused => Status::PAUSED,
        State::Stopped => Status::STOPPED,
    }
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let bundle = PathBuf::from(&req.bundle);
        let spec = spec::read(&bundle)
            .map_err(|e| err(Code::INVALID_ARGUMENT, vessel_api::error::error_chain(&e)))?;
        let mut translated = spec::translate(
            &req.id,
            &bundle,
            &spec,
            !req.stdin.is_empty(),
            &vm_settings(),
            now_ms(),
        )
        .map_err(|e| err(Code::INVALID_ARGUMENT, vessel_api::error::error_chain(&e)))?;
        // containerd hands the snapshot over as mounts (overlayfs): the
        // shim mounts them on BUNDLE/rootfs, as runc's shim does; virtiofsd
        // then shares that directory into the VM.
        let rootfs = bundle.join("rootfs");
        for m in &req.rootfs {
            crate::spec::mount(&m.type_, &m.source, &m.options, &rootfs)
                .map_err(|e| err(Code::INTERNAL, format!("mounting the rootfs: {e}")))?;
        }
        let home = vm::home_for(&self.namespace, &req.id);
        // A pod's container whose sandbox this shim runs: into the
        // sandbox's VM (its rootfs bound into the pod directory).
        let in_pod = pod::sandbox_of(&spec.annotations).and_then(|sandbox| {
            let (sc, _) = self.get(sandbox).ok()?;
            let pod_dir = lock(&sc).pod_dir.clone()?;
            Some(InPod {
                sandbox: sandbox.to_string(),
                pod_dir,
                process: agent_protocol::ProcessSpec {
                    root: Some(pod::guest_root(&req.id)),
                    // Its limit holds in the pod's VM (its cgroup there).
                    memory_max: spec.memory_limit(),
                    cpu_max: spec.cpu_max(),
                    cpu_weight: spec.cpu_weight(),
                    own_pids: spec.own_pid_namespace(),
                    ..translated.config.process.clone()
                },
            })
        });
        if let Some(mut p) = in_pod {
            let (binds, skipped) = spec::pod_binds(&spec);
            for s in &skipped {
                log::warn!("task {}: mount {s}: skipped", req.id);
            }
            let placed = pod::add_container(&p.pod_dir, &req.id, &rootfs)
                .and_then(|()| pod::add_binds(&p.pod_dir, &req.id, &binds));
            match placed {
                Ok(binds) => p.process.binds = binds,
                Err(e) => {
                    pod::remove_container(&p.pod_dir, &req.id);
                    unmount_rootfs(&rootfs);
                    return Err(err(Code::INTERNAL, vessel_api::error::error_chain(&e)));
                }
            }
            let env = translated.config.process.env;
            return Ok(self.created(&req, env, None, Some(p)));
        }
        for s in &translated.skipped {
            log::warn!("task {}: mount {s}: skipped", req.id);
        }
        // A pod's sandbox: the pod directory, shared into its VM.
        let pod_dir =
            pod::is_sandbox(&spec.annotations).then(|| pod::host_dir(&self.namespace, &req.id));
        if let Some(dir) = &pod_dir {
            let share: Result<vessel_api::mounts::MountSpec, _> =
                serde_json::from_value(serde_json::json!({
                    "type": "bind",
                    "source": dir,
                    "target": pod::GUEST_DIR,
                }));
            let made = pod::make_dir(dir)
                .map_err(|e| vessel_api::error::error_chain(&e))
                .and_then(|()| share.map_err(|e| e.to_string()));
            match made {
                Ok(m) => translated.config.mounts.push(m),
                Err(e) => {
                    pod::remove_dir(dir);
                    unmount_rootfs(&rootfs);
                    return Err(err(Code::INTERNAL, format!("the pod directory: {e}")));
                }
            }
        }
        let undo = |home: &Home| {
            if let Some(dir) = &pod_dir {
                pod::remove_dir(dir);
            }
            unmount_rootfs(&rootfs);
            let _ = std::fs::remove_dir_all(home.root());
        };
        if let Err(e) = vm::write_record(&home, &translated.config) {
            undo(&home);
            return Err(internal(e));
        }
        let netns = spec.network_namespace();
        if let (Some(ns), true) = (netns, spec.is_pod_container()) {
            // A pod's container outside its sandbox's VM (its sandbox is
            // not this shim's): the sandbox's VM has the namespace's TAP.
            log::warn!(
                "task {}: a pod container outside its pod's VM: no network (the pod's namespace {} is the sandbox's VM's)",
                req.id,
                ns.display()
            );
        }
        if let Some(netns) = netns.filter(|_| !spec.is_pod_container()) {
            let dir = home.container_dir(&req.id);
            if let Err(e) = wire_network(&dir, netns, &spec) {
                undo(&home);
                return Err(err(
                    Code::INTERNAL,
                    format!(
                        "connecting the network namespace {} to the VM: {}",
                        netns.display(),
                        vessel_api::error::error_chain(&e)
                    ),
                ));
            }
        }
        let env = translated.config.process.env.clone();
        Ok(self.created(&req, env, pod_dir, None))
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let (c, cv) = self.get(&req.id)?;
        let pid = if req.exec_id.is_empty() {
            self.start_main(&req.id, &c, &cv)?
        } else {
            self.start_exec(&req.id, &req.exec_id, &c, &cv)?
        };
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let (c, _) = self.get(&req.id)?;
        let c = lock(&c);
        let p = c.procs.get(&req.exec_id).ok_or_else(|| {
            err(
                Code::NOT_FOUND,
                format!("process {} not found", req.exec_id),
            )
        })?;
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.clone(),
            pid: p.pid,
            status: status_of(p.state).into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit_status: p.exit.as_ref().map_or(0, |e| e.0),
            exited_at: p
                .exit
                .as_ref()
                .map_or(MessageField::none(), |e| MessageField::some(e.1.clone())),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let (c, _) = self.get(&req.id)?;
        let (state, control, conn, in_pod) = {
            let c = lock(&c);
            let p = c.procs.get(&req.exec_id).ok_or_else(|| {
                err(
                    Code::NOT_FOUND,
                    format!("process {} not found", req.exec_id),
                )
            })?;
            (
                p.state,
                c.runtime.as_ref().map(|r| r.control.clone()),
                p.conn.as_ref().and_then(|s| s.try_clone().ok()),
                c.in_pod.is_some(),
            )
        };
        if state == State::Stopped {
            return Err(err(Code::NOT_FOUND, "process already finished"));
        }
        let signal = i32::try_from(req.signal).unwrap_or(libc::SIGKILL);
        if state == State::Created && req.exec_id.is_empty() && control.is_none() {
            // Created, never started: no VM yet; the process "dies" of the
            // signal, as runc's waiting init would.
            let (_, cv) = self.get(&req.id)?;
            Service::exited(
                &*self.events,
                &c,
                &cv,
                &req.id,
                "",
                exit_status(0, Some(signal)),
            );
            return Ok(Empty::new());
        }
        if req.exec_id.is_empty() && !in_pod {
            let Some(control) = control else {
                return Err(err(Code::FAILED_PRECONDITION, "the task is not running"));
            };
            if state == State::Paused {
                let _ = vm::ask(&control, &ControlRequest::Unpause);
            }
            vm::ask(
                &control,
                &ControlRequest::Signal {
                    signal,
                    group: req.all,
                },
            )
            .map_err(internal)?;
        } else {
            // The stream of an exec (or of a pod's container, which runs
            // as one in the pod's VM) carries signals to its process.
            let conn =
                conn.ok_or_else(|| err(Code::FAILED_PRECONDITION, "the process is not running"))?;
            let mut w = &conn;
            agent_protocol::write_message(
                &mut w,
                &agent_protocol::HostMessage::Signal {
                    signal,
                    group: req.all,
                },
            )
            .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        }
        Ok(Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let (c, _) = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = lock(&c)
                .procs
                .remove(&req.exec_id)
                .ok_or_else(|| err(Code::NOT_FOUND, format!("exec {} not found", req.exec_id)))?;
            let (status, at) = p.exit.unwrap_or((0, Timestamp::now()));
            return Ok(DeleteResponse {
                pid: p.pid,
                exit_status: status,
                exited_at: MessageField::some(at),
                ..Default::default()
            });
        }
        let (runtime, home, main, pod_dir, in_pod) = {
            let mut c = lock(&c);
            let main = c.procs.get("").map(|p| (p.pid, p.state, p.exit.clone()));
            let in_pod = c.in_pod.as_ref().map(|p| p.pod_dir.clone());
            (
                c.runtime.take(),
                c.home.clone(),
                main,
                c.pod_dir.clone(),
                in_pod,
            )
        };
        if let Some((_, state, _)) = &main {
            if matches!(state, State::Running | State::Paused) {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    "the task is running; kill it first",
                ));
            }
        }
        if let Some(mut r) = runtime {
            // SIGTERM: the runtime kills the powering-off VM at once and
            // cleans up (virtiofsd, sockets, run directory).
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(r.child.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = r.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = r.child.try_wait() {
                let _ = r.child.kill();
                let _ = r.child.wait();
            }
        }
        if let Some(dir) = in_pod {
            pod::remove_container(&dir, &req.id);
        }
        if let Some(dir) = pod_dir {
            pod::remove_dir(&dir);
        }
        let bundle = lock(&c).bundle.clone();
        unmount_rootfs(&PathBuf::from(bundle).join("rootfs"));
        sweep_runtime(&home, &req.id);
        unwire_network(&home.container_dir(&req.id));
        if std::env::var_os("VESSEL_SHIM_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(home.root());
        }
        lock(&self.tasks).remove(&req.id);
        let (pid, status, at) = match main {
            Some((pid, _, Some((status, at)))) => (pid, status, at),
            Some((pid, _, None)) => (pid, 0, Timestamp::now()),
            None => (0, 0, Timestamp::now()),
        };
        self.events.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                pid,
                exit_status: status,
                exited_at: MessageField::some(at.clone()),
                id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(DeleteResponse {
            pid,
            exit_status: status,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let (c, _) = self.get(&req.id)?;
        let oci: spec::Process = req
            .spec
            .as_ref()
            .map(|a| serde_json::from_slice(&a.value))
            .transpose()
            .map_err(|e| err(Code::INVALID_ARGUMENT, format!("the exec's process: {e}")))?
            .unwrap_or_default();
        let mut process = spec::process_spec(&oci, !req.stdin.is_empty())
            .map_err(|e| err(Code::INVALID_ARGUMENT, vessel_api::error::error_chain(&e)))?;
        {
            let mut c = lock(&c);
            if process.env.is_empty() {
                process.env = c.env.clone();
            }
            // An exec in a pod's container: in its root and namespace.
            process.root = c.in_pod.as_ref().and_then(|p| p.process.root.clone());
            if c.procs.contains_key(&req.exec_id) {
                return Err(err(
                    Code::ALREADY_EXISTS,
                    format!("exec {} exists", req.exec_id),
                ));
            }
            let mut p = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
            p.exec = Some(process);
            c.procs.insert(req.exec_id.clone(), p);
        }
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: containerd_shim::api::ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.width).unwrap_or(u16::MAX);
        let (c, _) = self.get(&req.id)?;
        let in_pod = lock(&c).in_pod.is_some();
        if req.exec_id.is_empty() && !in_pod {
            let control = self.control(&req.id)?;
            vm::ask(&control, &ControlRequest::Resize { rows, cols }).map_err(internal)?;
        } else {
            let conn = lock(&c)
                .procs
                .get(&req.exec_id)
                .and_then(|p| p.conn.as_ref().and_then(|s| s.try_clone().ok()));
            if let Some(conn) = conn {
                vm::resize(&conn, rows, cols).map_err(|e| err(Code::INTERNAL, e.to_string()))?;
            }
        }
        Ok(Empty::new())
    }

    fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: containerd_shim::api::CloseIORequest,
    ) -> TtrpcResult<Empty> {
        let (c, _) = self.get(&req.id)?;
        let conn = lock(&c)
            .procs
            .get(&req.exec_id)
            .and_then(|p| p.conn.as_ref().and_then(|s| s.try_clone().ok()));
        if let Some(conn) = conn {
            let _ = vm::close_stdin(&conn);
        }
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let (c, cv) = self.get(&req.id)?;
        let mut g = lock(&c);
        loop {
            match g.procs.get(&req.exec_id) {
                None => {
                    return Err(err(
                        Code::NOT_FOUND,
                        format!("process {} not found", req.exec_id),
                    ))
                }
                Some(p) => {
                    if let Some((status, at)) = &p.exit {
                        return Ok(WaitResponse {
                            exit_status: *status,
                            exited_at: MessageField::some(at.clone()),
                            ..Default::default()
                        });
                    }
                }
            }
            g = cv.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let control = self.control(&req.id)?;
        let v = vm::ask(&control, &ControlRequest::Top).map_err(internal)?;
        let processes: Vec<agent_protocol::ProcessInfo> =
            serde_json::from_value(v["processes"].clone())
                .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        Ok(PidsResponse {
            processes: processes
                .into_iter()
                .map(|p| ProcessInfo {
                    pid: u32::try_from(p.pid).unwrap_or(0),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(
        &self,
        _ctx: &TtrpcContext,
        req: containerd_shim::api::PauseRequest,
    ) -> TtrpcResult<Empty> {
        self.set_paused(&req.id, true)?;
        Ok(Empty::new())
    }

    fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: containerd_shim::api::ResumeRequest,
    ) -> TtrpcResult<Empty> {
        self.set_paused(&req.id, false)?;
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let control = self.control(&req.id)?;
        // A pod's container: its own share of the pod's VM.
        let in_pod = lock(&self.get(&req.id)?.0).in_pod.is_some();
        let ask = if in_pod {
            ControlRequest::GroupStats {
                group: req.id.clone(),
            }
        } else {
            ControlRequest::Stats
        };
        let v = vm::ask(&control, &ask).map_err(internal)?;
        let s: vessel_api::types::ContainerStats =
            serde_json::from_value(v).map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        let metrics = crate::metrics::cgroup_v1(&s);
        let any = Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value: metrics
                .write_to_bytes()
                .map_err(|e| err(Code::INTERNAL, e.to_string()))?,
            ..Default::default()
        };
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self
            .get(&req.id)
            .ok()
            .and_then(|(c, _)| lock(&c).procs.get("").map(|p| p.pid))
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim::api::ShutdownRequest,
    ) -> TtrpcResult<Empty> {
        if lock(&self.tasks).is_empty() {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}

impl Service {
    fn set_paused(&self, id: &str, paused: bool) -> TtrpcResult<()> {
        let (c, _) = self.get(id)?;
        if lock(&c).in_pod.is_some() {
            return Err(err(
                Code::UNIMPLEMENTED,
                "a container of a pod pauses with its pod (the sandbox's task)",
            ));
        }
        let control = self.control(id)?;
        vm::ask(
            &control,
            &if paused {
                ControlRequest::Pause
            } else {
                ControlRequest::Unpause
            },
        )
        .map_err(internal)?;
        if let Some(p) = lock(&c).procs.get_mut("") {
            if p.state != State::Stopped {
                p.state = if paused {
                    State::Paused
                } else {
                    State::Running
                };
            }
        }
        if paused {
            self.events.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: id.into(),
                    ..Default::default()
                }),
            );
        } else {
            self.events.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: id.into(),
                    ..Default::default()
                }),
            );
        }
        Ok(())
    }
}

impl Service {
    /// Record a created task and tell containerd (TaskCreate).
    fn created(
        &self,
        req: &CreateTaskRequest,
        env: Vec<String>,
        pod_dir: Option<PathBuf>,
        in_pod: Option<InPod>,
    ) -> CreateTaskResponse {
        let mut procs = HashMap::new();
        procs.insert(
            String::new(),
            Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal),
        );
        let container = Container {
            bundle: req.bundle.clone(),
            home: vm::home_for(&self.namespace, &req.id),
            env,
            runtime: None,
            procs,
            pod_dir,
            in_pod,
        };
        lock(&self.tasks).insert(
            req.id.clone(),
            (Arc::new(Mutex::new(container)), Arc::new(Condvar::new())),
        );
        let pid = std::process::id();
        self.events.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                pid,
                ..Default::default()
            }),
        );
        CreateTaskResponse {
            pid,
            ..Default::default()
        }
    }
}

/// Errors giving a task its network namespace.
#[derive(Debug, thiserror::Error)]
enum WireError {
    #[error(transparent)]
    PodNet(#[from] podnet::PodNetError),
    #[error("Could not write the network record")]
    Record(#[source] std::io::Error),
}

/// The task joins the network namespace `netns`: a TAP there, redirected
/// to and from its CNI interface, and the attachment the runtime reads
/// (`network.json`). See [`podnet`].
fn wire_network(
    dir: &std::path::Path,
    netns: &std::path::Path,
    spec: &spec::Spec,
) -> Result<(), WireError> {
    let dns = spec
        .resolv_conf()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| podnet::nameservers(&t))
        .unwrap_or_default();
    let ns = podnet::Nsenter(netns.to_path_buf());
    let (attachment, wiring) = podnet::setup(&ns, netns, dns)?;
    log::info!(
        "network namespace {}: {} ({}) on {} through {}",
        netns.display(),
        attachment.ip,
        attachment.mac,
        wiring.link,
        wiring.tap
    );
    let written = wiring.write(dir).and_then(|()| {
        ContainerNetworks {
            attachments: vec![attachment],
        }
        .write(dir)
    });
    if let Err(e) = written {
        podnet::teardown(&ns, &wiring);
        let _ = std::fs::remove_file(dir.join(podnet::RECORD));
        return Err(WireError::Record(e));
    }
    Ok(())
}

/// Undo [`wire_network`] for the task whose record is in `dir` (nothing
/// when it had no network namespace).
fn unwire_network(dir: &std::path::Path) {
    if let Some(w) = podnet::Wiring::read(dir) {
        podnet::teardown(&podnet::Nsenter(w.netns.clone()), &w);
        let _ = std::fs::remove_file(dir.join(podnet::RECORD));
    }
}

/// SIGKILL the runtime `pid` of a shim that is gone (its parent-death
/// SIGTERM may have it halfway through stopping the VM) and wait, up to
/// 5 s, until it has ended: only then is what it left ours to sweep. A pid
/// whose start time is not the recorded one is another process: left alone.
fn end_runtime(pid: i32, start_time: Option<u64>) {
    use vessel_api::fsutil::{pid_alive, pid_start_time};
    if start_time.is_some() && pid_start_time(pid) != start_time {
        return;
    }
    // SAFETY: kill(2) on the runtime our record names, checked above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Remove what a runtime that did not finish its own cleanup left of task
/// `id` (it was killed with the shim, or its VMM was): the VM's cgroups
/// (`vessel/<id>`, SIGKILLing any VM process still in them) and its run
/// directory with the per-task run base around it. Nothing when the
/// runtime cleaned up.
fn sweep_runtime(home: &Home, id: &str) {
    vessel_api::confine::remove_cgroups(id);
    let run_dir = home.run_dir(id);
    if let Err(e) = std::fs::remove_dir_all(&run_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("removing {}: {e}", run_dir.display());
        }
    }
    // The shim's home is per task, so is its run base: gone once empty.
    let _ = std::fs::remove_dir(home.run_base());
}

/// Unmount what is mounted on (and under) a bundle's rootfs.
fn unmount_rootfs(rootfs: &std::path::Path) {
    if let Some(p) = rootfs.to_str() {
        if let Err(e) = containerd_shim::mount::umount_recursive(Some(p), libc::MNT_DETACH) {
            log::warn!("unmounting {p}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records (topic, event as text).
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, String)>>);

    impl Events for Recorder {
        fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
            let text = containerd_shim::protos::protobuf::text_format::print_to_string(&*event);
            lock(&self.0).push((topic.to_string(), text));
        }
    }

    fn container() -> Container {
        let mut procs = HashMap::new();
        let mut main = Proc::new("", "", "", false);
        main.pid = 10;
        main.state = State::Running;
        procs.insert(String::new(), main);
        let mut exec = Proc::new("", "", "", false);
        exec.pid = 42;
        exec.state = State::Running;
        procs.insert("e1".to_string(), exec);
        Container {
            bundle: "/b".into(),
            home: Home::new("/nonexistent"),
            env: Vec::new(),
            runtime: None,
            procs,
            pod_dir: None,
            in_pod: None,
        }
    }

    #[test]
    fn an_exit_is_published_once_with_its_ids_and_wakes_waiters() {
        let rec = Recorder::default();
        let c = Arc::new(Mutex::new(container()));
        let cv = Arc::new(Condvar::new());
        // A waiter for the exec, as containerd's Wait.
        let (c2, cv2) = (Arc::clone(&c), Arc::clone(&cv));
        let waiter = std::thread::spawn(move || {
            let mut g = lock(&c2);
            while g.procs["e1"].exit.is_none() {
                g = cv2.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
            g.procs["e1"].exit.as_ref().map(|e| e.0)
        });
        Service::exited(&rec, &c, &cv, "task", "e1", 3);
        // A second report of the same end (the stream and the runtime both
        // noticed) is not a second event.
        Service::exited(&rec, &c, &cv, "task", "e1", 255);
        assert_eq!(waiter.join().unwrap(), Some(3));
        Service::exited(&rec, &c, &cv, "task", "", exit_status(0, Some(15)));
        let events = lock(&rec.0).clone();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].0, topics::TASK_EXIT_EVENT_TOPIC);
        assert!(events[0].1.contains("id: \"e1\""), "{}", events[0].1);
        assert!(events[0].1.contains("pid: 42"), "{}", events[0].1);
        assert!(events[0].1.contains("exit_status: 3"), "{}", events[0].1);
        // The main process's exit carries the task id as its id.
        assert!(events[1].1.contains("id: \"task\""), "{}", events[1].1);
        assert!(events[1].1.contains("exit_status: 143"), "{}", events[1].1);
        let g = lock(&c);
        assert_eq!(g.procs[""].state, State::Stopped);
        assert_eq!(g.procs["e1"].exit.as_ref().map(|e| e.0), Some(3));
    }
}
