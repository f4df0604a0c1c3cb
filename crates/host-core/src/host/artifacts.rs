//! Where actors and provider archives come from: bytes a client sent, a
//! file the host reads, or an OCI reference pulled through the registry
//! client and its digest cache (the `oci` crate). What comes out goes
//! through the same claims and archive verification as a file.

use std::{path::PathBuf, sync::Arc};

use oci::{ArtifactKind, OciError};
use wire::{control::Artifact, CallError, CallResult};

use super::Host;
use crate::par;

/// The registry client a host pulls references with.
pub struct Artifacts {
    client: oci::Client,
}

impl Artifacts {
    pub fn new(client: oci::Client) -> Self {
        Self { client }
    }

    pub fn client(&self) -> &oci::Client {
        &self.client
    }

    /// Pulls `reference` (verified against its digest, through the cache).
    pub async fn pull(&self, reference: &str, kind: ArtifactKind) -> CallResult<oci::Fetched> {
        let fetched = self
            .client
            .fetch(reference, kind)
            .await
            .map_err(|e| oci_error(&e))?;
        if let Some(warning) = &fetched.warning {
            tracing::warn!(reference, "{warning}");
        }
        tracing::info!(
            reference,
            digest = %fetched.digest,
            from_cache = fetched.from_cache,
            "pulled"
        );
        Ok(fetched)
    }
}

/// A registry failure as a typed error, by its variant.
pub fn oci_error(err: &OciError) -> CallError {
    let message = err.to_string();
    match err {
        OciError::NotFound { .. } => CallError::not_found(message),
        OciError::Unreachable { .. } | OciError::Registry { .. } => CallError::unavailable(message),
        OciError::TooLarge { .. } => CallError::too_large(message),
        OciError::Cache { .. } => CallError::internal(message),
        OciError::BadReference { .. }
        | OciError::LatestRefused { .. }
        | OciError::InsecureRefused { .. }
        | OciError::Denied { .. }
        | OciError::WrongMediaType { .. }
        | OciError::BadManifest { .. }
        | OciError::DigestMismatch { .. } => CallError::denied(message),
    }
}

/// An actor's wasm and the reference it came from.
pub struct ActorSource {
    pub wasm: Vec<u8>,
    pub image_ref: Option<String>,
}

/// A provider archive's file and the reference it came from.
pub struct ArchiveSource {
    pub path: PathBuf,
    pub image_ref: Option<String>,
}

impl Host {
    /// Pulls OCI references with `artifacts` from now on; without it, a
    /// reference is refused.
    pub fn set_artifacts(&self, artifacts: Arc<Artifacts>) {
        if self.artifacts.set(artifacts).is_err() {
            tracing::warn!("the host's registry client was already set; keeping the first");
        }
    }

    /// The registry client, if the host has one.
    pub fn artifacts(&self) -> Option<&Arc<Artifacts>> {
        self.artifacts.get()
    }

    fn registry_client(&self, reference: &str) -> CallResult<&Arc<Artifacts>> {
        self.artifacts.get().ok_or_else(|| {
            CallError::unavailable(format!(
                "{reference}: this host has no registry client, so it cannot pull OCI references"
            ))
        })
    }

    /// The wasm an [`Artifact`] names.
    pub async fn actor_source(&self, artifact: Artifact) -> CallResult<ActorSource> {
        match artifact {
            Artifact::Bytes(bytes) => Ok(ActorSource {
                wasm: bytes.into_vec(),
                image_ref: None,
            }),
            Artifact::Path(path) => {
                // Up to a whole actor from disk: off the async threads.
                let wasm = tokio::task::spawn_blocking(move || {
                    par::read_regular_file(path.as_ref(), wire::MAX_PAYLOAD as u64)
                        .map_err(|e| CallError::not_found(format!("cannot read {path}: {e}")))
                })
                .await
                .map_err(|e| CallError::internal(format!("reading the actor: {e}")))??;
                Ok(ActorSource {
                    wasm,
                    image_ref: None,
                })
            }
            Artifact::Reference(reference) => {
                let fetched = self
                    .registry_client(&reference)?
                    .pull(&reference, ArtifactKind::Actor)
                    .await?;
                Ok(ActorSource {
                    wasm: fetched.bytes,
                    image_ref: Some(reference),
                })
            }
        }
    }

    /// The archive file an [`Artifact`] names: a pulled archive is its
    /// blob in the digest cache, read and verified as any archive.
    pub async fn archive_source(&self, artifact: Artifact) -> CallResult<ArchiveSource> {
        match artifact {
            Artifact::Bytes(_) => Err(CallError::denied(
                "a provider archive is started from its path or an OCI reference, not sent whole",
            )),
            Artifact::Path(path) => Ok(ArchiveSource {
                path: path.into(),
                image_ref: None,
            }),
            Artifact::Reference(reference) => {
                let fetched = self
                    .registry_client(&reference)?
                    .pull(&reference, ArtifactKind::Provider)
                    .await?;
                Ok(ArchiveSource {
                    path: fetched.path,
                    image_ref: Some(reference),
                })
            }
        }
    }
}
