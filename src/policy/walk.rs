//! Reading one gov.toml document: each key through its table's reader, every
//! problem at once with its line and key, and for an unknown key the likeliest fix.

use std::path::Path;

pub(super) use strsim::levenshtein as edit_distance;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::values::{rule_glob, rule_name, wrong};
use super::*;

/// What one file says, before layering.
#[derive(Debug, Default)]
pub(super) struct Document {
    pub(super) global: GlobalLayer,
    pub(super) defaults: GateLayer,
    pub(super) rules: Vec<Rule>,
}

/// The table a key was found in, for messages and for the list of valid keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Section {
    Top,
    Defaults,
    /// 1-based index of the `[[project]]` entry.
    Project(usize),
}

impl Section {
    pub(super) fn title(self) -> String {
        match self {
            Section::Top => "the top level".to_string(),
            Section::Defaults => "[defaults]".to_string(),
            Section::Project(n) => format!("[[project]] #{n}"),
        }
    }

    pub(super) fn valid_keys(self) -> Vec<&'static str> {
        match self {
            Section::Top => [names(GLOBAL_KEYS), TABLE_KEYS.to_vec()].concat(),
            Section::Defaults => names(GATE_KEYS),
            Section::Project(_) => [RULE_KEYS.to_vec(), names(GATE_KEYS)].concat(),
        }
    }
}

pub(super) fn names<L>(keys: &[Key<L>]) -> Vec<&'static str> {
    keys.iter().map(|(n, _)| *n).collect()
}

/// A problem found in a document: byte offset (it gets its line once all are
/// collected), key, message.
pub(super) type Issue = (usize, Option<String>, String);

/// Issues found so far, and the host that bounds values.
struct Walk {
    host: Host,
    issues: Vec<Issue>,
}

type Entry<'a, 'i> = (
    &'a Spanned<toml::de::DeString<'i>>,
    &'a Spanned<DeValue<'i>>,
);

/// [`read_document`], its problems in file order, each with its line.
pub(super) fn read(text: &str, origin: &Path, host: Host) -> Result<Document, Vec<PolicyError>> {
    read_document(text, host).map_err(|mut issues| {
        issues.sort_by_key(|i| i.0);
        let error =
            |(at, key, message)| PolicyError::at(origin, Some(line_of(text, at)), key, message);
        issues.into_iter().map(error).collect()
    })
}

/// One file's keys, validated; every problem found, not just the first.
pub(super) fn read_document(text: &str, host: Host) -> Result<Document, Vec<Issue>> {
    let doc = DeTable::parse(text).map_err(|e| vec![syntax_issue(text, &e)])?;
    let mut out = Document::default();
    let mut walk = Walk {
        host,
        issues: Vec::new(),
    };
    for (k, v) in doc.get_ref().iter() {
        let at = v.span().start;
        match (k.get_ref().as_ref(), v.get_ref()) {
            ("defaults", DeValue::Table(t)) => {
                for entry in t.iter() {
                    walk.key(GATE_KEYS, entry, &mut out.defaults, Section::Defaults);
                }
            }
            ("project", DeValue::Array(entries)) => {
                for (i, entry) in entries.iter().enumerate() {
                    out.rules.extend(walk.rule(entry, Section::Project(i + 1)));
                }
            }
            // `[project]` (one table) is a common slip for `[[project]]`.
            ("project", DeValue::Table(_)) => walk.issue(k.span().start, "project", "write [[project]] with double brackets: each project rule is one entry of an array of tables".into()),
            ("defaults", other) => walk.issue(at, "defaults", wrong("the [defaults] table", other)),
            ("project", other) => walk.issue(at, "project", wrong("[[project]] tables", other)),
            _ => walk.key(GLOBAL_KEYS, (k, v), &mut out.global, Section::Top),
        }
    }
    match walk.issues.is_empty() {
        true => Ok(out),
        false => Err(walk.issues),
    }
}

impl Walk {
    fn issue(&mut self, offset: usize, key: &str, message: String) {
        self.issues.push((offset, Some(key.to_string()), message));
    }

    /// Reads one key of a table through `keys`, or reports it as unknown.
    fn key<L>(&mut self, keys: &[Key<L>], (k, v): Entry<'_, '_>, layer: &mut L, section: Section) {
        let name = k.get_ref().as_ref();
        match keys.iter().find(|(n, _)| *n == name) {
            Some((_, read)) => {
                if let Err(message) = read(layer, v.get_ref(), self.host) {
                    self.issue(v.span().start, name, message);
                }
            }
            None => self.issue(k.span().start, name, unknown_key_message(name, section)),
        }
    }

