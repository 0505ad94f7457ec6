//! The policy tests: the spec of gov.toml.

use super::*;

/// A fixed host, so range checks do not depend on the machine running the tests.
const HOST: Host = Host { ncpu: 4 };
const ORIGIN: &str = "/etc/gov.toml";
const PACKAGED: &str = include_str!("../../packaging/gov.toml");
const DOCS: &str = include_str!("../../docs/configuration.md");

fn parse(text: &str) -> Policy {
    parse_with(text, Path::new(ORIGIN), HOST).unwrap_or_else(|e| panic!("refused: {e:#?}"))
}

fn errors(text: &str) -> Vec<PolicyError> {
    match parse_with(text, Path::new(ORIGIN), HOST) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

/// The first error must sit on `line`, name `key`, and say `needle`.
#[track_caller]
fn refused(text: &str, line: usize, key: Option<&str>, needle: &str) -> PolicyError {
    let e = errors(text).remove(0);
    assert_eq!(e.line, Some(line), "wrong line: {e}");
    assert_eq!(e.key.as_deref(), key, "wrong key: {e}");
    assert!(e.message.contains(needle), "message lacks {needle:?}: {e}");
    assert_eq!(e.path, Path::new(ORIGIN));
    e
}

fn defaults_with(line: &str) -> GateSettings {
    parse(&format!("[defaults]\n{line}\n")).defaults().clone()
}

fn all_key_names() -> Vec<&'static str> {
    GLOBAL_KEYS
        .iter()
        .map(|(n, _)| *n)
        .chain(GATE_KEYS.iter().map(|(n, _)| *n))
        .chain(RULE_KEYS.iter().copied())
        .collect()
}

// --- embedded defaults -------------------------------------------------

#[test]
fn embedded_defaults_are_as_documented() {
    let p = Policy::embedded();
    assert_eq!(
        p.global,
        Global {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_mode: 0o666,
            socket_group: None,
            admin_group: None,
            cgroup_root: "gov".into(),
            scan_interval: Duration::from_secs(5),
            memory_budget: None,
            max_gates_per_user: None,
            event_history: 1000,
            metrics_listen: None,
            session_env: vec!["GOV_SESSION".into(), "CLAUDE_CODE_SESSION_ID".into()],
            hibernate_dir: "/var/lib/gov/hibernate".into(),
            hibernate_max_bytes: None,
            criu_path: "criu".into(),
            memory_pressure: Percent::new(10.0),
            memory_available_min: Percent::new(5.0).map(MemoryFloor::OfTotal),
            pressure_stop: false,
        }
    );
    assert_eq!(
        p.defaults(),
        &GateSettings {
            idle_timeout: Some(Duration::from_secs(30 * 60)),
            orphan_grace: Some(Duration::from_secs(5 * 60)),
            max_runtime: None,
            stop_signal: Signal::SIGTERM,
            stop_grace: Duration::from_secs(10),
            frozen_hold: Duration::from_secs(4 * 3600),
            busy_cpu_percent: 5.0,
            memory_max: Limit::Max,
            memory_high: Limit::Max,
            pids_max: Limit::Max,
            cpu_max: CpuMax::Max,
            max_gates: None,
            on_limit: OnLimit::Refuse,
            pinned: false,
            reclaim_when_frozen: false,
            oom_group: false,
            project_memory_max: Limit::Max,
            project_pids_max: Limit::Max,
            on_main_exit: OnMainExit::Keep,
            main_exit_grace: Duration::from_secs(5),
            hibernate_after: None,
            hibernate_hold: Some(Duration::from_secs(7 * 86400)),
            wake_on_input: true,
            wake_quiet: Duration::from_secs(10),
            activity: Activity {
                touch: true,
                cpu: true,
                input: false,
            },
        }
    );
    assert!(p.rules.is_empty());
    assert_eq!(p.for_project("/anything"), *p.defaults());
}

#[test]
fn embedded_text_alone_sets_every_required_key() {
    let doc = read_document(EMBEDDED, Host { ncpu: 1 }).expect("EMBEDDED parses on a 1-CPU host");
    assert!(doc.global.complete().is_ok());
    assert!(doc.defaults.complete().is_ok());
    assert!(doc.rules.is_empty());
    // Parsing EMBEDDED as a user file changes nothing.
    assert_eq!(parse(EMBEDDED), Policy::embedded());
}

#[test]
fn an_incomplete_bottom_layer_names_every_missing_key() {
    let doc = read_document("[defaults]\nidle_timeout = \"1m\"\n", HOST).unwrap();
    let missing = doc.defaults.complete().unwrap_err();
    assert_eq!(missing.len(), GATE_KEYS.len() - 1);
    assert!(!missing.contains(&"idle_timeout"));
    assert_eq!(
        doc.global.complete().unwrap_err(),
        vec![
            "socket",
            "socket_mode",
            "cgroup_root",
            "scan_interval",
            "event_history",
            "memory_pressure",
            "memory_available_min",
            "pressure_stop"
        ]
    );
}

// --- errors: line and key ----------------------------------------------

#[test]
fn error_display_names_path_line_and_key() {
    let e = refused(
        "socket = \"/run/x.sock\"\n\n[defaults]\nidle_timout = \"5m\"\n",
        4,
        Some("idle_timout"),
        "unknown key",
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with("/etc/gov.toml:4: key `idle_timout`: unknown key in [defaults]; did you mean `idle_timeout`? (expected one of: idle_timeout, orphan_grace, "),
        "{shown}"
    );
    let bare = PolicyError {
        path: "/x".into(),
        line: None,
        key: None,
        message: "cannot read: denied".into(),
    };
    assert_eq!(bare.to_string(), "/x: cannot read: denied");
}

#[test]
fn typo_keys_are_refused_in_every_table() {
    refused(
        "socket_mdoe = \"0600\"\n",
        1,
        Some("socket_mdoe"),
        "did you mean `socket_mode`?",
    );
    refused(
        "# c\n[defaults]\npinnned = true\n",
        3,
        Some("pinnned"),
        "did you mean `pinned`?",
    );
    let e = refused(
        "[[project]]\npath = \"/a\"\n\n[[project]]\npath = \"/b\"\nmax_gate = 2\n",
        6,
        Some("max_gate"),
        "unknown key in [[project]] #2; did you mean `max_gates`?",
    );
    assert!(
        e.message
            .contains("expected one of: path, name, idle_timeout"),
        "{e}"
    );
    // Nothing near: no guess, just the list.
    let e = refused(
        "[defaults]\nzzzzzzzz = 1\n",
        2,
        Some("zzzzzzzz"),
        "unknown key in [defaults] (expected one of:",
    );
    assert!(!e.message.contains("did you mean"));
    // A misspelt table is an unknown top-level key.
    refused(
        "[default]\nidle_timeout = \"1m\"\n",
        1,
        Some("default"),
        "did you mean `defaults`?",
    );
    refused(
        "[[projects]]\npath = \"/a\"\n",
        1,
        Some("projects"),
        "did you mean `project`?",
    );
}

