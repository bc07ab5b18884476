//! Safe, blocking wrappers over librados and librbd. Nothing here knows about
//! gRPC or ceph-csi; every call blocks and must run off the async runtime.

mod copy;
mod error;
mod ledger;
mod library;
mod lock;
mod monaddr;
mod pool;
mod quiesce;
mod rados;
mod rbd;
mod snap;
mod space;

pub use copy::SNAPSHOT_IMAGE_FEATURES;
pub use error::{AlreadyDone, CephError};
pub use ledger::{ClientLedger, single_addrs};
pub use library::Library;
pub use lock::LockOwner;
pub use pool::{ConnectionKey, ConnectionPool};
pub use quiesce::{GatePass, QuiesceWatch, WriteGate};
pub use rados::{Cluster, ConnectOptions, IoCtx};
pub use rbd::{
    GlobalStatus, GroupMember, Image, ListedStatus, MirrorImageMode, MirrorInfo, MirrorState, ParentSpec,
    PoolMirrorMode, SiteState, SiteStatus,
};
pub use snap::{Extent, SnapInfo, SnapKind};

use std::ffi::CString;

/// Converts a Rust string for a C call; an interior NUL can never be valid input.
fn c_string(op: &'static str, s: &str) -> Result<CString, CephError> {
    CString::new(s).map_err(|_| CephError::new(op, libc::EINVAL))
}