    /// One `[[project]]`; `None` when it has no usable `path` (already reported).
    fn rule(&mut self, entry: &Spanned<DeValue<'_>>, section: Section) -> Option<Rule> {
        let DeValue::Table(table) = entry.get_ref() else {
            let message = wrong("a [[project]] table", entry.get_ref());
            self.issue(entry.span().start, "project", message);
            return None;
        };
        let (mut pattern, mut name, mut overrides) = (None, None, GateLayer::default());
        for (k, v) in table.iter() {
            let key = k.get_ref().as_ref();
            let read = match key {
                "path" => rule_glob(v.get_ref()).map(|p| pattern = Some(p)),
                "name" => rule_name(v.get_ref()).map(|n| name = Some(n)),
                _ => {
                    self.key(GATE_KEYS, (k, v), &mut overrides, section);
                    continue;
                }
            };
            if let Err(message) = read {
                self.issue(v.span().start, key, message);
            }
        }
        if !table.iter().any(|(k, _)| k.get_ref() == "path") {
            let message = format!(
                "missing key in {}: every [[project]] needs a path glob",
                section.title()
            );
            self.issue(entry.span().start, "path", message);
        }
        Some(Rule {
            pattern: pattern?,
            name,
            overrides,
        })
    }
}

/// The message for a key no table knows, with the likeliest fix first: a key in the
/// wrong table (TOML puts every key after `[defaults]` into `[defaults]`), then a
/// near spelling, then the full list.
fn unknown_key_message(key: &str, section: Section) -> String {
    let valid = section.valid_keys();
    let hint = if section != Section::Top && names(GLOBAL_KEYS).contains(&key) {
        format!("; `{key}` is a global key: move it to the top of the file, above the first [table] header")
    } else if section == Section::Top && names(GATE_KEYS).contains(&key) {
        format!("; `{key}` is a gate key: put it under [defaults] or a [[project]]")
    } else if section == Section::Defaults && RULE_KEYS.contains(&key) {
        format!("; `{key}` belongs in a [[project]] entry")
    } else if let Some(near) = closest(key, &valid) {
        format!("; did you mean `{near}`?")
    } else {
        String::new()
    };
    format!(
        "unknown key in {}{hint} (expected one of: {})",
        section.title(),
        valid.join(", ")
    )
}

/// A TOML syntax error has no tree to take the key from, so the key is read off the
/// line the error points at, when that line is a `key = ...` or a `[header]`.
fn syntax_issue(text: &str, e: &toml::de::Error) -> Issue {
    let offset = e.span().map_or(0, |s| s.start).min(text.len());
    let lines: Vec<&str> = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let message = format!("invalid TOML: {}", lines.join("; "));
    (offset, key_on_line(line_text(text, offset)), message)
}

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset.min(text.len())];
    before.iter().filter(|&&b| b == b'\n').count() + 1
}

/// The whole line holding a byte offset.
pub(super) fn line_text(text: &str, offset: usize) -> &str {
    let (bytes, end) = (text.as_bytes(), offset.min(text.len()));
    let start = bytes[..end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let stop = bytes[end..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |p| end + p);
    &text[start..stop]
}

/// The key a line assigns or the table it opens: `a.b = 1` gives `b`, `[defaults`
/// gives `defaults`. `None` for anything else (array items, comments, garbage).
pub(super) fn key_on_line(line: &str) -> Option<String> {
    let t = line.trim();
    let raw = match t.strip_prefix('[') {
        Some(header) => header.trim_start_matches('[').split(']').next()?,
        None => t.split_once('=')?.0,
    };
    let last = raw.rsplit('.').next()?.trim().trim_matches(['"', '\'']);
    let plausible = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    (!last.is_empty() && last.chars().all(plausible)).then(|| last.to_string())
}

/// The valid key nearest to a typo, if it is near enough to be a typo.
pub(super) fn closest<'a>(key: &str, valid: &[&'a str]) -> Option<&'a str> {
    let limit = (key.chars().count() / 3).clamp(1, 3);
    let near = valid.iter().map(|v| (edit_distance(key, v), *v));
    near.filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}
