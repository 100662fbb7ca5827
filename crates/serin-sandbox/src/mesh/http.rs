//! A minimal HTTP/1.1 server for `/metrics` and the ingress: GET-style requests, optional
//! bodies read by Content-Length and dropped, keep-alive honoured (`hey` reuses connections).
//! Hand-written because the two endpoints need a tenth of what a server crate brings.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head accepted; the clients here send a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;
/// Largest body read (and dropped).
const MAX_BODY: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, handler).await {
                        tracing::debug!("mesh simulator http connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("mesh simulator http accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Binds an ephemeral loopback port.
pub async fn bind_loopback() -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}

async fn connection(stream: TcpStream, handler: Handler) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let Some((req, keep_alive, body_len)) = read_head(&mut reader).await? else {
            return Ok(());
        };
        if body_len > 0 {
            let mut body = (&mut reader).take(body_len);
            tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
        }
        let resp = handler(req).await;
        write.write_all(&encode(&resp, keep_alive)).await?;
        if !keep_alive {
            return write.shutdown().await;
        }
    }
}

/// Reads one request head; `None` on a clean end of stream before it.
async fn read_head<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<(Request, bool, u64)>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).await?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        total += n;
        if total > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // tolerated stray CRLF between requests
            }
            break;
        }
        lines.push(line);
    }
    parse_head(&lines)
        .map(Some)
        .ok_or_else(|| std::io::Error::other("malformed request head"))
}

/// Request line and headers → request, keep-alive, body length.
fn parse_head(lines: &[String]) -> Option<(Request, bool, u64)> {
    let mut parts = lines.first()?.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let version = parts.next()?;
    let headers: Vec<(String, String)> = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let keep_alive = match (version, get("connection").as_deref()) {
        (_, Some("close")) => false,
        ("HTTP/1.0", Some("keep-alive")) => true,
        ("HTTP/1.0", _) => false,
        _ => true,
    };
    let body_len = match get("content-length") {
        Some(v) => v.parse::<u64>().ok().filter(|n| *n <= MAX_BODY)?,
        None => 0,
    };
    if get("transfer-encoding").is_some() {
        return None; // chunked bodies are not expected from the clients here
    }
    // An absolute-form target (proxies) carries the host; keep the path only.
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]).to_string(),
        None => target.to_string(),
    };
    Some((
        Request {
            method,
            path,
            headers,
        },
        keep_alive,
        body_len,
    ))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn encode(resp: &Response, keep_alive: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{}",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        if keep_alive { "keep-alive" } else { "close" },
        resp.body
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &[&str]) -> Option<(Request, bool, u64)> {
        parse_head(&lines.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_heads() {
        let (r, ka, len) = head(&["GET /metrics HTTP/1.1", "Host: x:1", "Accept: */*"]).unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert_eq!(r.header("host"), Some("x:1"));
        assert!(ka);
        assert_eq!(len, 0);
        let (_, ka, _) = head(&["GET / HTTP/1.1", "Connection: Close"]).unwrap();
        assert!(!ka);
        let (_, ka, _) = head(&["GET / HTTP/1.0"]).unwrap();
        assert!(!ka);
        let (r, _, len) = head(&[
            "POST http://podinfo.test:9898/api/echo HTTP/1.1",
            "Content-Length: 5",
        ])
        .unwrap();
        assert_eq!(r.path, "/api/echo");
        assert_eq!(len, 5);
        assert_eq!(head(&["GET"]), None);
        assert_eq!(head(&["GET / HTTP/1.1", "Content-Length: x"]), None);
        assert_eq!(
            head(&["POST / HTTP/1.1", "Transfer-Encoding: chunked"]),
            None
        );
    }

    #[test]
    fn encodes_responses() {
        let text = String::from_utf8(encode(&Response::text(503, "no"), false)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\nno"
        );
    }
}
