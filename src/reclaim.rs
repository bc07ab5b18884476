//! ControllerReclaimSpace: give an image's zeroed objects back to the cluster
//! (rbd_sparsify), as ceph-csi's controller does, with its safety rules:
//! never on a mirrored secondary (its data is the primary's, replayed), and
//! not while a client has the image open (sparsifying under I/O got krbd
//! clients blocklisted, ocs-operator#3792). An image is in use when it has a
//! watcher that is not the peer's rbd-mirror. A skipped image is answered with
//! its usage unchanged, and the log says why. Blocking; runs off the runtime.

use tracing::info;

use crate::Error;
use crate::ceph::{Image, MirrorImageMode, MirrorState};
use crate::cephcsi::ResolvedVolume;

/// What one call did: allocated bytes (as `rbd du` counts them) before and
/// after, and why nothing was done, if so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reclaimed {
    pub pre_usage: u64,
    pub post_usage: u64,
    pub skipped: Option<String>,
}

fn open_error(vol: &ResolvedVolume) -> impl FnOnce(crate::ceph::CephError) -> Error + '_ {
    move |e| {
        if e.is(libc::ENOENT) {
            Error::ImageNotFound { image: vol.spec() }
        } else {
            Error::Ceph { what: format!("cannot open image {}", vol.spec()), source: e }
        }
    }
}

pub(crate) fn reclaim(vol: &ResolvedVolume) -> Result<Reclaimed, Error> {
    // Read-only: looking does not add a watcher of our own.
    let image = Image::open_read_only(&vol.io, &vol.image).map_err(open_error(vol))?;
    let usage = |image: &Image<'_>| image.allocated_bytes().map_err(Error::ceph("cannot measure the image's usage"));
    let pre_usage = usage(&image)?;
    let skip = |why: String| {
        info!(image = %vol.spec(), reason = %why, "space reclaim skipped");
        Ok(Reclaimed { pre_usage, post_usage: pre_usage, skipped: Some(why) })
    };
    let mirror = image.mirror_info().map_err(Error::ceph("cannot read the image's mirroring state"))?;
    let mirrored = mirror.state == MirrorState::Enabled;
    if mirrored && !mirror.primary {
        return skip("it is a mirrored secondary copy; reclaim space on the primary site".into());
    }
    // In snapshot mode the PEER's rbd-mirror watches this primary (measured:
    // the watcher is `client.rbd-mirror-peer`; a journal-mode primary has
    // none, and neither has this site's own daemon): one watcher per peer that
    // reports on the image is not an application. ceph-csi allows one per
    // local daemon instead, which lets a mapped journal-mode primary through.
    let expected = if mirrored
        && image.mirror_mode().map_err(Error::ceph("cannot read the mirroring mode"))? == MirrorImageMode::Snapshot
    {
        let status = image.mirror_global_status().map_err(Error::ceph("cannot read the mirroring status"))?;
        status.remotes().filter(|r| r.up).count()
    } else {
        0
    };
    let watchers = image.watchers().map_err(Error::ceph("cannot list the image's watchers"))?;
    if watchers.len() > expected {
        return skip(format!(
            "it is in use ({} watcher(s): {}); sparsifying under I/O is not safe",
            watchers.len(),
            watchers.join(", ")
        ));
    }
    drop(image);
    let image = Image::open(&vol.io, &vol.image).map_err(open_error(vol))?;
    let object_size = image.object_size().map_err(Error::ceph("cannot read the image's object size"))?;
    image
        .sparsify(usize::try_from(object_size).unwrap_or(usize::MAX))
        .map_err(Error::ceph(format!("cannot sparsify {}", vol.spec())))?;
    let post_usage = usage(&image)?;
    info!(image = %vol.spec(), pre_usage, post_usage, "space reclaimed");
    Ok(Reclaimed { pre_usage, post_usage, skipped: None })
}
