//! Takes consistency generations of primary journal-mode groups at their
//! interval. The server holds no keyring: a group is watched with the
//! credentials of the last call about it (the controller asks for replication
//! info every minute or so, which keeps the watch alive across restarts).
//!
//! Several servers may watch one group (replicas, or both sites' servers in
//! a test). Only the holder of a RADOS lock on the group's state object takes
//! generations, and whether one is due is read from the newest fence post's
//! time, so a new holder carries on where the last one stopped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::generations::{self, Fence};
use super::replicate::GenerationTimes;
use super::{Group, OpenMember, find, members_unguarded, open_members, state_object};
use crate::Error;
use crate::ceph::{MirrorImageMode, SiteState};
use crate::cephcsi::{Credentials, CsiId, Resolver};
use crate::exec::Executor;

const LOCK_NAME: &str = "rbd-addons.generations";
/// How often the watch list is looked at.
const TICK: Duration = Duration::from_millis(500);
/// How often a group whose peer does not replay every member yet is looked at.
const SEED_POLL: Duration = Duration::from_secs(2);
/// A watch not refreshed by any call for this long is dropped.
const WATCH_EXPIRY: Duration = Duration::from_secs(3600);

struct Watch {
    /// The group ID as the caller gave it (also the guard key of its RPCs).
    group_id: String,
    id: CsiId,
    creds: Credentials,
    next: Instant,
    refreshed: Instant,
}

pub(crate) struct Scheduler {
    watches: Mutex<HashMap<String, Watch>>,
    /// Identifies this server as a lock holder.
    cookie: String,
    /// The generations' times Info answers from, kept listed by each look.
    times: Arc<GenerationTimes>,
}

/// What one look at a group found.
enum Outcome {
    /// Look again after this long.
    Next(Duration),
    /// Not a primary journal-mode group here (any more).
    Forget,
}

impl Scheduler {
    pub(crate) fn new() -> Arc<Self> {
        let cookie = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_default().trim().to_owned();
        Arc::new(Self { watches: Mutex::new(HashMap::new()), cookie, times: Arc::new(GenerationTimes::new()) })
    }

    /// What Info reads the generations' times from.
    pub(crate) fn times(&self) -> Arc<GenerationTimes> {
        self.times.clone()
    }

    /// Starts (or refreshes) watching a group.
    pub(crate) fn watch(&self, group_id: &str, id: &CsiId, creds: &Credentials) {
        let now = Instant::now();
        let mut w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(id.uuid.clone())
            .and_modify(|e| {
                e.creds = creds.clone();
                e.refreshed = now;
            })
            .or_insert_with(|| Watch {
                group_id: group_id.to_owned(),
                id: id.clone(),
                creds: creds.clone(),
                next: now,
                refreshed: now,
            });
    }

    /// Runs until the runtime stops.
    pub(crate) fn spawn(self: Arc<Self>, exec: Arc<Executor>, resolver: Arc<Resolver>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                let now = Instant::now();
                let due: Vec<(String, String, CsiId, Credentials)> = {
                    let mut w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
                    w.retain(|_, e| now.duration_since(e.refreshed) < WATCH_EXPIRY);
                    w.iter()
                        .filter(|(_, e)| e.next <= now)
                        .map(|(k, e)| (k.clone(), e.group_id.clone(), e.id.clone(), e.creds.clone()))
                        .collect()
                };
                for (uuid, group_id, id, creds) in due {
                    let this = self.clone();
                    let (exec, resolver) = (exec.clone(), resolver.clone());
                    let resolver_for_errors = resolver.clone();
                    // Mark it as not due while it runs, so a slow look is not
                    // started twice.
                    this.reschedule(&uuid, Duration::from_secs(3600));
                    tokio::spawn(async move {
                        let (cookie, times) = (this.cookie.clone(), this.times.clone());
                        let key = super::generations_key(&id);
                        let r = exec.run(&key, move || look(&resolver, &times, &id, &creds, &cookie)).await;
                        match r {
                            Ok(Outcome::Next(after)) => this.reschedule(&uuid, after),
                            Ok(Outcome::Forget) => {
                                this.watches.lock().unwrap_or_else(|p| p.into_inner()).remove(&uuid);
                            }
                            // Busy with an RPC, or a transient failure: soon again.
                            Err(Error::Exec(_)) => this.reschedule(&uuid, Duration::from_secs(1)),
                            Err(e) => {
                                warn!(group = group_id, error = %e, "could not take a consistency generation");
                                e.forget_blocklisted_client(&resolver_for_errors);
                                this.reschedule(&uuid, Duration::from_secs(5));
                            }
                        }
                    });
                }
            }
        })
    }

    fn reschedule(&self, uuid: &str, after: Duration) {
        if let Some(e) = self.watches.lock().unwrap_or_else(|p| p.into_inner()).get_mut(uuid) {
            e.next = Instant::now() + after;
        }
    }
}

