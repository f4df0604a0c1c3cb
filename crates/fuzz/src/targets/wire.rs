//! Every channel's messages as `wire::FrameReader` reads them, the
//! provider's bootstrap, and the handshake.

use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use wire::handshake::{self, Role};
use wire::{control, launcher, provider, worker, FrameReader, DEFAULT_MAX_FRAME_LEN};

use super::{err, ok, Outcome, Target};
use crate::harness::block_on;
use crate::mutate::Shape;

pub(super) const DICT: &[&[u8]] = &[
    b"\x81\xa7Request",
    b"\x82\xa2id\x01\xa7request",
    b"\xa6Invoke",
    b"\xaaStartActor",
    b"\xa9SetRoutes",
    b"\xa2Ok",
    b"\xa3Err",
    b"\xa4kind",
    b"\xa7message",
    b"\xa8NotFound",
    b"\xa6Denied",
    b"\xa5token",
    b"\xa7version",
    b"\xa4role",
    b"\xa8Provider",
    b"\xc4\x00",
    b"\xc5\xff\xff",
    b"\xc6\xff\xff\xff\xff",
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",
    b"\x91",
    b"\x81\xa0",
    b"\xc0",
    b"\x00\x00\x00\x00",
    b"\x04\x00\x00\x00",
    b"\xff\xff\xff\xff",
];

/// A channel's target: frames of `T` through `FrameReader`.
pub(super) const fn target(name: &'static str, run: fn(&[u8]) -> Outcome) -> Target {
    Target {
        name,
        run,
        shape: Shape::Frames,
        dict: DICT,
        max_len: 64 * 1024,
        short_tenths: 8,
        hidden: false,
    }
}

/// Hands out the input in pieces of varying size (one byte, a prefix's
/// worth, a few KiB...), so frames arrive split anywhere and run together.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

const PIECE_SIZES: [usize; 7] = [1, 3, 4, 5, 64, 4096, usize::MAX];

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = PIECE_SIZES[self.step % PIECE_SIZES.len()];
        self.step += 1;
        let n = size.min(buf.remaining()).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// The shape of an encoded message: its map keys (variant and field names)
/// in order, a few levels deep.
fn shape_of(encoded: &[u8]) -> String {
    fn walk(value: &rmpv::Value, depth: usize, out: &mut String) {
        if depth > 4 || out.len() > 120 {
            return;
        }
        match value {
            rmpv::Value::Map(pairs) => {
                for (k, v) in pairs {
                    if let Some(k) = k.as_str() {
                        out.push_str(k);
                        out.push(',');
                    }
                    walk(v, depth + 1, out);
                }
            }
            rmpv::Value::Array(items) => {
                if let Some(first) = items.first() {
                    walk(first, depth + 1, out);
                }
            }
            rmpv::Value::String(s) if depth == 0 => out.push_str(s.as_str().unwrap_or("?")),
            _ => {}
        }
    }
    let mut out = String::new();
    if let Ok(value) = rmpv::decode::read_value(&mut &encoded[..]) {
        walk(&value, 0, &mut out);
    }
    out
}

/// Every frame of `input` as a `T`, until the end or the first error.
/// A decoded message must encode again and decode to the same encoding.
fn frames<T: DeserializeOwned + Serialize>(input: &[u8], max_len: usize) -> Outcome {
    block_on(async {
        let mut reader = FrameReader::<_, T>::with_max_len(
            Pieces {
                data: input,
                step: input.len(),
            },
            max_len,
        );
        let mut outcome = ok("empty");
        // The input is at most a few hundred KiB: it holds few frames.
        loop {
            match reader.recv().await {
                Ok(Some(message)) => {
                    let encoded = rmp_serde::to_vec_named(&message)
                        .unwrap_or_else(|e| panic!("a decoded message does not encode: {e}"));
                    let again: T = rmp_serde::from_slice(&encoded).unwrap_or_else(|e| {
                        panic!("a decoded message does not decode once encoded again: {e}")
                    });
                    let twice = rmp_serde::to_vec_named(&again)
                        .unwrap_or_else(|e| panic!("a decoded message does not encode: {e}"));
                    assert_eq!(encoded, twice, "a message changed in a round trip");
                    outcome = ok(&shape_of(&encoded));
                }
                Ok(None) => return outcome,
                Err(e) => return err(e),
            }
        }
    })
}

pub(super) fn to_worker(input: &[u8]) -> Outcome {
    frames::<worker::ToWorker>(input, DEFAULT_MAX_FRAME_LEN)
}

pub(super) fn from_worker(input: &[u8]) -> Outcome {
    frames::<worker::FromWorker>(input, DEFAULT_MAX_FRAME_LEN)
}

pub(super) fn to_provider(input: &[u8]) -> Outcome {
    frames::<provider::ToProvider>(input, DEFAULT_MAX_FRAME_LEN)
}

pub(super) fn from_provider(input: &[u8]) -> Outcome {
    frames::<provider::FromProvider>(input, DEFAULT_MAX_FRAME_LEN)
}

pub(super) fn to_launcher(input: &[u8]) -> Outcome {
    frames::<launcher::ToLauncher>(input, DEFAULT_MAX_FRAME_LEN)
}

pub(super) fn from_launcher(input: &[u8]) -> Outcome {
    frames::<launcher::FromLauncher>(input, DEFAULT_MAX_FRAME_LEN)
}

pub(super) fn control_request(input: &[u8]) -> Outcome {
    frames::<control::ControlRequest>(input, control::CONTROL_MAX_FRAME_LEN)
}

pub(super) fn control_response(input: &[u8]) -> Outcome {
    frames::<control::ControlResponse>(input, control::CONTROL_MAX_FRAME_LEN)
}

pub(super) fn bootstrap(input: &[u8]) -> Outcome {
    match shim::read_bootstrap_from(&mut &input[..]) {
        Ok(b) => ok(if b.config_json.is_empty() {
            "bootstrap"
        } else {
            "bootstrap+config"
        }),
        Err(e) => err(e),
    }
}

/// Both sides of the handshake on fuzzed bytes: the accepting side reads
/// them as a `Hello`, the connecting side as the answer to its own.
pub(super) fn handshake(input: &[u8]) -> Outcome {
    block_on(async {
        let accepted = {
            let (mut feed, mut reader) = tokio::io::duplex(input.len() + 1);
            let (mut writer, _answer) = tokio::io::duplex(64 * 1024);
            let _ = feed.write_all(input).await;
            drop(feed);
            handshake::accept(&mut reader, &mut writer, |hello| {
                if hello.role == Role::Provider && hello.token == "secret" && hello.key == "Vkey" {
                    Ok(())
                } else {
                    Err("refused".into())
                }
            })
            .await
        };
        let connected = {
            let (mut feed, mut reader) = tokio::io::duplex(input.len() + 1);
            let (mut writer, _hello) = tokio::io::duplex(64 * 1024);
            let _ = feed.write_all(input).await;
            drop(feed);
            handshake::connect_as(&mut reader, &mut writer, Role::Provider, "t", "Vkey").await
        };
        let a = match accepted {
            Ok(hello) => ok(&format!("{:?}", hello.role)),
            Err(e) => err(e),
        };
        let c = match connected {
            Ok(()) => ok("welcome"),
            Err(e) => err(e),
        };
        format!("{a}|{c}")
    })
}
