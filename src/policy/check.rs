//! `gov check-config [--print] [FILE]`: what the daemon would make of a policy file.

use std::path::Path;

use super::{read_policy_file, Policy};

/// Checks `file` (default [`super::DEFAULT_PATH`]) and prints the verdict; returns the exit
/// status. Every problem is listed on stderr. A missing [`super::DEFAULT_PATH`] is not a
/// problem: the daemon then runs on the embedded defaults, and says so; a missing
/// `file` is, as it is to the daemon given it. With `print`, stdout is
/// the effective policy as gov.toml text, the verdict a comment at its top, so it
/// can be saved and loaded again.
pub fn check_config(file: Option<&Path>, print: bool) -> i32 {
    let (path, text) = match read_policy_file(file) {
        Ok(read) => read,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let (policy, verdict) = match text {
        None => (
            Policy::embedded(),
            format!("no file at {}: the embedded defaults apply", path.display()),
        ),
        Some(text) => match Policy::parse_all(&text, &path) {
            Ok(policy) => (policy, format!("{}: ok", path.display())),
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                return 1;
            }
        },
    };
    let hibernation = hibernation(&policy.global);
    match print {
        true => print!("# {verdict}\n# {hibernation}\n{}", policy.to_toml()),
        false => println!("{verdict}\n{hibernation}"),
    }
    0
}

/// Whether a daemon on this policy (and GOV_CRIU, as it reads it) could
/// hibernate: criu_path resolves to a CRIU >= 4.2. Not a problem when it does
/// not (gates then only suspend), but said: a person asked for it somewhere.
///
/// Finding the version runs the program, as whoever checks. Only one that
/// the checker could have run anyway: named in their own environment, or
/// root's or their own, which nobody else may change. A policy file of
/// someone else's, checked by root, must not run their program as root.
fn hibernation(global: &super::Global) -> String {
    let mut global = global.clone();
    let from_env = global.apply_criu_env();
    let path = &global.criu_path;
    let named = match from_env {
        true => format!("{} ({})", path.display(), super::CRIU_ENV),
        false => format!("criu_path {:?}", path.display().to_string()),
    };
    let explicit = global.criu_program();
    let found = explicit.map_or_else(
        || {
            let path_var = std::env::var_os("PATH").unwrap_or_default();
            crate::criu::search_path(&path_var, "criu")
        },
        |p| Some(p.to_path_buf()),
    );
    // One that is not there is for Criu::find to say; one named in our own
    // environment is ours to run.
    let vouched = found.filter(|p| !from_env && p.exists());
    if let Some(Err(why)) = vouched.as_deref().map(runnable_by_me) {
        return format!("hibernation: not checked: {named}: {why}");
    }
    match crate::criu::Criu::find(explicit) {
        Ok(criu) => format!("hibernation: on, {criu}"),
        Err(e) => format!("hibernation: off: {named}: {e}"),
    }
}

/// `path` and every directory above it belong to root or to us and nobody
/// else may write there (a sticky directory keeps others' entries theirs).
fn runnable_by_me(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let path = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for p in path.ancestors() {
        let m = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let others_write = m.mode() & 0o022 != 0 && !(m.is_dir() && m.mode() & 0o1000 != 0);
        if (m.uid() != 0 && m.uid() != me) || others_write {
            return Err(format!(
                "{} may be changed by {}, so it is not run",
                p.display(),
                match others_write {
                    true => "others".to_string(),
                    false => crate::proc::user_name(m.uid()),
                }
            ));
        }
    }
    Ok(())
}
