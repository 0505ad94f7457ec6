//! Generates gov's man pages and shell completions from the clap definitions
//! in `gov::cli`, for the Debian package (packaging/build-deb runs it).
//!
//!     cargo run --release --example gen-assets -- OUT_DIR
//!
//! writes OUT_DIR/man/gov.1, gov-spawn.1, ... (one page per subcommand),
//! OUT_DIR/man/gov.toml.5 (every policy key, from gov::policy's key lists) and
//! OUT_DIR/completions/{gov.bash,_gov,gov.fish}: the scripts `GOV_COMPLETE=SHELL
//! gov` prints, which ask gov itself at each TAB (src/cli/complete.rs).
//!
//! An example rather than build.rs: build.rs cannot use the crate it builds,
//! and this keeps clap_mangen out of the shipped binary (a dev-dependency).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;

const DESCRIPTION: &str = "\
gov runs long-lived worker processes (\"gates\": REPL servers, language servers, \
notebook kernels) that editors and AI agents start and forget, each in a cgroup of \
its own, tagged before its command runs, so no descendant escapes. Idle, orphaned \
and overdue gates are frozen, then stopped and killed as a whole tree, by the \
policy in /etc/gov.toml. The daemon (gov daemon, normally the systemd unit \
gov.service) reaps; without it, root can still spawn, list, freeze and kill \
gates directly on cgroupfs.";

fn main() {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            eprintln!("usage: gen-assets OUT_DIR");
            std::process::exit(2);
        });
    let man_dir = out.join("man");
    let comp_dir = out.join("completions");
    for d in [&man_dir, &comp_dir] {
        fs::create_dir_all(d).unwrap_or_else(|e| die(d, e));
    }

    // The environment gets a section of its own below, not `--help`'s text.
    let mut cmd = gov::cli::Cli::command()
        .long_about(DESCRIPTION)
        .after_help(None::<&'static str>)
        .disable_help_subcommand(true);
    cmd.build();

    man_page(&cmd, "gov", &man_dir, true);
    // After build(), each subcommand's display name is "gov-spawn" and its
    // bin name "gov spawn", as in clap_mangen::generate_to.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_display_name().unwrap_or(sub.get_name()).to_string();
        man_page(sub, &name, &man_dir, false);
    }

    let path = man_dir.join("gov.toml.5");
    fs::write(&path, gov::policy::manual_page()).unwrap_or_else(|e| die(&path, e));

    for (shell, file) in [("bash", "gov.bash"), ("zsh", "_gov"), ("fish", "gov.fish")] {
        let path = comp_dir.join(file);
        let mut buf = gov::cli::complete::registration(shell).expect("a shell clap_complete knows");
        if shell == "zsh" {
            // zsh autoloads _gov from its fpath as the function _gov, on the
            // first TAB: the script then only defines and registers the real
            // completer (clap_complete 4.6 names it so), so complete this TAB
            // too. Inert when the file is sourced.
            buf.extend_from_slice(
                b"[[ ${funcstack[1]} = _gov ]] && _clap_dynamic_completer_gov \"$@\"\n",
            );
        }
        fs::write(&path, buf).unwrap_or_else(|e| die(&path, e));
    }
    println!("{}", out.display());
}

fn man_page(cmd: &clap::Command, name: &str, dir: &Path, top: bool) {
    let man = Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section("1")
        .source(format!("gov {}", env!("CARGO_PKG_VERSION")))
        .manual("gov manual");
    let mut buf = Vec::new();
    man.render(&mut buf).expect("rendering to memory");
    let mut extra = Roff::new();
    if top {
        extra.control("SH", ["GATES"]);
        extra.text([roman(gov::cli::GATE_HELP.replace('\n', " "))]);
        extra.control("SH", ["ENVIRONMENT"]);
        // The same list `gov --help` shows, from one place.
        for &(var, text) in gov::cli::ENVIRONMENT {
            extra
                .control("TP", [])
                .text([bold(var)])
                .text([roman(text)]);
        }
        extra.control("SH", ["FILES"]);
        for (file, text) in [
            (
                "/etc/gov.toml",
                "The policy, every key in gov.toml(5). Optional: built-in defaults serve without it. Check it with gov check-config.",
            ),
            ("/run/gov/gov.sock", "The daemon's socket (policy key socket)."),
            (
                "/usr/share/doc/gov/",
                "README.md, configuration.md, protocol.md, design.md, integrations.md (PREFIX/share/doc/gov/ when packaging/install --man installed gov).",
            ),
        ] {
            extra.control("TP", []).text([italic(file)]).text([roman(text)]);
        }
    }
    extra.control("SH", ["SEE ALSO"]);
    let see_also = if top {
        "gov.toml(5), systemctl(1), systemd.resource-control(5), cgroups(7)".to_string()
    } else {
        "gov(1)".to_string()
    };
    extra.text([roman(see_also)]);
    // render() repeats the apostrophe preamble; defining it twice is harmless.
    buf.extend_from_slice(extra.render().as_bytes());
    let path = dir.join(format!("{name}.1"));
    let mut f = fs::File::create(&path).unwrap_or_else(|e| die(&path, e));
    f.write_all(&buf).unwrap_or_else(|e| die(&path, e));
}

fn die(path: &Path, e: std::io::Error) -> ! {
    eprintln!("gen-assets: {}: {e}", path.display());
    std::process::exit(1);
}
