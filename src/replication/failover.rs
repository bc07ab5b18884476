//! Promote, Demote and Resync for one RBD image: the failover and failback
//! transitions, with the guards that keep a volume from being silently split
//! between two primaries or resynced twice.

use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::params::Schedule;
use super::status::{PeerCopy, ReplayDescription, describe, peer_copy};
use super::volume::{apply_schedule, mirror_info, open, remove_schedule};
use crate::Error;
use crate::ceph::{Cluster, Image, MirrorInfo, MirrorState, SiteState};
use crate::cephcsi::ResolvedVolume;

/// How long a promote retries while the local rbd-mirror still holds the
/// image right after the peer's demote (EROFS; measured 0.05–1.75 s for one
/// image, but a thousand demotions at once keep rbd-mirror busy for a minute
/// and more: at 10 s, 128 of 1,000 promotes answered UNAVAILABLE twice). The
/// wait gives its `--max-concurrent-ops` slot back (`exec::idle`), so a long
/// one holds nobody up, and it stays well within the controller's 3 minutes.
const PROMOTE_SETTLE: Duration = Duration::from_secs(30);

/// How long a non-forced promote keeps retrying EBUSY ("the peer is primary")
/// before believing it: right after the peer's demote this site answers EBUSY
/// until its rbd-mirror has copied or replayed the demotion (measured up to
/// 0.9 s on an idle lab). Giving up at once would make the controller
/// force-promote and lose the writes the demotion carries.
const PEER_DEMOTE_SETTLE: Duration = Duration::from_secs(5);
/// ...and while the peer no longer calls its copy primary (its demotion is on
/// its way here; a busy machine was seen to take more than 5 s), up to this.
const PEER_DEMOTED_SETTLE: Duration = Duration::from_secs(30);

/// How long a non-forced demote waits for the peer's first report on its
/// copy: rbd-mirror flushes statuses every 30 s, so a copy made a moment ago
/// may not be reported yet.
pub(crate) const PEER_REPORT_WAIT: Duration = Duration::from_secs(35);

/// Image metadata recording the creation time of the image when it was
/// demoted, in ceph-csi's format, so that a resync is issued at most once per
/// demotion: rbd-mirror's resync re-creates the image, which drops the key
/// (keys starting with `.rbd` are not mirrored).
pub(crate) const CREATION_TIME_KEY: &str = ".rbd.image.creation_time";

fn creation_time(image: &Image<'_>) -> Result<String, Error> {
    let (secs, nanos) = image.create_timestamp().map_err(Error::ceph("cannot read the image's creation time"))?;
    Ok(format!("seconds:{secs} nanos:{nanos}"))
}

fn require_enabled(info: &MirrorInfo, vol: &ResolvedVolume) -> Result<(), Error> {
    if info.state == MirrorState::Enabled {
        Ok(())
    } else {
        Err(Error::WrongState(format!("replication is not enabled on {}; enable it first", vol.spec())))
    }
}

pub(crate) fn promote(vol: &ResolvedVolume, force: bool, schedule: Option<&Schedule>) -> Result<(), Error> {
    let since = Instant::now();
    promote_image(&open(&vol.io, vol)?, vol, force, schedule)?;
    if force {
        // After a site loss this site's rbd-mirror may never let go of the
        // image by itself: answer only once it takes writes (a retry too).
        drop(super::hold_all(&[vol], true, since)?);
    }
    Ok(())
}

/// Promote through an image the caller already opened (a group call opens
/// each member once).
pub(crate) fn promote_image(
    image: &Image<'_>,
    vol: &ResolvedVolume,
    force: bool,
    schedule: Option<&Schedule>,
) -> Result<(), Error> {
    let current = mirror_info(image)?;
    require_enabled(&current, vol)?;
    if !current.primary {
        if !force {
            refuse_unsafe_promote(image, vol)?;
        }
        promote_settled(image, vol, force)?;
        info!(image = %vol.spec(), force, "promoted to primary");
    }
    // Every promote (re)applies the schedule: a primary must always carry it.
    let mode = image.mirror_mode().map_err(Error::ceph("cannot read the image's mirroring mode"))?;
    apply_schedule(vol, mode, schedule)
}

