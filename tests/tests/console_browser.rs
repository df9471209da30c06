//! End to end: the operator console in a real headless Chromium, driven over WebDriver (chromedriver, a child
//! process on a loopback port). Mail to a few destinations that defer, bounce or accept; the operator types the
//! key, sees queue rows that match `GET /api/v1/queue`, suspends and resumes a domain (checked through the API),
//! looks a message up; the browser logs no error (CSP violations included) and fetched nothing from another
//! origin.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test.sh` installs them): skipped when absent
//! outside CI, a failure under `CI`. With `CONSOLE_SCREENSHOT=<path>` the test also saves the page as a PNG
//! (`docs/console.png` is made so: `scripts/console-screenshot.sh`).

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use mta_core::dns::testing::{TestDnsServer, TestZone};
use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::{free_port, http_post_json, http_request, server_binary, TestServer};
use serde_json::{json, Value};

const KEY: &str = "console-test-key-4b1d9e";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Longest wait for anything the page or the server does.
const WAIT: Duration = Duration::from_secs(30);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The chromedriver child in its own process group (with the Chromium it starts): the group is killed when the
/// test ends, pass or fail.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the group this test created (its id is the chromedriver child's pid).
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// chromedriver's (Selenium-compatible) browser log: console messages, uncaught exceptions, CSP violations.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

