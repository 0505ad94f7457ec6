//! The agent tests' packages (tests/agents.rs): the MCP SDK and
//! python-lsp-server (a venv) and an MCP server (an npm prefix), at the
//! versions pinned in integration/agents/, installed by
//! integration/setup-agents into integration/.cache (or GOV_AGENTS_CACHE).
//! GOV_AGENTS_VENV and GOV_AGENTS_NPM name ready-made directories instead.
//! A registry out of reach: a loud skip, or a failure where
//! GOV_REQUIRE_AGENTS=1 (CI).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use crate::skip::{required, skip};

pub struct Packages {
    /// The venv with mcp and python-lsp-server.
    pub venv: PathBuf,
    /// The npm prefix with the MCP server (node_modules, its own .npm cache).
    pub npm: PathBuf,
}

/// The installed packages, made once per test binary; None after saying
/// why not.
pub fn packages_or_skip(test: &str) -> Option<&'static Packages> {
    static PACKAGES: OnceLock<Result<Packages, String>> = OnceLock::new();
    match PACKAGES.get_or_init(install) {
        Ok(p) => Some(p),
        Err(log) => {
            assert!(
                !required("GOV_REQUIRE_AGENTS"),
                "{test}: GOV_REQUIRE_AGENTS=1 but the packages cannot be installed:\n{log}"
            );
            skip(
                test,
                &format!(
                    "\n**** PyPI or npm is unreachable, so the MCP SDK, the MCP server and \
                     the language server cannot be installed. THIS TEST DID NOT RUN. \
                     (GOV_REQUIRE_AGENTS=1 makes this a failure.)\n{log}\n****"
                ),
            );
            None
        }
    }
}

/// Runs integration/setup-agents (exit 2: a registry is unreachable).
fn install() -> Result<Packages, String> {
    if let (Some(v), Some(n)) = (
        std::env::var_os("GOV_AGENTS_VENV"),
        std::env::var_os("GOV_AGENTS_NPM"),
    ) {
        return Ok(Packages {
            venv: v.into(),
            npm: n.into(),
        });
    }
    let t0 = Instant::now();
    let out = Command::new(crate::repo().join("integration/setup-agents"))
        .stdin(Stdio::null())
        .output()
        .expect("integration/setup-agents runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => {
            eprintln!("agents: packages ready in {:.1?}", t0.elapsed());
            let cache = std::env::var_os("GOV_AGENTS_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::repo().join("integration/.cache"));
            Ok(Packages {
                venv: cache.join("agents-venv"),
                npm: cache.join("npm"),
            })
        }
        Some(2) => Err(log),
        _ => panic!("integration/setup-agents failed:\n{log}"),
    }
}
