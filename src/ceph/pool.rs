use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ledger::{ClientLedger, LedgerEntry, single_addrs};
use super::monaddr;

/// How long reading a monitor's banner may take; a monitor that does not
/// greet within it is left for librados to reach (or time out on).
const MON_BANNER_TIMEOUT: Duration = Duration::from_secs(2);
use super::{CephError, Cluster, ConnectOptions};

/// Identifies one cached connection. The key itself is never stored, only a
/// hash of it, so a dump of the cache cannot leak a secret; a changed key gives
/// a new connection instead of silently reusing one made with the old key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ConnectionKey {
    mon_host: String,
    user: String,
    key_hash: u64,
}

impl ConnectionKey {
    pub(crate) fn new(mon_host: &str, user: &str, key: &str) -> Self {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        Self { mon_host: mon_host.to_owned(), user: user.to_owned(), key_hash: h.finish() }
    }
}

/// One (monitors, user, key)'s connection. Its mutex is held while
/// connecting, so racing first calls wait for one connect instead of each
/// opening their own (a connection is a thread pool inside librados).
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    cluster: Option<Arc<Cluster>>,
    /// The last connect's failure and when it ended: callers that were already
    /// waiting for that attempt share its answer instead of repeating it.
    failed: Option<(Instant, CephError)>,
}

struct Entry {
    slot: Arc<Slot>,
    last_used: Instant,
}

/// Connections shared by all requests with the same monitors and credentials,
/// as ceph-csi pools them: a connect costs tens of milliseconds and a thread
/// pool inside librados, far more than the calls most RPCs make.
pub(crate) struct ConnectionPool {
    idle_expiry: Duration,
    op_timeout: Duration,
    entries: Mutex<HashMap<ConnectionKey, Entry>>,
    attempts: AtomicUsize,
    ledger: Option<Arc<ClientLedger>>,
}

impl ConnectionPool {
    pub(crate) fn new(idle_expiry: Duration, op_timeout: Duration) -> Self {
        Self {
            idle_expiry,
            op_timeout,
            entries: Mutex::new(HashMap::new()),
            attempts: AtomicUsize::new(0),
            ledger: None,
        }
    }

    /// Records every new connection's address in `ledger`, and fences the
    /// dead predecessor's clients of a cluster when it is first connected to.
    pub(crate) fn with_ledger(mut self, ledger: Arc<ClientLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// A connected cluster for these credentials, from the cache or new.
    /// Blocking: a new connection waits for the monitors (bounded by op_timeout).
    pub(crate) fn get(&self, mon_host: &str, user: &str, key: &str) -> Result<Arc<Cluster>, CephError> {
        let arrived = Instant::now();
        let slot = self.slot(ConnectionKey::new(mon_host, user, key));
        // Only this key's callers wait here: the map lock is already released,
        // so a slow cluster does not stall requests for other clusters.
        let mut state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cluster) = &state.cluster {
            return Ok(cluster.clone());
        }
        if let Some((ended, err)) = state.failed
            && ended >= arrived
        {
            return Err(err);
        }
        let started = Instant::now();
        self.attempts.fetch_add(1, Ordering::Relaxed);
        // Bare monitor addresses make librados hide a refusal of the
        // credentials behind its whole mount timeout (see monaddr).
        let typed = monaddr::typed(mon_host, self.op_timeout.min(MON_BANNER_TIMEOUT));
        match Cluster::connect(&ConnectOptions { mon_host: &typed, user, key, op_timeout: self.op_timeout }) {
            Ok(cluster) => {
                tracing::info!(mon_host, user, elapsed_ms = started.elapsed().as_millis() as u64, "connected to Ceph");
                if let Some(ledger) = &self.ledger {
                    adopt(ledger, mon_host, &cluster);
                }
                state.cluster = Some(cluster.clone());
                state.failed = None;
                Ok(cluster)
            }
            Err(err) => {
                state.failed = Some((Instant::now(), err));
                Err(err)
            }
        }
    }

    /// Drops every cached connection: the next call of each key connects
    /// anew (a new client instance, which a blocklist of the old one does not
    /// cover). Calls still running keep theirs until they end.
    pub(crate) fn forget_all(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The slot for a key, created empty when missing.
    fn slot(&self, id: ConnectionKey) -> Arc<Slot> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Expired entries are dropped here rather than by a timer task: the pool
        // is touched by every request, and an idle server holds nothing worth
        // freeing early. A cluster still used by a running request stays alive
        // through its Arc.
        entries.retain(|_, e| now.duration_since(e.last_used) < self.idle_expiry);
        let entry = entries.entry(id).or_insert_with(|| Entry { slot: Arc::default(), last_used: now });
        entry.last_used = now;
        entry.slot.clone()
    }

    /// Connections held open now.
    pub(crate) fn open_connections(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// How many connects were attempted, successful or not.
    #[cfg(test)]
    fn connect_attempts(&self) -> usize {
        self.attempts.load(Ordering::Relaxed)
    }
}

/// How long a dead predecessor's client stays fenced: it never comes back (a
/// new process gets a new address), so this only bounds the entry's life.
const PREDECESSOR_FENCE: Duration = Duration::from_secs(3600);

/// Before a new connection does any work: record its address, then fence what
/// a dead predecessor left connected to the same cluster.
fn adopt(ledger: &ClientLedger, mon_host: &str, cluster: &Cluster) {
    match cluster.client_addrs() {
        Ok(addrs) => ledger.record(LedgerEntry { mon_host: mon_host.to_owned(), addrs }),
        Err(e) => tracing::warn!(mon_host, error = %e, "cannot read this client's address for the client ledger"),
    }
    for entry in ledger.pending_for(mon_host) {
        let fenced = single_addrs(&entry.addrs).iter().try_for_each(|a| cluster.blocklist_add(a, PREDECESSOR_FENCE));
        match fenced {
            Ok(()) => {
                tracing::info!(mon_host, client = %entry.addrs,
                    "fenced the previous server's Ceph client: the image locks it held are broken at once");
                ledger.fenced(&entry);
            }
            Err(e) => tracing::warn!(mon_host, client = %entry.addrs, error = %e,
                "cannot fence the previous server's Ceph client (the user needs the mon cap for `osd blocklist`, \
                 which `profile rbd` gives); calls on images it had locked wait until its watch times out (30 s)"),
        }
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

    #[test]
    fn racing_first_calls_share_one_connect_and_its_failure() {
        // Nothing listens on port 9: every connect fails after its timeout.
        let pool = Arc::new(ConnectionPool::new(Duration::from_secs(60), Duration::from_secs(1)));
        let racers: Vec<_> = (0..6)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || pool.get("127.0.0.1:9", "csi", "key").map(drop))
            })
            .collect();
        for racer in racers {
            assert!(racer.join().unwrap().is_err());
        }
        assert_eq!(pool.connect_attempts(), 1, "racing callers each connected");
        // A later call is not answered from the old failure: it tries again.
        assert!(pool.get("127.0.0.1:9", "csi", "key").is_err());
        assert_eq!(pool.connect_attempts(), 2);
    }
}
