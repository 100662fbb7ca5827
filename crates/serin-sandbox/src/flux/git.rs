//! A Git server on loopback speaking smart HTTP, as GitHub or Gitea do for Flux's
//! source-controller: each request is handed to `git http-backend` (Git's own server side) as a
//! CGI program. Repositories are bare directories `NAME.git` under one root, read-only over HTTP;
//! [`Repository`] commits in a working clone and pushes through the file system.
//!
//! It runs on its own thread with its own runtime, like the simulated kubelet, so that it serves
//! whatever runtime the caller (a test) uses and however long it lives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

/// The branch every repository is created on.
pub const BRANCH: &str = "main";

/// Who the sandbox's commits are by.
const AUTHOR: [&str; 4] = [
    "-c",
    "user.name=serin-sandbox",
    "-c",
    "user.email=sandbox@serin.dev",
];

/// A running Git server; dropping it stops it.
pub struct GitServer {
    root: PathBuf,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl GitServer {
    /// Serves the bare repositories under `root` (created if missing) on a free loopback port.
    pub fn start(root: &Path) -> std::io::Result<GitServer> {
        std::fs::create_dir_all(root)?;
        let root = std::fs::canonicalize(root)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let served = root.clone();
        let thread = std::thread::Builder::new()
            .name("serin-git-http".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("cannot build the Git server's runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("the Git server cannot listen: {e}");
                            return;
                        }
                    };
                    let app = axum::Router::new()
                        .fallback(cgi)
                        // Pushes over HTTP carry packs; fetch requests are small.
                        .layer(DefaultBodyLimit::max(256 << 20))
                        .with_state(served);
                    let served = axum::serve(listener, app).with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    });
                    if let Err(e) = served.await {
                        tracing::error!("the Git server stopped: {e}");
                    }
                });
            })?;
        Ok(GitServer {
            root,
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory holding the bare repositories.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The clone URL of repository `name`: `http://127.0.0.1:PORT/NAME.git`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.addr)
    }

    /// Creates repository `name` holding a copy of `content` (its files at the repository's
    /// root) in one commit on [`BRANCH`], with a working clone beside the bare repositories.
    pub fn create_repository(
        &self,
        name: &str,
        content: &Path,
        message: &str,
    ) -> anyhow::Result<Repository> {
        let bare = self.root.join(format!("{name}.git"));
        let work = self.root.join("work").join(name);
        for dir in [&bare, &work] {
            if dir.exists() {
                std::fs::remove_dir_all(dir)?;
            }
            std::fs::create_dir_all(dir)?;
        }
        git(&bare, &["init", "-q", "--bare", "-b", BRANCH])?;
        git(&work, &["init", "-q", "-b", BRANCH])?;
        git(
            &work,
            &["remote", "add", "origin", &bare.display().to_string()],
        )?;
        copy_tree(content, &work)?;
        let repo = Repository {
            url: self.url(name),
            work,
        };
        repo.commit(message)?;
        Ok(repo)
    }

    /// Stops serving and waits for the thread.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the Git server thread panicked");
        }
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A repository of the [`GitServer`], through its working clone.
#[derive(Debug, Clone)]
pub struct Repository {
    url: String,
    work: PathBuf,
}

impl Repository {
    /// What Flux's GitRepository `spec.url` says.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The working clone: edit files here, then [`Repository::commit`].
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Commits every change of the working clone and pushes it; returns the revision as Flux
    /// writes it (`main@sha1:<commit>`). Refuses an empty commit: a release that changes
    /// nothing is a mistake in the caller.
    pub fn commit(&self, message: &str) -> anyhow::Result<String> {
        git(&self.work, &["add", "-A"])?;
        let mut args: Vec<&str> = AUTHOR.to_vec();
        args.extend(["commit", "-q", "-m", message]);
        git(&self.work, &args)?;
        git(&self.work, &["push", "-q", "origin", BRANCH])?;
        self.revision()
    }

    /// The pushed head as Flux writes revisions: `main@sha1:<commit>`.
    pub fn revision(&self) -> anyhow::Result<String> {
        let sha = git(&self.work, &["rev-parse", "HEAD"])?;
        Ok(format!("{BRANCH}@sha1:{}", sha.trim()))
    }
}

