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

/// Log at info by default; RUST_LOG changes it, but the libraries'
/// internals (hundreds of lines at start-up with a bare `debug`) stay at
/// warn unless RUST_LOG names them (`RUST_LOG=debug,aya=debug`).
fn init_logging() {
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Info);
    for m in ["aya", "aya_obj", "hyper", "hyper_util", "mio", "tokio"] {
        b.filter_module(m, log::LevelFilter::Warn);
    }
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    b.init();
}

fn main() -> ExitCode {
    init_logging();
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
