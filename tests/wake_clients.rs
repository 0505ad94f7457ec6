//! Wake on input with real clients (issue 17): a gate the reaper put to
//! sleep comes back when its host writes to it, and no `gov touch` is sent
//! anywhere in this file. The official MCP Python SDK calls the tools of a
//! stdio server started through `gov spawn`, suspended before one call and
//! hibernated before another; jupyter_client runs cells on a kernel started
//! from a kernel spec through `gov spawn`, without the heartbeat channel (as
//! notebook servers run it), suspended, and refused a dump because its
//! client reaches it through TCP; a language server answers an editor's
//! request after suspension. Each test has a daemon, a socket and a cgroup
//! root of its own. Real daemon, real cgroupfs, real CRIU, root.
//!
//! The packages are the pinned ones of tests/agents.rs (the agents venv:
//! mcp, python-lsp-server) and tests/integrations.rs (the Jupyter venv);
//! tests/kits/ finds or makes them, and skips loudly where a registry is
//! unreachable (a failure under GOV_REQUIRE_AGENTS=1, GOV_REQUIRE_JUPYTER=1,
//! GOV_REQUIRE_CRIU=1). In the VM suite (GOV_VM, busybox, no python3) every
//! client test here says SKIP; only the sh-only one at the end could run
//! there.
//!
//! The ignored tests at the end (and the plain MCP one) are what these
//! clients showed the daemon getting wrong, each a failing test until it
//! is fixed; their ignore reasons say what.

use common::lsp::Lsp;
use gov_testkit as common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{gov_dir, path_with};
use common::{wait_until, Daemon, Kid, TestRoot};

/// bash, python3, node, PyPI, npm: the VM has busybox.
const HOST_NEEDS: &str = "python3, node and the agents' packages";

fn host_only(test: &str) -> bool {
    common::host_only(test, HOST_NEEDS)
}

fn kit(test: &str) -> Option<&'static common::agents::Packages> {
    common::agents::packages_or_skip(test)
}

fn jupyter_venv(test: &str) -> Option<PathBuf> {
    common::jupyter::venv_or_skip(test)
}

/// CRIU's path for a daemon, or None after saying why.
fn criu_or_skip(test: &str) -> Option<PathBuf> {
    common::criu::criu_or_skip(test).map(|c| c.path().to_path_buf())
}

fn manifest() -> &'static Path {
    common::repo()
}

/// Straight to fd 2: libtest captures eprintln! of passing tests.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Asleep one second after the last activity, asleep again three seconds
/// after a wake that brought no activity; never orphaned, never stopped
/// while a test runs. Busy is a tenth of a CPU: an idle server's noise is
/// far below it (0.2% measured here for pylsp, 0.0% for the kernel and the
/// MCP server), and an answer's work (a language server loading jedi, on a
/// machine two tests and a compiler share) must count, or the gate is
/// suspended in the middle of it (a_slow_answer_after_a_wake_is_not_frozen_midway).
/// The client tests run on hosts only; TCG's noise is not theirs.
const POLICY: &str = "\
[defaults]
idle_timeout = \"1s\"
wake_quiet = \"3s\"
frozen_hold = \"1h\"
busy_cpu_percent = 10.0
orphan_grace = \"never\"
stop_grace = \"1s\"
";

/// How long a gate may take to fall asleep: a second of idleness, a scan
/// (200 ms), and a loaded machine.
const ASLEEP: Duration = Duration::from_secs(30);

/// How long an answer may take, a restore included.
const ANSWER: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    manifest().join("tests/fixtures/wake").join(name)
}

/// Waits until the gate is in `want` (failing at once if it is gone).
fn wait_state(root: &TestRoot, gate: &str, want: &str, within: Duration) -> Value {
    let mut last = Value::Null;
    let t0 = Instant::now();
    wait_until(within, &format!("gate {gate} to be {want}"), || {
        last = root.gate_json(gate).unwrap_or(Value::Null);
        assert!(
            !last.is_null(),
            "gate {gate} is gone while waiting for {want}"
        );
        last["state"] == want
    });
    say(&format!("  {gate} {want} after {:.1?}", t0.elapsed()));
    last
}

