//! ceph-csi's `config.json`: which monitors (and RADOS namespace) a clusterID means.

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
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RbdSection {
    #[serde(rename = "radosNamespace", default)]
    rados_namespace: String,
}

/// What a clusterID resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// Monitors joined as librados' `mon_host` expects them.
    pub mon_host: String,
    pub rados_namespace: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
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
pub fn lookup(path: &Path, cluster_id: &str) -> Result<ClusterInfo, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Unreadable { path: shown.clone(), reason: e.kind().to_string() })?;
    lookup_in(&text, &shown, cluster_id)
}

/// Every clusterID in the config file, in file order.
pub fn cluster_ids(path: &Path) -> Result<Vec<String>, ConfigError> {
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
    Ok(ClusterInfo { mon_host: monitors.join(","), rados_namespace: entry.rbd.rados_namespace })
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
    fn reports_unknown_and_broken_entries() {
        assert!(matches!(lookup_in(SAMPLE, "c", "nope"), Err(ConfigError::UnknownCluster { .. })));
        assert!(matches!(lookup_in(SAMPLE, "c", "empty"), Err(ConfigError::NoMonitors { .. })));
        assert!(matches!(lookup_in("{", "c", "x"), Err(ConfigError::Malformed { .. })));
    }
}
