//! Real crashes: a child process writes as fast as it can and is killed with SIGKILL at a random moment; every
//! write it saw acknowledged must be in the spool afterwards, byte for byte. Five rounds on the same spool, each
//! reopening what the previous kill left.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mta_spool::testing::crash_body;
use mta_spool::{QueueId, RecipientState, Spool, SpoolConfig};
use rand::Rng;

const ROUNDS: u64 = 5;
/// Longest wait for the child's first acknowledged put.
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the child's output to end after the kill.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the child acknowledged for one message.
struct Acked {
    seed: u64,
    counter: u64,
    len: u64,
    crc: u32,
}

#[derive(Default)]
struct Expected {
    puts: HashMap<String, Acked>,
    updated: HashSet<String>,
    /// Removal asked (it may or may not have happened).
    removing: HashSet<String>,
    /// Removal acknowledged.
    removed: HashSet<String>,
}

impl Expected {
    /// Take one complete output line of the child.
    fn take(&mut self, line: &str) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["P", id, seed, n, len, crc] => {
                let acked = Acked {
                    seed: seed.parse().expect("seed"),
                    counter: n.parse().expect("counter"),
                    len: len.parse().expect("len"),
                    crc: crc.parse().expect("crc"),
                };
                self.puts.insert(id.to_string(), acked);
            }
            ["U", id] => {
                self.updated.insert(id.to_string());
            }
            ["D", id] => {
                self.removing.insert(id.to_string());
            }
            ["R", id] => {
                self.removed.insert(id.to_string());
            }
            _ => panic!("unexpected child line {line:?}"),
        }
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut expected = Expected::default();
    let mut rng = rand::rng();
    for round in 1..=ROUNDS {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_spool-crash-child"))
            .arg(&path)
            .arg(round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    // A line cut by the kill has no newline: it was never fully acknowledged, ignore it.
                    Ok(_) if line.ends_with('\n') => {
                        if tx.send(line.clone()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => break,
                }
            }
        });
        let first = match rx.recv_timeout(FIRST_ACK_TIMEOUT) {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                panic!("round {round}: no acknowledged put from the child within {FIRST_ACK_TIMEOUT:?}: {e}");
            }
        };
        expected.take(&first);
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap child");
        assert!(!status.success(), "round {round}: child should have been killed, got {status}");
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut lines = 1;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    expected.take(&l);
                    lines += 1;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("round {round}: child output did not end"),
            }
        }
        reader.join().expect("reader thread");

        let checked = verify(&path, &expected, round);
        eprintln!("crash round {round}: {lines} acked lines, {checked} messages verified, {:?}", started.elapsed());
    }
}

/// Reopen the spool and check every acknowledged write; returns how many messages were checked.
fn verify(path: &std::path::Path, expected: &Expected, round: u64) -> usize {
    let spool = Spool::open(SpoolConfig::new(path, "verify")).expect("reopen after kill");
    let report = spool.scan(|_| {}).expect("scan");
    assert!(report.quarantined.is_empty(), "round {round}: quarantined {:?}", report.quarantined);
    let mut checked = 0;
    for (id, acked) in &expected.puts {
        let qid = QueueId::parse(id).expect("queue id");
        let stored = spool.get_blocking(&qid).expect("get");
        if expected.removed.contains(id) {
            assert!(stored.is_none(), "round {round}: {id} was removed (acked) but is back");
            continue;
        }
        let Some(record) = stored else {
            assert!(expected.removing.contains(id), "round {round}: acknowledged message {id} lost");
            continue;
        };
        let body = spool.read_body_blocking(&record).unwrap_or_else(|e| panic!("round {round}: body of {id}: {e}"));
        assert_eq!(body.len() as u64, acked.len, "round {round}: length of {id}");
        assert_eq!(crc32fast::hash(&body), acked.crc, "round {round}: crc of {id}");
        assert!(body == crash_body(acked.seed, acked.counter), "round {round}: bytes of {id}");
        if expected.updated.contains(id) {
            assert_eq!(record.recipients[0].state, RecipientState::Deferred, "round {round}: update of {id} lost");
        }
        checked += 1;
    }
    assert!(spool.len() >= checked, "round {round}: len {} < {checked}", spool.len());
    checked
}
