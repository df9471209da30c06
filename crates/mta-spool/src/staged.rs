//! Large message bodies written to disk while they arrive, each in a segment file of its own.
//!
//! A receiver that does not want to hold a whole message in memory stages it: [`StagedBody::append`] writes
//! the bytes at their final place in a new segment file, leaving room at the front; [`StagedBody::seal`]
//! writes the *head* (our headers and the message's header section, known only at the end) into that room,
//! right before the body, with the segment frame header before it, and makes the file durable. The result is
//! an ordinary segment frame, so readers, checksums and live counts work as for any body. The sealed body is
//! committed with [`crate::Op::PutSealed`] in the same round as its record.
//!
//! A staged file that is never committed (client gone, message refused, crash) is deleted: by the last drop
//! of its guard, or at the next start (a segment no record points into).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::SpoolError;
use crate::id::QueueId;
use crate::record::BodyLocation;
use crate::segment::{encode_header_parts, fsync_path, header_len, Segments};
use crate::stats::Stats;

/// Deletes an uncommitted staged file when the last handle to it goes away.
#[derive(Debug)]
struct Guard {
    path: PathBuf,
    committed: AtomicBool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.committed.load(Ordering::Acquire) {
            match std::fs::remove_file(&self.path) {
                Ok(()) => tracing::debug!(path = %self.path.display(), "deleted uncommitted staged body"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "could not delete staged body"),
            }
        }
    }
}

/// A body being written to its own segment file. Blocking I/O: use it from a blocking thread.
#[derive(Debug)]
pub struct StagedBody {
    id: QueueId,
    segment: u64,
    file: File,
    /// Octets reserved in front of the body for the frame header and the head.
    room: u64,
    /// Body octets appended so far (they start at offset `room`).
    len: u64,
    crc: crc32fast::Hasher,
    dir: PathBuf,
    stats: Arc<Stats>,
    guard: Arc<Guard>,
}

/// A staged body made durable by [`StagedBody::seal`], ready for [`crate::Op::PutSealed`].
#[derive(Debug, Clone)]
pub struct SealedBody {
    pub(crate) location: BodyLocation,
    guard: Arc<Guard>,
}

impl SealedBody {
    /// Where the body is (segment, offset, length and checksum of head + body).
    pub fn location(&self) -> BodyLocation {
        self.location
    }

    /// The record that points at it is durable: the file must now outlive this handle.
    pub(crate) fn mark_committed(&self) {
        self.guard.committed.store(true, Ordering::Release);
    }
}

impl StagedBody {
    /// A new staged body for message `id` in segment `segment`, with `room` octets free in front.
    pub(crate) fn create(segments: &Segments, stats: Arc<Stats>, id: &QueueId, room: u64) -> Result<Self, SpoolError> {
        let segment = segments.allocate();
        let path = segments.path_of(segment);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| SpoolError::io(format!("create staged body {}", path.display()), e))?;
        let guard = Arc::new(Guard { path, committed: AtomicBool::new(false) });
        Ok(StagedBody {
            id: id.clone(),
            segment,
            file,
            room: room + header_len(id.as_str().len()),
            len: 0,
            crc: crc32fast::Hasher::new(),
            dir: segments.dir().to_path_buf(),
            stats,
            guard,
        })
    }

    /// The message this body belongs to.
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Body octets written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Nothing written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data` to the body.
    pub fn append(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.file
            .write_all_at(data, self.room + self.len)
            .map_err(|e| SpoolError::io(format!("write staged body {}", self.segment), e))?;
        self.crc.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// Reads `len` body octets from `offset` (for stages that need the content back, e.g. DKIM).
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, SpoolError> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, self.room + offset)
            .map_err(|e| SpoolError::io(format!("read staged body {}", self.segment), e))?;
        Ok(buf)
    }

    /// Octets that [`StagedBody::seal`] can put in front of the body.
    pub fn head_room(&self) -> u64 {
        self.room - header_len(self.id.as_str().len())
    }

    /// Writes `head` right before the body and the frame header before it, then makes the file and its
    /// directory entry durable. Fails with [`SpoolError::InvalidConfig`] when `head` is longer than the room.
    pub fn seal(self, head: &[u8]) -> Result<SealedBody, SpoolError> {
        let hlen = header_len(self.id.as_str().len());
        let head_len = head.len() as u64;
        if head_len > self.room - hlen {
            return Err(SpoolError::InvalidConfig(format!(
                "head of {head_len} octets does not fit the {} reserved",
                self.room - hlen
            )));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(head);
        crc.combine(&self.crc);
        let crc = crc.finalize();
        let total = head_len + self.len;
        let body_start = self.room - head_len;
        let mut frame = encode_header_parts(&self.id, total, crc);
        frame.extend_from_slice(head);
        self.file
            .write_all_at(&frame, body_start - hlen)
            .map_err(|e| SpoolError::io(format!("write staged head {}", self.segment), e))?;
        self.file.sync_data().map_err(|e| SpoolError::io(format!("fdatasync staged body {}", self.segment), e))?;
        self.stats.fsync();
        // The file was created by this body: its name must be durable before a record points at it.
        fsync_path(&self.dir, &self.stats)?;
        Ok(SealedBody {
            location: BodyLocation { segment: self.segment, offset: body_start, len: total, crc32: crc },
            guard: self.guard,
        })
    }
}
