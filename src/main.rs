//! `rbd-addons`: the server (`serve`) and its command-line client.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cli::Cli::parse().command.run()
}
