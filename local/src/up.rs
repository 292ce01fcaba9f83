//! `iotstamp up`: the fleet and its pool controller until SIGINT or SIGTERM, with a banner that
//! says where everything is and how to point devices at it.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use iotstamp_core::scaling::PoolPolicy;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

use crate::cli::UpArgs;
use crate::fleet::Fleet;
use crate::layout::{https_addr, mqtt_addr};
use crate::pool::{self, Added};
use crate::state::{FleetFile, StateDir};

/// A fleet with its pool controller running.
pub struct Running {
    pub fleet: Arc<Mutex<Fleet>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts the pool; each stamp it adds is printed as a line on stdout.
    pub fn start(fleet: Fleet, policy: PoolPolicy) -> Self {
        let fleet = Arc::new(Mutex::new(fleet));
        let (stop, stopped) = watch::channel(false);
        let (added_tx, mut added) = mpsc::unbounded_channel::<Added>();
        let pool = tokio::spawn(pool::run(fleet.clone(), policy, added_tx, stopped));
        let printer = tokio::spawn(async move {
            while let Some(a) = added.recv().await {
                println!("pool: added {} (hub {}): {}", a.name, a.hub, a.reason);
            }
        });
        Self {
            fleet,
            stop,
            tasks: vec![pool, printer],
        }
    }

    /// Stops the pool, then the router and the stamps.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // The pool task held the only other reference, and it has ended.
        match Arc::try_unwrap(self.fleet) {
            Ok(fleet) => fleet.into_inner().shutdown().await,
            Err(_) => tracing::error!("the fleet is still in use at shutdown; stamps stop without a flush"),
        }
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.demo {
        return crate::demo::run(args).await;
    }
    let mut policy = args.policy()?;
    let fleet = Fleet::start(StateDir::new(&args.state.dir), &args.fleet_options()).await?;
    // --stamps shapes a new folder only: a restart never adds stamps to reach it.
    policy.min_stamps = policy.min_stamps.min(fleet.file.stamps.len() as u32);
    if !fleet.fresh {
        println!(
            "using the fleet in {} (--stamps, --quota and --address apply to a new state folder only)",
            fleet.state.root().display()
        );
    }
    print!(
        "{}",
        banner(
            &fleet.file,
            &fleet.router.https_alias_addrs,
            fleet.state.root(),
            &policy,
        )
    );
    let (web_stop, web_stopped) = watch::channel(false);
    let web = match args.web_port {
        0 => None,
        port => {
            let addr = SocketAddr::new(fleet.file.router_ip.into(), port);
            let http = crate::dps::https_client(fleet.ca_pem())?;
            let (bound, task) = crate::web::start(addr, fleet.directory.clone(), http, web_stopped).await?;
            println!("  web page   http://{bound}/");
            Some(task)
        }
    };
    let running = Running::start(fleet, policy);
    println!("ready; Ctrl-C stops it");
    iotstamp_router::cli::wait_for_signal().await?;
    println!("stopping");
    let _ = web_stop.send(true);
    if let Some(task) = web {
        let _ = task.await;
    }
    running.shutdown().await;
    println!("stopped; state kept in {}", args.state.dir.display());
    Ok(())
}

