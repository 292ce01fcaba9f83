//! The running fleet: a router and its stamps in this process, built from the state folder, and
//! the one operation the pool needs, adding a stamp.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use iotstamp_core::clock;
use iotstamp_core::pki::CertKeyPem;
use iotstamp_core::scaling::StampLoad;
use iotstamp_router::RunningRouter;
use iotstamp_router::adapters::directory::{StampDirectory, StaticDirectory};
use iotstamp_router::adapters::stamp_client::HttpStampClient;
use iotstamp_router::config::{EnrollmentGroupConfig, RouterConfig, StoreConfig};
use iotstamp_router::start_with;
use iotstamp_stamp::RunningStamp;

use crate::layout::{self, FleetSeed};
use crate::state::{FleetFile, StampEntry, StateDir};

/// The enrollment group's name in local mode.
pub const GROUP_NAME: &str = "local";

/// What `up` was asked for; the address and sizes only matter for a fresh state folder.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub router_ip: std::net::Ipv4Addr,
    pub stamps: u32,
    pub quota: u64,
}

pub struct LiveStamp {
    pub entry: StampEntry,
    pub running: RunningStamp,
}

pub struct Fleet {
    pub state: StateDir,
    pub file: FleetFile,
    /// True when this start created the state folder's fleet.
    pub fresh: bool,
    ca: CertKeyPem,
    pub router: RunningRouter,
    pub directory: Arc<StaticDirectory>,
    pub stamps: Vec<LiveStamp>,
}

fn random_b64(bytes: usize) -> String {
    let mut out = Vec::with_capacity(bytes);
    while out.len() < bytes {
        out.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    out.truncate(bytes);
    base64::engine::general_purpose::STANDARD.encode(out)
}

fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The hubs' policies for a new state folder: four random keys.
fn fresh_policies() -> iotstamp_core::policies::Policies {
    layout::new_policies(std::array::from_fn(|_| random_b64(32)))
}

fn fresh_seed(opts: &FleetOptions) -> FleetSeed {
    FleetSeed {
        router_ip: opts.router_ip,
        stamps: opts.stamps,
        quota: opts.quota,
        // DPS ID scopes look like `0ne` + 8 hex digits.
        id_scope: format!("0ne{}", &random_token()[..8]).to_uppercase(),
        group_key: random_b64(64),
        app_token: random_token(),
        stamp_token: random_token(),
    }
}

impl Fleet {
    /// Starts every stamp of the state folder's fleet (creating the fleet on first use), then the
    /// router in front of them.
    pub async fn start(state: StateDir, opts: &FleetOptions) -> anyhow::Result<Self> {
        let (mut file, fresh) = match state.load_fleet()? {
            Some(file) => (file, false),
            None => (layout::new_fleet(fresh_seed(opts))?, true),
        };
        state.ensure_policies(fresh_policies)?;
        // From the policies as they are now: an edited key shows in the next start's string.
        file.service_connection_string =
            layout::service_connection_string(file.router_ip, &state.load_policies()?);
        state.save_fleet(&file)?;
        let ca = state.ensure_ca(clock::unix_secs() as i64)?;
        let mut stamps = Vec::new();
        for entry in &file.stamps {
            stamps.push(start_stamp(&state, &ca, entry).await?);
        }
        let directory = Arc::new(StaticDirectory::new(
            file.stamps
                .iter()
                .map(|e| layout::stamp_info(e, &ca.cert_pem, &file.stamp_token))
                .collect(),
        ));
        let router = start_router(&state, &ca, &file, directory.clone()).await?;
        Ok(Self {
            state,
            file,
            fresh,
            ca,
            router,
            directory,
            stamps,
        })
    }

    /// Starts the next stamp, records it in the state folder, then lets the router assign to it.
    pub async fn add_stamp(&mut self, default_quota: u64) -> anyhow::Result<&LiveStamp> {
        let entry = layout::next_stamp(&self.file, default_quota)?;
        let live = start_stamp(&self.state, &self.ca, &entry).await?;
        self.file.stamps.push(entry);
        self.file.last_scale_unix = Some(clock::unix_secs() as i64);
        self.state.save_fleet(&self.file)?;
        self.directory.set(
            self.file
                .stamps
                .iter()
                .map(|e| layout::stamp_info(e, &self.ca.cert_pem, &self.file.stamp_token))
                .collect(),
        );
        self.stamps.push(live);
        Ok(self.stamps.last().expect("just pushed"))
    }

    /// Each stamp with the assignment count the router last reported.
    pub fn loads(&self) -> Vec<StampLoad> {
        let assigned = self.directory.assigned();
        self.directory
            .snapshot()
            .iter()
            .map(|s| layout::stamp_load(s, assigned.get(&s.name).copied().unwrap_or(0)))
            .collect()
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// Stops the router first (no new assignments), then each stamp (flushing ingest).
    pub async fn shutdown(self) {
        self.router.shutdown().await;
        for s in self.stamps {
            s.running.shutdown().await;
        }
    }
}

async fn start_stamp(state: &StateDir, ca: &CertKeyPem, entry: &StampEntry) -> anyhow::Result<LiveStamp> {
    let dir = state.stamp_dir(&entry.name);
    let (cert, key) = state.ensure_server_cert(&dir, ca, entry.ip, clock::unix_secs() as i64)?;
    let files = layout::StampFiles {
        cert: &cert,
        key: &key,
        token: &state.stamp_token_file(),
        policies: &state.policies_file(),
    };
    let config = layout::stamp_config(entry, &dir, &files);
    let running = iotstamp_stamp::start(config)
        .await
        .with_context(|| format!("starting {} on {}", entry.name, entry.ip))?;
    Ok(LiveStamp {
        entry: entry.clone(),
        running,
    })
}

/// Port 443 as well as 8443, as Azure serves DPS and the service API: the Node device SDK's DPS over
/// HTTPS and the service SDKs cannot be given another port. Binding it takes the privilege (root,
/// `CAP_NET_BIND_SERVICE`, or `net.ipv4.ip_unprivileged_port_start` at 443 or below); without it
/// the router serves 8443 only and says why, since everything else works there. The probe's socket
/// is closed at once and the router binds the port right after, on an address of local mode's own.
fn port_443(ip: std::net::Ipv4Addr) -> Vec<std::net::SocketAddr> {
    let addr = layout::https_443_addr(ip);
    match std::net::TcpListener::bind(addr) {
        Ok(_probe) => vec![addr],
        Err(e) => {
            let hint = match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    " (run as root, grant CAP_NET_BIND_SERVICE, or set net.ipv4.ip_unprivileged_port_start=443)"
                }
                _ => "",
            };
            tracing::warn!(
                %addr,
                error = %e,
                "the router serves DPS and the service API on 8443 only: SDKs fixed at port 443 cannot reach it{hint}"
            );
            Vec::new()
        }
    }
}

