//! Shell completion as a person meets it: real bash sources the script the
//! package installs, is given the words of `gov touch g3f<TAB>` as bash gives
//! them to a completion function, and must offer the caller's own gate ids
//! and sessions from a real daemon; with no daemon, or one that never
//! answers, it must offer nothing, print nothing and not hang. Host tests:
//! root, cgroup2 and bash (the VM has busybox only).

use gov_testkit as kit;

use std::fs;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gov::cli::complete::{registration, DEADLINE};
use kit::{gov_for_others, text, TestRoot, NOBODY};

/// What these tests need that only a host has (the VM has busybox).
const HOST_NEEDS: &str = "bash";

/// What bash does at a TAB, run by bash: tests/fixtures/bash-complete
/// (packaging/smoke-deb runs it on the installed script). Given to `bash -c`,
/// so user nobody needs no way into the source tree.
const BASH_COMPLETE: &str = include_str!("fixtures/bash-complete");

/// The bash script packaging/gen-assets.rs installs, written into the test's
/// directory next to a `gov` (the binary under test) for its PATH.
struct Shell {
    script: PathBuf,
    bin_dir: PathBuf,
}

impl Shell {
    fn new(root: &TestRoot) -> Shell {
        let script = root.dir.path().join("gov.bash");
        let packaged = registration("bash").expect("bash is supported");
        // What `gov` itself prints for `source <(GOV_COMPLETE=bash gov)`.
        let printed = root
            .gov()
            .env("GOV_COMPLETE", "bash")
            .output()
            .expect("gov runs");
        assert!(printed.status.success(), "{}", text(&printed.stderr));
        assert_eq!(
            text(&printed.stdout),
            text(&packaged),
            "gov prints another script than the package installs"
        );
        fs::write(&script, packaged).unwrap();
        let bin_dir = root.dir.path().join("bin");
        fs::create_dir_all(&bin_dir).unwrap();
        // gov_for_others: a binary user nobody may run too.
        std::os::unix::fs::symlink(gov_for_others(root), bin_dir.join("gov")).unwrap();
        Shell { script, bin_dir }
    }

