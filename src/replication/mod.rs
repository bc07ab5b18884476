//! What each replication RPC means for one volume, on top of librbd. Works on
//! typed values; gRPC types and codes stay in `server`.

mod failover;
mod hold;
mod params;
mod status;
mod status_cache;
mod volume;

pub use failover::{
    CREATION_TIME_KEY, PEER_REPORT_WAIT, demote, demote_image, promote, promote_image, require_peer_copy, resync,
};
pub use hold::{MIRROR_RELEASE_GRACE, hold_all};
pub use params::{DisableParams, EnableParams, FlattenMode, Schedule};
pub use params::{MIRRORING_MODE, SCHEDULING_INTERVAL};
pub use status::{Health, ReplayDescription, health};
pub use status_cache::StatusCache;
pub use volume::{ReplicationInfo, disable, enable, info, require_destination, role};
