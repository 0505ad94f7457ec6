//! The privileged helper: one tokio loop over signals, the socket, the scan
//! timer and inotify. Each part has a module of its own:
//!
//! - `host`: gov's cgroup root and this daemon's claim on it, the daemon's
//!   own leaf, controllers, the socket;
//! - `admission`: connection slots, framing, the first-request timeout;
//! - `requests`: a request becomes a reply (peer credentials, who may act
//!   on which gate, spawn);
//! - `registry`: the gates managed, each reached through its owner;
//! - `lifecycle`: a gate's single owner, which holds the gate and performs
//!   every action on it, one at a time, through a narrow context (`Ctx`);
//! - `kernel`: what an owner asks of cgroupfs and procfs, as a trait (a
//!   fake in the owner's unit tests);
//! - `failure`: a failed request, as its reply says it;
//! - `scan`: the periodic pass that adopts gates and tells owners what it saw;
//! - `relief`: gives memory back from idle gates when the host runs short
//!   (PSI, MemAvailable) or the gates exceed memory_budget;
//! - `journal`: events, counters and the metrics text.
//!
//! Stopping the daemon never touches a gate.

mod admission;
mod failure;
mod host;
mod inputs;
mod journal;
mod kernel;
mod lifecycle;
mod mailbox;
mod registry;
mod relief;
mod requests;
mod scan;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::gate::Tree;
use crate::policy::Policy;

/// Locks a mutex whether or not a panicking action poisoned it: the state
/// under it is written whole by its one owner, never half.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `config`: the policy file given (`--config`, GOV_CONFIG), which must
/// exist; None: /etc/gov.toml, or the embedded defaults where it is absent.
pub fn run(config: Option<&Path>) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("gov daemon must run as root (it creates cgroups and moves other users' processes)");
    }
    let (policy, from_file) = load_policy(config)?;
    // Before anything is created or changed: is another daemon there?
    host::check_socket_free(&policy.global.socket)?;
    let (tree, may_enable_controllers) = host::resolve_tree(&policy.global.cgroup_root)?;
    let claim = host::RootClaim::take(&tree)?;
    host::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let daemon = Daemon::start(
            config.map(Path::to_path_buf),
            policy,
            from_file,
            tree,
            may_enable_controllers,
            claim,
        )?;
        daemon.serve().await
    })
}

pub struct Daemon {
    /// The policy file given, read again at SIGHUP; None: the default.
    config_path: Option<PathBuf>,
    policy: tokio::sync::watch::Sender<Arc<Policy>>,
    admin_gid: RwLock<Option<u32>>,
    tree: Tree,
    gates: Arc<registry::Registry>,
    /// What the gates' owners share of the daemon.
    owners: Arc<lifecycle::Ctx>,
    journal: Arc<journal::Journal>,
    admission: admission::Admission,
    socket: PathBuf,
    /// inotify on gates' event files; None where it could not start (then
    /// every scan reads every gate).
    watcher: Option<crate::watch::Watcher>,
    changes: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    cpu: Mutex<scan::CpuSamples>,
    scans: AtomicU64,
    /// The next pass reads everything (a reload changed the policy).
    full_scan_asked: AtomicBool,
    /// A memory measurement is under way (scan::measure_memory).
    measuring: AtomicBool,
    /// When a client last asked for metrics (unix ms; 0: never).
    metrics_asked_ms: AtomicU64,
    relief: relief::Relief,
    may_enable_controllers: bool,
    /// CRIU, found and checked at start; None: hibernation is off.
    criu: Option<crate::criu::Criu>,
    /// Why there is no CRIU, for replies to say.
    hibernation_off: Option<String>,
    leaf: host::Leaf,
    _claim: host::RootClaim,
}

