//! Who is at the other end of a local socket: the ancestry of a peer's pid,
//! read from `/proc/<pid>/stat`.
//!
//! Providers run as the host's user, so a peer's uid says nothing about
//! whether it is one. Its ancestry does: the provider launcher is a child
//! subreaper, so every provider process, however it forked or whatever
//! session it made, has the launcher (and so `host-core`) as an ancestor for
//! as long as the launcher lives. A socket that no provider may use (the
//! control socket) refuses any peer that descends from the host.
//!
//! Every answer here is a snapshot of a process tree that can change under
//! it; a reader that cannot tell (a `/proc` entry it may not read) gets an
//! error, and a caller refusing peers must treat an error as a refusal.

use std::io;

/// More links than any real process tree has: a longer walk is a loop made
/// of reused pids, and is an error.
const MAX_DEPTH: usize = 4096;

/// The parent pid in the text of a `/proc/<pid>/stat` file:
/// `pid (comm) state ppid ...`. `comm` may contain anything, spaces and
/// parentheses included, so the fields are read after its last `)`.
/// Makes this process's `/proc/<pid>/environ`, `fd/`, `mem` and `maps`
/// unreadable, and ptrace impossible, for other processes of the same
/// user (providers run as the host's user). `stat`, `status` and `cmdline`
/// stay readable. A child's exec resets it.
pub fn hide_from_same_user() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes an integer by value and no pointers;
    // the call only changes this process's own attribute.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_DUMPABLE,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn parse_stat_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// The parent of `pid`.
pub fn parent(pid: i32) -> io::Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_ppid(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}/stat"),
        )
    })
}

/// The ancestors of `pid`, its parent first, ending with the process whose
/// parent is 0 (init, or `kthreadd`). A link that cannot be read is an error,
/// unless the process in it exited and its child was reparented meanwhile,
/// in which case the walk follows the new parent.
pub fn ancestors(pid: i32) -> io::Result<Vec<i32>> {
    let mut chain: Vec<i32> = Vec::new();
    let mut retries = 0;
    loop {
        let current = chain.last().copied().unwrap_or(pid);
        let ppid = match parent(current) {
            Ok(ppid) => ppid,
            Err(e) => {
                // `current` may have exited after its child named it: if the
                // child's parent changed, walk on from the new one.
                let Some(&gone) = chain.last() else {
                    return Err(e);
                };
                chain.pop();
                let child = chain.last().copied().unwrap_or(pid);
                retries += 1;
                match parent(child) {
                    Ok(now) if now != gone && retries < 16 => {
                        if now == 0 {
                            return Ok(chain);
                        }
                        chain.push(now);
                        continue;
                    }
                    _ => return Err(e),
                }
            }
        };
        if ppid == 0 {
            return Ok(chain);
        }
        if chain.len() >= MAX_DEPTH {
            return Err(io::Error::other(format!(
                "the ancestry of pid {pid} is longer than {MAX_DEPTH} processes"
            )));
        }
        chain.push(ppid);
    }
}

/// Whether `ancestor` is a proper ancestor of `pid` (a process is not its
/// own descendant).
pub fn descends_from(pid: i32, ancestor: i32) -> io::Result<bool> {
    Ok(ancestors(pid)?.contains(&ancestor))
}

/// The check of a socket no process of the host's own tree may use: refuses
/// a peer without a pid, one that descends from `host` (the worker, the
/// launcher, a provider or anything they started), and one whose ancestry
/// cannot be read. The reason is one line, for the log.
pub fn refuse_host_descendant(peer: Option<i32>, host: i32) -> Result<(), String> {
    let Some(pid) = peer else {
        return Err("the peer's pid is unknown".into());
    };
    if pid == host {
        return Err(format!("the peer is this process (pid {pid})"));
    }
    match descends_from(pid, host) {
        Ok(false) => Ok(()),
        Ok(true) => Err(format!(
            "pid {pid} descends from pid {host}: a process of the host's own tree"
        )),
        Err(e) => Err(format!("cannot read the ancestry of pid {pid}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    fn me() -> i32 {
        std::process::id() as i32
    }

    /// A child that is killed and reaped when dropped.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn spawn(cmd: &mut Command) -> Reaped {
        Reaped(cmd.stdin(Stdio::null()).spawn().unwrap())
    }

    /// Waits (bounded) until `pid` runs a program whose `comm` is `comm`.
    fn wait_comm(pid: i32, comm: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if now.trim_end() == comm {
                return;
            }
            assert!(Instant::now() < deadline, "pid {pid} runs {now:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn parses_the_parent_after_the_last_parenthesis() {
        assert_eq!(parse_stat_ppid("42 (sleep) S 7 42 42 0"), Some(7));
        assert_eq!(parse_stat_ppid("42 (a) 1 (b) S 9 42 42 0"), Some(9));
        assert_eq!(parse_stat_ppid("42 (x)"), None);
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn our_own_ancestry_ends_at_a_root_of_the_tree() {
        let chain = ancestors(me()).unwrap();
        assert_eq!(
            chain.first().copied(),
            Some(std::os::unix::process::parent_id() as i32)
        );
        let top = *chain.last().unwrap();
        assert_eq!(parent(top).unwrap(), 0, "{chain:?}");
        assert!(!descends_from(me(), me()).unwrap());
    }

    #[test]
    fn a_grandchild_descends_from_us_and_we_not_from_it() {
        // sh starts sleep in the background and reports its pid.
        let mut child = spawn(
            Command::new("/bin/sh")
                .arg("-c")
                .arg("sleep 30 & echo $!; wait")
                .stdout(Stdio::piped()),
        );
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.0.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        wait_comm(grandchild, "sleep");
        assert!(descends_from(grandchild, me()).unwrap());
        assert!(descends_from(grandchild, child.0.id() as i32).unwrap());
        assert!(!descends_from(me(), grandchild).unwrap());
        assert!(refuse_host_descendant(Some(grandchild), me()).is_err());
        assert!(refuse_host_descendant(Some(me()), grandchild).is_ok());
        let _ = Command::new("kill").arg(grandchild.to_string()).status();
    }

    #[test]
    fn a_comm_with_parentheses_and_spaces_does_not_confuse_the_walk() {
        let dir = std::env::temp_dir().join(format!("wire-peer-{}", me()));
        std::fs::create_dir_all(&dir).unwrap();
        let odd = dir.join("a) 1 (b");
        let _ = std::fs::remove_file(&odd);
        std::os::unix::fs::symlink("/bin/sleep", &odd).unwrap();
        let child = spawn(Command::new(&odd).arg("30"));
        let pid = child.0.id() as i32;
        wait_comm(pid, "a) 1 (b");
        assert_eq!(parent(pid).unwrap(), me());
        assert!(descends_from(pid, me()).unwrap());
        drop(child);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unknown_peer_is_refused() {
        // Beyond the default pid_max range of 4194304: no such process.
        assert!(ancestors(i32::MAX).is_err());
        let reason = refuse_host_descendant(Some(i32::MAX), me()).unwrap_err();
        assert!(reason.starts_with("cannot read the ancestry"), "{reason}");
        assert!(refuse_host_descendant(None, me()).is_err());
    }
}