/// A test's own daemon on its own root (socket, cgroup root), stopped and
/// removed when the test ends; when it fails, it says first what the daemon
/// saw: the events, and the gates as `gov show` gives them.
struct Case {
    daemon: Option<Daemon>,
    root: TestRoot,
}

impl Case {
    fn new(policy: &str) -> Case {
        let root = TestRoot::new();
        let daemon = Some(root.daemon(policy));
        Case { daemon, root }
    }

    /// A daemon that hibernates with `criu`, named as a person names it
    /// (GOV_CRIU), a dump `after` a gate was suspended (or last woken).
    fn hibernating(criu: &Path, after: &str) -> Case {
        let root = TestRoot::new();
        let images = root.dir.path().join("images");
        let policy = POLICY.replace(
            "[defaults]\n",
            &format!("[defaults]\nhibernate_after = \"{after}\"\n"),
        );
        let policy = format!(
            "hibernate_dir = {:?}\n{policy}",
            images.display().to_string()
        );
        let daemon = Some(Daemon::start_env(
            &root,
            &root.policy_file(&policy),
            &[("GOV_CRIU", criu.to_str().unwrap())],
        ));
        Case { daemon, root }
    }
}

impl std::ops::Deref for Case {
    type Target = TestRoot;
    fn deref(&self) -> &TestRoot {
        &self.root
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let r = &self.root;
            let mut text = String::from("---- what the daemon saw ----\n");
            text += &common::text(&r.run(&["events", "-n", "200"]).stdout);
            for g in r.ps_json() {
                text += &common::text(&r.run(&["show", g["id"].as_str().unwrap_or("")]).stdout);
            }
            say(&text);
        }
        // The daemon goes first, then (as the fields drop) the root.
        self.daemon = None;
    }
}

/// Waits until the gate is asleep for good: suspended, its inputs watched
/// (`wakes_on` listed; the watch is armed just after the freeze), and
/// still so three scans later with no wake in between, so that a request
/// sent now is what wakes it (an input readable at the freeze, such as a
/// closed stdin, wakes it at once: a_jupyter_kernels_closed_stdin_does_not_wake_it).
fn asleep(root: &TestRoot, gate: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let left = ASLEEP.saturating_sub(t0.elapsed());
        wait_state(root, gate, "suspended", left);
        let mut g = Value::Null;
        wait_until(left, "the gate's inputs to be watched", || {
            g = root.gate_json(gate).unwrap_or(Value::Null);
            g["wakes_on"].as_array().is_some_and(|a| !a.is_empty())
        });
        let woken = wakes(root, gate).len();
        root.wait_scans(3);
        let now = root.gate_json(gate).unwrap_or(Value::Null);
        if now["state"] == "suspended" && wakes(root, gate).len() == woken {
            say(&format!("  {gate} asleep after {:.1?}", t0.elapsed()));
            return now;
        }
    }
}

