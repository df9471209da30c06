//! Append-only body segment files: where message bytes live (sled only holds the small records).
//!
//! Files are `<spool>/bodies/<segment:016x>.seg`. Each entry is a frame:
//!
//! ```text
//! magic u32 LE | id length u16 LE | id bytes | body length u64 LE | crc32 of body u32 LE | body bytes
//! ```
//!
//! A record's [`BodyLocation`] points at the body bytes (the offset after the header) and repeats length and
//! checksum, so a read checks the header against the record and the bytes against the checksum: a torn or rotted
//! body is reported as corrupt, never returned.
//!
//! Only the committer thread appends (through its [`SegmentWriter`]); reads come from any thread through shared
//! read handles (`pread`). A live count per segment (records pointing into it) lets the committer delete a
//! non-active segment once nothing points into it any more, and only after the removals are durable.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::error::SpoolError;
use crate::id::QueueId;
use crate::record::BodyLocation;
use crate::stats::Stats;

/// First four bytes of every frame (`MSB1` read as little-endian bytes).
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"MSB1");

/// Length of a frame header for an id of `id_len` bytes.
pub fn header_len(id_len: usize) -> u64 {
    (4 + 2 + id_len + 8 + 4) as u64
}

/// The frame header of one body.
fn encode_header(id: &QueueId, body: &[u8]) -> Vec<u8> {
    encode_header_parts(id, body.len() as u64, crc32fast::hash(body))
}

/// The frame header of a body of `len` octets with checksum `crc`.
pub(crate) fn encode_header_parts(id: &QueueId, len: u64, crc: u32) -> Vec<u8> {
    let id = id.as_str().as_bytes();
    let mut h = Vec::with_capacity(header_len(id.len()) as usize);
    h.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    h.extend_from_slice(&(id.len() as u16).to_le_bytes());
    h.extend_from_slice(id);
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// File name of segment `num`.
fn file_name(num: u64) -> String {
    format!("{num:016x}.seg")
}

/// Open an existing file or directory and fsync it (directories: to make created or renamed entries durable).
pub(crate) fn fsync_path(path: &Path, stats: &Stats) -> Result<(), SpoolError> {
    let f = File::open(path).map_err(|e| SpoolError::io(format!("open {} for fsync", path.display()), e))?;
    f.sync_all().map_err(|e| SpoolError::io(format!("fsync {}", path.display()), e))?;
    stats.fsync();
    Ok(())
}

/// The segment being appended to; owned by the committer thread.
#[derive(Debug)]
pub(crate) struct SegmentWriter {
    /// Segment number.
    num: u64,
    /// Opened read-write; its cursor is at `len` unless `broken`.
    file: File,
    /// Bytes written so far.
    len: u64,
    /// A write failed: the cursor and the tail are unknown, so the next append starts a new segment.
    broken: bool,
}

impl SegmentWriter {
    /// Number of the active segment.
    pub(crate) fn num(&self) -> u64 {
        self.num
    }
}

/// The body segments of one spool: read handles and live counts, shared by every thread.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    segment_size: u64,
    stats: Arc<Stats>,
    /// Open read handles, opened lazily for old segments.
    readers: RwLock<HashMap<u64, Arc<File>>>,
    /// Records pointing into each known segment (including the active one at 0).
    live: Mutex<HashMap<u64, u64>>,
    /// The next unused segment number: rotations and staged bodies both take theirs from here.
    next: AtomicU64,
}

