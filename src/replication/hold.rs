//! Taking a just-promoted image from this site's rbd-mirror. After a promote
//! the replayer stops, flushes what it was applying and lets go of the
//! image's exclusive lock when asked, usually within 0.1 s. After a site
//! loss it may never: its replayer waits on the lost site, and rbd-mirror
//! runs with no op timeout by default. A forced promote then breaks the
//! replayer's lock (librbd blocklists that rbd-mirror client on this site
//! only; rbd-mirror restarts its replayers on a new client by itself).
//!
//! Once held here, the lock is refused to everyone else: nothing, the
//! replayer included, can write to the image until the handle is dropped.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::volume::open;
use crate::Error;
use crate::ceph::{CephError, Image, IoCtx};
use crate::cephcsi::ResolvedVolume;

/// How long a forced promote lets this site's rbd-mirror give an image up
/// before it breaks the replayer's lock. A healthy replayer lets go within
/// 2 s even on a loaded machine (measured 0.05–1.75 s).
pub(crate) const MIRROR_RELEASE_GRACE: Duration = Duration::from_secs(8);
/// How long a promote without force waits for the replayer: without force
/// nothing is broken, and after this the caller is asked to retry.
const RELEASE_WAIT: Duration = Duration::from_secs(45);

/// Holds the exclusive lock of every image (promoted from `since` on, in
/// order), waiting for this site's rbd-mirror to let go of each; with
/// `force`, taking it from rbd-mirror once `MIRROR_RELEASE_GRACE` has passed
/// since the promotes began. The handles returned hold the locks until they
/// are dropped.
pub(crate) fn hold_all<'v>(vols: &[&'v ResolvedVolume], force: bool, since: Instant) -> Result<Vec<Image<'v>>, Error> {
    let started = since;
    let mut held: Vec<Option<Image<'v>>> = vols.iter().map(|_| None).collect();
    let mut pause = Duration::from_millis(50);
    loop {
        for (vol, slot) in vols.iter().zip(held.iter_mut()).filter(|(_, s)| s.is_none()) {
            let image = open(&vol.io, vol)?;
            // Past the grace, take it first: asking a replayer that is stuck
            // (or a daemon that is frozen) costs a notify timeout per try.
            if force && started.elapsed() >= MIRROR_RELEASE_GRACE {
                take_from_mirror(&image, vol, started.elapsed())?;
            }
            match image.lock_hold() {
                Ok(()) => *slot = Some(image),
                // No exclusive-lock feature (snapshot mirroring allows that):
                // nothing, rbd-mirror included, holds such an image.
                Err(e) if e.is(libc::EINVAL) => *slot = Some(image),
                Err(e) if held_elsewhere(&e) => {}
                Err(e) => return Err(Error::Ceph { what: format!("cannot lock {}", vol.spec()), source: e }),
            }
        }
        if held.iter().all(Option::is_some) {
            return Ok(held.into_iter().flatten().collect());
        }
        if !force && started.elapsed() >= RELEASE_WAIT {
            let vol = vols.iter().zip(&held).find(|(_, h)| h.is_none()).map(|(v, _)| v.spec()).unwrap_or_default();
            return Err(Error::NotReady(format!(
                "{vol} is still held by this site's rbd-mirror {}s after its promote (a replayer that is still \
                 stopping); retry, or promote with force to take it from rbd-mirror",
                RELEASE_WAIT.as_secs()
            )));
        }
        crate::exec::idle(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// The rbd-mirror daemons of a pool register their instance (the global ID
/// of their client) as omap keys of this object, in the pool's default
/// namespace, while they run.
const MIRROR_LEADER_OBJECT: &str = "rbd_mirror_leader";
const MIRROR_INSTANCE_PREFIX: &str = "instance_";

fn is_mirror_instance(vol: &ResolvedVolume, entity: &str) -> Result<bool, Error> {
    let Some(id) = entity.strip_prefix("client.") else { return Ok(false) };
    let io = IoCtx::open(vol.io.cluster(), vol.io.pool_id(), "").map_err(Error::ceph("cannot open the pool"))?;
    let key = format!("{MIRROR_INSTANCE_PREFIX}{id}");
    match io.omap_get(MIRROR_LEADER_OBJECT, &[&key]) {
        Ok(found) => Ok(found.contains_key(&key)),
        Err(e) if e.is(libc::ENOENT) => Ok(false),
        Err(e) => Err(Error::ceph("cannot read the pool's rbd-mirror instances")(e)),
    }
}

fn held_elsewhere(e: &CephError) -> bool {
    matches!(e.errno, libc::EROFS | libc::EBUSY | libc::EAGAIN)
}

/// Breaks the lock of this site's rbd-mirror on a promoted image. Only
/// rbd-mirror's: the holder must be an rbd-mirror instance registered with
/// this site's pool (`instance_<global ID>` on its leader object); any other
/// holder is an application, and its lock is never broken.
fn take_from_mirror(image: &Image<'_>, vol: &ResolvedVolume, waited: Duration) -> Result<(), Error> {
    let Some(owner) = image.lock_owner().map_err(Error::ceph(format!("cannot read the lock of {}", vol.spec())))?
    else {
        return Ok(()); // let go meanwhile: the next attempt takes it
    };
    if !is_mirror_instance(vol, &owner.entity)? {
        return Err(Error::NotReady(format!(
            "{} is promoted but its lock is held by {}, which is not one of this site's rbd-mirror daemons; \
             nothing was broken: stop that client, then retry",
            vol.spec(),
            owner.entity,
        )));
    }
    warn!(image = %vol.spec(), owner = %owner.entity, waited_ms = waited.as_millis() as u64,
        "this site's rbd-mirror did not let go of the promoted image (its replayer waits on the lost peer): \
         breaking its lock; that rbd-mirror client is blocklisted on this site and rbd-mirror restarts its replayers");
    match image.lock_break(&owner.address) {
        Ok(()) => {
            info!(image = %vol.spec(), owner = %owner.entity, "took the image from rbd-mirror");
            Ok(())
        }
        // Released or broken meanwhile.
        Err(e) if e.is(libc::ENOENT) || e.is(libc::EBUSY) => Ok(()),
        Err(e) => Err(Error::Ceph { what: format!("cannot break rbd-mirror's lock on {}", vol.spec()), source: e }),
    }
}
