//! The crate's one error type. Every layer above `ceph` answers with it, and
//! `server::status` maps it to a gRPC code in one exhaustive table. Variants
//! are named by what went wrong, never by the code they map to.

use crate::ceph::CephError;
use crate::cephcsi;
use crate::exec::ExecError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The request itself is wrong: a bad ID, parameter, secret or argument.
    #[error("{0}")]
    Malformed(String),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Resolve(#[from] cephcsi::Error),
    /// Something this server does not do (and does not advertise).
    #[error("{0}")]
    NotSupported(String),
    /// A volume group (or other object) that does not exist.
    #[error("{0}")]
    Missing(String),
    /// The request name is already used for something else.
    #[error("{0}")]
    NameTaken(String),
    /// More of something than a call may carry (members of a group).
    #[error("{0}")]
    TooMany(String),
    /// One member of a group failed; the code is the member's.
    #[error("member {volume_id}: {source}")]
    Member { volume_id: String, source: Box<Error> },
    #[error("image {image} does not exist")]
    ImageNotFound { image: String },
    /// The object's state does not allow the call (not replicated, the peer
    /// is primary, the peer has no copy, ...); the message says which.
    #[error("{0}")]
    WrongState(String),
    /// The controller reads NOT_FOUND from GetVolumeReplicationInfo as "no info yet".
    #[error("{0}")]
    NoInfoYet(String),
    /// A transition librbd is still making; a retry will see it finished.
    #[error("{0}")]
    InProgress(String),
    /// Something this call depends on is down or not ready; retry later.
    #[error("{0}")]
    NotReady(String),
    #[error("{what}: {source}")]
    Ceph { what: String, source: CephError },
    #[error("{what}: {status} ({source})")]
    Mgr { what: String, source: CephError, status: String },
    /// A monitor command failed; `status` is the monitors' own text.
    #[error("{what}: {status} ({source})")]
    Mon { what: String, source: CephError, status: String },
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// A class parameter that is present but wrong; the message says what is
/// accepted. Here, not beside the parsers in `replication`, so that no arrow
/// runs from the crate's error up into a layer that uses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter {key} {problem}")]
pub(crate) struct ParamError {
    pub key: &'static str,
    pub problem: String,
}

impl Error {
    pub(crate) fn ceph(what: impl Into<String>) -> impl FnOnce(CephError) -> Self {
        let what = what.into();
        move |source| Self::Ceph { what, source }
    }

    /// Whether Ceph refused this server's own client as blocklisted
    /// (EBLOCKLISTED, which librados spells ESHUTDOWN): another client broke
    /// a lock it held, e.g. after the site was frozen. Every later operation
    /// on that connection fails the same way; only a new one works.
    pub(crate) fn client_blocklisted(&self) -> bool {
        let ceph = |e: &CephError| e.is(libc::ESHUTDOWN);
        match self {
            Error::Ceph { source, .. } | Error::Mgr { source, .. } | Error::Mon { source, .. } => ceph(source),
            Error::Member { source, .. } => source.client_blocklisted(),
            Error::Resolve(
                cephcsi::Error::OpenPool { source, .. }
                | cephcsi::Error::Journal { source, .. }
                | cephcsi::Error::Connect { source, .. },
            ) => ceph(source),
            _ => false,
        }
    }

    /// After this server's own client was blocklisted, every call on its
    /// cached connection would fail the same way: drop it, so that the retry
    /// (which the answer, UNAVAILABLE, invites) connects anew.
    pub(crate) fn forget_blocklisted_client(&self, resolver: &cephcsi::Resolver) {
        if self.client_blocklisted() {
            tracing::warn!(error = %self, "this server's Ceph client was blocklisted (a lock it held was broken): reconnecting");
            resolver.forget_connections();
        }
    }
}
