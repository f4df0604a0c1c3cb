//! What starting a process and a process's memory cost with nothing of
//! ours in them.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::harness::rss_mb;

/// One spawn of `/bin/true`, until it has exited.
pub(crate) fn spawn_true() -> Result<Duration> {
    let t = Instant::now();
    Command::new("/bin/true").status()?;
    Ok(t.elapsed())
}

/// The resident memory of `sleep`, in MB.
pub(crate) fn sleep_rss() -> Result<f64> {
    let mut child = Command::new("sleep").arg("5").spawn()?;
    std::thread::sleep(Duration::from_millis(50));
    let rss = rss_mb(child.id() as i32);
    let _ = child.kill();
    let _ = child.wait();
    Ok(rss)
}
