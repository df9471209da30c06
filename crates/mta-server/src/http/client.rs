//! The `mta-server queue` commands: a client of the running server's admin API (`GET /api/v1/queue`,
//! `POST /api/v1/queue/transfer`).

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// How long `queue transfer` follows a transfer before giving up on it (it goes on in the server).
const TRANSFER_WAIT: Duration = Duration::from_secs(24 * 3600);

/// One request to the local server's API: (status, body), within 10 s.
async fn call(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let url: hyper::Uri = format!("{}{path}", base.trim_end_matches('/')).parse()?;
    if url.scheme_str() != Some("http") {
        anyhow::bail!("only http:// URLs are supported by `queue` (got {base})");
    }
    let host = url.host().ok_or_else(|| anyhow::anyhow!("no host in {base}"))?.to_string();
    let port = url.port_u16().unwrap_or(80);
    tokio::time::timeout(Duration::from_secs(10), async {
        let stream = tokio::net::TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder().method(method).uri(url.path()).header("host", format!("{host}:{port}"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let resp = sender.send_request(req.body(Full::new(Bytes::from(body.unwrap_or_default())))?).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, bytes))
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer from {base} within 10 s"))?
}

/// `mta-server queue transfer`: start a transfer on the server at `base`, follow it, print its result.
/// Fails (exit 1) when the transfer fails.
pub async fn queue_transfer(
    base: &str,
    token: Option<&str>,
    to: &str,
    to_token: &str,
    domain: Option<&str>,
) -> anyhow::Result<()> {
    let body = serde_json::json!({"to": to, "token": to_token, "domain": domain});
    let (status, bytes) = call(base, "POST", "/api/v1/queue/transfer", token, Some(serde_json::to_vec(&body)?)).await?;
    if status != hyper::StatusCode::ACCEPTED {
        anyhow::bail!("{status}: {}", String::from_utf8_lossy(&bytes));
    }
    let started: serde_json::Value = serde_json::from_slice(&bytes)?;
    let id = started["transfer_id"].as_str().ok_or_else(|| anyhow::anyhow!("no transfer_id in the answer"))?;
    eprintln!("transfer {id} started");
    let deadline = tokio::time::Instant::now() + TRANSFER_WAIT;
    let mut last_moved = None;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, bytes) = call(base, "GET", &format!("/api/v1/queue/transfer/{id}"), token, None).await?;
        if !status.is_success() {
            anyhow::bail!("{status}: {}", String::from_utf8_lossy(&bytes));
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes)?;
        let moved = v["moved"].as_u64().unwrap_or(0);
        match v["state"].as_str() {
            Some("done") => {
                println!("{v}");
                return Ok(());
            }
            Some("failed") => {
                println!("{v}");
                anyhow::bail!("transfer {id} failed: {}", v["error"].as_str().unwrap_or("unknown error"));
            }
            _ if last_moved != Some(moved) => {
                eprintln!("moved {moved}, failed {}", v["failed"]);
                last_moved = Some(moved);
            }
            _ => {}
        }
    }
    anyhow::bail!(
        "transfer {id} still running after {} s; follow it at /api/v1/queue/transfer/{id}",
        TRANSFER_WAIT.as_secs()
    )
}

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
