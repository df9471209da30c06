//! Bodies staged while they arrive: sealed with a head in front, committed with their record, read back
//! byte-exact; never left behind when abandoned.

mod common;

use common::{open, record, segment_files};
use mta_spool::Op;

#[tokio::test]
async fn a_sealed_body_reads_back_as_head_plus_body_and_its_file_goes_with_the_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path());
    let before = segment_files(dir.path());
    let id = spool.next_id();
    let mut staged = spool.stage_body(&id, 4096).expect("stage");
    let mut body = Vec::new();
    for i in 0..1000u32 {
        let line = format!("line {i} of a large body\r\n");
        staged.append(line.as_bytes()).expect("append");
        body.extend_from_slice(line.as_bytes());
    }
    assert_eq!(staged.read_at(0, 10).expect("read back"), &body[..10]);
    let head = b"Received: by test\r\nSubject: big\r\n\r\n";
    let sealed = staged.seal(head).expect("seal");
    let stored = spool.commit_returning(vec![Op::PutSealed { record: record(id.clone()), body: sealed }]).await;
    let stored = stored.expect("commit").pop().expect("record");
    assert_eq!(stored.body.len, (head.len() + body.len()) as u64);
    let mut want = head.to_vec();
    want.extend_from_slice(&body);
    assert_eq!(spool.read_body(&stored).await.expect("read"), want);
    assert_eq!(segment_files(dir.path()).len(), before.len() + 1, "one file for the staged body");

    // Survives a restart, then goes away with its message.
    drop(spool);
    let spool = open(dir.path());
    let got = spool.get(&id).await.expect("get").expect("present");
    assert_eq!(spool.read_body(&got).await.expect("read after restart"), want);
    spool.remove(&id).await.expect("remove");
    assert!(!segment_files(dir.path()).contains(&format!("{:016x}.seg", got.body.segment)));
}

#[tokio::test]
async fn abandoned_staged_bodies_leave_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path());
    let before = segment_files(dir.path());
    // Dropped while being written (client gone).
    let mut staged = spool.stage_body(&spool.next_id(), 1024).expect("stage");
    staged.append(b"partial\r\n").expect("append");
    drop(staged);
    assert_eq!(segment_files(dir.path()), before);
    // Sealed but never committed (the message was refused at the end).
    let staged = spool.stage_body(&spool.next_id(), 1024).expect("stage");
    drop(staged.seal(b"Subject: x\r\n\r\n").expect("seal"));
    assert_eq!(segment_files(dir.path()), before);
    // A head longer than the room is refused, and the file still goes.
    let staged = spool.stage_body(&spool.next_id(), 8).expect("stage");
    assert!(staged.seal(b"Subject: far too long for eight\r\n\r\n").is_err());
    assert_eq!(segment_files(dir.path()), before);
}

#[tokio::test]
async fn a_staged_file_left_by_a_crash_is_deleted_at_the_next_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path());
    let before = segment_files(dir.path());
    let mut staged = spool.stage_body(&spool.next_id(), 1024).expect("stage");
    staged.append(b"written before the crash\r\n").expect("append");
    let orphan: Vec<String> = segment_files(dir.path()).into_iter().filter(|f| !before.contains(f)).collect();
    assert_eq!(orphan.len(), 1);
    // A crash: neither the guard's drop nor a commit ever runs.
    std::mem::forget(staged);
    drop(spool);
    let spool = open(dir.path());
    let after = segment_files(dir.path());
    assert!(!after.contains(&orphan[0]), "orphan {orphan:?} kept: {after:?}");
    // New segments never reuse a number in use.
    let id = spool.next_id();
    let mut again = spool.stage_body(&id, 64).expect("stage after restart");
    again.append(&[b'x'; 100]).expect("append");
    let sealed = again.seal(b"").expect("seal");
    spool.commit(vec![Op::PutSealed { record: record(id), body: sealed }]).await.expect("commit");
}
