//! What root does around hibernation with things a user controls, tested
//! on real processes and files without CRIU (docs/design.md, "CRIU and the
//! user's files"): the check that a user's tree holds only files its owner
//! could open by path (what a restore is refused on), the images directory
//! that is never chmod'ed through a symlink, and the look for a criu at work
//! that a user's process named criu cannot fool.

use gov_testkit as kit;

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gov::held::{self, Via};
use gov::keeper::Creds;
use kit::{Kid, NOBODY};

fn nobody() -> Creds {
    Creds {
        uid: NOBODY,
        gid: NOBODY,
        groups: vec![],
    }
}

/// A 0755 temp dir of root's, so nobody can reach the files in it.
fn tempdir() -> tempfile::TempDir {
    kit::require_root();
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn write_owned(path: &Path, text: &str, uid: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

/// `<base>/nobody`, a directory of nobody's.
fn nobodys_dir(base: &Path) -> PathBuf {
    let dir = base.join("nobody");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    dir
}

/// Waits until `pid` has descriptor `fd` open.
fn wait_fd(pid: u32, fd: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_err() {
        assert!(Instant::now() < deadline, "pid {pid} never opened fd {fd}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// nobody's shell holding `path` on fd 3 (opened by itself), blocked on
/// its stdin; with `handed`, also holding that file of root's on fd 4,
/// given to it by root (as a root process could pass one over a socket).
fn holder(path: &Path, handed: Option<&fs::File>) -> Kid {
    let mut c = Command::new("sh");
    c.args(["-c", "exec 3<\"$1\"; read x", "sh"])
        .arg(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        // Not ours: in the VM they are the boot console, opened before
        // devtmpfs hid its node, which no path reaches (and is refused).
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(f) = handed {
        let raw = f.as_raw_fd();
        // SAFETY: dup2 and fcntl between fork and exec, async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                let r = if raw == 4 {
                    libc::fcntl(4, libc::F_SETFD, 0)
                } else {
                    libc::dup2(raw, 4)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let kid = Kid::new(c.spawn().unwrap());
    wait_fd(kid.id(), 3);
    kid
}

#[test]
fn a_users_process_holding_only_what_the_user_may_open_passes() {
    let d = tempdir();
    let mine = d.path().join("mine");
    write_owned(&mine, "mine", NOBODY);
    let kid = holder(&mine, None);
    let held = held::held_by(kid.id()).unwrap();
    assert!(
        held.iter()
            .any(|h| h.via == Via::Fd(3) && h.name == mine.to_str().unwrap()),
        "{held:?}"
    );
    assert!(held.iter().any(|h| h.via == Via::Cwd), "{held:?}");
    assert!(
        held.iter().any(|h| matches!(h.via, Via::Map(_))),
        "{held:?}"
    );
    let v = held::violations(&[kid.id()], &nobody()).unwrap();
    assert!(v.is_empty(), "{v:?}");
    // The creds a gate's check uses are its keeper's, read from procfs.
    let creds = held::creds_of(kid.id()).unwrap();
    assert_eq!((creds.uid, creds.gid), (NOBODY, NOBODY));
}

#[test]
fn a_root_only_file_handed_to_a_users_process_is_a_violation() {
    let d = tempdir();
    let mine = d.path().join("mine");
    write_owned(&mine, "mine", NOBODY);
    let roots = d.path().join("roots");
    write_owned(&roots, "root's", 0);
    let handed = fs::File::open(&roots).unwrap();
    let kid = holder(&mine, Some(&handed));
    wait_fd(kid.id(), 4);
    let v = held::violations(&[kid.id()], &nobody()).unwrap();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].via, Via::Fd(4));
    assert_eq!(v[0].name, roots.to_str().unwrap());
    assert!(v[0].why.contains("ermission denied"), "{}", v[0]);
    // Root itself may hold it: root's own gates are not checked, and a
    // probe as root finds nothing wrong.
    let root = Creds {
        uid: 0,
        gid: 0,
        groups: vec![],
    };
    assert!(held::violations(&[kid.id()], &root).unwrap().is_empty());
}

/// The file-swap attack's last step, seen by the checker: the path the
/// process holds now leads to root's file.
#[test]
fn a_held_file_swapped_for_a_link_to_roots_file_is_a_violation() {
    let d = tempdir();
    let dir = nobodys_dir(d.path());
    let mine = dir.join("notes");
    write_owned(&mine, "mine", NOBODY);
    let roots = d.path().join("roots");
    write_owned(&roots, "root", 0);
    let kid = holder(&mine, None);
    fs::remove_file(&mine).unwrap();
    std::os::unix::fs::symlink(&roots, &mine).unwrap();
    // The process still holds the old file, now deleted and its own: fine.
    assert!(held::violations(&[kid.id()], &nobody()).unwrap().is_empty());
    drop(kid);
    // What CRIU as root would hand back: root's file behind the link. A
    // root process opening the path stands in for the restore.
    let restored = fs::File::open(&mine).unwrap();
    let other = dir.join("other");
    write_owned(&other, "other", NOBODY);
    let kid = holder(&other, Some(&restored));
    wait_fd(kid.id(), 4);
    let v = held::violations(&[kid.id()], &nobody()).unwrap();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].via, Via::Fd(4));
    assert_eq!(v[0].name, roots.to_str().unwrap());
}

#[test]
fn the_images_directory_is_never_chmoded_through_a_symlink() {
    let d = tempdir();
    let elsewhere = d.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o755)).unwrap();
    let link = d.path().join("images");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let e = gov::criu::ensure_private_dir(&link).unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    let mode = fs::metadata(&elsewhere).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755, "chmod'ed through the link");
    // A symlink above it, too.
    let below = link.join("g1");
    assert!(gov::criu::ensure_private_dir(&below).is_err());
    assert!(!elsewhere.join("g1").exists(), "made through the link");

    // Parents only root controls: a user's, or one others may write to
    // (without the sticky bit), is refused.
    let users = d.path().join("users");
    fs::create_dir(&users).unwrap();
    std::os::unix::fs::chown(&users, Some(NOBODY), Some(NOBODY)).unwrap();
    assert!(gov::criu::ensure_private_dir(&users.join("images")).is_err());
    let open = d.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    assert!(gov::criu::ensure_private_dir(&open.join("images")).is_err());
    let sticky = d.path().join("sticky");
    fs::create_dir(&sticky).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    gov::criu::ensure_private_dir(&sticky.join("images")).unwrap();

    // The ordinary case: made 0700, and an existing 0755 one made 0700.
    let ok = d.path().join("ok/images");
    gov::criu::ensure_private_dir(&ok).unwrap();
    assert_eq!(fs::metadata(&ok).unwrap().mode() & 0o7777, 0o700);
    fs::set_permissions(&ok, fs::Permissions::from_mode(0o755)).unwrap();
    gov::criu::ensure_private_dir(&ok).unwrap();
    assert_eq!(fs::metadata(&ok).unwrap().mode() & 0o7777, 0o700);
    // A user's directory is never taken over.
    let theirs = d.path().join("ok/theirs");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    assert!(gov::criu::ensure_private_dir(&theirs).is_err());
}

