//! The parts of `mta-server` that other crates reach: the config file, and the HTTP injection's content
//! building, for the fuzz targets (`fuzz/`) and property tests. The program itself is `main.rs`.
//!
//! # Layout
//! - [`config`] / [`duration`]: the TOML config, its defaults and validation (the binary uses these).
//! - `http`: only `content` (raw and structured inject content to message bytes) and the `error` it returns;
//!   the binary compiles its own copy as part of its HTTP API.
//! - `fuzzing`: the fuzz targets' logic.

pub mod config;
pub mod duration;

/// What the fuzz targets need of the HTTP API (the rest lives in the binary).
#[doc(hidden)]
pub mod http {
    pub mod content;
    pub mod error;
    pub mod json_text;
}

#[doc(hidden)]
pub mod fuzzing;
