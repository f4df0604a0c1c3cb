//! The durable store under the provider: one redb table keyed by
//! `(bucket, key)`, whose values are typed entries (a string with an optional
//! expiry, a list or a set), as in Redis, where a key holds one type.
//!
//! Writes go to one writer thread that applies every write waiting in its
//! queue in a single write transaction and commits it with
//! [`Durability::Immediate`] before answering any of them (group commit):
//! an acknowledged write is on disk, and many concurrent writers share one
//! fsync. Reads run on tokio's blocking pool in read transactions.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// `(bucket, key)` -> MessagePack-encoded [`Entry`]. The bucket is empty for
/// the namespace shared by actors whose link names none.
const ENTRIES: TableDefinition<Key, &[u8]> = TableDefinition::new("keyvalue");

type Key = (&'static str, &'static str);
type WriteTable<'t> = Table<'t, Key, &'static [u8]>;

/// At most this many queued writes share one transaction.
const MAX_BATCH: usize = 512;

/// How long `open` keeps retrying while another process (a previous instance
/// still exiting) holds the database lock.
const OPEN_LOCK_WAIT: Duration = Duration::from_secs(5);

/// What a key holds. The encoding is part of the file format: add variants at
/// the end only.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// A string; `expires_at_ms` is a Unix time in milliseconds, 0 = never.
    Str {
        value: String,
        expires_at_ms: u64,
    },
    List(Vec<String>),
    Set(BTreeSet<String>),
}

impl Entry {
    fn kind(&self) -> &'static str {
        match self {
            Entry::Str { .. } => "a string",
            Entry::List(_) => "a list",
            Entry::Set(_) => "a set",
        }
    }

    fn expired(&self, now_ms: u64) -> bool {
        matches!(self, Entry::Str { expires_at_ms, .. } if *expires_at_ms != 0 && *expires_at_ms <= now_ms)
    }
}

/// A change to the store, applied by the writer thread.
#[derive(Debug, Clone)]
pub enum Write {
    Set {
        key: String,
        value: String,
        expires_secs: u32,
    },
    Del(String),
    Increment {
        key: String,
        by: i32,
    },
    ListAdd {
        list: String,
        value: String,
    },
    ListDel {
        list: String,
        value: String,
    },
    ListClear(String),
    SetAdd {
        set: String,
        value: String,
    },
    SetDel {
        set: String,
        value: String,
    },
    SetClear(String),
}

/// The result of a [`Write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Bool(bool),
    U32(u32),
    I32(i32),
}

/// The result of a `Get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub value: String,
    pub exists: bool,
}

/// Why an operation failed: the store refused it (wrong type, not a number,
/// overflow) or the database failed.
#[derive(Debug)]
enum OpError {
    Rejected(String),
    Storage(redb::Error),
}

impl From<redb::StorageError> for OpError {
    fn from(e: redb::StorageError) -> Self {
        OpError::Storage(e.into())
    }
}

impl From<redb::TableError> for OpError {
    fn from(e: redb::TableError) -> Self {
        OpError::Storage(e.into())
    }
}

impl From<redb::TransactionError> for OpError {
    fn from(e: redb::TransactionError) -> Self {
        OpError::Storage(e.into())
    }
}

impl OpError {
    fn message(self) -> String {
        match self {
            OpError::Rejected(m) => m,
            OpError::Storage(e) => format!("storage error: {e}"),
        }
    }
}

struct Job {
    bucket: String,
    write: Write,
    reply: oneshot::Sender<Result<Outcome, String>>,
}

