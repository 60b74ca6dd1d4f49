//! A reverse proxy that serves oauthd below a path prefix and strips it, as
//! `location /oauthd/ { proxy_pass http://127.0.0.1:6288/; }` does in nginx. Plain
//! HTTP/1.1, one request per connection (`Connection: close` both ways). It records every
//! path a client asked for, so a test can see whether anything left the prefix.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct PrefixProxy {
    pub url: String,
    pub prefix: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PrefixProxy {
    /// Binds a free loopback port now (oauthd's `public_url` needs it before oauthd
    /// starts); `forward_to` is set once the backend is known.
    pub async fn bind(prefix: &'static str) -> (PrefixProxy, tokio::sync::oneshot::Sender<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let Ok(backend) = rx.await else { return };
            let backend = backend.trim_start_matches("http://").to_owned();
            while let Ok((client, _)) = listener.accept().await {
                let (backend, log) = (backend.clone(), log.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &backend, prefix, &log).await;
                });
            }
        });
        (
            PrefixProxy {
                url,
                prefix,
                seen,
                task,
            },
            tx,
        )
    }

    /// Every request path clients asked the proxy for, in order.
    pub fn paths(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for PrefixProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut client: TcpStream,
    backend: &str,
    prefix: &str,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    // The request head.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.splitn(3, ' ');
    let (method, target, version) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("HTTP/1.1"),
    );
    if let Ok(mut seen) = log.lock() {
        seen.push(target.split('?').next().unwrap_or("").to_owned());
    }
    let stripped = match target.strip_prefix(prefix) {
        Some(rest) if rest.starts_with('/') => rest.to_owned(),
        Some("") => {
            let moved = format!(
                "HTTP/1.1 301 Moved Permanently\r\nLocation: {prefix}/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return client.write_all(moved.as_bytes()).await;
        }
        _ => {
            let missing =
                "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot here\n";
            return client.write_all(missing.as_bytes()).await;
        }
    };
    let mut upstream_head = format!("{method} {stripped} {version}\r\n");
    let mut content_length = 0usize;
    for line in lines.filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("keep-alive:") {
            continue;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        upstream_head.push_str(line);
        upstream_head.push_str("\r\n");
    }
    upstream_head.push_str("Connection: close\r\n\r\n");
    let mut upstream = TcpStream::connect(backend).await?;
    upstream.write_all(upstream_head.as_bytes()).await?;
    let mut body = buf[head_end..].to_vec();
    while body.len() < content_length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    upstream.write_all(&body).await?;
    // The answer, as it comes; oauthd closes after it (Connection: close).
    let mut answer = Vec::new();
    upstream.read_to_end(&mut answer).await?;
    client.write_all(&answer).await?;
    client.shutdown().await
}
