pub mod ceph;
pub mod cephcsi;
pub mod client;
pub mod exec;
pub mod groups;
pub mod proto;
pub mod replication;
pub mod server;
