//! `vessel exec [-d] [-i] [-t] [-e K=V] [--env-file F] [-w DIR] [-u USER]
//! CONTAINER CMD...` and `vessel attach [--no-stdin] CONTAINER`.

use super::interactive::{self, Interrupt, Spec};
use crate::api::{server_error, Api, ErrorKind};
use crate::cli::{AttachArgs, ExecArgs};
use crate::exit::{CANNOT_EXECUTE, COMMAND_NOT_FOUND, VESSEL_ERROR};
use crate::session::End;
use anyhow::{bail, Result};
use vessel_api::http::percent_encode;
use vessel_api::types::{ContainerInfo, ContainerState, ExecCreate, ExecStarted, Status};

fn path(key: &str, rest: &str) -> String {
    format!("/v1/containers/{}{rest}", percent_encode(key))
}

/// The exit code of a process the guest could not start, from its reason
/// (vminitd's wording, as Docker's runtime words it): 127 not found, 126
/// not executable, 125 anything else.
pub fn start_failure_code(message: &str) -> i32 {
    let m = message.to_ascii_lowercase();
    if m.contains("executable file not found") || m.contains("no such file or directory") {
        COMMAND_NOT_FOUND
    } else if m.contains("permission denied") || m.contains("exec format error") {
        CANNOT_EXECUTE
    } else {
        VESSEL_ERROR
    }
}

pub fn exec(api: &Api, a: ExecArgs) -> Result<i32> {
    let env = crate::env::environment(&a.env, &a.env_file)?;
    let keys = interactive::detach_keys(a.detach_keys.as_deref())?;
    let tty_size = if a.tty {
        crate::terminal::size(libc::STDOUT_FILENO)
            .or_else(|| crate::terminal::size(libc::STDIN_FILENO))
            .map(|(rows, cols)| agent_protocol::WinSize { rows, cols })
    } else {
        None
    };
    let body = ExecCreate {
        cmd: a.command.clone(),
        env,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        tty: a.tty,
        stdin: a.interactive && !a.detach,
        tty_size,
        detach: a.detach,
    };
    let body = serde_json::to_value(&body)?;
    let route = path(&a.container, "/exec");
    if a.detach {
        return match api.call::<ExecStarted>("POST", &route, Some(&body)) {
            Ok(_) => Ok(0),
            // The guest could not start it: its reason and Docker's code.
            Err(e) if server_error(&e).is_some_and(|b| b.kind == ErrorKind::Conflict) => {
                let message = server_error(&e)
                    .map(|b| b.message.clone())
                    .unwrap_or_default();
                let code = start_failure_code(&message);
                if code == VESSEL_ERROR {
                    return Err(e);
                }
                eprintln!("vessel: error: {message}");
                Ok(code)
            }
            Err(e) => Err(e),
        };
    }
    let conn = api.upgrade("POST", &route, Some(&body))?;
    let spec = Spec {
        stdin: a.interactive,
        tty: a.tty,
        detach_keys: keys,
        // An exec's stream always carries its resizes.
        resize: None,
        interrupt: Interrupt::SignalProcess,
    };
    match interactive::run(api, conn, spec)? {
        End::Exited(code) => Ok(code),
        End::Failed(code, message) => {
            eprintln!("vessel: error: {message}");
            Ok(code)
        }
        End::Detached => Ok(0),
        End::Lost => {
            // The container itself may have ended (its VM died): say so
            // rather than blame the apiserver.
            let now: Result<ContainerInfo> = api.call("GET", &path(&a.container, ""), None);
            eprintln!(
                "{}",
                exec_lost_message(&a.container, now.ok().as_ref().map(|i| &i.state))
            );
            Ok(VESSEL_ERROR)
        }
    }
}

/// What to tell when an exec's stream ended without the command's end:
/// `now` is the container as the apiserver sees it afterwards, if it
/// answered.
fn exec_lost_message(container: &str, now: Option<&ContainerState>) -> String {
    match now {
        Some(s) if !s.status.is_active() => format!(
            "vessel: error: container {container} ended while the command ran{}",
            s.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        _ => "vessel: lost the connection to the apiserver; the command got a hangup (or the end of its input) and may have ended".to_string(),
    }
}

/// `attach`: the container's output, and our input when it keeps its
/// stdin open (`-i`) and `--no-stdin` is not given; its exit code when it
/// ends. The detach keys (under a terminal) leave it running.
pub fn attach(api: &Api, a: AttachArgs) -> Result<i32> {
    let info: ContainerInfo = api.call("GET", &path(&a.container, ""), None)?;
    let c = &info.config;
    if info.state.status == Status::Paused {
        bail!(
            "container {} is paused; unpause it first (`vessel unpause {}`)",
            c.name,
            c.name
        );
    }
    if !info.state.status.is_active() {
        bail!(
            "container {} is not running; start it with `vessel start -a {}`",
            c.name,
            c.name
        );
    }
    let stdin = c.process.stdin && !a.no_stdin;
    let keys = interactive::detach_keys(a.detach_keys.as_deref())?;
    let conn = api.upgrade(
        "POST",
        &path(&c.id, &format!("/attach?stdin={stdin}")),
        None,
    )?;
    let spec = Spec {
        stdin,
        tty: c.process.terminal,
        detach_keys: keys,
        resize: (!stdin).then(|| interactive::resize_by_api(api, &c.id)),
        interrupt: Interrupt::SignalContainer(c.id.clone()),
    };
    match interactive::run(api, conn, spec)? {
        End::Exited(code) | End::Failed(code, _) => Ok(code),
        End::Detached => Ok(0),
        End::Lost => {
            let now: Result<ContainerInfo> = api.call("GET", &path(&c.id, ""), None);
            match now {
                Ok(i) if i.state.status == Status::Exited => Ok(i.state.exit_code.unwrap_or(0)),
                _ => {
                    eprintln!(
                        "vessel: lost the connection to the apiserver; the container may still run"
                    );
                    Ok(VESSEL_ERROR)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_failures_keep_docker_s_codes() {
        assert_eq!(
            start_failure_code("exec: \"nope\": executable file not found in $PATH"),
            127
        );
        assert_eq!(
            start_failure_code("exec: \"/no/such\": no such file or directory"),
            127
        );
        assert_eq!(start_failure_code("exec: \"/etc\": permission denied"), 126);
        assert_eq!(start_failure_code("container x is not running"), 125);
    }

    #[test]
    fn an_exec_whose_container_died_says_so() {
        let mut s = ContainerState::created();
        s.status = Status::Exited;
        s.error = Some("the VM stopped unexpectedly; see boot.log".into());
        assert_eq!(
            exec_lost_message("web", Some(&s)),
            "vessel: error: container web ended while the command ran: the VM stopped unexpectedly; see boot.log"
        );
        s.status = Status::Running;
        assert!(exec_lost_message("web", Some(&s)).contains("lost the connection to the apiserver"));
        assert!(exec_lost_message("web", None).contains("lost the connection to the apiserver"));
    }
}
