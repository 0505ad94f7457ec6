//! The gates this daemon manages, each reached through its owner. A cache:
//! cgroupfs and the gates' tags are the truth, and a restarted daemon
//! rebuilds it by walking the tree.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::lifecycle::{Cmd, Gate, Handle};
use super::lock;

#[derive(Default)]
pub struct Registry {
    gates: Mutex<HashMap<String, Handle>>,
}

impl Registry {
    pub fn get(&self, id: &str) -> Option<Handle> {
        lock(&self.gates).get(id).cloned()
    }

    pub fn contains(&self, id: &str) -> bool {
        lock(&self.gates).contains_key(id)
    }

    pub fn insert(&self, id: String, handle: Handle) {
        lock(&self.gates).insert(id, handle);
    }

    /// Only the gate's owner calls this, as it ends.
    pub fn remove(&self, id: &str) {
        lock(&self.gates).remove(id);
    }

    /// Hands a command to a gate's owner; false when there is no such gate.
    pub fn send(&self, id: &str, cmd: Cmd) -> bool {
        self.get(id).is_some_and(|h| h.send(cmd))
    }

    pub fn handles(&self) -> Vec<(String, Handle)> {
        lock(&self.gates)
            .iter()
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect()
    }

    /// Looks at every gate as its owner last published it (no copies: a
    /// scan or a spawn's cap check at thousands of gates).
    pub fn each(&self, mut f: impl FnMut(&Handle, &Gate)) {
        for h in lock(&self.gates).values() {
            f(h, &h.view());
        }
    }

    /// Every gate as its owner last published it.
    pub fn views(&self) -> Vec<Arc<Gate>> {
        lock(&self.gates).values().map(Handle::view).collect()
    }
}
