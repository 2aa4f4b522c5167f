//! Healthchecks, as Docker has them: the check a container runs
//! ([`Healthcheck`], from `--health-*` flags and the image's `Healthcheck`),
//! how its results turn into a status ([`Health::record`]), and the
//! durations the flags take ([`parse_duration`]).
//!
//! Docker's rules, kept here:
//! - `test` is `["NONE"]` (no check), `["CMD", prog, args...]` or
//!   `["CMD-SHELL", "command"]` (run by `/bin/sh -c`); empty inherits the
//!   image's.
//! - A zero duration or retry count inherits the image's value, then the
//!   default: interval 30 s, timeout 30 s, start period 0, retries 3.
//! - The first check runs one interval after the start; each next one an
//!   interval after the end of the one before.
//! - Exit code 0 is a success: the status becomes `healthy`, the failing
//!   streak 0. Anything else (a check that ran past its timeout and was
//!   killed, or that could not be run, counts as exit code -1) is a failure:
//!   the streak grows and at `retries` the status becomes `unhealthy` —
//!   except while the container is still `starting` (no success yet) and the
//!   check began within the start period: then it does not count.
//! - The last [`MAX_LOG`] results are kept, each with at most
//!   [`MAX_OUTPUT`] bytes of output (stdout and stderr together).

use serde::{Deserialize, Serialize};

/// Default time between checks.
pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
/// Default limit of one check.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default start period.
pub const DEFAULT_START_PERIOD_MS: u64 = 0;
/// Default consecutive failures that make a container unhealthy.
pub const DEFAULT_RETRIES: u32 = 3;
/// Results kept in [`Health::log`].
pub const MAX_LOG: usize = 5;
/// Output kept of one check, in bytes (then `...` marks the cut).
pub const MAX_OUTPUT: usize = 4096;
/// The exit code recorded for a check that timed out or could not run.
pub const EXIT_CHECK_FAILED: i32 = -1;

/// A healthcheck as asked for (`CreateRequest.healthcheck`, the image's
/// `Healthcheck`) or as resolved (`ContainerConfig.healthcheck`, where
/// every field is set and `test` is `CMD` or `CMD-SHELL`).
///
/// Unknown fields are ignored, as in the rest of a create request (and so
/// that a `config.json` written by a newer vessel still reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", "..."]`; empty: the
    /// image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// Time between checks; 0: the image's, else 30 s.
    #[serde(default)]
    pub interval_ms: u64,
    /// Limit of one check; 0: the image's, else 30 s.
    #[serde(default)]
    pub timeout_ms: u64,
    /// Failures before it counts them while starting; 0: the image's,
    /// else none.
    #[serde(default)]
    pub start_period_ms: u64,
    /// Consecutive failures that make it unhealthy; 0: the image's, else 3.
    #[serde(default)]
    pub retries: u32,
}

impl Healthcheck {
    /// Does this say "no healthcheck" (`--no-healthcheck`, `HEALTHCHECK NONE`)?
    pub fn is_none(&self) -> bool {
        self.test.first().map(String::as_str) == Some("NONE")
    }

    /// Check the request's shape: a known `test` kind with a command.
    pub fn validate(&self) -> Result<(), String> {
        match self.test.first().map(String::as_str) {
            None => Ok(()),
            Some("NONE") if self.test.len() == 1 => Ok(()),
            Some("NONE") => Err("healthcheck test [\"NONE\"] takes no command".into()),
            Some("CMD") if self.test.len() >= 2 && !self.test[1].is_empty() => Ok(()),
            Some("CMD") => Err("healthcheck test [\"CMD\", ...] needs a program to run".into()),
            Some("CMD-SHELL") if self.test.len() == 2 && !self.test[1].trim().is_empty() => Ok(()),
            Some("CMD-SHELL") => Err(
                "healthcheck test [\"CMD-SHELL\", COMMAND] takes exactly one non-empty command"
                    .into(),
            ),
            Some(other) => Err(format!(
                "unknown healthcheck test kind {other:?}: use NONE, CMD or CMD-SHELL"
            )),
        }
    }

