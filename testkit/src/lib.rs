//! The test kit of gov's tests (tests/) and benches (benches/gov): each
//! thing they need written once, one module per idea.
//!
//! - [`root`]: a cgroup root, socket and temp dir of the test's own, and
//!   the teardown of a cgroup tree.
//! - [`daemon`]: a gov daemon of the test's own, and its policy file.
//! - [`client`]: `gov ps`/`gov events` as the library's protocol types, the
//!   daemon's scan counter, a raw protocol connection.
//! - [`process`]: bounded waits, children killed and reaped on drop, gov as
//!   another user.
//! - [`skip`]: a prerequisite that is missing: a skip that says why, or a
//!   failure where `GOV_REQUIRE_*` asks for it.
//! - [`criu`], [`jupyter`], [`agents`]: the fixtures that need outside
//!   software (CRIU, PyPI, npm).

pub mod agents;
pub mod client;
pub mod criu;
pub mod daemon;
pub mod jupyter;
pub mod lsp;
pub mod process;
pub mod root;
pub mod skip;

pub use client::Conn;
pub use daemon::{write_policy, Daemon};
pub use process::{
    alive, as_user, gov_as, gov_as_nobody, gov_dir, gov_for_others, lines_of, path_with, read_pids,
    reap, spawn_gate, wait_until, Kid, NOBODY, OTHER_USER,
};
pub use root::{cgroup_parent, remove_tree, root_rel, TestRoot};
pub use skip::{
    controllers_available, has_cap_sys_resource, host_only, needs_controllers, require_root, skip,
};

use std::path::{Path, PathBuf};

/// The `gov` binary: GOV_BIN (the VM sets it), else the one cargo built
/// beside the running test or bench (`target/<profile>/deps/..`), as cargo's
/// `CARGO_BIN_EXE_gov` would name it (a library crate is not given that).
pub fn gov_bin() -> PathBuf {
    match std::env::var_os("GOV_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => gov_bin_dir().join("gov"),
    }
}

/// cargo's output directory of the running test or bench
/// (`target/<profile>`, above its `deps/`).
fn gov_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe.parent().expect("a test binary lies in a directory");
    if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// gov's source tree (tests/fixtures, integration/, docs/ live there).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lies in gov's tree")
}

/// A fixture file of tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// Bytes a process printed, as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
