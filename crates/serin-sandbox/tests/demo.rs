//! `cargo demo` (serin-sandbox demo) as a newcomer runs it (with `--keep`, then Ctrl-C): the whole
//! story on its own sandbox with real Flux applying each release commit, the sandbox explorable
//! with kubectl afterwards, and nothing left once it stops.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serin_core::messages as msg;

/// `analysis.threshold` of backend's Canary in deploy/gitops.
const THRESHOLD: u32 = 5;

fn output_so_far(path: &std::path::Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

#[test]
fn the_demo_promotes_a_release_rolls_back_a_faulty_one_and_cleans_up() {
    let log = std::env::temp_dir().join(format!("serin-demo-test-{}.log", std::process::id()));
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_serin-sandbox"));
    cmd.args(["demo", "--keep"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(480);
    let text = loop {
        let text = output_so_far(&log);
        if text.contains("The sandbox keeps running") {
            break text;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("serin-sandbox demo exited early ({status}):\n{text}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serin-sandbox demo did not finish its story in 480 s:\n{text}");
        }
        std::thread::sleep(Duration::from_secs(1));
    };

    // The story: a promotion, then a rollback with the primary still on the good release.
    let summary = text
        .split("==> summary")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    let rows: Vec<&str> = summary.lines().filter(|l| l.starts_with("6.")).collect();
    assert_eq!(rows.len(), 2, "{summary}");
    assert!(
        rows[0].contains("Succeeded") && rows[0].contains("podinfo:6.0.1"),
        "{summary}"
    );
    assert!(
        rows[1].contains("Failed") && rows[1].contains("podinfo:6.0.1"),
        "{summary}"
    );
    assert!(rows[0].contains("10→20→30→40→50"), "{summary}");
    assert!(text.contains("The good release was promoted"), "{text}");
    // What the chat got, and what kubectl describe showed.
    assert!(text.contains(msg::ALERT_PROMOTED), "{text}");
    assert!(
        text.contains(&format!(
            "✗ backend.prod: {}",
            msg::alert_threshold(THRESHOLD)
        )),
        "{text}"
    );
    assert!(
        text.contains(&msg::rolling_back_threshold("backend.prod", THRESHOLD)),
        "{text}"
    );
    assert!(
        text.contains(&msg::copying_template(
            "backend.prod",
            "backend-primary.prod"
        )),
        "{text}"
    );

    // Flux applied every commit: the table printed at the end shows the three Kustomizations
    // Ready at the faulty release's commit, the last one.
    let last_commit = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("==> release: commit "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no release commit printed:\n{text}"))
        .to_string();
    let table = text
        .split("==> flux get kustomizations")
        .nth(1)
        .and_then(|t| t.split("==> summary").next())
        .unwrap_or_else(|| panic!("no Kustomization table:\n{text}"));
    for name in ["apps", "flux-system", "infra"] {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row:\n{table}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert!(cells[1].starts_with(&last_commit), "{table}");
        assert_eq!(cells[3], "True", "{table}");
    }
    // And apps waited for infra, as dependsOn says.
    assert!(
        text.contains("dependency 'flux-system/infra' is not ready"),
        "{text}"
    );

    // --keep: the sandbox answers kubectl with the printed KUBECONFIG.
    let kubeconfig = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("export KUBECONFIG="))
        .unwrap_or_else(|| panic!("no KUBECONFIG printed:\n{text}"))
        .to_string();
    let phase = Command::new(serin_sandbox::kubectl())
        .args([
            "-n",
            "prod",
            "get",
            "canary",
            "backend",
            "-o",
            "jsonpath={.status.phase}",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&phase.stdout),
        "Failed",
        "{phase:?}"
    );

    let ready = Command::new(serin_sandbox::kubectl())
        .args([
            "-n",
            "flux-system",
            "get",
            "kustomizations",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ready.stdout).trim(),
        "apps=True flux-system=True infra=True",
        "{ready:?}"
    );

    // Ctrl-C tears everything down.
    let sandbox_dir = std::path::Path::new(&kubeconfig)
        .parent()
        .unwrap()
        .to_path_buf();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let stop = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > stop {
            let _ = child.kill();
            panic!("serin-sandbox demo did not stop within 60 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{status}: {}", output_so_far(&log));
    assert!(
        !sandbox_dir.exists(),
        "{} is left behind",
        sandbox_dir.display()
    );
    let left = Command::new("pgrep")
        .args(["-af", &sandbox_dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let _ = std::fs::remove_file(&log);
}
