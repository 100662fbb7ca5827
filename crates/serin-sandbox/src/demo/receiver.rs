//! A local Slack-compatible receiver: serin's global `--slack-url` points at it, so the demo shows
//! the chat messages a team would get without a Slack workspace.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One message as a person reads it in the channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub author: String,
    pub text: String,
    pub color: String,
    pub fields: Vec<(String, String)>,
}

impl Message {
    /// Reads Flagger's Slack payload (`attachments[0]`); anything else is kept as raw text.
    pub fn parse(body: &Value) -> Message {
        let a = &body["attachments"][0];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let fields = a["fields"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .map(|f| (s(&f["title"]), s(&f["value"])))
                    .collect()
            })
            .unwrap_or_default();
        let text = if a.is_null() {
            body.to_string()
        } else {
            s(&a["text"])
        };
        Message {
            author: s(&a["author_name"]),
            text,
            color: s(&a["color"]),
            fields,
        }
    }

    /// One line, with the fields after it.
    pub fn render(&self) -> String {
        let mark = if self.color == "danger" { "✗" } else { "•" };
        let mut out = format!("{mark} {}: {}", self.author, self.text);
        for (k, v) in &self.fields {
            out.push_str(&format!("\n      {k}: {v}"));
        }
        out
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub messages: Arc<Mutex<Vec<Message>>>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    messages: Arc<Mutex<Vec<Message>>>,
    echo: bool,
}

impl Receiver {
    /// Listens on loopback; `echo` prints each message as it arrives.
    pub async fn start(echo: bool) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let messages = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            messages: messages.clone(),
            echo,
        };
        let app = Router::new()
            .route("/", post(receive))
            .route("/{*path}", post(receive))
            .with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            addr,
            messages,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/services/demo", self.addr)
    }

    pub fn messages(&self) -> Vec<Message> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(shared): State<Shared>, body: Bytes) -> (StatusCode, &'static str) {
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid JSON");
    };
    let m = Message::parse(&json);
    if shared.echo {
        println!("  slack {}", m.render());
    }
    if let Ok(mut all) = shared.messages.lock() {
        all.push(m);
    }
    (StatusCode::OK, "ok")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_flaggers_slack_payload() {
        let body = json!({"channel": "#releases", "username": "serin", "attachments": [{
            "color": "danger", "author_name": "backend.apps", "text": "Failed checks threshold reached 2",
            "fields": [{"title": "Target", "value": "Deployment/backend.apps", "short": false}]
        }]});
        let m = Message::parse(&body);
        assert_eq!(m.author, "backend.apps");
        assert_eq!(m.color, "danger");
        assert_eq!(
            m.fields,
            vec![("Target".into(), "Deployment/backend.apps".into())]
        );
        assert!(m.render().starts_with("✗ backend.apps: Failed checks"));
    }

    #[tokio::test]
    async fn records_what_it_receives() {
        let r = Receiver::start(false).await.unwrap();
        let resp = reqwest::Client::new()
            .post(r.url())
            .json(&json!({"attachments": [{"author_name": "a.b", "text": "hi", "color": "good"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(r.messages()[0].text, "hi");
        let bad = reqwest::Client::new()
            .post(r.url())
            .body("{")
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);
        assert_eq!(r.messages().len(), 1);
    }
}
