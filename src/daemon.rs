//! The privileged helper: one tokio loop over signals, the socket and the
//! scan timer; a task per connection; the reaper's decisions performed as
//! tasks of their own so a slow teardown never blocks anyone else.
//!
//! The registry is a cache: cgroupfs and the gates' tags are the truth, and
//! a restarted daemon rebuilds everything from them. Stopping the daemon
//! never touches a gate.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::cgroup::{self, Cgroup};
use crate::gate::{self, now_ms, GateDir, InfoExtra, Tags, Tree};
use crate::names;
use crate::policy::{GateSettings, OnLimit, Policy};
use crate::proc;
use crate::protocol::{self, ErrorCode, Event, GateInfo, Request, Response};
use crate::reaper::{self, Decision, Phase, Reason, Spared, View};
use crate::spawn;

/// Connections served at once for users other than root; more are answered
/// `busy` and closed. With MAX_CONNECTIONS_PER_USER for root on top, and
/// MAX_REQUEST_BYTES per connection, clients can make the daemon hold at
/// most about 384 x 72 KiB = 27 MiB.
const MAX_CONNECTIONS: usize = 256;
/// Connections one user (root included) may hold at once, so no one user
/// can take every slot from the others.
const MAX_CONNECTIONS_PER_USER: usize = 128;
/// A client that connects and says nothing is dropped after this.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A client may keep its connection for several requests (a host's touches).
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Every gate may hold a pidfd on its owner: raise the soft limit on open
/// files to the hard limit, as daemons that hold an fd per client do.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

pub fn run(config: &Path) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("gov daemon must run as root (it creates cgroups and moves other users' processes)");
    }
    let (policy, from_file) = Policy::load_or_embedded(config)?;
    raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let daemon = Daemon::start(config.to_path_buf(), policy, from_file)?;
        daemon.serve().await
    })
}

/// A gate as the daemon tracks it.
struct GateRt {
    dir: GateDir,
    tags: Tags,
    phase: Phase,
    last_active_ms: u64,
    /// The last cpu.stat usage and when it was read.
    cpu_sample: Option<(u64, u64)>,
    busy: bool,
    spared: Option<Spared>,
    next: Option<(u64, &'static str)>,
    /// A suspend or teardown task is working on this gate.
    working: bool,
    /// Limit hits seen at the last scan, to report new ones once.
    limit_hits: BTreeMap<String, u64>,
    /// Last known cgroup.events populated flag.
    populated: bool,
    /// Its event files changed (or we never read them): read them again.
    dirty: bool,
    /// Policy for this gate, cached for the policy it came from.
    settings: (Arc<Policy>, GateSettings),
    owner_watch: Option<AbortHandle>,
}

impl Drop for GateRt {
    fn drop(&mut self) {
        if let Some(h) = &self.owner_watch {
            h.abort();
        }
    }
}

/// A connection counted against its user; given back on drop.
struct UserSlot {
    daemon: Arc<Daemon>,
    uid: u32,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut conns = self.daemon.user_conns.lock().unwrap();
        if let Some(n) = conns.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                conns.remove(&self.uid);
            }
        }
    }
}

/// Who is on the other end of a connection, from the kernel's peer
/// credentials, never from anything the client says.
#[derive(Debug, Clone)]
struct Peer {
    pid: u32,
    uid: u32,
    admin: bool,
    /// The connecting process itself, held from connect on (SO_PEERPIDFD),
    /// so a pid recycled before the request cannot be mistaken for it.
    pidfd: Option<Arc<std::os::fd::OwnedFd>>,
}

#[derive(Default)]
struct Counters {
    spawns: u64,
    touches: u64,
    refused: u64,
    reaps: BTreeMap<&'static str, u64>,
    limit_hits: BTreeMap<String, u64>,
}

pub struct Daemon {
    config_path: PathBuf,
    policy: RwLock<Arc<Policy>>,
    admin_gid: RwLock<Option<u32>>,
    tree: Tree,
    gates: Mutex<HashMap<String, GateRt>>,
    events: Mutex<VecDeque<Event>>,
    counters: Mutex<Counters>,
    user_conns: Mutex<HashMap<u32, usize>>,
    socket: PathBuf,
    /// inotify on gates' event files; None where it could not start (then
    /// every scan reads every gate).
    watcher: Option<crate::watch::Watcher>,
    changes: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    /// cpu.stat usage of gov's whole root at the last scan.
    root_cpu: Mutex<Option<(u64, u64)>>,
    /// cpu.stat usage of each project at the last pass that read it.
    project_cpu: Mutex<HashMap<String, (u64, u64)>>,
    scans: std::sync::atomic::AtomicU64,
    may_enable_controllers: bool,
}

impl Daemon {
    fn start(config_path: PathBuf, policy: Policy, from_file: bool) -> Result<Arc<Daemon>> {
        let (tree, may_enable_controllers) = resolve_tree(&policy.global.cgroup_root)?;
        tree.ensure().with_context(|| {
            format!("creating gov's cgroup root {}", tree.root.path().display())
        })?;
        move_self_into_leaf(&tree)?;
        if may_enable_controllers {
            report_controllers(&tree, &policy);
        } else {
            tracing::warn!(
                "systemd delegated {} without DelegateSubgroup=daemon (systemd < 254): controllers stay off so that restarts keep working; limits are not applied",
                tree.root.path().display()
            );
        }
        tracing::info!(
            root = %tree.root.path().display(),
            policy = %if from_file { config_path.display().to_string() } else { "embedded defaults".into() },
            "gov daemon starting"
        );
        let admin_gid = resolve_group(policy.global.admin_group.as_deref());
        let socket = policy.global.socket.clone();
        let (watcher, changes) = match crate::watch::Watcher::start() {
            Ok((w, rx)) => (Some(w), Some(rx)),
            Err(e) => {
                tracing::warn!("no inotify ({e}): every scan reads every gate");
                (None, None)
            }
        };
        let d = Arc::new(Daemon {
            config_path,
            admin_gid: RwLock::new(admin_gid),
            policy: RwLock::new(Arc::new(policy)),
            tree,
            gates: Mutex::new(HashMap::new()),
            events: Mutex::new(VecDeque::new()),
            counters: Mutex::new(Counters::default()),
            user_conns: Mutex::new(HashMap::new()),
            socket,
            watcher,
            changes: Mutex::new(changes),
            root_cpu: Mutex::new(None),
            project_cpu: Mutex::new(HashMap::new()),
            scans: Default::default(),
            may_enable_controllers,
        });
        Ok(d)
    }

