//! Names that reach the file system. A user's string never becomes a path:
//! projects become a readable slug plus a hash, gate ids are generated, and
//! everything is checked before it is used anywhere.

use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

/// Longest project string accepted (PATH_MAX).
pub const MAX_PROJECT_LEN: usize = 4096;
/// Longest session id accepted; hosts use UUIDs or short hex ids.
pub const MAX_SESSION_LEN: usize = 128;
const SLUG_LEN: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} contains a control character (newline, tab, NUL, ...)")]
    Control { what: &'static str },
    #[error(
        "session {0:?} may hold only letters, digits and . _ - : (and may not start with . or -)"
    )]
    Session(String),
    #[error("{0:?} is not a gate id")]
    GateId(String),
}

fn check_text(what: &'static str, s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { what });
    }
    if s.len() > max {
        return Err(NameError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(NameError::Control { what });
    }
    Ok(())
}

/// Checks a project string and makes a relative path absolute against `cwd`
/// (lexically, without following links), since "." means nothing to anyone
/// else. Any other string is kept as given: a project may be a plain name.
pub fn normalize_project(project: &str, cwd: &Path) -> Result<String, NameError> {
    check_text("project", project, MAX_PROJECT_LEN)?;
    if !is_relative_project(project) {
        return Ok(project.to_string());
    }
    let mut out = PathBuf::new();
    for c in cwd.join(project).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    let s = out.to_string_lossy().into_owned();
    check_text("project", &s, MAX_PROJECT_LEN)?;
    Ok(s)
}

/// Does this project name a path relative to the cwd (`.`, `..`, `./x`,
/// `../x`)? Only those need [`normalize_project`]'s `cwd`.
pub fn is_relative_project(project: &str) -> bool {
    project == "." || project == ".." || project.starts_with("./") || project.starts_with("../")
}

/// A session id as hosts hand them out (UUIDs, hex, "name:3").
pub fn check_session(session: &str) -> Result<(), NameError> {
    check_text("session", session, MAX_SESSION_LEN)?;
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    if !session.chars().all(ok_char) || session.starts_with(['.', '-']) {
        return Err(NameError::Session(session.to_string()));
    }
    Ok(())
}

/// The cgroup directory name of user `uid`'s gates of a project: the uid, a
/// readable slug of the project's last path component and 12 hex digits of
/// its SHA-256, e.g. `u1000-mypkg-3fa2c1d05b7e`. The slug is only for
/// people; the hash keeps distinct projects apart, and the uid distinct
/// users: anyone may name any project, so two users' gates of the same
/// project never share a cgroup (nor its limits).
pub fn project_key(uid: u32, project: &str) -> String {
    let last = project
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let mut slug: String = last
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(SLUG_LEN)
        .collect();
    slug = slug.trim_matches('-').to_string();
    if slug.is_empty() {
        slug = "project".to_string();
    }
    let digest = Sha256::digest(project.as_bytes());
    format!("u{uid}-{slug}-{}", hex(&digest[..6]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new gate id: "g" and 10 random hex digits. The letter keeps ids apart
/// from pids in a person's mind and in command lines.
pub fn new_gate_id() -> String {
    let mut bytes = [0u8; 5];
    getrandom::fill(&mut bytes).expect("the kernel's random source is available");
    format!("g{}", hex(&bytes))
}

/// A new session id for gates spawned without one.
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the kernel's random source is available");
    hex(&bytes)
}

/// Is this a gate id we generated? Used to refuse anything else before it is
/// joined to a path.
pub fn check_gate_id(id: &str) -> Result<(), NameError> {
    let ok = id.len() == 11
        && id.starts_with('g')
        && id[1..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    if ok {
        Ok(())
    } else {
        Err(NameError::GateId(id.chars().take(64).collect()))
    }
}

/// Is this directory name one of our project keys? Also true of the older
/// layout's keys without the uid (`mypkg-3fa2c1d05b7e`): gates a daemon
/// before per-user projects made are still found, managed and reaped where
/// they are, sharing that project cgroup as they did, and the directory
/// goes with the last of them; new gates go to the per-user key.
pub fn is_project_key(name: &str) -> bool {
    match name.rsplit_once('-') {
        Some((slug, hash)) => {
            !slug.is_empty()
                && hash.len() == 12
                && hash.chars().all(|c| c.is_ascii_hexdigit())
                && slug.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_keys_never_hold_separators_or_dots() {
        for p in [
            "/home/ann/src/MyPkg",
            "../../../../etc",
            "a/../../b",
            "..",
            "/",
            "name with spaces",
            "ünïcödé/项目",
            &"x".repeat(5000),
        ] {
            let key = project_key(u32::MAX, p);
            assert!(!key.contains('/') && !key.contains(".."), "{p:?} -> {key}");
            assert!(key.len() <= 12 + SLUG_LEN + 13, "{key}");
            assert!(is_project_key(&key), "{key}");
        }
        assert!(project_key(1000, "/home/ann/src/MyPkg").starts_with("u1000-mypkg-"));
        assert_ne!(project_key(1000, "/a/MyPkg"), project_key(1000, "/b/MyPkg"));
        assert_eq!(project_key(1000, "/a/MyPkg"), project_key(1000, "/a/MyPkg"));
    }

    #[test]
    fn each_user_has_a_project_key_of_their_own() {
        assert_ne!(project_key(1000, "/a/MyPkg"), project_key(1001, "/a/MyPkg"));
        // The older layout, without the uid, is still ours.
        assert!(is_project_key("mypkg-3fa2c1d05b7e"));
        assert!(!is_project_key("daemon"));
    }

    #[test]
    fn projects_are_checked_and_relative_paths_made_absolute() {
        let cwd = Path::new("/home/ann/src");
        assert_eq!(normalize_project(".", cwd).unwrap(), "/home/ann/src");
        assert_eq!(normalize_project("../x", cwd).unwrap(), "/home/ann/x");
        assert_eq!(normalize_project("../../../../..", cwd).unwrap(), "/");
        assert_eq!(normalize_project("MyPkg", cwd).unwrap(), "MyPkg");
        assert!(matches!(
            normalize_project("a\nb", cwd),
            Err(NameError::Control { .. })
        ));
        assert!(matches!(
            normalize_project("", cwd),
            Err(NameError::Empty { .. })
        ));
        assert!(matches!(
            normalize_project(&"x".repeat(5000), cwd),
            Err(NameError::TooLong { len: 5000, .. })
        ));
    }

    #[test]
    fn sessions_are_plain_tokens() {
        check_session("3fa2c1d0").unwrap();
        check_session("550e8400-e29b-41d4-a716-446655440000").unwrap();
        check_session("host:3").unwrap();
        for bad in [
            "",
            "a/b",
            "..",
            "../x",
            ".hidden",
            "-rf",
            "a\nb",
            "a b",
            &"s".repeat(129),
        ] {
            assert!(check_session(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn gate_ids_are_generated_and_checked() {
        let id = new_gate_id();
        check_gate_id(&id).unwrap();
        assert_ne!(id, new_gate_id());
        for bad in [
            "",
            "g",
            "../g0123456789",
            "g0123456789/",
            "G0123456789",
            "gABCDEF0123",
            "1234",
        ] {
            assert!(check_gate_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
