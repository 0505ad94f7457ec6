//! Property tests of the two parsers that read what others write: the daemon's
//! request line (`protocol::parse_request`, what every connection goes through,
//! and `spawn::Asked::parse`, what its gate becomes) and gov.toml
//! (`Policy::parse`, what the daemon and `check-config` read).
//! Inputs are built from valid ones and then broken, token by token and byte by
//! byte, so most reach deep into the parsers rather than failing at the first
//! brace. Beyond "never panics": a request that parses re-encodes to itself, and
//! a policy that parses spells back (check-config --print) to the same policy.
//!
//! `cargo test --test properties` runs 2000 cases of each; PROPTEST_CASES sets
//! another count (README, Testing: the million-case run). What a run finds is
//! kept in proptest-regressions/properties.txt and replayed first.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::{json, Value};

use gov::names;
use gov::policy::Policy;
use gov::protocol::{self, GateSpec, Request};
use gov::spawn::Asked;

/// 2000 cases unless PROPTEST_CASES says otherwise (proptest reads it itself);
/// failures are kept where the README says.
fn config() -> Config {
    let config = match std::env::var_os("PROPTEST_CASES") {
        Some(_) => Config::default(),
        // Nothing here touches the kernel, and the VM emulates its CPU: a
        // token run there, the host's run is the one that counts.
        None if std::env::var_os("GOV_VM").is_some() => Config::with_cases(100),
        None => Config::with_cases(2000),
    };
    Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/properties.txt",
        ))),
        ..config
    }
}

// --- shared tokens -------------------------------------------------------------------

/// Strings that parsers trip on: empty, huge, unicode, control characters, NULs,
/// lone escapes, numbers in strings.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9_./-]{1,12}",
        any::<String>(),
        "[\\x00-\\x1f\\x7f\"\\\\]{1,8}",
        "\\PC{1,40}",
        Just("\u{202e}\u{0}\u{feff}é\u{10ffff}".to_string()),
        Just("9".repeat(400)),
        Just("x".repeat(70 * 1024)),
        Just("/".repeat(5000)),
    ]
}

// --- requests ------------------------------------------------------------------------

