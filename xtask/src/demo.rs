//! `cargo xtask run`: build everything, sign the demo actors, pack the demo
//! providers, and run the host on `demo/manifest.toml` until Ctrl-C.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{cargo, fixtures, root, run};

pub(crate) struct DemoOptions {
    pub hello_port: u16,
    pub kvcounter_port: u16,
    /// Two hosts joined through a nats-server instead of one.
    pub lattice: bool,
}

pub(crate) fn parse(args: &[String]) -> Result<DemoOptions> {
    let mut options = DemoOptions {
        hello_port: 8080,
        kvcounter_port: 8081,
        lattice: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<u16> {
            it.next()
                .with_context(|| format!("{name} needs a port number"))?
                .parse()
                .with_context(|| format!("{name} needs a port number"))
        };
        match arg.as_str() {
            "--hello-port" => options.hello_port = value("--hello-port")?,
            "--kvcounter-port" => options.kvcounter_port = value("--kvcounter-port")?,
            "--lattice" => options.lattice = true,
            other => bail!(
                "unknown option `{other}` (use --hello-port N, --kvcounter-port N, --lattice)"
            ),
        }
    }
    Ok(options)
}

/// The built artifacts of the demo, signed and packed.
pub(crate) struct DemoFiles {
    pub dir: PathBuf,
}

/// Builds binaries and fixtures, then signs and packs the demo into `dir`
/// with keys kept in `dir/keys`, so keys (and so the keyvalue data) are the
/// same from one run to the next.
pub(crate) fn prepare(dir: &Path) -> Result<DemoFiles> {
    fixtures()?;
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    std::fs::create_dir_all(dir)?;
    let bin = root().join("target").join("debug");
    let fixtures = root().join("target").join("fixtures");
    let host_core = bin.join("host-core");
    let keys = dir.join("keys");
    let sign = |input: &str, output: &str, name: &str, caps: &[&str]| -> Result<()> {
        let mut cmd = Command::new(&host_core);
        cmd.env("WASMHOST_KEYS_DIR", &keys)
            .args(["claims", "sign"])
            .arg(fixtures.join(input))
            .arg("-o")
            .arg(dir.join(output))
            .args(["--name", name]);
        for cap in caps {
            cmd.args(["--cap", cap]);
        }
        quiet(&mut cmd)
    };
    sign(
        "hello.wasm",
        "hello.wasm",
        "hello",
        &[
            "wasmcloud:httpserver",
            "wasmcloud:builtin:logging",
            "wasmcloud:builtin:numbergen",
        ],
    )?;
    sign(
        "kvcounter.wasm",
        "kvcounter.wasm",
        "kvcounter",
        &["wasmcloud:httpserver", "wasmcloud:keyvalue"],
    )?;
    let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    let pack = |binary: &str, output: &str, name: &str, capid: &str| -> Result<()> {
        let mut cmd = Command::new(&host_core);
        cmd.env("WASMHOST_KEYS_DIR", &keys)
            .args(["par", "create", "--name", name, "--vendor", "wasmhost"])
            .args(["--capid", capid, "--target"])
            .arg(format!("{target}={}", bin.join(binary).display()))
            .arg("-o")
            .arg(dir.join(output));
        quiet(&mut cmd)
    };
    pack(
        "httpserver-provider",
        "httpserver.par",
        "httpserver",
        "wasmcloud:httpserver",
    )?;
    pack(
        "keyvalue-provider",
        "keyvalue.par",
        "keyvalue",
        "wasmcloud:keyvalue",
    )?;
    println!(
        "xtask: signed the demo actors and packed the providers into {}",
        dir.display()
    );
    Ok(DemoFiles {
        dir: dir.to_path_buf(),
    })
}

