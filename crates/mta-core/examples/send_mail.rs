//! The smallest embedding of the engine: open a spool, inject one message, wait for its delivery event.
//!
//! `cargo run -p mta-core --example send_mail -- 127.0.0.1:2526 you@example.net`
//! (the first argument is a smart host `host:port` every domain is routed to, so no DNS is needed).

use std::time::Duration;

use mta_core::delivery::Route;
use mta_core::{Engine, EngineConfig, EventType, Injection};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let relay = args.next().unwrap_or_else(|| "127.0.0.1:2526".into());
    let rcpt = args.next().unwrap_or_else(|| "someone@example.net".into());
    let spool = tempfile::tempdir()?;

    let mut config = EngineConfig::new(spool.path());
    config.hostname = "sender.example".into();
    config.delivery.routes = vec![Route { domain: "*".into(), relay }];
    config.delivery.retry_intervals = vec![Duration::from_secs(5)];
    let (engine, _recovered) = Engine::open(config).await?;
    let mut events = engine.events().subscribe();

    let content =
        "From: app@sender.example\r\nTo: you@example.net\r\nSubject: hello\r\n\r\nSent by an embedded engine.\r\n";
    let accepted = engine.inject(Injection::new("app@sender.example", vec![rcpt], content)).await?;
    println!("queued as {} (durable)", accepted.id);

    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(event) = events.recv().await {
            if event.id == accepted.id.as_str() && event.kind != EventType::Reception {
                return Some(event);
            }
        }
        None
    })
    .await;
    match outcome {
        Ok(Some(e)) => println!("{:?} to {} via {:?}: {}", e.kind, e.recipient, e.mx, e.response),
        _ => println!("no outcome within 30 s; the message stays queued in the spool"),
    }
    engine.shutdown().await;
    Ok(())
}
