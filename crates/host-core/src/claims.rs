//! Actor claims in the wasmCloud 0.8x shape: a wascap JWT in the wasm custom
//! section `wasmcloud_jwt`, whose `wascap` metadata carries the actor's `caps`.
//!
//! wascap 0.16 dropped `caps` from its own `Component` metadata, so this module
//! uses wascap's generic `Claims<T>` with a metadata type of our own: wascap
//! still does the JWT encoding, signing and signature checks.

use std::time::{SystemTime, UNIX_EPOCH};

use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wascap::jwt::{Claims, WascapEntity};

/// The custom section wasmCloud writes claims into, and its legacy name.
const SECTION_JWT: &str = "wasmcloud_jwt";
const SECTION_JWT_LEGACY: &str = "jwt";
const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// wascap's internal revision at and above which the module hash is checked.
const WASCAP_REVISION: u32 = 3;

/// The `wascap` metadata of an actor's claims, as 0.8x tools write it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Clone, Default)]
pub struct ActorMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// SHA-256 (upper-case hex) of the wasm without its claims section.
    #[serde(rename = "hash")]
    pub module_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Contract ids the actor may call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caps: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rev: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_alias: Option<String>,
    #[serde(rename = "prov", default)]
    pub provider: bool,
}

impl WascapEntity for ActorMetadata {
    fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| "Anonymous".into())
    }
}

/// Why an actor's claims were refused. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ClaimsError {
    #[error("not a WebAssembly module or component: {0}")]
    NotWasm(String),
    #[error("the actor is unsigned: it has no `wasmcloud_jwt` claims section (sign it with `host-core claims sign`)")]
    Unsigned,
    #[error("the actor's claims cannot be read: {0}")]
    Malformed(String),
    #[error("the claims signature is invalid: the claims were changed or not signed by their issuer {0}")]
    BadSignature(String),
    #[error("the wasm was changed after it was signed: its hash {actual} does not match the claims' hash {claimed}")]
    HashMismatch { claimed: String, actual: String },
    #[error("the claims expired {0}")]
    Expired(String),
    #[error("the claims are not valid yet: they become valid {0}")]
    NotYetValid(String),
    #[error("issuer {0} is not on this host's list of allowed issuers")]
    IssuerNotAllowed(String),
    #[error("cannot sign: {0}")]
    Signing(String),
}

/// An actor whose claims passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedActor {
    pub claims: Claims<ActorMetadata>,
    pub metadata: ActorMetadata,
    pub is_component: bool,
}

impl VerifiedActor {
    pub fn key(&self) -> &str {
        &self.claims.subject
    }
    pub fn caps(&self) -> Vec<String> {
        self.metadata.caps.clone().unwrap_or_default()
    }
}

/// A wasm file split into its top-level sections.
struct WasmSections<'a> {
    header: &'a [u8],
    /// (section id, the section's payload)
    sections: Vec<(u8, &'a [u8])>,
}

fn read_leb_u32(bytes: &[u8], pos: &mut usize) -> Result<u32, ClaimsError> {
    let mut result: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes
            .get(*pos)
            .ok_or_else(|| ClaimsError::NotWasm("truncated section header".into()))?;
        *pos += 1;
        result |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(result)
                .map_err(|_| ClaimsError::NotWasm("section size out of range".into()));
        }
    }
    Err(ClaimsError::NotWasm("malformed section size".into()))
}

fn write_leb_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn parse_sections(wasm: &[u8]) -> Result<WasmSections<'_>, ClaimsError> {
    if wasm.len() < 8 || &wasm[..4] != WASM_MAGIC {
        return Err(ClaimsError::NotWasm(
            "the file does not start with the wasm magic number".into(),
        ));
    }
    let mut pos = 8;
    let mut sections = Vec::new();
    while pos < wasm.len() {
        let id = wasm[pos];
        pos += 1;
        let size = read_leb_u32(wasm, &mut pos)? as usize;
        let end = pos
            .checked_add(size)
            .filter(|end| *end <= wasm.len())
            .ok_or_else(|| {
                ClaimsError::NotWasm("a section runs past the end of the file".into())
            })?;
        sections.push((id, &wasm[pos..end]));
        pos = end;
    }
    Ok(WasmSections {
        header: &wasm[..8],
        sections,
    })
}

