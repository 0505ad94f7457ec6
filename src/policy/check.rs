//! `gov check-config [--print] [FILE]`: what the daemon would make of a policy file.

use std::path::Path;

use super::{read_if_present, Policy, DEFAULT_PATH};

/// Checks `file` (default [`DEFAULT_PATH`]) and prints the verdict; returns the exit
/// status. Every problem is listed on stderr. A missing file is not a problem: the
/// daemon then runs on the embedded defaults, and says so. With `print`, stdout is
/// the effective policy as gov.toml text, the verdict a comment at its top, so it
/// can be saved and loaded again.
pub fn check_config(file: Option<&Path>, print: bool) -> i32 {
    let path = file.unwrap_or(Path::new(DEFAULT_PATH));
    let (policy, verdict) = match read_if_present(path) {
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
        Ok(None) => (
            Policy::embedded(),
            format!("no file at {}: the embedded defaults apply", path.display()),
        ),
        Ok(Some(text)) => match Policy::parse_all(&text, path) {
            Ok(policy) => (policy, format!("{}: ok", path.display())),
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                return 1;
            }
        },
    };
    match print {
        true => print!("# {verdict}\n{}", policy.to_toml()),
        false => println!("{verdict}"),
    }
    0
}
