//! What a process tree holds by path, and whether its owner could open each
//! of those files by that path now.
//!
//! Why it matters: CRIU, run as root, records a dumped task's open files,
//! file mappings, cwd and root by path and reopens them by path at restore,
//! with root's rights. A user whose worker held `~/notes` can swap it, while
//! the worker is on disk, for a symlink to a root-only file of the same size
//! (CRIU's only check) and be handed that file. So before anything of a
//! user's restored tree runs, each such thing is checked as "the user could
//! open this very file by this path now" ([`check`], [`probe_as`]); the same
//! check at dump time keeps a tree that already holds a file its owner could
//! not open (handed over by a root process, say) from being killed for it at
//! restore: it is not dumped.
//!
//! The decision ([`check`], [`verdict`]) is pure; reading procfs
//! ([`held_by`]) and probing as the owner ([`probe_as`]) are the effects.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::keeper::Creds;

/// How a task holds a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Fd(i32),
    /// A file mapping, by its address range as /proc/PID/maps shows it.
    Map(String),
    Cwd,
    Root,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Via::Fd(n) => write!(f, "fd {n}"),
            Via::Map(r) => write!(f, "mapping {r}"),
            Via::Cwd => f.write_str("cwd"),
            Via::Root => f.write_str("root"),
        }
    }
}

/// The access a path must grant for what is held through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Need {
    /// An O_PATH descriptor: the path must lead to the file, nothing more.
    Reach,
    Read,
    Write,
    ReadWrite,
    /// A cwd or root: search (x) on the directory.
    Search,
}

impl Need {
    /// The access(2) mode.
    pub fn mode(self) -> i32 {
        match self {
            Need::Reach => libc::F_OK,
            Need::Read => libc::R_OK,
            Need::Write => libc::W_OK,
            Need::ReadWrite => libc::R_OK | libc::W_OK,
            Need::Search => libc::X_OK,
        }
    }

    /// From an fd's open flags (the octal `flags:` of /proc/PID/fdinfo/N).
    pub fn of_flags(flags: u32) -> Need {
        if flags & libc::O_PATH as u32 != 0 {
            return Need::Reach;
        }
        match flags & libc::O_ACCMODE as u32 {
            0 => Need::Read,
            1 => Need::Write,
            _ => Need::ReadWrite,
        }
    }

    /// From a mapping's permissions ("r-xp", "rw-s"): only a shared
    /// writable mapping needs the file open for writing; a private one
    /// writes to its own copy.
    pub fn of_perms(perms: &str) -> Need {
        let b = perms.as_bytes();
        if b.get(1) == Some(&b'w') && b.get(3) == Some(&b's') {
            Need::ReadWrite
        } else {
            Need::Read
        }
    }
}

/// The file itself, as stat(2) through the task's magic link shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub uid: u32,
}

impl FileId {
    fn of(m: &fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            nlink: m.nlink(),
            uid: m.uid(),
        }
    }
}

/// One thing a task holds, as procfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub pid: u32,
    pub via: Via,
    /// readlink's text (fds, cwd, root) or the path column of maps.
    pub name: String,
    pub need: Need,
    /// None: it could not be stat'ed (the task or the mapping is gone).
    pub file: Option<FileId>,
}

