//! A request becomes a reply: who asks (peer credentials, never anything
//! the client says), whether they may, and which gate owner acts. Every
//! error is a reply; nothing here acts on a gate itself.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::UnixStream;

use crate::cgroup;
use crate::gate::{self, Tags, Tree};
use crate::names;
use crate::policy::{GateSettings, OnLimit};
use crate::proc;
use crate::protocol::{self, ErrorCode, GateInfo, GateSpec, Reason, Request, Response};
use crate::reaper;
use crate::spawn;

use super::journal::Gauges;
use super::lifecycle::{self, Cmd, Failure, Gate, Handle};
use super::Daemon;

type Reply<T> = std::result::Result<T, Failure>;

fn fail<T>(code: ErrorCode, message: impl Into<String>) -> Reply<T> {
    Err(Failure {
        code,
        message: message.into(),
    })
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: ErrorCode::Internal,
        message: e.to_string(),
    }
}

/// Who is on the other end of a connection, from the kernel's peer
/// credentials.
#[derive(Debug, Clone)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub admin: bool,
    /// The connecting process itself, held from connect on (SO_PEERPIDFD),
    /// so a pid recycled before the request cannot be mistaken for it.
    pidfd: Option<Arc<std::os::fd::OwnedFd>>,
}

impl Peer {
    fn may_see(&self, uid: u32) -> bool {
        self.admin || self.uid == uid
    }
}

