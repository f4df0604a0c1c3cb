//! The process-wide half of the launcher: the one thread that forks, the
//! table of live providers, and the reaper.
//!
//! Everything here is global to the process on purpose. The parent-death
//! signal of a provider follows the *thread* that forked it, so all forks
//! happen on one thread that lives as long as the process. And `waitpid(-1)`
//! reaps every child of the process, so the table that maps a pid back to its
//! provider must be shared by every caller of the reaper.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard, OnceLock};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use tokio::sync::{mpsc, oneshot};
use wire::launcher::{Confinement, InstanceId};

use crate::image::Image;
use crate::Event;

/// What one provider process shares between the reaper, its run loop and
/// the task that stops it.
#[derive(Debug)]
pub(crate) struct ChildShared {
    pub instance: InstanceId,
    pub pid: i32,
    /// Its cgroup directory, if it has one.
    pub cgroup: Option<PathBuf>,
    /// Its cgroup as `/proc/PID/cgroup` names it (relative to the mount).
    pub cgroup_rel: Option<String>,
    /// Set by a stop: the reaper then leaves the rest of the group to it.
    pub stopping: AtomicBool,
    /// Set by the reaper once the provider's own pid has been waited for.
    pub reaped: AtomicBool,
}

struct ChildRecord {
    shared: Arc<ChildShared>,
    events: mpsc::UnboundedSender<Event>,
}

/// A provider process that was started (exec succeeded).
#[derive(Debug)]
pub(crate) struct Spawned {
    pub shared: Arc<ChildShared>,
    /// Taken by the task that feeds it.
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// How the provider is confined.
    pub confinement: Confinement,
    /// What it runs; held so the image cache does not evict it meanwhile.
    pub image: Arc<Image>,
}

/// A request to the fork thread.
pub(crate) struct ForkJob {
    pub instance: InstanceId,
    /// The path the binary was read from: its `argv[0]`.
    pub binary: String,
    /// The verified bytes to exec.
    pub image: Arc<Image>,
    /// The only directory the provider may write.
    pub data_dir: String,
    pub env: Vec<(String, String)>,
    pub cgroup: Option<(PathBuf, String)>,
    pub events: mpsc::UnboundedSender<Event>,
    pub reply: oneshot::Sender<Result<Spawned, String>>,
}

pub(crate) struct Global {
    /// Our own pid, recorded once: children compare `getppid()` with it.
    pub launcher_pid: i32,
    /// The capabilities every provider must lose before it execs.
    caps: Caps,
    jobs: Mutex<std_mpsc::Sender<ForkJob>>,
    children: Mutex<HashMap<i32, ChildRecord>>,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();

/// The process-wide launcher state; the first call makes this process a
/// child subreaper and starts the fork thread.
pub(crate) fn global() -> std::io::Result<&'static Global> {
    if let Some(g) = GLOBAL.get() {
        return Ok(g);
    }
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers;
    // it only changes an attribute of this process.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_CHILD_SUBREAPER,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (tx, rx) = std_mpsc::channel::<ForkJob>();
    // This thread must never exit while providers run: their parent-death
    // signal fires when the thread that forked them ends.
    std::thread::Builder::new()
        .name("provider-fork".into())
        .spawn(move || fork_thread(rx))?;
    let g = Global {
        launcher_pid: std::process::id() as i32,
        caps: Caps::of_this_process(),
        jobs: Mutex::new(tx),
        children: Mutex::new(HashMap::new()),
    };
    // Another caller may have won the race; its thread then idles forever
    // (the extra thread is harmless and keeps the invariant that no fork
    // thread exits).
    Ok(GLOBAL.get_or_init(|| g))
}