impl Daemon {
    fn start(
        config_path: Option<PathBuf>,
        policy: Policy,
        from_file: Option<PathBuf>,
        tree: Tree,
        may_enable_controllers: bool,
        claim: host::RootClaim,
    ) -> Result<Arc<Daemon>> {
        let leaf = host::move_self_into_leaf(&tree)?;
        if may_enable_controllers {
            host::report_controllers(&tree, &policy);
        } else {
            tracing::warn!(
                "systemd delegated {} without DelegateSubgroup=daemon (systemd < 254): controllers stay off so that restarts keep working; limits are not applied",
                tree.root.path().display()
            );
        }
        tracing::info!(
            root = %tree.root.path().display(),
            policy = %policy_source(from_file.as_deref()),
            "gov daemon starting"
        );
        let (watcher, changes) = match crate::watch::Watcher::start() {
            Ok((w, rx)) => (Some(w), Some(rx)),
            Err(e) => {
                tracing::warn!("no inotify ({e}): every scan reads every gate");
                (None, None)
            }
        };
        let (criu, hibernation_off) = match host::find_criu(&policy) {
            Ok(c) => (Some(c), None),
            Err(why) => (None, Some(why)),
        };
        let journal = Arc::new(journal::Journal::new(policy.global.event_history));
        let gates = Arc::new(registry::Registry::default());
        let admin_gid = RwLock::new(host::resolve_group(policy.global.admin_group.as_deref()));
        let socket = policy.global.socket.clone();
        let (policy, policy_rx) = tokio::sync::watch::channel(Arc::new(policy));
        let owners = Arc::new(lifecycle::Ctx {
            policy: policy_rx,
            journal: journal.clone(),
            criu: criu.clone(),
            kernel: Arc::new(kernel::Cgroupfs),
            leave: {
                let gates = Arc::downgrade(&gates);
                Box::new(move |id| {
                    if let Some(gates) = gates.upgrade() {
                        gates.remove(id);
                    }
                })
            },
        });
        Ok(Arc::new(Daemon {
            criu,
            hibernation_off,
            config_path,
            admin_gid,
            journal,
            socket,
            policy,
            tree,
            gates,
            owners,
            admission: admission::Admission::default(),
            watcher,
            changes: Mutex::new(changes),
            cpu: Mutex::default(),
            scans: AtomicU64::new(0),
            full_scan_asked: AtomicBool::new(false),
            measuring: AtomicBool::new(false),
            metrics_asked_ms: AtomicU64::new(0),
            relief: relief::Relief::default(),
            may_enable_controllers,
            leaf,
            _claim: claim,
        }))
    }

    fn policy(&self) -> Arc<Policy> {
        self.policy.borrow().clone()
    }

    fn admin_gid(&self) -> Option<u32> {
        *self.admin_gid.read().unwrap_or_else(|e| e.into_inner())
    }

    fn scans(&self) -> u64 {
        self.scans.load(Ordering::Relaxed)
    }

    async fn serve(self: Arc<Self>) -> Result<i32> {
        // Handlers first: a SIGHUP or SIGTERM must never meet the default
        // action once clients can reach us.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let listener = host::bind_socket(&self.policy())?;
        let _cleanup = host::SocketGuard(self.socket.clone());
        if let Some(addr) = self.policy().global.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics_listen {addr}"))?;
            tracing::info!(%addr, "serving metrics");
            tokio::spawn(admission::serve_metrics(self.clone(), listener));
        }
        let mut changes = lock(&self.changes).take();
        // Adopt what a previous daemon (or root's direct spawns) left.
        self.scan().await;
        tokio::spawn(self.clone().relief_task());
        let mut interval = self.policy().global.scan_interval;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(socket = %self.socket.display(), "listening");
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(admission::connection(self.clone(), stream));
                    }
                    Err(e) => {
                        // EMFILE and the like: the connection stays
                        // queued, so back off rather than spin on it.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = ticker.tick() => {
                    self.scan().await;
                    let now_interval = self.policy().global.scan_interval;
                    if now_interval != interval {
                        interval = now_interval;
                        ticker = tokio::time::interval(interval);
                    }
                }
                Some(id) = recv_change(&mut changes) => {
                    self.gates.send(&id, lifecycle::Cmd::Changed);
                }
                _ = hup.recv() => self.reload(),
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        // Gates are left running: a daemon stop or restart never kills them.
        tracing::info!("gov daemon stopping; gates keep running");
        // The last step: nothing of ours runs in the leaf after this.
        self.leaf.leave();
        Ok(0)
    }

    fn reload(&self) {
        match load_policy(self.config_path.as_deref()) {
            Ok((policy, from_file)) => {
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
                    host::report_controllers(&self.tree, &policy);
                }
                *self.admin_gid.write().unwrap_or_else(|e| e.into_inner()) =
                    host::resolve_group(policy.global.admin_group.as_deref());
                self.journal.set_cap(policy.global.event_history);
                self.policy.send_replace(Arc::new(policy));
                // Every gate is judged again under the new policy.
                self.full_scan_asked.store(true, Ordering::Relaxed);
                tracing::info!(policy = %policy_source(from_file.as_deref()), "policy reloaded");
            }
            Err(e) => tracing::error!("policy not reloaded, the running one stays: {e}"),
        }
    }
}

/// The policy file (or the embedded defaults), with GOV_SOCKET in the
/// daemon's environment naming its socket, as GOV_CGROUP_ROOT names its
/// root: the same variable points clients and a daemon at each other.
/// GOV_CRIU names CRIU over criu_path (integration/build-criu's, say).
fn load_policy(config: Option<&Path>) -> Result<(Policy, Option<PathBuf>)> {
    let (mut policy, from_file) = Policy::load_given(config)?;
    if let Some(socket) = std::env::var_os(crate::client::SOCKET_ENV) {
        policy.global.socket = PathBuf::from(socket);
    }
    policy.global.apply_criu_env();
    Ok((policy, from_file))
}

/// Where the policy came from, for the log.
fn policy_source(file: Option<&Path>) -> String {
    file.map_or("embedded defaults".into(), |p| p.display().to_string())
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
