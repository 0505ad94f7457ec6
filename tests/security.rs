//! What a hostile local user tries against the root parts of gov, as that
//! user: the socket is mode 0666, so every local user is a client.
//!
//! - The worker of an unprivileged `gov spawn --hibernate` is started by
//!   the daemon (root): the user's environment (LD_PRELOAD, LD_LIBRARY_PATH,
//!   LD_AUDIT, GCONV_PATH) and working directory must reach only the user's
//!   own command, after the privileges are dropped. A recorder library
//!   notes the euid of every process that loads it.
//! - A keeper whose cwd was deleted and replaced by a `"DIR (deleted)"`
//!   link to someone else's directory gets its worker in its own directory.
//! - The root ns-init that stays in the user's pid namespace gives its
//!   hostile CMD nothing: no signal, no ptrace, no /proc of its own, no fd.
//!
//! The libraries and the probe are built with the C compiler at test time;
//! the VM suite (busybox, no compiler) skips these tests and says so.

use gov_testkit as kit;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kit::{lines_of, Kid, TestRoot, NOBODY};

/// Notes `uid euid pid comm` of every process that loads it: as a
/// preload or audit library (constructor, la_version) or as a gconv
/// module (constructor; the gconv entry points only refuse).
const RECORDER: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void record(void) {
    char comm[64] = "?", line[160];
    int c = open("/proc/self/comm", O_RDONLY);
    if (c >= 0) {
        ssize_t n = read(c, comm, sizeof comm - 1);
        comm[n > 0 ? n - 1 : 0] = 0;
        close(c);
    }
    int n = snprintf(line, sizeof line, "%u %u %d %s\n", getuid(), geteuid(), getpid(), comm);
    int fd = open(LOG, O_WRONLY | O_APPEND | O_CREAT, 0666);
    if (fd >= 0) {
        write(fd, line, n);
        close(fd);
    }
}
__attribute__((constructor)) static void on_load(void) { record(); }
unsigned int la_version(unsigned int v) { record(); return v; }
int gconv_init(void *step) { return 1; }
int gconv(void) { return 1; }
void gconv_end(void *step) {}
"#;

/// The hostile CMD of the ns-init test: tries what a process in the gate
/// could do to the root ns-init above it (pid 1 of its namespace; its host
/// pid is our parent's PPid in the host's /proc; it prints that and its own
/// getppid(), which must not be 1), prints `NAME allowed` or
/// `NAME denied <errno>` per try, then its own descriptors, then waits for
/// a line on stdin.
const PROBE: &str = r#"
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
static void say(const char *what, long r) {
    if (r >= 0) printf("%s allowed\n", what);
    else printf("%s denied %s\n", what, strerrorname_np(errno));
}
static int ppid_of(const char *status) {
    char buf[256];
    int ppid = 0;
    FILE *st = fopen(status, "r");
    while (st && fgets(buf, sizeof buf, st))
        if (sscanf(buf, "PPid: %d", &ppid) == 1) break;
    if (st) fclose(st);
    return ppid;
}
int main(void) {
    char path[128], buf[256];
    snprintf(path, sizeof path, "/proc/%d/status", ppid_of("/proc/self/status"));
    int host = ppid_of(path);
    printf("init %d ppid %d\n", host, getppid());
    say("kill-term", kill(1, SIGTERM));
    say("kill-kill", kill(1, SIGKILL));
    say("kill-stop", kill(1, SIGSTOP));
    say("ptrace-attach", ptrace(PTRACE_ATTACH, 1, 0, 0));
    say("ptrace-seize", ptrace(PTRACE_SEIZE, 1, 0, 0));
    /* CMD's parent is the user's, but a fork of root's ns-init: not dumpable. */
    say("ptrace-seize-parent", ptrace(PTRACE_SEIZE, getppid(), 0, 0));
    struct iovec local = { buf, 8 }, remote = { (void *)0x400000, 8 };
    say("process-vm-readv", process_vm_readv(1, &local, 1, &remote, 1, 0));
    const char *files[] = { "environ", "mem", "fd/0", "fd/13", "fd/14", "fd/16", "stack" };
    for (unsigned i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "/proc/%d/%s", host, files[i]);
        int fd = open(path, O_RDONLY);
        snprintf(buf, sizeof buf, "open-%s", files[i]);
        say(buf, fd);
    }
    snprintf(path, sizeof path, "/proc/%d/fd", host);
    DIR *fds = opendir(path);
    say("list-fd", fds ? 0 : -1);
    const char *links[] = { "cwd", "root", "exe" };
    for (unsigned i = 0; i < sizeof links / sizeof *links; i++) {
        snprintf(path, sizeof path, "/proc/%d/%s", host, links[i]);
        snprintf(buf, sizeof buf, "readlink-%s", links[i]);
        char target[256];
        say(buf, readlink(path, target, sizeof target));
    }
    long pidfd = syscall(SYS_pidfd_open, 1, 0);
    if (pidfd >= 0) {
        say("pidfd-getfd", syscall(SYS_pidfd_getfd, pidfd, 13, 0));
        say("pidfd-send-signal", syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, 0, 0));
    }
    DIR *me = opendir("/proc/self/fd");
    struct dirent *e;
    printf("fds");
    while (me && (e = readdir(me)))
        if (e->d_name[0] != '.' && atoi(e->d_name) != dirfd(me)
                && atoi(e->d_name) != (int)pidfd)
            printf(" %s", e->d_name);
    printf("\nready\n");
    fflush(stdout);
    fgets(buf, sizeof buf, stdin);
    return 0;
}
"#;

