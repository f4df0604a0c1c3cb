//! The fuzzing loop: targets in turn, each mutating inputs from its corpus
//! under `catch_unwind`, with a panic hook that sees panics on every
//! thread (a server's task included). An input whose outcome is new joins
//! the corpus. A panic stops the run and its input is written out.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::harness::HarnessSigner;
use crate::mutate::Mutator;
use crate::rng::Rng;
use crate::targets::{Outcome, Target};

/// Inputs one target runs before the next target's turn. Turns are counted
/// in inputs, not time, so a seed gives the same inputs on every machine.
const TURN: usize = 16;

/// A target's corpus stops growing here (new entries then replace grown
/// ones at random; the seeds stay).
const MAX_CORPUS: usize = 512;

/// Outcomes kept per target: past this, an outcome no longer counts as new.
const MAX_OUTCOMES: usize = 4096;

/// `FUZZ_SHOW_OUTCOMES=1` prints each new outcome (to tune targets).
fn show_outcomes() -> bool {
    static SHOW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SHOW.get_or_init(|| std::env::var_os("FUZZ_SHOW_OUTCOMES").is_some())
}

/// Panics seen on any thread since the process started, and the last one's
/// message and place.
static PANICS: AtomicU64 = AtomicU64::new(0);
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// How many inputs are running now (on any thread): panics while one runs
/// are the input's; others are printed as usual.
static ARMED: AtomicU64 = AtomicU64::new(0);

/// Installs the hook that counts panics on every thread while an input
/// runs instead of printing them (the report prints the one that matters).
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if ARMED.load(Ordering::SeqCst) == 0 {
                previous(info);
                return;
            }
            let thread = std::thread::current();
            let text = format!(
                "thread '{}' panicked at {}: {}",
                thread.name().unwrap_or("<unnamed>"),
                info.location()
                    .map_or_else(|| "?".to_owned(), ToString::to_string),
                payload_text(info.payload())
            );
            if let Ok(mut last) = LAST_PANIC.lock() {
                *last = Some(text);
            }
            PANICS.fetch_add(1, Ordering::SeqCst);
        }));
    });
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic payload)".to_owned()
    }
}

/// The message of the last panic the hook saw.
pub fn last_panic() -> Option<String> {
    LAST_PANIC.lock().ok().and_then(|last| last.clone())
}

/// Where the input under test is kept while it runs, so a parent process
/// can name it if this one dies without unwinding (an abort, a stack
/// overflow, the memory limit).
#[derive(Debug)]
pub struct Inflight {
    file: File,
    count: u64,
}

/// `magic, target index (u32), input length (u32), inputs run (u64)`, then the input.
pub const INFLIGHT_HEADER: usize = 20;
const INFLIGHT_MAGIC: &[u8; 4] = b"FZIN";

impl Inflight {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Self { file, count: 0 })
    }

    fn record(&mut self, target: usize, input: &[u8]) {
        self.count += 1;
        let mut buf = Vec::with_capacity(INFLIGHT_HEADER + input.len());
        buf.extend_from_slice(INFLIGHT_MAGIC);
        buf.extend_from_slice(&(target as u32).to_le_bytes());
        buf.extend_from_slice(&(input.len() as u32).to_le_bytes());
        buf.extend_from_slice(&self.count.to_le_bytes());
        buf.extend_from_slice(input);
        // Best effort: the run goes on without it.
        let _ = self.file.write_all_at(&buf, 0);
    }

    /// (target index, input, inputs run) from a file `record` wrote.
    pub fn read(path: &Path) -> Option<(usize, Vec<u8>, u64)> {
        let bytes = std::fs::read(path).ok()?;
        if bytes.len() < INFLIGHT_HEADER || &bytes[..4] != INFLIGHT_MAGIC {
            return None;
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let target = word(4) as usize;
        let len = word(8) as usize;
        let mut count = [0u8; 8];
        count.copy_from_slice(&bytes[12..20]);
        let input = bytes.get(INFLIGHT_HEADER..INFLIGHT_HEADER + len)?.to_vec();
        Some((target, input, u64::from_le_bytes(count)))
    }
}

/// The seed corpus in the repository: `crates/fuzz/corpus/<target>/`.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Where crash inputs go: `target/fuzz/crashes/` (under `CARGO_TARGET_DIR`
/// when it is set).
pub fn crash_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap_or(Path::new("."));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    target.join("fuzz").join("crashes")
}

/// The seed files of `target`, sorted by name.
pub fn load_corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir().join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), bytes))
        })
        .collect();
    files.sort();
    files
}

/// What a run does.
#[derive(Debug)]
pub struct Config {
    pub targets: Vec<&'static Target>,
    pub seed: u64,
    pub duration: Duration,
    /// Print a line per target every so often.
    pub progress: bool,
    pub inflight: Option<Inflight>,
}

/// A target's figures at the end of a run.
#[derive(Debug, Clone)]
pub struct Stats {
    pub name: &'static str,
    pub execs: u64,
    pub corpus: usize,
    pub outcomes: usize,
    pub seeds: usize,
}

/// A panic, with the input written to `file`.
#[derive(Debug, Clone)]
pub struct Crash {
    pub target: &'static str,
    pub message: String,
    pub file: PathBuf,
    pub seed: u64,
}

impl std::fmt::Display for Crash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "target {} panicked (seed {}): {}\n  input written to {}\n  replay it: cargo run -p fuzz -- --target {} --replay {}",
            self.target,
            self.seed,
            self.message,
            self.file.display(),
            self.target,
            self.file.display()
        )
    }
}

struct State {
    target: &'static Target,
    index: usize,
    rng: Rng,
    corpus: Vec<Vec<u8>>,
    seeds: usize,
    outcomes: HashSet<Outcome>,
    execs: u64,
}

