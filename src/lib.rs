pub mod ceph;
pub mod cephcsi;
pub mod client;
mod error;
pub mod exec;
pub mod fence;
pub mod groups;
pub mod metrics;
pub mod proto;
pub mod reclaim;
pub mod replication;
pub mod server;

pub use error::{Error, ParamError};

/// Now, in Unix seconds (as Ceph's snapshot and status times are); 0 for a
/// clock before 1970.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
