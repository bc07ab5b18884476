//! What each replication RPC means for one volume, on top of librbd. Works on
//! typed values; gRPC types and codes stay in `server`.

mod failover;
mod hold;
mod params;
mod status;
mod status_cache;
mod volume;

pub(crate) use failover::{PEER_REPORT_WAIT, demote, demote_image, promote, promote_image, require_peer_copy, resync};
pub(crate) use hold::hold_all;
pub(crate) use params::MIRRORING_MODE;
pub(crate) use params::{DisableParams, EnableParams, FlattenMode, Schedule};
pub(crate) use status::Health;
pub(crate) use status_cache::StatusCache;
pub(crate) use volume::{ReplicationInfo, disable, enable, require_destination, role};
