//! Provider archives (PAR): a tar, optionally gzipped, holding `claims.jwt`
//! and one binary per target named `{arch}-{os}.bin`.
//!
//! We read and write the format ourselves rather than through the
//! `provider-archive` crate: its 0.16 release writes claims without the 0.8x
//! `capid` field and panics (an `unwrap`) on an archive whose claims lack a
//! hash for one of its binaries, and a bad archive must never crash the host.
//! The claims themselves go through wascap, as for actors.

use std::{
    cell::Cell,
    collections::{BTreeMap, HashMap},
    fs,
    io::{Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    rc::Rc,
    time::{SystemTime, UNIX_EPOCH},
};

use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wascap::jwt::{Claims, WascapEntity};

const CLAIMS_FILE: &str = "claims.jwt";
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The most an archive may unpack to: its tar stream, every entry's header
/// and data (read or skipped) counted as it is read, so a gzip bomb stops
/// here with [`ParError::TooLarge`] instead of filling memory. An entry
/// whose declared size would cross the bound is refused before any of its
/// data is unpacked. Only `claims.jwt` and the binary for this host's
/// target are held in memory.
pub const MAX_UNPACKED_LEN: u64 = 512 * 1024 * 1024;

/// Claims are a few KiB of JWT; a larger `claims.jwt` is not claims.
const MAX_CLAIMS_LEN: u64 = 1024 * 1024;

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
    #[error("the archive unpacks to more than {} MiB, the limit for a provider archive", limit / (1024 * 1024))]
    TooLarge { limit: u64 },
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

/// An archive's claims, decoded but not yet judged, what it holds, and the
/// binary of one target.
#[derive(Debug)]
pub struct Archive {
    pub jwt: String,
    pub claims: Claims<ProviderMetadata>,
    /// Every target it has a binary for, with that binary's size.
    pub targets: BTreeMap<String, u64>,
    /// The binary of the target asked for, if the archive has one.
    pub binary: Option<(String, Vec<u8>)>,
}

impl Archive {
    pub fn metadata(&self) -> ProviderMetadata {
        self.claims.metadata.clone().unwrap_or_default()
    }
    pub fn key(&self) -> &str {
        &self.claims.subject
    }
}

/// Reads an archive (tar or gzipped tar with `claims.jwt` and `*.bin`
/// entries), keeping the binary for this host's target.
pub fn read(bytes: &[u8]) -> Result<Archive, ParError> {
    read_target(bytes, Some(&host_target()))
}

/// Reads an archive, keeping the binary for `keep` (none with `None`: to
/// list what it holds). Other binaries are skipped, their bytes counted
/// towards [`MAX_UNPACKED_LEN`].
pub fn read_target(bytes: &[u8], keep: Option<&str>) -> Result<Archive, ParError> {
    read_bounded(bytes, keep, MAX_UNPACKED_LEN)
}

/// A reader that counts what it hands out and fails past `limit`.
struct Bounded<R> {
    inner: R,
    read: Rc<Cell<u64>>,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.limit.saturating_sub(self.read.get());
        if left == 0 && !buf.is_empty() {
            // One byte past the limit says whether there is more.
            let n = self.inner.read(&mut buf[..1])?;
            self.read.set(self.read.get() + n as u64);
            return if n == 0 {
                Ok(0)
            } else {
                Err(std::io::Error::other("over the unpacked-size limit"))
            };
        }
        let cap = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..cap])?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

fn read_bounded(bytes: &[u8], keep: Option<&str>, limit: u64) -> Result<Archive, ParError> {
    if bytes.len() < 512 && !bytes.starts_with(&GZIP_MAGIC) {
        return Err(ParError::NotAnArchive("the file is too short".into()));
    }
    let stream: Box<dyn Read + '_> = if bytes.starts_with(&GZIP_MAGIC) {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let unpacked = Rc::new(Cell::new(0u64));
    let over = || unpacked.get() > limit;
    let bad = |e: std::io::Error| {
        if over() {
            ParError::TooLarge { limit }
        } else {
            ParError::NotAnArchive(e.to_string())
        }
    };
    let mut archive = tar::Archive::new(Bounded {
        inner: stream,
        read: unpacked.clone(),
        limit,
    });
    // Raw entries: no GNU long names or PAX records, which the tar crate
    // would read into memory whole, whatever size they declare. Ours have
    // short names; such records are skipped like any other entry.
    let entries = archive.entries().map_err(bad)?.raw(true);
    let mut jwt = None;
    let mut targets = BTreeMap::new();
    let mut binary = None;
    for entry in entries {
        let mut entry = entry.map_err(bad)?;
        let size = entry.size();
        // Refused on its header, before any of its data is unpacked.
        if unpacked.get().saturating_add(size) > limit {
            return Err(ParError::TooLarge { limit });
        }
        let kind = entry.header().entry_type();
        if !matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
            continue;
        }
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let wanted = if path == CLAIMS_FILE {
            if jwt.is_some() {
                return Err(ParError::NotAnArchive("it has two claims.jwt".into()));
            }
            if size > MAX_CLAIMS_LEN {
                return Err(ParError::BadClaims(format!(
                    "claims.jwt of {size} bytes is too large"
                )));
            }
            true
        } else if let Some(target) = path.strip_suffix(".bin") {
            if targets.insert(target.to_owned(), size).is_some() {
                return Err(ParError::NotAnArchive(format!(
                    "it has two binaries for {target}"
                )));
            }
            keep == Some(target)
        } else {
            false
        };
        if !wanted {
            continue;
        }
        // What the header declares is bounded above; the data is read as
        // it arrives, not reserved whole up front.
        let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
        entry.read_to_end(&mut data).map_err(bad)?;
        if data.len() as u64 != size {
            return Err(ParError::NotAnArchive(format!("entry {path} is truncated")));
        }
        if path == CLAIMS_FILE {
            jwt = Some(
                String::from_utf8(data)
                    .map_err(|_| ParError::BadClaims("claims.jwt is not UTF-8".into()))?,
            );
        } else {
            binary = Some((path[..path.len() - 4].to_owned(), data));
        }
    }
    if over() {
        return Err(ParError::TooLarge { limit });
    }
    let jwt = jwt.ok_or_else(|| ParError::NotAnArchive("it has no claims.jwt".into()))?;
    if targets.is_empty() {
        return Err(ParError::NotAnArchive("it holds no provider binary".into()));
    }
    let claims =
        Claims::<ProviderMetadata>::decode(&jwt).map_err(|e| ParError::BadClaims(e.to_string()))?;
    Ok(Archive {
        jwt,
        claims,
        targets,
        binary,
    })
}

