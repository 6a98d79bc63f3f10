//! `inspector`: ESMTP command firewall in the kernel (XDP), this is its
//! command-line front end. It parses the command line and hands the
//! options to the subcommand's module in `cmd/`; an error becomes one line
//! on stderr and the exit status the README promises: 2 when the input is
//! refused (clap's own errors, and every value the settings rules refuse),
//! 1 for any other failure, 0 when the reader of our output went away.

use std::process::ExitCode;

use clap::Parser;
use inspector_userspace::settings::is_refused;

mod cli;
mod cmd;
mod out;

use cli::{Cli, Command};

/// Exit status for refused input (the same as clap's for a bad command
/// line); the systemd unit does not restart on it.
const REFUSED: u8 = 2;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match Cli::parse().command {
        Command::Attach(args) => cmd::attach::run(args),
        Command::Detach(args) => cmd::detach::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::Stats(args) => cmd::stats::run(args),
        Command::Policy(args) => cmd::policy::run(args),
        Command::Events(args) => cmd::events::run(args),
        Command::Completions(args) => cmd::docs::completions(args),
        Command::Man => cmd::docs::man(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `inspector events | head -1`: the reader has what it wanted.
        Err(e) if out::is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of contexts, outermost first. A verifier
            // rejection carries its log on the following lines.
            eprintln!("inspector: error: {e:#}");
            if is_refused(&e) {
                ExitCode::from(REFUSED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