fn hash_key(key: &str) -> String {
    use std::io::Write;
    let mut child =
        Command::new(server_binary()).arg("hash-key").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn get(server: &TestServer, path: &str) -> Value {
    let r = http_request(server.http, "GET", path, &[("Authorization", &format!("Bearer {KEY}"))], b"");
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// `GET /api/v1/queue` as (domain → [ready, scheduled, in flight, held], suspended), one entry per domain.
fn queues_by_domain(server: &TestServer) -> std::collections::BTreeMap<String, ([u64; 4], bool)> {
    let mut out = std::collections::BTreeMap::new();
    for q in get(server, "/api/v1/queue")["queues"].as_array().unwrap() {
        let entry = out.entry(q["domain"].as_str().unwrap().to_string()).or_insert(([0u64; 4], false));
        for (i, field) in ["ready", "scheduled", "in_flight", "held"].iter().enumerate() {
            entry.0[i] += q[*field].as_u64().unwrap();
        }
        entry.1 |= q["suspended"].as_bool().unwrap();
    }
    out
}

fn inject(server: &TestServer, to: &str) -> String {
    let body = json!({
        "envelope_sender": "app@sender.test",
        "recipients": [to],
        "content": format!("From: app@sender.test\nTo: {to}\nSubject: console test\n\nHello.\n"),
    });
    let r = http_post_json(server.http, "/api/v1/messages", &[("Authorization", &format!("Bearer {KEY}"))], &body);
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// Wait (bounded) until `check` holds.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

/// The page's queue rows as (domain → [ready, scheduled, in flight, held], suspended button shown).
async fn page_rows(c: &Client) -> std::collections::BTreeMap<String, ([u64; 4], bool)> {
    let script = r#"
        return [...document.querySelectorAll('[data-test="queue-row"]')].map(row => ({
            domain: row.dataset.domain,
            cells: [...row.querySelectorAll('td')].map(td => td.textContent),
            resume: row.querySelector('[data-test="resume"]') !== null,
        }));"#;
    let rows = c.execute(script, vec![]).await.unwrap();
    let mut out = std::collections::BTreeMap::new();
    for row in rows.as_array().unwrap() {
        let cells = row["cells"].as_array().unwrap();
        let n = |i: usize| cells[i].as_str().unwrap().replace(',', "").parse::<u64>().unwrap_or(u64::MAX);
        out.insert(row["domain"].as_str().unwrap().to_string(), ([n(2), n(3), n(4), n(5)], row["resume"] == true));
    }
    out
}

/// Wait (bounded) until the page shows what `expected` says.
async fn wait_page<T: PartialEq + std::fmt::Debug>(
    what: &str,
    expected: impl Fn() -> T,
    mut seen: impl AsyncFnMut() -> T,
) {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        let (want, got) = (expected(), seen().await);
        if want == got {
            return;
        }
        last = Some((want, got));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out waiting for the page to show {what}: (expected, seen) = {last:?}");
}

/// Click `button` in `domain`'s row. The table is redrawn at every refresh: a button found just before a redraw
/// is stale, so find it again (bounded).
async fn click_in_row(c: &Client, domain: &str, button: &str) {
    let selector = format!("[data-test=\"queue-row\"][data-domain=\"{domain}\"] [data-test=\"{button}\"]");
    let mut last = None;
    for _ in 0..20 {
        let found = c.wait().at_most(WAIT).for_element(Locator::Css(&selector)).await.unwrap();
        match found.click().await {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not click {button} of {domain}: {last:?}");
}

fn tools_present() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        assert!(std::env::var("CI").is_err(), "chromium/chromedriver missing in CI: scripts/test.sh installs them");
        eprintln!("SKIPPED: {CHROMIUM} or {CHROMEDRIVER} not found (apt-get install chromium chromium-driver)");
    }
    present
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_queues_and_acts_on_them_in_a_real_browser() {
    if !tools_present() {
        return;
    }
    // Destinations: two defer (queued for their next attempt), one bounces, one (and the DSNs' sender
    // domain) accepts.
    let port = free_port();
    let zone = TestZone::new("test")
        .mail_domain("alpha.test", &[(10, "mx.alpha.test", ip("127.0.0.2"))])
        .mail_domain("beta.test", &[(10, "mx.beta.test", ip("127.0.0.3"))])
        .mail_domain("gamma.test", &[(10, "mx.gamma.test", ip("127.0.0.4"))])
        .mail_domain("delta.test", &[(10, "mx.delta.test", ip("127.0.0.5"))])
        .mail_domain("epsilon.test", &[(10, "mx.epsilon.test", ip("127.0.0.6"))])
        .mail_domain("sender.test", &[(10, "mx.sender.test", ip("127.0.0.5"))]);
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let sink = |a: &str| SinkHandle::start(SocketAddr::new(ip(a), port), SinkConfig::default());
    let (alpha, beta, gamma, delta) =
        (sink("127.0.0.2").await, sink("127.0.0.3").await, sink("127.0.0.4").await, sink("127.0.0.5").await);
    let epsilon = sink("127.0.0.6").await;
    alpha.set_rcpt_rule(|_| Some("451 4.7.1 Greylisted, please try again later".to_string()));
    beta.set_rcpt_rule(|_| Some("452 4.2.2 The email account that you tried to reach is over quota".to_string()));
    epsilon.set_rcpt_rule(|_| Some("421 4.7.28 Our system has detected an unusual rate of mail".to_string()));
    gamma.set_rcpt_rule(|_| Some("550 5.1.1 The email account that you tried to reach does not exist".to_string()));
    let config = format!(
        "api_keys = [\"{}\"]\n[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"1s\"\nnegative_ttl = \"1s\"\n\
         [delivery]\nport = {port}\nretry_intervals = [\"10m\"]\nsmtp_timeout = \"5s\"\n",
        tokio::task::block_in_place(|| hash_key(KEY)),
        dns.addr(),
    );
    let server = tokio::task::block_in_place(|| TestServer::start(&config));

    let mut ids = Vec::new();
    tokio::task::block_in_place(|| {
        for (domain, n) in
            [("alpha.test", 3), ("beta.test", 5), ("gamma.test", 2), ("delta.test", 4), ("epsilon.test", 2)]
        {
            for i in 0..n {
                ids.push((domain, inject(&server, &format!("user{i}@{domain}"))));
            }
        }
        // Every deferring message attempted once and waiting; the bounces and deliveries done.
        wait_until("deferred mail scheduled and the rest delivered or bounced", || {
            let q = queues_by_domain(&server);
            let scheduled = |d: &str| q.get(d).map_or(0, |(c, _)| c[1]);
            let idle = |d: &str| q.get(d).is_none_or(|(c, _)| c.iter().all(|n| *n == 0));
            scheduled("alpha.test") == 3
                && scheduled("beta.test") == 5
                // 421 4.7.28 is one of the shipped response rules: epsilon.test's queue is held by it.
                && q.get("epsilon.test").is_some_and(|(c, suspended)| c[1] + c[3] == 2 && *suspended)
                && idle("gamma.test")
                && idle("delta.test")
        });
    });
    assert!(delta.wait_for_messages(4, WAIT).await, "delta.test accepted its mail");

    // The page and its assets: strict CSP, nosniff, no key needed for them (and no data in them).
    for path in ["/console", "/console/console.js", "/console/console.css"] {
        let r = tokio::task::block_in_place(|| http_request(server.http, "GET", path, &[], b""));
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("content-security-policy"),
            Some(
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                 frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
            ),
            "{path}"
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{path}");
    }
    let r = tokio::task::block_in_place(|| http_request(server.http, "GET", "/api/v1/stats/timeseries", &[], b""));
    assert_eq!(r.status, 401, "the time series needs the key");

    // The browser.
    let driver_port = free_port();
    let profile = tempfile::tempdir().unwrap();
    let _driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver"),
    );
    wait_until("chromedriver to listen", || TcpStream::connect(("127.0.0.1", driver_port)).is_ok());
    let caps = json!({
        "browserName": "chrome",
        "goog:loggingPrefs": {"browser": "ALL"},
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1440,1250",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        },
    });
    let caps = caps.as_object().unwrap().clone();
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a WebDriver session with headless Chromium");

    let origin = format!("http://{}", server.http);
    c.goto(&format!("{origin}/console")).await.unwrap();
    let key_input = c.wait().at_most(WAIT).for_element(Locator::Css("[data-test=\"api-key\"]")).await.unwrap();
    key_input.send_keys(KEY).await.unwrap();
    c.find(Locator::Css("#key-form button[type=\"submit\"]")).await.unwrap().click().await.unwrap();

    // Queue rows match the API (one row per domain, same counts).
    let rows_from_api = || tokio::task::block_in_place(|| queues_by_domain(&server));
    wait_page("the queue rows of GET /api/v1/queue", rows_from_api, async || page_rows(&c).await).await;
    let shown = page_rows(&c).await;
    assert!(shown.contains_key("alpha.test") && shown.contains_key("beta.test"), "{shown:?}");
    // A site held by a response rule says why and until when, as the API does.
    let api_reason = tokio::task::block_in_place(|| get(&server, "/api/v1/queue"))["queues"]
        .as_array()
        .and_then(|rows| rows.iter().find(|q| q["domain"] == "epsilon.test"))
        .and_then(|q| q["suspended_reason"].as_str().map(str::to_string))
        .expect("epsilon.test held with a reason");
    let row = c.find(Locator::Css("[data-test=\"queue-row\"][data-domain=\"epsilon.test\"]")).await.unwrap();
    let row_text = row.text().await.unwrap();
    assert!(row_text.contains(&api_reason), "row {row_text:?} lacks the reason {api_reason:?}");

    // Health state as the API says it.
    let health = tokio::task::block_in_place(|| get(&server, "/api/v1/health"));
    let state = c.find(Locator::Css("[data-test=\"health-state\"]")).await.unwrap().text().await.unwrap();
    assert_eq!(state, health["state"].as_str().unwrap());

    // Suspend beta.test from the page: the API sees it; resume it: the API sees that too.
    click_in_row(&c, "beta.test", "suspend").await;
    tokio::task::block_in_place(|| {
        wait_until("beta.test suspended", || queues_by_domain(&server)["beta.test"].1);
    });
    click_in_row(&c, "beta.test", "resume").await;
    tokio::task::block_in_place(|| {
        wait_until("beta.test resumed", || !queues_by_domain(&server)["beta.test"].1);
    });
    // Suspend alpha.test and leave it (the screenshot shows one suspended queue).
    click_in_row(&c, "alpha.test", "suspend").await;
    tokio::task::block_in_place(|| {
        wait_until("alpha.test suspended", || queues_by_domain(&server)["alpha.test"].1);
    });
    wait_page("alpha.test suspended", || true, async || page_rows(&c).await.get("alpha.test").is_some_and(|r| r.1))
        .await;

    // Look a deferred message up: recipient, state, attempts and last reply.
    let (_, id) = ids.iter().find(|(d, _)| *d == "alpha.test").unwrap().clone();
    let id_input = c.find(Locator::Css("[data-test=\"message-id\"]")).await.unwrap();
    id_input.send_keys(&id).await.unwrap();
    c.find(Locator::Css("#message-form button[type=\"submit\"]")).await.unwrap().click().await.unwrap();
    let status = c.find(Locator::Css("[data-test=\"message-status\"]")).await.unwrap();
    wait_page(
        "the message's status",
        || true,
        async || status.text().await.unwrap_or_default().contains("user0@alpha.test"),
    )
    .await;
    let text = status.text().await.unwrap();
    assert!(text.contains(&id) && text.contains("deferred") && text.contains("Greylisted"), "{text}");

    // Bounce classes of the last hour, as the time series says (gamma's invalid recipients are class 10).
    let classes = tokio::task::block_in_place(|| get(&server, "/api/v1/stats/timeseries"))["bounce_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["class"].to_string())
        .collect::<Vec<_>>();
    assert!(classes.contains(&"10".to_string()), "{classes:?}");
    wait_page(
        "the bounce classes of the time series",
        || classes.clone(),
        async || {
            let rows = c.execute(
                "return [...document.querySelectorAll('#bounce-rows tr')].map(r => r.firstChild.textContent)",
                vec![],
            );
            let rows = rows.await.unwrap();
            rows.as_array().unwrap().iter().filter_map(|v| v.as_str().map(String::from)).collect::<Vec<_>>()
        },
    )
    .await;
    let chart_lines = c.find_all(Locator::Css("#chart polyline")).await.unwrap();
    assert_eq!(chart_lines.len(), 4, "received, delivered, deferred and bounced lines");

    if let Ok(path) = std::env::var("CONSOLE_SCREENSHOT") {
        let png = c.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot written to {path}");
    }

    // Nothing logged as an error (script errors, failed requests and CSP violations all land here).
    let log = c.issue_cmd(BrowserLog).await.expect("chromedriver's browser log");
    let errors: Vec<&Value> = log.as_array().unwrap().iter().filter(|e| e["level"] == "SEVERE").collect();
    assert!(errors.is_empty(), "browser console errors: {errors:#?}");

    // Every resource the page loaded came from the node itself, and none carried the key in its URL.
    let resources = c
        .execute("return [location.origin, ...performance.getEntriesByType('resource').map(e => e.name)]", vec![])
        .await
        .unwrap();
    let resources: Vec<&str> = resources.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(resources[0], origin);
    assert!(resources.len() > 5, "the page fetched its assets and the API: {resources:?}");
    for url in &resources[1..] {
        assert!(url.starts_with(&format!("{origin}/")), "a request to another origin: {url}");
        assert!(!url.contains(KEY), "the key in a URL: {url}");
    }
    // The key is in the tab's session storage only.
    let stored =
        c.execute("return [sessionStorage.length, localStorage.length, document.cookie]", vec![]).await.unwrap();
    assert_eq!(stored, json!([1, 0, ""]));
    c.close().await.unwrap();
    assert!(!server.stderr().contains(KEY), "the key was logged");
}
