//! Consistency generations. A generation is one RBD group snapshot
//! `rbd-addons.gen.n.j` (the crash-consistent cut: librbd holds every
//! member's exclusive lock, so no member is written, while it snapshots them)
//! taken after a user snapshot `rbd-addons.pre.n` on every member (a fence
//! post). In journal mirroring both replay on the peer at the same place in
//! each member's write stream, so after a failover every member can be
//! brought back to the newest cut that all of them received: a revert
//! rewrites what changed since the fence post with the cut's data.
//!
//! A fence post serves up to `CUTS_PER_FENCE` cuts taken within as many
//! intervals: each fence post costs every writer one more lock hand-over,
//! and any fence post before a cut serves its revert (the diff is larger by
//! what was written between the two).
//!
//! Nothing here is kept in memory: numbers, times and where each member
//! stands are read back from the members' snapshot lists.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Member, OpenMember};
use crate::Error;
use crate::ceph::{CephError, Image, IoCtx, SnapInfo, SnapKind};

pub(crate) const PRE_PREFIX: &str = "rbd-addons.pre.";
pub(crate) const GEN_PREFIX: &str = "rbd-addons.gen.";
/// Fence posts kept on the primary (and, through replay, on the peer)...
pub(crate) const KEEP: usize = 3;
/// ...and every fence post taken less than `retention(interval)` before the
/// newest, with their cuts. The peer replays each member's journal on its
/// own, so one member may lag another by several generations at a short
/// interval; a lagging member must still find a cut that the others have
/// not pruned yet, or no cut is common to all of them after a site loss.
pub(crate) fn retention(interval: Duration) -> Duration {
    (interval * 10).min(Duration::from_secs(60))
}
/// Cuts one fence post serves, taken within as many intervals of it.
pub(crate) const CUTS_PER_FENCE: usize = 4;
/// Revert copies at most this much per read/write.
const CHUNK: u64 = 4 << 20;

/// One fence post on one member, and the cuts (group snapshots) that came
/// after it in the member's write stream, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FencePost {
    pub pre_id: u64,
    pub cuts: Vec<Cut>,
}

/// A member's snapshot of one group snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cut {
    pub snap_id: u64,
    /// The group snapshot's own ID (the last part of `.group.<pool>_<group>_<snap>`),
    /// equal on every member of one group snapshot.
    pub key: String,
}

/// Where one member stands at the cut a revert goes back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberCut {
    /// A fence post before the cut: what changed since it is rewritten.
    pub pre_id: u64,
    pub group_snap_id: u64,
}

/// The fence posts one member holds, by number, with their cuts.
pub(crate) fn fence_posts(snaps: &[SnapInfo]) -> BTreeMap<u64, FencePost> {
    let mut posts = BTreeMap::new();
    let mut last_pre: Option<u64> = None;
    for s in snaps {
        match s.kind {
            SnapKind::User => {
                if let Some(n) = s.name.strip_prefix(PRE_PREFIX).and_then(|n| n.parse::<u64>().ok()) {
                    posts.insert(n, FencePost { pre_id: s.id, cuts: Vec::new() });
                    last_pre = Some(n);
                }
            }
            // A group snapshot belongs to the nearest fence post before it:
            // the two are taken in that order and replayed in that order.
            SnapKind::Group => {
                if let (Some(post), Some(key)) = (last_pre.and_then(|n| posts.get_mut(&n)), s.name.rsplit('_').next()) {
                    post.cuts.push(Cut { snap_id: s.id, key: key.to_owned() });
                }
            }
            _ => {}
        }
    }
    posts
}

/// The newest cut every member holds, after the same fence post on each,
/// with that fence post's number and each member's place. The group
/// snapshot must be the same one on every member.
pub(crate) fn newest_common(per_member: &[BTreeMap<u64, FencePost>]) -> Option<(u64, Vec<MemberCut>)> {
    let first = per_member.first()?;
    for (&n, post) in first.iter().rev() {
        'cut: for cut in post.cuts.iter().rev() {
            let mut all = Vec::with_capacity(per_member.len());
            for posts in per_member {
                let Some(p) = posts.get(&n) else { continue 'cut };
                match p.cuts.iter().find(|c| c.key == cut.key) {
                    Some(c) => all.push(MemberCut { pre_id: p.pre_id, group_snap_id: c.snap_id }),
                    None => continue 'cut,
                }
            }
            return Some((n, all));
        }
    }
    None
}