/// librbd lets a non-forced promote through whenever this copy's newest
/// snapshot is its own demotion, even when the peer has become primary since
/// (a split-brain): that would silently make two primaries. rbd-mirror reports
/// exactly that case as `split-brain`; every other state is left to librbd,
/// which refuses (EBUSY) while the peer is primary. Refusing more would lie:
/// a local error can also mean the peer holds no copy at all (it never
/// bootstrapped), and a FAILED_PRECONDITION makes the controller force-promote.
fn refuse_unsafe_promote(image: &Image<'_>, vol: &ResolvedVolume) -> Result<(), Error> {
    let status = image.mirror_global_status().map_err(Error::ceph("cannot read the mirroring status"))?;
    match status.local() {
        Some(local) if local.up && local.state == SiteState::Error && local.description.contains("split-brain") => {
            Err(Error::WrongState(format!(
                "{}: {}; the peer became primary after this copy's demotion, so promoting without force would \
                 leave two primaries. Resync this site (resync --force), or promote with force to keep this site's data",
                vol.spec(),
                describe(&status)
            )))
        }
        _ => Ok(()),
    }
}

/// A non-forced demote must not strand a volume: the peer creates its copy
/// only from a primary, so demoting before it has one leaves no primary
/// anywhere and nothing the peer could ever take over. Waits (bounded by
/// `deadline`) for the peer's first report, as a fresh copy's report can lag
/// up to 30 s; then refuses, quoting what rbd-mirror reports.
pub(crate) fn require_peer_copy(image: &Image<'_>, vol: &ResolvedVolume, deadline: Instant) -> Result<(), Error> {
    loop {
        let status = image.mirror_global_status().map_err(Error::ceph("cannot read the mirroring status"))?;
        if peer_copy(&status) == PeerCopy::Reported {
            return Ok(());
        }
        if Instant::now() + Duration::from_secs(1) > deadline {
            return Err(Error::WrongState(format!(
                "{} has no copy on the peer site as far as this site can tell ({}); the peer can create its copy \
                 only from a primary, so demoting now would leave the volume without a primary on either site. \
                 Retry once the peer's rbd-mirror reports the image (up to 30 s after enabling), check that \
                 daemon, or demote with force to accept that",
                vol.spec(),
                describe(&status)
            )));
        }
        crate::exec::idle(Duration::from_secs(1));
    }
}

fn promote_settled(image: &Image<'_>, vol: &ResolvedVolume, force: bool) -> Result<(), Error> {
    let started = Instant::now();
    let deadline = started + PROMOTE_SETTLE;
    let mut pause = Duration::from_millis(50);
    loop {
        match image.mirror_promote(force) {
            Ok(()) => return Ok(()),
            Err(e) if e.is(libc::EBUSY) && !force && started.elapsed() + pause < PEER_DEMOTE_SETTLE => {
                crate::exec::idle(pause);
                pause = next_pause(started.elapsed(), pause);
            }
            Err(e) if e.is(libc::EBUSY) && !force => {
                let status = image.mirror_global_status().map_err(Error::ceph("cannot read the mirroring status"))?;
                let peer_primary = status.remotes().any(|s| s.description == "local image is primary");
                if !peer_primary && started.elapsed() + pause < PEER_DEMOTED_SETTLE {
                    crate::exec::idle(pause);
                    pause = next_pause(started.elapsed(), pause);
                    continue;
                }
                return Err(Error::WrongState(format!(
                    "{}: librbd refuses a non-forced promote because this copy's newest mirror snapshot is not its \
                     own demotion: the peer is or was primary after it ({}). Demote the peer first, or promote \
                     with force",
                    vol.spec(),
                    describe(&status)
                )));
            }
            // Right after the peer's demote, the local rbd-mirror has not yet
            // copied the demotion or released the image.
            Err(e) if e.is(libc::EROFS) && Instant::now() + pause < deadline => {
                crate::exec::idle(pause);
                pause = next_pause(started.elapsed(), pause);
            }
            Err(e) if e.is(libc::EROFS) => {
                return Err(Error::NotReady(format!(
                    "{} cannot be promoted yet: this site's rbd-mirror still holds it ({e}); retry",
                    vol.spec()
                )));
            }
            Err(e) => return Err(Error::Ceph { what: format!("cannot promote {}", vol.spec()), source: e }),
        }
    }
}

