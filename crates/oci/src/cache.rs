//! The cache: content-addressed blobs (layers and manifests) under
//! `blobs/sha256/<hex>`, and a tag index under `tags/<sha256 of the
//! reference>.json`, one small file per tag.
//!
//! Every file is written to a temporary file created with `create_new` in
//! the directory it ends up in, synced, then renamed into place, and the
//! directory synced: a reader sees a whole file or none, and two fetches of
//! the same artifact at once each rename a complete copy of the same bytes.
//! A blob is hashed again on every read; one that does not match its name is
//! removed.

use std::io::{ErrorKind, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::digest::Digest;
use crate::error::OciError;
use crate::reference::Reference;

/// The largest manifest kept or read (a single-layer manifest is well under 1 KiB).
pub(crate) const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// What the cache holds for a digest.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The blob, hashed and found to match.
    Hit(Vec<u8>),
    /// Nothing.
    Miss,
    /// A blob that did not match its digest; it has been removed.
    Corrupt {
        /// What it hashed to.
        actual: String,
    },
}

/// One tag's entry in the index: what it pointed at when last fetched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TagEntry {
    /// The reference, canonical form (the file name is its hash).
    pub reference: String,
    pub manifest_digest: String,
    pub layer_digest: String,
    pub media_type: String,
}

/// The cache directory.
#[derive(Debug)]
pub(crate) struct Cache {
    blobs: PathBuf,
    tags: PathBuf,
}

impl Cache {
    /// Opens (creating, owner-only) the cache under `root`.
    pub(crate) fn open(root: &Path) -> Result<Cache, OciError> {
        let cache = Cache {
            blobs: root.join("blobs").join("sha256"),
            tags: root.join("tags"),
        };
        for dir in [&cache.blobs, &cache.tags] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| OciError::cache(dir, e))?;
        }
        Ok(cache)
    }

    /// Where the blob with this digest lives.
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Reads and verifies a blob of at most `max` bytes (a larger file
    /// cannot be a blob this cache wrote, and counts as corrupt).
    pub(crate) async fn read_blob(&self, digest: &Digest, max: u64) -> Result<Lookup, OciError> {
        let path = self.blob_path(digest);
        let expected = digest.clone();
        blocking(move || read_verified(&path, &expected, max)).await
    }

    /// Stores a small blob held in memory (a manifest), after checking it
    /// hashes to `digest`.
    pub(crate) async fn put_blob(
        &self,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<PathBuf, OciError> {
        let path = self.blob_path(digest);
        let actual = Digest::of(bytes);
        if actual != *digest {
            // A caller's bug, not the registry's: callers verify first.
            return Err(OciError::cache(
                &path,
                std::io::Error::new(
                    ErrorKind::InvalidData,
                    format!("content hashes to {actual}"),
                ),
            ));
        }
        write_atomically(&self.blobs, &path, bytes).await?;
        Ok(path)
    }

    /// A writer for a blob that arrives in chunks (a layer).
    pub(crate) async fn blob_writer(&self, digest: &Digest) -> Result<BlobWriter, OciError> {
        let (file, temp) = create_temp(&self.blobs).await?;
        Ok(BlobWriter {
            file,
            temp,
            hasher: Sha256::new(),
            len: 0,
            digest: digest.clone(),
            dest: self.blob_path(digest),
            dir: self.blobs.clone(),
        })
    }

    fn tag_path(&self, reference: &Reference) -> PathBuf {
        let key = Digest::of(reference.to_string().as_bytes());
        self.tags.join(format!("{}.json", key.hex()))
    }

    /// The index entry of a tag, if there is a readable one for exactly
    /// this reference.
    pub(crate) async fn read_tag(
        &self,
        reference: &Reference,
    ) -> Result<Option<TagEntry>, OciError> {
        let path = self.tag_path(reference);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(OciError::cache(&path, e)),
        };
        // An entry that does not parse is as good as none: it was never
        // written half (renames are atomic), so it is foreign; ignore it.
        Ok(serde_json::from_slice::<TagEntry>(&bytes)
            .ok()
            .filter(|entry| entry.reference == reference.to_string()))
    }

    /// Records what a tag points at.
    pub(crate) async fn write_tag(
        &self,
        reference: &Reference,
        entry: &TagEntry,
    ) -> Result<(), OciError> {
        let path = self.tag_path(reference);
        let bytes = serde_json::to_vec_pretty(entry)
            .map_err(|e| OciError::cache(&path, std::io::Error::other(e)))?;
        write_atomically(&self.tags, &path, &bytes).await
    }
}