    /// One of a user's connection slots, or None when they hold all theirs.
    fn user_slot(self: &Arc<Self>, uid: u32) -> Option<UserSlot> {
        let mut conns = self.user_conns.lock().unwrap();
        let n = conns.entry(uid).or_default();
        if *n >= MAX_CONNECTIONS_PER_USER {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            daemon: self.clone(),
            uid,
        })
    }

    fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap().clone()
    }

    async fn serve(self: Arc<Self>) -> Result<i32> {
        // Handlers first: a SIGHUP or SIGTERM must never meet the default
        // action once clients can reach us.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let listener = bind_socket(&self.policy())?;
        let _cleanup = SocketGuard(self.socket.clone());
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        if let Some(addr) = self.policy().global.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics_listen {addr}"))?;
            tracing::info!(%addr, "serving metrics");
            tokio::spawn(serve_metrics(self.clone(), listener, permits.clone()));
        }
        let mut changes = self.changes.lock().unwrap().take();
        // Adopt what a previous daemon (or root's direct spawns) left.
        self.scan().await;
        let mut interval = self.policy().global.scan_interval;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(socket = %self.socket.display(), "listening");
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // EMFILE and the like: the connection stays
                            // queued, so back off rather than spin on it.
                            tracing::warn!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
                    // Root is never shut out by other users' connections; any
                    // one user gets a share of the slots, not all of them.
                    let permit = if uid == 0 { None } else { permits.clone().try_acquire_owned().ok() };
                    match self.user_slot(uid) {
                        Some(slot) if uid == 0 || permit.is_some() => {
                            let d = self.clone();
                            tokio::spawn(async move {
                                d.connection(stream).await;
                                drop((slot, permit));
                            });
                        }
                        _ => {
                            tokio::spawn(refuse_busy(stream));
                        }
                    }
                }
                _ = ticker.tick() => {
                    self.scan().await;
                    let now_interval = self.policy().global.scan_interval;
                    if now_interval != interval {
                        interval = now_interval;
                        ticker = tokio::time::interval(interval);
                    }
                }
                Some(id) = recv_change(&mut changes) => self.changed(&id),
                _ = hup.recv() => self.reload(),
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        // Gates are left running: a daemon stop or restart never kills them.
        tracing::info!("gov daemon stopping; gates keep running");
        Ok(0)
    }

    fn reload(&self) {
        match Policy::load_or_embedded(&self.config_path) {
            Ok((policy, _)) => {
                let old = self.policy();
                let (a, b) = (&old.global, &policy.global);
                if a.socket != b.socket
                    || a.socket_mode != b.socket_mode
                    || a.socket_group != b.socket_group
                    || a.cgroup_root != b.cgroup_root
                    || a.metrics_listen != b.metrics_listen
                {
                    tracing::warn!("socket, socket_mode, socket_group, cgroup_root and metrics_listen take effect at the next start");
                }
                if self.may_enable_controllers {
                    report_controllers(&self.tree, &policy);
                }
                *self.admin_gid.write().unwrap() =
                    resolve_group(policy.global.admin_group.as_deref());
                *self.policy.write().unwrap() = Arc::new(policy);
                tracing::info!(config = %self.config_path.display(), "policy reloaded");
            }
            Err(e) => tracing::error!("policy not reloaded, the running one stays: {e}"),
        }
    }

    // -- events -----------------------------------------------------------

    fn event(&self, tags: &Tags, gate: &str, kind: &str, reason: Option<&str>, freed: Option<u64>) {
        tracing::info!(
            gate,
            project = %tags.project,
            session = %tags.session,
            uid = tags.owner_uid,
            reason = reason.unwrap_or(""),
            freed_bytes = freed.unwrap_or(0),
            "{kind}"
        );
        let cap = self.policy().global.event_history.max(1);
        let mut events = self.events.lock().unwrap();
        while events.len() >= cap {
            events.pop_front();
        }
        events.push_back(Event {
            time_ms: now_ms(),
            gate: gate.to_string(),
            project: tags.project.clone(),
            session: tags.session.clone(),
            uid: tags.owner_uid,
            kind: kind.to_string(),
            reason: reason.map(str::to_string),
            freed_bytes: freed,
        });
    }

    // -- connections --------------------------------------------------------

    async fn connection(self: Arc<Self>, stream: UnixStream) {
        let peer = match self.peer_of(&stream) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("dropping a connection without peer credentials: {e}");
                return;
            }
        };
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::with_capacity(8 * 1024, read);
        let mut first = true;
        loop {
            let wait = if first {
                FIRST_REQUEST_TIMEOUT
            } else {
                IDLE_CONNECTION_TIMEOUT
            };
            first = false;
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
            let reply = match protocol::parse_request(&line) {
                Ok(req) => self.handle(&peer, req).await,
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

    fn peer_of(&self, stream: &UnixStream) -> Result<Peer> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid().context("no peer pid")? as u32;
        let uid = cred.uid();
        let admin = uid == 0
            || self.admin_gid.read().unwrap().is_some_and(|gid| {
                cred.gid() == gid
                    || proc::uid_and_groups(pid).is_some_and(|(_, groups)| groups.contains(&gid))
            });
        // SO_PEERPIDFD (Linux >= 6.5) names the process that connected;
        // older kernels get a pidfd opened now, checked again at the move.
        let pidfd = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerPidfd)
            .ok()
            .or_else(|| proc::pidfd_open(pid).ok())
            .map(Arc::new);
        Ok(Peer {
            pid,
            uid,
            admin,
            pidfd,
        })
    }

    /// The one place where a request becomes a reply; every error is a reply.
    async fn handle(self: &Arc<Self>, peer: &Peer, req: Request) -> Response {
        let result = match req {
            Request::Hello => Ok(Response::Hello {
                version: protocol::VERSION,
                pid: std::process::id(),
            }),
            Request::Spawn { .. } => self.spawn_gate(peer, req).await,
            // Reading every gate's files takes a while at thousands of
            // gates: off the thread that serves everyone else.
            Request::List => {
                let (d, peer) = (self.clone(), peer.clone());
                tokio::task::spawn_blocking(move || d.list(&peer))
                    .await
                    .map(|gates| Response::Gates { gates })
                    .map_err(internal)
            }
            Request::Show { gate } => self.show(peer, &gate).map(|gate| Response::Gate {
                gate: Box::new(gate),
            }),
            Request::Touch { gate, session } => self.touch(peer, gate, session).await,
            Request::Freeze { gate } => self.freeze(peer, &gate).await,
            Request::Thaw { gate } => self.thaw(peer, &gate).await,
            Request::Kill { gate } => self.kill(peer, &gate).await,
            Request::Pin { gate } => self.set_pinned(peer, &gate, true),
            Request::Unpin { gate } => self.set_pinned(peer, &gate, false),
            Request::Tag { gate, session } => self.tag(peer, &gate, &session),
            Request::Events { limit } => Ok(self.events(peer, limit)),
            Request::Metrics => Ok(Response::Metrics {
                text: self.metrics(Some(peer)),
            }),
        };
        result.unwrap_or_else(|(code, message)| Response::error(code, message))
    }

    // -- requests -------------------------------------------------------------

    /// Checks that `peer` may act on gate `id`, and returns its tags.
    fn authorize(&self, peer: &Peer, id: &str) -> Reply<Tags> {
        names::check_gate_id(id).map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
        let gates = self.gates.lock().unwrap();
        match gates.get(id) {
            // A gate of someone else's is "not found": its existence is
            // nobody else's business.
            Some(g) if peer.admin || g.tags.owner_uid == peer.uid => Ok(g.tags.clone()),
            _ => Err((ErrorCode::NotFound, format!("no gate {id}"))),
        }
    }

    fn list(&self, peer: &Peer) -> Vec<GateInfo> {
        let snapshot: Vec<(GateDir, Tags, InfoExtra)> = {
            let gates = self.gates.lock().unwrap();
            gates
                .values()
                .filter(|g| peer.admin || g.tags.owner_uid == peer.uid)
                .map(|g| (g.dir.clone(), g.tags.clone(), extra_of(g)))
                .collect()
        };
        snapshot
            .iter()
            .filter_map(|(dir, tags, extra)| gate::info(dir, tags, extra).ok())
            .collect()
    }

    fn show(&self, peer: &Peer, id: &str) -> Reply<GateInfo> {
        self.authorize(peer, id)?;
        let (dir, tags, extra) = {
            let gates = self.gates.lock().unwrap();
            let g = gates
                .get(id)
                .ok_or((ErrorCode::NotFound, format!("no gate {id}")))?;
            (g.dir.clone(), g.tags.clone(), extra_of(g))
        };
        gate::info(&dir, &tags, &extra).map_err(internal)
    }

    async fn spawn_gate(self: &Arc<Self>, peer: &Peer, req: Request) -> Reply<Response> {
        let Request::Spawn {
            project,
            session,
            owner_pid,
            no_owner,
            max_runtime,
            pinned,
        } = req
        else {
            unreachable!()
        };
        let bad = |e: String| (ErrorCode::BadRequest, e);
        // A relative project means nothing here; the client resolves it.
        names::normalize_project(&project, Path::new("/")).map_err(|e| bad(e.to_string()))?;
        if project.starts_with('.') {
            return Err(bad(format!(
                "project {project:?} must be absolute or a plain name"
            )));
        }
        let session = session.unwrap_or_else(names::new_session_id);
        names::check_session(&session).map_err(|e| bad(e.to_string()))?;
        let max_runtime_ms = match &max_runtime {
            Some(d) => Some(
                crate::policy::parse_duration(d)
                    .map_err(|e| bad(format!("max_runtime {d:?}: {e}")))?
                    .as_millis() as u64,
            ),
            None => None,
        };
        let owner = if no_owner {
            None
        } else if let Some(o) = owner_pid {
            // Naming someone else's process as owner would let a user tie a
            // gate's life to it; only their own processes (or root) may.
            match proc::uid_and_groups(o) {
                Some((uid, _)) if uid == peer.uid || peer.uid == 0 => Some(o),
                Some(_) => return Err((ErrorCode::Forbidden, format!("process {o} is not yours"))),
                None => return Err(bad(format!("no process {o}"))),
            }
        } else {
            proc::parent_pid(peer.pid)
        };
        let policy = self.policy();
        let settings = policy.for_project(&project);
        self.check_caps(peer, &project, &settings)?;

        // The client is the process to move: the kernel told us its pid at
        // connect, and a pidfd checked before and after the move makes sure
        // the pid was not recycled in between.
        let pidfd = peer
            .pidfd
            .clone()
            .ok_or_else(|| bad("caller is gone".into()))?;
        let tags = spawn::tags_for(
            &project,
            &session,
            peer.uid,
            peer.pid,
            owner,
            max_runtime_ms,
            pinned,
        );
        if tags.main_start.is_none() || proc::pidfd_send_signal(&pidfd, 0).is_err() {
            return Err(bad("caller exited before it could be moved".into()));
        }
        let dir =
            spawn::create_gate_for(&self.tree, &tags, &settings, peer.pid).map_err(internal)?;
        if proc::pidfd_send_signal(&pidfd, 0).is_err() {
            let _ = dir.kill_and_remove();
            return Err(bad("caller exited while it was being moved".into()));
        }
        apply_project_limits(&self.tree, &project, &settings);
        let id = dir.id.clone();
        self.event(&tags, &id, "spawned", None, None);
        self.counters.lock().unwrap().spawns += 1;
        self.adopt(dir, tags.clone(), false);
        Ok(Response::Spawned {
            gate: id,
            project,
            session,
            cgroup: self.tree.root.path().display().to_string(),
        })
    }

    /// Per-user and per-project gate caps. Evicting makes room by tearing
    /// down the least recently active idle gate of the project.
    fn check_caps(
        self: &Arc<Self>,
        peer: &Peer,
        project: &str,
        settings: &GateSettings,
    ) -> Reply<()> {
        let policy = self.policy();
        let (user_count, candidates) = {
            let gates = self.gates.lock().unwrap();
            let live = |g: &&GateRt| matches!(g.phase, Phase::Running | Phase::Suspended { .. });
            let user_count = gates
                .values()
                .filter(live)
                .filter(|g| g.tags.owner_uid == peer.uid)
                .count();
            let candidates: Vec<reaper::Candidate> = gates
                .values()
                .filter(live)
                .filter(|g| g.tags.project == project)
                .map(|g| reaper::Candidate {
                    id: g.dir.id.clone(),
                    last_active_ms: g.last_active_ms,
                    memory_bytes: 0,
                    evictable: !g.busy && !g.tags.pinned && !g.working,
                })
                .collect();
            (user_count, candidates)
        };
        if let Some(max) = policy.global.max_gates_per_user {
            if user_count >= max as usize {
                self.counters.lock().unwrap().refused += 1;
                return Err((
                    ErrorCode::Limit,
                    format!("you have {user_count} gates; max_gates_per_user is {max}"),
                ));
            }
        }
        let Some(max) = settings.max_gates else {
            return Ok(());
        };
        if candidates.len() < max as usize {
            return Ok(());
        }
        let excess = candidates.len() + 1 - max as usize;
        let victims: Vec<String> = match settings.on_limit {
            OnLimit::Refuse => vec![],
            OnLimit::EvictIdlest => {
                let mut pool = candidates.clone();
                let mut out = Vec::new();
                while out.len() < excess {
                    let v = reaper::pick_victims(&pool, 0);
                    let Some(v) = v.into_iter().next() else { break };
                    pool.retain(|c| c.id != v);
                    out.push(v);
                }
                out
            }
        };
        if victims.len() < excess {
            self.counters.lock().unwrap().refused += 1;
            return Err((
                ErrorCode::Limit,
                format!(
                    "project {project} has {} gates; max_gates is {max}{}",
                    candidates.len(),
                    if settings.on_limit == OnLimit::EvictIdlest {
                        " and none is idle enough to evict"
                    } else {
                        ""
                    }
                ),
            ));
        }
        for v in victims {
            self.begin(&v, Decision::Stop(Reason::Evicted));
        }
        Ok(())
    }

    async fn touch(
        self: &Arc<Self>,
        peer: &Peer,
        gate: Option<String>,
        session: Option<String>,
    ) -> Reply<Response> {
        let ids: Vec<String> = match (&gate, &session) {
            (Some(id), _) => {
                self.authorize(peer, id)?;
                vec![id.clone()]
            }
            (None, Some(s)) => {
                let gates = self.gates.lock().unwrap();
                gates
                    .values()
                    .filter(|g| {
                        &g.tags.session == s && (peer.admin || g.tags.owner_uid == peer.uid)
                    })
                    .map(|g| g.dir.id.clone())
                    .collect()
            }
            (None, None) => {
                return Err((
                    ErrorCode::BadRequest,
                    "touch needs a gate or a session".into(),
                ))
            }
        };
        if ids.is_empty() {
            return Err((ErrorCode::NotFound, "no gate with that session".into()));
        }
        let now = now_ms();
        let mut to_thaw = Vec::new();
        {
            let mut gates = self.gates.lock().unwrap();
            for id in &ids {
                let Some(g) = gates.get_mut(id) else { continue };
                match g.phase {
                    Phase::Stopping { .. } | Phase::Killing { .. } => {
                        return Err((ErrorCode::Reaping, format!("gate {id} is being reaped")));
                    }
                    Phase::Suspended { .. } => to_thaw.push(id.clone()),
                    Phase::Running => {}
                }
                g.last_active_ms = now;
                g.tags.last_active_ms = Some(now);
                let _ = g.dir.cgroup.write_tag("last_active", &now.to_string());
            }
        }
        self.counters.lock().unwrap().touches += ids.len() as u64;
        for id in to_thaw {
            self.resume(&id, "touch").await?;
        }
        Ok(Response::Done { gates: ids })
    }

    /// Thaws a suspended or frozen gate and makes it running again.
    async fn resume(&self, id: &str, why: &str) -> Reply<()> {
        // Running (and active) before the thaw, so a scan meanwhile cannot
        // take the still-frozen gate for one whose hold ran out.
        let (cg, tags) = {
            let mut gates = self.gates.lock().unwrap();
            let g = gates
                .get_mut(id)
                .ok_or((ErrorCode::NotFound, format!("no gate {id}")))?;
            if matches!(g.phase, Phase::Stopping { .. } | Phase::Killing { .. }) {
                return Err((ErrorCode::Reaping, format!("gate {id} is being reaped")));
            }
            g.phase = Phase::Running;
            g.tags.frozen_ms = None;
            g.tags.frozen_manual = false;
            g.last_active_ms = now_ms();
            (g.dir.cgroup.clone(), g.tags.clone())
        };
        let _ = cg.remove_tag("frozen");
        let _ = cg.remove_tag("frozen_manual");
        let c = cg.clone();
        blocking(move || c.thaw(gate::FREEZE_TIMEOUT))
            .await
            .map_err(internal)?;
        self.event(&tags, id, "thawed", Some(why), None);
        Ok(())
    }

    async fn freeze(self: &Arc<Self>, peer: &Peer, id: &str) -> Reply<Response> {
        self.authorize(peer, id)?;
        self.suspend(id, Reason::Manual).await.map_err(internal)?;
        Ok(Response::Done {
            gates: vec![id.to_string()],
        })
    }

    async fn thaw(self: &Arc<Self>, peer: &Peer, id: &str) -> Reply<Response> {
        self.authorize(peer, id)?;
        self.resume(id, "thaw").await?;
        Ok(Response::Done {
            gates: vec![id.to_string()],
        })
    }

    async fn kill(self: &Arc<Self>, peer: &Peer, id: &str) -> Reply<Response> {
        self.authorize(peer, id)?;
        {
            let mut gates = self.gates.lock().unwrap();
            if let Some(g) = gates.get_mut(id) {
                g.working = true;
            }
        }
        let result = self.try_teardown(id, Reason::Manual, true).await;
        if let Some(g) = self.gates.lock().unwrap().get_mut(id) {
            g.working = false;
        }
        result.map_err(|e| internal(format!("{e:#}")))?;
        Ok(Response::Done {
            gates: vec![id.to_string()],
        })
    }

    fn set_pinned(&self, peer: &Peer, id: &str, pinned: bool) -> Reply<Response> {
        self.authorize(peer, id)?;
        let mut gates = self.gates.lock().unwrap();
        let g = gates
            .get_mut(id)
            .ok_or((ErrorCode::NotFound, format!("no gate {id}")))?;
        let value = pinned.then(|| "1".to_string());
        Tags::write_one(&g.dir.cgroup, "pinned", value).map_err(internal)?;
        g.tags.pinned = pinned;
        Ok(Response::Done {
            gates: vec![id.to_string()],
        })
    }

    fn tag(&self, peer: &Peer, id: &str, session: &str) -> Reply<Response> {
        self.authorize(peer, id)?;
        names::check_session(session).map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
        let mut gates = self.gates.lock().unwrap();
        let g = gates
            .get_mut(id)
            .ok_or((ErrorCode::NotFound, format!("no gate {id}")))?;
        g.dir
            .cgroup
            .write_tag("session", session)
            .map_err(internal)?;
        g.tags.session = session.to_string();
        Ok(Response::Done {
            gates: vec![id.to_string()],
        })
    }

    fn events(&self, peer: &Peer, limit: Option<usize>) -> Response {
        let events = self.events.lock().unwrap();
        let mine: Vec<Event> = events
            .iter()
            .filter(|e| peer.admin || e.uid == peer.uid)
            .cloned()
            .collect();
        let skip = mine.len().saturating_sub(limit.unwrap_or(usize::MAX));
        Response::Events {
            events: mine.into_iter().skip(skip).collect(),
        }
    }

    /// Prometheus text. Through the socket a user sees gauges of their own
    /// gates only (no other project's name leaks); the scrape endpoint, which
    /// an admin chose to open, and root see all.
    fn metrics(&self, peer: Option<&Peer>) -> String {
        let visible = |g: &GateRt| peer.is_none_or(|p| p.admin || p.uid == g.tags.owner_uid);
        let gates = self.gates.lock().unwrap();
        let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
        let mut mem_by_project: BTreeMap<String, u64> = BTreeMap::new();
        for g in gates.values().filter(|g| visible(g)) {
            let state = match g.phase {
                Phase::Running => "running",
                Phase::Suspended { .. } => "suspended",
                Phase::Stopping { .. } => "stopping",
                Phase::Killing { .. } => "killing",
            };
            *by_state.entry(state).or_default() += 1;
            if let Ok(Some(m)) = g.dir.cgroup.read_memory_current() {
                *mem_by_project.entry(g.tags.project.clone()).or_default() += m;
            }
        }
        drop(gates);
        let c = self.counters.lock().unwrap();
        let mut out = String::new();
        out += "# HELP gov_gates Gates by state.\n# TYPE gov_gates gauge\n";
        for state in ["running", "suspended", "stopping", "killing"] {
            out += &format!(
                "gov_gates{{state=\"{state}\"}} {}\n",
                by_state.get(state).unwrap_or(&0)
            );
        }
        out += "# HELP gov_project_memory_bytes Memory of a project's gates (memory.current; absent where the memory controller is off).\n# TYPE gov_project_memory_bytes gauge\n";
        for (p, m) in &mem_by_project {
            out += &format!(
                "gov_project_memory_bytes{{project=\"{}\"}} {m}\n",
                prom_escape(p)
            );
        }
        out += "# HELP gov_reaps_total Gates reaped, by reason.\n# TYPE gov_reaps_total counter\n";
        for (r, n) in &c.reaps {
            out += &format!("gov_reaps_total{{reason=\"{r}\"}} {n}\n");
        }
        out += "# HELP gov_limit_hits_total Times gates hit a limit (pids.max, memory.max, oom_kill, ...).\n# TYPE gov_limit_hits_total counter\n";
        for (k, n) in &c.limit_hits {
            out += &format!("gov_limit_hits_total{{limit=\"{k}\"}} {n}\n");
        }
        out += &format!("# HELP gov_spawns_total Gates spawned.\n# TYPE gov_spawns_total counter\ngov_spawns_total {}\n", c.spawns);
        out += &format!("# HELP gov_touches_total Touches received.\n# TYPE gov_touches_total counter\ngov_touches_total {}\n", c.touches);
        out += &format!("# HELP gov_spawns_refused_total Spawns refused by a cap.\n# TYPE gov_spawns_refused_total counter\ngov_spawns_refused_total {}\n", c.refused);
        out
    }

    // -- the registry and the reaper ----------------------------------------------

    /// Starts tracking a gate: its phase from cgroupfs, and a pidfd watch on
    /// its owner.
    fn adopt(self: &Arc<Self>, dir: GateDir, tags: Tags, found: bool) {
        let now = now_ms();
        let frozen = dir
            .cgroup
            .read_cgroup_events()
            .map(|e| e.frozen)
            .unwrap_or(false);
        let phase = Phase::recover(tags.reaping.as_deref(), frozen, tags.frozen_ms, now);
        let last_active_ms = tags
            .last_active_ms
            .unwrap_or(tags.created_ms)
            .max(tags.created_ms);
        let id = dir.id.clone();
        if found {
            self.event(&tags, &id, "adopted", None, None);
        }
        let owner_watch = self.watch_owner(&id, &tags);
        if let Some(w) = &self.watcher {
            w.add(&dir);
        }
        let policy = self.policy();
        let settings = policy.for_project(&tags.project);
        self.gates.lock().unwrap().insert(
            id,
            GateRt {
                dir,
                tags,
                phase,
                last_active_ms,
                cpu_sample: None,
                busy: false,
                spared: None,
                next: None,
                working: false,
                limit_hits: BTreeMap::new(),
                populated: true,
                dirty: true,
                settings: (policy.clone(), settings),
                owner_watch,
            },
        );
    }

    /// Watches the owner through a pidfd: readable when it exits. A pid that
    /// now names another process (start time differs) counts as gone.
    fn watch_owner(self: &Arc<Self>, id: &str, tags: &Tags) -> Option<AbortHandle> {
        if tags.orphaned_ms.is_some() {
            return None;
        }
        let owner = tags.owner_pid?;
        let start = tags.owner_start;
        let same_process = move || start.is_none() || proc::start_time(owner) == start;
        // ESRCH: gone already. Any other failure (EMFILE with thousands of
        // gates) must not orphan a gate whose owner lives: fall back to
        // checking the pid and its start time at every scan interval.
        let pidfd = match proc::pidfd_open(owner) {
            Ok(fd) if same_process() => Some(Ok(fd)),
            Ok(_) => None,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
            Err(e) => Some(Err(e)),
        };
        let d = self.clone();
        let id = id.to_string();
        let task = tokio::spawn(async move {
            match pidfd {
                Some(Ok(fd)) => {
                    // SAFETY: the AsyncFd owns the OwnedFd, which stays open
                    // and unchanged until the AsyncFd drops it.
                    let registered = unsafe {
                        tokio::io::unix::AsyncFd::register_with_interest(
                            fd,
                            tokio::io::Interest::READABLE,
                        )
                    };
                    if let Ok(afd) = registered {
                        let _ = afd.readable().await;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(gate = %id, "no pidfd for owner {owner} ({e}); polling it");
                    while proc::is_alive(owner) && same_process() {
                        tokio::time::sleep(d.policy().global.scan_interval).await;
                    }
                }
                None => {}
            }
            d.orphaned(&id);
        });
        Some(task.abort_handle())
    }

    fn orphaned(&self, id: &str) {
        let now = now_ms();
        let tags = {
            let mut gates = self.gates.lock().unwrap();
            let Some(g) = gates.get_mut(id) else { return };
            g.tags.orphaned_ms = Some(now);
            let _ = g.dir.cgroup.write_tag("orphaned", &now.to_string());
            g.tags.clone()
        };
        self.event(&tags, id, "orphaned", Some("owner exited"), None);
    }

    /// A gate's event files changed: it may have emptied or hit a limit.
    fn changed(self: &Arc<Self>, id: &str) {
        let mut gates = self.gates.lock().unwrap();
        if let Some(g) = gates.get_mut(id) {
            g.dirty = true;
            if let Ok(e) = g.dir.cgroup.read_cgroup_events() {
                g.populated = e.populated;
            }
            if !g.populated && !g.working {
                drop(gates);
                self.begin(id, Decision::Remove);
            }
        }
    }

    /// One pass: adopt new gates, forget vanished ones, observe each gate
    /// and act on the reaper's decision.
    ///
    /// With inotify, a pass reads no gate's files unless they changed, and
    /// reads per-gate CPU only when gov's whole tree used enough CPU that some
    /// gate could be busy; so an idle host's scans cost almost nothing per
    /// gate. Every tenth pass (and every pass without inotify) walks and
    /// reads everything, in case a notification was lost.
    async fn scan(self: &Arc<Self>) {
        let pass = self
            .scans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let full = pass % 10 == 0 || self.watcher.is_none();
        if full {
            self.walk();
        }
        let policy = self.policy();
        let now = now_ms();
        let tree_cpu_percent = self.tree_cpu_percent(now);
        // Only when the tree as a whole is using CPU: which projects are.
        let project_cpu_percent = if tree_cpu_percent.is_some_and(|p| p < 0.5) {
            HashMap::new()
        } else {
            self.project_cpu_percents(now)
        };
        let mut decisions = Vec::new();
        let mut limit_events = Vec::new();
        {
            let mut gates = self.gates.lock().unwrap();
            for g in gates.values_mut().filter(|g| !g.working) {
                if !Arc::ptr_eq(&g.settings.0, &policy) {
                    g.settings = (policy.clone(), policy.for_project(&g.tags.project));
                }
                let settings = g.settings.1.clone();
                if g.dirty || full {
                    g.dirty = false;
                    match g.dir.cgroup.read_cgroup_events() {
                        Ok(e) => g.populated = e.populated,
                        Err(_) => continue,
                    }
                    let hits = gate::limit_hits(&g.dir.cgroup);
                    for (kind, &n) in &hits {
                        let before = g.limit_hits.get(kind).copied().unwrap_or(0);
                        if n > before {
                            limit_events.push((
                                g.tags.clone(),
                                g.dir.id.clone(),
                                kind.clone(),
                                n - before,
                            ));
                        }
                    }
                    g.limit_hits = hits;
                }
                // The tree's and the project's totals bound every gate's
                // share: below the threshold, no gate in them can be busy.
                let below = |p: Option<f64>| p.is_some_and(|p| p < settings.busy_cpu_percent);
                let project = project_cpu_percent
                    .get(&g.dir.project_key)
                    .copied()
                    .flatten();
                if full || !(below(tree_cpu_percent) || below(project)) {
                    observe_cpu(g, &settings, now);
                } else {
                    g.busy = false;
                }
                let view = View {
                    phase: g.phase,
                    populated: g.populated,
                    created_ms: g.tags.created_ms,
                    last_active_ms: g.last_active_ms,
                    orphaned_ms: g.tags.orphaned_ms,
                    max_runtime_ms: g
                        .tags
                        .max_runtime_ms
                        .or(settings.max_runtime.map(|d| d.as_millis() as u64)),
                    pinned: g.tags.pinned || settings.pinned,
                    busy: g.busy,
                    traced: false,
                };
                let mut decision = reaper::step(&view, &settings, now);
                // Only a gate about to be reaped pays for the debugger check.
                if decision.is_reap()
                    && !matches!(g.phase, Phase::Stopping { .. } | Phase::Killing { .. })
                    && is_traced(&g.dir.cgroup)
                {
                    decision = reaper::step(
                        &View {
                            traced: true,
                            ..view
                        },
                        &settings,
                        now,
                    );
                }
                match decision {
                    Decision::Keep { spared, next } => {
                        g.spared = spared;
                        g.next = next;
                    }
                    d => {
                        g.spared = None;
                        decisions.push((g.dir.id.clone(), d));
                    }
                }
            }
        }
        for (tags, id, kind, n) in limit_events {
            *self
                .counters
                .lock()
                .unwrap()
                .limit_hits
                .entry(kind.clone())
                .or_default() += n;
            self.event(
                &tags,
                &id,
                "limit",
                Some(&format!("{kind} hit {n} more time(s)")),
                None,
            );
        }
        for (id, d) in decisions {
            self.begin(&id, d);
        }
        self.enforce_memory_budget(&policy);
    }

    /// Walks gov's tree: adopts gates made elsewhere (root's direct spawns,
    /// a previous daemon) and forgets gates whose cgroup is gone.
    fn walk(self: &Arc<Self>) {
        let dirs = match self.tree.gates() {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("cannot list gates: {e}");
                return;
            }
        };
        let known: std::collections::HashSet<String> =
            self.gates.lock().unwrap().keys().cloned().collect();
        for dir in &dirs {
            if !known.contains(&dir.id) {
                // No tags yet: caught between mkdir and tagging; next pass.
                if let Ok(Some(tags)) = Tags::read(&dir.cgroup) {
                    self.adopt(dir.clone(), tags, true);
                }
            }
        }
        let present: std::collections::HashSet<&str> = dirs.iter().map(|d| d.id.as_str()).collect();
        self.gates
            .lock()
            .unwrap()
            .retain(|id, g| g.working || present.contains(id.as_str()));
    }

    /// CPU use of each project with gates since the last pass, in percent
    /// of one CPU (None for a project seen the first time).
    fn project_cpu_percents(&self, now: u64) -> HashMap<String, Option<f64>> {
        let keys: std::collections::HashSet<String> = self
            .gates
            .lock()
            .unwrap()
            .values()
            .map(|g| g.dir.project_key.clone())
            .collect();
        let mut samples = self.project_cpu.lock().unwrap();
        samples.retain(|k, _| keys.contains(k));
        keys.into_iter()
            .filter_map(|key| {
                let usage = self.tree.root.child(&key).read_cpu_usage_usec().ok()?;
                let previous = samples.insert(key.clone(), (usage, now));
                let pct = previous.and_then(|(prev_usage, prev_at)| {
                    let wall_usec = now.saturating_sub(prev_at) * 1000;
                    (wall_usec > 0)
                        .then(|| usage.saturating_sub(prev_usage) as f64 * 100.0 / wall_usec as f64)
                });
                Some((key, pct))
            })
            .collect()
    }

    /// CPU use of gov's whole tree since the last pass, in percent of one
    /// CPU; None on the first pass.
    fn tree_cpu_percent(&self, now: u64) -> Option<f64> {
        // Less the daemon's own leaf: its scans are not gate activity.
        let own = self
            .tree
            .root
            .child(DAEMON_LEAF)
            .read_cpu_usage_usec()
            .unwrap_or(0);
        let usage = self
            .tree
            .root
            .read_cpu_usage_usec()
            .ok()?
            .saturating_sub(own);
        let mut last = self.root_cpu.lock().unwrap();
        let previous = last.replace((usage, now));
        let (prev_usage, prev_at) = previous?;
        let wall_usec = now.saturating_sub(prev_at) * 1000;
        (wall_usec > 0).then(|| usage.saturating_sub(prev_usage) as f64 * 100.0 / wall_usec as f64)
    }

    /// Evicts the least recently active idle gates while all gates together
    /// use more than memory_budget.
    fn enforce_memory_budget(self: &Arc<Self>, policy: &Policy) {
        let Some(budget) = policy.global.memory_budget else {
            return;
        };
        let candidates: Vec<reaper::Candidate> = {
            let gates = self.gates.lock().unwrap();
            gates
                .values()
                .filter(|g| !g.working)
                .map(|g| {
                    let pids = g.dir.cgroup.read_procs().unwrap_or_default();
                    let settings = policy.for_project(&g.tags.project);
                    reaper::Candidate {
                        id: g.dir.id.clone(),
                        last_active_ms: g.last_active_ms,
                        memory_bytes: gate::memory_of(&g.dir.cgroup, &pids).0,
                        evictable: !g.busy
                            && !g.tags.pinned
                            && !settings.pinned
                            && g.spared.is_none(),
                    }
                })
                .collect()
        };
        let total: u64 = candidates.iter().map(|c| c.memory_bytes).sum();
        if total <= budget {
            return;
        }
        for id in reaper::pick_victims(&candidates, total - budget) {
            self.begin(&id, Decision::Stop(Reason::MemoryBudget));
        }
    }

    /// Starts performing a decision as a task of its own.
    fn begin(self: &Arc<Self>, id: &str, decision: Decision) {
        {
            let mut gates = self.gates.lock().unwrap();
            let Some(g) = gates.get_mut(id) else { return };
            if g.working {
                return;
            }
            g.working = true;
        }
        let d = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            match decision {
                Decision::Suspend(reason) => {
                    if let Err(e) = d.suspend(&id, reason).await {
                        tracing::warn!(gate = %id, "suspend failed: {e}");
                    }
                }
                Decision::Stop(reason) => d.teardown(id.clone(), reason, false).await,
                Decision::Kill(reason) => d.teardown(id.clone(), reason, true).await,
                Decision::Remove => d.remove_exited(&id).await,
                Decision::Keep { .. } => {}
            }
            if let Some(g) = d.gates.lock().unwrap().get_mut(&id) {
                g.working = false;
            }
        });
    }

    /// Freezes a gate; it keeps all its state and costs no CPU.
    async fn suspend(&self, id: &str, reason: Reason) -> Result<()> {
        let (cg, tags) = {
            let gates = self.gates.lock().unwrap();
            let g = gates.get(id).context("gate vanished")?;
            (g.dir.cgroup.clone(), g.tags.clone())
        };
        let c = cg.clone();
        blocking(move || c.freeze(gate::FREEZE_TIMEOUT)).await?;
        let now = now_ms();
        cg.write_tag("frozen", &now.to_string())?;
        // A person's freeze shows as "frozen", the reaper's as "suspended".
        Tags::write_one(
            &cg,
            "frozen_manual",
            (reason == Reason::Manual).then(|| "1".into()),
        )?;
        let settings = self.policy().for_project(&tags.project);
        let mut reclaimed = None;
        if settings.reclaim_when_frozen && cg.has_file("memory.reclaim") {
            let c = cg.clone();
            reclaimed = blocking(move || reclaim(&c)).await.ok();
        }
        {
            let mut gates = self.gates.lock().unwrap();
            if let Some(g) = gates.get_mut(id) {
                g.phase = Phase::Suspended { since_ms: now };
                g.tags.frozen_ms = Some(now);
                g.tags.frozen_manual = reason == Reason::Manual;
            }
        }
        let kind = if reason == Reason::Manual {
            "frozen"
        } else {
            "suspended"
        };
        self.event(&tags, id, kind, Some(reason.as_str()), reclaimed);
        Ok(())
    }

    /// Stop, then kill, then remove: the whole tree goes, and its main
    /// process first gets stop_signal so it can clean up after itself.
    async fn teardown(&self, id: String, reason: Reason, kill_now: bool) {
        if let Err(e) = self.try_teardown(&id, reason, kill_now).await {
            tracing::error!(gate = %id, "teardown failed, will retry: {e:#}");
        }
    }

    async fn try_teardown(&self, id: &str, reason: Reason, kill_now: bool) -> Result<()> {
        let (dir, tags, phase) = {
            let gates = self.gates.lock().unwrap();
            let g = gates.get(id).context("gate vanished")?;
            (g.dir.clone(), g.tags.clone(), g.phase)
        };
        let settings = self.policy().for_project(&tags.project);
        let cg = dir.cgroup.clone();
        let pids = cg.read_procs().unwrap_or_default();
        let freed = gate::memory_estimate(&cg, &pids);

        if !kill_now && !matches!(phase, Phase::Killing { .. }) {
            let since_ms = match phase {
                Phase::Stopping { since_ms, .. } => since_ms,
                _ => {
                    let now = now_ms();
                    let stopping = Phase::Stopping {
                        since_ms: now,
                        reason,
                    };
                    cg.write_tag("reaping", &stopping.intent_tag().unwrap())?;
                    self.set_phase(id, stopping);
                    self.event(&tags, id, "stopping", Some(reason.as_str()), None);
                    // Thaw first: a frozen process cannot handle a signal.
                    let c = cg.clone();
                    blocking(move || c.thaw(gate::FREEZE_TIMEOUT)).await?;
                    send_stop_signal(&cg, &tags, settings.stop_signal as i32);
                    now
                }
            };
            let left = (since_ms + settings.stop_grace.as_millis() as u64).saturating_sub(now_ms());
            let c = cg.clone();
            let exited = blocking(move || {
                c.wait_events("exit", Duration::from_millis(left), |e| !e.populated)
            })
            .await;
            if exited.is_ok() {
                return self.finish(&dir, &tags, reason, freed, "stopped").await;
            }
        }
        let killing = Phase::Killing { reason };
        cg.write_tag("reaping", &killing.intent_tag().unwrap())?;
        self.set_phase(id, killing);
        let c = dir.clone();
        blocking(move || {
            // Frozen and killed as one: nothing can fork or react.
            c.cgroup.kill_all(gate::KILL_TIMEOUT)
        })
        .await?;
        self.finish(&dir, &tags, reason, freed, "killed").await
    }

    async fn finish(
        &self,
        dir: &GateDir,
        tags: &Tags,
        reason: Reason,
        freed: u64,
        how: &str,
    ) -> Result<()> {
        let d = dir.clone();
        blocking(move || d.remove()).await?;
        self.gates.lock().unwrap().remove(&dir.id);
        *self
            .counters
            .lock()
            .unwrap()
            .reaps
            .entry(reason.as_str())
            .or_default() += 1;
        self.event(
            tags,
            &dir.id,
            "removed",
            Some(&format!("{} ({how})", reason.as_str())),
            Some(freed),
        );
        Ok(())
    }

    /// A gate whose processes all exited by themselves.
    async fn remove_exited(&self, id: &str) {
        let Some((dir, tags)) = self
            .gates
            .lock()
            .unwrap()
            .get(id)
            .map(|g| (g.dir.clone(), g.tags.clone()))
        else {
            return;
        };
        let d = dir.clone();
        match blocking(move || d.remove()).await {
            Ok(()) => {
                self.gates.lock().unwrap().remove(id);
                self.event(&tags, id, "exited", None, None);
            }
            // EBUSY: a process entered it between our read and the rmdir.
            Err(e) => tracing::debug!(gate = %id, "not removed yet: {e}"),
        }
    }

    fn set_phase(&self, id: &str, phase: Phase) {
        if let Some(g) = self.gates.lock().unwrap().get_mut(id) {
            g.phase = phase;
        }
    }
}

