//! The wire protocol of the host: every local socket between its processes
//! carries length-prefixed MessagePack frames, and every channel starts with a
//! versioned [`handshake`].
//!
//! Each side of a channel is a typed endpoint ([`FrameReader`] /
//! [`FrameWriter`]) over any `AsyncRead`/`AsyncWrite`, so server loops can be
//! driven in memory by tests (`tokio::io::duplex`).

pub mod calls;
pub mod control;
pub mod error;
mod frame;
pub mod handshake;
pub mod launcher;
pub mod message;
pub mod outbox;
pub mod peer;
pub mod provider;
pub mod socket;
pub mod tasks;
pub mod worker;

pub use error::{CallError, CallResult, ErrorKind};
pub use frame::{decode, FrameReader, FrameWriter, WireError, DEFAULT_MAX_FRAME_LEN, MAX_DEPTH};
pub use message::WireMessage;

/// The version of this protocol. Bumped on any incompatible change to a
/// message in this crate; both ends refuse a peer with another version.
/// 3: errors are typed ([`CallError`]), process states an enum.
/// 4: a launch carries its binary's hash and data directory, and is
/// answered with the provider's confinement first.
/// 6: actors and archives come from an [`control::Artifact`] (bytes, a
/// path, or an OCI reference); summaries carry their `image_ref`.
pub const PROTOCOL_VERSION: u32 = 6;

/// The largest payload (an actor's reply, a request's body, an actor's
/// wasm) a message may carry: the frame cap less room for the rest of the
/// message. Checked before a message is built, so an oversized payload is
/// an error for its call and never a frame the channel cannot carry.
pub const MAX_PAYLOAD: usize = DEFAULT_MAX_FRAME_LEN - 64 * 1024;

/// Refuses a payload over [`MAX_PAYLOAD`]: "reply of N bytes exceeds the
/// 64 MiB frame limit" (`what`: "reply", "request", ...).
pub fn check_payload(what: &str, len: usize) -> CallResult<()> {
    if len > MAX_PAYLOAD {
        return Err(CallError::oversized(what, len, DEFAULT_MAX_FRAME_LEN));
    }
    Ok(())
}

/// A byte payload that serialises as a MessagePack `bin`, not an array of ints.
pub type Bytes = serde_bytes::ByteBuf;
