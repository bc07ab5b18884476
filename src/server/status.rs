//! The one mapping from domain errors to gRPC statuses. The csi-addons
//! controller branches on these codes (FAILED_PRECONDITION from Promote makes it
//! force-promote, NOT_FOUND from Disable counts as done, NOT_FOUND from
//! GetVolumeReplicationInfo means "no info yet"), so every arm is deliberate and
//! there is no catch-all.

use tonic::{Code, Status};

use crate::Error;
use crate::ceph::CephError;
use crate::cephcsi::{self, ConfigError};
use crate::exec::ExecError;

pub(crate) fn code_of(err: &Error) -> Code {
    match err {
        Error::Malformed(_) | Error::Param(_) => Code::InvalidArgument,
        Error::Resolve(e) => resolve_code(e),
        Error::NotSupported(_) => Code::Unimplemented,
        Error::Missing(_) => Code::NotFound,
        Error::NameTaken(_) => Code::AlreadyExists,
        Error::TooMany(_) => Code::ResourceExhausted,
        Error::Member { source, .. } => code_of(source),
        Error::ImageNotFound { .. } | Error::NoInfoYet(_) => Code::NotFound,
        Error::WrongState(_) => Code::FailedPrecondition,
        Error::InProgress(_) => Code::Aborted,
        Error::NotReady(_) => Code::Unavailable,
        Error::Ceph { source, .. } => errno_code(source),
        Error::Mgr { source, .. } => match source.errno {
            libc::EINVAL => Code::InvalidArgument,
            // rbd_support answers EAGAIN while it (re)loads, e.g. after a failover.
            _ => errno_code(source),
        },
        Error::Mon { source, .. } => match source.errno {
            libc::EINVAL => Code::InvalidArgument,
            // errno_code's PERMISSION_DENIED: the message names the mon cap.
            _ => errno_code(source),
        },
        Error::Exec(e) => match e {
            ExecError::Busy(_) => Code::Aborted,
            ExecError::Overloaded(_) => Code::Unavailable,
            ExecError::TimedOut { .. } => Code::DeadlineExceeded,
            ExecError::Panicked => Code::Internal,
        },
    }
}

fn resolve_code(err: &cephcsi::Error) -> Code {
    match err {
        cephcsi::Error::BadId(_) | cephcsi::Error::Secrets(_) => Code::InvalidArgument,
        // The volume ID is fine but names a cluster this server was not given:
        // not NOT_FOUND, which Disable's caller would take as "already gone".
        cephcsi::Error::Config(ConfigError::UnknownCluster { .. }) => Code::InvalidArgument,
        cephcsi::Error::Config(
            ConfigError::Unreadable { .. } | ConfigError::Malformed { .. } | ConfigError::NoMonitors { .. },
        ) => Code::Internal,
        cephcsi::Error::Connect { source, .. } => match source.errno {
            // cephx refused the user or key, or the key does not decode.
            libc::EACCES | libc::EPERM | libc::EINVAL => Code::Unauthenticated,
            _ => Code::Unavailable,
        },
        // The key is right; this build's library is too old to use it.
        cephcsi::Error::KeyTypeUnreadable { .. } => Code::FailedPrecondition,
        // Two configuration files disagree: the admin must settle it.
        cephcsi::Error::DestinationConflict(_) => Code::FailedPrecondition,
        cephcsi::Error::PoolNotFound { .. } => Code::NotFound,
        // A class parameter naming a pool that is not there.
        cephcsi::Error::PoolNameNotFound { .. } => Code::InvalidArgument,
        cephcsi::Error::OpenPool { source, .. } | cephcsi::Error::Journal { source, .. } => errno_code(source),
    }
}

/// The code for a librados/librbd errno outside any special case.
fn errno_code(e: &CephError) -> Code {
    match e.errno {
        libc::ENOENT => Code::NotFound,
        libc::EPERM | libc::EACCES => Code::PermissionDenied,
        // Transient: the cluster or a peer is busy, restarting or unreachable.
        libc::EAGAIN
        | libc::EBUSY
        | libc::EROFS
        | libc::ETIMEDOUT
        | libc::ESHUTDOWN
        | libc::ENOTCONN
        | libc::ECONNREFUSED
        | libc::ECONNRESET => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// The status for an error about a volume group (the envelope builds the
/// others with [`status_about`]).
pub(crate) fn to_group_status(subject: Option<&str>, err: &Error) -> Status {
    status_about("volume group", subject, err)
}

/// The status for an error about `subject` (a volume or group ID, or nothing
/// before one is known). The message reaches Kubernetes conditions verbatim:
/// it names the subject and never holds a secret (no error type here can
/// carry one).
pub(crate) fn status_about(kind: &str, subject: Option<&str>, err: &Error) -> Status {
    let message = match subject {
        Some(id) if !id.is_empty() => format!("{kind} {id}: {err}"),
        _ => err.to_string(),
    };
    Status::new(code_of(err), message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cephcsi::{CsiIdError, SecretsError};

    #[test]
    fn codes_the_controller_depends_on() {
        assert_eq!(code_of(&Error::ImageNotFound { image: "p/i".into() }), Code::NotFound);
        assert_eq!(code_of(&Error::NoInfoYet("x".into())), Code::NotFound);
        assert_eq!(code_of(&Error::WrongState("x".into())), Code::FailedPrecondition);
        assert_eq!(code_of(&Error::Exec(ExecError::Busy("v".into()))), Code::Aborted);
        let eagain = Error::Mgr {
            what: "w".into(),
            source: CephError::new("rados_mgr_command", libc::EAGAIN),
            status: String::new(),
        };
        assert_eq!(code_of(&eagain), Code::Unavailable);
    }

    #[test]
    fn request_problems_are_invalid_arguments() {
        assert_eq!(code_of(&Error::Resolve(CsiIdError::Empty.into())), Code::InvalidArgument);
        assert_eq!(code_of(&Error::Resolve(SecretsError::BadKey.into())), Code::InvalidArgument);
        let unknown = ConfigError::UnknownCluster { cluster_id: "c".into(), path: "p".into() };
        assert_eq!(code_of(&Error::Resolve(unknown.into())), Code::InvalidArgument);
    }

    #[test]
    fn refused_credentials_are_unauthenticated() {
        let e = |errno| cephcsi::Error::Connect {
            cluster_id: "c".into(),
            user: "u".into(),
            source: CephError::new("rados_connect", errno),
        };
        assert_eq!(code_of(&Error::Resolve(e(libc::EACCES))), Code::Unauthenticated);
        assert_eq!(code_of(&Error::Resolve(e(libc::ETIMEDOUT))), Code::Unavailable);
    }

    #[test]
    fn a_member_failure_keeps_the_members_code() {
        let e = Error::Member { volume_id: "v".into(), source: Box::new(Error::WrongState("x".into())) };
        assert_eq!(code_of(&e), Code::FailedPrecondition);
        assert_eq!(e.to_string(), "member v: x");
        assert_eq!(code_of(&Error::TooMany("x".into())), Code::ResourceExhausted);
    }

    #[test]
    fn message_names_the_volume() {
        let s = status_about("volume", Some("0001-xyz"), &Error::InProgress("busy".into()));
        assert_eq!(s.message(), "volume 0001-xyz: busy");
        assert_eq!(s.code(), Code::Aborted);
    }
}
