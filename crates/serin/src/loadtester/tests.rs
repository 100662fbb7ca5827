//! The HTTP API in-process on a loopback port, asked with reqwest as a webhook caller would.

use super::*;
use serde_json::{Value, json};

struct Server {
    base: String,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn server(opts: Options) -> Server {
    let lt = LoadTester::new(opts, Gates::in_memory());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, lt, async {
        let _ = rx.await;
    }));
    Server {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        _stop: tx,
    }
}

impl Server {
    async fn post(&self, path: &str, body: &str) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    async fn post_json(&self, path: &str, body: Value) -> (u16, String) {
        self.post(path, &body.to_string()).await
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }
}

fn payload(name: &str, ns: &str, metadata: Value) -> Value {
    json!({"name": name, "namespace": ns, "phase": "Progressing", "checksum": "abc", "metadata": metadata})
}

fn canary(name: &str, ns: &str) -> Value {
    json!({"name": name, "namespace": ns, "phase": "Progressing", "checksum": "abc"})
}

#[tokio::test]
async fn fixed_answers() {
    let s = server(Options::default()).await;
    assert_eq!(s.get("/healthz").await, (200, "OK".into()));
    assert_eq!(s.post("/gate/approve", "").await, (200, "OK".into()));
    assert_eq!(s.get("/gate/approve").await, (200, "OK".into()));
    assert_eq!(s.post("/gate/halt", "").await, (403, "Forbidden".into()));
    let (code, text) = s.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(text.contains("serin_loadtester_running_tasks 0"), "{text}");
}

#[tokio::test]
async fn confirm_gates_are_closed_until_opened_per_canary() {
    let s = server(Options::default()).await;
    let a = canary("podinfo", "test");
    let b = canary("podinfo", "other");
    assert_eq!(
        s.post_json("/gate/check", a.clone()).await,
        (403, "Forbidden".into())
    );
    assert_eq!(s.post_json("/gate/open", a.clone()).await, (202, "".into()));
    assert_eq!(s.post_json("/gate/open", a.clone()).await, (202, "".into()));
    assert_eq!(
        s.post_json("/gate/check", a.clone()).await,
        (200, "Approved".into())
    );
    assert_eq!(
        s.post_json("/gate/check", b.clone()).await,
        (403, "Forbidden".into()),
        "another namespace's gate stays closed"
    );
    assert_eq!(
        s.post_json("/rollback/check", a.clone()).await,
        (403, "Forbidden".into()),
        "the rollback gate is a separate key"
    );
    assert_eq!(
        s.post_json("/gate/close", a.clone()).await,
        (202, "".into())
    );
    assert_eq!(
        s.post_json("/gate/check", a.clone()).await,
        (403, "Forbidden".into())
    );
}

#[tokio::test]
async fn rollback_gates_use_their_own_key() {
    let s = server(Options::default()).await;
    let a = canary("podinfo", "test");
    assert_eq!(
        s.post_json("/rollback/check", a.clone()).await,
        (403, "Forbidden".into())
    );
    assert_eq!(
        s.post_json("/rollback/open", a.clone()).await,
        (202, "".into())
    );
    assert_eq!(
        s.post_json("/rollback/check", a.clone()).await,
        (200, "Approved".into())
    );
    assert_eq!(
        s.post_json("/gate/check", a.clone()).await,
        (403, "Forbidden".into())
    );
    assert_eq!(
        s.post_json("/rollback/close", a.clone()).await,
        (202, "".into())
    );
    assert_eq!(
        s.post_json("/rollback/check", a.clone()).await,
        (403, "Forbidden".into())
    );
}

