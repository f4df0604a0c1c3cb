//! Supervision, as OTP has it: restart what died, quickly at first and
//! then with a growing pause, and give up on a child that dies more often
//! than its restart intensity allows.
//!
//! Every supervised thing (the worker, the launcher, each provider, each
//! actor on the worker) has a [`RestartPolicy`] of named settings, and a
//! [`Supervisor`] that applies it to the exits it is told about.

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use wire::control::ProcessSummary;

pub use wire::control::ProcessState;

use crate::events::Events;

/// How a supervised child is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// At most this many restarts within [`period`](Self::period); one
    /// more and the child is left down (state `failed`).
    pub intensity: usize,
    pub period: Duration,
    /// The pause before the first restart; it doubles on each restart up
    /// to [`backoff_max`](Self::backoff_max).
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    /// A child that ran this long before it died restarts with the first
    /// pause again.
    pub reset_after: Duration,
}

/// The `actor-runtime` worker.
pub const WORKER: RestartPolicy = RestartPolicy {
    intensity: 10,
    period: Duration::from_secs(60),
    backoff_first: Duration::from_millis(50),
    backoff_max: Duration::from_secs(5),
    reset_after: Duration::from_secs(30),
};

/// The `provider-launcher`.
pub const LAUNCHER: RestartPolicy = WORKER;

/// Each provider (key, link name).
pub const PROVIDER: RestartPolicy = RestartPolicy {
    intensity: 5,
    period: Duration::from_secs(60),
    backoff_first: Duration::from_millis(100),
    backoff_max: Duration::from_secs(5),
    reset_after: Duration::from_secs(30),
};

/// Each actor, for the worker crashes it explains (calls of its in flight
/// when the worker died of a fault): past this, it is stopped and the
/// others keep serving.
pub const ACTOR: RestartPolicy = RestartPolicy {
    intensity: 3,
    period: Duration::from_secs(60),
    backoff_first: Duration::ZERO,
    backoff_max: Duration::ZERO,
    reset_after: Duration::from_secs(60),
};

/// What to do about a child that died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Restart it after this pause.
    Restart(Duration),
    /// It died more often than the intensity allows: leave it down.
    GiveUp,
}

/// Applies a [`RestartPolicy`] to one child's exits.
#[derive(Debug, Clone)]
pub struct Supervisor {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    next_backoff: Duration,
}

impl Supervisor {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
            next_backoff: policy.backoff_first,
        }
    }

    pub fn policy(&self) -> RestartPolicy {
        self.policy
    }

    /// The child died after running for `uptime`: restart it (after how
    /// long), or give up on it.
    pub fn exited(&mut self, uptime: Duration) -> Verdict {
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.period)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.policy.intensity {
            return Verdict::GiveUp;
        }
        self.recent.push_back(now);
        if uptime > self.policy.reset_after {
            self.next_backoff = self.policy.backoff_first;
        }
        let delay = self.next_backoff;
        self.next_backoff = (self.next_backoff * 2).min(self.policy.backoff_max);
        Verdict::Restart(delay)
    }

    /// "10 restarts within 60s", for logs and events.
    pub fn describe(&self) -> String {
        format!(
            "{} restarts within {:?}",
            self.policy.intensity, self.policy.period
        )
    }
}

/// How a process ended, as its supervisor tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    Unknown,
}

impl Exit {
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        Self::from_parts(status.code(), status.signal())
    }

    pub fn from_parts(code: Option<i32>, signal: Option<i32>) -> Self {
        match (code, signal) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            _ => Exit::Unknown,
        }
    }

    /// A fault of the process itself (a crash signal, a non-zero exit), as
    /// opposed to SIGKILL or SIGTERM from outside (an operator, the OOM
    /// killer, a test), which no call in flight can be blamed for.
    pub fn is_fault(self) -> bool {
        match self {
            Exit::Code(code) => code != 0,
            Exit::Signal(signal) => signal != libc::SIGKILL && signal != libc::SIGTERM,
            Exit::Unknown => false,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Signal(signal) => write!(f, "was killed by signal {signal}"),
            Exit::Unknown => f.write_str("exited"),
        }
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone). Returns
/// nothing, so no watch guard is held across an await by `select!`.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// What `inventory` shows of a supervised process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStatus {
    pub pid: Option<u32>,
    pub restarts: u32,
    pub state: ProcessState,
}

/// A supervised process's status, shared between its supervisor and
/// whoever asks.
#[derive(Debug)]
pub struct StatusCell(Mutex<ProcessStatus>);

impl Default for StatusCell {
    fn default() -> Self {
        Self(Mutex::new(ProcessStatus {
            pid: None,
            restarts: 0,
            state: ProcessState::Starting,
        }))
    }
}

impl StatusCell {
    pub fn get(&self) -> ProcessStatus {
        *self.0.lock()
    }

    pub fn update(&self, f: impl FnOnce(&mut ProcessStatus)) {
        f(&mut self.0.lock());
    }

