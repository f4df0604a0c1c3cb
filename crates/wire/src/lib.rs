//! The wire protocol of the host: every local socket between its processes
//! carries length-prefixed MessagePack frames, and every channel starts with a
//! versioned [`handshake`].
//!
//! Each side of a channel is a typed endpoint ([`FrameReader`] /
//! [`FrameWriter`]) over any `AsyncRead`/`AsyncWrite`, so server loops can be
//! driven in memory by tests (`tokio::io::duplex`).

pub mod control;
mod frame;
pub mod handshake;
pub mod launcher;
pub mod outbox;
pub mod provider;
pub mod socket;
pub mod worker;

pub use frame::{FrameReader, FrameWriter, WireError, DEFAULT_MAX_FRAME_LEN};

/// The version of this protocol. Bumped on any incompatible change to a
/// message in this crate; both ends refuse a peer with another version.
pub const PROTOCOL_VERSION: u32 = 2;

/// A byte payload that serialises as a MessagePack `bin`, not an array of ints.
pub type Bytes = serde_bytes::ByteBuf;
