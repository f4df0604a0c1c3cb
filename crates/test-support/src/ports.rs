//! TCP ports for test listeners that nothing else takes in the meantime.
//!
//! Binding port 0 and closing the listener again races: the kernel hands the
//! same port to the next `bind(0)` or `connect()` anywhere on the machine. CI
//! once lost that race to the `nats-server` the bench smoke test starts, and
//! an HTTP test talked to NATS. So ports here come from below the kernel's
//! ephemeral range, where `bind(0)` and `connect()` never go, and each one is
//! held for this process by a lock on a file named after it, so tests running
//! side by side never pick the same port.
//!
//! Used by `tests/`, the httpserver provider's tests and the bench, which all
//! start real listeners on ports chosen before the listener exists.

use std::{
    fs::{File, OpenOptions},
    net::TcpListener,
    ops::Range,
    time::{SystemTime, UNIX_EPOCH},
};

/// Ports below this may be well-known services; stay clear of them.
const LOWEST: u16 = 10_000;

/// A port nothing listens on, reserved for the rest of this process: no
/// other caller of this function, in any process, gets it until this process
/// exits.
pub fn free_port() -> u16 {
    let range = reservable_range();
    let len = u32::from(range.end - range.start);
    // Start somewhere different in each process so parallel tests rarely
    // contend for the same lock files.
    let seed = std::process::id()
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.subsec_nanos());
    let lock_dir = std::env::temp_dir().join("wasmcloud-host-test-ports");
    std::fs::create_dir_all(&lock_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_dir.display()));
    for step in 0..len {
        let port = range.start + ((seed.wrapping_add(step)) % len) as u16;
        let Some(lock) = lock_port(&lock_dir.join(format!("{port}.lock"))) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            // The lock is released when the process exits, and not before:
            // a test may stop its listener and bind the same port again.
            std::mem::forget(lock);
            return port;
        }
    }
    panic!("no free port in {range:?}: every one is locked or in use");
}

/// The lock file for a port, locked, or `None` when another process holds it.
fn lock_port(path: &std::path::Path) -> Option<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.try_lock().ok().map(|()| file)
}

/// The ports outside the kernel's ephemeral range (and above the
/// well-known ones), the larger side if both are usable.
pub fn reservable_range() -> Range<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".into());
    let mut bounds = text
        .split_whitespace()
        .filter_map(|n| n.parse::<u32>().ok());
    let (low, high) = match (bounds.next(), bounds.next()) {
        (Some(low), Some(high)) => (low, high),
        _ => panic!("cannot read the ephemeral port range from {text:?}"),
    };
    let below = u32::from(LOWEST)..low.max(u32::from(LOWEST));
    let above = (high + 1).max(u32::from(LOWEST))..65_536;
    let larger = if below.len() >= above.len() {
        below
    } else {
        above
    };
    assert!(
        larger.len() >= 1_000,
        "the ephemeral port range {low}-{high} leaves too few ports for test listeners"
    );
    // Both ends fit in u16: 65_536 is only ever an exclusive end.
    larger.start as u16..(larger.end.min(65_535)) as u16
}

#[cfg(test)]
mod tests {
    use super::{free_port, reservable_range};

    #[test]
    fn ports_are_outside_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        let range = reservable_range();
        assert!(ports.iter().all(|p| range.contains(p)), "{ports:?}");
        // A port that was handed out is not handed out by a second process.
        let lock_dir = std::env::temp_dir().join("wasmcloud-host-test-ports");
        let other = std::process::Command::new("flock")
            .args(["--nonblock", "--exclusive"])
            .arg(lock_dir.join(format!("{}.lock", ports[0])))
            .arg("true")
            .status()
            .expect("flock(1) runs");
        assert!(!other.success(), "another process took port {}", ports[0]);
    }
}
