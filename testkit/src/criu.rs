//! CRIU for the hibernation tests: >= 4.2, from GOV_CRIU, else
//! integration/build-criu's cache, else PATH. Missing, a test says SKIP,
//! and fails where GOV_REQUIRE_CRIU=1 (CI builds CRIU, so there a skip
//! would hide a failure).

use std::path::{Path, PathBuf};

use gov::criu::Criu;

use crate::skip::skip_unless_required;

/// Where integration/build-criu leaves its build.
pub fn cached() -> PathBuf {
    crate::repo().join("integration/.cache/criu/4.2.1/criu")
}

/// CRIU >= 4.2, or None after saying why not.
pub fn criu_or_skip(test: &str) -> Option<Criu> {
    let cached = cached();
    let explicit = std::env::var_os("GOV_CRIU")
        .map(PathBuf::from)
        .or_else(|| cached.exists().then_some(cached));
    match Criu::find(explicit.as_deref()) {
        Ok(c) => Some(c),
        Err(e) => {
            skip_unless_required(
                test,
                "GOV_REQUIRE_CRIU",
                &format!("{e}; build it with integration/build-criu"),
            );
            None
        }
    }
}

/// CRIU alone, for tests whose gates are shell scripts: the VM suite runs
/// them too (its CRIU is GOV_VM_CRIU; it has no python), else as
/// [`criu_or_skip`].
pub fn for_shell_workers(test: &str) -> Option<PathBuf> {
    let in_vm = std::env::var_os("GOV_VM_CRIU")
        .map(PathBuf::from)
        .filter(|p| Criu::find(Some(p)).is_ok());
    in_vm.or_else(|| Some(criu_or_skip(test)?.path().to_path_buf()))
}

/// python3, for the workers that hibernate tests dump (the VM has none).
/// Missing, a skip that says so, or a failure under GOV_REQUIRE_CRIU: a
/// CRIU test that ran nothing must not pass silently.
pub fn python3_or_skip(test: &str) -> Option<PathBuf> {
    let found = ["/usr/bin/python3", "python3"].into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", ""])
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        skip_unless_required(test, "GOV_REQUIRE_CRIU", "no python3 for the worker");
    }
    found.map(|p| Path::new(p).to_path_buf())
}
