//! The `wasmcloud:httpserver` capability provider, as a library (the
//! `httpserver-provider` binary is a thin `main` around [`HttpServerProvider`]).
//!
//! Every link naming this provider gets its own HTTP/1.1 listener, on the
//! link value `address` (for example `127.0.0.1:8080`) or, failing that,
//! `port` (bound on `0.0.0.0`, as wasmCloud does). Each request becomes one
//! `HttpServer.HandleRequest` call to the linked actor through the host, with
//! an [`HttpRequest`] as MessagePack; the actor's [`HttpResponse`] becomes the
//! HTTP response.
//!
//! Errors map to statuses: an actor error is a 500 with the reason as a text
//! body, a host deadline a 504, an actor that is not running a 503, a reply
//! that does not decode a 500 `bad response from actor: ...`, a body over
//! the limit a 413 (link value `max_body_bytes`, else the provider config's
//! `max_body_bytes`, else 1 MiB), and malformed HTTP hyper's own 400.
//!
//! A connection must deliver each request's head within the provider
//! config's `header_read_timeout_ms` (default 30 s) of its start or of the
//! previous response, or hyper closes it: slow-header clients and idle
//! keep-alive connections cannot hold a connection forever.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{
    GetAll, HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE,
    TRANSFER_ENCODING,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use shim::{ErrorKind, Health, HostHandle, Link, Provider, ProviderError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// The contract this provider implements.
pub const CONTRACT_ID: &str = "wasmcloud:httpserver";

/// The operation called on the linked actor for every request.
pub const HANDLE_REQUEST: &str = "HttpServer.HandleRequest";

/// The request body limit when neither the link nor the config sets one.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The most header names a response can have: what hyper's `HeaderMap`
/// holds (three quarters of its 32,768 slots).
pub const MAX_HEADER_NAMES: usize = 24 * 1024;

/// How deeply an actor's reply may nest (arrays and maps in one another).
const MAX_REPLY_DEPTH: usize = 32;

/// How long a stopped listener lets requests already in flight finish.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// A client must send a request's head within this long of connecting or
/// of the previous response, unless the config sets `header_read_timeout_ms`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long, and how many bytes, a closing connection keeps reading what
/// the client still sends (see `linger_and_close`).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Pause after a failed `accept` (for example out of file descriptors), so
/// the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The request an actor receives, as in wasmCloud's `wasmcloud:httpserver`
/// interface.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRequest {
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub path: String,
    #[serde(rename = "queryString", default)]
    pub query_string: String,
    /// Header names (lower case) to their values, in arrival order.
    #[serde(default)]
    pub header: HashMap<String, Vec<String>>,
    #[serde(with = "serde_bytes", default)]
    pub body: Vec<u8>,
}

/// The response an actor returns.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpResponse {
    #[serde(rename = "statusCode", default)]
    pub status_code: u16,
    #[serde(default)]
    pub header: HashMap<String, Vec<String>>,
    #[serde(with = "serde_bytes", default)]
    pub body: Vec<u8>,
}

/// The provider's configuration JSON (every field optional; an unknown one,
/// such as a misspelt name, is an error rather than silently ignored).
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The request body limit for links that do not set `max_body_bytes`.
    pub max_body_bytes: Option<usize>,
    /// How long a connection may take to deliver a request head (default
    /// 30 s).
    pub header_read_timeout_ms: Option<u64>,
}

// ---------------------------------------------------------------------------
// Encoding the request, decoding the response.

/// [`HttpRequest`] borrowed from hyper's request parts, so the MessagePack is
/// written once, straight from the request.
#[derive(Serialize)]
struct RequestRef<'a> {
    method: &'a str,
    path: &'a str,
    #[serde(rename = "queryString")]
    query_string: &'a str,
    header: HeadersRef<'a>,
    body: &'a serde_bytes::Bytes,
}

struct HeadersRef<'a>(&'a HeaderMap);

