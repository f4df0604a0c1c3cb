//! Drives `actor_runtime::run` in memory, the test playing `host-core`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actor_runtime::{run, RuntimeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use wire::provider::{FromProvider, ToProvider};
use wire::worker::{
    ActorSpec, CallId, FromWorker, LogLevel, ToWorker, WorkerConfig, WorkerRequest,
};
use wire::{Bytes, ErrorKind, FrameReader, FrameWriter};

const TIMEOUT_MS: u64 = 300;
const MAX_MEMORY: u64 = 16 * 1024 * 1024;
/// Generous bound for anything that should be quick, so a loaded machine
/// does not make tests flaky.
const SOON: Duration = Duration::from_secs(10);

const IMPORTS: &str = r#"
  (import "wasmbus" "__guest_request" (func $guest_request (param i32 i32)))
  (import "wasmbus" "__guest_response" (func $guest_response (param i32 i32)))
  (import "wasmbus" "__guest_error" (func $guest_error (param i32 i32)))
  (import "wasmbus" "__host_call" (func $host_call (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasmbus" "__host_response_len" (func $host_response_len (result i32)))
  (import "wasmbus" "__host_response" (func $host_response (param i32)))
  (import "wasmbus" "__host_error_len" (func $host_error_len (result i32)))
  (import "wasmbus" "__host_error" (func $host_error (param i32)))
  (import "wasmbus" "__console_log" (func $console_log (param i32 i32)))
"#;

/// A wasmbus actor whose behaviour is picked by the first letter of the
/// operation. The message is read to 4096; host answers land at 131072.
fn multi_actor() -> Vec<u8> {
    let body = r#"
  (memory (export "memory") 4)
  (global $n (mut i32) (i32.const 0))
  (data (i32.const 256) "default")
  (data (i32.const 272) "wasmcloud:builtin:numbergen")
  (data (i32.const 304) "NumberGen.GenerateGuid")
  (data (i32.const 336) "NumberGen.RandomInRange")
  (data (i32.const 368) "wasmcloud:keyvalue")
  (data (i32.const 400) "KeyValue.Get")
  (data (i32.const 416) "wasmcloud:builtin:logging")
  (data (i32.const 448) "Logging.WriteLog")
  (data (i32.const 480) "guest says no")

  ;; Calls out; the answer (or error) becomes this invocation's answer.
  (func $call (param $ns i32) (param $ns_len i32) (param $op i32) (param $op_len i32)
              (param $pl i32) (param $pl_len i32) (result i32)
    (if (result i32)
      (call $host_call (i32.const 256) (i32.const 7) (local.get $ns) (local.get $ns_len)
                       (local.get $op) (local.get $op_len) (local.get $pl) (local.get $pl_len))
      (then
        (call $host_response (i32.const 131072))
        (call $guest_response (i32.const 131072) (call $host_response_len))
        (i32.const 1))
      (else
        (call $host_error (i32.const 131072))
        (call $guest_error (i32.const 131072) (call $host_error_len))
        (i32.const 0))))

  (func (export "__guest_call") (param $op_len i32) (param $msg_len i32) (result i32)
    (local $c i32)
    (call $guest_request (i32.const 0) (i32.const 4096))
    (local.set $c (i32.load8_u (i32.const 0)))
    ;; e: echo
    (if (i32.eq (local.get $c) (i32.const 101)) (then
      (call $guest_response (i32.const 4096) (local.get $msg_len))
      (return (i32.const 1))))
    ;; t: trap
    (if (i32.eq (local.get $c) (i32.const 116)) (then unreachable))
    ;; l: loop forever
    (if (i32.eq (local.get $c) (i32.const 108)) (then (loop $l (br $l))))
    ;; m: grow memory until refused, then abort like an allocator would
    (if (i32.eq (local.get $c) (i32.const 109)) (then
      (loop $g (br_if $g (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
      unreachable))
    ;; g: the guest returns an error
    (if (i32.eq (local.get $c) (i32.const 103)) (then
      (call $guest_error (i32.const 480) (i32.const 13))
      (return (i32.const 0))))
    ;; i: count calls served by this instance
    (if (i32.eq (local.get $c) (i32.const 105)) (then
      (global.set $n (i32.add (global.get $n) (i32.const 1)))
      (i32.store8 (i32.const 200000) (global.get $n))
      (call $guest_response (i32.const 200000) (i32.const 1))
      (return (i32.const 1))))
    ;; n: numbergen GenerateGuid
    (if (i32.eq (local.get $c) (i32.const 110)) (then
      (return (call $call (i32.const 272) (i32.const 27) (i32.const 304) (i32.const 22)
                          (i32.const 4096) (i32.const 0)))))
    ;; r: numbergen RandomInRange(message)
    (if (i32.eq (local.get $c) (i32.const 114)) (then
      (return (call $call (i32.const 272) (i32.const 27) (i32.const 336) (i32.const 23)
                          (i32.const 4096) (local.get $msg_len)))))
    ;; k: keyvalue Get(message), forwarded to the host
    (if (i32.eq (local.get $c) (i32.const 107)) (then
      (return (call $call (i32.const 368) (i32.const 18) (i32.const 400) (i32.const 12)
                          (i32.const 4096) (local.get $msg_len)))))
    ;; L: logging WriteLog(message)
    (if (i32.eq (local.get $c) (i32.const 76)) (then
      (return (call $call (i32.const 416) (i32.const 25) (i32.const 448) (i32.const 16)
                          (i32.const 4096) (local.get $msg_len)))))
    ;; c: console log
    (if (i32.eq (local.get $c) (i32.const 99)) (then
      (call $console_log (i32.const 4096) (local.get $msg_len))
      (return (i32.const 1))))
    unreachable)
"#;
    wat::parse_str(format!("(module {IMPORTS} {body})")).expect("valid wat")
}

/// Answers with a two-letter version tag; operation `k` first makes a
/// forwarded host call, so a test can hold a call in flight.
fn versioned_actor(tag: &str) -> Vec<u8> {
    assert_eq!(tag.len(), 2);
    wat::parse_str(format!(
        r#"(module {IMPORTS}
  (memory (export "memory") 1)
  (data (i32.const 256) "default")
  (data (i32.const 272) "wasmcloud:keyvalue")
  (data (i32.const 304) "KeyValue.Get")
  (data (i32.const 512) "{tag}")
  (func (export "__guest_call") (param i32 i32) (result i32)
    (call $guest_request (i32.const 0) (i32.const 1024))
    (if (i32.eq (i32.load8_u (i32.const 0)) (i32.const 107)) (then
      (drop (call $host_call (i32.const 256) (i32.const 7) (i32.const 272) (i32.const 18)
                             (i32.const 304) (i32.const 12) (i32.const 1024) (i32.const 0)))))
    (call $guest_response (i32.const 512) (i32.const 2))
    (i32.const 1)))"#
    ))
    .expect("valid wat")
}

fn config(cache_dir: Option<String>) -> WorkerConfig {
    WorkerConfig {
        max_memory_bytes: MAX_MEMORY,
        invocation_timeout_ms: TIMEOUT_MS,
        cache_dir,
        max_instances: 16,
        data_socket: None,
        max_queued_calls: wire::worker::DEFAULT_MAX_QUEUED_CALLS,
    }
}

struct HostCall {
    id: CallId,
    actor: String,
    binding: String,
    namespace: String,
    operation: String,
    payload: Vec<u8>,
}

type Replies = Arc<Mutex<HashMap<CallId, oneshot::Sender<wire::CallResult<Bytes>>>>>;

/// Plays `host-core`: sends requests, routes replies to their callers, and
/// queues host calls and logs for the test to inspect.
struct TestHost {
    out: tokio::sync::Mutex<Option<FrameWriter<WriteHalf<DuplexStream>, ToWorker>>>,
    replies: Replies,
    next_id: AtomicU64,
    host_calls: tokio::sync::Mutex<mpsc::UnboundedReceiver<HostCall>>,
    logs: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, LogLevel, String)>>,
    worker: Mutex<Option<JoinHandle<Result<(), RuntimeError>>>>,
}

impl TestHost {
    #[expect(
        clippy::disallowed_methods,
        reason = "in-memory pipes, not sockets: nothing to register"
    )]
    async fn start(cfg: WorkerConfig) -> Arc<Self> {
        let (host_side, worker_side) = tokio::io::duplex(1 << 20);
        let (wr, ww) = tokio::io::split(worker_side);
        let worker = tokio::spawn(run(wr, ww));
        let (hr, hw) = tokio::io::split(host_side);
        let mut out = FrameWriter::new(hw);
        out.send(&ToWorker::Configure(cfg)).await.unwrap();
        let replies: Replies = Arc::default();
        let (calls_tx, calls_rx) = mpsc::unbounded_channel();
        let (logs_tx, logs_rx) = mpsc::unbounded_channel();
        let routes = replies.clone();
        tokio::spawn(async move {
            let mut reader = FrameReader::<_, FromWorker>::new(hr);
            while let Ok(Some(msg)) = reader.recv().await {
                match msg {
                    FromWorker::Reply { id, result } => {
                        if let Some(tx) = routes.lock().unwrap().remove(&id) {
                            let _ = tx.send(result);
                        }
                    }
                    FromWorker::HostCall {
                        id,
                        actor,
                        binding,
                        namespace,
                        operation,
                        payload,
                        ..
                    } => {
                        let _ = calls_tx.send(HostCall {
                            id,
                            actor,
                            binding,
                            namespace,
                            operation,
                            payload: payload.into_vec(),
                        });
                    }
                    FromWorker::Log { actor, level, text } => {
                        let _ = logs_tx.send((actor, level, text));
                    }
                    FromWorker::CancelHostCall { .. } => {}
                    // A provider's call to an actor the worker does not
                    // run: seen here as a host call from the provider.
                    FromWorker::ForwardCall {
                        id,
                        provider_key,
                        link_name,
                        actor,
                        operation,
                        payload,
                        ..
                    } => {
                        let _ = calls_tx.send(HostCall {
                            id,
                            actor: provider_key,
                            binding: link_name,
                            namespace: actor,
                            operation,
                            payload: payload.into_vec(),
                        });
                    }
                }
            }
        });
        Arc::new(Self {
            out: tokio::sync::Mutex::new(Some(out)),
            replies,
            next_id: AtomicU64::new(1),
            host_calls: tokio::sync::Mutex::new(calls_rx),
            logs: tokio::sync::Mutex::new(logs_rx),
            worker: Mutex::new(Some(worker)),
        })
    }

    async fn send(&self, msg: ToWorker) {
        let mut out = self.out.lock().await;
        out.as_mut().expect("open").send(&msg).await.unwrap();
    }

    async fn request(&self, request: WorkerRequest) -> Result<Bytes, String> {
        self.request_typed(request).await.map_err(|e| e.message)
    }

    async fn request_typed(&self, request: WorkerRequest) -> wire::CallResult<Bytes> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.replies.lock().unwrap().insert(id, tx);
        self.send(ToWorker::Request { id, request }).await;
        tokio::time::timeout(SOON, rx)
            .await
            .expect("no reply in time")
            .expect("worker went away")
    }

    async fn start_actor(&self, key: &str, wasm: Vec<u8>, hash: &str, caps: &[&str], n: u32) {
        self.request(WorkerRequest::StartActor(spec(key, wasm, hash, caps, n)))
            .await
            .expect("actor starts");
    }

    async fn invoke(&self, key: &str, operation: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
        self.invoke_within(key, operation, payload, 60_000)
            .await
            .map_err(|e| e.message)
    }

    /// Invokes with a deadline of `timeout_ms`; the error keeps its kind.
    async fn invoke_within(
        &self,
        key: &str,
        operation: &str,
        payload: &[u8],
        timeout_ms: u64,
    ) -> wire::CallResult<Vec<u8>> {
        self.request_typed(invoke_request(key, operation, payload, timeout_ms))
            .await
            .map(Bytes::into_vec)
    }

    /// Sends an invocation and returns its id and where its reply will
    /// arrive, for a test that cancels it or expects no reply.
    async fn send_invoke(
        &self,
        key: &str,
        operation: &str,
        payload: &[u8],
        timeout_ms: u64,
    ) -> (CallId, oneshot::Receiver<wire::CallResult<Bytes>>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.replies.lock().unwrap().insert(id, tx);
        let request = invoke_request(key, operation, payload, timeout_ms);
        self.send(ToWorker::Request { id, request }).await;
        (id, rx)
    }

    /// Invokes in the background; the handle yields the reply.
    fn invoke_later(
        self: &Arc<Self>,
        key: &str,
        operation: &str,
        payload: &[u8],
    ) -> JoinHandle<Result<Vec<u8>, String>> {
        let host = self.clone();
        let (key, operation, payload) = (key.to_owned(), operation.to_owned(), payload.to_vec());
        tokio::spawn(async move { host.invoke(&key, &operation, &payload).await })
    }

    /// Makes `n` calls of operation `k` at once, each held in its host call
    /// (so each on an instance of its own) until all have arrived, then
    /// answers them with `answer` and checks the actor passed it on.
    async fn served_at_once(self: &Arc<Self>, key: &str, n: usize, answer: &[u8]) {
        let calls: Vec<_> = (0..n).map(|_| self.invoke_later(key, "k", b"")).collect();
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            held.push(self.next_host_call().await.id);
        }
        for id in held {
            self.answer(id, Ok(answer)).await;
        }
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), answer, "{key}");
        }
    }

    async fn next_host_call(&self) -> HostCall {
        tokio::time::timeout(SOON, self.host_calls.lock().await.recv())
            .await
            .expect("no host call in time")
            .expect("worker went away")
    }

    async fn no_host_call_for(&self, d: Duration) {
        if let Ok(Some(c)) = tokio::time::timeout(d, self.host_calls.lock().await.recv()).await {
            panic!("unexpected host call {} from {}", c.operation, c.actor);
        }
    }

    async fn answer(&self, id: CallId, result: Result<&[u8], &str>) {
        let result = result
            .map(|b| Bytes::from(b.to_vec()))
            .map_err(wire::CallError::not_found);
        self.send(ToWorker::HostCallResult { id, result }).await;
    }

    async fn next_log(&self) -> (String, LogLevel, String) {
        tokio::time::timeout(SOON, self.logs.lock().await.recv())
            .await
            .expect("no log in time")
            .expect("worker went away")
    }

    /// Closes the channel like a departing host; the worker must end cleanly.
    async fn shutdown(&self) {
        let out = self.out.lock().await.take().expect("open");
        // Shutting down our write half is EOF for the worker.
        out.into_inner().shutdown().await.unwrap();
        let worker = self.worker.lock().unwrap().take().unwrap();
        let result = tokio::time::timeout(SOON, worker)
            .await
            .expect("worker did not stop")
            .expect("worker panicked");
        assert!(result.is_ok(), "worker ended with {result:?}");
    }
}

