//! A sleeping gate's inputs, watched by its owner (`wake` finds and borrows
//! them). Watches exist only while a gate is suspended by the reaper or
//! hibernated: armed after the freeze, dropped (EPOLL_CTL_DEL, then close)
//! as soon as the gate runs or ends.
//!
//! Armed after the freeze completed, then each input checked once for what
//! is already there: input that came between the idle decision and the
//! freeze, or during it, wakes the gate at once, so no gate stays frozen
//! with input waiting.

use std::future::poll_fn;
use std::os::fd::{AsRawFd, OwnedFd};
use std::task::Poll;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::wake::{self, Found, Kind};

/// An input that woke a gate, as the owner records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Woke {
    pub label: String,
    pub kind: Kind,
    pub ino: u64,
    /// What waited on it when it woke the gate (`wake::pending`).
    pub pending: Option<u64>,
}

struct Entry {
    label: String,
    kind: Kind,
    ino: u64,
    tcp_listener: bool,
    fd: AsyncFd<OwnedFd>,
}

impl Entry {
    fn woke(&self) -> Woke {
        Woke {
            label: self.label.clone(),
            kind: self.kind,
            ino: self.ino,
            pending: wake::pending(self.fd.get_ref().as_raw_fd(), self.kind, self.tcp_listener),
        }
    }
}

/// The inputs of one sleeping gate.
pub struct Watch {
    entries: Vec<Entry>,
}

/// A watch, and what it says at once.
pub struct Armed {
    pub watch: Watch,
    /// An input that is readable already: the gate wakes now.
    pub ready: Option<Woke>,
    /// What `gov show` lists (`wake::summary`).
    pub wakes_on: Vec<String>,
    /// Inputs not watched, and why: said in `gov show` and the log.
    pub note: Option<String>,
}

/// Watches what was found. `ended` are the inputs that already woke the
/// gate at their end (readable with nothing to read: its host closed it):
/// found so again, such an input would wake the gate at once, forever; it
/// is not watched any more (the gate saw its end once, which it may need:
/// a server exits when its stdin ends). Bytes or connections waiting are
/// input: the gate wakes at once. The wake limit (WAKE_BURST a minute)
/// bounds what a reader that never reads costs.
pub fn arm(found: Found, ended: &[u64]) -> Armed {
    let mut note = found.missed;
    let mut entries = Vec::new();
    let mut ready = None;
    for input in found.inputs {
        let tcp_listener = input.is_tcp_listener;
        let (label, kind, ino) = (input.label, input.kind, input.ino);
        // SAFETY: the AsyncFd owns the borrowed fd, which stays open and
        // unchanged until the AsyncFd drops it (deregistered first).
        let fd = match unsafe { AsyncFd::register_with_interest(input.fd, Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                note = Some(format!("{label} not watched: {e}"));
                continue;
            }
        };
        let entry = Entry {
            label,
            kind,
            ino,
            tcp_listener,
            fd,
        };
        if wake::ready_now(entry.fd.get_ref()) {
            let now = entry.woke();
            if now.pending == Some(0) && ended.contains(&now.ino) {
                continue;
            }
            ready.get_or_insert(now);
        }
        entries.push(entry);
    }
    let labels: Vec<(Kind, String)> = entries.iter().map(|e| (e.kind, e.label.clone())).collect();
    Armed {
        watch: Watch { entries },
        ready,
        wakes_on: wake::summary(&labels),
        note,
    }
}

impl Watch {
    /// The first input to become readable. Never returns for an empty watch.
    pub async fn ready(&self) -> Woke {
        poll_fn(|cx| {
            for e in &self.entries {
                if let Poll::Ready(Ok(_guard)) = e.fd.poll_read_ready(cx) {
                    // The guard is dropped without clearing: the readiness
                    // stays, and this watch is dropped as the gate wakes.
                    return Poll::Ready(e.woke());
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Its sockets, which CRIU cannot hand back to a restored worker.
    pub fn sockets(&self) -> Vec<String> {
        let labels: Vec<(Kind, String)> = self
            .entries
            .iter()
            .filter(|e| e.kind != Kind::Stdin)
            .map(|e| (e.kind, e.label.clone()))
            .collect();
        wake::summary(&labels)
    }
}

/// The first input of a watch, if there is one; never otherwise.
pub async fn first(watch: &Option<Watch>) -> Woke {
    match watch {
        Some(w) => w.ready().await,
        None => std::future::pending().await,
    }
}
