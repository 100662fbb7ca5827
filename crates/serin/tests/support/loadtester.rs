//! `serin loadtester` as its own process, for the load tester's end-to-end tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A `serin loadtester` on a free loopback port; killed when dropped.
pub struct LoadtesterProcess {
    child: Option<Child>,
    pub log: PathBuf,
    pub addr: SocketAddr,
}

impl LoadtesterProcess {
    /// Starts `serin loadtester --address 127.0.0.1 --port 0 EXTRA...`, logging to `log`, and
    /// waits until it listens.
    pub fn spawn(log: &Path, extra: &[&str]) -> Self {
        let out = std::fs::File::create(log).expect("loadtester log file");
        let err = out.try_clone().expect("loadtester log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_serin"));
        cmd.args(["loadtester", "--address", "127.0.0.1", "--port", "0"])
            .args(extra)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,kube_client::client::tls=error")
            .env_remove("POD_NAMESPACE")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // The load tester dies with the test process even if the test panics before Drop runs.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("starting serin loadtester");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(addr) = text
                .split("serin loadtester listening on ")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("serin loadtester exited with {status}:\n{text}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serin loadtester did not listen within 30 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        LoadtesterProcess {
            child: Some(child),
            log: log.to_path_buf(),
            addr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL, as a crash or an evicted pod would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// POSTs a webhook payload as the controller would; (status, body).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, String) {
        let r = reqwest::Client::new()
            .post(self.url(path))
            .json(body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log_text()));
        let code = r.status().as_u16();
        (code, r.text().await.unwrap_or_default())
    }
}

impl Drop for LoadtesterProcess {
    /// SIGTERM first, so the load tester kills the commands it runs (hey); SIGKILL after 5 s.
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }
}

/// Flagger's webhook payload.
pub fn payload(name: &str, ns: &str, metadata: Value) -> Value {
    json!({"name": name, "namespace": ns, "phase": "Progressing", "checksum": "0", "metadata": metadata})
}

/// Fails loudly when `hey` (installed by `serin-sandbox setup`) is not on the PATH.
pub fn require_hey() {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("hey").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "hey is not on the PATH: run `serin-sandbox setup` first"
    );
}
