//! Enable, Disable and GetVolumeReplicationInfo for one RBD image, and the
//! helpers the failover RPCs share. Every RPC is idempotent: called again in the
//! state it produced, it succeeds without changing anything.

use serde_json::json;
use tracing::{info, warn};

use super::params::{DisableParams, EnableParams, FlattenMode, Schedule};
use super::status::{Health, PeerCopy, ReplayDescription, describe, health, peer_copy, peer_silent};
use crate::Error;
use crate::ceph::{GlobalStatus, Image, IoCtx, MirrorImageMode, MirrorInfo, MirrorState, PoolMirrorMode, SiteState};
use crate::cephcsi::ResolvedVolume;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplicationInfo {
    /// Unix seconds of the newest point in time the peer site holds.
    pub last_sync_time: i64,
    pub last_sync_duration_secs: Option<i64>,
    pub last_sync_bytes: i64,
    pub health: Health,
    pub status_message: String,
    /// The image's mirroring mode (a group's Info needs its members').
    pub mode: MirrorImageMode,
}

pub(super) fn open<'io>(io: &'io IoCtx, vol: &ResolvedVolume) -> Result<Image<'io>, Error> {
    open_with(io, vol, Image::open)
}

fn open_with<'io>(
    io: &'io IoCtx,
    vol: &ResolvedVolume,
    opener: fn(&'io IoCtx, &str) -> Result<Image<'io>, crate::ceph::CephError>,
) -> Result<Image<'io>, Error> {
    opener(io, &vol.image).map_err(|e| {
        if e.is(libc::ENOENT) {
            Error::ImageNotFound { image: vol.spec() }
        } else {
            Error::Ceph { what: format!("cannot open image {}", vol.spec()), source: e }
        }
    })
}

pub(super) fn mirror_info(image: &Image<'_>) -> Result<MirrorInfo, Error> {
    image.mirror_info().map_err(Error::ceph("cannot read the image's mirroring state"))
}

/// Whether the volume is primary here; None when it is not mirrored.
pub(crate) fn role(vol: &ResolvedVolume) -> Result<Option<bool>, Error> {
    let image = open_with(&vol.io, vol, Image::open_read_only)?;
    let info = mirror_info(&image)?;
    Ok((info.state == MirrorState::Enabled).then_some(info.primary))
}

pub(crate) fn enable(vol: &ResolvedVolume, params: &EnableParams) -> Result<(), Error> {
    let io = &vol.io;
    let image = open(io, vol)?;
    let current = mirror_info(&image)?;
    match current.state {
        MirrorState::Enabled => {
            if current.primary {
                // Repeated Enable succeeds as is; the schedule is (re)applied
                // because a primary must always carry it.
                let mode = image.mirror_mode().map_err(Error::ceph("cannot read the image's mirroring mode"))?;
                if mode != params.mode {
                    warn!(image = %vol.spec(), current = mode.as_str(), requested = params.mode.as_str(),
                        "mirroring already enabled in another mode; keeping it");
                }
                apply_schedule(vol, mode, params.schedule.as_ref())?;
            }
            return Ok(());
        }
        MirrorState::Disabling => {
            return Err(Error::InProgress(format!("mirroring of {} is being disabled; retry when done", vol.spec())));
        }
        MirrorState::Disabled => {}
    }

    match io.mirror_mode().map_err(Error::ceph("cannot read the pool's mirroring mode"))? {
        PoolMirrorMode::Image => {}
        PoolMirrorMode::Disabled => {
            return Err(Error::WrongState(format!(
                "mirroring is not enabled on pool {}; run `rbd mirror pool enable {} image` on both sites",
                pool_spec(io),
                pool_spec(io)
            )));
        }
        PoolMirrorMode::Pool => {
            return Err(Error::WrongState(format!(
                "pool {} mirrors in pool mode, where images cannot be enabled one by one; switch it to image mode",
                pool_spec(io)
            )));
        }
    }

    check_parent(vol, &image, params.flatten)?;

    image.mirror_enable(params.mode).map_err(|e| {
        if e.is(libc::EINVAL) {
            Error::WrongState(format!(
                "librbd refused to enable {} mirroring of {} ({e}); journal mode needs the exclusive-lock feature",
                params.mode.as_str(),
                vol.spec()
            ))
        } else {
            Error::Ceph { what: format!("cannot enable mirroring of {}", vol.spec()), source: e }
        }
    })?;
    info!(image = %vol.spec(), mode = params.mode.as_str(), "mirroring enabled");

    if let Err(err) = apply_schedule(vol, params.mode, params.schedule.as_ref()) {
        // The mgr refused the schedule of an image we have just enabled: undo the
        // enable so that the failed call leaves the volume as it found it.
        if matches!(err, Error::Mgr { source, .. } if source.is(libc::EINVAL)) {
            if let Err(undo) = image.mirror_disable(false) {
                warn!(image = %vol.spec(), error = %undo, "could not undo the enable after a refused schedule");
            }
            return Err(Error::Malformed(err.to_string()));
        }
        return Err(err);
    }
    Ok(())
}

