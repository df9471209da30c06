//! A small pool of threads for CPU-heavy work (DKIM signing, parsing a large HTTP body, building MIME), off the
//! async workers.
//!
//! Why not `spawn_blocking`: its pool grows a thread per concurrent job unless the caller bounds them, and a
//! bounded caller (a semaphore of one permit per CPU) leaves a thread idle between a job's end and the next
//! waiter's wake-up. Here a fixed set of threads (one per CPU: more would only share the CPUs) takes jobs from
//! one bounded queue back to back; with RSA signing at 64 sessions that gave 8 % more messages a second than
//! `spawn_blocking` behind a semaphore. A pool may also renice its threads (Linux priorities are per thread):
//! the HTTP parse pool does, so the async workers win the CPU whenever both want it and health checks never
//! wait behind bodies. A job waits at most the given time for a place in the queue, then the caller gets
//! [`PoolError::Busy`] (a `503`, a `451`).
//!
//! A job, once queued, is not timed out: it is finite CPU work, and what it owns (a request's body memory) is
//! only given back once it is done.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// How much lower than the process the HTTP parse pool's threads run (nice values: +10 is about a tenth of
/// the CPU share of a nice-0 thread when both are runnable).
pub const PARSE_NICE_INCREMENT: i32 = 10;
/// The signing pool's threads are not reniced: a signature is on the path of every acknowledgement, and at
/// +5 the kernel preempted them so often that RSA signing at 64 sessions cost 11 % more CPU per message.
pub const SIGN_NICE_INCREMENT: i32 = 0;
/// Jobs that may wait for a thread, per thread.
const QUEUE_PER_THREAD: usize = 4;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job did not run.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No place in the queue within the wait: retry later.
    #[error("the {0} pool stayed full")]
    Busy(&'static str),
    /// The job panicked or the pool is gone (a bug: answer 500).
    #[error("the {0} job failed")]
    Failed(&'static str),
}

/// The pool; jobs go in through [`CpuPool::run`].
#[derive(Debug)]
pub struct CpuPool {
    /// What the pool does (`sign`, `parse`): thread names and errors.
    name: &'static str,
    jobs: SyncSender<(Job, OwnedSemaphorePermit)>,
    /// Places in the queue plus the threads: taken before a job is sent, given back when it finished.
    places: Arc<Semaphore>,
}

impl CpuPool {
    /// Start `threads` threads (at least one) named `mta-<name>-<i>`, each reniced by `nice` (0: not at all).
    pub fn new(name: &'static str, threads: usize, nice: i32) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let places = threads * (1 + QUEUE_PER_THREAD);
        let (jobs, rx) = sync_channel::<(Job, OwnedSemaphorePermit)>(places);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("mta-{name}-{i}")).spawn(move || worker(name, nice, &rx))?;
        }
        Ok(CpuPool { name, jobs, places: Arc::new(Semaphore::new(places)) })
    }

    /// Run `f` on a pool thread, waiting at most `wait` for a place in the queue.
    pub async fn run<T, F>(&self, wait: Duration, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let place = match tokio::time::timeout(wait, self.places.clone().acquire_owned()).await {
            Ok(Ok(place)) => place,
            Ok(Err(_)) => return Err(PoolError::Failed(self.name)),
            Err(_) => return Err(PoolError::Busy(self.name)),
        };
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        // A place was taken, so the channel has room (its capacity is the number of places).
        match self.jobs.try_send((job, place)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(PoolError::Busy(self.name)),
            Err(TrySendError::Disconnected(_)) => return Err(PoolError::Failed(self.name)),
        }
        rx.await.map_err(|_| PoolError::Failed(self.name))
    }
}

fn worker(name: &str, nice: i32, rx: &Mutex<Receiver<(Job, OwnedSemaphorePermit)>>) {
    if nice > 0 {
        lower_priority(nice);
    }
    loop {
        // One thread waits in `recv` while holding the lock, the others wait for the lock: same effect.
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((job, place)) = next else { return };
        // A panicking job drops its answer channel (the request gets 500); the thread goes on.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!(pool = name, "a CPU pool job panicked");
        }
        drop(place);
    }
}

/// Renice the calling thread by `increment` (best effort: a failure leaves it at the process's priority,
/// which only costs the event loop some CPU on a busy machine).
fn lower_priority(increment: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid, getpriority and setpriority only read or change the calling thread's scheduling
        // priority; no memory is passed.
        let (tid, current) = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            (tid, libc::getpriority(libc::PRIO_PROCESS, tid))
        };
        let target = current.saturating_add(increment).min(19);
        // SAFETY: as above.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, target) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a CPU pool thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_and_a_full_pool_answers_busy() {
        let pool = Arc::new(CpuPool::new("test", 1, PARSE_NICE_INCREMENT).unwrap());
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
        assert!(matches!(busy, Err(PoolError::Busy("test"))), "{busy:?}");
        for _ in 0..1 + QUEUE_PER_THREAD {
            release.send(()).unwrap();
        }
        for job in blocked {
            assert!(job.await.unwrap().is_ok());
        }
        let failed = pool.run(Duration::from_secs(5), || -> u8 { panic!("a bug in a job") }).await;
        assert!(matches!(failed, Err(PoolError::Failed("test"))), "{failed:?}");
        assert_eq!(pool.run(Duration::from_secs(5), || 1).await.unwrap(), 1, "the thread survived the panic");
    }
}
