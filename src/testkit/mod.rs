//! What the integration tests and benchmarks share, kept in the crate so that
//! `tests/` and `examples/` reuse one copy: the librbd wrapper they write,
//! snapshot and read data with (as an application on the same cluster
//! would), the interleaved writer of the group-consistency proof, and the
//! lab's facts and Ceph's own view of it. Not an interface for anything else:
//! the server never calls it, and nothing here is in the binary.

pub mod interleave;
pub mod lab;

pub use crate::ceph::{Cluster, ConnectOptions, Image, IoCtx, QuiesceWatch, SnapKind, WriteGate};
