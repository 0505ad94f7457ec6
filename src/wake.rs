//! What would wake a sleeping gate: the inputs its host reaches it by, found
//! in procfs and borrowed from the gate's processes with pidfd_getfd(2), so
//! the daemon can wait for them to become readable while the gate is frozen
//! or on disk. A borrowed fd is only ever polled: never read, accepted,
//! or given other flags (file status flags are shared with the gate's own
//! copy, so an O_NONBLOCK here would change the worker's stdin), and it is
//! given back (closed) as soon as the gate runs or ends, since a borrowed
//! copy keeps a file alive (a host's write after the worker died would
//! succeed instead of failing with EPIPE).
//!
//! The inputs (../shared/DESIGN.md, "Wake on input"):
//! - the main process's stdin: a pipe, a socket or a tty. A keeper gate's
//!   keeper relays the host's stdin into its worker's stdin pipe, whose
//!   read end it keeps at [`keeper::FD_WORKER_STDIN`]: both are watched, so
//!   input waiting on either side of the relay wakes the gate;
//! - stream sockets its processes listen on (TCP, Unix): a pending
//!   connection makes them readable, frozen or not (the kernel completes
//!   the handshake);
//! - stream sockets connected to a peer outside the gate (a Unix peer's
//!   credentials name its pid; a TCP peer is taken for outside).
//!
//! Sockets are told apart with getsockopt (SO_ACCEPTCONN, SO_DOMAIN,
//! SO_TYPE) on the borrowed fd, never by reading /proc/net/tcp (6.8 ms a
//! read here: it walks the whole hash table).

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::keeper;

/// What kind of input woke a gate, for the metric of wakes by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Stdin,
    Listener,
    Connection,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Stdin => "stdin",
            Kind::Listener => "listener",
            Kind::Connection => "connection",
        }
    }
}

/// One input, borrowed.
#[derive(Debug)]
pub struct Input {
    /// What `gov show` and the `woken` event call it ("stdin pipe",
    /// "tcp 127.0.0.1:8888 listener", "unix connection").
    pub label: String,
    pub kind: Kind,
    /// The file's inode (socket or pipe): one input however many fds and
    /// processes share it.
    pub ino: u64,
    /// A TCP listener's accept queue or a stream's unread bytes, where the
    /// kernel tells (see [`pending`]).
    pub is_tcp_listener: bool,
    pub fd: OwnedFd,
}

/// The inputs of a gate, and why some could not be borrowed.
#[derive(Debug, Default)]
pub struct Found {
    pub inputs: Vec<Input>,
    /// Set when an input could not be borrowed (EMFILE: the daemon is out
    /// of file descriptors): said in `gov show` and the log, never silent.
    pub missed: Option<String>,
}

/// Borrows fd `fd` of the process behind `pidfd` (pidfd_getfd(2): root, or
/// ptrace rights over it; frozen targets too).
pub fn borrow(pidfd: &OwnedFd, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd(pidfd, targetfd, flags) returns a new fd or -1.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel just gave us, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(got as RawFd) })
}

/// The inode of `pid`'s stdin where a host could write to it later (a
/// pipe, a socket, a tty), recorded at spawn.
pub fn stdin_ino(pid: u32) -> Option<u64> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let link = format!("/proc/{pid}/fd/0");
    let meta = std::fs::metadata(&link).ok()?;
    let t = meta.file_type();
    let tty = || {
        std::fs::read_link(&link)
            .is_ok_and(|p| p.starts_with("/dev/pts") || p.to_string_lossy().starts_with("/dev/tty"))
    };
    (t.is_fifo() || t.is_socket() || (t.is_char_device() && tty())).then_some(meta.ino())
}

/// Whether `pid` holds the file `ino` on one of its fds.
pub fn holds(pid: u32, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten()
        .any(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino))
}

