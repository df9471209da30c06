//! Receiving a message whose content arrives in pieces (SMTP DATA and BDAT), with bounded memory.
//!
//! An [`Incoming`] keeps a message in memory while it is small. Once it outgrows
//! [`EngineConfig::memory_per_message`](crate::EngineConfig::memory_per_message), or the process-wide
//! [`BodyBudget`] has no room for it, the body moves to a staged spool file and only the header section
//! stays in memory (our header fields go in front of it at the end, spoofed Authentication-Results come out
//! of it). So the memory a message in flight costs is bounded whatever its size: its header section (at most
//! [`MAX_HEADER_SECTION`]) plus one write buffer of [`STAGE_WRITE_CHUNK`].
//!
//! Stages that need the whole message at once (inbound verification, DKIM signing) read it back with
//! [`Incoming::content`] under the same budget, so only as many whole messages are in memory at a time as
//! the budget allows. The acknowledgement still comes after the fsync that covers everything.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mta_spool::{QueueId, SpoolError, StagedBody};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::strip_spoofed_results;
use crate::engine::{Engine, Injection, StoredBody};
use crate::error::InjectError;
use crate::reception::received_header;
use crate::Accepted;

/// Budget accounting unit.
const UNIT: usize = 64 << 10;
/// Longest header section accepted: it stays in memory until the message is committed.
pub const MAX_HEADER_SECTION: usize = 1 << 20;
/// Writes to a staged body are gathered to this size before one trip to the blocking pool.
pub const STAGE_WRITE_CHUNK: usize = 128 << 10;
/// Room reserved in front of a staged body for our own fields (DKIM-Signature, Authentication-Results,
/// `Received:`).
const PREFIX_ROOM: u64 = 32 << 10;

/// The process-wide budget for message bytes held in memory while messages are received (and read back
/// whole for verification or signing). Shared by every entry point of one engine.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    units: Arc<Semaphore>,
    total_units: u32,
}

impl BodyBudget {
    /// A budget of `bytes` (at least one 64 KiB unit).
    pub fn new(bytes: u64) -> BodyBudget {
        let total_units = u32::try_from((bytes as usize).div_ceil(UNIT).max(1)).unwrap_or(u32::MAX >> 4);
        let total_units = total_units.min(Semaphore::MAX_PERMITS as u32);
        BodyBudget { units: Arc::new(Semaphore::new(total_units as usize)), total_units }
    }

    /// Bytes in use right now.
    pub fn in_use(&self) -> u64 {
        (self.total_units as u64 - self.units.available_permits() as u64) * UNIT as u64
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> u64 {
        self.total_units as u64 * UNIT as u64
    }

    fn units_for(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX).min(self.total_units)
    }

    /// Room for `bytes` now, or `None`.
    fn try_take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.units).try_acquire_many_owned(self.units_for(bytes)).ok()
    }

    /// Room for `bytes`, waiting for it (a request larger than the budget gets the whole budget).
    pub async fn take(&self, bytes: usize) -> Result<BudgetPermit, InjectError> {
        let permit = Arc::clone(&self.units)
            .acquire_many_owned(self.units_for(bytes))
            .await
            .map_err(|_| InjectError::ShuttingDown)?;
        Ok(BudgetPermit { _permit: permit })
    }
}

/// Budget held until dropped.
#[derive(Debug)]
pub struct BudgetPermit {
    _permit: OwnedSemaphorePermit,
}

/// A whole message read back for a stage that needs it at once; its budget is released on drop.
#[derive(Debug)]
pub struct WholeContent {
    bytes: Bytes,
    _permit: Option<BudgetPermit>,
}

impl WholeContent {
    /// The bytes (a cheap clone).
    pub fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }
}

