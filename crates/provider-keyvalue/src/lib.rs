//! `provider-keyvalue`: the `wasmcloud:keyvalue` capability provider, a
//! durable key-value store backed by [redb](https://www.redb.org).
//!
//! - Database: `{data_dir}/keyvalue.redb`, or the config JSON's `path`
//!   (relative paths are taken from the provider's data directory).
//! - Every write is committed durably before the actor gets its answer, so an
//!   acknowledged write survives the provider or the host being killed.
//! - Namespaces: an actor whose link sets a `bucket` value gets that bucket;
//!   the other actors linked to this provider share one namespace, as they
//!   would share a Redis server.
//! - Payloads: MessagePack as `wasmcloud-interface-keyvalue` 0.12 encodes
//!   them (see [`protocol`]). Keys hold one type each (string, list or set),
//!   as in Redis; using a key as another type is an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shim::{Health, HostHandle, Link, Provider, ProviderError};

pub mod protocol;
mod store;

pub use store::{Got, Outcome, Store, Write};

use protocol::*;

/// The database file name under the provider's data directory.
pub const DEFAULT_FILE: &str = "keyvalue.redb";

/// The link value that picks an actor's namespace.
pub const BUCKET_LINK_VALUE: &str = "bucket";

/// The provider's config JSON.
#[derive(Deserialize, Debug, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the database lives, instead of `{data_dir}/keyvalue.redb`.
    pub path: Option<PathBuf>,
}

/// The `wasmcloud:keyvalue` provider. Give it to `shim::run`.
#[derive(Default)]
pub struct KeyValueProvider {
    store: OnceLock<Arc<Store>>,
    /// actor id -> bucket, for actors whose link names a bucket.
    buckets: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for KeyValueProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyValueProvider")
            .field("store", &self.store.get())
            .finish_non_exhaustive()
    }
}

impl KeyValueProvider {
    /// A provider that opens its database in `init`, where the host's data
    /// directory and config are known.
    pub fn new() -> Self {
        Self::default()
    }

    /// A provider on the database at `path`, opened now (`init` then keeps
    /// it). Blocking.
    pub fn open(path: &Path) -> Result<Self, ProviderError> {
        let provider = Self::default();
        let store = Store::open(path).map_err(ProviderError::new)?;
        let _ = provider.store.set(Arc::new(store));
        Ok(provider)
    }

