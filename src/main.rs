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
    /// Run one stamp: the MQTT device edge, durable ingest, storage and the stamp API.
    ///
    /// The operator runs this in each stamp's pods with the config it writes; local mode and
    /// tests run it with a hand-written config.
    Stamp(iotstamp_stamp::cli::StampArgs),
    /// Run the global router: DPS-compatible provisioning (HTTPS and MQTT over TLS) that assigns each
    /// device to a stamp within quota, and the service API that routes calls to the device's stamp.
    Router(iotstamp_router::cli::RouterArgs),
    /// Run a router and a pool of stamps in this process on loopback, until Ctrl-C (local mode).
    ///
    /// Certificates, assignments, stamp data and the list of stamps are kept in the state folder,
    /// so a restart comes back as it was. `--demo` runs a short simulation against a new fleet.
    Up(iotstamp_local::cli::UpArgs),
    /// Simulate devices: provision through the router, connect to the assigned stamps over
    /// MQTT/TLS, send telemetry at a total rate, answer C2D messages and direct methods, and print a
    /// summary (devices per stamp, acknowledged messages, PUBACK latency, errors).
    Simulate(iotstamp_local::cli::SimulateArgs),
    /// Run the IoTStamp operator against the cluster in KUBECONFIG (or in-cluster config).
    ///
    /// It reconciles every IoTStamp into its ConfigMap, TLS and token Secrets, storage StatefulSet,
    /// ingest Deployment, hub StatefulSet and Services, and reports status. Logs go to stderr;
    /// `RUST_LOG` filters them (default `info`).
    Operator(iotstamp_operator::cli::OperatorArgs),
    /// Measure a component against a baseline in the same run, and print a table.
    Bench {
        #[command(subcommand)]
        suite: BenchSuite,
    },
    /// Write the CustomResourceDefinitions as YAML: to stdout, or one file per CRD into a folder.
    ///
    /// `kubectl apply -f crds/` installs what `iotstamp crdgen --out crds` writes.
    Crdgen {
        /// Folder to write `<group>_<plural>.yaml` files into (created if missing).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum BenchSuite {
    /// Reconcile N IoTStamps against an in-memory API server, beside a bare-client baseline.
    Operator(iotstamp_bench::operator::BenchArgs),
    /// QoS 1 telemetry persisted and acknowledged by a stamp, beside mosquitto (no persistence).
    Hub(iotstamp_bench::stamp::cli::HubArgs),
    /// Storage ingest (batched, fsync'd) beside a plain fsync'd append-only file.
    Storage(iotstamp_bench::stamp::cli::StorageArgs),
    /// TLS connections one stamp holds (memory, connects/s), beside mosquitto.
    Connections(iotstamp_bench::stamp::cli::ConnectionsArgs),
    /// C2D and direct-method latency when the call lands on another hub replica than the device's.
    Replicas(iotstamp_bench::stamp::cli::ReplicasArgs),
    /// Durable twin reported-property updates per second and p99, beside QoS 1 telemetry.
    Twin(iotstamp_bench::stamp::cli::TwinArgs),
    /// C2D messages through the durable queue (API send to device PUBACK), beside direct methods.
    C2d(iotstamp_bench::stamp::cli::C2dArgs),
    /// Durable HTTPS provisioning beside the same server answering a static body, then through a
    /// local fleet of real stamps.
    Provisioning(iotstamp_bench::fleet::ProvisioningArgs),
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
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
    // Local mode talks to a person on stdout; routine logs (a device told to retry) would drown it.
    let default_filter = match cli.command {
        Command::Up(_) | Command::Simulate(_) => "warn",
        _ => "info",
    };
    init_tracing(cli.log_format, default_filter);
    let result = match cli.command {
        Command::Crdgen { out } => crdgen(out),
        Command::Operator(args) => {
            runtime().and_then(|rt| Ok(rt.block_on(iotstamp_operator::cli::run(args))?))
        }
        Command::Stamp(args) => runtime().and_then(|rt| Ok(rt.block_on(iotstamp_stamp::cli::run(args))?)),
        Command::Router(args) => runtime().and_then(|rt| Ok(rt.block_on(iotstamp_router::cli::run(args))?)),
        Command::Up(args) => runtime().and_then(|rt| rt.block_on(iotstamp_local::up::run(args))),
        Command::Simulate(args) => {
            runtime().and_then(|rt| rt.block_on(iotstamp_local::cli::run_simulate(args)))
        }
        Command::Bench { suite } => runtime().and_then(|rt| rt.block_on(bench(suite))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` is the error and its causes, `: `-separated; every error type of the
            // workspace keeps its cause out of its own message, so each is printed once.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(suite: BenchSuite) -> anyhow::Result<()> {
    use iotstamp_bench::stamp::cli;
    match suite {
        BenchSuite::Operator(args) => print!("{}", iotstamp_bench::operator::run(args).await?),
        BenchSuite::Hub(args) => println!("{}", cli::run_hub(args).await?),
        BenchSuite::Storage(args) => println!("{}", cli::run_storage(args)?),
        BenchSuite::Connections(args) => {
            let me = std::env::current_exe()?.display().to_string();
            println!("{}", cli::run_connections(args, me).await?)
        }
        BenchSuite::Replicas(args) => println!("{}", cli::run_replicas(args).await?),
        BenchSuite::Twin(args) => println!("{}", cli::run_twin(args).await?),
        BenchSuite::C2d(args) => println!("{}", cli::run_c2d(args).await?),
        BenchSuite::Provisioning(args) => print!("{}", iotstamp_bench::fleet::run(args).await?),
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

#[cfg(test)]
mod tests {
    use std::io::{Error as IoError, ErrorKind};

    /// What a person reads when a command fails with `e`.
    fn shown(e: impl Into<anyhow::Error>) -> String {
        format!("error: {:#}", e.into())
    }

    /// The errors that reach the command line, as each crate builds them: every cause is printed
    /// once, after the step that met it.
    #[test]
    fn each_cause_is_printed_once() {
        let refused = || IoError::new(ErrorKind::ConnectionRefused, "Connection refused");
        let bind = iotstamp_router::Error::Bind {
            addr: "127.0.0.1:8443".parse().unwrap(),
            source: refused(),
        };
        assert_eq!(
            shown(bind),
            "error: cannot listen on 127.0.0.1:8443: Connection refused"
        );
        let read = iotstamp_router::Error::from(iotstamp_router::config::ConfigError::Read {
            path: "router.yaml".into(),
            source: IoError::new(ErrorKind::NotFound, "No such file or directory"),
        });
        assert_eq!(
            shown(read),
            "error: configuration: cannot read router.yaml: No such file or directory"
        );
        let stamp = iotstamp_stamp::Error::io("opening the data folder", refused());
        assert_eq!(shown(stamp), "error: opening the data folder: Connection refused");
        let store = iotstamp_router::Error::from(iotstamp_router::adapters::store::StoreError::Closed);
        assert_eq!(
            shown(store),
            "error: assignment store: the store is shutting down"
        );
        let pki = iotstamp_operator::Error::Pki(iotstamp_core::pki::PkiError::BadName("*".into()));
        assert_eq!(
            shown(pki),
            "error: certificate: `*` is not a valid DNS name or IP address for a certificate"
        );
    }
}