fn pool_spec(io: &IoCtx) -> String {
    match io.namespace() {
        "" => io.pool_name().to_owned(),
        ns => format!("{}/{}", io.pool_name(), ns),
    }
}

/// A clone can only be mirrored when its parent is, or once it is flattened.
fn check_parent(vol: &ResolvedVolume, image: &Image<'_>, flatten: FlattenMode) -> Result<(), Error> {
    let Some(parent) = image.parent().map_err(Error::ceph("cannot read the image's parent"))? else {
        return Ok(());
    };
    if flatten == FlattenMode::Force {
        let cmd = json!({"prefix": "rbd task add flatten", "image_spec": vol.spec()}).to_string();
        vol.io.cluster().mgr_command(&cmd).map_err(|(source, status)| Error::Mgr {
            what: format!("cannot queue the flatten of {}", vol.spec()),
            source,
            status,
        })?;
        return Err(Error::InProgress(format!(
            "{} is a clone of {}; it is being flattened (flattenMode=force), retry when done",
            vol.spec(),
            parent.spec()
        )));
    }
    let parent_io = IoCtx::open(vol.io.cluster(), parent.pool_id, &parent.namespace)
        .map_err(Error::ceph(format!("cannot open the pool of parent {}", parent.spec())))?;
    let parent_image =
        Image::open(&parent_io, &parent.image).map_err(Error::ceph(format!("cannot open parent {}", parent.spec())))?;
    let parent_info = mirror_info(&parent_image)?;
    if parent_info.state != MirrorState::Enabled {
        return Err(Error::WrongState(format!(
            "{} is a clone of {}, which is not mirrored; mirror the parent or set flattenMode=force",
            vol.spec(),
            parent.spec()
        )));
    }
    Ok(())
}

/// Adds the snapshot schedule (the mgr treats a repeated add as a no-op).
/// Journal mode replicates every write and takes no schedule.
pub(super) fn apply_schedule(
    vol: &ResolvedVolume,
    mode: MirrorImageMode,
    schedule: Option<&Schedule>,
) -> Result<(), Error> {
    let Some(schedule) = schedule else {
        return Ok(());
    };
    if mode == MirrorImageMode::Journal {
        warn!(image = %vol.spec(), "schedulingInterval ignored: journal mirroring takes no snapshot schedule");
        return Ok(());
    }
    let mut cmd = json!({
        "prefix": "rbd mirror snapshot schedule add",
        "level_spec": vol.spec(),
        "interval": schedule.interval,
    });
    if let Some(start) = &schedule.start_time {
        cmd["start_time"] = json!(start);
    }
    vol.io.cluster().mgr_command(&cmd.to_string()).map_err(|(source, status)| Error::Mgr {
        what: format!("cannot add snapshot schedule {} to {}", schedule.interval, vol.spec()),
        source,
        status,
    })?;
    Ok(())
}

/// Removes the image's snapshot schedules. The mgr only accepts this while the
/// image is still snapshot-mirrored, so callers do it before a disable or a
/// demote; a failure is logged, not returned: a leftover schedule is inert on
/// a secondary and replaced on the next promote.
pub(super) fn remove_schedule(vol: &ResolvedVolume, image: &Image<'_>) -> Result<(), Error> {
    if image.mirror_mode().map_err(Error::ceph("cannot read the image's mirroring mode"))? == MirrorImageMode::Snapshot
        && may_have_image_schedule(vol, image)
    {
        let cmd = json!({"prefix": "rbd mirror snapshot schedule remove", "level_spec": vol.spec()}).to_string();
        if let Err((e, status)) = vol.io.cluster().mgr_command(&cmd) {
            warn!(image = %vol.spec(), error = %e, status, "could not remove the snapshot schedule");
        }
    }
    Ok(())
}