/// What to do about one held thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// No path reaches it, so no swap can change it (why).
    Skip(&'static str),
    /// Probe `path` as the owner for `need`; it must lead to `file`.
    Probe {
        path: PathBuf,
        need: Need,
        file: FileId,
    },
    /// Allowed without a probe (why).
    Allowed(&'static str),
    /// Refused without a probe (why).
    Refused(String),
}

const DELETED: &str = " (deleted)";

/// What to do about `held` in a tree whose owner is `owner_uid`; pure.
///
/// - Names that are no path ("pipe:[N]", "socket:[N]", "anon_inode:...",
///   namespaces, "[heap]", anonymous memory): skipped. CRIU restores them
///   from the image or, for the keeper's pipes, from the ends the keeper
///   holds (`--inherit-fd`); no name on disk is reopened for them.
/// - Shared memory ("/memfd:...", "/SYSV...", "/dev/zero" shown deleted):
///   skipped; kernel-internal files CRIU refills from the image.
/// - A deleted file: no path reaches it, so nobody can swap it; CRIU
///   rebuilds it from the image (a ghost file) with its old owner. Allowed
///   when the owner owns it (they could fchmod it anyway), else refused.
/// - Any other path: probed as the owner.
pub fn check(held: &Held, owner_uid: u32) -> Check {
    let name = held.name.as_str();
    if !name.starts_with('/') {
        return Check::Skip("no path: restored from the image or the keeper's pipes");
    }
    let Some(file) = held.file else {
        return Check::Refused("it could not be looked at".into());
    };
    if let Some(path) = name.strip_suffix(DELETED) {
        if path.starts_with("/memfd:") || path.starts_with("/SYSV") || path == "/dev/zero" {
            return Check::Skip("shared memory: restored from the image");
        }
        return if file.uid == owner_uid {
            Check::Allowed("a deleted file of the owner's own")
        } else {
            Check::Refused(format!("a deleted file of uid {}", file.uid))
        };
    }
    Check::Probe {
        path: PathBuf::from(name),
        need: held.need,
        file,
    }
}

/// What a probe as the owner found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    /// The path leads to the very file, with the access needed.
    Same,
    /// The path leads to another file now.
    Other,
    /// The path cannot be opened (errno), or the access is not granted.
    Denied(i32),
}

/// A held thing its owner could not open by its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub pid: u32,
    pub via: Via,
    pub name: String,
    pub why: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} {} {} ({})",
            self.pid, self.via, self.name, self.why
        )
    }
}

/// The verdict on `held` given its [`Check`] and, for a probe, what the
/// probe found; pure.
pub fn verdict(held: &Held, check: &Check, probed: Option<Probed>) -> Option<Violation> {
    let why = match (check, probed) {
        (Check::Skip(_) | Check::Allowed(_), _) => return None,
        (Check::Refused(why), _) => why.clone(),
        (Check::Probe { .. }, Some(Probed::Same)) => return None,
        (Check::Probe { .. }, Some(Probed::Other)) => "another file is there now".into(),
        (Check::Probe { need, .. }, Some(Probed::Denied(errno))) => format!(
            "{:?} by this path: {}",
            need,
            io::Error::from_raw_os_error(errno)
        ),
        (Check::Probe { .. }, None) => "not probed".into(),
    };
    Some(Violation {
        pid: held.pid,
        via: held.via.clone(),
        name: held.name.clone(),
        why,
    })
}

/// One line of /proc/PID/maps as (range, perms, path); None for a line
/// without a path (anonymous memory). Pure.
pub fn parse_maps_line(line: &str) -> Option<(&str, &str, &str)> {
    // "start-end perms offset dev inode   path", the path may hold spaces.
    let mut rest = line;
    let mut fields = [""; 5];
    for f in &mut fields {
        rest = rest.trim_start();
        let end = rest.find(' ').unwrap_or(rest.len());
        *f = &rest[..end];
        rest = &rest[end..];
    }
    let path = rest.trim_start();
    (!path.is_empty()).then_some((fields[0], fields[1], path))
}

/// The name of a mapping in /proc/PID/map_files: maps pads its addresses
/// to 8 digits ("00400000-0041f000"), map_files does not ("400000-41f000").
/// Pure.
pub fn map_files_name(range: &str) -> String {
    let trim = |a: &str| {
        let t = a.trim_start_matches('0');
        if t.is_empty() { "0" } else { t }.to_string()
    };
    match range.split_once('-') {
        Some((a, b)) => format!("{}-{}", trim(a), trim(b)),
        None => range.to_string(),
    }
}

/// The `flags:` value of an fdinfo file (octal). Pure.
pub fn parse_fdinfo_flags(text: &str) -> Option<u32> {
    let v = text.lines().find_map(|l| l.strip_prefix("flags:"))?;
    u32::from_str_radix(v.trim(), 8).ok()
}