fn quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("cannot run host-core")?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            crate::describe(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Stops before the build when a demo port cannot be the demo's. The host
/// would start anyway, log that the httpserver cannot bind, and the curl
/// lines printed below would reach whatever else listens there.
fn check_ports(options: &DemoOptions) -> Result<()> {
    if options.hello_port == options.kvcounter_port {
        bail!(
            "--hello-port and --kvcounter-port are both {}: each actor needs its own port",
            options.hello_port
        );
    }
    for (port, flag) in [
        (options.hello_port, "--hello-port"),
        (options.kvcounter_port, "--kvcounter-port"),
    ] {
        // A connection, not a trial bind: a port left in TIME_WAIT by the
        // last run fails a plain bind but not the provider's (SO_REUSEADDR).
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok() {
            bail!(
                "port {port} on 127.0.0.1 is already in use by another program: \
                 stop it, or choose another port with `cargo xtask run {flag} N`"
            );
        }
    }
    Ok(())
}

pub(crate) fn run_demo(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    check_ports(&options)?;
    let demo_dir = root().join("target").join("demo");
    if options.lattice {
        crate::packages::NATS_SERVER.ensure()?;
    }
    let files = prepare(&demo_dir)?;
    if options.lattice {
        return crate::demo_lattice::run(&options, &files);
    }
    let state = files.dir.join("state");
    let host_core = root().join("target").join("debug").join("host-core");
    let mut child = Command::new(&host_core)
        .arg("run")
        .arg("--state-dir")
        .arg(&state)
        .arg("--manifest")
        .arg(root().join("demo").join("manifest.toml"))
        .env("DEMO_DIR", &files.dir)
        .env("HELLO_PORT", options.hello_port.to_string())
        .env("KVCOUNTER_PORT", options.kvcounter_port.to_string())
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start host-core")?;
    // Ctrl-C reaches the host too (same process group); the host stops
    // gracefully and we wait for it instead of dying first.
    ignore_interrupts();

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the host stopped before it was ready ({status}); see the log above");
        }
        let out = Command::new(&host_core)
            .args(["ctl", "--state-dir"])
            .arg(&state)
            .args(["inventory", "--json"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()?;
        if out.status.success() && ready(&String::from_utf8_lossy(&out.stdout)) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the host did not become ready within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!();
    println!("The demo host is up. Try:");
    println!();
    println!(
        "  curl 'http://127.0.0.1:{}/?name=Ada'     # hello, a wasmbus module",
        options.hello_port
    );
    println!("  curl http://127.0.0.1:{}/some/path       # kvcounter, a component counting hits in keyvalue", options.kvcounter_port);
    println!(
        "  {} ctl --state-dir {} inventory",
        host_core.display(),
        state.display()
    );
    println!();
    println!("Press Ctrl-C to stop; the counter survives a restart.");
    let status = child.wait()?;
    if !status.success() {
        bail!("the host exited with {status}");
    }
    println!("xtask: the host stopped cleanly");
    Ok(())
}

/// Ready once both providers run (the manifest was applied whole before the
/// control socket answers, so actors and links are in place too).
fn ready(inventory_json: &str) -> bool {
    inventory_json.matches("\"state\": \"running\"").count() >= 4
}

pub(crate) fn ignore_interrupts() {
    // SAFETY: installing SIG_IGN runs no handler code in this process; the
    // host was spawned before this, so it keeps the default disposition.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_or_given_twice_stops_the_demo_with_the_way_out() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let options = |hello_port, kvcounter_port| DemoOptions {
            hello_port,
            kvcounter_port,
            lattice: false,
        };
        let error = check_ports(&options(port, 1)).unwrap_err().to_string();
        assert!(error.contains(&format!("port {port}")), "{error}");
        assert!(error.contains("--hello-port N"), "{error}");
        let error = check_ports(&options(1, port)).unwrap_err().to_string();
        assert!(error.contains("--kvcounter-port N"), "{error}");
        let error = check_ports(&options(1, 1)).unwrap_err().to_string();
        assert!(error.contains("both 1"), "{error}");
    }
}
