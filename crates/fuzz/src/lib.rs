//! Fuzzing on stable Rust: randomized, mutation-based tests of every
//! decoder of the host that reads untrusted bytes.
//!
//! Each [target](targets) is a function of the input bytes that must not
//! panic; errors are fine. The [runner] mutates inputs from the seed
//! corpus (`corpus/<target>/`) with the [mutation engine](mutate), driven
//! by a seeded [generator](rng), and keeps an input that reaches a new
//! outcome (a new message shape or error text): the cheap stand-in for
//! coverage guidance, which stable Rust cannot give without
//! instrumentation. The `fuzz` binary runs the targets for as long as it is
//! told (`cargo xtask fuzz`); `tests/short.rs` runs each for a moment in
//! `cargo xtask test`.

pub mod harness;
pub mod mutate;
pub mod rng;
pub mod runner;
pub mod seeds;
pub mod targets;

/// Caps this process's address space (the soft limit, below the hard one),
/// so that an input which makes a decoder allocate without bound fails an
/// allocation (an abort the harness reports) instead of taking the
/// machine's memory.
pub fn limit_memory(bytes: u64) -> std::io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes into the struct we own, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    limit.rlim_cur = bytes.min(limit.rlim_max);
    // SAFETY: `setrlimit` only reads the struct, which lives across the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The address-space cap of fuzzing processes: far above what any input
/// should need, far below the machine's memory.
pub const MEMORY_LIMIT: u64 = 8 << 30;

/// The stack of the thread the targets run on: a tokio worker's, where the
/// host's decoders run, so a recursion that would overflow there does here.
pub const STACK_SIZE: usize = 2 << 20;