/// The pause before the next promote attempt. The peer's demotion usually
/// settles within 2 s (measured 0.05–1.75 s): retrying every 100 ms until
/// then keeps a mass failover within 0.1 s of the moment each image is free,
/// where a doubling pause overshot by up to 0.8 s per image; after that the
/// pause doubles up to 1 s.
fn next_pause(elapsed: Duration, pause: Duration) -> Duration {
    let cap = if elapsed < Duration::from_secs(2) { Duration::from_millis(100) } else { Duration::from_secs(1) };
    (pause * 2).min(cap)
}

/// Demote; without `force`, only once the peer holds a copy (see
/// `require_peer_copy`).
pub(crate) fn demote(vol: &ResolvedVolume, force: bool) -> Result<(), Error> {
    demote_image(&open(&vol.io, vol)?, vol, force)
}

/// Demote through an image the caller already opened.
pub(crate) fn demote_image(image: &Image<'_>, vol: &ResolvedVolume, force: bool) -> Result<(), Error> {
    let current = mirror_info(image)?;
    require_enabled(&current, vol)?;
    if !current.primary {
        return Ok(());
    }
    if !force {
        require_peer_copy(image, vol, Instant::now() + PEER_REPORT_WAIT)?;
    }
    if image.metadata_get(CREATION_TIME_KEY).map_err(Error::ceph("cannot read image metadata"))?.is_none() {
        let created = creation_time(image)?;
        image.metadata_set(CREATION_TIME_KEY, &created).map_err(Error::ceph("cannot record the demotion marker"))?;
    }
    // Only a primary takes scheduled snapshots; the schedule follows the
    // primary and Promote puts it back.
    remove_schedule(vol, image)?;
    image.mirror_demote().map_err(Error::ceph(format!("cannot demote {}", vol.spec())))?;
    info!(image = %vol.spec(), "demoted to secondary");
    Ok(())
}

/// Resync requests this process has sent, by image and the creation time of
/// the image they were for. librbd's resync flag is kept in Ceph and setting
/// it again changes nothing, so a repeat (the controller asks every 30 s, or
/// again as a flapping link comes and goes) is not sent; after a restart it
/// is sent once more, harmlessly. Bounded: past 10,000 it starts again empty.
static RESYNCS_SENT: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn already_requested(request: &str) -> bool {
    RESYNCS_SENT.lock().unwrap_or_else(|p| p.into_inner()).contains(request)
}

fn remember_request(request: String) {
    let mut sent = RESYNCS_SENT.lock().unwrap_or_else(|p| p.into_inner());
    if sent.len() >= 10_000 {
        sent.clear();
    }
    sent.insert(request);
}

