//! The `mta-server queue` command: a client of the running server's admin API (`GET /api/v1/queue`).

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Fetch `GET /api/v1/queue` from `base` (e.g. `http://127.0.0.1:8025`) and print it as a table or JSON.
pub async fn queue_summary(base: &str, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let url: hyper::Uri = format!("{}/api/v1/queue", base.trim_end_matches('/')).parse()?;
    if url.scheme_str() != Some("http") {
        anyhow::bail!("only http:// URLs are supported by `queue` (got {base})");
    }
    let host = url.host().ok_or_else(|| anyhow::anyhow!("no host in {base}"))?.to_string();
    let port = url.port_u16().unwrap_or(80);
    let body = tokio::time::timeout(Duration::from_secs(10), async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get(url.path()).header("host", format!("{host}:{port}"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = sender.send_request(req.body(Empty::<Bytes>::new())?).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            anyhow::bail!("{status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok::<_, anyhow::Error>(bytes)
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer from {base} within 10 s"))??;
    if json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    println!(
        "{:<40} {:>10} {:>10} {:>10} {:>8} {:>10}",
        "DOMAIN", "READY", "SCHEDULED", "IN_FLIGHT", "HELD", "SUSPENDED"
    );
    for q in v["queues"].as_array().into_iter().flatten() {
        let tenant = q["tenant"].as_str().map(|t| format!("{t}/")).unwrap_or_default();
        println!(
            "{:<40} {:>10} {:>10} {:>10} {:>8} {:>10}",
            format!("{tenant}{}", q["domain"].as_str().unwrap_or("")),
            q["ready"],
            q["scheduled"],
            q["in_flight"],
            q["held"],
            if q["suspended"].as_bool().unwrap_or(false) { "yes" } else { "no" }
        );
    }
    println!("connections: {}  messages in spool: {}", v["connections"], v["spool_messages"]);
    Ok(())
}