fn invoke_request(key: &str, operation: &str, payload: &[u8], timeout_ms: u64) -> WorkerRequest {
    WorkerRequest::Invoke {
        actor: key.into(),
        operation: operation.into(),
        payload: Bytes::from(payload.to_vec()),
        timeout_ms,
    }
}

fn spec(key: &str, wasm: Vec<u8>, hash: &str, caps: &[&str], instances: u32) -> ActorSpec {
    ActorSpec {
        key: key.into(),
        wasm: Bytes::from(wasm),
        hash: hash.into(),
        caps: caps.iter().map(|c| c.to_string()).collect(),
        instances,
    }
}

#[derive(serde::Serialize)]
struct RangeLimit {
    min: u32,
    max: u32,
}

#[derive(serde::Serialize)]
struct LogEntry<'a> {
    level: &'a str,
    text: &'a str,
}

#[tokio::test]
async fn echo_and_guest_errors() {
    let host = TestHost::start(config(None)).await;
    host.start_actor("MECHO", multi_actor(), "A1", &[], 2).await;
    assert_eq!(
        host.invoke("MECHO", "echo", b"hello").await.unwrap(),
        b"hello"
    );
    let big = vec![7u8; 100_000];
    assert_eq!(host.invoke("MECHO", "echo", &big).await.unwrap(), big);
    assert_eq!(
        host.invoke("MECHO", "g", b"").await.unwrap_err(),
        "guest says no"
    );
    let err = host.invoke("MNOPE", "echo", b"").await.unwrap_err();
    assert_eq!(err, "actor MNOPE is not running on this worker");
    host.request(WorkerRequest::StopActor {
        key: "MECHO".into(),
    })
    .await
    .unwrap();
    let err = host.invoke("MECHO", "echo", b"").await.unwrap_err();
    assert!(err.contains("not running"), "{err}");
    host.shutdown().await;
}

