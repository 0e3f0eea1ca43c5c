//! Stand-alone `snapblk bench` until the daemon's CLI wires it in: parses BenchArgs, runs.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Load generator for a vhost-user-blk backend")]
struct Cli {
    #[command(flatten)]
    bench: snapblk::bench::BenchArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match snapblk::bench::run(&cli.bench) {
        Ok(report) => {
            println!("{}", snapblk::bench::render(&cli.bench, &report));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = format!("bench: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            if let snapblk::bench::BenchError::Verify { report, .. } = &e {
                eprintln!("{}", snapblk::bench::render(&cli.bench, report));
            }
            std::process::ExitCode::FAILURE
        }
    }
}