impl Global {
    fn children(&self) -> MutexGuard<'_, HashMap<i32, ChildRecord>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn submit(&self, job: ForkJob) {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(std_mpsc::SendError(job)) = jobs.send(job) {
            let _ = job
                .reply
                .send(Err("the launcher's fork thread is gone".into()));
        }
    }

    /// Reaps every child that has ended (providers, and any process that was
    /// reparented to us as subreaper) and reports providers' exits.
    pub(crate) fn reap(&self) {
        let mut children = self.children();
        loop {
            let (pid, code, signal) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Some(code), None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, None, Some(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("waitpid failed: {e}");
                    break;
                }
            };
            let Some(rec) = children.remove(&pid.as_raw()) else {
                tracing::trace!(pid = pid.as_raw(), "reaped a descendant");
                continue;
            };
            rec.shared.reaped.store(true, Ordering::SeqCst);
            if !rec.shared.stopping.load(Ordering::SeqCst) {
                // The provider ended on its own: what it left in its group
                // goes with it. Done under the lock, so no fork of ours can
                // reuse this pid as a new group meanwhile.
                let _ = killpg(pid, Signal::SIGKILL);
            }
            let _ = rec.events.send(Event::Exited {
                instance: rec.shared.instance,
                pid: pid.as_raw(),
                code,
                signal,
            });
        }
    }

    /// Pids, process groups and cgroups of every live provider of this
    /// process (all runs), which an orphan sweep must spare.
    pub(crate) fn live(&self) -> (Vec<i32>, Vec<String>) {
        let children = self.children();
        let pids = children.keys().copied().collect();
        let cgroups = children
            .values()
            .filter_map(|r| r.shared.cgroup_rel.clone())
            .collect();
        (pids, cgroups)
    }
}

fn fork_thread(rx: std_mpsc::Receiver<ForkJob>) {
    while let Ok(job) = rx.recv() {
        let Some(g) = GLOBAL.get() else {
            // Only reachable for a thread that lost the initialisation race;
            // its sender was dropped, so this loop ends at once anyway.
            continue;
        };
        let result = spawn_one(g, &job);
        let _ = job.reply.send(result);
    }
    // The sender lives in a static and is never dropped once installed, so
    // the thread that serves it never gets here.
    loop {
        std::thread::park();
    }
}

/// Everything the child needs, prepared before the fork so that the child
/// allocates nothing.
struct ChildCtx {
    launcher_pid: libc::pid_t,
    /// The sealed memfd to exec, close-on-exec unless `keep_exec_fd`.
    exec_fd: RawFd,
    /// A script's interpreter opens `/dev/fd/N`: the memfd stays open.
    keep_exec_fd: bool,
    /// The prepared Landlock ruleset, or -1 without Landlock.
    ruleset: RawFd,
    /// Drop every capability (and the bounding set, `drop_bounding` bits).
    drop_caps: bool,
    drop_bounding: u64,
    last_cap: libc::c_int,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    err: RawFd,
    cgroup_procs: RawFd,
    default_action: libc::sigaction,
    empty_mask: libc::sigset_t,
    max_fd: libc::c_int,
}

/// Stages at which the child can fail, reported with the errno.
const STAGE_EXEC: u32 = 0;
const STAGE_SETPGID: u32 = 1;
const STAGE_PRCTL: u32 = 2;
const STAGE_DUP2: u32 = 3;
const STAGE_CAPS: u32 = 4;
const STAGE_NO_NEW_PRIVS: u32 = 5;
const STAGE_LANDLOCK: u32 = 6;
const STAGE_FD: u32 = 7;

/// The capability sets of the launcher, from `/proc/self/status`.
#[derive(Debug, Clone, Copy)]
struct Caps {
    /// Whether a provider would hold or regain any capability: root (who
    /// regains the bounding set on exec) or any permitted, inheritable or
    /// ambient capability.
    any: bool,
    /// The bounding set to drop (root only: without CAP_SETPCAP nobody can).
    bounding: u64,
    last_cap: libc::c_int,
}

impl Caps {
    fn of_this_process() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0)
        };
        let root = nix::unistd::geteuid().is_root() || nix::unistd::getuid().is_root();
        let held = field("CapPrm:") | field("CapInh:") | field("CapAmb:") | field("CapEff:");
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        Self {
            any: root || held != 0,
            bounding: if root { field("CapBnd:") } else { 0 },
            last_cap,
        }
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn cstring(what: &str, s: String) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("the {what} contains a NUL byte"))
}

/// Returns `fd` unchanged if it is above the standard descriptors, else a
/// close-on-exec duplicate that is (so the child's dup2 onto 0..2 cannot
/// clobber another of its pipes).
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd, String> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own; the new
    // descriptor is returned and owned by the OwnedFd below.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(format!(
            "cannot duplicate a pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `new` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot create a pipe: {}", e.desc()))?;
    Ok((above_stdio(r)?, above_stdio(w)?))
}