    /// The open store, if any.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.get()
    }

    /// The namespace of `actor_id`'s keys: its link's bucket, or the shared
    /// one (empty).
    pub fn bucket_of(&self, actor_id: &str) -> String {
        self.buckets().get(actor_id).cloned().unwrap_or_default()
    }

    fn buckets(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves one operation of `actor_id` (what [`Provider::invoke`] does).
    pub async fn dispatch(
        &self,
        actor_id: &str,
        operation: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, ProviderError> {
        let store = self
            .store
            .get()
            .ok_or_else(|| ProviderError::new("the keyvalue store is not open"))?;
        let bucket = self.bucket_of(actor_id);
        let b = bucket.as_str();
        // wasmbus-rpc providers also accepted the bare method name.
        let method = operation.strip_prefix("KeyValue.").unwrap_or(operation);
        let fail = |e: String| ProviderError::new(format!("{operation}: {e}"));
        match method {
            "Get" => {
                let key: String = decode(operation, "a key string", payload)?;
                let got = store.get(b, &key).await.map_err(fail)?;
                encode(&GetResponse {
                    value: got.value,
                    exists: got.exists,
                })
            }
            "Set" => {
                let req: SetRequest =
                    decode(operation, "SetRequest {key, value, expires}", payload)?;
                let write = Write::Set {
                    key: req.key,
                    value: req.value,
                    expires_secs: req.expires,
                };
                store.write(b, write).await.map_err(fail)?;
                // As the 0.12 receiver: Set answers with an empty message.
                Ok(Vec::new())
            }
            "Del" => {
                let key: String = decode(operation, "a key string", payload)?;
                write_bool(store.write(b, Write::Del(key)).await.map_err(fail)?)
            }
            "Contains" => {
                let key: String = decode(operation, "a key string", payload)?;
                encode(&store.contains(b, &key).await.map_err(fail)?)
            }
            "Increment" => {
                let req: IncrementRequest =
                    decode(operation, "IncrementRequest {key, value}", payload)?;
                let write = Write::Increment {
                    key: req.key,
                    by: req.value,
                };
                match store.write(b, write).await.map_err(fail)? {
                    Outcome::I32(n) => encode(&n),
                    other => Err(unexpected(other)),
                }
            }
            "ListAdd" => {
                let req: ListAddRequest =
                    decode(operation, "ListAddRequest {listName, value}", payload)?;
                let write = Write::ListAdd {
                    list: req.list_name,
                    value: req.value,
                };
                write_u32(store.write(b, write).await.map_err(fail)?)
            }
            "ListDel" => {
                let req: ListDelRequest =
                    decode(operation, "ListDelRequest {listName, value}", payload)?;
                let write = Write::ListDel {
                    list: req.list_name,
                    value: req.value,
                };
                write_bool(store.write(b, write).await.map_err(fail)?)
            }
            "ListClear" => {
                let list: String = decode(operation, "a list name string", payload)?;
                write_bool(store.write(b, Write::ListClear(list)).await.map_err(fail)?)
            }
            "ListRange" => {
                let req: ListRangeRequest = decode(
                    operation,
                    "ListRangeRequest {listName, start, stop}",
                    payload,
                )?;
                let items = store
                    .list_range(b, &req.list_name, req.start, req.stop)
                    .await
                    .map_err(fail)?;
                encode(&items)
            }
            "SetAdd" => {
                let req: SetAddRequest =
                    decode(operation, "SetAddRequest {setName, value}", payload)?;
                let write = Write::SetAdd {
                    set: req.set_name,
                    value: req.value,
                };
                write_u32(store.write(b, write).await.map_err(fail)?)
            }
            "SetDel" => {
                let req: SetDelRequest =
                    decode(operation, "SetDelRequest {setName, value}", payload)?;
                let write = Write::SetDel {
                    set: req.set_name,
                    value: req.value,
                };
                write_u32(store.write(b, write).await.map_err(fail)?)
            }
            "SetQuery" => {
                let set: String = decode(operation, "a set name string", payload)?;
                encode(&store.set_query(b, &set).await.map_err(fail)?)
            }
            "SetUnion" => {
                let sets: StringList = decode(operation, "a list of set names", payload)?;
                encode(&store.set_union(b, sets).await.map_err(fail)?)
            }
            "SetIntersection" => {
                let sets: StringList = decode(operation, "a list of set names", payload)?;
                encode(&store.set_intersection(b, sets).await.map_err(fail)?)
            }
            "SetClear" => {
                let set: String = decode(operation, "a set name string", payload)?;
                write_bool(store.write(b, Write::SetClear(set)).await.map_err(fail)?)
            }
            _ => Err(ProviderError::new(format!(
                "unknown operation {operation} (wasmcloud:keyvalue has KeyValue.Get, Set, Del, \
                 Contains, Increment, ListAdd, ListDel, ListClear, ListRange, SetAdd, SetDel, \
                 SetQuery, SetUnion, SetIntersection, SetClear)"
            ))),
        }
    }
}

impl Provider for KeyValueProvider {
    async fn init(&self, host: &HostHandle) -> Result<(), ProviderError> {
        if let Some(store) = self.store.get() {
            tracing::info!("keyvalue store already open at {}", store.path().display());
            return Ok(());
        }
        let config: Config = host.config()?;
        let path = match config.path {
            Some(path) if path.is_absolute() => path,
            Some(path) => host.data_dir().join(path),
            None => host.data_dir().join(DEFAULT_FILE),
        };
        let store = tokio::task::spawn_blocking(move || Store::open(&path))
            .await
            .map_err(|e| ProviderError::new(format!("opening the store failed: {e}")))?
            .map_err(ProviderError::new)?;
        tracing::info!("keyvalue store open at {}", store.path().display());
        let _ = self.store.set(Arc::new(store));
        Ok(())
    }

    async fn link_added(&self, link: Link) -> Result<(), ProviderError> {
        let bucket = link
            .values
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(BUCKET_LINK_VALUE))
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        tracing::info!(
            "keyvalue link added: actor {}, bucket {}",
            link.actor_id,
            bucket.as_deref().unwrap_or("(shared)")
        );
        let mut buckets = self.buckets();
        match bucket {
            Some(bucket) => buckets.insert(link.actor_id, bucket),
            None => buckets.remove(&link.actor_id),
        };
        Ok(())
    }

    async fn link_removed(&self, actor_id: &str, _contract_id: &str, link_name: &str) {
        tracing::info!("keyvalue link removed: actor {actor_id}, link name {link_name}");
        self.buckets().remove(actor_id);
    }

    async fn invoke(
        &self,
        actor_id: &str,
        operation: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ProviderError> {
        self.dispatch(actor_id, operation, &payload).await
    }

    async fn health(&self) -> Health {
        match self.store.get() {
            Some(store) if store.is_open() => Health::ok(),
            Some(store) => Health::unhealthy(format!(
                "the keyvalue database {} is closed",
                store.path().display()
            )),
            None => Health::unhealthy("the keyvalue database is not open"),
        }
    }

    async fn shutdown(&self) {
        if let Some(store) = self.store.get().cloned() {
            // Joining the writer thread waits for queued writes: off the
            // async workers.
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
        tracing::info!("keyvalue provider stopped");
    }
}

fn decode<T: DeserializeOwned>(
    operation: &str,
    expected: &str,
    payload: &[u8],
) -> Result<T, ProviderError> {
    shim::decode(payload).map_err(|e| {
        ProviderError::new(format!(
            "{operation}: malformed payload (expected MessagePack {expected}): {e}"
        ))
    })
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ProviderError> {
    rmp_serde::to_vec_named(value).map_err(|e| ProviderError::new(format!("encode: {e}")))
}

fn write_bool(outcome: Outcome) -> Result<Vec<u8>, ProviderError> {
    match outcome {
        Outcome::Bool(b) => encode(&b),
        other => Err(unexpected(other)),
    }
}

fn write_u32(outcome: Outcome) -> Result<Vec<u8>, ProviderError> {
    match outcome {
        Outcome::U32(n) => encode(&n),
        other => Err(unexpected(other)),
    }
}

fn unexpected(outcome: Outcome) -> ProviderError {
    ProviderError::new(format!(
        "internal error: unexpected store outcome {outcome:?}"
    ))
}
