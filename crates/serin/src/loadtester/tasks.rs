//! Running the commands of `/` tasks: `sh -c` in the background for `cmd`, blocking `bash -c`,
//! `helm` and `kubectl` for the others. Output is stdout and stderr in one stream, as Go's
//! `CombinedOutput` gives Flagger.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a finished command left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub success: bool,
    /// stdout and stderr, interleaved as written.
    pub output: String,
    /// Go's `exec` error text when it failed ("exit status 1", "signal: killed", ...).
    pub error: String,
}

impl Outcome {
    fn failed(error: String) -> Outcome {
        Outcome {
            success: false,
            output: String::new(),
            error,
        }
    }
}

/// Flagger's answer text for a failed blocking task.
pub fn failure_text(command: &str, outcome: &Outcome) -> String {
    format!(
        "command {command} failed: {}: {}",
        outcome.output, outcome.error
    )
}

/// Go's `ExitError` text, which Flagger puts in its answers.
pub fn status_text(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(libc::SIGKILL) => "signal: killed".into(),
        Some(libc::SIGTERM) => "signal: terminated".into(),
        Some(libc::SIGINT) => "signal: interrupt".into(),
        Some(s) => format!("signal: {s}"),
        None => status.to_string(),
    }
}

/// Runs `program args` in a process group of its own, killed (the whole group) after `timeout`.
/// `started` learns the group id, so a shutdown can stop it.
pub async fn run(
    program: &str,
    args: &[String],
    timeout: Duration,
    started: impl FnOnce(i32),
) -> Outcome {
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return Outcome::failed(format!("creating a pipe: {e}")),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return Outcome::failed(format!("creating a pipe: {e}")),
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0)
        .kill_on_drop(true);
    // The command dies with the load tester even when it is killed without a chance to clean up.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // Our copies of the pipe's write end must close, or reading never ends.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Outcome::failed(format!(
                "exec: \"{program}\": executable file not found in $PATH"
            ));
        }
        Err(e) => return Outcome::failed(format!("exec: \"{program}\": {e}")),
    };
    let pgid = child.id().map(|p| p as i32);
    if let Some(p) = pgid {
        started(p);
    }
    let reading = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        buf
    });
    let deadline = tokio::time::Instant::now() + timeout;
    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => return Outcome::failed(format!("waiting for {program}: {e}")),
        Err(_) => {
            kill_group(pgid);
            child.wait().await.ok()
        }
    };
    // Background processes of the command keep the output open; like Go, wait for them, but
    // only until the timeout.
    let mut reading = reading;
    let output = match tokio::time::timeout_at(deadline, &mut reading).await {
        Ok(r) => r.unwrap_or_default(),
        Err(_) => {
            kill_group(pgid);
            reading.await.unwrap_or_default()
        }
    };
    let output = String::from_utf8_lossy(&output).into_owned();
    match status {
        Some(s) if s.success() => Outcome {
            success: true,
            output,
            error: String::new(),
        },
        Some(s) => Outcome {
            success: false,
            output,
            error: status_text(s),
        },
        None => Outcome {
            success: false,
            output,
            error: "signal: killed".into(),
        },
    }
}

fn kill_group(pgid: Option<i32>) {
    if let Some(p) = pgid.filter(|p| *p > 1) {
        unsafe {
            libc::kill(-p, libc::SIGKILL);
        }
    }
}

/// The commands running now: the background `cmd` tasks, de-duplicated by canary and command
/// while one runs (Flagger hashes `canary + cmd`), and the process group of every command, so a
/// shutdown stops them all.
#[derive(Default)]
pub struct Runner {
    /// Keys (`canary + cmd`) of the running `cmd` tasks.
    running: Mutex<HashSet<String>>,
    /// Process groups of all running commands, background and blocking.
    groups: Mutex<HashSet<i32>>,
    stopping: AtomicBool,
}

/// How [`Runner::start`] went.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    Started,
    AlreadyRunning,
    ShuttingDown,
}

impl Runner {
    /// Starts `sh -c command` in the background unless the same canary's same command runs.
    /// `done` gets the outcome.
    pub fn start(
        self: &Arc<Self>,
        canary: &str,
        command: &str,
        timeout: Duration,
        done: impl FnOnce(Outcome) + Send + 'static,
    ) -> Start {
        if self.stopping.load(Ordering::SeqCst) {
            return Start::ShuttingDown;
        }
        let key = format!("{canary}{command}");
        if !lock(&self.running).insert(key.clone()) {
            return Start::AlreadyRunning;
        }
        let me = self.clone();
        let command = command.to_string();
        tokio::spawn(async move {
            let args = vec!["-c".to_string(), command];
            let outcome = me.run("sh", &args, timeout).await;
            lock(&me.running).remove(&key);
            done(outcome);
        });
        Start::Started
    }

