//! gov.toml(5), written from the key lists themselves: each key's form and line
//! from its doc comment, its default from [`EMBEDDED`], so the page cannot drift
//! from what the reader accepts.

use super::*;

/// The forms most keys take (docs/configuration.md "Value forms" has the detail).
const FORMS: &[(&str, &str)] = &[
    ("Duration", "\"250ms\", \"90s\", \"30m\", \"1h30m\", \"1.5h\", \"2d\", \"1w\": every number needs a unit (ns us ms s m h d w); only \"0\" stands alone; at most 200 years."),
    ("Timeout", "A duration, or \"never\" to turn the timeout off."),
    ("Size", "Bytes as a TOML integer, or \"4096B\", \"512M\", \"1.5G\", \"4GiB\": K M G T P E are powers of 1024; \"4GB\" is refused as ambiguous."),
    ("Limit", "A size (memory) or a whole number (pids), or \"max\" for no limit; 0 is refused."),
    ("Count", "A TOML integer."),
    ("Signal", "\"SIGTERM\", \"TERM\" or \"sigterm\": one of SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGKILL; numbers are refused."),
    ("Path", "An absolute path."),
];

/// The keys only a `[[project]]` has, as [`RULE_KEYS`] names them.
const RULE_DOCS: &[(&str, &str)] = &[
    ("path", "Glob, required: matched against the gate's absolute project path; * stays within one component, ** spans any depth."),
    ("name", "String: labels the rule in gov show, tags and logs."),
];

/// gov.toml(5) as roff.
pub fn manual_page() -> String {
    let embedded = Policy::embedded();
    let mut page = format!(
        ".TH GOV.TOML 5 \"\" \"gov {}\" \"gov manual\"\n",
        env!("CARGO_PKG_VERSION")
    );
    page += ".SH NAME\ngov.toml \\- the policy of the gov daemon\n";
    page += ".SH SYNOPSIS\n/etc/gov.toml\n";
    page += ".SH DESCRIPTION\n";
    page += &text(
        "gov reads one TOML file, by default /etc/gov.toml; without it the built-in defaults \
         below apply. Global keys come first, above any table. [defaults] sets the gate keys \
         for every gate; each [[project]] whose path glob matches a gate's project overrides \
         them key by key, in file order. Unknown keys, wrong types and bad values are errors \
         naming the line and key, and the whole file is refused. Check a file with \
         gov check-config, print the effective policy with gov check-config --print, and \
         reload the daemon with systemctl reload gov.",
    );
    page += ".SH VALUE FORMS\n";
    for (form, grammar) in FORMS {
        page += &item(&format!("\\fB{form}\\fR"), grammar);
    }
    page += ".SH GLOBAL KEYS\n";
    let global = GlobalLayer::from(&embedded.global).spelled();
    page += &keys(GlobalLayer::DOCS, &global);
    page += ".SH GATE KEYS\n";
    page += &text("In [defaults] and in any [[project]].");
    let gate = GateLayer::from(embedded.defaults()).spelled();
    page += &keys(GateLayer::DOCS, &gate);
    page += ".SH PROJECT KEYS\n";
    page += &text("Only in a [[project]], besides the gate keys.");
    for (key, doc) in RULE_DOCS {
        page += &key_item(key, doc, None);
    }
    page += ".SH EXAMPLE\n.nf\n";
    page += &escape(
        "scan_interval = \"5s\"\n\n[defaults]\nidle_timeout = \"30m\"\n\n[[project]]\n\
         path = \"/home/*/src/BigModel*\"\nidle_timeout = \"8h\"\nmax_gates = 2\n\
         on_limit = \"evict-idlest\"\n",
    );
    page += ".fi\n.SH FILES\n";
    page += &item(
        "\\fI/etc/gov.toml\\fR",
        "The policy; packaging/gov.toml in the source is a commented copy of every key.",
    );
    page += ".SH SEE ALSO\ngov(1), gov-check-config(1), gov-daemon(1)\n";
    page
}

/// One `.TP` per key: name, form, default, then the rest of its doc comment.
fn keys(docs: &[(&str, &str)], defaults: &[(&str, Option<toml::Value>)]) -> String {
    let default = |key: &str| defaults.iter().find(|(k, _)| *k == key);
    let default =
        |key| default(key).map(|(_, v)| v.as_ref().map_or("unset".into(), |v| v.to_string()));
    docs.iter()
        .map(|(key, doc)| key_item(key, &doc.replace('\n', ""), default(key)))
        .collect()
}

fn key_item(key: &str, doc: &str, default: Option<String>) -> String {
    let (form, what) = doc.trim().split_once(": ").unwrap_or(("", doc));
    let default = default
        .map(|d| format!(", default {d}"))
        .unwrap_or_default();
    let head = format!("\\fB{key}\\fR ({}{})", escape(form), escape(&default));
    let what = what.trim();
    let mut first = what.chars();
    let what = first
        .next()
        .map_or(String::new(), |c| c.to_uppercase().chain(first).collect());
    item(&head, &what)
}

fn item(head: &str, body: &str) -> String {
    format!(".TP\n{head}\n{}", text(body))
}

fn text(s: &str) -> String {
    format!("{}\n", escape(s))
}

/// Backslashes escaped, and a line that would start with `.` or `'` (a request)
/// made plain text.
fn escape(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    s.lines()
        .map(|l| match l.starts_with(['.', '\'']) {
            true => format!("\\&{l}\n"),
            false => format!("{l}\n"),
        })
        .collect::<String>()
        .trim_end_matches('\n')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_on_the_page_with_a_form_and_a_line() {
        let page = manual_page();
        let all = GlobalLayer::DOCS
            .iter()
            .chain(GateLayer::DOCS)
            .chain(RULE_DOCS);
        for (key, doc) in all {
            assert!(
                page.contains(&format!("\\fB{key}\\fR (")),
                "gov.toml(5) lacks `{key}`"
            );
            let (form, what) = doc.trim().split_once(": ").unwrap_or_default();
            assert!(
                !form.is_empty() && !what.is_empty(),
                "`{key}`'s doc is not `Form: what it does`: {doc:?}"
            );
        }
        assert_eq!(GlobalLayer::DOCS.len(), GLOBAL_KEYS.len());
        assert_eq!(GateLayer::DOCS.len(), GATE_KEYS.len());
        let rules: Vec<&str> = RULE_DOCS.iter().map(|(k, _)| *k).collect();
        assert_eq!(rules, RULE_KEYS);
    }

    #[test]
    fn defaults_are_the_embedded_ones() {
        let page = manual_page();
        assert!(
            page.contains("\\fBidle_timeout\\fR (Timeout, default \"30m\")"),
            "{page}"
        );
        assert!(
            page.contains("\\fBmemory_budget\\fR (Size, default \"max\")"),
            "{page}"
        );
        assert!(
            page.contains("\\fBsocket_group\\fR (Group, default unset)"),
            "{page}"
        );
        assert!(
            page.contains("\\fBbusy_cpu_percent\\fR (Number, default 5.0)"),
            "{page}"
        );
    }
}
