//! Child processes that cannot outlive the sandbox.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. So
//! every child is forked by one spawner thread that lives as long as the process: children then
//! die exactly when the process does, however it dies (SIGKILL included). Each child gets its own
//! process group so that a terminal's Ctrl-C reaches only `serin`, which then stops them in order.
//!
//! A waiter thread per child blocks in `waitid(WNOWAIT)`: it learns of the exit without reaping, so
//! the pid cannot be reused while a signal might still be sent to it.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::SyncSender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("serin-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop ends only with the process.
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
                loop {
                    std::thread::park();
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the spawner thread: {e}"));
        Mutex::new(tx)
    })
}

/// How a supervised child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildExit {
    /// Which program, e.g. `kube-apiserver`.
    pub name: String,
    /// The exit status as the OS reports it.
    pub status: String,
    /// The last lines of its log.
    pub log_tail: String,
    /// The log file.
    pub log: PathBuf,
}

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} exited unexpectedly ({}); last lines of {}:\n{}",
            self.name,
            self.status,
            self.log.display(),
            self.log_tail
        )
    }
}

struct State {
    child: Child,
    status: Option<std::process::ExitStatus>,
}

struct Shared {
    state: Mutex<State>,
    exited: Condvar,
}

/// A running child. Dropping it does nothing: the owner decides when to stop it.
pub struct Supervised {
    name: String,
    pid: i32,
    log: PathBuf,
    shared: Arc<Shared>,
}

/// Called once, from the waiter thread, when a child exits.
pub type OnExit = Box<dyn FnOnce(ChildExit) + Send>;

impl Supervised {
    /// Starts `program args` with its output appended to `log`, and calls `on_exit` when it ends
    /// unless `expected` is set by then.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        expected: Arc<AtomicBool>,
        on_exit: OnExit,
    ) -> io::Result<Supervised> {
        Self::spawn_with_env(name, program, args, &[], log, expected, on_exit)
    }

    /// [`Supervised::spawn`] with extra environment variables (Flux's controllers read their
    /// kubeconfig and namespace only from there).
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
        expected: Arc<AtomicBool>,
        on_exit: OnExit,
    ) -> io::Result<Supervised> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        spawner()
            .lock()
            .map_err(|_| io::Error::other("spawner lock poisoned"))?
            .send((cmd, reply_tx))
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        let child = reply_rx
            .recv()
            .map_err(|_| io::Error::other("the spawner thread is gone"))??;
        let pid = child.id() as i32;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                child,
                status: None,
            }),
            exited: Condvar::new(),
        });
        let waiter = shared.clone();
        let (wname, wlog) = (name.to_string(), log.to_path_buf());
        std::thread::Builder::new()
            .name(format!("serin-wait-{name}"))
            .spawn(move || {
                wait_no_reap(pid);
                let status = {
                    let Ok(mut st) = waiter.state.lock() else {
                        return;
                    };
                    let status = st.child.wait();
                    if let Ok(s) = status {
                        st.status = Some(s);
                    }
                    waiter.exited.notify_all();
                    status
                };
                if !expected.load(Ordering::SeqCst) {
                    on_exit(ChildExit {
                        name: wname,
                        status: match status {
                            Ok(s) => s.to_string(),
                            Err(e) => format!("wait failed: {e}"),
                        },
                        log_tail: tail(&wlog, 20),
                        log: wlog,
                    });
                }
            })?;
        Ok(Supervised {
            name: name.to_string(),
            pid,
            log: log.to_path_buf(),
            shared,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    #[cfg(test)]
    pub fn has_exited(&self) -> bool {
        self.shared
            .state
            .lock()
            .map(|s| s.status.is_some())
            .unwrap_or(true)
    }

    /// Signals the child's process group, unless it has already been reaped.
    pub fn signal(&self, sig: libc::c_int) {
        if let Ok(st) = self.shared.state.lock()
            && st.status.is_none()
        {
            // SAFETY: plain syscall; the pid is ours and not yet reaped.
            unsafe {
                libc::kill(-self.pid, sig);
                libc::kill(self.pid, sig);
            }
        }
    }

    /// Waits until the child has exited or `deadline` passes; true if it exited.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let Ok(mut st) = self.shared.state.lock() else {
            return true;
        };
        while st.status.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            match self.shared.exited.wait_timeout(st, deadline - now) {
                Ok((g, _)) => st = g,
                Err(_) => return true,
            }
        }
        true
    }
}

/// Stops children: SIGTERM to all, `grace` for them to go, then SIGKILL.
pub fn stop_all(children: &[Supervised], grace: Duration) {
    for c in children {
        c.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    for c in children {
        if !c.wait_until(deadline) {
            tracing::warn!(
                "{} (pid {}) ignored SIGTERM for {grace:?}; killing it",
                c.name,
                c.pid
            );
            c.signal(libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for c in children {
        if !c.wait_until(deadline) {
            tracing::error!("{} (pid {}) survived SIGKILL", c.name, c.pid);
        }
    }
}

fn wait_no_reap(pid: i32) {
    loop {
        // SAFETY: zeroed siginfo is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// The last `lines` lines of a file (at most the last 64 KiB are read).
pub fn tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A process's identity that survives pid reuse: its pid and its start time in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessId {
    pub fn current() -> Option<ProcessId> {
        let pid = std::process::id() as i32;
        Some(ProcessId {
            pid,
            start_time: proc_stat(pid)?.1,
        })
    }

    /// Parses `PID STARTTIME` as written by `Display`.
    pub fn parse(s: &str) -> Option<ProcessId> {
        let mut it = s.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start_time = it.next()?.parse().ok()?;
        Some(ProcessId { pid, start_time })
    }

    /// Running (not a zombie) and still the same process.
    pub fn is_alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, start)) if state != 'Z' && state != 'X' && start == self.start_time)
    }
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.pid, self.start_time)
    }
}

/// True if `pid` is a live (not zombie) process.
pub fn pid_alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// State letter and start time from `/proc/PID/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name may hold spaces and parentheses; the fields after the last ')' do not.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat =
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessId::current().unwrap();
        assert!(me.is_alive());
        assert_eq!(ProcessId::parse(&me.to_string()), Some(me));
        let other = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
    }

    #[test]
    fn unexpected_exit_is_reported_with_the_log_tail_and_expected_exit_is_not() {
        let dir = std::env::temp_dir().join(format!("serin-proc-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("sh.log");
        let (tx, rx) = mpsc::channel();
        let child = Supervised::spawn(
            "sh",
            Path::new("/bin/sh"),
            &["-c".into(), "echo one; echo two; exit 3".into()],
            &log,
            Arc::new(AtomicBool::new(false)),
            Box::new(move |e| tx.send(e).unwrap()),
        )
        .unwrap();
        let exit = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(exit.name, "sh");
        assert!(exit.status.contains('3'), "{}", exit.status);
        assert_eq!(exit.log_tail, "one\ntwo");
        assert!(child.has_exited());

        let expected = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let sleeper = Supervised::spawn(
            "sleep",
            Path::new("/bin/sleep"),
            &["60".into()],
            &dir.join("sleep.log"),
            expected.clone(),
            Box::new(move |e| tx.send(e).unwrap()),
        )
        .unwrap();
        assert!(pid_alive(sleeper.pid()));
        expected.store(true, Ordering::SeqCst);
        stop_all(std::slice::from_ref(&sleeper), Duration::from_secs(2));
        assert!(sleeper.has_exited());
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