#[tokio::test]
async fn invalid_code_is_refused_at_start() {
    let host = TestHost::start(config(None)).await;
    let err = host
        .request(WorkerRequest::StartActor(spec(
            "MBAD",
            b"\0asm\x01\0\0\0garbage".to_vec(),
            "B1",
            &[],
            1,
        )))
        .await
        .unwrap_err();
    assert!(err.contains("MBAD") && err.contains("compile"), "{err}");
    let no_entry = wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap();
    let err = host
        .request(WorkerRequest::StartActor(spec(
            "MBAD",
            no_entry,
            "B2",
            &[],
            1,
        )))
        .await
        .unwrap_err();
    assert!(err.contains("__guest_call"), "{err}");
    let unknown_import = wat::parse_str(
        r#"(module (import "env" "nope" (func)) (memory (export "memory") 1)
           (func (export "__guest_call") (param i32 i32) (result i32) i32.const 1))"#,
    )
    .unwrap();
    let err = host
        .request(WorkerRequest::StartActor(spec(
            "MBAD",
            unknown_import,
            "B3",
            &[],
            1,
        )))
        .await
        .unwrap_err();
    assert!(err.contains("linked"), "{err}");
    host.shutdown().await;
}

#[tokio::test]
async fn numbergen_and_logging_builtins_follow_caps() {
    let host = TestHost::start(config(None)).await;
    let caps = ["wasmcloud:builtin:numbergen", "wasmcloud:builtin:logging"];
    host.start_actor("MNUM", multi_actor(), "C1", &caps, 1)
        .await;
    let guid: String =
        rmp_serde::from_slice(&host.invoke("MNUM", "n", b"").await.unwrap()).unwrap();
    assert_eq!(guid.len(), 36, "{guid}");
    assert_eq!(&guid[14..15], "4", "{guid}");
    let range = rmp_serde::to_vec_named(&RangeLimit { min: 10, max: 12 }).unwrap();
    for _ in 0..10 {
        let n: u32 =
            rmp_serde::from_slice(&host.invoke("MNUM", "r", &range).await.unwrap()).unwrap();
        assert!((10..=12).contains(&n), "{n}");
    }
    let entry = rmp_serde::to_vec_named(&LogEntry {
        level: "warn",
        text: "careful",
    })
    .unwrap();
    host.invoke("MNUM", "L", &entry).await.unwrap();
    assert_eq!(
        host.next_log().await,
        ("MNUM".into(), LogLevel::Warn, "careful".into())
    );
    host.invoke("MNUM", "c", b"from the console").await.unwrap();
    assert_eq!(
        host.next_log().await,
        ("MNUM".into(), LogLevel::Info, "from the console".into())
    );

    // Same code, no caps: the builtins refuse, naming the contract.
    host.start_actor("MNOCAPS", multi_actor(), "C1", &[], 1)
        .await;
    let err = host.invoke("MNOCAPS", "n", b"").await.unwrap_err();
    assert!(
        err.contains("MNOCAPS") && err.contains("wasmcloud:builtin:numbergen"),
        "{err}"
    );
    let err = host.invoke("MNOCAPS", "L", &entry).await.unwrap_err();
    assert!(err.contains("wasmcloud:builtin:logging"), "{err}");
    host.no_host_call_for(Duration::from_millis(50)).await;
    host.shutdown().await;
}

