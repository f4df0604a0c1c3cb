//! The `wasmcloud:keyvalue` payloads, as `wasmcloud-interface-keyvalue` 0.12
//! declares them (serde derives, MessagePack with named fields through
//! wasmbus-rpc 0.15's `serialize`, which is `rmp_serde::to_vec_named`).
//!
//! | operation | request | answer |
//! |---|---|---|
//! | `KeyValue.Get` | `String` (key) | [`GetResponse`] |
//! | `KeyValue.Set` | [`SetRequest`] | empty message |
//! | `KeyValue.Del` | `String` | `bool` |
//! | `KeyValue.Contains` | `String` | `bool` |
//! | `KeyValue.Increment` | [`IncrementRequest`] | `i32` |
//! | `KeyValue.ListAdd` | [`ListAddRequest`] | `u32` (new length) |
//! | `KeyValue.ListDel` | [`ListDelRequest`] | `bool` |
//! | `KeyValue.ListClear` | `String` | `bool` |
//! | `KeyValue.ListRange` | [`ListRangeRequest`] | [`StringList`] |
//! | `KeyValue.SetAdd` | [`SetAddRequest`] | `u32` (number added) |
//! | `KeyValue.SetDel` | [`SetDelRequest`] | `u32` (number removed) |
//! | `KeyValue.SetQuery` | `String` | [`StringList`] |
//! | `KeyValue.SetUnion` | [`StringList`] (set names) | [`StringList`] |
//! | `KeyValue.SetIntersection` | [`StringList`] | [`StringList`] |
//! | `KeyValue.SetClear` | `String` | `bool` |
//!
//! As in the crate, every field is `#[serde(default)]`: a missing field reads
//! as its default (empty string, 0).

use serde::{Deserialize, Serialize};

/// A list of strings (`StringList` in the interface).
pub type StringList = Vec<String>;

/// The answer to `Get`.
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct GetResponse {
    /// The value, if it existed (empty otherwise).
    #[serde(default)]
    pub value: String,
    /// Whether the value existed.
    #[serde(default)]
    pub exists: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct SetRequest {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub value: String,
    /// Seconds until the value expires; 0 for never.
    #[serde(default)]
    pub expires: u32,
}

#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct IncrementRequest {
    #[serde(default)]
    pub key: String,
    /// The amount to add.
    #[serde(default)]
    pub value: i32,
}

#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct ListAddRequest {
    #[serde(rename = "listName")]
    #[serde(default)]
    pub list_name: String,
    #[serde(default)]
    pub value: String,
}

/// Removes the first occurrence of `value`.
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct ListDelRequest {
    #[serde(rename = "listName")]
    #[serde(default)]
    pub list_name: String,
    #[serde(default)]
    pub value: String,
}

/// Items `start..=stop`; negative indices count from the end (Redis `LRANGE`).
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct ListRangeRequest {
    #[serde(rename = "listName")]
    #[serde(default)]
    pub list_name: String,
    #[serde(default)]
    pub start: i32,
    #[serde(default)]
    pub stop: i32,
}

#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct SetAddRequest {
    #[serde(rename = "setName")]
    #[serde(default)]
    pub set_name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct SetDelRequest {
    #[serde(rename = "setName")]
    #[serde(default)]
    pub set_name: String,
    #[serde(default)]
    pub value: String,
}
