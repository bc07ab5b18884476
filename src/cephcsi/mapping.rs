//! ceph-csi's `cluster-mapping.json`: after a failover, the volume handle the
//! caller holds was minted on the other site, whose clusterID and pool IDs may
//! differ from ours. Each entry pairs clusterIDs and pool IDs of two sites:
//! `[{"clusterIDMapping": {"site-a": "site-b"}, "RBDPoolIDMapping": [{"2": "3"}]}]`.
//! A pair matches in either direction.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "clusterIDMapping", default)]
    cluster_ids: HashMap<String, String>,
    #[serde(rename = "RBDPoolIDMapping", default)]
    pool_ids: Vec<HashMap<String, String>>,
}

/// The (clusterID, pool ID) pairs the handle may mean on this site, besides its
/// own. A missing file means no mapping, as in ceph-csi.
pub(super) fn candidates(path: &Path, cluster_id: &str, pool_id: i64) -> Result<Vec<(String, i64)>, ConfigError> {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ConfigError::Unreadable { path: shown, reason: e.kind().to_string() }),
    };
    candidates_in(&text, &shown, cluster_id, pool_id)
}

fn candidates_in(text: &str, path: &str, cluster_id: &str, pool_id: i64) -> Result<Vec<(String, i64)>, ConfigError> {
    let entries: Vec<Entry> = serde_json::from_str(text)
        .map_err(|e| ConfigError::Malformed { path: path.to_owned(), reason: e.to_string() })?;
    let pool = pool_id.to_string();
    let mut out = Vec::new();
    for entry in &entries {
        for (a, b) in &entry.cluster_ids {
            let other = if a == cluster_id {
                b
            } else if b == cluster_id {
                a
            } else {
                continue;
            };
            let mut pools: Vec<i64> = entry
                .pool_ids
                .iter()
                .flat_map(|m| m.iter())
                .filter_map(|(x, y)| {
                    if *x == pool {
                        y.parse().ok()
                    } else if *y == pool {
                        x.parse().ok()
                    } else {
                        None
                    }
                })
                .collect();
            // Pool IDs may also be equal on both sites.
            pools.push(pool_id);
            for p in pools {
                let candidate = (other.clone(), p);
                if candidate != (cluster_id.to_owned(), pool_id) && !out.contains(&candidate) {
                    out.push(candidate);
                }
            }
        }
    }
    Ok(out)
}

/// The clusterIDs the mapping pairs with `cluster_id` (none without a file).
pub(super) fn peer_clusters(path: &Path, cluster_id: &str) -> Result<Vec<String>, ConfigError> {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ConfigError::Unreadable { path: shown, reason: e.kind().to_string() }),
    };
    let entries: Vec<Entry> =
        serde_json::from_str(&text).map_err(|e| ConfigError::Malformed { path: shown, reason: e.to_string() })?;
    let mut out = Vec::new();
    for (a, b) in entries.iter().flat_map(|e| &e.cluster_ids) {
        let other = if a == cluster_id {
            b
        } else if b == cluster_id {
            a
        } else {
            continue;
        };
        if !out.contains(other) {
            out.push(other.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"[
      {"clusterIDMapping": {"site-a": "site-b"}, "RBDPoolIDMapping": [{"2": "3"}, {"10": "11"}]},
      {"clusterIDMapping": {"rook-ceph": "rook-ceph"}, "RBDPoolIDMapping": [{"2": "3"}],
       "CephFSFscIDMapping": [{"1": "2"}]}
    ]"#;

    #[test]
    fn maps_cluster_and_pool_in_both_directions() {
        assert_eq!(
            candidates_in(SAMPLE, "p", "site-a", 2).unwrap(),
            [("site-b".to_owned(), 3), ("site-b".to_owned(), 2)]
        );
        assert_eq!(
            candidates_in(SAMPLE, "p", "site-b", 11).unwrap(),
            [("site-a".to_owned(), 10), ("site-a".to_owned(), 11)]
        );
    }

    #[test]
    fn same_cluster_id_on_both_sites_maps_only_the_pool() {
        assert_eq!(candidates_in(SAMPLE, "p", "rook-ceph", 2).unwrap(), [("rook-ceph".to_owned(), 3)]);
        assert!(candidates_in(SAMPLE, "p", "other", 2).unwrap().is_empty());
    }

    #[test]
    fn pairs_cluster_ids_both_ways() {
        let path = std::env::temp_dir().join(format!("rbd-addons-mapping-{}.json", std::process::id()));
        std::fs::write(&path, SAMPLE).unwrap();
        assert_eq!(peer_clusters(&path, "site-b").unwrap(), ["site-a"]);
        assert_eq!(peer_clusters(&path, "rook-ceph").unwrap(), ["rook-ceph"]);
        assert!(peer_clusters(&path, "other").unwrap().is_empty());
        std::fs::remove_file(&path).ok();
        assert!(peer_clusters(Path::new("/nonexistent/cluster-mapping.json"), "a").unwrap().is_empty());
    }

    #[test]
    fn missing_file_is_no_mapping_but_a_broken_one_is_an_error() {
        assert!(candidates(Path::new("/nonexistent/cluster-mapping.json"), "a", 1).unwrap().is_empty());
        assert!(matches!(candidates_in("{", "p", "a", 1), Err(ConfigError::Malformed { .. })));
    }
}
