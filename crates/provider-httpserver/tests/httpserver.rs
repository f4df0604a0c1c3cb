//! Drives the httpserver provider through `shim::serve` in memory, playing
//! the host (and the linked actor), with real HTTP clients on real ports.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use provider_httpserver::{HttpRequest, HttpResponse, HttpServerProvider, HANDLE_REQUEST};
use shim::Link;
use test_support::{free_port, in_memory, link_del, ActorCall, FakeHost, Handler, Reply};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use wire::provider::{Bootstrap, ToProvider};
use wire::CallError;

const STEP: Duration = Duration::from_secs(10);
const ACTOR: &str = "Mactor";

type Host = FakeHost<HttpServerProvider>;

/// The linked actor: answers each `HttpServer.HandleRequest` it is sent.
fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(String, HttpRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    test_support::handler(move |call: ActorCall| {
        assert_eq!(call.operation, HANDLE_REQUEST);
        f(call.actor_id, decode(&call.payload))
    })
}

fn decode(payload: &[u8]) -> HttpRequest {
    rmp_serde::from_slice(payload).unwrap()
}

/// An actor reply: an `HttpResponse` as named MessagePack.
fn reply(status: u16, header: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in header {
        map.entry((*k).to_owned())
            .or_default()
            .push((*v).to_owned());
    }
    Ok(rmp_serde::to_vec_named(&HttpResponse {
        status_code: status,
        header: map,
        body: body.to_vec(),
    })
    .unwrap())
}

/// The host's side: sends `Init`, answers `CallActor` with the handler (each
/// call in its own task, so calls overlap), forwards health answers.
async fn start(config_json: &str, links: Vec<Link>, handler: Handler) -> Host {
    FakeHost::start(
        Arc::new(HttpServerProvider::new()),
        bootstrap(config_json),
        links,
        STEP,
        handler,
    )
    .await
}

/// The requests that reached an actor, in arrival order.
fn calls(host: &Host) -> Vec<(String, HttpRequest)> {
    host.calls()
        .into_iter()
        .map(|call| (call.actor_id, decode(&call.payload)))
        .collect()
}

fn bootstrap(config_json: &str) -> Bootstrap {
    test_support::bootstrap("Vhttpserver", "wasmcloud:httpserver")
        .config_json(config_json)
        .build()
}

fn link(actor: &str, values: &[(&str, &str)]) -> Link {
    values
        .iter()
        .fold(
            test_support::link(actor, "Vhttpserver", "wasmcloud:httpserver"),
            |link, (k, v)| link.value(k, v),
        )
        .build()
}

fn address_link(actor: &str, port: u16) -> Link {
    link(actor, &[("address", &format!("127.0.0.1:{port}"))])
}

/// An echo actor: 200 with the path (and query) as the body.
fn echo() -> Handler {
    handler(|_, request| async move {
        let mut body = request.path.clone();
        if !request.query_string.is_empty() {
            body = format!("{body}?{}", request.query_string);
        }
        reply(200, &[], body.as_bytes())
    })
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// A raw HTTP/1.1 client on one connection.
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    async fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        Self {
            stream: BufReader::new(stream),
        }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.stream.get_mut().write_all(raw).await.unwrap();
    }

    async fn response(&mut self) -> Resp {
        tokio::time::timeout(STEP, self.read_response())
            .await
            .expect("response in time")
    }

    async fn read_response(&mut self) -> Resp {
        let mut line = String::new();
        self.stream.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .unwrap_or_else(|| panic!("bad status line {line:?}"))
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (k, v) = trimmed.split_once(':').unwrap();
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        match resp.header("content-length") {
            Some(len) => {
                resp.body = vec![0; len.parse().unwrap()];
                self.stream.read_exact(&mut resp.body).await.unwrap();
            }
            None => {
                self.stream.read_to_end(&mut resp.body).await.unwrap();
            }
        }
        resp
    }
}

