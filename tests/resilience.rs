//! Crash resilience: supervision, events, and the randomized kill test.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::support::*;

const KV: &str = "wasmcloud:keyvalue";

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn process_pid(host: &TestHost, name: &str) -> Option<i32> {
    host.inventory()["processes"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)?["pid"]
        .as_i64()
        .map(|p| p as i32)
}

fn events(host: &TestHost) -> Vec<serde_json::Value> {
    host.ctl_ok(&["events"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn has_event(host: &TestHost, kind: &str, field: &str, value: &str) -> bool {
    events(host)
        .iter()
        .any(|e| e["type"] == kind && e["data"][field] == value)
}

fn forward(target: &str, operation: &str) -> String {
    serde_json::json!({"target": target, "operation": operation, "payload": []}).to_string()
}

#[test]
fn events_are_cloudevents_and_can_be_followed() {
    let host = TestHost::start();
    let key = host.start_actor("echo.wasm", "echo", &[]);
    let all = events(&host);
    let started = all
        .iter()
        .find(|e| e["type"] == "com.wasmcloud.lattice.actor_started")
        .expect("actor_started event");
    assert_eq!(started["specversion"], "1.0");
    assert_eq!(started["data"]["public_key"], key.as_str());
    assert!(started["source"].as_str().unwrap().starts_with('N'));
    assert!(started["time"].as_str().unwrap().ends_with('Z'));

    // --follow prints new events as they happen.
    let mut follower = std::process::Command::new(bin("host-core"))
        .arg("ctl")
        .arg("--state-dir")
        .arg(host.state_dir())
        .args(["events", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    host.ctl_ok(&["scale-actor", &key, "2"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen = line.contains("com.wasmcloud.lattice.actor_scaled");
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(seen, "actor_scaled did not reach the follower");
}

#[test]
fn launcher_kill_brings_providers_back_with_their_links() {
    let host = TestHost::start();
    let component = host.start_actor("echo_component.wasm", "component", &["--cap", KV]);
    let (par, key) = host.par("fixture", KV);
    host.ctl_ok(&[
        "start-provider",
        par.to_str().unwrap(),
        "--config",
        r#"{"fork_grandchild":true,"escape_group":true}"#,
    ]);
    host.ctl_ok(&["link", "put", &component, &key, KV, "x=1"]);
    let launcher = process_pid(&host, "provider-launcher").unwrap();
    let provider = host.provider(&key, "default").unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    let old_tree = {
        let mut t = vec![provider];
        t.extend(descendants(provider));
        t
    };
    assert!(
        old_tree.len() >= 3,
        "the grandchildren are missing: {old_tree:?}"
    );
    kill9(launcher);
    // The old provider and its grandchild die with the launcher.
    assert!(
        eventually(Duration::from_secs(3), || old_tree
            .iter()
            .all(|p| !process_alive(*p))),
        "left behind: {:?}",
        old_tree
            .iter()
            .filter(|p| process_alive(**p))
            .collect::<Vec<_>>()
    );
    assert!(eventually(Duration::from_secs(15), || {
        host.provider(&key, "default")
            .is_some_and(|p| p["state"] == "running" && p["pid"].as_i64() != Some(provider as i64))
    }));
    assert_ne!(process_pid(&host, "provider-launcher"), Some(launcher));
    let links = host.ctl_ok(&["call", &component, "Forward", &forward(KV, "Echo.Links")]);
    assert!(
        links.contains(&component),
        "links not delivered again: {links}"
    );
    assert!(has_event(
        &host,
        "dev.wasmhost.process_exited",
        "name",
        "provider-launcher"
    ));
    assert!(has_event(
        &host,
        "dev.wasmhost.process_restarted",
        "name",
        "provider-launcher"
    ));
}

#[test]
fn graceful_stop_sends_providers_their_shutdown_first() {
    for signal in [false, true] {
        let mut host = TestHost::start();
        let (par, key) = host.par("fixture", KV);
        host.ctl_ok(&["start-provider", par.to_str().unwrap()]);
        if signal {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(host.pid() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
        } else {
            host.ctl_ok(&["stop-host"]);
        }
        let status = host.wait_exit(Duration::from_secs(15));
        assert!(status.success(), "{status}");
        let log = host.log();
        let shutdown = log
            .lines()
            .find(|l| l.contains(&key) && l.contains("shutting down"))
            .unwrap_or_else(|| panic!("no shutdown message reached the provider:\n{log}"));
        assert!(!shutdown.is_empty());
    }
}

#[test]
fn ctrl_c_to_the_whole_group_stops_in_order_and_promptly() {
    let mut host = TestHost::start();
    host.start_actor("echo.wasm", "echo", &[]);
    let (par, key) = host.par("fixture", KV);
    host.ctl_ok(&["start-provider", par.to_str().unwrap()]);
    let host_pid = host.pid() as i32;
    let provider = eventually(Duration::from_secs(10), || {
        host.inventory()["providers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["pid"].as_i64().is_some()))
    });
    assert!(provider, "the provider did not start");
    let before = all_descendants(host_pid);
    assert!(
        before.len() >= 3,
        "worker, launcher and provider: {before:?}"
    );

    // A terminal's Ctrl-C: SIGINT to every process of the foreground group
    // (host-core, the worker and the launcher; providers have their own).
    let started = Instant::now();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(host_pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = host.wait_exit(Duration::from_secs(15));
    let took = started.elapsed();
    assert!(status.success(), "{status}\n{}", host.log());
    assert!(
        took < Duration::from_secs(3),
        "the host took {took:?} to stop:\n{}",
        host.log()
    );
    let log = host.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&key) && l.contains("shutting down")),
        "the provider was not stopped in order:\n{log}"
    );
    for pid in before {
        assert!(
            eventually(Duration::from_secs(2), || !process_alive(pid)),
            "process {pid} outlived the host"
        );
    }
}

/// CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn crash_looping_provider_backs_off_and_fails_while_the_host_serves() {
    let host = TestHost::start();
    let echo = host.start_actor("echo.wasm", "echo", &[]);
    let marker = host.dir.join("crash-now");
    let (par, key) = host.par("fixture", KV);
    let config = serde_json::json!({"crash_if_exists": marker}).to_string();
    host.ctl_ok(&["start-provider", par.to_str().unwrap(), "--config", &config]);
    std::fs::write(&marker, b"").unwrap();
    let pid = host.provider(&key, "default").unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    let host_cpu_before = cpu_ticks(host.pid() as i32);
    let started = Instant::now();
    kill9(pid);
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(30) {
        assert_eq!(host.ctl_ok(&["call", &echo, "Echo.Echo", "1"]), "1");
        served += 1;
        if host
            .provider(&key, "default")
            .is_some_and(|p| p["state"] == "failed")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed();
    let provider = host.provider(&key, "default").unwrap();
    assert_eq!(provider["state"], "failed", "{provider}");
    assert!(
        provider["health"]
            .as_str()
            .unwrap()
            .contains("restarts within"),
        "{provider}"
    );
    // Backoff, not a hot loop: 5 restarts take more than a second or two.
    assert!(
        elapsed > Duration::from_millis(1500),
        "failed after only {elapsed:?}"
    );
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let cpu = (cpu_ticks(host.pid() as i32) - host_cpu_before) as f64 / ticks_per_sec;
    // The host's own CPU stays low while the provider loops (the CLI calls
    // above are separate processes).
    assert!(
        cpu < elapsed.as_secs_f64() * 0.25,
        "host-core used {cpu:.2}s CPU in {elapsed:?}"
    );
    assert!(served > 3);
    assert!(has_event(
        &host,
        "dev.wasmhost.provider_failed",
        "public_key",
        &key
    ));
    assert!(has_event(
        &host,
        "dev.wasmhost.provider_exited",
        "public_key",
        &key
    ));
    // Still serving afterwards, and the failed provider can be stopped.
    assert_eq!(host.ctl_ok(&["call", &echo, "Echo.Echo", "2"]), "2");
    host.ctl_ok(&["stop-provider", &key]);
}

// ---------------------------------------------------------------- kill test

/// A small deterministic PRNG (xorshift64*), so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

enum Outcome {
    Answered(u16, String),
    Failed,
    Hung,
}

/// One request; a response that does not come within `deadline` has hung.
fn request(port: u16, path: &str, deadline: Duration) -> Outcome {
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    ) else {
        return Outcome::Failed;
    };
    let _ = stream.set_read_timeout(Some(deadline));
    let _ = stream.set_write_timeout(Some(deadline));
    let sent = stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    if sent.is_err() {
        return Outcome::Failed;
    }
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Outcome::Hung
        }
        Err(_) => Outcome::Failed,
        Ok(_) => {
            let text = String::from_utf8_lossy(&raw);
            let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
            match (status, body) {
                (Some(status), Some(body)) => Outcome::Answered(status, body),
                _ => Outcome::Failed,
            }
        }
    }
}

fn counter_value(body: &str) -> Option<i64> {
    serde_json::from_str::<serde_json::Value>(body).ok()?["counter"].as_i64()
}

#[derive(Default)]
struct Tally {
    hung: AtomicU64,
    answered: AtomicU64,
    /// Highest counter acknowledged per path.
    acked: Mutex<BTreeMap<String, i64>>,
}

fn zombies_under(root: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut family = vec![root];
    family.extend(all_descendants(root));
    for pid in &family {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
            {
                found.push(*pid);
            }
        }
    }
    found
}

fn wait_serving(demo: &Demo, deadline: Duration, tally: &Tally) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < deadline {
        let hello = matches!(
            request(demo.hello, "/", Duration::from_secs(5)),
            Outcome::Answered(200, _)
        );
        let counter = match request(demo.counter, "/recovery", Duration::from_secs(5)) {
            Outcome::Answered(200, body) => {
                if let Some(n) = counter_value(&body) {
                    let mut acked = tally.acked.lock().unwrap();
                    let entry = acked.entry("/recovery".into()).or_insert(0);
                    *entry = (*entry).max(n);
                    true
                } else {
                    false
                }
            }
            _ => false,
        };
        if hello && counter {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

fn start_kill_host(dir: &Path, hello: u16, counter: u16, par: &Path) -> Demo {
    let demo = start_demo(dir.to_path_buf(), hello, counter);
    demo.host.ctl_ok(&[
        "start-provider",
        par.to_str().unwrap(),
        "--link-name",
        "forker",
        "--config",
        r#"{"fork_grandchild":true,"escape_group":true}"#,
    ]);
    demo.host.ctl_ok(&[
        "start-provider",
        par.to_str().unwrap(),
        "--link-name",
        "stubborn",
        "--config",
        r#"{"ignore_sigterm":true}"#,
    ]);
    demo
}

/// Kills a random process of a loaded host at a random moment, trial after
/// trial, and checks that nothing is orphaned, nothing is a zombie, no
/// request hangs, no acknowledged write is lost, and service comes back in
/// bounded time. `KILLTEST_TRIALS` and `KILLTEST_SEED` set the run
/// (`cargo xtask killtest --trials 200`).
#[test]
fn killtest() {
    let trials: u64 = std::env::var("KILLTEST_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let seed: u64 = std::env::var("KILLTEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("killtest: seed {seed}, {trials} trials (replay with KILLTEST_SEED={seed})");
    let mut rng = Rng(seed);
    let recovery_bound = Duration::from_secs(15);
    let request_deadline = Duration::from_secs(6); // the 1 s invocation deadline, plus margin

    let dir = temp_dir("killtest");
    prepare_demo(&dir);
    let par = {
        // The fixture provider, packed with the demo keys.
        let out = dir.join("fixture.par");
        let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
        host_core_ok(
            &dir.join("keys"),
            &[
                "par",
                "create",
                "--name",
                "fixture",
                "--vendor",
                "tests",
                "--capid",
                "wasmcloud:test",
                "--target",
                &format!("{target}={}", bin("fixture-provider").display()),
                "-o",
                out.to_str().unwrap(),
            ],
        );
        out
    };
    let (hello_port, counter_port) = (free_port(), free_port());
    let mut demo = start_kill_host(&dir, hello_port, counter_port, &par);

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (tally, stop) = (tally.clone(), stop.clone());
        load.push(std::thread::spawn(move || {
            let path = format!("/load{worker}");
            while !stop.load(Ordering::Relaxed) {
                let outcome = if worker % 2 == 0 {
                    request(hello_port, "/?name=load", request_deadline)
                } else {
                    request(counter_port, &path, request_deadline)
                };
                match outcome {
                    Outcome::Hung => {
                        tally.hung.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Answered(200, body) => {
                        tally.answered.fetch_add(1, Ordering::Relaxed);
                        if let Some(n) = counter_value(&body) {
                            let mut acked = tally.acked.lock().unwrap();
                            let entry = acked.entry(path.clone()).or_insert(0);
                            *entry = (*entry).max(n);
                        }
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }));
    }

    let targets = [
        "worker",
        "launcher",
        "httpserver",
        "keyvalue",
        "forker",
        "stubborn",
        "host-core",
    ];
    // The host marks a child failed after more restarts than its intensity
    // allows (ARCHITECTURE.md, Supervision): that is its designed answer to a
    // crash loop, tested on its own. Here each target is killed at most
    // that often per window, so every kill must end in recovery.
    let allowed_kills = |target: &str| match target {
        "worker" | "launcher" => 10,
        _ => 5,
    };
    let intensity_window = Duration::from_secs(60);
    let mut recent: BTreeMap<&str, Vec<Instant>> = BTreeMap::new();
    let mut kills: BTreeMap<&str, u32> = BTreeMap::new();
    let (mut orphans, mut zombies, mut lost_writes, mut unrecovered) =
        (0usize, 0usize, 0usize, 0usize);
    let mut worst = Duration::ZERO;
    for trial in 0..trials {
        std::thread::sleep(Duration::from_millis(100 + rng.below(500)));
        let target = targets[rng.below(targets.len() as u64) as usize];
        let killed_lately = recent.entry(target).or_default();
        killed_lately.retain(|at| at.elapsed() < intensity_window);
        if killed_lately.len() >= allowed_kills(target) {
            continue; // its restart budget is spent: pick again next trial
        }
        let inventory = demo.host.inventory();
        let provider_pid = |pred: &dyn Fn(&serde_json::Value) -> bool| {
            inventory["providers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| pred(p))
                .and_then(|p| p["pid"].as_i64())
                .map(|p| p as i32)
        };
        let pid = match target {
            "worker" => process_pid(&demo.host, "actor-runtime"),
            "launcher" => process_pid(&demo.host, "provider-launcher"),
            "httpserver" => provider_pid(&|p| p["contract_id"] == "wasmcloud:httpserver"),
            "keyvalue" => provider_pid(&|p| p["contract_id"] == KV),
            "forker" => provider_pid(&|p| p["link_name"] == "forker"),
            "stubborn" => provider_pid(&|p| p["link_name"] == "stubborn"),
            _ => Some(demo.host.pid() as i32),
        };
        let Some(pid) = pid else {
            continue; // restarting right now: pick again next trial
        };
        *kills.entry(target).or_default() += 1;
        let killed_at = Instant::now();
        recent.entry(target).or_default().push(killed_at);
        if target == "host-core" {
            let family = descendants(pid);
            kill9(pid);
            demo.host.wait_exit(Duration::from_secs(5));
            if !eventually(Duration::from_secs(2), || {
                family.iter().all(|p| !process_alive(*p))
            }) {
                orphans += family.iter().filter(|p| process_alive(**p)).count();
                for p in &family {
                    kill9(*p);
                }
            }
            let Demo { host, .. } = demo;
            let dir = host.into_dir();
            demo = start_kill_host(&dir, hello_port, counter_port, &par);
            // A new host starts with every restart budget full.
            recent.clear();
        } else {
            kill9(pid);
        }
        let recovered = wait_serving(&demo, recovery_bound, &tally).map(|_| killed_at.elapsed());
        match recovered {
            Some(took) => worst = worst.max(took),
            None => unrecovered += 1,
        }
        // Give the reapers a moment, then look for zombies under the host.
        std::thread::sleep(Duration::from_millis(200));
        let z = zombies_under(demo.host.pid() as i32);
        zombies += z.len();
        // Every acknowledged write is still there: the next count is higher.
        let acked: Vec<(String, i64)> = tally
            .acked
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (path, last) in acked {
            if let Outcome::Answered(200, body) = request(counter_port, &path, request_deadline) {
                match counter_value(&body) {
                    Some(n) if n > last => {
                        let mut all = tally.acked.lock().unwrap();
                        let entry = all.entry(path).or_insert(0);
                        *entry = (*entry).max(n);
                    }
                    _ => lost_writes += 1,
                }
            }
        }
        match recovered {
            Some(took) => eprintln!(
                "killtest: trial {trial}: killed {target} (pid {pid}), serving again after {took:?}"
            ),
            None => {
                eprintln!("killtest: trial {trial}: killed {target} (pid {pid}), not serving again")
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    // A clean stop at the end leaves nothing behind either.
    let family = descendants(demo.host.pid() as i32);
    demo.host.ctl_ok(&["stop-host"]);
    demo.host.wait_exit(Duration::from_secs(20));
    if !eventually(Duration::from_secs(3), || {
        family.iter().all(|p| !process_alive(*p))
    }) {
        orphans += family.iter().filter(|p| process_alive(**p)).count();
    }
    let hung = tally.hung.load(Ordering::Relaxed);
    let kills_text: Vec<String> = kills.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    println!(
        "killtest: seed={seed} trials={trials} kills={} answered={} orphans={orphans} zombies={zombies} hung={hung} lost_writes={lost_writes} unrecovered={unrecovered} worst_recovery_ms={}",
        kills_text.join(","),
        tally.answered.load(Ordering::Relaxed),
        worst.as_millis()
    );
    assert_eq!(
        (orphans, zombies, hung, lost_writes, unrecovered),
        (0, 0, 0, 0, 0),
        "seed {seed}"
    );
}