/// Everything task `pid` holds that could name a path: its fds, file
/// mappings, cwd and root. A task that is gone gives what was read so far.
pub fn held_by(pid: u32) -> io::Result<Vec<Held>> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let mut out = Vec::new();
    let link = |p: &Path| fs::read_link(p).map(|l| l.as_os_str().to_string_lossy().into_owned());
    let stat = |p: &Path| fs::metadata(p).ok().map(|m| FileId::of(&m));
    for (via, entry) in [(Via::Cwd, "cwd"), (Via::Root, "root")] {
        let p = base.join(entry);
        if let Ok(name) = link(&p) {
            out.push(Held {
                pid,
                via,
                name,
                need: Need::Search,
                file: stat(&p),
            });
        }
    }
    let fd_dir = base.join("fd");
    for e in fs::read_dir(&fd_dir)?.flatten() {
        let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(name) = link(&e.path()) else { continue };
        let flags = fs::read_to_string(base.join(format!("fdinfo/{n}")))
            .ok()
            .and_then(|t| parse_fdinfo_flags(&t));
        let Some(flags) = flags else { continue };
        out.push(Held {
            pid,
            via: Via::Fd(n),
            file: stat(&e.path()),
            name,
            need: Need::of_flags(flags),
        });
    }
    let maps = fs::read_to_string(base.join("maps"))?;
    let mut seen = std::collections::HashSet::new();
    for line in maps.lines() {
        let Some((range, perms, path)) = parse_maps_line(line) else {
            continue;
        };
        let need = Need::of_perms(perms);
        // A library is mapped 4-5 times: one look per file and access.
        if !path.starts_with('/') || !seen.insert((path, need)) {
            continue;
        }
        out.push(Held {
            pid,
            via: Via::Map(range.to_string()),
            name: path.to_string(),
            need,
            file: stat(&base.join("map_files").join(map_files_name(range))),
        });
    }
    Ok(out)
}

/// Probes each `(path, need, file)` as `creds`, in a child process that
/// drops to them (keeping no descriptor of the daemon's, not dumpable): open(path, O_PATH) (so the path is walked with the
/// owner's search rights, and nothing is opened for real: no FIFO blocks,
/// no device acts), fstat to compare the file, then faccessat2 on that
/// descriptor for the access (the inode's own permission check, the one
/// open(2) would make).
pub fn probe_as(creds: &Creds, probes: &[(PathBuf, Need, FileId)]) -> io::Result<Vec<Probed>> {
    let paths: Vec<CString> = probes
        .iter()
        .map(|(p, _, _)| CString::new(p.as_os_str().as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let groups: Vec<libc::gid_t> = creds.groups.clone();
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    use std::os::fd::AsRawFd;
    // SAFETY: the child calls only async-signal-safe functions (prctl, setgroups,
    // setgid, setuid, open, fstat, syscall, write, close, _exit) on data
    // prepared before the fork; the daemon is multi-threaded.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        unsafe {
            let wfd = w.as_raw_fd();
            // This child becomes the user's: it keeps none of the daemon's
            // descriptors (its socket, pidfds, cgroup files) but the one
            // it answers on, and is not dumpable (setuid makes it so unless
            // fs.suid_dumpable is 1; say so ourselves), so the user cannot
            // borrow them or read the daemon's memory through ptrace.
            if wfd > 3 {
                libc::syscall(libc::SYS_close_range, 3u32, (wfd - 1) as u32, 0u32);
            }
            libc::syscall(libc::SYS_close_range, (wfd + 1) as u32, u32::MAX, 0u32);
            if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0
                || libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(creds.gid) != 0
                || libc::setuid(creds.uid) != 0
                || libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0
            {
                libc::_exit(2);
            }
            for (i, (_, need, file)) in probes.iter().enumerate() {
                let rec = probe_one(&paths[i], *need, file);
                let bytes = rec.to_ne_bytes();
                if libc::write(wfd, bytes.as_ptr().cast(), bytes.len()) != bytes.len() as isize {
                    libc::_exit(3);
                }
            }
            libc::_exit(0);
        }
    }
    drop(w);
    let mut buf = Vec::with_capacity(probes.len() * 8);
    let read = read_until(&mut fs::File::from(r), &mut buf, PROBE_TIMEOUT);
    if read.is_err() {
        // Stuck (a path on a FUSE mount its user serves slowly, say):
        // SIGKILL ends even a task waiting on FUSE.
        // SAFETY: signalling our own child, reaped below.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    read?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 || buf.len() != probes.len() * 8 {
        return Err(io::Error::other(format!(
            "the probe as uid {} failed (status {status:#x})",
            creds.uid
        )));
    }
    Ok(buf
        .chunks_exact(8)
        .map(|c| match u64::from_ne_bytes(c.try_into().unwrap()) {
            0 => Probed::Same,
            1 => Probed::Other,
            v => Probed::Denied((v >> 32) as i32),
        })
        .collect())
}