    /// bash completing `words` (the last is the word at the cursor, "" for
    /// a TAB after a space), in `root`'s environment; as `uid` if given.
    /// Returns COMPREPLY, bash's stderr and the time it took.
    fn complete(
        &self,
        root: &TestRoot,
        uid: Option<u32>,
        words: &[&str],
    ) -> (Vec<String>, String, Duration) {
        let path = std::env::join_paths(
            std::iter::once(self.bin_dir.clone())
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
        )
        .unwrap();
        let mut c = Command::new("bash");
        c.args([
            "--norc",
            "--noprofile",
            "-c",
            BASH_COMPLETE,
            "bash-complete",
        ])
        .arg(&self.script)
        .args(words)
        .env_clear()
        .env("PATH", path)
        .env("GOV_SOCKET", &root.socket)
        .env("GOV_CGROUP_ROOT", &root.path)
        .current_dir(root.dir.path())
        .stdin(Stdio::null());
        if let Some(uid) = uid {
            c.uid(uid).gid(uid);
        }
        let start = Instant::now();
        let out = c.output().expect("bash runs");
        let took = start.elapsed();
        assert!(out.status.success(), "bash: {}", text(&out.stderr));
        let reply = text(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        (reply, text(&out.stderr), took)
    }
}

#[test]
fn a_tab_offers_the_callers_gate_ids_sessions_and_projects_from_the_daemon() {
    if kit::host_only(
        "a_tab_offers_the_callers_gate_ids_sessions_and_projects_from_the_daemon",
        HOST_NEEDS,
    ) {
        return;
    }
    let root = TestRoot::new();
    let _d = root.daemon("");
    let shell = Shell::new(&root);
    let project = root.dir.path().join("proj").display().to_string();
    let (_g, id) = root.sleeping_gate(root.gov(), &project, Some("sess-tab-1"));
    let complete = |words: &[&str]| {
        let (reply, err, _) = shell.complete(&root, None, words);
        assert!(err.is_empty(), "{words:?} printed: {err}");
        reply
    };

    // After a space: the gate among the options.
    let reply = complete(&["gov", "touch", ""]);
    assert!(reply.contains(&id), "{reply:?}");
    // Wherever a GATE goes, a prefix of it completes to it alone.
    for cmd in [
        "touch", "kill", "show", "freeze", "thaw", "pin", "unpin", "tag",
    ] {
        assert_eq!(
            complete(&["gov", cmd, &id[..3]]),
            [id.as_str()],
            "gov {cmd}"
        );
    }
    // After options too: `gov show --json g3f<TAB>`.
    assert_eq!(
        complete(&["gov", "show", "--json", &id[..3]]),
        [id.as_str()]
    );
    // Not where no GATE goes.
    assert!(!complete(&["gov", "ps", ""]).contains(&id));

    // --session and -s: the caller's sessions.
    for words in [
        &["gov", "touch", "--session", ""][..],
        &["gov", "kill", "-s", "sess-t"],
        &["gov", "ps", "--session", "sess-"],
    ] {
        assert_eq!(complete(words), ["sess-tab-1"], "{words:?}");
    }
    // gov ps --project: the projects of the caller's gates.
    assert_eq!(
        complete(&["gov", "ps", "--project", ""]),
        [project.as_str()]
    );
    // spawn's --project and CMD complete as paths, as the static scripts did.
    fs::create_dir(&project).unwrap();
    let partial = &project[..project.len() - 2];
    assert_eq!(
        complete(&["gov", "spawn", "-p", partial]),
        [project.clone() + "/"]
    );
    assert_eq!(
        complete(&["gov", "spawn", "-p", "P", "--", partial]),
        [project.clone() + "/"]
    );
    // Subcommands and options still come from the clap definitions.
    assert_eq!(complete(&["gov", "tou"]), ["touch"]);
    assert_eq!(complete(&["gov", "ps", "--js"]), ["--json"]);
}

/// The daemon lists each user's own gates only; completion shows no more.
#[test]
fn a_tab_offers_only_the_callers_own_gates() {
    if kit::host_only("a_tab_offers_only_the_callers_own_gates", HOST_NEEDS) {
        return;
    }
    let root = TestRoot::new();
    let _d = root.daemon("");
    let shell = Shell::new(&root);
    let (_r, roots) = root.sleeping_gate(root.gov(), "p", Some("sess-root"));
    let (_n, nobodys) = root.sleeping_gate(kit::gov_as_nobody(&root), "p", Some("sess-nobody"));

    let (reply, err, _) = shell.complete(&root, Some(NOBODY), &["gov", "kill", "g"]);
    assert!(err.is_empty(), "{err}");
    assert_eq!(reply, [nobodys.as_str()]);
    let (reply, _, _) = shell.complete(&root, Some(NOBODY), &["gov", "kill", "-s", ""]);
    assert_eq!(reply, ["sess-nobody"]);
    // Root sees every gate, as in `gov ps`.
    let (mut reply, _, _) = shell.complete(&root, None, &["gov", "kill", "g"]);
    reply.sort();
    let mut both = vec![roots, nobodys];
    both.sort();
    assert_eq!(reply, both);
}

/// No daemon: nothing offered, nothing printed into the line being edited,
/// and no waiting. Root, as `gov ps` does, still lists the tree directly.
#[test]
fn without_a_daemon_a_tab_offers_nothing_says_nothing_and_does_not_wait() {
    if kit::host_only(
        "without_a_daemon_a_tab_offers_nothing_says_nothing_and_does_not_wait",
        HOST_NEEDS,
    ) {
        return;
    }
    let root = TestRoot::new();
    let shell = Shell::new(&root);
    for uid in [Some(NOBODY), None] {
        for words in [
            &["gov", "touch", ""][..],
            &["gov", "touch", "g"],
            &["gov", "kill", "--session", ""],
        ] {
            let (reply, err, took) = shell.complete(&root, uid, words);
            let gates: Vec<&String> = reply.iter().filter(|w| !w.starts_with('-')).collect();
            assert!(gates.is_empty(), "{uid:?} {words:?}: {reply:?}");
            assert!(err.is_empty(), "{uid:?} {words:?} printed: {err}");
            assert!(
                took < DEADLINE,
                "{uid:?} {words:?} took {took:?}: it waited, with nothing to wait for"
            );
        }
    }
    // A gate root made without a daemon is on cgroupfs: root's TAB finds it.
    let (_g, id) = root.sleeping_gate(root.gov(), "p", Some("sess-direct"));
    let (reply, err, _) = shell.complete(&root, None, &["gov", "kill", "g"]);
    assert_eq!(reply, [id], "{err}");
    let (reply, _, _) = shell.complete(&root, Some(NOBODY), &["gov", "kill", "g"]);
    assert!(reply.is_empty(), "{reply:?}");
}

/// A socket that accepts connections and never answers (a stopped daemon):
/// the TAB gives up at the deadline, silently, instead of hanging the shell.
#[test]
fn a_daemon_that_never_answers_costs_a_tab_the_deadline_not_a_hang() {
    if kit::host_only(
        "a_daemon_that_never_answers_costs_a_tab_the_deadline_not_a_hang",
        HOST_NEEDS,
    ) {
        return;
    }
    let root = TestRoot::new();
    let shell = Shell::new(&root);
    let listener = UnixListener::bind(&root.socket).unwrap();
    fs::set_permissions(
        &root.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    for uid in [None, Some(NOBODY)] {
        let (reply, err, took) = shell.complete(&root, uid, &["gov", "touch", "g"]);
        assert!(reply.is_empty(), "{reply:?}");
        assert!(err.is_empty(), "printed: {err}");
        assert!(
            took >= DEADLINE && took < DEADLINE + Duration::from_secs(5),
            "{uid:?}: took {took:?}"
        );
    }
    drop(listener);
}
