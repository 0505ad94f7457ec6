//! Putting the calling process into its gate cgroup, then exec'ing CMD in
//! place, as `systemd-run --scope` does: pid, uid, cwd, environment, tty
//! and stdio stay the caller's, and every descendant is born inside.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::cgroup::CgroupError;
use crate::gate::{self, GateDir, Tags, Tree};
use crate::limits;
use crate::names::{self, NameError};
use crate::policy::GateSettings;
use crate::protocol::{GateSpec, NotApplied};
use crate::{keeper, proc, units};

/// What the command is told about its gate.
pub const ENV_GATE: &str = "GOV_GATE";
pub const ENV_PROJECT: &str = "GOV_PROJECT";
pub const ENV_SESSION: &str = "GOV_SESSION";

/// A new gate for process `pid`, as the daemon and root's direct spawn both
/// make it (adopt too): create and tag the cgroup, apply its limits and its
/// project's, make a keeper's worker cgroup, then move the process, so no
/// limit comes after its command has begun.
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
    if let Err(e) = enter(&dir, tags, pid) {
        let _ = dir.remove();
        return Err(e);
    }
    Ok((dir, not_applied))
}

/// Moves process `pid` into its new gate; a keeper's gate first gets the
/// child cgroup its worker will live in.
fn enter(dir: &GateDir, tags: &Tags, pid: u32) -> Result<(), CgroupError> {
    if tags.keeper {
        dir.cgroup
            .child(keeper::WORKER_CGROUP)
            .create_if_missing()?;
    }
    dir.cgroup.write_procs(pid)
}

/// Whose exit orphans a new gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Nobody: the gate is never orphaned.
    Nobody,
    /// This process (the daemon lets a user name only their own).
    Process(u32),
    /// The parent of the gate's main process, the default.
    Parent,
}

/// A spawn or adopt request, checked: what the daemon and root's direct
/// spawn both make a gate of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub project: String,
    pub session: String,
    pub owner: Owner,
    pub max_runtime_ms: Option<u64>,
    pub pinned: bool,
    pub stop_on_main_exit: Option<bool>,
    /// The main process is a keeper, so the gate can be hibernated.
    pub keeper: bool,
}

/// Why a spawn or adopt request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("project {0:?} must be absolute or a plain name")]
    RelativeProject(String),
    #[error("max_runtime {0:?}: {1}")]
    MaxRuntime(String, String),
}