impl std::ops::Deref for WholeContent {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A message being received: feed it with [`Incoming::write`], then [`Incoming::finish`]. Dropping it
/// abandons the message and removes whatever was staged.
pub struct Incoming {
    engine: Engine,
    id: QueueId,
    budget: BodyBudget,
    /// Everything received while the message is in memory; only the header section once staged.
    mem: BytesMut,
    /// Budget held for `mem` (whole units), and how many units that is.
    held: Option<OwnedSemaphorePermit>,
    held_units: u32,
    /// Offset just past the empty line that ends the header section, once seen.
    header_end: Option<usize>,
    /// Where the search for that empty line resumes.
    scanned: usize,
    /// The body on disk once the message outgrew memory, and writes not yet sent to it.
    staged: Option<StagedBody>,
    pending: BytesMut,
    /// Content octets received.
    size: u64,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("id", &self.id)
            .field("size", &self.size)
            .field("staged", &self.staged.is_some())
            .finish_non_exhaustive()
    }
}

impl Incoming {
    pub(crate) fn new(engine: Engine, budget: BodyBudget) -> Incoming {
        let id = engine.spool().next_id();
        Incoming {
            engine,
            id,
            budget,
            mem: BytesMut::new(),
            held: None,
            held_units: 0,
            header_end: None,
            scanned: 0,
            staged: None,
            pending: BytesMut::new(),
            size: 0,
        }
    }

    /// The queue id the message will have.
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Content octets received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The body went to disk.
    pub fn is_staged(&self) -> bool {
        self.staged.is_some()
    }

