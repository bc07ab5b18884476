//! Consistency generations: generation n is a user snapshot `rbd-addons.pre.n`
//! on every member (a fence post) followed by one group snapshot
//! `rbd-addons.gen.n` (the crash-consistent cut: librbd pauses every member's
//! writer while it snapshots). In journal mirroring both replay on the peer at
//! the same place in each member's write stream, so after a failover every
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

pub const PRE_PREFIX: &str = "rbd-addons.pre.";
pub const GEN_PREFIX: &str = "rbd-addons.gen.";
/// Generations kept on the primary (and, through replay, on the peer).
pub const KEEP: usize = 3;
/// Revert copies at most this much per read/write.
const CHUNK: u64 = 4 << 20;

/// Where one generation stands on one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCut {
    pub pre_id: u64,
    /// The member's snapshot of the group snapshot, if it has arrived.
    pub group_snap_id: Option<u64>,
    /// The group snapshot's own ID (the last part of `.group.<pool>_<group>_<snap>`),
    /// equal on every member of one group snapshot.
    pub group_snap_key: Option<String>,
}

/// The generations one member holds, by number.
pub fn member_cuts(snaps: &[SnapInfo]) -> BTreeMap<u64, MemberCut> {
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
pub fn newest_common(per_member: &[BTreeMap<u64, MemberCut>]) -> Option<(u64, Vec<MemberCut>)> {
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
pub fn next_number(per_member: &[BTreeMap<u64, MemberCut>]) -> u64 {
    per_member.iter().filter_map(|c| c.keys().next_back()).max().map_or(1, |n| n + 1)
}

pub fn cuts_of(image: &Image<'_>) -> Result<BTreeMap<u64, MemberCut>, Error> {
    Ok(member_cuts(&image.snapshots().map_err(Error::ceph(format!("cannot list the snapshots of {}", image.name())))?))
}

/// One generation as a member holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub number: u64,
    /// Unix seconds of the fence post.
    pub taken: i64,
    /// Whether the member holds the group snapshot too (the cut itself).
    pub complete: bool,
}

/// The generations each member holds, oldest first, for operators.
pub fn held(members: &[OpenMember<'_>]) -> Result<Vec<(String, Vec<Held>)>, Error> {
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
pub struct Taken {
    pub number: u64,
    /// How long the group snapshot (the write barrier) took.
    pub pause: Duration,
}

/// Takes generation n on a primary group and prunes old ones. Idempotent per
/// number: an existing fence post or group snapshot is reused.
pub fn take(group_io: &IoCtx, rbd_group: &str, members: &[OpenMember<'_>]) -> Result<Taken, Error> {
    let images: Vec<&Image<'_>> = members.iter().map(|m| &m.image).collect();
    let cuts: Vec<_> = images.iter().map(|i| cuts_of(i)).collect::<Result<_, _>>()?;
    let n = next_number(&cuts);
    let pre = format!("{PRE_PREFIX}{n}");
    for image in &images {
        match image.snap_create(&pre) {
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
    let started = Instant::now();
    group_io
        .group_snap_create(rbd_group, &format!("{GEN_PREFIX}{n}"))
        .or_else(|e| if e.is(libc::EEXIST) { Ok(()) } else { Err(e) })
        .map_err(Error::ceph(format!("cannot take group snapshot {GEN_PREFIX}{n} of {rbd_group}")))?;
    let pause = started.elapsed();
    prune(group_io, rbd_group, &images, n)?;
    Ok(Taken { number: n, pause })
}

/// Keeps the newest KEEP generations; removes older group snapshots of this
/// site's group, older fence posts, and group snapshots replayed from the
/// peer's group before a failover (their group does not exist here).
fn prune(group_io: &IoCtx, rbd_group: &str, images: &[&Image<'_>], newest: u64) -> Result<(), Error> {
    let Some(oldest_kept) = newest.checked_sub(KEEP as u64 - 1).filter(|n| *n > 0) else { return Ok(()) };
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

/// Removes every generation of the group (on Disable).
pub fn remove_all(group_io: &IoCtx, rbd_group: &str, members: &[OpenMember<'_>]) -> Result<(), Error> {
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
pub struct Reverted {
    pub generation: u64,
    pub bytes: u64,
}

/// Brings every member back to generation `n`: the extents changed since its
/// fence post are read from the group snapshot and written to the member's
/// writable head (`heads`, in member order). The members must be primary.
/// Safe to repeat.
pub fn revert(members: &[OpenMember<'_>], heads: &[Image<'_>], n: u64, cuts: &[MemberCut]) -> Result<Reverted, Error> {
    let mut bytes = 0;
    for ((m, head), cut) in members.iter().zip(heads).zip(cuts) {
        let Some(snap_id) = cut.group_snap_id else { continue };
        bytes += revert_member(m.member, head, n, snap_id)?;
    }
    info!(generation = n, bytes, members = members.len(), "members reverted to their newest common generation");
    Ok(Reverted { generation: n, bytes })
}

fn revert_member(m: &Member, head: &Image<'_>, n: u64, snap_id: u64) -> Result<u64, Error> {
    // A second handle, set to the group snapshot: the head keeps writing.
    let at_cut = Image::open_read_only(&m.vol.io, &m.vol.image)
        .map_err(Error::ceph(format!("cannot open member {} to revert it", m.vol.spec())))?;
    at_cut.read_snapshot(snap_id).map_err(Error::ceph(format!("cannot read generation {n} of {}", m.vol.spec())))?;
    let pre = format!("{PRE_PREFIX}{n}");
    let extents = head.changed_since(&pre).map_err(Error::ceph(format!("cannot diff {} since {pre}", m.vol.spec())))?;
    let mut bytes = 0;
    let mut buf = Vec::new();
    for e in extents {
        let mut offset = e.offset;
        let end = e.offset + e.len;
        while offset < end {
            let len = (end - offset).min(CHUNK) as usize;
            buf.resize(len, 0);
            at_cut.read_at(offset, &mut buf).map_err(revert_err(m))?;
            head.write_at(offset, &buf).map_err(revert_err(m))?;
            offset += len as u64;
            bytes += len as u64;
        }
    }
    head.flush().map_err(revert_err(m))?;
    Ok(bytes)
}

/// How long a just-promoted member may stay read-only: this site's rbd-mirror
/// lets go of the image (its exclusive lock) once its replayer has stopped,
/// usually within 0.1 s. After a forced promote with the peer site gone, the
/// replayer's stop waits for its operations on the lost peer to time out
/// (`rados_osd_op_timeout` of rbd-mirror's peer connection; see the README).
const WRITABLE_SETTLE: Duration = Duration::from_secs(45);

/// Opens the member's head for writing once it accepts writes: a flush of an
/// empty write set does not take the lock, so probe with a rewrite of the
/// first sector's own content.
pub(super) fn writable_head(m: &Member) -> Result<Image<'_>, Error> {
    let deadline = Instant::now() + WRITABLE_SETTLE;
    let mut pause = Duration::from_millis(50);
    loop {
        let head = Image::open(&m.vol.io, &m.vol.image)
            .map_err(Error::ceph(format!("cannot open member {} to revert it", m.vol.spec())))?;
        let mut sector = vec![0u8; 512];
        // Both the read and the write may meet the lock still held elsewhere.
        match head.read_at(0, &mut sector).and_then(|()| head.write_at(0, &sector)) {
            Ok(()) => return Ok(head),
            Err(e) if e.is(libc::EROFS) && Instant::now() + pause < deadline => {
                drop(head);
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) if e.is(libc::EROFS) => {
                return Err(Error::NotReady(format!(
                    "member {} is still read-only after its promote: this site's rbd-mirror still holds it \
                     (after a site loss it lets go once its operations on the lost site time out); retry",
                    m.vol.spec()
                )));
            }
            Err(e) => return Err(revert_err(m)(e)),
        }
    }
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