#[test]
fn keys_in_the_wrong_table_say_where_they_belong() {
    refused(
        "[defaults]\nidle_timeout = \"1m\"\nmemory_budget = \"8G\"\n",
        3,
        Some("memory_budget"),
        "is a global key: move it to the top",
    );
    refused(
        "[[project]]\npath = \"/a\"\nsocket = \"/x\"\n",
        3,
        Some("socket"),
        "is a global key",
    );
    refused(
        "idle_timeout = \"1h\"\n",
        1,
        Some("idle_timeout"),
        "is a gate key: put it under [defaults] or a [[project]]",
    );
    refused(
        "[defaults]\npath = \"/a\"\n",
        2,
        Some("path"),
        "belongs in a [[project]] entry",
    );
}

#[test]
fn bad_durations_are_refused_with_line_and_key() {
    refused(
        "[defaults]\norphan_grace = \"-5m\"\n",
        2,
        Some("orphan_grace"),
        "negative durations are not allowed",
    );
    refused(
        "[defaults]\n\nidle_timeout = 5\n",
        3,
        Some("idle_timeout"),
        "expected a duration like \"30m\" or \"never\", found integer 5",
    );
    refused(
        "[defaults]\nstop_grace = \"10\"\n",
        2,
        Some("stop_grace"),
        "missing unit",
    );
    refused(
        "[defaults]\nfrozen_hold = \"4 hours\"\n",
        2,
        Some("frozen_hold"),
        "missing unit",
    );
    refused(
        "[defaults]\nidle_timeout = \"1M\"\n",
        2,
        Some("idle_timeout"),
        "unknown unit \"M\"",
    );
    refused(
        "[defaults]\nidle_timeout = \"0s\"\n",
        2,
        Some("idle_timeout"),
        "write \"never\"",
    );
    refused(
        "[defaults]\nmax_runtime = \"0\"\n",
        2,
        Some("max_runtime"),
        "longer than zero",
    );
    refused(
        "scan_interval = \"0s\"\n",
        1,
        Some("scan_interval"),
        "longer than zero",
    );
    refused(
        "[defaults]\nstop_grace = \"never\"\n",
        2,
        Some("stop_grace"),
        "invalid duration \"never\"",
    );
    // Zero is meaningful for these.
    let s = defaults_with("orphan_grace = \"0s\"\nstop_grace = \"0s\"\nfrozen_hold = \"0s\"");
    assert_eq!(
        (s.orphan_grace, s.stop_grace, s.frozen_hold),
        (Some(Duration::ZERO), Duration::ZERO, Duration::ZERO)
    );
}

#[test]
fn bad_sizes_and_limits_are_refused_with_line_and_key() {
    refused(
        "[defaults]\nmemory_max = \"4 gigs\"\n",
        2,
        Some("memory_max"),
        "invalid size \"4 gigs\": unexpected space",
    );
    refused(
        "[defaults]\nmemory_high = \"4GB\"\n",
        2,
        Some("memory_high"),
        "ambiguous",
    );
    refused(
        "[defaults]\nmemory_max = 0\n",
        2,
        Some("memory_max"),
        "write \"max\" for no limit",
    );
    refused(
        "[defaults]\npids_max = -1\n",
        2,
        Some("pids_max"),
        "must not be negative",
    );
    refused(
        "[defaults]\npids_max = \"lots\"\n",
        2,
        Some("pids_max"),
        "expected a whole number or \"max\"",
    );
    refused(
        "[defaults]\nproject_memory_max = true\n",
        2,
        Some("project_memory_max"),
        "found boolean true",
    );
    refused(
        "memory_budget = \"0\"\n",
        1,
        Some("memory_budget"),
        "a limit of 0",
    );
    refused(
        "[defaults]\nproject_pids_max = 1.5\n",
        2,
        Some("project_pids_max"),
        "found float 1.5",
    );
}

#[test]
fn bad_enums_signals_and_globs_are_refused_with_line_and_key() {
    refused(
        "[defaults]\non_limit = \"bogus\"\n",
        2,
        Some("on_limit"),
        "expected \"refuse\" or \"evict-idlest\", found \"bogus\"",
    );
    refused(
        "[defaults]\nstop_signal = \"SIGFOO\"\n",
        2,
        Some("stop_signal"),
        "unknown signal \"SIGFOO\" (expected one of: SIGTERM,",
    );
    refused(
        "[defaults]\nstop_signal = 15\n",
        2,
        Some("stop_signal"),
        "expected a signal name",
    );
    refused(
        "[[project]]\npath = \"/home/[a\"\n",
        2,
        Some("path"),
        "invalid glob \"/home/[a\": invalid range pattern",
    );
    refused(
        "[[project]]\npath = \"/a/***\"\n",
        2,
        Some("path"),
        "invalid glob",
    );
    refused(
        "[[project]]\npath = \"src/*\"\n",
        2,
        Some("path"),
        "must be an absolute path glob",
    );
    refused(
        "[[project]]\npath = \"~/src/*\"\n",
        2,
        Some("path"),
        "~ is not expanded",
    );
    refused(
        "[[project]]\npath = \"/a\"\nname = \"\"\n",
        3,
        Some("name"),
        "1 to 100 printable",
    );
    refused(
        "[defaults]\npinned = \"yes\"\n",
        2,
        Some("pinned"),
        "expected true or false",
    );
    refused(
        "[defaults]\ncpu_max = 150\n",
        2,
        Some("cpu_max"),
        "like \"150%\"",
    );
    refused(
        "[defaults]\ncpu_max = \"0.5%\"\n",
        2,
        Some("cpu_max"),
        "at least 1000 us",
    );
    refused(
        "[defaults]\nmax_gates = -2\n",
        2,
        Some("max_gates"),
        "must not be negative",
    );
    refused(
        "[defaults]\nmax_gates = \"2\"\n",
        2,
        Some("max_gates"),
        "expected a whole number (0 = unlimited)",
    );
}

