//! A terminal for end-to-end tests: a tmux server of the test's own (its
//! own socket), one pane running a shell, driven with `send-keys` and read
//! with `capture-pane`. Dropping it kills the server and what runs in it.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// One pane of a private tmux server.
pub struct Tmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .expect("running tmux (install it: scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Tmux {
    /// A `cols` x `rows` pane running `bash` without startup files, with
    /// `env` set in it (and `PS1` a plain `$ `).
    pub fn start(cols: u16, rows: u16, env: &[(String, String)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vessel-tmux-")
            .tempdir_in("/tmp")
            .expect("tmux dir");
        let socket = dir.path().join("sock");
        let mut c = Command::new("tmux");
        c.arg("-S")
            .arg(&socket)
            .args(["-f", "/dev/null", "new-session", "-d", "-s", "t"])
            .args(["-x", &cols.to_string(), "-y", &rows.to_string()])
            .env("PS1", "$ ")
            .env("TERM", "xterm");
        for (k, v) in env {
            c.env(k, v);
        }
        c.args(["env", "PS1=$ ", "bash", "--norc", "--noprofile"]);
        run(&mut c);
        let me = Self { socket, _dir: dir };
        // The pane's size stays what the test sets, whatever clients do.
        me.tmux(&["set-option", "-g", "window-size", "manual"]);
        assert!(
            me.wait_for("$ ", Duration::from_secs(10)),
            "no shell prompt; the pane shows:\n{}",
            me.screen()
        );
        me
    }

    fn tmux(&self, args: &[&str]) -> Output {
        run(Command::new("tmux").arg("-S").arg(&self.socket).args(args))
    }

    /// Type `text` literally, then Enter.
    pub fn line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", text]);
        self.tmux(&["send-keys", "-t", "t", "Enter"]);
    }

    /// Send keys by tmux's names (`C-c`, `C-p`, `Enter`).
    pub fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", "t"];
        a.extend_from_slice(keys);
        self.tmux(&a);
    }

    /// What the pane shows now (with its scrollback).
    pub fn screen(&self) -> String {
        // -N: keep trailing spaces (a prompt is "$ " with the cursor after it).
        let out = self.tmux(&["capture-pane", "-t", "t", "-p", "-N", "-S", "-2000"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait until the pane shows `text`, up to `limit`; else fail the test
    /// with the pane's text.
    pub fn expect(&self, text: &str, limit: Duration) {
        self.expect_because(text, limit, "");
    }

    /// As [`Tmux::expect`], the failure saying `why` first.
    pub fn expect_because(&self, text: &str, limit: Duration, why: &str) {
        assert!(
            self.wait_for(text, limit),
            "{why}{}waited {limit:?} for {text:?}; the pane shows:\n{}",
            if why.is_empty() { "" } else { ": " },
            self.screen()
        );
    }

    /// Wait until the pane shows `text`, up to `limit`.
    pub fn wait_for(&self, text: &str, limit: Duration) -> bool {
        self.wait_until(limit, |s| s.contains(text))
    }

    /// Wait until `f` holds for the pane's text, up to `limit`.
    pub fn wait_until(&self, limit: Duration, mut f: impl FnMut(&str) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if f(&self.screen()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Resize the pane.
    pub fn resize(&self, cols: u16, rows: u16) {
        self.tmux(&[
            "resize-window",
            "-t",
            "t",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
        ]);
    }

    /// Clear the pane and its history.
    pub fn clear(&self) {
        self.line("clear");
        std::thread::sleep(Duration::from_millis(200));
        self.tmux(&["clear-history", "-t", "t"]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}
