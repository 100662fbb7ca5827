//! `serin-sandbox up` / `down` as processes, and what they leave behind (nothing).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What `serin-sandbox up` runs, sorted: the control plane and Flux's controllers.
const CHILDREN: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kustomize-controller",
    "prometheus",
    "source-controller",
];

struct Up {
    dir: PathBuf,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("serin-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts `serin-sandbox up --dir BASE/sandbox` and waits for its env file and its summary
/// (printed once Flux and the mesh simulator run too).
fn up(base: &Path) -> Up {
    let dir = base.join("sandbox");
    let (stdout, stderr) = (base.join("up.stdout"), base.join("up.stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_serin-sandbox"))
        .args(["up", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dir.join("env").exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "serin-sandbox up exited early ({status}):\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no {}/env after 120 s",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    while !std::fs::read_to_string(&stdout)
        .unwrap_or_default()
        .contains("serin-sandbox ready in")
    {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "serin-sandbox up exited early ({status}):\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no summary after 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Up {
        dir,
        child,
        stdout,
        stderr,
    }
}

fn serin(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_serin-sandbox"))
        .args(args)
        .arg(dir)
        .output()
        .unwrap()
}

fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Live (non-zombie) sandbox processes whose command line mentions `dir`: (pid, program).
fn processes_mentioning(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_str().unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let program = Path::new(&args[0])
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie
            && CHILDREN.contains(&program.as_str())
            && args.iter().any(|a| a.contains(needle))
        {
            found.push((pid, program));
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

fn assert_all_running(dir: &Path) -> Vec<(i32, String)> {
    let procs = processes_mentioning(dir);
    let mut names: Vec<&str> = procs.iter().map(|(_, n)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, CHILDREN, "sandbox processes for {}", dir.display());
    procs
}

fn assert_none_left(dir: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = processes_mentioning(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes left behind after {limit:?}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn up_kubectl_down_leaves_nothing() {
    let base = test_dir("down");
    let mut up = up(&base);
    let env = std::fs::read_to_string(up.dir.join("env")).unwrap();
    assert!(env.contains(&format!(
        "export KUBECONFIG='{}'",
        up.dir.join("kubeconfig").display()
    )));
    assert!(env.contains("export PROMETHEUS_URL='http://127.0.0.1:"));
    let pid: u32 = std::fs::read_to_string(up.dir.join("sandbox.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, up.child.id());
    // `env` appears when the control plane is up; the summary follows once the mesh simulator runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let summary = loop {
        let s = std::fs::read_to_string(&up.stdout).unwrap_or_default();
        if s.contains("serin-sandbox ready in") || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(summary.contains("serin-sandbox ready in"), "{summary}");
    assert!(summary.contains("simulated Istio telemetry"), "{summary}");
    assert!(
        summary.contains("Flux:") && summary.contains("Git server:  http://127.0.0.1:"),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("source {}", up.dir.join("env").display())),
        "{summary}"
    );

    let kubectl = Command::new(serin_sandbox::kubectl())
        .arg("--kubeconfig")
        .arg(up.dir.join("kubeconfig"))
        .args(["get", "ns"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&kubectl.stdout);
    assert!(
        kubectl.status.success(),
        "{}",
        String::from_utf8_lossy(&kubectl.stderr)
    );
    assert!(
        out.contains("default") && out.contains("kube-system") && out.contains("flux-system"),
        "{out}"
    );

    assert_all_running(&up.dir);

    let down = serin(&["down", "--dir"], &up.dir);
    let said = String::from_utf8_lossy(&down.stdout);
    assert!(
        down.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(
        said.contains(&format!("SIGTERM to serin-sandbox up (pid {pid})")),
        "{said}"
    );
    assert!(said.contains("stopped in"), "{said}");
    let status = wait_exit(&mut up.child, Duration::from_secs(10));
    assert!(status.success(), "up exited with {status}");
    assert_none_left(&up.dir, Duration::ZERO);
    assert!(!up.dir.join("data").exists());
    assert!(!up.dir.join("sandbox.pid").exists());
    assert!(!up.dir.join("env").exists());
    assert!(up.dir.join("logs").join("kube-apiserver.log").exists());

    let again = serin(&["down", "--dir"], &up.dir);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no sandbox is running"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn sigkill_of_up_takes_the_children_along_and_stale_dirs_are_swept() {
    // A temp dir whose owner is dead (pid_max is at most 2^22), as a SIGKILLed test binary leaves.
    let stale = std::env::temp_dir().join(format!(
        "{}cli-stale-{}",
        serin_sandbox::TEMP_PREFIX,
        std::process::id()
    ));
    std::fs::create_dir_all(stale.join("data").join("etcd")).unwrap();
    std::fs::write(stale.join("owner"), "999999999 1\n").unwrap();

    let base = test_dir("kill");
    let mut up = up(&base);
    assert!(!stale.exists(), "the stale dir should be swept at start");
    assert_all_running(&up.dir);

    up.child.kill().unwrap(); // SIGKILL: no teardown code runs
    up.child.wait().unwrap();
    assert_none_left(&up.dir, Duration::from_secs(10));

    // The data of the dead sandbox is still there; `down` says nothing runs and cleans it.
    assert!(up.dir.join("data").exists());
    let down = serin(&["down", "--dir"], &up.dir);
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(!down.status.success());
    assert!(
        err.contains("no sandbox is running") && err.contains("is gone"),
        "{err}"
    );
    assert!(!up.dir.join("data").exists());
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn a_child_dying_is_reported_and_everything_torn_down() {
    let base = test_dir("crash");
    let mut up = up(&base);
    let procs = assert_all_running(&up.dir);
    let (prom, _) = procs.iter().find(|(_, n)| n == "prometheus").unwrap();
    // SAFETY: plain syscall on a pid we just found.
    unsafe { libc::kill(*prom, libc::SIGKILL) };

    let status = wait_exit(&mut up.child, Duration::from_secs(30));
    assert!(!status.success(), "up should fail when a child dies");
    let err = std::fs::read_to_string(&up.stderr).unwrap();
    assert!(err.contains("prometheus exited unexpectedly"), "{err}");
    assert!(err.contains("signal: 9"), "{err}");
    assert!(err.contains("last lines of"), "{err}");
    assert_none_left(&up.dir, Duration::ZERO);
    assert!(!up.dir.join("data").exists());
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn a_flux_controller_dying_is_reported_and_everything_torn_down() {
    let base = test_dir("flux-crash");
    let mut up = up(&base);
    let procs = assert_all_running(&up.dir);
    let (kc, _) = procs
        .iter()
        .find(|(_, n)| n == "kustomize-controller")
        .unwrap();
    // SAFETY: plain syscall on a pid we just found.
    unsafe { libc::kill(*kc, libc::SIGKILL) };
    let status = wait_exit(&mut up.child, Duration::from_secs(30));
    assert!(!status.success(), "up should fail when Flux dies");
    let err = std::fs::read_to_string(&up.stderr).unwrap();
    assert!(
        err.contains("kustomize-controller exited unexpectedly"),
        "{err}"
    );
    assert_none_left(&up.dir, Duration::ZERO);
    assert!(!up.dir.join("data").exists());
    std::fs::remove_dir_all(&base).unwrap();
}

/// Not a test of its own: the child process of `shared_env_dies_with_its_test_process`. It starts
/// the shared environment and returns, so the process exits without dropping the static.
#[test]
#[ignore = "helper process, run by shared_env_dies_with_its_test_process"]
fn shared_env_helper() {
    let env = serin_sandbox::testenv::shared();
    println!("SHARED_ENV_DIR={}", env.dir().display());
    println!("SHARED_ENV_PROCESSES={}", env.processes().len());
}

#[test]
fn shared_env_dies_with_its_test_process() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "shared_env_helper", "--nocapture"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {stdout}"))
            .to_string()
    };
    let dir = PathBuf::from(field("SHARED_ENV_DIR="));
    assert_eq!(field("SHARED_ENV_PROCESSES="), "4");
    // Its children went with it (PR_SET_PDEATHSIG); its directory stays for the next sweep.
    assert_none_left(&dir, Duration::from_secs(10));
    serin_sandbox::sweep_stale_temp_dirs();
    assert!(!dir.exists(), "{} should be swept", dir.display());
}
