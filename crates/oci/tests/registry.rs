//! The `oci` crate against a real registry: Debian's `docker-registry`
//! (distribution 2.8), started per test on a loopback port with storage in a
//! private directory. One test binary; the modules split it by subject.

#[path = "registry/auth.rs"]
mod auth;
#[path = "registry/cache.rs"]
mod cache;
#[path = "registry/fetch.rs"]
mod fetch;
#[path = "registry/policy.rs"]
mod policy;

use std::collections::HashMap;
use std::path::Path;

use oci::{ArtifactKind, Client, Credentials, OciError, Policy};

use test_support::registry::{temp_dir, Registry};

/// A policy that lets the client speak plain HTTP to this registry.
fn insecure_ok(registry: &Registry) -> Policy {
    Policy {
        allowed_insecure: vec![registry.addr.clone()],
        ..Policy::default()
    }
}

/// A client for `registry` with a cache in a fresh directory.
fn client_for(registry: &Registry) -> Client {
    client_in(
        &registry.new_cache_dir(),
        insecure_ok(registry),
        HashMap::new(),
    )
}

fn client_in(cache: &Path, policy: Policy, credentials: HashMap<String, Credentials>) -> Client {
    Client::new(cache, policy, credentials).expect("a client with a fresh cache")
}

/// A client for `registry` caching in `cache`, refusing layers over `max` bytes.
fn capped_client(registry: &Registry, cache: &Path, max: u64) -> Client {
    let policy = Policy {
        max_layer_bytes: max,
        ..insecure_ok(registry)
    };
    client_in(cache, policy, HashMap::new())
}

/// Whether the cache in `cache` holds a blob with these bytes' digest.
fn is_cached(cache: &Path, bytes: &[u8]) -> bool {
    cache
        .join("blobs/sha256")
        .join(&sha256(bytes)[7..])
        .exists()
}

/// A bare protocol client over plain HTTP, to look at or forge what is in
/// the registry without the crate under test.
fn raw_client() -> oci_client::Client {
    use oci_client::client::{ClientConfig, ClientProtocol};
    // The crate under test installs ring's provider when it makes a client;
    // a test that makes this one first (each test is its own process under
    // nextest) must install it itself.
    let _ = rustls::crypto::ring::default_provider().install_default();
    oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
}

/// Distinct artifact bytes: a wasm header for an actor, a tar-like block
/// for a provider (the crate does not look inside either).
fn artifact(kind: ArtifactKind, seed: &str) -> Vec<u8> {
    let mut bytes = match kind {
        ArtifactKind::Actor => b"\0asm\x01\0\0\0".to_vec(),
        ArtifactKind::Provider => b"claims.jwt\0".to_vec(),
    };
    bytes.extend(seed.bytes().cycle().take(4096));
    bytes
}

/// `sha256:<hex>` of `bytes`, computed here, independently of the crate.
fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// An error's message is one line and names `what`.
fn assert_one_line(err: &OciError, what: &str) {
    let message = err.to_string();
    assert!(!message.contains('\n'), "more than one line: {message}");
    assert!(message.contains(what), "`{message}` does not name {what}");
}