impl Serialize for HeadersRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.keys_len()))?;
        for name in self.0.keys() {
            map.serialize_entry(name.as_str(), &ValuesRef(self.0.get_all(name)))?;
        }
        map.end()
    }
}

struct ValuesRef<'a>(GetAll<'a, HeaderValue>);

impl Serialize for ValuesRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0.iter().count()))?;
        for value in self.0.iter() {
            // Header values are almost always ASCII; anything else is passed
            // on lossily rather than refused.
            seq.serialize_element(&String::from_utf8_lossy(value.as_bytes()))?;
        }
        seq.end()
    }
}

/// Encodes the `HttpServer.HandleRequest` payload (an [`HttpRequest`] as
/// named MessagePack) for a request, in one buffer.
pub fn encode_request(
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    let request = RequestRef {
        method,
        path: uri.path(),
        query_string: uri.query().unwrap_or(""),
        header: HeadersRef(headers),
        body: serde_bytes::Bytes::new(body),
    };
    let header_len: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 8)
        .sum();
    let mut buf = Vec::with_capacity(body.len() + header_len + uri.path().len() + 64);
    rmp_serde::encode::write_named(&mut buf, &request).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// [`HttpResponse`] borrowing from the actor's reply.
#[derive(Deserialize)]
struct ResponseRef<'a> {
    #[serde(rename = "statusCode", default)]
    status_code: u16,
    #[serde(borrow, default)]
    header: HashMap<&'a str, Vec<&'a str>>,
    #[serde(borrow, default)]
    body: BodyRef<'a>,
}

/// A response body: borrowed from the reply when it is MessagePack `bin` (or
/// `str`), owned when an encoder wrote it as an array of numbers.
#[derive(Default)]
enum BodyRef<'a> {
    #[default]
    Empty,
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl<'de: 'a, 'a> Deserialize<'de> for BodyRef<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for BodyVisitor<'a> {
            type Value = BodyRef<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte array")
            }

            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(BodyRef::Borrowed(v))
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(BodyRef::Owned(v.to_vec()))
            }

            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(BodyRef::Owned(v))
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BodyRef::Borrowed(v.as_bytes()))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BodyRef::Owned(v.as_bytes().to_vec()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(BodyRef::Owned(v.into_bytes()))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(BodyRef::Empty)
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(BodyRef::Empty)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
                while let Some(byte) = seq.next_element::<u8>()? {
                    out.push(byte);
                }
                Ok(BodyRef::Owned(out))
            }
        }

        deserializer.deserialize_bytes(BodyVisitor(std::marker::PhantomData))
    }
}

/// Turns the actor's reply (an [`HttpResponse`] as MessagePack) into the HTTP
/// response; the body is a slice of the reply, not a copy. The error says why
/// the reply is not a usable response.
pub fn decode_response(reply: Vec<u8>) -> Result<Response<Full<Bytes>>, String> {
    let reply = Bytes::from(reply);
    let decoded: ResponseRef<'_> = {
        let mut deserializer = rmp_serde::Deserializer::from_read_ref(&reply);
        // A reply nests three levels; an actor's deeply nested one must be
        // an error, not a stack overflow of the provider.
        deserializer.set_max_depth(MAX_REPLY_DEPTH);
        ResponseRef::deserialize(&mut deserializer).map_err(|e| e.to_string())?
    };
    let status = StatusCode::from_u16(decoded.status_code)
        .map_err(|_| format!("invalid status code {}", decoded.status_code))?;
    // hyper answers a 1xx itself with a 500 and closes the connection, and
    // takes a 101 for an upgrade no one will serve: neither is a response.
    if status.is_informational() {
        return Err(format!(
            "status code {} is not a final response",
            decoded.status_code
        ));
    }
    let body = match decoded.body {
        BodyRef::Empty => Bytes::new(),
        BodyRef::Borrowed([]) => Bytes::new(),
        BodyRef::Borrowed(b) => reply.slice_ref(b),
        BodyRef::Owned(v) => Bytes::from(v),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    // hyper's header map holds so many names and panics past that
    // (`reserve`, `append`): an actor's reply must be an error instead.
    let names = decoded.header.len();
    let too_many = || {
        format!(
            "the response has {names} header names, more than an HTTP response may carry ({MAX_HEADER_NAMES})"
        )
    };
    if names > MAX_HEADER_NAMES {
        return Err(too_many());
    }
    headers.try_reserve(names).map_err(|_| too_many())?;
    for (name, values) in decoded.header {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            format!(
                "invalid header name {:?}",
                name.chars().take(64).collect::<String>()
            )
        })?;
        // The body's framing is hyper's business: a stale length from the
        // actor would corrupt the connection.
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        for value in values {
            let value = HeaderValue::from_str(value).map_err(|_| {
                format!(
                    "invalid value {:?} for header {name}",
                    value.chars().take(64).collect::<String>()
                )
            })?;
            headers
                .try_append(name.clone(), value)
                .map_err(|_| too_many())?;
        }
    }
    Ok(response)
}

