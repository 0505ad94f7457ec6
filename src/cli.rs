//! The command line: clap definitions, dispatch to the daemon (or, for root
//! with no daemon running, straight to cgroupfs), and output for people
//! (tables) and tools (`--json`).

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::client::{self, Client};
use crate::gate::Tree;
use crate::protocol::{Event, GateInfo, Request, Response};
use crate::{direct, names, policy, spawn};

#[derive(Parser, Debug)]
#[command(
    name = "gov",
    version,
    about = "A cgroup-v2 governor for long-lived worker processes (gates)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run CMD in a new gate: its own cgroup, tagged before CMD runs, so every
    /// descendant is tracked. CMD keeps this process's pid, cwd, env and stdio.
    Spawn {
        /// The project the gate works for (a path or a name).
        #[arg(long, short)]
        project: String,
        /// The host's session id; generated when not given.
        #[arg(long, short)]
        session: Option<String>,
        /// Reap the gate this long after it started, busy or not (e.g. 30m).
        #[arg(long, value_name = "DURATION")]
        max_runtime: Option<String>,
        /// Never reap this gate.
        #[arg(long)]
        pin: bool,
        /// The process whose exit orphans the gate (default: our parent).
        #[arg(long, value_name = "PID", conflicts_with = "no_owner")]
        owner: Option<u32>,
        /// The gate has no owner and is never orphaned.
        #[arg(long)]
        no_owner: bool,
        /// The command and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        cmd: Vec<OsString>,
    },
    /// List gates with memory, CPU, idle time and state.
    Ps {
        #[arg(long)]
        json: bool,
        /// Refresh every SECS seconds (default 2) until interrupted.
        #[arg(long, short, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
    },
    /// Everything about one gate.
    Show {
        gate: String,
        #[arg(long)]
        json: bool,
    },
    /// Kill a gate's whole process tree and remove it.
    Kill { gate: String },
    /// Freeze a gate: its processes stop where they are and keep their state.
    Freeze { gate: String },
    /// Thaw a frozen or suspended gate.
    Thaw { gate: String },
    /// Record real activity (a tool call) on a gate, or on every gate of a session.
    Touch {
        #[arg(required_unless_present = "session", conflicts_with = "session")]
        gate: Option<String>,
        #[arg(long, short)]
        session: Option<String>,
    },
    /// Never reap this gate.
    Pin { gate: String },
    /// Let the reaper judge this gate again.
    Unpin { gate: String },
    /// Set a gate's session id after it started.
    Tag {
        gate: String,
        #[arg(long, short)]
        session: String,
    },
    /// Recent lifecycle events.
    Events {
        #[arg(long)]
        json: bool,
        #[arg(long, short = 'n', default_value_t = 50)]
        limit: usize,
    },
    /// Metrics in the Prometheus text format.
    Metrics,
    /// Run the privileged helper.
    Daemon {
        /// Policy file; embedded defaults serve when it is missing.
        #[arg(long, default_value = policy::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate a gov.toml and print the effective policy.
    CheckConfig { file: PathBuf },
    /// Internal: run CMD below a keeper, the hibernatable gate's main
    /// process (src/keeper.rs).
    #[command(hide = true)]
    Keeper {
        /// The worker's cgroup (default: the child `w` of our own cgroup).
        #[arg(long, value_name = "PATH")]
        worker_cgroup: Option<PathBuf>,
        /// Do not start the worker: the daemon does (unprivileged hosts).
        #[arg(long)]
        external: bool,
        /// Run by the daemon: start the worker for an external keeper.
        #[arg(long, conflicts_with = "external", requires_all = ["uid", "gid"])]
        init: bool,
        #[arg(long, requires = "init")]
        uid: Option<u32>,
        #[arg(long, requires = "init")]
        gid: Option<u32>,
        #[arg(long, requires = "init", value_delimiter = ',')]
        groups: Vec<u32>,
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        cmd: Vec<OsString>,
    },
}

pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Spawn {
            project,
            session,
            max_runtime,
            pin,
            owner,
            no_owner,
            cmd,
        } => spawn_cmd(project, session, max_runtime, pin, owner, no_owner, cmd),
        Command::Ps { json, watch } => {
            let tty = std::io::stdout().is_terminal();
            loop {
                let gates = Backend::connect()?.list()?;
                let text = if json {
                    serde_json::to_string_pretty(&gates)? + "\n"
                } else {
                    render_table(&gates)
                };
                match watch {
                    // On a terminal, redraw in place; piped, one table after another.
                    Some(_) if tty => print!("\x1b[H\x1b[2J{text}"),
                    Some(_) => println!("{text}"),
                    None => {
                        print!("{text}");
                        return Ok(0);
                    }
                }
                use std::io::Write;
                std::io::stdout().flush()?;
                let secs = watch.unwrap_or(2.0).clamp(0.1, 3600.0);
                std::thread::sleep(std::time::Duration::from_secs_f64(secs));
            }
        }
        Command::Show { gate, json } => {
            let info = Backend::connect()?.show(&gate)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", render_show(&info));
            }
            Ok(0)
        }
        Command::Kill { gate } => Backend::connect()?.act(Request::Kill { gate }),
        Command::Freeze { gate } => Backend::connect()?.act(Request::Freeze { gate }),
        Command::Thaw { gate } => Backend::connect()?.act(Request::Thaw { gate }),
        Command::Touch { gate, session } => daemon_only(Request::Touch { gate, session }),
        Command::Pin { gate } => daemon_only(Request::Pin { gate }),
        Command::Unpin { gate } => daemon_only(Request::Unpin { gate }),
        Command::Tag { gate, session } => daemon_only(Request::Tag { gate, session }),
        Command::Events { json, limit } => {
            match daemon_call(Request::Events { limit: Some(limit) })? {
                Response::Events { events } if json => {
                    println!("{}", serde_json::to_string_pretty(&events)?)
                }
                Response::Events { events } => print!("{}", render_events(&events)),
                other => return unexpected(other),
            }
            Ok(0)
        }
        Command::Metrics => match daemon_call(Request::Metrics)? {
            Response::Metrics { text } => {
                print!("{text}");
                Ok(0)
            }
            other => unexpected(other),
        },
        Command::Daemon { config } => crate::daemon::run(&config),
        Command::Keeper {
            worker_cgroup,
            external,
            init,
            uid,
            gid,
            groups,
            cmd,
        } => {
            use crate::keeper;
            let cg = match worker_cgroup {
                Some(p) => p,
                None => {
                    crate::cgroup::cgroup_of(&crate::cgroup::cgroup2_mount()?, std::process::id())?
                        .join(keeper::WORKER_CGROUP)
                }
            };
            if init {
                let (Some(uid), Some(gid)) = (uid, gid) else {
                    bail!("--init needs --uid and --gid");
                };
                let creds = keeper::Creds { uid, gid, groups };
                return Ok(keeper::run_init(&cg, &cmd, &creds)?);
            }
            let start = if external {
                keeper::Start::External
            } else {
                keeper::Start::Fork
            };
            Ok(keeper::run(&cg, &cmd, start)?)
        }
        Command::CheckConfig { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            match policy::Policy::parse_all(&text, &file) {
                Ok(p) => {
                    println!("{}: ok", file.display());
                    println!("{}", serde_json::to_string_pretty(p.defaults())?);
                    Ok(0)
                }
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    Ok(1)
                }
            }
        }
    }
}