#[test]
fn busy_cpu_percent_must_be_within_what_the_cpus_can_do() {
    for bad in ["0", "0.0", "-1", "400.5", "1e9", "nan", "inf"] {
        let e = refused(
            &format!("[defaults]\nbusy_cpu_percent = {bad}\n"),
            2,
            Some("busy_cpu_percent"),
            "must be above 0 and at most 400",
        );
        assert!(e.message.contains("4 CPUs"), "{e}");
    }
    refused(
        "[defaults]\nbusy_cpu_percent = \"5\"\n",
        2,
        Some("busy_cpu_percent"),
        "expected a number",
    );
    assert_eq!(
        defaults_with("busy_cpu_percent = 400").busy_cpu_percent,
        400.0
    );
    assert_eq!(
        defaults_with("busy_cpu_percent = 0.5").busy_cpu_percent,
        0.5
    );
    assert_eq!(
        defaults_with("busy_cpu_percent = 1_0").busy_cpu_percent,
        10.0
    );
    assert!(check_busy_cpu_percent(150.0, 1).is_err());
    assert!(check_busy_cpu_percent(150.0, 2).is_ok());
}

#[test]
fn malformed_toml_names_line_and_key_where_the_line_has_one() {
    refused(
        "socket_mode = \"0600\"\n[defaults]\nidle_timeout = 5m\n",
        3,
        Some("idle_timeout"),
        "invalid TOML: string values must be quoted",
    );
    refused(
        "event_history = 10\n[defaults\npinned = true\n",
        2,
        Some("defaults"),
        "invalid TOML: unclosed table",
    );
    refused(
        "[defaults]\npinned = true\npinned = false\n",
        3,
        Some("pinned"),
        "invalid TOML: duplicate key",
    );
    refused(
        "[defaults]\nidle_timeout = \"5m\n",
        2,
        Some("idle_timeout"),
        "invalid TOML",
    );
    refused(
        "[[project]]\npath = \"/a\"\n[project]\n",
        3,
        Some("project"),
        "invalid TOML: duplicate key",
    );
    // Inside a multi-line array the line has no key; the line is still right.
    refused("a = [\n  1,\n  2 3,\n]\n", 3, None, "invalid TOML");
}

#[test]
fn table_shape_mistakes_are_refused_with_line_and_key() {
    refused("x_ = 1\n", 1, Some("x_"), "unknown key in the top level");
    refused(
        "defaults = 5\n",
        1,
        Some("defaults"),
        "expected the [defaults] table, found integer 5",
    );
    refused(
        "socket_mode = \"0600\"\n[project]\npath = \"/a\"\n",
        2,
        Some("project"),
        "write [[project]] with double brackets",
    );
    refused(
        "project = [1]\n",
        1,
        Some("project"),
        "expected a [[project]] table, found integer 1",
    );
    refused(
        "project = \"/a\"\n",
        1,
        Some("project"),
        "expected [[project]] tables",
    );
    refused(
        "[[project]]\nname = \"x\"\nidle_timeout = \"1h\"\n",
        1,
        Some("path"),
        "missing key in [[project]] #1",
    );
}

#[test]
fn dotted_keys_and_inline_tables_name_the_inner_key() {
    refused(
        "scan_interval = \"1s\"\ndefaults.idle_timout = \"5m\"\n",
        2,
        Some("idle_timout"),
        "unknown key in [defaults]",
    );
    refused(
        "defaults = { pinned = true, idle_timeout = 5 }\n",
        1,
        Some("idle_timeout"),
        "found integer 5",
    );
    refused(
        "project = [ { path = \"/a\" }, { path = \"/b\", on_limit = \"x\" } ]\n",
        1,
        Some("on_limit"),
        "found \"x\"",
    );
    refused(
        "[defaults]\nidle_timeout.x = \"5m\"\n",
        2,
        Some("idle_timeout"),
        "found a table",
    );
    // The accepted forms mean the same as the plain ones.
    let p = parse("defaults.idle_timeout = \"1h\"\nproject = [{ path = \"/a\", pinned = true }]\n");
    assert_eq!(p.defaults().idle_timeout, Some(Duration::from_secs(3600)));
    assert!(p.for_project("/a").pinned);
}

#[test]
fn parse_all_reports_every_problem_in_file_order() {
    let text = "\
zzz = 1
socket_mode = 660
[defaults]
stop_signal = \"SIGNOPE\"
busy_cpu_percent = 0
[[project]]
on_limit = \"refuse\"
[[project]]
path = \"/ok\"
pinned = 1
";
    let errs = errors(text);
    let got: Vec<(Option<usize>, Option<&str>)> =
        errs.iter().map(|e| (e.line, e.key.as_deref())).collect();
    assert_eq!(
        got,
        vec![
            (Some(1), Some("zzz")),
            (Some(2), Some("socket_mode")),
            (Some(4), Some("stop_signal")),
            (Some(5), Some("busy_cpu_percent")),
            (Some(6), Some("path")),
            (Some(10), Some("pinned")),
        ]
    );
    // parse() returns the first of them.
    let first = parse_with(text, Path::new(ORIGIN), HOST)
        .map_err(|mut v| v.swap_remove(0))
        .unwrap_err();
    assert_eq!(first, errs[0]);
    assert_eq!(Policy::parse(text, Path::new(ORIGIN)).unwrap_err(), errs[0]);
}

// --- layering and matching ---------------------------------------------

#[test]
fn later_projects_win_key_by_key_over_earlier_ones_and_defaults() {
    let p = parse(
        r#"
[defaults]
idle_timeout = "1h"
memory_max = "4G"
pinned = false

[[project]]
name = "all-src"
path = "/home/*/src/**"
idle_timeout = "2h"
max_gates = 5
on_limit = "evict-idlest"

[[project]]
path = "/home/*/src/BigModel*"
idle_timeout = "8h"
max_gates = 2

[[project]]
path = "/srv/*"
pinned = true
"#,
    );
    let big = p.for_project("/home/ann/src/BigModelX");
    assert_eq!(
        big.idle_timeout,
        Some(Duration::from_secs(8 * 3600)),
        "later rule wins"
    );
    assert_eq!(big.max_gates, Some(2), "later rule wins");
    assert_eq!(
        big.on_limit,
        OnLimit::EvictIdlest,
        "kept from the earlier rule"
    );
    assert_eq!(
        big.memory_max,
        Limit::Value(4 << 30),
        "kept from [defaults]"
    );
    assert!(!big.pinned, "a non-matching rule does not apply");
    assert_eq!(
        big.stop_grace,
        Duration::from_secs(10),
        "kept from the embedded defaults"
    );
    assert_eq!(
        p.matching_rules("/home/ann/src/BigModelX"),
        vec!["all-src", "/home/*/src/BigModel*"]
    );

    let other = p.for_project("/home/ann/src/Other");
    assert_eq!(other.idle_timeout, Some(Duration::from_secs(2 * 3600)));
    assert_eq!(other.max_gates, Some(5));

    let none = p.for_project("/tmp/x");
    assert_eq!(none, *p.defaults());
    assert!(p.matching_rules("/tmp/x").is_empty());
    assert!(p.for_project("/srv/api").pinned);
}

