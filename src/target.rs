//! What a person names a gate by: its id, any unique prefix of it (`g3fa`,
//! as docker and git take prefixes), or a session of theirs. Resolved in the
//! client against the gates it may see (one `list` request, or a walk of the
//! tree for root without a daemon), so the daemon only ever gets full ids.
//! A full id needs no resolving: `gov touch GATE` stays one round trip.

use std::fmt::Write as _;

/// A gate the caller may see, as far as naming it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub project: String,
    pub session: String,
}

/// What a word named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// One gate, by its full id.
    Gate(String),
    /// A session of the caller's, and the ids of its gates (at least one).
    Session { session: String, gates: Vec<String> },
}

/// Does the command take a session where it takes a gate?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    /// touch, kill, show, freeze, thaw: a session stands for its gates.
    Accepted,
    /// pin, unpin, tag: one gate, by id or prefix only.
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
}

/// Could `word` be the start of a gate id ("g" and lowercase hex digits)?
pub fn is_id_prefix(word: &str) -> bool {
    word.len() <= 11
        && word.starts_with('g')
        && word[1..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// Resolves `word` against the gates the caller may see. `command` names the
/// verb in error messages.
pub fn resolve(
    word: &str,
    gates: &[Candidate],
    sessions: Sessions,
    command: &str,
) -> Result<Resolved, TargetError> {
    let by_prefix: Vec<&Candidate> = if is_id_prefix(word) {
        gates.iter().filter(|g| g.id.starts_with(word)).collect()
    } else {
        Vec::new()
    };
    let in_session: Vec<&Candidate> = gates.iter().filter(|g| g.session == word).collect();
    match (by_prefix.as_slice(), in_session.is_empty(), sessions) {
        ([one], true, _) | ([one], false, Sessions::Refused) => Ok(Resolved::Gate(one.id.clone())),
        ([], false, Sessions::Accepted) => Ok(Resolved::Session {
            session: word.to_string(),
            gates: in_session.iter().map(|g| g.id.clone()).collect(),
        }),
        ([], false, Sessions::Refused) => Err(TargetError::NotFound(format!(
            "{word:?} is a session, not a gate; gov {command} takes one gate: \
             `gov ps --session {word}` lists its gates"
        ))),
        ([], true, _) => Err(TargetError::NotFound(not_found(word, sessions))),
        // Several gates start with it, or it is both a prefix and a session.
        (many, _, _) => {
            let mut text = format!("{word:?} is ambiguous; it could be:");
            for g in many {
                let _ = write!(
                    text,
                    "\n  gate {}  (project {}, session {})",
                    g.id, g.project, g.session
                );
            }
            if !in_session.is_empty() && sessions == Sessions::Accepted {
                let _ = write!(
                    text,
                    "\n  session {word}  ({} gate{})",
                    in_session.len(),
                    if in_session.len() == 1 { "" } else { "s" }
                );
            }
            text.push_str("\ngive more of the gate id");
            if !in_session.is_empty() && sessions == Sessions::Accepted {
                let _ = write!(text, ", or --session {word} for the session");
            }
            Err(TargetError::Ambiguous(text))
        }
    }
}

/// The answer when no gate and no session is named so.
pub fn not_found(word: &str, sessions: Sessions) -> String {
    let what = if is_id_prefix(word) {
        format!("no gate of yours has an id starting with {word:?}")
    } else {
        format!("{word:?} is not a gate id (\"g\" and 10 hex digits, or a unique prefix of one)")
    };
    match sessions {
        Sessions::Accepted => {
            format!("{what}, and no session of yours is named so (`gov ps` lists both)")
        }
        Sessions::Refused => format!("{what} (`gov ps` lists your gates)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(id: &str, session: &str) -> Candidate {
        Candidate {
            id: id.into(),
            project: "/src/p".into(),
            session: session.into(),
        }
    }

    fn gates() -> Vec<Candidate> {
        vec![
            gate("g3fa2c1d05b", "s1"),
            gate("g3fa9000000", "s1"),
            gate("g7700000000", "g77"),
            gate("gabc0000000", "3fa2c1d0"),
        ]
    }

    #[test]
    fn a_unique_prefix_names_its_gate() {
        for (word, id) in [
            ("g3fa2", "g3fa2c1d05b"),
            ("g3fa9", "g3fa9000000"),
            ("ga", "gabc0000000"),
            ("g3fa2c1d05b", "g3fa2c1d05b"),
        ] {
            assert_eq!(
                resolve(word, &gates(), Sessions::Accepted, "kill"),
                Ok(Resolved::Gate(id.into())),
                "{word}"
            );
        }
    }

    #[test]
    fn an_ambiguous_prefix_lists_the_candidates() {
        let Err(TargetError::Ambiguous(text)) =
            resolve("g3fa", &gates(), Sessions::Accepted, "kill")
        else {
            panic!()
        };
        assert!(
            text.contains("g3fa2c1d05b") && text.contains("g3fa9000000"),
            "{text}"
        );
        assert!(!text.contains("gabc"), "{text}");
    }

    #[test]
    fn a_prefix_that_is_also_a_session_is_ambiguous_where_sessions_count() {
        let Err(TargetError::Ambiguous(text)) =
            resolve("g77", &gates(), Sessions::Accepted, "kill")
        else {
            panic!()
        };
        assert!(text.contains("gate g7700000000"), "{text}");
        assert!(text.contains("--session g77"), "{text}");
        // pin takes gates only: the prefix is unique.
        assert_eq!(
            resolve("g77", &gates(), Sessions::Refused, "pin"),
            Ok(Resolved::Gate("g7700000000".into()))
        );
    }

    #[test]
    fn a_session_stands_for_its_gates() {
        assert_eq!(
            resolve("s1", &gates(), Sessions::Accepted, "kill"),
            Ok(Resolved::Session {
                session: "s1".into(),
                gates: vec!["g3fa2c1d05b".into(), "g3fa9000000".into()]
            })
        );
        let Err(TargetError::NotFound(text)) = resolve("s1", &gates(), Sessions::Refused, "pin")
        else {
            panic!()
        };
        assert!(
            text.contains("is a session") && text.contains("--session s1"),
            "{text}"
        );
    }

    #[test]
    fn nothing_matches() {
        for word in ["g999", "nope", "G3FA", "g3fa2c1d05b0"] {
            let Err(TargetError::NotFound(text)) =
                resolve(word, &gates(), Sessions::Accepted, "kill")
            else {
                panic!("{word}")
            };
            assert!(text.contains("no session of yours"), "{text}");
        }
        assert!(!is_id_prefix("g3fa2c1d05b0"));
        assert!(!is_id_prefix(""));
        assert!(is_id_prefix("g"));
    }
}