type Reply<T> = std::result::Result<T, (ErrorCode, String)>;

fn internal(e: impl std::fmt::Display) -> (ErrorCode, String) {
    (ErrorCode::Internal, e.to_string())
}

fn extra_of(g: &GateRt) -> InfoExtra {
    InfoExtra {
        last_active_ms: Some(g.last_active_ms),
        spared: g.spared.map(|s| s.as_str().to_string()),
        next: g.next.map(|(at, what)| {
            let secs = at.saturating_sub(now_ms()) / 1000;
            format!("{what} in {}", crate::cli::human_secs(secs))
        }),
    }
}

/// CPU use above busy_cpu_percent since the last sample is activity.
fn observe_cpu(g: &mut GateRt, settings: &GateSettings, now: u64) {
    let Ok(usage) = g.dir.cgroup.read_cpu_usage_usec() else {
        return;
    };
    if let Some((prev_usage, prev_at)) = g.cpu_sample {
        let wall_usec = now.saturating_sub(prev_at) * 1000;
        if wall_usec > 0 {
            let percent = usage.saturating_sub(prev_usage) as f64 * 100.0 / wall_usec as f64;
            g.busy = percent >= settings.busy_cpu_percent;
            if g.busy && matches!(g.phase, Phase::Running) {
                g.last_active_ms = now;
                g.tags.last_active_ms = Some(now);
                let _ = g.dir.cgroup.write_tag("last_active", &now.to_string());
            }
        }
    }
    g.cpu_sample = Some((usage, now));
}