async fn start_router(
    state: &StateDir,
    ca: &CertKeyPem,
    file: &FleetFile,
    directory: Arc<StaticDirectory>,
) -> anyhow::Result<RunningRouter> {
    let dir = state.router_dir();
    let (cert, key) = state.ensure_server_cert(&dir, ca, file.router_ip, clock::unix_secs() as i64)?;
    let tls = iotstamp_net::tls::server_config_from_files(&cert, &key, &[b"http/1.1"])?;
    let config = RouterConfig {
        https_addr: layout::https_addr(file.router_ip),
        https_alias_addrs: port_443(file.router_ip),
        mqtt_addr: Some(layout::mqtt_addr(file.router_ip)),
        metrics_addr: None,
        tls,
        store: StoreConfig::Embedded {
            dir: dir.join("store"),
        },
        groups: vec![EnrollmentGroupConfig {
            name: GROUP_NAME.into(),
            id_scope: file.id_scope.clone(),
            symmetric_key: Some(file.group_key.clone()),
            symmetric_key_file: None,
            allocation: Default::default(),
            selector: Default::default(),
            reprovision: Default::default(),
        }],
        stamps: Vec::new(),
        api_tokens: vec![file.app_token.clone()],
        policies_file: Some(state.policies_file()),
        assign_wait: Duration::from_secs(2),
        retry_after_secs: 1,
        serving: iotstamp_net::serve::Defences::default(),
    };
    let router = start_with(config, directory, Arc::new(HttpStampClient::new()))
        .await
        .with_context(|| format!("starting the router on {}", file.router_ip))?;
    Ok(router)
}
