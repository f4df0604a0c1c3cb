//! The Landlock sandbox of a provider, prepared in the launcher before the
//! fork; the child only calls `prctl(PR_SET_NO_NEW_PRIVS)` and
//! `landlock_restrict_self` on the prepared ruleset's descriptor (both plain
//! system calls, async-signal-safe).
//!
//! A provider may read and execute the system directories a dynamically
//! linked program needs, read `/etc`, `/proc` and `/sys`, use `/dev/null`,
//! `/dev/zero`, `/dev/random` and `/dev/urandom`, and read and write its own
//! data directory. Nothing else of the file system: not `/tmp` (its `TMPDIR`
//! is inside its data directory), not the host's state directory, not other
//! providers' data. With ABI 6 it also cannot signal, nor connect to the
//! abstract sockets of, any process outside its sandbox; and Landlock never
//! lets a sandboxed process ptrace (or read `/proc/PID/mem`, `environ`, `fd/`
//! of) a process outside its domain. The network stays open (providers serve
//! HTTP). Landlock does not mediate `connect()` to an existing pathname Unix
//! socket on this ABI, which is why the host checks its peers' ancestry.

use std::os::fd::OwnedFd;
use std::path::Path;

use landlock::{
    Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};
use wire::launcher::Confinement;

/// The ABI whose rights and scopes the sandbox uses (Linux 6.12).
const WANTED: ABI = ABI::V6;

/// Directories a provider may read and execute from.
const SYSTEM_EXEC: &[&str] = &["/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin"];
/// Directories a provider may only read.
const SYSTEM_READ: &[&str] = &["/etc", "/proc", "/sys"];
/// Device files a provider may read and write.
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"];

/// A sandbox ready for a child to enter.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The Landlock ruleset, if the kernel has Landlock.
    pub ruleset: Option<OwnedFd>,
    pub confinement: Confinement,
}

/// The Landlock ABI of the running kernel: 0 without Landlock.
pub(crate) fn kernel_abi() -> i64 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    // only returns the ABI version (or an error); it reads no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    v.max(0)
}

fn rule(
    ruleset: landlock::RulesetCreated,
    path: &Path,
    access: BitFlags<AccessFs>,
) -> Result<landlock::RulesetCreated, String> {
    let fd = match PathFd::new(path) {
        Ok(fd) => fd,
        // A system directory this machine does not have (/lib32, /lib64).
        Err(_) if !path.exists() => return Ok(ruleset),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    ruleset
        .add_rule(PathBeneath::new(fd, access))
        .map_err(|e| format!("cannot add {} to the sandbox: {e}", path.display()))
}

/// Builds the ruleset of a provider whose data directory is `data_dir`.
pub(crate) fn prepare(data_dir: &Path) -> Result<Prepared, String> {
    if !data_dir.is_absolute() {
        return Err(format!(
            "the provider's data directory {} is not an absolute path",
            data_dir.display()
        ));
    }
    let meta = std::fs::metadata(data_dir).map_err(|e| {
        format!(
            "cannot use the provider's data directory {}: {e}",
            data_dir.display()
        )
    })?;
    if !meta.is_dir() {
        return Err(format!(
            "the provider's data directory {} is not a directory",
            data_dir.display()
        ));
    }
    let abi = kernel_abi();
    let sandbox = || -> Result<Option<OwnedFd>, String> {
        let read_exec = AccessFs::Execute | AccessFs::ReadFile | AccessFs::ReadDir;
        let read = AccessFs::ReadFile | AccessFs::ReadDir;
        let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
        // Everything in its own data directory but executing what it wrote:
        // the binary that runs is the verified one.
        let data = AccessFs::from_all(WANTED) & !AccessFs::Execute;
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::from_all(WANTED))
            .and_then(|r| r.scope(Scope::from_all(WANTED)))
            .and_then(|r| r.create())
            .map_err(|e| e.to_string())?;
        for dir in SYSTEM_EXEC {
            ruleset = rule(ruleset, Path::new(dir), read_exec)?;
        }
        for dir in SYSTEM_READ {
            ruleset = rule(ruleset, Path::new(dir), read)?;
        }
        // /etc/resolv.conf is often a link into /run (systemd-resolved):
        // name resolution needs its target.
        if let Ok(target) = std::fs::canonicalize("/etc/resolv.conf") {
            if !target.starts_with("/etc") {
                ruleset = rule(ruleset, &target, AccessFs::ReadFile.into())?;
            }
        }
        for dev in DEVICES {
            ruleset = rule(ruleset, Path::new(dev), device)?;
        }
        ruleset = rule(ruleset, data_dir, data)?;
        Ok(ruleset.into())
    };
    let ruleset = sandbox().map_err(|e| format!("cannot prepare the provider's sandbox: {e}"))?;
    let confinement = match (&ruleset, abi) {
        (Some(_), abi) if abi >= WANTED as i64 => Confinement::Landlock { abi: abi as u32 },
        (Some(_), abi) => Confinement::Partial {
            reason: format!(
                "this kernel's Landlock ABI is {abi}, below {}: files are confined, but signals to and abstract sockets of host processes are not",
                WANTED as i64
            ),
        },
        (None, _) => Confinement::Partial {
            reason: "this kernel has no Landlock (Linux 5.13+ with landlock in the `lsm=` list): files, signals and ptrace are not confined".into(),
        },
    };
    Ok(Prepared {
        ruleset,
        confinement,
    })
}