/// Where everything listens, the group devices enroll with, and commands to try.
/// `https_aliases`: the router's other HTTPS addresses (port 443 when it could be bound).
pub fn banner(
    file: &FleetFile,
    https_aliases: &[SocketAddr],
    state_root: &Path,
    policy: &PoolPolicy,
) -> String {
    let root = std::path::absolute(state_root).unwrap_or_else(|_| state_root.to_path_buf());
    let ca = root.join("ca.crt");
    let mut out = String::new();
    let _ = writeln!(out, "iotstamp local mode, state in {}", root.display());
    let _ = writeln!(
        out,
        "  router     DPS + service API https://{}{}   DPS over MQTT mqtts://{}",
        https_addr(file.router_ip),
        https_aliases
            .iter()
            .map(|a| format!(" and https://{a}"))
            .collect::<String>(),
        mqtt_addr(file.router_ip)
    );
    for s in &file.stamps {
        let _ = writeln!(
            out,
            "  {:<10} hub mqtts://{}   API https://{}   quota {}",
            s.name,
            mqtt_addr(s.ip),
            https_addr(s.ip),
            s.quota
        );
    }
    let _ = writeln!(
        out,
        "  pool       up to {} stamps; one more when {}% of the quota is assigned",
        policy.max_stamps, policy.scale_up_percent
    );
    let _ = writeln!(out, "  CA         {}", ca.display());
    let _ = writeln!(
        out,
        "  policies   {} (device: DeviceConnect; service: ServiceConnect, RegistryReadWrite; edit to rotate keys)",
        crate::state::StateDir::new(&root).policies_file().display()
    );
    let _ = writeln!(
        out,
        "  enrollment group: ID scope {}  group key {}",
        file.id_scope, file.group_key
    );
    let _ = writeln!(
        out,
        "  tokens     service API (router): {}   stamp API: {}",
        file.app_token, file.stamp_token
    );
    if let Some(connection) = &file.service_connection_string {
        let _ = writeln!(
            out,
            "  service connection string (Azure IoT Hub service SDKs, port 443; trust the CA, e.g. REQUESTS_CA_BUNDLE):\n    {connection}"
        );
    }
    let _ = writeln!(out, "\nsimulate devices (another terminal, same folder):");
    let _ = writeln!(
        out,
        "  iotstamp simulate --state {} --devices 10 --rate 20 --duration 30s",
        root.display()
    );
    let _ = writeln!(out, "or from anywhere:");
    let _ = writeln!(
        out,
        "  iotstamp simulate --router https://{} --ca {} --id-scope {} --group-key '{}' --devices 10",
        https_addr(file.router_ip),
        ca.display(),
        file.id_scope,
        file.group_key
    );
    let _ = writeln!(out, "a device with the Azure IoT Python SDK (azure-iot-device):");
    let _ = writeln!(
        out,
        "  python3 -c \"import base64,hmac,hashlib;from azure.iot.device import ProvisioningDeviceClient as P; \
         k=base64.b64encode(hmac.new(base64.b64decode('{key}'),b'py-1',hashlib.sha256).digest()).decode(); \
         print(P.create_from_symmetric_key(provisioning_host='{host}',registration_id='py-1',id_scope='{scope}',\
         symmetric_key=k,server_verification_cert=open('{ca}').read()).register().registration_state)\"",
        key = file.group_key,
        host = file.router_ip,
        scope = file.id_scope,
        ca = ca.display()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{FleetSeed, new_fleet};

    #[test]
    fn the_banner_names_every_endpoint_and_a_command_to_paste() {
        let mut file = new_fleet(FleetSeed {
            router_ip: "127.0.0.10".parse().unwrap(),
            stamps: 2,
            quota: 5,
            id_scope: "0NE12345678".into(),
            group_key: "Z2s=".into(),
            app_token: "app".into(),
            stamp_token: "st".into(),
        })
        .unwrap();
        file.service_connection_string =
            Some("HostName=127.0.0.10;SharedAccessKeyName=service;SharedAccessKey=a2V5".into());
        let policy = PoolPolicy {
            min_stamps: 2,
            max_stamps: 4,
            scale_up_percent: 80,
            cooldown_secs: 5,
        };
        let text = banner(
            &file,
            &["127.0.0.10:443".parse().unwrap()],
            Path::new("/tmp/s"),
            &policy,
        );
        for want in [
            "https://127.0.0.10:8443 and https://127.0.0.10:443",
            "mqtts://127.0.0.12:8883",
            "/tmp/s/ca.crt",
            "ID scope 0NE12345678",
            "--id-scope 0NE12345678 --group-key 'Z2s='",
            "up to 4 stamps",
            "HostName=127.0.0.10;SharedAccessKeyName=service;SharedAccessKey=a2V5",
        ] {
            assert!(text.contains(want), "`{want}` missing from:\n{text}");
        }
    }
}
