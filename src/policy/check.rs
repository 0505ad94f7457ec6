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
    match print {
        true => print!("# {verdict}\n{}", policy.to_toml()),
        false => println!("{verdict}"),
    }
    0
}