/// The name and data of a custom section's payload.
fn custom_section(payload: &[u8]) -> Option<(&str, &[u8])> {
    let mut pos = 0;
    let len = read_leb_u32(payload, &mut pos).ok()? as usize;
    let name = payload.get(pos..pos.checked_add(len)?)?;
    Some((std::str::from_utf8(name).ok()?, &payload[pos + len..]))
}

fn is_claims_section(id: u8, payload: &[u8]) -> bool {
    id == 0
        && matches!(custom_section(payload), Some((name, _)) if name == SECTION_JWT || name == SECTION_JWT_LEGACY)
}

/// Whether the wasm is a component (layer 1) rather than a core module.
pub fn is_component(wasm: &[u8]) -> bool {
    wasm.len() >= 8 && &wasm[..4] == WASM_MAGIC && wasm[6..8] == [1, 0]
}

/// The wasm without its claims sections, re-encoded the way wascap does it,
/// so that hashes agree with claims written by wasmCloud's own tools.
fn strip_claims(sections: &WasmSections<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(sections.sections.iter().map(|s| s.1.len() + 6).sum());
    out.extend_from_slice(sections.header);
    for (id, payload) in &sections.sections {
        if is_claims_section(*id, payload) {
            continue;
        }
        out.push(*id);
        write_leb_u32(&mut out, payload.len() as u32);
        out.extend_from_slice(payload);
    }
    out
}

fn sha256_upper_hex(bytes: &[u8]) -> String {
    hex::encode_upper(Sha256::digest(bytes))
}

/// SHA-256 of the whole file, as the compile-cache key.
pub fn content_hash(wasm: &[u8]) -> String {
    sha256_upper_hex(wasm)
}

fn find_jwt(sections: &WasmSections<'_>) -> Option<Result<String, ClaimsError>> {
    sections.sections.iter().find_map(|(id, payload)| {
        if !is_claims_section(*id, payload) {
            return None;
        }
        let (_, data) = custom_section(payload)?;
        Some(
            String::from_utf8(data.to_vec())
                .map_err(|_| ClaimsError::Malformed("the claims section is not UTF-8".into())),
        )
    })
}

/// Reads the claims without judging them (for `claims inspect`).
pub fn read_claims(wasm: &[u8]) -> Result<(String, Claims<ActorMetadata>), ClaimsError> {
    let sections = parse_sections(wasm)?;
    let jwt = find_jwt(&sections).ok_or(ClaimsError::Unsigned)??;
    let claims =
        Claims::<ActorMetadata>::decode(&jwt).map_err(|e| ClaimsError::Malformed(e.to_string()))?;
    Ok((jwt, claims))
}

/// What `claims inspect` reports besides the claims themselves.
#[derive(Debug, Serialize)]
pub struct ClaimsReport {
    pub signature_valid: bool,
    pub hash_valid: bool,
    pub expired: bool,
    pub not_yet_valid: bool,
    pub expires: String,
    pub valid_from: String,
}

pub fn inspect(wasm: &[u8]) -> Result<(Claims<ActorMetadata>, ClaimsReport), ClaimsError> {
    let sections = parse_sections(wasm)?;
    let (jwt, claims) = read_claims(wasm)?;
    let validation = wascap::jwt::validate_token::<ActorMetadata>(&jwt)
        .map_err(|e| ClaimsError::Malformed(e.to_string()))?;
    let actual = sha256_upper_hex(&strip_claims(&sections));
    let hash_valid = claims
        .metadata
        .as_ref()
        .is_some_and(|m| m.module_hash == actual);
    Ok((
        claims,
        ClaimsReport {
            signature_valid: validation.signature_valid,
            hash_valid,
            expired: validation.expired,
            not_yet_valid: validation.cannot_use_yet,
            expires: validation.expires_human,
            valid_from: validation.not_before_human,
        },
    ))
}

