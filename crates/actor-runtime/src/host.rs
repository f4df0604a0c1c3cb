//! What an actor can call out to: the builtins answered in this process
//! (logging, numbergen) and everything else, forwarded to `host-core`.

use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use serde::Deserialize;
use wire::calls::{CallTable, CancelOnDrop};
use wire::outbox::Outbox;
use wire::worker::{CallId, FromWorker, LogLevel};
use wire::{Bytes, CallError, CallResult};

use crate::direct::Routes;

pub(crate) const LOGGING: &str = "wasmcloud:builtin:logging";
pub(crate) const NUMBERGEN: &str = "wasmcloud:builtin:numbergen";

/// An actor's log line is cut to this many bytes (at a character
/// boundary), and the cut is marked.
pub(crate) const MAX_LOG_LINE: usize = 16 * 1024;

/// The worker's side of the channel to `host-core`: every outgoing frame goes
/// through `tx`; host calls wait in `calls` until their `HostCallResult`
/// arrives.
pub(crate) struct Outbound {
    tx: Outbox<FromWorker>,
    /// Providers' direct channels, tried before `host-core` for linked calls.
    routes: Arc<Routes>,
    calls: CallTable<Bytes>,
}

impl Outbound {
    pub(crate) fn new(tx: Outbox<FromWorker>, routes: Arc<Routes>) -> Self {
        Self {
            tx,
            routes,
            calls: CallTable::default(),
        }
    }

    /// Sends a reply; one too large for the channel is answered with the
    /// error instead. A closed channel means the host is gone, and then
    /// nobody is left to tell.
    pub(crate) async fn reply(&self, id: CallId, result: CallResult<Bytes>) {
        let _ = self.tx.send_reply(FromWorker::Reply { id, result }).await;
    }

    /// Sends an actor's log line, made by [`log_line`].
    pub(crate) async fn log(&self, actor: &str, level: LogLevel, text: String) {
        let _ = self
            .tx
            .send(FromWorker::Log {
                actor: actor.to_owned(),
                level,
                text,
            })
            .await;
    }

    /// Routes the answer to a host call to whoever waits for it. An answer
    /// for a call that already gave up (deadline) is dropped.
    pub(crate) fn complete(&self, id: CallId, result: CallResult<Bytes>) {
        if !self.calls.complete(id, result) {
            tracing::debug!(id, "answer to a host call nobody waits for");
        }
    }

    /// A provider's call (on its direct channel) to an actor this worker
    /// does not run, handed to the host to route.
    pub(crate) async fn forward_provider_call(
        &self,
        provider_key: &str,
        link_name: &str,
        contract_id: &str,
        actor: &str,
        operation: String,
        payload: Vec<u8>,
    ) -> CallResult<Vec<u8>> {
        let pending = self.calls.register()?;
        let id = pending.id();
        let msg = FromWorker::ForwardCall {
            id,
            provider_key: provider_key.to_owned(),
            link_name: link_name.to_owned(),
            contract_id: contract_id.to_owned(),
            actor: actor.to_owned(),
            operation,
            payload: Bytes::from(payload),
        };
        self.tx
            .send(msg)
            .await
            .map_err(|e| e.into_call_error("request"))?;
        let cancel = CancelOnDrop::new(&self.tx, FromWorker::CancelHostCall { id });
        let result = pending.wait().await;
        cancel.disarm();
        result.map(Bytes::into_vec)
    }

    async fn forward(
        &self,
        actor: &str,
        binding: String,
        namespace: String,
        operation: String,
        payload: Vec<u8>,
        deadline: Instant,
    ) -> CallResult<Vec<u8>> {
        wire::check_payload("request", payload.len())?;
        let pending = self.calls.register()?;
        let id = pending.id();
        let timeout_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        let msg = FromWorker::HostCall {
            id,
            actor: actor.to_owned(),
            binding,
            namespace,
            operation,
            payload: Bytes::from(payload),
            timeout_ms,
        };
        self.tx
            .send(msg)
            .await
            .map_err(|e| e.into_call_error("request"))?;
        // If the invocation ends first (its deadline), the host is told to
        // drop the work.
        let cancel = CancelOnDrop::new(&self.tx, FromWorker::CancelHostCall { id });
        let result = pending.wait().await;
        cancel.disarm();
        result.map(Bytes::into_vec)
    }
}

