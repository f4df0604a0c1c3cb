//! Project automation: `cargo xtask <command>` (the alias is in `.cargo/config.toml`).
//!
//! Commands:
//! - `run [--hello-port N] [--kvcounter-port N] [--lattice]`  build, sign, pack and run the demo host (or a lattice of two)
//! - `fixtures`          build the fixture actors into `target/fixtures/`
//! - `test [ARGS...]`    docker-registry and nats-server, fixtures, workspace binaries, the tests (nextest when installed), check-deps, lint
//! - `fuzz [--seconds N] [--target T] [--seed S]`  the fuzz targets, longer than the tests run them
//! - `check-deps`        enforce which workspace crates may depend on what
//! - `lint`              rustfmt and clippy, warnings are errors
//! - `help`              this list

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};

mod demo;
mod demo_lattice;
mod layers;
mod packages;
mod service;

/// The bench's groups, from the bench's own table (the bench crate is not
/// a dependency: it would pull the whole workspace into xtask's build).
mod bench_groups {
    include!("../../crates/bench/src/groups.rs");
}

const HELP: &str = "\
usage: cargo xtask <command> [args]

commands:
  run [--hello-port N] [--kvcounter-port N] [--lattice]
                    build everything, sign the demo actors, pack the demo
                    providers and run the host on demo/manifest.toml
                    (--lattice: a nats-server and two hosts, the httpserver
                    on one, the actors and keyvalue on the other)
  bench [--smoke] [--only GROUP]
                    build in release and run the benchmarks against baselines
                    measured in the same run; writes target/bench/results.json
                    (--only GROUP: one group, into results-GROUP.json; the
                    groups are {groups})
  killtest [--trials N] [--seed S]
                    the randomized kill test alone, longer (default 200 trials)
  fuzz [--seconds N] [--target T]... [--seed S]
                    the fuzz targets (crates/fuzz) round-robin, default 180 s
                    of every target; a crash's input is written to
                    target/fuzz/crashes/ and the command fails naming it
  install-service [--dry-run]
                    build in release and install the systemd unit
                    (deploy/wasmhost.service) and binaries
  fixtures          build the fixture actors (Rust and WAT) into target/fixtures/
  test [ARGS...]    docker-registry and nats-server (installed with apt-get if
                    missing), fixtures,
                    `cargo build --workspace --bins`, then the tests
                    (`cargo nextest run --workspace --no-fail-fast ARGS` when
                    cargo-nextest is installed, else `cargo test --workspace ARGS`),
                    then check-deps and lint (so CI holds what they enforce)
  check-deps        enforce dependency rules between workspace crates
  lint              `cargo fmt --check` and `cargo clippy -D warnings`
  help              show this text
";

/// Rust-built fixtures: (package, target triple, file cargo writes, file in target/fixtures).
const RUST_FIXTURES: &[(&str, &str, &str, &str)] = &[
    (
        "hello",
        "wasm32-unknown-unknown",
        "hello.wasm",
        "hello.wasm",
    ),
    (
        "echo-component",
        "wasm32-wasip2",
        "echo_component.wasm",
        "echo_component.wasm",
    ),
    (
        "kvcounter",
        "wasm32-wasip2",
        "kvcounter.wasm",
        "kvcounter.wasm",
    ),
];

/// WAT fixtures in `fixtures/wat/`, compiled to `target/fixtures/<name>.wasm`.
const WAT_FIXTURES: &[&str] = &[
    "echo",
    "trap",
    "loop",
    "memory_hog",
    "numbergen",
    "oversized",
];

/// Targets the Rust fixtures build for.
const WASM_TARGETS: &[&str] = &["wasm32-unknown-unknown", "wasm32-wasip2"];

