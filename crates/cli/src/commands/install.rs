//! `vessel system install|uninstall`: the instance as systemd units (see
//! [`crate::systemd`] for what they hold), and how `system start|stop` use
//! them once installed.

use crate::api::Api;
use crate::cli::{InstallArgs, UninstallArgs};
use crate::systemd::{self, UnitSpec};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use vessel_api::fsutil::{pid_alive, write_atomic};
use vessel_api::paths::{sibling_binary, Home};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Per-user units when asked, or when not root.
fn user_mode(user: bool) -> bool {
    user || !is_root()
}

/// Where units go: `/etc/systemd/system`, or the user's
/// `$XDG_CONFIG_HOME/systemd/user` (`~/.config/systemd/user`).
pub fn default_unit_dir(user: bool) -> Result<PathBuf> {
    if !user {
        return Ok(PathBuf::from("/etc/systemd/system"));
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("systemd/user"));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).context(
        "neither XDG_CONFIG_HOME nor HOME is set: give the unit directory with --unit-dir",
    )?;
    Ok(PathBuf::from(home).join(".config/systemd/user"))
}

/// The message when systemd is not the service manager.
fn not_systemd_message() -> String {
    let pid1 = fs::read_to_string("/proc/1/comm")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!(
        "systemd is not the service manager of this system (PID 1 is `{pid1}`, and \
         /run/systemd/system does not exist): nothing was written. Run vessel under its \
         built-in supervisor with `vessel system start`, or write the units for another \
         system with `vessel system install --unit-dir DIR`"
    )
}

fn systemctl(user: bool, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("systemctl");
    if user {
        cmd.arg("--user");
    }
    cmd.args(args);
    let shown = format!(
        "systemctl{} {}",
        if user { " --user" } else { "" },
        args.join(" ")
    );
    let status = cmd
        .status()
        .with_context(|| format!("running `{shown}` (is systemctl installed?)"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}); its message is above");
    }
    Ok(())
}

/// The unit name installed for `home` in `dir`, found by its marker.
pub fn installed_name(dir: &Path, home: &Path) -> Option<String> {
    let rd = fs::read_dir(dir).ok()?;
    let mut names: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let name = file.strip_suffix(".socket")?.to_string();
            let text = fs::read_to_string(e.path()).ok()?;
            systemd::written_for(&text, home).then_some(name)
        })
        .collect();
    names.sort();
    names.into_iter().next()
}

