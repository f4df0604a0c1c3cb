//! `fuzz`: runs the fuzz targets for a while.
//!
//! ```text
//! fuzz [--target NAME]... [--seconds N] [--seed S]   fuzz (default: every target, 180 s)
//! fuzz --target NAME --replay FILE                   run one input
//! fuzz --list                                        the targets
//! fuzz --write-seeds                                 regenerate crates/fuzz/corpus/
//! ```
//!
//! The run happens in a child process; this one watches it. A panic is
//! caught in the child, which writes the input to
//! `target/fuzz/crashes/<target>-<sha>.bin`; an abort (a stack overflow,
//! the memory cap) or a hang kills the child, and this process writes the
//! input the child was running, which it kept in `target/fuzz/inflight-*`.
//! Either way the exit status is non-zero and the file is named.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use fuzz::runner::{self, Config, Inflight};
use fuzz::targets::{self, Target};

/// An input that runs this long without finishing is a hang.
const HANG: Duration = Duration::from_secs(30);

/// The exit status of a child that caught a panic and wrote its input.
const CRASH_STATUS: i32 = 3;

#[derive(Debug, Default)]
struct Args {
    targets: Vec<String>,
    seconds: Option<u64>,
    seed: Option<u64>,
    replay: Option<PathBuf>,
    inflight: Option<PathBuf>,
    child: bool,
    list: bool,
    write_seeds: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let mut out = Args::default();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match arg.as_str() {
            "--target" => out.targets.push(value("--target")?),
            "--seconds" => {
                out.seconds = Some(
                    value("--seconds")?
                        .parse()
                        .context("--seconds takes a number")?,
                )
            }
            "--seed" => out.seed = Some(value("--seed")?.parse().context("--seed takes a number")?),
            "--replay" => out.replay = Some(value("--replay")?.into()),
            "--inflight" => out.inflight = Some(value("--inflight")?.into()),
            "--child" => out.child = true,
            "--list" => out.list = true,
            "--write-seeds" => out.write_seeds = true,
            "-h" | "--help" => {
                println!("usage: fuzz [--target NAME]... [--seconds N] [--seed S] | --target NAME --replay FILE | --list | --write-seeds");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (see --help)"),
        }
    }
    Ok(out)
}

