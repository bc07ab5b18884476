//! Safe, blocking wrappers over librados and librbd. Nothing here knows about
//! gRPC or ceph-csi; every call blocks and must run off the async runtime.

mod error;
mod ledger;
mod monaddr;
mod pool;
mod rados;
mod rbd;
mod snap;
mod space;

pub use error::CephError;
pub use ledger::{ClientLedger, single_addrs};
pub use pool::{ConnectionKey, ConnectionPool};
pub use rados::{Cluster, ConnectOptions, IoCtx};
pub use rbd::{
    GlobalStatus, GroupMember, Image, MirrorImageMode, MirrorInfo, MirrorState, ParentSpec, PoolMirrorMode, SiteState,
    SiteStatus,
};
pub use snap::{Extent, SnapInfo, SnapKind};

use std::ffi::CString;

/// Converts a Rust string for a C call; an interior NUL can never be valid input.
fn c_string(op: &'static str, s: &str) -> Result<CString, CephError> {
    CString::new(s).map_err(|_| CephError::new(op, libc::EINVAL))
}

/// Whether the loaded librbd exports native group mirroring
/// (`rbd_mirror_group_enable`, in no upstream release up to Tentacle). Looked
/// up at run time: linking against it would fail on every release we run on.
pub fn native_group_mirroring() -> bool {
    let name = c"rbd_mirror_group_enable";
    // SAFETY: dlsym with RTLD_DEFAULT searches the already loaded objects; the
    // name is a valid C string and the result is only compared with null.
    !unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }.is_null()
}