/// The C compiler builds `source` into `out` (`-shared` for a library);
/// None in the VM suite (no compiler there), said loudly. On the host a
/// missing compiler fails the test: a skip is not a pass.
fn cc(test: &str, source: &str, out: &Path, extra: &[&str]) -> Option<()> {
    if kit::host_only(test, "a C compiler") {
        return None;
    }
    let c = out.with_extension("c");
    fs::write(&c, source).unwrap();
    let made = Command::new("cc")
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(&c)
        .output()
        .expect("a C compiler (cc) is needed to build the test's recorder");
    assert!(made.status.success(), "cc: {}", kit::text(&made.stderr));
    fs::set_permissions(out, fs::Permissions::from_mode(0o755)).unwrap();
    Some(())
}

/// A directory under the test's temp dir with this mode (and owner).
fn dir(root: &TestRoot, name: &str, mode: u32, owner: Option<u32>) -> PathBuf {
    let d = root.dir.path().join(name);
    fs::create_dir_all(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
    if let Some(uid) = owner {
        std::os::unix::fs::chown(&d, Some(uid), Some(uid)).unwrap();
    }
    d
}

/// The recorder, its log, and a gconv directory that maps charset GOVTEST
/// to it.
struct Recorder {
    log: PathBuf,
    lib: PathBuf,
    gconv: PathBuf,
}

impl Recorder {
    fn build(root: &TestRoot, test: &str) -> Option<Recorder> {
        let log = dir(root, "log", 0o777, None).join("loaded");
        let libs = dir(root, "lib", 0o755, None);
        let lib = libs.join("libgovrec.so");
        let define = format!("-DLOG=\"{}\"", log.display());
        cc(test, RECORDER, &lib, &["-shared", "-fPIC", &define])?;
        let gconv = dir(root, "gconv", 0o755, None);
        fs::copy(&lib, gconv.join("govrec.so")).unwrap();
        fs::write(
            gconv.join("gconv-modules"),
            "module GOVTEST// INTERNAL govrec 1\nmodule INTERNAL GOVTEST// govrec 1\n",
        )
        .unwrap();
        Some(Recorder { log, lib, gconv })
    }

    /// Every `uid euid pid comm` line so far.
    fn loads(&self) -> Vec<(u32, u32, String)> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[3..].join(" "),
                )
            })
            .collect()
    }
}