/// Reads an archive file whole, refusing what is not a regular file (a
/// FIFO would block, a device never end) or is larger than an archive can
/// be.
pub fn read_file(path: &Path) -> Result<Vec<u8>, ParError> {
    read_regular_file(path, MAX_UNPACKED_LEN)
}

/// Reads a regular file of at most `max` bytes.
pub fn read_regular_file(path: &Path, max: u64) -> Result<Vec<u8>, ParError> {
    let file = fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ParError::Io(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        ))));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(max) as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ParError::Io(std::io::Error::other(format!(
            "{} is larger than {} MiB",
            path.display(),
            max / (1024 * 1024)
        ))));
    }
    Ok(bytes)
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
    let target = host_target();
    let archive = read_target(bytes, Some(&target))?;
    verify_claims(&archive)?;
    if !allowed_issuers.is_empty() && !allowed_issuers.contains(&archive.claims.issuer) {
        return Err(ParError::IssuerNotAllowed(archive.claims.issuer.clone()));
    }
    let meta = archive.metadata();
    let available = || {
        archive
            .targets
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (claimed, binary) = match (meta.target_hashes.get(&target), &archive.binary) {
        (Some(claimed), Some((_, binary))) => (claimed.clone(), binary),
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
    let mut name: String = meta
        .name
        .as_deref()
        .unwrap_or("provider")
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // An empty name would make the path the directory itself.
    if name.is_empty() {
        name = "provider".into();
    }
    let dir = cache_dir.join(&claimed);
    crate::paths::ensure_private_dir(&dir).map_err(|e| std::io::Error::other(e.to_string()))?;
    let path = dir.join(name);
    let reusable = fs::metadata(&path)
        .map(|m| m.is_file() && m.len() == binary.len() as u64)
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

    /// A gzipped tar of `entries` (name, size, a multiple of 1 MiB) of
    /// zeros, a few KiB per GiB. Built from deflate blocks, never unpacked:
    /// each piece is compressed with a full flush, which resets the
    /// compressor, so one MiB of zeros compresses to the same bytes every
    /// time and is compressed once.
    fn zeros_archive(entries: &[(&str, u64)]) -> Vec<u8> {
        use flate2::{Compress, Compression, Crc, FlushCompress};
        let deflate = |data: &[u8], flush| {
            let mut c = Compress::new(Compression::best(), false);
            let mut out = Vec::with_capacity(data.len() + 1024);
            c.compress_vec(data, &mut out, flush).unwrap();
            assert_eq!(c.total_in(), data.len() as u64);
            out
        };
        const MIB: u64 = 1 << 20;
        let zeros = vec![0u8; MIB as usize];
        let zeros_deflated = deflate(&zeros, FlushCompress::Full);
        let mut zeros_crc = Crc::new();
        zeros_crc.update(&zeros);
        let mut crc = Crc::new();
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        let mut total: u64 = 0;
        let piece = |out: &mut Vec<u8>, crc: &mut Crc, total: &mut u64, bytes: &[u8]| {
            out.extend(deflate(bytes, FlushCompress::Full));
            crc.update(bytes);
            *total += bytes.len() as u64;
        };
        for (name, size) in entries {
            assert_eq!(size % MIB, 0);
            let mut header = tar::Header::new_gnu();
            header.set_path(name).unwrap();
            header.set_size(*size);
            header.set_mode(0o644);
            header.set_cksum();
            piece(&mut out, &mut crc, &mut total, header.as_bytes());
            for _ in 0..size / MIB {
                out.extend_from_slice(&zeros_deflated);
                crc.combine(&zeros_crc);
                total += MIB;
            }
        }
        piece(&mut out, &mut crc, &mut total, &[0; 1024]);
        out.extend(deflate(&[], FlushCompress::Finish));
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out
    }

    #[test]
    fn the_bomb_builder_makes_real_gzip() {
        let small = zeros_archive(&[("a.bin", 3 << 20)]);
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&small[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked.len(), 512 + (3 << 20) + 1024);
        assert!(unpacked[512..].iter().all(|b| *b == 0));
    }

    /// The peak resident memory of this process, in KiB.
    fn peak_rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn a_gzip_bomb_is_refused_quickly_and_in_little_memory() {
        let target = format!("{}.bin", host_target());
        // 2 GiB of zeros in one entry: refused on its header.
        let bomb = zeros_archive(&[(target.as_str(), 2 << 30)]);
        assert!(bomb.len() < 4 << 20, "{} bytes", bomb.len());
        eprintln!("a 2 GiB entry compressed to {} bytes", bomb.len());
        let before = peak_rss_kib();
        let started = std::time::Instant::now();
        let err = read(&bomb).unwrap_err();
        assert!(
            matches!(err, ParError::TooLarge { limit } if limit == MAX_UNPACKED_LEN),
            "{err}"
        );
        assert!(err.to_string().contains("512 MiB"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let cache = std::env::temp_dir().join(format!("par-cache-{}", rand::random::<u64>()));
        assert!(matches!(
            verify_and_extract(&bomb, &cache, &[]),
            Err(ParError::TooLarge { .. })
        ));

        // Entries each under the bound, together over it: the stream is
        // cut as it is read, and nothing of the skipped entries is kept.
        let names: Vec<String> = (0..9).map(|i| format!("t{i}-other.bin")).collect();
        let entries: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 64 << 20)).collect();
        let bomb = zeros_archive(&entries);
        let started = std::time::Instant::now();
        let err = read_target(&bomb, None).unwrap_err();
        assert!(matches!(err, ParError::TooLarge { .. }), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let grown_mib = peak_rss_kib().saturating_sub(before) / 1024;
        assert!(grown_mib < 64, "peak memory grew by {grown_mib} MiB");
    }

    #[test]
    fn only_this_hosts_binary_is_kept_and_inspect_lists_every_target() {
        let (bytes, _) = make(vec![
            ("sparc-plan9".into(), vec![7; 100_000]),
            (host_target(), b"mine".to_vec()),
        ]);
        let archive = read(&bytes).unwrap();
        assert_eq!(archive.binary, Some((host_target(), b"mine".to_vec())));
        assert_eq!(archive.targets.len(), 2);
        assert_eq!(archive.targets["sparc-plan9"], 100_000);
        let listed = read_target(&bytes, None).unwrap();
        assert!(listed.binary.is_none());
        assert_eq!(listed.targets, archive.targets);
    }

    /// Ambiguous or broken archives: two claims or two binaries for one
    /// target (which one would be checked, which run?), a truncated entry,
    /// a claims.jwt too large to be claims.
    #[test]
    fn ambiguous_and_truncated_archives_are_refused() {
        let entry = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_path(name).unwrap();
            header.set_size(data.len() as u64);
            header.set_cksum();
            let mut out = header.as_bytes().to_vec();
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(512), 0);
            out
        };
        let bin = format!("{}.bin", host_target());
        let tar = |parts: &[Vec<u8>]| {
            let mut out = parts.concat();
            out.extend_from_slice(&[0; 1024]);
            out
        };
        let two_claims = tar(&[
            entry("claims.jwt", b"a.b.c"),
            entry("claims.jwt", b"x.y.z"),
            entry(&bin, b"x"),
        ]);
        assert!(read(&two_claims)
            .unwrap_err()
            .to_string()
            .contains("two claims.jwt"));
        let two_bins = tar(&[
            entry("claims.jwt", b"a.b.c"),
            entry(&bin, b"x"),
            entry(&bin, b"y"),
        ]);
        assert!(read(&two_bins)
            .unwrap_err()
            .to_string()
            .contains("two binaries"));
        let mut truncated = tar(&[entry("claims.jwt", b"a.b.c"), entry(&bin, &[1; 4096])]);
        truncated.truncate(2048);
        assert!(read(&truncated).is_err());
        let big_claims = tar(&[entry("claims.jwt", &vec![b'a'; 2 << 20]), entry(&bin, b"x")]);
        assert!(matches!(read(&big_claims), Err(ParError::BadClaims(_))));
    }

    #[test]
    fn archive_files_must_be_regular_and_bounded() {
        assert!(read_file(Path::new("/dev/zero")).is_err());
        assert!(read_file(Path::new("/")).is_err());
        let dir = std::env::temp_dir().join(format!("par-file-{}", rand::random::<u64>()));
        fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small");
        fs::write(&small, vec![1; 100]).unwrap();
        assert!(read_regular_file(&small, 99).is_err());
        assert_eq!(read_regular_file(&small, 100).unwrap().len(), 100);
        fs::remove_dir_all(&dir).unwrap();
    }
}
