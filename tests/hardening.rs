//! Hardening through the real host: one bad actor cannot hurt another.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// The worker as `inventory` shows it.
fn worker_process(host: &TestHost) -> serde_json::Value {
    host.inventory()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "actor-runtime")
        .cloned()
        .expect("the worker is in the inventory")
}

/// `host-core ctl call KEY OPERATION` on a thread of its own: the output
/// and how long it took.
fn call_later(
    host: &TestHost,
    key: &str,
    operation: &str,
) -> std::thread::JoinHandle<(std::process::Output, Duration)> {
    let (dir, key, operation) = (host.state_dir(), key.to_owned(), operation.to_owned());
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut command = Command::new(bin("host-core"));
        command.arg("ctl").arg("--state-dir").arg(&dir);
        command.args(["call", &key, &operation]);
        (run(command), started.elapsed())
    })
}

/// An actor that hands out its whole memory (64 MiB, the default cap) as
/// a reply, a log line or a host call's payload once made a frame over the
/// wire's cap: the worker's writer died and the worker with it, and after
/// eleven such calls within a minute the worker was marked failed, every
/// actor down. Now each of those calls fails alone.
#[test]
fn eleven_whole_memory_messages_leave_the_worker_running() {
    let host = TestHost::start_with(&["--max-memory-mb", "64", "--invocation-timeout-ms", "5000"]);
    let echo = host.start_actor("echo.wasm", "echo", &[]);
    let big = host.start_actor("oversized.wasm", "oversized", &[]);
    let worker = host.worker_pid().expect("worker pid");
    // The fixture picks by the operation's first letter.
    for (i, operation) in ["reply", "log", "call"].iter().cycle().take(11).enumerate() {
        let operation = *operation;
        if operation == "log" {
            host.ctl_ok(&["call", &big, operation]);
            continue;
        }
        let err = host.ctl_err(&["call", &big, operation]);
        let what = if operation == "reply" {
            "reply of "
        } else {
            "request of "
        };
        assert!(
            err.contains(what) && err.contains(" bytes exceeds the 64 MiB frame limit"),
            "call {i} ({operation}): {err}"
        );
    }
    let process = worker_process(&host);
    assert_eq!(process["restarts"], 0, "{process}");
    assert_eq!(process["state"], "running", "{process}");
    assert_eq!(host.worker_pid(), Some(worker));
    assert_eq!(host.ctl_ok(&["call", &echo, "Echo.Echo", "5"]), "5");
    assert!(
        host.log()
            .contains(&format!(" [cut: {} bytes in all]", 64 * 1024 * 1024)),
        "the log line arrived cut:\n{}",
        host.log()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// With `--max-queued-calls 2` and an actor of one instance that loops, of
/// six calls at once one runs, two wait and three are answered "busy" at
/// once; the two that waited end by their own deadline, counted from their
/// arrival.
#[test]
fn calls_past_the_queue_bound_are_busy_at_once_through_the_host() {
    const DEADLINE: Duration = Duration::from_millis(4000);
    let host = TestHost::start_with(&[
        "--max-queued-calls",
        "2",
        "--invocation-timeout-ms",
        &DEADLINE.as_millis().to_string(),
    ]);
    let looping = host.start_actor("loop.wasm", "loop", &[]);
    let echo = host.start_actor("echo.wasm", "echo", &[]);
    let calls: Vec<_> = (0..6)
        .map(|_| call_later(&host, &looping, "Loop.Forever"))
        .collect();
    let (mut busy, mut late) = (0, 0);
    for call in calls {
        let (output, took) = call.join().unwrap();
        assert!(!output.status.success(), "{}", stdout(&output));
        let err = stderr(&output);
        if err.contains("is busy: 2 calls are waiting for its 1 instances") {
            busy += 1;
            assert!(took < Duration::from_secs(2), "busy after {took:?}");
        } else {
            assert!(err.contains("deadline"), "{err}");
            assert!(
                took < DEADLINE + Duration::from_millis(800),
                "answered after {took:?}: {err}"
            );
            late += 1;
        }
    }
    assert_eq!((busy, late), (3, 3));
    assert_eq!(host.ctl_ok(&["call", &echo, "Echo.Echo", "1"]), "1");
    assert_eq!(worker_process(&host)["restarts"], 0);
}