/// The mgr's rbd_support module keeps image-level schedules as omap keys
/// `<pool id>/<namespace>/<image id>` of `rbd_mirror_snapshot_schedule` in
/// the pool's default namespace. Reading that key is one OSD round trip;
/// the mgr command it spares goes through the mgr's one Python thread, where
/// a hundred demotes at once queue behind each other. When the key cannot be
/// read for any other reason than absence, the command is sent anyway.
fn may_have_image_schedule(vol: &ResolvedVolume, image: &Image<'_>) -> bool {
    let key = match image.id() {
        Ok(id) => format!("{}/{}/{id}", vol.io.pool_id(), vol.io.namespace()),
        Err(_) => return true,
    };
    let schedules = match IoCtx::open(vol.io.cluster(), vol.io.pool_id(), "") {
        Ok(io) => io.omap_get(SCHEDULE_OBJECT, &[&key]),
        Err(e) => Err(e),
    };
    match schedules {
        Ok(found) => found.contains_key(&key),
        Err(e) => !e.is(libc::ENOENT),
    }
}

const SCHEDULE_OBJECT: &str = "rbd_mirror_snapshot_schedule";

pub(crate) fn disable(vol: &ResolvedVolume, params: &DisableParams) -> Result<(), Error> {
    let image = open(&vol.io, vol)?;
    let current = mirror_info(&image)?;
    match current.state {
        MirrorState::Disabled => return Ok(()),
        MirrorState::Disabling => {
            return Err(Error::InProgress(format!("mirroring of {} is being disabled; retry when done", vol.spec())));
        }
        MirrorState::Enabled => {}
    }
    if !current.primary {
        // A healthy secondary is cleaned up by the primary's disable; the
        // controller disables both sites' VRs, so this side has nothing to do.
        let status = image.mirror_global_status().map_err(Error::ceph("cannot read the mirroring status"))?;
        let local = status.local();
        if local.is_some_and(|l| l.up && l.state == SiteState::Replaying) {
            return Ok(());
        }
        let shown = local
            .map_or("unknown".to_owned(), |l| format!("{}+{}", if l.up { "up" } else { "down" }, l.state.as_str()));
        return Err(Error::WrongState(format!(
            "{} is a secondary that is not replaying (status {shown}); disable replication on the primary site first",
            vol.spec()
        )));
    }
    // A schedule left behind would come back into force on a later enable
    // without one. The mgr only removes it while the image is still in snapshot
    // mirror mode, so it goes first; a failed disable below is retried by the
    // caller, and Enable or Promote put the schedule back if mirroring stays.
    if image.mirror_mode().map_err(Error::ceph("cannot read the image's mirroring mode"))? == MirrorImageMode::Snapshot
    {
        let cmd = json!({"prefix": "rbd mirror snapshot schedule remove", "level_spec": vol.spec()}).to_string();
        if let Err((e, status)) = vol.io.cluster().mgr_command(&cmd) {
            warn!(image = %vol.spec(), error = %e, status, "could not remove the snapshot schedule");
        }
    }
    image.mirror_disable(params.force).map_err(Error::ceph(format!("cannot disable mirroring of {}", vol.spec())))?;
    if mirror_info(&image)?.state != MirrorState::Disabled {
        return Err(Error::InProgress(format!("mirroring of {} is still being disabled; retry", vol.spec())));
    }
    info!(image = %vol.spec(), force = params.force, "mirroring disabled");
    Ok(())
}

/// Whether a destination handle for this volume would name something on the
/// peer: it must be mirrored and the peer's rbd-mirror must have reported its
/// copy (see `PeerCopy`); until then UNAVAILABLE, as the spec asks for
/// destination info that is not available yet.
pub(crate) fn require_destination(vol: &ResolvedVolume) -> Result<(), Error> {
    let image = open_with(&vol.io, vol, Image::open_read_only)?;
    let status = image.mirror_global_status().map_err(Error::ceph("cannot read the mirroring status"))?;
    if status.info.state != MirrorState::Enabled {
        return Err(Error::WrongState(format!(
            "replication is not enabled on {}, so it has no destination",
            vol.spec()
        )));
    }
    if peer_copy(&status) == PeerCopy::NoneKnown {
        return Err(Error::NotReady(format!(
            "the peer site holds no copy of {} yet as far as this site can tell ({}); retry",
            vol.spec(),
            describe(&status)
        )));
    }
    Ok(())
}

pub(crate) fn info(vol: &ResolvedVolume) -> Result<ReplicationInfo, Error> {
    let image = open_with(&vol.io, vol, Image::open_read_only)?;
    let status = image.mirror_global_status().map_err(Error::ceph("cannot read the mirroring status"))?;
    if status.info.state != MirrorState::Enabled {
        return Err(Error::WrongState(format!("replication is not enabled on {}", vol.spec())));
    }
    let mode = image.mirror_mode().map_err(Error::ceph("cannot read the image's mirroring mode"))?;
    info_of(&vol.spec(), &status, mode)
}

