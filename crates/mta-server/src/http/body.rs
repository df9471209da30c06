//! Request bodies under two limits: a cap per request and a memory budget for the whole process.
//!
//! - The cap: a body announced (`Content-Length`) over it is refused with `413` before a byte of it is read;
//!   a body of unknown length (chunked) is read only until it passes the cap. The caller then answers with
//!   `Connection: close`, and hyper closes the connection instead of reading the rest.
//! - The budget ([`BodyBudget`], `http.max_body_memory`): every body is charged [`AMPLIFICATION`] times its
//!   size before it is read (by its `Content-Length`; a chunked body in growing steps as it arrives), and the
//!   charge is given back when the request's memory is gone (the [`Charge`] is dropped after the engine
//!   answered). Waiting for the budget is bounded by `http.body_memory_wait`, then
//!   `503 body_memory_exhausted` + `Retry-After`. One
//!   body's charge is capped at the whole budget, so the largest allowed request can still run alone.
//! - Slow bodies: each piece must come within [`IDLE_TIMEOUT`], the whole body within [`BODY_TIMEOUT_BASE`]
//!   plus one second per MiB, then `408`; a trickling client cannot hold its share of the budget for long.
//!
//! Chunked bodies that all wait for more budget while holding some cannot deadlock for long: the bounded
//! wait refuses them and gives their share back.

use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::error::ApiError;

/// Bytes of memory charged per body byte. Measured peaks of a raw injection: the body and the decoded
/// message (never larger than the body) while parsing; then, the body dropped, the message and the engine's
/// copy of it with its headers (a third copy while a DKIM signature is prepended).
pub const AMPLIFICATION: u64 = 3;
/// Longest wait for the next piece of a body.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for a whole body, plus one second per [`MIN_RATE`] bytes of it.
pub const BODY_TIMEOUT_BASE: Duration = Duration::from_secs(60);
/// Slowest body rate allowed beyond [`BODY_TIMEOUT_BASE`], bytes per second.
const MIN_RATE: u64 = 1 << 20;
/// Smallest step by which the charge of a body of unknown length grows (it then doubles).
const GROWTH_STEP: usize = 1 << 20;
/// `Retry-After` when the budget stays exhausted.
const RETRY_AFTER_SECS: u64 = 2;
/// Smallest budget: below it, ordinary requests would be refused.
const MIN_BUDGET: u64 = 1 << 20;

/// The process-wide memory budget of request bodies in flight, in KiB permits (a `u32` count of them covers
/// 4 TiB).
#[derive(Debug)]
pub struct BodyBudget {
    permits: Semaphore,
    total_kib: u32,
    wait: Duration,
}

impl BodyBudget {
    /// A budget of `bytes` (at least 1 MiB); a request waits at most `wait` for its share.
    pub fn new(bytes: u64, wait: Duration) -> Self {
        let total_kib = u32::try_from(bytes.max(MIN_BUDGET) / 1024).unwrap_or(u32::MAX);
        metrics::gauge!("mta_http_body_memory_limit_bytes").set(f64::from(total_kib) * 1024.0);
        BodyBudget { permits: Semaphore::new(total_kib as usize), total_kib, wait }
    }

    /// Refuse every new or waiting charge from now on (graceful stop: nobody waits for memory that is only
    /// needed by requests we no longer take).
    pub fn close(&self) {
        self.permits.close();
    }

    /// KiB charged for a body of `bytes`.
    fn kib_for(&self, bytes: usize) -> u32 {
        let kib = (bytes as u64).saturating_mul(AMPLIFICATION).div_ceil(1024);
        u32::try_from(kib).unwrap_or(u32::MAX).min(self.total_kib)
    }

    fn publish(&self) {
        let used = self.total_kib as usize - self.permits.available_permits().min(self.total_kib as usize);
        metrics::gauge!("mta_http_body_memory_bytes").set(used as f64 * 1024.0);
    }

