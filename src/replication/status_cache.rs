//! GetVolumeReplicationInfo at librbd's cost. The controller asks Info for
//! every volume every half scheduling interval; opening each image for it
//! costs ~10 ms, the status itself ~0.6 ms. So Info reads a pool-wide view
//! instead: one listing of every mirrored image's status and one of their
//! roles and modes, taken at most once a second per pool and shared by every
//! call; a view up to 5 s old answers while the next is taken in the
//! background. rbd-mirror itself refreshes what it reports only every ~30 s.
//!
//! Open image handles are NOT cached: measured on Pacific, a read-only
//! handle registers a watch (ceph-csi's DeleteVolume then sees the image as
//! in use) and kept answering "primary" after an `rbd mirror image demote`.
//!
//! A call of ours that changes a volume marks it, so Info asks the image
//! directly until a view taken after the change exists: Info right after
//! Promote or Demote never shows the old role. An image the view does not
//! show as an enabled primary also goes the direct way, for its exact error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::debug;

use super::volume::{ReplicationInfo, info, info_of};
use crate::Error;
use crate::ceph::{GlobalStatus, IoCtx, MirrorImageMode, MirrorState};
use crate::cephcsi::ResolvedVolume;

/// How old a view may be before the next Info takes a new one.
const FRESH: Duration = Duration::from_secs(1);
/// How old a view may be and still answer, while the next one is taken.
const STALE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    cluster_id: String,
    pool_id: i64,
    namespace: String,
}

impl PoolKey {
    fn of(vol: &ResolvedVolume) -> Self {
        Self { cluster_id: vol.cluster_id.clone(), pool_id: vol.io.pool_id(), namespace: vol.io.namespace().to_owned() }
    }
}

/// One pool's mirrored images when the view was begun.
struct PoolView {
    begun: Instant,
    images: HashMap<String, (GlobalStatus, MirrorImageMode)>,
}

#[derive(Default)]
struct Pool {
    view: Option<Arc<PoolView>>,
    /// Images changed by our calls, and when.
    changed: HashMap<String, Instant>,
}

#[derive(Default)]
pub(crate) struct StatusCache {
    pools: Mutex<HashMap<PoolKey, Pool>>,
    /// One view taker per pool at a time.
    takers: Mutex<HashMap<PoolKey, Arc<Mutex<()>>>>,
}

/// What `lookup` found for a volume.
enum Found {
    Listed(GlobalStatus, MirrorImageMode),
    /// Changed since the view began, absent from it, or no view: ask the image.
    Direct,
}

impl StatusCache {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Info for a volume: from the pool's view when it holds the volume as an
    /// enabled primary, else (and for every error) from the image itself.
    pub(crate) fn info(self: &Arc<Self>, vol: &ResolvedVolume) -> Result<ReplicationInfo, Error> {
        match self.lookup(vol) {
            Found::Listed(status, mode) => info_of(&vol.spec(), &status, mode),
            Found::Direct => info(vol),
        }
    }

    /// A call of ours changed (or may have changed) the volume.
    pub(crate) fn changed(&self, vol: &ResolvedVolume) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.entry(PoolKey::of(vol)).or_default().changed.insert(vol.image.clone(), Instant::now());
    }

    fn lookup(self: &Arc<Self>, vol: &ResolvedVolume) -> Found {
        let key = PoolKey::of(vol);
        let Some(view) = self.view(&key, &vol.io) else {
            return Found::Direct;
        };
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if pools.get(&key).and_then(|p| p.changed.get(&vol.image)).is_some_and(|at| *at >= view.begun) {
            return Found::Direct;
        }
        match view.images.get(&vol.image) {
            Some((status, mode)) if status.info.state == MirrorState::Enabled && status.info.primary => {
                Found::Listed(status.clone(), *mode)
            }
            _ => Found::Direct,
        }
    }

    /// A view of the pool for this call. One younger than `FRESH` is used
    /// as it is; one up to `STALE` old is used too, while a thread of its own
    /// takes the next (so no Info waits for a listing); older or none, this
    /// call takes one. None when the pool cannot be listed (the direct way
    /// then says why).
    fn view(self: &Arc<Self>, key: &PoolKey, io: &IoCtx) -> Option<Arc<PoolView>> {
        let current = self.current(key);
        match current {
            Some(v) if v.begun.elapsed() < FRESH => return Some(v),
            Some(v) if v.begun.elapsed() < STALE => {
                self.refresh_in_background(key, io);
                return Some(v);
            }
            _ => {}
        }
        let taker = self.taker(key);
        let _taking = taker.lock().unwrap_or_else(|p| p.into_inner());
        // Another call may have taken it while this one waited.
        if let Some(v) = self.current(key).filter(|v| v.begun.elapsed() < FRESH) {
            return Some(v);
        }
        self.take(key, io)
    }

    fn taker(&self, key: &PoolKey) -> Arc<Mutex<()>> {
        self.takers.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_default().clone()
    }

    /// Starts taking the next view unless one is being taken already. The
    /// thread's Ceph calls are bounded by the connection's op timeouts.
    fn refresh_in_background(self: &Arc<Self>, key: &PoolKey, io: &IoCtx) {
        let taker = self.taker(key);
        if taker.try_lock().is_err() {
            return;
        }
        let Ok(io) = IoCtx::open(io.cluster(), io.pool_id(), io.namespace()) else { return };
        let (cache, key) = (self.clone(), key.clone());
        std::thread::spawn(move || {
            let Ok(_taking) = taker.try_lock() else { return };
            cache.take(&key, &io);
        });
    }

    fn take(&self, key: &PoolKey, io: &IoCtx) -> Option<Arc<PoolView>> {
        let view = match take_view(io) {
            Ok(v) => Arc::new(v),
            Err(e) => {
                debug!(pool = key.pool_id, error = %e, "cannot list the pool's mirror statuses; asking images directly");
                return None;
            }
        };
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let pool = pools.entry(key.clone()).or_default();
        pool.changed.retain(|_, at| *at >= view.begun);
        pool.view = Some(view.clone());
        Some(view)
    }

    fn current(&self, key: &PoolKey) -> Option<Arc<PoolView>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).get(key).and_then(|p| p.view.clone())
    }
}

fn take_view(io: &IoCtx) -> Result<PoolView, crate::ceph::CephError> {
    let begun = Instant::now();
    let roles = io.mirror_roles()?;
    let statuses = io.mirror_statuses()?;
    let mut images = HashMap::with_capacity(statuses.len());
    for listed in statuses {
        // The status listing leaves `primary` unset: the roles listing has it.
        let Some((mode, info)) = roles.get(&listed.image_id) else { continue };
        let mut status = listed.status;
        status.info = info.clone();
        images.insert(listed.name, (status, *mode));
    }
    debug!(images = images.len(), elapsed_ms = begun.elapsed().as_millis() as u64, "pool mirror view taken");
    Ok(PoolView { begun, images })
}
