//! The state folder: the CA, each endpoint's certificate, and `fleet.json` (enrollment group,
//! tokens, which stamps exist). Everything a restart of `iotstamp up` needs to come back with the
//! same stamps, addresses and assignments (the router's store and each stamp's data live below it
//! too).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use iotstamp_core::pki::{self, CertKeyPem};
use iotstamp_core::policies::Policies;

/// Certificates live a year; a restart renews them when they come within a month of expiry.
const CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// What `fleet.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetFile {
    /// The router's address; stamp n gets this address plus n.
    pub router_ip: Ipv4Addr,
    pub id_scope: String,
    /// Base64 enrollment group key; device keys are derived from it.
    pub group_key: String,
    /// Bearer token for the router's service API.
    pub app_token: String,
    /// Bearer token for the stamps' API (the router uses it too).
    pub stamp_token: String,
    pub stamps: Vec<StampEntry>,
    /// When the pool last added a stamp (Unix seconds), for the cooldown.
    #[serde(default)]
    pub last_scale_unix: Option<i64>,
    /// What the Azure service SDKs are given: the router and the `service` policy's key
    /// (`HostName=…;SharedAccessKeyName=service;SharedAccessKey=…`), written at each start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_connection_string: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StampEntry {
    pub name: String,
    pub ip: Ipv4Addr,
    pub quota: u64,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }

    pub fn fleet_file(&self) -> PathBuf {
        self.root.join("fleet.json")
    }

    pub fn router_dir(&self) -> PathBuf {
        self.root.join("router")
    }

    pub fn stamp_dir(&self, name: &str) -> PathBuf {
        self.root.join("stamps").join(name)
    }

    /// The hubs' shared access policies (`device`: DeviceConnect; `service`: ServiceConnect and
    /// RegistryReadWrite). Every stamp reads it, and again when it changes: edit it to rotate keys.
    pub fn policies_file(&self) -> PathBuf {
        self.root.join("policies.json")
    }

    /// Writes the policies file from `make` when there is none; an existing one (perhaps edited
    /// to rotate a key) is kept as it is.
    pub fn ensure_policies(&self, make: impl FnOnce() -> Policies) -> anyhow::Result<()> {
        let path = self.policies_file();
        if !path.exists() {
            std::fs::create_dir_all(&self.root)
                .with_context(|| format!("creating {}", self.root.display()))?;
            write_private(&path, &serde_json::to_string_pretty(&make())?)?;
        }
        Ok(())
    }

    pub fn load_policies(&self) -> anyhow::Result<Policies> {
        let path = self.policies_file();
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Policies::parse(&bytes).with_context(|| format!("reading {}", path.display()))
    }

    /// The stamp API token as a file: the stamp's config names a file, not a value.
    pub fn stamp_token_file(&self) -> PathBuf {
        self.root.join("stamp-token")
    }

    pub fn load_fleet(&self) -> anyhow::Result<Option<FleetFile>> {
        let path = self.fleet_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(
                serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `fleet.json` (and the token file) atomically, so a crash never leaves half a file.
    pub fn save_fleet(&self, fleet: &FleetFile) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.root).with_context(|| format!("creating {}", self.root.display()))?;
        write_private(&self.fleet_file(), &serde_json::to_string_pretty(fleet)?)?;
        write_private(&self.stamp_token_file(), &fleet.stamp_token)
    }

    /// The CA, created on first use.
    pub fn ensure_ca(&self, now_unix: i64) -> anyhow::Result<CertKeyPem> {
        let (cert, key) = (self.ca_cert(), self.ca_key());
        if cert.exists() && key.exists() {
            return Ok(CertKeyPem {
                cert_pem: read(&cert)?,
                key_pem: read(&key)?,
            });
        }
        std::fs::create_dir_all(&self.root).with_context(|| format!("creating {}", self.root.display()))?;
        let ca = pki::new_ca("iotstamp local CA", now_unix - 60, CA_VALIDITY)?;
        write_private(&key, &ca.key_pem)?;
        write_private(&cert, &ca.cert_pem)?;
        Ok(ca)
    }

    /// `tls.crt`/`tls.key` in `dir` for `ip`, issued (again) when missing, for another address, or
    /// close to expiry. Returns the two paths.
    pub fn ensure_server_cert(
        &self,
        dir: &Path,
        ca: &CertKeyPem,
        ip: Ipv4Addr,
        now_unix: i64,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let sans = vec![ip.to_string()];
        let current = std::fs::read_to_string(&cert).ok();
        let stale = current.is_none_or(|pem| pki::needs_renewal(&pem, &sans, now_unix, RENEW_BEFORE));
        if stale || !key.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let issued = pki::issue_server_cert(ca, &sans, now_unix - 60, CERT_VALIDITY)?;
            write_private(&key, &issued.key_pem)?;
            write_private(&cert, &issued.cert_pem)?;
        }
        Ok((cert, key))
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Write-then-rename, readable by the owner only (keys and tokens).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_and_certificates_are_kept_across_calls() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let now = 1_800_000_000;
        let ca = state.ensure_ca(now).unwrap();
        assert_eq!(state.ensure_ca(now).unwrap(), ca, "a second start reuses the CA");
        let d = state.stamp_dir("stamp-1");
        let ip = Ipv4Addr::new(127, 0, 0, 11);
        let (cert, _) = state.ensure_server_cert(&d, &ca, ip, now).unwrap();
        let first = std::fs::read_to_string(&cert).unwrap();
        state.ensure_server_cert(&d, &ca, ip, now).unwrap();
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), first);
        let other = Ipv4Addr::new(127, 0, 0, 12);
        state.ensure_server_cert(&d, &ca, other, now).unwrap();
        let facts = pki::cert_facts(&std::fs::read_to_string(&cert).unwrap()).unwrap();
        assert_eq!(
            facts.sans,
            vec!["127.0.0.12".to_string()],
            "a moved stamp gets a new certificate"
        );
    }
}
