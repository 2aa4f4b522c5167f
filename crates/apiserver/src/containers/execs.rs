//! Exec'd processes (`vessel exec`): the guest's request built from the
//! container's configuration and the client's, the records `GET
//! .../exec/{exec_id}` answers from, and the `exec_create`, `exec_start`
//! and `exec_die` events.
//!
//! The process itself belongs to the container's runtime helper (streamed:
//! the `exec` op, spliced with the client; detached: `exec_detached`); the
//! apiserver learns its end from the helper's `exec_state`.

use super::Containers;
use crate::error::{ApiError, ApiResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vessel_api::control::ControlRequest;
use vessel_api::fsutil::random_hex;
use vessel_api::types::{
    now_ms, ContainerConfig, ContainerInfo, EventAction, ExecCreate, ExecInfo, ExecStarted, Status,
};
use vessel_api::ProcessSpec;

/// Records kept; past this, the oldest ended ones go.
const MAX_RECORDS: usize = 1024;
/// How often the end of a detached exec is asked for.
const DETACHED_POLL: Duration = Duration::from_millis(500);

/// The exec'd processes this apiserver started, by ID.
#[derive(Default)]
pub struct Execs {
    records: Mutex<HashMap<String, ExecInfo>>,
}

impl Execs {
    fn insert(&self, info: ExecInfo) {
        let Ok(mut m) = self.records.lock() else {
            return;
        };
        if m.len() >= MAX_RECORDS {
            let oldest = m
                .values()
                .filter(|e| !e.running)
                .min_by_key(|e| e.created_ms)
                .map(|e| e.id.clone());
            if let Some(id) = oldest {
                m.remove(&id);
            }
        }
        m.insert(info.id.clone(), info);
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut ExecInfo)) -> Option<ExecInfo> {
        let mut m = self.records.lock().ok()?;
        let e = m.get_mut(id)?;
        f(e);
        Some(e.clone())
    }

    fn get(&self, id: &str) -> Option<ExecInfo> {
        self.records.lock().ok()?.get(id).cloned()
    }

    /// Forget the execs of a removed container.
    pub fn forget_container(&self, container_id: &str) {
        if let Ok(mut m) = self.records.lock() {
            m.retain(|_, e| e.container_id != container_id);
        }
    }
}

/// Docker's rule for an exec's environment: the container's, with the
/// exec's `-e` over it by name.
fn merge_env(container: &[String], extra: &[String]) -> Vec<String> {
    let key = |kv: &str| kv.split_once('=').map(|(k, _)| k).unwrap_or(kv).to_string();
    let mut env: Vec<String> = container.to_vec();
    for kv in extra {
        let k = key(kv);
        env.retain(|e| key(e) != k);
        env.push(kv.clone());
    }
    env
}

/// The process of an exec of `body` in the container of `config`: its
/// environment over the container's, the container's working directory
/// and user unless given.
pub fn exec_process(config: &ContainerConfig, body: &ExecCreate) -> Result<ProcessSpec, String> {
    match body.cmd.first() {
        None => {
            return Err("no command given: say what to run, e.g. `vessel exec CONTAINER sh`".into())
        }
        Some(c) if c.is_empty() => return Err("the command is empty: give a program to run".into()),
        Some(_) => {}
    }
    for kv in &body.env {
        match kv.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => {
                return Err(format!(
                    "invalid environment variable {kv:?}: expected KEY=VALUE"
                ))
            }
        }
    }
    let cwd = match body.workdir.as_deref().filter(|w| !w.is_empty()) {
        Some(w) if !w.starts_with('/') => {
            return Err(format!(
                "the working directory {w:?} is invalid: it must be an absolute path"
            ))
        }
        Some(w) => w.to_string(),
        None => config.process.cwd.clone(),
    };
    Ok(ProcessSpec {
        args: body.cmd.clone(),
        env: merge_env(&config.process.env, &body.env),
        cwd,
        user: body
            .user
            .clone()
            .unwrap_or_else(|| config.process.user.clone()),
        // The container's limits.
        rlimits: None,
        terminal: body.tty,
        stdin: body.stdin,
        root: None,
        binds: Vec::new(),
        memory_max: None,
        cpu_max: None,
        cpu_weight: None,
        own_pids: false,
    })
}

