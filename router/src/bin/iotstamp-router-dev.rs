//! The router as a standalone process, for local runs, for the crash tests (which must kill -9 a
//! real process) and for the benchmark, until `iotstamp router` / `iotstamp bench provisioning`
//! are wired into the main binary. Same arguments.

use std::process::ExitCode;

use clap::Parser;
use iotstamp_router::bench::BenchArgs;
use iotstamp_router::cli::RouterArgs;

#[derive(Parser, Debug)]
#[command(name = "iotstamp-router-dev", version)]
enum Cli {
    /// Run the router until SIGTERM or Ctrl-C.
    Router(Box<RouterArgs>),
    /// Benchmark HTTPS provisioning against a static-body baseline, then memory and restart time.
    Bench(BenchArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse() {
        Cli::Router(args) => iotstamp_router::cli::run(*args).await,
        Cli::Bench(args) => iotstamp_router::bench::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iotstamp-router-dev: {e}");
            ExitCode::FAILURE
        }
    }
}