#[tokio::test]
async fn host_calls_are_forwarded_and_answered() {
    let host = TestHost::start(config(None)).await;
    host.start_actor("MKV", multi_actor(), "D1", &[], 2).await;
    let call = host.invoke_later("MKV", "k", b"counter");
    let hc = host.next_host_call().await;
    assert_eq!(
        (
            hc.actor.as_str(),
            hc.binding.as_str(),
            hc.namespace.as_str(),
            hc.operation.as_str()
        ),
        ("MKV", "default", "wasmcloud:keyvalue", "KeyValue.Get")
    );
    assert_eq!(hc.payload, b"counter");
    host.answer(hc.id, Ok(b"42")).await;
    assert_eq!(call.await.unwrap().unwrap(), b"42");

    let call = host.invoke_later("MKV", "k", b"x");
    let hc = host.next_host_call().await;
    host.answer(hc.id, Err("no link for wasmcloud:keyvalue"))
        .await;
    assert_eq!(
        call.await.unwrap().unwrap_err(),
        "no link for wasmcloud:keyvalue"
    );

    // Unanswered: the deadline covers time spent waiting on the host too.
    let started = Instant::now();
    let call = host.invoke_later("MKV", "k", b"y");
    let hc = host.next_host_call().await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(
        err,
        format!("actor MKV exceeded its deadline of {TIMEOUT_MS} ms")
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // A late answer is ignored, and the worker still serves.
    host.answer(hc.id, Ok(b"late")).await;
    assert_eq!(host.invoke("MKV", "e", b"ok").await.unwrap(), b"ok");
    host.shutdown().await;
}

#[tokio::test]
async fn trapped_instances_are_discarded() {
    let host = TestHost::start(config(None)).await;
    host.start_actor("MTRAP", multi_actor(), "E1", &[], 1).await;
    // One instance, reused: its counter goes up.
    assert_eq!(host.invoke("MTRAP", "i", b"").await.unwrap(), [1]);
    assert_eq!(host.invoke("MTRAP", "i", b"").await.unwrap(), [2]);
    let err = host.invoke("MTRAP", "t", b"").await.unwrap_err();
    assert_eq!(
        err,
        "actor MTRAP trapped: wasm `unreachable` instruction executed"
    );
    // A fresh instance after the trap.
    assert_eq!(host.invoke("MTRAP", "i", b"").await.unwrap(), [1]);
    host.shutdown().await;
}

#[tokio::test]
async fn endless_loop_hits_the_deadline() {
    let host = TestHost::start(config(None)).await;
    host.start_actor("MLOOP", multi_actor(), "F1", &[], 1).await;
    let started = Instant::now();
    let err = host.invoke("MLOOP", "l", b"").await.unwrap_err();
    assert_eq!(
        err,
        format!("actor MLOOP exceeded its deadline of {TIMEOUT_MS} ms")
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(TIMEOUT_MS) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(host.invoke("MLOOP", "e", b"alive").await.unwrap(), b"alive");
    host.shutdown().await;
}

#[tokio::test]
async fn memory_blow_up_is_contained() {
    let host = TestHost::start(config(None)).await;
    host.start_actor("MMEM", multi_actor(), "G1", &[], 1).await;
    let err = host.invoke("MMEM", "m", b"").await.unwrap_err();
    assert_eq!(
        err,
        format!("actor MMEM exceeded its memory limit of {MAX_MEMORY} bytes")
    );
    assert_eq!(host.invoke("MMEM", "e", b"alive").await.unwrap(), b"alive");
    host.shutdown().await;
}

/// Two runtime threads, as on the target machine: an actor spinning in a
/// loop and one waiting on the host must not hold up another actor's calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_actor_does_not_block_fast_one() {
    // A longer deadline than elsewhere: the slow calls must still be running
    // when the fast ones are checked, even on a loaded machine.
    let host = TestHost::start(WorkerConfig {
        invocation_timeout_ms: 2000,
        ..config(None)
    })
    .await;
    host.start_actor("MSLOW", multi_actor(), "H1", &[], 4).await;
    host.start_actor("MFAST", multi_actor(), "H1", &[], 1).await;

    // Slow because it waits on the host.
    let waiting = host.invoke_later("MSLOW", "k", b"");
    let hc = host.next_host_call().await;
    // Slow because it computes.
    let spinning = host.invoke_later("MSLOW", "l", b"");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(host.invoke("MFAST", "e", b"quick").await.unwrap(), b"quick");
    }
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "fast calls took {:?}",
        started.elapsed()
    );
    assert!(!spinning.is_finished(), "{:?}", spinning.await);
    assert!(!waiting.is_finished(), "{:?}", waiting.await);
    host.answer(hc.id, Ok(b"done")).await;
    assert_eq!(waiting.await.unwrap().unwrap(), b"done");
    assert!(spinning.await.unwrap().unwrap_err().contains("deadline"));
    host.shutdown().await;
}

#[tokio::test]
async fn instances_bound_concurrency_and_scale() {
    let host = TestHost::start(config(None)).await;
    host.start_actor("MONE", multi_actor(), "I1", &[], 1).await;
    let first = host.invoke_later("MONE", "k", b"1");
    let hc1 = host.next_host_call().await;
    let second = host.invoke_later("MONE", "k", b"2");
    // One instance: the second call waits for the first.
    host.no_host_call_for(Duration::from_millis(50)).await;
    host.request(WorkerRequest::ScaleActor {
        key: "MONE".into(),
        instances: 2,
    })
    .await
    .unwrap();
    let hc2 = host.next_host_call().await;
    assert_eq!(hc2.payload, b"2");
    host.answer(hc2.id, Ok(b"two")).await;
    host.answer(hc1.id, Ok(b"one")).await;
    assert_eq!(first.await.unwrap().unwrap(), b"one");
    assert_eq!(second.await.unwrap().unwrap(), b"two");
    let err = host
        .request(WorkerRequest::ScaleActor {
            key: "MONE".into(),
            instances: 0,
        })
        .await
        .unwrap_err();
    assert!(err.contains("stop"), "{err}");
    host.request(WorkerRequest::ScaleActor {
        key: "MONE".into(),
        instances: 1,
    })
    .await
    .unwrap();
    assert_eq!(host.invoke("MONE", "e", b"x").await.unwrap(), b"x");
    host.shutdown().await;
}

#[tokio::test]
async fn update_while_calls_are_in_flight() {
    let host = TestHost::start(config(None)).await;
    host.start_actor("MVER", versioned_actor("v1"), "J1", &[], 4)
        .await;
    assert_eq!(host.invoke("MVER", "x", b"").await.unwrap(), b"v1");
    let in_flight = host.invoke_later("MVER", "k", b"");
    let hc = host.next_host_call().await;
    host.request(WorkerRequest::UpdateActor(spec(
        "MVER",
        versioned_actor("v2"),
        "J2",
        &[],
        4,
    )))
    .await
    .unwrap();
    assert_eq!(host.invoke("MVER", "x", b"").await.unwrap(), b"v2");
    // The call that started on v1 finishes on v1.
    host.answer(hc.id, Ok(b"")).await;
    assert_eq!(in_flight.await.unwrap().unwrap(), b"v1");
    assert_eq!(host.invoke("MVER", "x", b"").await.unwrap(), b"v2");
    let err = host
        .request(WorkerRequest::UpdateActor(spec(
            "MGONE",
            versioned_actor("v3"),
            "J3",
            &[],
            1,
        )))
        .await
        .unwrap_err();
    assert!(err.contains("not running"), "{err}");
    host.shutdown().await;
}

#[tokio::test]
async fn compile_cache_survives_corruption() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "actor-runtime-test-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let cache_dir = dir.join("cache");
    let cfg = || config(Some(cache_dir.to_string_lossy().into_owned()));

    let host = TestHost::start(cfg()).await;
    host.start_actor("MCACHE", multi_actor(), "ABCDEF", &[], 1)
        .await;
    host.shutdown().await;
    let mode = std::fs::metadata(&cache_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let files: Vec<_> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("ABCDEF-"));

    // Loaded from the cache.
    let host = TestHost::start(cfg()).await;
    host.start_actor("MCACHE", multi_actor(), "ABCDEF", &[], 1)
        .await;
    assert_eq!(
        host.invoke("MCACHE", "e", b"cached").await.unwrap(),
        b"cached"
    );
    host.shutdown().await;

    // A corrupt file is ignored and rewritten.
    std::fs::write(&files[0], b"not an artifact").unwrap();
    let host = TestHost::start(cfg()).await;
    host.start_actor("MCACHE", multi_actor(), "ABCDEF", &[], 1)
        .await;
    assert_eq!(
        host.invoke("MCACHE", "e", b"again").await.unwrap(),
        b"again"
    );
    host.shutdown().await;
    assert!(std::fs::metadata(&files[0]).unwrap().len() > 100);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
