//! The lattice's state in the JetStream key-value bucket
//! `LATTICEDATA_{lattice}`, in wasmCloud 0.82's format: links
//! (`LINKDEF_{id}`) as the host's [`LinkStore`], and everyone's claims
//! (`CLAIMS_{key}`), which other hosts need to take our calls.
//!
//! Every change, this host's own writes included, comes back through one
//! watch of the bucket and reaches the host in the bucket's order, so the
//! providers of every host see the same links in the same order. A write
//! resolves once the host has applied it. When the watch breaks (NATS went
//! away), it is made again, and what it delivers again up to the last
//! revision seen is skipped: no change is lost or applied twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::future::BoxFuture;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, watch};
use wire::provider::Link;

use lattice::ctl::LinkDefinition;
use lattice::kv::{
    decode_linkdef, encode_linkdef, lattice_bucket, StoredClaims, CLAIMS_PREFIX, LINKDEF_PREFIX,
};

use crate::host::links::{LinkKey, LinkStore, MemoryLinks, Revisioned, StoreError, Stored};
/// How long a write waits for the host to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(10);
/// Pauses between attempts to open the bucket or watch it again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A link as the lattice writes it.
pub(super) fn definition_of(link: &Link) -> LinkDefinition {
    LinkDefinition {
        actor_id: link.actor_id.clone(),
        provider_id: link.provider_id.clone(),
        link_name: link.link_name.clone(),
        contract_id: link.contract_id.clone(),
        values: link.values.clone(),
    }
}

/// A link the lattice wrote, as the host keeps it.
pub(super) fn link_of_definition(link: LinkDefinition) -> Link {
    Link {
        actor_id: link.actor_id,
        provider_id: link.provider_id,
        contract_id: link.contract_id,
        link_name: link.link_name,
        values: link.values,
    }
}

pub(crate) struct NatsLinks {
    js: jetstream::Context,
    bucket: String,
    /// Set once the bucket is open.
    kv: RwLock<Option<kv::Store>>,
    local: MemoryLinks,
    /// Claims of every actor and provider the lattice knows, by key.
    claims: RwLock<HashMap<String, StoredClaims>>,
    changes: mpsc::UnboundedSender<Revisioned>,
    taken: Mutex<Option<mpsc::UnboundedReceiver<Revisioned>>>,
    /// The last revision the watch handed over.
    seen: AtomicU64,
    /// The last revision the host applied.
    applied: watch::Sender<u64>,
}

impl NatsLinks {
    /// The store of `lattice` over `js`; [`run`](Self::run) it.
    pub(crate) fn new(js: jetstream::Context, lattice: &str) -> Arc<Self> {
        let (changes, taken) = mpsc::unbounded_channel();
        Arc::new(Self {
            js,
            bucket: lattice_bucket(lattice),
            kv: RwLock::new(None),
            local: MemoryLinks::default(),
            claims: RwLock::new(HashMap::new()),
            changes,
            taken: Mutex::new(Some(taken)),
            seen: AtomicU64::new(0),
            applied: watch::Sender::new(0),
        })
    }

