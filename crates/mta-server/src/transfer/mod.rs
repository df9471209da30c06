//! Queue transfer (`POST /api/v1/queue/transfer`): move this node's queued messages to a peer over its HTTP
//! API. The engine claims and reads the messages ([`mta_core::transfer`]); this module batches them into
//! import requests, keeps a few requests in flight, removes what the peer acknowledged, and keeps the job's
//! progress for `GET /api/v1/queue/transfer/{id}`.
//!
//! - [`wire`]: the import request and answer; [`peer`]: the HTTP client.
//! - A message leaves only after the peer answered that it is durable there. A request that fails is tried
//!   again a few times, then the job stops as `failed` with the messages still here (run it again).

pub mod peer;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mta_core::transfer::Parcel;
use mta_core::Engine;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinSet;
use utoipa::ToSchema;

use self::peer::{Peer, PeerError};

/// Most messages per import request.
pub const BATCH_MESSAGES: usize = 500;
/// Most message bytes per import request (a larger single message goes alone).
pub const BATCH_BYTES: u64 = 4 << 20;
/// Import requests in flight at once (the peer's group commit takes several together).
pub const PIPELINE: usize = 4;
/// Tries of one import request before the job fails.
const TRIES: u32 = 4;
/// Passes over the spool: messages being delivered during a pass are taken by a later one.
const PASSES: u32 = 5;
/// Finished jobs remembered for status queries.
const KEEP_JOBS: usize = 100;

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const FAILED: u8 = 2;

/// One transfer's progress.
#[derive(Debug, Default)]
struct Job {
    state: AtomicU8,
    moved: AtomicU64,
    failed: AtomicU64,
    error: Mutex<Option<String>>,
}

/// `GET /api/v1/queue/transfer/{transfer_id}` body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransferStatus {
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    /// Messages the peer acknowledged as durable (and removed here).
    pub moved: u64,
    /// Messages that could not be moved (they stay queued here).
    pub failed: u64,
    /// Why the transfer failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What to move, and where.
#[derive(Debug, Clone)]
pub struct TransferRequest {
    /// The peer's API base URL.
    pub to: String,
    /// The peer's API key.
    pub token: String,
    /// Only this destination domain (lower case), or everything.
    pub domain: Option<String>,
}

/// Why a transfer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The peer URL is unusable.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// One is running already.
    #[error("a transfer is already running ({0})")]
    Running(String),
}

/// Jobs by id, and their ids oldest first (to forget the oldest beyond [`KEEP_JOBS`]).
type Jobs = (HashMap<String, Arc<Job>>, VecDeque<String>);

/// The node's transfers: started, running and recently finished.
#[derive(Debug, Default)]
pub struct Transfers {
    jobs: Mutex<Jobs>,
}

impl Transfers {
    /// Start moving queued messages as `req` says; the id to follow it with.
    pub fn start(self: &Arc<Self>, engine: Engine, req: TransferRequest) -> Result<String, StartError> {
        let peer = Peer::new(&req.to, &req.token)?;
        let id = format!("t{:x}", rand::random::<u64>());
        let job = Arc::new(Job::default());
        {
            let mut jobs = self.jobs.lock();
            if let Some((running, _)) = jobs.0.iter().find(|(_, j)| j.state.load(Ordering::Acquire) == RUNNING) {
                return Err(StartError::Running(running.clone()));
            }
            jobs.0.insert(id.clone(), job.clone());
            jobs.1.push_back(id.clone());
            while jobs.1.len() > KEEP_JOBS {
                if let Some(old) = jobs.1.pop_front() {
                    jobs.0.remove(&old);
                }
            }
        }
        tracing::info!(transfer = %id, to = %req.to, domain = ?req.domain, "queue transfer started");
        metrics::gauge!("mta_transfer_running").increment(1.0);
        let tid = id.clone();
        tokio::spawn(async move {
            let result = run(&engine, &peer, req.domain, &job).await;
            match result {
                Ok(()) => {
                    job.state.store(DONE, Ordering::Release);
                    tracing::info!(transfer = %tid, moved = job.moved.load(Ordering::Relaxed), "queue transfer done");
                }
                Err(e) => {
                    *job.error.lock() = Some(e.clone());
                    job.state.store(FAILED, Ordering::Release);
                    tracing::error!(transfer = %tid, error = %e, moved = job.moved.load(Ordering::Relaxed), "queue transfer failed");
                }
            }
            metrics::gauge!("mta_transfer_running").decrement(1.0);
        });
        Ok(id)
    }

