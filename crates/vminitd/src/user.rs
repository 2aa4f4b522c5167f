//! Resolving an OCI `user` string against the container's `/etc/passwd` and
//! `/etc/group`, the way Docker (runc) does it.

use std::path::Path;

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The identity the container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (for `setgroups`).
    pub groups: Vec<u32>,
    /// Home directory (for `HOME` when the environment has none).
    pub home: String,
}

/// Parse `/etc/passwd` text; malformed lines are skipped.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Parse `/etc/group` text; malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolve `user`, `uid`, `user:group`, `uid:gid` (or empty = root).
pub fn resolve(
    spec: &str,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<ExecUser, String> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, g),
        None => (spec, ""),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let (uid, mut gid, name, home) = if let Ok(uid) = user_part.parse::<u32>() {
        match passwd.iter().find(|p| p.uid == uid) {
            Some(p) => (uid, p.gid, Some(p.name.clone()), Some(p.home.clone())),
            None => (uid, 0, None, None),
        }
    } else {
        match passwd.iter().find(|p| p.name == user_part) {
            Some(p) => (p.uid, p.gid, Some(p.name.clone()), Some(p.home.clone())),
            None => {
                return Err(format!(
                    "unable to find user {user_part}: no matching entries in passwd file"
                ))
            }
        }
    };

    let mut sgids = Vec::new();
    if !group_part.is_empty() {
        gid = if let Ok(g) = group_part.parse::<u32>() {
            g
        } else {
            match groups.iter().find(|g| g.name == group_part) {
                Some(g) => g.gid,
                None => {
                    return Err(format!(
                        "unable to find group {group_part}: no matching entries in group file"
                    ))
                }
            }
        };
    } else if let Some(name) = &name {
        for g in groups {
            if g.members.iter().any(|m| m == name) && !sgids.contains(&g.gid) {
                sgids.push(g.gid);
            }
        }
    }

    let home = match home {
        Some(h) if !h.is_empty() => h,
        _ if uid == 0 => "/root".to_string(),
        _ => "/".to_string(),
    };
    Ok(ExecUser {
        uid,
        gid,
        groups: sgids,
        home,
    })
}

/// Resolve `spec` against `ROOT/etc/passwd` and `ROOT/etc/group` (missing
/// files count as empty).
pub fn resolve_in_root(root: &Path, spec: &str) -> Result<ExecUser, String> {
    let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_default();
    let passwd = parse_passwd(&String::from_utf8_lossy(&read("etc/passwd")));
    let groups = parse_group(&String::from_utf8_lossy(&read("etc/group")));
    resolve(spec, &passwd, &groups)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
        # comment\n\
        bad line\n\
        nobody:x:65534:65534:nobody:/home:/bin/false\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        nohome:x:1001:1001:::\n";
    const GROUP: &str = "root:x:0:\n\
        wheel:x:10:root,app\n\
        nogroup:x:65534:\n\
        app:x:1000:\n\
        staff:x:50: app , other\n";

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(d.path().join("etc/group"), GROUP).unwrap();
        d
    }

    #[test]
    fn parses_files() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 5);
        assert_eq!(p[3].home, "/home/app");
        let g = parse_group(GROUP);
        assert_eq!(g.len(), 5);
        assert_eq!(g[4].members, vec!["app", "other"]);
        assert!(g[0].members.is_empty());
    }

    #[test]
    fn empty_is_root() {
        let d = root();
        let u = resolve_in_root(d.path(), "").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.groups, u.home.as_str()),
            (0, 0, vec![10], "/root")
        );
    }

    #[test]
    fn by_name_and_uid() {
        let d = root();
        let u = resolve_in_root(d.path(), "app").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/app"));
        assert_eq!(u.groups, vec![10, 50]);
        let u2 = resolve_in_root(d.path(), "1000").unwrap();
        assert_eq!(u, u2);
        let n = resolve_in_root(d.path(), "nobody").unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (65534, 65534, "/home"));
        let h = resolve_in_root(d.path(), "nohome").unwrap();
        assert_eq!(h.home, "/");
    }

    #[test]
    fn unknown_numeric_uid_gets_gid_zero() {
        let d = root();
        let u = resolve_in_root(d.path(), "4242").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        assert!(u.groups.is_empty());
    }

    #[test]
    fn explicit_group() {
        let d = root();
        let u = resolve_in_root(d.path(), "app:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert!(u.groups.is_empty());
        let u = resolve_in_root(d.path(), "1000:7").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 7));
        let u = resolve_in_root(d.path(), "5:6").unwrap();
        assert_eq!((u.uid, u.gid), (5, 6));
        let u = resolve_in_root(d.path(), ":wheel").unwrap();
        assert_eq!((u.uid, u.gid), (0, 10));
    }

    #[test]
    fn unknown_names_fail() {
        let d = root();
        assert_eq!(
            resolve_in_root(d.path(), "ghost").unwrap_err(),
            "unable to find user ghost: no matching entries in passwd file"
        );
        assert_eq!(
            resolve_in_root(d.path(), "app:ghosts").unwrap_err(),
            "unable to find group ghosts: no matching entries in group file"
        );
    }

    #[test]
    fn missing_files() {
        let d = tempfile::tempdir().unwrap();
        let u = resolve_in_root(d.path(), "").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert!(resolve_in_root(d.path(), "app").is_err());
        assert_eq!(resolve_in_root(d.path(), "12").unwrap().uid, 12);
    }
}
