//! Actor claims: `claims::verify`, `inspect` and `read_claims` on fuzzed
//! wasm (custom sections `wasmcloud_jwt` and `jwt`), and fuzzed JWT text
//! embedded in a module and in a provider archive.

use host_core::{claims, par};

use super::{err, ok, Outcome};
use crate::harness::{keys, tar_of, TINY_WASM};

pub(super) const DICT: &[&[u8]] = &[
    b"\x00asm\x01\x00\x00\x00",
    b"\x00asm\x0d\x00\x01\x00",
    b"\x00\x0e\x0dwasmcloud_jwt",
    b"\x00\x04\x03jwt",
    b"\x0dwasmcloud_jwt",
    b"\x03jwt",
    b"\xff\xff\xff\xff\x0f",
    b"\x80\x80\x80\x80\x00",
    b".",
    b"eyJ0eXAiOiJqd3QiLCJhbGciOiJFZDI1NTE5In0",
];

fn describe(result: Result<claims::VerifiedActor, claims::ClaimsError>) -> Outcome {
    match result {
        Ok(actor) => ok(&format!(
            "verified caps={} component={}",
            actor.caps().len(),
            actor.is_component
        )),
        Err(e) => err(e),
    }
}

/// A fuzzed module or component.
pub(super) fn wasm(input: &[u8]) -> Outcome {
    let verified = describe(claims::verify(input, &[]));
    // An allow list, which verification checks last.
    let allowed = [keys().account.public_key()];
    let _ = claims::verify(input, &allowed);
    let inspected = match claims::inspect(input) {
        Ok((claims, report)) => ok(&format!(
            "inspect sig={} hash={} exp={} nbf={} meta={}",
            report.signature_valid,
            report.hash_valid,
            report.expired,
            report.not_yet_valid,
            claims.metadata.is_some()
        )),
        Err(e) => err(e),
    };
    let _ = claims::read_claims(input);
    let _ = claims::is_component(input);
    format!("{verified}|{inspected}")
}

/// Appends a custom section named `name` holding `data`.
fn with_section(wasm: &[u8], name: &str, data: &[u8]) -> Vec<u8> {
    let mut out = wasm.to_vec();
    out.extend(crate::mutate::custom_section(name, data));
    out
}

/// Fuzzed JWT text, as an actor's claims (in either section name) and as
/// a provider archive's `claims.jwt`.
pub(super) fn jwt(input: &[u8]) -> Outcome {
    let section = if input.len().is_multiple_of(2) {
        "wasmcloud_jwt"
    } else {
        "jwt"
    };
    let actor = with_section(TINY_WASM, section, input);
    let as_actor = wasm(&actor);
    let host = par::host_target();
    let binary_name = format!("{host}.bin");
    let archive = tar_of(
        &[
            ("claims.jwt", input),
            (binary_name.as_str(), b"#!/bin/sh\n"),
        ],
        false,
    );
    let as_provider = match par::read(&archive) {
        Ok(archive) => match par::verify_claims(&archive) {
            Ok(()) => ok("provider claims valid"),
            Err(e) => err(e),
        },
        Err(e) => err(e),
    };
    format!("{as_actor}|{as_provider}")
}
