//! The daemon's place on the host: which cgroup root is gov's, the claim
//! that makes it this daemon's alone, the daemon's own leaf, controllers,
//! and the socket.

use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokio::net::UnixListener;

use crate::cgroup;
use crate::gate::{self, Tree};
use crate::names;
use crate::policy::Policy;
use crate::protocol::{Request, Response};

/// The daemon's own leaf under gov's root.
pub const DAEMON_LEAF: &str = "daemon";
/// Tag on gov's root naming the daemon that holds it.
const OWNER_TAG: &str = "daemon_pid";

/// Every gate may hold a pidfd on its owner: raise the soft limit on open
/// files to the hard limit, as daemons that hold an fd per client do.
pub fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Refuses to go on when a live daemon answers on `socket`, naming it.
/// Runs before anything is created or changed.
pub fn check_socket_free(socket: &Path) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_err() {
        return Ok(());
    }
    let pid = match crate::client::request(socket, Request::Hello) {
        Ok(Some(Response::Hello { pid, .. })) => Some(pid),
        _ => None,
    };
    // `gov status` asks the daemon at the socket for its pid, checked
    // against the socket's peer: the one to stop, even if pids moved on.
    let by_status = match socket == Path::new(crate::policy::DEFAULT_SOCKET) {
        true => "kill $(gov status --pid)".to_string(),
        false => format!("kill $(GOV_SOCKET={} gov status --pid)", socket.display()),
    };
    bail!(
        "another gov daemon (pid {}) is listening on {}; stop it first ({}), or give this one another socket",
        pid.map_or("unknown".into(), |p| p.to_string()),
        socket.display(),
        how_to_stop(pid, by_status)
    )
}

/// The command that stops the daemon `pid`: `systemctl stop UNIT` when a
/// systemd service runs it (a plain kill would have systemd start it
/// again), else `kill`.
fn how_to_stop(pid: Option<u32>, kill: String) -> String {
    let unit = pid.and_then(|p| {
        let cgroups = std::fs::read_to_string(format!("/proc/{p}/cgroup")).ok()?;
        service_of(&cgroups)
    });
    match unit {
        Some(unit) => format!("systemctl stop {unit}"),
        None => kill,
    }
}

/// The systemd service whose delegated cgroup is gov's root, from the
/// daemon's /proc/PID/cgroup: its cgroup2 line ends in `UNIT.service/daemon`
/// (its leaf). Only there: the daemon left whatever cgroup it started in, and
/// a service above it (a CI runner's, a user's manager) is not the daemon's.
fn service_of(cgroups: &str) -> Option<String> {
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let root = path.strip_suffix(&format!("/{DAEMON_LEAF}"))?;
    let unit = root.rsplit('/').next()?;
    unit.ends_with(".service").then(|| unit.to_string())
}

/// gov's root held by this daemon alone, for as long as it runs: an
/// exclusive flock on the root's directory (the kernel drops it when the
/// daemon dies, however it dies, so a dead daemon's root is free at once).
pub struct RootClaim {
    _dir: std::fs::File,
}