/// The `woken` events of a gate, their reasons.
fn wakes(root: &TestRoot, gate: &str) -> Vec<String> {
    root.events_json()
        .into_iter()
        .filter(|e| e["gate"] == gate && e["kind"] == "woken")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until the gate has `n` `woken` events (the event is written just
/// after the gate runs again, so its answer can come first); returns them.
fn wait_wakes(root: &TestRoot, gate: &str, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    wait_until(
        Duration::from_secs(10),
        &format!("{n} woken events"),
        || {
            seen = wakes(root, gate);
            seen.len() >= n
        },
    );
    assert_eq!(seen.len(), n, "{seen:?}");
    seen
}

/// Input alone brought the gate back: it was never thawed (a touch, `gov
/// thaw`), only woken. (This file sends no touch; the check is that nothing
/// else resumed it either.)
fn assert_only_woken(root: &TestRoot, gate: &str) {
    let thawed: Vec<Value> = root
        .events_json()
        .into_iter()
        .filter(|e| e["gate"] == gate && e["kind"] == "thawed")
        .collect();
    assert!(thawed.is_empty(), "{thawed:?}");
}

/// The environment a host gives `gov spawn` for this test's daemon.
fn gov_env<'a>(root: &'a TestRoot, cmd: &'a mut Command, extra_path: &[&Path]) -> &'a mut Command {
    let mut dirs = vec![gov_dir()];
    dirs.extend(extra_path.iter().map(|p| p.to_path_buf()));
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    cmd.env("PATH", path_with(&refs))
        .env("GOV_SOCKET", &root.socket)
        .env("GOV_CGROUP_ROOT", &root.path)
        .env_remove("GOV_LOG")
}

// ---------------------------------------------------------------------------
// A client process that speaks one JSON object a line on its stdout

struct Client {
    /// Held so the client is killed and reaped when the test ends.
    _kid: Kid,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
}

impl Client {
    fn start(mut cmd: Command) -> Client {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("the client starts");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line).unwrap_or_else(|_| json!({"unparsed": line}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Client {
            _kid: Kid::new(child),
            stdin,
            lines: rx,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next line, which must be `op`.
    fn next(&mut self, op: &str, within: Duration) -> Value {
        let v = self
            .lines
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("no {op} line from the client within {within:?} ({e})"));
        assert_eq!(v["op"], op, "{v}");
        v
    }
}

// ---------------------------------------------------------------------------
// MCP: the official SDK calls a stdio server's tools

/// The SDK's client starting tests/fixtures/wake/counter_mcp_server.py as
/// an agent's config names it: `gov spawn --project P [ARGS] -- python3
/// server.py`.
fn mcp_client(root: &TestRoot, venv: &Path, project: &Path, gov_args: &[&str]) -> Client {
    let mut cmd = Command::new(venv.join("bin/python3"));
    cmd.arg(fixture("mcp_client.py"))
        .args(["gov", "spawn", "--project"])
        .arg(project)
        .args(gov_args)
        .arg("--")
        .arg(venv.join("bin/python3"))
        .arg(fixture("counter_mcp_server.py"))
        .current_dir(project);
    gov_env(root, &mut cmd, &[]);
    let mut c = Client::start(cmd);
    let ready = c.next("ready", ANSWER);
    assert_eq!(ready["server"], "counter", "{ready}");
    assert_eq!(ready["tools"], json!(["incr"]), "{ready}");
    c
}

/// One `incr` call: its value, and the pid of the process that answered.
fn incr(c: &mut Client) -> (u64, u32) {
    c.send("call");
    let r = c.next("call", ANSWER);
    assert_eq!(r["error"], false, "{r}");
    let text = r["text"].as_str().unwrap();
    let (n, pid) = text.split_once(' ').expect("VALUE PID");
    say(&format!("  incr -> {n} in {}s", r["took_s"]));
    (n.parse().unwrap(), pid.parse().unwrap())
}

fn project_dir(root: &TestRoot, name: &str) -> PathBuf {
    let p = root.dir.path().join(name);
    fs::create_dir_all(&p).unwrap();
    p
}

/// The MCP server's gate: the one gate of the project.
fn only_gate(root: &TestRoot, project: &Path) -> String {
    let mut id = None;
    wait_until(Duration::from_secs(10), "the server's gate", || {
        let gates: Vec<Value> = root
            .ps_json()
            .into_iter()
            .filter(|g| g["project"] == project.to_str().unwrap())
            .collect();
        if gates.len() == 1 {
            id = gates[0]["id"].as_str().map(str::to_string);
        }
        id.is_some()
    });
    id.unwrap()
}

/// The SDK calls a tool, the gate is suspended, the SDK calls again and the
/// answer comes from the same process with its counter kept; the gate falls
/// asleep again wake_quiet later and a third call is answered too. The wakes
/// are `woken` events naming stdin; `gov show` said what would wake it.
#[test]
fn an_mcp_server_answers_the_sdk_while_suspended_without_a_touch() {
    let test = "an_mcp_server_answers_the_sdk_while_suspended_without_a_touch";
    if host_only(test) {
        return;
    }
    let Some(kit) = kit(test) else { return };
    let root = Case::new(POLICY);
    let project = project_dir(&root, "mcp");
    let mut client = mcp_client(&root, &kit.venv, &project, &[]);
    let gate = only_gate(&root, &project);

    let (n, server) = incr(&mut client);
    assert_eq!(n, 1);
    let g = asleep(&root, &gate);
    let wakes_on = g["wakes_on"].to_string();
    assert!(wakes_on.contains("stdin"), "the stdin pipe is watched: {g}");
    let show = root.ok(&["show", &gate]);
    assert!(show.contains("wakes on"), "{show}");

    let t0 = Instant::now();
    assert_eq!(
        incr(&mut client),
        (2, server),
        "the same server, its state kept"
    );
    say(&format!(
        "  answered while suspended in {:.1?}",
        t0.elapsed()
    ));
    let woken = wait_wakes(&root, &gate, 1);
    assert!(woken[0].contains("stdin"), "{woken:?}");

    // Nothing but the wake: asleep again after wake_quiet, and woken again.
    asleep(&root, &gate);
    assert_eq!(incr(&mut client), (3, server));
    wait_wakes(&root, &gate, 2);
    assert_only_woken(&root, &gate);
}

/// A `--hibernate` MCP server: called running, then suspended, then
/// hibernated (CRIU), every call answered by the same process with its
/// counter kept, and its host never knew: the SDK's pipes are the keeper's.
#[test]
fn a_hibernatable_mcp_server_answers_the_sdk_after_suspension_and_after_hibernation() {
    let test = "a_hibernatable_mcp_server_answers_the_sdk_after_suspension_and_after_hibernation";
    if host_only(test) {
        return;
    }
    let Some(kit) = kit(test) else { return };
    let Some(criu) = criu_or_skip(test) else {
        return;
    };
    // Five seconds suspended before a dump: time to call it suspended.
    let root = Case::hibernating(&criu, "5s");
    let project = project_dir(&root, "mcp");
    let mut client = mcp_client(&root, &kit.venv, &project, &["--hibernate"]);
    let gate = only_gate(&root, &project);

    let (n, server) = incr(&mut client);
    assert_eq!(n, 1);
    asleep(&root, &gate);
    assert_eq!(incr(&mut client), (2, server), "answered while suspended");

    let g = wait_state(&root, &gate, "hibernated", Duration::from_secs(60));
    assert_eq!(g["memory_source"], "image", "{g}");
    let t0 = Instant::now();
    assert_eq!(
        incr(&mut client),
        (3, server),
        "answered after hibernation by the restored server, its state kept"
    );
    say(&format!(
        "  answered while hibernated in {:.1?}",
        t0.elapsed()
    ));
    let woken = wait_wakes(&root, &gate, 2);
    assert!(woken.iter().all(|w| w.contains("stdin")), "{woken:?}");
    let events = root.events_json();
    assert!(
        events
            .iter()
            .any(|e| e["gate"] == gate.as_str() && e["kind"] == "restored"),
        "the second wake restored it: {events:?}"
    );
    assert_only_woken(&root, &gate);
}

// ---------------------------------------------------------------------------
// Jupyter: jupyter_client without the heartbeat channel

/// A kernel spec whose argv runs ipykernel through `gov spawn` (with
/// `gov_args`), under `dir`/kernels/gov-wake; JUPYTER_PATH is `dir`.
fn kernel_spec(dir: &Path, project: &Path, gov_args: &[&str]) {
    let mut argv = vec!["gov", "spawn", "--project", project.to_str().unwrap()];
    argv.extend(gov_args);
    argv.extend([
        "--",
        "python3",
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
    ]);
    let spec = dir.join("kernels/gov-wake");
    fs::create_dir_all(&spec).unwrap();
    let text = json!({"argv": argv, "display_name": "Python 3 (gov, wake)", "language": "python"});
    fs::write(spec.join("kernel.json"), text.to_string()).unwrap();
}

/// tests/fixtures/wake/jupyter_client_wake.py with the kernel spec of
/// `gov_args`; returns the client, once the kernel answered kernel_info,
/// and the kernel's gate.
fn jupyter(root: &TestRoot, venv: &Path, gov_args: &[&str]) -> (Client, String) {
    let jupyter = root.dir.path().join("jupyter");
    let project = project_dir(root, "notebooks");
    kernel_spec(&jupyter, &project, gov_args);
    let mut cmd = Command::new(venv.join("bin/python3"));
    cmd.arg(fixture("jupyter_client_wake.py"))
        .arg("gov-wake")
        .arg(&project)
        .env("JUPYTER_PATH", &jupyter)
        .env("JUPYTER_RUNTIME_DIR", project_dir(root, "jupyter-runtime"))
        .env("JUPYTER_PLATFORM_DIRS", "1")
        .env("IPYTHONDIR", project_dir(root, "ipython"));
    gov_env(root, &mut cmd, &[&venv.join("bin")]);
    let mut c = Client::start(cmd);
    let ready = c.next("ready", Duration::from_secs(90));
    let gate = root.gate_of(ready["kernel_pid"].as_u64().unwrap() as u32);
    (c, gate)
}

/// A kernel started by jupyter_client from a kernel spec that runs it
/// through `gov spawn` (`--hibernate`, with a daemon that dumps at once,
/// where `hibernate`): its daemon, its client, its gate. None after a skip.
fn kernel_case(test: &str, hibernate: bool) -> Option<(Case, Client, String)> {
    if host_only(test) {
        return None;
    }
    let venv = jupyter_venv(test)?;
    let (root, gov_args): (Case, &[&str]) = if hibernate {
        (
            Case::hibernating(&criu_or_skip(test)?, "0s"),
            &["--hibernate"],
        )
    } else {
        (Case::new(POLICY), &[])
    };
    let (client, gate) = jupyter(&root, &venv, gov_args);
    Some((root, client, gate))
}

/// Runs one cell; returns what it printed.
fn execute(c: &mut Client, code: &str) -> String {
    c.send(&Value::from(code).to_string());
    let r = c.next("execute", ANSWER);
    assert_eq!(r["status"], "ok", "{r}");
    say(&format!("  execute {code:?} in {}s", r["took_s"]));
    r["stdout"].as_str().unwrap().to_string()
}

/// A cell sets a variable; the kernel is suspended (no heartbeats keep it
/// up); the next `execute` wakes it through its shell socket and reads the
/// variable back.
#[test]
fn a_jupyter_kernel_answers_execute_while_suspended() {
    let Some((root, mut client, gate)) =
        kernel_case("a_jupyter_kernel_answers_execute_while_suspended", false)
    else {
        return;
    };

    assert_eq!(execute(&mut client, "x = 41\nprint('set')"), "set\n");
    let g = asleep(&root, &gate);
    assert!(
        g["wakes_on"].to_string().contains("tcp"),
        "the kernel's TCP sockets are watched: {g}"
    );
    assert_eq!(execute(&mut client, "print(x + 1)"), "42\n");
    // The execute request came through a TCP connection (its shell
    // channel). (A wake before it, on the kernel's stdin at end of file,
    // is a_jupyter_kernels_closed_stdin_does_not_wake_it.)
    wait_until(
        Duration::from_secs(10),
        "a wake by a TCP connection",
        || wakes(&root, &gate).last().map(String::as_str) == Some("tcp connection"),
    );
    assert_only_woken(&root, &gate);
}

/// A `--hibernate` kernel is reached through TCP sockets, which CRIU cannot
/// hand back: the dump is refused, `gov show` says why, and the suspended
/// kernel answers `execute` with its state. Should a later design dump it,
/// it must answer after its restore just as well.
#[test]
fn a_hibernatable_jupyter_kernel_is_refused_a_dump_and_answers_while_suspended() {
    let test = "a_hibernatable_jupyter_kernel_is_refused_a_dump_and_answers_while_suspended";
    let Some((root, mut client, gate)) = kernel_case(test, true) else {
        return;
    };

    assert_eq!(execute(&mut client, "x = 41\nprint('set')"), "set\n");
    // Twice: asleep (dumped, or refused with the reason shown), woken by a
    // cell that reads the state the first one left.
    for (cell, want) in [("print(x + 1)", "42\n"), ("x += 1\nprint(x)", "42\n")] {
        let woken = wakes(&root, &gate).len();
        let mut g = Value::Null;
        wait_until(Duration::from_secs(60), "a dump or its refusal", || {
            g = root.gate_json(&gate).expect("the kernel's gate stays");
            g["state"] == "hibernated"
                || (g["state"] == "suspended" && g["hibernate_refused"].is_string())
        });
        if g["state"] == "suspended" {
            let why = g["hibernate_refused"].as_str().unwrap();
            assert!(
                why.contains("its host reaches it through sockets (") && why.contains("tcp"),
                "{why}"
            );
            let show = root.ok(&["show", &gate]);
            assert!(
                show.lines().any(|l| l.starts_with("hibernation")
                    && l.contains(
                        "refused, suspended instead: its host reaches it through sockets ("
                    )),
                "{show}"
            );
            asleep(&root, &gate);
            say("  refused a dump: reached through sockets");
        } else {
            say("  hibernated");
        }
        assert_eq!(execute(&mut client, cell), want);
        wait_until(Duration::from_secs(10), "a woken event", || {
            wakes(&root, &gate).len() > woken
        });
    }
    assert_only_woken(&root, &gate);
}

// ---------------------------------------------------------------------------
// A language server, as an editor starts it

/// pylsp under `gov spawn`, the editor's pipes its stdio: initialized, a
/// document opened, the gate suspended; a completion request wakes it and
/// is answered; asleep again, `shutdown` is answered and the server exits.
#[test]
fn a_language_server_answers_an_editors_request_after_suspension() {
    let test = "a_language_server_answers_an_editors_request_after_suspension";
    if host_only(test) {
        return;
    }
    let Some(kit) = kit(test) else { return };
    let root = Case::new(POLICY);
    let project = project_dir(&root, "pyproj");
    let file = project.join("hello.py");
    let text = "import os\nos.pa";
    fs::write(&file, text).unwrap();

    let mut child = root
        .gov()
        .args(["spawn", "--project"])
        .arg(&project)
        .arg("--")
        .arg(kit.venv.join("bin/pylsp"))
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
    lsp.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}}),
    );
    let gate = root.gate_of(server.id());
    // The editor's first completion, while the server runs: jedi loads and
    // starts its subprocess (seconds), so the one after the wake is an
    // ordinary request. (A first one after the wake can outlast
    // wake_quiet under load: a_slow_answer_after_a_wake_is_not_frozen_midway.)
    let completion = |lsp: &mut Lsp| {
        let done = lsp.request(
            "textDocument/completion",
            json!({"textDocument": {"uri": uri}, "position": {"line": 1, "character": 5}}),
        );
        let items = done["items"]
            .as_array()
            .or(done.as_array())
            .expect("completion items")
            .clone();
        assert!(
            items.iter().any(|i| i["label"] == "path"),
            "jedi completes os.pa to os.path, the opened document kept: {done}"
        );
    };
    completion(&mut lsp);

    asleep(&root, &gate);
    let t0 = Instant::now();
    completion(&mut lsp);
    say(&format!(
        "  completion after suspension in {:.1?}",
        t0.elapsed()
    ));
    wait_wakes(&root, &gate, 1);

    asleep(&root, &gate);
    let r = lsp.request("shutdown", Value::Null);
    assert!(r.is_null(), "{r}");
    lsp.notify("exit", Value::Null);
    assert_eq!(server.reap(Duration::from_secs(20)), Some(0));
    wait_wakes(&root, &gate, 2);
    assert_only_woken(&root, &gate);
}