/// (crate, crates it must not depend on through normal dependencies, why).
const DEP_RULES: &[(&str, &[&str], &str)] = &[
    (
        "shim",
        &["host-core", "wasmtime"],
        "the provider shim stays small and never links the host or wasm runtime",
    ),
    (
        "wire",
        &["wasmtime"],
        "the wire protocol is shared by every process and must stay light",
    ),
    (
        "host-core",
        &["wasmtime"],
        "the supervisor never runs wasm itself; workers do",
    ),
];

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next();
    let rest: Vec<String> = args.collect();
    let result = match command.as_deref() {
        None | Some("help" | "-h" | "--help") => {
            print!("{}", help());
            Ok(())
        }
        Some("fixtures") => no_args("fixtures", &rest).and_then(|()| fixtures()),
        Some("test") => test(&rest),
        Some("run") => demo::run_demo(&rest),
        Some("install-service") => service::install(&rest),
        Some("killtest") => killtest(&rest),
        Some("fuzz") => fuzz(&rest),
        Some("bench") => bench(&rest),
        Some("check-deps") => no_args("check-deps", &rest).and_then(|()| check_deps()),
        Some("lint") => no_args("lint", &rest).and_then(|()| lint()),
        Some(other) => Err(anyhow::anyhow!(
            "unknown command `{other}`; run `cargo xtask help`"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn help() -> String {
    HELP.replace("{groups}", &bench_groups::group_names())
}

fn no_args(command: &str, rest: &[String]) -> Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        bail!("`{command}` takes no arguments, got {rest:?}")
    }
}

/// The repository root (xtask lives in `<root>/xtask`).
fn root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The `cargo` that runs us (rustup's proxy sets `CARGO`), else `cargo` on PATH.
fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root());
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` with inherited stdio; a failure to start or a non-zero exit is an error.
fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("xtask: $ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; a failure is an error carrying stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8"))
}

// ---------------------------------------------------------------- fixtures

fn fixtures() -> Result<()> {
    let root = root();
    let out_dir = root.join("target").join("fixtures");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    ensure_wasm_targets()?;

    let manifest = root.join("fixtures").join("Cargo.toml");
    let fixtures_target = root.join("fixtures").join("target");
    for (package, target, built, name) in RUST_FIXTURES {
        println!("xtask: building fixture `{package}` for {target}");
        run(cargo()
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                target,
                "--package",
                package,
            ])
            .arg("--manifest-path")
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", &fixtures_target))?;
        let from = fixtures_target.join(target).join("release").join(built);
        let bytes = fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        place(&out_dir, name, &bytes)?;
    }

    let wat_dir = root.join("fixtures").join("wat");
    for name in WAT_FIXTURES {
        let src = wat_dir.join(format!("{name}.wat"));
        println!("xtask: compiling {}", src.display());
        let bytes =
            wat::parse_file(&src).with_context(|| format!("compiling {}", src.display()))?;
        place(&out_dir, &format!("{name}.wasm"), &bytes)?;
    }
    println!("xtask: fixtures are in {}", out_dir.display());
    Ok(())
}

/// Installs the wasm targets the fixtures need, or says exactly what is missing.
fn ensure_wasm_targets() -> Result<()> {
    let installed = match Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => bail!(
            "`rustup target list --installed` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) if err.kind() == ErrorKind::NotFound => bail!(
            "`rustup` is not on PATH. The fixtures need the Rust targets {} \
             (install rustup from https://rustup.rs, or add these targets to your \
             toolchain some other way and put a `rustup` on PATH)",
            WASM_TARGETS.join(" and ")
        ),
        Err(err) => return Err(err).context("could not start `rustup`"),
    };
    let missing: Vec<&str> = WASM_TARGETS
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        println!(
            "xtask: rust targets {} are installed",
            WASM_TARGETS.join(", ")
        );
        return Ok(());
    }
    run(Command::new("rustup")
        .args(["target", "add"])
        .args(&missing)
        .current_dir(root()))
}

/// Writes `bytes` to `dir/name` through a temporary file, so readers never see half a file.
fn place(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let dest = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &dest).with_context(|| format!("renaming to {}", dest.display()))?;
    println!("xtask:   {} ({} bytes)", dest.display(), bytes.len());
    Ok(())
}

// ---------------------------------------------------------------- test

fn test(args: &[String]) -> Result<()> {
    packages::DOCKER_REGISTRY.ensure()?;
    packages::NATS_SERVER.ensure()?;
    fixtures()?;
    run(cargo().args(["build", "--workspace", "--bins"]))?;

    let nextest = cargo()
        .args(["nextest", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let tests = if nextest {
        run(cargo()
            .args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .args(args))
    } else {
        println!("xtask: cargo-nextest is not installed; using `cargo test`");
        run(cargo().args(["test", "--workspace"]).args(args))
    };
    // The dependency rules and the lints are checked even when a test
    // failed, so CI holds the invariants they enforce.
    let checks = [check_deps(), lint()];
    let failed: Vec<String> = checks
        .iter()
        .filter_map(|c| c.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    match (tests, failed.is_empty()) {
        (Ok(()), true) => {
            println!("xtask: all tests, dependency checks and lints passed");
            Ok(())
        }
        (Ok(()), false) => bail!("{}", failed.join("\n")),
        (Err(t), true) => Err(t),
        (Err(t), false) => Err(t.context(format!("also: {}", failed.join("; ")))),
    }
}

// ---------------------------------------------------------------- bench

fn bench(args: &[String]) -> Result<()> {
    // Checked before the release build, which can take minutes.
    let mut forwarded = Vec::new();
    let mut results = "results.json".to_string();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => forwarded.push(arg.clone()),
            "--only" => {
                let group = it.next().context("--only needs a group")?;
                if !bench_groups::GROUPS.iter().any(|(name, _)| name == group) {
                    bail!("--only takes one of {}", bench_groups::group_names());
                }
                forwarded.extend([arg.clone(), group.clone()]);
                // One group's rows must not replace a full run's.
                results = format!("results-{group}.json");
            }
            other => bail!(
                "unknown option `{other}` (usage: cargo xtask bench [--smoke] [--only GROUP])"
            ),
        }
    }
    fixtures()?;
    // The registry and lattice rows start real ones.
    packages::DOCKER_REGISTRY.ensure()?;
    packages::NATS_SERVER.ensure()?;
    run(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
    let out = root().join("target").join("bench").join(results);
    run(
        Command::new(root().join("target").join("release").join("bench"))
            .args(&forwarded)
            .arg("--json")
            .arg(&out),
    )
}

// ---------------------------------------------------------------- killtest

/// The kill test of `tests/resilience.rs`, with more trials than CI runs.
fn killtest(args: &[String]) -> Result<()> {
    let (mut trials, mut seed) = ("200".to_string(), None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--trials" => trials = it.next().context("--trials needs a number")?.clone(),
            "--seed" => seed = Some(it.next().context("--seed needs a number")?.clone()),
            other => bail!("unknown option `{other}` (use --trials N, --seed S)"),
        }
    }
    fixtures()?;
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "tests",
        "--test",
        "host",
        "resilience::killtest",
        "--",
        "--nocapture",
    ])
    .env("KILLTEST_TRIALS", &trials);
    if let Some(seed) = seed {
        cmd.env("KILLTEST_SEED", seed);
    }
    run(&mut cmd)
}

// ---------------------------------------------------------------- fuzz

/// The fuzz binary (`crates/fuzz`), with its options checked here first.
fn fuzz(args: &[String]) -> Result<()> {
    let mut forwarded = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" | "--target" | "--seed" => {
                let value = it.next().with_context(|| format!("{arg} needs a value"))?;
                if arg != "--target" && value.parse::<u64>().is_err() {
                    bail!("{arg} takes a number, got `{value}`");
                }
                forwarded.extend([arg.clone(), value.clone()]);
            }
            other => bail!(
                "unknown option `{other}` (usage: cargo xtask fuzz [--seconds N] [--target T] [--seed S])"
            ),
        }
    }
    run(cargo().args(["build", "--package", "fuzz", "--bin", "fuzz"]))?;
    run(Command::new(root().join("target").join("debug").join("fuzz")).args(&forwarded))
}

// ---------------------------------------------------------------- check-deps

fn check_deps() -> Result<()> {
    let members = workspace_members()?;
    let mut violations = Vec::new();
    for (krate, forbidden, why) in DEP_RULES {
        if !members.iter().any(|m| m == krate) {
            println!("xtask: check-deps: `{krate}` is not in the workspace, skipped");
            continue;
        }
        let tree = output(cargo().args([
            "tree",
            "--package",
            krate,
            "--edges",
            "normal",
            "--prefix",
            "none",
        ]))?;
        let found: Vec<&str> = forbidden
            .iter()
            .copied()
            .filter(|f| tree.lines().any(|line| package_name(line) == Some(*f)))
            .collect();
        if found.is_empty() {
            println!(
                "xtask: check-deps: `{krate}` depends on none of {}",
                forbidden.join(", ")
            );
        } else {
            violations.push(format!(
                "`{krate}` depends on {} ({why}; see `cargo tree -p {krate} -e normal -i {}`)",
                found.join(", "),
                found[0]
            ));
        }
    }
    if let Err(e) = layers::check(&root()) {
        violations.push(format!("{e:#}"));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        bail!("dependency rules broken:\n  {}", violations.join("\n  "))
    }
}

/// Names of the workspace's packages.
fn workspace_members() -> Result<Vec<String>> {
    let tree = output(cargo().args([
        "tree",
        "--workspace",
        "--depth",
        "0",
        "--edges",
        "normal",
        "--prefix",
        "none",
    ]))?;
    Ok(tree
        .lines()
        .filter_map(package_name)
        .map(str::to_owned)
        .collect())
}

/// The package name of a `cargo tree --prefix none` line (`name vX.Y.Z (...)`).
fn package_name(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    let name = words.next()?;
    let version = words.next()?;
    version.starts_with('v').then_some(name)
}

// ---------------------------------------------------------------- lint

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    let fixtures_manifest = root().join("fixtures").join("Cargo.toml");
    run(cargo()
        .args(["fmt", "--all", "--manifest-path"])
        .arg(&fixtures_manifest)
        .args(["--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_package_names_from_cargo_tree_lines() {
        assert_eq!(
            package_name("host-core v0.1.0 (/work/main/crates/host-core)"),
            Some("host-core")
        );
        assert_eq!(package_name("wasmtime v48.0.8"), Some("wasmtime"));
        assert_eq!(package_name("wasmtime v48.0.8 (*)"), Some("wasmtime"));
        assert_eq!(package_name(""), None);
        assert_eq!(package_name("warning: something"), None);
    }

    #[test]
    fn fixture_outputs_are_distinct() {
        let mut names: Vec<String> = RUST_FIXTURES
            .iter()
            .map(|f| f.3.to_string())
            .chain(WAT_FIXTURES.iter().map(|n| format!("{n}.wasm")))
            .collect();
        let len = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), len);
    }

    #[test]
    fn wat_fixtures_compile() {
        let dir = root().join("fixtures").join("wat");
        for name in WAT_FIXTURES {
            let path = dir.join(format!("{name}.wat"));
            wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }

    #[test]
    fn help_names_every_bench_group() {
        let help = help();
        assert!(!help.contains("{groups}"), "{help}");
        for (group, _) in bench_groups::GROUPS {
            assert!(help.contains(group), "{group} missing from:\n{help}");
        }
    }

    #[test]
    fn describe_prints_program_and_args() {
        let mut cmd = Command::new("cargo");
        cmd.args(["tree", "-p", "x"]);
        assert_eq!(describe(&cmd), "cargo tree -p x");
    }
}
