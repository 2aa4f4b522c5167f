//! The systemd units of `vessel system install`, rendered by pure functions.
//!
//! Two units per instance (`VESSEL_HOME`):
//! - `NAME.socket` listens on the instance's API socket (mode 0600, or 0660
//!   for a `--group`) and starts the service on the first connection;
//! - `NAME.service` runs `vessel-apiserver serve` directly, which takes the
//!   socket from `LISTEN_FDS`; systemd restarts it on failure. The apiserver
//!   supervises vessel-images and vessel-network itself, as it does under
//!   the built-in supervisor, and `KillMode=process` lets the containers'
//!   runtime helpers outlive a restart of the service, as they outlive a
//!   restart of the apiserver there.
//!
//! Every file starts with [`MARKER`], which is how `system uninstall` tells
//! the files it may remove from anybody else's.

use std::path::{Path, PathBuf};

/// The first line of every unit `system install` writes.
pub const MARKER: &str = "# Written by `vessel system install`";

/// Environment variables of the CLI that the service gets too (the ones the
/// apiserver and its helpers read), as `system start` passes them on to
/// its supervisor.
pub const PASSED_ENV: &[&str] = &[
    "PATH",
    "VESSEL_KERNEL",
    "VESSEL_INITRD",
    "VESSEL_ACCEL",
    "VESSEL_SUBNET",
    "VESSEL_DNS_UPSTREAM",
    "VESSEL_QEMU",
    "VESSEL_QEMU_IMG",
    "VESSEL_VIRTIOFSD",
    "VESSEL_PASST",
    "VESSEL_NFT",
];

/// What the units of one instance are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    /// The unit name without its suffix: `vessel`.
    pub name: String,
    /// `VESSEL_HOME` of the instance.
    pub home: PathBuf,
    /// The `vessel-apiserver` binary.
    pub apiserver: PathBuf,
    /// The API socket (`VESSEL_HOME/vessel.sock`).
    pub socket: PathBuf,
    /// Group allowed to use the socket (mode 0660).
    pub group: Option<String>,
    /// Per-user units (the user's own service manager; rootless mode).
    pub user: bool,
    /// Start the apiserver at boot too, not only on the first request.
    pub at_boot: bool,
    /// Environment of the service, in order.
    pub env: Vec<(String, String)>,
}

/// Why a unit cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error(
        "invalid unit name {0:?}: use letters, digits and `:_.-`, without the .service or \
         .socket suffix (at most 200 characters)"
    )]
    BadName(String),
    #[error(
        "{what} {value:?} cannot go in a systemd unit (it holds a control character); \
         use another path"
    )]
    Unquotable { what: &'static str, value: String },
}

impl UnitSpec {
    pub fn socket_unit(&self) -> String {
        format!("{}.socket", self.name)
    }

    pub fn service_unit(&self) -> String {
        format!("{}.service", self.name)
    }

