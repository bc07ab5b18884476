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

pub(crate) use copy::SNAPSHOT_IMAGE_FEATURES;
pub(crate) use error::{AlreadyDone, CephError};
pub(crate) use ledger::{ClientLedger, single_addrs};
pub(crate) use library::Library;
pub(crate) use pool::ConnectionPool;
pub use quiesce::{QuiesceWatch, WriteGate};
pub use rados::{Cluster, ConnectOptions, IoCtx};
pub use rbd::Image;
pub(crate) use rbd::{GlobalStatus, MirrorImageMode, MirrorInfo, MirrorState, PoolMirrorMode, SiteState, SiteStatus};
pub use snap::SnapKind;
pub(crate) use snap::{Extent, SnapInfo};

use std::ffi::CString;

/// Converts a Rust string for a C call; an interior NUL can never be valid input.
fn c_string(op: &'static str, s: &str) -> Result<CString, CephError> {
    CString::new(s).map_err(|_| CephError::new(op, libc::EINVAL))
}
