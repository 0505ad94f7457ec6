//! `gov check-config` as a person runs it: no /etc/gov.toml means the embedded
//! defaults (exit 0), a missing FILE given is an error, `--print` writes the
//! effective policy as gov.toml text that loads back to the same policy, and a bad file lists every problem. No daemon and no
//! cgroup: only files in a temp dir of the test's own.

use gov_testkit as kit;

use std::path::Path;
use std::process::{Command, Output};

use gov::policy::{Policy, DEFAULT_PATH};

fn check_config(args: &[&str]) -> Output {
    Command::new(kit::gov_bin())
        .arg("check-config")
        .args(args)
        .env_remove("GOV_LOG")
        .env_remove("GOV_CRIU")
        .output()
        .expect("gov runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const POLICY: &str = r#"
socket = "/run/gov-check/gov.sock"
memory_budget = "8G"
session_env = ["MY_SESSION"]

[defaults]
idle_timeout = "45m"
stop_signal = "SIGINT"
max_gates = 2

[[project]]
name = "models"
path = "/home/*/src/Big*"
max_gates = 0
on_main_exit = "stop"

[[project]]
path = "/srv/ci/**"
max_runtime = "2h"
cpu_max = "150%"
"#;

/// A FILE given must exist: a mistyped path is an error naming it, never the
/// embedded defaults in silence (only the default /etc/gov.toml may be absent).
#[test]
fn a_file_given_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gov.toml");
    for args in [vec![], vec!["--print"]] {
        let mut args = args;
        args.push(missing.to_str().unwrap());
        let out = check_config(&args);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(stdout(&out).is_empty(), "{}", stdout(&out));
        let err = stderr(&out);
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("no such file"), "{err}");
    }
}

/// Without FILE it checks /etc/gov.toml, whatever this host has there.
#[test]
fn no_argument_checks_the_default_path() {
    let out = check_config(&[]);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains(DEFAULT_PATH), "{said}");
    if !Path::new(DEFAULT_PATH).exists() {
        assert!(out.status.success(), "{said}");
        assert_eq!(
            stdout(&out).lines().next(),
            Some("no file at /etc/gov.toml: the embedded defaults apply")
        );
        // --print of no file is the embedded policy, loadable as it is.
        let out = check_config(&["--print"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let printed = stdout(&out);
        assert!(printed.starts_with("# no file at "), "{printed}");
        let back = Policy::parse(&printed, Path::new("printed")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, Policy::embedded());
    }
}

#[test]
fn print_writes_the_whole_policy_and_it_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gov.toml");
    std::fs::write(&file, POLICY).unwrap();
    let out = check_config(&["--print", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    assert_eq!(
        printed.lines().next(),
        Some(format!("# {}: ok", file.display()).as_str())
    );
    // Global keys, [defaults] and each rule are all there.
    for line in [
        "socket = \"/run/gov-check/gov.sock\"",
        "scan_interval = \"5s\"",
        "memory_budget = 8589934592",
        "memory_pressure = \"10%\"",
        "memory_available_min = \"5%\"",
        "pressure_stop = false",
        "# socket_group is not set",
        "[defaults]",
        "idle_timeout = \"45m\"",
        "stop_signal = \"SIGINT\"",
        "name = \"models\"",
        "max_gates = 0",
        "on_main_exit = \"stop\"",
        "path = \"/srv/ci/**\"",
        "cpu_max = \"150%\"",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "lacks {line:?}:\n{printed}"
        );
    }
    assert_eq!(printed.matches("\n[[project]]\n").count(), 2, "{printed}");

    // Loaded again, by the library and by the command, it is the same policy.
    let original = Policy::load(&file).unwrap();
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &printed).unwrap();
    assert_eq!(Policy::load(&again).unwrap(), original);
    let out = check_config(&["--print", again.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reprinted = stdout(&out);
    assert_eq!(
        reprinted.lines().skip(1).collect::<Vec<_>>(),
        printed.lines().skip(1).collect::<Vec<_>>()
    );
    let out = check_config(&[again.to_str().unwrap()]);
    let verdict = format!("{}: ok", again.display());
    assert_eq!(stdout(&out).lines().next(), Some(verdict.as_str()));
}

#[test]
fn a_bad_file_lists_every_problem_and_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gov.toml");
    std::fs::write(
        &file,
        "[defaults]\nidle_timeout = \"5 minutes\"\npinnned = true\n",
    )
    .unwrap();
    let out = check_config(&["--print", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "", "a bad file prints no policy");
    let err = stderr(&out);
    let f = file.display();
    assert!(
        err.contains(&format!(
            "{f}:2: key `idle_timeout`: invalid duration \"5 minutes\""
        )),
        "{err}"
    );
    assert!(
        err.contains("durations look like \"5m\", \"90s\", \"1h30m\""),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:3: key `pinnned`: unknown key in [defaults]; did you mean `pinned`?"
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 2, "{err}");
}

/// Whether a daemon could hibernate: criu_path (or GOV_CRIU) resolves to a
/// CRIU >= 4.2, or why not. Not an error: gates then only suspend.
#[test]
fn it_says_whether_criu_path_gives_hibernation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gov.toml");
    let missing = dir.path().join("criu");
    std::fs::write(
        &file,
        format!("criu_path = {:?}\n", missing.to_str().unwrap()),
    )
    .unwrap();
    let out = check_config(&[file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    let line = said.lines().nth(1).unwrap_or_default();
    assert!(line.starts_with("hibernation: off: criu_path "), "{said}");
    assert!(line.contains(missing.to_str().unwrap()), "{said}");
    // --print keeps it a comment, so the output still loads.
    let out = check_config(&["--print", file.to_str().unwrap()]);
    let printed = stdout(&out);
    assert!(
        printed
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("# hibernation: off"),
        "{printed}"
    );
    Policy::parse(&printed, Path::new("printed")).unwrap_or_else(|e| panic!("{e}"));

    let Some(criu) = kit::criu::criu_or_skip("it_says_whether_criu_path_gives_hibernation (found)")
    else {
        return;
    };
    // GOV_CRIU, as the daemon reads it, over criu_path.
    let out = Command::new(kit::gov_bin())
        .args(["check-config", file.to_str().unwrap()])
        .env("GOV_CRIU", criu.path())
        .output()
        .unwrap();
    let said = stdout(&out);
    let want = format!("hibernation: on, {criu}");
    assert_eq!(said.lines().nth(1), Some(want.as_str()), "{said}");
}
