//! What an artifact is, and the media types wasmCloud gives each kind.
//!
//! From wasmCloud v0.82.0: the host's `crates/host/src/oci.rs` fetches actors
//! with layers of [`ACTOR_LAYER_MEDIA_TYPE`] or [`OCI_LAYER_MEDIA_TYPE`], and
//! providers with [`PROVIDER_LAYER_MEDIA_TYPE`] or [`OCI_LAYER_MEDIA_TYPE`];
//! `wash push` (`crates/wash-lib/src/registry.rs`) pushes one layer with the
//! kind's layer type, a config blob `{}` with the kind's config type, in an
//! OCI image manifest ([`MANIFEST_MEDIA_TYPE`]).

use std::fmt;

/// The layer media type of an actor (a wasm module or component).
pub const ACTOR_LAYER_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The config media type `wash push` gives an actor.
pub const ACTOR_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasmcloud.actor.archive.config";
/// The layer media type of a provider archive (`.par`, `.par.gz`).
pub const PROVIDER_LAYER_MEDIA_TYPE: &str =
    "application/vnd.wasmcloud.provider.archive.layer.v1+par";
/// The config media type `wash push` gives a provider archive.
pub const PROVIDER_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasmcloud.provider.archive.config";
/// The generic OCI layer type the wasmCloud host also accepts for either kind.
pub const OCI_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// The manifest media type pushed (and the first one asked for when pulling).
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's image manifest, which registries may serve for the same artifacts.
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What is fetched or pushed; it selects the media types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    /// A wasm actor (module or component).
    Actor,
    /// A provider archive.
    Provider,
}

impl ArtifactKind {
    /// The layer media types a fetch of this kind accepts, as the wasmCloud host does.
    pub fn accepted_layer_media_types(self) -> &'static [&'static str] {
        match self {
            ArtifactKind::Actor => &[ACTOR_LAYER_MEDIA_TYPE, OCI_LAYER_MEDIA_TYPE],
            ArtifactKind::Provider => &[PROVIDER_LAYER_MEDIA_TYPE, OCI_LAYER_MEDIA_TYPE],
        }
    }

    /// The layer media type a push of this kind uses, as `wash push` does.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            ArtifactKind::Actor => ACTOR_LAYER_MEDIA_TYPE,
            ArtifactKind::Provider => PROVIDER_LAYER_MEDIA_TYPE,
        }
    }

    /// The config media type a push of this kind uses, as `wash push` does.
    pub fn config_media_type(self) -> &'static str {
        match self {
            ArtifactKind::Actor => ACTOR_CONFIG_MEDIA_TYPE,
            ArtifactKind::Provider => PROVIDER_CONFIG_MEDIA_TYPE,
        }
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArtifactKind::Actor => "an actor",
            ArtifactKind::Provider => "a provider archive",
        })
    }
}
