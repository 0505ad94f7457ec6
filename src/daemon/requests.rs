//! A request becomes a reply: who asks (peer credentials, never anything
//! the client says), whether they may, and which gate owner acts. Every
//! error is a reply; nothing here acts on a gate itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::UnixStream;

use crate::gate::{self, Tags};
use crate::names;
use crate::policy::{GateSettings, OnLimit};
use crate::proc;
use crate::protocol::{self, ErrorCode, GateInfo, GateSpec, Reason, Request, Response};
use crate::reaper;
use crate::spawn;
use crate::{adopt, cgroup};

use super::failure::Failure;
use super::journal::Gauges;
use super::lifecycle::{Cmd, Gate, Handle};
use super::Daemon;

type Reply<T> = std::result::Result<T, Failure>;

fn fail<T>(code: ErrorCode, message: impl Into<String>) -> Reply<T> {
    Err(Failure::new(code, message))
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
                relief: Some(self.relief_status()),
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
                    .map_err(Failure::internal)
            }
            Request::Show { gate } => self.show(peer, &gate).await.map(|gate| Response::Gate {
                gate: Box::new(gate),
            }),
            Request::Touch { gate, session } => self.touch(peer, gate, session).await,
            Request::Freeze { gate } => self.ask(peer, &gate, Cmd::Freeze).await.map(done),
            Request::Thaw { gate } => self.ask(peer, &gate, Cmd::Thaw).await.map(done),
            Request::Kill { gate } => self.ask(peer, &gate, Cmd::Kill).await.map(done),
            Request::Pin { gate } => self.ask(peer, &gate, Cmd::Pin(true)).await.map(done),
            Request::Unpin { gate } => self.ask(peer, &gate, Cmd::Pin(false)).await.map(done),
            Request::Tag { gate, session } => match names::check_session(&session) {
                Ok(()) => self.ask(peer, &gate, Cmd::Tag(session)).await.map(done),
                Err(e) => Err(Failure::bad_request(e)),
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
        names::check_gate_id(id).map_err(Failure::bad_request)?;
        match self.gates.get(id) {
            Some(h) if peer.may_see(h.view().tags().owner_uid) => Ok(h),
            _ => Err(Failure::not_found(id)),
        }
    }

    /// One action on one gate, answered once it took effect.
    async fn ask(&self, peer: &Peer, id: &str, cmd: Cmd) -> Reply<Vec<String>> {
        let handle = self.authorize(peer, id)?;
        handle.ask(id, cmd).await?;
        Ok(vec![id.to_string()])
    }

    fn list(&self, peer: &Peer) -> Vec<GateInfo> {
        self.gates
            .views()
            .iter()
            .filter(|g| peer.may_see(g.tags().owner_uid))
            .filter_map(|g| self.info(g).ok())
            .collect()
    }

    async fn show(self: &Arc<Self>, peer: &Peer, id: &str) -> Reply<GateInfo> {
        let (d, g) = (self.clone(), self.authorize(peer, id)?.view());
        tokio::task::spawn_blocking(move || d.info(&g))
            .await
            .map_err(Failure::internal)?
            .map_err(Failure::internal)
    }

    /// A gate as `ps` and `show` give it: what its files say, what its owner
    /// knows, and, for a gate spawned to be hibernated, that this daemon
    /// cannot (its plan then stops it where it would have dumped it).
    fn info(&self, g: &Gate) -> Result<GateInfo, crate::cgroup::CgroupError> {
        let mut info = gate::info(&g.dir, g.tags(), &g.extra())?;
        info.hibernation_off = self.hibernation_off.clone().filter(|_| g.tags().keeper);
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
                    let g = h.view();
                    &g.tags().session == s && peer.may_see(g.tags().owner_uid)
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
        let bad = Failure::bad_request;
        let policy = self.policy();
        let asked = spawn::Asked::parse(spec, keeper, &policy.global.session_env, |var| {
            proc::environ_var(pid, var)
        })?;
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
        let bad = Failure::bad_request;
        // A gate's processes stay in it, root's too: a spawn from inside
        // would move the caller out, past the gate's deadline and orphan
        // rule, into a gate of its own choosing (no owner, pinned).
        let here =
            cgroup::cgroup_of(&self.tree.mount, peer.pid).map_err(|_| bad("caller is gone"))?;
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
        let (tree, t, pid) = (self.tree.clone(), tags.clone(), peer.pid);
        let (dir, not_applied) =
            tokio::task::spawn_blocking(move || spawn::create_gate_for(&tree, &t, &settings, pid))
                .await
                .map_err(Failure::internal)?
                .map_err(Failure::internal)?;
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
        self.manage(Gate::found(dir, tags, &*self.owners.kernel, self.policy()));
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
            let g = h.view();
            let t = g.tags();
            t.keeper
                && t.main_pid == Some(peer.pid)
                && t.main_start == start
                && t.owner_uid == peer.uid
        });
        let Some((id, handle)) = mine else {
            return fail(
                ErrorCode::Forbidden,
                "only a gate's keeper may start its worker",
            );
        };
        handle
            .ask(
                &id,
                Cmd::StartWorker(cmd.into_iter().map(Into::into).collect()),
            )
            .await?;
        Ok(Response::Done { gates: vec![id] })
    }

    /// A running process and its descendants into a new gate, if `peer`
    /// may take them (`adopt`).
    async fn adopt(self: &Arc<Self>, peer: &Peer, pid: u32, r: GateSpec) -> Reply<Response> {
        // Held from here on: the pid cannot be recycled under us.
        let pidfd = proc::pidfd_open(pid)
            .map_err(|_| Failure::new(ErrorCode::NotFound, format!("no process {pid}")))?;
        let caller = adopt::Caller::new(&self.tree, peer.uid, peer.pid, peer.pidfd.as_deref());
        let uid = adopt::check(&self.tree, &caller, pid)?;
        let (tags, settings) = self.prepare(peer, pid, uid, r, false)?;
        self.check_caps(uid, &tags.project, &settings)?;
        let (tree, t) = (self.tree.clone(), tags.clone());
        let adopted = tokio::task::spawn_blocking(move || {
            adopt::into_gate(&tree, &t, &settings, &caller, pid)
        })
        .await
        .map_err(Failure::internal)?
        .map_err(Failure::internal)?;
        if proc::pidfd_send_signal(&pidfd, 0).is_err() {
            let _ = adopted.dir.kill_and_remove();
            return fail(
                ErrorCode::NotFound,
                format!("process {pid} exited while it was adopted"),
            );
        }
        let id = adopted.dir.id.clone();
        self.journal.record(
            &tags,
            &id,
            protocol::EventKind::Spawned,
            Some(format!(
                "adopted process {pid} and {} more",
                adopted.moved.len() - 1
            )),
            None,
        );
        self.journal.count_spawn(tags.owner_uid);
        let (project, session) = (tags.project.clone(), tags.session.clone());
        let never_orphaned = tags.owner_pid == Some(1);
        self.manage(Gate::found(
            adopted.dir,
            tags,
            &*self.owners.kernel,
            self.policy(),
        ));
        Ok(Response::Adopted {
            gate: id,
            project,
            session,
            moved: adopted.moved,
            skipped: adopted.skipped,
            not_applied: adopted.not_applied,
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
            if g.phase().is_reaping() {
                return;
            }
            if g.tags().owner_uid == uid {
                user_count += 1;
            }
            if g.tags().project == project {
                candidates.push(g.candidate(0));
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
        self.gates.each(|h, g| {
            if peer.is_none_or(|p| p.may_see(g.tags().owner_uid)) {
                *gauges
                    .by_state
                    .entry(g.phase().state(g.populated))
                    .or_default() += 1;
                if let Some(m) = h.memory() {
                    *gauges
                        .mem_by_project
                        // By (project, uid): two users' gates of one
                        // project are two projects, as their caps and
                        // cgroups are.
                        .entry((g.tags().project.clone(), g.tags().owner_uid))
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
        gauges.relief = Some(self.relief_status());
        self.journal.metrics(uid, &gauges)
    }
}