#[test]
fn a_later_rule_can_switch_a_cap_or_timeout_back_off() {
    let p = parse(
        "[defaults]\nmax_gates = 3\nidle_timeout = \"1h\"\n[[project]]\npath = \"/x\"\nmax_gates = 0\nidle_timeout = \"never\"\n",
    );
    assert_eq!(p.defaults().max_gates, Some(3));
    let s = p.for_project("/x");
    assert_eq!((s.max_gates, s.idle_timeout), (None, None));
}

#[test]
fn globs_keep_star_within_a_component_and_ignore_trailing_slashes() {
    let p = parse("[[project]]\npath = \"/home/*/src/Big*\"\npinned = true\n[[project]]\npath = \"/work/**/gate\"\nmax_gates = 1\n");
    assert!(p.for_project("/home/ann/src/BigModel").pinned);
    assert!(p.for_project("/home/ann/src/BigModel/").pinned);
    assert!(
        !p.for_project("/home/ann/x/src/BigModel").pinned,
        "* does not cross /"
    );
    assert!(
        !p.for_project("/home/ann/src/BigModel/sub").pinned,
        "* does not cross /"
    );
    assert!(
        !p.for_project("/home/ann/src/bigmodel").pinned,
        "case-sensitive"
    );
    assert_eq!(
        p.for_project("/work/gate").max_gates,
        Some(1),
        "** matches zero components"
    );
    assert_eq!(
        p.for_project("/work/a/b/gate").max_gates,
        Some(1),
        "** matches many"
    );
    assert_eq!(normalize_project("/"), "/");
    assert_eq!(normalize_project("//"), "/");
    assert_eq!(normalize_project("/a/b//"), "/a/b");
}

#[test]
fn global_keys_layer_over_the_embedded_ones() {
    let p = parse(
        r#"
socket = "/tmp/gov-test-1/gov.sock"
socket_mode = "0660"
socket_group = "gov"
admin_group = "wheel"
cgroup_root = "gov-test-1"
scan_interval = "250ms"
memory_budget = "16G"
max_gates_per_user = 20
event_history = 50
metrics_listen = "127.0.0.1:9477"
"#,
    );
    assert_eq!(
        p.global,
        Global {
            socket: "/tmp/gov-test-1/gov.sock".into(),
            socket_mode: 0o660,
            socket_group: Some("gov".into()),
            admin_group: Some("wheel".into()),
            cgroup_root: "gov-test-1".into(),
            scan_interval: Duration::from_millis(250),
            memory_budget: Some(16 << 30),
            max_gates_per_user: Some(20),
            event_history: 50,
            metrics_listen: Some("127.0.0.1:9477".parse().unwrap()),
            ..Policy::embedded().global
        }
    );
    let p = parse("memory_budget = \"max\"\nmax_gates_per_user = 0\n");
    assert_eq!(
        (p.global.memory_budget, p.global.max_gates_per_user),
        (None, None)
    );
    assert_eq!(
        parse("memory_budget = 1073741824\n").global.memory_budget,
        Some(1 << 30)
    );
}

#[test]
fn global_values_are_validated() {
    refused(
        "socket = \"gov.sock\"\n",
        1,
        Some("socket"),
        "must be an absolute path",
    );
    refused(
        &format!("socket = \"/{}\"\n", "a".repeat(107)),
        1,
        Some("socket"),
        "at most 107 bytes",
    );
    refused(
        "socket_mode = 666\n",
        1,
        Some("socket_mode"),
        "octal string",
    );
    refused(
        "socket_mode = \"0999\"\n",
        1,
        Some("socket_mode"),
        "expected an octal mode",
    );
    refused(
        "socket_mode = \"4777\"\n",
        1,
        Some("socket_mode"),
        "at most 0777",
    );
    assert_eq!(parse("socket_mode = 0o640\n").global.socket_mode, 0o640);
    assert_eq!(parse("socket_mode = \"600\"\n").global.socket_mode, 0o600);
    refused(
        "socket_group = \"bad group\"\n",
        1,
        Some("socket_group"),
        "invalid group name",
    );
    refused(
        "admin_group = \"-x\"\n",
        1,
        Some("admin_group"),
        "invalid group name",
    );
    assert_eq!(
        parse("admin_group = \"1000\"\n")
            .global
            .admin_group
            .as_deref(),
        Some("1000")
    );
    refused(
        "cgroup_root = \"../escape\"\n",
        1,
        Some("cgroup_root"),
        "no empty, . or .. parts",
    );
    refused(
        "cgroup_root = \"\"\n",
        1,
        Some("cgroup_root"),
        "expected \"delegated\"",
    );
    refused(
        "metrics_listen = \"localhost:9477\"\n",
        1,
        Some("metrics_listen"),
        "expected IP:PORT",
    );
    for bad in ["0", "2000000"] {
        let text = format!("event_history = {bad}\n");
        refused(&text, 1, Some("event_history"), "must be 1 to 1000000");
    }
    refused(
        "event_history = \"10\"\n",
        1,
        Some("event_history"),
        "expected a whole number",
    );
    refused(
        "max_gates_per_user = 5000000000\n",
        1,
        Some("max_gates_per_user"),
        "too large",
    );
    assert_eq!(
        parse("metrics_listen = \"[::1]:9477\"\n")
            .global
            .metrics_listen,
        Some("[::1]:9477".parse().unwrap())
    );
}

#[test]
fn relief_keys_parse_to_shares_sizes_and_off() {
    let p =
        parse("memory_pressure = \"25%\"\nmemory_available_min = \"2G\"\npressure_stop = true\n");
    assert_eq!(
        (
            p.global.memory_pressure,
            p.global.memory_available_min,
            p.global.pressure_stop
        ),
        (Percent::new(25.0), Some(MemoryFloor::Bytes(2 << 30)), true)
    );
    let p = parse("memory_pressure = \"off\"\nmemory_available_min = \"off\"\n");
    assert_eq!(
        (p.global.memory_pressure, p.global.memory_available_min),
        (None, None)
    );
    let p = parse("memory_pressure = \"0.5%\"\nmemory_available_min = \"100%\"\n");
    assert_eq!(p.global.memory_pressure.map(Percent::share), Some(0.005));
    assert_eq!(
        p.global.memory_available_min,
        Percent::new(100.0).map(MemoryFloor::OfTotal)
    );
    assert_eq!(
        parse("memory_available_min = 1048576\n")
            .global
            .memory_available_min,
        Some(MemoryFloor::Bytes(1 << 20))
    );
}

