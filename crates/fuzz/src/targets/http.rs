//! The httpserver provider: its request encoding and response decoding,
//! and raw HTTP bytes over TCP to a listener served by
//! `HttpServerProvider` through `shim::serve` on an in-memory pipe, the
//! actor's reply fuzzed too. The server must answer or close, and go on
//! serving.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Uri};
use provider_httpserver::{decode_response, encode_request, HttpRequest, HttpServerProvider};
use shim::{Link, ShimError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use wire::provider::{Bootstrap, FromProvider, ToProvider};
use wire::{FrameReader, FrameWriter};

use super::{err, ok, Outcome};
use crate::harness::block_on;

pub(super) const DICT: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n",
    b"POST /p?q=1 HTTP/1.1\r\n",
    b"HEAD / HTTP/1.1\r\n",
    b"CONNECT example:443 HTTP/1.1\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"GET http://example/x HTTP/1.1\r\n",
    b"GET / HTTP/1.0\r\n",
    b"GET / HTTP/2.0\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"Host: example\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 1, 2\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"Connection: upgrade\r\nUpgrade: websocket\r\n",
    b"X-A: \xff\xfe\r\n",
    b"\r\n",
    b"\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"5;ext=1\r\nhello\r\n",
    b"\n--reply--\n",
];

/// MessagePack pieces of an actor's reply.
pub(super) const REPLY_DICT: &[&[u8]] = &[
    b"\xaastatusCode",
    b"\xa6header",
    b"\xa4body",
    b"\xcd\x00\x65",
    b"\xcd\x00\x64",
    b"\xcd\x00\xcc",
    b"\xcd\x01\x30",
    b"\xcd\x03\xe7",
    b"\xcd\x03\xe8",
    b"\xa4host",
    b"\xaaconnection",
    b"\xa7upgrade",
    b"\xaecontent-length",
    b"\xb1transfer-encoding",
    b"\xa0",
    b"\xa2\r\n",
    b"\x91\xa1x",
    b"\xde\xff\xff",
    b"\xdc\xff\xff",
];

/// `decode_response` on a fuzzed actor reply.
pub(super) fn response(input: &[u8]) -> Outcome {
    match decode_response(input.to_vec()) {
        Ok(response) => ok(&format!(
            "status {} headers {}",
            response.status().as_u16() / 100,
            response.headers().len().min(4)
        )),
        Err(e) => err(e),
    }
}

/// A request described as text (`METHOD URI`, header lines, a blank line,
/// the body) encoded with `encode_request`; what decodes must be what was
/// encoded.
pub(super) fn request(input: &[u8]) -> Outcome {
    let (head, body) = match input.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&input[..i], &input[i + 2..]),
        None => (input, &b""[..]),
    };
    let mut lines = head.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut words = first.splitn(2, |b| *b == b' ');
    let method = words.next().unwrap_or_default();
    let uri = words.next().unwrap_or(b"/");
    let Ok(method) = Method::from_bytes(method) else {
        return err("bad method");
    };
    let Ok(uri) = Uri::try_from(uri) else {
        return err("bad uri");
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let mut parts = line.splitn(2, |b| *b == b':');
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let encoded = match encode_request(method.as_str(), &uri, &headers, body) {
        Ok(encoded) => encoded,
        Err(e) => return err(e),
    };
    let decoded: HttpRequest = rmp_serde::from_slice(&encoded)
        .unwrap_or_else(|e| panic!("an encoded request does not decode: {e}"));
    assert_eq!(decoded.method, method.as_str());
    assert_eq!(decoded.path, uri.path());
    assert_eq!(decoded.query_string, uri.query().unwrap_or(""));
    assert_eq!(decoded.body, body);
    let values: usize = decoded.header.values().map(Vec::len).sum();
    assert_eq!(values, headers.len(), "header values were lost");
    ok(&format!("headers {}", headers.keys_len().min(4)))
}

/// The actor's reply unless the input carries one.
const REPLY_MARK: &[u8] = b"\n--reply--\n";

const ACTOR: &str = "Mfuzz";

/// The request the server must still answer after each input.
const PROBE: &[u8] = b"GET /probe HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n";

/// After the input's bytes (pipelined): a well-formed request that closes
/// the connection once answered, so a complete exchange ends at once.
const TAIL: &[u8] = b"GET /tail HTTP/1.1\r\nHost: tail\r\nConnection: close\r\n\r\n";

/// With no byte from the server for this long, the client closes its
/// sending side (an incomplete request then ends).
const IDLE: Duration = Duration::from_millis(300);

/// A server that has neither answered nor closed by then is hung.
const HUNG: Duration = Duration::from_secs(5);

struct Server {
    addr: SocketAddr,
    reply: Arc<Mutex<Vec<u8>>>,
    serve: JoinHandle<Result<(), ShimError>>,
    host: JoinHandle<()>,
}

thread_local! {
    static SERVER: RefCell<Option<Server>> = const { RefCell::new(None) };
}

fn ok_reply(status: u16, body: &[u8]) -> Vec<u8> {
    rmp_serde::to_vec_named(&provider_httpserver::HttpResponse {
        status_code: status,
        header: Default::default(),
        body: body.to_vec(),
    })
    .unwrap_or_default()
}

