//! Sans-I/O SMTP protocol: commands, replies and byte-fed receivers. No sockets, no runtime.

pub mod command;
pub mod data;
pub mod line;
pub mod reply;
