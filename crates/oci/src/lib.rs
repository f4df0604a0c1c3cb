//! Actors and provider archives from OCI registries, as wasmCloud users ship
//! them (`wash push` / `wash pull`, and the wasmCloud 0.82 host's fetcher).
//!
//! # What a caller does
//!
//! ```no_run
//! # async fn demo() -> Result<(), oci::OciError> {
//! use oci::{ArtifactKind, Client, Policy, Source};
//!
//! let client = Client::new("/var/lib/wasmhost/oci", Policy::default(), Default::default())?;
//! match oci::classify("ghcr.io/acme/echo:0.3.4")? {
//!     Source::File(path) => { /* read the file as before */ }
//!     Source::Oci(reference) => {
//!         let fetched = client.fetch(&reference.to_string(), ArtifactKind::Actor).await?;
//!         if let Some(warning) = &fetched.warning {
//!             eprintln!("warning: {warning}");
//!         }
//!         let _wasm: Vec<u8> = fetched.bytes; // verified against fetched.digest
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! * References: [`parse`], [`looks_like_reference`] (the rule that tells a
//!   file from a reference is documented there) and [`classify`], which
//!   does both. `oci://` is accepted and stripped; the registry must be
//!   explicit; `@sha256:` digests pin content.
//! * [`ArtifactKind`] selects the media types (see [`kind`](crate::ACTOR_LAYER_MEDIA_TYPE)
//!   constants: wasmCloud v0.82.0's).
//! * [`Policy`]: `latest` (explicit, or no tag) is refused unless
//!   `allow_latest`; plain HTTP only for registries in `allowed_insecure`
//!   (a registry that answers only plain HTTP is [`OciError::InsecureRefused`]);
//!   layers are capped at `max_layer_bytes` while they download.
//! * [`Credentials`] per registry host, at construction and at run time
//!   ([`Client::set_credentials`], for the lattice's `registries.put`).
//! * [`Client::fetch`] returns [`Fetched`]; [`Client::push`] returns the
//!   manifest digest.
//! * Every failure is an [`OciError`] variant with a one-line message that
//!   names the reference; match on the variant, never on the text.
//!
//! # The cache
//!
//! `cache_dir/blobs/sha256/<hex>` holds layers and manifests by content
//! digest; `cache_dir/tags/<hash>.json` records what each tag pointed at.
//! Files are written to a `create_new` temporary file in the same
//! directory, synced and renamed, so concurrent fetches of one artifact are
//! safe and a crash leaves no half file. Every blob read from the cache is
//! hashed again; a corrupt one is removed and fetched again (or, with the
//! registry unreachable, reported as [`OciError::DigestMismatch`]).
//!
//! * `@sha256:` reference, cached: served without the registry.
//! * Tag: the manifest is fetched from the registry every time, so a tag
//!   that moved is fetched again; the layer is downloaded only if the cache
//!   lacks it (`from_cache` says which).
//! * Tag, registry unreachable (refused, DNS, timeout; not a 401 or 404):
//!   the tag as last fetched is served with `warning` set; uncached, the
//!   error is [`OciError::Unreachable`].
//!
//! TLS is rustls with ring; [`Client::new`] installs ring as the process's
//! default rustls crypto provider unless one was installed before.

mod cache;
mod client;
mod config;
mod digest;
mod error;
mod kind;
mod push;
mod reference;

pub use client::{Client, Fetched};
pub use config::{Credentials, Policy, DEFAULT_MAX_LAYER_BYTES};
pub use error::OciError;
pub use kind::{
    ArtifactKind, ACTOR_CONFIG_MEDIA_TYPE, ACTOR_LAYER_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE, OCI_LAYER_MEDIA_TYPE, PROVIDER_CONFIG_MEDIA_TYPE,
    PROVIDER_LAYER_MEDIA_TYPE,
};
pub use reference::{
    classify, looks_like_reference, parse, Reference, Source, FILE_SCHEME, OCI_SCHEME,
};
