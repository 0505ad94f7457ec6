//! Prerequisites. A missing one is either a skip that says why on stderr,
//! or, where the environment asks for it (`GOV_REQUIRE_*`, the VM's
//! `GOV_VM`), a failure: a skip must never pass unnoticed.

use std::io::Write;

use gov::cgroup;

/// Says that `test` is skipped, and why: straight to fd 2, past libtest's
/// capture (which takes only `eprintln!`), because a skip must be seen.
pub fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// Is `var` set to anything but "" or "0"? (`GOV_REQUIRE_CRIU=1`, ...)
pub fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A prerequisite of `test` is missing: fails when `require_var` is set,
/// else says SKIP and why.
pub fn skip_unless_required(test: &str, require_var: &str, why: &str) {
    assert!(
        !required(require_var),
        "{test}: {require_var} is set, but {why}"
    );
    skip(
        test,
        &format!("{why} ({require_var}=1 makes this a failure)"),
    );
}

/// Host tests need root and cgroup2. Missing, they fail loudly: a skip is
/// not a pass.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests act on the real cgroupfs and must run as root"
    );
}

/// Is this the VM suite (integration/vm-test)? It has busybox only: no
/// bash, python3, node, PyPI or npm.
pub fn in_vm() -> bool {
    std::env::var_os("GOV_VM").is_some()
}

/// For tests that need what only a host has (`needs`: "bash, python3"):
/// true, after saying so, in the VM.
pub fn host_only(test: &str, needs: &str) -> bool {
    if in_vm() {
        skip(
            test,
            &format!("host-only ({needs}); the VM has busybox only"),
        );
        return true;
    }
    false
}

/// Are the memory, pids and cpu controllers usable in cgroup2 here? Only
/// in the VM (pure cgroup2); our hosts' v2 hierarchy has none.
pub fn controllers_available() -> bool {
    let Ok(mount) = cgroup::cgroup2_mount() else {
        return false;
    };
    let have = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    ["memory", "pids", "cpu"]
        .iter()
        .all(|c| have.split_whitespace().any(|h| h == *c))
}

/// For tests that need controllers: on the host they say so and return
/// false; in the VM (GOV_REQUIRE_CONTROLLERS=1) a missing controller fails.
pub fn needs_controllers(test: &str) -> bool {
    if controllers_available() {
        return true;
    }
    skip_unless_required(
        test,
        "GOV_REQUIRE_CONTROLLERS",
        "no cgroup2 controllers on this host; it runs in the VM suite (integration/vm-test)",
    );
    false
}

/// Does this process hold CAP_SYS_RESOURCE? Some sandboxes (our dev
/// machines) withhold it from root: CRIU then cannot read another user's
/// rlimits, and the kernel takes PSI trigger windows of 2 s multiples only.
pub fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    // CAP_SYS_RESOURCE is capability 24 (linux/capability.h).
    eff & (1 << 24) != 0
}
