//! A spool can be open only once at a time.

mod common;

use mta_spool::{Spool, SpoolConfig, SpoolError};

/// The two tests run one at a time: a child forked by one holds every inherited descriptor (and so the other
/// test's `flock`) until it execs, which would make the other's re-open fail by chance.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_second_open_is_refused_until_the_first_is_dropped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let first = common::open(dir.path());
    match Spool::open(SpoolConfig::new(dir.path(), "other")) {
        Err(SpoolError::Locked(p)) => {
            assert_eq!(p, dir.path());
            let msg = SpoolError::Locked(p).to_string();
            assert!(msg.contains("locked"), "{msg}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(first);
    let _again = common::open(dir.path());
}

#[test]
fn another_process_gets_a_clear_locked_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let _held = common::open(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spool-crash-child"))
        .arg(dir.path())
        .arg("1")
        .output()
        .expect("run child");
    assert_eq!(out.status.code(), Some(1), "child should fail to open");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is locked by another process"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing may be acknowledged");
}