#[expect(
    clippy::disallowed_methods,
    reason = "in-memory pipes, not sockets: nothing to register"
)]
async fn garbage_from_the_host_is_an_error() {
    // A malformed frame after Configure.
    let (mut host_side, worker_side) = tokio::io::duplex(4096);
    let (r, w) = tokio::io::split(worker_side);
    let worker = tokio::spawn(run(r, w));
    let mut out = FrameWriter::new(&mut host_side);
    out.send(&ToWorker::Configure(config(None))).await.unwrap();
    host_side
        .write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1])
        .await
        .unwrap();
    let result = tokio::time::timeout(SOON, worker).await.unwrap().unwrap();
    assert!(matches!(result, Err(RuntimeError::Wire(_))), "{result:?}");

    // A request before Configure.
    let (host_side, worker_side) = tokio::io::duplex(4096);
    let (r, w) = tokio::io::split(worker_side);
    let worker = tokio::spawn(run(r, w));
    let mut out = FrameWriter::new(host_side);
    out.send(&ToWorker::Request {
        id: 1,
        request: WorkerRequest::StopActor { key: "M".into() },
    })
    .await
    .unwrap();
    let result = tokio::time::timeout(SOON, worker).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(RuntimeError::Protocol(_))),
        "{result:?}"
    );

    // Noise that is not even a frame.
    let (mut host_side, worker_side) = tokio::io::duplex(4096);
    let (r, w) = tokio::io::split(worker_side);
    let worker = tokio::spawn(run(r, w));
    host_side.write_all(&[0xff; 64]).await.unwrap();
    let result = tokio::time::timeout(SOON, worker).await.unwrap().unwrap();
    assert!(result.is_err(), "{result:?}");

    // A host that leaves before configuring is a clean end.
    let (host_side, worker_side) = tokio::io::duplex(4096);
    let (r, w) = tokio::io::split(worker_side);
    drop(host_side);
    assert!(run(r, w).await.is_ok());
}

/// A component of the `actor` world, hand-written: operation `e` echoes, `g`
/// returns an error, `k` calls `host.call` (forwarded), `t` traps, `l` spins.
fn component_actor() -> Vec<u8> {
    component_actor_with("")
}

/// [`component_actor`] with `extra` core modules and instances inside, so
/// that each of its instances takes more of the pooling allocator's room.
fn component_actor_with(extra: &str) -> Vec<u8> {
    wat::parse_str(
        r#"(component
  (import "wasmhost:actor/host@0.1.0" (instance $host
    (export "call" (func (param "binding" string) (param "namespace" string)
                         (param "operation" string) (param "payload" (list u8))
                         (result (result (list u8) (error string)))))))
  (core module $mem
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (local.get $p)))
  (core instance $mem (instantiate $mem))
  (core func $hcall (canon lower (func $host "call")
    (memory (core memory $mem "memory")) (realloc (core func $mem "realloc"))))
  (core module $main
    (import "mem" "memory" (memory 1))
    (import "host" "call" (func $hcall (param i32 i32 i32 i32 i32 i32 i32 i32 i32)))
    (data (i32.const 256) "default")
    (data (i32.const 272) "wasmcloud:keyvalue")
    (data (i32.const 304) "KeyValue.Get")
    (data (i32.const 320) "component says no")
    ;; The result<list<u8>, string> goes at 16: tag, pointer, length.
    (func (export "call") (param $op i32) (param $op_len i32) (param $pl i32) (param $pl_len i32)
                          (result i32)
      (local $c i32)
      (local.set $c (i32.load8_u (local.get $op)))
      (if (i32.eq (local.get $c) (i32.const 116)) (then unreachable))
      (if (i32.eq (local.get $c) (i32.const 108)) (then (loop $l (br $l))))
      (if (i32.eq (local.get $c) (i32.const 107)) (then
        (call $hcall (i32.const 256) (i32.const 7) (i32.const 272) (i32.const 18)
                     (i32.const 304) (i32.const 12) (local.get $pl) (local.get $pl_len)
                     (i32.const 16))
        (return (i32.const 16))))
      (if (i32.eq (local.get $c) (i32.const 103)) (then
        (i32.store8 (i32.const 16) (i32.const 1))
        (i32.store (i32.const 20) (i32.const 320))
        (i32.store (i32.const 24) (i32.const 17))
        (return (i32.const 16))))
      (i32.store8 (i32.const 16) (i32.const 0))
      (i32.store (i32.const 20) (local.get $pl))
      (i32.store (i32.const 24) (local.get $pl_len))
      (i32.const 16)))
  (core instance $main (instantiate $main
    (with "mem" (instance $mem))
    (with "host" (instance (export "call" (func $hcall))))))
  ;; extra
  (func $call (param "operation" string) (param "payload" (list u8))
              (result (result (list u8) (error string)))
    (canon lift (core func $main "call") (memory (core memory $mem "memory"))
      (realloc (core func $mem "realloc"))))
  (instance $guest (export "call" (func $call)))
  (export "wasmhost:actor/guest@0.1.0" (instance $guest)))"#
            .replace("  ;; extra\n", extra),
    )
    .expect("valid component wat")
}

#[tokio::test]
async fn component_actor_runs() {
    let host = TestHost::start(config(None)).await;
    host.start_actor("MCOMP", component_actor(), "K1", &[], 2)
        .await;
    assert_eq!(host.invoke("MCOMP", "e", b"hi").await.unwrap(), b"hi");
    assert_eq!(
        host.invoke("MCOMP", "g", b"").await.unwrap_err(),
        "component says no"
    );
    let call = host.invoke_later("MCOMP", "k", b"key");
    let hc = host.next_host_call().await;
    assert_eq!(
        (
            hc.actor.as_str(),
            hc.binding.as_str(),
            hc.namespace.as_str(),
            hc.operation.as_str()
        ),
        ("MCOMP", "default", "wasmcloud:keyvalue", "KeyValue.Get")
    );
    assert_eq!(hc.payload, b"key");
    host.answer(hc.id, Ok(b"value")).await;
    assert_eq!(call.await.unwrap().unwrap(), b"value");
    let err = host.invoke("MCOMP", "t", b"").await.unwrap_err();
    assert_eq!(
        err,
        "actor MCOMP trapped: wasm `unreachable` instruction executed"
    );
    let err = host.invoke("MCOMP", "l", b"").await.unwrap_err();
    assert!(err.contains("deadline"), "{err}");
    assert_eq!(host.invoke("MCOMP", "e", b"still").await.unwrap(), b"still");
    host.shutdown().await;
}

