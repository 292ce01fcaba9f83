//! `iotstamp`: one binary for every role. This file only parses arguments and dispatches; each
//! subcommand's work lives in its crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "iotstamp",
    version,
    about = "Deployment Stamps for IoT on Kubernetes",
    long_about = "iotstamp scales an IoT platform by stamping out self-contained hub / ingest / storage units \
                  (IoTStamps), each with a device quota.\n\n\
                  Run `iotstamp operator` in a cluster to reconcile IoTStamp resources, and `iotstamp crdgen` \
                  to print the CustomResourceDefinitions it needs."
)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "IOTSTAMP_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the IoTStamp operator against the cluster in KUBECONFIG (or in-cluster config).
    ///
    /// It reconciles every IoTStamp into its ConfigMap, TLS and token Secrets, storage StatefulSet,
    /// ingest Deployment, hub StatefulSet and Services, and reports status. Logs go to stderr;
    /// `RUST_LOG` filters them (default `info`).
    Operator(iotstamp_operator::cli::OperatorArgs),
    /// Write the CustomResourceDefinitions as YAML: to stdout, or one file per CRD into a folder.
    ///
    /// `kubectl apply -f crds/` installs what `iotstamp crdgen --out crds` writes.
    /// Measure a component against a baseline in the same run, and print a table.
    Bench {
        #[command(subcommand)]
        suite: BenchSuite,
    },
    Crdgen {
        /// Folder to write `<group>_<plural>.yaml` files into (created if missing).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum BenchSuite {
    /// Reconcile N IoTStamps against an in-memory API server, beside a bare-client baseline.
    Operator(iotstamp_operator::bench::BenchArgs),
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn crdgen(out: Option<PathBuf>) -> anyhow::Result<()> {
    for crd in iotstamp_api::crds() {
        let yaml = iotstamp_api::crd_yaml(&crd)?;
        match &out {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let path = dir.join(iotstamp_api::crd_file_name(&crd));
                std::fs::write(&path, yaml)?;
                eprintln!("wrote {}", path.display());
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Crdgen { out } => crdgen(out),
        Command::Operator(args) => {
            runtime().and_then(|rt| Ok(rt.block_on(iotstamp_operator::cli::run(args))?))
        }
        Command::Bench {
            suite: BenchSuite::Operator(args),
        } => runtime().and_then(|rt| {
            print!("{}", rt.block_on(iotstamp_operator::bench::run(args))?);
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
