//! What each replication RPC means for one volume, on top of librbd. Works on
//! typed values; gRPC types and codes stay in `server`.

mod failover;
mod params;
mod status;
mod volume;

pub use failover::{CREATION_TIME_KEY, PEER_REPORT_WAIT, demote, promote, require_peer_copy, resync};
pub use params::{DisableParams, EnableParams, FlattenMode, ParamError, Schedule};
pub use params::{MIRRORING_MODE, SCHEDULING_INTERVAL};
pub use status::{Health, ReplayDescription, health};
pub use volume::{ReplicationInfo, disable, enable, info, require_destination};

use crate::ceph::CephError;
use crate::cephcsi;
use crate::exec::ExecError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Resolve(#[from] cephcsi::Error),
    #[error("{0}")]
    Unimplemented(String),
    /// A volume group (or other object) that does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// One member of a group failed; the code is the member's.
    #[error("member {volume_id}: {source}")]
    Member { volume_id: String, source: Box<Error> },
    #[error("image {image} does not exist")]
    ImageNotFound { image: String },
    #[error("{0}")]
    FailedPrecondition(String),
    /// The controller reads NOT_FOUND from GetVolumeReplicationInfo as "no info yet".
    #[error("{0}")]
    NoInfoYet(String),
    /// A transition librbd is still making; a retry will see it finished.
    #[error("{0}")]
    InProgress(String),
    /// Something this call depends on is down or not ready; retry later.
    #[error("{0}")]
    Unavailable(String),
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

impl Error {
    pub(crate) fn ceph(what: impl Into<String>) -> impl FnOnce(CephError) -> Self {
        let what = what.into();
        move |source| Self::Ceph { what, source }
    }
}