/// Info from an image's mirror status and mode, however they were read (one
/// open image, or the pool-wide listing of `StatusCache`).
pub(super) fn info_of(spec: &str, status: &GlobalStatus, mode: MirrorImageMode) -> Result<ReplicationInfo, Error> {
    if status.info.state != MirrorState::Enabled {
        return Err(Error::WrongState(format!("replication is not enabled on {spec}")));
    }
    if !status.info.primary {
        return Err(Error::WrongState(format!("{spec} is not primary on this site; ask the primary site")));
    }
    let (mut health, mut status_message) = health(status.local());
    let Some(remote) = status.remotes().next() else {
        return Err(Error::NoInfoYet(format!("no peer site has reported on {spec} yet")));
    };
    // The peer's rbd-mirror writes its report into this site's pool and
    // keeps a watch there; when the sites are cut apart (or that daemon
    // stops) the watch expires and rbd-mirror shows the report as down. The
    // last sync time below is still the peer's last word.
    if !remote.up && health != Health::Error {
        health = Health::Degraded;
        status_message = peer_silent(remote);
    }
    let desc = ReplayDescription::parse(&remote.description).unwrap_or_default();
    let info = match mode {
        MirrorImageMode::Snapshot => match desc.local_snapshot_timestamp {
            Some(ts) if ts > 0 => ReplicationInfo {
                last_sync_time: ts,
                last_sync_duration_secs: desc.last_snapshot_sync_seconds,
                last_sync_bytes: desc.last_snapshot_bytes.unwrap_or(0).max(0),
                health,
                status_message,
                mode,
            },
            _ => {
                return Err(Error::NoInfoYet(format!("the peer site has not reported a completed sync of {spec} yet")));
            }
        },
        // Journal mode has no snapshots: the peer is in sync as of its last
        // status update when it has replayed every entry.
        MirrorImageMode::Journal => match desc.entries_behind_primary {
            Some(0) if remote.state == SiteState::Replaying && remote.last_update > 0 => ReplicationInfo {
                last_sync_time: remote.last_update,
                last_sync_duration_secs: None,
                last_sync_bytes: 0,
                health,
                status_message,
                mode,
            },
            _ => {
                return Err(Error::NoInfoYet(format!("the peer site has not reported {spec} as caught up yet")));
            }
        },
    };
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ceph::SiteStatus;

    const SYNCED: &str = r#"replaying, {"last_snapshot_bytes":65536,"last_snapshot_sync_seconds":2,"local_snapshot_timestamp":1795304186,"remote_snapshot_timestamp":1795304186,"replay_state":"idle"}"#;

    fn site(uuid: &str, state: SiteState, up: bool, description: &str) -> SiteStatus {
        SiteStatus { mirror_uuid: uuid.into(), state, description: description.into(), last_update: 1795304190, up }
    }

    fn primary(remote: SiteStatus) -> GlobalStatus {
        let info = MirrorInfo { global_id: String::new(), state: MirrorState::Enabled, primary: true };
        GlobalStatus { info, sites: vec![site("", SiteState::Stopped, true, "local image is primary"), remote] }
    }

    #[test]
    fn info_says_when_the_peer_has_gone_silent_and_keeps_its_last_sync() {
        let up = info_of("p/i", &primary(site("peer", SiteState::Replaying, true, SYNCED)), MirrorImageMode::Snapshot)
            .unwrap();
        assert_eq!((up.health, up.last_sync_time, up.last_sync_bytes), (Health::Healthy, 1795304186, 65536));
        assert_eq!(up.status_message, "local image is primary");

        // Cut off: the same report, shown down.
        let down =
            info_of("p/i", &primary(site("peer", SiteState::Replaying, false, SYNCED)), MirrorImageMode::Snapshot)
                .unwrap();
        assert_eq!((down.health, down.last_sync_time), (Health::Degraded, 1795304186));
        assert!(down.status_message.starts_with("the peer site is unreachable"), "{}", down.status_message);
        assert!(down.status_message.contains("down+replaying (replaying)"), "{}", down.status_message);
        assert!(down.status_message.contains("last heard at 2026-"), "{}", down.status_message);

        // Journal mode: caught up at its last report, which gives the time.
        let caught_up = r#"replaying, {"entries_behind_primary":0,"primary_position":{},"non_primary_position":{}}"#;
        let j =
            info_of("p/i", &primary(site("peer", SiteState::Replaying, false, caught_up)), MirrorImageMode::Journal)
                .unwrap();
        assert_eq!((j.health, j.last_sync_time), (Health::Degraded, 1795304190));
    }
}
