//! What the integration tests and benchmarks reach below the server: the
//! librbd wrapper they write, snapshot and read data with, as an application
//! on the same cluster would. Not an interface for anything else.

pub use crate::ceph::{Cluster, ConnectOptions, Image, IoCtx, QuiesceWatch, SnapKind, WriteGate};
