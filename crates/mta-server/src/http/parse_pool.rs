//! A small pool of threads for the CPU-heavy part of a request (parsing a large body, building MIME), at a
//! lower CPU priority than the async workers.
//!
//! Why not `spawn_blocking`: its threads run at the workers' priority, so on a busy machine the kernel shares
//! the CPUs evenly between parsing and the event loop, and health checks wait behind bodies. Here the threads
//! are reniced by [`NICE_INCREMENT`] (Linux priorities are per thread): the async workers win the CPU whenever
//! both want it, parsing takes what is left. One thread per CPU (more would only share the CPUs), and a
//! bounded queue in front: a job waits at most the given time for a place, then the request gets `503`.
//!
//! A job, once queued, is not timed out: it is finite CPU work, and the request's body memory is only given
//! back once the job (which owns the body) is done.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// How much lower than the process the pool threads run (nice values: +10 is about a tenth of the CPU
/// share of a nice-0 thread when both are runnable).
pub const NICE_INCREMENT: i32 = 10;
/// Jobs that may wait for a thread, per thread.
const QUEUE_PER_THREAD: usize = 4;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job did not run.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No place in the queue within the wait: retry later.
    #[error("the parse pool stayed full")]
    Busy,
    /// The job panicked or the pool is gone (a bug: answer 500).
    #[error("the parse job failed")]
    Failed,
}

/// The pool; jobs go in through [`ParsePool::run`].
#[derive(Debug)]
pub struct ParsePool {
    jobs: SyncSender<(Job, OwnedSemaphorePermit)>,
    /// Places in the queue plus the threads: taken before a job is sent, given back when it finished.
    places: Arc<Semaphore>,
}

impl ParsePool {
    /// Start `threads` threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let places = threads * (1 + QUEUE_PER_THREAD);
        let (jobs, rx) = sync_channel::<(Job, OwnedSemaphorePermit)>(places);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("mta-parse-{i}")).spawn(move || worker(&rx))?;
        }
        Ok(ParsePool { jobs, places: Arc::new(Semaphore::new(places)) })
    }

    /// Run `f` on a pool thread, waiting at most `wait` for a place in the queue.
    pub async fn run<T, F>(&self, wait: Duration, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let place = match tokio::time::timeout(wait, self.places.clone().acquire_owned()).await {
            Ok(Ok(place)) => place,
            Ok(Err(_)) => return Err(PoolError::Failed),
            Err(_) => return Err(PoolError::Busy),
        };
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        // A place was taken, so the channel has room (its capacity is the number of places).
        match self.jobs.try_send((job, place)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(PoolError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(PoolError::Failed),
        }
        rx.await.map_err(|_| PoolError::Failed)
    }
}

fn worker(rx: &Mutex<Receiver<(Job, OwnedSemaphorePermit)>>) {
    lower_priority();
    loop {
        // One thread waits in `recv` while holding the lock, the others wait for the lock: same effect.
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((job, place)) = next else { return };
        // A panicking job drops its answer channel (the request gets 500); the thread goes on.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("HTTP parse job panicked");
        }
        drop(place);
    }
}

/// Renice the calling thread by [`NICE_INCREMENT`] (best effort: a failure leaves it at the process's
/// priority, which only costs the event loop some CPU on a busy machine).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid, getpriority and setpriority only read or change the calling thread's scheduling
        // priority; no memory is passed.
        let (tid, current) = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            (tid, libc::getpriority(libc::PRIO_PROCESS, tid))
        };
        let target = current.saturating_add(NICE_INCREMENT).min(19);
        // SAFETY: as above.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, target) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the parse thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_and_a_full_pool_answers_busy() {
        let pool = Arc::new(ParsePool::new(1).unwrap());
        assert_eq!(pool.run(Duration::from_secs(5), || 6 * 7).await.unwrap(), 42);
        // Fill the thread and the queue with jobs that wait for a signal, then one more cannot get in.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let mut blocked = Vec::new();
        for _ in 0..1 + QUEUE_PER_THREAD {
            let (pool, gate) = (pool.clone(), gate.clone());
            blocked.push(tokio::spawn(async move {
                pool.run(Duration::from_secs(5), move || {
                    let _ = gate.lock().map(|g| g.recv());
                })
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let busy = pool.run(Duration::from_millis(50), || ()).await;
        assert!(matches!(busy, Err(PoolError::Busy)), "{busy:?}");
        for _ in 0..1 + QUEUE_PER_THREAD {
            release.send(()).unwrap();
        }
        for job in blocked {
            assert!(job.await.unwrap().is_ok());
        }
        let failed = pool.run(Duration::from_secs(5), || -> u8 { panic!("a bug in a job") }).await;
        assert!(matches!(failed, Err(PoolError::Failed)), "{failed:?}");
        assert_eq!(pool.run(Duration::from_secs(5), || 1).await.unwrap(), 1, "the thread survived the panic");
    }
}