/// How long the probes of one tree may take; a user could make a path of
/// theirs block (a FUSE mount they serve), and a gate's owner must not
/// wait for ever.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads `f` to its end (all writers gone) within `timeout`.
fn read_until(f: &mut fs::File, buf: &mut Vec<u8>, timeout: std::time::Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + timeout;
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the probes took over {timeout:?}"),
            ));
        }
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            continue; // timeout (checked above) or EINTR
        }
        match io::Read::read(f, &mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// One probe in the child: 0 same, 1 other, errno << 32 | 2 denied.
/// Async-signal-safe only.
unsafe fn probe_one(path: &CString, need: Need, file: &FileId) -> u64 {
    let denied = || ((*libc::__errno_location()) as u64) << 32 | 2;
    let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
    if fd < 0 {
        return denied();
    }
    let mut st: libc::stat = std::mem::zeroed();
    let rec = if libc::fstat(fd, &mut st) != 0 {
        denied()
    } else if st.st_dev != file.dev || st.st_ino != file.ino {
        1
    } else if need != Need::Reach
        && libc::syscall(
            libc::SYS_faccessat2,
            fd,
            c"".as_ptr(),
            need.mode(),
            libc::AT_EMPTY_PATH,
        ) != 0
    {
        denied()
    } else {
        0
    };
    libc::close(fd);
    rec
}

/// The real uid, gid and groups of process `pid` (for a gate, its keeper's:
/// the user the worker runs as).
pub fn creds_of(pid: u32) -> io::Result<Creds> {
    let s = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.status())
        .map_err(|e| io::Error::other(format!("/proc/{pid}/status: {e}")))?;
    Ok(Creds {
        uid: s.ruid,
        gid: s.rgid,
        groups: s.groups.iter().map(|&g| g as u32).collect(),
    })
}

