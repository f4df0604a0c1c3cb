//! `cargo xtask run --lattice`: the demo split across a lattice of two
//! hosts joined through a local `nats-server` with JetStream: `edge` runs
//! the httpserver provider, `core` the actors and the keyvalue provider.
//! Links are put through `core`'s socket and reach `edge` through the
//! lattice. Ctrl-C stops both hosts, then the server.

use std::{
    net::TcpStream,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    demo::{ignore_interrupts, DemoFiles, DemoOptions},
    root,
};

/// The lattice's NATS port, and its name.
const NATS_PORT: u16 = 4222;
const LATTICE: &str = "demo";

/// Kills what it holds when dropped (the server, a host that never got
/// ready).
struct Owned(Vec<Child>);

impl Drop for Owned {
    fn drop(&mut self) {
        for child in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn run(options: &DemoOptions, files: &DemoFiles) -> Result<()> {
    let dir = files.dir.join("lattice");
    std::fs::create_dir_all(&dir)?;
    let host_core = root().join("target").join("debug").join("host-core");
    let url = format!("nats://127.0.0.1:{NATS_PORT}");
    if TcpStream::connect(("127.0.0.1", NATS_PORT)).is_ok() {
        bail!("port {NATS_PORT} is in use: stop what listens there (another nats-server?) and try again");
    }
    let mut owned = Owned(Vec::new());
    owned.0.push(
        Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &NATS_PORT.to_string(),
                "-sd",
            ])
            .arg(dir.join("nats"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nats.log"))?)
            // Its own group: Ctrl-C stops the hosts, which still say
            // goodbye to the lattice; the server goes after them.
            .process_group(0)
            .spawn()
            .context("cannot start nats-server")?,
    );
    wait_for(Duration::from_secs(10), "nats-server to listen", || {
        Ok(TcpStream::connect(("127.0.0.1", NATS_PORT)).is_ok())
    })?;
    let seed = cluster_seed(&host_core, &dir)?;
    let start = |name: &str| -> Result<Child> {
        Command::new(&host_core)
            .arg("run")
            .arg("--state-dir")
            .arg(dir.join(name))
            .args(["--nats", &url, "--lattice", LATTICE])
            // In the environment, not the arguments `ps` shows.
            .env("WASMCLOUD_CLUSTER_SEED", &seed)
            .args(["--label", &format!("role={name}")])
            .env("WASMHOST_KEYS_DIR", files.dir.join("keys"))
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start host {name}"))
    };
    let edge = start("edge")?;
    owned.0.push(edge);
    let core = start("core")?;
    owned.0.push(core);
    ignore_interrupts();
    let ctl = |host: &str, args: &[&str]| -> Result<String> {
        let out = Command::new(&host_core)
            .arg("ctl")
            .arg("--state-dir")
            .arg(dir.join(host))
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "ctl {args:?} on {host}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    for host in ["edge", "core"] {
        wait_for(Duration::from_secs(120), &format!("host {host}"), || {
            Ok(ctl(host, &["inventory"]).is_ok())
        })?;
    }
    let file = |name: &str| files.dir.join(name).display().to_string();
    let httpserver = ctl("edge", &["start-provider", &file("httpserver.par")])?;
    let keyvalue = ctl("core", &["start-provider", &file("keyvalue.par")])?;
    let hello = ctl(
        "core",
        &["start-actor", &file("hello.wasm"), "--count", "4"],
    )?;
    let counter = ctl(
        "core",
        &["start-actor", &file("kvcounter.wasm"), "--count", "4"],
    )?;
    let hello_address = format!("address=127.0.0.1:{}", options.hello_port);
    let counter_address = format!("address=127.0.0.1:{}", options.kvcounter_port);
    for (actor, provider, contract, values) in [
        (
            &hello,
            &httpserver,
            "wasmcloud:httpserver",
            Some(&hello_address),
        ),
        (
            &counter,
            &httpserver,
            "wasmcloud:httpserver",
            Some(&counter_address),
        ),
        (&counter, &keyvalue, "wasmcloud:keyvalue", None),
    ] {
        let mut args = vec!["link", "put", actor.as_str(), provider.as_str(), contract];
        args.extend(values.map(String::as_str));
        ctl("core", &args)?;
    }
    println!();
    println!("The demo lattice is up: httpserver on host edge; hello, kvcounter and keyvalue on host core.");
    println!();
    println!(
        "  curl 'http://127.0.0.1:{}/?name=Ada'     # edge -> hello on core",
        options.hello_port
    );
    println!("  curl http://127.0.0.1:{}/some/path       # edge -> kvcounter on core -> keyvalue on core", options.kvcounter_port);
    println!(
        "  {} ctl --nats {url} --lattice {LATTICE} hosts",
        host_core.display()
    );
    println!(
        "  {} ctl --nats {url} --lattice {LATTICE} link ls",
        host_core.display()
    );
    println!(
        "  {} ctl --nats {url} --lattice {LATTICE} --host HOST_ID inventory",
        host_core.display()
    );
    println!();
    println!("Press Ctrl-C to stop both hosts and the nats-server.");
    // The hosts stop on Ctrl-C (same process group); then the server.
    let mut failed = false;
    for child in owned.0.iter_mut().skip(1) {
        failed |= !child.wait()?.success();
    }
    drop(owned);
    if failed {
        bail!("a host exited with an error; see the log above");
    }
    println!("xtask: the lattice stopped cleanly");
    Ok(())
}

/// The cluster seed both hosts sign with, kept in `dir` across runs.
fn cluster_seed(host_core: &Path, dir: &Path) -> Result<String> {
    let path: PathBuf = dir.join("cluster.seed");
    if let Ok(seed) = std::fs::read_to_string(&path) {
        return Ok(seed.trim().to_owned());
    }
    let out = Command::new(host_core)
        .args(["keys", "gen", "cluster"])
        .env("WASMHOST_KEYS_DIR", dir.join("keys"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let seed = text
        .lines()
        .find_map(|l| l.strip_prefix("Seed: "))
        .context("`host-core keys gen cluster` printed no seed")?
        .trim()
        .to_owned();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // A signing seed: for the owner only.
        let mut file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(seed.as_bytes())?;
    }
    Ok(seed)
}

fn wait_for(within: Duration, what: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + within;
    while !ready()? {
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