pub fn install(api: &Api, o: &InstallArgs) -> Result<i32> {
    if let Some(s) = &o.subnet {
        super::network::check_subnet(s)?;
    }
    let user = user_mode(o.user);
    let home = api.home.root().to_path_buf();
    let name = match &o.name {
        Some(n) => n.clone(),
        None => systemd::default_name(&home, &Home::default_root()),
    };
    systemd::check_name(&name)?;
    let mut env: Vec<(String, String)> = systemd::PASSED_ENV
        .iter()
        .filter(|k| **k != "VESSEL_SUBNET" || o.subnet.is_none())
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if let Some(s) = &o.subnet {
        env.push(("VESSEL_SUBNET".into(), s.clone()));
    }
    let spec = UnitSpec {
        name,
        home: home.clone(),
        apiserver: sibling_binary("vessel-apiserver"),
        socket: api.home.api_socket(),
        group: o.group.clone(),
        user,
        at_boot: !o.on_demand,
        env,
    };
    let units = spec.render()?;
    let offline = o.unit_dir.is_some();
    let dir = match &o.unit_dir {
        Some(d) => d.clone(),
        None => default_unit_dir(user)?,
    };
    let enable: Vec<String> = spec.wants_links().into_iter().map(|(_, u)| u).collect();
    let mut enable_args = vec!["enable"];
    if !o.no_start {
        enable_args.push("--now");
    }
    enable_args.extend(enable.iter().map(String::as_str));

    if o.dry_run {
        for (file, text) in &units {
            crate::outln!("# {}\n{text}", dir.join(file).display());
        }
        if offline {
            for (wants, unit) in spec.wants_links() {
                crate::outln!(
                    "# link {} -> ../{unit}",
                    dir.join(&wants).join(&unit).display()
                );
            }
        } else {
            let u = if user { " --user" } else { "" };
            crate::outln!("# then: systemctl{u} daemon-reload");
            crate::outln!("# then: systemctl{u} {}", enable_args.join(" "));
        }
        return Ok(0);
    }
    if !offline && !systemd::systemd_booted(Path::new("/")) {
        bail!("{}", not_systemd_message());
    }
    // Files of somebody else, or of another instance, stay untouched.
    for (file, _) in &units {
        let path = dir.join(file);
        if let Ok(text) = fs::read_to_string(&path) {
            if !systemd::written_by_vessel(&text) {
                bail!(
                    "{} exists and was not written by `vessel system install`; nothing was \
                     written. Remove it, or choose another unit name with --name",
                    path.display()
                );
            }
            if !systemd::written_for(&text, &home) {
                bail!(
                    "{} was written for another instance ({}); nothing was written. Choose \
                     another unit name with --name",
                    path.display(),
                    text.lines().next().unwrap_or_default()
                );
            }
        }
    }
    if !offline {
        let pidfile = api.home.supervisor_pid();
        let supervisor = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|p| pid_alive(*p));
        if let Some(pid) = supervisor {
            bail!(
                "vessel runs under its built-in supervisor (pid {pid}) for VESSEL_HOME={}; \
                 nothing was written. Stop it with `vessel system stop`, then install",
                home.display()
            );
        }
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, text) in &units {
        let path = dir.join(file);
        write_atomic(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        set_mode(&path, 0o644)?;
        crate::outln!("wrote {}", path.display());
    }
    if offline {
        for (wants, unit) in spec.wants_links() {
            let wdir = dir.join(&wants);
            fs::create_dir_all(&wdir).with_context(|| format!("creating {}", wdir.display()))?;
            let link = wdir.join(&unit);
            if link.symlink_metadata().is_ok() {
                fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
            }
            std::os::unix::fs::symlink(Path::new("..").join(&unit), &link)
                .with_context(|| format!("linking {}", link.display()))?;
            crate::outln!("enabled {unit} ({})", link.display());
        }
        crate::outln!(
            "vessel's units for VESSEL_HOME={} are in {} (systemd was not asked: reload it \
             there with `systemctl daemon-reload`)",
            home.display(),
            dir.display()
        );
        return Ok(0);
    }
    let written = || {
        format!(
            "the units are in {}; `vessel system uninstall` removes them",
            dir.display()
        )
    };
    systemctl(user, &["daemon-reload"]).with_context(written)?;
    systemctl(user, &enable_args).with_context(written)?;
    let u = if user { " --user" } else { "" };
    crate::outln!(
        "vessel is installed as {} and {} (VESSEL_HOME={}){}",
        spec.socket_unit(),
        spec.service_unit(),
        home.display(),
        if o.no_start {
            format!(
                "; start it with `systemctl{u} start {}`",
                spec.socket_unit()
            )
        } else {
            "; it is running".to_string()
        }
    );
    if user {
        crate::outln!(
            "note: to keep it running when you are logged out: `loginctl enable-linger {}`",
            std::env::var("USER").unwrap_or_else(|_| "$USER".into())
        );
    }
    Ok(0)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

pub fn uninstall(api: &Api, o: &UninstallArgs) -> Result<i32> {
    let user = user_mode(o.user);
    let home = api.home.root().to_path_buf();
    let dir = match &o.unit_dir {
        Some(d) => d.clone(),
        None => default_unit_dir(user)?,
    };
    let name = match &o.name {
        Some(n) => n.clone(),
        None => installed_name(&dir, &home)
            .unwrap_or_else(|| systemd::default_name(&home, &Home::default_root())),
    };
    systemd::check_name(&name)?;
    let mut ours = Vec::new();
    for unit in [format!("{name}.socket"), format!("{name}.service")] {
        let path = dir.join(&unit);
        match fs::read_to_string(&path) {
            Ok(text) if systemd::written_for(&text, &home) => ours.push(unit),
            Ok(_) => eprintln!(
                "vessel: {} was not written by `vessel system install` for VESSEL_HOME={}; \
                 left in place",
                path.display(),
                home.display()
            ),
            Err(_) => {}
        }
    }
    if ours.is_empty() {
        crate::outln!(
            "no units of vessel for VESSEL_HOME={} in {}; nothing to do",
            home.display(),
            dir.display()
        );
        return Ok(0);
    }
    let online = o.unit_dir.is_none() && systemd::systemd_booted(Path::new("/"));
    let links = wants_links_to(&dir, &ours);
    if o.dry_run {
        let u = if user { " --user" } else { "" };
        if online {
            crate::outln!("# systemctl{u} disable --now {}", ours.join(" "));
        }
        for l in &links {
            crate::outln!("# remove {}", l.display());
        }
        for unit in &ours {
            crate::outln!("# remove {}", dir.join(unit).display());
        }
        if online {
            crate::outln!("# systemctl{u} daemon-reload");
        }
        return Ok(0);
    }
    if online {
        let mut args = vec!["disable", "--now"];
        args.extend(ours.iter().map(String::as_str));
        // Going on when it fails (a unit systemd never loaded): the files
        // are removed all the same.
        if let Err(e) = systemctl(user, &args) {
            eprintln!("vessel: {e:#}; removing the files anyway");
        }
    }
    for l in links {
        if l.symlink_metadata().is_ok() {
            fs::remove_file(&l).with_context(|| format!("removing {}", l.display()))?;
            crate::outln!("removed {}", l.display());
        }
    }
    for unit in &ours {
        let path = dir.join(unit);
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        crate::outln!("removed {}", path.display());
    }
    if online {
        systemctl(user, &["daemon-reload"])?;
        crate::outln!(
            "vessel's units are stopped and removed; its containers keep running: \
             `vessel system start` finds them again under the built-in supervisor, \
             `vessel system stop` stops them"
        );
    }
    Ok(0)
}

/// The symlinks `DIR/*.wants/UNIT` pointing at one of `units`.
fn wants_links_to(dir: &Path, units: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let wdir = e.path();
        let is_wants = e.file_name().to_string_lossy().ends_with(".wants");
        if !is_wants || !wdir.is_dir() {
            continue;
        }
        for unit in units {
            let link = wdir.join(unit);
            let target = fs::read_link(&link).ok();
            if target.is_some_and(|t| t.file_name() == Some(unit.as_ref())) {
                out.push(link);
            }
        }
    }
    out.sort();
    out
}