impl Asked {
    /// Checks `spec`. Without a session, the gate takes the first valid one
    /// of the `session_env` variables in `env` (the main process's
    /// environment: what the agent that started it passed on), else a new one.
    pub fn parse(
        spec: GateSpec,
        keeper: bool,
        session_env: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Asked, BadRequest> {
        // Checked as text: a relative path means nothing here (the client
        // makes it absolute against its own cwd), so none is resolved.
        names::normalize_project(&spec.project, Path::new("/"))?;
        if spec.project.starts_with('.') {
            return Err(BadRequest::RelativeProject(spec.project));
        }
        let session = match spec.session {
            Some(s) => s,
            None => session_env
                .iter()
                .filter_map(|var| env(var))
                .find(|s| names::check_session(s).is_ok())
                .unwrap_or_else(names::new_session_id),
        };
        names::check_session(&session)?;
        let max_runtime_ms = match spec.max_runtime {
            Some(text) => Some(
                units::parse_duration(&text)
                    .and_then(|d| u64::try_from(d.as_millis()).map_err(|e| e.to_string()))
                    .map_err(|e| BadRequest::MaxRuntime(text, e))?,
            ),
            None => None,
        };
        let owner = match (spec.no_owner, spec.owner_pid) {
            (true, _) => Owner::Nobody,
            (false, Some(pid)) => Owner::Process(pid),
            (false, None) => Owner::Parent,
        };
        Ok(Asked {
            project: spec.project,
            session,
            owner,
            max_runtime_ms,
            pinned: spec.pinned,
            stop_on_main_exit: spec.stop_on_main_exit,
            keeper,
        })
    }

    /// The tags of the gate for process `pid` of user `uid`, as of now.
    pub fn tags(&self, uid: u32, pid: u32) -> Tags {
        let owner_pid = match self.owner {
            Owner::Nobody => None,
            Owner::Process(owner) => Some(owner),
            Owner::Parent => proc::parent_pid(pid),
        };
        Tags {
            project: self.project.clone(),
            session: self.session.clone(),
            owner_uid: uid,
            owner_pid,
            owner_start: owner_pid.and_then(proc::start_time),
            main_pid: Some(pid),
            main_start: proc::start_time(pid),
            created_ms: gate::now_ms(),
            max_runtime_ms: self.max_runtime_ms,
            pinned: self.pinned,
            stop_on_main_exit: self.stop_on_main_exit,
            keeper: self.keeper,
            stdin_ino: crate::wake::stdin_ino(pid),
            ..Tags::default()
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(project: &str) -> GateSpec {
        GateSpec {
            project: project.into(),
            session: Some("s1".into()),
            owner_pid: None,
            no_owner: false,
            max_runtime: None,
            pinned: false,
            stop_on_main_exit: None,
        }
    }

    fn parse(spec: GateSpec) -> Result<Asked, BadRequest> {
        Asked::parse(spec, false, &[], |_| None)
    }

    #[test]
    fn a_project_is_absolute_or_a_plain_name() {
        for good in ["/home/ann/src/MyPkg", "MyPkg", "my pkg"] {
            assert_eq!(parse(spec(good)).unwrap().project, good);
        }
        for relative in [".", "..", "./x", "../x", ".hidden"] {
            assert_eq!(
                parse(spec(relative)),
                Err(BadRequest::RelativeProject(relative.into()))
            );
        }
        for bad in ["", "a\nb", &"x".repeat(5000)] {
            assert!(
                matches!(parse(spec(bad)), Err(BadRequest::Name(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_session_is_given_else_from_the_environment_else_new() {
        let vars = ["AGENT_SESSION".to_string(), "HOST_SESSION".to_string()];
        let env = |var: &str| match var {
            "AGENT_SESSION" => Some("not valid!".to_string()),
            "HOST_SESSION" => Some("3fa2c1d0".to_string()),
            _ => None,
        };
        let given = Asked::parse(spec("p"), false, &vars, env).unwrap();
        assert_eq!(given.session, "s1");
        let unset = GateSpec {
            session: None,
            ..spec("p")
        };
        // The first valid one of the variables policy names.
        let inherited = Asked::parse(unset.clone(), false, &vars, env).unwrap();
        assert_eq!(inherited.session, "3fa2c1d0");
        let new = Asked::parse(unset, false, &vars, |_| None).unwrap();
        assert!(names::check_session(&new.session).is_ok());
        let bad = GateSpec {
            session: Some("-x".into()),
            ..spec("p")
        };
        assert!(matches!(parse(bad), Err(BadRequest::Name(_))));
    }

    #[test]
    fn max_runtime_is_a_duration_that_fits() {
        let with = |d: &str| {
            parse(GateSpec {
                max_runtime: Some(d.into()),
                ..spec("p")
            })
        };
        assert_eq!(parse(spec("p")).unwrap().max_runtime_ms, None);
        assert_eq!(with("1h30m").unwrap().max_runtime_ms, Some(5_400_000));
        for bad in ["soon", "-5m", "30", "", "99999999999999999999d", "73001d"] {
            let err = with(bad).unwrap_err();
            assert!(matches!(&err, BadRequest::MaxRuntime(text, _) if text == bad));
            assert!(err.to_string().starts_with("max_runtime "), "{err}");
        }
    }

    #[test]
    fn no_owner_wins_over_an_owner_and_the_parent_is_the_default() {
        let owned = |owner_pid, no_owner| {
            parse(GateSpec {
                owner_pid,
                no_owner,
                ..spec("p")
            })
            .unwrap()
            .owner
        };
        assert_eq!(owned(None, false), Owner::Parent);
        assert_eq!(owned(Some(42), false), Owner::Process(42));
        assert_eq!(owned(Some(42), true), Owner::Nobody);
        assert_eq!(owned(None, true), Owner::Nobody);
    }

    #[test]
    fn the_tags_say_what_was_asked() {
        let asked = Asked::parse(
            GateSpec {
                max_runtime: Some("2s".into()),
                pinned: true,
                stop_on_main_exit: Some(true),
                no_owner: true,
                ..spec("/srv/p")
            },
            true,
            &[],
            |_| None,
        )
        .unwrap();
        let me = std::process::id();
        let tags = asked.tags(1000, me);
        assert_eq!(
            (tags.project.as_str(), tags.session.as_str(), tags.owner_uid),
            ("/srv/p", "s1", 1000)
        );
        assert_eq!((tags.main_pid, tags.owner_pid), (Some(me), None));
        assert!(tags.main_start.is_some());
        assert_eq!(tags.max_runtime_ms, Some(2000));
        assert!(tags.pinned && tags.keeper);
        assert_eq!(tags.stop_on_main_exit, Some(true));
        let parent = Asked {
            owner: Owner::Parent,
            ..asked
        };
        assert_eq!(parent.tags(1000, me).owner_pid, proc::parent_pid(me));
    }
}
