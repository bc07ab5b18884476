//! ceph-csi's `config.json`: which monitors (and RADOS namespace) a clusterID
//! means, and, where the entry has ceph-csi's `replicationDestination`, how
//! the peer site names what this cluster holds (its clusterID, and pool IDs
//! by pool name).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
struct Entry {
    #[serde(rename = "clusterID")]
    cluster_id: String,
    #[serde(default)]
    monitors: Vec<String>,
    #[serde(default)]
    rbd: RbdSection,
    #[serde(rename = "replicationDestination")]
    destination: Option<DestinationEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RbdSection {
    #[serde(rename = "radosNamespace", default)]
    rados_namespace: String,
}

#[derive(Debug, Clone, Deserialize)]
struct DestinationEntry {
    #[serde(rename = "remoteClusterID", default)]
    remote_cluster_id: String,
    #[serde(default)]
    rbd: Option<RemoteRbd>,
}

#[derive(Debug, Clone, Deserialize)]
struct RemoteRbd {
    #[serde(rename = "remotePoolMapping", default)]
    pools: HashMap<String, RemotePool>,
}

#[derive(Debug, Clone, Deserialize)]
struct RemotePool {
    #[serde(rename = "poolID", default)]
    pool_id: String,
}

/// What a clusterID resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterInfo {
    /// Monitors joined as librados' `mon_host` expects them.
    pub mon_host: String,
    pub rados_namespace: String,
    pub destination: Option<Destination>,
}

/// ceph-csi's `replicationDestination` of a clusterID: the peer's clusterID,
/// and the peer's pool ID of each local pool by name (a pool not named keeps
/// its ID, as in ceph-csi).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Destination {
    pub cluster_id: String,
    pub pool_ids: HashMap<String, i64>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read ceph-csi config {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("ceph-csi config {path} is not a valid config.json: {reason}")]
    Malformed { path: String, reason: String },
    #[error("clusterID {cluster_id:?} is not in ceph-csi config {path}")]
    UnknownCluster { cluster_id: String, path: String },
    #[error("clusterID {cluster_id:?} has no monitors in ceph-csi config {path}")]
    NoMonitors { cluster_id: String, path: String },
}

/// Looks a clusterID up in the config file. The file is read on every call: it
/// is a mounted ConfigMap that Kubernetes updates in place, and it is tiny.
pub(super) fn lookup(path: &Path, cluster_id: &str) -> Result<ClusterInfo, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Unreadable { path: shown.clone(), reason: e.kind().to_string() })?;
    lookup_in(&text, &shown, cluster_id)
}

/// Every clusterID in the config file, in file order.
pub(super) fn cluster_ids(path: &Path) -> Result<Vec<String>, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Unreadable { path: shown.clone(), reason: e.kind().to_string() })?;
    let entries: Vec<Entry> =
        serde_json::from_str(&text).map_err(|e| ConfigError::Malformed { path: shown, reason: e.to_string() })?;
    Ok(entries.into_iter().map(|e| e.cluster_id).collect())
}

fn lookup_in(text: &str, path: &str, cluster_id: &str) -> Result<ClusterInfo, ConfigError> {
    let entries: Vec<Entry> = serde_json::from_str(text)
        .map_err(|e| ConfigError::Malformed { path: path.to_owned(), reason: e.to_string() })?;
    let entry = entries
        .into_iter()
        .find(|e| e.cluster_id == cluster_id)
        .ok_or_else(|| ConfigError::UnknownCluster { cluster_id: cluster_id.to_owned(), path: path.to_owned() })?;
    let monitors: Vec<&str> = entry.monitors.iter().map(|m| m.trim()).filter(|m| !m.is_empty()).collect();
    if monitors.is_empty() {
        return Err(ConfigError::NoMonitors { cluster_id: cluster_id.to_owned(), path: path.to_owned() });
    }
    let destination = entry.destination.map(|d| destination_of(&d, cluster_id, path)).transpose()?;
    Ok(ClusterInfo { mon_host: monitors.join(","), rados_namespace: entry.rbd.rados_namespace, destination })
}

