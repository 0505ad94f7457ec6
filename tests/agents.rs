//! Agents and editors with real clients (issue 12; docs/integrations.md,
//! sections 4 to 7): an MCP server from npm started through its `npx`
//! launcher by the official MCP Python SDK, a language server from PyPI
//! driven by a minimal LSP client, an agent's shell commands through
//! `packaging/gov-shell-prefix`, and Kaimon.jl's `julia_bin` wrapper.
//! Real daemon, real cgroupfs, root.
//!
//! The packages come at pinned versions from `integration/setup-agents`
//! (integration/agents/: requirements.txt, package-lock.json) into the
//! gitignored integration/.cache/ (or `GOV_AGENTS_CACHE`), which .ci/run
//! fills first; a test run without it runs the script itself (about 25 s
//! cold). `GOV_AGENTS_VENV` and `GOV_AGENTS_NPM` name ready-made
//! directories instead. When a registry
//! cannot be reached the tests skip, saying so loudly, and with
//! `GOV_REQUIRE_AGENTS=1` (CI) they fail instead.
//!

use gov::protocol::{EventKind, GateInfo, GateState};
use gov_testkit as kit;
use kit::lsp::Lsp;
use kit::{gov_dir, path_with};

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use kit::agents::Packages;
use kit::{alive, wait_until, Kid, TestRoot};

/// The npm MCP server the tests run, exactly as an agent's config names it.
const MCP_PKG: &str = "@modelcontextprotocol/server-memory@2026.8.31";

/// Orphans and stops go fast; idleness never interferes.
const POLICY: &str = "\
[defaults]
idle_timeout = \"10m\"
orphan_grace = \"1s\"
stop_grace = \"1s\"
";

/// What these tests need that only a host has (the VM has busybox).
const HOST_NEEDS: &str = "python3, node, PyPI, npm";

/// Every agent test's start: on a host only, a root and a daemon on
/// POLICY plus `extra`. (Bound as a tuple, the daemon drops first.)
fn start(test: &str, extra: &str) -> Option<(TestRoot, kit::Daemon)> {
    if kit::host_only(test, HOST_NEEDS) {
        return None;
    }
    let root = TestRoot::new();
    let daemon = root.daemon(&format!("{POLICY}{extra}"));
    Some((root, daemon))
}

/// The same, with the agent packages (kit::agents) installed.
fn start_with_packages(
    test: &str,
    extra: &str,
) -> Option<(TestRoot, kit::Daemon, &'static Packages)> {
    if kit::host_only(test, HOST_NEEDS) {
        return None;
    }
    let pkgs = kit::agents::packages_or_skip(test)?;
    let (root, daemon) = start(test, extra)?;
    Some((root, daemon, pkgs))
}

// ---------------------------------------------------------------------------
// Small helpers

fn project_dir(root: &TestRoot, name: &str) -> PathBuf {
    let p = root.dir.path().join(name);
    fs::create_dir_all(&p).unwrap();
    p
}

fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The gates of one session, sorted by id.
fn gates_of_session(root: &TestRoot, session: &str) -> Vec<GateInfo> {
    let mut v: Vec<GateInfo> = root
        .ps()
        .into_iter()
        .filter(|g| g.session == session)
        .collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// The one gate of a session, once it is listed.
fn gate_of_session(root: &TestRoot, session: &str) -> GateInfo {
    let mut found = None;
    wait_until(Duration::from_secs(10), "the session's gate", || {
        let g = gates_of_session(root, session);
        if g.len() == 1 {
            found = g.into_iter().next();
        }
        found.is_some()
    });
    found.unwrap()
}

fn removed_reason(root: &TestRoot, gate: &str) -> Option<String> {
    root.events()
        .into_iter()
        .find(|e| e.gate == gate && e.kind == EventKind::Removed)
        .map(|e| e.reason.unwrap_or_default())
}

fn ended_by_itself(root: &TestRoot, gate: &str) -> bool {
    root.events()
        .iter()
        .any(|e| e.gate == gate && e.kind == EventKind::Exited)
}

/// One request on the daemon's socket, as a host without our CLI sends it.
fn socket_request(root: &TestRoot, req: Value) -> Value {
    let mut s = std::os::unix::net::UnixStream::connect(&root.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    writeln!(s, "{req}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).expect(&line)
}

/// Waits until the gate is gone, then checks that nothing of it is left:
/// no listed gate, no cgroup, none of `members` alive.
fn assert_gone(root: &TestRoot, gate: &str, members: &[u32], within: Duration) {
    wait_until(within, "the gate to be gone", || root.gate(gate).is_none());
    for &p in members {
        wait_until(Duration::from_secs(5), "a member to be dead", || !alive(p));
    }
    assert!(
        root.gate_dirs()
            .iter()
            .all(|d| d.file_name().unwrap() != gate),
        "the gate's cgroup is removed"
    );
}

// ---------------------------------------------------------------------------
// The MCP agent (tests/agents/mcp_agent.py, on the official SDK)

struct Agent {
    kid: Kid,
    stdin: ChildStdin,
    replies: mpsc::Receiver<Value>,
    early: Vec<Value>,
}

impl Agent {
    fn start(pkgs: &Packages, root: &TestRoot) -> Agent {
        let mut child = Command::new(pkgs.venv.join("bin/python3"))
            .arg(kit::repo().join("tests/agents/mcp_agent.py"))
            .current_dir(root.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("the MCP agent starts");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|_| json!({"unparsed": line}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Agent {
            kid: Kid::new(child),
            stdin,
            replies: rx,
            early: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.kid.id()
    }

    fn send(&mut self, cmd: Value) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The reply to `op` on server `name`, keeping others for later.
    fn reply(&mut self, name: &str, op: &str, timeout: Duration) -> Value {
        let is = |v: &Value| v["name"] == name && v["op"] == op;
        if let Some(i) = self.early.iter().position(is) {
            return self.early.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(v) if is(&v) => return v,
                Ok(v) => self.early.push(v),
                Err(e) => panic!("no {op} reply for {name} within {timeout:?} ({e})"),
            }
        }
    }

    /// Starts server `name` and returns its start reply, checked: the SDK
    /// initialized it, listed its tools and called two of them.
    fn start_server(&mut self, spec: Value) -> Value {
        let name = spec["name"].as_str().unwrap().to_string();
        self.send(spec);
        self.started(&name)
    }

    fn started(&mut self, name: &str) -> Value {
        let r = self.reply(name, "start", Duration::from_secs(90));
        assert!(r.get("error").is_none(), "{name} did not start: {r}");
        assert_eq!(r["server"], "memory-server", "{r}");
        let tools: Vec<&str> = r["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(
            tools.contains(&"create_entities") && tools.contains(&"read_graph"),
            "{tools:?}"
        );
        assert_eq!(r["created_error"], false, "{r}");
        assert!(
            r["graph"]
                .as_str()
                .unwrap()
                .contains(&format!("called through {name}")),
            "the tool call's result came back through the gate: {r}"
        );
        assert!(r["launcher"].is_u64(), "one launcher process: {r}");
        r
    }

    fn sigkill(mut self) {
        let _ = self.kid.kill();
        let _ = self.kid.wait();
    }
}

/// How the agent's config starts the server: `gov spawn ... -- npx -y PKG`.
fn mcp_server(
    name: &str,
    root: &TestRoot,
    pkgs: &Packages,
    project: &Path,
    gov_args: &[&str],
    env: &[(&str, &str)],
) -> Value {
    let mut args: Vec<String> = vec!["spawn".into(), "--project".into()];
    args.push(project.to_str().unwrap().into());
    args.extend(gov_args.iter().map(|s| s.to_string()));
    args.extend(["--", "npx", "-y", MCP_PKG].map(String::from));
    server_spec(name, root, pkgs, "gov", args, env)
}

/// The server entry of an agent config the doc shows (tests/fixtures/agents/).
fn mcp_server_from_config(
    name: &str,
    root: &TestRoot,
    pkgs: &Packages,
    config: &str,
    env: &[(&str, &str)],
) -> Value {
    let text = fs::read_to_string(kit::repo().join("tests/fixtures/agents").join(config)).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let entry = &v["mcpServers"]["memory"];
    let args = entry["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    server_spec(
        name,
        root,
        pkgs,
        entry["command"].as_str().unwrap(),
        args,
        env,
    )
}

/// A start request for the agent: `command` found on a PATH that has the
/// gov under test first, as if installed.
fn server_spec(
    name: &str,
    root: &TestRoot,
    pkgs: &Packages,
    command: &str,
    args: Vec<String>,
    env: &[(&str, &str)],
) -> Value {
    let mut e: HashMap<String, String> = HashMap::from([
        ("GOV_SOCKET".into(), root.socket.display().to_string()),
        ("GOV_CGROUP_ROOT".into(), root.path.display().to_string()),
        ("PATH".into(), path_with(&[&gov_dir()])),
        (
            "npm_config_cache".into(),
            pkgs.npm.join(".npm").display().to_string(),
        ),
        // The launcher must not reach the registry: the package is local.
        ("npm_config_offline".into(), "true".into()),
        ("npm_config_update_notifier".into(), "false".into()),
        (
            "MEMORY_FILE_PATH".into(),
            root.dir
                .path()
                .join(format!("{name}-memory.jsonl"))
                .display()
                .to_string(),
        ),
    ]);
    for (k, v) in env {
        e.insert(k.to_string(), v.to_string());
    }
    json!({
        "op": "start",
        "name": name,
        "command": command,
        "args": args,
        "env": e,
        // npx finds the pinned package in this prefix's node_modules.
        "cwd": pkgs.npm.display().to_string(),
    })
}

/// The real server: the node process running mcp-server-memory, a
/// grandchild of the launcher (npm exec -> sh -c -> node).
fn server_pid(g: &GateInfo) -> u32 {
    let main = g.main_pid.unwrap();
    g.pids
        .iter()
        .copied()
        .find(|&p| {
            p != main && cmdline(p).starts_with("node ") && cmdline(p).contains("mcp-server-memory")
        })
        .unwrap_or_else(|| panic!("no server process in {g:?}"))
}

/// Checks the gate an MCP server runs in: the launcher the SDK started is
/// its main process, the real server is in it too, the agent is not.
fn check_mcp_gate(
    root: &TestRoot,
    agent: &Agent,
    started: &Value,
    session: &str,
) -> (GateInfo, u32) {
    let launcher = started["launcher"].as_u64().unwrap() as u32;
    let g = gate_of_session(root, session);
    assert_eq!(g.main_pid, Some(launcher), "{g:?}");
    assert!(
        cmdline(launcher).starts_with("npm exec"),
        "the gate's main process is the npx launcher: {}",
        cmdline(launcher)
    );
    let server = server_pid(&g);
    assert!(
        !g.pids.contains(&agent.pid()),
        "the agent is outside: {g:?}"
    );
    (g, server)
}

// ---------------------------------------------------------------------------
// MCP servers

/// The agent's config runs the server through `gov spawn`; the SDK
/// initializes it, lists its tools and calls them through the gate. The
/// agent is then SIGKILLed: the server gets EOF on stdin and exits, or the
/// gate, an orphan, is reaped after orphan_grace. Nothing is left.
#[test]
fn an_mcp_server_runs_in_a_gate_and_goes_when_its_agent_is_killed() {
    let test = "an_mcp_server_runs_in_a_gate_and_goes_when_its_agent_is_killed";
    let Some((root, _d, pkgs)) = start_with_packages(test, "") else {
        return;
    };
    let project = project_dir(&root, "app");
    let mut agent = Agent::start(pkgs, &root);

    let session = "mcp-agent-killed";
    let started = agent.start_server(mcp_server(
        "memory",
        &root,
        pkgs,
        &project,
        &["--session", session],
        &[],
    ));
    let (g, server) = check_mcp_gate(&root, &agent, &started, session);
    let gate = g.id.clone();
    assert_eq!(g.project, project.to_str().unwrap());
    assert_eq!(g.owner_pid, Some(agent.pid()), "{g:?}");
    let members = g.pids.clone();

    agent.sigkill();
    assert_gone(&root, &gate, &members, Duration::from_secs(20));
    assert!(!alive(server));
    let how = removed_reason(&root, &gate);
    assert!(
        ended_by_itself(&root, &gate) || how.as_deref().is_some_and(|r| r.starts_with("orphan")),
        "the server exited on EOF or the orphan was reaped: {how:?}"
    );
}

/// An agent that kills only its direct child, the launcher, and keeps the
/// server's stdin open (anthropics/claude-code#76306). With today's
/// `on_main_exit = "keep"` (the default, which a shell user's nohup jobs
/// rely on) the server stays in its gate and goes on answering tool calls;
/// it goes when the agent closes its stdin.
#[test]
fn an_mcp_server_whose_launcher_was_killed_stays_with_keep() {
    let test = "an_mcp_server_whose_launcher_was_killed_stays_with_keep";
    let Some((root, _d, pkgs)) = start_with_packages(test, "") else {
        return;
    };
    let project = project_dir(&root, "app");
    let mut agent = Agent::start(pkgs, &root);

    let session = "mcp-launcher-killed-keep";
    let started = agent.start_server(mcp_server(
        "memory",
        &root,
        pkgs,
        &project,
        &["--session", session],
        &[],
    ));
    let (g, server) = check_mcp_gate(&root, &agent, &started, session);
    let gate = g.id.clone();

    agent.send(json!({"op": "kill_launcher", "name": "memory"}));
    let launcher = agent.reply("memory", "kill_launcher", Duration::from_secs(10))["pid"]
        .as_u64()
        .unwrap() as u32;
    wait_until(Duration::from_secs(5), "the launcher to die", || {
        !alive(launcher)
    });
    // Fifteen scans with nothing due, counted by the daemon: the server
    // is alive, in the running gate, and still serves the agent through
    // its pipes.
    for _ in 0..5 {
        root.wait_scans(3);
        let g = root.gate(&gate).expect("the gate stays");
        assert_eq!(g.state, GateState::Running, "{g:?}");
        assert!(g.pids.contains(&server), "{g:?}");
    }
    agent.send(json!({"op": "call", "name": "memory"}));
    let r = agent.reply("memory", "call", Duration::from_secs(10));
    assert_eq!(r["ok"], true, "the leftover server still answers: {r}");

    // The agent closes its side: EOF, the server exits, the gate goes.
    agent.send(json!({"op": "close", "name": "memory"}));
    agent.reply("memory", "close", Duration::from_secs(20));
    assert_gone(&root, &gate, &[server], Duration::from_secs(15));
}

/// The same agent with `gov spawn --on-main-exit stop`: once the launcher
/// (the gate's main process) has exited, what it left behind gets
/// stop_signal after main_exit_grace, then the kill. The agent lives on.
#[test]
fn an_mcp_servers_leftovers_are_stopped_when_its_launcher_dies_with_on_main_exit_stop() {
    let test = "an_mcp_servers_leftovers_are_stopped_when_its_launcher_dies";
    let Some((root, _d, pkgs)) = start_with_packages(test, "main_exit_grace = \"2s\"\n") else {
        return;
    };
    let project = project_dir(&root, "app");
    let mut agent = Agent::start(pkgs, &root);

    let session = "mcp-launcher-killed-stop";
    let started = agent.start_server(mcp_server(
        "memory",
        &root,
        pkgs,
        &project,
        &["--session", session, "--on-main-exit", "stop"],
        &[],
    ));
    let (g, server) = check_mcp_gate(&root, &agent, &started, session);
    let gate = g.id.clone();

    agent.send(json!({"op": "kill_launcher", "name": "memory"}));
    agent.reply("memory", "kill_launcher", Duration::from_secs(10));
    let killed = Instant::now();
    // Within the grace the leftover is spared: a launcher's exec or a
    // restart must not cost the server.
    assert!(alive(server), "stopped before main_exit_grace");
    assert_gone(&root, &gate, &[server], Duration::from_secs(15));
    assert!(
        killed.elapsed() >= Duration::from_millis(1500),
        "stopped after {:?}, before main_exit_grace",
        killed.elapsed()
    );
    let reason = removed_reason(&root, &gate).expect("a removed event");
    assert!(reason.contains("main"), "{reason}");
    assert!(alive(agent.pid()), "the agent is never touched");
}

/// The doc's Claude Code `.mcp.json` entry, run as Claude Code (2.1.154+)
/// starts it: CLAUDE_PROJECT_DIR and CLAUDE_CODE_SESSION_ID in the server's
/// environment become the gate's project and session.
#[test]
fn the_docs_claude_code_mcp_config_puts_the_server_in_the_sessions_gate() {
    let test = "the_docs_claude_code_mcp_config_puts_the_server_in_the_sessions_gate";
    let Some((root, _d, pkgs)) = start_with_packages(test, "") else {
        return;
    };
    let project = project_dir(&root, "app");
    let mut agent = Agent::start(pkgs, &root);
    let session = "2f7c9d1e-5b3a-4c8d-9e0f-a1b2c3d4e5f6";
    let started = agent.start_server(mcp_server_from_config(
        "memory",
        &root,
        pkgs,
        "claude-code.mcp.json",
        &[
            ("CLAUDE_PROJECT_DIR", project.to_str().unwrap()),
            ("CLAUDE_CODE_SESSION_ID", session),
            ("CLAUDECODE", "1"),
        ],
    ));
    let (g, _) = check_mcp_gate(&root, &agent, &started, session);
    assert_eq!(g.project, project.to_str().unwrap());
    agent.send(json!({"op": "close", "name": "memory"}));
    agent.reply("memory", "close", Duration::from_secs(20));
    assert_gone(&root, g.id.as_str(), &g.pids, Duration::from_secs(15));
}

/// The doc's entry for the daemon of issue 12: `gov` straight as the
/// command, the session from CLAUDE_CODE_SESSION_ID (session_env), leftovers
/// stopped when the launcher dies (on_main_exit).
#[test]
fn the_docs_issue12_mcp_config_takes_the_session_and_stops_leftovers() {
    let test = "the_docs_issue12_mcp_config_takes_the_session_and_stops_leftovers";
    let Some((root, _d, pkgs)) = start_with_packages(test, "main_exit_grace = \"1s\"\n") else {
        return;
    };
    let mut agent = Agent::start(pkgs, &root);
    let session = "3a8d0e2f-6c4b-4d9e-8f1a-b2c3d4e5f6a7";
    let started = agent.start_server(mcp_server_from_config(
        "memory",
        &root,
        pkgs,
        "claude-code-issue12.mcp.json",
        &[("CLAUDE_CODE_SESSION_ID", session), ("CLAUDECODE", "1")],
    ));
    let (g, server) = check_mcp_gate(&root, &agent, &started, session);
    agent.send(json!({"op": "kill_launcher", "name": "memory"}));
    agent.reply("memory", "kill_launcher", Duration::from_secs(10));
    assert_gone(&root, g.id.as_str(), &[server], Duration::from_secs(15));
}

/// Sessions work today: servers started with one session id are touched
/// together, by a host's one line on the socket.
#[test]
fn the_mcp_servers_of_one_session_are_touched_together() {
    let test = "the_mcp_servers_of_one_session_are_touched_together";
    let Some((root, _d, pkgs)) = start_with_packages(test, "") else {
        return;
    };
    let project = project_dir(&root, "app");
    let mut agent = Agent::start(pkgs, &root);

    let (s, t) = ("5e55a0aa-0001", "5e55a0aa-0002");
    for (name, session) in [("a1", s), ("a2", s), ("b1", t)] {
        agent.send(mcp_server(
            name,
            &root,
            pkgs,
            &project,
            &["--session", session],
            &[],
        ));
    }
    for name in ["a1", "a2", "b1"] {
        agent.started(name);
    }
    let ours: Vec<String> = gates_of_session(&root, s)
        .iter()
        .map(|g| g.id.clone())
        .collect();
    assert_eq!(ours.len(), 2, "{ours:?}");
    let r = socket_request(&root, json!({"v": 1, "type": "touch", "session": s}));
    assert_eq!(r["type"], "done", "{r}");
    let mut touched: Vec<String> = r["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().to_string())
        .collect();
    touched.sort();
    assert_eq!(touched, ours);
    agent.send(json!({"op": "exit"}));
    for name in ["a1", "a2", "b1"] {
        agent.reply(name, "close", Duration::from_secs(20));
    }
}

/// `gov kill --session S` ends every server of one agent session, and
/// leaves another session's server serving.
#[test]
fn gov_kill_session_ends_every_mcp_server_of_that_session() {
    let test = "gov_kill_session_ends_every_mcp_server_of_that_session";
    let Some((root, _d, pkgs)) = start_with_packages(test, "") else {
        return;
    };
    let project = project_dir(&root, "app");
    let mut agent = Agent::start(pkgs, &root);

    let (s, t) = ("5e55a0aa-0003", "5e55a0aa-0004");
    for (name, session) in [("a1", s), ("a2", s), ("b1", t)] {
        agent.send(mcp_server(
            name,
            &root,
            pkgs,
            &project,
            &["--session", session],
            &[],
        ));
    }
    for name in ["a1", "a2", "b1"] {
        agent.started(name);
    }
    let ours = gates_of_session(&root, s);
    assert_eq!(ours.len(), 2);
    let members: Vec<u32> = ours.iter().flat_map(|g| g.pids.iter().copied()).collect();

    root.ok(&["kill", "--session", s]);
    for g in &ours {
        assert_gone(&root, g.id.as_str(), &members, Duration::from_secs(15));
    }
    assert_eq!(gates_of_session(&root, t).len(), 1);
    agent.send(json!({"op": "call", "name": "b1"}));
    let r = agent.reply("b1", "call", Duration::from_secs(10));
    assert_eq!(
        r["ok"], true,
        "the other session's server still serves: {r}"
    );
    // An unknown session is an error that names it, and kills nothing.
    let out = root.run(&["kill", "--session", "no-such-session"]);
    assert!(!out.status.success());
    assert_eq!(gates_of_session(&root, t).len(), 1);
}

/// With no `--session`, `gov spawn` takes the session the agent passes to
/// its servers (Claude Code: CLAUDE_CODE_SESSION_ID, 2.1.154+), so an MCP
/// config needs no per-session line.
#[test]
fn an_mcp_servers_session_comes_from_claude_code_session_id() {
    let test = "an_mcp_servers_session_comes_from_claude_code_session_id";
    let Some((root, _d, pkgs)) = start_with_packages(test, "") else {
        return;
    };
    let project = project_dir(&root, "app");
    let mut agent = Agent::start(pkgs, &root);

    let session = "0b6e5c1e-6f1c-4a3e-9d0b-1c2d3e4f5a6b";
    let started = agent.start_server(mcp_server(
        "memory",
        &root,
        pkgs,
        &project,
        &[],
        &[("CLAUDE_CODE_SESSION_ID", session), ("CLAUDECODE", "1")],
    ));
    check_mcp_gate(&root, &agent, &started, session);
}

// ---------------------------------------------------------------------------
// A language server, as an editor starts it

/// The editor's language-server command with `gov spawn` in front: the
/// editor's pid and pipes are the server's; initialize, a completion,
/// shutdown and exit work as without gov, and the gate goes with the server.
#[test]
fn a_language_server_runs_in_a_gate_as_an_editor_starts_it() {
    let test = "a_language_server_runs_in_a_gate_as_an_editor_starts_it";
    let Some((root, _d, pkgs)) = start_with_packages(test, "") else {
        return;
    };
    let project = project_dir(&root, "pyproj");
    let file = project.join("hello.py");
    let text = "import os\nos.pa";
    fs::write(&file, text).unwrap();
    let session = "editor-1";

    let mut child = root
        .gov()
        .args(["spawn", "--project"])
        .arg(&project)
        .args(["--session", session, "--"])
        .arg(pkgs.venv.join("bin/pylsp"))
        .current_dir(&project)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the language server starts");
    let mut lsp = Lsp::new(&mut child);
    let server = Kid::new(child);

    let root_uri = format!("file://{}", project.display());
    let uri = format!("file://{}", file.display());
    let init = lsp.request(
        "initialize",
        json!({"processId": std::process::id(), "rootUri": root_uri, "capabilities": {}}),
    );
    assert!(
        init["capabilities"]["completionProvider"].is_object(),
        "{init}"
    );
    lsp.notify("initialized", json!({}));
    let g = gate_of_session(&root, session);
    let gate = g.id.clone();
    assert_eq!(
        g.main_pid,
        Some(server.id()),
        "the process the editor started is the server, in its gate: {g:?}"
    );
    assert_eq!(g.project, project.to_str().unwrap());

    lsp.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}}),
    );
    let done = lsp.request(
        "textDocument/completion",
        json!({"textDocument": {"uri": uri}, "position": {"line": 1, "character": 5}}),
    );
    let items = done["items"]
        .as_array()
        .or(done.as_array())
        .expect("completion items");
    assert!(
        items.iter().any(|i| i["label"] == "path"),
        "jedi completes os.pa to os.path: {done}"
    );

    let r = lsp.request("shutdown", Value::Null);
    assert!(r.is_null(), "{r}");
    lsp.notify("exit", Value::Null);
    assert_eq!(server.reap(Duration::from_secs(20)), Some(0));
    assert_gone(&root, &gate, &g.pids, Duration::from_secs(10));
    assert!(
        ended_by_itself(&root, &gate),
        "the gate ended with its server"
    );
}

// ---------------------------------------------------------------------------
// An agent's shell commands through a command prefix

fn shell_prefix() -> PathBuf {
    kit::repo().join("packaging/gov-shell-prefix")
}

/// Runs the prefix as Claude Code does (docs: the whole command, one
/// shell-quoted string, in $1), with gov on PATH.
fn prefixed(root: &TestRoot, project: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(shell_prefix());
    c.args(args)
        .env("PATH", path_with(&[&gov_dir()]))
        .env("GOV_SOCKET", &root.socket)
        .env("GOV_CGROUP_ROOT", &root.path)
        .env_remove("GOV_SESSION")
        .env_remove("CLAUDE_CODE_SESSION_ID")
        .env_remove("GOV_MAX_RUNTIME")
        .current_dir(project)
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// A test runner the agent starts through CLAUDE_CODE_SHELL_PREFIX gets a
/// gate of its own, in the agent's session, and is reaped at its deadline
/// with the process it left in a session of its own.
#[test]
fn an_agents_test_runner_gets_a_gate_and_a_deadline_through_the_shell_prefix() {
    let test = "an_agents_test_runner_gets_a_gate_and_a_deadline_through_the_shell_prefix";
    let Some((root, _d)) = start(test, "") else {
        return;
    };
    let project = project_dir(&root, "repo");
    let pidfile = project.join("runner.pids");
    let gatefile = project.join("runner.gate");
    fs::write(
        project.join("run-tests.sh"),
        format!(
            "echo \"$GOV_GATE\" > {g}\necho $$ > {p}\nsetsid sleep 300 </dev/null >/dev/null 2>&1 &\necho $! >> {p}\nsleep 300\n",
            g = gatefile.display(),
            p = pidfile.display()
        ),
    )
    .unwrap();
    let snapshot = project.join("snapshot.sh");
    fs::write(&snapshot, "export FROM_SNAPSHOT=1\n").unwrap();
    let cwd_file = project.join("cwd");
    // What Claude Code hands its prefix for one Bash tool call
    // (anthropics/claude-code#4399): its snapshot, the command, its cwd probe.
    let command = format!(
        "source {} && eval 'sh run-tests.sh' < /dev/null && pwd -P >| {}",
        snapshot.display(),
        cwd_file.display()
    );
    let session = "7d1c2a4e-0000-4000-8000-00000000beef";
    let child = prefixed(
        &root,
        &project,
        &[&command],
        &[
            ("CLAUDE_CODE_SESSION_ID", session),
            ("GOV_MAX_RUNTIME", "3s"),
        ],
    )
    .spawn()
    .unwrap();
    let started = Instant::now();
    let prefix = Kid::new(child);

    let g = gate_of_session(&root, session);
    let gate = g.id.clone();
    assert_eq!(g.main_pid, Some(prefix.id()), "{g:?}");
    assert_eq!(g.max_runtime_s, Some(3), "{g:?}");
    assert_eq!(g.project, project.to_str().unwrap());
    let mut runner = Vec::new();
    wait_until(Duration::from_secs(10), "the runner's pids", || {
        runner = kit::read_pids(&pidfile);
        runner.len() == 2
    });
    let seen = fs::read_to_string(&gatefile).unwrap();
    assert_eq!(seen.trim(), gate, "the runner sees GOV_GATE");
    assert!(root.gate(&gate).unwrap().pids.contains(&runner[1]));

    // At the deadline: SIGTERM to the command's shell, then the kill of
    // everything left, the setsid sleep too.
    let status = prefix.into_inner().wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "stopped before its deadline"
    );
    assert_gone(&root, &gate, &runner, Duration::from_secs(10));
    let reason = removed_reason(&root, &gate).expect("a removed event");
    assert!(reason.starts_with("deadline"), "{reason}");
    assert!(!cwd_file.exists(), "the command never finished");
}

/// An ordinary command through the prefix: its output, its exit status, the
/// snapshot's environment, the probe's file, and its gate gone after. Also
/// the argv form other agents use (`PREFIX CMD ARG...`).
#[test]
fn a_short_command_through_the_shell_prefix_keeps_its_output_and_status() {
    let test = "a_short_command_through_the_shell_prefix_keeps_its_output_and_status";
    let Some((root, _d)) = start(test, "") else {
        return;
    };
    let project = project_dir(&root, "repo");
    let snapshot = project.join("snapshot.sh");
    fs::write(&snapshot, "export FROM_SNAPSHOT=yes\n").unwrap();
    let cwd_file = project.join("cwd");
    let command = format!(
        "source {} && eval 'echo \"$FROM_SNAPSHOT $GOV_GATE $GOV_SESSION\"; echo two words' < /dev/null && pwd -P >| {}",
        snapshot.display(),
        cwd_file.display()
    );
    let out = prefixed(&root, &project, &[&command], &[("GOV_SESSION", "sess-1")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    let first: Vec<&str> = lines.next().unwrap().split(' ').collect();
    assert_eq!(first[0], "yes");
    assert!(first[1].starts_with('g'), "{stdout}");
    assert_eq!(first[2], "sess-1");
    assert_eq!(lines.next(), Some("two words"));
    assert_eq!(
        fs::read_to_string(&cwd_file).unwrap().trim(),
        fs::canonicalize(&project).unwrap().to_str().unwrap()
    );
    wait_until(Duration::from_secs(10), "the gate to go", || {
        root.gate(first[1]).is_none()
    });

    let out = prefixed(&root, &project, &["sh", "-c", "exit 4"], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let out = prefixed(&root, &project, &["exit 5"], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
}

/// An MCP entry that is itself a `gov spawn`, run through the prefix as
/// Claude Code runs stdio servers: inside the prefix's gate its spawn is
/// refused (a gate's processes cannot leave it); with `GOV_PREFIX=off` the
/// prefix makes no gate and the inner spawn moves the server into a gate of
/// its own, with no deadline.
#[test]
fn a_gov_spawn_through_the_shell_prefix_moves_into_its_own_gate() {
    let test = "a_gov_spawn_through_the_shell_prefix_moves_into_its_own_gate";
    let Some((root, _d)) = start(test, "") else {
        return;
    };
    let project = project_dir(&root, "repo");
    let fifo = root.dir.path().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let command = format!(
        "gov spawn --project {} --session inner -- sh -c 'read x < {}'",
        project.display(),
        fifo.display()
    );
    let refused = prefixed(
        &root,
        &project,
        &[&command],
        &[("GOV_SESSION", "outer"), ("GOV_MAX_RUNTIME", "never")],
    )
    .output()
    .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("a gate's processes cannot leave it"), "{err}");
    assert!(gates_of_session(&root, "inner").is_empty());
    let child = prefixed(
        &root,
        &project,
        &[&command],
        &[("GOV_SESSION", "outer"), ("GOV_PREFIX", "off")],
    )
    .spawn()
    .unwrap();
    let server = Kid::new(child);
    let inner = gate_of_session(&root, "inner");
    assert_eq!(inner.main_pid, Some(server.id()), "{inner:?}");
    assert_eq!(inner.max_runtime_s, None, "{inner:?}");
    wait_until(
        Duration::from_secs(10),
        "the refused prefix's gate to go",
        || gates_of_session(&root, "outer").is_empty(),
    );
    fs::write(&fifo, "go\n").unwrap();
    assert_eq!(server.reap(Duration::from_secs(10)), Some(0));
}

// ---------------------------------------------------------------------------
// Kaimon.jl's julia_bin

/// Kaimon (>= 2.3.0) runs `julia_bin -i [--sysimage=..] -t auto ...
/// --project=P --startup-file=no -e SCRIPT` on a pty and stops it with
/// SIGTERM, then SIGKILL. The wrapper forwards every argument, puts the
/// worker in a gate of project P, and keeps its pid; what the worker
/// started (a test runner in a session of its own) is in the gate too, so
/// `gov ps` shows it and `gov kill` ends it after Kaimon's stop left it.
#[test]
fn kaimons_julia_bin_wrapper_forwards_its_arguments_and_gates_the_worker() {
    let test = "kaimons_julia_bin_wrapper_forwards_its_arguments_and_gates_the_worker";
    let Some((root, _d)) = start(test, "") else {
        return;
    };
    let project = project_dir(&root, "MyPkg.jl");
    let out_file = root.dir.path().join("worker.out");
    // A stand-in julia: says what it was given and where it runs, starts a
    // "test runner" that escapes its process group, then serves.
    let fake = root.dir.path().join("fake-julia");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$$\" \"$GOV_GATE\" \"$GOV_PROJECT\" \"$@\" > {o}.tmp\nsetsid sleep 300 </dev/null >/dev/null 2>&1 &\necho \"$!\" >> {o}.tmp\nmv {o}.tmp {o}\nexec sleep 300\n",
            o = out_file.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let kaimon_args = [
        "-i",
        "-t",
        "auto",
        "--heap-size-hint=8G",
        &format!("--project={}", project.display()),
        "--startup-file=no",
        "-e",
        "using KaimonGate; KaimonGate.serve(; name = \"MyPkg\")",
    ];
    let child = Command::new(kit::repo().join("tests/fixtures/julia-gated"))
        .args(kaimon_args)
        .env("GATE_WORKER", &fake)
        .env("PATH", path_with(&[&gov_dir()]))
        .env("GOV_SOCKET", &root.socket)
        .current_dir(root.dir.path())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let worker = Kid::new(child);
    wait_until(Duration::from_secs(10), "the worker's report", || {
        out_file.exists()
    });
    let report = fs::read_to_string(&out_file).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[0], worker.id().to_string(), "same pid: {report}");
    let gate = lines[1].to_string();
    assert_eq!(
        Path::new(lines[2]),
        project,
        "the gate's project is --project"
    );
    assert_eq!(
        &lines[3..3 + kaimon_args.len()],
        &kaimon_args,
        "every argument forwarded"
    );
    let runner: u32 = lines.last().unwrap().parse().unwrap();
    let g = root.gate(&gate).expect("listed");
    assert!(g.pids.contains(&runner), "{g:?}");

    // Kaimon's stop: SIGTERM to its worker (the pty's child). The worker
    // goes; the runner it left is still in the gate, where gov ps shows it
    // and gov kill ends it (with on_main_exit = "stop", issue 12, gov
    // will stop it by itself).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(
        worker.reap(Duration::from_secs(10)),
        None,
        "killed by SIGTERM"
    );
    let g = root.gate(&gate).expect("the leftover keeps the gate");
    assert_eq!(g.pids, vec![runner]);
    root.ok(&["kill", &gate]);
    assert_gone(&root, &gate, &[runner], Duration::from_secs(10));
}

// ---------------------------------------------------------------------------
// The doc shows what is tested

#[test]
fn the_doc_shows_the_agent_scripts_verbatim() {
    if kit::host_only("the_doc_shows_the_agent_scripts_verbatim", HOST_NEEDS) {
        return;
    }
    let doc = fs::read_to_string(kit::repo().join("docs/integrations.md")).unwrap();
    for f in [
        "packaging/gov-shell-prefix",
        "tests/fixtures/julia-gated",
        "tests/fixtures/agents/claude-code.mcp.json",
        "tests/fixtures/agents/claude-code-issue12.mcp.json",
    ] {
        let text = fs::read_to_string(kit::repo().join(f)).unwrap();
        assert!(
            doc.contains(text.trim_end()),
            "docs/integrations.md must show {f} verbatim"
        );
    }
    assert!(doc.contains(MCP_PKG), "the doc names the tested MCP server");
}
