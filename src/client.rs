//! The blocking client: one Unix socket round trip, no async runtime and no
//! config parsing, because `gov spawn` and `gov touch` sit on every gate's
//! launch and tool-call path.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::{self, ErrorCode, Request, Response, ResponseFrame};

/// The environment variable that names another socket (as DOCKER_HOST does).
pub const SOCKET_ENV: &str = "GOV_SOCKET";
/// How long a client waits for the daemon's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub fn socket_path() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::policy::DEFAULT_SOCKET))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The io::Error is part of the message, not a chained source, so it is
    /// printed once.
    #[error("talking to gov daemon at {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("gov daemon at {path} sent a reply this client cannot read: {detail}")]
    BadReply { path: PathBuf, detail: String },
}

/// How long a client keeps trying a daemon that answers `busy`.
pub const BUSY_DEADLINE: Duration = Duration::from_secs(20);

/// One request on a fresh connection. A daemon at its connection cap answers
/// `busy` having done nothing; a spawn or a touch must not be lost to that,
/// so try again, backing off (5 ms doubling to 500 ms, each wait jittered so
/// a burst of clients spreads out) until BUSY_DEADLINE, and only then hand
/// `busy` back, saying so. None when no daemon listens.
pub fn request(path: &Path, request: Request) -> Result<Option<Response>, ClientError> {
    let start = std::time::Instant::now();
    let mut backoff = Duration::from_millis(5);
    loop {
        let Some(mut client) = Client::connect(path)? else {
            return Ok(None);
        };
        let reply = client.call(request.clone())?;
        let Response::Error {
            code: ErrorCode::Busy,
            ..
        } = reply
        else {
            return Ok(Some(reply));
        };
        if start.elapsed() >= BUSY_DEADLINE {
            return Ok(Some(Response::error(
                ErrorCode::Busy,
                format!(
                    "gov daemon stayed at its connection limit for {} s; try again later",
                    BUSY_DEADLINE.as_secs()
                ),
            )));
        }
        // Half to all of the backoff, at random.
        let jitter = getrandom::u32().unwrap_or(0) as f64 / u32::MAX as f64;
        std::thread::sleep(backoff.mul_f64(0.5 + jitter / 2.0));
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects, or None when no daemon listens there (no socket file, or a
    /// stale one nobody accepts on).
    pub fn connect(path: &Path) -> Result<Option<Client>, ClientError> {
        match UnixStream::connect(path) {
            Ok(stream) => {
                let io = |error| ClientError::Io {
                    path: path.to_path_buf(),
                    error,
                };
                stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
                Ok(Some(Client {
                    path: path.to_path_buf(),
                    reader: BufReader::new(stream),
                }))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(error) => Err(ClientError::Io {
                path: path.to_path_buf(),
                error,
            }),
        }
    }

    /// The pid of the process on the other end (the daemon), as the kernel
    /// saw it at listen() and as it reads in our pid namespace.
    pub fn peer_pid(&self) -> Option<u32> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let cred = getsockopt(self.reader.get_ref(), PeerCredentials).ok()?;
        u32::try_from(cred.pid()).ok().filter(|&p| p > 0)
    }

    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let io = |error| ClientError::Io {
            path: self.path.clone(),
            error,
        };
        let sent = self
            .reader
            .get_mut()
            .write_all(&protocol::encode_request(request));
        let mut line = String::new();
        let read = self.reader.read_line(&mut line);
        match (sent, read) {
            // A daemon at its connection cap answers `busy` and closes
            // without reading: its reply is worth more than our EPIPE.
            (_, Ok(n)) if n > 0 => {}
            (Err(e), _) => return Err(io(e)),
            // The read timeout: say so, not "Resource temporarily unavailable".
            (Ok(()), Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no reply within {} s", REPLY_TIMEOUT.as_secs()),
                )))
            }
            (Ok(()), Err(e)) => return Err(io(e)),
            (Ok(()), Ok(_)) => {
                return Err(ClientError::BadReply {
                    path: self.path.clone(),
                    detail: "the connection closed before a reply".into(),
                })
            }
        }
        serde_json::from_str::<ResponseFrame>(&line)
            .map(|f| f.response)
            .map_err(|e| ClientError::BadReply {
                path: self.path.clone(),
                detail: e.to_string(),
            })
    }
}
