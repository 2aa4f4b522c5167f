//! `GET /v1/events`: the event log from `since`, then events as they
//! happen, until `until` or until the client goes.

use super::call::Call;
use crate::error::{ApiError, ApiResult};
use crate::events::{parse_time, Filter};
use crate::server::Server;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use vessel_api::types::{now_ns, Event};

fn line(ev: &Event) -> ApiResult<Vec<u8>> {
    let mut l = serde_json::to_vec(ev).map_err(|e| anyhow::anyhow!(e))?;
    l.push(b'\n');
    Ok(l)
}

pub fn stream(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let since = c
        .query("since")
        .map(|v| parse_time("since", v))
        .transpose()
        .map_err(ApiError::invalid)?;
    let until = c
        .query("until")
        .map(|v| parse_time("until", v))
        .transpose()
        .map_err(ApiError::invalid)?;
    let filter = match c.query("filters") {
        Some(f) if !f.is_empty() => Filter::parse(f).map_err(ApiError::invalid)?,
        _ => Filter::default(),
    };
    if let (Some(a), Some(b)) = (since, until) {
        if b < a {
            return Err(ApiError::invalid("until is before since"));
        }
    }
    let (past, mut rx) = s.containers().events().subscribe(since);
    let mut out = c.respond_stream(200, "application/x-ndjson")?;
    let within = |ev: &Event| until.is_none_or(|u| ev.time_ns <= u);
    for ev in past.iter().filter(|e| within(e) && filter.matches(e)) {
        out.write_all(&line(ev)?)?;
    }
    loop {
        let left = match until {
            Some(u) => {
                let now = now_ns();
                if now >= u {
                    return Ok(());
                }
                Duration::from_nanos(u - now)
            }
            None => Duration::from_secs(3600),
        };
        match out.wait(left, rx.recv()) {
            None => return Ok(()),  // the client has gone
            Some(None) => continue, // until passed, or an hour of quiet
            Some(Some(Ok(ev))) => {
                if within(&ev) && filter.matches(&ev) {
                    out.write_all(&line(&ev)?)?;
                }
            }
            Some(Some(Err(RecvError::Lagged(n)))) => {
                eprintln!("vessel-apiserver: an events client fell {n} events behind; they are lost to it");
            }
            Some(Some(Err(RecvError::Closed))) => return Ok(()),
        }
    }
}