    async fn acquire(&self, kib: u32) -> Result<SemaphorePermit<'_>, ApiError> {
        match tokio::time::timeout(self.wait, self.permits.acquire_many(kib)).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(ApiError::unavailable("shutting_down", "the node is stopping; retry elsewhere", 5)),
            Err(_) => {
                metrics::counter!("mta_http_body_memory_refusals_total").increment(1);
                Err(ApiError::unavailable(
                    "body_memory_exhausted",
                    "too many large requests are in flight (request body memory budget); retry later",
                    RETRY_AFTER_SECS,
                ))
            }
        }
    }

    /// Read `body` whole, within the cap of `cap` bytes and under this budget: the bytes and their charge.
    pub async fn read(&self, mut body: Body, cap: usize) -> Result<(Vec<u8>, Charge<'_>), ApiError> {
        let hint = body.size_hint();
        if hint.lower() > cap as u64 {
            return Err(too_large(cap));
        }
        // With `Content-Length` (at most the cap, checked above) the whole charge and buffer come first.
        let expected = hint.exact().and_then(|n| usize::try_from(n).ok());
        let mut charge = Charge { budget: self, permit: None, covered: 0 };
        let mut buf = Vec::new();
        if let Some(n) = expected.filter(|&n| n > 0) {
            charge.cover(n).await?;
            buf.reserve_exact(n);
        }
        let allowed = BODY_TIMEOUT_BASE + Duration::from_secs(expected.unwrap_or(cap) as u64 / MIN_RATE);
        let deadline = Instant::now() + allowed;
        loop {
            let wake = (Instant::now() + IDLE_TIMEOUT).min(deadline);
            let frame = match tokio::time::timeout_at(wake, body.frame()).await {
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        "the request body did not arrive in time",
                    ))
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_body",
                        format!("cannot read the body: {e}"),
                    ))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            // Trailers carry nothing we use.
            let Ok(data) = frame.into_data() else { continue };
            let len = buf.len().saturating_add(data.len());
            if len > cap {
                return Err(too_large(cap));
            }
            if len > charge.covered {
                // Unknown length: grow the charge (and the buffer with it) by doubling, not per piece.
                let target = len.max(charge.covered.saturating_mul(2)).max(GROWTH_STEP).min(cap);
                charge.cover(target).await?;
                buf.reserve_exact(target - buf.len());
            }
            buf.extend_from_slice(&data);
        }
        Ok((buf, charge))
    }
}

/// `413 too_large` for a body over `cap` bytes.
pub fn too_large(cap: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the request body is larger than {cap} bytes"))
        .close_connection()
}

/// The share of the budget one request holds; given back when dropped.
#[derive(Debug)]
pub struct Charge<'a> {
    budget: &'a BodyBudget,
    permit: Option<SemaphorePermit<'a>>,
    /// Body bytes the permit covers.
    covered: usize,
}

impl Charge<'_> {
    /// Hold enough of the budget for a body of `bytes`.
    async fn cover(&mut self, bytes: usize) -> Result<(), ApiError> {
        let want = self.budget.kib_for(bytes);
        let held = self.permit.as_ref().map_or(0, |p| u32::try_from(p.num_permits()).unwrap_or(u32::MAX));
        if want > held {
            let more = self.budget.acquire(want - held).await?;
            match &mut self.permit {
                Some(permit) => permit.merge(more),
                None => self.permit = Some(more),
            }
            self.budget.publish();
        }
        self.covered = self.covered.max(bytes);
        Ok(())
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.budget.publish();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use hyper::body::Frame;

    use super::*;

    /// A body of unknown length (like a chunked one), in the given pieces.
    struct Pieces(VecDeque<Bytes>);

    impl HttpBody for Pieces {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunked(pieces: usize, size: usize) -> Body {
        Body::new(Pieces((0..pieces).map(|_| Bytes::from(vec![b'x'; size])).collect()))
    }

    const MIB: usize = 1 << 20;

    #[tokio::test]
    async fn announced_oversize_is_refused_without_charge() {
        let budget = BodyBudget::new(8 << 20, Duration::from_millis(50));
        let e = budget.read(Body::from(vec![b'x'; 2048]), 1024).await.unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.close);
        assert_eq!(budget.permits.available_permits(), 8192);
    }

    #[tokio::test]
    async fn chunked_is_charged_as_it_grows_and_refused_past_the_cap() {
        let budget = BodyBudget::new(64 << 20, Duration::from_millis(50));
        let (bytes, charge) = budget.read(chunked(3, 700 << 10), 4 * MIB).await.unwrap();
        assert_eq!(bytes.len(), 2100 << 10);
        // Charged in doubling steps (1 MiB, then 2, then 4 capped at the cap), times the amplification.
        assert_eq!(charge.covered, 4 * MIB);
        assert_eq!(budget.permits.available_permits(), 65536 - 3 * 4096);
        drop(charge);
        assert_eq!(budget.permits.available_permits(), 65536);
        let e = budget.read(chunked(10, MIB), 4 * MIB).await.unwrap_err();
        assert_eq!((e.status, e.close), (StatusCode::PAYLOAD_TOO_LARGE, true));
        assert_eq!(budget.permits.available_permits(), 65536, "a refused body gives its charge back");
    }

    #[tokio::test]
    async fn an_exhausted_budget_answers_503_after_the_wait() {
        let budget = BodyBudget::new(4 << 20, Duration::from_millis(50));
        // 2 MiB charged 6 MiB: capped at the whole budget.
        let (_bytes, held) = budget.read(Body::from(vec![b'x'; 2 * MIB]), 8 * MIB).await.unwrap();
        assert_eq!(budget.permits.available_permits(), 0);
        let e = budget.read(Body::from(vec![b'x'; 100]), 8 * MIB).await.unwrap_err();
        assert_eq!(
            (e.status, e.code, e.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, "body_memory_exhausted", Some(2))
        );
        drop(held);
        let (bytes, _charge) = budget.read(Body::from(vec![b'x'; 3 * MIB]), 8 * MIB).await.unwrap();
        assert_eq!(bytes.len(), 3 * MIB);
        budget.close();
        let e = budget.read(Body::from(vec![b'x'; 100]), 8 * MIB).await.unwrap_err();
        assert_eq!(e.code, "shutting_down");
    }
}
