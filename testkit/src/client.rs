//! Talking to a test's daemon: `gov ps`/`gov events` as the library's
//! protocol types (a test reads fields, not JSON paths), or as JSON where
//! the wire format itself is under test; the scan counter, for "a scan
//! happened" without a sleep; a raw protocol connection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use gov::protocol::{Event, GateInfo, Request, Response};
use serde_json::Value;

use crate::process::wait_until;
use crate::root::TestRoot;

impl TestRoot {
    /// `gov ps --json`.
    pub fn ps(&self) -> Vec<GateInfo> {
        serde_json::from_str(&self.ok(&["ps", "--json"])).expect("ps --json gives gates")
    }

    /// `gov ps --json` as JSON values (for tests of the output itself).
    pub fn ps_json(&self) -> Vec<Value> {
        serde_json::from_str(&self.ok(&["ps", "--json"])).expect("ps --json is JSON")
    }

    /// The gate `id` as `gov ps` lists it, if it does.
    pub fn gate(&self, id: &str) -> Option<GateInfo> {
        self.ps().into_iter().find(|g| g.id == id)
    }

    /// The gate `id` as JSON, if `gov ps` lists it.
    pub fn gate_json(&self, id: &str) -> Option<Value> {
        self.ps_json().into_iter().find(|g| g["id"] == id)
    }

    /// `gov events --json` (the last 1,000).
    pub fn events(&self) -> Vec<Event> {
        serde_json::from_str(&self.ok(&["events", "--json", "-n", "1000"]))
            .expect("events --json gives events")
    }

    /// `gov events --json` (the last 1,000) as JSON values.
    pub fn events_json(&self) -> Vec<Value> {
        serde_json::from_str(&self.ok(&["events", "--json", "-n", "1000"]))
            .expect("events --json is JSON")
    }

    /// Scans the daemon has made (its `hello` reply).
    pub fn scans(&self) -> u64 {
        scans(&self.socket)
    }

    /// Waits until the daemon has made `n` more scans than now: "the
    /// reaper has looked", where a sleep would only guess.
    pub fn wait_scans(&self, n: u64) {
        let until = self.scans() + n;
        wait_until(Duration::from_secs(30), "more scans", || {
            self.scans() >= until
        });
    }
}

/// What the daemon on `socket` says of its memory relief.
pub fn relief(socket: &Path) -> gov::protocol::ReliefStatus {
    match gov::client::request(socket, Request::Hello) {
        Ok(Some(Response::Hello {
            relief: Some(r), ..
        })) => r,
        other => panic!("hello: {other:?}"),
    }
}

/// Scans made by the daemon on `socket`.
pub fn scans(socket: &Path) -> u64 {
    match gov::client::request(socket, Request::Hello) {
        Ok(Some(Response::Hello { scans, .. })) => scans,
        other => panic!("hello: {other:?}"),
    }
}

/// One connection to a daemon, speaking raw JSON lines: what a client in
/// another language sends, byte for byte.
pub struct Conn {
    reader: BufReader<UnixStream>,
    line: String,
}

impl Conn {
    pub fn connect(socket: &Path) -> Conn {
        let s = UnixStream::connect(socket).expect("connecting to the daemon");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        Conn {
            reader: BufReader::new(s),
            line: String::new(),
        }
    }

    /// Sends one request line, returns the reply line.
    pub fn call(&mut self, request: &str) -> String {
        self.send(request);
        self.recv().to_string()
    }

    pub fn send(&mut self, request: &str) {
        let s = self.reader.get_mut();
        s.write_all(request.as_bytes()).expect("sending a request");
        s.write_all(b"\n").expect("sending a request");
    }

    /// The next reply line ("" at end of stream).
    pub fn recv(&mut self) -> &str {
        self.line.clear();
        self.reader
            .read_line(&mut self.line)
            .expect("reading a reply");
        &self.line
    }
}