/// An actor's log line from its bytes (invalid UTF-8 replaced), cut to
/// [`MAX_LOG_LINE`] bytes at a character boundary with a marker saying how
/// long it was. Only what is kept is copied: an actor may log its whole
/// memory.
pub(crate) fn log_line(bytes: &[u8]) -> String {
    if bytes.len() <= MAX_LOG_LINE {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    // Back off over continuation bytes (10xxxxxx) so that no character is
    // split; a UTF-8 character has at most three of them.
    let mut end = MAX_LOG_LINE;
    while end > MAX_LOG_LINE - 3 && bytes[end] & 0xc0 == 0x80 {
        end -= 1;
    }
    let mut text = String::from_utf8_lossy(&bytes[..end]).into_owned();
    text.push_str(&format!(" [cut: {} bytes in all]", bytes.len()));
    text
}

/// Everything an instance of one actor version needs to call out.
pub(crate) struct ActorCtx {
    pub(crate) key: String,
    caps: Vec<String>,
    pub(crate) outbound: Arc<Outbound>,
}

impl ActorCtx {
    pub(crate) fn new(key: String, caps: Vec<String>, outbound: Arc<Outbound>) -> Self {
        Self {
            key,
            caps,
            outbound,
        }
    }

    /// Whether the actor's claims name `contract` in their caps.
    pub(crate) fn has_cap(&self, contract: &str) -> bool {
        self.caps.iter().any(|c| c == contract)
    }

    /// `__host_call` and the component's `host.call`: builtins are answered
    /// here (if the actor's claims allow them), the rest goes to `host-core`,
    /// which checks caps for providers and routes actor-to-actor calls.
    /// `deadline` is the calling invocation's.
    pub(crate) async fn call(
        &self,
        binding: String,
        namespace: String,
        operation: String,
        payload: Vec<u8>,
        deadline: Instant,
    ) -> CallResult<Vec<u8>> {
        if namespace == LOGGING || namespace == NUMBERGEN {
            if !self.caps.contains(&namespace) {
                return Err(CallError::denied(format!(
                    "actor {} is not allowed to call {namespace}: the contract is not in its claims' caps",
                    self.key
                )));
            }
            return if namespace == LOGGING {
                self.logging(&operation, &payload).await
            } else {
                numbergen(&operation, &payload)
            };
        }
        if self.has_cap(&namespace) {
            let link_name = if binding.is_empty() {
                "default"
            } else {
                &binding
            };
            if let Some(channel) = self
                .outbound
                .routes
                .channel(&self.key, &namespace, link_name)
            {
                return channel.invoke(&self.key, operation, payload).await;
            }
        }
        self.outbound
            .forward(&self.key, binding, namespace, operation, payload, deadline)
            .await
    }

    async fn logging(&self, operation: &str, payload: &[u8]) -> CallResult<Vec<u8>> {
        if method(operation, "Logging") != "WriteLog" {
            return Err(CallError::not_found(format!(
                "{LOGGING} has no operation {operation}"
            )));
        }
        let entry: LogEntry = wire::decode(payload)
            .map_err(|e| CallError::actor_fault(format!("{LOGGING}: malformed LogEntry: {e}")))?;
        let (level, text) = (log_level(entry.level), log_line(entry.text.as_bytes()));
        self.outbound.log(&self.key, level, text).await;
        Ok(Vec::new())
    }
}

/// `wasmcloud-interface-logging`'s `LogEntry`, borrowed from the payload.
#[derive(Deserialize)]
struct LogEntry<'a> {
    level: &'a str,
    text: &'a str,
}

/// `wasmcloud-interface-numbergen`'s `RangeLimit` (inclusive bounds).
#[derive(Deserialize)]
struct RangeLimit {
    min: u32,
    max: u32,
}

