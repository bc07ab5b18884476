//! The six replication RPCs for a volume group. Each acts on every member and
//! is all-or-nothing from the caller's view: a member that fails is named in
//! the error and a retry finishes the job, because every step is idempotent
//! and whatever must survive a crash (the mode, an unfinished promote) is kept
//! in RADOS on this site, never only in memory.
//!
//! In journal mode the group is crash-consistent across members: generations
//! are taken while it is primary and at demote, and a promote first brings
//! every member back to the newest generation all of them received.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::generations::{self, Fence, Reverted, Taken};
use super::{
    Group, Member, OpenMember, ensure_rbd_group, index, link, on_member, open_members, sign, state_object, tag,
};
use crate::Error;
use crate::ceph::{Image, IoCtx, MirrorImageMode};
use crate::replication::{self, DisableParams, EnableParams, Health, Schedule, StatusCache};

const INTERVAL_KEY: &str = "generation-interval";
/// Set before the first member is promoted, cleared once every member is
/// primary and reverted: a promote interrupted in between is finished by the
/// next call, revert included.
const PROMOTING_KEY: &str = "promoting";
/// The fence post number of the first generation taken once the peer
/// replays every member (a new fence post, so every cut after it is one of
/// that generation or later): the peer's initial image sync copies fence
/// posts but no group snapshot, so only cuts from it on can be a cut there.
/// Cleared when this site's role changes and when a member joins (the peer
/// syncs the newcomer from scratch).
const SEEDED_KEY: &str = "seeded";

/// The group parameter for how often a primary group takes a generation
/// (its RPO in journal mode).
pub(crate) const GENERATION_INTERVAL: &str = "generationInterval";
/// 10 s, set from a measurement (docs/performance.md, `scripts/bench.sh`):
/// at 5 s a generation held the writers of a 3-member group 4.3 % of the
/// time; at 10 s the group's RPO is still seconds (median and max within the
/// 10 s / 15 s goals) at half that cost.
pub(super) const DEFAULT_GENERATION_INTERVAL: Duration = Duration::from_secs(10);

/// How often generations are taken: `<n>s|m|h`, at least one second.
pub(crate) fn parse_interval(params: &HashMap<String, String>) -> Result<Option<Duration>, Error> {
    let Some(v) = params.get(GENERATION_INTERVAL) else { return Ok(None) };
    let bad = || {
        Error::Malformed(format!(
            "parameter {GENERATION_INTERVAL} is {v:?}; use a whole number of seconds, minutes or hours such as \"30s\" or \"5m\""
        ))
    };
    let (digits, unit) = v.split_at(v.len().saturating_sub(1));
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if secs == 0 || secs > 7 * 24 * 3600 {
        return Err(bad());
    }
    Ok(Some(Duration::from_secs(secs)))
}

fn read_state(io: &IoCtx, uuid: &str) -> Result<HashMap<String, String>, Error> {
    match io.omap_get(&state_object(uuid), &[INTERVAL_KEY, PROMOTING_KEY, SEEDED_KEY]) {
        Ok(v) => Ok(v.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())).collect()),
        Err(e) if e.is(libc::ENOENT) => Ok(HashMap::new()),
        Err(e) => Err(Error::ceph("cannot read the group's state")(e)),
    }
}

fn write_state(io: &IoCtx, uuid: &str, pairs: &[(&str, &str)]) -> Result<(), Error> {
    let raw: Vec<(&str, &[u8])> = pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    io.omap_set(&state_object(uuid), &raw).map_err(Error::ceph("cannot record the group's state"))
}

fn clear_state(io: &IoCtx, uuid: &str, keys: &[&str]) -> Result<(), Error> {
    match io.omap_rm_keys(&state_object(uuid), keys) {
        Ok(()) => Ok(()),
        Err(e) if e.is(libc::ENOENT) => Ok(()),
        Err(e) => Err(Error::ceph("cannot record the group's state")(e)),
    }
}

/// The generation interval recorded for the group, else the default.
pub(super) fn interval_of(group: &Group) -> Result<Duration, Error> {
    let state = read_state(&group.io, group.uuid())?;
    Ok(state.get(INTERVAL_KEY).and_then(|s| s.parse().ok()).map_or(DEFAULT_GENERATION_INTERVAL, Duration::from_secs))
}

