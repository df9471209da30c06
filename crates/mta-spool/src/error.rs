//! The spool's error type, classified for the caller.
//!
//! Errors are `Clone` (sources are shared behind `Arc`) because one failed commit round answers every waiter of
//! that round with the same error.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::id::QueueId;

/// Why a spool operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// A file-system operation failed. For a commit: nothing of the round was acknowledged; the caller should
    /// answer with a temporary failure (SMTP 451, HTTP 503) and let the client retry.
    #[error("spool I/O error: {context}: {source}")]
    Io {
        /// What the spool was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The sled index reported an error. Treat like [`SpoolError::Io`].
    #[error("spool index error: {context}: {source}")]
    Sled {
        /// What the spool was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: Arc<sled::Error>,
    },
    /// Another process (or another `Spool` in this process) has the spool open. Stop the other one first.
    #[error("spool at {0} is locked by another process (is another instance running?)")]
    Locked(PathBuf),
    /// Stored data failed its checksum or could not be decoded. The key names the message or index entry;
    /// the data is kept for an operator (records are moved to the quarantine tree by `scan`).
    #[error("corrupt spool data for {key}: {reason}")]
    Corrupt {
        /// The queue id (or the printable form of the index key).
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The message is not in the spool (for example an update of a message removed meanwhile).
    #[error("message {0} not in the spool")]
    NotFound(QueueId),
    /// The spool was closed (or its committer thread is gone): no write can be made durable any more.
    #[error("spool is closed")]
    Closed,
    /// An earlier durability step (fsync, index write) failed; the spool refuses every later write, since after
    /// a failed fsync the kernel may have dropped dirty pages and nothing written since can be trusted. Restart
    /// the process (recovery re-reads what is really on disk).
    #[error("spool refuses writes after an earlier durability failure: {0}")]
    Poisoned(String),
    /// The configuration is unusable (for example a zero segment size).
    #[error("invalid spool configuration: {0}")]
    InvalidConfig(String),
}

impl SpoolError {
    /// An [`SpoolError::Io`] with a short description of what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        SpoolError::Io { context: context.into(), source: Arc::new(source) }
    }

    /// A [`SpoolError::Sled`] with a short description of what was being done.
    pub fn sled(context: impl Into<String>, source: sled::Error) -> Self {
        SpoolError::Sled { context: context.into(), source: Arc::new(source) }
    }

    /// True when retrying the same operation later (or on another node) may succeed: I/O trouble, a closed or
    /// poisoned spool. False for corrupt data, a missing message or a bad configuration.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            SpoolError::Io { .. }
                | SpoolError::Sled { .. }
                | SpoolError::Locked(_)
                | SpoolError::Closed
                | SpoolError::Poisoned(_)
        )
    }
}