    /// The check a container runs: the user's over the image's (Docker's
    /// merge: each field unset in `user` comes from `image`), defaults for
    /// the rest; `None` when there is no check (none asked for, or `NONE`).
    pub fn resolve(user: Option<&Healthcheck>, image: Option<&Healthcheck>) -> Option<Healthcheck> {
        let empty = Healthcheck::default();
        let user = user.unwrap_or(&empty);
        let image = image.unwrap_or(&empty);
        let pick = |u: u64, i: u64, d: u64| [u, i].into_iter().find(|v| *v != 0).unwrap_or(d);
        let test = if user.test.is_empty() {
            image.test.clone()
        } else {
            user.test.clone()
        };
        let runs = matches!(
            test.first().map(String::as_str),
            Some("CMD") | Some("CMD-SHELL")
        );
        if !runs || test.len() < 2 {
            return None;
        }
        Some(Healthcheck {
            test,
            interval_ms: pick(user.interval_ms, image.interval_ms, DEFAULT_INTERVAL_MS),
            timeout_ms: pick(user.timeout_ms, image.timeout_ms, DEFAULT_TIMEOUT_MS),
            start_period_ms: pick(
                user.start_period_ms,
                image.start_period_ms,
                DEFAULT_START_PERIOD_MS,
            ),
            retries: [user.retries, image.retries]
                .into_iter()
                .find(|v| *v != 0)
                .unwrap_or(DEFAULT_RETRIES),
        })
    }

    /// The program and arguments a resolved check runs.
    pub fn command(&self) -> Vec<String> {
        match self.test.first().map(String::as_str) {
            Some("CMD-SHELL") => {
                let mut c = vec!["/bin/sh".to_string(), "-c".to_string()];
                c.extend(self.test[1..].iter().cloned());
                c
            }
            _ => self.test.iter().skip(1).cloned().collect(),
        }
    }

    /// From an image config's `Healthcheck` object (durations in
    /// nanoseconds); `None` when it is absent or makes no sense.
    pub fn from_image_config(v: &serde_json::Value) -> Option<Healthcheck> {
        let obj = v.as_object()?;
        let test: Vec<String> = obj
            .get("Test")
            .and_then(|t| t.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        // Nanoseconds to milliseconds; a positive value under 1 ms is 1 ms,
        // a negative or odd one is unset.
        let ms = |key: &str| -> u64 {
            match obj.get(key).and_then(|n| n.as_i64()) {
                Some(ns) if ns > 0 => ((ns as u64) / 1_000_000).max(1),
                _ => 0,
            }
        };
        let h = Healthcheck {
            test,
            interval_ms: ms("Interval"),
            timeout_ms: ms("Timeout"),
            start_period_ms: ms("StartPeriod"),
            retries: obj
                .get("Retries")
                .and_then(|n| n.as_u64())
                .map(|n| n.min(u64::from(u32::MAX)) as u32)
                .unwrap_or(0),
        };
        // No test (or not a list of strings): nothing to run.
        if h.test.is_empty() {
            return None;
        }
        h.validate().ok().map(|()| h)
    }
}

/// A container's health (Docker's `State.Health.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// No check has succeeded yet.
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResult {
    /// When it began and ended, in ms since the epoch.
    pub start_ms: u64,
    pub end_ms: u64,
    /// 0: healthy; -1: it timed out or could not be run.
    pub exit_code: i32,
    /// Its stdout and stderr, at most [`MAX_OUTPUT`] bytes (`...` after a cut).
    pub output: String,
}

/// A container's health in its state (`state.json`, `inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Consecutive failures counted (not those within the start period).
    pub failing_streak: u32,
    /// The last results, oldest first.
    #[serde(default)]
    pub log: Vec<HealthResult>,
}

impl Health {
    /// The health of a container that has just started.
    pub fn starting() -> Self {
        Self {
            status: HealthStatus::Starting,
            failing_streak: 0,
            log: Vec::new(),
        }
    }