    /// [`run`], with the command's process group known to [`Runner::kill_all`] while it runs.
    pub async fn run(&self, program: &str, args: &[String], timeout: Duration) -> Outcome {
        if self.stopping.load(Ordering::SeqCst) {
            return Outcome::failed("the load tester is shutting down".into());
        }
        let mut group = None;
        let outcome = run(program, args, timeout, |p| {
            group = Some(p);
            lock(&self.groups).insert(p);
        })
        .await;
        if let Some(p) = group {
            lock(&self.groups).remove(&p);
        }
        outcome
    }

    /// Background `cmd` tasks running now.
    pub fn running(&self) -> usize {
        lock(&self.running).len()
    }

    /// Kills every running command's process group and starts no more (at shutdown).
    pub fn kill_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for pgid in lock(&self.groups).iter() {
            kill_group(Some(*pgid));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(cmd: &str) -> Vec<String> {
        vec!["-c".into(), cmd.into()]
    }

    #[tokio::test]
    async fn output_interleaves_stdout_and_stderr() {
        let o = run(
            "sh",
            &sh("echo one; echo two >&2; echo three"),
            Duration::from_secs(10),
            |_| {},
        )
        .await;
        assert!(o.success);
        assert_eq!(o.output, "one\ntwo\nthree\n");
        assert_eq!(o.error, "");
    }

    #[tokio::test]
    async fn a_failure_gives_gos_exit_text() {
        let o = run(
            "sh",
            &sh("echo nope >&2; exit 3"),
            Duration::from_secs(10),
            |_| {},
        )
        .await;
        assert!(!o.success);
        assert_eq!(o.error, "exit status 3");
        assert_eq!(
            failure_text("x", &o),
            "command x failed: nope\n: exit status 3"
        );
    }

    #[tokio::test]
    async fn the_timeout_kills_the_whole_group() {
        let started = std::time::Instant::now();
        // The background sleep holds the output open; it must die with the group.
        let o = run(
            "sh",
            &sh("sleep 30 & sleep 30"),
            Duration::from_millis(300),
            |_| {},
        )
        .await;
        assert!(!o.success);
        assert_eq!(o.error, "signal: killed");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_missing_program_is_named() {
        let o = run("serin-no-such-binary", &[], Duration::from_secs(1), |_| {}).await;
        assert!(!o.success);
        assert_eq!(
            o.error,
            "exec: \"serin-no-such-binary\": executable file not found in $PATH"
        );
    }

    #[tokio::test]
    async fn a_running_command_is_not_started_twice() {
        let runner = Arc::new(Runner::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let t = Duration::from_secs(10);
        let tx1 = tx.clone();
        assert_eq!(
            runner.start("a.ns", "sleep 0.5", t, move |o| {
                let _ = tx1.send(o);
            }),
            Start::Started
        );
        assert_eq!(
            runner.start("a.ns", "sleep 0.5", t, |_| {}),
            Start::AlreadyRunning
        );
        let tx2 = tx.clone();
        assert_eq!(
            runner.start("b.ns", "sleep 0.5", t, move |o| {
                let _ = tx2.send(o);
            }),
            Start::Started
        );
        assert_eq!(runner.running(), 2);
        for _ in 0..2 {
            assert!(rx.recv().await.unwrap().success);
        }
        assert_eq!(runner.running(), 0);
        let tx3 = tx.clone();
        assert_eq!(
            runner.start("a.ns", "sleep 0.5", t, move |o| {
                let _ = tx3.send(o);
            }),
            Start::Started,
            "a finished command can run again"
        );
        assert!(rx.recv().await.unwrap().success);
    }

    #[tokio::test]
    async fn kill_all_stops_background_and_blocking_commands() {
        let runner = Arc::new(Runner::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let t = Duration::from_secs(60);
        runner.start("a.ns", "sleep 30 & sleep 30", t, move |o| {
            let _ = tx.send(o);
        });
        let r = runner.clone();
        let blocking = tokio::spawn(async move {
            r.run("bash", &sh("sleep 30"), Duration::from_secs(60))
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        runner.kill_all();
        let background = rx.recv().await.unwrap();
        assert_eq!(background.error, "signal: killed");
        assert_eq!(blocking.await.unwrap().error, "signal: killed");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(runner.start("a.ns", "true", t, |_| {}), Start::ShuttingDown);
    }
}