fn unexpected(r: Response) -> Result<i32> {
    match r {
        Response::Error { message, .. } => bail!("{message}"),
        other => bail!("unexpected reply from gov daemon: {other:?}"),
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn no_daemon_error() -> anyhow::Error {
    anyhow!(
        "gov daemon is not running (no socket at {}); start it with `gov daemon`, or run as root to act on cgroups directly",
        client::socket_path().display()
    )
}

fn daemon_call(request: Request) -> Result<Response> {
    let path = client::socket_path();
    client::request(&path, request)?.ok_or_else(|| {
        anyhow!(
            "gov daemon is not running (no socket at {}); this command needs it",
            path.display()
        )
    })
}

fn daemon_only(request: Request) -> Result<i32> {
    match daemon_call(request)? {
        Response::Done { .. } => Ok(0),
        other => unexpected(other),
    }
}

/// Where gate commands go: the daemon when it runs, else cgroupfs (root).
enum Backend {
    Daemon(Client),
    Direct(Tree),
}

impl Backend {
    fn connect() -> Result<Backend> {
        if let Some(c) = Client::connect(&client::socket_path())? {
            return Ok(Backend::Daemon(c));
        }
        if !is_root() {
            return Err(no_daemon_error());
        }
        Ok(Backend::Direct(direct_tree()?))
    }

    fn list(self) -> Result<Vec<GateInfo>> {
        match self {
            Backend::Daemon(mut c) => match c.call(Request::List)? {
                Response::Gates { gates } => Ok(gates),
                other => unexpected(other).map(|_| vec![]),
            },
            Backend::Direct(tree) => direct::list(&tree),
        }
    }

    fn show(self, gate: &str) -> Result<GateInfo> {
        match self {
            Backend::Daemon(mut c) => match c.call(Request::Show { gate: gate.into() })? {
                Response::Gate { gate } => Ok(*gate),
                other => Err(unexpected(other).unwrap_err()),
            },
            Backend::Direct(tree) => direct::show(&tree, gate),
        }
    }

    fn act(self, request: Request) -> Result<i32> {
        match self {
            Backend::Daemon(mut c) => match c.call(request)? {
                Response::Done { .. } => Ok(0),
                other => unexpected(other),
            },
            Backend::Direct(tree) => {
                match request {
                    Request::Kill { gate } => direct::kill(&tree, &gate)?,
                    Request::Freeze { gate } => direct::freeze(&tree, &gate)?,
                    Request::Thaw { gate } => direct::thaw(&tree, &gate)?,
                    other => bail!("{other:?} needs the gov daemon"),
                }
                Ok(0)
            }
        }
    }
}

/// Root's view of gov's tree without a daemon: policy file for the root
/// setting (GOV_CGROUP_ROOT overrides), embedded defaults when absent.
fn direct_tree() -> Result<Tree> {
    let (policy, _) = policy::Policy::load_or_embedded(std::path::Path::new(policy::DEFAULT_PATH))?;
    Ok(Tree::resolve(&policy.global.cgroup_root)?)
}

#[allow(clippy::too_many_arguments)]
fn spawn_cmd(
    project: String,
    session: Option<String>,
    max_runtime: Option<String>,
    pinned: bool,
    owner: Option<u32>,
    no_owner: bool,
    cmd: Vec<OsString>,
) -> Result<i32> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let project = names::normalize_project(&project, &cwd)?;
    let session = match session {
        Some(s) => {
            names::check_session(&s)?;
            s
        }
        None => names::new_session_id(),
    };
    let max_runtime_ms = match &max_runtime {
        Some(d) => Some(
            policy::parse_duration(d)
                .map_err(|e| anyhow!("--max-runtime {d:?}: {e}"))?
                .as_millis() as u64,
        ),
        None => None,
    };
    let path = client::socket_path();
    let spawn = Request::Spawn {
        project: project.clone(),
        session: Some(session.clone()),
        owner_pid: owner,
        no_owner,
        max_runtime,
        pinned,
    };
    if let Some(reply) = client::request(&path, spawn)? {
        match reply {
            Response::Spawned {
                gate,
                project,
                session,
                ..
            } => {
                // The daemon removes the gate once it sees it empty.
                let err = spawn::exec(&cmd, &gate, &project, &session);
                spawn::exit_exec_failed(&cmd, &err)
            }
            other => return unexpected(other),
        }
    }
    if !is_root() {
        return Err(no_daemon_error());
    }
    // No daemon: root creates and enters the gate itself. Nothing will reap
    // it, but it is tracked, listed and killable as a whole.
    let (policy, _) = policy::Policy::load_or_embedded(std::path::Path::new(policy::DEFAULT_PATH))?;
    let tree = Tree::resolve(&policy.global.cgroup_root)?;
    let me = std::process::id();
    let owner_pid = if no_owner {
        None
    } else {
        owner.or_else(|| crate::proc::parent_pid(me))
    };
    let tags = spawn::tags_for(
        &project,
        &session,
        nix::unistd::getuid().as_raw(),
        me,
        owner_pid,
        max_runtime_ms,
        pinned,
    );
    let dir = spawn::create_gate_for(&tree, &tags, &policy.for_project(&project), me)
        .context("creating the gate cgroup")?;
    let err = spawn::exec(&cmd, &dir.id, &project, &session);
    // No daemon will remove the gate: leave it (for the root cgroup, which
    // takes any process) and remove it ourselves.
    let _ = crate::cgroup::Cgroup::new(&tree.mount).write_procs(me);
    let _ = dir.remove();
    spawn::exit_exec_failed(&cmd, &err)
}

// ---------------------------------------------------------------------------
// Output for people

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[i])
    } else {
        format!("{v:.0}{}", UNITS[i])
    }
}

pub fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn cpu_text(usec: u64) -> String {
    if usec < 60_000_000 {
        format!("{:.1}s", usec as f64 / 1e6)
    } else {
        human_secs(usec / 1_000_000)
    }
}

