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

pub use error::Error;
