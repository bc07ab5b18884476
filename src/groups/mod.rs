//! Volume groups: the csi-addons VolumeGroup RPCs over RBD groups and
//! ceph-csi's group journal, and group replication, where the group fails over
//! as one crash-consistent unit through consistency generations.
//!
//! A group lives where it was created: the journal object names its members.
//! On the peer site nothing of it exists but the mirrored member images, so
//! every member carries image metadata (mirrored with the image) naming its
//! group and its own volume ID; the peer finds the members by that.

pub(crate) mod generations;
mod index;
mod membership;
mod replicate;
pub(crate) mod scheduler;
pub(crate) mod snapshots;

pub(crate) use membership::{CreateParams, GroupView, create, delete, get, list, modify};
pub(crate) use replicate::{
    GenerationTimes, GroupInfo, demote, disable, enable, info, parse_interval, promote, require_destinations, resync,
};

use crate::Error;
use crate::ceph::{AlreadyDone, CephError, Image, IoCtx, MirrorImageMode, MirrorInfo, MirrorState};
use crate::cephcsi::{self, Credentials, CsiId, ResolvedVolume, Resolver, group as journal};
use crate::exec::{Claims, KeyGuard};

/// Image metadata on every member: the group's UUID, and the member's own
/// volume ID (the handle the controller uses on both sites).
pub(crate) const GROUP_KEY: &str = "rbd-addons.group";
pub(crate) const VOLUME_ID_KEY: &str = "rbd-addons.volume-id";
/// The csi-addons controller's own default limit (`--max-group-pvc`).
pub(crate) const MAX_MEMBERS: usize = 100;
/// The RADOS object holding our per-site group state (mode, interval, an
/// unfinished promote); separate from ceph-csi's journal object, whose every
/// unknown key ceph-csi would take for a member.
pub(crate) fn state_object(uuid: &str) -> String {
    format!("rbd-addons.group.{uuid}")
}

/// One member volume, resolved on this site.
pub(crate) struct Member {
    /// The handle recorded when the member joined, named as the site that
    /// added it names it.
    pub volume_id: String,
    pub vol: ResolvedVolume,
}

impl Member {
    /// The member's handle as this site names it (this site's clusterID and
    /// pool ID, the same UUID): what a caller on this site holds, whichever
    /// site added the member.
    pub(crate) fn local_id(&self) -> Result<CsiId, Error> {
        let recorded = decode_member_id(&self.volume_id)?;
        Ok(CsiId { cluster_id: self.vol.cluster_id.clone(), pool_id: self.vol.io.pool_id(), uuid: recorded.uuid })
    }
}

/// A group as found on this site.
pub(crate) struct Group {
    pub id: CsiId,
    /// The pool holding the group (and its journal, on the site that made it).
    pub io: IoCtx,
    /// The clusterID (of this site's config.json) the pool was found under.
    pub cluster_id: String,
    pub rbd_group: String,
    /// ceph-csi's journal record: on the site that created the group only.
    pub record: Option<journal::GroupRecord>,
    pub member_ids: Vec<String>,
}

impl Group {
    pub(crate) fn uuid(&self) -> &str {
        &self.id.uuid
    }

    /// Whether an image's RBD group link (pool ID, group name) is this group's.
    fn is_rbd_group(&self, pool_id: i64, name: &str) -> bool {
        pool_id == self.io.pool_id() && name == self.rbd_group
    }
}

pub(crate) fn decode_group_id(id: &str) -> Result<CsiId, Error> {
    CsiId::decode(id).map_err(|e| Error::Malformed(format!("invalid volume group ID: it {e}")))
}

/// Finds a group on this site: by its journal where it was created, else by
/// its members' metadata (the peer site of a replicated group).
pub(crate) fn find(resolver: &Resolver, id: &CsiId, creds: &Credentials) -> Result<Group, Error> {
    let pools = resolver.group_pools(id, creds).map_err(not_found_as_group(id))?;
    // A candidate pool that these credentials may not read is another
    // pool that happens to carry the same ID on this site: not ours.
    let foreign = |e: &CephError| matches!(e.errno, libc::EPERM | libc::EACCES);
    for (cluster_id, io) in &pools {
        let record = match journal::read(io, &id.uuid) {
            Err(e) if foreign(&e) => continue,
            r => r.map_err(Error::ceph("cannot read the group's journal"))?,
        };
        if let Some(record) = record {
            if record.is_group_snapshot() {
                return Err(Error::Missing(format!("{id} is a volume group snapshot, not a volume group")));
            }
            let io = reopen(io)?;
            return Ok(Group {
                id: id.clone(),
                cluster_id: cluster_id.clone(),
                rbd_group: record.rbd_group.clone(),
                member_ids: record.members.clone(),
                record: Some(record),
                io,
            });
        }
    }
    for (cluster_id, io) in &pools {
        let members = match index::members(io, &id.uuid) {
            Err(Error::Ceph { source, .. }) if foreign(&source) => continue,
            r => r?,
        };
        if !members.is_empty() {
            let io = reopen(io)?;
            return Ok(Group {
                id: id.clone(),
                cluster_id: cluster_id.clone(),
                rbd_group: format!("{}{}", journal::DEFAULT_GROUP_PREFIX, id.uuid),
                record: None,
                member_ids: members,
                io,
            });
        }
    }
    Err(Error::Missing(format!("volume group {id} does not exist on this site")))
}

