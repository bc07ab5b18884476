//! rbd-addons: a CSI-Addons server for Ceph RBD.
//!
//! The crate serves the binary (`server`, `client`), the tests and the
//! benchmarks (`proto`, `testkit`); everything else is its own business, so
//! rustc tells when something in it is no longer used.

#![warn(unreachable_pub)]

mod ceph;
mod cephcsi;
pub mod client;
mod error;
mod exec;
mod fence;
mod groups;
mod metrics;
pub mod proto;
mod reclaim;
mod replication;
pub mod server;
pub mod testkit;

use error::Error;

/// A request's parameters (or secrets) from pairs, for unit tests.
#[cfg(test)]
pub(crate) fn params(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Now, in Unix seconds (as Ceph's snapshot and status times are); 0 for a
/// clock before 1970.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