fn is_traced(cg: &Cgroup) -> bool {
    cg.read_procs()
        .unwrap_or_default()
        .into_iter()
        .any(|p| proc::tracer_pid(p).is_some())
}

/// stop_signal to the gate's main process, if it is still the process we
/// started (start time); else to every member, so they can still clean up.
fn send_stop_signal(cg: &Cgroup, tags: &Tags, signal: i32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Ok(sig) = Signal::try_from(signal) else {
        return;
    };
    let main = tags
        .main_pid
        .filter(|&p| tags.main_start.is_some() && proc::start_time(p) == tags.main_start)
        .filter(|&p| cg.read_procs().unwrap_or_default().contains(&p));
    let targets = match main {
        Some(p) => vec![p],
        None => cg.read_procs().unwrap_or_default(),
    };
    for p in targets {
        let _ = kill(Pid::from_raw(p as i32), sig);
    }
}

/// memory.reclaim of everything a frozen gate holds; returns bytes freed.
fn reclaim(cg: &Cgroup) -> std::result::Result<u64, cgroup::CgroupError> {
    let before = cg.read_memory_current()?.unwrap_or(0);
    // Ask for what is left, a few rounds: the kernel may reclaim less than
    // asked (and say EAGAIN), and swapped pages leave the charge in batches.
    let mut last = before;
    for _ in 0..8 {
        let _ = cg.write_file("memory.reclaim", &last.to_string());
        let now = cg.read_memory_current()?.unwrap_or(0);
        if now + (1 << 20) > last {
            last = now;
            break;
        }
        last = now;
    }
    Ok(before.saturating_sub(last))
}

