//! The fuzz targets: each is a function of the input bytes that must not
//! panic (errors are fine) and returns an [`Outcome`], a short key for
//! what the input reached (a message's shape, an error's text without its
//! numbers). New outcomes grow the corpus: the cheap stand-in for coverage
//! guidance, which stable Rust cannot give without instrumentation.

use crate::mutate::Shape;

mod archive;
mod claims;
mod http;
mod manifest;
mod wire;

/// What an input reached: `ok:...` or `err:...`, normalised.
pub type Outcome = String;

/// One decoder under test.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> Outcome,
    pub shape: Shape,
    /// Tokens the mutator inserts (format keywords, edge values).
    pub dict: &'static [&'static [u8]],
    /// Mutants are cut to this length.
    pub max_len: usize,
    /// Seconds of the short run (`cargo xtask test`), in tenths.
    pub short_tenths: u32,
    /// Only run when named (`--target`): the harness's own checks.
    pub hidden: bool,
}

/// Every target, the hidden self-checks last.
pub fn all() -> &'static [Target] {
    TARGETS
}

pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

const KIB: usize = 1024;

static TARGETS: &[Target] = &[
    wire::target("to_worker", wire::to_worker),
    wire::target("from_worker", wire::from_worker),
    wire::target("to_provider", wire::to_provider),
    wire::target("from_provider", wire::from_provider),
    wire::target("to_launcher", wire::to_launcher),
    wire::target("from_launcher", wire::from_launcher),
    wire::target("control_request", wire::control_request),
    wire::target("control_response", wire::control_response),
    Target {
        name: "bootstrap",
        run: wire::bootstrap,
        shape: Shape::Frames,
        dict: wire::DICT,
        max_len: 64 * KIB,
        short_tenths: 8,
        hidden: false,
    },
    Target {
        name: "handshake",
        run: wire::handshake,
        shape: Shape::Frames,
        dict: wire::DICT,
        max_len: 16 * KIB,
        short_tenths: 8,
        hidden: false,
    },
    Target {
        name: "claims_wasm",
        run: claims::wasm,
        shape: Shape::Wasm,
        dict: claims::DICT,
        max_len: 64 * KIB,
        short_tenths: 20,
        hidden: false,
    },
    Target {
        name: "claims_jwt",
        run: claims::jwt,
        shape: Shape::Jwt,
        dict: claims::DICT,
        max_len: 64 * KIB,
        short_tenths: 20,
        hidden: false,
    },
    Target {
        name: "par",
        run: archive::par,
        shape: Shape::Tar,
        dict: archive::DICT,
        max_len: 256 * KIB,
        short_tenths: 20,
        hidden: false,
    },
    Target {
        name: "manifest",
        run: manifest::manifest,
        shape: Shape::Text,
        dict: manifest::DICT,
        max_len: 64 * KIB,
        short_tenths: 20,
        hidden: false,
    },
    Target {
        name: "http_response",
        run: http::response,
        shape: Shape::MsgPack,
        dict: http::REPLY_DICT,
        max_len: 256 * KIB,
        short_tenths: 10,
        hidden: false,
    },
    Target {
        name: "http_request",
        run: http::request,
        shape: Shape::Text,
        dict: http::DICT,
        max_len: 64 * KIB,
        short_tenths: 10,
        hidden: false,
    },
    Target {
        name: "http_server",
        run: http::server,
        shape: Shape::Text,
        dict: http::DICT,
        max_len: 256 * KIB,
        short_tenths: 25,
        hidden: false,
    },
    // The harness's own checks: a panic and an abort must each be caught
    // and reported with their input.
    Target {
        name: "selftest_panic",
        run: selftest_panic,
        shape: Shape::Bytes,
        dict: &[b"CRASH"],
        max_len: 64,
        short_tenths: 0,
        hidden: true,
    },
    Target {
        name: "selftest_abort",
        run: selftest_abort,
        shape: Shape::Bytes,
        dict: &[b"ABORT"],
        max_len: 64,
        short_tenths: 0,
        hidden: true,
    },
];

fn selftest_panic(input: &[u8]) -> Outcome {
    if input.starts_with(b"CRASH") {
        panic!("selftest_panic: found the planted crash");
    }
    ok(input.first().map_or("empty", |_| "bytes"))
}

fn selftest_abort(input: &[u8]) -> Outcome {
    if input.starts_with(b"ABORT") {
        std::process::abort();
    }
    ok(input.first().map_or("empty", |_| "bytes"))
}

/// `ok:what`.
pub fn ok(what: &str) -> Outcome {
    format!("ok:{what}")
}

/// `err:` and the error's words, each value in it (a number, a key, a
/// name, quoted text) blanked to `~`, so errors that differ only in a
/// value count as one outcome.
pub fn err(error: impl std::fmt::Display) -> Outcome {
    let text = error.to_string();
    let mut out = String::from("err:");
    let mut blank = false;
    for token in text.split_whitespace() {
        let word = token.trim_end_matches([':', ',', '.', ';', ')']);
        let plain = !word.is_empty()
            && word.len() <= 16
            && word
                .chars()
                .all(|c| c.is_ascii_lowercase() || matches!(c, '-' | '\'' | '(' | '_'))
            || matches!(word, "JWT" | "UTF-8" | "I/O");
        if plain {
            out.push_str(token);
            out.push(' ');
            blank = false;
        } else if !blank {
            out.push_str("~ ");
            blank = true;
        }
        if out.len() > 100 {
            break;
        }
    }
    out.truncate(out.trim_end().len());
    out
}