impl Segments {
    /// Open (creating) the `bodies` directory and list the segment numbers present.
    pub(crate) fn open(dir: PathBuf, segment_size: u64, stats: Arc<Stats>) -> Result<(Self, Vec<u64>), SpoolError> {
        fs::create_dir_all(&dir).map_err(|e| SpoolError::io(format!("create {}", dir.display()), e))?;
        let mut existing = Vec::new();
        let rd = fs::read_dir(&dir).map_err(|e| SpoolError::io(format!("list {}", dir.display()), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| SpoolError::io(format!("list {}", dir.display()), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(hex) = name.strip_suffix(".seg") else { continue };
            match u64::from_str_radix(hex, 16) {
                Ok(n) if hex.len() == 16 => existing.push(n),
                _ => tracing::warn!(file = %name, "ignoring unexpected file in the spool bodies directory"),
            }
        }
        existing.sort_unstable();
        let segments = Segments {
            dir,
            segment_size: segment_size.max(1),
            stats,
            readers: RwLock::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            next: AtomicU64::new(existing.last().map_or(1, |n| n + 1)),
        };
        Ok((segments, existing))
    }

    /// The `bodies` directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// A segment number nobody has used: above every existing file and every number handed out before.
    pub(crate) fn allocate(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Numbers below `num` are taken (the recovered active segment).
    pub(crate) fn reserve_below(&self, num: u64) {
        self.next.fetch_max(num, Ordering::Relaxed);
    }

    /// Path of segment `num`.
    pub(crate) fn path_of(&self, num: u64) -> PathBuf {
        self.dir.join(file_name(num))
    }

    /// Set the live counts found by the recovery survey.
    pub(crate) fn set_live(&self, counts: HashMap<u64, u64>) {
        *self.live.lock() = counts;
    }

    /// Create segment `num` as the new active segment (fsyncing the directory so the file survives a crash).
    pub(crate) fn create_writer(&self, num: u64) -> Result<SegmentWriter, SpoolError> {
        let path = self.path_of(num);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| SpoolError::io(format!("create segment {}", path.display()), e))?;
        fsync_path(&self.dir, &self.stats)?;
        let reader = file.try_clone().map_err(|e| SpoolError::io(format!("dup {}", path.display()), e))?;
        self.readers.write().insert(num, Arc::new(reader));
        self.live.lock().entry(num).or_insert(0);
        tracing::debug!(segment = num, "new body segment");
        Ok(SegmentWriter { num, file, len: 0, broken: false })
    }

    /// Replace the writer by a fresh segment, fdatasyncing the old one first when it holds unsynced
    /// bytes of this round.
    fn rotate(&self, w: &mut SegmentWriter, sync_old: bool) -> Result<(), SpoolError> {
        if sync_old && !w.broken {
            self.sync(w)?;
        }
        *w = self.create_writer(self.allocate())?;
        Ok(())
    }

    /// Append `bodies` (in order) to the active segment, rotating when it is full; returns their locations.
    /// The bytes are written but not yet durable: call [`Segments::sync`] next. Old segments closed by a
    /// rotation during the call are synced before the switch.
    pub(crate) fn append(
        &self,
        w: &mut SegmentWriter,
        bodies: &[(QueueId, Bytes)],
    ) -> Result<Vec<BodyLocation>, SpoolError> {
        if w.broken {
            self.rotate(w, false)?;
        }
        let headers: Vec<Vec<u8>> = bodies.iter().map(|(id, b)| encode_header(id, b)).collect();
        let mut locations = Vec::with_capacity(bodies.len());
        let mut chunk: Vec<IoSlice<'_>> = Vec::new();
        let mut chunk_bytes = 0u64;
        for ((_, body), header) in bodies.iter().zip(&headers) {
            let size = header.len() as u64 + body.len() as u64;
            if w.len + chunk_bytes > 0 && w.len + chunk_bytes + size > self.segment_size {
                self.write_chunk(w, &mut chunk, chunk_bytes)?;
                chunk_bytes = 0;
                // Bytes written to the old segment in this round must be durable before the round acks.
                self.rotate(w, true)?;
            }
            let offset = w.len + chunk_bytes + header.len() as u64;
            locations.push(BodyLocation {
                segment: w.num,
                offset,
                len: body.len() as u64,
                crc32: u32::from_le_bytes([
                    header[header.len() - 4],
                    header[header.len() - 3],
                    header[header.len() - 2],
                    header[header.len() - 1],
                ]),
            });
            chunk.push(IoSlice::new(header));
            if !body.is_empty() {
                chunk.push(IoSlice::new(body));
            }
            chunk_bytes += size;
        }
        self.write_chunk(w, &mut chunk, chunk_bytes)?;
        Ok(locations)
    }

    /// Write the slices of `chunk` at the writer's cursor with as few `writev` calls as possible.
    fn write_chunk(&self, w: &mut SegmentWriter, chunk: &mut Vec<IoSlice<'_>>, bytes: u64) -> Result<(), SpoolError> {
        let mut slices: &mut [IoSlice<'_>] = chunk.as_mut_slice();
        while !slices.is_empty() {
            match w.file.write_vectored(slices) {
                Ok(0) => {
                    w.broken = true;
                    return Err(SpoolError::io(
                        format!("append to segment {}", w.num),
                        std::io::Error::new(std::io::ErrorKind::WriteZero, "write returned 0"),
                    ));
                }
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    w.broken = true;
                    return Err(SpoolError::io(format!("append to segment {}", w.num), e));
                }
            }
        }
        w.len += bytes;
        chunk.clear();
        Ok(())
    }

    /// fdatasync the active segment.
    pub(crate) fn sync(&self, w: &SegmentWriter) -> Result<(), SpoolError> {
        w.file.sync_data().map_err(|e| SpoolError::io(format!("fdatasync segment {}", w.num), e))?;
        self.stats.fsync();
        Ok(())
    }

    /// The read handle of segment `num`, opening it if needed.
    fn reader(&self, num: u64) -> Result<Arc<File>, SpoolError> {
        if let Some(f) = self.readers.read().get(&num) {
            return Ok(f.clone());
        }
        let path = self.path_of(num);
        let f = Arc::new(File::open(&path).map_err(|e| SpoolError::io(format!("open segment {}", path.display()), e))?);
        self.readers.write().insert(num, f.clone());
        Ok(f)
    }

    /// Read and verify the body of message `id` at `loc`.
    pub(crate) fn read(&self, id: &QueueId, loc: &BodyLocation) -> Result<Bytes, SpoolError> {
        let corrupt = |reason: String| SpoolError::Corrupt { key: id.to_string(), reason };
        if loc.segment == 0 {
            return Err(corrupt("record has no body location".into()));
        }
        let hlen = header_len(id.as_str().len());
        let start =
            loc.offset.checked_sub(hlen).ok_or_else(|| corrupt(format!("body offset {} too small", loc.offset)))?;
        let end = loc.offset.checked_add(loc.len).ok_or_else(|| corrupt("body length overflows".into()))?;
        let file = self.reader(loc.segment)?;
        let size = file.metadata().map_err(|e| SpoolError::io(format!("stat segment {}", loc.segment), e))?.len();
        if end > size {
            return Err(corrupt(format!(
                "body {}..{} past the end of segment {} ({size} bytes)",
                loc.offset, end, loc.segment
            )));
        }
        let total = usize::try_from(end - start).map_err(|_| corrupt("body too large for memory".into()))?;
        let mut buf = vec![0u8; total];
        file.read_exact_at(&mut buf, start)
            .map_err(|e| SpoolError::io(format!("read segment {} at {start}", loc.segment), e))?;
        let (header, body) = buf.split_at(hlen as usize);
        if header.len() < 18 || header[..4] != FRAME_MAGIC.to_le_bytes() {
            return Err(corrupt(format!("bad frame magic in segment {} at {start}", loc.segment)));
        }
        let id_bytes = id.as_str().as_bytes();
        let id_len = u16::from_le_bytes([header[4], header[5]]) as usize;
        if id_len != id_bytes.len() || &header[6..6 + id_len] != id_bytes {
            return Err(corrupt(format!("frame in segment {} at {start} belongs to another message", loc.segment)));
        }
        let rest = &header[6 + id_len..];
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&rest[..8]);
        let mut crc4 = [0u8; 4];
        crc4.copy_from_slice(&rest[8..12]);
        if u64::from_le_bytes(len8) != loc.len || u32::from_le_bytes(crc4) != loc.crc32 {
            return Err(corrupt(format!(
                "frame header in segment {} at {start} disagrees with the record",
                loc.segment
            )));
        }
        let got = crc32fast::hash(body);
        if got != loc.crc32 {
            return Err(corrupt(format!(
                "body checksum mismatch in segment {} at {} (stored {:08x}, computed {got:08x})",
                loc.segment, loc.offset, loc.crc32
            )));
        }
        buf.drain(..hlen as usize);
        Ok(Bytes::from(buf))
    }

    /// Apply live-count changes: `+1` for each segment in `added`, `-1` for each in `removed`.
    pub(crate) fn adjust_live(&self, added: &[u64], removed: &[u64]) {
        let mut live = self.live.lock();
        for s in added {
            *live.entry(*s).or_insert(0) += 1;
        }
        for s in removed {
            if let Some(n) = live.get_mut(s) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Delete every segment other than `active` that no record points into. Call only when the index state
    /// the counts reflect is durable.
    pub(crate) fn delete_empty(&self, active: u64) {
        let empty: Vec<u64> = {
            let live = self.live.lock();
            live.iter().filter(|(s, n)| **n == 0 && **s != active).map(|(s, _)| *s).collect()
        };
        for s in empty {
            let path = self.path_of(s);
            match fs::remove_file(&path) {
                Ok(()) => tracing::debug!(segment = s, "deleted empty body segment"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = s, error = %e, "could not delete empty body segment");
                    continue;
                }
            }
            self.live.lock().remove(&s);
            self.readers.write().remove(&s);
        }
    }

    /// Live count of segment `num` (None if unknown), for tests and tools.
    pub(crate) fn live_count(&self, num: u64) -> Option<u64> {
        self.live.lock().get(&num).copied()
    }
}