fn log_level(level: &str) -> LogLevel {
    match level.to_ascii_lowercase().as_str() {
        "error" | "critical" => LogLevel::Error,
        "warn" | "warning" => LogLevel::Warn,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => LogLevel::Info,
    }
}

/// wasmbus-rpc senders name operations `Service.Method`; accept the bare
/// method too, as the 0.8x hosts did.
fn method<'a>(operation: &'a str, service: &str) -> &'a str {
    operation
        .strip_prefix(service)
        .and_then(|m| m.strip_prefix('.'))
        .unwrap_or(operation)
}

/// Largest `NumberGen.RandomBytes` answer; a guest asking for more gets an error.
const MAX_RANDOM_BYTES: u32 = 1024 * 1024;

fn numbergen(operation: &str, payload: &[u8]) -> CallResult<Vec<u8>> {
    let mut rng = rand::thread_rng();
    let encoded = match method(operation, "NumberGen") {
        "GenerateGuid" => encode(&uuid_v4(&mut rng)),
        "Random32" => encode(&rng.gen::<u32>()),
        "RandomInRange" => {
            let RangeLimit { min, max } = wire::decode(payload).map_err(|e| {
                CallError::actor_fault(format!("{NUMBERGEN}: malformed RangeLimit: {e}"))
            })?;
            let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
            encode(&rng.gen_range(lo..=hi))
        }
        "RandomBytes" => {
            let n: u32 = wire::decode(payload).map_err(|e| {
                CallError::actor_fault(format!("{NUMBERGEN}: malformed byte count: {e}"))
            })?;
            if n > MAX_RANDOM_BYTES {
                return Err(CallError::too_large(format!(
                    "{NUMBERGEN}: at most {MAX_RANDOM_BYTES} random bytes per call"
                )));
            }
            let mut bytes = vec![0u8; n as usize];
            rng.fill(bytes.as_mut_slice());
            encode(&Bytes::from(bytes))
        }
        _ => {
            return Err(CallError::not_found(format!(
                "{NUMBERGEN} has no operation {operation}"
            )))
        }
    };
    encoded
        .map_err(|e| CallError::internal(format!("{NUMBERGEN}: could not encode the answer: {e}")))
}

fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// A random (version 4) UUID, lower-case and hyphenated.
fn uuid_v4(rng: &mut impl Rng) -> String {
    let mut b: [u8; 16] = rng.gen();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_log_lines_are_cut_at_a_character_boundary_and_marked() {
        assert_eq!(log_line(b"short"), "short");
        assert_eq!(log_line(b"bad \xff byte"), "bad \u{fffd} byte");
        for long in [
            "é".repeat(MAX_LOG_LINE),
            format!("x{}", "€".repeat(MAX_LOG_LINE)),
        ] {
            let cut = log_line(long.as_bytes());
            let (kept, marker) = cut.split_once(" [cut: ").unwrap();
            assert!(long.starts_with(kept), "cut inside a character");
            assert!(kept.len() <= MAX_LOG_LINE && kept.len() > MAX_LOG_LINE - 4);
            assert_eq!(marker, format!("{} bytes in all]", long.len()));
        }
    }

    #[test]
    fn uuid_shape() {
        let u = uuid_v4(&mut rand::thread_rng());
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn numbergen_range_and_methods() {
        #[derive(serde::Serialize)]
        struct Range {
            min: u32,
            max: u32,
        }
        let arg = rmp_serde::to_vec_named(&Range { min: 5, max: 7 }).unwrap();
        for _ in 0..50 {
            let v: u32 =
                rmp_serde::from_slice(&numbergen("NumberGen.RandomInRange", &arg).unwrap())
                    .unwrap();
            assert!((5..=7).contains(&v));
        }
        assert!(numbergen("RandomInRange", &arg).is_ok());
        assert!(numbergen("NumberGen.Nope", &[]).is_err());
        let g: String =
            rmp_serde::from_slice(&numbergen("NumberGen.GenerateGuid", &[]).unwrap()).unwrap();
        assert_eq!(g.len(), 36);
    }
}
