//! cgroup v2 as the last line of defence: every provider gets a cgroup of
//! its own under `<our cgroup>/wasmhost-providers-<pid>`, so whatever it
//! forks (even a process that left its group and session) can be found and
//! killed. No controllers are enabled, so the "no internal processes" rule
//! does not get in the way. Everything here is best effort: without cgroups
//! the launcher still works, relying on process groups and the orphan sweep.

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The cgroup directory of one launcher run.
#[derive(Debug)]
pub(crate) struct Cgroups {
    /// Absolute path of the base directory.
    pub base: PathBuf,
    /// The base as `/proc/PID/cgroup` names it.
    pub base_rel: String,
}

static RUNS: AtomicU64 = AtomicU64::new(0);

impl Cgroups {
    /// Creates this run's base cgroup, or says at debug level why not.
    pub(crate) fn setup() -> Option<Self> {
        match Self::try_setup() {
            Ok(c) => {
                tracing::debug!("providers run in cgroups under {}", c.base.display());
                Some(c)
            }
            Err(e) => {
                tracing::debug!("cgroups are not available, carrying on without: {e}");
                None
            }
        }
    }

    fn try_setup() -> io::Result<Self> {
        let mount = cgroup2_mount()?;
        let own = own_cgroup()?;
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = if run == 0 {
            format!("wasmhost-providers-{pid}")
        } else {
            format!("wasmhost-providers-{pid}-{run}")
        };
        let base_rel = format!("{}/{name}", own.trim_end_matches('/'));
        let base = mount.join(base_rel.trim_start_matches('/'));
        match fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Left by an earlier launcher with our pid that was killed
                // hard: empty it and take it over.
                kill_tree(&base);
            }
            Err(e) => return Err(e),
        }
        // Can we move processes in? (Not if the hierarchy is not delegated.)
        drop(open_procs(&base)?);
        if let Some(parent) = base.parent() {
            reap_stale_siblings(parent);
        }
        Ok(Self { base, base_rel })
    }

    /// Creates the cgroup of one provider; `None` (logged) if that fails.
    pub(crate) fn create(&self, instance: u64) -> Option<(PathBuf, String)> {
        let mut name = instance.to_string();
        let mut n = 0;
        loop {
            let dir = self.base.join(&name);
            match fs::create_dir(&dir) {
                Ok(()) => return Some((dir, format!("{}/{name}", self.base_rel))),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => {
                    n += 1;
                    name = format!("{instance}-{n}");
                }
                Err(e) => {
                    tracing::debug!(instance, "cannot create a cgroup for it: {e}");
                    return None;
                }
            }
        }
    }
}

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid system).
fn cgroup2_mount() -> io::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    let mut found = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (_, Some(dir), Some("cgroup2")) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        // Prefer the canonical place if there are several.
        if dir == "/sys/fs/cgroup" {
            return Ok(PathBuf::from(dir));
        }
        found.get_or_insert_with(|| PathBuf::from(dir));
    }
    found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 mount"))
}

/// Our cgroup in the v2 hierarchy (the `0::` line of /proc/self/cgroup).
fn own_cgroup() -> io::Result<String> {
    let text = fs::read_to_string("/proc/self/cgroup")?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in a cgroup2 hierarchy"))
}

/// Opens `dir/cgroup.procs` for writing, close-on-exec.
pub(crate) fn open_procs(dir: &Path) -> io::Result<OwnedFd> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?;
    Ok(f.into())
}

/// The processes in `dir` and every cgroup below it.
pub(crate) fn pids(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    collect_pids(dir, &mut out);
    out
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    for sub in subdirs(dir) {
        collect_pids(&sub, out);
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// A launcher killed with SIGKILL leaves its cgroup behind, possibly with
/// descendants of its providers that left their process groups. The next
/// launcher (`host-core` starts one at once) ends them: every
/// `wasmhost-providers-PID[-N]` beside ours whose PID is no longer alive.
fn reap_stale_siblings(parent: &Path) {
    for dir in subdirs(parent) {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(rest) = name.strip_prefix("wasmhost-providers-") else {
            continue;
        };
        let Ok(pid) = rest.split('-').next().unwrap_or("").parse::<i32>() else {
            continue;
        };
        if pid as u32 == std::process::id()
            || std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            continue;
        }
        tracing::info!(
            "ending what a killed launcher (pid {pid}) left in {}",
            dir.display()
        );
        kill_tree(&dir);
        let _ = remove_tree(&dir);
    }
}

/// SIGKILLs everything in `dir` and below: `cgroup.kill` (Linux 5.14+), or
/// each listed pid.
pub(crate) fn kill_tree(dir: &Path) {
    let by_kill_file = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
        .and_then(|mut f| f.write_all(b"1"));
    if by_kill_file.is_err() {
        for pid in pids(dir) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Whether any process is left in `dir` or below.
pub(crate) fn populated(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("cgroup.events")) {
        Ok(text) => text.lines().any(|l| l.trim() == "populated 1"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(_) => !pids(dir).is_empty(),
    }
}

/// Removes `dir` and the cgroups below it (they must be empty).
pub(crate) fn remove_tree(dir: &Path) -> io::Result<()> {
    for sub in subdirs(dir) {
        remove_tree(&sub)?;
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