fn look(
    resolver: &Resolver,
    times: &GenerationTimes,
    id: &CsiId,
    creds: &Credentials,
    cookie: &str,
) -> Result<Outcome, Error> {
    let group = match find(resolver, id, creds) {
        Ok(g) => g,
        Err(Error::Missing(_)) => return Ok(Outcome::Forget),
        Err(e) => return Err(e),
    };
    if super::replicate::promote_unfinished(&group)? {
        // Taken now, a generation would record the members' unreverted
        // state as a cut, and the promote's retry would revert to it.
        return Ok(Outcome::Next(Duration::from_secs(1)));
    }
    let interval = super::replicate::interval_of(&group)?;
    let members = members_unguarded(resolver, &group, creds)?;
    let members = open_members(&members)?;
    if members.is_empty() || !all_primary_journal(&members) {
        return Ok(Outcome::Forget);
    }
    let lease = (interval * 3).clamp(Duration::from_secs(30), Duration::from_secs(600));
    match group.io.lock_exclusive(&state_object(group.uuid()), LOCK_NAME, cookie, lease.as_secs()) {
        Ok(()) => {}
        // Another server takes this group's generations.
        Err(e) if e.is(libc::EBUSY) || e.is(libc::EEXIST) => return Ok(Outcome::Next(interval)),
        Err(e) => return Err(Error::ceph("cannot lock the group's state")(e)),
    }
    let at = crate::unix_now();
    let (next, seed) = generation_due(&group, &members, interval)?;
    // Info lists the generations only when a peer report is newer than the
    // last listing; listed here after each look, it seldom needs to.
    if let Err(e) = times.list(&group, members[0].member, seed, at) {
        debug!(group = %group.id, error = %e, "could not list the generations for Info");
    }
    Ok(Outcome::Next(next))
}

/// Takes a generation if one is due; when to look again, and the group's
/// seed (see `replicate::seed`) after the look.
fn generation_due(
    group: &Group,
    members: &[OpenMember<'_>],
    interval: Duration,
) -> Result<(Duration, Option<u64>), Error> {
    let seed = super::replicate::seed(group)?;
    let seeded = seed.is_some();
    if !seeded && peer_replays_all(members)? {
        // Until the peer replays every member, no generation reaches it as a
        // cut (its initial sync copies no group snapshot): take one as soon
        // as it does, written to or not, on a fence post of its own.
        let taken = super::replicate::take_generation(group, members, Fence::New)?;
        super::replicate::mark_seeded(group, taken.number)?;
        info!(group = %group.id, generation = taken.number, "first generation since the peer replays every member");
        return Ok((interval, Some(taken.number)));
    }
    // Not seeded yet: look again soon.
    let next = if seeded { interval } else { SEED_POLL.min(interval) };
    let age = newest_age(members)?;
    if let Some(age) = age
        && age < interval
    {
        return Ok(((interval - age).min(next), seed));
    }
    if unchanged_since_newest(members)? {
        // Nothing written since the last cut: another would add journal
        // traffic (and keep the peer from ever reporting itself caught up)
        // without moving the recovery point.
        return Ok((next, seed));
    }
    let taken = super::replicate::take_generation(group, members, Fence::ReuseRecent)?;
    debug!(group = %group.id, generation = taken.number, "scheduled generation taken");
    Ok((next, seed))
}

/// Whether the peer's rbd-mirror reports every member replaying (its
/// initial sync done).
fn peer_replays_all(members: &[OpenMember<'_>]) -> Result<bool, Error> {
    for m in members {
        let status = m.image.mirror_global_status().map_err(Error::ceph("cannot read the mirroring status"))?;
        if !status.remotes().any(|s| s.up && s.state == SiteState::Replaying) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn all_primary_journal(members: &[OpenMember<'_>]) -> bool {
    members.iter().all(|m| m.is_primary() && m.mode == Some(MirrorImageMode::Journal))
}

/// Whether no member has been written since the newest fence post, which
/// has a cut after it. (librbd diffs only from a user snapshot: writes
/// between the fence post and the newest cut count too, so a group that
/// has just gone quiet takes a cut or a few more, until the next fence
/// post.)
fn unchanged_since_newest(members: &[OpenMember<'_>]) -> Result<bool, Error> {
    for m in members {
        let image = &m.image;
        let posts = generations::cuts_of(image)?;
        let Some((n, post)) = posts.iter().next_back() else { return Ok(false) };
        if post.cuts.is_empty() {
            return Ok(false);
        }
        let pre = format!("{}{n}", generations::PRE_PREFIX);
        let changed = image.changed_since(&pre).map_err(Error::ceph("cannot diff a member"))?;
        if !changed.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// How long ago the newest generation was taken (on the first member): its
/// cut, or its fence post while the cut is missing.
fn newest_age(members: &[OpenMember<'_>]) -> Result<Option<Duration>, Error> {
    let image = &members[0].image;
    let posts = generations::cuts_of(image)?;
    let Some(post) = posts.values().next_back() else { return Ok(None) };
    let newest = post.cuts.last().map_or(post.pre_id, |c| c.snap_id);
    let ts = image.snap_timestamp(newest).map_err(Error::ceph("cannot read a snapshot time"))?;
    Ok(Some(Duration::from_secs((crate::unix_now() - ts).max(0) as u64)))
}