/// The next changed gate, or never when there is no watcher.
async fn recv_change(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<String>>,
) -> Option<String> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs blocking cgroupfs work (waits, kills) off the async thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, cgroup::CgroupError> + Send + 'static,
) -> std::result::Result<T, cgroup::CgroupError> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking cgroup task panicked")
}

enum LineError {
    TooLarge,
    Io,
}

/// Reads one line without ever buffering more than MAX_REQUEST_BYTES.
async fn read_line_capped(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> std::result::Result<Option<Vec<u8>>, LineError> {
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

/// A minimal HTTP endpoint for Prometheus: `GET /metrics`, one response
/// per connection. It shares the connection cap with the socket.
async fn serve_metrics(d: Arc<Daemon>, listener: tokio::net::TcpListener, permits: Arc<Semaphore>) {
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

/// The socket, owned by root with the policy's mode and group. A stale file
/// from a killed daemon is replaced; a live daemon is not.
fn bind_socket(policy: &Policy) -> Result<UnixListener> {
    let path = &policy.global.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another gov daemon is listening on {}", path.display());
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(policy.global.socket_mode),
    )
    .with_context(|| format!("chmod {}", path.display()))?;
    if let Some(group) = &policy.global.socket_group {
        let gid = resolve_group(Some(group))
            .with_context(|| format!("socket_group {group:?} does not exist"))?;
        nix::unistd::chown(path, None, Some(gid.into()))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(listener)
}

struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn resolve_group(name: Option<&str>) -> Option<u32> {
    let name = name?;
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// gov's root: the policy setting, or with "delegated" the cgroup systemd
/// gave us (Delegate=yes). With DelegateSubgroup=daemon (systemd >= 254) we
/// already start in our leaf, and the root is its parent.
///
/// The flag says whether controllers may be enabled under the root. Not when
/// systemd delegated without DelegateSubgroup: it starts the next daemon in
/// the root itself, which the kernel refuses once the root hands controllers
/// down ("no internal processes"), so a restart with live gates would fail.
fn resolve_tree(setting: &str) -> Result<(Tree, bool)> {
    let setting = std::env::var(gate::ROOT_ENV).unwrap_or_else(|_| setting.to_string());
    if setting != "delegated" {
        return Ok((Tree::resolve(&setting)?, true));
    }
    let mount = cgroup::cgroup2_mount()?;
    let own = cgroup::cgroup_of(&mount, std::process::id())?;
    let in_leaf = own.file_name().is_some_and(|n| n == DAEMON_LEAF);
    let root = if in_leaf {
        own.parent().map(Path::to_path_buf).unwrap_or(own)
    } else {
        own
    };
    Ok((Tree::at(mount, &root.display().to_string())?, in_leaf))
}

const DAEMON_LEAF: &str = "daemon";

/// The daemon lives in a leaf of its own under gov's root, never beside
/// gates: cgroup2 allows no processes in an inner node with controllers on.
fn move_self_into_leaf(tree: &Tree) -> Result<()> {
    let leaf = tree.root.child(DAEMON_LEAF);
    leaf.create_if_missing()?;
    leaf.write_procs(std::process::id())
        .with_context(|| format!("moving the daemon into {}", leaf.path().display()))?;
    Ok(())
}

/// Enables the controllers policy needs for gov's children, and says once
/// which limits cannot apply here and why.
fn report_controllers(tree: &Tree, policy: &Policy) {
    let wanted = controllers_needed(policy);
    let available = tree.root.read_controllers().unwrap_or_default();
    let (have, missing): (Vec<&str>, Vec<&str>) = wanted
        .iter()
        .partition(|c| available.iter().any(|a| a == *c));
    if !have.is_empty() {
        if let Err(e) = tree.root.write_subtree_control(&have) {
            tracing::warn!(
                "cannot enable {have:?} under {}: {e}",
                tree.root.path().display()
            );
        }
        // Projects made before a reload that needs more controllers.
        for project in tree.root.children().unwrap_or_default() {
            if names::is_project_key(&project) {
                let _ = tree.root.child(&project).write_subtree_control(&have);
            }
        }
    }
    if !missing.is_empty() {
        tracing::warn!(
            "controllers {missing:?} are not available to {}: its parent does not enable them in cgroup.subtree_control (systemd does on pure cgroup2 hosts; a hybrid layout has none in v2). Limits that need them are not applied, and memory is measured as PSS from /proc",
            tree.root.path().display()
        );
    }
}

/// memory always (kernel memory accounting for `gov ps` and the budget);
/// pids and cpu only when some limit asks for them.
fn controllers_needed(policy: &Policy) -> Vec<&'static str> {
    use crate::cgroup::Limit;
    let mut out = vec!["memory"];
    if policy.any_settings(|s| s.pids_max != Limit::Max || s.project_pids_max != Limit::Max) {
        out.push("pids");
    }
    if policy.any_settings(|s| s.cpu_max != crate::policy::CpuMax::Max) {
        out.push("cpu");
    }
    out
}

/// Project-level limits (the sum of a project's gates).
fn apply_project_limits(tree: &Tree, project: &str, s: &GateSettings) {
    let cg = tree.project(project);
    let mut limits = Vec::new();
    if let Some(v) = gate::limit_text(s.project_memory_max) {
        limits.push(("memory.max", v));
    }
    if let Some(v) = gate::limit_text(s.project_pids_max) {
        limits.push(("pids.max", v));
    }
    gate::apply_limits(&cg, &limits);
}

fn prom_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
