//! The seed corpus: small valid inputs for every target (a real encoded
//! message of each variant, a signed actor, small archives, a manifest,
//! HTTP requests). `fuzz --write-seeds` writes them to
//! `crates/fuzz/corpus/<target>/`, where they are committed; the tests
//! check that each still decodes, so the corpus follows the protocol.

use std::collections::BTreeMap;

use host_core::claims::SignOptions;
use serde::Serialize;
use wire::control::{
    ActorKind, ActorSummary, Artifact, ControlReply, ControlRequest, ControlResponse, Inventory,
    ProcessState, ProcessSummary, ProviderSummary,
};
use wire::handshake::{Hello, Role, Welcome};
use wire::launcher::{FromLauncher, LaunchSpec, LauncherRequest, OutputStream, ToLauncher};
use wire::provider::{Bootstrap, FromProvider, Link, ToProvider};
use wire::worker::{ActorSpec, FromWorker, LogLevel, Route, ToWorker, WorkerConfig, WorkerRequest};
use wire::{Bytes, CallError, PROTOCOL_VERSION};

use crate::harness::{self, keys, TINY_WASM};

/// A named seed.
pub type Seed = (String, Vec<u8>);

/// One frame: 4-byte big-endian length, named MessagePack.
pub fn frame<T: Serialize>(message: &T) -> Vec<u8> {
    let body = rmp_serde::to_vec_named(message).unwrap_or_default();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn framed<T: Serialize>(items: Vec<(&str, T)>) -> Vec<Seed> {
    items
        .into_iter()
        .map(|(name, m)| (format!("{name}.bin"), frame(&m)))
        .collect()
}

fn bytes(b: &[u8]) -> Bytes {
    Bytes::from(b.to_vec())
}

fn link() -> Link {
    Link {
        actor_id: "MACTOR".into(),
        provider_id: "VPROVIDER".into(),
        contract_id: "wasmcloud:keyvalue".into(),
        link_name: "default".into(),
        values: BTreeMap::from([("bucket".into(), "demo".into())]),
    }
}

fn spec() -> ActorSpec {
    ActorSpec {
        key: "MACTOR".into(),
        wasm: bytes(TINY_WASM),
        hash: "AB12".into(),
        caps: vec!["wasmcloud:keyvalue".into()],
        instances: 2,
    }
}

fn to_worker() -> Vec<Seed> {
    let request = |id, request| ToWorker::Request { id, request };
    framed(vec![
        (
            "configure",
            ToWorker::Configure(WorkerConfig {
                max_memory_bytes: 64 << 20,
                invocation_timeout_ms: 2000,
                cache_dir: Some("/tmp/cache".into()),
                max_instances: 100,
                max_queued_calls: 256,
                data_socket: Some("/tmp/data.sock".into()),
            }),
        ),
        ("start-actor", request(1, WorkerRequest::StartActor(spec()))),
        (
            "update-actor",
            request(2, WorkerRequest::UpdateActor(spec())),
        ),
        (
            "scale-actor",
            request(
                3,
                WorkerRequest::ScaleActor {
                    key: "MACTOR".into(),
                    instances: 4,
                },
            ),
        ),
        (
            "stop-actor",
            request(
                4,
                WorkerRequest::StopActor {
                    key: "MACTOR".into(),
                },
            ),
        ),
        (
            "invoke",
            request(
                5,
                WorkerRequest::Invoke {
                    actor: "MACTOR".into(),
                    operation: "Echo.Echo".into(),
                    payload: bytes(b"\x81\xa1a\x01"),
                    timeout_ms: 2000,
                },
            ),
        ),
        (
            "admit-provider",
            request(
                6,
                WorkerRequest::AdmitProvider {
                    provider_key: "VPROVIDER".into(),
                    link_name: "default".into(),
                    contract_id: "wasmcloud:keyvalue".into(),
                    token: "0123".into(),
                },
            ),
        ),
        (
            "set-routes",
            request(
                7,
                WorkerRequest::SetRoutes {
                    routes: vec![Route {
                        actor_id: "MACTOR".into(),
                        contract_id: "wasmcloud:keyvalue".into(),
                        link_name: "default".into(),
                        provider_key: "VPROVIDER".into(),
                    }],
                },
            ),
        ),
        (
            "host-call-ok",
            ToWorker::HostCallResult {
                id: 8,
                result: Ok(bytes(b"reply")),
            },
        ),
        (
            "host-call-err",
            ToWorker::HostCallResult {
                id: 9,
                result: Err(CallError::timeout("too slow")),
            },
        ),
        ("cancel", ToWorker::Cancel { id: 10 }),
    ])
}

fn from_worker() -> Vec<Seed> {
    let mut seeds = framed(vec![
        (
            "reply-ok",
            FromWorker::Reply {
                id: 1,
                result: Ok(bytes(b"ok")),
            },
        ),
        (
            "reply-err",
            FromWorker::Reply {
                id: 2,
                result: Err(CallError::actor_fault("trap")),
            },
        ),
        (
            "host-call",
            FromWorker::HostCall {
                id: 3,
                actor: "MACTOR".into(),
                binding: "default".into(),
                namespace: "wasmcloud:keyvalue".into(),
                operation: "KeyValue.Get".into(),
                payload: bytes(b"\x81\xa3key\xa1k"),
                timeout_ms: 1500,
            },
        ),
        ("cancel-host-call", FromWorker::CancelHostCall { id: 4 }),
    ]);
    for (name, level) in [
        ("log-error", LogLevel::Error),
        ("log-warn", LogLevel::Warn),
        ("log-info", LogLevel::Info),
        ("log-debug", LogLevel::Debug),
        ("log-trace", LogLevel::Trace),
    ] {
        seeds.push((
            format!("{name}.bin"),
            frame(&FromWorker::Log {
                actor: "MACTOR".into(),
                level,
                text: "hello".into(),
            }),
        ));
    }
    // Two frames back to back, as a busy channel carries them.
    let mut two = frame(&FromWorker::CancelHostCall { id: 5 });
    two.extend(frame(&FromWorker::Reply {
        id: 6,
        result: Ok(bytes(b"")),
    }));
    seeds.push(("two-frames.bin".into(), two));
    seeds
}

fn to_provider() -> Vec<Seed> {
    framed(vec![
        (
            "init",
            ToProvider::Init {
                links: vec![link()],
            },
        ),
        ("link-put", ToProvider::LinkPut(link())),
        (
            "link-del",
            ToProvider::LinkDel {
                actor_id: "MACTOR".into(),
                contract_id: "wasmcloud:keyvalue".into(),
                link_name: "default".into(),
            },
        ),
        (
            "invoke",
            ToProvider::Invoke {
                id: 1,
                actor_id: "MACTOR".into(),
                operation: "KeyValue.Get".into(),
                payload: bytes(b"\x81\xa3key\xa1k"),
            },
        ),
        ("health-check", ToProvider::HealthCheck { id: 2 }),
        (
            "call-actor-result",
            ToProvider::CallActorResult {
                id: 3,
                result: Err(CallError::not_found("no such actor")),
            },
        ),
        ("cancel", ToProvider::Cancel { id: 4 }),
        ("shutdown", ToProvider::Shutdown),
        (
            "data-path",
            ToProvider::DataPath {
                socket: "/tmp/worker-data.sock".into(),
                token: "abcd".into(),
                timeout_ms: 2000,
            },
        ),
    ])
}

fn from_provider() -> Vec<Seed> {
    framed(vec![
        ("ready", FromProvider::Ready),
        (
            "invoke-result",
            FromProvider::InvokeResult {
                id: 1,
                result: Ok(bytes(b"\xc3")),
            },
        ),
        (
            "health",
            FromProvider::Health {
                id: 2,
                healthy: false,
                message: "disk full".into(),
            },
        ),
        (
            "call-actor",
            FromProvider::CallActor {
                id: 3,
                actor_id: "MACTOR".into(),
                operation: "HttpServer.HandleRequest".into(),
                payload: bytes(b"\x80"),
            },
        ),
        ("cancel-call", FromProvider::CancelCall { id: 4 }),
    ])
}

fn to_launcher() -> Vec<Seed> {
    framed(vec![
        (
            "launch",
            ToLauncher::Request {
                id: 1,
                request: LauncherRequest::Launch(LaunchSpec {
                    instance: 7,
                    provider_key: "VPROVIDER".into(),
                    link_name: "default".into(),
                    binary: "/tmp/cache/provider".into(),
                    binary_sha256: "AB".repeat(32),
                    data_dir: "/tmp/data/VPROVIDER/default".into(),
                    env: vec![("PATH".into(), "/usr/bin".into())],
                    stdin: bytes(b"\x00\x00\x00\x01\xc0"),
                }),
            },
        ),
        (
            "stop",
            ToLauncher::Request {
                id: 2,
                request: LauncherRequest::Stop {
                    instance: 7,
                    grace_ms: 2000,
                },
            },
        ),
    ])
}

fn from_launcher() -> Vec<Seed> {
    framed(vec![
        (
            "reply",
            FromLauncher::Reply {
                id: 1,
                result: Ok(4242),
            },
        ),
        (
            "reply-err",
            FromLauncher::Reply {
                id: 2,
                result: Err(CallError::internal("exec failed")),
            },
        ),
        (
            "exited",
            FromLauncher::Exited {
                instance: 7,
                pid: 4242,
                code: Some(1),
                signal: None,
            },
        ),
        (
            "output",
            FromLauncher::Output {
                instance: 7,
                stream: OutputStream::Stderr,
                line: "started".into(),
            },
        ),
    ])
}

fn control_request() -> Vec<Seed> {
    framed(vec![
        ("inventory", ControlRequest::Inventory),
        (
            "start-actor",
            ControlRequest::StartActor {
                actor: Artifact::Bytes(bytes(TINY_WASM)),
                count: 1,
            },
        ),
        (
            "start-actor-ref",
            ControlRequest::StartActor {
                actor: Artifact::Reference("127.0.0.1:5000/echo:0.1.0".into()),
                count: 1,
            },
        ),
        (
            "scale-actor",
            ControlRequest::ScaleActor {
                key: "MACTOR".into(),
                count: 3,
            },
        ),
        (
            "update-actor",
            ControlRequest::UpdateActor {
                key: "MACTOR".into(),
                actor: Artifact::Path("/tmp/echo.wasm".into()),
            },
        ),
        (
            "stop-actor",
            ControlRequest::StopActor {
                key: "MACTOR".into(),
            },
        ),
        (
            "call",
            ControlRequest::Call {
                key: "MACTOR".into(),
                operation: "Echo.Echo".into(),
                payload: bytes(b"\x90"),
            },
        ),
        ("stop-host", ControlRequest::StopHost),
        (
            "start-provider",
            ControlRequest::StartProvider {
                archive: Artifact::Path("/tmp/kv.par".into()),
                link_name: "default".into(),
                config_json: "{}".into(),
            },
        ),
        (
            "stop-provider",
            ControlRequest::StopProvider {
                key: "VPROVIDER".into(),
                link_name: "default".into(),
            },
        ),
        ("link-put", ControlRequest::LinkPut(link())),
        (
            "link-del",
            ControlRequest::LinkDel {
                actor_id: "MACTOR".into(),
                contract_id: "wasmcloud:keyvalue".into(),
                link_name: "default".into(),
            },
        ),
        ("link-list", ControlRequest::LinkList),
        ("events", ControlRequest::Events { follow: true }),
    ])
}

fn control_response() -> Vec<Seed> {
    let inventory = Inventory {
        host_id: "NHOST".into(),
        uptime_secs: 12,
        processes: vec![ProcessSummary {
            name: "actor-runtime".into(),
            pid: Some(10),
            restarts: 0,
            state: ProcessState::Running,
        }],
        actors: vec![ActorSummary {
            key: "MACTOR".into(),
            name: "echo".into(),
            kind: ActorKind::Module,
            issuer: "AISSUER".into(),
            rev: Some(1),
            ver: Some("0.1.0".into()),
            call_alias: None,
            caps: vec!["wasmcloud:keyvalue".into()],
            count: 1,
            image_ref: Some("127.0.0.1:5000/echo:0.1.0".into()),
        }],
        providers: vec![ProviderSummary {
            key: "VPROVIDER".into(),
            name: "kv".into(),
            link_name: "default".into(),
            contract_id: "wasmcloud:keyvalue".into(),
            pid: None,
            state: ProcessState::Failed,
            health: "unknown".into(),
            restarts: 5,
            image_ref: None,
        }],
    };
    framed(vec![
        ("done", ControlResponse::Ok(ControlReply::Done)),
        (
            "actor-started",
            ControlResponse::Ok(ControlReply::ActorStarted {
                key: "MACTOR".into(),
            }),
        ),
        (
            "call-result",
            ControlResponse::Ok(ControlReply::CallResult(bytes(b"\x81\xa1a\x01"))),
        ),
        (
            "inventory",
            ControlResponse::Ok(ControlReply::Inventory(inventory)),
        ),
        (
            "provider-started",
            ControlResponse::Ok(ControlReply::ProviderStarted {
                key: "VPROVIDER".into(),
            }),
        ),
        (
            "links",
            ControlResponse::Ok(ControlReply::Links(vec![link()])),
        ),
        (
            "events",
            ControlResponse::Ok(ControlReply::Events(vec!["{\"type\":\"x\"}".into()])),
        ),
        (
            "err",
            ControlResponse::Err(CallError::denied("issuer not allowed")),
        ),
    ])
}

fn bootstrap() -> Vec<Seed> {
    let b = Bootstrap {
        socket: "/tmp/provider.sock".into(),
        token: "0123456789abcdef".into(),
        host_id: "NHOST".into(),
        provider_key: "VPROVIDER".into(),
        link_name: "default".into(),
        contract_id: "wasmcloud:keyvalue".into(),
        config_json: "{\"max_body_bytes\":10}".into(),
        data_dir: "/tmp/data".into(),
    };
    vec![("bootstrap.bin".into(), frame(&b))]
}

fn handshake() -> Vec<Seed> {
    let hello = |version, role, token: &str, key: &str| Hello {
        version,
        role,
        token: token.into(),
        key: key.into(),
    };
    let mut seeds = framed(vec![
        (
            "hello-accepted",
            hello(PROTOCOL_VERSION, Role::Provider, "secret", "Vkey"),
        ),
        (
            "hello-refused",
            hello(PROTOCOL_VERSION, Role::Worker, "wrong", ""),
        ),
        ("hello-old-version", hello(1, Role::Control, "", "")),
    ]);
    seeds.extend(framed(vec![
        (
            "welcome-accepted",
            Welcome::Accepted {
                version: PROTOCOL_VERSION,
            },
        ),
        (
            "welcome-refused",
            Welcome::Refused {
                reason: "bad token".into(),
            },
        ),
    ]));
    seeds
}

/// A minimal component: the component-model header and no sections.
const TINY_COMPONENT: &[u8] = &[0, 0x61, 0x73, 0x6d, 0x0d, 0, 1, 0];

fn signed(wasm: &[u8], options: SignOptions) -> Vec<u8> {
    harness::sign_actor(wasm, &options).unwrap_or_default()
}

fn claims_wasm() -> Vec<Seed> {
    let full = SignOptions {
        name: "echo".into(),
        caps: vec!["wasmcloud:keyvalue".into(), "wasmcloud:httpserver".into()],
        tags: vec!["fuzz".into()],
        call_alias: Some("echoer".into()),
        rev: Some(3),
        ver: Some("0.3.0".into()),
        expires_in_secs: Some(3650 * 86_400),
        not_before_secs: None,
    };
    let later = SignOptions {
        not_before_secs: Some(86_400),
        ..SignOptions::default()
    };
    let signed_tiny = signed(TINY_WASM, SignOptions::default());
    // The same claims under the legacy section name `jwt`.
    let legacy = {
        let jwt = host_core::claims::read_claims(&signed_tiny)
            .map(|(jwt, _)| jwt)
            .unwrap_or_default();
        let mut out = TINY_WASM.to_vec();
        out.extend(crate::mutate::custom_section("jwt", jwt.as_bytes()));
        out
    };
    let mut tampered = signed(TINY_WASM, SignOptions::default());
    tampered[11] ^= 1;
    vec![
        ("signed-module.wasm".into(), signed_tiny),
        ("signed-full.wasm".into(), signed(TINY_WASM, full)),
        (
            "signed-component.wasm".into(),
            signed(TINY_COMPONENT, SignOptions::default()),
        ),
        ("not-yet-valid.wasm".into(), signed(TINY_WASM, later)),
        ("legacy-section.wasm".into(), legacy),
        ("tampered.wasm".into(), tampered),
        ("unsigned.wasm".into(), TINY_WASM.to_vec()),
    ]
}

fn claims_jwt() -> Vec<Seed> {
    let jwt_of = |wasm: &[u8]| {
        host_core::claims::read_claims(wasm)
            .map(|(jwt, _)| jwt.into_bytes())
            .unwrap_or_default()
    };
    let full = SignOptions {
        name: "echo".into(),
        caps: vec!["wasmcloud:keyvalue".into()],
        expires_in_secs: Some(10 * 86_400),
        ..SignOptions::default()
    };
    let provider = {
        let host = host_core::par::host_target();
        let claims =
            harness::par_claims_json(&[(host, b"#!/bin/sh\n".to_vec())], serde_json::Value::Null);
        harness::jwt(harness::JWT_HEADER, &claims, &keys().account).into_bytes()
    };
    let expired = {
        let claims = harness::par_claims_json(&[], serde_json::json!({"exp": 1, "nbf": 0}));
        harness::jwt(harness::JWT_HEADER, &claims, &keys().account).into_bytes()
    };
    vec![
        (
            "actor.jwt".into(),
            jwt_of(&signed(TINY_WASM, SignOptions::default())),
        ),
        ("actor-full.jwt".into(), jwt_of(&signed(TINY_WASM, full))),
        ("provider.jwt".into(), provider),
        ("expired.jwt".into(), expired),
    ]
}

fn par() -> Vec<Seed> {
    let host = host_core::par::host_target();
    let binary = b"#!/bin/sh\necho provider\n".to_vec();
    vec![
        (
            "host-target.par".into(),
            harness::archive(&[(host.clone(), binary.clone())], true),
        ),
        (
            "host-target-plain.tar".into(),
            harness::archive(&[(host.clone(), binary.clone())], false),
        ),
        (
            "two-targets.par".into(),
            harness::archive(
                &[("aarch64-linux".into(), b"other".to_vec()), (host, binary)],
                true,
            ),
        ),
        (
            "other-target.par".into(),
            harness::archive(&[("sparc-plan9".into(), b"x".to_vec())], true),
        ),
    ]
}

fn manifest() -> Vec<Seed> {
    let full = r#"# A manifest of every kind of entry, its files in the scratch directory.
[[actors]]
name = "a"
file = "actor.wasm"
count = 2

[[providers]]
name = "p"
file = "provider.par"
link_name = "default"
config = { max_body_bytes = 1024, nested = { list = [1, "two", 3.5] } }

[[links]]
actor = "a"
provider = "p"
contract = "wasmcloud:fuzz"
values = { port = "${FUZZ_PORT:-8080}", address = "127.0.0.1:8080" }
"#;
    let keys = format!(
        "[[links]]\nactor = \"{}\"\nprovider = \"{}\"\ncontract = \"wasmcloud:keyvalue\"\nlink_name = \"other\"\n",
        keys().module.public_key(),
        keys().service.public_key()
    );
    vec![
        ("full.toml".into(), full.as_bytes().to_vec()),
        (
            "unsigned-actor.toml".into(),
            b"[[actors]]\nname = \"a\"\nfile = \"actor.wasm\"\n\n[[actors]]\nname = \"u\"\nfile = \"unsigned.wasm\"\n".to_vec(),
        ),
        (
            "providers.toml".into(),
            b"[[providers]]\nname = \"o\"\nfile = \"other.par\"\n".to_vec(),
        ),
        ("keys.toml".into(), keys.as_bytes().to_vec()),
        ("empty.toml".into(), Vec::new()),
    ]
}

fn reply(status: u16, header: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut map: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (k, v) in header {
        map.entry((*k).into()).or_default().push((*v).into());
    }
    rmp_serde::to_vec_named(&provider_httpserver::HttpResponse {
        status_code: status,
        header: map,
        body: body.to_vec(),
    })
    .unwrap_or_default()
}

fn http_response() -> Vec<Seed> {
    #[derive(Serialize)]
    struct Loose {
        #[serde(rename = "statusCode")]
        status_code: u16,
        body: Vec<u8>,
    }
    vec![
        (
            "ok.bin".into(),
            reply(
                200,
                &[("content-type", "text/plain"), ("x-a", "1"), ("x-a", "2")],
                b"hello",
            ),
        ),
        ("not-found.bin".into(), reply(404, &[], b"")),
        (
            "body-as-array.bin".into(),
            rmp_serde::to_vec_named(&Loose {
                status_code: 201,
                body: b"made".to_vec(),
            })
            .unwrap_or_default(),
        ),
        (
            "framing-headers.bin".into(),
            reply(
                200,
                &[("content-length", "999"), ("transfer-encoding", "chunked")],
                b"x",
            ),
        ),
    ]
}

fn http_request() -> Vec<Seed> {
    vec![
        (
            "get.txt".into(),
            b"GET /a/b?x=1&y=2\nhost: example\nx-multi: one\nx-multi: two\n\n".to_vec(),
        ),
        (
            "post.txt".into(),
            b"POST /submit\ncontent-type: application/json\n\n{\"a\":1}".to_vec(),
        ),
        (
            "absolute.txt".into(),
            b"PUT http://example:8080/p?q\n\nbody".to_vec(),
        ),
    ]
}

fn http_server() -> Vec<Seed> {
    let mut with_reply = b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n\n--reply--\n".to_vec();
    with_reply.extend(reply(
        201,
        &[("x-a", "1"), ("connection", "keep-alive")],
        b"made",
    ));
    let mut not_modified = b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n\n--reply--\n".to_vec();
    not_modified.extend(reply(304, &[], b"body for a 304"));
    vec![
        (
            "get.http".into(),
            b"GET /?name=Ada HTTP/1.1\r\nHost: localhost\r\nUser-Agent: fuzz\r\n\r\n".to_vec(),
        ),
        (
            "post.http".into(),
            b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        ),
        (
            "chunked.http".into(),
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "pipelined.http".into(),
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "http10.http".into(),
            b"GET /old HTTP/1.0\r\n\r\n".to_vec(),
        ),
        ("with-reply.http".into(), with_reply),
        ("not-modified.http".into(), not_modified),
    ]
}

/// The seeds of `target`.
pub fn seeds(target: &str) -> Vec<Seed> {
    match target {
        "to_worker" => to_worker(),
        "from_worker" => from_worker(),
        "to_provider" => to_provider(),
        "from_provider" => from_provider(),
        "to_launcher" => to_launcher(),
        "from_launcher" => from_launcher(),
        "control_request" => control_request(),
        "control_response" => control_response(),
        "bootstrap" => bootstrap(),
        "handshake" => handshake(),
        "claims_wasm" => claims_wasm(),
        "claims_jwt" => claims_jwt(),
        "par" => par(),
        "manifest" => manifest(),
        "http_response" => http_response(),
        "http_request" => http_request(),
        "http_server" => http_server(),
        "selftest_panic" | "selftest_abort" => vec![("plain.bin".into(), b"plain".to_vec())],
        _ => Vec::new(),
    }
}