/// Checks everything an actor must pass before it may start: the claims are
/// present and well-formed, signed by their issuer, for these exact bytes,
/// within their validity window, and from an allowed issuer.
pub fn verify(wasm: &[u8], allowed_issuers: &[String]) -> Result<VerifiedActor, ClaimsError> {
    let sections = parse_sections(wasm)?;
    let jwt = find_jwt(&sections).ok_or(ClaimsError::Unsigned)??;
    // `validate_token` reports a bad signature or expiry in its result, not as
    // an error: every flag is checked below.
    let validation = wascap::jwt::validate_token::<ActorMetadata>(&jwt)
        .map_err(|e| ClaimsError::Malformed(e.to_string()))?;
    let claims =
        Claims::<ActorMetadata>::decode(&jwt).map_err(|e| ClaimsError::Malformed(e.to_string()))?;
    if !validation.signature_valid {
        return Err(ClaimsError::BadSignature(claims.issuer));
    }
    let metadata = claims
        .metadata
        .clone()
        .ok_or_else(|| ClaimsError::Malformed("the claims have no `wascap` metadata".into()))?;
    if metadata.provider {
        return Err(ClaimsError::Malformed(
            "these are a capability provider's claims, not an actor's".into(),
        ));
    }
    check_key(&claims.subject, 'M', "subject (actor key)")?;
    check_key(&claims.issuer, 'A', "issuer (account key)")?;
    let actual = sha256_upper_hex(&strip_claims(&sections));
    if metadata.module_hash != actual {
        return Err(ClaimsError::HashMismatch {
            claimed: metadata.module_hash,
            actual,
        });
    }
    if validation.expired {
        return Err(ClaimsError::Expired(validation.expires_human));
    }
    if validation.cannot_use_yet {
        return Err(ClaimsError::NotYetValid(validation.not_before_human));
    }
    if !allowed_issuers.is_empty() && !allowed_issuers.contains(&claims.issuer) {
        return Err(ClaimsError::IssuerNotAllowed(claims.issuer));
    }
    Ok(VerifiedActor {
        is_component: is_component(wasm),
        claims,
        metadata,
    })
}

fn check_key(key: &str, prefix: char, what: &str) -> Result<(), ClaimsError> {
    if key.len() != 56 || !key.starts_with(prefix) || KeyPair::from_public_key(key).is_err() {
        return Err(ClaimsError::Malformed(format!(
            "the {what} `{key}` is not a valid nkey starting with {prefix}"
        )));
    }
    Ok(())
}

