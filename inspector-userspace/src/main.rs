//! `inspector`: ESMTP command firewall in the kernel (XDP), this is its
//! command-line front end. It parses the command line and hands the
//! options to the subcommand's module in `cmd/`; an error becomes one line
//! on stderr and exit status 1 (clap exits with 2 on a bad command line).

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod cmd;

use cli::{Cli, Command};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match Cli::parse().command {
        Command::Attach(args) => cmd::attach::run(args),
        Command::Detach(args) => cmd::detach::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::Stats(args) => cmd::stats::run(args),
        Command::Policy(args) => cmd::policy::run(args),
        Command::Events(args) => cmd::events::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of contexts, outermost first. A verifier
            // rejection carries its log on the following lines.
            eprintln!("inspector: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