/// The installed units of this instance, when systemd runs them:
/// `(user mode, unit name)`.
pub fn managed_by_systemd(home: &Home) -> Option<(bool, String)> {
    if !systemd::systemd_booted(Path::new("/")) {
        return None;
    }
    let user = user_mode(false);
    let dir = default_unit_dir(user).ok()?;
    installed_name(&dir, home.root()).map(|n| (user, n))
}

/// `systemctl start NAME.socket NAME.service` for `system start`.
pub fn start_units(user: bool, name: &str) -> Result<()> {
    systemctl(
        user,
        &[
            "start",
            &format!("{name}.socket"),
            &format!("{name}.service"),
        ],
    )
}

/// `systemctl stop NAME.socket` for `system stop`, once the apiserver has
/// ended: no request starts it again.
pub fn stop_socket(user: bool, name: &str) -> Result<()> {
    systemctl(user, &["stop", &format!("{name}.socket")])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_units_are_found_by_their_marker() {
        let dir = tempfile::tempdir().unwrap();
        let spec = UnitSpec {
            name: "vessel-x".into(),
            home: "/srv/h".into(),
            apiserver: "/usr/bin/vessel-apiserver".into(),
            socket: "/srv/h/vessel.sock".into(),
            group: None,
            user: false,
            at_boot: true,
            env: vec![],
        };
        fs::write(
            dir.path().join("vessel-x.socket"),
            spec.render_socket().unwrap(),
        )
        .unwrap();
        fs::write(dir.path().join("other.socket"), "[Socket]\n").unwrap();
        assert_eq!(
            installed_name(dir.path(), Path::new("/srv/h")).as_deref(),
            Some("vessel-x")
        );
        assert_eq!(installed_name(dir.path(), Path::new("/srv/other")), None);

        let wants = dir.path().join("sockets.target.wants");
        fs::create_dir(&wants).unwrap();
        std::os::unix::fs::symlink("../vessel-x.socket", wants.join("vessel-x.socket")).unwrap();
        std::os::unix::fs::symlink("../other.socket", wants.join("other.socket")).unwrap();
        assert_eq!(
            wants_links_to(dir.path(), &["vessel-x.socket".into()]),
            vec![wants.join("vessel-x.socket")]
        );
    }
}