// ---------------------------------------------------------------------------
// What these clients showed that the daemon gets wrong (ignored until fixed)

/// jupyter_client closes its end of the kernel's stdin pipe at launch
/// (jupyter_client/launcher.py), so the kernel's stdin is a pipe at end of
/// file from the start, and no input can ever come through it. Watched
/// anyway, it is readable the moment the watch is armed: the kernel is
/// woken for nothing right after its first suspension ("woken: stdin
/// pipe"), and only the next suspension drops it.
#[test]
#[ignore = "by design: a stdin at its end (jupyter_client closes the kernel's) wakes the gate \
            once, so a worker that exits when its stdin ends sees it; then it is not watched"]
fn a_jupyter_kernels_closed_stdin_does_not_wake_it() {
    let Some((root, mut client, gate)) =
        kernel_case("a_jupyter_kernels_closed_stdin_does_not_wake_it", false)
    else {
        return;
    };
    assert_eq!(execute(&mut client, "print('hi')"), "hi\n");
    asleep(&root, &gate);
    // Ten scans, and nobody wrote to the kernel.
    root.wait_scans(10);
    assert_eq!(state_of(&root, &gate), "suspended");
    assert_eq!(
        wakes(&root, &gate),
        Vec::<String>::new(),
        "woken for nothing"
    );
}

