//! The orphan sweep: as child subreaper, the launcher inherits every
//! descendant of a provider whose parent died, including those that left the
//! provider's process group (`setsid`). Any such process that is not part of
//! a live provider is killed.

use std::fs;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::spawn::Global;

/// `(pid, ppid, pgrp)` of every process, from `/proc/*/stat`.
fn processes() -> Vec<(i32, i32, i32)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid pgrp ..."; comm may contain anything,
            // so split after its last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let mut f = rest.split_whitespace();
            let _state = f.next()?;
            let ppid = f.next()?.parse().ok()?;
            let pgrp = f.next()?.parse().ok()?;
            Some((pid, ppid, pgrp))
        })
        .collect()
}

fn cgroup_of(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// SIGKILLs every child of this process that is not a live provider, not in
/// a live provider's process group and not in a live provider's cgroup.
/// Returns how many such children exist (killed now, or zombies waiting to
/// be reaped), so callers can wait for zero.
pub(crate) fn kill_orphans(g: &Global) -> usize {
    let me = g.launcher_pid;
    let (live_pids, live_cgroups) = g.live();
    let mut n = 0;
    for (pid, ppid, pgrp) in processes() {
        if ppid != me || live_pids.contains(&pid) || live_pids.contains(&pgrp) {
            continue;
        }
        if !live_cgroups.is_empty() {
            if let Some(cg) = cgroup_of(pid) {
                if live_cgroups
                    .iter()
                    .any(|l| cg == *l || cg.starts_with(&format!("{l}/")))
                {
                    continue;
                }
            }
        }
        tracing::debug!(pid, "killing an orphaned provider descendant");
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        n += 1;
    }
    n
}