    /// A job's progress.
    pub fn status(&self, id: &str) -> Option<TransferStatus> {
        let job = self.jobs.lock().0.get(id).cloned()?;
        let state = match job.state.load(Ordering::Acquire) {
            RUNNING => "running",
            DONE => "done",
            _ => "failed",
        };
        let error = job.error.lock().clone();
        Some(TransferStatus {
            state,
            moved: job.moved.load(Ordering::Relaxed),
            failed: job.failed.load(Ordering::Relaxed),
            error,
        })
    }
}

/// Walk the spool (a few passes, for messages that were being delivered), keeping up to [`PIPELINE`]
/// requests in flight.
async fn run(engine: &Engine, peer: &Peer, domain: Option<String>, job: &Arc<Job>) -> Result<(), String> {
    let mut inflight: JoinSet<Result<(), String>> = JoinSet::new();
    let mut first_error: Option<String> = None;
    for pass in 0..PASSES {
        let mut after = None;
        let mut busy = 0usize;
        loop {
            if first_error.is_some() {
                break;
            }
            let (parcels, skipped, next) = engine
                .transfer_page(after.clone(), BATCH_MESSAGES, BATCH_BYTES, domain.clone())
                .await
                .map_err(|e| e.to_string())?;
            busy += skipped;
            if !parcels.is_empty() {
                while inflight.len() >= PIPELINE {
                    note(inflight.join_next().await, &mut first_error);
                }
                let (engine, peer, job) = (engine.clone(), peer.clone(), job.clone());
                inflight.spawn(async move { send(&engine, &peer, parcels, &job).await });
            }
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        while !inflight.is_empty() {
            note(inflight.join_next().await, &mut first_error);
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if busy == 0 {
            return Ok(());
        }
        tracing::info!(pass, busy, "messages being delivered were skipped; another pass");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

fn note(joined: Option<Result<Result<(), String>, tokio::task::JoinError>>, first_error: &mut Option<String>) {
    let failed = match joined {
        Some(Ok(Ok(()))) | None => return,
        Some(Ok(Err(e))) => e,
        Some(Err(e)) => format!("transfer task failed: {e}"),
    };
    first_error.get_or_insert(failed);
}

/// Send one batch (tried again on transient failures), then remove what the peer acknowledged.
async fn send(engine: &Engine, peer: &Peer, parcels: Vec<Parcel>, job: &Job) -> Result<(), String> {
    let n = parcels.len() as u64;
    metrics::gauge!("mta_transfer_in_progress").increment(n as f64);
    let result = send_inner(engine, peer, parcels, job).await;
    metrics::gauge!("mta_transfer_in_progress").decrement(n as f64);
    if result.is_err() {
        job.failed.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("mta_transfer_failed_total").increment(n);
    }
    result
}

async fn send_inner(engine: &Engine, peer: &Peer, parcels: Vec<Parcel>, job: &Job) -> Result<(), String> {
    // Encoding hundreds of bodies as base64 JSON is CPU work: off the async workers.
    let (body, parcels) = tokio::task::spawn_blocking(move || {
        let req = wire::ImportRequest { messages: parcels.iter().map(wire::to_wire).collect() };
        (serde_json::to_vec(&req).map(bytes::Bytes::from), parcels)
    })
    .await
    .map_err(|e| e.to_string())?;
    let body = body.map_err(|e| e.to_string())?;
    let mut delay = Duration::from_millis(250);
    let mut tries = 0;
    let answer = loop {
        tries += 1;
        match peer.import(body.clone()).await {
            Ok(a) => break a,
            Err(e) if e.is_transient() && tries < TRIES => {
                tracing::warn!(error = %e, tries, "import request failed; trying again");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    if answer.results.len() != parcels.len()
        || answer.results.iter().zip(&parcels).any(|(r, p)| r.id != p.source_id.as_str())
    {
        return Err("the peer's answer does not match the request".into());
    }
    let n = parcels.len() as u64;
    // Every row is `stored` or `duplicate`: durable on the peer either way.
    engine.transfer_done(parcels).await.map_err(|e| format!("removing moved messages: {e}"))?;
    job.moved.fetch_add(n, Ordering::Relaxed);
    metrics::counter!("mta_transfer_moved_total").increment(n);
    Ok(())
}
