//! The ESMTP server: per-connection sessions over any async stream, and the TCP accept loop.

pub mod config;
pub mod handler;
pub mod limits;
pub mod listener;
pub mod session;
mod stream;
