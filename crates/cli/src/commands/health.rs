//! The healthcheck flags of `run` and `create` (`--health-cmd`,
//! `--health-interval`, `--health-timeout`, `--health-retries`,
//! `--health-start-period`, `--no-healthcheck`) as the create request's
//! `healthcheck`, checked as Docker checks them.

use crate::cli::HealthArgs;
use anyhow::{bail, Result};
use vessel_api::health::{parse_duration, Healthcheck};

/// The request's healthcheck: `None` when no flag was given (the image's
/// applies), `test` `["NONE"]` with `--no-healthcheck`.
pub fn healthcheck(a: &HealthArgs) -> Result<Option<Healthcheck>> {
    let duration = |flag: &str, v: &Option<String>| -> Result<u64> {
        match v {
            None => Ok(0),
            Some(s) => parse_duration(s).map_err(|e| anyhow::anyhow!("--{flag}: {e}")),
        }
    };
    let interval_ms = duration("health-interval", &a.health_interval)?;
    let timeout_ms = duration("health-timeout", &a.health_timeout)?;
    let start_period_ms = duration("health-start-period", &a.health_start_period)?;
    let retries = match a.health_retries {
        None => 0,
        Some(n) if n < 0 => bail!("--health-retries cannot be negative (got {n})"),
        Some(n) => {
            u32::try_from(n).map_err(|_| anyhow::anyhow!("--health-retries {n} is too large"))?
        }
    };
    let cmd = a.health_cmd.as_deref().filter(|c| !c.trim().is_empty());
    let any_option = cmd.is_some()
        || a.health_interval.is_some()
        || a.health_timeout.is_some()
        || a.health_retries.is_some()
        || a.health_start_period.is_some();
    if a.no_healthcheck {
        if any_option {
            bail!("--no-healthcheck conflicts with --health-* options");
        }
        return Ok(Some(Healthcheck {
            test: vec!["NONE".into()],
            ..Default::default()
        }));
    }
    if !any_option {
        return Ok(None);
    }
    Ok(Some(Healthcheck {
        test: cmd
            .map(|c| vec!["CMD-SHELL".to_string(), c.to_string()])
            .unwrap_or_default(),
        interval_ms,
        timeout_ms,
        start_period_ms,
        retries,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut HealthArgs)) -> HealthArgs {
        let mut a = HealthArgs::default();
        f(&mut a);
        a
    }

    #[test]
    fn no_flags_leave_the_image_s_check() {
        assert_eq!(healthcheck(&HealthArgs::default()).unwrap(), None);
    }

    #[test]
    fn flags_become_a_shell_check() {
        let h = healthcheck(&args(|a| {
            a.health_cmd = Some("test -f /tmp/ok".into());
            a.health_interval = Some("1s".into());
            a.health_timeout = Some("500ms".into());
            a.health_retries = Some(2);
            a.health_start_period = Some("1m".into());
        }))
        .unwrap()
        .unwrap();
        assert_eq!(h.test, vec!["CMD-SHELL", "test -f /tmp/ok"]);
        assert_eq!(
            (h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms),
            (1000, 500, 2, 60_000)
        );
        // A duration alone keeps the image's command.
        let h = healthcheck(&args(|a| a.health_interval = Some("2s".into())))
            .unwrap()
            .unwrap();
        assert!(h.test.is_empty());
        assert_eq!(h.interval_ms, 2000);
    }

    #[test]
    fn no_healthcheck_is_none_and_conflicts_with_the_rest() {
        let h = healthcheck(&args(|a| a.no_healthcheck = true))
            .unwrap()
            .unwrap();
        assert!(h.is_none());
        let e = healthcheck(&args(|a| {
            a.no_healthcheck = true;
            a.health_cmd = Some("true".into());
        }))
        .unwrap_err();
        assert!(e.to_string().contains("conflicts"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let e = healthcheck(&args(|a| a.health_interval = Some("soon".into()))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--health-interval: invalid duration \"soon\""),
            "{e}"
        );
        let e = healthcheck(&args(|a| a.health_timeout = Some("-1s".into()))).unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
        let e = healthcheck(&args(|a| a.health_retries = Some(-1))).unwrap_err();
        assert!(
            e.to_string()
                .contains("--health-retries cannot be negative"),
            "{e}"
        );
    }
}
