//! Provider archives (PAR): a tar, optionally gzipped, holding `claims.jwt`
//! and one binary per target named `{arch}-{os}.bin`.
//!
//! We read and write the format ourselves rather than through the
//! `provider-archive` crate: its 0.16 release writes claims without the 0.8x
//! `capid` field and panics (an `unwrap`) on an archive whose claims lack a
//! hash for one of its binaries, and a bad archive must never crash the host.
//! The claims themselves go through wascap, as for actors.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wascap::jwt::{Claims, WascapEntity};

const CLAIMS_FILE: &str = "claims.jwt";
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// No provider binary is this large; a bigger entry is a malformed archive.
const MAX_ENTRY_LEN: u64 = 512 * 1024 * 1024;

/// The `wascap` metadata of a provider's claims, as 0.8x tools write it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Clone, Default)]
pub struct ProviderMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The contract the provider implements (`wasmcloud:keyvalue`).
    #[serde(default)]
    pub capid: String,
    pub vendor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rev: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ver: Option<String>,
    /// SHA-256 (upper-case hex) of each target's binary.
    pub target_hashes: HashMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<serde_json::Value>,
}

impl WascapEntity for ProviderMetadata {
    fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| "Unnamed Provider".into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParError {
    #[error("not a provider archive: {0}")]
    NotAnArchive(String),
    #[error("the archive's claims cannot be read: {0}")]
    BadClaims(String),
    #[error("the archive's claims signature is invalid: they were changed or not signed by their issuer {0}")]
    BadSignature(String),
    #[error("the archive's claims expired {0}")]
    Expired(String),
    #[error("the archive's claims are not valid yet: they become valid {0}")]
    NotYetValid(String),
    #[error("issuer {0} is not on this host's list of allowed issuers")]
    IssuerNotAllowed(String),
    #[error("the archive has no binary for this host's target {target} (it has: {available})")]
    MissingTarget { target: String, available: String },
    #[error("the {target} binary's hash {actual} does not match the hash in the claims {claimed}: the archive was changed after signing")]
    HashMismatch {
        target: String,
        claimed: String,
        actual: String,
    },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot sign: {0}")]
    Signing(String),
}

/// The target string of this host, `{arch}-{os}` as in `std::env::consts`.
pub fn host_target() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

fn sha256_upper_hex(bytes: &[u8]) -> String {
    hex::encode_upper(Sha256::digest(bytes))
}

/// An archive read into memory, its claims decoded but not yet judged.
pub struct Archive {
    pub jwt: String,
    pub claims: Claims<ProviderMetadata>,
    /// Binaries by target.
    pub binaries: BTreeMap<String, Vec<u8>>,
}

impl Archive {
    pub fn metadata(&self) -> ProviderMetadata {
        self.claims.metadata.clone().unwrap_or_default()
    }
    pub fn key(&self) -> &str {
        &self.claims.subject
    }
}

/// Reads an archive: tar or gzipped tar with `claims.jwt` and `*.bin` entries.
pub fn read(bytes: &[u8]) -> Result<Archive, ParError> {
    if bytes.len() < 512 && !bytes.starts_with(&GZIP_MAGIC) {
        return Err(ParError::NotAnArchive("the file is too short".into()));
    }
    let reader: Box<dyn Read + '_> = if bytes.starts_with(&GZIP_MAGIC) {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| ParError::NotAnArchive(e.to_string()))?;
    let mut jwt = None;
    let mut binaries = BTreeMap::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| ParError::NotAnArchive(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| ParError::NotAnArchive(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if entry.size() > MAX_ENTRY_LEN {
            return Err(ParError::NotAnArchive(format!("entry {path} is too large")));
        }
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| ParError::NotAnArchive(e.to_string()))?;
        if path == CLAIMS_FILE {
            jwt = Some(
                String::from_utf8(data)
                    .map_err(|_| ParError::BadClaims("claims.jwt is not UTF-8".into()))?,
            );
        } else if let Some(target) = path.strip_suffix(".bin") {
            binaries.insert(target.to_owned(), data);
        }
    }
    let jwt = jwt.ok_or_else(|| ParError::NotAnArchive("it has no claims.jwt".into()))?;
    if binaries.is_empty() {
        return Err(ParError::NotAnArchive("it holds no provider binary".into()));
    }
    let claims =
        Claims::<ProviderMetadata>::decode(&jwt).map_err(|e| ParError::BadClaims(e.to_string()))?;
    Ok(Archive {
        jwt,
        claims,
        binaries,
    })
}

/// Checks signature, validity window, keys and the claims' contents.
pub fn verify_claims(archive: &Archive) -> Result<(), ParError> {
    let validation = wascap::jwt::validate_token::<ProviderMetadata>(&archive.jwt)
        .map_err(|e| ParError::BadClaims(e.to_string()))?;
    if !validation.signature_valid {
        return Err(ParError::BadSignature(archive.claims.issuer.clone()));
    }
    if validation.expired {
        return Err(ParError::Expired(validation.expires_human));
    }
    if validation.cannot_use_yet {
        return Err(ParError::NotYetValid(validation.not_before_human));
    }
    let key = &archive.claims.subject;
    if key.len() != 56 || !key.starts_with('V') || KeyPair::from_public_key(key).is_err() {
        return Err(ParError::BadClaims(format!(
            "the subject `{key}` is not a provider key (V...)"
        )));
    }
    let meta = archive
        .claims
        .metadata
        .as_ref()
        .ok_or_else(|| ParError::BadClaims("the claims have no `wascap` metadata".into()))?;
    if meta.capid.is_empty() {
        return Err(ParError::BadClaims(
            "the claims name no contract (`capid`)".into(),
        ));
    }
    Ok(())
}

/// A verified provider, its binary for this host taken out into the cache.
#[derive(Debug, Clone)]
pub struct ExtractedProvider {
    pub key: String,
    pub metadata: ProviderMetadata,
    pub binary: PathBuf,
    /// The binary's SHA-256 (upper-case hex) as the signed claims have it.
    pub sha256: String,
    /// The claims' `exp`, seconds since the epoch.
    pub expires: Option<u64>,
}

impl ExtractedProvider {
    /// Whether the claims have expired since they were verified.
    pub fn expired(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        self.expires.is_some_and(|exp| exp < now)
    }
}

/// Verifies `bytes` and makes sure this host's binary is in `cache_dir`,
/// checked against the claims' hash before it is ever executed. A binary
/// already in the cache under its claimed hash is reused without copying.
pub fn verify_and_extract(
    bytes: &[u8],
    cache_dir: &Path,
    allowed_issuers: &[String],
) -> Result<ExtractedProvider, ParError> {
    let archive = read(bytes)?;
    verify_claims(&archive)?;
    if !allowed_issuers.is_empty() && !allowed_issuers.contains(&archive.claims.issuer) {
        return Err(ParError::IssuerNotAllowed(archive.claims.issuer.clone()));
    }
    let meta = archive.metadata();
    let target = host_target();
    let available = || {
        archive
            .binaries
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (claimed, binary) = match (
        meta.target_hashes.get(&target),
        archive.binaries.get(&target),
    ) {
        (Some(claimed), Some(binary)) => (claimed.clone(), binary),
        _ => {
            return Err(ParError::MissingTarget {
                target,
                available: available(),
            })
        }
    };
    let actual = sha256_upper_hex(binary);
    if actual != claimed {
        return Err(ParError::HashMismatch {
            target,
            claimed,
            actual,
        });
    }
    crate::paths::ensure_private_dir(cache_dir)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // The directory name is the verified hash; files are written whole (temp
    // file and rename) by this host into an owner-only directory. The file is
    // named after the provider, so `ps` shows what runs.
    let name: String = meta
        .name
        .as_deref()
        .unwrap_or("provider")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = cache_dir.join(&claimed);
    crate::paths::ensure_private_dir(&dir).map_err(|e| std::io::Error::other(e.to_string()))?;
    let path = dir.join(name);
    let reusable = fs::metadata(&path)
        .map(|m| m.len() == binary.len() as u64)
        .unwrap_or(false);
    if !reusable {
        // A name of this writer's own, created exclusively (O_EXCL): two
        // starts of one archive at once each write a whole file of their
        // own, and either rename leaves the same bytes in place.
        let tmp = dir.join(format!(
            ".partial.{}.{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&tmp)?;
        let written = file
            .write_all(binary)
            .and_then(|()| file.sync_all())
            .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700)))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
    }
    Ok(ExtractedProvider {
        key: archive.claims.subject.clone(),
        expires: archive.claims.expires,
        metadata: meta,
        binary: path,
        sha256: claimed,
    })
}

pub struct CreateOptions {
    pub name: String,
    pub vendor: String,
    pub capid: String,
    pub rev: Option<i32>,
    pub ver: Option<String>,
    /// (target, binary bytes)
    pub targets: Vec<(String, Vec<u8>)>,
}

/// Writes a signed, gzipped archive.
pub fn create(
    options: &CreateOptions,
    issuer: &KeyPair,
    subject: &KeyPair,
    out: &Path,
) -> Result<(), ParError> {
    let target_hashes: HashMap<String, String> = options
        .targets
        .iter()
        .map(|(target, bytes)| (target.clone(), sha256_upper_hex(bytes)))
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let metadata = ProviderMetadata {
        name: Some(options.name.clone()),
        capid: options.capid.clone(),
        vendor: options.vendor.clone(),
        rev: options.rev,
        ver: options.ver.clone(),
        target_hashes,
        config_schema: None,
    };
    // `Claims` keeps its wascap revision private; building it from its
    // serialised form is the supported way to set every field.
    let claims: Claims<ProviderMetadata> = serde_json::from_value(serde_json::json!({
        "jti": format!("{:032x}", rand::random::<u128>()),
        "iat": now,
        "iss": issuer.public_key(),
        "sub": subject.public_key(),
        "wascap": metadata,
        "wascap_revision": 3,
    }))
    .map_err(|e| ParError::Signing(e.to_string()))?;
    let jwt = claims
        .encode(issuer)
        .map_err(|e| ParError::Signing(e.to_string()))?;

    let tmp = out.with_extension("par.partial");
    let file = fs::File::create(&tmp)?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    let mut append = |name: &str, data: &[u8]| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data)
    };
    append(CLAIMS_FILE, jwt.as_bytes())?;
    for (target, bytes) in &options.targets {
        append(&format!("{target}.bin"), bytes)?;
    }
    builder.into_inner()?.finish()?.sync_all()?;
    fs::rename(&tmp, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(targets: Vec<(String, Vec<u8>)>) -> (Vec<u8>, KeyPair) {
        let dir = std::env::temp_dir().join(format!("par-test-{}", rand::random::<u64>()));
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join("p.par");
        let subject = KeyPair::new_service();
        create(
            &CreateOptions {
                name: "p".into(),
                vendor: "v".into(),
                capid: "wasmcloud:test".into(),
                rev: Some(1),
                ver: None,
                targets,
            },
            &KeyPair::new_account(),
            &subject,
            &out,
        )
        .unwrap();
        let bytes = fs::read(&out).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        (bytes, subject)
    }

    #[test]
    fn concurrent_extractions_of_one_archive_are_safe() {
        // A binary big enough that two writers overlap.
        let binary: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let (bytes, _) = make(vec![(host_target(), binary.clone())]);
        for round in 0..20 {
            let cache = std::env::temp_dir().join(format!("par-race-{}", rand::random::<u64>()));
            let barrier = std::sync::Barrier::new(2);
            let results: Vec<Result<ExtractedProvider, ParError>> = std::thread::scope(|s| {
                let run = || {
                    barrier.wait();
                    verify_and_extract(&bytes, &cache, &[])
                };
                let a = s.spawn(run);
                let b = s.spawn(run);
                vec![a.join().unwrap(), b.join().unwrap()]
            });
            for result in results {
                let extracted = result.unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert!(
                    fs::read(&extracted.binary).unwrap() == binary,
                    "round {round}"
                );
            }
            let dir = fs::read_dir(&cache)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            let names: Vec<String> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, ["p"], "round {round}: temporary files are left");
            fs::remove_dir_all(&cache).unwrap();
        }
    }

    #[test]
    fn round_trip_extracts_once_and_refuses_bad_archives() {
        let cache = std::env::temp_dir().join(format!("par-cache-{}", rand::random::<u64>()));
        let (bytes, subject) = make(vec![(host_target(), b"#!/bin/sh\necho hi\n".to_vec())]);
        let extracted = verify_and_extract(&bytes, &cache, &[]).unwrap();
        assert_eq!(extracted.key, subject.public_key());
        assert_eq!(extracted.metadata.capid, "wasmcloud:test");
        assert_eq!(
            fs::read(&extracted.binary).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        let mode = fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Reused: same path, nothing rewritten.
        let mtime = fs::metadata(&extracted.binary).unwrap().modified().unwrap();
        let again = verify_and_extract(&bytes, &cache, &[]).unwrap();
        assert_eq!(again.binary, extracted.binary);
        assert_eq!(
            fs::metadata(&again.binary).unwrap().modified().unwrap(),
            mtime
        );

        let (other, _) = make(vec![("sparc-plan9".into(), b"x".to_vec())]);
        assert!(matches!(
            verify_and_extract(&other, &cache, &[]),
            Err(ParError::MissingTarget { .. })
        ));
        assert!(matches!(
            verify_and_extract(b"definitely not a tar archive", &cache, &[]),
            Err(ParError::NotAnArchive(_))
        ));
        fs::remove_dir_all(&cache).unwrap();
    }
}