/// A blob being written: hashed as it goes, renamed into place only when
/// whole and matching its digest. Dropped unfinished, it leaves nothing.
#[derive(Debug)]
pub(crate) struct BlobWriter {
    file: tokio::fs::File,
    temp: TempFile,
    hasher: Sha256,
    len: u64,
    digest: Digest,
    dest: PathBuf,
    dir: PathBuf,
}

/// How finishing a blob can fail.
#[derive(Debug)]
pub(crate) enum FinishError {
    /// The bytes hashed to this instead.
    Mismatch { actual: String },
    /// The cache could not be written.
    Cache(OciError),
}

impl BlobWriter {
    /// Bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), OciError> {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| OciError::cache(&self.temp.path, e))
    }

    /// Verifies, syncs and renames the blob into place; returns its path.
    pub(crate) async fn finish(mut self) -> Result<PathBuf, FinishError> {
        let actual = Digest::from_hasher(self.hasher.clone());
        if actual != self.digest {
            return Err(FinishError::Mismatch {
                actual: actual.to_string(),
            });
        }
        let temp_path = self.temp.path.clone();
        let cache_err = |e| FinishError::Cache(OciError::cache(&temp_path, e));
        self.file.flush().await.map_err(cache_err)?;
        self.file.sync_all().await.map_err(cache_err)?;
        tokio::fs::rename(&self.temp.path, &self.dest)
            .await
            .map_err(cache_err)?;
        self.temp.keep();
        sync_dir(&self.dir).await.map_err(FinishError::Cache)?;
        Ok(self.dest)
    }
}

/// Writes `bytes` to `dest` through a synced temporary file in `dir`.
async fn write_atomically(dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), OciError> {
    let (mut file, mut temp) = create_temp(dir).await?;
    let written = async {
        file.write_all(bytes).await?;
        file.flush().await?;
        file.sync_all().await
    }
    .await;
    written.map_err(|e| OciError::cache(&temp.path, e))?;
    tokio::fs::rename(&temp.path, dest)
        .await
        .map_err(|e| OciError::cache(dest, e))?;
    temp.keep();
    sync_dir(dir).await
}

/// A new, empty, owner-only file in `dir` that no one else has opened.
async fn create_temp(dir: &Path) -> Result<(tokio::fs::File, TempFile), OciError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut attempts = 0;
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            ".tmp-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true).mode(0o600);
        match options.open(&path).await {
            Ok(file) => return Ok((file, TempFile { path, keep: false })),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && attempts < 16 => attempts += 1,
            Err(e) => return Err(OciError::cache(&path, e)),
        }
    }
}

/// A temporary file, removed on drop unless kept (renamed into place).
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Makes a rename in `dir` durable.
async fn sync_dir(dir: &Path) -> Result<(), OciError> {
    let dir_owned = dir.to_path_buf();
    blocking(move || {
        std::fs::File::open(&dir_owned)
            .and_then(|d| d.sync_all())
            .map_err(|e| OciError::cache(&dir_owned, e))
    })
    .await
}