/// What to put in new claims.
#[derive(Debug, Clone, Default)]
pub struct SignOptions {
    pub name: String,
    pub caps: Vec<String>,
    pub tags: Vec<String>,
    pub call_alias: Option<String>,
    pub rev: Option<i32>,
    pub ver: Option<String>,
    /// Seconds from now until the claims expire.
    pub expires_in_secs: Option<u64>,
    /// Seconds from now until the claims become valid.
    pub not_before_secs: Option<u64>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Embeds freshly signed claims, replacing any there were.
pub fn sign(
    wasm: &[u8],
    options: &SignOptions,
    issuer: &KeyPair,
    subject: &KeyPair,
) -> Result<Vec<u8>, ClaimsError> {
    let sections = parse_sections(wasm)?;
    let mut out = strip_claims(&sections);
    let hash = sha256_upper_hex(&out);
    let now = now_secs();
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let metadata = ActorMetadata {
        name: Some(options.name.clone()),
        module_hash: hash,
        tags: non_empty(&options.tags),
        caps: non_empty(&options.caps),
        rev: options.rev,
        ver: options.ver.clone(),
        call_alias: options.call_alias.clone(),
        provider: false,
    };
    // `Claims` keeps its wascap revision private; building it from its own
    // serialised form is the supported way to set every field.
    let claims: Claims<ActorMetadata> = serde_json::from_value(serde_json::json!({
        "jti": format!("{:032x}", rand::random::<u128>()),
        "iat": now,
        "iss": issuer.public_key(),
        "sub": subject.public_key(),
        "exp": options.expires_in_secs.map(|s| now.saturating_add(s)),
        "nbf": options.not_before_secs.map(|s| now.saturating_add(s)),
        "wascap": metadata,
        "wascap_revision": WASCAP_REVISION,
    }))
    .map_err(|e| ClaimsError::Signing(e.to_string()))?;
    let jwt = claims
        .encode(issuer)
        .map_err(|e| ClaimsError::Signing(e.to_string()))?;
    append_custom_section(&mut out, SECTION_JWT, jwt.as_bytes());
    Ok(out)
}

fn append_custom_section(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    let mut payload = Vec::with_capacity(name.len() + data.len() + 5);
    write_leb_u32(&mut payload, name.len() as u32);
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(data);
    out.push(0);
    write_leb_u32(out, payload.len() as u32);
    out.extend_from_slice(&payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    // (module (memory (export "memory") 1)) plus a type section, hand-encoded.
    const TINY: &[u8] = &[
        0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, // header
        5, 3, 1, 0, 1, // memory section: one memory, min 1
        7, 10, 1, 6, b'm', b'e', b'm', b'o', b'r', b'y', 2, 0, // export memory
    ];

    fn signed(options: &SignOptions) -> (Vec<u8>, KeyPair, KeyPair) {
        let account = KeyPair::new_account();
        let module = KeyPair::new_module();
        let wasm = sign(TINY, options, &account, &module).unwrap();
        (wasm, account, module)
    }

    fn opts() -> SignOptions {
        SignOptions {
            name: "tiny".into(),
            caps: vec!["wasmcloud:keyvalue".into()],
            ..Default::default()
        }
    }

    #[test]
    fn signed_actor_verifies_and_keeps_caps() {
        let (wasm, account, module) = signed(&opts());
        let actor = verify(&wasm, &[]).unwrap();
        assert_eq!(actor.key(), module.public_key());
        assert_eq!(actor.claims.issuer, account.public_key());
        assert_eq!(actor.caps(), vec!["wasmcloud:keyvalue".to_string()]);
        assert!(verify(&wasm, &[account.public_key()]).is_ok());
        assert!(matches!(
            verify(&wasm, &[KeyPair::new_account().public_key()]),
            Err(ClaimsError::IssuerNotAllowed(_))
        ));
    }

    #[test]
    fn resigning_replaces_claims_and_keeps_hash() {
        let (wasm, account, module) = signed(&opts());
        let again = sign(&wasm, &opts(), &account, &module).unwrap();
        assert_eq!(
            verify(&wasm, &[]).unwrap().metadata.module_hash,
            verify(&again, &[]).unwrap().metadata.module_hash
        );
    }

    #[test]
    fn refusals() {
        assert!(matches!(verify(TINY, &[]), Err(ClaimsError::Unsigned)));
        assert!(matches!(
            verify(b"not wasm at all", &[]),
            Err(ClaimsError::NotWasm(_))
        ));

        let (mut wasm, _, _) = signed(&opts());
        wasm[11] ^= 1; // inside the memory section
        assert!(matches!(
            verify(&wasm, &[]),
            Err(ClaimsError::HashMismatch { .. })
        ));

        let expired = SignOptions {
            expires_in_secs: Some(0),
            ..opts()
        };
        let (wasm, _, _) = signed(&expired);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(matches!(verify(&wasm, &[]), Err(ClaimsError::Expired(_))));

        let later = SignOptions {
            not_before_secs: Some(86_400),
            ..opts()
        };
        let (wasm, _, _) = signed(&later);
        assert!(matches!(
            verify(&wasm, &[]),
            Err(ClaimsError::NotYetValid(_))
        ));
    }

    #[test]
    fn tampered_claims_fail_the_signature() {
        let (wasm, _, _) = signed(&opts());
        let (jwt, _) = read_claims(&wasm).unwrap();
        // Re-sign the same claims body with another account but keep the
        // original issuer: the signature no longer verifies.
        let parts: Vec<&str> = jwt.split('.').collect();
        let forged_sig = {
            let other = KeyPair::new_account();
            let sig = other
                .sign(format!("{}.{}", parts[0], parts[1]).as_bytes())
                .unwrap();
            data_encoding_base64url(&sig)
        };
        let forged = format!("{}.{}.{}", parts[0], parts[1], forged_sig);
        let sections = parse_sections(&wasm).unwrap();
        let mut out = strip_claims(&sections);
        append_custom_section(&mut out, SECTION_JWT, forged.as_bytes());
        assert!(matches!(
            verify(&out, &[]),
            Err(ClaimsError::BadSignature(_))
        ));
    }

    fn data_encoding_base64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}