/// The status for a failed `call_actor`, by the error's kind (never its
/// text): a deadline is a 504, an actor that is not running (or a host that
/// is gone, or an actor with too many calls waiting) a 503, a call the
/// actor's claims refuse a 403, an oversized message a 413, and the actor's
/// or provider's own failure a 500.
pub fn status_for_call_error(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Denied => StatusCode::FORBIDDEN,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unavailable | ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::ActorFault | ErrorKind::ProviderFault | ErrorKind::Internal => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

fn text_response(status: StatusCode, text: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(text.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn too_large(limit: usize) -> Response<Full<Bytes>> {
    let mut response = text_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body exceeds {limit} bytes"),
    );
    // The rest of the body is never read: the connection cannot be reused.
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

// ---------------------------------------------------------------------------
// Link values.

fn link_value<'a>(values: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    values
        .get(key)
        .or_else(|| {
            values
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

/// The address a link's listener binds: its `address` value, else
/// `0.0.0.0:{port}`.
pub fn listen_address(values: &BTreeMap<String, String>) -> Result<String, String> {
    if let Some(address) = link_value(values, "address") {
        return Ok(address.to_owned());
    }
    match link_value(values, "port") {
        Some(port) => port
            .parse::<u16>()
            .map(|port| format!("0.0.0.0:{port}"))
            .map_err(|_| format!("invalid port {port:?}")),
        None => Err("the link has no `address` or `port` value".to_owned()),
    }
}

/// The body limit for a link: its `max_body_bytes` value, else `default`.
pub fn max_body_bytes(values: &BTreeMap<String, String>, default: usize) -> Result<usize, String> {
    match link_value(values, "max_body_bytes") {
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| format!("invalid max_body_bytes {v:?}")),
        None => Ok(default),
    }
}

// ---------------------------------------------------------------------------
// Serving.

/// What every connection of one listener shares.
struct Route {
    actor_id: String,
    host: HostHandle,
    max_body: usize,
    http: http1::Builder,
}

impl Route {
    async fn respond(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        // Refuse a declared oversized body before reading any of it.
        if request.body().size_hint().lower() > self.max_body as u64 {
            return too_large(self.max_body);
        }
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, self.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => return too_large(self.max_body),
            Err(e) => {
                tracing::debug!("cannot read a request body: {e}");
                return text_response(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                );
            }
        };
        let payload = match encode_request(parts.method.as_str(), &parts.uri, &parts.headers, &body)
        {
            Ok(payload) => payload,
            Err(e) => {
                return text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot encode the request: {e}"),
                )
            }
        };
        drop((parts, body));
        match self
            .host
            .call_actor(&self.actor_id, HANDLE_REQUEST, payload)
            .await
        {
            Ok(reply) => decode_response(reply).unwrap_or_else(|e| {
                tracing::warn!(actor = %self.actor_id, "bad response from actor: {e}");
                text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("bad response from actor: {e}"),
                )
            }),
            Err(e) => {
                let status = status_for_call_error(e.kind());
                tracing::debug!(actor = %self.actor_id, %status, "actor call failed: {e}");
                text_response(status, e.into_message())
            }
        }
    }
}

async fn handle(
    route: Arc<Route>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(route.respond(request).await)
}

async fn serve_connection(stream: TcpStream, route: Arc<Route>, mut stop: watch::Receiver<bool>) {
    let service_route = route.clone();
    // Boxed so the service future is `Unpin`, which `poll_without_shutdown` needs.
    let service = service_fn(move |request| Box::pin(handle(service_route.clone(), request)));
    let mut conn = route.http.serve_connection(TokioIo::new(stream), service);
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            result = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break result,
            _ = stop.changed(), if !stopping => {
                // Finish the request in progress, then close.
                stopping = true;
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };
    match result {
        // A stopping listener closes at once; its clients were told by
        // `Connection: close` or see the close between requests.
        Ok(()) if !stopping => linger_and_close(conn.into_parts().io.into_inner()).await,
        Ok(()) => {}
        Err(e) => tracing::debug!("connection ended: {e}"),
    }
}

/// Closes a connection the way a client can rely on. When the server ends a
/// connection while the client is still sending (a 413 for a declared
/// oversized body), closing at once would make the kernel answer the unread
/// bytes with a reset, and the client could lose the response. So the write
/// side is shut first and what the client still sends is read and dropped,
/// within a time and byte bound, as nginx's lingering close does.
async fn linger_and_close(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 16 * 1024];
        let mut drained = 0usize;
        while drained < LINGER_MAX_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

async fn accept_loop(
    listener: TcpListener,
    route: Arc<Route>,
    mut stop: watch::Receiver<bool>,
    closed: oneshot::Sender<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, route.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(actor = %route.actor_id, "accept failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            // A stop, or the listener's owner is gone.
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let _ = closed.send(());
    let drained = tokio::time::timeout(DRAIN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            actor = %route.actor_id,
            "closing {} connection(s) still busy after {DRAIN_GRACE:?}",
            connections.len()
        );
    }
    // Dropping the set aborts whatever is left.
}

/// A bound listener and the task serving it.
struct Listener {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    closed: oneshot::Receiver<()>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Stops accepting (the port is closed when this returns) and hands back
    /// the task that lets in-flight requests finish.
    async fn stop(self) -> JoinHandle<()> {
        let _ = self.stop.send(true);
        // An error means the task is already gone, listener and all.
        let _ = self.closed.await;
        self.task
    }
}

enum LinkState {
    Serving {
        address: String,
        listener: Listener,
    },
    Failed {
        address: Option<String>,
        error: String,
    },
}

/// (actor id, link name): one listener each.
type LinkKey = (String, String);

/// The `wasmcloud:httpserver` provider. Hand it to `shim::run`.
#[derive(Default)]
pub struct HttpServerProvider {
    host: OnceLock<HostHandle>,
    config: OnceLock<Config>,
    links: Mutex<HashMap<LinkKey, LinkState>>,
    /// Listeners stopped by a link removal, still finishing their requests.
    draining: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for HttpServerProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServerProvider")
            .field("links", &self.links().len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation: the data stays
    // consistent even if a holder panicked.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl HttpServerProvider {
    pub fn new() -> Self {
        Self::default()
    }

    fn links(&self) -> MutexGuard<'_, HashMap<LinkKey, LinkState>> {
        lock(&self.links)
    }

    /// The address the listener for (actor, link name) is bound to, if it is.
    pub fn bound_address(&self, actor_id: &str, link_name: &str) -> Option<SocketAddr> {
        match self
            .links()
            .get(&(actor_id.to_owned(), link_name.to_owned()))
        {
            Some(LinkState::Serving { listener, .. }) => Some(listener.local_addr),
            _ => None,
        }
    }

    fn default_max_body(&self) -> usize {
        self.config
            .get()
            .and_then(|c| c.max_body_bytes)
            .unwrap_or(DEFAULT_MAX_BODY_BYTES)
    }

    async fn start_listener(&self, link: &Link) -> Result<(String, Listener), LinkState> {
        let fail = |address: Option<&str>, error: String| LinkState::Failed {
            address: address.map(str::to_owned),
            error,
        };
        let address = listen_address(&link.values).map_err(|e| fail(None, e))?;
        let max_body = max_body_bytes(&link.values, self.default_max_body())
            .map_err(|e| fail(Some(&address), e))?;
        let host = self
            .host
            .get()
            .cloned()
            .ok_or_else(|| fail(Some(&address), "the provider is not initialised".into()))?;
        let listener = TcpListener::bind(address.as_str())
            .await
            .map_err(|e| fail(Some(&address), format!("cannot bind: {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| fail(Some(&address), format!("cannot bind: {e}")))?;
        let header_read_timeout = self
            .config
            .get()
            .and_then(|c| c.header_read_timeout_ms)
            .map_or(HEADER_READ_TIMEOUT, Duration::from_millis);
        let mut http = http1::Builder::new();
        http.keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        let route = Arc::new(Route {
            actor_id: link.actor_id.clone(),
            host,
            max_body,
            http,
        });
        let (stop, stop_rx) = watch::channel(false);
        let (closed_tx, closed) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, route, stop_rx, closed_tx));
        Ok((
            address,
            Listener {
                local_addr,
                stop,
                closed,
                task,
            },
        ))
    }

    /// Stops the listener of `key` if it has one; its port is closed when
    /// this returns, its requests in flight finish in the background.
    async fn stop_link(&self, key: &LinkKey) {
        let removed = self.links().remove(key);
        if let Some(LinkState::Serving { address, listener }) = removed {
            let drain = listener.stop().await;
            tracing::info!(actor = %key.0, link_name = %key.1, "stopped listening on {address}");
            let mut draining = lock(&self.draining);
            draining.retain(|task| !task.is_finished());
            draining.push(drain);
        }
    }
}

impl Provider for HttpServerProvider {
    async fn init(&self, host: &HostHandle) -> Result<(), ProviderError> {
        let config: Config = host.config()?;
        if config.header_read_timeout_ms == Some(0) {
            // hyper would close every connection before its first request.
            return Err(ProviderError::new(
                "invalid config: header_read_timeout_ms must be at least 1",
            ));
        }
        let _ = self.config.set(config);
        let _ = self.host.set(host.clone());
        Ok(())
    }

    async fn link_added(&self, link: Link) -> Result<(), ProviderError> {
        let key = (link.actor_id.clone(), link.link_name.clone());
        // A link whose values changed gets a new listener; the old one goes
        // first so the same address can be bound again.
        self.stop_link(&key).await;
        match self.start_listener(&link).await {
            Ok((address, listener)) => {
                tracing::info!(
                    actor = %link.actor_id,
                    link_name = %link.link_name,
                    "listening on {address} ({})",
                    listener.local_addr
                );
                self.links()
                    .insert(key, LinkState::Serving { address, listener });
                Ok(())
            }
            Err(failed) => {
                let message = match &failed {
                    LinkState::Failed {
                        address: Some(address),
                        error,
                    } => format!("http listener on {address}: {error}"),
                    LinkState::Failed { error, .. } => format!("http listener: {error}"),
                    LinkState::Serving { .. } => String::new(),
                };
                tracing::error!(
                    actor = %link.actor_id,
                    link_name = %link.link_name,
                    "{message}"
                );
                self.links().insert(key, failed);
                Err(ProviderError::new(message))
            }
        }
    }

    async fn link_removed(&self, actor_id: &str, _contract_id: &str, link_name: &str) {
        self.stop_link(&(actor_id.to_owned(), link_name.to_owned()))
            .await;
    }

    async fn invoke(
        &self,
        _actor_id: &str,
        operation: &str,
        _payload: Vec<u8>,
    ) -> Result<Vec<u8>, ProviderError> {
        Err(ProviderError::new(format!(
            "{CONTRACT_ID} has no operations for actors to call (got {operation})"
        )))
    }

    async fn health(&self) -> Health {
        let mut failures: Vec<String> = self
            .links()
            .iter()
            .filter_map(|((actor, _), state)| match state {
                LinkState::Serving { .. } => None,
                LinkState::Failed {
                    address: Some(address),
                    error,
                } => Some(format!("actor {actor}: {address}: {error}")),
                LinkState::Failed {
                    address: None,
                    error,
                } => Some(format!("actor {actor}: {error}")),
            })
            .collect();
        if failures.is_empty() {
            Health::ok()
        } else {
            failures.sort();
            Health::unhealthy(failures.join("; "))
        }
    }

    async fn shutdown(&self) {
        let states: Vec<LinkState> = self.links().drain().map(|(_, state)| state).collect();
        let mut tasks = std::mem::take(&mut *lock(&self.draining));
        for state in states {
            if let LinkState::Serving { listener, .. } = state {
                tasks.push(listener.stop().await);
            }
        }
        // Each task bounds its own drain; this bound is a backstop.
        let _ = tokio::time::timeout(DRAIN_GRACE + Duration::from_secs(1), async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_borrowed_request_encodes_as_the_owned_type() {
        let uri: Uri = "/a/b?x=1&y=2".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-multi", HeaderValue::from_static("one"));
        headers.append("x-multi", HeaderValue::from_static("two"));
        headers.append("host", HeaderValue::from_static("example"));
        let bytes = encode_request("PUT", &uri, &headers, b"payload").unwrap();
        let decoded: HttpRequest = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(decoded.method, "PUT");
        assert_eq!(decoded.path, "/a/b");
        assert_eq!(decoded.query_string, "x=1&y=2");
        assert_eq!(decoded.header["x-multi"], ["one", "two"]);
        assert_eq!(decoded.header["host"], ["example"]);
        assert_eq!(decoded.body, b"payload");
        // Field names as the contract spells them.
        let value = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
        let keys: Vec<String> = value
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(keys, ["method", "path", "queryString", "header", "body"]);
        assert!(matches!(value["body"], rmpv::Value::Binary(_)));
    }

    #[test]
    fn responses_decode_with_the_body_borrowed_or_as_an_array() {
        let reply = rmp_serde::to_vec_named(&HttpResponse {
            status_code: 201,
            header: HashMap::from([
                ("x-a".into(), vec!["1".into(), "2".into()]),
                ("content-length".into(), vec!["999".into()]),
            ]),
            body: b"made".to_vec(),
        })
        .unwrap();
        let response = decode_response(reply).unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let values: Vec<_> = response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert!(response.headers().get(CONTENT_LENGTH).is_none());

        // A body written as an array of numbers, no header map.
        #[derive(Serialize)]
        struct Loose {
            #[serde(rename = "statusCode")]
            status_code: u16,
            body: Vec<u8>,
        }
        let reply = rmp_serde::to_vec_named(&Loose {
            status_code: 404,
            body: b"nope".to_vec(),
        })
        .unwrap();
        let response = decode_response(reply).unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn undecodable_responses_are_errors() {
        assert!(decode_response(vec![0xc1]).is_err());
        assert!(decode_response(rmp_serde::to_vec("text").unwrap()).is_err());
        let zero = rmp_serde::to_vec_named(&HttpResponse::default()).unwrap();
        assert!(decode_response(zero).unwrap_err().contains("status code 0"));
        let bad_header = rmp_serde::to_vec_named(&HttpResponse {
            status_code: 200,
            header: HashMap::from([("bad name".into(), vec!["v".into()])]),
            body: vec![],
        })
        .unwrap();
        assert!(decode_response(bad_header).is_err());
    }

    /// Replies hyper would panic on, or answer with its own 500 and a
    /// closed connection, are errors of `decode_response` (a 500 "bad
    /// response from actor" to the client).
    #[test]
    fn replies_hyper_cannot_send_are_errors() {
        let encode = |status: u16, header: HashMap<String, Vec<String>>| {
            rmp_serde::to_vec_named(&HttpResponse {
                status_code: status,
                header,
                body: vec![],
            })
            .unwrap()
        };
        let names = |n: usize| -> HashMap<String, Vec<String>> {
            (0..n)
                .map(|i| (format!("x-{i}"), vec!["v".into()]))
                .collect()
        };
        // hyper's map panicked past this many names (`reserve`, `append`).
        let err = decode_response(encode(200, names(MAX_HEADER_NAMES + 1))).unwrap_err();
        assert!(err.contains("header names"), "{err}");
        assert!(decode_response(encode(200, names(40_000))).is_err());
        assert_eq!(
            decode_response(encode(200, names(20_000)))
                .unwrap()
                .headers()
                .len(),
            20_000
        );
        for status in [100, 101, 103, 199] {
            let err = decode_response(encode(status, HashMap::new())).unwrap_err();
            assert!(err.contains("not a final response"), "{status}: {err}");
        }
        for status in [0, 99, 1000, u16::MAX] {
            assert!(decode_response(encode(status, HashMap::new())).is_err());
        }
        assert_eq!(
            decode_response(encode(999, HashMap::new()))
                .unwrap()
                .status(),
            999
        );
        let long_name = HashMap::from([("x".repeat(70_000), vec!["v".into()])]);
        let err = decode_response(encode(200, long_name)).unwrap_err();
        assert!(
            err.contains("invalid header name") && err.len() < 200,
            "{err}"
        );
    }

    /// Found by the fuzzer: a reply of nested arrays overflowed the stack
    /// of the task decoding it (an abort of the provider).
    #[test]
    fn a_deeply_nested_reply_is_an_error() {
        // {"x": [[[...]]]}: an ignored field.
        let mut reply = vec![0x81, 0xa1, b'x'];
        reply.extend(std::iter::repeat_n(0x91, 100_000));
        reply.push(0xc0);
        let err = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || decode_response(reply).unwrap_err())
            .unwrap()
            .join()
            .unwrap();
        assert!(err.contains("depth limit"), "{err}");
    }

    #[test]
    fn call_errors_map_to_statuses() {
        for kind in ErrorKind::ALL {
            let status = match kind {
                ErrorKind::NotFound => 404,
                ErrorKind::Denied => 403,
                ErrorKind::Timeout => 504,
                ErrorKind::TooLarge => 413,
                ErrorKind::Unavailable | ErrorKind::Busy => 503,
                ErrorKind::ActorFault | ErrorKind::ProviderFault | ErrorKind::Internal => 500,
            };
            assert_eq!(status_for_call_error(kind).as_u16(), status, "{kind}");
        }
    }

    #[test]
    fn link_values_pick_the_address() {
        let values = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            listen_address(&values(&[("address", "127.0.0.1:8080"), ("port", "9")])).unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            listen_address(&values(&[("PORT", "8081")])).unwrap(),
            "0.0.0.0:8081"
        );
        assert!(listen_address(&values(&[("port", "x")])).is_err());
        assert!(listen_address(&values(&[])).is_err());
        assert_eq!(max_body_bytes(&values(&[]), 7).unwrap(), 7);
        assert_eq!(
            max_body_bytes(&values(&[("max_body_bytes", "10")]), 7).unwrap(),
            10
        );
        assert!(max_body_bytes(&values(&[("max_body_bytes", "-1")]), 7).is_err());
    }
}