    /// Take one result of `check` for a container whose process started
    /// at `started_ms`; the new status when it changed.
    pub fn record(
        &mut self,
        check: &Healthcheck,
        started_ms: u64,
        result: HealthResult,
    ) -> Option<HealthStatus> {
        let before = self.status;
        let success = result.exit_code == 0;
        let in_start_period = result.start_ms.saturating_sub(started_ms) < check.start_period_ms;
        if self.log.len() >= MAX_LOG {
            self.log.drain(..self.log.len() + 1 - MAX_LOG);
        }
        self.log.push(result);
        if success {
            self.failing_streak = 0;
            self.status = HealthStatus::Healthy;
        } else if !(self.status == HealthStatus::Starting && in_start_period) {
            self.failing_streak = self.failing_streak.saturating_add(1);
            if self.failing_streak >= check.retries.max(1) {
                self.status = HealthStatus::Unhealthy;
            }
        }
        (self.status != before).then_some(self.status)
    }
}

/// Keep at most [`MAX_OUTPUT`] bytes of `out` (cut at a character
/// boundary, `...` after a cut); invalid UTF-8 is replaced.
pub fn cap_output(out: &[u8]) -> String {
    if out.len() <= MAX_OUTPUT {
        return String::from_utf8_lossy(out).into_owned();
    }
    let mut s = String::from_utf8_lossy(&out[..MAX_OUTPUT]).into_owned();
    // A character cut in two became U+FFFD at the end: drop it.
    while s.ends_with('\u{FFFD}') && s.len() > MAX_OUTPUT {
        s.pop();
    }
    s.push_str("...");
    s
}

/// Parse a duration as Docker's flags take it (Go's `time.ParseDuration`):
/// a sequence of decimal numbers, each with a unit `ns`, `us` (`µs`), `ms`,
/// `s`, `m`, `h` (`1m30s`, `1.5s`, `500ms`), or `0`. In milliseconds,
/// rounded up (a positive duration is at least 1 ms). Negative durations
/// are refused.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "invalid duration {s:?}: expected a number with a unit (ms, s, m, h), e.g. 500ms, 10s, 1m30s"
        )
    };
    if t.starts_with('-') {
        return Err(format!("invalid duration {s:?}: it cannot be negative"));
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    if t == "0" {
        return Ok(0);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut rest = t;
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let ns_per: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total_ns += value * ns_per;
        rest = next;
    }
    // Past about 292 years Go's Duration overflows; so does any use here.
    if !total_ns.is_finite() || total_ns > 9.2e18 {
        return Err(format!("invalid duration {s:?}: it is too long"));
    }
    Ok((total_ns / 1e6).ceil() as u64)
}

