//! What the tests with real clients need besides a daemon (tests/common):
//! the pinned packages (the agents venv of integration/setup-agents, the
//! Jupyter venv), CRIU, a minimal LSP client, and the host-only and skip
//! rules every such test follows. A skip says so on fd 2 and becomes a
//! failure where CI requires the thing (GOV_REQUIRE_AGENTS,
//! GOV_REQUIRE_JUPYTER, GOV_REQUIRE_CRIU).
//!
//! Kept apart from tests/common so that the tests without clients do not
//! compile it.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::gov_bin;

pub fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Straight to fd 2: libtest captures eprintln! of passing tests, and a
/// skip must be seen.
pub fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// bash, python3, node, PyPI, npm: host only; the VM has busybox.
pub fn host_only(test: &str) -> bool {
    if std::env::var_os("GOV_VM").is_some() {
        say(&format!(
            "SKIP {test}: host-only (python3, node, PyPI, npm); the VM has busybox only"
        ));
        return true;
    }
    false
}

/// The directory of the gov under test.
pub fn gov_dir() -> PathBuf {
    gov_bin().parent().unwrap().to_path_buf()
}

/// PATH with these directories first (the gov under test, as if installed).
pub fn path_with(dirs: &[&Path]) -> String {
    let mut parts: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    parts.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(parts).unwrap().into_string().unwrap()
}

// ---------------------------------------------------------------------------
// The agents' packages (integration/setup-agents)

pub struct AgentKit {
    /// The venv with mcp and python-lsp-server.
    pub venv: PathBuf,
    /// The npm prefix with the MCP server (node_modules, its own .npm cache).
    pub npm: PathBuf,
}

/// The installed packages, made once per test binary. None (after saying
/// so) when a registry is unreachable and GOV_REQUIRE_AGENTS is unset.
pub fn kit(test: &str) -> Option<&'static AgentKit> {
    static KIT: OnceLock<Result<AgentKit, String>> = OnceLock::new();
    let made = KIT.get_or_init(|| {
        if let (Some(v), Some(n)) = (
            std::env::var_os("GOV_AGENTS_VENV"),
            std::env::var_os("GOV_AGENTS_NPM"),
        ) {
            return Ok(AgentKit {
                venv: v.into(),
                npm: n.into(),
            });
        }
        let t0 = Instant::now();
        let out = Command::new(manifest().join("integration/setup-agents"))
            .stdin(Stdio::null())
            .output()
            .expect("integration/setup-agents runs");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        match out.status.code() {
            Some(0) => {
                say(&format!("agents: packages ready in {:.1?}", t0.elapsed()));
                let cache = std::env::var_os("GOV_AGENTS_CACHE")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| manifest().join("integration/.cache"));
                Ok(AgentKit {
                    venv: cache.join("agents-venv"),
                    npm: cache.join("npm"),
                })
            }
            Some(2) => Err(log),
            _ => panic!("integration/setup-agents failed:\n{log}"),
        }
    });
    match made {
        Ok(k) => Some(k),
        Err(log) => {
            assert!(
                std::env::var_os("GOV_REQUIRE_AGENTS").is_none(),
                "{test}: GOV_REQUIRE_AGENTS=1 but the packages cannot be installed:\n{log}"
            );
            say(&format!(
                "\n**** SKIP {test}: PyPI or npm is unreachable, so the MCP SDK, the MCP \
                 server and the language server cannot be installed. THIS TEST DID NOT RUN. \
                 (GOV_REQUIRE_AGENTS=1 makes this a failure.)\n{log}\n****"
            ));
            None
        }
    }
}

// ---------------------------------------------------------------------------
// The Jupyter venv

pub const JUPYTER_PACKAGES: &[&str] = &["ipykernel==7.4.0", "jupyter_client==8.10.0"];

/// pip's words for "cannot reach the index" (as opposed to a real failure).
fn looks_offline(stderr: &str) -> bool {
    [
        "NewConnectionError",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ProxyError",
        "Connection refused",
        "(from versions: none)",
    ]
    .iter()
    .any(|p| stderr.contains(p))
}

/// A venv with ipykernel and jupyter_client, built once under target/tmp and
/// reused while the pinned versions stay the same. None (after saying so)
/// when PyPI is unreachable and GOV_REQUIRE_JUPYTER is unset.
pub fn jupyter_venv(test: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gov-jupyter-venv");
    let want = JUPYTER_PACKAGES.join("\n");
    let stamp = "gov-packages.txt";
    if fs::read_to_string(dir.join(stamp)).ok().as_deref() == Some(want.as_str()) {
        return Some(dir);
    }
    // Built beside and renamed into place, so a concurrent or interrupted
    // run never leaves a half-made venv behind the stamp. (A venv run as
    // `python -m` does not care about its directory's name.)
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let t0 = Instant::now();
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&tmp)
        .status()
        .expect("python3 runs");
    assert!(st.success(), "python3 -m venv {} failed", tmp.display());
    let out = Command::new(tmp.join("bin/python3"))
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
        .args(["--timeout", "30", "--retries", "2"])
        .args(JUPYTER_PACKAGES)
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let _ = fs::remove_dir_all(&tmp);
        if looks_offline(&err) && std::env::var_os("GOV_REQUIRE_JUPYTER").is_none() {
            say(&format!(
                "\n**** SKIP {test}: PyPI is unreachable, so ipykernel and jupyter_client \
                 cannot be installed. THIS TEST DID NOT RUN. (GOV_REQUIRE_JUPYTER=1 makes \
                 this a failure.) pip said:\n{err}\n****"
            ));
            return None;
        }
        panic!("pip install {JUPYTER_PACKAGES:?} failed:\n{err}");
    }
    fs::write(tmp.join(stamp), &want).unwrap();
    let _ = fs::remove_dir_all(&dir);
    if fs::rename(&tmp, &dir).is_err() {
        // Another run put its venv there first; use that one.
        let _ = fs::remove_dir_all(&tmp);
    }
    say(&format!(
        "{test}: made the Jupyter venv in {:.1?}",
        t0.elapsed()
    ));
    Some(dir)
}

// ---------------------------------------------------------------------------
// CRIU

/// criu >= 4.2 (GOV_CRIU, or integration/build-criu's cache); a skip says
/// so, and fails where GOV_REQUIRE_CRIU=1 (CI).
pub fn criu_or_skip(test: &str) -> Option<PathBuf> {
    let cached = manifest().join("integration/.cache/criu/4.2.1/criu");
    let path = std::env::var_os("GOV_CRIU")
        .map(PathBuf::from)
        .or_else(|| cached.exists().then_some(cached));
    let found = path.filter(|p| gov::criu::Criu::find(Some(p)).is_ok());
    if found.is_none() {
        assert!(
            std::env::var("GOV_REQUIRE_CRIU").as_deref() != Ok("1"),
            "{test}: CRIU is required here (GOV_REQUIRE_CRIU=1)"
        );
        say(&format!(
            "SKIP {test}: no criu >= 4.2; build it with integration/build-criu"
        ));
    }
    found
}

// ---------------------------------------------------------------------------
// A language server's client

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

    fn write(&mut self, msg: Value) {
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
