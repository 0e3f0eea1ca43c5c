//! Thin entry point: parse the command line, set up logging, dispatch, map errors to exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use snapblk::daemon::{self, ServeOptions};

use cli::{Cli, Command};

/// Prints an error with its whole source chain.
fn report(e: &dyn std::error::Error) {
    let mut msg = format!("error: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    eprintln!("{msg}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    snapblk::logging::init();
    match cli.command {
        Command::Serve(args) => {
            let opts = match ServeOptions::try_from(args) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match daemon::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    report(&e);
                    ExitCode::FAILURE
                }
            }
        }
    }
}
