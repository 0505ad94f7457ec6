//! Putting the calling process into its gate cgroup, then exec'ing CMD in
//! place, as `systemd-run --scope` does: pid, uid, cwd, environment, tty
//! and stdio stay the caller's, and every descendant is born inside.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::cgroup::CgroupError;
use crate::gate::{self, GateDir, Tags, Tree};
use crate::limits;
use crate::policy::GateSettings;
use crate::proc;
use crate::protocol::NotApplied;

/// What the command is told about its gate.
pub const ENV_GATE: &str = "GOV_GATE";
pub const ENV_PROJECT: &str = "GOV_PROJECT";
pub const ENV_SESSION: &str = "GOV_SESSION";

/// A new gate for process `pid`, as the daemon and root's direct spawn both
/// make it: create and tag the cgroup, apply its limits and its project's,
/// then move the process, so no limit comes after its command has begun.
/// Also returns the limits policy asks for that cannot apply here.
pub fn create_gate_for(
    tree: &Tree,
    tags: &Tags,
    settings: &GateSettings,
    pid: u32,
) -> Result<(GateDir, Vec<NotApplied>), CgroupError> {
    let dir = tree.create_gate(tags)?;
    let project = tree.project(tags.owner_uid, &tags.project);
    limits::apply(&project, &limits::for_project(settings));
    let wanted = limits::for_gate(settings);
    limits::apply(&dir.cgroup, &wanted);
    let not_applied = limits::not_applied(&dir.cgroup, &wanted);
    if let Err(e) = dir.cgroup.write_procs(pid) {
        let _ = dir.remove();
        return Err(e);
    }
    Ok((dir, not_applied))
}

/// The tags of a gate that process `pid` (of user `uid`) asks for now.
pub fn tags_for(
    project: &str,
    session: &str,
    uid: u32,
    pid: u32,
    owner_pid: Option<u32>,
    max_runtime_ms: Option<u64>,
    pinned: bool,
) -> Tags {
    Tags {
        project: project.to_string(),
        session: session.to_string(),
        owner_uid: uid,
        owner_pid,
        owner_start: owner_pid.and_then(proc::start_time),
        main_pid: Some(pid),
        main_start: proc::start_time(pid),
        created_ms: gate::now_ms(),
        max_runtime_ms,
        pinned,
        last_active_ms: None,
        frozen_ms: None,
        frozen_manual: false,
        orphaned_ms: None,
        reaping: None,
        stop_on_main_exit: None,
        main_exited_ms: None,
        keeper: false,
        hibernate: None,
    }
}

/// Replaces this process with CMD, told which gate it is in. Returns only
/// if the exec failed.
pub fn exec(cmd: &[OsString], gate: &str, project: &str, session: &str) -> std::io::Error {
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .env(ENV_GATE, gate)
        .env(ENV_PROJECT, project)
        .env(ENV_SESSION, session)
        .exec()
}

/// Says why CMD could not run and exits with the status a shell would use
/// (127 not found, 126 otherwise).
pub fn exit_exec_failed(cmd: &[OsString], err: &std::io::Error) -> ! {
    eprintln!("gov: cannot run {}: {err}", cmd[0].to_string_lossy());
    let status = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    std::process::exit(status)
}