fn gate_spec() -> impl Strategy<Value = GateSpec> {
    (
        nasty_string(),
        proptest::option::of(nasty_string()),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
        proptest::option::of(prop_oneof![nasty_string(), Just("1h30m".to_string())]),
        any::<bool>(),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(
            |(project, session, owner_pid, no_owner, max_runtime, pinned, stop)| GateSpec {
                project,
                session,
                owner_pid,
                no_owner,
                max_runtime,
                pinned,
                stop_on_main_exit: stop,
            },
        )
}

/// Every kind of request, with arbitrary field values.
fn request() -> impl Strategy<Value = Request> {
    let s = nasty_string;
    prop_oneof![
        (gate_spec(), any::<bool>())
            .prop_map(|(gate, hibernate)| Request::Spawn { gate, hibernate }),
        proptest::collection::vec(s(), 0..4).prop_map(|cmd| Request::StartWorker { cmd }),
        (any::<u32>(), gate_spec()).prop_map(|(pid, gate)| Request::Adopt { pid, gate }),
        Just(Request::List),
        s().prop_map(|gate| Request::Show { gate }),
        (proptest::option::of(s()), proptest::option::of(s()))
            .prop_map(|(gate, session)| Request::Touch { gate, session }),
        s().prop_map(|gate| Request::Freeze { gate }),
        s().prop_map(|gate| Request::Thaw { gate }),
        s().prop_map(|gate| Request::Kill { gate }),
        s().prop_map(|gate| Request::Pin { gate }),
        s().prop_map(|gate| Request::Unpin { gate }),
        (s(), s()).prop_map(|(gate, session)| Request::Tag { gate, session }),
        proptest::option::of(any::<usize>()).prop_map(|limit| Request::Events { limit }),
        Just(Request::Metrics),
        Just(Request::Hello),
    ]
}

/// Any JSON value, a few levels deep, with the edges of each kind.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(4294967296u64)),
        nasty_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One way to break a valid request's JSON object.
#[derive(Debug, Clone)]
enum JsonEdit {
    /// A field (by index, of those present) gets another value.
    Set(usize, Value),
    Remove(usize),
    Add(String, Value),
    Kind(String),
    Version(Value),
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    let kinds = prop_oneof![
        Just("spawn".to_string()),
        Just("adopt".to_string()),
        Just("start_worker".to_string()),
        Just("touch".to_string()),
        Just("tag".to_string()),
        Just("events".to_string()),
        Just("Kill".to_string()),
        nasty_string(),
    ];
    prop_oneof![
        (any::<usize>(), json_value()).prop_map(|(i, v)| JsonEdit::Set(i, v)),
        any::<usize>().prop_map(JsonEdit::Remove),
        ("[a-z_]{1,12}", json_value()).prop_map(|(k, v)| JsonEdit::Add(k, v)),
        kinds.prop_map(JsonEdit::Kind),
        prop_oneof![
            Just(json!(0)),
            Just(json!(2)),
            Just(json!(u64::MAX)),
            Just(json!("1")),
            Just(json!(1.0)),
            Just(Value::Null),
        ]
        .prop_map(JsonEdit::Version),
    ]
}

fn apply_json(mut v: Value, edit: &JsonEdit) -> Value {
    let Value::Object(map) = &mut v else {
        return v;
    };
    let key_at = |map: &serde_json::Map<String, Value>, i: usize| {
        let keys: Vec<String> = map.keys().cloned().collect();
        keys.get(i % keys.len().max(1)).cloned()
    };
    match edit {
        JsonEdit::Set(i, value) => {
            if let Some(k) = key_at(map, *i) {
                map.insert(k, value.clone());
            }
        }
        JsonEdit::Remove(i) => {
            if let Some(k) = key_at(map, *i) {
                map.remove(&k);
            }
        }
        JsonEdit::Add(k, value) => {
            map.insert(k.clone(), value.clone());
        }
        JsonEdit::Kind(kind) => {
            map.insert("type".into(), Value::from(kind.as_str()));
        }
        JsonEdit::Version(value) => {
            map.insert("v".into(), value.clone());
        }
    }
    v
}

/// One way to break a line's bytes.
#[derive(Debug, Clone)]
enum ByteEdit {
    Truncate(usize),
    Insert(usize, u8),
    Flip(usize, u8),
    Delete(usize),
    /// The line wrapped `depth` times in `[` or `{"a":`.
    Nest(usize, bool),
    Repeat(usize),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        any::<usize>().prop_map(ByteEdit::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        (any::<usize>(), 1u8..).prop_map(|(i, b)| ByteEdit::Flip(i, b)),
        any::<usize>().prop_map(ByteEdit::Delete),
        (prop_oneof![1usize..200, Just(100_000)], any::<bool>())
            .prop_map(|(d, obj)| ByteEdit::Nest(d, obj)),
        (2usize..5).prop_map(ByteEdit::Repeat),
    ]
}

fn apply_bytes(mut line: Vec<u8>, edit: &ByteEdit) -> Vec<u8> {
    let at = |i: usize, len: usize| i % (len + 1);
    match *edit {
        ByteEdit::Truncate(i) => line.truncate(at(i, line.len())),
        ByteEdit::Insert(i, b) => line.insert(at(i, line.len()), b),
        ByteEdit::Flip(i, b) if !line.is_empty() => {
            let i = i % line.len();
            line[i] ^= b;
        }
        ByteEdit::Delete(i) if !line.is_empty() => {
            line.remove(i % line.len());
        }
        ByteEdit::Nest(depth, obj) => {
            let (open, close) = match obj {
                true => (&b"{\"a\":"[..], &b"}"[..]),
                false => (&b"["[..], &b"]"[..]),
            };
            line = [open.repeat(depth), line, close.repeat(depth)].concat();
        }
        ByteEdit::Repeat(n) => line = line.repeat(n),
        ByteEdit::Flip(..) | ByteEdit::Delete(_) => {}
    }
    line
}

/// The daemon's verdict on a line: a request or an error message, never a panic.
/// A request it accepts means what it says: encoding it again gives it back.
fn check_request_line(line: &[u8]) -> Result<(), TestCaseError> {
    match protocol::parse_request(line) {
        Ok(request) => {
            let again = protocol::encode_request(request.clone());
            let back = protocol::parse_request(&again[..again.len() - 1]);
            prop_assert_eq!(back, Ok(request));
        }
        Err(message) => prop_assert!(!message.is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_valid_request_parses_to_itself(request in request()) {
        let line = protocol::encode_request(request.clone());
        prop_assert_eq!(protocol::parse_request(&line[..line.len() - 1]), Ok(request));
    }

    #[test]
    fn a_mutated_request_is_a_request_or_an_error(
        request in request(),
        json_edits in proptest::collection::vec(json_edit(), 0..4),
        byte_edits in proptest::collection::vec(byte_edit(), 0..3),
    ) {
        let mut value = serde_json::to_value(protocol::RequestFrame { v: protocol::VERSION, request }).unwrap();
        for edit in &json_edits {
            value = apply_json(value, edit);
        }
        let mut line = serde_json::to_vec(&value).unwrap();
        for edit in &byte_edits {
            line = apply_bytes(line, edit);
        }
        check_request_line(&line)?;
    }

    #[test]
    fn any_bytes_are_a_request_or_an_error(line in proptest::collection::vec(any::<u8>(), 0..256)) {
        check_request_line(&line)?;
    }

    /// What a parsed request's gate becomes, in the daemon and root's direct
    /// spawn alike: a checked gate or a reason, never a panic.
    #[test]
    fn a_gate_spec_is_asked_for_or_refused(spec in gate_spec(), env_session in nasty_string()) {
        let vars = ["AGENT_SESSION".to_string()];
        let asked = Asked::parse(spec.clone(), false, &vars, |_| Some(env_session.clone()));
        match asked {
            Ok(asked) => {
                prop_assert_eq!(&asked.project, &spec.project);
                prop_assert!(names::check_session(&asked.session).is_ok());
                prop_assert_eq!(asked.max_runtime_ms.is_some(), spec.max_runtime.is_some());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

// --- gov.toml ------------------------------------------------------------------------

/// Every key, as `check-config --print` spells the embedded policy (`# key is not
/// set` for the optional ones), with the table it belongs in.
fn policy_keys() -> (Vec<String>, Vec<String>) {
    let text = Policy::embedded().to_toml();
    let (mut global, mut gate, mut in_defaults) = (Vec::new(), Vec::new(), false);
    for line in text.lines() {
        if line == "[defaults]" {
            in_defaults = true;
        }
        let key = line
            .trim_start_matches("# ")
            .split([' ', '='])
            .next()
            .unwrap_or("");
        if key.is_empty() || key.starts_with('[') {
            continue;
        }
        match in_defaults {
            true => gate.push(key.to_string()),
            false => global.push(key.to_string()),
        }
    }
    (global, gate)
}

/// `s` as a TOML basic string, escaped as TOML wants.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A key: most often a real one, sometimes a near miss, a dotted or quoted one.
fn toml_key(keys: Vec<String>) -> impl Strategy<Value = String> {
    let real = proptest::sample::select(keys);
    prop_oneof![
        6 => real.clone(),
        1 => real.clone().prop_map(|k| format!("{k}x")),
        1 => real.clone().prop_map(|k| format!("\"{k}\"")),
        1 => real.prop_map(|k| format!("defaults.{k}")),
        1 => "[a-z_]{1,20}",
        1 => "\\PC{1,8}".prop_map(|k| toml_string(&k)),
    ]
}

/// A value token: the grammars gov.toml has (durations, sizes, limits, signals,
/// modes, paths, globs, cpu.max) at their edges, and TOML's own odd corners.
fn toml_value() -> impl Strategy<Value = String> {
    let quoted = |choices: &'static [&'static str]| {
        proptest::sample::select(choices).prop_map(|s| format!("\"{s}\""))
    };
    let scalar = prop_oneof![
        quoted(&[
            "0",
            "0s",
            "1ns",
            "250ms",
            "90s",
            "30m",
            "1h30m",
            "1h 30m",
            "1.5h",
            "2d",
            "1w",
            "73000d",
            "73001d",
            "1e400s",
            "5 minutes",
            "-1s",
            "1M",
            "never",
            "NEVER",
            "",
        ]),
        quoted(&[
            "4096",
            "4096B",
            "512M",
            "1.5G",
            "4G",
            "4GiB",
            "4GB",
            "16E",
            "17E",
            "0.0001K",
            "18446744073709551615",
            "18446744073709551616",
            "1.5",
            "max",
            "0",
            "-1G",
            "nanG",
        ]),
        quoted(&[
            "SIGTERM",
            "TERM",
            "sigkill",
            "SIGSTOP",
            "9",
            "150%",
            "1%",
            "0%",
            "1000 100000",
            "999 100000",
            "1000 1000001",
            "100000000000000000000%",
            "0666",
            "0777",
            "01000",
            "0o660",
            "delegated",
            "gov",
            "/a/b",
            "a/../b",
            ".",
            "/",
            "criu",
            "/usr/sbin/criu",
            "root",
            "0",
            "65535",
            "4294967296",
            "127.0.0.1:9477",
            "[::1]:9477",
            "localhost:1",
            "keep",
            "stop",
            "refuse",
            "evict-idlest",
            "/home/*/src/**",
            "/[",
            "/a/**b",
            "~/x",
        ]),
        any::<i64>().prop_map(|i| i.to_string()),
        Just("9223372036854775807".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("99999999999999999999".to_string()),
        Just("0o777".to_string()),
        Just("0xffffffff".to_string()),
        Just("0b1".to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        Just("1e308".to_string()),
        Just("5e-324".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        // Deeper than the TOML parser recurses: an error, not a stack overflow.
        Just(format!("{}{}", "[".repeat(1000), "]".repeat(1000))),
        Just(format!("{}1{}", "{a=".repeat(1000), "}".repeat(1000))),
        nasty_string().prop_map(|s| toml_string(&s)),
        nasty_string().prop_map(|s| format!("'''{s}'''")),
    ];
    scalar.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(", "))),
            proptest::collection::vec(("[a-z_]{1,10}", inner), 0..3).prop_map(|v| {
                let kv: Vec<String> = v.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", kv.join(", "))
            }),
        ]
    })
}

fn assignment(keys: Vec<String>) -> impl Strategy<Value = String> {
    (toml_key(keys), toml_value()).prop_map(|(k, v)| format!("{k} = {v}"))
}

/// A gov.toml: top-level keys, maybe `[defaults]`, a few `[[project]]`s.
fn policy_text() -> impl Strategy<Value = String> {
    let (global, gate) = policy_keys();
    let rule_keys = [gate.clone(), vec!["path".into(), "name".into()]].concat();
    let rule = (
        prop_oneof![
            4 => Just("path = \"/home/*/src/*\"".to_string()),
            1 => toml_value().prop_map(|v| format!("path = {v}")),
            1 => Just(String::new()),
        ],
        proptest::collection::vec(assignment(rule_keys), 0..5),
    )
        .prop_map(|(path, keys)| format!("[[project]]\n{path}\n{}\n", keys.join("\n")));
    (
        proptest::collection::vec(assignment(global), 0..5),
        proptest::option::of(proptest::collection::vec(assignment(gate), 0..8)),
        proptest::collection::vec(rule, 0..3),
    )
        .prop_map(|(top, defaults, rules)| {
            let mut text = top.join("\n") + "\n";
            if let Some(d) = defaults {
                text += &format!("[defaults]\n{}\n", d.join("\n"));
            }
            text + &rules.concat()
        })
}

/// A valid file to break: the embedded policy as `check-config --print` spells it,
/// with a project rule, or the shipped packaging/gov.toml with every key set.
fn valid_policy_text() -> impl Strategy<Value = String> {
    let printed = Policy::embedded().to_toml()
        + "\n[[project]]\npath = \"/srv/**/gate\"\nname = \"gates\"\nidle_timeout = \"1h30m\"\nmemory_max = \"1.5G\"\n";
    let shipped: String = include_str!("../packaging/gov.toml")
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .filter(|l| l.contains(" = "))
                .unwrap_or(l)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    prop_oneof![Just(printed), Just(shipped)]
}

/// One way to break a file: a line, a value or the bytes.
#[derive(Debug, Clone)]
enum TextEdit {
    DropLine(usize),
    DupLine(usize),
    /// The value of the line (after its `=`) becomes another.
    SetValue(usize, String),
    InsertLine(usize, String),
    Bytes(ByteEdit),
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    let (global, gate) = policy_keys();
    let keys = [global, gate].concat();
    prop_oneof![
        1 => any::<usize>().prop_map(TextEdit::DropLine),
        1 => any::<usize>().prop_map(TextEdit::DupLine),
        3 => (any::<usize>(), toml_value()).prop_map(|(i, v)| TextEdit::SetValue(i, v)),
        1 => (any::<usize>(), prop_oneof![
            assignment(keys),
            Just("[defaults]".to_string()),
            Just("[[project]]".to_string()),
            Just("[project]".to_string()),
            Just("defaults = 1".to_string()),
            Just("project = [1, 2]".to_string()),
        ]).prop_map(|(i, l)| TextEdit::InsertLine(i, l)),
        1 => byte_edit().prop_map(TextEdit::Bytes),
    ]
}

fn apply_text(text: String, edit: &TextEdit) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let n = lines.len().max(1);
    match edit {
        TextEdit::DropLine(i) if !lines.is_empty() => {
            lines.remove(i % n);
        }
        TextEdit::DupLine(i) if !lines.is_empty() => {
            let line = lines[i % n].clone();
            lines.insert(i % n, line);
        }
        TextEdit::SetValue(i, v) => {
            let assigned: Vec<usize> = (0..lines.len())
                .filter(|&j| lines[j].contains(" = "))
                .collect();
            if let Some(&j) = assigned.get(i % assigned.len().max(1)) {
                let key = lines[j].split(" = ").next().unwrap_or("").to_string();
                lines[j] = format!("{key} = {v}");
            }
        }
        TextEdit::InsertLine(i, l) => lines.insert(i % (lines.len() + 1), l.clone()),
        TextEdit::Bytes(b) => {
            return String::from_utf8_lossy(&apply_bytes(text.into_bytes(), b)).into_owned()
        }
        TextEdit::DropLine(_) | TextEdit::DupLine(_) => {}
    }
    lines.join("\n") + "\n"
}

/// What the daemon makes of a file: a policy that `check-config --print` spells
/// back to itself, or errors that each name a line of the file.
fn check_policy_text(text: &str) -> Result<(), TestCaseError> {
    let origin = Path::new("gov.toml");
    match Policy::parse_all(text, origin) {
        Ok(policy) => {
            let printed = policy.to_toml();
            let again = Policy::parse(&printed, Path::new("printed"));
            prop_assert_eq!(again.as_ref(), Ok(&policy), "printed as:\n{}", printed);
        }
        Err(errors) => {
            prop_assert!(!errors.is_empty());
            let lines = text.lines().count() + 1;
            for e in errors {
                prop_assert!(e.line.is_some_and(|l| l >= 1 && l <= lines), "{}", e);
                prop_assert!(!e.message.is_empty());
            }
        }
    }
    Ok(())
}

/// A duration as a person writes one: "90s", "1h30m", "1.5h", "0.25ms", "0".
fn duration_text() -> impl Strategy<Value = String> {
    let unit = proptest::sample::select(&["ns", "us", "ms", "s", "m", "h", "d", "w"][..]);
    let part =
        (0u64..100_000, proptest::option::of(0u32..1000), unit).prop_map(
            |(n, frac, u)| match frac {
                Some(f) => format!("{n}.{f}{u}"),
                None => format!("{n}{u}"),
            },
        );
    prop_oneof![
        Just("0".to_string()),
        proptest::collection::vec(part, 1..4).prop_map(|p| p.concat()),
    ]
}

/// A size: bytes, or a number with a binary unit.
fn size_text() -> impl Strategy<Value = String> {
    let unit =
        proptest::sample::select(&["", "B", "K", "M", "G", "T", "P", "E", "k", "KiB", "GiB"][..]);
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..5000, proptest::option::of(0u32..1000), unit).prop_map(|(n, f, u)| match f {
            Some(f) => format!("\"{n}.{f}{u}\""),
            None => format!("\"{n}{u}\""),
        }),
    ]
}

/// A value in the grammar of `key` (most of them valid), so that many policies
/// parse and their spelling back is put to the test.
fn value_for(key: &str) -> BoxedStrategy<String> {
    let quoted = |s: BoxedStrategy<String>| s.prop_map(|s| format!("\"{s}\"")).boxed();
    match key {
        "scan_interval" | "stop_grace" | "frozen_hold" | "main_exit_grace" => {
            quoted(duration_text().boxed())
        }
        "idle_timeout" | "orphan_grace" | "max_runtime" | "hibernate_after" | "hibernate_hold" => {
            quoted(prop_oneof![duration_text(), Just("never".to_string())].boxed())
        }
        "memory_max"
        | "memory_high"
        | "project_memory_max"
        | "memory_budget"
        | "hibernate_max_bytes" => prop_oneof![size_text(), Just("\"max\"".to_string())].boxed(),
        "pids_max" | "project_pids_max" => prop_oneof![
            any::<u32>().prop_map(|n| n.to_string()),
            Just("\"max\"".to_string())
        ]
        .boxed(),
        "busy_cpu_percent" => prop_oneof![
            (0.0f64..=100.0).prop_map(|f| format!("{f:?}")),
            (0u32..=100).prop_map(|n| n.to_string()),
        ]
        .boxed(),
        "cpu_max" => prop_oneof![
            (0u32..10_000).prop_map(|p| format!("\"{p}%\"")),
            (0u64..2_000_000, 0u64..2_000_000).prop_map(|(q, p)| format!("\"{q} {p}\"")),
            Just("\"max\"".to_string()),
        ]
        .boxed(),
        "max_gates" | "max_gates_per_user" | "event_history" => {
            any::<u32>().prop_map(|n| n.to_string()).boxed()
        }
        "socket_mode" => (0u32..0o2000).prop_map(|m| format!("\"{m:04o}\"")).boxed(),
        "stop_signal" => quoted(
            proptest::sample::select(&["SIGTERM", "int", "HUP", "sigusr2", "KILL"][..])
                .prop_map(String::from)
                .boxed(),
        ),
        "memory_pressure" => prop_oneof![
            (0.0f64..=120.0).prop_map(|p| format!("\"{p}%\"")),
            Just("\"off\"".to_string()),
        ]
        .boxed(),
        "memory_available_min" => prop_oneof![
            (0.0f64..=120.0).prop_map(|p| format!("\"{p}%\"")),
            size_text(),
            Just("\"off\"".to_string()),
        ]
        .boxed(),
        "pinned" | "reclaim_when_frozen" | "oom_group" | "pressure_stop" => {
            any::<bool>().prop_map(|b| b.to_string()).boxed()
        }
        "on_limit" => quoted(
            proptest::sample::select(&["refuse", "evict-idlest"][..])
                .prop_map(String::from)
                .boxed(),
        ),
        "on_main_exit" => quoted(
            proptest::sample::select(&["keep", "stop"][..])
                .prop_map(String::from)
                .boxed(),
        ),
        "socket" | "hibernate_dir" => quoted("/[a-z]{1,8}(/[a-z0-9._-]{1,12}){0,3}".boxed()),
        "criu_path" => {
            quoted(prop_oneof!["[a-z]{1,8}", "/[a-z]{1,8}(/[a-z0-9._-]{1,12}){0,3}"].boxed())
        }
        "cgroup_root" => quoted(
            prop_oneof![
                Just("delegated".to_string()),
                "/?[a-z0-9-]{1,8}(/[a-z0-9._-]{1,8}){0,2}"
            ]
            .boxed(),
        ),
        "socket_group" | "admin_group" => quoted(
            prop_oneof![
                "[a-z_][a-z0-9_-]{0,15}",
                any::<u32>().prop_map(|n| n.to_string())
            ]
            .boxed(),
        ),
        "metrics_listen" => quoted(
            prop_oneof![
                any::<(std::net::Ipv4Addr, u16)>().prop_map(|(ip, p)| format!("{ip}:{p}")),
                any::<(std::net::Ipv6Addr, u16)>().prop_map(|(ip, p)| format!("[{ip}]:{p}")),
            ]
            .boxed(),
        ),
        "session_env" => proptest::collection::vec("[A-Z_][A-Z0-9_]{0,12}", 0..3)
            .prop_map(|v| {
                format!(
                    "[{}]",
                    v.iter()
                        .map(|s| toml_string(s))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .boxed(),
        "name" => nasty_string().prop_map(|s| toml_string(&s)).boxed(),
        _ => toml_value().boxed(),
    }
}

/// The printed embedded policy with some keys given values of their own grammar.
fn well_typed_policy_text() -> impl Strategy<Value = String> {
    let (global, gate) = policy_keys();
    let assign = |keys: Vec<String>| {
        proptest::sample::select(keys)
            .prop_flat_map(|k| value_for(&k).prop_map(move |v| format!("{k} = {v}")))
    };
    let rule = (
        proptest::collection::vec(assign(gate.clone()), 0..4),
        "[a-zA-Z0-9 ./-]{1,40}",
    )
        .prop_map(|(keys, name)| {
            (
                keys,
                format!("[[project]]\npath = \"/p/*\"\nname = \"{name}\""),
            )
        });
    (
        proptest::collection::vec(assign(global), 0..4),
        proptest::collection::vec(assign(gate), 0..6),
        proptest::collection::vec(rule, 0..3),
    )
        .prop_map(|(top, defaults, rules)| {
            // TOML refuses a key set twice; keep the last of each.
            let dedup = |lines: Vec<String>| {
                let mut seen = std::collections::BTreeMap::new();
                for l in lines {
                    seen.insert(l.split(" = ").next().unwrap_or("").to_string(), l);
                }
                seen.into_values().collect::<Vec<_>>().join("\n")
            };
            let rules: String = rules
                .into_iter()
                .map(|(keys, head)| format!("{head}\n{}\n", dedup(keys)))
                .collect();
            format!("{}\n[defaults]\n{}\n{rules}", dedup(top), dedup(defaults))
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_well_typed_policy_parses_and_spells_back_or_is_refused(text in well_typed_policy_text()) {
        check_policy_text(&text)?;
    }

    #[test]
    fn a_generated_policy_parses_and_spells_back_or_is_refused(text in policy_text()) {
        check_policy_text(&text)?;
    }

    #[test]
    fn a_broken_valid_policy_parses_and_spells_back_or_is_refused(
        text in valid_policy_text(),
        edits in proptest::collection::vec(text_edit(), 1..4),
    ) {
        let text = edits.iter().fold(text, apply_text);
        check_policy_text(&text)?;
    }

    #[test]
    fn any_text_parses_or_is_refused(text in "\\PC{0,200}") {
        check_policy_text(&text)?;
    }
}
