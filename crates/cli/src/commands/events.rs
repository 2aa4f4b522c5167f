//! `vessel events [--since T] [--until T] [--filter K=V] [--format json]`.

use crate::api::{check, Api};
use crate::cli::EventsArgs;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vessel_api::http::percent_encode;

/// A time of `--since`/`--until` as the API takes it: Unix seconds with
/// nanoseconds (`1700000000.250000000`).
pub fn api_time(flag: &str, v: &str, now: SystemTime) -> Result<String> {
    let v = v.trim();
    let t = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return if v.matches('.').count() <= 1 && !v.starts_with('.') {
            Ok(v.to_string())
        } else {
            Err(anyhow!(
                "invalid --{flag} {v:?}: a Unix time is seconds, such as 1700000000.5"
            ))
        };
    } else if let Ok(t) = humantime::parse_rfc3339_weak(v) {
        t
    } else if let Ok(d) = humantime::parse_duration(v) {
        now.checked_sub(d)
            .ok_or_else(|| anyhow!("invalid --{flag} {v:?}: before 1970"))?
    } else {
        bail!("invalid --{flag} {v:?}: give Unix seconds, an RFC 3339 time (2024-05-01T12:00:00Z) or a duration ago (10m, 1h30m)");
    };
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("invalid --{flag} {v:?}: before 1970"))?;
    Ok(format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
}

/// `--filter` flags as the API's `filters` (JSON: key → values).
pub fn filters(flags: &[String]) -> Result<Option<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in flags {
        for kv in f.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                anyhow!("invalid --filter {kv:?}: expected KEY=VALUE, such as event=die")
            })?;
            map.entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    if map.is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::to_string(&map)?))
}

/// One event as Docker prints it: time, type, action, ID, attributes.
pub fn text_line(ev: &serde_json::Value) -> String {
    let ns = ev.get("time_ns").and_then(|t| t.as_u64()).unwrap_or(0);
    let t = UNIX_EPOCH + Duration::from_nanos(ns);
    let when = humantime::format_rfc3339_nanos(t);
    let s = |k: &str| ev.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let mut attrs: Vec<String> = ev
        .get("attributes")
        .and_then(|a| a.as_object())
        .map(|a| {
            a.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    attrs.push(format!("name={}", s("name")));
    attrs.sort();
    // Docker writes the new health into the action: `health_status: healthy`.
    let mut action = s("action");
    if let Some(h) = ev
        .pointer("/attributes/health_status")
        .and_then(|v| v.as_str())
        .filter(|_| action == "health_status")
    {
        action = format!("health_status: {h}");
    }
    format!(
        "{when} {} {} {} ({})",
        s("type"),
        action,
        s("id"),
        attrs.join(", ")
    )
}

pub fn events(api: &Api, a: EventsArgs) -> Result<i32> {
    let json = match a.format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => bail!("unknown --format {other:?}: use `text` or `json`"),
    };
    let now = SystemTime::now();
    let mut q = Vec::new();
    if let Some(s) = &a.since {
        q.push(format!("since={}", api_time("since", s, now)?));
    }
    if let Some(u) = &a.until {
        q.push(format!("until={}", api_time("until", u, now)?));
    }
    if let Some(f) = filters(&a.filter)? {
        q.push(format!("filters={}", percent_encode(&f)));
    }
    let path = format!("/v1/events?{}", q.join("&"));
    let resp = check(api.send("GET", &path, None)?)?;
    let mut reader = resp.reader;
    let stdout = std::io::stdout();
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .context("reading the event stream")?;
        if n == 0 {
            return Ok(0);
        }
        let out = if json {
            line.trim_end().to_string()
        } else {
            match serde_json::from_str::<serde_json::Value>(line.trim_end()) {
                Ok(v) => text_line(&v),
                Err(_) => continue,
            }
        };
        let mut o = stdout.lock();
        // A closed stdout (`| head`) ends the command.
        if writeln!(o, "{out}").and_then(|_| o.flush()).is_err() {
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_filters() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(api_time("since", "1700000000", now).unwrap(), "1700000000");
        assert_eq!(api_time("since", "12.5", now).unwrap(), "12.5");
        assert_eq!(api_time("since", "10m", now).unwrap(), "999400.000000000");
        assert_eq!(
            api_time("since", "1970-01-02T00:00:00Z", now).unwrap(),
            "86400.000000000"
        );
        assert!(api_time("since", "yesterday", now).is_err());
        assert!(api_time("since", "1.2.3", now).is_err());
        assert_eq!(
            filters(&[
                "type=container,event=die".into(),
                "event=stop".into(),
                "container=web".into()
            ])
            .unwrap()
            .unwrap(),
            r#"{"container":["web"],"event":["die","stop"],"type":["container"]}"#
        );
        assert_eq!(filters(&[]).unwrap(), None);
        assert!(filters(&["die".into()]).is_err());
    }

    #[test]
    fn text_lines_read_like_docker_s() {
        let ev = serde_json::json!({
            "time_ns": 86_400_000_000_123u64, "type": "container", "action": "die",
            "id": "abc", "name": "web", "attributes": {"exit_code": "3", "image": "img"}
        });
        assert_eq!(
            text_line(&ev),
            "1970-01-02T00:00:00.000000123Z container die abc (exit_code=3, image=img, name=web)"
        );
        let ev = serde_json::json!({
            "time_ns": 0, "type": "container", "action": "health_status",
            "id": "abc", "name": "web", "attributes": {"health_status": "unhealthy", "image": "img"}
        });
        assert_eq!(
            text_line(&ev),
            "1970-01-01T00:00:00.000000000Z container health_status: unhealthy abc (health_status=unhealthy, image=img, name=web)"
        );
    }
}
