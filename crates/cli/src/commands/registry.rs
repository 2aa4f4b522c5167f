//! `vessel registry login|logout` (also `vessel login|logout`).

use super::image::fail;
use crate::api::{check, server_error, Api, ErrorKind};
use crate::auth::{self, Sources};
use crate::cli::{LoginArgs, LogoutArgs, RegistryCommand};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, IsTerminal, Read, Write};
use vessel_api::http::percent_encode;
use vessel_api::types::{RegistryAuth, RegistryRequest};

pub fn dispatch(api: &Api, c: RegistryCommand) -> Result<i32> {
    match c {
        RegistryCommand::Login(a) => login(api, a),
        RegistryCommand::Logout(a) => logout(a),
    }
}

fn read_line_from_stdin() -> Result<String> {
    let mut line = String::new();
    let n = std::io::stdin().lock().read_line(&mut line)?;
    if n == 0 {
        bail!("no input: stdin was closed");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Read a line from the terminal on stdin without echoing it.
fn read_password(prompt: &str) -> Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    // SAFETY: termios is plain data; tcgetattr fills it for fd 0.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is our stdin and `saved` a valid termios.
    let have_tty = unsafe { libc::tcgetattr(0, &mut saved) } == 0;
    if have_tty {
        restore_on_interrupt(saved);
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: as above, with a valid termios.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    }
    let line = read_line_from_stdin();
    if have_tty {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    }
    line
}

/// Ctrl-C at the password prompt must not leave the terminal without echo:
/// SIGINT and SIGTERM go to a thread that restores `saved` and exits.
fn restore_on_interrupt(saved: libc::termios) {
    // SAFETY: the set is a valid local; blocking the signals in this thread is
    // inherited by the thread spawned below, which waits for them.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: set and sig are valid for the call.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            // SAFETY: restores terminal settings read earlier from fd 0.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
            eprintln!();
            std::process::exit(130);
        }
    });
}

fn login(api: &Api, a: LoginArgs) -> Result<i32> {
    match login_inner(api, a) {
        Ok(()) => {
            crate::outln!("Login Succeeded");
            Ok(0)
        }
        Err(e) => Ok(fail(&e)),
    }
}

fn login_inner(api: &Api, a: LoginArgs) -> Result<()> {
    let sources = Sources::from_env();
    let server = a.server.clone().unwrap_or_else(|| "docker.io".into());
    let host = auth::normalize_host(&server);
    if host.is_empty() {
        bail!("invalid registry {server:?}");
    }
    let stdin_tty = std::io::stdin().is_terminal();
    if a.password_stdin && a.username.is_none() {
        bail!("Must provide --username with --password-stdin");
    }
    let username = match a.username.clone() {
        Some(u) => u,
        None => {
            if !stdin_tty {
                bail!("Cannot perform an interactive login from a non TTY device: use -u USER with --password-stdin");
            }
            let stored = auth::stored_username(&sources, &server);
            match &stored {
                Some(u) => eprint!("Username ({u}): "),
                None => eprint!("Username: "),
            }
            std::io::stderr().flush()?;
            let typed = read_line_from_stdin()?.trim().to_string();
            if typed.is_empty() {
                stored.ok_or_else(|| anyhow!("Username Required"))?
            } else {
                typed
            }
        }
    };
    if username.is_empty() {
        bail!("Username Required");
    }
    let password = if let Some(p) = a.password.clone() {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p
    } else if a.password_stdin {
        let mut all = String::new();
        std::io::stdin()
            .lock()
            .take(1 << 20)
            .read_to_string(&mut all)
            .context("reading the password from stdin")?;
        all.trim_end_matches(['\n', '\r']).to_string()
    } else {
        if !stdin_tty {
            bail!("cannot prompt for a password: stdin is not a terminal; use --password-stdin (or -p)");
        }
        read_password("Password: ")?
    };
    if password.is_empty() {
        bail!("Password Required");
    }
    let mut path = format!("/v1/registry/login?server={}", percent_encode(&host));
    if !a.tls_verify {
        path.push_str("&tls_verify=false");
    }
    let body = RegistryRequest {
        auth: Some(RegistryAuth {
            username: username.clone(),
            password: password.clone(),
            identity_token: None,
        }),
    };
    let res = api
        .send("POST", &path, Some(&serde_json::to_value(&body)?))
        .and_then(check);
    if let Err(e) = res {
        if let Some(s) = server_error(&e) {
            if s.kind == ErrorKind::Unauthorized
                && !s.message.to_ascii_lowercase().starts_with("unauthorized")
            {
                bail!("unauthorized: {}", s.message);
            }
        }
        return Err(e);
    }
    auth::store(&sources, &server, &username, &password)?;
    eprintln!(
        "WARNING! Your password will be stored unencrypted in {}.",
        sources.vessel_config.display()
    );
    Ok(())
}

fn logout(a: LogoutArgs) -> Result<i32> {
    let sources = Sources::from_env();
    let server = a.server.unwrap_or_else(|| "docker.io".into());
    let key = auth::config_key(&server);
    match auth::erase(&sources, &server) {
        Ok(true) => {
            crate::outln!("Removing login credentials for {key}");
            Ok(0)
        }
        Ok(false) => Ok(fail(&anyhow!("Not logged in to {key}"))),
        Err(e) => Ok(fail(&e)),
    }
}
