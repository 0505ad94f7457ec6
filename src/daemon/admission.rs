//! Who is served when. A connection is served in one of a bounded number of
//! slots: MAX_SERVING per user (root included), and MAX_SERVING_ALL for all
//! users but root together (root is never shut out). A connection beyond
//! them is answered `busy` at once and closed, having changed nothing; the
//! client then backs off with jitter and tries again until its deadline
//! (client::BUSY_DEADLINE), so a burst of a thousand spawns from one user is
//! served as slots free up instead of refused. A user's flood of silent
//! connections fills that user's slots for FIRST_REQUEST_TIMEOUT, never
//! another user's.
//!
//! Bounds (docs/protocol.md): each served connection buffers at most
//! MAX_REQUEST_BYTES plus an 8 KiB read buffer and its reply; a refused one
//! is read for at most 100 ms and closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Semaphore;

use crate::protocol::{self, ErrorCode, Response};

use super::{lock, Daemon};

/// Connections one user (root included) is served on at once.
pub const MAX_SERVING: usize = 128;
/// Connections served at once for all users but root.
pub const MAX_SERVING_ALL: usize = 256;
/// A client that connects and says nothing is dropped after this.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A client may keep its connection for several requests (a host's touches).
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Connection slots in use, per user and for all users but root.
#[derive(Default)]
pub struct Admission {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    by_user: HashMap<u32, usize>,
    all: usize,
}

/// A served connection's slot, given back on drop.
pub struct Slot {
    adm: Arc<Daemon>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = lock(&self.adm.admission.slots);
        if self.uid != 0 {
            s.all -= 1;
        }
        if let Some(n) = s.by_user.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                s.by_user.remove(&self.uid);
            }
        }
    }
}

impl Admission {
    /// A slot for user `uid`, or None when its share (or everyone's) is in
    /// use.
    fn admit(d: &Arc<Daemon>, uid: u32) -> Option<Slot> {
        let mut s = lock(&d.admission.slots);
        let mine = s.by_user.get(&uid).copied().unwrap_or(0);
        if mine >= MAX_SERVING || (uid != 0 && s.all >= MAX_SERVING_ALL) {
            return None;
        }
        *s.by_user.entry(uid).or_default() += 1;
        if uid != 0 {
            s.all += 1;
        }
        Some(Slot {
            adm: d.clone(),
            uid,
        })
    }
}

/// Serves one accepted connection: waits for its slot, then its requests.
pub async fn connection(d: Arc<Daemon>, stream: UnixStream) {
    let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
    let Some(slot) = Admission::admit(&d, uid) else {
        refuse_busy(stream).await;
        return;
    };
    serve(&d, stream).await;
    drop(slot);
}

async fn serve(d: &Arc<Daemon>, stream: UnixStream) {
    let peer = match d.peer_of(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!("dropping a connection without peer credentials: {e}");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(8 * 1024, read);
    let mut wait = FIRST_REQUEST_TIMEOUT;
    loop {
        let line = match tokio::time::timeout(wait, read_line_capped(&mut reader)).await {
            Err(_) | Ok(Ok(None)) | Ok(Err(LineError::Io)) => return,
            Ok(Err(LineError::TooLarge)) => {
                let reply = Response::error(
                    ErrorCode::TooLarge,
                    format!("request longer than {} bytes", protocol::MAX_REQUEST_BYTES),
                );
                let _ = write.write_all(&protocol::encode_response(reply)).await;
                return; // the rest of the line cannot be trusted to end
            }
            Ok(Ok(Some(line))) => line,
        };
        wait = IDLE_CONNECTION_TIMEOUT;
        let reply = match protocol::parse_request(&line) {
            Ok(req) => d.handle(&peer, req).await,
            Err(msg) => Response::error(ErrorCode::BadRequest, msg),
        };
        if write
            .write_all(&protocol::encode_response(reply))
            .await
            .is_err()
        {
            return;
        }
    }
}

enum LineError {
    TooLarge,
    Io,
}

/// Reads one line without ever buffering more than MAX_REQUEST_BYTES.
async fn read_line_capped(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Option<Vec<u8>>, LineError> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await.map_err(|_| LineError::Io)?;
        if buf.is_empty() {
            return Ok(if line.is_empty() { None } else { Some(line) });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if line.len() + chunk.len() > protocol::MAX_REQUEST_BYTES {
            return Err(LineError::TooLarge);
        }
        line.extend_from_slice(chunk);
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(Some(line));
        }
    }
}

async fn refuse_busy(mut stream: UnixStream) {
    // Read what the client sent (bounded), so it is not writing into a
    // closed socket and gets to read our reply.
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), async {
        use tokio::io::AsyncReadExt;
        let mut total = 0;
        while total < protocol::MAX_REQUEST_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
            if sink.contains(&b'\n') {
                break;
            }
        }
    })
    .await;
    let reply = Response::error(
        ErrorCode::Busy,
        "gov daemon is at its connection limit; try again",
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(&protocol::encode_response(reply)),
    )
    .await;
}

/// A minimal HTTP endpoint for Prometheus: `GET /metrics`, one response
/// per connection, a few at a time.
pub async fn serve_metrics(d: Arc<Daemon>, listener: tokio::net::TcpListener) {
    let permits = Arc::new(Semaphore::new(16));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let d = d.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read_head = async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    use tokio::io::AsyncReadExt;
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            };
            if !matches!(
                tokio::time::timeout(FIRST_REQUEST_TIMEOUT, read_head).await,
                Ok(true)
            ) {
                return;
            }
            let response = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET / ") {
                let body = d.metrics(None);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            drop(permit);
        });
    }
}
