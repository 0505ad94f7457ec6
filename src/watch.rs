//! Change notifications for gates' event files (cgroup.events, and where
//! the controllers are on, memory.events and pids.events), so the daemon
//! learns that a gate emptied or hit a limit without reading every gate's
//! files at every scan. The kernel reports a change of these files as an
//! inotify IN_MODIFY.
//!
//! A plain thread blocks in read(2) on the inotify fd and hands gate ids to
//! the async side through a channel: no unsafe fd juggling with the runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::sync::mpsc;

use crate::gate::GateDir;

/// The files whose changes matter.
const WATCHED: [&str; 3] = ["cgroup.events", "memory.events", "pids.events"];

pub struct Watcher {
    inotify: Arc<Inotify>,
    ids: Arc<Mutex<HashMap<WatchDescriptor, String>>>,
}

impl Watcher {
    /// Starts the reader thread; gate ids whose files changed arrive on the
    /// returned channel (repeats are possible and harmless).
    pub fn start() -> nix::Result<(Watcher, mpsc::UnboundedReceiver<String>)> {
        let inotify = Arc::new(Inotify::init(InitFlags::IN_CLOEXEC)?);
        let ids: Arc<Mutex<HashMap<WatchDescriptor, String>>> = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let (reader, map) = (inotify.clone(), ids.clone());
        std::thread::Builder::new()
            .name("gov-inotify".into())
            .spawn(move || loop {
                let events = match reader.read_events() {
                    Ok(e) => e,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!("inotify read failed, falling back to scans: {e}");
                        return;
                    }
                };
                for ev in events {
                    let mut map = map.lock().unwrap();
                    // IN_IGNORED: the cgroup was removed and its watch with it.
                    let id = if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                        map.remove(&ev.wd)
                    } else {
                        map.get(&ev.wd).cloned()
                    };
                    if let Some(id) = id {
                        if tx.send(id).is_err() {
                            return;
                        }
                    }
                }
            })
            .map_err(|_| nix::errno::Errno::EAGAIN)?;
        Ok((Watcher { inotify, ids }, rx))
    }

    /// Watches a gate's event files (those that exist here).
    pub fn add(&self, dir: &GateDir) {
        for file in WATCHED {
            let path = dir.cgroup.path().join(file);
            if !path.exists() {
                continue;
            }
            match self.inotify.add_watch(&path, AddWatchFlags::IN_MODIFY) {
                Ok(wd) => {
                    self.ids.lock().unwrap().insert(wd, dir.id.clone());
                }
                Err(e) => tracing::debug!("cannot watch {}: {e}", path.display()),
            }
        }
    }
}
