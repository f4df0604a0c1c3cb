//! Errors that cross a process: a [`CallError`] is a kind and a message.
//!
//! Whoever receives one decides by its [`ErrorKind`] (an HTTP status, a
//! retry, an exit code), never by its text; the message is for people.

use serde::{Deserialize, Serialize};

/// What went wrong, as far as the caller needs to know.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The target (actor, provider, link, key) does not exist here.
    NotFound,
    /// The caller may not do this (claims, caps, policy).
    Denied,
    /// A deadline passed before an answer came.
    Timeout,
    /// The actor failed: it trapped, broke the ABI, ran out of memory, or
    /// returned an error of its own.
    ActorFault,
    /// The provider failed or returned an error of its own.
    ProviderFault,
    /// A message is larger than a channel or a bound allows.
    TooLarge,
    /// The target exists but cannot serve now (restarting, not ready, its
    /// channel closed); trying later may succeed.
    Unavailable,
    /// The target has too many calls waiting already.
    Busy,
    /// A bug or a broken peer: a request that should not have been sent.
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::NotFound,
        ErrorKind::Denied,
        ErrorKind::Timeout,
        ErrorKind::ActorFault,
        ErrorKind::ProviderFault,
        ErrorKind::TooLarge,
        ErrorKind::Unavailable,
        ErrorKind::Busy,
        ErrorKind::Internal,
    ];

    /// A short lower-case name, as `--json` output and logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Denied => "denied",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ActorFault => "actor_fault",
            ErrorKind::ProviderFault => "provider_fault",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Busy => "busy",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error carried in a reply, across any channel.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    pub kind: ErrorKind,
    pub message: String,
}

/// The result of a call across a channel.
pub type CallResult<T> = Result<T, CallError>;

impl CallError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Denied, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    pub fn actor_fault(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ActorFault, message)
    }

    pub fn provider_fault(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ProviderFault, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Busy, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The same error, its message prefixed with `context: `.
    #[must_use]
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// A message of `len` bytes (`what`: "reply", "request", ...) that
    /// exceeds the limit of `max` bytes.
    pub fn oversized(what: &str, len: usize, max: usize) -> Self {
        Self::too_large(format!(
            "{what} of {len} bytes exceeds the {} frame limit",
            human_size(max)
        ))
    }
}

/// "64 MiB", "4 KiB", "100 bytes".
pub fn human_size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_messages_read_well() {
        for kind in ErrorKind::ALL {
            let err = CallError::new(kind, "why");
            let bytes = rmp_serde::to_vec_named(&err).unwrap();
            let back: CallError = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(back, err);
        }
        let err = CallError::oversized("reply", 70_000_000, 64 * 1024 * 1024);
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert_eq!(
            err.to_string(),
            "reply of 70000000 bytes exceeds the 64 MiB frame limit"
        );
        let err = CallError::unavailable("closed").context("provider V1");
        assert_eq!(err.to_string(), "provider V1: closed");
        assert_eq!(human_size(100), "100 bytes");
    }
}