/// The next fence post's number: one past every fence post on any member, so
/// numbering goes on across failovers.
pub(crate) fn next_number(per_member: &[BTreeMap<u64, FencePost>]) -> u64 {
    per_member.iter().filter_map(|c| c.keys().next_back()).max().map_or(1, |n| n + 1)
}

pub(crate) fn cuts_of(image: &Image<'_>) -> Result<BTreeMap<u64, FencePost>, Error> {
    Ok(fence_posts(&image.snapshots().map_err(Error::ceph(format!("cannot list the snapshots of {}", image.name())))?))
}

/// The fence post number a group snapshot's name in this site's group
/// carries: `rbd-addons.gen.n.j` (and `rbd-addons.gen.n`, one cut a fence
/// post, as before).
fn generation_of(name: &str) -> Option<u64> {
    name.strip_prefix(GEN_PREFIX)?.split('.').next()?.parse().ok()
}

/// Whether the newest fence post can serve one more cut: every member holds
/// it, this site's group took cuts after it (a fence post replayed from the
/// peer's stream before a failover starts no series here), fewer than
/// `CUTS_PER_FENCE` of them, and it is younger than that many intervals (a
/// revert rewrites everything written since).
fn reusable_fence(
    posts: &[BTreeMap<u64, FencePost>],
    ours: &[String],
    age: impl FnOnce(u64) -> Result<Duration, Error>,
    interval: Duration,
) -> Result<Option<u64>, Error> {
    let Some(&n) = posts.first().and_then(|p| p.keys().next_back()) else { return Ok(None) };
    if !posts.iter().all(|p| p.contains_key(&n)) {
        return Ok(None);
    }
    let cuts_here = ours.iter().filter(|name| generation_of(name) == Some(n)).count();
    if cuts_here == 0 || cuts_here >= CUTS_PER_FENCE {
        return Ok(None);
    }
    let pre_id = posts[0][&n].pre_id;
    Ok((age(pre_id)? < interval * CUTS_PER_FENCE as u32).then_some(n))
}

/// One fence post as a member holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    pub number: u64,
    /// Unix seconds of the fence post.
    pub taken: i64,
    /// The cuts (group snapshots) after it the member holds.
    pub cuts: usize,
}

/// What each member holds, for operators.
pub(crate) struct Holdings {
    /// Each member's fence posts, oldest first, by volume ID.
    pub members: Vec<(String, Vec<Held>)>,
    /// The fence post of the newest cut every member holds (what a promote
    /// would revert to).
    pub newest_common: Option<u64>,
}

pub(crate) fn held(members: &[OpenMember<'_>]) -> Result<Holdings, Error> {
    let mut out = Vec::with_capacity(members.len());
    let mut all = Vec::with_capacity(members.len());
    for m in members {
        let posts = cuts_of(&m.image)?;
        let mut gens = Vec::new();
        for (n, post) in &posts {
            let taken = m.image.snap_timestamp(post.pre_id).map_err(Error::ceph("cannot read a snapshot time"))?;
            gens.push(Held { number: *n, taken, cuts: post.cuts.len() });
        }
        out.push((m.member.volume_id.clone(), gens));
        all.push(posts);
    }
    Ok(Holdings { members: out, newest_common: newest_common(&all).map(|(n, _)| n) })
}

/// Whether a generation may cut after the newest fence post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fence {
    /// When `reusable_fence` allows it.
    ReuseRecent,
    /// Always a new one: its number then marks where a series begins that
    /// holds no cut taken before (see the group's `seeded` state).
    New,
}

/// A generation just taken.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taken {
    /// Its fence post's number.
    pub number: u64,
    /// How long the fence posts took (each briefly holds its member's
    /// writes); zero when an earlier fence post served.
    pub fence: Duration,
    /// How long the group snapshot (the write barrier) took.
    pub pause: Duration,
}