impl Daemon {
    pub(super) fn peer_of(&self, stream: &UnixStream) -> Result<Peer> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid().context("no peer pid")? as u32;
        let uid = cred.uid();
        let admin = uid == 0
            || self.admin_gid().is_some_and(|gid| {
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

    /// The one place where a request becomes a reply.
    pub(super) async fn handle(self: &Arc<Self>, peer: &Peer, req: Request) -> Response {
        let done = |gates: Vec<String>| Response::Done { gates };
        let result = match req {
            Request::Hello => Ok(Response::Hello {
                version: protocol::VERSION,
                pid: std::process::id(),
                scans: self.scans(),
                criu: self.criu.as_ref().map(ToString::to_string),
                hibernation_off: self.hibernation_off.clone(),
            }),
            Request::Spawn { gate, hibernate } => self.spawn_gate(peer, gate, hibernate).await,
            Request::StartWorker { cmd } => self.start_worker(peer, cmd).await,
            Request::Adopt { pid, gate } => self.adopt(peer, pid, gate).await,
            // Reading every gate's files takes a while at thousands of
            // gates: off the thread that serves everyone else.
            Request::List => {
                let (d, peer) = (self.clone(), peer.clone());
                tokio::task::spawn_blocking(move || d.list(&peer))
                    .await
                    .map(|gates| Response::Gates { gates })
                    .map_err(internal)
            }
            Request::Show { gate } => self.show(peer, &gate).await.map(|gate| Response::Gate {
                gate: Box::new(gate),
            }),
            Request::Touch { gate, session } => self.touch(peer, gate, session).await,
            Request::Freeze { gate } => self.ask(peer, &gate, Cmd::Freeze).await.map(done),
            Request::Thaw { gate } => self.ask(peer, &gate, Cmd::Thaw).await.map(done),
            Request::Kill { gate } => self.ask(peer, &gate, Cmd::Kill).await.map(done),
            Request::Pin { gate } => self
                .ask(peer, &gate, |tx| Cmd::Pin(true, tx))
                .await
                .map(done),
            Request::Unpin { gate } => self
                .ask(peer, &gate, |tx| Cmd::Pin(false, tx))
                .await
                .map(done),
            Request::Tag { gate, session } => match names::check_session(&session) {
                Ok(()) => self
                    .ask(peer, &gate, |tx| Cmd::Tag(session, tx))
                    .await
                    .map(done),
                Err(e) => fail(ErrorCode::BadRequest, e.to_string()),
            },
            Request::Events { limit } => Ok(Response::Events {
                events: self.journal.recent(|uid| peer.may_see(uid), limit),
            }),
            Request::Metrics => Ok(Response::Metrics {
                text: self.metrics(Some(peer)),
            }),
        };
        result.unwrap_or_else(|f| Response::error(f.code, f.message))
    }

    /// The owner of gate `id`, if `peer` may act on it. A gate of someone
    /// else's is "not found": its existence is nobody else's business.
    fn authorize(&self, peer: &Peer, id: &str) -> Reply<Handle> {
        names::check_gate_id(id).map_err(|e| Failure {
            code: ErrorCode::BadRequest,
            message: e.to_string(),
        })?;
        match self.gates.get(id) {
            Some(h) if peer.may_see(h.snapshot().tags.owner_uid) => Ok(h),
            _ => fail(
                ErrorCode::NotFound,
                format!("no gate {id} (`gov ps` lists yours)"),
            ),
        }
    }

    /// One action on one gate, answered once it took effect.
    async fn ask(
        &self,
        peer: &Peer,
        id: &str,
        cmd: impl FnOnce(lifecycle::Answer) -> Cmd,
    ) -> Reply<Vec<String>> {
        let handle = self.authorize(peer, id)?;
        handle.ask(id, cmd).await?;
        Ok(vec![id.to_string()])
    }

    fn list(&self, peer: &Peer) -> Vec<GateInfo> {
        self.gates
            .snapshot()
            .iter()
            .filter(|g| peer.may_see(g.tags.owner_uid))
            .filter_map(|g| self.info(g).ok())
            .collect()
    }

    async fn show(self: &Arc<Self>, peer: &Peer, id: &str) -> Reply<GateInfo> {
        let (d, g) = (self.clone(), self.authorize(peer, id)?.snapshot());
        tokio::task::spawn_blocking(move || d.info(&g))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    /// A gate as `ps` and `show` give it: what its files say, what its owner
    /// knows, and, for a gate spawned to be hibernated, that this daemon
    /// cannot (its plan then stops it where it would have dumped it).
    fn info(&self, g: &Gate) -> Result<GateInfo, crate::cgroup::CgroupError> {
        let mut info = gate::info(&g.dir, &g.tags, &g.extra())?;
        info.hibernation_off = self.hibernation_off.clone().filter(|_| g.tags.keeper);
        Ok(info)
    }

    /// Touches by gate or by session: each gate's owner records the activity
    /// and thaws it if it was suspended; the reply comes once all of them run.
    async fn touch(
        &self,
        peer: &Peer,
        gate: Option<String>,
        session: Option<String>,
    ) -> Reply<Response> {
        let targets: Vec<(String, Handle)> = match (&gate, &session) {
            (Some(id), _) => vec![(id.clone(), self.authorize(peer, id)?)],
            (None, Some(s)) => self
                .gates
                .handles()
                .into_iter()
                .filter(|(_, h)| {
                    let g = h.snapshot();
                    &g.tags.session == s && peer.may_see(g.tags.owner_uid)
                })
                .collect(),
            (None, None) => return fail(ErrorCode::BadRequest, "touch needs a gate or a session"),
        };
        if targets.is_empty() {
            return fail(
                ErrorCode::NotFound,
                "no gate of yours has that session (`gov ps` lists yours)",
            );
        }
        self.journal.count_touches(peer.uid, targets.len() as u64);
        // All owners at once; the reply waits for the slowest.
        let pending: Vec<_> = targets
            .iter()
            .map(|(id, h)| h.begin(id, Cmd::Touch))
            .collect();
        for p in pending {
            p.wait().await?;
        }
        Ok(Response::Done {
            gates: targets.into_iter().map(|(id, _)| id).collect(),
        })
    }

    /// What a new gate will be, from a spawn or adopt request: its tags
    /// (for process `pid` of user `uid`), checked, and its settings.
    fn prepare(
        &self,
        peer: &Peer,
        pid: u32,
        uid: u32,
        spec: GateSpec,
        keeper: bool,
    ) -> Reply<(Tags, GateSettings)> {
        let bad = |e: String| Failure {
            code: ErrorCode::BadRequest,
            message: e,
        };
        let policy = self.policy();
        let asked = spawn::Asked::parse(spec, keeper, &policy.global.session_env, |var| {
            proc::environ_var(pid, var)
        })
        .map_err(|e| bad(e.to_string()))?;
        if let spawn::Owner::Process(o) = asked.owner {
            // Naming someone else's process as owner would let a user tie a
            // gate's life to it; only their own processes (or root) may.
            match proc::uid_and_groups(o) {
                Some((owner_uid, _)) if owner_uid == peer.uid || peer.uid == 0 => {}
                Some(_) => return fail(ErrorCode::Forbidden, format!("process {o} is not yours")),
                None => return Err(bad(format!("no process {o}"))),
            }
        }
        let tags = asked.tags(uid, pid);
        if tags.main_start.is_none() {
            return Err(bad(format!("process {pid} exited")));
        }
        Ok((tags, policy.for_project(&asked.project)))
    }

    async fn spawn_gate(
        self: &Arc<Self>,
        peer: &Peer,
        r: GateSpec,
        hibernate: bool,
    ) -> Reply<Response> {
        let bad = |e: &str| Failure {
            code: ErrorCode::BadRequest,
            message: e.to_string(),
        };
        // A gate's processes stay in it, root's too: a spawn from inside
        // would move the caller out, past the gate's deadline and orphan
        // rule, into a gate of its own choosing (no owner, pinned).
        let mount = cgroup::cgroup2_mount().map_err(internal)?;
        let here = cgroup::cgroup_of(&mount, peer.pid).map_err(|_| bad("caller is gone"))?;
        if let Some(part) = self.tree.part_holding(&here) {
            return fail(
                ErrorCode::Forbidden,
                format!("already in {part}: a gate's processes cannot leave it"),
            );
        }
        let (tags, settings) = self.prepare(peer, peer.pid, peer.uid, r, hibernate)?;
        self.check_caps(peer.uid, &tags.project, &settings)?;
        // The client is the process to move: the kernel told us its pid at
        // connect, and a pidfd checked before and after the move makes sure
        // the pid was not recycled in between.
        let pidfd = peer.pidfd.clone().ok_or_else(|| bad("caller is gone"))?;
        if proc::pidfd_send_signal(&pidfd, 0).is_err() {
            return Err(bad("caller exited before it could be moved"));
        }
        // The move may wait for the kernel (an RCU grace period after a quiet
        // moment): off the async thread, so a burst of spawns overlaps.
        let (tree, t, s, pid) = (self.tree.clone(), tags.clone(), settings.clone(), peer.pid);
        let (dir, not_applied) = tokio::task::spawn_blocking(move || {
            let made = spawn::create_gate_for(&tree, &t, &s, pid)?;
            if hibernate {
                // The keeper's worker lives in a child of the gate.
                made.0
                    .cgroup
                    .child(crate::keeper::WORKER_CGROUP)
                    .create_if_missing()?;
            }
            Ok::<_, crate::cgroup::CgroupError>(made)
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        if proc::pidfd_send_signal(&pidfd, 0).is_err() {
            let _ = dir.kill_and_remove();
            return Err(bad("caller exited while it was being moved"));
        }
        let id = dir.id.clone();
        self.journal
            .record(&tags, &id, protocol::EventKind::Spawned, None, None);
        self.journal.count_spawn(tags.owner_uid);
        let (project, session) = (tags.project.clone(), tags.session.clone());
        let never_orphaned = tags.owner_pid == Some(1);
        self.manage(Gate::new(dir, tags, self.policy()));
        Ok(Response::Spawned {
            gate: id,
            project,
            session,
            cgroup: self.tree.root.path().display().to_string(),
            not_applied,
            never_orphaned,
            hibernation_off: self.hibernation_off.clone().filter(|_| hibernate),
        })
    }

    /// An unprivileged keeper asks for its worker: started by the gate's
    /// owner, as the keeper's own user, in the gate's worker cgroup.
    async fn start_worker(&self, peer: &Peer, cmd: Vec<String>) -> Reply<Response> {
        // Root passes these on as arguments (after `--`) to the worker's
        // start: a command, none of it with a NUL.
        if cmd.is_empty() || cmd.iter().any(|a| a.contains('\0')) {
            return fail(
                ErrorCode::BadRequest,
                "start_worker needs a command without NUL bytes",
            );
        }
        // The gate's main process, the very one (start time), and its user.
        let start = proc::start_time(peer.pid);
        let mine = self.gates.handles().into_iter().find(|(_, h)| {
            h.peek(|g| {
                g.tags.keeper
                    && g.tags.main_pid == Some(peer.pid)
                    && g.tags.main_start == start
                    && g.tags.owner_uid == peer.uid
            })
        });
        let Some((id, handle)) = mine else {
            return fail(
                ErrorCode::Forbidden,
                "only a gate's keeper may start its worker",
            );
        };
        handle
            .ask(&id, |tx| {
                Cmd::StartWorker(cmd.into_iter().map(Into::into).collect(), tx)
            })
            .await?;
        Ok(Response::Done { gates: vec![id] })
    }

    /// A running process and its descendants into a new gate: the process
    /// first (so what it forks from then on is born inside), then its
    /// children, theirs, and so on, until a pass finds no one new.
    async fn adopt(self: &Arc<Self>, peer: &Peer, pid: u32, r: GateSpec) -> Reply<Response> {
        let forbidden = |m: String| Failure {
            code: ErrorCode::Forbidden,
            message: m,
        };
        // Held from here on: the pid cannot be recycled under us.
        let pidfd = proc::pidfd_open(pid).map_err(|_| Failure {
            code: ErrorCode::NotFound,
            message: format!("no process {pid}"),
        })?;
        if pid == 1 || pid == std::process::id() || pid == 2 || proc::parent_pid(pid) == Some(2) {
            return Err(forbidden(format!(
                "process {pid} cannot be adopted (init, a kernel thread or the daemon)"
            )));
        }
        let wholly = |p: u32, uid: u32| proc::uids(p).is_some_and(|u| u.iter().all(|&x| x == uid));
        let uid = match proc::uids(pid) {
            Some([ruid, ..]) if peer.uid == 0 => ruid,
            Some(_) if wholly(pid, peer.uid) => peer.uid,
            // Another user's process is as good as absent.
            _ => {
                return fail(ErrorCode::NotFound, format!("no process {pid} of yours"));
            }
        };
        let mount = cgroup::cgroup2_mount().map_err(internal)?;
        let from = cgroup::cgroup_of(&mount, pid).map_err(|_| Failure {
            code: ErrorCode::NotFound,
            message: format!("no process {pid}"),
        })?;
        // The caller's own cgroup, read while its pidfd shows the pid still
        // names the caller: a recycled pid must not lend its cgroup.
        let caller_cg = cgroup::cgroup_of(&mount, peer.pid).ok().filter(|_| {
            peer.pidfd
                .as_ref()
                .is_some_and(|fd| proc::pidfd_send_signal(fd, 0).is_ok())
        });
        let peer_uid = peer.uid;
        may_take_from(&self.tree, peer_uid, caller_cg.as_deref(), &from)
            .map_err(|why| forbidden(format!("process {pid} is {why}")))?;
        let (tags, settings) = self.prepare(peer, pid, uid, r, false)?;
        self.check_caps(uid, &tags.project, &settings)?;
        let (tree, t, s) = (self.tree.clone(), tags.clone(), settings.clone());
        let moved =
            tokio::task::spawn_blocking(move || -> Result<_, crate::cgroup::CgroupError> {
                let (dir, not_applied) = spawn::create_gate_for(&tree, &t, &s, pid)?;
                let (mut moved, mut skipped) = (vec![pid], Vec::new());
                for _ in 0..16 {
                    let mut new = false;
                    for p in moved.clone() {
                        for child in proc::children(p) {
                            if moved.contains(&child) || skipped.contains(&child) {
                                continue;
                            }
                            // Gone meanwhile.
                            let Ok(cg) = cgroup::cgroup_of(&mount, child) else {
                                continue;
                            };
                            // Forked after its parent moved: born inside.
                            if cg == dir.cgroup.path() {
                                moved.push(child);
                                new = true;
                                continue;
                            }
                            // The rule for the process itself holds for each
                            // descendant: one in another gate, or in a
                            // cgroup the caller could not leave, stays.
                            if (uid != 0 && !wholly(child, uid))
                                || may_take_from(&tree, peer_uid, caller_cg.as_deref(), &cg)
                                    .is_err()
                            {
                                skipped.push(child);
                                continue;
                            }
                            // ESRCH: it exited meanwhile.
                            if dir.cgroup.write_procs(child).is_ok() {
                                moved.push(child);
                                new = true;
                            }
                        }
                    }
                    if !new {
                        break;
                    }
                }
                Ok((dir, not_applied, moved, skipped))
            })
            .await
            .map_err(internal)?;
        let (dir, not_applied, moved, skipped) = moved.map_err(internal)?;
        if proc::pidfd_send_signal(&pidfd, 0).is_err() {
            let _ = dir.kill_and_remove();
            return fail(
                ErrorCode::NotFound,
                format!("process {pid} exited while it was adopted"),
            );
        }
        let id = dir.id.clone();
        self.journal.record(
            &tags,
            &id,
            protocol::EventKind::Spawned,
            Some(format!(
                "adopted process {pid} and {} more",
                moved.len() - 1
            )),
            None,
        );
        self.journal.count_spawn(tags.owner_uid);
        let (project, session) = (tags.project.clone(), tags.session.clone());
        let never_orphaned = tags.owner_pid == Some(1);
        self.manage(Gate::new(dir, tags, self.policy()));
        Ok(Response::Adopted {
            gate: id,
            project,
            session,
            moved,
            skipped,
            not_applied,
            never_orphaned,
        })
    }

    /// Per-user and per-project gate caps. A project's cap counts the
    /// spawning user's gates of it, and evicting makes room by stopping that
    /// user's least recently active idle gate of it (`reaper::cap_verdict`).
    fn check_caps(&self, uid: u32, project: &str, settings: &GateSettings) -> Reply<()> {
        let policy = self.policy();
        let mut user_count = 0;
        let mut candidates: Vec<reaper::Candidate> = Vec::new();
        self.gates.each(|_, g| {
            if g.phase.is_reaping() {
                return;
            }
            if g.tags.owner_uid == uid {
                user_count += 1;
            }
            if g.tags.project == project {
                candidates.push(reaper::Candidate {
                    id: g.id().to_string(),
                    uid: g.tags.owner_uid,
                    last_active_ms: g.last_active_ms,
                    memory_bytes: 0,
                    evictable: !g.busy && !g.pinned(),
                });
            }
        });
        if let Some(max) = policy.global.max_gates_per_user {
            if user_count >= max as usize {
                self.journal.count_refused(uid);
                return fail(
                    ErrorCode::Limit,
                    format!("you have {user_count} gates; max_gates_per_user is {max}"),
                );
            }
        }
        let Some(max) = settings.max_gates else {
            return Ok(());
        };
        match reaper::cap_verdict(&candidates, uid, max, settings.on_limit) {
            reaper::CapVerdict::Room(victims) => {
                for v in victims {
                    self.gates.send(&v, Cmd::Evict(Reason::Evicted));
                }
                Ok(())
            }
            reaper::CapVerdict::Full { gates } => {
                self.journal.count_refused(uid);
                let none_idle = if settings.on_limit == OnLimit::EvictIdlest {
                    " and none is idle enough to evict"
                } else {
                    ""
                };
                fail(
                    ErrorCode::Limit,
                    format!(
                        "you have {gates} gates in project {project}; max_gates is {max}{none_idle}"
                    ),
                )
            }
        }
    }

    /// Prometheus text. Through the socket a user sees gauges of their own
    /// gates only (no other project's name leaks) and counters of their own
    /// doing; the scrape endpoint, which an admin chose to open, and admins
    /// see all. Memory figures are the scan's, with their age: a request
    /// reads no file, however many gates and processes there are.
    pub(super) fn metrics(&self, peer: Option<&Peer>) -> String {
        let now = gate::now_ms();
        if peer.is_some() {
            self.metrics_asked_ms.store(now, Ordering::Relaxed);
        }
        let mut gauges = Gauges::default();
        self.gates.each(|_, g| {
            if peer.is_none_or(|p| p.may_see(g.tags.owner_uid)) {
                *gauges
                    .by_state
                    .entry(g.phase.state(g.populated))
                    .or_default() += 1;
                if let Some(m) = g.memory {
                    *gauges
                        .mem_by_project
                        // By (project, uid): two users' gates of one
                        // project are two projects, as their caps and
                        // cgroups are.
                        .entry((g.tags.project.clone(), g.tags.owner_uid))
                        .or_default() += m.bytes;
                    let age = now.saturating_sub(m.at_ms);
                    gauges.memory_age_ms = Some(gauges.memory_age_ms.unwrap_or(0).max(age));
                }
            }
        });
        let uid = peer.filter(|p| !p.admin).map(|p| p.uid);
        if uid.is_none() {
            gauges.memory_reads = Some(gate::memory_reads());
        }
        self.journal.metrics(uid, &gauges)
    }
}

/// Whether a process in cgroup `cg` may be moved into a new gate for a
/// caller of `caller_uid` who runs in `caller_cg`; else why not ("already in gate
/// G: ..."). Never out of gov's tree: a gate's processes stay in it. Root
/// takes from anywhere else. A user takes only from the cgroup the caller
/// itself runs in (it could `gov spawn` out of it just as well) or from one
/// whose cgroup.procs is theirs to write (delegated to them, as systemd does
/// with user@UID.service and what lies below it): the kernel lets an
/// unprivileged user move a process only between cgroups whose cgroup.procs
/// they may write, and a cgroup the user could not leave by themselves (an
/// admin's, a service's, another login session's) is not left through gov.
fn may_take_from(
    tree: &Tree,
    caller_uid: u32,
    caller_cg: Option<&Path>,
    cg: &Path,
) -> std::result::Result<(), String> {
    if let Some(part) = tree.part_holding(cg) {
        return Err(format!(
            "already in {part}: a gate's processes cannot leave it"
        ));
    }
    if caller_uid == 0 || caller_cg == Some(cg) {
        return Ok(());
    }
    let delegated = std::fs::metadata(cg.join("cgroup.procs"))
        .is_ok_and(|m| m.uid() == caller_uid && m.mode() & 0o200 != 0);
    if delegated {
        return Ok(());
    }
    let shown = cg.strip_prefix(&tree.mount).unwrap_or(cg);
    Err(format!(
        "in cgroup /{}, which you could not leave yourself",
        shown.display()
    ))
}