    /// The next content bytes. Fails when the message grows past the size limit, its header section past
    /// [`MAX_HEADER_SECTION`], or the staged file cannot be written; the message is then abandoned.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), InjectError> {
        self.size += chunk.len() as u64;
        let max = self.engine.config().max_message_size;
        if self.size > max {
            return Err(InjectError::TooLarge { size: self.size, max });
        }
        if self.staged.is_some() {
            self.pending.extend_from_slice(chunk);
            if self.pending.len() >= STAGE_WRITE_CHUNK {
                self.flush().await?;
            }
            return Ok(());
        }
        self.mem.extend_from_slice(chunk);
        self.find_header_end();
        let fits = self.mem.len() <= self.engine.config().memory_per_message && self.reserve();
        if !fits {
            match self.header_end {
                Some(_) => self.spill().await?,
                None if self.mem.len() > MAX_HEADER_SECTION => return Err(InjectError::HeaderTooLarge),
                // The header section must be whole before the body can go to disk: keep it, over budget.
                None => {}
            }
        }
        Ok(())
    }

    /// Holds budget for all of `mem`; `false` when the budget has no room.
    fn reserve(&mut self) -> bool {
        let want = u32::try_from(self.mem.len().div_ceil(UNIT)).unwrap_or(u32::MAX);
        if want <= self.held_units {
            return true;
        }
        match self.budget.try_take((want - self.held_units) as usize * UNIT) {
            Some(more) => {
                match self.held.as_mut() {
                    Some(held) => held.merge(more),
                    None => self.held = Some(more),
                }
                self.held_units = want;
                true
            }
            None => false,
        }
    }

    fn find_header_end(&mut self) {
        if self.header_end.is_some() {
            return;
        }
        if self.mem.starts_with(b"\r\n") {
            self.header_end = Some(2);
            return;
        }
        let from = self.scanned.saturating_sub(3);
        if let Some(i) = memchr::memmem::find(&self.mem[from..], b"\r\n\r\n") {
            self.header_end = Some(from + i + 4);
        }
        self.scanned = self.mem.len();
    }

    /// Moves the body (everything after the header section) to a staged file.
    async fn spill(&mut self) -> Result<(), InjectError> {
        let Some(end) = self.header_end else {
            return Ok(());
        };
        let body = self.mem.split_off(end).freeze();
        let (spool, id) = (self.engine.spool().clone(), self.id.clone());
        let room = PREFIX_ROOM + end as u64;
        let staged = tokio::task::spawn_blocking(move || -> Result<StagedBody, SpoolError> {
            let mut staged = spool.stage_body(&id, room)?;
            staged.append(&body)?;
            Ok(staged)
        })
        .await
        .map_err(|e| InjectError::Spool(SpoolError::io("stage body", std::io::Error::other(e.to_string()))))??;
        self.staged = Some(staged);
        // Keep budget for the header section only.
        self.held = None;
        self.held_units = 0;
        self.reserve();
        metrics::counter!("mta_messages_staged_total").increment(1);
        Ok(())
    }

    /// Sends gathered writes to the staged file.
    async fn flush(&mut self) -> Result<(), InjectError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = self.pending.split().freeze();
        self.with_staged(move |s| s.append(&data)).await
    }

    /// Runs `f` on the staged body on the blocking pool.
    async fn with_staged<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut StagedBody) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, InjectError> {
        let Some(mut staged) = self.staged.take() else {
            return Err(InjectError::Spool(SpoolError::Closed));
        };
        let (staged, result) = tokio::task::spawn_blocking(move || {
            let r = f(&mut staged);
            (staged, r)
        })
        .await
        .map_err(|e| InjectError::Spool(SpoolError::io("staged body", std::io::Error::other(e.to_string()))))?;
        self.staged = Some(staged);
        Ok(result?)
    }

    /// The whole content as received (for inbound verification), read back under the budget when staged.
    pub async fn content(&mut self) -> Result<WholeContent, InjectError> {
        if self.staged.is_none() {
            return Ok(WholeContent { bytes: Bytes::copy_from_slice(&self.mem), _permit: None });
        }
        self.flush().await?;
        let permit = self.budget.take(self.size as usize).await?;
        let header = Bytes::copy_from_slice(&self.mem);
        let bytes = self
            .with_staged(move |s| {
                let len = usize::try_from(s.len()).map_err(|_| SpoolError::Closed)?;
                let mut whole = Vec::with_capacity(header.len() + len);
                whole.extend_from_slice(&header);
                whole.extend_from_slice(&s.read_at(0, len)?);
                Ok(Bytes::from(whole))
            })
            .await?;
        Ok(WholeContent { bytes, _permit: Some(permit) })
    }

    /// Makes the message durable with the envelope and reception details of `injection` (its `content` is
    /// ignored: the content is what was written). Returns after the fsync that covers it.
    pub async fn finish(mut self, mut injection: Injection) -> Result<Accepted, InjectError> {
        let engine = self.engine.clone();
        if self.staged.is_none() {
            injection.content = std::mem::take(&mut self.mem).freeze();
            return engine.inject_as(self.id.clone(), injection).await;
        }
        engine.check_accepting()?;
        engine.validate(&injection.sender, &injection.recipients, self.size)?;
        self.flush().await?;
        let config = engine.config();
        let single = (injection.recipients.len() == 1).then(|| injection.recipients[0].as_str());
        let received = received_header(
            injection.helo.as_deref(),
            injection.peer,
            &config.hostname,
            injection.protocol,
            self.id.as_str(),
            single,
        );
        let header_section = strip_spoofed_results(std::mem::take(&mut self.mem).freeze(), &config.hostname);
        let mut head = BytesMut::new();
        head.extend_from_slice(injection.auth_results.as_deref().unwrap_or("").as_bytes());
        head.extend_from_slice(received.as_bytes());
        head.extend_from_slice(&header_section);
        if injection.sign && engine.signer().is_some() {
            // Signing needs the message whole: read it back under the budget, one at a time per its size.
            self.mem = head.clone();
            let whole = self.content().await?;
            self.mem = BytesMut::new();
            if let Some(signature) = engine.signature(whole.bytes()).await? {
                let mut signed = BytesMut::with_capacity(signature.len() + head.len());
                signed.extend_from_slice(signature.as_bytes());
                signed.extend_from_slice(&head);
                head = signed;
            }
        }
        let head = head.freeze();
        let Some(staged) = self.staged.take() else {
            return Err(InjectError::Spool(SpoolError::Closed));
        };
        let sealed = tokio::task::spawn_blocking(move || staged.seal(&head))
            .await
            .map_err(|e| InjectError::Spool(SpoolError::io("seal body", std::io::Error::other(e.to_string()))))??;
        engine.commit_message(self.id.clone(), injection, StoredBody::Sealed(sealed), Vec::new()).await
    }
}
