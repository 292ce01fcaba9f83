//! Runs the `iotstamp` binary as a user would: `up` in the background (stdout collected line by
//! line), `simulate` to completion.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iotstamp_local::report::Summary;

/// `$IOTSTAMP_BIN`, or `iotstamp` beside this test's build directory.
pub fn binary() -> PathBuf {
    let bin = std::env::var_os("IOTSTAMP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().join("iotstamp")
        });
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build` first (or set IOTSTAMP_BIN)",
        bin.display()
    );
    bin
}

pub struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Up {
    /// Starts `iotstamp up` with `args` and waits for its "ready" line.
    pub fn start(state: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .arg("up")
            .arg("--state")
            .arg(state)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut up = Self {
            child,
            lines,
            seen: Vec::new(),
        };
        up.wait_for("ready", Duration::from_secs(60));
        up
    }

    /// Waits until a line containing `text` has been printed; panics with the output otherwise.
    pub fn wait_for(&mut self, text: &str, limit: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return l.clone();
        }
        let until = Instant::now() + limit;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "`iotstamp up` never printed `{text}`; it printed:\n{}",
            self.seen.join("\n")
        );
    }

    /// Lines printed so far (without waiting).
    pub fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// SIGTERM, then the exit status (within 30 s).
    pub fn terminate(self) -> (ExitStatus, Vec<String>) {
        self.signal(libc::SIGTERM)
    }

    /// Sends `signal` (SIGTERM, SIGINT as Ctrl-C does), then the exit status (within 30 s).
    pub fn signal(mut self, signal: libc::c_int) -> (ExitStatus, Vec<String>) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child we started and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader thread ends with the pipe; collect what is left.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
                    self.seen.push(line);
                }
                return (status, std::mem::take(&mut self.seen));
            }
            assert!(
                Instant::now() < until,
                "`iotstamp up` did not exit within 30 s of signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `iotstamp simulate --json` with `args`; the parsed summary and the exit status.
pub fn simulate(state: &Path, args: &[&str]) -> (Summary, ExitStatus) {
    let out = Command::new(binary())
        .arg("simulate")
        .arg("--state")
        .arg(state)
        .arg("--json")
        .args(args)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: simulate printed:\n{text}"));
    (summary, out.status)
}

/// Where .ci/setup-deps installs the test tools: `$IOTSTAMP_CACHE`, by default ~/.cache/iotstamp.
pub fn tools_cache() -> String {
    std::env::var("IOTSTAMP_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/iotstamp", std::env::var("HOME").unwrap_or_default()))
}

/// The venv Python with azure-iot-device (installed by .ci/setup-deps); fails clearly without it.
pub fn venv_python() -> String {
    let python = format!("{}/venv/bin/python", tools_cache());
    assert!(
        Path::new(&python).exists(),
        "{python} is missing: run .ci/setup-deps (it installs the Python venv with azure-iot-device)"
    );
    python
}

/// Runs `cmd` to completion, asserts it succeeded (showing both streams if not), returns stdout.
pub fn stdout_of_success(cmd: &mut Command) -> String {
    let out = cmd.env("RUST_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}\n{err}");
    text
}

/// The Azure IoT Node.js device SDK's `node_modules` (installed by .ci/setup-deps from
/// local/tests/clients/package-lock.json); fails clearly without it.
pub fn node_sdk_modules() -> PathBuf {
    let modules = PathBuf::from(format!("{}/node-sdk/node_modules", tools_cache()));
    assert!(
        modules.join("azure-iot-device").exists(),
        "{} has no azure-iot-device: run .ci/setup-deps (it installs the Node.js device SDK)",
        modules.display()
    );
    modules
}

/// The router's service API as an application calls it: HTTPS with the fleet's CA, the app token.
pub struct ServiceApi {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl ServiceApi {
    /// The API of the fleet `up` keeps in `state`, on its 8443 port.
    pub fn of_fleet(state: &Path) -> Self {
        let fleet = iotstamp_local::state::StateDir::new(state)
            .load_fleet()
            .unwrap()
            .expect("up wrote fleet.json");
        let ca = std::fs::read_to_string(state.join("ca.crt")).unwrap();
        Self {
            http: iotstamp_local::dps::https_client(&ca).unwrap(),
            base: format!("https://{}:8443", fleet.router_ip),
            token: fleet.app_token,
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        self.call_with(method, path, body, &[]).await
    }

    /// [`Self::call`] with more request headers.
    pub async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.call(reqwest::Method::GET, path, None)
            .await
            .json()
            .await
            .unwrap()
    }

    /// The message ids of the device's stored telemetry, oldest first, read through the router.
    pub async fn message_ids(&self, device: &str) -> Vec<String> {
        let page = self.get_json(&format!("/v1/devices/{device}/telemetry")).await;
        page["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no telemetry page for {device}: {page}"))
            .iter()
            .filter_map(|r| r["messageId"].as_str().map(String::from))
            .collect()
    }

    /// Sends a cloud-to-device message through the router; asserts it was accepted.
    pub async fn send_c2d(&self, device: &str, body: serde_json::Value) {
        let path = format!("/v1/devices/{device}/messages");
        let sent = self.call(reqwest::Method::POST, &path, Some(body)).await;
        assert!(sent.status().is_success(), "C2D to {device}: {}", sent.status());
    }

    /// Invokes a direct method, retrying while the hub answers 409: an SDK subscribes to methods
    /// only once its handler is set, a moment after it connected. Status and body of the answer.
    pub async fn invoke_method(
        &self,
        device: &str,
        method: &str,
        payload: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let path = format!("/v1/devices/{device}/methods/{method}?timeout=10");
        let mut answer = (0, serde_json::Value::Null);
        for _ in 0..100 {
            let resp = self
                .call(reqwest::Method::POST, &path, Some(payload.clone()))
                .await;
            answer = (
                resp.status().as_u16(),
                resp.json().await.unwrap_or(serde_json::Value::Null),
            );
            if answer.0 != 409 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        answer
    }
}