fn not_found_as_group(id: &CsiId) -> impl FnOnce(cephcsi::Error) -> Error + '_ {
    move |e| match e {
        cephcsi::Error::PoolNotFound { .. } => Error::Missing(format!("volume group {id}: {e}")),
        e => Error::Resolve(e),
    }
}

fn reopen(io: &IoCtx) -> Result<IoCtx, Error> {
    IoCtx::open(io.cluster(), io.pool_id(), io.namespace()).map_err(Error::ceph("cannot open the group's pool"))
}

/// The guard of a group's generations: held by the scheduler while it takes
/// one, and by every call that changes the group's roles, so a generation is
/// never taken while members are being demoted or promoted.
pub(crate) fn generations_key(id: &CsiId) -> String {
    format!("generations/{}", id.uuid)
}

/// Claims a guard that is only ever held briefly (a generation takes well
/// under a second), waiting for it rather than failing the caller.
pub(crate) fn claim_waiting(claims: &Claims, key: &str) -> Result<KeyGuard, Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match claims.claim(key) {
            Ok(g) => return Ok(g),
            Err(_) if std::time::Instant::now() < deadline => crate::exec::idle(std::time::Duration::from_millis(50)),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Resolves every member without guarding them (for the generation taker,
/// which changes no member's state but its snapshots).
pub(crate) fn members_unguarded(resolver: &Resolver, group: &Group, creds: &Credentials) -> Result<Vec<Member>, Error> {
    group.member_ids.iter().map(|v| resolve_member(resolver, v, creds)).collect()
}

/// Resolves every member and claims its volume guard, so a volume RPC on a
/// member while its group is worked on answers ABORTED.
pub(crate) fn resolve_members(
    resolver: &Resolver,
    group: &Group,
    creds: &Credentials,
    claims: &Claims,
) -> Result<(Vec<Member>, Vec<KeyGuard>), Error> {
    let mut guards = Vec::with_capacity(group.member_ids.len());
    let mut members = Vec::with_capacity(group.member_ids.len());
    for volume_id in &group.member_ids {
        guards.push(claims.claim(volume_id)?);
        members.push(resolve_group_member(resolver, group, volume_id, creds)?);
    }
    Ok((members, guards))
}

/// Resolves every member as `resolve_members` does, claiming none: for the
/// calls that only read.
pub(crate) fn resolve_members_unclaimed(
    resolver: &Resolver,
    group: &Group,
    creds: &Credentials,
) -> Result<Vec<Member>, Error> {
    group.member_ids.iter().map(|v| resolve_group_member(resolver, group, v, creds)).collect()
}

fn resolve_member(resolver: &Resolver, volume_id: &str, creds: &Credentials) -> Result<Member, Error> {
    let id = decode_member_id(volume_id)?;
    let vol = resolver.resolve(&id, creds)?;
    Ok(Member { volume_id: volume_id.to_owned(), vol })
}

fn decode_member_id(volume_id: &str) -> Result<CsiId, Error> {
    CsiId::decode(volume_id).map_err(|e| Error::Malformed(format!("member {volume_id:?}: invalid volume ID: it {e}")))
}

fn resolve_group_member(
    resolver: &Resolver,
    group: &Group,
    volume_id: &str,
    creds: &Credentials,
) -> Result<Member, Error> {
    let id = decode_member_id(volume_id)?;
    let direct = resolver.resolve(&id, creds);
    let found = |v: &cephcsi::ResolvedVolume| v.image_exists().unwrap_or(true);
    if group.record.is_none() && !direct.as_ref().is_ok_and(found) {
        // Found by its members' metadata (the peer site): they are in the
        // group's own pool, whatever pool their handles name, so a group
        // handle works here without a cluster mapping.
        let here = resolver.resolve_in(&group.cluster_id, group.io.pool_id(), &id.uuid, creds)?;
        if found(&here) {
            return Ok(Member { volume_id: volume_id.to_owned(), vol: here });
        }
    }
    Ok(Member { volume_id: volume_id.to_owned(), vol: direct? })
}

/// Names the member an error is about, so a partly failed group call says
/// which volume to look at; the retry finishes the rest.
pub(crate) fn on_member(m: &Member) -> impl FnOnce(Error) -> Error + '_ {
    move |e| match e {
        Error::Exec(x) => Error::Exec(x),
        e => Error::Member { volume_id: m.volume_id.clone(), source: Box::new(e) },
    }
}

/// A member as one group call works on it: its image opened once, with its
/// mirroring state as it was at open (a step that changes the state reads it
/// again through the same handle).
pub(crate) struct OpenMember<'m> {
    pub member: &'m Member,
    pub image: Image<'m>,
    pub mirror: MirrorInfo,
    /// The mirroring mode, when mirroring is enabled.
    pub mode: Option<MirrorImageMode>,
}

