//! A minimal LSP client for the tests that drive a language server.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::ChildStdin;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A minimal LSP client: Content-Length framing over the server's stdio.
pub struct Lsp {
    stdin: ChildStdin,
    messages: mpsc::Receiver<Value>,
    next_id: u64,
}

impl Lsp {
    pub fn new(child: &mut std::process::Child) -> Lsp {
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut len = None;
            loop {
                let mut header = String::new();
                if out.read_line(&mut header).unwrap_or(0) == 0 {
                    return;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some(v) = header.strip_prefix("Content-Length:") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
            let mut body = vec![0; len.expect("a Content-Length header")];
            if out.read_exact(&mut body).is_err() {
                return;
            }
            if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                return;
            }
        });
        Lsp {
            stdin,
            messages: rx,
            next_id: 1,
        }
    }

    pub fn write(&mut self, msg: Value) {
        let body = msg.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.write(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Sends a request and returns its result, answering the server's own
    /// requests (null) and passing over its notifications meanwhile.
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.write(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no reply to {method} ({e})"));
            if m["id"] == id && m.get("method").is_none() {
                assert!(m.get("error").is_none(), "{method} failed: {m}");
                return m["result"].clone();
            }
            if m.get("method").is_some() && m.get("id").is_some() {
                let reply = json!({"jsonrpc": "2.0", "id": m["id"], "result": null});
                self.write(reply);
            }
        }
    }
}
