//! The short fuzz run of `cargo xtask test`: every target for a moment
//! (its `short_tenths`), with a fixed seed, as its own test so the runner
//! spreads them over the cores; plus checks of the harness itself (the
//! seed corpus still decodes, a planted panic and a planted abort are
//! caught and their inputs written out). The long run is `cargo xtask fuzz`.

use std::process::Command;
use std::time::{Duration, Instant};

use fuzz::rng::Rng;
use fuzz::runner::{self, Config};
use fuzz::targets;

/// Runs one target for its share of the short run; a crash fails the test
/// with the file holding the input and the seed.
fn short(name: &str) {
    let target = targets::find(name).unwrap_or_else(|| panic!("no target {name}"));
    let _ = fuzz::limit_memory(fuzz::MEMORY_LIMIT);
    let index = targets::all()
        .iter()
        .position(|t| t.name == name)
        .unwrap_or(0);
    let seed = 0x5eed_0000 + index as u64;
    let config = Config {
        targets: vec![target],
        seed,
        duration: Duration::from_millis(u64::from(target.short_tenths) * 100),
        progress: false,
        inflight: None,
    };
    let started = Instant::now();
    let result = std::thread::Builder::new()
        .stack_size(fuzz::STACK_SIZE)
        .spawn(move || runner::run(config))
        .unwrap()
        .join()
        .unwrap_or_else(|_| panic!("the harness panicked: {:?}", runner::last_panic()));
    fuzz::harness::remove_scratch();
    match result {
        Ok(stats) => {
            for s in stats {
                println!(
                    "{}: {} inputs in {:.1} s, {} outcomes, corpus {} ({} seeds)",
                    s.name,
                    s.execs,
                    started.elapsed().as_secs_f64(),
                    s.outcomes,
                    s.corpus,
                    s.seeds
                );
                assert!(s.seeds > 0, "{name} has no seed corpus");
            }
        }
        Err(crash) => panic!("{crash}"),
    }
}

macro_rules! short_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                short(stringify!($name));
            }
        )*
        const SHORT_TESTS: &[&str] = &[$(stringify!($name)),*];
    };
}

short_tests!(
    to_worker,
    from_worker,
    to_provider,
    from_provider,
    to_launcher,
    from_launcher,
    control_request,
    control_response,
    bootstrap,
    handshake,
    claims_wasm,
    claims_jwt,
    par,
    manifest,
    http_response,
    http_request,
    http_server,
);

#[test]
fn every_target_has_a_short_test() {
    let visible: Vec<&str> = targets::all()
        .iter()
        .filter(|t| !t.hidden)
        .map(|t| t.name)
        .collect();
    assert_eq!(visible, SHORT_TESTS);
}

/// The committed seeds are what `--write-seeds` makes: valid inputs that
/// reach the decoders' success paths. A protocol change that breaks them
/// fails here (regenerate with `cargo run -p fuzz -- --write-seeds`).
#[test]
fn the_seed_corpus_still_decodes() {
    let _ = fuzz::limit_memory(fuzz::MEMORY_LIMIT);
    let check = || {
        let mut failures = Vec::new();
        for target in targets::all().iter().filter(|t| !t.hidden) {
            let seeds = runner::load_corpus(target.name);
            assert!(!seeds.is_empty(), "{} has no seeds", target.name);
            for (file, bytes) in seeds {
                let outcome = runner::run_one(target, &bytes)
                    .unwrap_or_else(|e| panic!("seed {}/{file} panics: {e}", target.name));
                // Seeds named for a refusal are meant to be refused.
                let refused = [
                    "unsigned",
                    "tampered",
                    "not-yet-valid",
                    "expired",
                    "other",
                    "refused",
                    "old-version",
                    "providers",
                ]
                .iter()
                .any(|w| file.contains(w));
                // A target runs an input several ways: one must succeed.
                if !refused && !outcome.split('|').any(|part| part.starts_with("ok:")) {
                    failures.push(format!("{}/{file}: {outcome}", target.name));
                }
            }
        }
        failures
    };
    let failures = std::thread::Builder::new()
        .stack_size(fuzz::STACK_SIZE)
        .spawn(check)
        .unwrap()
        .join()
        .unwrap();
    fuzz::harness::remove_scratch();
    assert!(
        failures.is_empty(),
        "seeds that no longer decode (run `cargo run -p fuzz -- --write-seeds`):\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_generator_is_deterministic() {
    let mut a = Rng::new(42);
    let mut b = Rng::new(42);
    let mut c = Rng::new(43);
    let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
    let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
    let zs: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
    assert_eq!(xs, ys);
    assert_ne!(xs, zs);
    assert!((0..1000).all(|_| a.below(7) < 7));
}

/// The binary finds a planted panic and a planted abort, names the file
/// that holds the input, and exits non-zero.
#[test]
fn the_binary_reports_a_panic_and_an_abort_with_their_input() {
    for (target, planted) in [("selftest_panic", "CRASH"), ("selftest_abort", "ABORT")] {
        let out = Command::new(env!("CARGO_BIN_EXE_fuzz"))
            .args(["--target", target, "--seconds", "20", "--seed", "7"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{target}: {stderr}");
        let file = stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix("input written to "))
            .unwrap_or_else(|| panic!("{target}: no file named: {stderr}"));
        let input = std::fs::read(file).unwrap();
        assert!(input.starts_with(planted.as_bytes()), "{target}: {input:?}");
        assert!(stderr.contains("seed 7"), "{stderr}");
        // The file replays the crash.
        let replay = Command::new(env!("CARGO_BIN_EXE_fuzz"))
            .args(["--target", target, "--replay", file])
            .output()
            .unwrap();
        assert!(!replay.status.success());
        let _ = std::fs::remove_file(file);
    }
}