/// The real binary over a real socket: connect, handshake with the token,
/// serve, and exit cleanly when the host hangs up.
#[tokio::test]
async fn binary_connects_and_serves() {
    let dir = std::env::temp_dir().join(format!(
        "actor-runtime-bin-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("worker.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_actor-runtime"))
        .arg("--socket")
        .arg(&path)
        .env("ACTOR_RUNTIME_TOKEN", "s3cret")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (stream, _) = tokio::time::timeout(SOON, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let (mut r, mut w) = stream.into_std().and_then(wire::socket::split).unwrap();
    let hello = wire::handshake::accept(&mut r, &mut w, |h| {
        if h.token == "s3cret" {
            Ok(())
        } else {
            Err("bad token".into())
        }
    })
    .await
    .unwrap();
    assert_eq!(hello.role, wire::handshake::Role::Worker);
    let mut out = FrameWriter::<_, ToWorker>::new(w);
    let mut inp = FrameReader::<_, FromWorker>::new(r);
    out.send(&ToWorker::Configure(config(None))).await.unwrap();
    out.send(&ToWorker::Request {
        id: 1,
        request: WorkerRequest::StartActor(spec("MBIN", multi_actor(), "L1", &[], 1)),
    })
    .await
    .unwrap();
    // Requests run concurrently: wait for the start before invoking.
    async fn reply<R: tokio::io::AsyncRead + Unpin>(
        inp: &mut FrameReader<R, FromWorker>,
    ) -> (CallId, wire::CallResult<Bytes>) {
        match tokio::time::timeout(SOON, inp.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Some(FromWorker::Reply { id, result }) => (id, result),
            other => panic!("unexpected {other:?}"),
        }
    }
    let (id, result) = reply(&mut inp).await;
    assert_eq!(id, 1);
    assert!(result.is_ok(), "{result:?}");
    out.send(&ToWorker::Request {
        id: 2,
        request: WorkerRequest::Invoke {
            actor: "MBIN".into(),
            operation: "echo".into(),
            payload: Bytes::from(b"over the socket".to_vec()),
            timeout_ms: 60_000,
        },
    })
    .await
    .unwrap();
    let (id, result) = reply(&mut inp).await;
    assert_eq!(id, 2);
    assert_eq!(result.unwrap().as_ref(), b"over the socket");
    drop(out);
    drop(inp);
    let status = tokio::time::timeout(SOON, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The pools are sized so that `max_instances` instances are live at once:
/// 1,000 calls all parked in a host call, each holding its own instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_instances_fit() {
    const N: usize = 1000;
    let host = TestHost::start(WorkerConfig {
        max_memory_bytes: 64 * 1024 * 1024,
        invocation_timeout_ms: 30_000,
        cache_dir: None,
        max_instances: N as u32,
        ..config(None)
    })
    .await;
    host.start_actor("MMANY", multi_actor(), "M1", &[], N as u32)
        .await;
    host.served_at_once("MMANY", N, b"ok").await;
    host.shutdown().await;
}

// Hardening: one actor, or one peer, cannot hurt another.

const MIB: u64 = 1024 * 1024;

/// A fixture of `fixtures/wat`, compiled.
fn wat_fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../fixtures/wat/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fresh private directory, for a data socket.
fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "actor-runtime-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// [`config`] with a deadline long enough to hold calls open at will.
fn patient() -> WorkerConfig {
    WorkerConfig {
        invocation_timeout_ms: 10_000,
        ..config(None)
    }
}

/// [`patient`], with a data socket for providers' direct channels at `socket`.
fn direct_config(socket: &std::path::Path) -> WorkerConfig {
    WorkerConfig {
        data_socket: Some(socket.to_string_lossy().into_owned()),
        ..patient()
    }
}

/// A provider's end of a direct channel to the worker's data socket.
struct DirectProvider {
    tx: FrameWriter<wire::socket::SocketWriter, FromProvider>,
    rx: FrameReader<wire::socket::SocketReader, ToProvider>,
    /// The socket itself, for a test that breaks one of its directions.
    stream: std::os::unix::net::UnixStream,
}

impl DirectProvider {
    /// Has the worker admit provider `key` of `contract`, and connects as it.
    async fn connect(host: &TestHost, socket: &std::path::Path, key: &str, contract: &str) -> Self {
        let token = format!("token-{}", rand::random::<u64>());
        host.request(WorkerRequest::AdmitProvider {
            provider_key: key.into(),
            link_name: "default".into(),
            contract_id: contract.into(),
            token: token.clone(),
        })
        .await
        .expect("admitted");
        let stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
        let kept = stream.try_clone().unwrap();
        let (mut r, mut w) = wire::socket::split(stream).unwrap();
        wire::handshake::connect_as(&mut r, &mut w, wire::handshake::Role::Provider, &token, key)
            .await
            .expect("handshake");
        Self {
            tx: FrameWriter::new(w),
            rx: FrameReader::new(r),
            stream: kept,
        }
    }

    async fn send(&mut self, msg: FromProvider) -> Result<(), wire::WireError> {
        self.tx.send(&msg).await
    }

    async fn call(&mut self, id: CallId, actor: &str, operation: &str, payload: Vec<u8>) {
        self.send(FromProvider::CallActor {
            id,
            actor_id: actor.into(),
            operation: operation.into(),
            payload: Bytes::from(payload),
        })
        .await
        .expect("sent");
    }

    /// The next answer to one of our calls: (id, result).
    async fn answer(&mut self) -> (CallId, wire::CallResult<Bytes>) {
        match tokio::time::timeout(SOON, self.rx.recv()).await {
            Ok(Ok(Some(ToProvider::CallActorResult { id, result }))) => (id, result),
            other => panic!("expected an answer, got {other:?}"),
        }
    }
}

/// A worker with a data socket, serving actor `key` (its caps naming the
/// provider's contract), and provider `VHTTP` connected on a direct channel.
struct Direct {
    host: Arc<TestHost>,
    provider: DirectProvider,
    socket: std::path::PathBuf,
    dir: std::path::PathBuf,
}

const HTTP: &str = "wasmcloud:httpserver";

impl Direct {
    async fn start(tag: &str, max_memory_bytes: u64, key: &str, wasm: Vec<u8>) -> Self {
        let dir = temp_dir(tag);
        let socket = dir.join("data.sock");
        let host = TestHost::start(WorkerConfig {
            max_memory_bytes,
            ..direct_config(&socket)
        })
        .await;
        host.start_actor(key, wasm, tag, &[HTTP], 1).await;
        let provider = DirectProvider::connect(&host, &socket, "VHTTP", HTTP).await;
        Self {
            host,
            provider,
            socket,
            dir,
        }
    }

    async fn finish(self) {
        self.host.shutdown().await;
        std::fs::remove_dir_all(&self.dir).unwrap();
    }
}

/// At a memory cap of 64 MiB an actor's whole memory makes a message as
/// large as a frame may be. Each way of handing it out fails for that one
/// call; the worker goes on serving the actor and every other one.
#[tokio::test]
async fn a_reply_log_or_host_call_of_a_whole_memory_fails_only_that_call() {
    let host = TestHost::start(WorkerConfig {
        max_memory_bytes: 64 * MIB,
        ..patient()
    })
    .await;
    host.start_actor("MBIG", wat_fixture("oversized"), "O1", &[], 1)
        .await;
    host.start_actor("MECHO", multi_actor(), "O2", &[], 1).await;
    let frame_limit = " bytes exceeds the 64 MiB frame limit";
    for _ in 0..3 {
        let err = host
            .invoke_within("MBIG", "reply", b"", 60_000)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge, "{err}");
        let len: u64 = err
            .message
            .strip_prefix("reply of ")
            .and_then(|m| m.strip_suffix(frame_limit))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{err}"));
        assert!(len > 64 * MIB, "{err}");

        assert_eq!(host.invoke("MBIG", "log", b"").await.unwrap(), b"ok");
        let (actor, level, text) = host.next_log().await;
        assert_eq!((actor.as_str(), level), ("MBIG", LogLevel::Info));
        let (kept, marker) = text.split_once(" [cut: ").expect("marked as cut");
        assert_eq!(kept.len(), 16 * 1024);
        assert_eq!(marker, format!("{} bytes in all]", 64 * MIB));

        let err = host
            .invoke_within("MBIG", "call", b"", 60_000)
            .await
            .unwrap_err();
        // The guest answers the host call's error as its own, so the kind
        // is the actor's fault; the message says what happened.
        assert_eq!(err.kind, ErrorKind::ActorFault, "{err}");
        assert!(
            err.message.starts_with("request of ") && err.message.ends_with(frame_limit),
            "{err}"
        );
        host.no_host_call_for(Duration::from_millis(20)).await;

        assert_eq!(host.invoke("MECHO", "e", b"fine").await.unwrap(), b"fine");
    }
    // It never died: it ends cleanly when the host leaves.
    host.shutdown().await;
}

/// A provider's call whose frame is just under the cap is served (or
/// refused) without harm to the channel, the worker or other calls.
#[tokio::test]
async fn a_provider_call_just_under_the_frame_cap_harms_nothing() {
    let mut direct = Direct::start("big", 80 * MIB, "MECHO", wat_fixture("echo")).await;
    let provider = &mut direct.provider;
    let payload = vec![7u8; wire::DEFAULT_MAX_FRAME_LEN - 1024];
    provider.call(1, "MECHO", "Echo", payload.clone()).await;
    match provider.answer().await {
        (1, Ok(echoed)) => assert!(echoed.as_ref() == payload.as_slice(), "echoed whole"),
        (1, Err(e)) => assert_eq!(e.kind, ErrorKind::TooLarge, "{e}"),
        (id, result) => panic!("answer for call {id}: {result:?}"),
    }
    provider.call(2, "MECHO", "Echo", b"small".to_vec()).await;
    let (id, result) = provider.answer().await;
    assert_eq!((id, result.unwrap().as_ref()), (2, &b"small"[..]));
    assert_eq!(
        direct.host.invoke("MECHO", "e", b"host").await.unwrap(),
        b"host"
    );
    direct.finish().await;
}

/// Ten calls to an actor with one instance that loops: one runs until its
/// deadline and nine wait, each of them answered by its own deadline,
/// counted from its arrival.
#[tokio::test]
async fn calls_queued_behind_a_loop_are_answered_by_their_deadline() {
    const DEADLINE: Duration = Duration::from_millis(500);
    let host = TestHost::start(WorkerConfig {
        invocation_timeout_ms: DEADLINE.as_millis() as u64,
        ..config(None)
    })
    .await;
    host.start_actor("MSPIN", multi_actor(), "Q1", &[], 1).await;
    let started = Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                let result = host.invoke_within("MSPIN", "l", b"", 60_000).await;
                (result, started.elapsed())
            })
        })
        .collect();
    for call in calls {
        let (result, took) = call.await.unwrap();
        let err = result.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
        assert!(
            took < DEADLINE + Duration::from_millis(250),
            "answered after {took:?}: {err}"
        );
    }
    host.shutdown().await;
}