/// Runs git in `dir` with no user or system configuration; returns its stdout.
fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run git (install Debian's git package): {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "`git {}` in {} failed ({}): {}",
            args.join(" "),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// One request through `git http-backend`.
async fn cgi(
    State(root): State<PathBuf>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match run_backend(&root, &method, &uri, &headers, body).await {
        Ok(output) => match parse_cgi(&output) {
            Ok(r) => r,
            Err(e) => plain(StatusCode::BAD_GATEWAY, e),
        },
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn plain(status: StatusCode, text: String) -> Response {
    tracing::warn!("git http-backend: {text}");
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r
}

/// The CGI environment of a request (RFC 3875), with what `git http-backend` reads besides.
pub fn cgi_env(
    root: &Path,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body_len: usize,
) -> HashMap<String, String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut env = HashMap::from([
        ("GIT_PROJECT_ROOT".into(), root.display().to_string()),
        // Every repository under the root is served (read-only: receive-pack needs
        // authentication, which this server never asks for).
        ("GIT_HTTP_EXPORT_ALL".into(), "1".into()),
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        ("SERVER_PROTOCOL".into(), "HTTP/1.1".into()),
        ("REQUEST_METHOD".into(), method.as_str().to_string()),
        ("PATH_INFO".into(), uri.path().to_string()),
        (
            "QUERY_STRING".into(),
            uri.query().unwrap_or_default().to_string(),
        ),
        ("CONTENT_TYPE".into(), header("content-type")),
        ("CONTENT_LENGTH".into(), body_len.to_string()),
        ("REMOTE_ADDR".into(), "127.0.0.1".into()),
    ]);
    for (name, var) in [
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "HTTP_GIT_PROTOCOL"),
    ] {
        let value = header(name);
        if !value.is_empty() {
            env.insert(var.into(), value);
        }
    }
    env
}

async fn run_backend(
    root: &Path,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Vec<u8>, String> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .envs(cgi_env(root, method, uri, headers, body.len()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run git http-backend: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // Written while the output is read below: a large request must not fill both pipes.
        tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("git http-backend: {e}"))?;
    if !out.stderr.is_empty() {
        tracing::debug!(
            "git http-backend {uri}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// A CGI program's output → the HTTP response: headers up to the first blank line (`Status:`
/// gives the code, 200 when absent), the rest is the body.
pub fn parse_cgi(output: &[u8]) -> Result<Response, String> {
    let (head, body) = split_head(output).ok_or("no blank line after the CGI headers")?;
    let head = String::from_utf8_lossy(head);
    let mut status = StatusCode::OK;
    let mut response = Response::new(Body::empty());
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or_default();
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| format!("bad CGI status {value:?}"))?;
        } else if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    *response.status_mut() = status;
    *response.body_mut() = Body::from(body.to_vec());
    Ok(response)
}

fn split_head(output: &[u8]) -> Option<(&[u8], &[u8])> {
    for (sep, len) in [(&b"\r\n\r\n"[..], 4), (&b"\n\n"[..], 2)] {
        if let Some(at) = output.windows(len).position(|w| w == sep) {
            return Some((&output[..at], &output[at + len..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgi_output_becomes_a_response() {
        let r = parse_cgi(b"Content-Type: application/x-git-upload-pack-advertisement\r\nCache-Control: no-cache\r\n\r\n001e# service=git-upload-pack\n").unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["content-type"],
            "application/x-git-upload-pack-advertisement"
        );
        let r =
            parse_cgi(b"Status: 404 Not Found\r\nExpires: Fri, 01 Jan 1980 00:00:00 GMT\r\n\r\n")
                .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = parse_cgi(b"Status: 403 Forbidden\n\nno").unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(parse_cgi(b"Status: x\r\n\r\n").is_err());
        assert!(parse_cgi(b"no end of headers").is_err());
    }

    #[test]
    fn the_environment_names_the_request() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/x-git-upload-pack-request".parse().unwrap(),
        );
        h.insert("git-protocol", "version=2".parse().unwrap());
        let uri: Uri = "/serin.git/info/refs?service=git-upload-pack"
            .parse()
            .unwrap();
        let env = cgi_env(Path::new("/srv/git"), &Method::GET, &uri, &h, 0);
        assert_eq!(env["PATH_INFO"], "/serin.git/info/refs");
        assert_eq!(env["QUERY_STRING"], "service=git-upload-pack");
        assert_eq!(env["GIT_PROJECT_ROOT"], "/srv/git");
        assert_eq!(env["HTTP_GIT_PROTOCOL"], "version=2");
        assert_eq!(env["REQUEST_METHOD"], "GET");
        assert!(!env.contains_key("HTTP_CONTENT_ENCODING"));
    }

    /// The server against real git: a clone over HTTP sees the commits pushed in the working
    /// clone.
    #[test]
    fn git_clones_over_http_what_was_committed() {
        let dir = std::env::temp_dir().join(format!("serin-git-http-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let content = dir.join("content");
        std::fs::create_dir_all(content.join("deploy")).unwrap();
        std::fs::write(content.join("deploy/a.yaml"), "a: 1\n").unwrap();
        let mut server = GitServer::start(&dir.join("root")).unwrap();
        let repo = server
            .create_repository("example", &content, "the example")
            .unwrap();
        assert_eq!(repo.url(), server.url("example"));
        let first = repo.revision().unwrap();
        assert!(first.starts_with("main@sha1:"), "{first}");
        std::fs::write(repo.work_dir().join("deploy/a.yaml"), "a: 2\n").unwrap();
        let second = repo.commit("a release").unwrap();
        assert_ne!(first, second);
        let clone = dir.join("clone");
        git(
            &dir,
            &["clone", "-q", repo.url(), &clone.display().to_string()],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(clone.join("deploy/a.yaml")).unwrap(),
            "a: 2\n"
        );
        let head = git(&clone, &["rev-parse", "HEAD"]).unwrap();
        assert_eq!(second, format!("main@sha1:{}", head.trim()));
        // Pushing over HTTP is refused: the server is read-only.
        let push = git(&clone, &["push", "-q", "origin", "HEAD:refs/heads/other"]);
        assert!(push.is_err(), "{push:?}");
        assert!(git(&dir, &["ls-remote", &server.url("missing")]).is_err());
        server.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
