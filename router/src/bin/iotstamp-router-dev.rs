//! The router alone as a small process of this crate, so its tests (which kill -9 a real process)
//! need not build the whole `iotstamp` binary. Same arguments as `iotstamp router`.

use std::process::ExitCode;

use clap::Parser;
use iotstamp_router::cli::RouterArgs;

#[derive(Parser, Debug)]
#[command(name = "iotstamp-router-dev", version)]
enum Cli {
    /// Run the router until SIGTERM or Ctrl-C.
    Router(Box<RouterArgs>),
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse() {
        Cli::Router(args) => iotstamp_router::cli::run(*args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iotstamp-router-dev: {}", iotstamp_core::causes::Causes(&e));
            ExitCode::FAILURE
        }
    }
}