/// A call cancelled while it waits for an instance leaves the queue (its
/// place can be taken) and never runs, and is not answered.
#[tokio::test]
async fn a_cancelled_queued_call_never_runs_and_leaves_the_queue() {
    let host = TestHost::start(WorkerConfig {
        max_queued_calls: 1,
        ..patient()
    })
    .await;
    host.start_actor("MQ", multi_actor(), "R1", &[], 1).await;
    let first = host.invoke_later("MQ", "k", b"1");
    let hc1 = host.next_host_call().await;
    let (queued, mut unanswered) = host.send_invoke("MQ", "k", b"2", 60_000).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    host.send(ToWorker::Cancel { id: queued }).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The one place in the queue is free again.
    let third = host.invoke_later("MQ", "k", b"3");
    host.no_host_call_for(Duration::from_millis(50)).await;
    assert!(!third.is_finished(), "{:?}", third.await);
    host.answer(hc1.id, Ok(b"one")).await;
    assert_eq!(first.await.unwrap().unwrap(), b"one");
    let hc3 = host.next_host_call().await;
    assert_eq!(hc3.payload, b"3", "the cancelled call ran");
    host.answer(hc3.id, Ok(b"three")).await;
    assert_eq!(third.await.unwrap().unwrap(), b"three");
    host.no_host_call_for(Duration::from_millis(100)).await;
    assert!(
        matches!(
            unanswered.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ),
        "a cancelled call is not answered"
    );
    host.shutdown().await;
}