    /// The target whose `.wants/` pulls the service in at boot.
    pub fn boot_target(&self) -> &'static str {
        if self.user {
            "default.target"
        } else {
            "multi-user.target"
        }
    }

    /// `NAME.socket`.
    pub fn render_socket(&self) -> Result<String, UnitError> {
        let mut s = self.header();
        s.push_str("[Unit]\n");
        s.push_str(&format!(
            "Description=vessel API socket ({})\n",
            specifier_escape(&self.home_display())
        ));
        s.push_str("\n[Socket]\n");
        s.push_str(&format!(
            "ListenStream={}\n",
            path_value("the API socket", &self.socket)?
        ));
        match &self.group {
            Some(g) => {
                s.push_str(&format!("SocketGroup={}\nSocketMode=0660\n", g));
            }
            None => s.push_str("SocketMode=0600\n"),
        }
        // VESSEL_HOME as the apiserver makes it.
        s.push_str("DirectoryMode=0711\n");
        s.push_str("RemoveOnStop=yes\n");
        s.push_str(&format!("Service={}\n", self.service_unit()));
        s.push_str("\n[Install]\nWantedBy=sockets.target\n");
        Ok(s)
    }

    /// `NAME.service`.
    pub fn render_service(&self) -> Result<String, UnitError> {
        let mut s = self.header();
        s.push_str("[Unit]\n");
        s.push_str(&format!(
            "Description=vessel API server ({})\n",
            specifier_escape(&self.home_display())
        ));
        s.push_str(&format!(
            "Requires={0}\nAfter={0} network.target\n",
            self.socket_unit()
        ));
        s.push_str("\n[Service]\n");
        // The apiserver takes its socket from LISTEN_FDS: requests wait in
        // the socket's backlog until it accepts them.
        s.push_str("Type=exec\n");
        let supervisor = format!("systemd ({})", self.service_unit());
        let argv = [
            path_value("the apiserver binary", &self.apiserver)?,
            "serve".into(),
            "--home".into(),
            path_value("VESSEL_HOME", &self.home)?,
            "--supervisor".into(),
            supervisor,
        ];
        let line: Vec<String> = argv.iter().map(|a| exec_quote(a)).collect();
        s.push_str(&format!("ExecStart={}\n", line.join(" ")));
        let mut env = vec![(
            "VESSEL_HOME".to_string(),
            self.home.to_string_lossy().into_owned(),
        )];
        env.extend(self.env.iter().cloned());
        for (k, v) in &env {
            if v.chars().any(char::is_control) {
                return Err(UnitError::Unquotable {
                    what: "an environment value",
                    value: format!("{k}={v}"),
                });
            }
            s.push_str(&format!("Environment={}\n", env_quote(&format!("{k}={v}"))));
        }
        s.push_str("Restart=on-failure\nRestartSec=1s\n");
        s.push_str(
            "# Only the apiserver (its helpers vessel-images and vessel-network end with\n\
             # it): the containers' vessel-runtime processes and their VMs outlive a\n\
             # restart, and the new apiserver finds them again. `vessel system stop`\n\
             # stops the containers.\n\
             KillMode=process\n",
        );
        s.push_str("TimeoutStopSec=30s\n");
        s.push_str("\n[Install]\n");
        s.push_str(&format!("Also={}\n", self.socket_unit()));
        if self.at_boot {
            // At boot too, so containers with a restart policy come back
            // without waiting for a first request.
            s.push_str(&format!("WantedBy={}\n", self.boot_target()));
        }
        Ok(s)
    }

    /// `(file name, contents)` of both units.
    pub fn render(&self) -> Result<Vec<(String, String)>, UnitError> {
        Ok(vec![
            (self.socket_unit(), self.render_socket()?),
            (self.service_unit(), self.render_service()?),
        ])
    }

    /// The `.wants/` symlinks that enable the units: `(target.wants, unit)`.
    pub fn wants_links(&self) -> Vec<(String, String)> {
        let mut v = vec![("sockets.target.wants".to_string(), self.socket_unit())];
        if self.at_boot {
            v.push((format!("{}.wants", self.boot_target()), self.service_unit()));
        }
        v
    }

    fn home_display(&self) -> String {
        format!("VESSEL_HOME={}", self.home.display())
    }

    fn header(&self) -> String {
        format!(
            "{MARKER} for {}.\n\
             # `vessel system uninstall` removes it. Change it with a drop-in\n\
             # (`systemctl{} edit {}`) or by installing again, not here.\n\n",
            specifier_escape(&self.home_display()),
            if self.user { " --user" } else { "" },
            self.service_unit(),
        )
    }
}

/// Whether `text` is a unit `system install` wrote for the instance `home`.
pub fn written_for(text: &str, home: &Path) -> bool {
    let first = text.lines().next().unwrap_or_default();
    first.starts_with(MARKER)
        && first.ends_with(&format!(
            " for {}.",
            specifier_escape(&format!("VESSEL_HOME={}", home.display()))
        ))
}

/// Whether `text` is any unit `system install` wrote.
pub fn written_by_vessel(text: &str) -> bool {
    text.starts_with(MARKER)
}

/// Check a unit name given with `--name`.
pub fn check_name(name: &str) -> Result<(), UnitError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.ends_with(".service")
        && !name.ends_with(".socket")
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(UnitError::BadName(name.to_string()))
    }
}

/// The unit name of an instance: `vessel` for the default `VESSEL_HOME`,
/// `vessel-` and 8 hex digits of a hash of the path for any other, so
/// several instances can be installed side by side.
pub fn default_name(home: &Path, default_home: &Path) -> String {
    if home == default_home {
        return "vessel".to_string();
    }
    // FNV-1a: stable across releases and platforms (unlike std's hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in home.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("vessel-{:08x}", (h >> 32) as u32 ^ h as u32)
}

/// Whether systemd is the service manager of this system, as
/// `sd_booted()` tells it: `ROOT/run/systemd/system` exists (`root` is `/`
/// except in tests).
pub fn systemd_booted(root: &Path) -> bool {
    root.join("run/systemd/system").is_dir()
}

/// A path as a unit setting's value: specifiers escaped; control
/// characters refused.
fn path_value(what: &'static str, p: &Path) -> Result<String, UnitError> {
    let s = p.to_string_lossy().into_owned();
    if s.chars().any(char::is_control) {
        return Err(UnitError::Unquotable { what, value: s });
    }
    Ok(specifier_escape(&s))
}

/// `%` starts a specifier in unit files; `%%` is a literal one.
fn specifier_escape(s: &str) -> String {
    s.replace('%', "%%")
}

