//! Restart policies (`--restart`, Docker's `HostConfig.RestartPolicy`): what
//! the apiserver does when a container's process ends by itself.
//!
//! On the wire a policy is `{"name": "on-failure", "maximum_retry_count": 3}`
//! (Docker's shape); on the command line it is `no`, `on-failure[:MAX]`,
//! `always` or `unless-stopped`. The decisions themselves are the
//! apiserver's (`crates/apiserver/src/containers/restart.rs`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Which ends of a container's process start it again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicyName {
    /// Never (the default).
    #[default]
    #[serde(rename = "no")]
    No,
    /// When it exits with a code other than 0, at most
    /// `maximum_retry_count` times (0: no limit).
    #[serde(rename = "on-failure")]
    OnFailure,
    /// Whenever it ends, unless a user stopped it; also when the apiserver
    /// starts, even if a user had stopped it.
    #[serde(rename = "always")]
    Always,
    /// As `always`, but a container a user stopped stays stopped when the
    /// apiserver starts.
    #[serde(rename = "unless-stopped")]
    UnlessStopped,
}

impl RestartPolicyName {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicyName::No => "no",
            RestartPolicyName::OnFailure => "on-failure",
            RestartPolicyName::Always => "always",
            RestartPolicyName::UnlessStopped => "unless-stopped",
        }
    }
}

/// A container's restart policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    pub name: RestartPolicyName,
    /// With `on-failure`: how many restarts at most (0: no limit).
    #[serde(default)]
    pub maximum_retry_count: u32,
}

impl RestartPolicy {
    pub const NO: RestartPolicy = RestartPolicy {
        name: RestartPolicyName::No,
        maximum_retry_count: 0,
    };

    pub fn is_no(&self) -> bool {
        self.name == RestartPolicyName::No
    }

    /// Check a policy that came over the API: a retry count belongs to
    /// `on-failure` alone.
    pub fn validate(&self) -> Result<(), String> {
        if self.maximum_retry_count != 0 && self.name != RestartPolicyName::OnFailure {
            return Err(format!(
                "invalid restart policy {:?}: a maximum retry count can only be given with `on-failure` (on-failure:MAX)",
                self.name.as_str()
            ));
        }
        Ok(())
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name.as_str())?;
        if self.name == RestartPolicyName::OnFailure && self.maximum_retry_count > 0 {
            write!(f, ":{}", self.maximum_retry_count)?;
        }
        Ok(())
    }
}

/// `--restart POLICY`: `no`, `on-failure[:MAX]`, `always`, `unless-stopped`.
pub fn parse_restart_flag(s: &str) -> Result<RestartPolicy, String> {
    const FORMS: &str = "use no, on-failure[:MAX], always or unless-stopped";
    let (name, max) = match s.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (s, None),
    };
    let name = match name {
        "no" => RestartPolicyName::No,
        "on-failure" => RestartPolicyName::OnFailure,
        "always" => RestartPolicyName::Always,
        "unless-stopped" => RestartPolicyName::UnlessStopped,
        other => return Err(format!("invalid restart policy {other:?}: {FORMS}")),
    };
    let maximum_retry_count = match max {
        None => 0,
        Some(_) if name != RestartPolicyName::OnFailure => {
            return Err(format!(
                "invalid restart policy {s:?}: a maximum retry count can only be given with on-failure (on-failure:MAX)"
            ))
        }
        Some(m) => m.parse::<u32>().map_err(|_| {
            format!(
                "invalid restart policy {s:?}: the maximum retry count must be a whole number, 0 or more (0: no limit)"
            )
        })?,
    };
    Ok(RestartPolicy {
        name,
        maximum_retry_count,
    })
}

/// `POST /v1/containers/{id}/update`: settings changed on an existing
/// container (`vessel update`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerUpdate {
    /// A new restart policy; it applies from the container's next end on.
    #[serde(default)]
    pub restart: Option<RestartPolicy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_as_docker_writes_them() {
        let p = |s| parse_restart_flag(s).unwrap();
        assert_eq!(p("no"), RestartPolicy::NO);
        assert_eq!(p("always").name, RestartPolicyName::Always);
        assert_eq!(p("unless-stopped").name, RestartPolicyName::UnlessStopped);
        let f = p("on-failure");
        assert_eq!(
            (f.name, f.maximum_retry_count),
            (RestartPolicyName::OnFailure, 0)
        );
        assert_eq!(p("on-failure:3").maximum_retry_count, 3);
        assert_eq!(p("on-failure:0").maximum_retry_count, 0);
        for s in [
            "no",
            "always",
            "unless-stopped",
            "on-failure",
            "on-failure:3",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        assert_eq!(p("on-failure:0").to_string(), "on-failure");
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        let e = |s| parse_restart_flag(s).unwrap_err();
        assert!(e("sometimes").contains("invalid restart policy \"sometimes\""));
        assert!(e("sometimes").contains("on-failure[:MAX]"));
        assert!(
            e("on-failure:-1").contains("whole number"),
            "{}",
            e("on-failure:-1")
        );
        assert!(e("on-failure:x").contains("whole number"));
        assert!(e("on-failure:").contains("whole number"));
        assert!(e("on-failure:1:2").contains("whole number"));
        assert!(e("always:3").contains("only be given with on-failure"));
        assert!(e("no:1").contains("only be given with on-failure"));
        assert!(e("").contains("invalid restart policy"));
        assert!(e("Always").contains("invalid restart policy"));
    }

    #[test]
    fn the_wire_form_is_docker_s() {
        let p = parse_restart_flag("on-failure:3").unwrap();
        let v = serde_json::to_value(p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name": "on-failure", "maximum_retry_count": 3})
        );
        let back: RestartPolicy =
            serde_json::from_value(serde_json::json!({"name": "unless-stopped"})).unwrap();
        assert_eq!(back.name, RestartPolicyName::UnlessStopped);
        assert!(
            serde_json::from_value::<RestartPolicy>(serde_json::json!({"name": "sometimes"}))
                .is_err()
        );
        let bad = RestartPolicy {
            name: RestartPolicyName::Always,
            maximum_retry_count: 2,
        };
        assert!(bad.validate().is_err());
        assert!(p.validate().is_ok());
    }
}
