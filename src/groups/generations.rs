//! Consistency generations: generation n is a user snapshot `rbd-addons.pre.n`
//! on every member (a fence post) followed by one group snapshot
//! `rbd-addons.gen.n` (the crash-consistent cut: librbd holds every member's
//! exclusive lock, so no member is written, while it snapshots them). In
//! journal mirroring both replay on the peer at the same place in each
//! member's write stream, so after a failover every
//! member can be brought back to the newest cut that all of them received.
//!
//! Nothing here is kept in memory: the generation number, its time and where
//! each member stands are read back from the members' snapshot lists.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Member, OpenMember};
use crate::Error;
use crate::ceph::{CephError, Image, IoCtx, SnapInfo, SnapKind};

pub(crate) const PRE_PREFIX: &str = "rbd-addons.pre.";
pub(crate) const GEN_PREFIX: &str = "rbd-addons.gen.";
/// Generations kept on the primary (and, through replay, on the peer)...
pub(crate) const KEEP: usize = 3;
/// ...and every generation taken less than `retention(interval)` before the
/// newest. The peer replays each member's journal on its own, so one member
/// may lag another by several generations at a short interval; a lagging
/// member must still find a generation that the others have not pruned yet,
/// or no cut is common to all of them after a site loss.
pub(crate) fn retention(interval: Duration) -> Duration {
    (interval * 10).min(Duration::from_secs(60))
}
/// Revert copies at most this much per read/write.
const CHUNK: u64 = 4 << 20;

/// Where one generation stands on one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberCut {
    pub pre_id: u64,
    /// The member's snapshot of the group snapshot, if it has arrived.
    pub group_snap_id: Option<u64>,
    /// The group snapshot's own ID (the last part of `.group.<pool>_<group>_<snap>`),
    /// equal on every member of one group snapshot.
    pub group_snap_key: Option<String>,
}

/// The generations one member holds, by number.
pub(crate) fn member_cuts(snaps: &[SnapInfo]) -> BTreeMap<u64, MemberCut> {
    let mut cuts = BTreeMap::new();
    let mut last_pre: Option<u64> = None;
    for s in snaps {
        match s.kind {
            SnapKind::User => {
                if let Some(n) = s.name.strip_prefix(PRE_PREFIX).and_then(|n| n.parse::<u64>().ok()) {
                    cuts.insert(n, MemberCut { pre_id: s.id, group_snap_id: None, group_snap_key: None });
                    last_pre = Some(n);
                }
            }
            // A group snapshot belongs to the nearest fence post before it: the
            // two are taken in that order and replayed in that order.
            SnapKind::Group => {
                if let Some(cut) = last_pre.and_then(|n| cuts.get_mut(&n))
                    && cut.group_snap_id.is_none()
                {
                    cut.group_snap_id = Some(s.id);
                    cut.group_snap_key = s.name.rsplit('_').next().map(str::to_owned);
                }
            }
            _ => {}
        }
    }
    cuts
}

/// The newest generation whose group snapshot every member holds, with each
/// member's cut. The group snapshot must be the same one on every member.
pub(crate) fn newest_common(per_member: &[BTreeMap<u64, MemberCut>]) -> Option<(u64, Vec<MemberCut>)> {
    let first = per_member.first()?;
    'generation: for (&n, cut) in first.iter().rev() {
        let Some(key) = &cut.group_snap_key else { continue };
        let mut all = Vec::with_capacity(per_member.len());
        for cuts in per_member {
            match cuts.get(&n) {
                Some(c) if c.group_snap_key.as_ref() == Some(key) => all.push(c.clone()),
                _ => continue 'generation,
            }
        }
        return Some((n, all));
    }
    None
}

/// The next generation number: one past every fence post on any member, so
/// numbering goes on across failovers.
pub(crate) fn next_number(per_member: &[BTreeMap<u64, MemberCut>]) -> u64 {
    per_member.iter().filter_map(|c| c.keys().next_back()).max().map_or(1, |n| n + 1)
}

