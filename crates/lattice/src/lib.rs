//! wasmCloud 0.82's lattice protocol, as data: the subjects of the control
//! interface, events and RPC ([`subjects`]), the control interface's JSON
//! payloads ([`ctl`], serde-compatible with `wasmcloud-control-interface`
//! 0.33), CloudEvents and their payloads ([`events`]), the MessagePack
//! invocations with their anti-forgery claims ([`rpc`]), and the formats of
//! the lattice's key-value state ([`kv`]).
//!
//! Nothing here opens a connection: the host's `lattice` module carries
//! these over NATS.

pub mod ctl;
pub mod events;
pub mod kv;
pub mod rpc;
pub mod subjects;

/// What a payload of the lattice can be refused for.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad JSON payload: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bad MessagePack payload: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("cannot encode MessagePack: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("invocation claims: {0}")]
    Claims(String),
    #[error("invocation refused: {0}")]
    Forged(String),
}

/// A random version-4 UUID in its text form (invocation and event ids).
pub fn uuid_v4() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuids_are_version_4() {
        let id = super::uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
    }
}
