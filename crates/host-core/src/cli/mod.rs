//! The `host-core` binary: parses the command line and runs the subcommand.
//! The host itself is the `host_core` library; this is only its front end.

mod args;
mod ctl;
mod inspect;
mod lattice_ctl;
mod registry;
mod run;

use anyhow::{anyhow, Context, Result};
use clap::Parser;

use args::{Cli, Command, KeysCommand};
use host_core::keys;

pub(crate) fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run_host(*args),
        Command::Keys {
            command: KeysCommand::Gen { kind },
        } => {
            let key = keys::generate(kind);
            println!("Public Key: {}", key.public_key());
            match key.seed() {
                Ok(seed) => {
                    println!("Seed: {seed}");
                    Ok(())
                }
                Err(e) => Err(anyhow!("cannot print the seed: {e}")),
            }
        }
        Command::Claims { command } => inspect::claims_command(command),
        Command::Par { command } => inspect::par_command(command),
        Command::Ctl(args) => tokio_runtime().and_then(|rt| rt.block_on(ctl::ctl(args))),
        Command::Push(args) => tokio_runtime().and_then(|rt| rt.block_on(registry::push(args))),
        Command::Pull(args) => tokio_runtime().and_then(|rt| rt.block_on(registry::pull(args))),
    };
    if let Err(e) = result {
        // One line, the whole chain of causes.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

pub(crate) fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