/// Writes `input` as `<dir>/<target>-<sha256 prefix>.bin`.
pub fn write_crash(target: &str, input: &[u8]) -> PathBuf {
    let dir = crash_dir();
    let _ = std::fs::create_dir_all(&dir);
    let sha = hex::encode(&Sha256::digest(input)[..8]);
    let file = dir.join(format!("{target}-{sha}.bin"));
    if let Err(e) = std::fs::write(&file, input) {
        eprintln!("fuzz: cannot write {}: {e}", file.display());
    }
    file
}

/// Runs `input` through `target`; the panic's message if it panicked
/// anywhere (on another thread too) while it ran.
pub fn run_one(target: &Target, input: &[u8]) -> Result<Outcome, String> {
    install_panic_hook();
    let before = PANICS.load(Ordering::SeqCst);
    ARMED.fetch_add(1, Ordering::SeqCst);
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    ARMED.fetch_sub(1, Ordering::SeqCst);
    let after = PANICS.load(Ordering::SeqCst);
    match result {
        Ok(outcome) if after == before => Ok(outcome),
        _ => Err(LAST_PANIC
            .lock()
            .ok()
            .and_then(|last| last.clone())
            .unwrap_or_else(|| "a panic".into())),
    }
}

/// Runs the targets in turn until `duration` has passed. Returns each
/// target's figures, or the first crash.
pub fn run(mut config: Config) -> Result<Vec<Stats>, Crash> {
    install_panic_hook();
    let signer = HarnessSigner;
    let all = crate::targets::all();
    let mut states: Vec<State> = config
        .targets
        .iter()
        .map(|t| {
            let index = all.iter().position(|a| a.name == t.name).unwrap_or(0);
            let seeds: Vec<Vec<u8>> = load_corpus(t.name).into_iter().map(|(_, b)| b).collect();
            let mut corpus = seeds;
            if corpus.is_empty() {
                corpus.push(Vec::new());
            }
            State {
                target: t,
                index,
                // Each target has its own sequence: adding a target does
                // not change another's inputs.
                rng: Rng::new(config.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                seeds: corpus.len(),
                corpus,
                outcomes: HashSet::new(),
                execs: 0,
            }
        })
        .collect();
    let crash = |state: &State, input: &[u8], message: String| Crash {
        target: state.target.name,
        message,
        file: write_crash(state.target.name, input),
        seed: config.seed,
    };
    // The seeds first, as they are.
    for state in &mut states {
        for i in 0..state.corpus.len() {
            let input = state.corpus[i].clone();
            if let Some(inflight) = config.inflight.as_mut() {
                inflight.record(state.index, &input);
            }
            match run_one(state.target, &input) {
                Ok(outcome) => {
                    state.outcomes.insert(outcome);
                }
                Err(message) => return Err(crash(state, &input, message)),
            }
            state.execs += 1;
        }
    }
    let start = Instant::now();
    let mut last_report = Instant::now();
    while start.elapsed() < config.duration {
        for state in &mut states {
            for _ in 0..TURN {
                let pick = state.rng.below(state.corpus.len());
                let other = state.rng.below(state.corpus.len());
                let mutated = {
                    let mut mutator = Mutator {
                        rng: &mut state.rng,
                        shape: state.target.shape,
                        dict: state.target.dict,
                        max_len: state.target.max_len,
                        signer: &signer,
                    };
                    let (input, other) = (&state.corpus[pick], &state.corpus[other]);
                    ARMED.fetch_add(1, Ordering::SeqCst);
                    let mutated =
                        panic::catch_unwind(AssertUnwindSafe(|| mutator.mutate(input, other)));
                    ARMED.fetch_sub(1, Ordering::SeqCst);
                    mutated
                };
                let mutant = match mutated {
                    Ok(mutant) => mutant,
                    Err(_) => {
                        // The harness's own bug: keep the input it mutated.
                        let input = state.corpus[pick].clone();
                        let message = format!(
                            "the mutation engine panicked on this input: {}",
                            last_panic().unwrap_or_default()
                        );
                        return Err(crash(state, &input, message));
                    }
                };
                if let Some(inflight) = config.inflight.as_mut() {
                    inflight.record(state.index, &mutant);
                }
                let outcome = match run_one(state.target, &mutant) {
                    Ok(outcome) => outcome,
                    Err(message) => return Err(crash(state, &mutant, message)),
                };
                state.execs += 1;
                if state.outcomes.len() < MAX_OUTCOMES
                    && show_outcomes()
                    && !state.outcomes.contains(&outcome)
                {
                    eprintln!("fuzz: {}: new outcome {outcome}", state.target.name);
                }
                if state.outcomes.len() < MAX_OUTCOMES && state.outcomes.insert(outcome) {
                    if state.corpus.len() < MAX_CORPUS {
                        state.corpus.push(mutant);
                    } else {
                        let grown = state.corpus.len() - state.seeds;
                        if grown > 0 {
                            let slot = state.seeds + state.rng.below(grown);
                            state.corpus[slot] = mutant;
                        }
                    }
                }
            }
            if start.elapsed() >= config.duration {
                break;
            }
        }
        if config.progress && last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let total: u64 = states.iter().map(|s| s.execs).sum();
            eprintln!(
                "fuzz: {:>5.0}s {total} inputs, {} outcomes",
                start.elapsed().as_secs_f64(),
                states.iter().map(|s| s.outcomes.len()).sum::<usize>()
            );
        }
    }
    Ok(states
        .iter()
        .map(|s| Stats {
            name: s.target.name,
            execs: s.execs,
            corpus: s.corpus.len(),
            outcomes: s.outcomes.len(),
            seeds: s.seeds,
        })
        .collect())
}