pub(crate) fn cuts_of(image: &Image<'_>) -> Result<BTreeMap<u64, MemberCut>, Error> {
    Ok(member_cuts(&image.snapshots().map_err(Error::ceph(format!("cannot list the snapshots of {}", image.name())))?))
}

/// One generation as a member holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    pub number: u64,
    /// Unix seconds of the fence post.
    pub taken: i64,
    /// Whether the member holds the group snapshot too (the cut itself).
    pub complete: bool,
}

/// The generations each member holds, oldest first, for operators.
pub(crate) fn held(members: &[OpenMember<'_>]) -> Result<Vec<(String, Vec<Held>)>, Error> {
    let mut out = Vec::with_capacity(members.len());
    for m in members {
        let mut gens = Vec::new();
        for (n, cut) in cuts_of(&m.image)? {
            let taken = m.image.snap_timestamp(cut.pre_id).map_err(Error::ceph("cannot read a snapshot time"))?;
            gens.push(Held { number: n, taken, complete: cut.group_snap_id.is_some() });
        }
        out.push((m.member.volume_id.clone(), gens));
    }
    Ok(out)
}

/// A generation just taken.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taken {
    pub number: u64,
    /// How long the fence posts took (each briefly holds its member's writes).
    pub fence: Duration,
    /// How long the group snapshot (the write barrier) took.
    pub pause: Duration,
}