async fn get(port: u16, path: &str) -> Resp {
    let mut client = Client::connect(port).await;
    client
        .send(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    client.response().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reaches_the_actor_and_its_response_comes_back() {
    let port = free_port();
    let host = start(
        "",
        vec![address_link(ACTOR, port)],
        handler(|_, _| async {
            reply(
                201,
                &[
                    ("x-reply", "one"),
                    ("x-reply", "two"),
                    ("content-type", "text/plain"),
                ],
                b"created it",
            )
        }),
    )
    .await;

    let mut client = Client::connect(port).await;
    client
        .send(
            b"POST /things/new?a=1&b=two HTTP/1.1\r\nHost: test\r\nX-Multi: first\r\n\
              X-Multi: second\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
    let resp = client.response().await;
    assert_eq!(resp.status, 201);
    assert_eq!(resp.text(), "created it");
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    let replies: Vec<_> = resp
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-reply"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(replies, ["one", "two"]);

    let calls = calls(&host);
    assert_eq!(calls.len(), 1);
    let (actor, request) = &calls[0];
    assert_eq!(actor, ACTOR);
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/things/new");
    assert_eq!(request.query_string, "a=1&b=two");
    assert_eq!(request.header["x-multi"], ["first", "second"]);
    assert_eq!(request.header["host"], ["test"]);
    assert_eq!(request.header["content-length"], ["5"]);
    assert_eq!(request.body, b"hello");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_port_link_value_binds_all_interfaces() {
    let port = free_port();
    let host = start(
        "",
        vec![link(ACTOR, &[("port", &port.to_string())])],
        echo(),
    )
    .await;
    let bound = host.provider.bound_address(ACTOR, "default").unwrap();
    assert_eq!(bound.to_string(), format!("0.0.0.0:{port}"));
    let resp = get(port, "/via/port?q").await;
    assert_eq!((resp.status, resp.text()), (200, "/via/port?q"));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_errors_map_to_http_statuses() {
    let port = free_port();
    let host = start(
        "",
        vec![address_link(ACTOR, port)],
        handler(|_, request| async move {
            match request.path.as_str() {
                "/fail" => Err(CallError::actor_fault("actor trapped: unreachable")),
                "/timeout" => Err(CallError::timeout("no reply from Mactor within 100 ms")),
                "/deadline" => Err(CallError::timeout("the call exceeded its deadline")),
                "/gone" => Err(CallError::unavailable(
                    "no actor Mactor is running on this host",
                )),
                "/stopped" => Err(CallError::unavailable(
                    "actor Mactor is not running on this host",
                )),
                "/unknown" => Err(CallError::not_found("no actor Mnope is known")),
                "/denied" => Err(CallError::denied("not in its caps")),
                "/huge" => Err(CallError::too_large("reply of 70000000 bytes")),
                "/busy" => Err(CallError::busy("actor Mactor is busy")),
                "/garbage" => Ok(vec![0xc1, 0x00]),
                "/not-a-map" => Ok(rmp_serde::to_vec("just text").unwrap()),
                _ => reply(200, &[], b"fine"),
            }
        }),
    )
    .await;

    let resp = get(port, "/fail").await;
    assert_eq!(resp.status, 500);
    assert_eq!(resp.text(), "actor trapped: unreachable");
    for path in ["/timeout", "/deadline"] {
        let resp = get(port, path).await;
        assert_eq!(resp.status, 504, "{path}: {}", resp.text());
    }
    for path in ["/gone", "/stopped"] {
        let resp = get(port, path).await;
        assert_eq!(resp.status, 503, "{path}: {}", resp.text());
        assert!(resp.text().contains("running"), "{}", resp.text());
    }
    for (path, status) in [
        ("/unknown", 404),
        ("/denied", 403),
        ("/huge", 413),
        ("/busy", 503),
    ] {
        let resp = get(port, path).await;
        assert_eq!(resp.status, status, "{path}: {}", resp.text());
    }
    for path in ["/garbage", "/not-a-map"] {
        let resp = get(port, path).await;
        assert_eq!(resp.status, 500, "{path}");
        assert!(
            resp.text().starts_with("bad response from actor: "),
            "{}",
            resp.text()
        );
    }
    assert_eq!(get(port, "/ok").await.status, 200);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413_from_the_link_or_config_limit() {
    let (small, large) = (free_port(), free_port());
    // The config sets 16 bytes; the second link overrides it with 1000.
    let host = start(
        r#"{"max_body_bytes": 16}"#,
        vec![
            address_link("Msmall", small),
            link(
                "Mlarge",
                &[
                    ("address", &format!("127.0.0.1:{large}")),
                    ("max_body_bytes", "1000"),
                ],
            ),
        ],
        handler(|_, request| async move { reply(200, &[], &request.body) }),
    )
    .await;

    let post = |len: usize| {
        format!(
            "POST / HTTP/1.1\r\nHost: test\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{}",
            "x".repeat(len)
        )
    };
    // At the limit: served.
    let mut client = Client::connect(small).await;
    client.send(post(16).as_bytes()).await;
    let resp = client.response().await;
    assert_eq!((resp.status, resp.body.len()), (200, 16));
    // A declared length over the limit is refused before any body is sent.
    let mut client = Client::connect(small).await;
    client
        .send(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 17\r\n\r\n")
        .await;
    assert_eq!(client.response().await.status, 413);
    // The link's own limit.
    let mut client = Client::connect(large).await;
    client.send(post(1000).as_bytes()).await;
    assert_eq!(client.response().await.status, 200);
    let mut client = Client::connect(large).await;
    client
        .send(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 1001\r\n\r\n")
        .await;
    assert_eq!(client.response().await.status, 413);
    // A chunked body (no length up front) is cut off while it is read.
    let chunk = "x".repeat(600);
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let mut client = Client::connect(large).await;
    client.send(chunked.as_bytes()).await;
    let resp = client.response().await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.header("connection"), Some("close"));
    // Only the two bodies within their limits reached an actor.
    assert_eq!(calls(&host).len(), 2);
    host.shutdown().await;
}

/// A client that sends a whole oversized body without waiting (no
/// `Expect: 100-continue`) still reads its 413: the server drains what it
/// sends instead of resetting the connection under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_oversized_body_sent_at_once_still_gets_its_413() {
    let port = free_port();
    let host = start(
        r#"{"max_body_bytes": 16}"#,
        vec![address_link("Msmall", port)],
        echo(),
    )
    .await;
    let body = "x".repeat(4 * 1024 * 1024);
    let request = format!(
        "POST / HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..10 {
        let mut client = Client::connect(port).await;
        let (mut reader, mut writer) = client.stream.get_mut().split();
        let (sent, mut answer) = tokio::join!(writer.write_all(request.as_bytes()), async {
            let mut answer = Vec::new();
            reader.read_to_end(&mut answer).await.map(|_| answer)
        });
        sent.expect("the whole body is accepted");
        let answer = String::from_utf8_lossy(answer.as_mut().expect("no reset")).into_owned();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    assert!(calls(&host).is_empty());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_is_400() {
    let port = free_port();
    let host = start("", vec![address_link(ACTOR, port)], echo()).await;
    let mut client = Client::connect(port).await;
    client.send(b"THIS IS NOT HTTP\r\n\r\n").await;
    assert_eq!(client.response().await.status, 400);
    assert!(calls(&host).is_empty());
    // The listener still serves.
    assert_eq!(get(port, "/after").await.text(), "/after");
    host.shutdown().await;
}

/// An actor's reply that hyper could not send (too many header names, a
/// 1xx status, a name over hyper's length limit, a reply nested too
/// deeply) is a 500 "bad response from actor", never a panic (which the
/// client saw as a reset); big but valid replies go through; the listener
/// keeps serving after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_hyper_cannot_send_are_500s_and_the_server_keeps_serving() {
    fn with_headers(status: u16, header: HashMap<String, Vec<String>>) -> Reply {
        Ok(rmp_serde::to_vec_named(&HttpResponse {
            status_code: status,
            header,
            body: b"body".to_vec(),
        })
        .unwrap())
    }
    let port = free_port();
    let host = start(
        "",
        vec![address_link(ACTOR, port)],
        handler(|_, request| async move {
            let path = request.path.as_str();
            match path {
                "/many-names" => with_headers(
                    200,
                    (0..40_000)
                        .map(|i| (format!("x-{i}"), vec!["v".into()]))
                        .collect(),
                ),
                "/just-enough-names" => with_headers(
                    200,
                    (0..20_000)
                        .map(|i| (format!("x-{i}"), vec!["v".into()]))
                        .collect(),
                ),
                "/many-values" => with_headers(
                    200,
                    HashMap::from([("x-a".into(), vec!["v".to_string(); 40_000])]),
                ),
                "/long-name" => {
                    with_headers(200, HashMap::from([("x".repeat(70_000), vec!["v".into()])]))
                }
                "/long-value" => with_headers(
                    200,
                    HashMap::from([("x-big".into(), vec!["v".repeat(1 << 20)])]),
                ),
                "/deep" => {
                    // {"x": [[[...]]]}: an ignored field.
                    let mut nested = vec![0x81, 0xa1, b'x'];
                    nested.extend(std::iter::repeat_n(0x91, 100_000));
                    nested.push(0xc0);
                    Ok(nested)
                }
                status => reply(status[8..].parse().unwrap(), &[], b"body"),
            }
        }),
    )
    .await;
    let bad = [
        ("/many-names", "header names"),
        ("/long-name", "invalid header name"),
        ("/deep", "depth limit"),
        ("/status/100", "not a final response"),
        ("/status/101", "not a final response"),
        ("/status/199", "not a final response"),
        ("/status/0", "invalid status code 0"),
        ("/status/1000", "invalid status code 1000"),
    ];
    for (path, why) in bad {
        let resp = get(port, path).await;
        assert_eq!(resp.status, 500, "{path}: {resp:?}");
        assert!(
            resp.text().starts_with("bad response from actor: ") && resp.text().contains(why),
            "{path}: {}",
            resp.text()
        );
        assert_eq!(get(port, "/status/200").await.status, 200, "after {path}");
    }
    let resp = get(port, "/just-enough-names").await;
    assert_eq!((resp.status, resp.headers.len() >= 20_000), (200, true));
    let resp = get(port, "/many-values").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.headers.iter().filter(|(k, _)| k == "x-a").count(),
        40_000
    );
    let resp = get(port, "/long-value").await;
    assert_eq!(resp.header("x-big").map(str::len), Some(1 << 20));
    assert_eq!(get(port, "/status/999").await.status, 999);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_two_requests_on_one_connection() {
    let port = free_port();
    let host = start("", vec![address_link(ACTOR, port)], echo()).await;
    let mut client = Client::connect(port).await;
    client
        .send(b"GET /first HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    let first = client.response().await;
    assert_eq!((first.status, first.text()), (200, "/first"));
    client
        .send(b"GET /second?x=1 HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    let second = client.response().await;
    assert_eq!((second.status, second.text()), (200, "/second?x=1"));
    assert_eq!(calls(&host).len(), 2);
    host.shutdown().await;
}

/// Reads until the server closes the connection; how long that took.
async fn closed_after(client: &mut Client, started: std::time::Instant) -> std::time::Duration {
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, client.stream.read_to_end(&mut rest))
        .await
        .expect("the server closed the connection in time")
        .ok();
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_request_head_in_time_is_closed() {
    let port = free_port();
    let limit = std::time::Duration::from_millis(1000);
    let host = start(
        r#"{"header_read_timeout_ms": 1000}"#,
        vec![address_link(ACTOR, port)],
        echo(),
    )
    .await;

    // Headers that never end.
    let mut slow = Client::connect(port).await;
    let started = std::time::Instant::now();
    slow.send(b"GET /slow HTTP/1.1\r\nHost: test\r\n").await;
    let waited = closed_after(&mut slow, started).await;
    assert!(waited >= limit, "closed after {waited:?}, before the limit");

    // An idle keep-alive connection: the wait starts after the response.
    let mut idle = Client::connect(port).await;
    idle.send(b"GET /once HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(idle.response().await.text(), "/once");
    let answered = std::time::Instant::now();
    let waited = closed_after(&mut idle, answered).await;
    assert!(
        waited >= limit * 9 / 10,
        "closed after {waited:?}, before the limit"
    );

    // A client that keeps sending requests in time is served throughout.
    let mut busy = Client::connect(port).await;
    for i in 0..6 {
        tokio::time::sleep(limit / 5).await;
        busy.send(format!("GET /{i} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await;
        assert_eq!(busy.response().await.text(), format!("/{i}"));
    }
    assert!(calls(&host).iter().all(|(_, r)| r.path != "/slow"));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_requests_are_in_flight_at_once() {
    const N: usize = 64;
    let port = free_port();
    // No answer goes out until all 64 calls have reached the actor: the
    // provider must have them all in flight at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let host = start(
        "",
        vec![address_link(ACTOR, port)],
        handler(move |_, request| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                reply(200, &[("x-path", &request.path)], request.path.as_bytes())
            }
        }),
    )
    .await;
    let clients: Vec<_> = (0..N)
        .map(|i| tokio::spawn(async move { (i, get(port, &format!("/req/{i}")).await) }))
        .collect();
    for client in clients {
        let (i, resp) = client.await.unwrap();
        let path = format!("/req/{i}");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), path);
        assert_eq!(resp.header("x-path"), Some(path.as_str()));
    }
    assert_eq!(calls(&host).len(), N);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_link_closes_the_listener_and_finishes_requests_in_flight() {
    let port = free_port();
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let host = start(
        "",
        vec![address_link(ACTOR, port)],
        handler(move |_, request| {
            let gate = gate.clone();
            async move {
                if request.path == "/slow" {
                    gate.notified().await;
                }
                reply(200, &[], request.path.as_bytes())
            }
        }),
    )
    .await;
    assert_eq!(get(port, "/quick").await.text(), "/quick");

    // A request in flight when the link goes.
    let mut slow = Client::connect(port).await;
    slow.send(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n").await;
    wait_for(|| calls(&host).iter().any(|(_, r)| r.path == "/slow")).await;

    host.send(link_del(&link(ACTOR, &[]))).await;
    // The port closes...
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ if tokio::time::Instant::now() > deadline => panic!("port {port} still open"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(host.provider.bound_address(ACTOR, "default").is_none());
    // ...and the request in flight still gets its answer.
    release.notify_one();
    let resp = slow.response().await;
    assert_eq!((resp.status, resp.text()), (200, "/slow"));

    // Linking again listens again.
    host.send(ToProvider::LinkPut(address_link(ACTOR, port)))
        .await;
    wait_for(|| host.provider.bound_address(ACTOR, "default").is_some()).await;
    assert_eq!(get(port, "/again").await.text(), "/again");
    host.shutdown().await;
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_link_values_move_the_listener() {
    let (first, second) = (free_port(), free_port());
    let host = start("", vec![address_link(ACTOR, first)], echo()).await;
    assert_eq!(get(first, "/a").await.text(), "/a");
    host.send(ToProvider::LinkPut(address_link(ACTOR, second)))
        .await;
    wait_for(|| {
        host.provider
            .bound_address(ACTOR, "default")
            .is_some_and(|a| a.port() == second)
    })
    .await;
    assert_eq!(get(second, "/b").await.text(), "/b");
    assert!(TcpStream::connect(("127.0.0.1", first)).await.is_err());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_listeners_that_failed() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let good = free_port();
    let mut host = start(
        "",
        vec![
            address_link("Mgood", good),
            address_link("Mclash", taken_port),
            link("Mnowhere", &[("something", "else")]),
        ],
        echo(),
    )
    .await;
    // The good link serves regardless.
    assert_eq!(get(good, "/fine").await.text(), "/fine");
    let (healthy, message) = host.health(1).await;
    assert!(!healthy);
    assert!(
        message.contains(&format!("127.0.0.1:{taken_port}")),
        "{message}"
    );
    assert!(
        message.contains("Mclash") && message.contains("Mnowhere"),
        "{message}"
    );
    assert!(!message.contains("Mgood"), "{message}");

    for actor in ["Mclash", "Mnowhere"] {
        host.send(link_del(&link(actor, &[]))).await;
    }
    // Link changes apply in order on their own task; poll until they have.
    let mut id = 2;
    loop {
        let (healthy, message) = host.health(id).await;
        if healthy {
            break;
        }
        assert!(id < 200, "still unhealthy: {message}");
        id += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(taken);
    host.shutdown().await;
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A config the provider cannot honour fails its init with a reason, before
/// any listener opens: a misspelt field, or a header timeout of zero.
#[tokio::test]
async fn a_bad_config_fails_init_with_its_reason() {
    for (config_json, reason) in [
        (
            r#"{"header_read_timout_ms": 1000}"#,
            "header_read_timout_ms",
        ),
        (r#"{"header_read_timeout_ms": 0}"#, "at least 1"),
    ] {
        let mut p =
            in_memory(Arc::new(HttpServerProvider::new()), bootstrap(config_json)).with_step(STEP);
        p.send(ToProvider::Init { links: vec![] }).await;
        let err = p.finish().await.unwrap_err();
        assert!(err.to_string().contains(reason), "{config_json}: {err}");
    }
}
