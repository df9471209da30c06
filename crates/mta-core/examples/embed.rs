//! Embedding the whole engine: verification of inbound mail and back-pressure on, as the server runs it.
//!
//! `cargo run -p mta-core --example embed -- 127.0.0.1:53` (a DNS server to verify with; mail is routed to a
//! smart host at 127.0.0.1:2526, so no MX lookup is needed to deliver).

use std::time::Duration;

use mta_core::auth::{AuthPolicy, Policy};
use mta_core::backpressure::BackpressureConfig;
use mta_core::delivery::Route;
use mta_core::{Engine, EngineConfig, Injection};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nameserver = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:53".into());
    let spool = tempfile::tempdir()?;
    let mut config = EngineConfig::new(spool.path());
    config.hostname = "mx1.sender.example".into();
    config.dns.nameservers = vec![nameserver.parse()?];
    config.delivery.routes = vec![Route { domain: "*".into(), relay: "127.0.0.1:2526".into() }];
    config.auth = AuthPolicy { spf: Policy::Record, dkim: Policy::Record, dmarc: Policy::Record };
    config.backpressure = Some(BackpressureConfig::default());
    let (engine, recovered) = Engine::open(config).await?;
    println!("spool opened with {} queued messages", recovered.messages);

    // What an SMTP front end does with mail from outside: verify, then inject with the verdict's header.
    let received = "From: friend@client.example\r\nTo: you@sender.example\r\nSubject: hi\r\n\r\nHello.\r\n";
    let mut injection = Injection::new("friend@client.example", vec!["you@sender.example".into()], received);
    injection.sign = false;
    if let Some(verifier) = engine.verifier() {
        let verdict =
            verifier.verify("192.0.2.1".parse()?, "client.example", &injection.sender, received.as_bytes()).await;
        print!("{}", verdict.header);
        if let Some((code, enhanced, text)) = verdict.reject {
            println!("would refuse: {code} {enhanced:?} {text}");
            return Ok(());
        }
        injection.auth_results = Some(verdict.header);
    }
    match engine.backpressure().check_new_work() {
        Ok(()) => {
            let accepted = engine.inject(injection).await?;
            println!("queued as {} ({:?})", accepted.id, engine.backpressure().state());
        }
        Err(overloaded) => println!("shedding load, try later: {overloaded}"),
    }
    engine.shutdown_within(Duration::from_secs(5)).await;
    Ok(())
}