fn state_of(root: &TestRoot, gate: &str) -> String {
    root.gate_json(gate)
        .map(|g| g["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| "gone".into())
}

/// A server whose answer takes longer than wake_quiet without using CPU
/// (waiting on a disk, a network, a subprocess; here `sleep 6`): the
/// request wakes it, and wake_quiet later it is suspended again in the
/// middle of the answer, which then never comes, since its host, waiting
/// for it, sends nothing more. Seen with the language server under load
/// (its first completion after a wake, under two parallel tests, took
/// longer than wake_quiet = 2s and was never answered). No python: this
/// one runs in the VM suite too.
#[test]
fn a_slow_answer_after_a_wake_is_not_frozen_midway() {
    let root = Case::new(POLICY);
    let mut host = Kid::new(
        root.gov()
            .args(["spawn", "--project", "/srv/slow", "--", "sh", "-c"])
            .arg("echo ready; while read l; do sleep 6; echo \"answer $l\"; done")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut to_gate = host.stdin.take().unwrap();
    let lines = common::lines_of(&mut host);
    assert_eq!(lines.recv_timeout(ANSWER).unwrap(), "ready");
    let gate = root.gate_of(host.id());
    asleep(&root, &gate);
    writeln!(to_gate, "1").unwrap();
    let answer = lines.recv_timeout(Duration::from_secs(20));
    assert_eq!(answer.as_deref(), Ok("answer 1"), "the woken gate's answer");
}

/// A `--hibernate` gate whose host closed its end of the stdin pipe at
/// once, as jupyter_client does with every kernel: the keeper's stdin (the
/// host's pipe) and its relay pipe to the worker are both at end of file.
/// When each wake dropped only the input that woke it last time, the two
/// took turns: woken, suspended wake_quiet later, woken by the other,
/// forever, and never hibernated, since a dump waits for hibernate_after
/// past the last input. Each input at its end now wakes it once. Seen first with a --hibernate
/// ipykernel on branch i17-ppid (its kernel woke every 3 s for a minute);
/// here with `sleep`, which needs no Python.
#[test]
fn a_hibernatable_gate_whose_host_closed_its_stdin_is_not_woken_again_and_again() {
    let test = "a_hibernatable_gate_whose_host_closed_its_stdin_is_not_woken_again_and_again";
    let Some(criu) = criu_or_skip(test) else {
        return;
    };
    let root = Case::hibernating(&criu, "0s");
    let mut host = Kid::new(
        root.gov()
            .args(["spawn", "--hibernate", "--project", "/srv/eof", "--"])
            .args(["sleep", "1000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    drop(host.stdin.take());
    let gate = root.gate_of(host.id());
    // Its first suspension (an event: the state may last a moment only).
    wait_until(ASLEEP, "the gate's first suspension", || {
        root.events_json()
            .iter()
            .any(|e| e["gate"] == gate.as_str() && e["kind"] == "suspended")
    });
    // Sixty scans (12 s): room for three rounds of wake_quiet.
    root.wait_scans(60);
    // Each end at its end wakes it once at most (the keeper's stdin and its
    // relay pipe: two), then neither is watched.
    let woken = wakes(&root, &gate);
    assert!(woken.len() <= 2, "woken again and again: {woken:?}");
    wait_state(&root, &gate, "hibernated", Duration::from_secs(30));
}

// A language server's client