impl RootClaim {
    pub fn take(tree: &Tree) -> Result<RootClaim> {
        let path = tree.root.path();
        // A root that does not exist yet is nobody's: creating it is safe.
        tree.ensure()
            .with_context(|| format!("creating gov's cgroup root {}", path.display()))?;
        let dir =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // A dead daemon's lock can outlive it for a moment in a child it
        // forked that has not exec'd yet (which shares the lock): wait for
        // that, but only while the daemon named on the root is gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            // SAFETY: flock on an fd we own; no memory is involved.
            if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
            let pid = tree.root.read_tag(OWNER_TAG).ok().flatten();
            let live = pid
                .as_deref()
                .and_then(|p| p.parse().ok())
                .is_some_and(crate::proc::is_alive);
            if live || std::time::Instant::now() >= deadline {
                let pid: Option<u32> = pid.and_then(|p| p.parse().ok());
                // Its socket may not be ours: name it by pid, not by socket.
                let kill = pid.map_or("kill $(gov status --pid)".into(), |p| format!("kill {p}"));
                bail!(
                    "another gov daemon (pid {}) manages the cgroup root {}; stop it first ({}), or give this one another cgroup_root",
                    pid.map_or("unknown".into(), |p| p.to_string()),
                    path.display(),
                    how_to_stop(pid, kill)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tree.root
            .write_tag(OWNER_TAG, &std::process::id().to_string())
            .with_context(|| format!("tagging {}", path.display()))?;
        tree.close_listings()
            .with_context(|| format!("making {} unlistable to others", path.display()))?;
        Ok(RootClaim { _dir: dir })
    }
}

/// gov's root: the policy setting, or with "delegated" the cgroup systemd
/// gave us (Delegate=yes). With DelegateSubgroup=daemon (systemd >= 254) we
/// already start in our leaf, and the root is its parent.
///
/// The flag says whether controllers may be enabled under the root. Not when
/// systemd delegated without DelegateSubgroup: it starts the next daemon in
/// the root itself, which the kernel refuses once the root hands controllers
/// down ("no internal processes"), so a restart with live gates would fail.
pub fn resolve_tree(setting: &str) -> Result<(Tree, bool)> {
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

/// The daemon lives in a leaf of its own under gov's root, never beside
/// gates: cgroup2 allows no processes in an inner node with controllers on.
/// The leaf remembers where the daemon came from, to go back at a clean stop.
pub fn move_self_into_leaf(tree: &Tree) -> Result<Leaf> {
    let leaf = tree.root.child(DAEMON_LEAF);
    let origin = cgroup::cgroup_of(&tree.mount, std::process::id())?;
    leaf.create_if_missing()?;
    leaf.write_procs(std::process::id())
        .with_context(|| format!("moving the daemon into {}", leaf.path().display()))?;
    // Started in the leaf: systemd put us there (DelegateSubgroup=daemon)
    // and made it; it is systemd's to keep.
    let origin = (origin != leaf.path()).then(|| cgroup::Cgroup::new(origin));
    Ok(Leaf { leaf, origin })
}

/// The daemon's leaf, and the cgroup it was started in.
pub struct Leaf {
    leaf: cgroup::Cgroup,
    origin: Option<cgroup::Cgroup>,
}

impl Leaf {
    /// At a clean stop: back to where the daemon started, and the leaf,
    /// empty now, removed. A process cannot rmdir the cgroup it is in, so it
    /// leaves first; it goes back only where it came from, which held it
    /// before. Where that is gone or refuses it (controllers enabled there
    /// since: no internal processes), or a child of ours is still in the
    /// leaf, the leaf stays, and the next daemon moves into it.
    pub fn leave(&self) {
        let Some(origin) = &self.origin else { return };
        if let Err(e) = origin.write_procs(std::process::id()) {
            tracing::debug!("{} stays: cannot go back: {e}", self.leaf.path().display());
            return;
        }
        if let Err(e) = self.leaf.remove() {
            tracing::debug!("{} stays: {e}", self.leaf.path().display());
        }
    }
}

/// Enables the controllers policy needs for gov's children, and says once
/// which limits cannot apply here and why.
pub fn report_controllers(tree: &Tree, policy: &Policy) {
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
    if policy.any_settings(|s| s.cpu_max != crate::cgroup::CpuMax::Max) {
        out.push("cpu");
    }
    out
}

/// The socket, owned by root with the policy's mode and group. A stale file
/// from a killed daemon is replaced (check_socket_free ran first).
///
/// The mode is given at bind (through the umask), never by a chmod of the
/// path afterwards, and the group by lchown: a chmod or chown by path
/// follows a link that someone swapped in between. The directory and every
/// one above it must be root's and writable by nobody else (or sticky, as
/// /tmp is, where only root may replace root's entries): whoever could write
/// there could put a socket of their own in front of every client.
pub fn bind_socket(policy: &Policy) -> Result<UnixListener> {
    let path = &policy.global.socket;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        check_root_only(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let mode = policy.global.socket_mode & 0o777;
    let umask = nix::sys::stat::Mode::from_bits_truncate(!mode & 0o777);
    let before = nix::sys::stat::umask(umask);
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(before);
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    if let Some(group) = &policy.global.socket_group {
        let gid = resolve_group(Some(group))
            .with_context(|| format!("socket_group {group:?} does not exist"))?;
        std::os::unix::fs::lchown(path, None, Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(listener)
}

/// Refuses a socket directory that anyone but root could change: it and
/// each directory above it must be root's, and not writable by group or
/// others unless sticky.
fn check_root_only(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    for d in dir.ancestors() {
        let m = std::fs::metadata(d).with_context(|| format!("stat {}", d.display()))?;
        let others_write = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if m.uid() != 0 || others_write {
            bail!(
                "the socket's directory {} is not root's alone ({} owns {}, mode {:o}): \
                 another user could replace the socket; choose a directory only root can write",
                dir.display(),
                crate::proc::user_name(m.uid()),
                d.display(),
                m.mode() & 0o7777
            );
        }
    }
    Ok(())
}

/// CRIU for hibernation: the policy's criu_path (a bare name: PATH), at
/// least 4.2; else why hibernation is off, said once here as a warning
/// (gates spawned with --hibernate then only suspend, and their spawn,
/// `gov show` and `gov status` say so too).
pub fn find_criu(policy: &Policy) -> Result<crate::criu::Criu, String> {
    match crate::criu::Criu::find(policy.global.criu_program()) {
        Ok(c) => {
            tracing::info!("hibernation available: {c}");
            Ok(c)
        }
        Err(e) => {
            tracing::warn!("hibernation is off: {e}");
            Err(e.to_string())
        }
    }
}

/// Removes the socket file when the daemon ends.
pub struct SocketGuard(pub PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn resolve_group(name: Option<&str>) -> Option<u32> {
    let name = name?;
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

#[cfg(test)]
mod tests {
    use super::service_of;

    #[test]
    fn the_service_to_stop_is_the_one_that_delegated_gov_s_root() {
        let unit = |text: &str| service_of(text);
        assert_eq!(
            unit("0::/system.slice/gov.service/daemon\n").as_deref(),
            Some("gov.service")
        );
        assert_eq!(
            unit("1:name=systemd:/system.slice/gov.service/daemon\n0::/system.slice/gov.service/daemon\n")
                .as_deref(),
            Some("gov.service")
        );
        // Not delegated: gov's root is its own, whatever started the daemon.
        assert_eq!(
            unit("1:name=systemd:/system.slice/ci.service\n0::/gov/daemon\n"),
            None
        );
        assert_eq!(unit("0::/system.slice/ci.service\n"), None);
        assert_eq!(unit("0::/user.slice/user-0.slice/session-4.scope\n"), None);
    }
}