fn spawn_one(g: &Global, job: &ForkJob) -> Result<Spawned, String> {
    let ForkJob {
        instance,
        ref binary,
        ref image,
        ref data_dir,
        ref env,
        ref cgroup,
        ref events,
        ..
    } = *job;
    // Everything the child touches is built here, before the fork.
    let path = cstring("binary path", binary.to_owned())?;
    let sandbox = crate::sandbox::prepare(std::path::Path::new(data_dir))?;
    let ruleset = sandbox.ruleset.map(above_stdio).transpose()?;
    // A descriptor of this launch's own, above 0..2, close-on-exec.
    let exec_fd = image
        .fd
        .try_clone()
        .map_err(|e| format!("cannot duplicate the image of {binary}: {e}"))
        .and_then(above_stdio)?;
    let mut env_c = Vec::with_capacity(env.len());
    for (k, v) in env {
        if k.is_empty() || k.contains('=') {
            return Err(format!("invalid environment variable name {k:?}"));
        }
        env_c.push(cstring("environment", format!("{k}={v}"))?);
    }
    let argv: [*const libc::c_char; 2] = [path.as_ptr(), std::ptr::null()];
    let envp: Vec<*const libc::c_char> = env_c
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();

    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (err_r, err_w) = pipe()?;

    // The cgroup is best effort: without its procs file the provider runs
    // outside one.
    let (cgroup_dir, cgroup_rel, cgroup_fd) = match cgroup.clone() {
        Some((dir, rel)) => match crate::cgroup::open_procs(&dir) {
            Ok(fd) => (Some(dir), Some(rel), Some(fd)),
            Err(e) => {
                tracing::debug!(instance, "cannot use cgroup {}: {e}", dir.display());
                (None, None, None)
            }
        },
        None => (None, None, None),
    };

    // SAFETY: an all-zero sigaction is a valid value (no flags, empty mask);
    // with SIG_DFL as its handler it restores default dispositions.
    let mut default_action: libc::sigaction = unsafe { std::mem::zeroed() };
    default_action.sa_sigaction = libc::SIG_DFL;
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully.
    let mut empty_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `empty_mask` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut empty_mask) };
    let max_fd = max_fd();

    let ctx = ChildCtx {
        launcher_pid: g.launcher_pid,
        exec_fd: exec_fd.as_raw_fd(),
        keep_exec_fd: image.script,
        ruleset: ruleset.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        drop_caps: g.caps.any,
        drop_bounding: g.caps.bounding,
        last_cap: g.caps.last_cap,
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        stdin: stdin_r.as_raw_fd(),
        stdout: stdout_w.as_raw_fd(),
        stderr: stderr_w.as_raw_fd(),
        err: err_w.as_raw_fd(),
        cgroup_procs: cgroup_fd.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        default_action,
        empty_mask,
        max_fd,
    };

    // Held across the fork: the reaper cannot see this child's exit before
    // it is in the table.
    let mut children = g.children();
    #[expect(
        clippy::disallowed_methods,
        reason = "only the launcher forks: see ARCHITECTURE.md"
    )]
    // SAFETY: the process is multi-threaded, so the child may only call
    // async-signal-safe functions until it execs. `exec_child` only makes raw
    // system calls (write, setpgid, prctl, getppid, sigprocmask, sigaction,
    // dup2, fcntl, capset, landlock_restrict_self, close_range/close,
    // execveat, _exit) on data prepared above: every CString, argv/envp
    // array, descriptor, the Landlock ruleset and the cgroup procs file exist
    // before the fork, and the child allocates nothing and takes no lock.
    let forked = unsafe { nix::unistd::fork() };
    let child = match forked {
        Ok(ForkResult::Child) => {
            // SAFETY: we are the freshly forked child; see above.
            unsafe { exec_child(&ctx) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(format!("cannot fork: {}", e.desc())),
    };
    // Also done by the child; doing it here too closes the race where we
    // signal the group before the child has created it. EACCES (the child
    // already exec'd) and ESRCH (it already died) are fine.
    let _ = nix::unistd::setpgid(child, child);
    let shared = Arc::new(ChildShared {
        instance,
        pid: child.as_raw(),
        cgroup: cgroup_dir,
        cgroup_rel,
        stopping: AtomicBool::new(false),
        reaped: AtomicBool::new(false),
    });
    children.insert(
        child.as_raw(),
        ChildRecord {
            shared: shared.clone(),
            events: events.clone(),
        },
    );
    drop(children);

    drop((
        stdin_r, stdout_w, stderr_w, err_w, cgroup_fd, exec_fd, ruleset,
    ));
    // Keep the prepared strings alive until here (the child used them).
    drop((argv, envp, env_c, path));

    match read_exec_error(&err_r) {
        None => Ok(Spawned {
            shared,
            stdin: Some(stdin_w),
            stdout: stdout_r,
            stderr: stderr_r,
            confinement: sandbox.confinement,
            image: image.clone(),
        }),
        Some((stage, errno)) => {
            // The child has exited with 127; the reaper reaps it, and the run
            // ignores the exit of a launch that failed.
            let desc = Errno::from_raw(errno).desc();
            Err(match stage {
                STAGE_EXEC => format!("cannot exec {binary}: {desc}"),
                STAGE_SETPGID => format!("cannot start {binary}: setpgid failed: {desc}"),
                STAGE_PRCTL => format!("cannot start {binary}: prctl failed: {desc}"),
                STAGE_DUP2 => format!("cannot start {binary}: dup2 failed: {desc}"),
                STAGE_CAPS => format!("cannot start {binary}: cannot drop capabilities: {desc}"),
                STAGE_NO_NEW_PRIVS => {
                    format!("cannot start {binary}: prctl(PR_SET_NO_NEW_PRIVS) failed: {desc}")
                }
                STAGE_LANDLOCK => {
                    format!("cannot start {binary}: cannot enter the Landlock sandbox: {desc}")
                }
                STAGE_FD => format!("cannot start {binary}: fcntl failed: {desc}"),
                _ => format!("cannot start {binary}: {desc}"),
            })
        }
    }
}

/// Reads the child's report: EOF (close-on-exec closed the pipe) means the
/// exec succeeded.
fn read_exec_error(fd: &OwnedFd) -> Option<(u32, i32)> {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    while filled < buf.len() {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if filled < buf.len() {
        return None;
    }
    let stage = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Some((stage, errno))
}

/// The highest descriptor the close loop covers if close_range is missing.
fn max_fd() -> libc::c_int {
    // SAFETY: rlimit is plain data, filled in by getrlimit.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return 65536;
    }
    lim.rlim_cur.min(1 << 20) as libc::c_int
}

/// The child between fork and exec. Never returns.
///
/// # Safety
/// Must only be called in the child of a fork, with `ctx` built before the
/// fork. Only async-signal-safe calls are made; nothing is allocated.
unsafe fn exec_child(ctx: &ChildCtx) -> ! {
    // SAFETY (for every block below): these are raw system calls on plain
    // integers and on pointers to data that was fully built before the fork
    // and is still mapped in the child; none allocates or takes a lock.
    unsafe fn fail(ctx: &ChildCtx, stage: u32) -> ! {
        // SAFETY: errno is thread-local and readable after any call.
        let errno = unsafe { *libc::__errno_location() };
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&stage.to_ne_bytes());
        buf[4..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: writes 8 bytes from a stack buffer to our own pipe, then
        // exits without running any atexit handler or destructor.
        unsafe {
            libc::write(ctx.err, buf.as_ptr().cast(), buf.len());
            libc::_exit(127)
        }
    }

    // Join the provider's cgroup first, so everything it ever forks is in it.
    if ctx.cgroup_procs >= 0 {
        // SAFETY: writes one byte from a static string to an open descriptor.
        unsafe { libc::write(ctx.cgroup_procs, b"0".as_ptr().cast(), 1) };
    }
    // SAFETY: setpgid on ourselves, integers only.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        // SAFETY: see `fail`.
        unsafe { fail(ctx, STAGE_SETPGID) }
    }
    // SAFETY: PR_SET_PDEATHSIG takes a signal number, no pointers.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        // SAFETY: see `fail`.
        unsafe { fail(ctx, STAGE_PRCTL) }
    }
    // The launcher may have died between fork and prctl: then nobody would
    // ever kill us.
    // SAFETY: getppid takes no arguments.
    if unsafe { libc::getppid() } != ctx.launcher_pid {
        // SAFETY: exits the child at once.
        unsafe { libc::_exit(1) }
    }
    // SAFETY: sets our signal mask from a sigset_t initialised before fork.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &ctx.empty_mask, std::ptr::null_mut()) };
    // Handlers are reset by exec, but ignored signals (SIGPIPE in a Rust
    // process) would stay ignored.
    for sig in 1..65 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installs SIG_DFL from a sigaction built before the fork;
        // errors for reserved signal numbers are ignored.
        unsafe { libc::sigaction(sig, &ctx.default_action, std::ptr::null_mut()) };
    }
    for (src, dst) in [(ctx.stdin, 0), (ctx.stdout, 1), (ctx.stderr, 2)] {
        // SAFETY: dup2 on descriptors we hold (all > 2 by construction).
        if unsafe { libc::dup2(src, dst) } < 0 {
            // SAFETY: see `fail`.
            unsafe { fail(ctx, STAGE_DUP2) }
        }
    }
    if ctx.keep_exec_fd {
        // SAFETY: F_SETFD on a descriptor we hold; clears close-on-exec.
        if unsafe { libc::fcntl(ctx.exec_fd, libc::F_SETFD, 0) } != 0 {
            // SAFETY: see `fail`.
            unsafe { fail(ctx, STAGE_FD) }
        }
    }
    if ctx.drop_caps {
        // The bounding set first (it needs CAP_SETPCAP, which goes next):
        // a root provider would otherwise regain it on exec.
        for cap in 0..=ctx.last_cap.min(63) {
            if ctx.drop_bounding & (1u64 << cap) == 0 {
                continue;
            }
            // SAFETY: PR_CAPBSET_DROP takes a capability number by value.
            let rc = unsafe {
                libc::prctl(
                    libc::PR_CAPBSET_DROP,
                    cap as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            };
            if rc != 0 {
                // SAFETY: see `fail`.
                unsafe { fail(ctx, STAGE_CAPS) }
            }
        }
        // SAFETY: clearing the ambient set takes integers only; EINVAL on a
        // kernel without ambient capabilities is fine (there are none).
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        // SAFETY: capset reads a header and two data structs from our stack,
        // laid out as the kernel's (version 3); dropping is always allowed.
        if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
            // SAFETY: see `fail`.
            unsafe { fail(ctx, STAGE_CAPS) }
        }
    }
    // No setuid or file-capability gains from here on; also what lets an
    // unprivileged process enter a Landlock domain.
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        // SAFETY: see `fail`.
        unsafe { fail(ctx, STAGE_NO_NEW_PRIVS) }
    }
    if ctx.ruleset >= 0 {
        // The landlock crate's `restrict_self` is not used here: it consumes
        // the ruleset (a drop in the child) and builds a status value; the
        // system call itself is all the child needs.
        // SAFETY: landlock_restrict_self takes the ruleset descriptor
        // prepared before the fork and a flags integer; it allocates nothing
        // in this process.
        if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ctx.ruleset, 0u32) } != 0 {
            // SAFETY: see `fail`.
            unsafe { fail(ctx, STAGE_LANDLOCK) }
        }
    }
    // Close everything else but the exec-error pipe (close-on-exec anyway)
    // and the image to exec.
    let (low, high) = if ctx.err < ctx.exec_fd {
        (ctx.err as libc::c_uint, ctx.exec_fd as libc::c_uint)
    } else {
        (ctx.exec_fd as libc::c_uint, ctx.err as libc::c_uint)
    };
    // SAFETY: close_range takes integers; it only closes descriptors.
    let closed = unsafe {
        (low <= 3 || libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, low - 1, 0) == 0)
            && (high <= low + 1 || libc::syscall(libc::SYS_close_range, low + 1, high - 1, 0) == 0)
            && libc::syscall(libc::SYS_close_range, high + 1, libc::c_uint::MAX, 0) == 0
    };
    if !closed {
        for fd in 3..ctx.max_fd {
            if fd != ctx.err && fd != ctx.exec_fd {
                // SAFETY: closing a descriptor number, open or not.
                unsafe { libc::close(fd) };
            }
        }
    }
    // Exec the verified bytes themselves, not a path that could have been
    // replaced since they were hashed.
    // SAFETY: exec_fd is an open memfd; the empty path, argv and envp are
    // NUL-terminated strings and NULL-terminated arrays built before the fork
    // and alive in this image.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            ctx.exec_fd,
            c"".as_ptr(),
            ctx.argv,
            ctx.envp,
            libc::AT_EMPTY_PATH,
        )
    };
    // SAFETY: see `fail`.
    unsafe { fail(ctx, STAGE_EXEC) }
}
