//! `keyvalue-provider`: the `wasmcloud:keyvalue` capability provider binary.
//! Started by the host (`host-core ctl start-provider`); see the library for
//! its behaviour.

use std::process::ExitCode;

use provider_keyvalue::KeyValueProvider;

fn main() -> ExitCode {
    shim::init_logging();
    match shim::run(KeyValueProvider::new()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ shim::ShimError::Bootstrap(_)) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("keyvalue-provider: {e}");
            ExitCode::FAILURE
        }
    }
}