/// One word of `ExecStart=`: `$` doubled (no variable expansion), quoted
/// when it holds spaces, quotes or backslashes. `%` was escaped already.
fn exec_quote(word: &str) -> String {
    let word = word.replace('$', "$$");
    if !word.is_empty()
        && !word
            .chars()
            .any(|c| c.is_whitespace() || "\"'\\;".contains(c))
    {
        return word;
    }
    let escaped = word.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// One `Environment=` assignment, quoted.
fn env_quote(assignment: &str) -> String {
    let escaped = specifier_escape(assignment)
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> UnitSpec {
        UnitSpec {
            name: "vessel".into(),
            home: "/var/lib/vessel".into(),
            apiserver: "/usr/local/bin/vessel-apiserver".into(),
            socket: "/var/lib/vessel/vessel.sock".into(),
            group: None,
            user: false,
            at_boot: true,
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        }
    }

    #[test]
    fn socket_unit_listens_on_the_api_socket_with_todays_mode() {
        let s = spec().render_socket().unwrap();
        assert!(s.starts_with(MARKER), "{s}");
        assert!(
            s.contains("\nListenStream=/var/lib/vessel/vessel.sock\n"),
            "{s}"
        );
        assert!(s.contains("\nSocketMode=0600\n"), "{s}");
        assert!(!s.contains("SocketGroup"), "{s}");
        assert!(s.contains("\nWantedBy=sockets.target\n"), "{s}");
        let mut g = spec();
        g.group = Some("vessel".into());
        let s = g.render_socket().unwrap();
        assert!(s.contains("\nSocketGroup=vessel\nSocketMode=0660\n"), "{s}");
    }

    #[test]
    fn service_runs_the_apiserver_restarted_on_failure() {
        let s = spec().render_service().unwrap();
        assert!(
            s.contains(
                "\nExecStart=/usr/local/bin/vessel-apiserver serve --home /var/lib/vessel \
                 --supervisor \"systemd (vessel.service)\"\n"
            ),
            "{s}"
        );
        assert!(s.contains("\nRestart=on-failure\n"), "{s}");
        assert!(s.contains("\nKillMode=process\n"), "{s}");
        assert!(s.contains("\nRequires=vessel.socket\n"), "{s}");
        assert!(
            s.contains("\nEnvironment=\"VESSEL_HOME=/var/lib/vessel\"\n"),
            "{s}"
        );
        assert!(s.contains("\nEnvironment=\"PATH=/usr/bin:/bin\"\n"), "{s}");
        assert!(s.contains("\nWantedBy=multi-user.target\n"), "{s}");
        let mut u = spec();
        u.user = true;
        assert!(u
            .render_service()
            .unwrap()
            .contains("\nWantedBy=default.target\n"));
        u.at_boot = false;
        let s = u.render_service().unwrap();
        assert!(!s.contains("WantedBy"), "{s}");
        assert_eq!(
            u.wants_links(),
            vec![("sockets.target.wants".into(), "vessel.socket".into())]
        );
    }

    #[test]
    fn odd_paths_are_escaped_or_refused() {
        let mut s = spec();
        s.home = "/srv/a b%c$d".into();
        s.socket = "/srv/a b%c$d/vessel.sock".into();
        let svc = s.render_service().unwrap();
        assert!(svc.contains(" --home \"/srv/a b%%c$$d\" "), "{svc}");
        assert!(
            svc.contains("Environment=\"VESSEL_HOME=/srv/a b%%c$d\""),
            "{svc}"
        );
        assert!(s
            .render_socket()
            .unwrap()
            .contains("\nListenStream=/srv/a b%%c$d/vessel.sock\n"));
        s.home = "/srv/a\nb".into();
        assert!(matches!(
            s.render_service(),
            Err(UnitError::Unquotable { .. })
        ));
    }

    #[test]
    fn the_marker_names_the_instance() {
        let s = spec().render_service().unwrap();
        assert!(written_for(&s, Path::new("/var/lib/vessel")));
        assert!(!written_for(&s, Path::new("/var/lib/other")));
        assert!(written_by_vessel(&s));
        assert!(!written_by_vessel("[Unit]\nDescription=mine\n"));
    }

    #[test]
    fn names() {
        let d = Path::new("/var/lib/vessel");
        assert_eq!(default_name(d, d), "vessel");
        let a = default_name(Path::new("/tmp/a"), d);
        let b = default_name(Path::new("/tmp/b"), d);
        assert!(a.starts_with("vessel-") && a.len() == 15, "{a}");
        assert_ne!(a, b);
        assert_eq!(a, default_name(Path::new("/tmp/a"), d));
        assert!(check_name(&a).is_ok());
        for bad in ["", "vessel.service", "a/b", "a b", "-x", "x.socket"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn booted_means_run_systemd_system_exists() {
        let root = tempfile::tempdir().unwrap();
        assert!(!systemd_booted(root.path()));
        std::fs::create_dir_all(root.path().join("run/systemd/system")).unwrap();
        assert!(systemd_booted(root.path()));
    }
}