/// Real uid of a process, from procfs.
fn uid_of(pid: u32) -> u32 {
    gov::proc::uids(pid).expect("the process runs")[0]
}

/// The processes in a gate's worker cgroup: (ns-init, CMD), told apart by
/// their uid (ns-init is root's, CMD the user's), and CMD from its parent
/// (the user's too) by its parent, which is not ns-init.
fn init_and_cmd(root: &TestRoot, id: &str) -> (u32, u32) {
    let w = root.gate_cgroup(id).child("w");
    let pids = w.read_procs().unwrap();
    let init = pids.iter().copied().find(|&p| uid_of(p) == 0);
    let init = init.unwrap_or_else(|| panic!("no root ns-init in w: {pids:?}"));
    let cmd = pids
        .iter()
        .copied()
        .find(|&p| uid_of(p) == NOBODY && gov::proc::parent_pid(p) != Some(init));
    (
        init,
        cmd.unwrap_or_else(|| panic!("no CMD of nobody's in w: {pids:?}")),
    )
}

fn environ(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| String::from_utf8_lossy(kv).into_owned())
        .collect()
}

fn cwd(pid: u32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/cwd")).unwrap()
}

/// The shell CMD of the environment tests: makes the gconv loader look
/// for GOVTEST (iconv exists on every Debian host: libc-bin), then says
/// ready and waits for a line.
const WAITING_SHELL: &str =
    "iconv -f GOVTEST -t UTF-8 </dev/null >/dev/null 2>&1; echo ready; read line; echo bye";

/// `gov spawn --hibernate` as nobody, from nobody's own directory, with
/// `env` added to nobody's environment; the daemon starts its worker. Only
/// nobody may ever load the recorder, and the worker still gets `env` and
/// that directory; root's part of the start (ns-init) has neither.
fn hostile_environment(test: &str, env: impl Fn(&Recorder) -> Vec<(&'static str, String)>) {
    let root = TestRoot::new();
    let Some(rec) = Recorder::build(&root, test) else {
        return;
    };
    let home = dir(&root, "home", 0o700, Some(NOBODY));
    let _d = root.daemon("[defaults]\nidle_timeout = \"1h\"\norphan_grace = \"never\"\n");
    let env = env(&rec);
    let mut host = Kid::new(
        kit::gov_as_nobody(&root)
            .current_dir(&home)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("GOV_TEST_MARK", "mine")
            .args(["spawn", "--hibernate", "--project", "/srv/theirs", "--"])
            .args(["sh", "-c", WAITING_SHELL])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = lines_of(&mut host);
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(30)).as_deref(),
        Ok("ready")
    );
    let id = root.gate_of(host.id());
    let (init, cmd) = init_and_cmd(&root, &id);

    // Every process that loaded the recorder by now (the worker's shell
    // among them, after its iconv) was nobody's.
    let loads = rec.loads();
    assert!(
        loads.iter().any(|&(_, euid, _)| euid == NOBODY),
        "the recorder never loaded: the test would prove nothing"
    );
    let by_others: Vec<_> = loads
        .iter()
        .filter(|(_, euid, _)| *euid != NOBODY)
        .collect();
    assert!(
        by_others.is_empty(),
        "loaded as another user: {by_others:?}"
    );
    // Root's part: root's own environment and cwd, nothing of the user's.
    let extra: Vec<String> = environ(init)
        .into_iter()
        .filter(|kv| !kv.starts_with("PATH="))
        .filter_map(|kv| kv.split('=').next().map(str::to_string))
        .collect();
    assert!(extra.is_empty(), "ns-init (root) has the user's {extra:?}");
    assert_eq!(cwd(init), Path::new("/"), "ns-init's cwd");
    // The user's command: the user's environment and cwd, as before.
    let cmd_env = environ(cmd);
    for (k, v) in &env {
        assert!(
            cmd_env.contains(&format!("{k}={v}")),
            "{k} missing from the worker's environment: {cmd_env:?}"
        );
    }
    assert!(cmd_env.contains(&"GOV_TEST_MARK=mine".to_string()));
    assert_eq!(cwd(cmd), home, "the worker's cwd");

    host.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(10)).as_deref(),
        Ok("bye")
    );
    assert_eq!(host.reap(Duration::from_secs(10)), Some(0));
}

