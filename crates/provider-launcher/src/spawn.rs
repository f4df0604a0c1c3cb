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
use wire::launcher::InstanceId;

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
}

/// A request to the fork thread.
pub(crate) struct ForkJob {
    pub instance: InstanceId,
    pub binary: String,
    pub env: Vec<(String, String)>,
    pub cgroup: Option<(PathBuf, String)>,
    pub events: mpsc::UnboundedSender<Event>,
    pub reply: oneshot::Sender<Result<Spawned, String>>,
}

pub(crate) struct Global {
    /// Our own pid, recorded once: children compare `getppid()` with it.
    pub launcher_pid: i32,
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
        let ForkJob {
            instance,
            binary,
            env,
            cgroup,
            events,
            reply,
        } = job;
        let result = spawn_one(g, instance, &binary, &env, cgroup, events);
        let _ = reply.send(result);
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
    path: *const libc::c_char,
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

fn spawn_one(
    g: &Global,
    instance: InstanceId,
    binary: &str,
    env: &[(String, String)],
    cgroup: Option<(PathBuf, String)>,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Spawned, String> {
    // Everything the child touches is built here, before the fork.
    let path = cstring("binary path", binary.to_owned())?;
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
    let (cgroup_dir, cgroup_rel, cgroup_fd) = match cgroup {
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
        path: path.as_ptr(),
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
    #[allow(clippy::disallowed_methods)] // only the launcher forks: see ARCHITECTURE.md
    // SAFETY: the process is multi-threaded, so the child may only call
    // async-signal-safe functions until it execs. `exec_child` only makes raw
    // system calls (write, setpgid, prctl, getppid, sigprocmask, sigaction,
    // dup2, fcntl, close_range/close, execve, _exit) on data prepared above:
    // every CString, argv/envp array, descriptor and the cgroup procs file
    // exist before the fork, and the child allocates nothing and takes no
    // lock.
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
            events,
        },
    );
    drop(children);

    drop((stdin_r, stdout_w, stderr_w, err_w, cgroup_fd));
    // Keep the prepared strings alive until here (the child used them).
    drop((argv, envp, env_c, path));

    match read_exec_error(&err_r) {
        None => Ok(Spawned {
            shared,
            stdin: Some(stdin_w),
            stdout: stdout_r,
            stderr: stderr_r,
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
    // Close everything else but the exec-error pipe (close-on-exec anyway).
    let err = ctx.err as libc::c_uint;
    // SAFETY: close_range takes integers; it only closes descriptors.
    let closed = unsafe {
        (err <= 3 || libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, err - 1, 0) == 0)
            && libc::syscall(libc::SYS_close_range, err + 1, libc::c_uint::MAX, 0) == 0
    };
    if !closed {
        for fd in 3..ctx.max_fd {
            if fd != ctx.err {
                // SAFETY: closing a descriptor number, open or not.
                unsafe { libc::close(fd) };
            }
        }
    }
    // SAFETY: path, argv and envp are NUL-terminated strings and
    // NULL-terminated arrays built before the fork and alive in this image.
    unsafe { libc::execve(ctx.path, ctx.argv, ctx.envp) };
    // SAFETY: see `fail`.
    unsafe { fail(ctx, STAGE_EXEC) }
}
