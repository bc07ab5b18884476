use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{CephError, Cluster, ConnectOptions};

/// Identifies one cached connection. The key itself is never stored, only a
/// hash of it, so a dump of the cache cannot leak a secret; a changed key gives
/// a new connection instead of silently reusing one made with the old key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    mon_host: String,
    user: String,
    key_hash: u64,
}

impl ConnectionKey {
    pub fn new(mon_host: &str, user: &str, key: &str) -> Self {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        Self { mon_host: mon_host.to_owned(), user: user.to_owned(), key_hash: h.finish() }
    }
}

struct Entry {
    cluster: Arc<Cluster>,
    last_used: Instant,
}

/// Connections shared by all requests with the same monitors and credentials,
/// as ceph-csi pools them: a connect costs tens of milliseconds and a thread
/// pool inside librados, far more than the calls most RPCs make.
pub struct ConnectionPool {
    idle_expiry: Duration,
    op_timeout: Duration,
    entries: Mutex<HashMap<ConnectionKey, Entry>>,
}

impl ConnectionPool {
    pub fn new(idle_expiry: Duration, op_timeout: Duration) -> Self {
        Self { idle_expiry, op_timeout, entries: Mutex::new(HashMap::new()) }
    }

    /// A connected cluster for these credentials, from the cache or new.
    /// Blocking: a new connection waits for the monitors (bounded by op_timeout).
    pub fn get(&self, mon_host: &str, user: &str, key: &str) -> Result<Arc<Cluster>, CephError> {
        let id = ConnectionKey::new(mon_host, user, key);
        if let Some(cluster) = self.lookup(&id) {
            return Ok(cluster);
        }
        // Connect without holding the lock: a slow cluster must not stall
        // requests for other clusters. Two racing connects are harmless; the
        // second simply replaces the first in the cache.
        let started = Instant::now();
        let cluster = Cluster::connect(&ConnectOptions { mon_host, user, key, op_timeout: self.op_timeout })?;
        tracing::info!(mon_host, user, elapsed_ms = started.elapsed().as_millis() as u64, "connected to Ceph");
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(id, Entry { cluster: cluster.clone(), last_used: Instant::now() });
        Ok(cluster)
    }

    fn lookup(&self, id: &ConnectionKey) -> Option<Arc<Cluster>> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Expired entries are dropped here rather than by a timer task: the pool
        // is touched by every request, and an idle server holds nothing worth
        // freeing early. A cluster still used by a running request stays alive
        // through its Arc.
        entries.retain(|_, e| now.duration_since(e.last_used) < self.idle_expiry);
        let entry = entries.get_mut(id)?;
        entry.last_used = now;
        Some(entry.cluster.clone())
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_identity_depends_on_every_part() {
        let k = ConnectionKey::new("m", "u", "secret");
        assert_eq!(k, ConnectionKey::new("m", "u", "secret"));
        assert_ne!(k, ConnectionKey::new("m", "u", "other"));
        assert_ne!(k, ConnectionKey::new("m2", "u", "secret"));
        assert_ne!(k, ConnectionKey::new("m", "u2", "secret"));
        assert!(!format!("{k:?}").contains("secret"));
    }
}
