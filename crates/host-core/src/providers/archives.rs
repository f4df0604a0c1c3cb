//! Provider archives verified before, by file: a start from an unchanged
//! archive costs a `stat`, not a read, a gunzip and a hash.

use std::{collections::HashMap, path::PathBuf};

use parking_lot::Mutex;
use wire::{CallError, CallResult};

use super::ProviderSupervisor;
use crate::par;

/// (device, inode, size, mtime seconds, mtime nanoseconds) of an archive file.
type ArchiveStamp = (u64, u64, u64, i64, i64);

/// Archives verified before, by path: (file stamp, what it gave).
#[derive(Default)]
pub(crate) struct Verified(Mutex<HashMap<PathBuf, (ArchiveStamp, par::ExtractedProvider)>>);

impl ProviderSupervisor {
    /// Verifies the archive at `path` and takes its binary out, or reuses the
    /// result of an earlier start of the very same file (same device, inode,
    /// size and modification time) whose claims have not expired since and
    /// whose extracted binary is still in place.
    pub(crate) async fn verified_archive(
        &self,
        path: PathBuf,
    ) -> CallResult<par::ExtractedProvider> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path)
            .map_err(|e| CallError::not_found(format!("cannot read {}: {e}", path.display())))?;
        let stamp = (
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
        );
        if let Some((seen, extracted)) = self.archives.0.lock().get(&path) {
            if *seen == stamp && !extracted.expired() && extracted.binary.exists() {
                return Ok(extracted.clone());
            }
        }
        let cache = self.settings.cache_dir.clone();
        let allowed = self.settings.allowed_issuers.clone();
        let read_path = path.clone();
        let extracted = tokio::task::spawn_blocking(move || {
            let bytes = par::read_file(&read_path).map_err(|e| {
                CallError::not_found(format!("cannot read {}: {e}", read_path.display()))
            })?;
            par::verify_and_extract(&bytes, &cache, &allowed)
                .map_err(|e| CallError::denied(format!("provider refused: {e}")))
        })
        .await
        .map_err(|e| CallError::internal(format!("reading the archive failed: {e}")))??;
        self.archives
            .0
            .lock()
            .insert(path, (stamp, extracted.clone()));
        Ok(extracted)
    }
}
