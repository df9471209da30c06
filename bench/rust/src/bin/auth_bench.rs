//! Cost of mail authentication per message.
//!
//! - inbound verification (SPF for HELO and MAIL FROM + DKIM + DMARC + ARC) with a warm cache:
//!   the in-process DNS server, our pool, its loopback stub and mail-auth — the production path;
//!   latency one at a time, then throughput with 64 concurrent verifications;
//! - DKIM signing of a 10 KiB message with RSA-2048 and Ed25519 (one thread, then all cores).
//!
//! `cargo run --release -p mta-bench --bin auth_bench [-- N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use mta_core::auth::{self, AuthPolicy, KeyAlgorithm, KeyConfig, Policy, Signer, Verifier};
use mta_core::dns::testing::{TestDnsServer, TestZone};
use mta_core::dns::{DnsConfig, Resolver};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crates/mta-core/tests/fixtures/auth").join(name)
}

fn key(selector: &str, algorithm: KeyAlgorithm, file: &str) -> KeyConfig {
    KeyConfig {
        domain: "example.test".into(),
        selector: selector.into(),
        algorithm,
        key_file: fixture(file),
        headers: vec![],
    }
}

/// A message of about `size` bytes.
fn message(size: usize) -> Vec<u8> {
    let mut m = String::from(
        "From: Sender <alice@example.test>\r\nTo: bob@receiver.test\r\nSubject: benchmark\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <bench@example.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    let line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    while m.len() + line.len() <= size {
        m.push_str(line);
    }
    m.into_bytes()
}

/// CPU time (user + system) of this process, from /proc (Linux).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn per(d: Duration, n: usize) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6 / n as f64)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let rsa = Signer::load_keys(&[key("rsa", KeyAlgorithm::RsaSha256, "rsa2048.pem")]).unwrap();
    let ed = Signer::load_keys(&[key("ed", KeyAlgorithm::Ed25519Sha256, "ed25519.pem")]).unwrap();

    // ---- signing ----
    let m10k = message(10 * 1024);
    println!("DKIM signing, {} byte message, relaxed/relaxed:", m10k.len());
    for (name, s, count) in [("RSA-2048", &rsa, n), ("Ed25519", &ed, n * 4)] {
        s.sign(&m10k).unwrap();
        let t0 = Instant::now();
        for _ in 0..count {
            std::hint::black_box(s.sign(&m10k).unwrap());
        }
        let one = t0.elapsed();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let t0 = Instant::now();
        std::thread::scope(|sc| {
            for _ in 0..threads {
                sc.spawn(|| {
                    for _ in 0..count / threads {
                        std::hint::black_box(s.sign(&m10k).unwrap());
                    }
                });
            }
        });
        let all = t0.elapsed();
        println!(
            "  {name:9} {} per message on one thread ({:.0}/s); {:.0}/s on {threads} threads",
            per(one, count),
            count as f64 / one.as_secs_f64(),
            (count / threads * threads) as f64 / all.as_secs_f64()
        );
    }

    // ---- verification ----
    let mut zone = TestZone::new("test")
        .txt("example.test", &["v=spf1 ip4:192.0.2.0/24 -all"])
        .txt("mail.example.test", &["v=spf1 ip4:192.0.2.1 -all"])
        .txt("_dmarc.example.test", &["v=DMARC1; p=reject; rua=mailto:dmarc@example.test"]);
    for s in [&rsa, &ed] {
        for (name, value) in s.dns_records() {
            let parts: Vec<&str> = value.as_bytes().chunks(255).map(|c| std::str::from_utf8(c).unwrap()).collect();
            zone = zone.txt(&name, &parts);
        }
    }
    let server = TestDnsServer::start(vec![zone]).await.unwrap();
    let resolver = Resolver::new(DnsConfig { nameservers: vec![server.addr()], ..DnsConfig::default() }).unwrap();
    let (stub, _task) = resolver.serve_stub("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let ma = auth::authenticator(stub, resolver.config().lookup_timeout).unwrap();
    let policy = AuthPolicy { spf: Policy::Enforce, dkim: Policy::Record, dmarc: Policy::Enforce };
    let v = Arc::new(Verifier::new(ma, policy, "mx.receiver.test"));
    let ip = "192.0.2.1".parse().unwrap();

    for (label, size, s) in [("RSA-2048", 1024, &rsa), ("RSA-2048", 10 * 1024, &rsa), ("Ed25519", 10 * 1024, &ed)] {
        let msg = message(size);
        let mut signed = s.sign(&msg).unwrap().unwrap().into_bytes();
        signed.extend_from_slice(&msg);
        let signed = Arc::new(signed);
        // warm the cache and check the result
        let verdict = v.verify(ip, "mail.example.test", "bounce@example.test", &signed).await;
        assert!(verdict.reject.is_none(), "{:?}", verdict.reject);
        assert!(verdict.header.contains("dkim=pass") && verdict.header.contains("dmarc=pass"), "{}", verdict.header);
        let c0 = cpu_time();
        let t0 = Instant::now();
        for _ in 0..n {
            std::hint::black_box(v.verify(ip, "mail.example.test", "bounce@example.test", &signed).await);
        }
        let seq = t0.elapsed();
        let cpu = c0.zip(cpu_time()).map(|(a, b)| b - a);
        // 64 concurrent verifications
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (v, signed) = (v.clone(), signed.clone());
            let count = n / 64;
            tasks.push(tokio::spawn(async move {
                for _ in 0..count {
                    std::hint::black_box(v.verify(ip, "mail.example.test", "bounce@example.test", &signed).await);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let conc = t0.elapsed();
        println!(
            "inbound SPF(HELO+MAIL FROM)+DKIM({label})+DMARC+ARC, {} bytes, warm cache: {} per message one at a time \
             (CPU {} per message, incl. the DNS stub); {:.0}/s with 64 concurrent",
            signed.len(),
            per(seq, n),
            cpu.map_or("n/a".into(), |c| per(c, n)),
            (n / 64 * 64) as f64 / conc.as_secs_f64()
        );
    }
}