/// Starts the provider on an in-memory channel, playing the host: every
/// `CallActor` is answered with the current reply (the probe's with 200).
async fn start_server() -> Server {
    let (mut host_to, provider_from) = tokio::io::duplex(1 << 20);
    let (provider_to, host_from) = tokio::io::duplex(1 << 20);
    let provider = Arc::new(HttpServerProvider::new());
    let bootstrap = Bootstrap {
        socket: "unused".into(),
        token: String::new(),
        host_id: "Nfuzz".into(),
        provider_key: "Vfuzz".into(),
        link_name: "default".into(),
        contract_id: provider_httpserver::CONTRACT_ID.into(),
        config_json: r#"{"header_read_timeout_ms": 2000}"#.into(),
        data_dir: std::env::temp_dir().display().to_string(),
    };
    let serve = tokio::spawn(shim::serve(
        provider.clone(),
        bootstrap,
        provider_from,
        provider_to,
    ));
    let link = Link {
        actor_id: ACTOR.into(),
        provider_id: "Vfuzz".into(),
        contract_id: provider_httpserver::CONTRACT_ID.into(),
        link_name: "default".into(),
        values: BTreeMap::from([
            ("address".into(), "127.0.0.1:0".into()),
            ("max_body_bytes".into(), "65536".into()),
        ]),
    };
    let mut from = FrameReader::<_, FromProvider>::new(host_from);
    let mut to = FrameWriter::<_, ToProvider>::new(&mut host_to);
    to.send(&ToProvider::Init { links: vec![link] })
        .await
        .unwrap_or_else(|e| panic!("cannot send Init to the provider: {e}"));
    match tokio::time::timeout(HUNG, from.recv()).await {
        Ok(Ok(Some(FromProvider::Ready))) => {}
        other => panic!("the provider did not become ready: {other:?}"),
    }
    let addr = provider
        .bound_address(ACTOR, "default")
        .unwrap_or_else(|| panic!("the provider did not bind its listener"));
    let reply = Arc::new(Mutex::new(ok_reply(200, b"ok")));
    let current = reply.clone();
    let host = tokio::spawn(async move {
        let mut to = FrameWriter::<_, ToProvider>::new(host_to);
        while let Ok(Some(message)) = from.recv().await {
            if let FromProvider::CallActor { id, payload, .. } = message {
                let probe = rmp_serde::from_slice::<HttpRequest>(&payload)
                    .is_ok_and(|r| r.path == "/probe" || r.path == "/tail");
                let body = if probe {
                    ok_reply(200, b"probe")
                } else {
                    current.lock().map(|r| r.clone()).unwrap_or_default()
                };
                let result = Ok(wire::Bytes::from(body));
                if to
                    .send(&ToProvider::CallActorResult { id, result })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    Server {
        addr,
        reply,
        serve,
        host,
    }
}

/// Sends `request` and reads until the server closes: the status lines of
/// what it answered, "closed" for nothing, "reset" for a reset.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(e) => panic!("cannot connect to the server at {addr}: {e}"),
    };
    let (mut read, mut write) = stream.split();
    let (idle_tx, idle_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = async {
        let _ = write.write_all(request).await;
        let _ = idle_rx.await;
        let _ = write.shutdown().await;
    };
    let reader = async {
        let mut idle = Some(idle_tx);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let reset = loop {
            let wait = if idle.is_some() { IDLE } else { HUNG };
            match tokio::time::timeout(wait, read.read(&mut buf)).await {
                Ok(Ok(0)) => break false,
                Ok(Ok(n)) => {
                    // Only the heads matter; keep memory bounded.
                    if got.len() < 1 << 20 {
                        got.extend_from_slice(&buf[..n]);
                    }
                }
                Ok(Err(_)) => break true,
                Err(_) => match idle.take() {
                    Some(tx) => {
                        let _ = tx.send(());
                    }
                    None => panic!(
                        "the server neither answered nor closed within {HUNG:?} of the client's end of input"
                    ),
                },
            }
        };
        drop(idle);
        (got, reset)
    };
    let ((), (got, reset)) = tokio::join!(writer, reader);
    let statuses: Vec<String> = got
        .windows(9)
        .enumerate()
        .filter(|(_, w)| w.starts_with(b"HTTP/1."))
        .take(3)
        .map(|(i, _)| String::from_utf8_lossy(&got[i..(i + 12).min(got.len())]).into_owned())
        .collect();
    match (statuses.is_empty(), reset) {
        (true, true) => "reset".into(),
        (true, false) => "closed".into(),
        (false, _) => statuses.join("|"),
    }
}

/// Raw HTTP to the running listener; the actor replies with the part of
/// the input after `\n--reply--\n`, if any.
pub(super) fn server(input: &[u8]) -> Outcome {
    let (request, reply) = match input
        .windows(REPLY_MARK.len())
        .position(|w| w == REPLY_MARK)
    {
        Some(i) => (&input[..i], Some(&input[i + REPLY_MARK.len()..])),
        None => (input, None),
    };
    block_on(async {
        let (addr, slot) = {
            let running = SERVER.with(|s| {
                s.borrow().as_ref().map(|s| {
                    (
                        s.addr,
                        s.reply.clone(),
                        s.serve.is_finished() || s.host.is_finished(),
                    )
                })
            });
            match running {
                Some((_, _, true)) => panic!("the httpserver provider stopped serving"),
                Some((addr, slot, false)) => (addr, slot),
                None => {
                    let server = start_server().await;
                    let found = (server.addr, server.reply.clone());
                    SERVER.with(|s| *s.borrow_mut() = Some(server));
                    found
                }
            }
        };
        if let Ok(mut current) = slot.lock() {
            *current = reply.map_or_else(|| ok_reply(200, b"ok"), <[u8]>::to_vec);
        }
        let mut bytes = request.to_vec();
        bytes.extend_from_slice(TAIL);
        let outcome = exchange(addr, &bytes).await;
        let probe = exchange(addr, PROBE).await;
        assert!(
            probe.starts_with("HTTP/1.1 200"),
            "the server stopped answering after this input (probe: {probe})"
        );
        // Only the first status line: the rest depends on timing.
        let first = outcome.split('|').next().unwrap_or_default().to_owned();
        ok(&first)
    })
}