#[test]
fn ld_preload_of_a_user_never_loads_as_root() {
    hostile_environment("ld_preload_of_a_user_never_loads_as_root", |r| {
        vec![("LD_PRELOAD", r.lib.display().to_string())]
    });
}

/// A bare LD_PRELOAD name is looked up in LD_LIBRARY_PATH: the recorder
/// loads wherever LD_LIBRARY_PATH is honoured.
#[test]
fn ld_library_path_of_a_user_never_reaches_root() {
    hostile_environment("ld_library_path_of_a_user_never_reaches_root", |r| {
        vec![
            (
                "LD_LIBRARY_PATH",
                r.lib.parent().unwrap().display().to_string(),
            ),
            ("LD_PRELOAD", "libgovrec.so".to_string()),
        ]
    });
}

#[test]
fn ld_audit_of_a_user_never_loads_as_root() {
    hostile_environment("ld_audit_of_a_user_never_loads_as_root", |r| {
        vec![("LD_AUDIT", r.lib.display().to_string())]
    });
}

/// glibc loads a gconv module from GCONV_PATH when a charset it does not
/// know is asked for (the worker's iconv asks for GOVTEST).
#[test]
fn gconv_path_of_a_user_never_reaches_root() {
    hostile_environment("gconv_path_of_a_user_never_reaches_root", |r| {
        vec![("GCONV_PATH", r.gconv.display().to_string())]
    });
}

/// A keeper whose cwd was deleted and replaced by a `"d (deleted)"` link
/// (the text /proc/PID/cwd reads for a deleted directory) to a directory
/// the user may not enter: the worker starts in the keeper's own deleted
/// directory, never behind the link.
#[test]
fn a_deleted_cwd_replaced_by_a_link_does_not_lead_the_worker_elsewhere() {
    let root = TestRoot::new();
    let home = dir(&root, "home", 0o755, Some(NOBODY));
    let secret = dir(&root, "secret", 0o700, None);
    fs::write(secret.join("key"), "root's").unwrap();
    let _d = root.daemon("[defaults]\nidle_timeout = \"1h\"\norphan_grace = \"never\"\n");
    let gov = kit::gov_for_others(&root);
    let script = format!(
        "mkdir d && cd d && rmdir ../d && ln -s {secret:?} '../d (deleted)' && \
         exec {gov:?} spawn --hibernate --project /srv/theirs -- sh -c 'echo ready; read line; exit 0'",
        secret = secret.display().to_string(),
        gov = gov.display().to_string(),
    );
    let mut host = Kid::new(
        Command::new("sh")
            .args(["-c", &script])
            .current_dir(&home)
            .env("GOV_CGROUP_ROOT", &root.path)
            .env("GOV_SOCKET", &root.socket)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = lines_of(&mut host);
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(30)).as_deref(),
        Ok("ready")
    );
    let id = root.gate_of(host.id());
    let (_, cmd) = init_and_cmd(&root, &id);
    let inside = fs::metadata(format!("/proc/{cmd}/cwd")).unwrap();
    let behind = fs::metadata(&secret).unwrap();
    assert_ne!(
        (inside.dev(), inside.ino()),
        (behind.dev(), behind.ino()),
        "the worker was sent into the directory behind the link"
    );
    assert_eq!(cwd(cmd), home.join("d (deleted)"));
    assert_eq!(inside.uid(), NOBODY, "the worker's cwd is nobody's own");
    drop(host.stdin.take());
    assert_eq!(host.reap(Duration::from_secs(10)), Some(0));
}

