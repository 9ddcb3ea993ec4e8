//! The `zeroboot` command: thin front ends over the engine. `serve` (the
//! default) is the JSON-RPC worker; the rest are for people at a terminal.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    cli::init_logging();
    cli::dispatch(args)
}
