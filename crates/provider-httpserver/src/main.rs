//! `httpserver-provider`: the `wasmcloud:httpserver` capability provider
//! binary. All of its logic lives in the `provider_httpserver` library.

use std::process::ExitCode;

use provider_httpserver::HttpServerProvider;

fn main() -> ExitCode {
    shim::init_logging();
    match shim::run(HttpServerProvider::new()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ shim::ShimError::Bootstrap(_)) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("httpserver-provider: {e}");
            ExitCode::FAILURE
        }
    }
}
