//! `hop`: the actor-to-provider hop (a keyvalue get through the provider)
//! against NATS request/reply, alone in a call and back to back.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::{
    args::Settings,
    baselines::nats::NatsEcho,
    harness::{kv_component, kv_get_payload, Client, Host, Work},
    report::{row, Row},
    stats::{percentile, us},
};

/// One call through the host, timed.
async fn timed_call(
    client: &mut Client,
    key: &str,
    operation: &str,
    payload: &[u8],
) -> Result<Duration> {
    let t = Instant::now();
    client.call(key, operation, payload).await?;
    Ok(t.elapsed())
}

/// Gets per call in the back-to-back hop figure.
const GETS_BACK_TO_BACK: u8 = 50;

/// Runs one step of the NATS baseline. On an error the baseline stops:
/// `nats` becomes `None` and `why` says what happened, for the rows.
fn nats_step<T>(
    nats: &mut Option<NatsEcho>,
    why: &mut String,
    step: impl FnOnce(&mut NatsEcho) -> Result<T>,
) -> Option<T> {
    match step(nats.as_mut()?) {
        Ok(value) => Some(value),
        Err(e) => {
            eprintln!("bench: the NATS baseline failed: {e:#}");
            *why = format!("NATS: {e:#}");
            *nats = None;
            None
        }
    }
}

/// The actor-to-provider hop, against NATS request/reply, two ways. In
/// both, an untimed call before each timed one wakes `host-core` and the
/// worker, so the two calls whose difference is the hop start alike (the
/// order of timed calls alone moved the figures by half, either way).
/// - alone: one get in a call, less the same call without it, against one
///   NATS request made between such calls. The provider and the NATS
///   server have each idled about 0.4 ms before.
/// - back to back: the cost per get of a call making 51 gets one after
///   another, less the same call making 1 (so both pay the first get's
///   wake-up alike), divided by 50; against 50 NATS requests one after
///   another, after one untimed request, timed together, divided by 50.
///
/// On this VM a process woken after idling pays far more than one that
/// has just run, for the NATS server as much as for us (BENCHMARKS.md).
pub(crate) async fn run(work: &Work, s: &Settings) -> Result<Vec<Row>> {
    let (host, _) = Host::start(work, "hop")?;
    let mut client = host.client().await?;
    let (key, _) = kv_component(work, &mut client, "bench-component", 4).await?;
    let get = kv_get_payload()?;
    let echo = rmp_serde::to_vec_named(&serde_json::json!({"x": 1}))?;
    let (mut nats, mut no_nats) = match NatsEcho::start() {
        Ok(nats) => (Some(nats), String::new()),
        Err(e) => {
            eprintln!("bench: no NATS baseline: {e:#}");
            (None, format!("NATS: {e:#}"))
        }
    };
    let n = (s.calls / 10).max(50);
    let [mut with_get, mut without, mut repeated, mut repeated_once, mut nats_alone, mut nats_repeated] =
        std::array::from_fn(|_| Vec::with_capacity(n));
    let gets = u32::from(GETS_BACK_TO_BACK);
    // The two ways run in alternating rounds, each its own loop, so that
    // neither's idle spells change the other's. The NATS calls block this
    // runtime thread; nothing else runs on the runtime meanwhile.
    let per_round = n.div_ceil(s.rounds);
    for _ in 0..s.rounds {
        for i in 0..per_round + 20 {
            let _wake = timed_call(&mut client, &key, "Echo", &echo).await?;
            let a = timed_call(&mut client, &key, "Forward", &get).await?;
            let b = timed_call(&mut client, &key, "Echo", &echo).await?;
            let c = nats_step(&mut nats, &mut no_nats, NatsEcho::round_trip);
            if i >= 20 {
                with_get.push(a);
                without.push(b);
                nats_alone.extend(c);
            }
        }
        // Fewer calls, each with many gets.
        for i in 0..per_round.div_ceil(5) + 4 {
            let _wake = timed_call(&mut client, &key, "KvRepeat", &[1]).await?;
            let a = timed_call(&mut client, &key, "KvRepeat", &[GETS_BACK_TO_BACK + 1]).await?;
            let _wake = timed_call(&mut client, &key, "KvRepeat", &[1]).await?;
            let b = timed_call(&mut client, &key, "KvRepeat", &[1]).await?;
            let c = nats_step(&mut nats, &mut no_nats, |nats| {
                nats.round_trip()?;
                nats.round_trips(gets)
            });
            if i >= 4 {
                repeated.push(a);
                repeated_once.push(b);
                nats_repeated.extend(c);
            }
        }
    }
    let p50 = |mut v: Vec<Duration>| {
        v.sort();
        percentile(&v, 0.5)
    };
    // A baseline that failed part-way is not reported at all.
    let nats_ok = nats.take().is_some();
    let nats_p50 = |v: Vec<Duration>| (nats_ok && !v.is_empty()).then(|| p50(v));
    let with_get = p50(with_get);
    let without = p50(without);
    let hop_alone = with_get.saturating_sub(without);
    let hop_back_to_back = p50(repeated).saturating_sub(p50(repeated_once)) / gets;
    let nats_alone = nats_p50(nats_alone);
    let nats_back_to_back = nats_p50(nats_repeated).map(|all| all / gets);
    let mut rows = vec![row(
        "call with a keyvalue get p50",
        us(with_get),
        "us",
        "same call without the get p50",
        us(without),
        "",
        None,
    )];
    for (name, hop, baseline_name, baseline) in [
        (
            "actor->provider hop p50 (keyvalue get), alone in a call".to_string(),
            hop_alone,
            "NATS request/reply p50, alone between calls".to_string(),
            nats_alone,
        ),
        (
            format!("actor->provider hop p50 (keyvalue get), {GETS_BACK_TO_BACK} back to back"),
            hop_back_to_back,
            format!("NATS request/reply p50, {GETS_BACK_TO_BACK} back to back"),
            nats_back_to_back,
        ),
    ] {
        rows.push(match baseline {
            Some(nats) => row(
                &name,
                us(hop),
                "us",
                &baseline_name,
                us(nats),
                "<= 0.3x",
                Some(us(hop) <= 0.3 * us(nats)),
            ),
            None => row(&name, us(hop), "us", &no_nats, 0.0, "<= 0.3x", None),
        });
    }
    Ok(rows)
}