/// The root ns-init stays in the user's gate as pid 1 of the worker's
/// namespace. Its hostile CMD (a probe, as nobody) can neither signal it,
/// trace it, read its memory or descriptors through /proc, nor borrow its
/// pipes; and it inherited nothing beyond 0, 1 and 2.
#[test]
fn a_hostile_worker_gains_nothing_from_the_root_ns_init() {
    let test = "a_hostile_worker_gains_nothing_from_the_root_ns_init";
    let root = TestRoot::new();
    let bin = dir(&root, "bin", 0o755, None);
    let probe = bin.join("probe");
    if cc(test, PROBE, &probe, &[]).is_none() {
        return;
    }
    let _d = root.daemon("[defaults]\nidle_timeout = \"1h\"\norphan_grace = \"never\"\n");
    let mut host = Kid::new(
        kit::gov_as_nobody(&root)
            .args(["spawn", "--hibernate", "--project", "/srv/theirs", "--"])
            .arg(&probe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = lines_of(&mut host);
    let mut said = Vec::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the probe reports");
        if line == "ready" {
            break;
        }
        said.push(line);
    }
    let id = root.gate_of(host.id());
    let (init, _) = init_and_cmd(&root, &id);
    assert_eq!(
        said[0],
        format!("init {init} ppid 2"),
        "the probe found ns-init, and its own parent is not init"
    );
    let tries: Vec<&String> = said[1..].iter().filter(|l| !l.starts_with("fds")).collect();
    assert!(tries.len() >= 15, "{said:?}");
    for t in &tries {
        assert!(
            t.contains(" denied "),
            "a hostile worker was allowed: {t} ({said:?})"
        );
    }
    assert_eq!(
        said.last().unwrap(),
        "fds 0 1 2",
        "descriptors the worker inherited"
    );
    // ns-init lives on, root, untraced, and still serves its CMD.
    let status = fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    assert!(status.contains("\nTracerPid:\t0\n"), "{status}");
    assert!(status.contains("\nState:\tS"), "{status}");
    assert_eq!(uid_of(init), 0);
    host.stdin.take().unwrap().write_all(b"done\n").unwrap();
    assert_eq!(host.reap(Duration::from_secs(10)), Some(0));
}

/// A socket in a directory another user may write could be replaced by
/// theirs (a daemon of their own in front of every client), or swapped for
/// a link between bind and a chmod by path: the daemon refuses to start.
#[test]
fn a_socket_directory_others_can_write_is_refused() {
    let root = TestRoot::new();
    let open = dir(&root, "open", 0o777, None);
    let config = root.dir.path().join("open.toml");
    kit::write_policy(&config, &open.join("gov.sock"), "");
    let out = Command::new(kit::gov_bin())
        .args(["daemon", "--config"])
        .arg(&config)
        .env("GOV_CGROUP_ROOT", &root.path)
        .env_remove("GOV_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = kit::text(&out.stderr);
    assert!(!out.status.success(), "the daemon started: {err}");
    assert!(err.contains("is not root's alone"), "{err}");
    assert!(!open.join("gov.sock").exists());
}

/// `start_worker`'s command becomes root's arguments to the worker's
/// start: an empty one or one with a NUL byte is refused before anything
/// else is looked at, and the daemon answers on.
#[test]
fn a_malformed_worker_command_is_refused() {
    use gov::protocol::{ErrorCode, Request, Response};
    let root = TestRoot::new();
    let _d = root.daemon("");
    for cmd in [vec![], vec!["sh".to_string(), "-c\0id".to_string()]] {
        let reply = gov::client::request(&root.socket, Request::StartWorker { cmd })
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                reply,
                Response::Error {
                    code: ErrorCode::BadRequest,
                    ..
                }
            ),
            "{reply:?}"
        );
    }
    root.ok(&["status"]);
}