/// Every held thing of `pids` that `creds` could not open by its path now.
pub fn violations(pids: &[u32], creds: &Creds) -> io::Result<Vec<Violation>> {
    let mut held = Vec::new();
    for &pid in pids {
        match held_by(pid) {
            Ok(h) => held.extend(h),
            // Gone between listing and reading: it holds nothing.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    let checks: Vec<Check> = held.iter().map(|h| check(h, creds.uid)).collect();
    // One probe per distinct (path, access, file) across the tree.
    let mut probes: Vec<(PathBuf, Need, FileId)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for c in &checks {
        if let Check::Probe { path, need, file } = c {
            index
                .entry((path.clone(), *need, *file))
                .or_insert_with(|| {
                    probes.push((path.clone(), *need, *file));
                    probes.len() - 1
                });
        }
    }
    let results = if probes.is_empty() {
        Vec::new()
    } else {
        probe_as(creds, &probes)?
    };
    Ok(held
        .iter()
        .zip(&checks)
        .filter_map(|(h, c)| {
            let probed = match c {
                Check::Probe { path, need, file } => index
                    .get(&(path.clone(), *need, *file))
                    .map(|&i| results[i]),
                _ => None,
            };
            verdict(h, c, probed)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(name: &str, need: Need, file: Option<FileId>) -> Held {
        Held {
            pid: 7,
            via: Via::Fd(3),
            name: name.into(),
            need,
            file,
        }
    }

    const F: FileId = FileId {
        dev: 1,
        ino: 2,
        nlink: 1,
        uid: 1000,
    };

    #[test]
    fn access_comes_from_open_flags_and_map_perms() {
        assert_eq!(Need::of_flags(0o100000), Need::Read);
        assert_eq!(Need::of_flags(0o100001), Need::Write);
        assert_eq!(Need::of_flags(0o2102), Need::ReadWrite);
        assert_eq!(Need::of_flags(0o12100000), Need::Reach);
        assert_eq!(Need::of_perms("r-xp"), Need::Read);
        assert_eq!(Need::of_perms("rw-p"), Need::Read);
        assert_eq!(Need::of_perms("rw-s"), Need::ReadWrite);
        assert_eq!(Need::of_perms("r--s"), Need::Read);
        assert_eq!(
            parse_fdinfo_flags("pos:\t0\nflags:\t0100002\nmnt_id:\t1\n"),
            Some(0o100002)
        );
        assert_eq!(parse_fdinfo_flags("pos:\t0\n"), None);
    }

    #[test]
    fn maps_lines_give_range_perms_and_path() {
        assert_eq!(
            parse_maps_line("7f00-7f10 r-xp 00000000 08:01 1234   /usr/lib/a b.so"),
            Some(("7f00-7f10", "r-xp", "/usr/lib/a b.so"))
        );
        assert_eq!(
            parse_maps_line("7f00-7f10 rw-s 00000000 00:01 9 /memfd:x (deleted)"),
            Some(("7f00-7f10", "rw-s", "/memfd:x (deleted)"))
        );
        assert_eq!(parse_maps_line("7f00-7f10 rw-p 00000000 00:00 0 "), None);
        assert_eq!(
            parse_maps_line("7ffd-7ffe rw-p 00000000 00:00 0    [stack]"),
            Some(("7ffd-7ffe", "rw-p", "[stack]"))
        );
    }

    #[test]
    fn map_files_names_are_unpadded() {
        assert_eq!(map_files_name("00400000-0041f000"), "400000-41f000");
        assert_eq!(
            map_files_name("7f3a2c000000-7f3a2c021000"),
            "7f3a2c000000-7f3a2c021000"
        );
    }

    #[test]
    fn what_no_path_reaches_is_skipped() {
        for name in [
            "pipe:[123]",
            "socket:[9]",
            "anon_inode:[eventfd]",
            "anon_inode:inotify",
            "net:[4026531840]",
            "[heap]",
            "[vdso]",
        ] {
            assert!(
                matches!(check(&held(name, Need::Read, None), 1000), Check::Skip(_)),
                "{name}"
            );
        }
        for name in [
            "/memfd:buf (deleted)",
            "/SYSV00000000 (deleted)",
            "/dev/zero (deleted)",
        ] {
            assert!(
                matches!(
                    check(&held(name, Need::ReadWrite, Some(F)), 1000),
                    Check::Skip(_)
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn deleted_files_are_the_owners_own_or_refused() {
        let ghost = FileId { nlink: 0, ..F };
        assert!(matches!(
            check(
                &held("/home/u/tmp (deleted)", Need::Read, Some(ghost)),
                1000
            ),
            Check::Allowed(_)
        ));
        let roots = FileId { uid: 0, ..ghost };
        let h = held("/home/u/tmp (deleted)", Need::Read, Some(roots));
        let c = check(&h, 1000);
        assert!(matches!(c, Check::Refused(_)), "{c:?}");
        assert!(verdict(&h, &c, None).is_some());
    }

    #[test]
    fn paths_are_probed_with_their_access_and_judged_by_the_probe() {
        let h = held("/home/u/notes", Need::ReadWrite, Some(F));
        let c = check(&h, 1000);
        assert_eq!(
            c,
            Check::Probe {
                path: "/home/u/notes".into(),
                need: Need::ReadWrite,
                file: F
            }
        );
        assert_eq!(verdict(&h, &c, Some(Probed::Same)), None);
        let v = verdict(&h, &c, Some(Probed::Other)).unwrap();
        assert_eq!(
            v.to_string(),
            "pid 7 fd 3 /home/u/notes (another file is there now)"
        );
        let v = verdict(&h, &c, Some(Probed::Denied(libc::EACCES))).unwrap();
        assert!(v.why.contains("ReadWrite"), "{v}");
        assert!(verdict(&h, &c, None).is_some(), "unprobed is not fine");
        // A path that could not be stat'ed is refused, not skipped.
        let gone = held("/home/u/notes", Need::Read, None);
        assert!(matches!(check(&gone, 1000), Check::Refused(_)));
    }
}