/// A call whose deadline passes while it waits for an instance never
/// starts, even if the instance comes free before its task runs again.
#[tokio::test]
async fn a_call_whose_deadline_passed_in_the_queue_never_starts() {
    let host = TestHost::start(patient()).await;
    host.start_actor("MQ", multi_actor(), "S1", &[], 1).await;
    let first = host.invoke_later("MQ", "k", b"1");
    let hc1 = host.next_host_call().await;
    let late = {
        let host = host.clone();
        tokio::spawn(async move { host.invoke_within("MQ", "k", b"2", 150).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    host.answer(hc1.id, Ok(b"one")).await;
    // This test's runtime has one thread: blocking it holds the worker up
    // as a machine busy elsewhere would, past the waiting call's deadline.
    // When it runs again, the instance comes free before the waiting
    // call's timer is looked at.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(first.await.unwrap().unwrap(), b"one");
    let err = late.await.unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert_eq!(
        err.message,
        "actor MQ exceeded its deadline of 150 ms waiting for a free instance"
    );
    host.no_host_call_for(Duration::from_millis(100)).await;
    host.shutdown().await;
}

/// Past `max_queued_calls` waiting calls, an actor's next call is answered
/// "busy" at once; other actors are not affected, and the waiting calls run.
#[tokio::test]
async fn calls_beyond_the_queue_bound_are_busy_at_once() {
    let host = TestHost::start(WorkerConfig {
        max_queued_calls: 2,
        ..patient()
    })
    .await;
    host.start_actor("MBUSY", multi_actor(), "T1", &[], 1).await;
    host.start_actor("MOTHER", multi_actor(), "T1", &[], 1)
        .await;
    let first = host.invoke_later("MBUSY", "k", b"1");
    let hc1 = host.next_host_call().await;
    let waiting = [
        host.invoke_later("MBUSY", "k", b"2"),
        host.invoke_later("MBUSY", "k", b"3"),
    ];
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let err = host
        .invoke_within("MBUSY", "e", b"", 60_000)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Busy, "{err}");
    assert_eq!(
        err.message,
        "actor MBUSY is busy: 2 calls are waiting for its 1 instances"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(host.invoke("MOTHER", "e", b"x").await.unwrap(), b"x");

    host.answer(hc1.id, Ok(b"1")).await;
    assert_eq!(first.await.unwrap().unwrap(), b"1");
    for _ in 0..2 {
        let hc = host.next_host_call().await;
        host.answer(hc.id, Ok(&hc.payload)).await;
    }
    let [two, three] = waiting;
    assert_eq!(two.await.unwrap().unwrap(), b"2");
    assert_eq!(three.await.unwrap().unwrap(), b"3");
    assert_eq!(host.invoke("MBUSY", "e", b"y").await.unwrap(), b"y");
    host.shutdown().await;
}

/// A cancelled running call stops at once and gives its instance back.
#[tokio::test]
async fn cancel_stops_a_running_call_and_frees_its_instance() {
    let host = TestHost::start(patient()).await;
    host.start_actor("MRUN", multi_actor(), "U1", &[], 1).await;
    let (id, mut unanswered) = host.send_invoke("MRUN", "l", b"", 60_000).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    host.send(ToWorker::Cancel { id }).await;
    let started = Instant::now();
    assert_eq!(host.invoke("MRUN", "e", b"next").await.unwrap(), b"next");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the loop ran on for {:?}",
        started.elapsed()
    );
    assert!(matches!(
        unanswered.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    host.shutdown().await;
}

/// A core instance with a memory of its own: each instance of the
/// component then takes two of the pool's memories.
const SECOND_MEMORY: &str = "  (core module $scratch (memory 1))
  (core instance $scratch (instantiate $scratch))
";

/// Three more core instances: five in all per instance of the component.
const THREE_MORE_CORE_INSTANCES: &str = "  (core module $pad)
  (core instance $pad1 (instantiate $pad))
  (core instance $pad2 (instantiate $pad))
  (core instance $pad3 (instantiate $pad))
";

/// With room for 4 instances, each of two memories, an actor at its count
/// of 4 once had every memory of the pool in its idle instances.
#[tokio::test]
async fn an_actor_with_every_slot_idle_leaves_room_for_another() {
    let host = TestHost::start(WorkerConfig {
        max_instances: 4,
        ..patient()
    })
    .await;
    let hog = component_actor_with(SECOND_MEMORY);
    host.start_actor("MHOG", hog, "V1", &[], 4).await;
    host.served_at_once("MHOG", 4, b"x").await;
    host.start_actor("MNEXT", multi_actor(), "V2", &[], 1).await;
    assert_eq!(host.invoke("MNEXT", "e", b"room").await.unwrap(), b"room");
    assert_eq!(host.invoke("MHOG", "e", b"hog").await.unwrap(), b"hog");
    host.shutdown().await;
}

/// An actor with every one of its instances busy (looping) leaves another
/// actor a slot to serve from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_with_every_instance_busy_leaves_room_for_another() {
    let host = TestHost::start(WorkerConfig {
        max_instances: 4,
        invocation_timeout_ms: 3_000,
        ..config(None)
    })
    .await;
    host.start_actor("MLOOPS", multi_actor(), "W1", &[], 4)
        .await;
    host.start_actor("MSMALL", multi_actor(), "W2", &[], 1)
        .await;
    let loops: Vec<_> = (0..4)
        .map(|_| host.invoke_later("MLOOPS", "l", b""))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert_eq!(host.invoke("MSMALL", "e", b"room").await.unwrap(), b"room");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        loops.iter().all(|l| !l.is_finished()),
        "the loops still run"
    );
    for l in loops {
        assert!(l.await.unwrap().unwrap_err().contains("deadline"));
    }
    host.shutdown().await;
}

/// When the slots run out, the least recently used idle instances of
/// another actor are dropped to make room.
#[tokio::test]
async fn idle_instances_of_another_actor_are_evicted_when_the_slots_run_out() {
    let host = TestHost::start(WorkerConfig {
        max_instances: 4,
        ..patient()
    })
    .await;
    host.start_actor("MIDLE", component_actor_with(SECOND_MEMORY), "X1", &[], 3)
        .await;
    host.start_actor("MWORK", multi_actor(), "X2", &[], 3).await;
    // Each round needs instances the other actor holds idle.
    for (actor, n) in [("MIDLE", 3), ("MWORK", 3), ("MIDLE", 1)] {
        host.served_at_once(actor, n, b"served").await;
    }
    host.shutdown().await;
}

/// When one of wasmtime's own pools (here core instances, 4 per slot)
/// runs out before the slots do, an idle instance of another actor is
/// dropped and the instantiation tried again.
#[tokio::test]
async fn idle_instances_are_evicted_when_a_pool_of_wasmtime_runs_out() {
    let host = TestHost::start(WorkerConfig {
        max_instances: 2,
        ..patient()
    })
    .await;
    let padded = component_actor_with(THREE_MORE_CORE_INSTANCES);
    host.start_actor("MFIRST", padded.clone(), "Y1", &[], 1)
        .await;
    host.start_actor("MSECOND", padded, "Y1", &[], 1).await;
    for _ in 0..2 {
        assert_eq!(host.invoke("MFIRST", "e", b"1").await.unwrap(), b"1");
        assert_eq!(host.invoke("MSECOND", "e", b"2").await.unwrap(), b"2");
    }
    host.shutdown().await;
}

/// A peer that connects to the data socket and says nothing is let go
/// after the handshake timeout; the socket goes on serving.
#[tokio::test]
async fn a_silent_peer_on_the_data_socket_is_let_go() {
    let mut direct = Direct::start("silent", MAX_MEMORY, "MECHO", multi_actor()).await;
    let mut silent = tokio::net::UnixStream::connect(&direct.socket)
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(15), silent.read(&mut buf))
        .await
        .expect("the worker still holds a silent connection");
    assert_eq!(read.unwrap(), 0, "closed without a word");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "closed after {:?}",
        started.elapsed()
    );
    direct.provider.call(1, "MECHO", "e", b"hi".to_vec()).await;
    let (id, result) = direct.provider.answer().await;
    assert_eq!((id, result.unwrap().as_ref()), (1, &b"hi"[..]));
    direct.finish().await;
}

/// A provider cancels its calls on the direct channel: one waiting for an
/// instance never runs, one running stops and gives its instance back.
#[tokio::test]
async fn a_provider_cancels_its_calls_waiting_or_running() {
    let mut direct = Direct::start("cancel", MAX_MEMORY, "MDIRECT", multi_actor()).await;
    let provider = &mut direct.provider;
    provider.call(1, "MDIRECT", "l", Vec::new()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    provider.call(2, "MDIRECT", "k", b"2".to_vec()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The waiting one first: cancelling the running one frees the instance.
    for id in [2, 1] {
        provider
            .send(FromProvider::CancelCall { id })
            .await
            .unwrap();
    }
    let started = Instant::now();
    provider.call(3, "MDIRECT", "e", b"three".to_vec()).await;
    // Had either cancelled call been answered, its answer would come first.
    let (id, result) = provider.answer().await;
    assert_eq!((id, result.unwrap().as_ref()), (3, &b"three"[..]));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    direct
        .host
        .no_host_call_for(Duration::from_millis(100))
        .await;
    direct.finish().await;
}

/// A direct channel whose writing side fails (the provider no longer
/// reads) is torn down: the worker closes it rather than serve half of it.
#[tokio::test]
async fn a_direct_channel_whose_writer_fails_is_torn_down() {
    let mut direct = Direct::start("halfdead", MAX_MEMORY, "MDIRECT", multi_actor()).await;
    let provider = &mut direct.provider;
    // The worker's writes to us fail from now on.
    provider.stream.shutdown(std::net::Shutdown::Read).unwrap();
    provider.call(1, "MDIRECT", "e", b"x".to_vec()).await;
    let deadline = Instant::now() + SOON;
    let mut id = 2;
    while provider.send(FromProvider::CancelCall { id }).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the worker kept the channel open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        id += 1;
    }
    assert_eq!(
        direct.host.invoke("MDIRECT", "e", b"fine").await.unwrap(),
        b"fine"
    );
    direct.finish().await;
}