/// Takes generation n on a primary group and prunes old ones. Idempotent per
/// number: an existing fence post or group snapshot is reused. The fence
/// posts are taken on every member at once, so a writer is held once for
/// them, not once per member. Nothing here asks writers to quiesce (librbd's
/// default for every snapshot, which would pause each writer once per member
/// and generation, and freeze a filesystem behind `rbd-nbd --quiesce` every
/// few seconds): a fence post need only come before the cut in each member's
/// write stream, and the cut is crash-consistent by the members' exclusive
/// locks alone.
pub(crate) fn take(
    group_io: &IoCtx,
    rbd_group: &str,
    members: &[OpenMember<'_>],
    interval: Duration,
) -> Result<Taken, Error> {
    let images: Vec<&Image<'_>> = members.iter().map(|m| &m.image).collect();
    let cuts: Vec<_> = images.iter().map(|i| cuts_of(i)).collect::<Result<_, _>>()?;
    let n = next_number(&cuts);
    let pre = format!("{PRE_PREFIX}{n}");
    let fencing = Instant::now();
    for (image, made) in images.iter().zip(Image::snap_create_unquiesced_each(&images, &pre)) {
        match made {
            Ok(()) => {}
            Err(e) if e.is(libc::EEXIST) => {}
            Err(e) => {
                return Err(Error::Ceph {
                    what: format!("cannot take fence post {pre} of {}", image.name()),
                    source: e,
                });
            }
        }
    }
    let fence = fencing.elapsed();
    let started = Instant::now();
    let name = format!("{GEN_PREFIX}{n}");
    let mut attempts = 1;
    loop {
        match group_io.group_snap_create(rbd_group, &name, false) {
            Ok(()) => break,
            Err(e) if e.is(libc::EEXIST) => break,
            // librbd answers ENOENT when a member's view of its snapshots does
            // not show the one it has just taken (seen once in 17 cuts under
            // CPU load, right after mirroring was enabled); it removes what it
            // made, and taken again the snapshot holds. Not NOT_FOUND: nothing
            // is missing, and the controller would take the group for gone.
            Err(e) if e.is(libc::ENOENT) && attempts < 3 => {
                warn!(group = rbd_group, snapshot = %name, attempts, error = %e, "group snapshot not found right after it was taken; taking it again");
                attempts += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) if e.is(libc::ENOENT) => {
                return Err(Error::NotReady(format!(
                    "cannot take group snapshot {name} of {rbd_group}: librbd did not find the member snapshots it had \
                     just taken, {attempts} times ({e}); retry"
                )));
            }
            Err(e) => return Err(Error::ceph(format!("cannot take group snapshot {name} of {rbd_group}"))(e)),
        }
    }
    let pause = started.elapsed();
    prune(group_io, rbd_group, &images, n, retention(interval))?;
    Ok(Taken { number: n, fence, pause })
}

/// Keeps the newest KEEP generations; removes older group snapshots of this
/// site's group, older fence posts, and group snapshots replayed from the
/// peer's group before a failover (their group does not exist here).
fn prune(group_io: &IoCtx, rbd_group: &str, images: &[&Image<'_>], newest: u64, keep: Duration) -> Result<(), Error> {
    let oldest_kept = oldest_kept(images[0], newest, keep)?;
    if oldest_kept <= 1 {
        return Ok(());
    }
    let ours = group_io.group_snap_list(rbd_group).map_err(Error::ceph("cannot list group snapshots"))?;
    for name in ours {
        if let Some(n) = name.strip_prefix(GEN_PREFIX).and_then(|n| n.parse::<u64>().ok())
            && n < oldest_kept
            && let Err(e) = group_io.group_snap_remove(rbd_group, &name)
        {
            warn!(group = rbd_group, snap = %name, error = %e, "could not prune a group snapshot");
        }
    }
    for image in images {
        let snaps = image.snapshots().map_err(Error::ceph(format!("cannot list the snapshots of {}", image.name())))?;
        let cuts = member_cuts(&snaps);
        let Some(kept_pre) = cuts.get(&oldest_kept).map(|c| c.pre_id) else { continue };
        for s in snaps.iter().filter(|s| s.id < kept_pre) {
            let ours = s.kind == SnapKind::User && s.name.starts_with(PRE_PREFIX);
            // Group snapshots still listed here after our group's own were
            // removed above come from the peer's group (replayed before a
            // failover), whose group does not exist here. A group snapshot of
            // a group that does (a volume group snapshot in the making) stays.
            let foreign_group = s.kind == SnapKind::Group
                && !matches!(image.group_snap_of(s.id), Ok((_, group, _)) if !group.is_empty());
            if (ours || foreign_group)
                && let Err(e) = image.snap_remove_by_id(s.id)
            {
                warn!(image = image.name(), snap = %s.name, error = %e, "could not prune a snapshot");
            }
        }
    }
    Ok(())
}

/// The oldest generation to keep (see `oldest_to_keep`), by the first
/// member's fence posts.
fn oldest_kept(first: &Image<'_>, newest: u64, keep: Duration) -> Result<u64, Error> {
    let mut taken = Vec::new();
    for (n, cut) in cuts_of(first)? {
        taken.push((n, first.snap_timestamp(cut.pre_id).map_err(Error::ceph("cannot read a snapshot time"))?));
    }
    Ok(oldest_to_keep(&taken, newest, keep))
}

/// The KEEP newest generations, and all taken within `keep` of the newest;
/// `taken` is (number, Unix seconds), oldest first.
fn oldest_to_keep(taken: &[(u64, i64)], newest: u64, keep: Duration) -> u64 {
    let by_count = newest.saturating_sub(KEEP as u64 - 1).max(1);
    let Some(&(_, newest_at)) = taken.iter().find(|(n, _)| *n == newest) else { return by_count };
    taken
        .iter()
        .rev()
        .skip_while(|(n, _)| *n >= by_count)
        .take_while(|(_, at)| newest_at - at <= keep.as_secs() as i64)
        .last()
        .map_or(by_count, |(n, _)| *n)
}

/// Removes every generation of the group (on Disable).
pub(crate) fn remove_all(group_io: &IoCtx, rbd_group: &str, members: &[OpenMember<'_>]) -> Result<(), Error> {
    match group_io.group_snap_list(rbd_group) {
        Ok(names) => {
            for name in names.iter().filter(|n| n.starts_with(GEN_PREFIX)) {
                group_io.group_snap_remove(rbd_group, name).ok();
            }
        }
        Err(e) if e.is(libc::ENOENT) => {}
        Err(e) => return Err(Error::ceph("cannot list group snapshots")(e)),
    }
    for m in members {
        for s in m.image.snapshots().map_err(Error::ceph("cannot list snapshots"))? {
            if (s.kind == SnapKind::User && s.name.starts_with(PRE_PREFIX)) || s.kind == SnapKind::Group {
                m.image.snap_remove_by_id(s.id).ok();
            }
        }
    }
    Ok(())
}

/// What a revert did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reverted {
    pub bytes: u64,
}

/// Brings every member back to generation `n`: the extents changed since its
/// fence post are read from the group snapshot and written to the member's
/// head, then read back: every extent changed since the fence post must now
/// equal the group snapshot, or the call fails and the next one reverts
/// again. `heads` (in member order) hold the members' exclusive locks, so
/// nothing else writes to them meanwhile. Safe to repeat.
pub(crate) fn revert(
    members: &[OpenMember<'_>],
    heads: &[Image<'_>],
    n: u64,
    cuts: &[MemberCut],
) -> Result<Reverted, Error> {
    let mut bytes = 0;
    for ((m, head), cut) in members.iter().zip(heads).zip(cuts) {
        let Some(snap_id) = cut.group_snap_id else { continue };
        let at_cut = open_at(m.member, snap_id, n)?;
        let copied = copy_back(m.member, head, &at_cut, n)?;
        let checked = check_at(m.member, head, &at_cut, n)?;
        info!(member = %m.member.volume_id, generation = n, bytes = copied, checked_bytes = checked,
            "member reverted to the generation and checked");
        bytes += copied;
    }
    info!(generation = n, bytes, members = members.len(), "members reverted to their newest common generation");
    Ok(Reverted { bytes })
}

/// A second handle on the member, reading the group snapshot.
fn open_at<'m>(m: &'m Member, snap_id: u64, n: u64) -> Result<Image<'m>, Error> {
    let at_cut = Image::open_read_only(&m.vol.io, &m.vol.image)
        .map_err(Error::ceph(format!("cannot open member {} to revert it", m.vol.spec())))?;
    at_cut.read_snapshot(snap_id).map_err(Error::ceph(format!("cannot read generation {n} of {}", m.vol.spec())))?;
    Ok(at_cut)
}

fn changed(m: &Member, head: &Image<'_>, n: u64) -> Result<Vec<crate::ceph::Extent>, Error> {
    let pre = format!("{PRE_PREFIX}{n}");
    head.changed_since(&pre).map_err(Error::ceph(format!("cannot diff {} since {pre}", m.vol.spec())))
}

/// Calls `each(offset, len)` for every chunk of every extent changed since
/// generation n's fence post; returns the bytes covered.
fn each_chunk(
    m: &Member,
    head: &Image<'_>,
    n: u64,
    mut each: impl FnMut(u64, usize) -> Result<(), Error>,
) -> Result<u64, Error> {
    let mut bytes = 0;
    for e in changed(m, head, n)? {
        let mut offset = e.offset;
        let end = e.offset + e.len;
        while offset < end {
            let len = (end - offset).min(CHUNK) as usize;
            each(offset, len)?;
            offset += len as u64;
            bytes += len as u64;
        }
    }
    Ok(bytes)
}

fn copy_back(m: &Member, head: &Image<'_>, at_cut: &Image<'_>, n: u64) -> Result<u64, Error> {
    let mut buf = Vec::new();
    let bytes = each_chunk(m, head, n, |offset, len| {
        buf.resize(len, 0);
        at_cut.read_at(offset, &mut buf).map_err(revert_err(m))?;
        head.write_at(offset, &buf).map_err(revert_err(m))
    })?;
    head.flush().map_err(revert_err(m))?;
    Ok(bytes)
}

/// Every extent changed since the fence post, diffed afresh, equals the
/// group snapshot.
fn check_at(m: &Member, head: &Image<'_>, at_cut: &Image<'_>, n: u64) -> Result<u64, Error> {
    let (mut want, mut have) = (Vec::new(), Vec::new());
    each_chunk(m, head, n, |offset, len| {
        want.resize(len, 0);
        have.resize(len, 0);
        at_cut.read_at(offset, &mut want).map_err(revert_err(m))?;
        head.read_at(offset, &mut have).map_err(revert_err(m))?;
        if want != have {
            return Err(Error::NotReady(format!(
                "member {} still differs from generation {n} at offset {offset} after its revert; retry (the \
                 promote reverts again)",
                m.vol.spec()
            )));
        }
        Ok(())
    })
}

fn revert_err(m: &Member) -> impl FnOnce(CephError) -> Error + '_ {
    move |e| Error::Ceph { what: format!("cannot revert member {}", m.vol.spec()), source: e }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64, name: &str) -> SnapInfo {
        SnapInfo { id, name: name.into(), kind: SnapKind::User }
    }
    fn group(id: u64, key: &str) -> SnapInfo {
        SnapInfo { id, name: format!(".group.2_10556b8b4567_{key}"), kind: SnapKind::Group }
    }

    #[test]
    fn a_group_snapshot_belongs_to_the_fence_post_before_it() {
        let cuts = member_cuts(&[
            user(4, "rbd-addons.pre.1"),
            group(6, "aaa"),
            user(7, "rbd-addons.pre.2"),
            user(9, "rbd-addons.pre.3"),
            group(10, "ccc"),
            user(11, "someone-elses"),
        ]);
        assert_eq!(cuts[&1].group_snap_id, Some(6));
        assert_eq!(cuts[&1].group_snap_key.as_deref(), Some("aaa"));
        assert_eq!(cuts[&2].group_snap_id, None, "generation 2's group snapshot never came");
        assert_eq!(cuts[&3].group_snap_id, Some(10));
        assert_eq!(next_number(&[cuts]), 4);
    }

    #[test]
    fn generations_are_kept_by_count_and_by_age() {
        // One a second: the last minute is kept, not just the three newest.
        let minute = Duration::from_secs(60);
        let every_second: Vec<(u64, i64)> = (1..=100).map(|n| (n, 1000 + n as i64)).collect();
        assert_eq!(oldest_to_keep(&every_second, 100, minute), 40);
        // One an hour: the three newest.
        let hourly: Vec<(u64, i64)> = (1..=10).map(|n| (n, n as i64 * 3600)).collect();
        assert_eq!(oldest_to_keep(&hourly, 10, minute), 8);
        // Few, or the newest not listed (a member that lags): by count.
        assert_eq!(oldest_to_keep(&every_second[..2], 2, minute), 1);
        assert_eq!(oldest_to_keep(&[], 7, minute), 5);
        // Ten intervals, at most a minute.
        assert_eq!(retention(Duration::from_secs(1)), Duration::from_secs(10));
        assert_eq!(retention(Duration::from_secs(5)), Duration::from_secs(50));
        assert_eq!(retention(Duration::from_secs(60)), minute);
    }

    #[test]
    fn the_newest_generation_every_member_holds_wins() {
        let a =
            member_cuts(&[user(1, "rbd-addons.pre.1"), group(2, "g1"), user(3, "rbd-addons.pre.2"), group(4, "g2")]);
        // b has replayed generation 2's fence post but not its group snapshot.
        let b = member_cuts(&[user(1, "rbd-addons.pre.1"), group(2, "g1"), user(3, "rbd-addons.pre.2")]);
        let (n, cuts) = newest_common(&[a.clone(), b]).unwrap();
        assert_eq!(n, 1);
        assert_eq!(cuts.len(), 2);
        let (n, _) = newest_common(&[a.clone(), a.clone()]).unwrap();
        assert_eq!(n, 2);
        // A group snapshot that is not the same one on every member is no cut.
        let c = member_cuts(&[user(1, "rbd-addons.pre.1"), group(2, "other")]);
        assert_eq!(newest_common(&[a, c]), None);
        assert_eq!(newest_common(&[]), None);
        assert_eq!(next_number(&[]), 1);
    }
}
