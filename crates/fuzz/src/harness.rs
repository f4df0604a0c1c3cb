//! What the targets share: signing keys (so mutants can be signed again and
//! reach the checks behind the signature), a scratch directory with
//! fixtures, and a tokio runtime per thread.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use host_core::claims::{self, SignOptions};
use nkeys::KeyPair;
use sha2::{Digest, Sha256};

use crate::mutate::{b64url_encode, Signer};

/// `(module (memory (export "memory") 1))`, hand-encoded: the smallest
/// module worth signing.
pub const TINY_WASM: &[u8] = &[
    0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, // header
    5, 3, 1, 0, 1, // memory section: one memory, min 1
    7, 10, 1, 6, b'm', b'e', b'm', b'o', b'r', b'y', 2, 0, // export memory
];

/// The JWT header wascap writes and expects.
pub const JWT_HEADER: &[u8] = br#"{"typ":"jwt","alg":"Ed25519"}"#;

/// The harness's keys: an account that issues, a module and a service
/// (provider) subject.
pub struct Keys {
    pub account: KeyPair,
    pub module: KeyPair,
    pub service: KeyPair,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("account", &self.account.public_key())
            .finish_non_exhaustive()
    }
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        account: KeyPair::new_account(),
        module: KeyPair::new_module(),
        service: KeyPair::new_service(),
    })
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A JWT over `header` and `claims` (JSON bytes), signed by `key`.
pub fn jwt(header: &[u8], claims: &[u8], key: &KeyPair) -> String {
    let signed = format!("{}.{}", b64url_encode(header), b64url_encode(claims));
    let sig = key.sign(signed.as_bytes()).unwrap_or_default();
    format!("{signed}.{}", b64url_encode(&sig))
}

fn sha256_upper_hex(bytes: &[u8]) -> String {
    hex::encode_upper(Sha256::digest(bytes))
}

/// A provider's claims (JSON) for binaries `targets`.
pub fn par_claims_json(targets: &[(String, Vec<u8>)], extra: serde_json::Value) -> Vec<u8> {
    let hashes: serde_json::Map<String, serde_json::Value> = targets
        .iter()
        .map(|(t, b)| (t.clone(), sha256_upper_hex(b).into()))
        .collect();
    let mut claims = serde_json::json!({
        "jti": "fuzz",
        "iat": now_secs(),
        "iss": keys().account.public_key(),
        "sub": keys().service.public_key(),
        "wascap": {
            "name": "fuzz-provider",
            "capid": "wasmcloud:fuzz",
            "vendor": "fuzz",
            "target_hashes": hashes,
        },
        "wascap_revision": 3,
    });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            claims.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&claims).unwrap_or_default()
}

/// The harness's signer for structure-aware mutations.
#[derive(Debug)]
pub struct HarnessSigner;

impl Signer for HarnessSigner {
    fn sign_jwt(&self, header: &[u8], claims: &[u8]) -> Option<String> {
        let mut value: serde_json::Value = serde_json::from_slice(claims).ok()?;
        value
            .as_object_mut()?
            .insert("iss".into(), keys().account.public_key().into());
        let claims = serde_json::to_vec(&value).ok()?;
        Some(jwt(header, &claims, &keys().account))
    }

    fn sign_wasm(&self, wasm: &[u8]) -> Option<Vec<u8>> {
        sign_actor(wasm, &SignOptions::default()).ok()
    }

    fn sign_par_claims(&self, targets: &[(String, Vec<u8>)]) -> Option<String> {
        let claims = par_claims_json(targets, serde_json::Value::Null);
        Some(jwt(JWT_HEADER, &claims, &keys().account))
    }
}

/// `wasm` signed by the harness's account for its module key.
pub fn sign_actor(wasm: &[u8], options: &SignOptions) -> Result<Vec<u8>, claims::ClaimsError> {
    let mut options = options.clone();
    if options.name.is_empty() {
        options.name = "fuzz".into();
    }
    claims::sign(wasm, &options, &keys().account, &keys().module)
}

/// A tar (gzipped when `gz`) of `entries` (name, bytes), as `par create`
/// writes them.
pub fn tar_of(entries: &[(&str, &[u8])], gz: bool) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, bytes) in entries {
        tar.extend(crate::mutate::tar_entry(b'0', name, bytes));
    }
    tar.extend_from_slice(&[0u8; 1024]);
    if gz {
        crate::mutate::gzip(&tar)
    } else {
        tar
    }
}

/// A signed provider archive with one binary per target.
pub fn archive(targets: &[(String, Vec<u8>)], gz: bool) -> Vec<u8> {
    let claims = par_claims_json(targets, serde_json::Value::Null);
    let jwt = jwt(JWT_HEADER, &claims, &keys().account);
    let names: Vec<String> = targets.iter().map(|(t, _)| format!("{t}.bin")).collect();
    let mut entries: Vec<(&str, &[u8])> = vec![("claims.jwt", jwt.as_bytes())];
    for ((_, bytes), name) in targets.iter().zip(&names) {
        entries.push((name, bytes));
    }
    tar_of(&entries, gz)
}

/// A scratch directory for this process, with the fixtures manifests may
/// point at: `actor.wasm` (signed), `unsigned.wasm`, `provider.par` (for
/// this host's target), `other.par` (for another target only).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wasmhost-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let actor = sign_actor(TINY_WASM, &SignOptions::default()).unwrap_or_default();
        let _ = std::fs::write(dir.join("actor.wasm"), actor);
        let _ = std::fs::write(dir.join("unsigned.wasm"), TINY_WASM);
        let host = host_core::par::host_target();
        let _ = std::fs::write(
            dir.join("provider.par"),
            archive(&[(host, b"#!/bin/sh\n".to_vec())], true),
        );
        let _ = std::fs::write(
            dir.join("other.par"),
            archive(&[("sparc-plan9".into(), b"x".to_vec())], false),
        );
        dir
    })
}

/// Removes the scratch directory (at the end of a run).
pub fn remove_scratch() {
    let dir = std::env::temp_dir().join(format!("wasmhost-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(dir);
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start a tokio runtime: {e}"));
}

/// Runs `future` to completion on this thread's runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(future))
}
