//! Thin entry point: parse the command line, set up logging, dispatch, map errors to exit codes.

mod cli;
mod generate;

use std::process::ExitCode;

use clap::Parser;
use snapblk::cowcmd;
use snapblk::daemon;

use cli::{Cli, Command, CowCommand, ServeMode};

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

fn exit_with<E: std::error::Error>(r: Result<(), E>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Applies `serve --socket-group` to every export socket bound later.
fn socket_group(args: &cli::ServeArgs) -> Result<(), String> {
    if let Some(g) = &args.socket_group {
        let gid = snapblk::control::server::lookup_group(g).map_err(|e| e.to_string())?;
        snapblk::vhost::server::set_socket_group(gid);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    snapblk::logging::init();
    match cli.command {
        Command::Serve(args) => {
            match socket_group(&args).and_then(|()| ServeMode::try_from(args)) {
                Ok(ServeMode::Image(opts)) => exit_with(daemon::run(*opts)),
                Ok(ServeMode::Graph(opts)) => exit_with(daemon::run_graph(opts)),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Bench(args) => match snapblk::bench::run(&args) {
            Ok(r) => {
                snapblk::output::line(snapblk::bench::render(&args, &r).trim_end());
                ExitCode::SUCCESS
            }
            Err(e) => {
                report(&e);
                ExitCode::FAILURE
            }
        },
        Command::Control(cmd) => snapblk::control::cli::run(cmd),
        Command::Generate(cmd) => exit_with(generate::run(cmd)),
        Command::Cow(CowCommand::Inspect { file, json }) => {
            exit_with(cowcmd::inspect_command(&file, json))
        }
        Command::Cow(CowCommand::Merge {
            origin,
            cow,
            runs,
            json,
        }) => exit_with(cowcmd::merge_command(&origin, &cow, runs, json)),
    }
}
