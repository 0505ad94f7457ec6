//! `gov top` driven as a person would: in a terminal (tmux, on a server of
//! the test's own), keys sent, the screen read back. tmux is installed by
//! .ci/run; where it is missing the tests say SKIP, and fail when
//! GOV_REQUIRE_TMUX=1 (CI). The VM suite (busybox only) skips them.

use gov_testkit as kit;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kit::*;

/// Is tmux here? In the VM, no (SKIP); on a host without it, SKIP, or a
/// failure where GOV_REQUIRE_TMUX=1.
fn tmux_ready(test: &str) -> bool {
    if host_only(test, "tmux") {
        return false;
    }
    let found = Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    kit::skip::skip_unless_required(
        test,
        "GOV_REQUIRE_TMUX",
        "tmux is not installed (apt-get install tmux); THIS TEST DID NOT RUN",
    );
    false
}

/// A tmux server of the test's own (its own socket), one 160x40 session
/// running `sh -c SCRIPT`; the server is killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn start(dir: &Path, script: &str) -> Tmux {
        let t = Tmux {
            socket: dir.join(format!("tmux-{}", std::process::id())),
        };
        let out = t
            .cmd()
            .args(["new-session", "-d", "-x", "160", "-y", "40", "-s", "top"])
            .args(["sh", "-c", script])
            .output()
            .expect("tmux runs");
        assert!(out.status.success(), "tmux: {}", text(&out.stderr));
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).env_remove("TMUX");
        c
    }

    /// Types keys (tmux key names: "j", "Up", "C-c").
    fn keys(&self, keys: &[&str]) {
        let out = self
            .cmd()
            .args(["send-keys", "-t", "top"])
            .args(keys)
            .output()
            .unwrap();
        assert!(out.status.success(), "send-keys: {}", text(&out.stderr));
    }

    fn screen(&self) -> String {
        text(
            &self
                .cmd()
                .args(["capture-pane", "-p", "-t", "top"])
                .output()
                .unwrap()
                .stdout,
        )
    }

    fn format(&self, f: &str) -> String {
        let out = self
            .cmd()
            .args(["display-message", "-p", "-t", "top", f])
            .output()
            .unwrap();
        text(&out.stdout).trim().to_string()
    }

    /// `gov top`'s pid: the pane's shell runs env, which execs gov, its
    /// one child.
    fn top_pid(&self) -> u32 {
        let sh: u32 = self.format("#{pane_pid}").parse().unwrap();
        let children = std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children")).unwrap();
        children.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Is the pane on the alternate screen (a full-screen program's)?
    fn alternate_on(&self) -> bool {
        self.format("#{alternate_on}") == "1"
    }

    /// Waits until the screen satisfies `cond`; returns that screen.
    fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            last = self.screen();
            if cond(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}; the screen:\n{last}")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// The script a pane runs: `gov top` with the test's socket and root, then
/// how it ended and the terminal's modes (raw mode left on shows as
/// -icanon), kept on screen.
fn top_script(root: &TestRoot, gov: &Path, wrap: &str) -> String {
    format!(
        "{wrap} env GOV_SOCKET='{}' GOV_CGROUP_ROOT='{}' '{}' top; \
         echo TOP-EXITED $?; stty -a | tr ' ' '\\n' | grep -x -- '-*icanon'; echo TOP-END; sleep 600",
        root.socket.display(),
        root.path.display(),
        gov.display()
    )
}

/// The line of the screen that names `id`.
fn line_of<'a>(screen: &'a str, id: &str) -> Option<(usize, &'a str)> {
    screen.lines().enumerate().find(|(_, l)| l.contains(id))
}

/// A person starts `gov top`, sees two gates appear, sorts by idle and by
/// memory, selects the larger and kills it with K and y; then quits and has
/// the terminal back.
#[test]
fn top_in_a_terminal_shows_sorts_and_kills() {
    let test = "top_in_a_terminal_shows_sorts_and_kills";
    if !tmux_ready(test) {
        return;
    }
    let root = TestRoot::new();
    let _d = root.daemon("");
    let tmux = Tmux::start(root.dir.path(), &top_script(&root, &gov_bin(), ""));
    tmux.wait_for("top to start with no gates", |s| s.contains("no gates"));
    assert!(tmux.alternate_on(), "top draws on the alternate screen");

    let small = Kid::new(root.spawn_sh("/top", "exec sleep 600"));
    let small_id = root.gate_of(small.id());
    // About 20 MB held by the shell (the variable) while it waits.
    let big = Kid::new(root.spawn_sh(
        "/top",
        "x=$(head -c 20000000 /dev/zero | tr '\\0' a); sleep 600; echo ${#x}",
    ));
    let big_pid = big.id();
    let big_id = root.gate_of(big_pid);
    wait_until(Duration::from_secs(15), "the big gate to hold 10M", || {
        root.gate(&big_id)
            .is_some_and(|g| g.memory_bytes > 10 << 20)
    });
    // The small one idle for 2s or more, the big one just touched: by idle
    // the small one leads, by memory the big one.
    wait_until(Duration::from_secs(15), "the small gate to idle 2s", || {
        root.gate(&small_id).is_some_and(|g| g.idle_s >= 2)
    });
    root.ok(&["touch", &big_id]);
    tmux.wait_for("both gates on screen", |s| {
        s.contains(&small_id) && s.contains(&big_id)
    });

    let order = |s: &str| {
        let (b, _) = line_of(s, &big_id).unwrap();
        let (sm, _) = line_of(s, &small_id).unwrap();
        b < sm
    };
    // By idle the small gate comes first, by memory the big one.
    tmux.keys(&["i"]);
    tmux.wait_for("the idle order", |s| s.contains("IDLEv") && !order(s));
    tmux.keys(&["m"]);
    tmux.wait_for("the memory order", |s| s.contains("MEMv") && order(s));

    // Up to the top row: the big gate.
    tmux.keys(&["k", "k", "k"]);
    tmux.wait_for("the big gate selected", |s| {
        line_of(s, &big_id).is_some_and(|(_, l)| l.starts_with("> "))
    });
    tmux.keys(&["K"]);
    tmux.wait_for("the question", |s| {
        s.contains(&format!("kill gate {big_id}? y/n"))
    });
    assert!(root.gate(&big_id).is_some(), "nothing is killed before y");
    tmux.keys(&["y"]);
    tmux.wait_for("the gate gone from the screen", |s| {
        !s.contains(&format!("{big_id} ")) && s.contains(&format!("killed {big_id}"))
    });
    assert!(root.gate(&big_id).is_none(), "the daemon lists it no more");
    // Its process was killed: `gov spawn` exec'd the shell, our child.
    let code = big.reap(Duration::from_secs(10));
    assert_eq!(code, None, "killed by a signal");
    assert!(!alive(big_pid));
    assert!(
        root.gate(&small_id).is_some(),
        "the other gate is untouched"
    );

    tmux.keys(&["q"]);
    let s = tmux.wait_for("top to exit", |s| s.contains("TOP-END"));
    assert!(s.contains("TOP-EXITED 0"), "{s}");
    assert!(
        s.lines().any(|l| l == "icanon"),
        "the terminal is out of raw mode:\n{s}"
    );
    assert!(!tmux.alternate_on(), "top left the alternate screen");
}

/// SIGTERM (a closing window, `kill`) ends top with the terminal given back.
#[test]
fn top_gives_the_terminal_back_on_sigterm() {
    let test = "top_gives_the_terminal_back_on_sigterm";
    if !tmux_ready(test) {
        return;
    }
    let root = TestRoot::new();
    let _d = root.daemon("");
    let tmux = Tmux::start(root.dir.path(), &top_script(&root, &gov_bin(), ""));
    tmux.wait_for("top to start", |s| s.contains("K kill"));
    assert!(tmux.alternate_on());
    let top = tmux.top_pid() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(top),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let s = tmux.wait_for("top to exit", |s| s.contains("TOP-END"));
    assert!(s.contains("TOP-EXITED 0"), "{s}");
    assert!(s.lines().any(|l| l == "icanon"), "out of raw mode:\n{s}");
    assert!(!tmux.alternate_on(), "top left the alternate screen");
}

/// A window closed under `gov top` (its terminal hung up, here by killing
/// tmux): top ends, instead of spinning on a terminal that is gone.
#[test]
fn top_ends_when_its_terminal_goes_away() {
    let test = "top_ends_when_its_terminal_goes_away";
    if !tmux_ready(test) {
        return;
    }
    let root = TestRoot::new();
    let _d = root.daemon("");
    let tmux = Tmux::start(root.dir.path(), &top_script(&root, &gov_bin(), ""));
    tmux.wait_for("top to start", |s| s.contains("K kill"));
    let top = tmux.top_pid();
    // Held before the terminal goes, so its end is seen whoever reaps it.
    let pidfd = gov::proc::pidfd_open(top).unwrap();
    drop(tmux);
    let mut fd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&pidfd),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a pidfd is readable once its process ends.
    let n = unsafe { libc::poll(&mut fd, 1, 10_000) };
    if n != 1 {
        let _ = gov::proc::pidfd_send_signal(&pidfd, libc::SIGKILL);
        panic!("gov top still runs 10 s after its terminal went away");
    }
}

