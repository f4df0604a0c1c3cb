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

/// The actors' recent events, parsed.
fn events(host: &TestHost) -> Vec<serde_json::Value> {
    host.ctl_ok(&["events"])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn has_actor(host: &TestHost, key: &str) -> bool {
    host.inventory()["actors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["key"] == key)
}

/// An actor whose call alias was a contract id received the other
/// actors' calls to that contract whenever the direct path was down (the
/// host looked up actors before contracts); `update-actor` skipped the
/// alias uniqueness check. Aliases are now plain names, unique on start
/// and on update.
#[test]
fn call_aliases_that_could_take_other_calls_are_refused() {
    let host = TestHost::start();
    for (alias, why) in [
        ("wasmcloud:keyvalue", "looks like a contract id"),
        ("wasmcloud:builtin:logging", "looks like a contract id"),
        ("bad alias", "has the character"),
    ] {
        let (path, _) = host.sign("echo.wasm", "thief", &["--call-alias", alias]);
        let err = host.ctl_err(&["start-actor", path.to_str().unwrap()]);
        assert!(err.contains(why), "{alias}: {err}");
    }
    let (first, _) = host.sign("echo.wasm", "first", &["--call-alias", "shared"]);
    host.ctl_ok(&["start-actor", first.to_str().unwrap()]);
    let (second, key) = host.sign("echo.wasm", "second", &["--rev", "1"]);
    host.ctl_ok(&["start-actor", second.to_str().unwrap()]);
    let (second_v2, _) = host.sign(
        "echo.wasm",
        "second",
        &["--rev", "2", "--call-alias", "shared"],
    );
    let err = host.ctl_err(&["update-actor", &key, second_v2.to_str().unwrap()]);
    assert!(err.contains("already used by actor"), "{err}");
    // Refused whole: the running revision is the first one.
    let summary = host.inventory()["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key.as_str())
        .cloned()
        .unwrap();
    assert_eq!(summary["rev"], 1, "{summary}");
}

/// `link put` checked neither the provider's contract nor the actor's caps.
#[test]
fn links_to_a_provider_of_another_contract_or_outside_the_caps_are_refused() {
    let host = TestHost::start();
    let (par, provider) = host.par("tester", "wasmcloud:test");
    host.ctl_ok(&["start-provider", par.to_str().unwrap()]);
    let with_caps = host.start_actor(
        "echo.wasm",
        "with-caps",
        &["--cap", "wasmcloud:test", "--cap", "wasmcloud:keyvalue"],
    );
    let err = host.ctl_err(&["link", "put", &with_caps, &provider, "wasmcloud:keyvalue"]);
    assert!(
        err.contains("implements wasmcloud:test, not wasmcloud:keyvalue"),
        "{err}"
    );
    let without = host.start_actor("echo.wasm", "without-caps", &[]);
    let err = host.ctl_err(&["link", "put", &without, &provider, "wasmcloud:test"]);
    assert!(err.contains("not in its claims' caps"), "{err}");
    let err = host.ctl_err(&["link", "put", &with_caps, &provider, "nocolon"]);
    assert!(err.contains("is not a contract id"), "{err}");
    // The right link still goes in.
    host.ctl_ok(&["link", "put", &with_caps, &provider, "wasmcloud:test"]);
    assert!(host.ctl_ok(&["link", "ls"]).contains(&with_caps));
}

/// Claims were checked for expiry when an actor started, never again: a
/// worker restart restored an actor whose claims had expired meanwhile.
#[test]
fn claims_that_expired_are_not_restored() {
    let host = TestHost::start();
    let echo = host.start_actor("echo.wasm", "long-lived", &[]);
    let brief = host.start_actor("echo.wasm", "brief", &["--expires-in-secs", "2"]);
    std::thread::sleep(Duration::from_millis(3100));
    let worker = host.worker_pid().expect("worker pid");
    kill(worker, nix::sys::signal::Signal::SIGKILL);
    assert!(
        eventually(Duration::from_secs(10), || host
            .worker_pid()
            .is_some_and(|p| p != worker)),
        "the worker was restarted"
    );
    assert!(!has_actor(&host, &brief), "the expired actor is gone");
    assert!(has_actor(&host, &echo));
    assert_eq!(host.ctl_ok(&["call", &echo, "Echo.Echo", "1"]), "1");
    let stopped = events(&host).into_iter().any(|e| {
        e["type"] == "com.wasmcloud.lattice.actor_stopped"
            && e["data"]["public_key"] == brief.as_str()
            && e["data"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("expired"))
    });
    assert!(stopped, "an actor_stopped event says why");
}

fn kill(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
}

/// Supervision per actor, as OTP would: a worker that dies of a fault
/// while an actor's calls are in flight counts against that actor; one
/// that keeps doing it is stopped, with an event naming it, and the others
/// keep serving. The worker's own restart intensity is kept for crashes
/// no actor explains.
#[test]
fn an_actor_that_keeps_crashing_the_worker_is_stopped_and_the_others_serve() {
    let host = TestHost::start_with(&["--invocation-timeout-ms", "10000"]);
    let echo = host.start_actor("echo.wasm", "bystander", &[]);
    let culprit = host.start_actor("loop.wasm", "culprit", &[]);
    for round in 0..4 {
        let worker = host.worker_pid().expect("worker pid");
        let call = call_later(&host, &culprit, "spin");
        // The call is in flight once the worker runs it.
        std::thread::sleep(Duration::from_millis(500));
        // A crash of the worker's own, not a kill from outside. (Not
        // SIGSEGV: sent while wasm runs, wasmtime takes it for a trap of
        // the guest's.)
        kill(worker, nix::sys::signal::Signal::SIGABRT);
        let (output, _) = call.join().unwrap();
        assert!(!output.status.success(), "round {round}: the call failed");
        assert!(
            eventually(Duration::from_secs(10), || host
                .worker_pid()
                .is_some_and(|p| p != worker)),
            "round {round}: the worker was restarted"
        );
        if round < 3 {
            assert!(has_actor(&host, &culprit), "round {round}: not yet stopped");
        }
    }
    assert!(!has_actor(&host, &culprit), "the culprit is stopped");
    let failed = events(&host).into_iter().any(|e| {
        e["type"] == "dev.wasmhost.actor_failed" && e["data"]["public_key"] == culprit.as_str()
    });
    assert!(failed, "an actor_failed event names it");
    assert!(
        host.log().contains(culprit.as_str()) && host.log().contains("actor stopped"),
        "a log line names it"
    );
    let process = worker_process(&host);
    assert_eq!(process["state"], "running", "{process}");
    assert_eq!(host.ctl_ok(&["call", &echo, "Echo.Echo", "7"]), "7");
}

/// A peer that connected to the control socket and said nothing held a
/// task forever. It is let go after the handshake timeout, and the host
/// serves other clients meanwhile.
#[test]
fn a_silent_control_peer_is_let_go() {
    use std::io::Read;
    let host = TestHost::start();
    let mut silent =
        std::os::unix::net::UnixStream::connect(host.state_dir().join("host.sock")).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    host.ctl_ok(&["inventory"]);
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = silent.read(&mut buf);
    assert!(
        matches!(read, Ok(0)) || read.is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "the host closed the connection"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "within the handshake timeout: {:?}",
        started.elapsed()
    );
}

/// `--invocation-timeout-ms`, `--max-memory-mb` and a zero watchdog
/// period overflowed or panicked; they are refused with the reason.
#[test]
fn run_refuses_settings_it_cannot_keep() {
    let dir = temp_dir("bounds");
    let state = dir.join("state");
    let run_with = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(bin("host-core"));
        command.arg("run").arg("--state-dir").arg(&state).args(args);
        command.envs(env.iter().copied());
        run(command)
    };
    for (args, why) in [
        (&["--invocation-timeout-ms", "0"][..], "not in 1..=3600000"),
        (
            &["--invocation-timeout-ms", "18446744073709551615"][..],
            "not in 1..=3600000",
        ),
        (
            &["--max-memory-mb", "18446744073709551615"][..],
            "not in 1..=65536",
        ),
        (&["--max-memory-mb", "0"][..], "not in 1..=65536"),
        (&["--max-instances", "0"][..], "not in 1..=100000"),
        // The lattice's flags are checked before anything starts.
        (
            &["--nats", "http://127.0.0.1:4222"][..],
            "is not a NATS URL",
        ),
        (
            &["--nats", "nats://127.0.0.1:4222", "--label", "zone"][..],
            "is not KEY=VALUE",
        ),
        (
            &[
                "--nats",
                "nats://127.0.0.1:4222",
                "--cluster-issuers",
                "ABC",
            ][..],
            "is not a cluster public key",
        ),
    ] {
        let output = run_with(args, &[]);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr(&output).contains(why),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
    }
    // systemd names the watchdog's pid; `exec` keeps the shell's.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" run --state-dir \"$1\"")
        .arg(bin("host-core"))
        .arg(&state)
        .env("WATCHDOG_USEC", "1");
    let output = run(command);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("WATCHDOG_USEC=1 is shorter than"),
        "{}",
        stderr(&output)
    );
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
}