/// Resync of a secondary: issued only with force, only when rbd-mirror reports
/// a split-brain, never while a sync runs, and at most once per demotion.
/// Returns whether the secondary is in sync with the peer.
pub(crate) fn resync(vol: &ResolvedVolume, force: bool) -> Result<bool, Error> {
    let image = Image::open(&vol.io, &vol.image).map_err(|e| {
        if e.is(libc::ENOENT) {
            Error::InProgress(format!(
                "image {} not found; if a resync is under way rbd-mirror is re-creating it: retry",
                vol.spec()
            ))
        } else {
            Error::Ceph { what: format!("cannot open image {}", vol.spec()), source: e }
        }
    })?;
    let status = image.mirror_global_status().map_err(Error::ceph("cannot read the mirroring status"))?;
    require_enabled(&status.info, vol)?;
    if status.info.primary {
        return Err(Error::Malformed(format!(
            "{} is primary on this site; a resync only applies to a demoted secondary",
            vol.spec()
        )));
    }
    require_mirror_daemon(vol)?;
    let Some(local) = status.local() else { return Ok(false) };
    // A new or re-created image has no status until rbd-mirror's next report;
    // any other "down" means the daemon stopped reporting.
    if !local.up && local.description != "status not found" {
        return Err(Error::NotReady(format!(
            "rbd-mirror on this site is not reporting on {} (status down+{}); check the rbd-mirror daemon",
            vol.spec(),
            local.state.as_str()
        )));
    }
    let desc = ReplayDescription::parse(&local.description).unwrap_or_default();
    let syncing = local.state == SiteState::Syncing || desc.replay_state.as_deref() == Some("syncing");
    if local.up && local.state == SiteState::Error && !syncing {
        if !force {
            return Err(Error::WrongState(format!(
                "{} is in {}; resync with force=true discards this site's changes and copies the peer",
                vol.spec(),
                local.description
            )));
        }
        let saved = image.metadata_get(CREATION_TIME_KEY).map_err(Error::ceph("cannot read image metadata"))?;
        let Some(saved) = saved else {
            return Err(Error::WrongState(format!(
                "{} has no demotion marker ({CREATION_TIME_KEY}); demote it through rbd-addons first so that a resync cannot repeat",
                vol.spec()
            )));
        };
        let created = creation_time(&image)?;
        if saved == created {
            let request = format!("{}/{}@{created}", vol.io.pool_id(), vol.spec());
            if already_requested(&request) {
                debug!(image = %vol.spec(), "resync already requested; rbd-mirror has not re-created the image yet");
            } else {
                image.mirror_resync().map_err(Error::ceph(format!("cannot flag {} for resync", vol.spec())))?;
                info!(image = %vol.spec(), "resync from the peer requested");
                remember_request(request);
            }
        }
        return Ok(false);
    }
    let remotes: Vec<_> = status.remotes().collect();
    let in_sync = local.up && !syncing && local.state == SiteState::Replaying;
    // Both sites demoted, with the last snapshot exchanged: nothing to copy.
    let both_demoted = local.up
        && local.state == SiteState::Unknown
        && !remotes.is_empty()
        && remotes.iter().all(|r| r.up && r.state == SiteState::Unknown);
    Ok(in_sync || both_demoted)
}

/// Fails when no rbd-mirror daemon of this cluster is in the mgr's service map:
/// without one nothing will ever sync, and "not ready" would be a lie.
fn require_mirror_daemon(vol: &ResolvedVolume) -> Result<(), Error> {
    if mirror_daemon_count(vol.io.cluster())? == 0 {
        return Err(Error::NotReady(
            "no rbd-mirror daemon of this site is in the mgr's service map (stopped, or not reported since it or \
             the mgr stalled or restarted); start it or wait for its next report, then retry"
                .into(),
        ));
    }
    Ok(())
}

/// How many rbd-mirror daemons the mgr's service map lists for this cluster.
fn mirror_daemon_count(cluster: &Cluster) -> Result<usize, Error> {
    let out = cluster
        .mgr_command(r#"{"prefix": "service dump", "format": "json"}"#)
        .map_err(|(source, status)| Error::Mgr { what: "cannot read the service map".into(), source, status })?;
    let map: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    Ok(map["services"]["rbd-mirror"]["daemons"].as_object().map_or(0, |d| d.keys().filter(|k| *k != "summary").count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promote_retries_stay_close_while_the_demotion_settles_then_back_off() {
        let ms = Duration::from_millis;
        for (elapsed, pause, next) in [
            (ms(0), ms(50), ms(100)),
            (ms(500), ms(100), ms(100)),
            (ms(1999), ms(100), ms(100)),
            (ms(2000), ms(100), ms(200)),
            (ms(3000), ms(400), ms(800)),
            (ms(9000), ms(800), ms(1000)),
            (ms(9000), ms(1000), ms(1000)),
        ] {
            assert_eq!(next_pause(elapsed, pause), next, "after {elapsed:?} with {pause:?}");
        }
    }
}