impl Containers {
    /// Check `body` against container `key`, which must run; record the
    /// exec and send `exec_create`. The guest's request, with a new ID.
    pub fn exec_create(
        &self,
        key: &str,
        body: &ExecCreate,
    ) -> ApiResult<(ContainerInfo, agent_protocol::ExecRequest)> {
        let info = self.find(key)?;
        let process = exec_process(&info.config, body).map_err(ApiError::invalid)?;
        match info.state.status {
            Status::Running => {}
            Status::Paused => {
                return Err(ApiError::conflict(format!(
                    "container {} is paused; unpause it first (`vessel unpause {}`)",
                    info.config.name, info.config.name
                )))
            }
            _ => {
                return Err(ApiError::conflict(format!(
                    "container {} is not running; start it first (`vessel start {}`)",
                    info.config.name, info.config.name
                )))
            }
        }
        let id = random_hex(32);
        self.execs.insert(ExecInfo {
            id: id.clone(),
            container_id: info.config.id.clone(),
            cmd: body.cmd.clone(),
            tty: body.tty,
            stdin: body.stdin,
            detach: body.detach,
            created_ms: now_ms(),
            running: false,
            exit_code: None,
            pid: None,
        });
        self.events.emit(
            EventAction::ExecCreate,
            &info.config,
            &[("exec_id", id.clone()), ("command", body.cmd.join(" "))],
        );
        let request = agent_protocol::ExecRequest {
            exec_id: id,
            process,
            tty_size: body.tty_size.filter(|_| body.tty),
        };
        Ok((info, request))
    }

    /// The exec's stream has begun (the runtime helper agreed).
    pub fn exec_started(&self, info: &ContainerInfo, exec_id: &str) {
        self.execs.update(exec_id, |e| e.running = true);
        self.events.emit(
            EventAction::ExecStart,
            &info.config,
            &[("exec_id", exec_id.to_string())],
        );
    }

    /// The exec's stream has ended: its exit code from the runtime helper
    /// (when it knows it), and `exec_die`.
    pub fn exec_ended(&self, info: &ContainerInfo, exec_id: &str) {
        // The helper records the end just after it closes the stream.
        let mut code = None;
        for _ in 0..40 {
            match self.exec_state(info, exec_id) {
                Some((true, _)) => std::thread::sleep(Duration::from_millis(25)),
                Some((false, c)) => {
                    code = c;
                    break;
                }
                None => break,
            }
        }
        self.exec_died(info, exec_id, code);
    }

    fn exec_died(&self, info: &ContainerInfo, exec_id: &str, code: Option<i32>) {
        self.execs.update(exec_id, |e| {
            e.running = false;
            e.exit_code = code;
        });
        let mut attrs = vec![("exec_id", exec_id.to_string())];
        if let Some(c) = code {
            attrs.push(("exit_code", c.to_string()));
        }
        self.events.emit(EventAction::ExecDie, &info.config, &attrs);
    }

    /// What the runtime helper knows of an exec: running, exit code.
    fn exec_state(&self, info: &ContainerInfo, exec_id: &str) -> Option<(bool, Option<i32>)> {
        let req = ControlRequest::ExecState {
            exec_id: exec_id.to_string(),
        };
        let v = self.ask(info, &req, Duration::from_secs(10)).ok()?;
        let running = v.get("running")?.as_bool()?;
        let code = v
            .get("exit_code")
            .and_then(|c| c.as_i64())
            .and_then(|c| i32::try_from(c).ok());
        Some((running, code))
    }