/// A process that looks like criu at work on `dir`: `bin` (a shell) run
/// with argv[0] "criu" and `-D DIR` among its arguments.
fn criu_lookalike(bin: &Path, dir: &Path, uid: u32) -> Kid {
    let mut c = Command::new(bin);
    c.arg0("/usr/sbin/criu")
        .args(["-c", "read x; :", "-D"])
        .arg(dir)
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::piped());
    let kid = Kid::new(c.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cmdline = fs::read(format!("/proc/{}/cmdline", kid.id())).unwrap_or_default();
        if gov::hibernate::works_on(&cmdline, dir) {
            break kid;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}",
            String::from_utf8_lossy(&cmdline)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn only_roots_run_of_the_configured_criu_counts_as_a_criu_at_work() {
    let test = "only_roots_run_of_the_configured_criu_counts_as_a_criu_at_work";
    // busybox (the VM's sh) picks its applet by argv[0]: it cannot run
    // as "criu".
    if fs::canonicalize(which("sh")).is_ok_and(|p| p.to_string_lossy().contains("busybox")) {
        kit::skip(
            test,
            "sh is busybox here, which cannot run under the name criu",
        );
        return;
    }
    let d = tempdir();
    let dir = d.path().join("images/g1");
    // The daemon's "criu": a copy of sh, so a test can run it.
    let criu = d.path().join("criu");
    fs::copy(which("sh"), &criu).unwrap();
    fs::set_permissions(&criu, fs::Permissions::from_mode(0o755)).unwrap();
    // A user's process named criu, with the arguments a dump has: before,
    // the daemon waited on it for ever.
    let fake = criu_lookalike(&which("sh"), &dir, NOBODY);
    assert!(!gov::hibernate::criu_running_for(&dir, &criu));
    // The configured binary itself, run by a user: not ours either.
    let theirs = criu_lookalike(&criu, &dir, NOBODY);
    assert!(!gov::hibernate::criu_running_for(&dir, &criu));
    drop((fake, theirs));
    // Root running it: a criu at work.
    let ours = criu_lookalike(&criu, &dir, 0);
    assert!(gov::hibernate::criu_running_for(&dir, &criu));
    let mut partial = dir.clone().into_os_string();
    partial.push(".partial");
    drop(ours);
    let _ours = criu_lookalike(&criu, Path::new(&partial), 0);
    assert!(gov::hibernate::criu_running_for(&dir, &criu));
    assert!(!gov::hibernate::criu_running_for(
        &d.path().join("images/g2"),
        &criu
    ));
}

fn which(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} on PATH"))
}

/// What the check costs on a restore, for a 200 MB REPL-like worker (run
/// by hand; needs python3):
///   cargo test --test hibernate_safety -- --ignored --nocapture measure
#[test]
#[ignore]
fn measure_the_check_on_a_200mb_worker() {
    let d = tempdir();
    let dir = nobodys_dir(d.path());
    let sock = dir.join("counter.sock");
    let worker = kit::fixture("hibernate-worker.py");
    let mut kid = Kid::new(
        Command::new("python3")
            .arg(&worker)
            .arg(&sock)
            .arg("200")
            .current_dir(&dir)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(kid.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("ready"), "{line}");
    let pid = kid.id();
    let n = held::held_by(pid).unwrap().len();
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let v = held::violations(&[pid], &nobody()).unwrap();
        times.push(t.elapsed());
        assert!(v.is_empty(), "{v:?}");
    }
    times.sort();
    let _ = writeln!(
        std::io::stderr(),
        "the check of a 200 MB python worker ({n} held things): median {:?}, min {:?}, max {:?}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}