fn destination_of(d: &DestinationEntry, cluster_id: &str, path: &str) -> Result<Destination, ConfigError> {
    let malformed = |reason: String| ConfigError::Malformed { path: path.to_owned(), reason };
    if d.remote_cluster_id.trim().is_empty() {
        return Err(malformed(format!("clusterID {cluster_id:?}: replicationDestination has no remoteClusterID")));
    }
    let mut pool_ids = HashMap::new();
    for (pool, remote) in d.rbd.iter().flat_map(|r| &r.pools) {
        let id = remote.pool_id.trim().parse::<i64>().ok().filter(|id| *id >= 0).ok_or_else(|| {
            malformed(format!(
                "clusterID {cluster_id:?}: replicationDestination.rbd.remotePoolMapping[{pool:?}].poolID {:?} is \
                 not a pool ID (a decimal number)",
                remote.pool_id
            ))
        })?;
        pool_ids.insert(pool.clone(), id);
    }
    Ok(Destination { cluster_id: d.remote_cluster_id.trim().to_owned(), pool_ids })
}

/// Every clusterID with a `replicationDestination`, and its destination.
pub(super) fn destinations(path: &Path) -> Result<Vec<(String, Destination)>, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Unreadable { path: shown.clone(), reason: e.kind().to_string() })?;
    let entries: Vec<Entry> = serde_json::from_str(&text)
        .map_err(|e| ConfigError::Malformed { path: shown.clone(), reason: e.to_string() })?;
    let mut out = Vec::new();
    for e in &entries {
        if let Some(d) = &e.destination {
            out.push((e.cluster_id.clone(), destination_of(d, &e.cluster_id, &shown)?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"[
      {"clusterID": "rook-ceph", "monitors": ["10.0.0.1:6789", "10.0.0.2:6789"],
       "cephFS": {"subvolumeGroup": "x"}, "readAffinity": {"enabled": false}},
      {"clusterID": "tenant", "monitors": ["[v2:127.0.0.1:3300,v1:127.0.0.1:6789]"],
       "rbd": {"radosNamespace": "ns1", "mirrorDaemonCount": 1}},
      {"clusterID": "empty", "monitors": []}
    ]"#;

    #[test]
    fn finds_monitors_and_namespace() {
        let a = lookup_in(SAMPLE, "c", "rook-ceph").unwrap();
        assert_eq!(a.mon_host, "10.0.0.1:6789,10.0.0.2:6789");
        assert_eq!(a.rados_namespace, "");
        let b = lookup_in(SAMPLE, "c", "tenant").unwrap();
        assert_eq!(b.rados_namespace, "ns1");
    }

    #[test]
    fn reads_the_replication_destination_as_ceph_csi_writes_it() {
        let text = r#"[{"clusterID": "primary", "monitors": ["10.0.0.1:6789"],
          "replicationDestination": {"remoteClusterID": "secondary",
            "rbd": {"remotePoolMapping": {"rbd": {"poolID": "5"}, "replicapool": {"poolID": "6"}}}}},
          {"clusterID": "plain", "monitors": ["10.0.0.2:6789"]},
          {"clusterID": "ids-alike", "monitors": ["10.0.0.3:6789"],
           "replicationDestination": {"remoteClusterID": "other"}}]"#;
        let d = lookup_in(text, "c", "primary").unwrap().destination.unwrap();
        assert_eq!(d.cluster_id, "secondary");
        assert_eq!(d.pool_ids, HashMap::from([("rbd".to_owned(), 5), ("replicapool".to_owned(), 6)]));
        assert_eq!(lookup_in(text, "c", "plain").unwrap().destination, None);
        let alike = lookup_in(text, "c", "ids-alike").unwrap().destination.unwrap();
        assert!(alike.pool_ids.is_empty(), "no mapping: every pool keeps its ID");
    }

    #[test]
    fn refuses_a_destination_it_cannot_use() {
        let no_cluster =
            r#"[{"clusterID": "p", "monitors": ["m"], "replicationDestination": {"remoteClusterID": " "}}]"#;
        let err = lookup_in(no_cluster, "c", "p").unwrap_err().to_string();
        assert!(err.contains("no remoteClusterID"), "{err}");
        let bad_pool = r#"[{"clusterID": "p", "monitors": ["m"], "replicationDestination":
          {"remoteClusterID": "s", "rbd": {"remotePoolMapping": {"rbd": {"poolID": "five"}}}}}]"#;
        let err = lookup_in(bad_pool, "c", "p").unwrap_err().to_string();
        assert!(err.contains("\"five\" is not a pool ID"), "{err}");
    }

    #[test]
    fn reports_unknown_and_broken_entries() {
        assert!(matches!(lookup_in(SAMPLE, "c", "nope"), Err(ConfigError::UnknownCluster { .. })));
        assert!(matches!(lookup_in(SAMPLE, "c", "empty"), Err(ConfigError::NoMonitors { .. })));
        assert!(matches!(lookup_in("{", "c", "x"), Err(ConfigError::Malformed { .. })));
    }
}
