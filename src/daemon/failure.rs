//! A failed request, as its reply says it: built here only, so a client
//! sees `not found`, `busy`, `reaping` or `refused` where that is the truth
//! and `internal` only where it is not known better.

use crate::cgroup::CgroupError;
use crate::hibernate::HibernateError;
use crate::protocol::ErrorCode;

#[derive(Debug)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl std::fmt::Display) -> Failure {
        Failure::new(ErrorCode::BadRequest, message.to_string())
    }

    /// A gate the caller may not see is not found either: its existence is
    /// nobody else's business.
    pub fn not_found(id: &str) -> Failure {
        Failure::new(
            ErrorCode::NotFound,
            format!("no gate {id} (`gov ps` lists yours)"),
        )
    }

    pub fn reaping(id: &str) -> Failure {
        Failure::new(ErrorCode::Reaping, format!("gate {id} is being reaped"))
    }

    pub fn internal(e: impl std::fmt::Display) -> Failure {
        Failure::new(ErrorCode::Internal, e.to_string())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A gate's cgroup that vanished is a gate not found; EBUSY is a gate in
/// use (a process entered it as it was removed): try again.
impl From<CgroupError> for Failure {
    fn from(e: CgroupError) -> Failure {
        use nix::errno::Errno;
        match e.errno() {
            Some(Errno::ENOENT) => {
                Failure::new(ErrorCode::NotFound, format!("the gate is gone: {e}"))
            }
            Some(Errno::EBUSY) => Failure::new(ErrorCode::Busy, e.to_string()),
            _ => Failure::internal(e),
        }
    }
}

/// A restore refused for what the worker would hold is `refused`; the rest
/// of hibernation's errors are the daemon's or CRIU's.
impl From<HibernateError> for Failure {
    fn from(e: HibernateError) -> Failure {
        match e {
            HibernateError::Unsafe { .. } => Failure::new(ErrorCode::Refused, e.reason()),
            HibernateError::Cgroup(e) => e.into(),
            e => Failure::internal(e.reason()),
        }
    }
}

impl From<crate::spawn::BadRequest> for Failure {
    fn from(e: crate::spawn::BadRequest) -> Failure {
        Failure::bad_request(e)
    }
}

/// A process the caller may not see is not found; one they may see but
/// not take is forbidden.
impl From<crate::adopt::Refused> for Failure {
    fn from(refused: crate::adopt::Refused) -> Failure {
        use crate::adopt::Refused;
        let code = match refused {
            Refused::Gone(_) | Refused::NotYours(_) => ErrorCode::NotFound,
            Refused::Untouchable(_) | Refused::Held(..) => ErrorCode::Forbidden,
        };
        Failure::new(code, refused.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_errors_say_what_the_client_can_do() {
        let io = |errno| CgroupError::Io {
            op: "rmdir",
            path: "/g".into(),
            error: std::io::Error::from_raw_os_error(errno),
        };
        assert_eq!(Failure::from(io(libc::ENOENT)).code, ErrorCode::NotFound);
        assert_eq!(Failure::from(io(libc::EBUSY)).code, ErrorCode::Busy);
        assert_eq!(Failure::from(io(libc::EIO)).code, ErrorCode::Internal);
        let unsafe_ = HibernateError::Unsafe {
            uid: 1000,
            violations: Vec::new(),
        };
        assert_eq!(Failure::from(unsafe_).code, ErrorCode::Refused);
    }
}
