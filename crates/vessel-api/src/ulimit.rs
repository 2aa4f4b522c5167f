//! `--ulimit`: Docker's syntax for a container's resource limits, and the
//! limits a container ends up with.

use agent_protocol::{default_rlimits, rlimit_resource, Rlimit, RLIM_UNLIMITED};

/// Parse `NAME=SOFT[:HARD]` as Docker's `--ulimit` does (`-1` or
/// `unlimited`: no limit; no HARD: the same as SOFT).
pub fn parse_ulimit(spec: &str) -> Result<Rlimit, String> {
    let bad = |why: &str| format!("invalid --ulimit {spec:?}: {why}");
    let (name, values) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=SOFT[:HARD], e.g. nofile=1024:4096"))?;
    let name = name.trim();
    if rlimit_resource(name).is_none() {
        return Err(bad(
            "unknown limit; one of cpu, fsize, data, stack, core, rss, nproc, nofile, \
             memlock, as, locks, sigpending, msgqueue, nice, rtprio, rttime",
        ));
    }
    let value = |v: &str| -> Result<u64, String> {
        match v.trim() {
            "-1" | "unlimited" => Ok(RLIM_UNLIMITED),
            n => n
                .parse::<u64>()
                .map_err(|_| bad(&format!("{n:?} is not a number"))),
        }
    };
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (value(s)?, value(h)?),
        None => {
            let v = value(values)?;
            (v, v)
        }
    };
    if soft > hard {
        return Err(bad("the soft limit is above the hard limit"));
    }
    Ok(Rlimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// The limits of a container given the user's `--ulimit`s: the defaults
/// (`agent_protocol::default_rlimits`) with each named one replaced or
/// added; `None` when there are none, so the guest applies the defaults.
/// Every entry is checked as [`parse_ulimit`] checks it (the API takes
/// them without the CLI).
pub fn effective_rlimits(overrides: &[Rlimit]) -> Result<Option<Vec<Rlimit>>, String> {
    if overrides.is_empty() {
        return Ok(None);
    }
    let mut out = default_rlimits();
    for r in overrides {
        if rlimit_resource(&r.name).is_none() {
            return Err(format!("invalid ulimit: unknown limit {:?}", r.name));
        }
        if r.soft > r.hard {
            return Err(format!(
                "invalid ulimit {}: the soft limit {} is above the hard limit {}",
                r.name, r.soft, r.hard
            ));
        }
        out.retain(|d| d.name != r.name);
        out.push(r.clone());
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_syntax() {
        let r = parse_ulimit("nofile=1024:4096").unwrap();
        assert_eq!((r.name.as_str(), r.soft, r.hard), ("nofile", 1024, 4096));
        let r = parse_ulimit("core=0").unwrap();
        assert_eq!((r.soft, r.hard), (0, 0));
        let r = parse_ulimit("nproc=-1:unlimited").unwrap();
        assert_eq!((r.soft, r.hard), (RLIM_UNLIMITED, RLIM_UNLIMITED));
        for bad in [
            "nofile",
            "files=1",
            "nofile=x",
            "nofile=10:5",
            "nofile=1:2:3",
            "=1",
        ] {
            let e = parse_ulimit(bad).unwrap_err();
            assert!(e.contains("invalid --ulimit"), "{bad}: {e}");
        }
    }

    #[test]
    fn overrides_replace_defaults_by_name() {
        assert_eq!(effective_rlimits(&[]).unwrap(), None);
        let got = effective_rlimits(&[parse_ulimit("nofile=10:20").unwrap()])
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), default_rlimits().len());
        let nofile: Vec<_> = got.iter().filter(|r| r.name == "nofile").collect();
        assert_eq!(nofile.len(), 1);
        assert_eq!((nofile[0].soft, nofile[0].hard), (10, 20));
        let bad = Rlimit {
            name: "nofile".into(),
            soft: 3,
            hard: 2,
        };
        assert!(effective_rlimits(&[bad]).is_err());
        let unknown = Rlimit {
            name: "bogus".into(),
            soft: 1,
            hard: 1,
        };
        assert!(effective_rlimits(&[unknown]).is_err());
    }
}