#[tokio::test]
async fn bad_json_is_400_everywhere_it_is_read() {
    let s = server(Options::default()).await;
    for path in [
        "/gate/check",
        "/gate/open",
        "/gate/close",
        "/rollback/check",
        "/rollback/open",
        "/rollback/close",
        "/",
        "/anything/else",
    ] {
        let (code, text) = s.post(path, "{not json").await;
        assert_eq!(code, 400, "{path}: {text}");
        assert!(
            text.starts_with("decoding the request body failed"),
            "{path}: {text}"
        );
        let (code, _) = s.post(path, r#"{"name": 3}"#).await;
        assert_eq!(code, 400, "{path}: a wrongly typed field");
    }
}

#[tokio::test]
async fn tasks_need_metadata_and_a_known_type() {
    let s = server(Options::default()).await;
    let want = (400, "metadata not found in payload".to_string());
    assert_eq!(s.post_json("/", canary("podinfo", "test")).await, want);
    assert_eq!(
        s.post_json("/", payload("podinfo", "test", json!({})))
            .await,
        want
    );
    assert_eq!(
        s.post_json(
            "/",
            payload("podinfo", "test", json!({"type": "nope", "cmd": "x"}))
        )
        .await,
        (400, "unknown task type nope".into())
    );
    assert_eq!(
        s.post_json("/", payload("podinfo", "test", json!({"type": "cmd"})))
            .await,
        (400, "cmd not found in metadata".into())
    );
    assert_eq!(
        s.post_json(
            "/",
            payload("podinfo", "test", json!({"cmd": "true", "type": 1}))
        )
        .await
        .0,
        400,
        "metadata values are strings"
    );
}

#[tokio::test]
async fn cmd_tasks_answer_at_once_and_run_once_while_running() {
    let s = server(Options::default()).await;
    let dir = std::env::temp_dir().join(format!("serin-lt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("runs");
    let _ = std::fs::remove_file(&file);
    let cmd = format!("echo run >> {}; sleep 1", file.display());
    let started = std::time::Instant::now();
    // No type: cmd is the default.
    let (code, body) = s
        .post_json("/", payload("podinfo", "test", json!({"cmd": cmd})))
        .await;
    assert_eq!((code, body.as_str()), (202, ""));
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "answered before the command ended"
    );
    let (code, _) = s
        .post_json(
            "/",
            payload(
                "podinfo",
                "test",
                json!({"type": "cmd", "cmd": cmd, "logCmdOutput": "true"}),
            ),
        )
        .await;
    assert_eq!(code, 202);
    // The same command for another canary is not a duplicate.
    let (code, _) = s
        .post_json("/", payload("podinfo", "other", json!({"cmd": cmd})))
        .await;
    assert_eq!(code, 202);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let runs = std::fs::read_to_string(&file).unwrap();
    assert_eq!(runs, "run\nrun\n", "one run per canary while running");
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains(r#"serin_loadtester_tasks_total{type="cmd",outcome="skipped"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"serin_loadtester_tasks_total{type="cmd",outcome="success"} 2"#),
        "{metrics}"
    );
    // Finished: it runs again.
    let (code, _) = s
        .post_json("/", payload("podinfo", "test", json!({"cmd": cmd})))
        .await;
    assert_eq!(code, 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "run\nrun\nrun\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bash_tasks_block_and_answer_with_the_outcome() {
    let s = server(Options::default()).await;
    let p = |m: Value| payload("podinfo", "test", m);
    assert_eq!(
        s.post_json("/", p(json!({"type": "bash", "cmd": "echo hello"})))
            .await,
        (200, "".into())
    );
    assert_eq!(
        s.post_json(
            "/",
            p(json!({"type": "bash", "cmd": "echo hello; echo there >&2", "returnCmdOutput": "true"}))
        )
        .await,
        (200, "hello\nthere\n".into())
    );
    assert_eq!(
        s.post_json(
            "/",
            p(json!({"type": "bash", "cmd": "[[ 1 == 2 ]] || { echo broken; exit 4; }"}))
        )
        .await,
        (
            500,
            "command [[ 1 == 2 ]] || { echo broken; exit 4; } failed: broken\n: exit status 4"
                .into()
        ),
        "bash, not sh: [[ works"
    );
}

#[tokio::test]
async fn the_timeout_ends_a_blocking_task() {
    let s = server(Options {
        timeout: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let started = std::time::Instant::now();
    assert_eq!(
        s.post_json(
            "/",
            payload(
                "podinfo",
                "test",
                json!({"type": "bash", "cmd": "sleep 20"})
            )
        )
        .await,
        (500, "command sleep 20 failed: : signal: killed".into())
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn helm_and_kubectl_run_their_binary_with_the_split_command() {
    let s = server(Options::default()).await;
    for kind in ["helm", "helmv3", "kubectl"] {
        // Fails whether or not the binary is installed here: a missing binary, or an unknown flag.
        let (code, text) = s
            .post_json(
                "/",
                payload(
                    "podinfo",
                    "test",
                    json!({"type": kind, "cmd": "--serin-no-such-flag   x"}),
                ),
            )
            .await;
        assert_eq!(code, 500, "{kind}: {text}");
        assert!(
            text.starts_with("command --serin-no-such-flag   x failed: "),
            "{kind}: {text}"
        );
    }
}

#[tokio::test]
async fn namespace_regexp_refuses_tasks_outside_it() {
    let s = server(Options {
        namespace_regexp: Some(regex::Regex::new("^(test|prod)$").unwrap()),
        ..Options::default()
    })
    .await;
    let m = json!({"type": "bash", "cmd": "echo ok", "returnCmdOutput": "true"});
    let (code, text) = s.post_json("/", payload("podinfo", "dev", m.clone())).await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("namespace dev"), "{text}");
    assert_eq!(
        s.post_json("/", payload("podinfo", "prod", m)).await,
        (200, "ok\n".into())
    );
}

#[test]
fn parse_bool_is_gos() {
    for t in ["1", "t", "T", "true", "TRUE", "True"] {
        assert!(parse_bool(Some(&t.to_string())), "{t}");
    }
    for f in ["0", "f", "false", "yes", "", "tRUE"] {
        assert!(!parse_bool(Some(&f.to_string())), "{f}");
    }
    assert!(!parse_bool(None));
}

#[test]
fn parse_task_reads_what_to_run_without_running_it() {
    let opts = Options::default();
    let body = |meta: Value| payload("podinfo", "test", meta).to_string().into_bytes();
    assert_eq!(
        parse_task(
            &body(json!({"cmd": "hey -z 1m", "logCmdOutput": "true"})),
            &opts
        ),
        Ok(TaskRequest::Background {
            canary: "podinfo.test".into(),
            command: "hey -z 1m".into(),
            log_output: true,
        })
    );
    assert_eq!(
        parse_task(
            &body(json!({"type": "kubectl", "cmd": " get\tpods  -n test "})),
            &opts
        ),
        Ok(TaskRequest::Blocking {
            kind: "kubectl".into(),
            program: "kubectl",
            args: vec!["get".into(), "pods".into(), "-n".into(), "test".into()],
            canary: "podinfo.test".into(),
            command: " get\tpods  -n test ".into(),
            return_output: false,
        })
    );
    let refused = |b: &[u8], o: &Options| parse_task(b, o).map_err(|(s, _)| s.as_u16());
    assert_eq!(refused(b"", &opts), Err(400));
    assert_eq!(refused(b"[1]", &opts), Err(400));
    assert_eq!(refused(&body(json!({})), &opts), Err(400));
    assert_eq!(refused(&body(json!({"type": "cmd"})), &opts), Err(400));
    assert_eq!(refused(&body(json!({"type": "ngrinder"})), &opts), Err(400));
    let only_prod = Options {
        namespace_regexp: Some(regex::Regex::new("^prod$").unwrap()),
        ..Default::default()
    };
    assert_eq!(refused(&body(json!({"cmd": "x"})), &only_prod), Err(403));
}
