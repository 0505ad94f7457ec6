//! A venv with a real Jupyter kernel (ipykernel, jupyter_client) at pinned
//! versions, built once under cargo's target/tmp and reused while the pins
//! stay the same. PyPI unreachable: a loud skip, or a failure where
//! GOV_REQUIRE_JUPYTER=1 (CI).

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::skip::{required, skip};

pub const PACKAGES: &[&str] = &["ipykernel==7.4.0", "jupyter_client==8.10.0"];

/// pip's words for "cannot reach the index" (as opposed to a real failure).
fn looks_offline(stderr: &str) -> bool {
    [
        "NewConnectionError",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ProxyError",
        "Connection refused",
        "(from versions: none)",
    ]
    .iter()
    .any(|p| stderr.contains(p))
}

/// cargo's target/tmp (what CARGO_TARGET_TMPDIR names to a test), from
/// where the running test binary lies: `target/<profile>/deps/<test>`.
fn target_tmp() -> PathBuf {
    let profile = crate::gov_bin_dir();
    profile
        .parent()
        .map(|t| t.join("tmp"))
        .unwrap_or_else(std::env::temp_dir)
}

/// The venv (its `bin/python3` runs the kernel), or None after saying why.
pub fn venv_or_skip(test: &str) -> Option<PathBuf> {
    let dir = target_tmp().join("gov-jupyter-venv");
    let want = PACKAGES.join("\n");
    let stamp = "gov-packages.txt";
    if fs::read_to_string(dir.join(stamp)).ok().as_deref() == Some(want.as_str()) {
        return Some(dir);
    }
    // Built beside and renamed into place, so a concurrent or interrupted
    // run never leaves a half-made venv behind the stamp. (A venv run as
    // `python -m` does not care about its directory's name.)
    fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let t0 = Instant::now();
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&tmp)
        .status()
        .expect("python3 runs");
    assert!(st.success(), "python3 -m venv {} failed", tmp.display());
    let out = Command::new(tmp.join("bin/python3"))
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
        .args(["--timeout", "30", "--retries", "2"])
        .args(PACKAGES)
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let _ = fs::remove_dir_all(&tmp);
        if looks_offline(&err) && !required("GOV_REQUIRE_JUPYTER") {
            skip(
                test,
                &format!(
                    "\n**** PyPI is unreachable, so {PACKAGES:?} cannot be installed. THIS \
                     TEST DID NOT RUN. (GOV_REQUIRE_JUPYTER=1 makes this a failure.) pip \
                     said:\n{err}\n****"
                ),
            );
            return None;
        }
        panic!("{test}: pip install {PACKAGES:?} failed:\n{err}");
    }
    fs::write(tmp.join(stamp), &want).unwrap();
    let _ = fs::remove_dir_all(&dir);
    if fs::rename(&tmp, &dir).is_err() {
        // Another run put its venv there first; use that one.
        let _ = fs::remove_dir_all(&tmp);
    }
    eprintln!("{test}: made the Jupyter venv in {:.1?}", t0.elapsed());
    Some(dir)
}