/// The inputs of a gate whose processes are `pids` and whose main process
/// is `main` (the pid, if it is still the one tagged, and whether it is a
/// keeper). `stdin_ino` is the host's stdin as recorded at spawn: found on
/// any fd of any member, it is watched there (a worker that moved it off
/// fd 0).
pub fn find(pids: &[u32], main: Option<(u32, bool)>, stdin_ino: Option<u64>) -> Found {
    let members: HashSet<u32> = pids.iter().copied().collect();
    let mut found = Found::default();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut take = |found: &mut Found, pid: u32, pidfd: &OwnedFd, fd: RawFd, stdin: bool| {
        let Some((what, ino)) = link(pid, fd) else {
            return;
        };
        if !seen.insert(ino) {
            return;
        }
        let borrowed = match borrow(pidfd, fd) {
            Ok(b) => b,
            Err(e) => {
                if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE)
                {
                    found.missed = Some(format!("not watched: {e} (RLIMIT_NOFILE)"));
                }
                return;
            }
        };
        let input = if stdin {
            stdin_input(&what, ino, borrowed)
        } else if what == "socket" {
            socket_input(ino, borrowed, &members)
        } else {
            None
        };
        found.inputs.extend(input);
    };
    if let Some((pid, keeper)) = main {
        if let Ok(pidfd) = crate::proc::pidfd_open(pid) {
            take(&mut found, pid, &pidfd, 0, true);
            if keeper {
                take(&mut found, pid, &pidfd, keeper::FD_WORKER_STDIN, true);
            }
        }
    }
    for &pid in pids {
        let Ok(pidfd) = crate::proc::pidfd_open(pid) else {
            continue;
        };
        for (fd, stdin) in input_fds(pid, stdin_ino) {
            take(&mut found, pid, &pidfd, fd, stdin);
        }
    }
    found
}

/// What fd `fd` of `pid` is ("pipe", "socket", a path) and its inode.
fn link(pid: u32, fd: RawFd) -> Option<(String, u64)> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let target = target.to_string_lossy();
    if let Some((kind, rest)) = target.split_once(":[") {
        let ino = rest.strip_suffix(']')?.parse().ok()?;
        return Some((kind.to_string(), ino));
    }
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
    Some((target.into_owned(), meta.ino()))
}

/// The fds of `pid` that are sockets (false), or the host's stdin wherever
/// it is now (true).
fn input_fds(pid: u32, stdin_ino: Option<u64>) -> Vec<(RawFd, bool)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let stdin = stdin_ino.map(|i| (format!("pipe:[{i}]"), format!("socket:[{i}]")));
    dir.flatten()
        .filter_map(|e| {
            let fd: RawFd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            let target = target.to_string_lossy();
            if stdin
                .as_ref()
                .is_some_and(|(p, s)| target == *p || target == *s)
            {
                Some((fd, true))
            } else {
                target.starts_with("socket:[").then_some((fd, false))
            }
        })
        .collect()
}

/// A stdin a host writes to: a pipe (a FIFO too), a socket, a terminal;
/// not /dev/null or a file, which nobody writes to later.
fn stdin_input(_what: &str, ino: u64, fd: OwnedFd) -> Option<Input> {
    use nix::sys::stat::{fstat, SFlag};
    let kind = SFlag::from_bits_truncate(fstat(&fd).ok()?.st_mode) & SFlag::S_IFMT;
    let label = if kind == SFlag::S_IFSOCK {
        "stdin socket"
    } else if kind == SFlag::S_IFIFO {
        "stdin pipe"
    } else if kind == SFlag::S_IFCHR && nix::unistd::isatty(&fd).unwrap_or(false) {
        "stdin tty"
    } else {
        return None;
    };
    Some(Input {
        label: label.into(),
        kind: Kind::Stdin,
        ino,
        is_tcp_listener: false,
        fd,
    })
}

pub(crate) fn sockopt(fd: &OwnedFd, level: i32, name: i32) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

