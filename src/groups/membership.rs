//! CreateVolumeGroup, ModifyVolumeGroupMembership, DeleteVolumeGroup,
//! ControllerGetVolumeGroup and ListVolumeGroups over RBD groups, recorded in
//! ceph-csi's group journal. Each step is idempotent, so a retry after any
//! failure finishes the job: the journal is written before the RBD group is
//! changed when adding, after it when removing.

use std::collections::{BTreeSet, HashMap};

use tracing::info;

use super::{
    GROUP_KEY, Group, MAX_MEMBERS, Member, VOLUME_ID_KEY, ensure_rbd_group, find, in_other_group, index, link,
    on_member, open_member, open_members, rbd_group_of, replication_of, resolve_group_member, resolve_member, sign,
    state_object, tag,
};
use crate::Error;
use crate::ceph::IoCtx;
use crate::cephcsi::{Credentials, CsiId, Resolver, group as journal};
use crate::exec::Claims;
use crate::replication::EnableParams;

/// CreateVolumeGroup's parameters, as ceph-csi reads them from the class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CreateParams {
    pub cluster_id: String,
    pub pool: String,
    pub name_prefix: String,
    /// Everything the class gave, returned as the group's context.
    pub context: HashMap<String, String>,
}

impl CreateParams {
    pub(crate) fn parse(params: &HashMap<String, String>) -> Result<Self, Error> {
        let required = |k: &str| {
            params.get(k).filter(|v| !v.is_empty()).cloned().ok_or_else(|| {
                Error::Malformed(format!(
                    "parameter {k:?} is required (set it in the VolumeGroupReplicationClass, as for ceph-csi)"
                ))
            })
        };
        let name_prefix =
            params.get("volumeGroupNamePrefix").cloned().unwrap_or_else(|| journal::DEFAULT_GROUP_PREFIX.to_owned());
        if name_prefix.len() > 64
            || !name_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(Error::Malformed(format!(
                "parameter \"volumeGroupNamePrefix\" {name_prefix:?} must be at most 64 letters, digits, '-', '_' or '.'"
            )));
        }
        // Replication parameters may share the class; check them here too so
        // a typo fails at creation rather than at the first failover.
        EnableParams::parse(params)?;
        Ok(Self { cluster_id: required("clusterID")?, pool: required("pool")?, name_prefix, context: params.clone() })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberView {
    pub volume_id: String,
    pub size_bytes: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupView {
    pub group_id: String,
    pub context: HashMap<String, String>,
    pub members: Vec<MemberView>,
}

fn check_count(n: usize) -> Result<(), Error> {
    if n > MAX_MEMBERS {
        return Err(Error::TooMany(format!("{n} volumes requested; a group holds at most {MAX_MEMBERS}")));
    }
    Ok(())
}

fn check_ids(volume_ids: &[String]) -> Result<Vec<String>, Error> {
    let unique: BTreeSet<String> = volume_ids.iter().cloned().collect();
    check_count(unique.len())?;
    for v in &unique {
        CsiId::decode(v).map_err(|e| Error::Malformed(format!("member {v:?}: invalid volume ID: it {e}")))?;
    }
    Ok(unique.into_iter().collect())
}

pub(super) fn new_uuid() -> Result<String, Error> {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .map_err(|e| Error::NotReady(format!("cannot generate a UUID: {e}")))
}

pub(crate) fn create(
    resolver: &Resolver,
    creds: &Credentials,
    claims: &Claims,
    name: &str,
    params: &CreateParams,
    volume_ids: &[String],
) -> Result<GroupView, Error> {
    let wanted = check_ids(volume_ids)?;
    let io = resolver.pool_by_name(&params.cluster_id, &params.pool, creds)?;
    let uuid = match journal::lookup_name(&io, name).map_err(Error::ceph("cannot read the group journal"))? {
        Some(uuid) => uuid,
        None => {
            // Refuse before anything is written: a member in another group
            // must not leave an empty group behind.
            for v in &wanted {
                check_free(&resolve_member(resolver, v, creds)?, None).map_err(missing_is_invalid(v))?;
            }
            let uuid = new_uuid()?;
            let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            journal::reserve(&io, name, &uuid, &format!("{}{uuid}", params.name_prefix), &created)
                .map_err(Error::ceph("cannot record the group in the journal"))?;
            uuid
        }
    };
    let id = CsiId { cluster_id: params.cluster_id.clone(), pool_id: io.pool_id(), uuid };
    let group = find(resolver, &id, creds)?;
    let record = group.record.as_ref().ok_or_else(|| Error::Missing(format!("volume group {id} lost its journal")))?;
    if !record.members.is_empty() && !wanted.is_empty() && record.members != wanted {
        return Err(Error::NameTaken(format!(
            "volume group {name:?} exists with other members; use ModifyVolumeGroupMembership to change them"
        )));
    }
    ensure_rbd_group(&group.io, &group.rbd_group)?;
    if record.members.is_empty() {
        apply_membership(resolver, creds, claims, &group, &wanted)?;
    }
    view(resolver, creds, &find(resolver, &id, creds)?, &params.context)
}

/// Makes the group's members exactly `wanted`: removals first (journal after
/// the RBD group), then additions (journal before the RBD group, so a crash
/// leaves at worst a journal entry that the next call completes).
fn apply_membership(
    resolver: &Resolver,
    creds: &Credentials,
    claims: &Claims,
    group: &Group,
    wanted: &[String],
) -> Result<(), Error> {
    let current: BTreeSet<&String> = group.member_ids.iter().collect();
    let wanted_set: BTreeSet<&String> = wanted.iter().collect();
    let mut guards = Vec::new();
    let to_remove: Vec<String> = current.difference(&wanted_set).map(|s| (*s).clone()).collect();
    let to_add: Vec<String> = wanted_set.difference(&current).map(|s| (*s).clone()).collect();
    // Resolve every new member before changing anything: a bad ID fails the
    // whole call with nothing done.
    let mut added = Vec::new();
    for v in &to_add {
        guards.push(claims.claim(v)?);
        let m = resolve_member(resolver, v, creds)?;
        check_same_cluster(group, &m)?;
        check_free(&m, Some(group)).map_err(missing_is_invalid(v))?;
        added.push(m);
    }
    for v in &to_remove {
        guards.push(claims.claim(v)?);
        let m = resolve_member(resolver, v, creds)?;
        match leave(group, &m) {
            // A member whose image is gone has nothing left to detach.
            Err(Error::ImageNotFound { .. }) => {}
            r => r.map_err(on_member(&m))?,
        }
    }
    if !added.is_empty() {
        // The peer will sync a newcomer from scratch, with none of the cuts
        // taken before: the group's generations reach it anew only from a
        // seed taken once it replays every member.
        super::replicate::unseed(group)?;
    }
    journal::remove_members(&group.io, group.uuid(), &to_remove)
        .map_err(Error::ceph("cannot update the group journal"))?;
    journal::add_members(&group.io, group.uuid(), &to_add).map_err(Error::ceph("cannot update the group journal"))?;
    for m in &added {
        join(group, m).map_err(on_member(m))?;
    }
    // Every member carries the new list's signature, so the peer's index of
    // the group notices the change (see `index`).
    let signature = index::signature(wanted);
    for v in wanted {
        let m = resolve_member(resolver, v, creds)?;
        match open_member(&m) {
            Ok(image) => sign(&image, &signature).map_err(on_member(&m))?,
            // A member whose image was deleted behind our back has nothing to carry.
            Err(Error::ImageNotFound { .. }) => {}
            Err(e) => return Err(on_member(&m)(e)),
        }
    }
    if !to_add.is_empty() || !to_remove.is_empty() {
        info!(group = %group.id, added = to_add.len(), removed = to_remove.len(), "group membership changed");
    }
    Ok(())
}

fn check_same_cluster(group: &Group, m: &Member) -> Result<(), Error> {
    let id = CsiId::decode(&m.volume_id).map_err(|e| Error::Malformed(e.to_string()))?;
    if id.cluster_id != group.id.cluster_id {
        return Err(Error::Malformed(format!(
            "volume {} is in cluster {:?}, the group in {:?}; a group holds volumes of one cluster",
            m.volume_id, id.cluster_id, group.id.cluster_id
        )));
    }
    Ok(())
}

/// A volume the request wants in the group but that does not exist is a bad
/// request, not a missing group.
fn missing_is_invalid(volume_id: &str) -> impl FnOnce(Error) -> Error + '_ {
    move |e| match e {
        Error::ImageNotFound { image } => {
            Error::Malformed(format!("volume {volume_id} does not exist (image {image})"))
        }
        e => e,
    }
}

/// Unlinks from the RBD group every image that no longer exists by name: a
/// secondary copy that rbd-mirror's deleter moved to the trash after the
/// primary's disable stays linked to this site's group, and the deleter
/// cannot finish (EMLINK) until it is unlinked.
fn unlink_departed(group: &Group) -> Result<(), Error> {
    let linked = match group.io.group_image_ids(&group.rbd_group) {
        Ok(l) => l,
        Err(e) if e.is(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::ceph("cannot read the RBD group's members")(e)),
    };
    for (pool_id, image_id) in linked {
        let image_io = if pool_id == group.io.pool_id() {
            None
        } else {
            Some(
                IoCtx::open(group.io.cluster(), pool_id, group.io.namespace())
                    .map_err(Error::ceph("cannot open a member's pool"))?,
            )
        };
        let io = image_io.as_ref().unwrap_or(&group.io);
        let key = format!("id_{image_id}");
        let named = match io.omap_get("rbd_directory", &[&key]) {
            Ok(v) => v.contains_key(&key),
            Err(e) if e.is(libc::ENOENT) => false,
            Err(e) => return Err(Error::ceph("cannot read the pool's image directory")(e)),
        };
        if !named {
            io_unlink(group, io, &image_id)?;
        }
    }
    Ok(())
}

fn io_unlink(group: &Group, io: &IoCtx, image_id: &str) -> Result<(), Error> {
    match group.io.group_image_remove_by_id(&group.rbd_group, io, image_id) {
        Ok(()) => {
            info!(group = %group.id, image_id, "unlinked an image that left (trash) from the RBD group");
            Ok(())
        }
        Err(e) if e.is(libc::ENOENT) => Ok(()),
        Err(e) => {
            Err(Error::Ceph { what: format!("cannot unlink image {image_id} from {}", group.rbd_group), source: e })
        }
    }
}

/// Fails when the member's image is in an RBD group other than `group`'s.
fn check_free(m: &Member, group: Option<&Group>) -> Result<(), Error> {
    let image = open_member(m)?;
    match rbd_group_of(&image)? {
        None => Ok(()),
        Some((pool, name)) if group.is_some_and(|g| g.is_rbd_group(pool, &name)) => Ok(()),
        Some((_, name)) => Err(in_other_group(m, &name)),
    }
}

/// Adds a member to the RBD group and tags it; an image already in another
/// group is refused (RBD allows one group per image).
fn join(group: &Group, m: &Member) -> Result<(), Error> {
    let image = open_member(m)?;
    link(group, m, &image)?;
    tag(&image, group.uuid(), &m.volume_id)
}

fn leave(group: &Group, m: &Member) -> Result<(), Error> {
    let image = open_member(m)?;
    if let Some((pool, name)) = rbd_group_of(&image)?
        && group.is_rbd_group(pool, &name)
    {
        group
            .io
            .group_image_remove(&group.rbd_group, &m.vol.io, &m.vol.image)
            .or_else(|e| if e.is(libc::ENOENT) { Ok(()) } else { Err(e) })
            .map_err(Error::ceph(format!("cannot remove {} from RBD group {}", m.vol.spec(), group.rbd_group)))?;
    }
    // A secondary copy takes its metadata from the primary and refuses
    // writes; untagging is the primary site's part.
    let info = image.mirror_info().map_err(Error::ceph("cannot read the mirroring state"))?;
    if info.state == crate::ceph::MirrorState::Enabled && !info.primary {
        return Ok(());
    }
    image.metadata_remove(GROUP_KEY).map_err(Error::ceph("cannot untag the member"))?;
    image.metadata_remove(VOLUME_ID_KEY).map_err(Error::ceph("cannot untag the member"))?;
    image.metadata_remove(index::MEMBERS_KEY).map_err(Error::ceph("cannot untag the member"))?;
    Ok(())
}

/// Only the site that created a group changes it: the peer's view comes from
/// mirrored member metadata.
fn require_record(group: &Group) -> Result<&journal::GroupRecord, Error> {
    group.record.as_ref().ok_or_else(|| {
        Error::Missing(format!("volume group {} was created on the peer site; change its membership there", group.id))
    })
}

pub(crate) fn modify(
    resolver: &Resolver,
    creds: &Credentials,
    claims: &Claims,
    id: &CsiId,
    volume_ids: &[String],
) -> Result<GroupView, Error> {
    let wanted = check_ids(volume_ids)?;
    let group = find(resolver, id, creds)?;
    require_record(&group)?;
    // A generation holds every member's lock while it snapshots them: a
    // member's metadata cannot change meanwhile (EBUSY).
    let _generations = super::claim_waiting(claims, &super::generations_key(id))?;
    // How the group replicates here is read from its members, not recorded:
    // an admin may have changed it behind our back.
    let current: Vec<Member> = group
        .member_ids
        .iter()
        .filter_map(|v| resolve_member(resolver, v, creds).ok())
        .filter(|m| m.vol.image_exists().unwrap_or(false))
        .collect();
    let replication = replication_of(&open_members(&current)?);
    let adding = wanted.iter().any(|v| !group.member_ids.contains(v));
    if adding && matches!(replication, Some((_, false))) {
        return Err(Error::WrongState(format!(
            "volume group {id} is a secondary on this site; add volumes while it is primary here"
        )));
    }
    drop(current);
    ensure_rbd_group(&group.io, &group.rbd_group)?;
    apply_membership(resolver, creds, claims, &group, &wanted)?;
    let group = find(resolver, id, creds)?;
    if let Some((mode, true)) = replication {
        // A volume joining a replicated group is replicated like the others.
        let params = EnableParams { mode, schedule: None, flatten: crate::replication::FlattenMode::Never };
        for v in &group.member_ids {
            let m = resolve_member(resolver, v, creds)?;
            crate::replication::enable(&m.vol, &params).map_err(on_member(&m))?;
        }
    }
    view(resolver, creds, &group, &HashMap::new())
}

pub(crate) fn delete(resolver: &Resolver, creds: &Credentials, id: &CsiId) -> Result<(), Error> {
    let group = match find(resolver, id, creds) {
        Ok(g) => g,
        Err(Error::Missing(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(record) = &group.record else {
        // The peer's view of a replicated group: nothing here to delete.
        return Ok(());
    };
    if !record.members.is_empty() {
        return Err(Error::WrongState(format!(
            "volume group {id} still has {} members; remove them (ModifyVolumeGroupMembership with no volumes) first",
            record.members.len()
        )));
    }
    unlink_departed(&group)?;
    match group.io.group_remove(&group.rbd_group) {
        Ok(()) => {}
        Err(e) if e.is(libc::ENOENT) => {}
        // The group's snapshots sit on images that are secondaries here; right
        // after the primary's disable rbd-mirror deletes them within a second.
        Err(e) if e.is(libc::EROFS) => {
            return Err(Error::NotReady(format!(
                "RBD group {} still has snapshots on secondary images that rbd-mirror has not removed yet; retry",
                group.rbd_group
            )));
        }
        Err(e) => return Err(Error::Ceph { what: format!("cannot remove RBD group {}", group.rbd_group), source: e }),
    }
    match group.io.remove(&state_object(group.uuid())) {
        Ok(()) => {}
        Err(e) if e.is(libc::ENOENT) => {}
        Err(e) => return Err(Error::ceph("cannot remove the group's state")(e)),
    }
    journal::remove(&group.io, &record.name, group.uuid())
        .map_err(Error::ceph("cannot remove the group from the journal"))?;
    info!(group = %id, "volume group deleted");
    Ok(())
}

pub(crate) fn get(resolver: &Resolver, creds: &Credentials, id: &CsiId) -> Result<GroupView, Error> {
    let group = find(resolver, id, creds)?;
    view(resolver, creds, &group, &HashMap::new())
}

fn view(
    resolver: &Resolver,
    creds: &Credentials,
    group: &Group,
    context: &HashMap<String, String>,
) -> Result<GroupView, Error> {
    let mut members = Vec::with_capacity(group.member_ids.len());
    for v in &group.member_ids {
        // Named as this site names it (the handle a caller here holds),
        // whichever site added it.
        let (volume_id, size) = match resolve_group_member(resolver, group, v, creds) {
            Ok(m) => {
                let size = open_member(&m).and_then(|i| i.size().map_err(Error::ceph("cannot read the image size")));
                let size = match size {
                    Ok(s) => s as i64,
                    // A member whose image is gone (deleted, or being
                    // re-created by a resync) is still listed: the group says
                    // what it holds.
                    Err(Error::ImageNotFound { .. }) => 0,
                    Err(e) => return Err(e),
                };
                (m.local_id()?.encode(), size)
            }
            Err(Error::ImageNotFound { .. }) => (v.clone(), 0),
            Err(e) => return Err(e),
        };
        members.push(MemberView { volume_id, size_bytes: size });
    }
    let mut context = context.clone();
    if group.record.is_none() {
        context.insert("rbd-addons/view".into(), "peer".into());
    }
    // The handle as given: the controller keeps using the one it was handed.
    Ok(GroupView { group_id: group.id.encode(), context, members })
}

pub(crate) struct ListPage {
    pub groups: Vec<GroupView>,
    pub next_token: String,
}

/// Every group of every cluster and pool in config.json, in a stable order;
/// the token is the last group ID returned.
pub(crate) fn list(
    resolver: &Resolver,
    creds: &Credentials,
    max_entries: usize,
    starting_token: &str,
) -> Result<ListPage, Error> {
    let mut ids = Vec::new();
    for (cluster_id, io) in resolver.all_pools(creds)? {
        let names = match journal::list(&io, "", u64::MAX) {
            // Pools these credentials may not read hold no groups of theirs.
            Err(e) if matches!(e.errno, libc::EPERM | libc::EACCES) => continue,
            r => r.map_err(Error::ceph("cannot list the group journal"))?,
        };
        for (_name, uuid) in names {
            ids.push(CsiId { cluster_id: cluster_id.clone(), pool_id: io.pool_id(), uuid }.encode());
        }
    }
    ids.sort();
    ids.dedup();
    let start = if starting_token.is_empty() {
        0
    } else {
        ids.iter().position(|i| i == starting_token).map(|p| p + 1).ok_or_else(|| {
            Error::InProgress(format!(
                "starting_token {starting_token:?} is not a volume group of this server; list from the start"
            ))
        })?
    };
    let end = (start + max_entries).min(ids.len());
    let mut groups = Vec::with_capacity(end - start);
    for id in &ids[start..end] {
        let id = CsiId::decode(id).map_err(|e| Error::Malformed(e.to_string()))?;
        match get(resolver, creds, &id) {
            Ok(g) => groups.push(g),
            // Deleted since listed, or a group snapshot (same journal).
            Err(Error::Missing(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let next_token = if end < ids.len() { ids[end - 1].clone() } else { String::new() };
    Ok(ListPage { groups, next_token })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params;

    #[test]
    fn create_parameters_as_ceph_csi_reads_them() {
        let p = CreateParams::parse(&params(&[("clusterID", "rook-ceph"), ("pool", "replicapool")])).unwrap();
        assert_eq!(p.name_prefix, "csi-vol-group-");
        assert_eq!(p.context.len(), 2);
        let p = CreateParams::parse(&params(&[("clusterID", "c"), ("pool", "p"), ("volumeGroupNamePrefix", "app-")]));
        assert_eq!(p.unwrap().name_prefix, "app-");
        for bad in [
            params(&[("pool", "p")]),
            params(&[("clusterID", "c")]),
            params(&[("clusterID", ""), ("pool", "p")]),
            params(&[("clusterID", "c"), ("pool", "p"), ("volumeGroupNamePrefix", "a/b")]),
            params(&[("clusterID", "c"), ("pool", "p"), ("mirroringMode", "sync")]),
        ] {
            assert!(CreateParams::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn member_lists_are_deduplicated_and_bounded() {
        let id = "0001-0009-rook-ceph-0000000000000002-71f1dc66-e334-4b9b-9f7c-536f4c3f03fa".to_owned();
        assert_eq!(check_ids(&[id.clone(), id.clone()]).unwrap(), vec![id]);
        assert!(matches!(check_ids(&["x".into()]), Err(Error::Malformed(_))));
        assert!(check_count(MAX_MEMBERS).is_ok());
        assert!(matches!(check_count(MAX_MEMBERS + 1), Err(Error::TooMany(_))));
    }
}