/// `gov ps`: gates grouped by project, with a total line per project that
/// has more than one gate.
pub fn render_table(gates: &[GateInfo]) -> String {
    let mut gates: Vec<&GateInfo> = gates.iter().collect();
    gates.sort_by(|a, b| (&a.project, a.created_ms).cmp(&(&b.project, b.created_ms)));
    let header = [
        "GATE", "PROJECT", "SESSION", "USER", "PIDS", "MEM", "CPU", "AGE", "IDLE", "STATE",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let mut i = 0;
    while i < gates.len() {
        let project = &gates[i].project;
        let group: Vec<&GateInfo> = gates[i..]
            .iter()
            .take_while(|g| &g.project == project)
            .copied()
            .collect();
        for g in &group {
            rows.push(vec![
                g.id.clone(),
                g.project.clone(),
                g.session.clone(),
                g.user.clone(),
                g.pids.len().to_string(),
                human_bytes(g.memory_bytes),
                cpu_text(g.cpu_usec),
                human_secs(g.age_s),
                human_secs(g.idle_s),
                g.state.as_str().to_string() + if g.pinned { ",pinned" } else { "" },
            ]);
        }
        if group.len() > 1 {
            rows.push(vec![
                String::new(),
                format!("  total ({} gates)", group.len()),
                String::new(),
                String::new(),
                group
                    .iter()
                    .map(|g| g.pids.len())
                    .sum::<usize>()
                    .to_string(),
                human_bytes(group.iter().map(|g| g.memory_bytes).sum()),
                cpu_text(group.iter().map(|g| g.cpu_usec).sum()),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        i += group.len();
    }
    if gates.is_empty() {
        return "no gates\n".to_string();
    }
    format_columns(&rows)
}

fn format_columns(rows: &[Vec<String>]) -> String {
    let ncol = rows[0].len();
    let widths: Vec<usize> = (0..ncol)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn render_show(g: &GateInfo) -> String {
    let source = match g.memory_source {
        crate::gate::MemorySource::MemoryCurrent => "memory.current",
        crate::gate::MemorySource::ProcPss => "sum of PSS from /proc (no memory controller here)",
    };
    let mut lines = vec![
        ("gate", g.id.clone()),
        ("project", g.project.clone()),
        ("session", g.session.clone()),
        ("user", format!("{} ({})", g.user, g.uid)),
        ("state", g.state.as_str().to_string()),
        ("pinned", g.pinned.to_string()),
        ("pids", format!("{:?}", g.pids)),
        (
            "memory",
            format!("{} ({source})", human_bytes(g.memory_bytes)),
        ),
        ("cpu", cpu_text(g.cpu_usec)),
        ("age", human_secs(g.age_s)),
        ("idle", human_secs(g.idle_s)),
        ("cgroup", g.cgroup.clone()),
    ];
    if let Some(p) = g.main_pid {
        lines.push(("main pid", p.to_string()));
    }
    if let Some(p) = g.owner_pid {
        lines.push(("owner pid", p.to_string()));
    }
    if let Some(ms) = g.orphaned_ms {
        let ago = crate::gate::now_ms().saturating_sub(ms) / 1000;
        lines.push(("orphaned", format!("{} ago", human_secs(ago))));
    }
    if let Some(s) = g.max_runtime_s {
        lines.push(("max runtime", human_secs(s)));
    }
    if !g.limits.is_empty() {
        let l: Vec<String> = g.limits.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.push(("limits", l.join(" ")));
    } else {
        lines.push(("limits", "none (no cgroup2 controllers here)".to_string()));
    }
    if !g.limit_hits.is_empty() {
        let l: Vec<String> = g
            .limit_hits
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        lines.push(("limit hits", l.join(", ")));
    }
    if let Some(s) = &g.spared {
        lines.push(("spared", s.clone()));
    }
    if let Some(s) = &g.next {
        lines.push(("next", s.clone()));
    }
    lines
        .into_iter()
        .map(|(k, v)| format!("{k:<12} {v}\n"))
        .collect()
}

pub fn render_events(events: &[Event]) -> String {
    let mut rows = vec![["TIME", "GATE", "PROJECT", "EVENT", "REASON", "FREED"]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
    for e in events {
        rows.push(vec![
            format_time(e.time_ms),
            e.gate.clone(),
            e.project.clone(),
            e.kind.clone(),
            e.reason.clone().unwrap_or_default(),
            e.freed_bytes.map(human_bytes).unwrap_or_default(),
        ]);
    }
    format_columns(&rows)
}

fn format_time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Logs go to stderr; colour only on a terminal, so journald gets plain text.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GOV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_for_people() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(20 << 30), "20G");
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(61), "1m01s");
        assert_eq!(human_secs(3 * 3600 + 120), "3h02m");
        assert_eq!(human_secs(2 * 86_400 + 3600), "2d01h");
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["gov", "spawn", "-p", "/p", "--", "sh", "-c", "x"]).unwrap();
        match cli.command {
            Command::Spawn { cmd, .. } => assert_eq!(cmd, ["sh", "-c", "x"]),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["gov", "spawn", "-p", "/p"]).is_err());
        assert!(Cli::try_parse_from(["gov", "touch"]).is_err());
    }
}