    /// `exec -d`: start it, answer with its pid; it runs on its own, and its
    /// end is asked for until it comes (`exec_die`).
    pub fn exec_detached(
        self: &Arc<Self>,
        info: &ContainerInfo,
        request: agent_protocol::ExecRequest,
    ) -> ApiResult<ExecStarted> {
        let id = request.exec_id.clone();
        let answer = self.ask(
            info,
            &ControlRequest::ExecDetached(request),
            Duration::from_secs(60),
        );
        let v = match answer {
            Ok(v) => v,
            Err(e) => {
                self.exec_died(info, &id, None);
                return Err(e);
            }
        };
        let pid = v
            .get("pid")
            .and_then(|p| p.as_i64())
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0);
        self.execs.update(&id, |e| e.pid = Some(pid));
        self.exec_started(info, &id);
        let (me, info2, id2) = (self.clone(), info.clone(), id.clone());
        let _ = std::thread::Builder::new()
            .name("exec-watch".into())
            .spawn(move || loop {
                std::thread::sleep(DETACHED_POLL);
                match me.exec_state(&info2, &id2) {
                    Some((true, _)) => continue,
                    Some((false, code)) => return me.exec_died(&info2, &id2, code),
                    // The container (and its helper) ended: so did the exec.
                    None => return me.exec_died(&info2, &id2, None),
                }
            });
        Ok(ExecStarted { id, pid })
    }

    /// `GET .../exec/{exec_id}`: the record, brought up to date.
    pub fn exec_inspect(&self, key: &str, exec_id: &str) -> ApiResult<ExecInfo> {
        let info = self.find(key)?;
        let not_found = || {
            ApiError::Answer(
                vessel_api::error::ErrorBody::new(
                    vessel_api::error::ErrorKind::NotFound,
                    format!("no such exec: {exec_id} in container {}", info.config.name),
                )
                .with_name(exec_id),
            )
        };
        let record = self
            .execs
            .get(exec_id)
            .filter(|e| e.container_id == info.config.id)
            .ok_or_else(not_found)?;
        if !record.running {
            return Ok(record);
        }
        match self.exec_state(&info, exec_id) {
            Some((running, code)) => Ok(self
                .execs
                .update(exec_id, |e| {
                    e.running = running;
                    if !running {
                        e.exit_code = code;
                    }
                })
                .unwrap_or(record)),
            None => Ok(record),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ContainerConfig {
        serde_json::from_value(serde_json::json!({
            "id": "c1", "name": "web", "image": "img", "image_id": "sha256:x",
            "created_ms": 1,
            "process": {"args": ["sh"], "env": ["PATH=/bin", "A=1", "HOSTNAME=web"],
                        "cwd": "/srv", "user": "1000"},
            "hostname": "web", "cpus": 1, "memory_mib": 64, "auto_remove": false,
            "rootfs_base": "/x", "kernel": "/k", "initrd": "/i", "accel": "tcg"
        }))
        .unwrap()
    }

    #[test]
    fn an_exec_inherits_the_container_s_env_cwd_and_user() {
        let body = ExecCreate {
            cmd: vec!["env".into()],
            env: vec!["A=2".into(), "B=3".into()],
            ..Default::default()
        };
        let p = exec_process(&config(), &body).unwrap();
        assert_eq!(p.env, vec!["PATH=/bin", "HOSTNAME=web", "A=2", "B=3"]);
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/srv", "1000"));
        assert_eq!(p.rlimits, None);
        let body = ExecCreate {
            cmd: vec!["id".into()],
            workdir: Some("/tmp".into()),
            user: Some("root".into()),
            tty: true,
            stdin: true,
            ..Default::default()
        };
        let p = exec_process(&config(), &body).unwrap();
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/tmp", "root"));
        assert!(p.terminal && p.stdin);
    }

    #[test]
    fn bad_execs_are_refused_with_the_reason() {
        let bad = |body: ExecCreate| exec_process(&config(), &body).unwrap_err();
        assert!(bad(ExecCreate::default()).contains("no command"));
        assert!(bad(ExecCreate {
            cmd: vec![String::new()],
            ..Default::default()
        })
        .contains("empty"));
        assert!(bad(ExecCreate {
            cmd: vec!["x".into()],
            env: vec!["NOEQUALS".into()],
            ..Default::default()
        })
        .contains("KEY=VALUE"));
        assert!(bad(ExecCreate {
            cmd: vec!["x".into()],
            workdir: Some("rel".into()),
            ..Default::default()
        })
        .contains("absolute"));
    }

    #[test]
    fn records_are_bounded_and_the_running_ones_stay() {
        let execs = Execs::default();
        let rec = |i: usize, running: bool| ExecInfo {
            id: format!("e{i}"),
            container_id: "c".into(),
            cmd: vec![],
            tty: false,
            stdin: false,
            detach: false,
            created_ms: i as u64,
            running,
            exit_code: None,
            pid: None,
        };
        execs.insert(rec(0, true));
        for i in 1..=MAX_RECORDS {
            execs.insert(rec(i, false));
        }
        assert!(execs.get("e0").is_some(), "a running exec is kept");
        assert!(execs.get("e1").is_none(), "the oldest ended one went");
        assert!(execs.get(&format!("e{MAX_RECORDS}")).is_some());
        execs.forget_container("c");
        assert!(execs.get("e0").is_none());
    }
}
