//! Child processes that die with the bench, and what `/proc` says of a
//! process.

use std::{os::unix::process::CommandExt, process::Command};

use anyhow::Result;

/// A baseline server in another process (this binary, or `nats-server`);
/// killed and reaped when dropped, on error paths too.
pub(crate) struct Baseline(pub(crate) std::process::Child);

impl Baseline {
    /// This binary with `args` (one of its `--serve-*` modes).
    pub(crate) fn spawn(args: &[&std::ffi::OsStr]) -> Result<Self> {
        Ok(Self(
            dies_with_bench(Command::new(std::env::current_exe()?).args(args)).spawn()?,
        ))
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes the child get SIGTERM when the bench dies, even by SIGKILL, so a
/// killed bench leaves no host or baseline server behind (a host stops in
/// order on SIGTERM). The signal follows the thread that spawns: the bench
/// spawns these from its main thread and runtime workers, which live as
/// long as it does, or from the blocking thread that also stops the child.
pub(crate) fn dies_with_bench(command: &mut Command) -> &mut Command {
    let bench = nix::unistd::Pid::this();
    // SAFETY: the closure runs in the forked child before exec; it makes
    // two system calls with integer arguments (prctl, getppid), both
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            // The bench died before the request took effect: do not start.
            if nix::unistd::getppid() != bench {
                return Err(std::io::Error::other("the bench is gone"));
            }
            Ok(())
        })
    }
}

/// User plus system CPU time a process has used, in seconds (0 once gone).
pub(crate) fn cpu_secs(pid: i32) -> f64 {
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which may hold spaces.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks_per_sec)
        })
        .unwrap_or(0.0)
}

pub(crate) fn rss_mb(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