/// A duration in ms as Go prints one (`1s`, `1m30s`, `500ms`), for
/// messages that quote a limit as Docker does.
pub fn format_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, rest) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let secs = if rest == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{}s", format!("{rest:03}").trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_s() {
        assert_eq!(parse_duration("1s"), Ok(1000));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("1.5s"), Ok(1500));
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("0s"), Ok(0));
        assert_eq!(parse_duration("10us"), Ok(1), "rounded up to 1 ms");
        assert_eq!(parse_duration("1500µs"), Ok(2));
        for bad in ["soon", "", "10", "1x", "s", "1.2.3s", ".s", "1s2", "--1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        let neg = parse_duration("-1s").unwrap_err();
        assert!(neg.contains("negative"), "{neg}");
        assert!(parse_duration("soon").unwrap_err().contains("\"soon\""));
        assert!(parse_duration("100000000h").is_err());
    }

    #[test]
    fn durations_print_as_go_s() {
        assert_eq!(format_duration(1000), "1s");
        assert_eq!(format_duration(1500), "1.5s");
        assert_eq!(format_duration(90_000), "1m30s");
        assert_eq!(format_duration(250), "250ms");
        assert_eq!(format_duration(3_600_000), "1h0m0s");
    }

    fn shell(cmd: &str) -> Healthcheck {
        Healthcheck {
            test: vec!["CMD-SHELL".into(), cmd.into()],
            ..Default::default()
        }
    }

    #[test]
    fn tests_are_validated() {
        assert!(Healthcheck::default().validate().is_ok());
        assert!(shell("true").validate().is_ok());
        for (test, ok) in [
            (vec!["NONE"], true),
            (vec!["NONE", "x"], false),
            (vec!["CMD"], false),
            (vec!["CMD", ""], false),
            (vec!["CMD", "true", "x"], true),
            (vec!["CMD-SHELL"], false),
            (vec!["CMD-SHELL", " "], false),
            (vec!["CMD-SHELL", "a", "b"], false),
            (vec!["SHELL", "true"], false),
        ] {
            let h = Healthcheck {
                test: test.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            assert_eq!(h.validate().is_ok(), ok, "{test:?}");
        }
    }

    #[test]
    fn the_user_s_check_is_merged_over_the_image_s() {
        let image = Healthcheck {
            test: vec!["CMD".into(), "/bin/check".into()],
            interval_ms: 5000,
            timeout_ms: 0,
            start_period_ms: 2000,
            retries: 7,
        };
        // Nothing from the user: the image's, defaults for what it lacks.
        let r = Healthcheck::resolve(None, Some(&image)).unwrap();
        assert_eq!(r.test, image.test);
        assert_eq!(
            (r.interval_ms, r.timeout_ms, r.start_period_ms, r.retries),
            (5000, DEFAULT_TIMEOUT_MS, 2000, 7)
        );
        assert_eq!(r.command(), vec!["/bin/check"]);
        // The user's command and interval; the rest from the image.
        let user = Healthcheck {
            interval_ms: 1000,
            ..shell("test -f /tmp/ok")
        };
        let r = Healthcheck::resolve(Some(&user), Some(&image)).unwrap();
        assert_eq!(r.command(), vec!["/bin/sh", "-c", "test -f /tmp/ok"]);
        assert_eq!((r.interval_ms, r.retries), (1000, 7));
        // Only a retry count from the user: the image's command.
        let user = Healthcheck {
            retries: 2,
            ..Default::default()
        };
        let r = Healthcheck::resolve(Some(&user), Some(&image)).unwrap();
        assert_eq!((r.test.clone(), r.retries), (image.test.clone(), 2));
        // NONE (`--no-healthcheck`) wins over the image's.
        let none = Healthcheck {
            test: vec!["NONE".into()],
            ..Default::default()
        };
        assert_eq!(Healthcheck::resolve(Some(&none), Some(&image)), None);
        // No check anywhere, or only durations.
        assert_eq!(Healthcheck::resolve(None, None), None);
        assert_eq!(Healthcheck::resolve(Some(&user), None), None);
        // Defaults.
        let r = Healthcheck::resolve(Some(&shell("true")), None).unwrap();
        assert_eq!(
            (r.interval_ms, r.timeout_ms, r.start_period_ms, r.retries),
            (30_000, 30_000, 0, 3)
        );
    }

    #[test]
    fn image_configs_give_their_check_in_nanoseconds() {
        let v = serde_json::json!({
            "Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
            "Interval": 1_000_000_000u64,
            "Timeout": 500_000u64,
            "StartPeriod": 0,
            "Retries": 4
        });
        let h = Healthcheck::from_image_config(&v).unwrap();
        assert_eq!(h.interval_ms, 1000);
        assert_eq!(h.timeout_ms, 1, "under 1 ms is 1 ms");
        assert_eq!((h.start_period_ms, h.retries), (0, 4));
        let none = Healthcheck::from_image_config(&serde_json::json!({"Test": ["NONE"]})).unwrap();
        assert!(none.is_none());
        // Nonsense is no check, not an error.
        assert_eq!(
            Healthcheck::from_image_config(&serde_json::json!({"Test": ["WHAT"]})),
            None
        );
        assert_eq!(
            Healthcheck::from_image_config(&serde_json::json!("x")),
            None
        );
        let odd = serde_json::json!({"Test": ["CMD", "x"], "Interval": -5, "Retries": "3"});
        let h = Healthcheck::from_image_config(&odd).unwrap();
        assert_eq!((h.interval_ms, h.retries), (0, 0));
    }

    fn result(start_ms: u64, exit_code: i32) -> HealthResult {
        HealthResult {
            start_ms,
            end_ms: start_ms + 10,
            exit_code,
            output: String::new(),
        }
    }

    #[test]
    fn results_move_the_status_as_docker_s_do() {
        let check = Healthcheck {
            retries: 2,
            ..shell("x")
        };
        let mut h = Health::starting();
        // Failures while starting (no start period) count.
        assert_eq!(h.record(&check, 0, result(1000, 1)), None);
        assert_eq!(h.failing_streak, 1);
        assert_eq!(
            h.record(&check, 0, result(2000, 1)),
            Some(HealthStatus::Unhealthy)
        );
        // A success: healthy, streak reset.
        assert_eq!(
            h.record(&check, 0, result(3000, 0)),
            Some(HealthStatus::Healthy)
        );
        assert_eq!(h.failing_streak, 0);
        // One failure is not enough; a timeout (-1) is a failure.
        assert_eq!(h.record(&check, 0, result(4000, 1)), None);
        assert_eq!(h.status, HealthStatus::Healthy);
        assert_eq!(
            h.record(&check, 0, result(5000, EXIT_CHECK_FAILED)),
            Some(HealthStatus::Unhealthy)
        );
        assert_eq!(h.failing_streak, 2);
        assert_eq!(h.record(&check, 0, result(6000, 2)), None);
        assert_eq!(h.failing_streak, 3);
        // Only the last five are kept, oldest first.
        assert_eq!(h.log.len(), MAX_LOG);
        assert_eq!(h.log[0].start_ms, 2000);
        assert_eq!(h.log[4].start_ms, 6000);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_until_a_success() {
        let check = Healthcheck {
            retries: 1,
            start_period_ms: 10_000,
            ..shell("x")
        };
        let mut h = Health::starting();
        // Started at 100 s; failures within 10 s of it do not count.
        assert_eq!(h.record(&check, 100_000, result(101_000, 1)), None);
        assert_eq!(h.record(&check, 100_000, result(109_999, 1)), None);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 0));
        // Past it, they do.
        assert_eq!(
            h.record(&check, 100_000, result(110_000, 1)),
            Some(HealthStatus::Unhealthy)
        );
        // A success inside the start period ends it: failures count at once.
        let mut h = Health::starting();
        assert_eq!(
            h.record(&check, 100_000, result(101_000, 0)),
            Some(HealthStatus::Healthy)
        );
        assert_eq!(
            h.record(&check, 100_000, result(102_000, 1)),
            Some(HealthStatus::Unhealthy)
        );
    }

    #[test]
    fn output_is_capped() {
        assert_eq!(cap_output(b"ok\n"), "ok\n");
        let long = vec![b'a'; MAX_OUTPUT + 10];
        let s = cap_output(&long);
        assert_eq!(s.len(), MAX_OUTPUT + 3);
        assert!(s.ends_with("a..."));
        // A two-byte character across the cut is dropped whole.
        let mut cut = vec![b'a'; MAX_OUTPUT - 1];
        cut.extend_from_slice("é and more".as_bytes());
        let s = cap_output(&cut);
        assert!(s.ends_with("a..."), "{:?}", &s[s.len() - 8..]);
        assert_eq!(cap_output(b"\xff"), "\u{FFFD}");
    }

    #[test]
    fn requests_read_with_defaults() {
        let h: Healthcheck = serde_json::from_str(r#"{"test":["NONE"],"later":1}"#).unwrap();
        assert!(h.is_none());
        let h: Healthcheck =
            serde_json::from_str(r#"{"test":["CMD-SHELL","true"],"interval_ms":1000}"#).unwrap();
        assert_eq!(h.interval_ms, 1000);
    }
}
