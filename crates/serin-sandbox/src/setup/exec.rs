//! Running set-up commands with their output in a log file, and turning failures into messages
//! that say what failed, why (the output's tail) and what to do.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How many lines of a failed command's output to show.
const TAIL_LINES: usize = 30;

/// The set-up log: every command's full output, appended.
pub struct Log {
    path: PathBuf,
    file: File,
}

impl Log {
    /// Appends to the log, so that a quick re-run keeps the record of an earlier failed build.
    /// Append mode also keeps children writing through cloned handles from overwriting.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|file| Log {
                path: path.to_path_buf(),
                file,
            })
            .with_context(|| format!("cannot write the set-up log {}", path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn note(&mut self, text: &str) -> anyhow::Result<()> {
        writeln!(self.file, "{text}")
            .with_context(|| format!("cannot write the set-up log {}", self.path.display()))
    }

    /// Runs `cmd` with stdout and stderr going to the log. `what` names the action for the
    /// error message, `todo` tells the user what to do when it fails.
    pub fn run(&mut self, cmd: &mut Command, what: &str, todo: &str) -> anyhow::Result<()> {
        let shown = display(cmd);
        let cwd = cmd
            .get_current_dir()
            .map(|d| format!(" (in {})", d.display()))
            .unwrap_or_default();
        self.note(&format!("\n$ {}{cwd}", display_full(cmd)))?;
        let start = self
            .file
            .metadata()
            .map(|m| m.len())
            .with_context(|| format!("cannot read the set-up log {}", self.path.display()))?;
        let out = self
            .file
            .try_clone()
            .context("cannot share the set-up log")?;
        let err = self
            .file
            .try_clone()
            .context("cannot share the set-up log")?;
        let began = Instant::now();
        let status = match cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .status()
        {
            Ok(status) => status,
            Err(e) => bail!(
                "{what} failed: cannot start `{}`: {e}\nwhat to do: {todo}",
                cmd.get_program().to_string_lossy()
            ),
        };
        let tail = (!status.success()).then(|| self.tail_since(start));
        self.note(&format!("# {status} after {}", secs(began.elapsed())))?;
        if let Some(tail) = tail {
            bail!(
                "{what} failed: `{shown}` ended with {status}\n--- last lines of its output (full log: {}) ---\n{tail}\n---\nwhat to do: {todo}",
                self.path.display()
            );
        }
        Ok(())
    }

    fn tail_since(&self, start: u64) -> String {
        let mut text = String::new();
        let read = File::open(&self.path).and_then(|mut f| {
            f.seek(SeekFrom::Start(start))?;
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)?;
            text = String::from_utf8_lossy(&bytes).into_owned();
            Ok(())
        });
        match read {
            Ok(()) => tail(&text, TAIL_LINES),
            Err(e) => format!("(cannot read {}: {e})", self.path.display()),
        }
    }
}

/// Runs a short command for its output; only failing to start it is an error here.
pub fn capture(cmd: &mut Command, what: &str, todo: &str) -> anyhow::Result<Output> {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) => Ok(out),
        Err(e) => bail!(
            "{what} failed: cannot start `{}`: {e}\nwhat to do: {todo}",
            cmd.get_program().to_string_lossy()
        ),
    }
}

/// The last `n` non-empty-trailing lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The command as a user could retype it, with very long arguments (the openapi-gen package
/// list) shortened for messages.
pub fn display(cmd: &Command) -> String {
    render(cmd, Some(120))
}

fn display_full(cmd: &Command) -> String {
    render(cmd, None)
}

fn render(cmd: &Command, limit: Option<usize>) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| quote(a, limit))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(arg: &OsStr, limit: Option<usize>) -> String {
    let s = arg.to_string_lossy();
    let s = match limit {
        Some(max) if s.chars().count() > max => {
            let head: String = s.chars().take(max).collect();
            format!("{head}…({} chars)", s.chars().count())
        }
        _ => s.into_owned(),
    };
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%…()".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n\n", 2), "b\nc");
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn display_quotes_and_shortens() {
        let mut c = Command::new("go");
        c.args(["build", "-ldflags", "-s -w", "./cmd/x"]);
        assert_eq!(display(&c), "go build -ldflags '-s -w' ./cmd/x");
        let long = "a,".repeat(200);
        let mut c = Command::new("openapi-gen");
        c.args(["-i", &long]);
        let shown = display(&c);
        assert!(shown.contains("…(400 chars)"), "{shown}");
        assert!(shown.len() < 200, "{shown}");
    }

    #[test]
    fn failed_command_reports_tail_and_todo() {
        let dir = std::env::temp_dir().join(format!("serin-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("log"));
        let mut log = Log::open(&dir.join("log")).unwrap();
        log.run(
            Command::new("sh").args(["-c", "echo fine"]),
            "first",
            "nothing",
        )
        .unwrap();
        let err = log
            .run(
                Command::new("sh").args(["-c", "echo one; echo two >&2; exit 3"]),
                "the step",
                "do the thing",
            )
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("the step failed: `sh -c"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("one\ntwo"), "{err}");
        assert!(
            !err.contains("fine"),
            "earlier output must not be in the tail: {err}"
        );
        assert!(err.ends_with("what to do: do the thing"), "{err}");
        let err = log
            .run(
                &mut Command::new("/nonexistent/serin-cmd"),
                "start",
                "install it",
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot start `/nonexistent/serin-cmd`"),
            "{err}"
        );
        assert!(err.contains("what to do: install it"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
