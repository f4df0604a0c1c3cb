//! Manifests: `manifest::load` on fuzzed TOML written to a scratch file;
//! the files it names may be the scratch fixtures (`actor.wasm`,
//! `unsigned.wasm`, `provider.par`, `other.par`).

use host_core::manifest;

use super::{err, ok, Outcome};
use crate::harness::scratch;

pub(super) const DICT: &[&[u8]] = &[
    b"[[actors]]",
    b"[[providers]]",
    b"[[links]]",
    b"[actors]",
    b"name = \"a\"",
    b"name = \"p\"",
    b"file = \"actor.wasm\"",
    b"file = \"unsigned.wasm\"",
    b"file = \"provider.par\"",
    b"file = \"other.par\"",
    b"file = \"/dev/zero\"",
    b"file = \".\"",
    b"file = \"\"",
    b"count = 0",
    b"count = 4294967296",
    b"count = -1",
    b"link_name = \"default\"",
    b"actor = \"a\"",
    b"provider = \"p\"",
    b"contract = \"wasmcloud:fuzz\"",
    b"[links.values]",
    b"[providers.config]",
    b"values = { port = 8080 }",
    b"config = { a = [1, 2] }",
    b"${HOME}",
    b"${NOPE:-x}",
    b"${",
    b"}",
    b"\"\"\"",
    b"'''",
    b"[",
    b"{",
    b"a = [",
    b"a = {",
    b"\\u0000",
    b"1979-05-27T07:32:00Z",
    b"inf",
    b"nan",
    b"\r\n",
];

pub(super) fn manifest(input: &[u8]) -> Outcome {
    let dir = scratch();
    let path = dir.join("manifest.toml");
    if let Err(e) = std::fs::write(&path, input) {
        panic!("cannot write the scratch manifest {}: {e}", path.display());
    }
    match manifest::load(
        &path,
        &[],
        &dir.join("provider-cache"),
        &manifest::no_registry,
    ) {
        Ok(m) => ok(&m.summary()),
        Err(e) => err(format!("{e:#}").replace(&dir.display().to_string(), "DIR")),
    }
}