/// An unprivileged user sees their own gates and no one else's, live and
/// in the plain snapshot.
#[test]
fn top_shows_a_user_only_their_gates() {
    let test = "top_shows_a_user_only_their_gates";
    if !tmux_ready(test) {
        return;
    }
    let root = TestRoot::new();
    let _d = root.daemon("");
    let roots = Kid::new(root.spawn_sh("/top", "exec sleep 600"));
    let roots_id = root.gate_of(roots.id());
    let theirs = Kid::new(
        gov_as_nobody(&root)
            .args(["spawn", "--project", "/top", "--", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let theirs_id = root.gate_of(theirs.id());

    let plain = as_user(NOBODY, gov_as_nobody(&root).args(["top", "--once"]));
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let out = text(&plain.stdout);
    assert!(out.starts_with("1 gates"), "{out}");
    assert!(
        out.contains(&theirs_id) && !out.contains(&roots_id),
        "{out}"
    );

    let gov = gov_for_others(&root);
    let tmux = Tmux::start(
        root.dir.path(),
        &top_script(
            &root,
            &gov,
            &format!("cd /; setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups"),
        ),
    );
    let s = tmux.wait_for("nobody's gate", |s| s.contains(&theirs_id));
    assert!(!s.contains(&roots_id), "root's gate is not nobody's:\n{s}");
    assert!(s.contains("1 gates"), "{s}");
    tmux.keys(&["q"]);
    let s = tmux.wait_for("top to exit", |s| s.contains("TOP-END"));
    assert!(s.contains("TOP-EXITED 0"), "{s}");
}

/// Piped, top prints the summary and a plain table, without escapes (in
/// the VM too: it needs no terminal).
#[test]
fn top_piped_prints_plain_text() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let g = Kid::new(root.spawn_sh("/top", "exec sleep 600"));
    let id = root.gate_of(g.id());
    let out = root.ok(&["top", "--once", "--sort", "idle"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("1 gates, "), "{out}");
    assert!(lines[0].contains("| freed "), "{out}");
    assert!(lines[1].starts_with("GATE"), "{out}");
    assert!(lines[2].starts_with(&id), "{out}");
    assert!(!out.contains('\x1b'), "no escapes: {out:?}");
}