impl OpenMember<'_> {
    pub(crate) fn is_primary(&self) -> bool {
        self.mirror.state == MirrorState::Enabled && self.mirror.primary
    }
}

/// Opens every member once for a call, in order.
pub(crate) fn open_members<'m>(members: impl IntoIterator<Item = &'m Member>) -> Result<Vec<OpenMember<'m>>, Error> {
    members
        .into_iter()
        .map(|m| {
            let read = || -> Result<OpenMember<'m>, Error> {
                let image = open_member(m)?;
                let mirror = image.mirror_info().map_err(Error::ceph("cannot read the mirroring state"))?;
                let mode = match mirror.state {
                    MirrorState::Enabled => {
                        Some(image.mirror_mode().map_err(Error::ceph("cannot read the mirroring mode"))?)
                    }
                    _ => None,
                };
                Ok(OpenMember { member: m, image, mirror, mode })
            };
            read().map_err(on_member(m))
        })
        .collect()
}

fn open_member<'a>(m: &'a Member) -> Result<Image<'a>, Error> {
    Image::open(&m.vol.io, &m.vol.image).map_err(|e: CephError| {
        if e.is(libc::ENOENT) {
            Error::ImageNotFound { image: m.vol.spec() }
        } else {
            Error::Ceph { what: format!("cannot open member {}", m.vol.spec()), source: e }
        }
    })
}

fn ensure_rbd_group(io: &IoCtx, rbd_group: &str) -> Result<(), Error> {
    match io.group_create(rbd_group) {
        Ok(()) => Ok(()),
        Err(e) if e.is(libc::EEXIST) => Ok(()),
        Err(e) => Err(Error::Ceph { what: format!("cannot create RBD group {rbd_group}"), source: e }),
    }
}

/// The RBD group an image is linked to: (pool ID, group name).
fn rbd_group_of(image: &Image<'_>) -> Result<Option<(i64, String)>, Error> {
    image.group().map_err(Error::ceph("cannot read the image's group"))
}

fn in_other_group(m: &Member, name: &str) -> Error {
    Error::WrongState(format!(
        "volume {} ({}) is already in RBD group {name}; an image can be in one group only",
        m.volume_id,
        m.vol.spec()
    ))
}

/// Links a member's image into the group's RBD group (the one place that
/// does), refusing an image linked to another group: RBD allows one per image.
fn link(group: &Group, m: &Member, image: &Image<'_>) -> Result<(), Error> {
    link_into(&group.io, &group.rbd_group, m, image)
}

/// Links an image into the RBD group `rbd_group` of `group_io`'s pool (a
/// VolumeGroup's, or a group snapshot's temporary one).
fn link_into(group_io: &IoCtx, rbd_group: &str, m: &Member, image: &Image<'_>) -> Result<(), Error> {
    match rbd_group_of(image)? {
        Some((pool, name)) if pool == group_io.pool_id() && name == rbd_group => Ok(()),
        Some((_, name)) => Err(in_other_group(m, &name)),
        None => group_io
            .group_image_add(rbd_group, &m.vol.io, &m.vol.image)
            .or_done(libc::EEXIST)
            .map_err(Error::ceph(format!("cannot add {} to RBD group {rbd_group}", m.vol.spec()))),
    }
}

/// Marks a member's image as the group's (metadata that mirrors with it), so
/// the peer site finds the group's members without any state of its own.
fn tag(image: &Image<'_>, uuid: &str, volume_id: &str) -> Result<(), Error> {
    if image.metadata_get(GROUP_KEY).map_err(Error::ceph("cannot read image metadata"))?.as_deref() != Some(uuid) {
        image.metadata_set(VOLUME_ID_KEY, volume_id).map_err(Error::ceph("cannot tag the member"))?;
        image.metadata_set(GROUP_KEY, uuid).map_err(Error::ceph("cannot tag the member"))?;
    }
    Ok(())
}

/// Writes the signature of the whole member list onto a member (see
/// `index`). A secondary copy refuses writes (EROFS) and takes the metadata
/// from its primary: nothing to do there.
fn sign(image: &Image<'_>, signature: &str) -> Result<(), Error> {
    if image.metadata_get(index::MEMBERS_KEY).map_err(Error::ceph("cannot read image metadata"))?.as_deref()
        == Some(signature)
    {
        return Ok(());
    }
    image
        .metadata_set(index::MEMBERS_KEY, signature)
        .or_done(libc::EROFS)
        .map_err(Error::ceph("cannot sign the member"))
}

/// How the group's members replicate on this site, read from the first
/// mirrored one: its mode, and whether it is primary here.
fn replication_of(members: &[OpenMember<'_>]) -> Option<(MirrorImageMode, bool)> {
    members.iter().find_map(|m| m.mode.map(|mode| (mode, m.mirror.primary)))
}
