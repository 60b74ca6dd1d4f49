//! A TCP relay between oauthd and Redis that, after a request naming a marker, holds back
//! Redis' answers on that connection for a while or cuts the connection: what a slow
//! command Redis runs between a script and its answer, or a connection broken after Redis
//! ran a script, look like to oauthd. Requests always go through at once.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Redis' answers wait this long after the request before they go on (in order).
    Hold(Duration),
    /// The connection is closed both ways 300 ms after the request, its answer unsent.
    Cut,
}

/// The marker and fault waiting for a request that names the marker.
type Armed = Arc<Mutex<Option<(Vec<u8>, Fault)>>>;

pub struct Relay {
    pub port: u16,
    armed: Armed,
    /// Where new connections go (`retarget`); open ones stay where they went.
    to_port: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to Redis at `to_port`.
    pub async fn start(to_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("relay address").port();
        let armed: Armed = Arc::default();
        let shared = armed.clone();
        let to_port = Arc::new(AtomicU16::new(to_port));
        let target = to_port.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let to = target.load(Ordering::SeqCst);
                tokio::spawn(relay(client, to, shared.clone()));
            }
        });
        Relay {
            port,
            armed,
            to_port,
            task,
        }
    }

    /// New connections go to Redis at `port` from now on, as a virtual IP or a proxy that
    /// follows the primary does after a failover; open connections stay where they went.
    pub fn retarget(&self, port: u16) {
        self.to_port.store(port, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `fault` strikes the connection of the next request that holds `marker`, once.
    pub fn arm(&self, marker: &str, fault: Fault) {
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((marker.as_bytes().to_vec(), fault));
    }

    /// Waits until the armed fault has struck (a request held the marker), at most
    /// `within`; whether it did.
    pub async fn struck(&self, within: std::time::Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        while self
            .armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, to_port: u16, armed: Armed) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", to_port)).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let struck: Arc<Mutex<Option<(Instant, Fault)>>> = Arc::default();
    let noted = struck.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = buf.get(..n).unwrap_or_default();
            let hit = {
                let mut armed = armed.lock().unwrap_or_else(|e| e.into_inner());
                armed.take_if(|(marker, _)| chunk.windows(marker.len()).any(|w| w == &marker[..]))
            };
            // Noted before the request goes on, so its answer cannot slip past.
            if let Some((_, fault)) = hit {
                *noted.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), fault));
            }
            if to_server.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let fault = *struck.lock().unwrap_or_else(|e| e.into_inner());
            match fault {
                Some((at, Fault::Hold(d))) => tokio::time::sleep_until(at + d).await,
                Some((at, Fault::Cut)) => {
                    tokio::time::sleep_until(at + Duration::from_millis(300)).await;
                    return;
                }
                None => {}
            }
            if to_client
                .write_all(buf.get(..n).unwrap_or_default())
                .await
                .is_err()
            {
                return;
            }
        }
    };
    // Either side ending drops both halves of both streams: the connection closes.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