    /// Opens (or creates) the bucket and watches it, forever: again after
    /// each break, from where it left off.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut pause = RETRY_FIRST;
        loop {
            match self.open().await {
                Ok(kv) => {
                    *self.kv.write() = Some(kv.clone());
                    match self.watch(&kv).await {
                        Ok(()) => {
                            tracing::warn!(bucket = %self.bucket, "the lattice state's watch ended; watching again")
                        }
                        Err(e) => {
                            tracing::warn!(bucket = %self.bucket, "watching the lattice state: {e}")
                        }
                    }
                    pause = RETRY_FIRST;
                }
                Err(e) => {
                    tracing::debug!(bucket = %self.bucket, "cannot open the lattice state yet: {e}")
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    async fn open(&self) -> Result<kv::Store, async_nats::Error> {
        if let Ok(store) = self.js.get_key_value(self.bucket.as_str()).await {
            return Ok(store);
        }
        // As 0.82 creates it: one value per key, on file.
        Ok(self
            .js
            .create_key_value(kv::Config {
                bucket: self.bucket.clone(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await?)
    }

    /// Every entry, the present ones first (the last value of each key),
    /// then each change; entries up to the last revision seen are skipped.
    async fn watch(&self, kv: &kv::Store) -> Result<(), async_nats::Error> {
        let mut entries = kv.watch_with_history(">").await?;
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            if entry.revision <= self.seen.load(Ordering::Acquire) {
                continue;
            }
            self.seen.store(entry.revision, Ordering::Release);
            self.on_entry(entry);
        }
        Ok(())
    }

    fn on_entry(&self, entry: kv::Entry) {
        let deleted = matches!(
            entry.operation,
            kv::Operation::Delete | kv::Operation::Purge
        );
        if let Some(id) = entry.key.strip_prefix(LINKDEF_PREFIX) {
            let change = if deleted {
                self.local
                    .list()
                    .into_iter()
                    .find(|l| LinkKey::of(l).id() == id)
                    .and_then(|l| self.local.remove(&LinkKey::of(&l)))
            } else {
                match decode_linkdef(id, &entry.value) {
                    Ok(link) => Some(self.local.insert(link_of_definition(link))),
                    Err(e) => {
                        tracing::warn!(key = %entry.key, "a link in the lattice state was refused: {e}");
                        None
                    }
                }
            };
            match change {
                Some(change) => {
                    let _ = self.changes.send(Revisioned {
                        revision: entry.revision,
                        change,
                    });
                }
                // Nothing for the host to do: it is applied already.
                None => self.applied(entry.revision),
            }
        } else if let Some(key) = entry.key.strip_prefix(CLAIMS_PREFIX) {
            if deleted {
                self.claims.write().remove(key);
            } else {
                match StoredClaims::decode(key, &entry.value) {
                    Ok(claims) => {
                        self.claims.write().insert(key.to_owned(), claims);
                    }
                    Err(e) => {
                        tracing::warn!(key = %entry.key, "claims in the lattice state were refused: {e}")
                    }
                }
            }
            self.applied(entry.revision);
        } else {
            self.applied(entry.revision);
        }
    }

    fn store(&self) -> Result<kv::Store, StoreError> {
        self.kv.read().clone().ok_or_else(|| {
            StoreError::Unavailable(format!(
                "the lattice state ({}) is not reachable yet",
                self.bucket
            ))
        })
    }

    /// Waits until the host applied `revision`, at most [`APPLY_WAIT`].
    async fn wait_applied(&self, revision: u64) {
        let mut applied = self.applied.subscribe();
        if tokio::time::timeout(APPLY_WAIT, applied.wait_for(|a| *a >= revision))
            .await
            .is_err()
        {
            tracing::warn!(
                revision,
                "a link change was stored but not applied within {APPLY_WAIT:?}"
            );
        }
    }

    /// Stores the claims of an actor or provider this host started, for the
    /// other hosts (and `get.claims`).
    pub(crate) async fn put_claims(&self, claims: &StoredClaims) -> Result<(), StoreError> {
        let kv = self.store()?;
        let key = claims.key();
        self.claims
            .write()
            .insert(claims.subject().to_owned(), claims.clone());
        kv.put(key, claims.encode().into())
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// The claims the lattice knows of `key`.
    pub(crate) fn claims_of(&self, key: &str) -> Option<StoredClaims> {
        self.claims.read().get(key).cloned()
    }

    pub(crate) fn all_claims(&self) -> Vec<StoredClaims> {
        self.claims.read().values().cloned().collect()
    }
}

impl LinkStore for Arc<NatsLinks> {
    fn put(&self, link: Link) -> BoxFuture<'_, Result<Stored, StoreError>> {
        Box::pin(async move {
            let kv = self.store()?;
            let key = format!("{LINKDEF_PREFIX}{}", LinkKey::of(&link).id());
            let value = encode_linkdef(&definition_of(&link));
            let revision = kv
                .put(key, value.into())
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            self.wait_applied(revision).await;
            Ok(Stored::Delivered)
        })
    }

    fn delete(&self, key: LinkKey) -> BoxFuture<'_, Result<Stored, StoreError>> {
        Box::pin(async move {
            if self.local.get(&key).is_none() {
                return Ok(Stored::Missing);
            }
            let kv = self.store()?;
            let entry_key = format!("{LINKDEF_PREFIX}{}", key.id());
            kv.delete(&entry_key)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            // The delete marker's revision (or a later one's, which
            // supersedes it).
            let revision = kv
                .entry(entry_key)
                .await
                .ok()
                .flatten()
                .map_or(0, |e| e.revision);
            self.wait_applied(revision).await;
            Ok(Stored::Delivered)
        })
    }

    fn get(&self, key: &LinkKey) -> Option<Link> {
        self.local.get(key)
    }

    fn list(&self) -> Vec<Link> {
        self.local.list()
    }

    fn take_changes(&self) -> Option<mpsc::UnboundedReceiver<Revisioned>> {
        self.taken.lock().take()
    }

    fn applied(&self, revision: u64) {
        NatsLinks::applied(self, revision);
    }
}

impl NatsLinks {
    fn applied(&self, revision: u64) {
        self.applied.send_if_modified(|applied| {
            if revision > *applied {
                *applied = revision;
                true
            } else {
                false
            }
        });
    }
}
