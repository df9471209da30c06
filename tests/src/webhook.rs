//! A webhook receiver for the event export tests: a Python process (not our code) that verifies signatures,
//! fails or hangs a given share of requests, and records every event it confirmed.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The Python webhook receiver (tests/webhook/receiver.py, checks signatures), killed on drop.
pub struct Receiver {
    child: Child,
    /// Its loopback port.
    pub port: u16,
    events: PathBuf,
    bad: PathBuf,
}

impl Receiver {
    /// Start it: events confirmed go to a file in `dir`; `fail` of the requests are answered 500, `hang` of
    /// them hang `hang_secs` seconds first.
    pub fn start(dir: &Path, secret: &str, fail: f64, hang: f64, hang_secs: f64) -> Receiver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("webhook/receiver.py");
        let (events, bad) = (dir.join("received.jsonl"), dir.join("bad_signatures"));
        let mut child = Command::new("python3")
            .arg(script)
            .args([secret, &events.display().to_string(), &bad.display().to_string()])
            .args([fail.to_string(), hang.to_string(), hang_secs.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the webhook receiver");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().expect("receiver prints its port");
        Receiver { child, port, events, bad }
    }

    /// Every event the receiver confirmed (one per line, duplicates included).
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Requests whose signature did not verify.
    pub fn bad_signatures(&self) -> usize {
        std::fs::read_to_string(&self.bad).unwrap_or_default().lines().count()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