/// Takes a generation on a primary group and prunes old ones: fence posts
/// on every member unless the newest one can serve another cut (see
/// `reusable_fence`), then the group snapshot. The fence posts are taken on
/// every member at once, so a writer is held once for them, not once per
/// member. Nothing here asks writers to quiesce (librbd's default for every
/// snapshot, which would pause each writer once per member and generation,
/// and freeze a filesystem behind `rbd-nbd --quiesce` every few seconds): a
/// fence post need only come before the cut in each member's write stream,
/// and the cut is crash-consistent by the members' exclusive locks alone.
pub(crate) fn take(
    group_io: &IoCtx,
    rbd_group: &str,
    members: &[OpenMember<'_>],
    interval: Duration,
    post: Fence,
) -> Result<Taken, Error> {
    let images: Vec<&Image<'_>> = members.iter().map(|m| &m.image).collect();
    let posts: Vec<_> = images.iter().map(|i| cuts_of(i)).collect::<Result<_, _>>()?;
    let ours = group_io.group_snap_list(rbd_group).map_err(Error::ceph("cannot list group snapshots"))?;
    let age = |pre_id| {
        let at = images[0].snap_timestamp(pre_id).map_err(Error::ceph("cannot read a snapshot time"))?;
        Ok(Duration::from_secs((crate::unix_now() - at).max(0) as u64))
    };
    let fencing = Instant::now();
    let reused = match post {
        Fence::ReuseRecent => reusable_fence(&posts, &ours, age, interval)?,
        Fence::New => None,
    };
    let n = match reused {
        Some(n) => n,
        None => {
            let n = next_number(&posts);
            fence_all(&images, n)?;
            n
        }
    };
    let fence = fencing.elapsed();
    let started = Instant::now();
    let cut = ours.iter().filter(|name| generation_of(name) == Some(n)).count() + 1;
    let name = format!("{GEN_PREFIX}{n}.{cut}");
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
    prune(group_io, rbd_group, &ours, &images, n, retention(interval))?;
    Ok(Taken { number: n, fence, pause })
}

/// Fence post n on every member; one already there is kept.
fn fence_all(images: &[&Image<'_>], n: u64) -> Result<(), Error> {
    let pre = format!("{PRE_PREFIX}{n}");
    for (image, made) in images.iter().zip(Image::snap_create_unquiesced_each(images, &pre)) {
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
    Ok(())
}

/// Keeps the newest KEEP fence posts and their cuts; removes older group
/// snapshots of this site's group (`ours`: as listed before this
/// generation's), older fence posts, and group snapshots replayed from the
/// peer's group before a failover (their group does not exist here).
fn prune(
    group_io: &IoCtx,
    rbd_group: &str,
    ours: &[String],
    images: &[&Image<'_>],
    newest: u64,
    keep: Duration,
) -> Result<(), Error> {
    let oldest_kept = oldest_kept(images[0], newest, keep)?;
    if oldest_kept <= 1 {
        return Ok(());
    }
    for name in ours {
        if let Some(n) = generation_of(name)
            && n < oldest_kept
            && let Err(e) = group_io.group_snap_remove(rbd_group, name)
        {
            warn!(group = rbd_group, snap = %name, error = %e, "could not prune a group snapshot");
        }
    }
    for image in images {
        let snaps = image.snapshots().map_err(Error::ceph(format!("cannot list the snapshots of {}", image.name())))?;
        let Some(kept_pre) = fence_posts(&snaps).get(&oldest_kept).map(|p| p.pre_id) else { continue };
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

/// The oldest fence post to keep (see `oldest_to_keep`), by the first
/// member's.
fn oldest_kept(first: &Image<'_>, newest: u64, keep: Duration) -> Result<u64, Error> {
    let mut taken = Vec::new();
    for (n, post) in cuts_of(first)? {
        taken.push((n, first.snap_timestamp(post.pre_id).map_err(Error::ceph("cannot read a snapshot time"))?));
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
        let at_cut = open_at(m.member, cut.group_snap_id, n)?;
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
    fn group_snapshots_belong_to_the_fence_post_before_them() {
        let posts = fence_posts(&[
            user(4, "rbd-addons.pre.1"),
            group(6, "aaa"),
            group(8, "bbb"),
            user(9, "rbd-addons.pre.2"),
            user(10, "rbd-addons.pre.3"),
            group(12, "ccc"),
            user(13, "someone-elses"),
        ]);
        let keys = |n: u64| posts[&n].cuts.iter().map(|c| c.key.as_str()).collect::<Vec<_>>();
        assert_eq!(keys(1), ["aaa", "bbb"]);
        assert_eq!(posts[&1].cuts[1].snap_id, 8);
        assert!(keys(2).is_empty(), "fence post 2's group snapshot never came");
        assert_eq!(keys(3), ["ccc"]);
        assert_eq!(next_number(&[posts]), 4);
    }

    #[test]
    fn group_snapshot_names_carry_their_fence_post() {
        assert_eq!(generation_of("rbd-addons.gen.12.3"), Some(12));
        assert_eq!(generation_of("rbd-addons.gen.7"), Some(7), "one cut a fence post, as before");
        assert_eq!(generation_of("rbd-addons.gen.x.1"), None);
        assert_eq!(generation_of("groupsnapshot-1"), None);
    }

    #[test]
    fn a_fence_post_serves_a_few_recent_cuts_of_this_site() {
        let posts = |snaps: &[SnapInfo]| vec![fence_posts(snaps), fence_posts(snaps)];
        let one = posts(&[user(1, "rbd-addons.pre.5"), group(2, "g1")]);
        let ours = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let young = |_| Ok(Duration::from_secs(5));
        let interval = Duration::from_secs(10);
        assert_eq!(reusable_fence(&one, &ours(&["rbd-addons.gen.5.1"]), young, interval).unwrap(), Some(5));
        // Served enough cuts, too old, or begun by the peer's group (replayed
        // before a failover): a new fence post.
        let full = ours(&["rbd-addons.gen.5.1", "rbd-addons.gen.5.2", "rbd-addons.gen.5.3", "rbd-addons.gen.5.4"]);
        assert_eq!(reusable_fence(&one, &full, young, interval).unwrap(), None);
        let old = |_| Ok(Duration::from_secs(41));
        assert_eq!(reusable_fence(&one, &ours(&["rbd-addons.gen.5.1"]), old, interval).unwrap(), None);
        assert_eq!(reusable_fence(&one, &ours(&["rbd-addons.gen.4.1"]), young, interval).unwrap(), None);
        // A member without it (one that joined since): a new fence post.
        let joined = vec![fence_posts(&[user(1, "rbd-addons.pre.5"), group(2, "g1")]), BTreeMap::new()];
        assert_eq!(reusable_fence(&joined, &ours(&["rbd-addons.gen.5.1"]), young, interval).unwrap(), None);
        assert_eq!(reusable_fence(&[], &[], young, interval).unwrap(), None);
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
    fn the_newest_cut_every_member_holds_wins() {
        let a = fence_posts(&[
            user(1, "rbd-addons.pre.1"),
            group(2, "g1"),
            user(3, "rbd-addons.pre.2"),
            group(4, "g2"),
            group(5, "g3"),
        ]);
        // b has replayed fence post 2 and its first cut, not the second.
        let b = fence_posts(&[
            user(11, "rbd-addons.pre.1"),
            group(12, "g1"),
            user(13, "rbd-addons.pre.2"),
            group(14, "g2"),
        ]);
        let (n, cuts) = newest_common(&[a.clone(), b]).unwrap();
        assert_eq!(n, 2);
        assert_eq!(cuts, [MemberCut { pre_id: 3, group_snap_id: 4 }, MemberCut { pre_id: 13, group_snap_id: 14 }]);
        let (_, cuts) = newest_common(&[a.clone(), a.clone()]).unwrap();
        assert_eq!(cuts[0].group_snap_id, 5);
        // Only fence post 2 so far: the cut before it.
        let c = fence_posts(&[user(1, "rbd-addons.pre.1"), group(2, "g1"), user(3, "rbd-addons.pre.2")]);
        assert_eq!(newest_common(&[a.clone(), c]).unwrap().0, 1);
        // A group snapshot that is not the same one on every member is no cut.
        let d = fence_posts(&[user(1, "rbd-addons.pre.1"), group(2, "other")]);
        assert_eq!(newest_common(&[a, d]), None);
        assert_eq!(newest_common(&[]), None);
        assert_eq!(next_number(&[]), 1);
    }
}