fn require_members(group: &Group, members: &[Member]) -> Result<(), Error> {
    if members.is_empty() {
        return Err(Error::WrongState(format!(
            "volume group {} has no members; add volumes before replicating it",
            group.id
        )));
    }
    Ok(())
}

/// The mirroring mode the members actually use (the first member's).
fn members_mode(members: &[OpenMember<'_>]) -> Option<MirrorImageMode> {
    members.first().and_then(|m| m.mode)
}

pub(crate) fn enable(
    group: &Group,
    members: &[Member],
    params: &EnableParams,
    interval: Option<Duration>,
) -> Result<(), Error> {
    require_members(group, members)?;
    for m in members {
        replication::enable(&m.vol, params).map_err(on_member(m))?;
    }
    let opened = open_members(members)?;
    let signature = index::signature(&group.member_ids);
    for m in &opened {
        tag(&m.image, group.uuid(), &m.member.volume_id).map_err(on_member(m.member))?;
        sign(&m.image, &signature).map_err(on_member(m.member))?;
    }
    let secs = interval.unwrap_or(DEFAULT_GENERATION_INTERVAL).as_secs().to_string();
    write_state(&group.io, group.uuid(), &[(INTERVAL_KEY, &secs)])?;
    match params.mode {
        MirrorImageMode::Journal => {
            if opened.iter().all(OpenMember::is_primary) {
                ensure_rbd_group_members(group, &opened)?;
                take_generation(group, &opened, Fence::ReuseRecent)?;
            }
        }
        MirrorImageMode::Snapshot => warn!(
            group = %group.id,
            "snapshot mirroring replicates each member on its own: the group is NOT crash-consistent across volumes; use mirroringMode=journal"
        ),
    }
    info!(group = %group.id, members = members.len(), mode = params.mode.as_str(), "group replication enabled");
    Ok(())
}

/// The RBD group on this site holds every member: after a failover the
/// group exists only where it was created, and a resync re-creates a member's
/// image outside any group.
fn ensure_rbd_group_members(group: &Group, members: &[OpenMember<'_>]) -> Result<(), Error> {
    ensure_rbd_group(&group.io, &group.rbd_group)?;
    for m in members {
        link(group, m.member, &m.image).map_err(on_member(m.member))?;
    }
    Ok(())
}

/// Takes one generation now (the group must be primary here, in journal mode).
pub(crate) fn take_generation(group: &Group, members: &[OpenMember<'_>], post: Fence) -> Result<Taken, Error> {
    let taken = generations::take(&group.io, &group.rbd_group, members, interval_of(group)?, post)?;
    info!(group = %group.id, generation = taken.number, fence_ms = taken.fence.as_millis() as u64,
        pause_ms = taken.pause.as_millis() as u64, "consistency generation taken");
    Ok(taken)
}

pub(crate) fn disable(group: &Group, members: &[Member], params: &DisableParams) -> Result<(), Error> {
    // A member whose image is gone has nothing left to disable; answering
    // NOT_FOUND for it would tell the controller the whole group is done.
    let mut present = Vec::with_capacity(members.len());
    for m in members {
        if m.vol.image_exists().map_err(Error::ceph("cannot read the pool's image directory")).map_err(on_member(m))? {
            present.push(m);
        }
    }
    let opened = open_members(present.iter().copied())?;
    let mode = opened.iter().find_map(|m| m.mode);
    if mode == Some(MirrorImageMode::Journal) && opened.iter().all(OpenMember::is_primary) {
        generations::remove_all(&group.io, &group.rbd_group, &opened)?;
    }
    drop(opened);
    for m in &present {
        replication::disable(&m.vol, params).map_err(on_member(m))?;
    }
    clear_state(&group.io, group.uuid(), &[INTERVAL_KEY, PROMOTING_KEY, SEEDED_KEY])?;
    info!(group = %group.id, members = present.len(), "group replication disabled");
    Ok(())
}

/// Demote every member; without `force`, only once the peer holds a copy of
/// every primary member, checked for all before any is touched, so a refusal
/// changes nothing.
pub(crate) fn demote(group: &Group, members: &[Member], force: bool) -> Result<(), Error> {
    require_members(group, members)?;
    let opened = open_members(members)?;
    if !opened.iter().any(OpenMember::is_primary) {
        return Ok(());
    }
    if !force {
        let deadline = Instant::now() + replication::PEER_REPORT_WAIT;
        for m in opened.iter().filter(|m| m.is_primary()) {
            replication::require_peer_copy(&m.image, &m.member.vol, deadline).map_err(on_member(m.member))?;
        }
    }
    // The last cut before the peer takes over: with writers stopped it holds
    // everything, so a planned failover loses nothing. Only while every member
    // is still primary; a retry after a partial demote already has it.
    if opened.iter().all(OpenMember::is_primary) && members_mode(&opened) == Some(MirrorImageMode::Journal) {
        ensure_rbd_group_members(group, &opened)?;
        take_generation(group, &opened, Fence::ReuseRecent)?;
    }
    // Once this site is primary again, its peer bootstraps anew.
    clear_state(&group.io, group.uuid(), &[SEEDED_KEY])?;
    for m in &opened {
        // Every member's peer copy was checked above.
        replication::demote_image(&m.image, &m.member.vol, true).map_err(on_member(m.member))?;
    }
    info!(group = %group.id, force, "group demoted");
    Ok(())
}

/// What a group promote did, for the log and the caller.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Promoted {
    pub reverted: Option<Reverted>,
}

pub(crate) fn promote(
    group: &Group,
    members: &[Member],
    force: bool,
    schedule: Option<&Schedule>,
    interval: Option<Duration>,
) -> Result<Promoted, Error> {
    require_members(group, members)?;
    if force && group.record.is_none() {
        // A site lost mid-join may have mirrored a new member's tag before
        // any old member's new list: the index would not know it yet.
        let scanned = index::members_by_scan(&group.io, group.uuid())?;
        let mut known = group.member_ids.clone();
        known.sort();
        if scanned != known {
            return Err(Error::InProgress(format!(
                "the members of volume group {} on this site changed while it was looked up; retry",
                group.id
            )));
        }
    }
    let mut state = read_state(&group.io, group.uuid())?;
    let opened = open_members(members)?;
    if !opened.iter().all(OpenMember::is_primary) && !state.contains_key(PROMOTING_KEY) {
        write_state(&group.io, group.uuid(), &[(PROMOTING_KEY, "1")])?;
        state.insert(PROMOTING_KEY.into(), "1".into());
        // The old primary must bootstrap from this site before any
        // generation taken here can be a cut there.
        clear_state(&group.io, group.uuid(), &[SEEDED_KEY])?;
    }
    let since = Instant::now();
    if force {
        // All at once: after a site loss each waits seconds on the lost
        // site's watches (see `mirror_promote_forced_each`). What each
        // answered is not used: the loop below checks every member again
        // and answers for it, finding the promoted ones primary.
        let pending: Vec<&Image<'_>> = opened.iter().filter(|m| !m.is_primary()).map(|m| &m.image).collect();
        let promoted = Image::mirror_promote_forced_each(&pending).iter().filter(|r| r.is_ok()).count();
        info!(group = %group.id, promoted, of = pending.len(), ms = since.elapsed().as_millis() as u64,
            "members force-promoted at once");
    }
    for m in &opened {
        if !m.is_primary() {
            replication::promote_image(&m.image, &m.member.vol, force, schedule).map_err(on_member(m.member))?;
        } else if let Some(s) = schedule {
            // Already primary: (re)apply the schedule like a volume promote.
            replication::promote_image(&m.image, &m.member.vol, false, Some(s)).map_err(on_member(m.member))?;
        }
    }
    let mode = members_mode(&opened);
    let mut done = Promoted::default();
    if state.contains_key(PROMOTING_KEY) {
        if mode == Some(MirrorImageMode::Journal) {
            done.reverted = Some(revert_to_newest_common(group, &opened, force, since)?);
            ensure_rbd_group_members(group, &opened)?;
        }
        if let Some(i) = interval {
            write_state(&group.io, group.uuid(), &[(INTERVAL_KEY, &i.as_secs().to_string())])?;
        }
        clear_state(&group.io, group.uuid(), &[PROMOTING_KEY])?;
        if mode == Some(MirrorImageMode::Journal) {
            take_generation(group, &opened, Fence::ReuseRecent)?;
        }
        info!(group = %group.id, force, reverted_bytes = done.reverted.map_or(0, |r| r.bytes), "group promoted");
    } else if let Some(i) = interval {
        write_state(&group.io, group.uuid(), &[(INTERVAL_KEY, &i.as_secs().to_string())])?;
    }
    Ok(done)
}

/// Just promoted, a member may still be written by this site's rbd-mirror
/// (a replayer applying what it had fetched) until it lets go of the
/// member's lock. So first hold every member's lock, taking it from
/// rbd-mirror if `force` and it does not let go; only then read which
/// generation every member holds and revert to it, with nothing able to
/// write in between. The locks go when the heads are dropped, after the check.
fn revert_to_newest_common(
    group: &Group,
    members: &[OpenMember<'_>],
    force: bool,
    since: Instant,
) -> Result<Reverted, Error> {
    let vols: Vec<_> = members.iter().map(|m| &m.member.vol).collect();
    let heads = replication::hold_all(&vols, force, since)?;
    let cuts: Vec<_> = members
        .iter()
        .zip(&heads)
        .map(|(m, head)| generations::cuts_of(head).map_err(on_member(m.member)))
        .collect::<Result<_, _>>()?;
    match generations::newest_common(&cuts) {
        Some((n, member_cuts)) => generations::revert(members, &heads, n, &member_cuts),
        None => {
            let newest: Vec<String> = members
                .iter()
                .zip(&cuts)
                .map(|(m, c)| {
                    let complete = c.iter().rev().find(|(_, post)| !post.cuts.is_empty()).map(|(n, _)| *n);
                    format!(
                        "{}: {}",
                        m.member.volume_id,
                        complete.map_or("none".to_owned(), |n| format!("generation {n}"))
                    )
                })
                .collect();
            Err(Error::WrongState(format!(
                "no consistency generation of volume group {} reached every member on this site (newest complete \
                 generation per member: {}), so no instant is common to all of them. Its members are primary here as \
                 rbd-mirror left them, NOT reverted, and may show different instants. To use them as they are, \
                 disable the group's replication on this site and enable it again",
                group.id,
                newest.join("; ")
            )))
        }
    }
}

/// Whether a promote of the group is unfinished on this site (its members
/// are, or are being, promoted but not yet reverted): no generation may be
/// taken then, or it would record the members' unreverted state as a cut.
pub(super) fn promote_unfinished(group: &Group) -> Result<bool, Error> {
    Ok(read_state(&group.io, group.uuid())?.contains_key(PROMOTING_KEY))
}

/// The fence post from which on cuts were taken while the peer replayed
/// every member, if any was yet.
pub(super) fn seed(group: &Group) -> Result<Option<u64>, Error> {
    Ok(read_state(&group.io, group.uuid())?.get(SEEDED_KEY).and_then(|n| n.parse().ok()))
}

/// Records that generation `n`, on a new fence post, was taken while the
/// peer replayed every member.
pub(super) fn mark_seeded(group: &Group, n: u64) -> Result<(), Error> {
    write_state(&group.io, group.uuid(), &[(SEEDED_KEY, &n.to_string())])
}

/// A member joined: the peer holds no cut of it until it has synced it.
pub(super) fn unseed(group: &Group) -> Result<(), Error> {
    clear_state(&group.io, group.uuid(), &[SEEDED_KEY])
}

/// Every member must have a destination on the peer before any is given:
/// a partial map would let the caller rewrite some handles and not others.
pub(crate) fn require_destinations(group: &Group, members: &[Member]) -> Result<(), Error> {
    require_members(group, members)?;
    for m in members {
        replication::require_destination(&m.vol).map_err(on_member(m))?;
    }
    Ok(())
}

/// Resync of every member; ready only when every member is.
pub(crate) fn resync(members: &[Member], force: bool) -> Result<bool, Error> {
    let mut ready = true;
    for m in members {
        ready &= replication::resync(&m.vol, force).map_err(on_member(m))?;
    }
    Ok(ready)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupInfo {
    pub last_sync_time: i64,
    pub health: Health,
    pub status_message: String,
}

/// The newest point every member holds on the peer. In journal mode that is
/// the newest generation the peer had replayed on every member at its last
/// report; in snapshot mode the oldest member's last sync. The status is the
/// worst member's. At the cost of volume Info: every member's state from the
/// pool-wide view (`StatusCache`, with its freshness rule after our own role
/// changes), and in journal mode the generations' times from one listing of
/// one member's snapshots, reused while it covers the peer's sync.
pub(crate) fn info(
    group: &Group,
    members: &[Member],
    statuses: &Arc<StatusCache>,
    times: &GenerationTimes,
) -> Result<GroupInfo, Error> {
    require_members(group, members)?;
    let mut worst = (Health::Healthy, String::new());
    // Every member's peer holds everything up to this time (its last sync).
    let mut all_synced_until = i64::MAX;
    let mut mode = None;
    for m in members {
        let i = statuses.info(&m.vol).map_err(on_member(m))?;
        if rank(i.health) > rank(worst.0) || worst.1.is_empty() {
            worst = (i.health, format!("{}: {}", m.volume_id, i.status_message));
        }
        all_synced_until = all_synced_until.min(i.last_sync_time);
        // The first member's mode, as every other call reads it.
        mode.get_or_insert(i.mode);
    }
    let last_sync_time = match mode {
        Some(MirrorImageMode::Journal) => times.newest_before(group, &members[0], all_synced_until)?,
        _ => all_synced_until,
    };
    let message = match mode {
        Some(MirrorImageMode::Journal) => worst.1,
        _ => format!(
            "{} (snapshot mode: members are replicated one by one, NOT crash-consistent across volumes)",
            worst.1
        ),
    };
    Ok(GroupInfo { last_sync_time, health: worst.0, status_message: message })
}

/// The times of each group's generations as last listed, so that Info need
/// not list them again while the peer's last sync is older than that listing:
/// a generation taken since has a later time and cannot be the answer.
#[derive(Default)]
pub(crate) struct GenerationTimes {
    listed: Mutex<HashMap<String, Arc<Listed>>>,
}

pub(crate) struct Listed {
    /// Unix seconds when the listing began.
    at: i64,
    /// The group's seed then (see `SEEDED_KEY`); it changes only with the
    /// group's role (which forgets the listing) or its members (whose
    /// newcomer reports caught up after the change, so past `at`).
    seed: u64,
    /// Each cut's fence post number and time.
    cuts: Vec<(u64, i64)>,
}

impl GenerationTimes {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A call changed the group (its role, its generations): list anew.
    pub(crate) fn forget(&self, group_id: &str) {
        self.listed.lock().unwrap_or_else(|p| p.into_inner()).remove(group_id);
    }

    /// The time of the newest generation (group snapshot) the peer holds on
    /// every member, taken before `until`: from the last listing when it
    /// covers `until`, else listed anew.
    fn newest_before(&self, group: &Group, member: &Member, until: i64) -> Result<i64, Error> {
        let known = {
            let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
            listed.get(&group.id.uuid).filter(|l| until < l.at).map(|l| newest_held(&l.cuts, l.seed, until))
        };
        let newest = match known {
            Some(newest) => newest,
            None => {
                let l = self.relist(group, member)?.ok_or_else(|| {
                    Error::NoInfoYet(format!(
                        "no generation of group {} has reached the peer since it began replaying every member",
                        group.id
                    ))
                })?;
                newest_held(&l.cuts, l.seed, until)
            }
        };
        newest.ok_or_else(|| {
            Error::NoInfoYet(format!("the peer has not reported a complete generation of group {} yet", group.id))
        })
    }

    /// Lists the group's cuts from one member (every member holds every
    /// generation) and its seed, and keeps the listing; none while the group
    /// is not seeded: generations taken before the peer replayed every
    /// member (at Enable, say) exist here but not there, its initial sync
    /// copies no group snapshot (seen: Info named one no member on site-b
    /// had).
    fn relist(&self, group: &Group, member: &Member) -> Result<Option<Arc<Listed>>, Error> {
        let at = crate::unix_now();
        let seed = seed(group)?;
        self.list(group, member, seed, at)
    }

    /// `relist` with the seed the caller has just read (at `at` or later).
    pub(crate) fn list(
        &self,
        group: &Group,
        member: &Member,
        seed: Option<u64>,
        at: i64,
    ) -> Result<Option<Arc<Listed>>, Error> {
        let Some(seed) = seed else {
            self.forget(&group.id.uuid);
            return Ok(None);
        };
        let l = Arc::new(Listed { at, seed, cuts: generation_times(member)? });
        let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded like the metrics: a runaway caller cannot grow it.
        if listed.len() < crate::metrics::MAX_TRACKED || listed.contains_key(&group.id.uuid) {
            listed.insert(group.id.uuid.clone(), l.clone());
        }
        Ok(Some(l))
    }
}

/// The time of the newest cut from fence post `seed` on (the ones the peer
/// can hold), stamped before `until`. Both times are whole seconds: a
/// generation stamped in the very second the peer reported itself caught up
/// may have been taken after the report (seen: Info named a generation no
/// member held on the peer yet), so only an earlier second counts.
fn newest_held(cuts: &[(u64, i64)], seed: u64, until: i64) -> Option<i64> {
    cuts.iter().filter(|(n, t)| *n >= seed && *t < until).map(|(_, t)| *t).max()
}

/// Each cut (group snapshot) one member holds: its fence post and time.
fn generation_times(member: &Member) -> Result<Vec<(u64, i64)>, Error> {
    let image = Image::open_read_only(&member.vol.io, &member.vol.image)
        .map_err(|e| Error::Ceph { what: format!("cannot open member {}", member.vol.spec()), source: e })?;
    let mut cuts = Vec::new();
    for (n, post) in generations::cuts_of(&image)? {
        for cut in &post.cuts {
            match image.snap_timestamp(cut.snap_id) {
                Ok(ts) => cuts.push((n, ts)),
                // Pruned by a generation taken since the listing (a read takes
                // no key): an older cut is no answer anyway.
                Err(e) if e.is(libc::ENOENT) => {}
                Err(e) => return Err(Error::ceph("cannot read a snapshot time")(e)),
            }
        }
    }
    Ok(cuts)
}

fn rank(h: Health) -> u8 {
    match h {
        Health::Healthy => 0,
        Health::Unknown => 1,
        Health::Degraded => 2,
        Health::Error => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(v: &str) -> Result<Option<Duration>, Error> {
        parse_interval(&HashMap::from([(GENERATION_INTERVAL.to_owned(), v.to_owned())]))
    }

    #[test]
    fn generation_intervals() {
        assert_eq!(parse_interval(&HashMap::new()).unwrap(), None);
        assert_eq!(interval("30s").unwrap(), Some(Duration::from_secs(30)));
        assert_eq!(interval("5m").unwrap(), Some(Duration::from_secs(300)));
        assert_eq!(interval("2h").unwrap(), Some(Duration::from_secs(7200)));
        for bad in ["", "0s", "5", "m", "-1m", "1.5m", "5d", "9999999999999999999h", "200h"] {
            assert!(matches!(interval(bad), Err(Error::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_newest_generation_before_the_peers_sync() {
        let cuts = [(1, 100), (2, 160), (2, 190), (3, 220)];
        assert_eq!(newest_held(&cuts, 1, 200), Some(190));
        // Taken in the second of the report: perhaps after it.
        assert_eq!(newest_held(&cuts, 1, 220), Some(190));
        assert_eq!(newest_held(&cuts, 1, 99), None);
        assert_eq!(newest_held(&[], 1, 1_000), None);
    }

    #[test]
    fn cuts_before_the_seed_are_not_on_the_peer() {
        let cuts = [(1, 100), (1, 130), (2, 160), (2, 190)];
        assert_eq!(newest_held(&cuts, 2, 200), Some(190));
        // The peer reported before the seed: only pre-seed cuts are older.
        assert_eq!(newest_held(&cuts, 2, 150), None);
        assert_eq!(newest_held(&cuts, 3, 1_000), None);
    }

    #[test]
    fn the_worst_member_decides_the_health() {
        assert!(rank(Health::Error) > rank(Health::Degraded));
        assert!(rank(Health::Degraded) > rank(Health::Unknown));
        assert!(rank(Health::Unknown) > rank(Health::Healthy));
    }
}
