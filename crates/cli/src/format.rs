//! Human-readable output in Docker's style.

use std::time::Duration;
use vessel_api::types::{now_ms, ContainerSummary, Status};

/// "5 seconds", "About a minute", "3 hours", as Docker writes durations.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

/// Time since `ms` (epoch milliseconds).
pub fn since(ms: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(ms))
}

/// The STATUS column: `Up 5 seconds`, `Exited (0) 3 seconds ago`, `Created`.
pub fn status_text(c: &ContainerSummary) -> String {
    match c.status {
        Status::Created => "Created".into(),
        Status::Starting => "Starting".into(),
        Status::Running | Status::Stopping => {
            format!(
                "Up {}{}",
                human_duration(since(c.started_ms.unwrap_or(c.created_ms))),
                health_suffix(c)
            )
        }
        Status::Paused => format!(
            "Up {} (Paused)",
            human_duration(since(c.started_ms.unwrap_or(c.created_ms)))
        ),
        Status::Exited if c.restarting => format!(
            "Restarting ({}) {} ago",
            c.exit_code.unwrap_or(0),
            human_duration(since(c.finished_ms.unwrap_or(c.created_ms)))
        ),
        Status::Exited => format!(
            "Exited ({}{}) {} ago",
            c.exit_code.unwrap_or(0),
            c.killed_by
                .as_deref()
                .map(|k| format!(", {k}"))
                .unwrap_or_default(),
            human_duration(since(c.finished_ms.unwrap_or(c.created_ms)))
        ),
    }
}

/// Docker's health note after `Up ...`: ` (healthy)`, ` (unhealthy)`,
/// ` (health: starting)`; empty without a healthcheck.
fn health_suffix(c: &ContainerSummary) -> String {
    use vessel_api::health::HealthStatus;
    match c.health {
        None => String::new(),
        Some(HealthStatus::Starting) => " (health: starting)".into(),
        Some(s) => format!(" ({})", s.as_str()),
    }
}

/// Truncate to `n` characters with an ellipsis.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Print rows as left-aligned columns separated by three spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Bytes as Docker shows sizes: `4.2MB`.
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + units[u]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5 seconds");
        assert_eq!(human_duration(Duration::from_secs(90)), "About a minute");
        assert_eq!(human_duration(Duration::from_secs(600)), "10 minutes");
    }

    #[test]
    fn status_shows_health_while_up() {
        use vessel_api::health::HealthStatus;
        let mut c = ContainerSummary {
            id: "x".into(),
            name: "n".into(),
            image: "i".into(),
            command: "c".into(),
            created_ms: now_ms(),
            status: Status::Running,
            exit_code: None,
            started_ms: Some(now_ms()),
            finished_ms: None,
            ports: Vec::new(),
            health: None,
            restarting: false,
            killed_by: None,
        };
        assert_eq!(status_text(&c), "Up Less than a second");
        for (h, text) in [
            (
                HealthStatus::Starting,
                "Up Less than a second (health: starting)",
            ),
            (HealthStatus::Healthy, "Up Less than a second (healthy)"),
            (HealthStatus::Unhealthy, "Up Less than a second (unhealthy)"),
        ] {
            c.health = Some(h);
            assert_eq!(status_text(&c), text);
        }
    }

    #[test]
    fn sizes_and_tables() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_200_000), "4.2MB");
        let t = table(&[
            vec!["A".into(), "BB".into()],
            vec!["CCC".into(), "D".into()],
        ]);
        assert_eq!(t, "A     BB\nCCC   D\n");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }

    #[test]
    fn a_container_in_its_restart_back_off_reads_as_docker_s() {
        let mut c = ContainerSummary {
            id: "c".into(),
            name: "c".into(),
            image: String::new(),
            command: String::new(),
            created_ms: 0,
            status: Status::Exited,
            exit_code: Some(1),
            started_ms: None,
            finished_ms: Some(now_ms()),
            ports: vec![],
            restarting: true,
            killed_by: None,
            health: None,
        };
        assert_eq!(status_text(&c), "Restarting (1) Less than a second ago");
        c.restarting = false;
        assert_eq!(status_text(&c), "Exited (1) Less than a second ago");
        // A VMM its jail killed says how.
        c.exit_code = Some(159);
        c.killed_by = Some("seccomp".into());
        assert_eq!(
            status_text(&c),
            "Exited (159, seccomp) Less than a second ago"
        );
    }
}