/// The open database and its writer thread. Cheap to share behind an `Arc`.
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
    /// `None` once closed.
    writer: Mutex<Option<(mpsc::Sender<Job>, JoinHandle<()>)>>,
    writer_alive: Arc<AtomicBool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the database at `path` and starts its writer
    /// thread. Blocking: call it off the async runtime's workers.
    pub fn open(path: &Path) -> Result<Store, String> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let deadline = Instant::now() + OPEN_LOCK_WAIT;
        let db = loop {
            match Database::create(path) {
                Ok(db) => break db,
                Err(DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
            }
        };
        // Create the table once so read transactions always find it.
        let txn = db
            .begin_write()
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        txn.open_table(ENTRIES)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        txn.commit()
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;

        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_alive = Arc::new(AtomicBool::new(true));
        let thread = {
            let db = db.clone();
            let alive = AliveGuard(writer_alive.clone());
            std::thread::Builder::new()
                .name("kv-writer".into())
                .spawn(move || {
                    let _alive = alive;
                    writer_loop(&db, &rx);
                })
                .map_err(|e| format!("cannot start the writer thread: {e}"))?
        };
        Ok(Store {
            db,
            path: path.to_owned(),
            writer: Mutex::new(Some((tx, thread))),
            writer_alive,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True while the database is open and its writer thread runs.
    pub fn is_open(&self) -> bool {
        self.writer_alive.load(Ordering::SeqCst)
            && self
                .writer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
    }

    /// Applies `write` in `bucket`; returns once it is committed durably.
    pub async fn write(&self, bucket: &str, write: Write) -> Result<Outcome, String> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            bucket: bucket.to_owned(),
            write,
            reply,
        };
        {
            let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let (tx, _) = guard.as_ref().ok_or("the store is closed")?;
            tx.send(job).map_err(|_| "the store's writer stopped")?;
        }
        rx.await
            .map_err(|_| "the store's writer stopped before answering".to_owned())?
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Result<Got, String> {
        let key = key.to_owned();
        self.read(bucket, move |t, b, now| match load(t, b, &key, now)? {
            None => Ok(Got {
                value: String::new(),
                exists: false,
            }),
            Some(Entry::Str { value, .. }) => Ok(Got {
                value,
                exists: true,
            }),
            Some(other) => Err(wrong_type(&key, &other, "a string")),
        })
        .await
    }

    pub async fn contains(&self, bucket: &str, key: &str) -> Result<bool, String> {
        let key = key.to_owned();
        self.read(
            bucket,
            move |t, b, now| Ok(load(t, b, &key, now)?.is_some()),
        )
        .await
    }

    /// Items `start..=stop` of a list, indices as in Redis `LRANGE`
    /// (negative ones count from the end).
    pub async fn list_range(
        &self,
        bucket: &str,
        list: &str,
        start: i32,
        stop: i32,
    ) -> Result<Vec<String>, String> {
        let list = list.to_owned();
        self.read(bucket, move |t, b, now| {
            let items = load_list(t, b, &list, now)?;
            Ok(lrange(&items, start, stop).to_vec())
        })
        .await
    }

    pub async fn set_query(&self, bucket: &str, set: &str) -> Result<Vec<String>, String> {
        let set = set.to_owned();
        self.read(bucket, move |t, b, now| {
            Ok(load_set(t, b, &set, now)?.into_iter().collect())
        })
        .await
    }

    pub async fn set_union(&self, bucket: &str, sets: Vec<String>) -> Result<Vec<String>, String> {
        self.read(bucket, move |t, b, now| {
            let mut all = BTreeSet::new();
            for name in &sets {
                all.extend(load_set(t, b, name, now)?);
            }
            Ok(all.into_iter().collect())
        })
        .await
    }

    pub async fn set_intersection(
        &self,
        bucket: &str,
        sets: Vec<String>,
    ) -> Result<Vec<String>, String> {
        self.read(bucket, move |t, b, now| {
            let mut acc: Option<BTreeSet<String>> = None;
            for name in &sets {
                let members = load_set(t, b, name, now)?;
                acc = Some(match acc {
                    None => members,
                    Some(acc) => acc.intersection(&members).cloned().collect(),
                });
            }
            Ok(acc.unwrap_or_default().into_iter().collect())
        })
        .await
    }

    /// Runs `f` on the table in a read transaction, in the calling task.
    /// A point read is served from redb's cache in microseconds; handing it
    /// to the blocking pool cost two thread wake-ups per call, more than the
    /// read itself. Writes, which wait for the disk, have their own thread.
    async fn read<T, F>(&self, bucket: &str, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadOnlyTable<Key, &'static [u8]>, &str, u64) -> Result<T, OpError>
            + Send
            + 'static,
    {
        if !self.is_open() {
            return Err("the store is closed".into());
        }
        let read = || {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(ENTRIES)?;
            f(&table, bucket, now_ms())
        };
        read().map_err(OpError::message)
    }

    /// Stops the writer thread once it has answered every queued write. The
    /// database file closes when the last in-flight read ends.
    pub fn close(&self) {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((tx, thread)) = writer {
            drop(tx);
            if thread.join().is_err() {
                tracing::error!("the keyvalue writer thread panicked");
            }
        }
    }
}

/// Clears the writer's liveness flag however its thread ends (even by panic).
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn writer_loop(db: &Database, rx: &mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match apply_batch(db, &batch) {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!("keyvalue write transaction failed: {e}");
                let message = format!("storage error: {e}");
                for job in batch {
                    let _ = job.reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// Applies every job of `batch` in one transaction and commits it durably.
/// A refused job changes nothing and gets its own error; a storage error
/// fails the whole batch (nothing is committed).
fn apply_batch(db: &Database, batch: &[Job]) -> Result<Vec<Result<Outcome, String>>, redb::Error> {
    let mut txn = db.begin_write()?;
    // The default, stated here because the provider's promise depends on it:
    // `commit` returns only once the data is on disk.
    txn.set_durability(Durability::Immediate)?;
    let results = {
        let mut table = txn.open_table(ENTRIES)?;
        let now = now_ms();
        let mut results = Vec::with_capacity(batch.len());
        for job in batch {
            match apply(&mut table, &job.bucket, &job.write, now) {
                Ok(outcome) => results.push(Ok(outcome)),
                Err(OpError::Rejected(m)) => results.push(Err(m)),
                Err(OpError::Storage(e)) => return Err(e),
            }
        }
        results
    };
    txn.commit()?;
    Ok(results)
}

fn apply(
    table: &mut WriteTable<'_>,
    bucket: &str,
    write: &Write,
    now: u64,
) -> Result<Outcome, OpError> {
    match write {
        Write::Set {
            key,
            value,
            expires_secs,
        } => {
            let expires_at_ms = match expires_secs {
                0 => 0,
                s => now.saturating_add(u64::from(*s) * 1000),
            };
            store(
                table,
                bucket,
                key,
                &Entry::Str {
                    value: value.clone(),
                    expires_at_ms,
                },
            )?;
            Ok(Outcome::Done)
        }
        Write::Del(key) => {
            let existed = load(table, bucket, key, now)?.is_some();
            table.remove((bucket, key.as_str()))?;
            Ok(Outcome::Bool(existed))
        }
        Write::Increment { key, by } => {
            let (current, expires_at_ms) = match load(table, bucket, key, now)? {
                None => (0, 0),
                Some(Entry::Str {
                    value,
                    expires_at_ms,
                }) => {
                    let n = value.parse::<i32>().map_err(|_| {
                        OpError::Rejected(format!(
                            "cannot increment {key:?}: its value {value:?} is not an integer"
                        ))
                    })?;
                    (n, expires_at_ms)
                }
                Some(other) => return Err(wrong_type(key, &other, "a string")),
            };
            let new = current.checked_add(*by).ok_or_else(|| {
                OpError::Rejected(format!(
                    "cannot increment {key:?}: {current} + {by} overflows a 32-bit integer"
                ))
            })?;
            // Like Redis INCR, an increment keeps the key's expiry.
            store(
                table,
                bucket,
                key,
                &Entry::Str {
                    value: new.to_string(),
                    expires_at_ms,
                },
            )?;
            Ok(Outcome::I32(new))
        }
        Write::ListAdd { list, value } => {
            let mut items = load_list(table, bucket, list, now)?;
            items.push(value.clone());
            let len = u32::try_from(items.len())
                .map_err(|_| OpError::Rejected(format!("list {list:?} is full")))?;
            store(table, bucket, list, &Entry::List(items))?;
            Ok(Outcome::U32(len))
        }
        Write::ListDel { list, value } => {
            let mut items = load_list(table, bucket, list, now)?;
            let Some(at) = items.iter().position(|v| v == value) else {
                return Ok(Outcome::Bool(false));
            };
            items.remove(at);
            if items.is_empty() {
                table.remove((bucket, list.as_str()))?;
            } else {
                store(table, bucket, list, &Entry::List(items))?;
            }
            Ok(Outcome::Bool(true))
        }
        Write::ListClear(list) => {
            let existed = !load_list(table, bucket, list, now)?.is_empty();
            table.remove((bucket, list.as_str()))?;
            Ok(Outcome::Bool(existed))
        }
        Write::SetAdd { set, value } => {
            let mut members = load_set(table, bucket, set, now)?;
            let added = members.insert(value.clone());
            if added {
                store(table, bucket, set, &Entry::Set(members))?;
            }
            Ok(Outcome::U32(u32::from(added)))
        }
        Write::SetDel { set, value } => {
            let mut members = load_set(table, bucket, set, now)?;
            let removed = members.remove(value);
            if removed {
                if members.is_empty() {
                    table.remove((bucket, set.as_str()))?;
                } else {
                    store(table, bucket, set, &Entry::Set(members))?;
                }
            }
            Ok(Outcome::U32(u32::from(removed)))
        }
        Write::SetClear(set) => {
            let existed = !load_set(table, bucket, set, now)?.is_empty();
            table.remove((bucket, set.as_str()))?;
            Ok(Outcome::Bool(existed))
        }
    }
}

/// The live entry at `(bucket, key)`: `None` if absent or expired.
fn load<T>(table: &T, bucket: &str, key: &str, now: u64) -> Result<Option<Entry>, OpError>
where
    T: ReadableTable<Key, &'static [u8]>,
{
    let Some(guard) = table.get((bucket, key))? else {
        return Ok(None);
    };
    let entry: Entry = rmp_serde::from_slice(guard.value()).map_err(|e| {
        OpError::Rejected(format!("the stored value of {key:?} is unreadable: {e}"))
    })?;
    Ok((!entry.expired(now)).then_some(entry))
}

/// The list at `key` (empty if absent); an error if the key holds another type.
fn load_list<T>(table: &T, bucket: &str, key: &str, now: u64) -> Result<Vec<String>, OpError>
where
    T: ReadableTable<Key, &'static [u8]>,
{
    match load(table, bucket, key, now)? {
        None => Ok(Vec::new()),
        Some(Entry::List(items)) => Ok(items),
        Some(other) => Err(wrong_type(key, &other, "a list")),
    }
}

/// The set at `key` (empty if absent); an error if the key holds another type.
fn load_set<T>(table: &T, bucket: &str, key: &str, now: u64) -> Result<BTreeSet<String>, OpError>
where
    T: ReadableTable<Key, &'static [u8]>,
{
    match load(table, bucket, key, now)? {
        None => Ok(BTreeSet::new()),
        Some(Entry::Set(members)) => Ok(members),
        Some(other) => Err(wrong_type(key, &other, "a set")),
    }
}

fn store(
    table: &mut WriteTable<'_>,
    bucket: &str,
    key: &str,
    entry: &Entry,
) -> Result<(), OpError> {
    let bytes = rmp_serde::to_vec(entry)
        .map_err(|e| OpError::Rejected(format!("cannot encode the value of {key:?}: {e}")))?;
    table.insert((bucket, key), bytes.as_slice())?;
    Ok(())
}

fn wrong_type(key: &str, found: &Entry, wanted: &str) -> OpError {
    OpError::Rejected(format!(
        "wrong type: key {key:?} holds {}, not {wanted}",
        found.kind()
    ))
}

/// `items[start..=stop]` with Redis `LRANGE` index rules.
fn lrange(items: &[String], start: i32, stop: i32) -> &[String] {
    let len = items.len() as i64;
    let resolve = |i: i32| {
        let i = i64::from(i);
        if i < 0 {
            len + i
        } else {
            i
        }
    };
    let start = resolve(start).max(0);
    let stop = resolve(stop).min(len - 1);
    if start > stop || start >= len {
        return &[];
    }
    // Both are within 0..len here.
    &items[start as usize..=stop as usize]
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lrange_follows_redis() {
        let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let r = |s, e| lrange(&items, s, e).to_vec();
        assert_eq!(r(0, 1), ["a", "b"]);
        assert_eq!(r(0, -1), ["a", "b", "c", "d"]);
        assert_eq!(r(-2, -1), ["c", "d"]);
        assert_eq!(r(-100, 100), ["a", "b", "c", "d"]);
        assert_eq!(r(2, 1), Vec::<String>::new());
        assert_eq!(r(4, 10), Vec::<String>::new());
        assert_eq!(r(-1, -2), Vec::<String>::new());
        assert_eq!(lrange(&[], 0, -1).len(), 0);
    }
}