#[test]
fn the_available_floor_resolves_against_memtotal() {
    let gib = 1u64 << 30;
    let embedded = Policy::embedded().global;
    // The default 5% of a 24 GiB host.
    assert_eq!(embedded.available_min_bytes(24 * gib), Some(24 * gib / 20));
    assert_eq!(MemoryFloor::Bytes(2 * gib).bytes(24 * gib), 2 * gib);
    let half = MemoryFloor::OfTotal(Percent::new(50.0).unwrap());
    assert_eq!(half.bytes(3 * gib), 3 * gib / 2);
    let off = parse("memory_available_min = \"off\"\n").global;
    assert_eq!(off.available_min_bytes(24 * gib), None);
}

#[test]
fn relief_keys_refuse_with_line_and_key() {
    for (text, key, needle) in [
        (
            "memory_pressure = \"0%\"\n",
            "memory_pressure",
            "above 0% and at most 100%",
        ),
        (
            "memory_pressure = \"101%\"\n",
            "memory_pressure",
            "above 0% and at most 100%",
        ),
        (
            "memory_pressure = \"lots%\"\n",
            "memory_pressure",
            "expected a percent",
        ),
        (
            "memory_pressure = \"10\"\n",
            "memory_pressure",
            "expected a percent",
        ),
        (
            "memory_pressure = 10\n",
            "memory_pressure",
            "found integer 10",
        ),
        (
            "memory_available_min = \"0%\"\n",
            "memory_available_min",
            "above 0%",
        ),
        (
            "memory_available_min = \"150%\"\n",
            "memory_available_min",
            "at most 100%",
        ),
        (
            "memory_available_min = \"0\"\n",
            "memory_available_min",
            "write \"off\"",
        ),
        (
            "memory_available_min = \"max\"\n",
            "memory_available_min",
            "expected a percent",
        ),
        (
            "memory_available_min = \"lots\"\n",
            "memory_available_min",
            "a size like \"2G\"",
        ),
        (
            "pressure_stop = \"yes\"\n",
            "pressure_stop",
            "expected true or false",
        ),
    ] {
        refused(
            &format!("scan_interval = \"5s\"\n{text}"),
            2,
            Some(key),
            needle,
        );
    }
}

#[test]
fn relief_keys_spell_back_as_written() {
    for (line, spelled) in [
        ("memory_pressure = \"7%\"", serde_json::json!("7%")),
        ("memory_pressure = \"off\"", serde_json::json!("off")),
        (
            "memory_available_min = \"12.5%\"",
            serde_json::json!("12.5%"),
        ),
        (
            "memory_available_min = \"1G\"",
            serde_json::json!(1u64 << 30),
        ),
    ] {
        let global = parse(&format!("{line}\n")).global;
        let json = serde_json::to_value(&global).unwrap();
        let key = line.split(' ').next().unwrap();
        assert_eq!(json[key], spelled, "{line}");
        let again = parse(&format!("{key} = {spelled}\n")).global;
        assert_eq!(again, global, "{line} spelled {spelled}");
    }
}

// --- value languages ---------------------------------------------------