fn read_verified(path: &Path, expected: &Digest, max: u64) -> Result<Lookup, OciError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Lookup::Miss),
        Err(e) => return Err(OciError::cache(path, e)),
    };
    let mut bytes = Vec::new();
    // One byte past the cap tells an oversized file from one at the cap.
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| OciError::cache(path, e))?;
    let actual = if bytes.len() as u64 > max {
        format!("more than {max} bytes")
    } else {
        let actual = Digest::of(&bytes);
        if actual == *expected {
            return Ok(Lookup::Hit(bytes));
        }
        actual.to_string()
    };
    tracing::warn!(path = %path.display(), expected = %expected, %actual, "removing a corrupt cached blob");
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(OciError::cache(path, e)),
    }
    Ok(Lookup::Corrupt { actual })
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OciError> + Send + 'static,
) -> Result<T, OciError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(OciError::cache("<cache task>", std::io::Error::other(e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(tag: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "oci-cache-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// How many files the blob directory holds (temporary ones included).
    fn blob_files(root: &Path) -> usize {
        std::fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .count()
    }

    #[tokio::test]
    async fn blobs_round_trip_and_corruption_is_removed() {
        let root = temp_root("blobs");
        let cache = Cache::open(&root).unwrap();
        let bytes = b"some layer".to_vec();
        let digest = Digest::of(&bytes);
        assert!(matches!(
            cache.read_blob(&digest, 1024).await.unwrap(),
            Lookup::Miss
        ));

        let mut writer = cache.blob_writer(&digest).await.unwrap();
        writer.write(&bytes[..4]).await.unwrap();
        writer.write(&bytes[4..]).await.unwrap();
        assert_eq!(writer.len(), bytes.len() as u64);
        let path = writer.finish().await.unwrap();
        assert_eq!(path, cache.blob_path(&digest));
        match cache.read_blob(&digest, 1024).await.unwrap() {
            Lookup::Hit(got) => assert_eq!(got, bytes),
            other => panic!("{other:?}"),
        }
        // Larger than the cap: corrupt, whatever it hashes to.
        assert!(matches!(
            cache.read_blob(&digest, 3).await.unwrap(),
            Lookup::Corrupt { .. }
        ));
        assert!(!path.exists());

        cache.put_blob(&digest, &bytes).await.unwrap();
        std::fs::write(&path, b"some layeR").unwrap();
        match cache.read_blob(&digest, 1024).await.unwrap() {
            Lookup::Corrupt { actual } => assert_eq!(actual, Digest::of(b"some layeR").to_string()),
            other => panic!("{other:?}"),
        }
        assert!(!path.exists(), "a corrupt blob is removed");
        // Only the blob directory's own files remain: no temporary files.
        assert_eq!(blob_files(&root), 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn a_mismatching_or_abandoned_writer_leaves_nothing() {
        let root = temp_root("writer");
        let cache = Cache::open(&root).unwrap();
        let digest = Digest::of(b"expected");
        let mut writer = cache.blob_writer(&digest).await.unwrap();
        writer.write(b"something else").await.unwrap();
        match writer.finish().await {
            Err(FinishError::Mismatch { actual }) => {
                assert_eq!(actual, Digest::of(b"something else").to_string())
            }
            other => panic!("{other:?}"),
        }
        let mut abandoned = cache.blob_writer(&digest).await.unwrap();
        abandoned.write(b"half").await.unwrap();
        drop(abandoned);
        assert_eq!(blob_files(&root), 0);
        assert!(cache.put_blob(&digest, b"not it").await.is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn concurrent_writers_of_one_blob_both_succeed() {
        let root = temp_root("race");
        let cache = std::sync::Arc::new(Cache::open(&root).unwrap());
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&bytes);
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (cache, bytes, digest) = (cache.clone(), bytes.clone(), digest.clone());
            tasks.push(tokio::spawn(async move {
                let mut writer = cache.blob_writer(&digest).await.unwrap();
                for chunk in bytes.chunks(7_000) {
                    writer.write(chunk).await.unwrap();
                    tokio::task::yield_now().await;
                }
                writer.finish().await.unwrap()
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        match cache.read_blob(&digest, 1 << 20).await.unwrap() {
            Lookup::Hit(got) => assert_eq!(got, bytes),
            other => panic!("{other:?}"),
        }
        assert_eq!(blob_files(&root), 1);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn tags_round_trip_and_foreign_entries_are_ignored() {
        let root = temp_root("tags");
        let cache = Cache::open(&root).unwrap();
        let reference = crate::reference::parse("r.io/echo:v1").unwrap();
        assert_eq!(cache.read_tag(&reference).await.unwrap(), None);
        let entry = TagEntry {
            reference: reference.to_string(),
            manifest_digest: Digest::of(b"m").to_string(),
            layer_digest: Digest::of(b"l").to_string(),
            media_type: "x".into(),
        };
        cache.write_tag(&reference, &entry).await.unwrap();
        assert_eq!(
            cache.read_tag(&reference).await.unwrap(),
            Some(entry.clone())
        );
        // An entry whose recorded reference differs is not this tag's.
        let other = crate::reference::parse("r.io/echo:v2").unwrap();
        std::fs::copy(cache.tag_path(&reference), cache.tag_path(&other)).unwrap();
        assert_eq!(cache.read_tag(&other).await.unwrap(), None);
        std::fs::write(cache.tag_path(&reference), b"{not json").unwrap();
        assert_eq!(cache.read_tag(&reference).await.unwrap(), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