    pub fn summary(&self, name: &str) -> ProcessSummary {
        let status = self.get();
        ProcessSummary {
            name: name.to_owned(),
            pid: status.pid,
            restarts: status.restarts,
            state: status.state,
        }
    }
}

/// Why one life of a supervised process ended, when it was not planned.
#[derive(Debug)]
pub struct Died {
    pub reason: anyhow::Error,
    /// The crash is put down to something it ran (an actor's calls), which
    /// its own supervisor counts; the process's restart intensity is kept
    /// for crashes nothing explains.
    pub explained: bool,
}

impl From<anyhow::Error> for Died {
    fn from(reason: anyhow::Error) -> Self {
        Self {
            reason,
            explained: false,
        }
    }
}

/// Tells whoever waits for the first start how it went.
pub type FirstReady = oneshot::Sender<anyhow::Result<()>>;

/// One process a [`run_supervised`] loop keeps alive (the worker, the
/// launcher).
pub trait Lifetime {
    /// Its name in logs, events and inventory.
    fn name(&self) -> &'static str;

    /// One life: start it, serve until it dies (`Err`) or `shutdown` is set
    /// (`Ok`). Once it serves, it sends `Ok` on `first_ready` if that is
    /// still there.
    fn run_once(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        first_ready: &mut Option<FirstReady>,
    ) -> impl Future<Output = Result<(), Died>> + Send;
}

/// Runs `process` until `shutdown` is set, restarting it under `policy`
/// whenever it dies; `status` and `events` say what happens. A first start
/// that fails ends the loop (the host does not come up). Past its
/// intensity the process is left `failed` and the loop waits for shutdown.
pub async fn run_supervised(
    process: &impl Lifetime,
    policy: RestartPolicy,
    status: &StatusCell,
    events: &Events,
    mut shutdown: watch::Receiver<bool>,
    first_ready: FirstReady,
) {
    let name = process.name();
    let mut first_ready = Some(first_ready);
    let mut supervisor = Supervisor::new(policy);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let started = Instant::now();
        let died = match process.run_once(&mut shutdown, &mut first_ready).await {
            Ok(()) => break,
            Err(died) => died,
        };
        tracing::warn!("{name}: {:#}", died.reason);
        if let Some(tx) = first_ready.take() {
            let _ = tx.send(Err(died.reason));
            break;
        }
        events.publish(
            "process_exited",
            serde_json::json!({"name": name, "reason": format!("{:#}", died.reason)}),
        );
        let delay = if died.explained {
            policy.backoff_first
        } else {
            match supervisor.exited(started.elapsed()) {
                Verdict::Restart(delay) => delay,
                Verdict::GiveUp => {
                    let why = format!("more than {}", supervisor.describe());
                    tracing::error!("{name} failed: {why}");
                    events.publish(
                        "process_failed",
                        serde_json::json!({"name": name, "reason": why}),
                    );
                    status.update(|s| {
                        s.state = ProcessState::Failed;
                        s.pid = None;
                    });
                    stopped(&mut shutdown).await;
                    break;
                }
            }
        };
        status.update(|s| {
            s.state = ProcessState::Restarting;
            s.pid = None;
            s.restarts += 1;
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut shutdown) => break,
        }
    }
    if status.get().state != ProcessState::Failed {
        status.update(|s| s.state = ProcessState::Stopped);
    }
    status.update(|s| s.pid = None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_intensity_gives_up() {
        let policy = RestartPolicy {
            intensity: 3,
            period: Duration::from_secs(60),
            backoff_first: Duration::from_millis(10),
            backoff_max: Duration::from_millis(25),
            reset_after: Duration::from_secs(30),
        };
        let mut s = Supervisor::new(policy);
        assert_eq!(
            s.exited(Duration::ZERO),
            Verdict::Restart(Duration::from_millis(10))
        );
        assert_eq!(
            s.exited(Duration::ZERO),
            Verdict::Restart(Duration::from_millis(20))
        );
        // A long run resets the pause.
        assert_eq!(
            s.exited(Duration::from_secs(31)),
            Verdict::Restart(Duration::from_millis(10))
        );
        assert_eq!(s.exited(Duration::ZERO), Verdict::GiveUp);
        assert_eq!(s.describe(), "3 restarts within 60s");
    }

    #[test]
    fn only_faults_are_blamed_on_calls_in_flight() {
        assert!(Exit::Signal(libc::SIGSEGV).is_fault());
        assert!(Exit::Signal(libc::SIGABRT).is_fault());
        assert!(Exit::Code(101).is_fault());
        assert!(!Exit::Signal(libc::SIGKILL).is_fault());
        assert!(!Exit::Signal(libc::SIGTERM).is_fault());
        assert!(!Exit::Code(0).is_fault());
        assert_eq!(Exit::Signal(9).to_string(), "was killed by signal 9");
    }
}