#[test]
fn durations_parse_and_refuse_as_documented() {
    let ok = [
        ("30m", 1_800_000),
        ("1h30m", 5_400_000),
        ("1h 30m", 5_400_000),
        ("90s", 90_000),
        ("250ms", 250),
        ("1.5h", 5_400_000),
        ("0.25s", 250),
        ("2d", 172_800_000),
        ("1w", 604_800_000),
        ("0", 0),
        ("0s", 0),
        (" 5m ", 300_000),
        ("30m1h", 5_400_000),
    ];
    for (s, ms) in ok {
        assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
    }
    assert_eq!(parse_duration("1500us"), Ok(Duration::from_micros(1500)));
    assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
    for bad in [
        "",
        "-5m",
        "5",
        "5 m",
        "1h30",
        "m",
        "1.h",
        ".5h",
        "1..5s",
        "1M",
        "1y",
        "5min",
        "never",
        "1h-5m",
        "+5m",
        "99999999999999999999999999999w",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(
        parse_duration("-5m").unwrap_err(),
        "negative durations are not allowed"
    );
}

#[test]
fn durations_format_to_what_parses_back() {
    let cases = [
        (Duration::ZERO, "0s"),
        (Duration::from_millis(250), "250ms"),
        (Duration::from_secs(90), "1m30s"),
        (Duration::from_secs(30 * 60), "30m"),
        (Duration::from_secs(4 * 3600), "4h"),
        (Duration::from_secs(36 * 3600 + 1), "1d12h1s"),
        (Duration::new(1, 1), "1s1ns"),
    ];
    for (d, s) in cases {
        assert_eq!(format_duration(d), s);
    }
    for nanos in [
        1u64,
        999,
        1_000,
        1_500_000,
        59_999_999_999,
        3_600_000_000_001,
        1 << 62,
    ] {
        let d = Duration::from_nanos(nanos);
        assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{nanos}");
    }
}

#[test]
fn sizes_parse_and_refuse_as_documented() {
    let ok = [
        ("4096", 4096u64),
        ("4096B", 4096),
        ("4K", 4096),
        ("4k", 4096),
        ("4KiB", 4096),
        ("512M", 512 << 20),
        ("4G", 4 << 30),
        ("4g", 4 << 30),
        ("4GiB", 4 << 30),
        ("1.5G", 3 << 29),
        ("0.5K", 512),
        ("0.1K", 102),
        ("2T", 2 << 40),
        ("1P", 1 << 50),
        ("15E", 15 << 60),
        ("0", 0),
    ];
    for (s, n) in ok {
        assert_eq!(parse_size(s), Ok(n), "{s}");
    }
    for bad in [
        "", "4 gigs", "4 G", "4GB", "4gb", "4Mb", "4X", "G", "1.5", "1.5B", "-1G", ".5G", "1.G",
        "16E", "max", "4G ", "4Gi", "0x10",
    ] {
        assert!(parse_size(bad).is_err(), "{bad:?} accepted");
    }
    assert!(parse_size("4GB")
        .unwrap_err()
        .contains("write \"G\" or \"GiB\""));
    assert!(parse_size("4 gigs")
        .unwrap_err()
        .contains("unexpected space"));
}

#[test]
fn limits_accept_sizes_counts_integers_and_max() {
    let s = defaults_with(
        "memory_max = 4096\nmemory_high = \"3.5G\"\npids_max = \"100\"\nproject_memory_max = \"max\"\nproject_pids_max = 0x100",
    );
    assert_eq!(s.memory_max, Limit::Value(4096));
    assert_eq!(s.memory_high, Limit::Value(7 << 29));
    assert_eq!(s.pids_max, Limit::Value(100));
    assert_eq!(s.project_memory_max, Limit::Max);
    assert_eq!(s.project_pids_max, Limit::Value(256));
    assert_eq!(s.memory_high.to_kernel(), (7u64 << 29).to_string());
    refused(
        "[defaults]\npids_max = \"4K\"\n",
        2,
        Some("pids_max"),
        "expected a whole number or \"max\"",
    );
}

#[test]
fn cpu_max_parses_percent_and_kernel_forms() {
    let q = |quota_usec, period_usec| CpuMax::Quota {
        quota_usec,
        period_usec,
    };
    assert_eq!(parse_cpu_max("max"), Ok(CpuMax::Max));
    assert_eq!(parse_cpu_max("max 50000"), Ok(CpuMax::Max));
    assert_eq!(parse_cpu_max("150%"), Ok(q(150_000, 100_000)));
    assert_eq!(parse_cpu_max("2.5%"), Ok(q(2_500, 100_000)));
    assert_eq!(parse_cpu_max("1%"), Ok(q(1_000, 100_000)));
    assert_eq!(parse_cpu_max("50000 100000"), Ok(q(50_000, 100_000)));
    assert_eq!(parse_cpu_max("  2000   10000 "), Ok(q(2_000, 10_000)));
    for bad in [
        "",
        "150",
        "%",
        "0%",
        "0.9%",
        "-5%",
        "50000",
        "50000 100000 1",
        "500 100000",
        "5000 999",
        "5000 1000001",
        "x y",
        "max x",
        "1.5 100000",
    ] {
        assert!(parse_cpu_max(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(CpuMax::Max.to_kernel(), "max 100000");
    assert_eq!(q(50_000, 100_000).to_kernel(), "50000 100000");
    assert_eq!(q(150_000, 100_000).to_string(), "150%");
    assert_eq!(q(2_500, 100_000).to_string(), "2500 100000");
    assert_eq!(q(5_000, 10_000).to_string(), "5000 10000");
    for c in [
        CpuMax::Max,
        q(150_000, 100_000),
        q(2_500, 100_000),
        q(5_000, 10_000),
    ] {
        assert_eq!(parse_cpu_max(&c.to_string()), Ok(c));
    }
    assert_eq!(
        defaults_with("cpu_max = \"150%\"").cpu_max,
        q(150_000, 100_000)
    );
}

#[test]
fn signals_by_name_with_or_without_sig_in_any_case() {
    for (s, n) in [
        ("SIGTERM", libc::SIGTERM),
        ("TERM", libc::SIGTERM),
        ("sigint", libc::SIGINT),
        ("HUP", libc::SIGHUP),
        ("SIGQUIT", libc::SIGQUIT),
        ("USR1", libc::SIGUSR1),
        ("SIGUSR2", libc::SIGUSR2),
        ("KILL", libc::SIGKILL),
    ] {
        assert_eq!(parse_signal(s), Ok(n), "{s}");
        assert_eq!(parse_signal(&signal_name(n).unwrap()), Ok(n));
    }
    for bad in ["", "SIG", "SIGSTOP", "15", "SIG TERM", "SIGTERM "] {
        assert!(parse_signal(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(signal_name(libc::SIGSTOP), None);
}

#[test]
fn cgroup_root_forms() {
    assert_eq!(parse_cgroup_root("delegated"), Ok(RootSpec::Delegated));
    assert_eq!(
        parse_cgroup_root("gov"),
        Ok(RootSpec::UnderMount("gov".into()))
    );
    assert_eq!(
        parse_cgroup_root("gov/test-7"),
        Ok(RootSpec::UnderMount("gov/test-7".into()))
    );
    assert_eq!(
        parse_cgroup_root("/sys/fs/cgroup/gov"),
        Ok(RootSpec::Absolute("/sys/fs/cgroup/gov".into()))
    );
    for bad in [
        "", "/", "gov/", "a//b", "./gov", "gov/..", "..", "/a/../b", "a\nb",
    ] {
        assert!(parse_cgroup_root(bad).is_err(), "{bad:?} accepted");
    }
}

// --- error plumbing ----------------------------------------------------

#[test]
fn key_on_line_reads_assignments_and_headers() {
    assert_eq!(
        key_on_line("idle_timeout = 5m").as_deref(),
        Some("idle_timeout")
    );
    assert_eq!(
        key_on_line("  defaults.idle_timeout=5m").as_deref(),
        Some("idle_timeout")
    );
    assert_eq!(
        key_on_line("\"quoted-key\" = x").as_deref(),
        Some("quoted-key")
    );
    assert_eq!(key_on_line("[defaults").as_deref(), Some("defaults"));
    assert_eq!(key_on_line("[[project]]").as_deref(), Some("project"));
    assert_eq!(key_on_line("  2 3,"), None);
    assert_eq!(key_on_line(""), None);
    assert_eq!(key_on_line("# a = b"), None);
    assert_eq!(key_on_line("= 5"), None);
}

#[test]
fn lines_are_counted_from_one_including_at_the_end() {
    let t = "a\nbc\n\nd";
    assert_eq!(line_of(t, 0), 1);
    assert_eq!(line_of(t, 1), 1, "the newline belongs to its line");
    assert_eq!(line_of(t, 2), 2);
    assert_eq!(line_of(t, 6), 4);
    assert_eq!(line_of(t, 99), 4);
    assert_eq!(line_text(t, 3), "bc");
    assert_eq!(line_text(t, 5), "");
    assert_eq!(line_text(t, 7), "d");
}

#[test]
fn typos_get_the_nearest_key_only_when_near() {
    let keys = Section::Defaults.valid_keys();
    assert_eq!(closest("idle_timout", &keys), Some("idle_timeout"));
    assert_eq!(closest("memory_mx", &keys), Some("memory_max"));
    assert_eq!(closest("pids", &keys), None);
    assert_eq!(closest("x", &keys), None);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(edit_distance("", "abc"), 3);
}

#[test]
fn key_tables_are_unique_and_disjoint() {
    let mut names = all_key_names();
    names.extend(TABLE_KEYS);
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), n, "a key name appears twice");
    // The expected-keys lists are exactly the tables.
    assert_eq!(Section::Top.valid_keys().len(), GLOBAL_KEYS.len() + 2);
    assert_eq!(Section::Project(1).valid_keys().len(), GATE_KEYS.len() + 2);
}

// --- loading -----------------------------------------------------------

#[test]
fn load_and_load_or_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    assert_eq!(
        Policy::load_or_embedded(&missing).unwrap(),
        (Policy::embedded(), false)
    );
    let e = Policy::load(&missing).unwrap_err();
    assert_eq!(
        (e.path.as_path(), e.line, e.key.as_deref()),
        (missing.as_path(), None, None)
    );
    assert!(e.message.starts_with("cannot read: "), "{e}");

    let good = dir.path().join("gov.toml");
    std::fs::write(&good, "[defaults]\npinned = true\n").unwrap();
    let (p, from_file) = Policy::load_or_embedded(&good).unwrap();
    assert!(from_file && p.defaults().pinned);
    assert_eq!(Policy::load(&good).unwrap(), p);

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "\n[defaults]\npinned = 1\n").unwrap();
    let e = Policy::load_or_embedded(&bad).unwrap_err();
    assert_eq!(
        (e.path.as_path(), e.line, e.key.as_deref()),
        (bad.as_path(), Some(3), Some("pinned"))
    );
    assert!(e
        .to_string()
        .starts_with(&format!("{}:3: key `pinned`: ", bad.display())));

    // A directory or a dangling symlink is a broken config, not an absent one.
    assert!(Policy::load_or_embedded(dir.path())
        .unwrap_err()
        .message
        .starts_with("cannot read"));
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
    assert!(Policy::load_or_embedded(&link)
        .unwrap_err()
        .message
        .contains("symlink"));

    std::fs::write(&bad, b"a = \"\xff\"\n").unwrap();
    assert!(Policy::load(&bad)
        .unwrap_err()
        .message
        .starts_with("cannot read"));
}

// --- the packaged file and the docs ------------------------------------

/// The packaged file with every commented-out setting (`#key = ...`,
/// `#[[project]]`) switched on; prose comments start with "# " and stay.
fn packaged_uncommented() -> String {
    PACKAGED
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn packaged_file_as_shipped_is_the_embedded_policy() {
    let p =
        Policy::parse(PACKAGED, Path::new("packaging/gov.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p, Policy::embedded());
}

#[test]
fn packaged_file_documents_the_real_defaults_and_valid_examples() {
    let text = packaged_uncommented();
    let p = parse_with(&text, Path::new("packaging/gov.toml (uncommented)"), HOST)
        .unwrap_or_else(|e| panic!("{e:#?}"));
    let e = Policy::embedded();
    // Every [defaults] line shows the embedded default.
    assert_eq!(p.defaults(), e.defaults());
    // Required globals show their defaults; optional ones show examples.
    let g = Global {
        socket_group: Some("gov".into()),
        admin_group: Some("wheel".into()),
        memory_budget: Some(16 << 30),
        max_gates_per_user: Some(20),
        metrics_listen: Some("127.0.0.1:9477".parse().unwrap()),
        ..e.global.clone()
    };
    assert_eq!(p.global, g);
    // The examples do what their comments say.
    let big = p.for_project("/home/ann/src/BigModelX");
    assert_eq!(
        (big.idle_timeout, big.max_gates, big.on_limit),
        (
            Some(Duration::from_secs(8 * 3600)),
            Some(2),
            OnLimit::EvictIdlest
        )
    );
    assert_eq!(
        p.matching_rules("/home/ann/src/BigModelX"),
        vec!["big-models"]
    );
    let ci = p.for_project("/srv/ci/repo/x");
    assert_eq!(
        (ci.max_runtime, ci.frozen_hold, ci.stop_signal),
        (
            Some(Duration::from_secs(7200)),
            Duration::ZERO,
            Signal::SIGINT
        )
    );
}

#[test]
fn packaged_file_and_docs_cover_every_key() {
    let text = packaged_uncommented();
    for key in all_key_names() {
        let prefix = format!("{key} = ");
        assert!(
            text.lines().any(|l| l.starts_with(&prefix)),
            "packaging/gov.toml lacks `{key}`"
        );
        assert!(
            DOCS.contains(&format!("`{key}`")),
            "docs/configuration.md lacks `{key}`"
        );
    }
    for doc_fact in ["SIGHUP", "check-config", "[[project]]", "[defaults]"] {
        assert!(DOCS.contains(doc_fact), "docs lack {doc_fact}");
    }
}

// --- serialization -----------------------------------------------------

#[test]
fn settings_serialize_in_gov_toml_vocabulary() {
    let s = defaults_with(
        "cpu_max = \"150%\"\nmemory_max = \"1G\"\nmax_gates = 2\nstop_signal = \"INT\"",
    );
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["idle_timeout"], "30m");
    assert_eq!(json["max_runtime"], "never");
    assert_eq!(json["stop_signal"], "SIGINT");
    assert_eq!(json["memory_max"], 1u64 << 30);
    assert_eq!(json["memory_high"], "max");
    assert_eq!(json["cpu_max"], "150%");
    assert_eq!(json["on_limit"], "refuse");
    assert_eq!(json["max_gates"], 2);
    assert_eq!(json["busy_cpu_percent"], 5.0);
}

#[test]
fn serialized_settings_parse_back_to_the_same_settings() {
    let mut s = Policy::embedded().defaults().clone();
    s.max_gates = Some(3);
    s.idle_timeout = Some(Duration::from_millis(5_400_250));
    s.cpu_max = CpuMax::Quota {
        quota_usec: 2_500,
        period_usec: 50_000,
    };
    s.pids_max = Limit::Value(512);
    s.on_limit = OnLimit::EvictIdlest;
    // max_gates = None serializes as nothing (TOML has no null): 0 means the same.
    #[derive(Serialize)]
    struct Doc<'a> {
        defaults: &'a GateSettings,
    }
    let text = toml::to_string(&Doc { defaults: &s }).unwrap();
    assert_eq!(parse(&text).defaults(), &s, "{text}");
}

// --- added with the keys! rewrite: bounds, new keys, printing ----------------

#[test]
fn durations_are_bounded_where_they_are_parsed() {
    for long in ["1000000000d", "73001d", "10000000000000000000ms"] {
        let e = parse_duration(long).unwrap_err();
        assert!(
            e.contains("too long") || e.contains("invalid number"),
            "{long}: {e}"
        );
    }
    assert!(parse_duration("1000000000d")
        .unwrap_err()
        .contains("at most 73000d"));
    assert_eq!(parse_duration("73000d"), Ok(MAX_DURATION));
    // Whatever parses fits the daemon's u64 milliseconds with room to add to now.
    assert!(MAX_DURATION.as_millis() < u128::from(u64::MAX / 2));
    refused(
        "[defaults]\nmax_runtime = \"1000000000d\"\n",
        2,
        Some("max_runtime"),
        "too long",
    );
    let e = refused(
        "[defaults]\nidle_timeout = \"5 minutes\"\n",
        2,
        Some("idle_timeout"),
        "missing unit after \"5\"",
    );
    assert!(
        e.message
            .contains("durations look like \"5m\", \"90s\", \"1h30m\""),
        "{e}"
    );
}

#[test]
fn stop_signal_is_a_signal_the_daemon_can_send() {
    let s = defaults_with("stop_signal = \"int\"");
    assert_eq!(s.stop_signal, Signal::SIGINT);
    assert_eq!(s.stop_signal as i32, libc::SIGINT);
    for bad in ["\"SIGSTOP\"", "\"SIG99\"", "9", "-1"] {
        refused(
            &format!("[defaults]\nstop_signal = {bad}\n"),
            2,
            Some("stop_signal"),
            "signal",
        );
    }
}

#[test]
fn the_new_keys_parse_and_refuse_with_line_and_key() {
    let p = parse(
        "session_env = [\"MY_SESSION\", \"_X1\"]\nhibernate_dir = \"/srv/hib\"\nhibernate_max_bytes = \"1T\"\ncriu_path = \"/usr/local/sbin/criu\"\n[defaults]\non_main_exit = \"stop\"\nmain_exit_grace = \"0s\"\nhibernate_after = \"0s\"\nhibernate_hold = \"never\"\n",
    );
    assert_eq!(p.global.session_env, vec!["MY_SESSION", "_X1"]);
    assert_eq!(p.global.hibernate_dir, PathBuf::from("/srv/hib"));
    assert_eq!(p.global.hibernate_max_bytes, Some(1 << 40));
    assert_eq!(p.global.criu_path, PathBuf::from("/usr/local/sbin/criu"));
    let d = p.defaults();
    assert_eq!(d.on_main_exit, OnMainExit::Stop);
    assert_eq!(d.main_exit_grace, Duration::ZERO);
    assert_eq!(d.hibernate_after, Some(Duration::ZERO));
    assert_eq!(d.hibernate_hold, None);
    assert!(parse("session_env = []\n").global.session_env.is_empty());

    let cases = [
        (
            "session_env = \"GOV_SESSION\"\n",
            1,
            "session_env",
            "expected a list of environment variable names",
        ),
        (
            "session_env = [\"OK\", \"1BAD\"]\n",
            1,
            "session_env",
            "\"1BAD\" is not an environment variable name",
        ),
        (
            "session_env = [\"A-B\"]\n",
            1,
            "session_env",
            "not an environment variable name",
        ),
        (
            "hibernate_dir = \"var/lib\"\n",
            1,
            "hibernate_dir",
            "must be an absolute path",
        ),
        (
            "hibernate_max_bytes = 0\n",
            1,
            "hibernate_max_bytes",
            "a limit of 0",
        ),
        (
            "criu_path = \"bin/criu\"\n",
            1,
            "criu_path",
            "a program name or an absolute path",
        ),
        (
            "[defaults]\non_main_exit = \"kill\"\n",
            2,
            "on_main_exit",
            "expected \"keep\" or \"stop\", found \"kill\"",
        ),
        (
            "[defaults]\nmain_exit_grace = \"never\"\n",
            2,
            "main_exit_grace",
            "invalid duration",
        ),
        (
            "[defaults]\nhibernate_hold = \"0s\"\n",
            2,
            "hibernate_hold",
            "longer than zero",
        ),
        (
            "[defaults]\nhibernate_after = 5\n",
            2,
            "hibernate_after",
            "found integer 5",
        ),
        (
            "[defaults]\nsession_env = []\n",
            2,
            "session_env",
            "is a global key",
        ),
        (
            "on_main_exit = \"keep\"\n",
            1,
            "on_main_exit",
            "is a gate key",
        ),
    ];
    for (text, line, key, needle) in cases {
        refused(text, line, Some(key), needle);
    }
}

/// A policy exercising every kind of value, optional globals set and unset,
/// named and unnamed rules, and a rule switching a cap back off.
const RICH: &str = r#"
socket = "/run/gov-x/gov.sock"
socket_mode = 0o640
admin_group = "wheel"
scan_interval = "250ms"
memory_budget = "15E"
max_gates_per_user = 7
metrics_listen = "[::1]:9477"
session_env = []
hibernate_max_bytes = "1.5G"

[defaults]
idle_timeout = "1h30m"
orphan_grace = "0s"
stop_signal = "HUP"
busy_cpu_percent = 12.5
memory_max = 4096
cpu_max = "2500 50000"
max_gates = 3
on_main_exit = "stop"

[[project]]
name = "big \"models\""
path = "/home/*/src/Big*"
max_gates = 0
on_limit = "evict-idlest"
pids_max = "max"

[[project]]
path = "/srv/**"
max_runtime = "2h"
cpu_max = "150%"
"#;

#[test]
fn printed_policy_loads_back_to_the_same_policy() {
    for text in ["", RICH] {
        let p = parse(text);
        let printed = p.to_toml();
        assert_eq!(parse(&printed), p, "{printed}");
        // Printing is a fixed point.
        assert_eq!(parse(&printed).to_toml(), printed);
    }
    let printed = parse(RICH).to_toml();
    for line in [
        "socket_mode = \"0640\"",
        "# socket_group is not set",
        "memory_budget = \"17293822569102704640\"",
        "session_env = []",
        "[defaults]",
        "stop_signal = \"SIGHUP\"",
        "cpu_max = \"2500 50000\"",
        "max_runtime = \"never\"",
        "hibernate_hold = \"7d\"",
        "max_gates = 3",
        "max_gates = 0",
        "path = \"/srv/**\"",
        "cpu_max = \"150%\"",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "lacks {line:?}:\n{printed}"
        );
    }
    assert_eq!(printed.matches("[[project]]").count(), 2, "{printed}");
    // The embedded policy prints an unlimited cap as the docs write it.
    let embedded = Policy::embedded().to_toml();
    assert!(embedded.contains("\nmax_gates = 0\n"), "{embedded}");
    assert!(
        embedded.contains("\nhibernate_max_bytes = \"max\"\n"),
        "{embedded}"
    );
}

#[test]
fn check_config_reads_a_file_given_which_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    // A path given that is not there is a mistake, not the defaults.
    let missing = dir.path().join("absent.toml");
    assert_eq!(check_config(Some(&missing), false), 1);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[defaults]\npinned = 1\nzzz = 2\n").unwrap();
    assert_eq!(check_config(Some(&bad), true), 1);
    let good = dir.path().join("good.toml");
    std::fs::write(&good, RICH).unwrap();
    assert_eq!(check_config(Some(&good), false), 0);
}
