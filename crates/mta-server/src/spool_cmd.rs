//! Offline spool tools for operators: `spool list` and `spool show` (the server must be stopped).

use std::io::Write;

use mta_spool::{MessageRecord, QueueId, Spool, SpoolConfig};
use serde_json::json;

use crate::config::Config;

fn open(config: &Config) -> anyhow::Result<Spool> {
    let mut sc = SpoolConfig::new(config.spool.path.clone(), &config.server.node_id);
    sc.sled_cache_bytes = config.spool.cache_bytes;
    Spool::open(sc).map_err(|e| anyhow::anyhow!("{e}"))
}

fn record_json(r: &MessageRecord) -> serde_json::Value {
    json!({
        "id": r.id.as_str(),
        "sender": r.sender,
        "size": r.body.len,
        "received_at": r.received_at_ms,
        "tenant": r.tenant,
        "priority": r.priority,
        "recipients": r.recipients.iter().map(|x| json!({
            "address": x.address, "state": x.state.as_str(), "attempts": x.attempts, "last_reply": x.last_reply,
        })).collect::<Vec<_>>(),
        "schedules": r.schedules,
    })
}

/// `spool list [--json]`: every spooled message.
pub fn list(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let spool = open(config)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut count = 0usize;
    let mut failed: Option<std::io::Error> = None;
    let report = spool.scan(|r| {
        if failed.is_some() {
            return;
        }
        count += 1;
        let res = if as_json {
            writeln!(out, "{}", record_json(&r))
        } else {
            let rcpts: Vec<String> =
                r.recipients.iter().map(|x| format!("{}:{}", x.address, x.state.as_str())).collect();
            writeln!(
                out,
                "{}  {:>9}  {}  <{}>  {}",
                r.id,
                r.body.len,
                fmt_ms(r.received_at_ms),
                r.sender,
                rcpts.join(" ")
            )
        };
        if let Err(e) = res {
            failed = Some(e);
        }
    })?;
    if let Some(e) = failed {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    out.flush().ok();
    if !as_json {
        eprintln!("{count} message(s)");
    }
    for (key, reason) in report.quarantined {
        eprintln!("quarantined unreadable record {key}: {reason}");
    }
    Ok(())
}

/// `spool show ID [--raw]`: one message; `--raw` writes the stored bytes exactly.
pub fn show(config: &Config, id: &str, raw: bool) -> anyhow::Result<()> {
    let id = QueueId::parse(id).ok_or_else(|| anyhow::anyhow!("{id:?} is not a queue id"))?;
    let spool = open(config)?;
    let record = spool.get_blocking(&id)?.ok_or_else(|| anyhow::anyhow!("no message {id} in the spool"))?;
    let body = spool.read_body_blocking(&record)?;
    let mut out = std::io::stdout().lock();
    if raw {
        out.write_all(&body)?;
    } else {
        let mut v = record_json(&record);
        v["content"] = json!(String::from_utf8_lossy(&body));
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    }
    out.flush()?;
    Ok(())
}

fn fmt_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&fmt).unwrap_or_default()
}