fn selected(names: &[String]) -> Result<Vec<&'static Target>> {
    if names.is_empty() {
        return Ok(targets::all().iter().filter(|t| !t.hidden).collect());
    }
    names
        .iter()
        .map(|n| {
            targets::find(n).ok_or_else(|| {
                let known: Vec<&str> = targets::all().iter().map(|t| t.name).collect();
                anyhow!("no target `{n}` (targets: {})", known.join(", "))
            })
        })
        .collect()
}

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)).and_then(dispatch) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fuzz: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: Args) -> Result<ExitCode> {
    if args.list {
        for t in targets::all() {
            println!("{}{}", t.name, if t.hidden { " (hidden)" } else { "" });
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.write_seeds {
        write_seeds()?;
        return Ok(ExitCode::SUCCESS);
    }
    let chosen = selected(&args.targets)?;
    if let Some(file) = &args.replay {
        return replay(&chosen, file);
    }
    if args.child {
        return child(args, chosen);
    }
    supervise(args)
}

fn write_seeds() -> Result<()> {
    let root = runner::corpus_dir();
    for t in targets::all() {
        let dir = root.join(t.name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let seeds = fuzz::seeds::seeds(t.name);
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes)?;
        }
        println!("fuzz: {} seed(s) in {}", seeds.len(), dir.display());
    }
    fuzz::harness::remove_scratch();
    Ok(())
}

fn replay(chosen: &[&'static Target], file: &Path) -> Result<ExitCode> {
    let [target] = chosen else {
        bail!("--replay needs exactly one --target");
    };
    let target: &'static Target = target;
    let input = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let result = on_target_thread(move || runner::run_one(target, &input));
    fuzz::harness::remove_scratch();
    match result? {
        Ok(outcome) => {
            println!("fuzz: {}: no panic ({outcome})", target.name);
            Ok(ExitCode::SUCCESS)
        }
        Err(message) => {
            eprintln!("fuzz: {}: panicked: {message}", target.name);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs `f` on a thread with the stack of a tokio worker.
fn on_target_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    std::thread::Builder::new()
        .name("fuzz".into())
        .stack_size(fuzz::STACK_SIZE)
        .spawn(f)
        .context("cannot start the fuzzing thread")?
        .join()
        .map_err(|_| {
            anyhow!(
                "the fuzzing thread panicked outside any target (a bug of the harness): {}",
                runner::last_panic().unwrap_or_default()
            )
        })
}

fn child(args: Args, chosen: Vec<&'static Target>) -> Result<ExitCode> {
    if let Err(e) = fuzz::limit_memory(fuzz::MEMORY_LIMIT) {
        eprintln!("fuzz: cannot cap the address space ({e}); running without a memory cap");
    }
    let inflight = match &args.inflight {
        Some(path) => Some(Inflight::create(path).context("cannot create the in-flight file")?),
        None => None,
    };
    let config = Config {
        targets: chosen,
        seed: args.seed.unwrap_or(0),
        duration: Duration::from_secs(args.seconds.unwrap_or(180)),
        progress: true,
        inflight,
    };
    let result = on_target_thread(move || runner::run(config))?;
    fuzz::harness::remove_scratch();
    match result {
        Ok(stats) => {
            let mut total = 0;
            for s in &stats {
                total += s.execs;
                println!(
                    "fuzz: {:<17} {:>8} inputs  {:>4} outcomes  corpus {} ({} seeds)",
                    s.name, s.execs, s.outcomes, s.corpus, s.seeds
                );
            }
            println!("fuzz: {total} inputs, no crash");
            Ok(ExitCode::SUCCESS)
        }
        Err(crash) => {
            eprintln!("fuzz: CRASH: {crash}");
            Ok(ExitCode::from(CRASH_STATUS as u8))
        }
    }
}

fn supervise(args: Args) -> Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let seconds = args.seconds.unwrap_or(180);
    let chosen = selected(&args.targets)?;
    let names: Vec<&str> = chosen.iter().map(|t| t.name).collect();
    println!(
        "fuzz: seed {seed}, {seconds} s, targets: {} (reproduce: cargo xtask fuzz --seed {seed} --seconds {seconds}{})",
        names.join(", "),
        args.targets
            .iter()
            .map(|t| format!(" --target {t}"))
            .collect::<String>()
    );
    let dir = runner::crash_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let inflight = dir.join(format!("inflight-{}.bin", std::process::id()));
    let exe = std::env::current_exe().context("cannot find this program")?;
    let mut command = Command::new(exe);
    command
        .arg("--child")
        .args(["--seed", &seed.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .arg("--inflight")
        .arg(&inflight);
    for t in &args.targets {
        command.args(["--target", t]);
    }
    let mut child = command
        .spawn()
        .context("cannot start the fuzzing process")?;
    let mut last_count = 0;
    let mut last_progress = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        std::thread::sleep(Duration::from_millis(200));
        let count = Inflight::read(&inflight).map_or(0, |(_, _, c)| c);
        if count != last_count {
            last_count = count;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
    };
    let code = status.as_ref().and_then(std::process::ExitStatus::code);
    let result = match code {
        Some(0) => Ok(ExitCode::SUCCESS),
        Some(CRASH_STATUS) => Ok(ExitCode::FAILURE),
        // The child's own error (printed above), not an input's.
        Some(1) => Ok(ExitCode::FAILURE),
        _ => {
            let how = match &status {
                None => format!("hung: one input ran for more than {HANG:?}"),
                Some(s) => format!("died ({s})"),
            };
            match Inflight::read(&inflight) {
                Some((index, input, _)) => {
                    let name = targets::all().get(index).map_or("unknown", |t| t.name);
                    let file = runner::write_crash(name, &input);
                    eprintln!(
                        "fuzz: CRASH: the fuzzing process {how} on an input of target {name} (seed {seed})\n  input written to {}\n  replay it: cargo run -p fuzz -- --target {name} --replay {}",
                        file.display(),
                        file.display()
                    );
                }
                None => eprintln!("fuzz: CRASH: the fuzzing process {how} before it ran an input"),
            }
            Ok(ExitCode::FAILURE)
        }
    };
    let _ = std::fs::remove_file(&inflight);
    result
}
