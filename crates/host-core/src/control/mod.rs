//! The control socket: the server a running host offers `host-core ctl`,
//! and the client that speaks to it.

mod client;
mod server;

pub use client::{ClientError, ControlClient};
pub use server::{run, serve};
