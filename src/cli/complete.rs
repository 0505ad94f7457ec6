//! Shell completion through clap_complete's dynamic engine: at each TAB the
//! shell runs `GOV_COMPLETE=bash gov -- WORDS...` and gov answers from its own
//! clap definitions, so subcommands and options never drift from the parser.
//! A GATE, `--session` and `gov ps --project` complete from the caller's own
//! gates: the listing `gov ps` uses (the daemon's `list`, which it filters by
//! peer credentials; root without a daemon, the walk of cgroupfs). Why this
//! and not a completion verb: docs/design.md.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

use clap::CommandFactory;
use clap_complete::env::Shells;
use clap_complete::{CompleteEnv, CompletionCandidate};

use super::{Backend, Cli};
use crate::target::Candidate;

/// The variable that turns a run of gov into a completion request. Ours, not
/// clap's default `COMPLETE`: a host that happens to export COMPLETE=bash
/// must not turn its `gov touch` into a script on stdout.
pub const ENV: &str = "GOV_COMPLETE";

/// The command completed, and the one the scripts run for candidates: `gov`
/// as the shell finds it on PATH, as it does for the command being completed.
const BIN: &str = "gov";

/// The longest a TAB waits for the gates. The daemon answers `list` in
/// milliseconds; one that is stopped, or hangs, must not hang the shell.
pub const DEADLINE: Duration = Duration::from_millis(1000);

/// Answers a completion request and exits when GOV_COMPLETE is set; else
/// returns, having read one environment variable (main calls it first, and
/// `gov touch` on every tool call pays no more than that).
pub fn answer_if_asked() {
    // clap_complete reads the arguments and the working directory before it
    // looks at the variable: not on every `gov touch`.
    if std::env::var_os(ENV).is_none() {
        return;
    }
    CompleteEnv::with_factory(Cli::command)
        .var(ENV)
        .bin(BIN)
        .completer(BIN)
        .complete();
}

/// The script that registers gov's completion with `shell` (bash, zsh,
/// fish, elvish, powershell): what `GOV_COMPLETE=SHELL gov` prints, for
/// packaging/gen-assets.rs to put into the package.
pub fn registration(shell: &str) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    Shells::builtins()
        .completer(shell)?
        .write_registration(ENV, BIN, BIN, BIN, &mut buf)
        .expect("writing to memory");
    Some(buf)
}

/// The caller's gates, or none when nothing answers by DEADLINE: no daemon
/// (and not root), a daemon that says busy or never replies, an unreadable
/// tree. Nothing is printed: stderr is the line the person is editing.
fn listing() -> Vec<Candidate> {
    let (tx, rx) = mpsc::channel();
    // A thread of its own, so a daemon that accepts and never answers costs
    // the DEADLINE, not the client's 30 s reply timeout; gov exits once it
    // has answered the shell, and takes the thread with it.
    std::thread::spawn(move || {
        let found = Backend::connect().and_then(|mut b| b.candidates());
        let _ = tx.send(found.unwrap_or_default());
    });
    rx.recv_timeout(DEADLINE).unwrap_or_default()
}

/// GATE: the caller's gate ids, described by project and session (zsh and
/// fish show it; bash shows the ids alone).
pub fn gates() -> Vec<CompletionCandidate> {
    let mut gates = listing();
    gates.sort_by(|a, b| a.id.cmp(&b.id));
    gates
        .into_iter()
        .map(|g| {
            let help = format!("{}, session {}", g.project, g.session);
            CompletionCandidate::new(g.id).help(Some(help.into()))
        })
        .collect()
}

/// `--session`: the caller's sessions, with how many gates each has.
pub fn sessions() -> Vec<CompletionCandidate> {
    counted(listing().into_iter().map(|g| g.session))
}

/// `gov ps --project`: the projects of the caller's gates.
pub fn projects() -> Vec<CompletionCandidate> {
    counted(listing().into_iter().map(|g| g.project))
}

/// Each distinct word once, sorted, described by how many gates have it.
fn counted(words: impl Iterator<Item = String>) -> Vec<CompletionCandidate> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for w in words {
        *counts.entry(w).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(w, n)| {
            let help = format!("{n} gate{}", if n == 1 { "" } else { "s" });
            CompletionCandidate::new(w).help(Some(help.into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_word_once_sorted_with_its_count() {
        let got = counted(["s2", "s1", "s2"].iter().map(|s| s.to_string()));
        let shown: Vec<(String, String)> = got
            .iter()
            .map(|c| {
                (
                    c.get_value().to_string_lossy().into_owned(),
                    c.get_help().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("s1".to_string(), "1 gate".to_string()),
                ("s2".to_string(), "2 gates".to_string())
            ]
        );
    }

    #[test]
    fn every_shell_gets_a_script_that_asks_gov_through_its_own_variable() {
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            let script = String::from_utf8(registration(shell).unwrap()).unwrap();
            assert!(script.contains(ENV), "{shell}: {script}");
        }
        assert!(registration("csh").is_none());
    }
}