/// A stream socket the host may reach: a listener, or a connection whose
/// peer is outside the gate.
fn socket_input(ino: u64, fd: OwnedFd, members: &HashSet<u32>) -> Option<Input> {
    let stream = sockopt(&fd, libc::SOL_SOCKET, libc::SO_TYPE)? == libc::SOCK_STREAM;
    let domain = sockopt(&fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let proto = match domain {
        libc::AF_INET | libc::AF_INET6 => "tcp",
        libc::AF_UNIX => "unix",
        _ => return None,
    };
    if !stream {
        return None;
    }
    let listening = sockopt(&fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 1;
    if listening {
        let addr = local_name(&fd, proto).unwrap_or_default();
        return Some(Input {
            label: format!("{proto} {addr} listener").replace("  ", " "),
            kind: Kind::Listener,
            ino,
            is_tcp_listener: proto == "tcp",
            fd,
        });
    }
    // Not connected (yet, or any more): nothing a host writes to.
    nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(fd.as_raw_fd()).ok()?;
    if proto == "unix" {
        let cred =
            nix::sys::socket::getsockopt(&fd.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
                .ok()?;
        // Both ends inside the gate: nothing from its host comes this way.
        if members.contains(&(cred.pid() as u32)) {
            return None;
        }
    }
    Some(Input {
        label: format!("{proto} connection"),
        kind: Kind::Connection,
        ino,
        is_tcp_listener: false,
        fd,
    })
}

/// A listener's own address, as people write it.
fn local_name(fd: &OwnedFd, proto: &str) -> Option<String> {
    use nix::sys::socket::{getsockname, SockaddrStorage};
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).ok()?;
    if proto == "unix" {
        let u = addr.as_unix_addr()?;
        return Some(match (u.path(), u.as_abstract()) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(a)) => format!("@{}", String::from_utf8_lossy(a)),
            _ => String::new(),
        });
    }
    Some(addr.to_string())
}

/// Readable now (data, a pending connection, an end of file, a hang-up),
/// without waiting or consuming anything.
pub fn ready_now(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one pollfd, a zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents != 0
}

/// What waits to be taken: a stream's unread bytes (FIONREAD, a pipe's, a
/// tty's or a socket's), a TCP listener's accept queue (TCP_INFO's
/// tcpi_unacked on a listener); None where the kernel does not tell (a
/// Unix listener's queue).
pub fn pending(fd: RawFd, kind: Kind, tcp_listener: bool) -> Option<u64> {
    if tcp_listener {
        // SAFETY: tcp_info is plain data; getsockopt writes at most len bytes.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        return (r == 0).then_some(info.tcpi_unacked.into());
    }
    if kind == Kind::Listener {
        return None;
    }
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    (r == 0).then_some(n.max(0) as u64)
}

/// What `gov show` lists: each input, connections counted as one line.
pub fn summary(labels: &[(Kind, String)]) -> Vec<String> {
    let mut out: Vec<String> = labels
        .iter()
        .filter(|(k, _)| *k != Kind::Connection)
        .map(|(_, l)| l.clone())
        .collect();
    out.dedup();
    let connections = labels
        .iter()
        .filter(|(k, _)| *k == Kind::Connection)
        .count();
    match connections {
        0 => {}
        1 => out.push("1 connection".into()),
        n => out.push(format!("{n} connections")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A pipe of this process, borrowed through its own pidfd as the daemon
    /// borrows a gate's: input shows as readiness and a count, and nothing
    /// is taken from it.
    #[test]
    fn a_borrowed_pipe_is_ready_when_written_and_nothing_is_taken() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let me = crate::proc::pidfd_open(std::process::id()).unwrap();
        let borrowed = borrow(&me, r.as_raw_fd()).unwrap();
        let input = Input {
            label: "stdin pipe".into(),
            kind: Kind::Stdin,
            ino: 0,
            is_tcp_listener: false,
            fd: borrowed,
        };
        let count = || pending(input.fd.as_raw_fd(), input.kind, false);
        assert!(!ready_now(&input.fd));
        assert_eq!(count(), Some(0));
        std::fs::File::from(w).write_all(b"hello\n").unwrap();
        assert!(ready_now(&input.fd));
        assert_eq!(count(), Some(6));
        // Polled twice, counted twice: still all there for the reader.
        assert!(ready_now(&input.fd));
        let mut buf = [0u8; 16];
        let n = nix::unistd::read(&r, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello\n");
    }

    #[test]
    fn connections_are_counted_in_the_summary() {
        let l = |k, s: &str| (k, s.to_string());
        assert_eq!(
            summary(&[
                l(Kind::Stdin, "stdin pipe"),
                l(Kind::Listener, "tcp 127.0.0.1:8888 listener"),
                l(Kind::Connection, "tcp connection"),
                l(Kind::Connection, "unix connection"),
            ]),
            vec!["stdin pipe", "tcp 127.0.0.1:8888 listener", "2 connections"]
        );
    }
}
