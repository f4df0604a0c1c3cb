//! `host-core`: the supervisor of a WebAssembly actor host, and its CLI.
//! Everything but the command line lives in the `host_core` library.

mod cli;

fn main() {
    cli::main();
}
