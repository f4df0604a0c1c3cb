//! What every channel's message type tells its [`Outbox`](crate::outbox::Outbox):
//! about how large it will be once encoded, and what to send instead when
//! it turns out too large.
//!
//! A frame over the channel's cap must never end the channel: the sender
//! learns of it before anything is queued (from [`size_hint`]) and turns
//! it into an error for that one call, and if encoding still meets the cap
//! the writer sends the message's [`refuse`] replacement (an error reply
//! with the same id) or drops it, and goes on.
//!
//! [`size_hint`]: WireMessage::size_hint
//! [`refuse`]: WireMessage::refuse

use serde::Serialize;

use crate::error::CallError;

/// Room for a message's fixed parts: enum tags, field names, ids. A hint
/// adds this to the lengths of its strings and byte payloads.
pub const ENVELOPE: usize = 512;

pub trait WireMessage: Serialize {
    /// At least as many bytes as the encoded message takes, give or take
    /// [`ENVELOPE`]: the sum of its variable-length fields and the
    /// envelope. Cheap: no encoding.
    fn size_hint(&self) -> usize;

    /// What to send in place of this message when it cannot be sent (too
    /// large): an error reply for a reply, `None` (drop it) otherwise.
    fn refuse(&self, error: CallError) -> Option<Self>
    where
        Self: Sized,
    {
        let _ = error;
        None
    }
}

/// The encoded size of a byte payload, string or list, give or take its
/// length prefix.
pub fn len_of<T: AsRef<[u8]>>(field: T) -> usize {
    field.as_ref().len() + 5
}

impl WireMessage for () {
    fn size_hint(&self) -> usize {
        ENVELOPE
    }
}
