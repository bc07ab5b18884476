//! Crash-consistent volume group snapshots that csi-rbdplugin restores.
//!
//! One RBD group snapshot across the members is the instant: librbd asks
//! every member's writer to pause (quiesce) while it snapshots them all.
//! Each member's image snapshot then becomes a ceph-csi snapshot: journal
//! entries in ceph-csi's layout and an image `csi-snap-<uuid>` holding a
//! snapshot of the same name, whose data is the group snapshot's. Where
//! librbd has `rbd_clone4` that image is a clone of the group snapshot (by
//! ID, instant); elsewhere it is a copy read from the group snapshot by ID,
//! which may outlive the call and goes on in the background. The RBD group
//! snapshot is removed once every member is restorable.
//!
//! The work's plan lives in RADOS (`rbd-addons.group-snapshot.<uuid>`), so
//! a retried or later call, on this server or a restarted one, finishes it.
//! Never `rbd_deep_copy` from a group snapshot: on Pacific it hits an assert
//! in librbd (snapshot rollback with no snapshot) and aborts the process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::membership::new_uuid;
use super::{
    Member, claim_waiting, ensure_rbd_group, generations_key, link_into, on_member, open_member, rbd_group_of,
};
use crate::Error;
use crate::ceph::{AlreadyDone, CephError, Image, IoCtx, Library, MirrorState, SNAPSHOT_IMAGE_FEATURES, SnapKind};
use crate::cephcsi::{Credentials, CsiId, Resolver, group as journal, snapshot as snap_journal};
use crate::exec::{Claims, KeyGuard};

/// The CSI limit this server keeps for one group snapshot (as for groups).
pub(crate) const MAX_SNAPSHOT_MEMBERS: usize = super::MAX_MEMBERS;
/// The temporary RBD group of members that are in none: named after the
/// group snapshot, so a resumed call finds it.
const TEMPORARY_GROUP_PREFIX: &str = "csi-vgs-";

fn plan_object(uuid: &str) -> String {
    format!("rbd-addons.group-snapshot.{uuid}")
}

/// The guard of one group snapshot's work (its copies, its deletion).
pub(crate) fn work_key(uuid: &str) -> String {
    format!("group-snapshot/{uuid}")
}

/// What a group snapshot is made of, written before anything is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Plan {
    name: String,
    /// The RBD group whose snapshot is the instant, in the members' pool.
    rbd_group: String,
    /// Whether `rbd_group` was made for this snapshot (removed at the end).
    temporary: bool,
    members: Vec<PlannedMember>,
    /// Every member was restorable and the RBD group snapshot is gone.
    #[serde(default)]
    finished: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct PlannedMember {
    volume_id: String,
    snap_uuid: String,
    snap_name: String,
    #[serde(default)]
    size_bytes: u64,
}

const PLAN_KEY: &str = "plan";

fn read_plan(io: &IoCtx, uuid: &str) -> Result<Option<Plan>, Error> {
    let vals = match io.omap_get(&plan_object(uuid), &[PLAN_KEY]) {
        Ok(v) => v,
        Err(e) if e.is(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(Error::ceph("cannot read the group snapshot's plan")(e)),
    };
    let Some(raw) = vals.get(PLAN_KEY) else { return Ok(None) };
    serde_json::from_slice(raw)
        .map(Some)
        .map_err(|e| Error::WrongState(format!("the group snapshot's plan {} is unreadable: {e}", plan_object(uuid))))
}

fn write_plan(io: &IoCtx, uuid: &str, plan: &Plan) -> Result<(), Error> {
    let raw = serde_json::to_vec(plan).expect("a plan always serializes");
    io.omap_set(&plan_object(uuid), &[(PLAN_KEY, &raw)]).map_err(Error::ceph("cannot record the group snapshot's plan"))
}

/// CreateVolumeGroupSnapshot's parameters: ceph-csi's class keys, checked
/// against where the members are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CreateParams {
    pub cluster_id: Option<String>,
    pub pool: Option<String>,
}

impl CreateParams {
    pub(crate) fn parse(params: &HashMap<String, String>) -> Result<Self, Error> {
        let mut out = Self::default();
        for (k, v) in params {
            match k.as_str() {
                "clusterID" => out.cluster_id = Some(v.clone()),
                "pool" => out.pool = Some(v.clone()),
                // The external-snapshotter strips its own keys; a class may
                // still carry ceph-csi's snapshot naming prefix, unused here.
                k if k.starts_with("csi.storage.k8s.io/") => {}
                k => {
                    return Err(Error::Malformed(format!(
                        "unknown parameter {k:?}; a VolumeGroupSnapshotClass for rbd-addons takes \"clusterID\" and \"pool\""
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// The source volume IDs of a request: present, unique, decodable, bounded.
pub(crate) fn check_sources(volume_ids: &[String]) -> Result<Vec<String>, Error> {
    if volume_ids.is_empty() {
        return Err(Error::Malformed("source_volume_ids is empty".into()));
    }
    let unique: BTreeSet<&String> = volume_ids.iter().collect();
    if unique.len() != volume_ids.len() {
        return Err(Error::Malformed("source_volume_ids lists a volume more than once".into()));
    }
    if unique.len() > MAX_SNAPSHOT_MEMBERS {
        return Err(Error::TooMany(format!(
            "{} volumes requested; a group snapshot holds at most {MAX_SNAPSHOT_MEMBERS}",
            unique.len()
        )));
    }
    for v in &unique {
        CsiId::decode(v).map_err(|e| Error::Malformed(format!("source volume {v:?}: invalid volume ID: it {e}")))?;
    }
    Ok(unique.into_iter().cloned().collect())
}

pub(crate) fn decode_id(id: &str) -> Result<CsiId, Error> {
    if id.is_empty() {
        return Err(Error::Malformed("group_snapshot_id is empty".into()));
    }
    CsiId::decode(id).map_err(|e| Error::Malformed(format!("invalid group snapshot ID: it {e}")))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotView {
    pub snapshot_id: String,
    pub source_volume_id: String,
    pub size_bytes: u64,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupSnapshotView {
    pub group_snapshot_id: String,
    pub created: SystemTime,
    pub snapshots: Vec<SnapshotView>,
}

impl GroupSnapshotView {
    pub(crate) fn ready(&self) -> bool {
        self.snapshots.iter().all(|s| s.ready)
    }
}

/// Where a group snapshot lives: its pool, its ID, its journal record.
struct Located {
    io: IoCtx,
    id: CsiId,
    record: journal::GroupRecord,
}

impl Located {
    fn snapshot_id(&self, snap_uuid: &str) -> String {
        CsiId { cluster_id: self.id.cluster_id.clone(), pool_id: self.id.pool_id, uuid: snap_uuid.to_owned() }.encode()
    }
}

/// The first step of CreateVolumeGroupSnapshot (its name, class
/// parameters and source volumes): the instant, the journal, and (with
/// `rbd_clone4`) the member images. Answers whether copies remain, which
/// `copy_members` then makes.
pub(crate) fn create(
    resolver: &Resolver,
    creds: &Credentials,
    claims: &Claims,
    (name, params, volume_ids): (&str, &CreateParams, &[String]),
) -> Result<(GroupSnapshotView, bool), Error> {
    let mut members = Vec::with_capacity(volume_ids.len());
    let mut guards: Vec<KeyGuard> = Vec::with_capacity(volume_ids.len());
    for v in volume_ids {
        let id = CsiId::decode(v).map_err(|e| Error::Malformed(format!("source volume {v:?}: it {e}")))?;
        let vol = resolver.resolve(&id, creds)?;
        guards.push(claims.claim(v)?);
        members.push(Member { volume_id: v.clone(), vol });
    }
    let first = &members[0].vol;
    for m in &members[1..] {
        if m.vol.cluster_id != first.cluster_id
            || m.vol.io.pool_id() != first.io.pool_id()
            || m.vol.io.namespace() != first.io.namespace()
        {
            return Err(Error::Malformed(format!(
                "volume {} is in {}, volume {} in {}: a group snapshot's volumes must share one cluster and pool",
                members[0].volume_id,
                first.spec(),
                m.volume_id,
                m.vol.spec()
            )));
        }
    }
    if let Some(c) = params.cluster_id.as_ref().filter(|c| **c != first.cluster_id) {
        return Err(Error::Malformed(format!(
            "parameter clusterID {c:?} is not the volumes' ({:?})",
            first.cluster_id
        )));
    }
    if let Some(p) = params.pool.as_ref().filter(|p| p.as_str() != first.io.pool_name()) {
        return Err(Error::Malformed(format!("parameter pool {p:?} is not the volumes' ({:?})", first.io.pool_name())));
    }
    let io = IoCtx::open(first.io.cluster(), first.io.pool_id(), first.io.namespace())
        .map_err(Error::ceph("cannot open the volumes' pool"))?;
    sweep_trash(&io);
    let cluster_id = first.cluster_id.clone();
    let images = members
        .iter()
        .map(|m| open_member(m).map_err(|e| on_member(m)(not_found_is_missing(e))))
        .collect::<Result<Vec<_>, _>>()?;

    let uuid = match journal::lookup_name(&io, name).map_err(Error::ceph("cannot read the group journal"))? {
        Some(uuid) => uuid,
        None => reserve(&io, &cluster_id, name, &members, &images)?,
    };
    let located = locate_in(io, CsiId { cluster_id, pool_id: first.io.pool_id(), uuid: uuid.clone() })?
        .ok_or_else(|| Error::InProgress(format!("group snapshot {name:?} is being deleted; retry")))?;
    if !located.record.is_group_snapshot() {
        return Err(Error::NameTaken(format!("{name:?} is the name of a volume group, not of a group snapshot")));
    }
    let mut plan = read_plan(&located.io, &uuid)?.ok_or_else(|| {
        Error::WrongState(format!("group snapshot {name:?} has no plan: it was not made by rbd-addons"))
    })?;
    let planned: BTreeSet<&str> = plan.members.iter().map(|m| m.volume_id.as_str()).collect();
    let asked: BTreeSet<&str> = volume_ids.iter().map(String::as_str).collect();
    if planned != asked {
        return Err(Error::NameTaken(format!("group snapshot {name:?} exists with other source volumes")));
    }
    // Its copies still running in the background: answer how far they are.
    let Ok(_work) = claims.claim(&work_key(&uuid)) else {
        return Ok((view(&located, Some(&plan))?, false));
    };
    // The plan's order is the request's order at creation.
    let by_volume: HashMap<&str, usize> = members.iter().enumerate().map(|(i, m)| (m.volume_id.as_str(), i)).collect();
    let ordered: Vec<(&Member, &Image<'_>)> = plan
        .members
        .iter()
        .map(|p| {
            let i = by_volume[p.volume_id.as_str()];
            (&members[i], &images[i])
        })
        .collect();
    let pending = advance(&located, &mut plan, &ordered, claims)?;
    drop(images);
    drop(guards);
    Ok((view(&located, Some(&plan))?, pending))
}

/// Plans a new group snapshot and records it, before anything is created:
/// which RBD group gives the instant, and each member's snapshot UUID.
fn reserve(
    io: &IoCtx,
    cluster_id: &str,
    name: &str,
    members: &[Member],
    images: &[Image<'_>],
) -> Result<String, Error> {
    let mut linked = BTreeMap::new();
    for (m, image) in members.iter().zip(images) {
        let mirror = image.mirror_info().map_err(Error::ceph("cannot read the mirroring state"))?;
        if mirror.state == MirrorState::Enabled && !mirror.primary {
            return Err(on_member(m)(Error::WrongState(format!(
                "{} is a non-primary mirror copy on this site; take group snapshots where the volumes are primary",
                m.vol.spec()
            ))));
        }
        if let Some(link) = rbd_group_of(image)? {
            linked.insert(m.volume_id.clone(), link);
        }
    }
    let uuid = new_uuid()?;
    let (rbd_group, temporary) = if linked.is_empty() {
        (format!("{TEMPORARY_GROUP_PREFIX}{uuid}"), true)
    } else {
        let groups: BTreeSet<&(i64, String)> = linked.values().collect();
        let one = groups.iter().next().filter(|_| groups.len() == 1 && linked.len() == members.len());
        match one {
            // Another group snapshot's temporary group, whose copies still run.
            Some((_, group)) if group.starts_with(TEMPORARY_GROUP_PREFIX) => {
                return Err(Error::InProgress(format!(
                    "the volumes are in {group}, the temporary group of another group snapshot whose copies \
                     still run; retry when it is ready"
                )));
            }
            Some((pool, group)) if *pool == io.pool_id() => (group.clone(), false),
            _ => {
                return Err(Error::Malformed(format!(
                    "the volumes are in different RBD groups or only some are in one ({}); a group snapshot takes \
                     volumes that are all in one group (e.g. one VolumeGroup) or in none",
                    linked.iter().map(|(v, (_, g))| format!("{v} in {g}")).collect::<Vec<_>>().join(", ")
                )));
            }
        }
    };
    let mut planned = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        planned.push(PlannedMember {
            volume_id: m.volume_id.clone(),
            snap_uuid: new_uuid()?,
            snap_name: format!("{name}-snap-{i}"),
            size_bytes: 0,
        });
    }
    let plan = Plan { name: name.to_owned(), rbd_group, temporary, members: planned, finished: false };
    write_plan(io, &uuid, &plan)?;
    let snapshot_ids: Vec<(String, String)> = plan
        .members
        .iter()
        .map(|p| {
            let id = CsiId { cluster_id: cluster_id.to_owned(), pool_id: io.pool_id(), uuid: p.snap_uuid.clone() };
            (id.encode(), p.snap_name.clone())
        })
        .collect();
    let created = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    journal::reserve_snapshot(io, name, &uuid, &created, &snapshot_ids)
        .map_err(Error::ceph("cannot record the group snapshot in the journal"))?;
    info!(group_snapshot = name, uuid, rbd_group = %plan.rbd_group, temporary, "group snapshot planned");
    Ok(uuid)
}

/// Takes the instant if it is not taken yet, records every member's
/// snapshot in the journal and, with `rbd_clone4`, makes its image. Returns
/// whether copies remain.
fn advance(
    located: &Located,
    plan: &mut Plan,
    members: &[(&Member, &Image<'_>)],
    claims: &Claims,
) -> Result<bool, Error> {
    if plan.finished {
        return Ok(false);
    }
    let io = &located.io;
    let gs_name = located.id.encode();
    if plan.temporary {
        ensure_rbd_group(io, &plan.rbd_group)?;
        for (m, image) in members {
            link_into(io, &plan.rbd_group, m, image).map_err(on_member(m))?;
        }
    }
    let mut snap_ids = member_snaps(io.pool_id(), &plan.rbd_group, &gs_name, members)?;
    if snap_ids.iter().all(Option::is_none) {
        take_instant(io, &plan.rbd_group, &gs_name, claims)?;
        snap_ids = member_snaps(io.pool_id(), &plan.rbd_group, &gs_name, members)?;
    }
    let clone4 = Library::probe().clone4;
    let mut remaining = false;
    for ((m, _), (planned, snap_id)) in members.iter().zip(plan.members.iter_mut().zip(&snap_ids)) {
        let Some(snap_id) = *snap_id else {
            return Err(on_member(m)(Error::WrongState(format!(
                "{} has no image snapshot of RBD group snapshot {}/{gs_name} (it joined the group after it was \
                 taken?); delete this group snapshot and take a new one",
                m.vol.spec(),
                plan.rbd_group
            ))));
        };
        let source = m.vol.image.clone();
        snap_journal::reserve(io, &planned.snap_name, &planned.snap_uuid, &source, &gs_name)
            .map_err(Error::ceph("cannot record a member snapshot in the journal"))?;
        if planned.size_bytes == 0 {
            planned.size_bytes = size_at(m, snap_id).map_err(on_member(m))?;
        }
        if member_ready(io, &planned.snap_uuid)? {
            continue;
        }
        if clone4 {
            clone_member(io, m, snap_id, &planned.snap_uuid).map_err(on_member(m))?;
        } else {
            remaining = true;
        }
    }
    write_plan(io, located.id.uuid.as_str(), plan)?;
    if !remaining {
        finish(located, plan, members.iter().map(|(m, _)| *m))?;
    }
    Ok(remaining)
}

/// `rbd_group_snap_create`: librbd quiesces every member's writers, snapshots
/// them all, and lets them go. Held against the group's consistency
/// generations, whose cuts must never interleave with ours.
fn take_instant(io: &IoCtx, rbd_group: &str, gs_name: &str, claims: &Claims) -> Result<(), Error> {
    let _generations = match rbd_group.strip_prefix(journal::DEFAULT_GROUP_PREFIX) {
        Some(group_uuid) => Some(claim_waiting(
            claims,
            &generations_key(&CsiId { cluster_id: String::new(), pool_id: 0, uuid: group_uuid.to_owned() }),
        )?),
        None => None,
    };
    let started = Instant::now();
    match io.group_snap_create(rbd_group, gs_name, true).or_done(libc::EEXIST) {
        Ok(()) => {}
        Err(e) if e.is(libc::EROFS) => {
            return Err(Error::WrongState(format!(
                "a member of RBD group {rbd_group} is a non-primary mirror copy here; take group snapshots where the \
                 volumes are primary"
            )));
        }
        Err(e) => return Err(Error::Ceph { what: format!("cannot snapshot RBD group {rbd_group}"), source: e }),
    }
    info!(rbd_group, snapshot = gs_name, elapsed_ms = started.elapsed().as_millis() as u64, "group snapshot taken");
    Ok(())
}

/// Each member's image snapshot of the group snapshot, if present.
fn member_snaps(
    pool_id: i64,
    rbd_group: &str,
    gs_name: &str,
    members: &[(&Member, &Image<'_>)],
) -> Result<Vec<Option<u64>>, Error> {
    members
        .iter()
        .map(|(m, image)| {
            let snaps =
                image.snapshots().map_err(Error::ceph(format!("cannot list the snapshots of {}", m.vol.spec())))?;
            for s in snaps.iter().filter(|s| s.kind == SnapKind::Group) {
                match image.group_snap_of(s.id) {
                    Ok((pool, group, name)) if pool == pool_id && group == rbd_group && name == gs_name => {
                        return Ok(Some(s.id));
                    }
                    Ok(_) => {}
                    // A group snapshot replayed from the peer's group.
                    Err(e) if e.is(libc::ENOENT) => {}
                    Err(e) => return Err(Error::ceph(format!("cannot read a group snapshot of {}", m.vol.spec()))(e)),
                }
            }
            Ok(None)
        })
        .collect()
}

/// The member's size at the group snapshot (it may have grown since).
fn size_at(m: &Member, snap_id: u64) -> Result<u64, Error> {
    let at = Image::open_read_only(&m.vol.io, &m.vol.image).map_err(Error::ceph("cannot open the member"))?;
    at.read_snapshot(snap_id).map_err(Error::ceph("cannot open the group snapshot"))?;
    at.size().map_err(Error::ceph("cannot read the image size"))
}

/// Whether a member snapshot is restorable: its image holds its snapshot.
fn member_ready(io: &IoCtx, snap_uuid: &str) -> Result<bool, Error> {
    let name = snap_journal::image_name(snap_uuid);
    let image = match Image::open_read_only(io, &name) {
        Ok(i) => i,
        Err(e) if e.is(libc::ENOENT) => return Ok(false),
        Err(e) => return Err(Error::Ceph { what: format!("cannot open snapshot image {name}"), source: e }),
    };
    let snaps = image.snapshots().map_err(Error::ceph(format!("cannot list the snapshots of {name}")))?;
    Ok(snaps.iter().any(|s| s.kind == SnapKind::User && s.name == name))
}

/// Removes what a crashed or failed earlier attempt left of a snapshot image
/// (an image without its snapshot: a copy that never finished).
fn clear_partial(io: &IoCtx, name: &str) -> Result<(), Error> {
    match io.image_remove(name) {
        Ok(()) => {
            warn!(image = name, "removed an unfinished snapshot image; making it again");
            Ok(())
        }
        Err(e) if e.is(libc::ENOENT) => Ok(()),
        Err(e) => Err(Error::Ceph { what: format!("cannot remove the unfinished snapshot image {name}"), source: e }),
    }
}

/// Marks a finished snapshot image as ceph-csi does: a snapshot of its own
/// name on it, and its image ID in the journal.
fn seal(io: &IoCtx, snap_uuid: &str) -> Result<(), Error> {
    let name = snap_journal::image_name(snap_uuid);
    let image = Image::open(io, &name).map_err(Error::ceph(format!("cannot open snapshot image {name}")))?;
    image.snap_create(&name).or_done(libc::EEXIST).map_err(Error::ceph(format!("cannot snapshot {name}")))?;
    let image_id = image.id().map_err(Error::ceph(format!("cannot read the ID of {name}")))?;
    snap_journal::set_image_id(io, snap_uuid, &image_id).map_err(Error::ceph("cannot record the snapshot image's ID"))
}

fn clone_member(io: &IoCtx, m: &Member, snap_id: u64, snap_uuid: &str) -> Result<(), Error> {
    let name = snap_journal::image_name(snap_uuid);
    clear_partial(io, &name)?;
    m.vol
        .io
        .clone_by_snap_id(&m.vol.image, snap_id, io, &name, SNAPSHOT_IMAGE_FEATURES)
        .or_done(libc::EEXIST)
        .map_err(Error::ceph(format!("cannot clone {} at the group snapshot", m.vol.spec())))?;
    seal(io, snap_uuid)?;
    info!(image = %m.vol.spec(), snapshot = name, "member snapshot cloned");
    Ok(())
}

/// The second step of CreateVolumeGroupSnapshot without `rbd_clone4`: copies
/// every member not yet restorable from the group snapshot, then finishes.
/// Runs under `work_key`; safe to run again after any interruption.
pub(crate) fn copy_members(resolver: &Resolver, creds: &Credentials, id: &CsiId) -> Result<GroupSnapshotView, Error> {
    let located =
        locate(resolver, creds, id)?.ok_or_else(|| Error::Missing("it does not exist on this cluster".into()))?;
    let mut plan = read_plan(&located.io, &id.uuid)?
        .ok_or_else(|| Error::WrongState("the group snapshot has no plan: it was not made by rbd-addons".into()))?;
    if plan.finished {
        return view(&located, Some(&plan));
    }
    let members = plan
        .members
        .iter()
        .map(|p| {
            let vid = CsiId::decode(&p.volume_id).map_err(|e| Error::Malformed(e.to_string()))?;
            Ok(Member { volume_id: p.volume_id.clone(), vol: resolver.resolve(&vid, creds)? })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let gs_name = located.id.encode();
    for (m, planned) in members.iter().zip(&plan.members) {
        if member_ready(&located.io, &planned.snap_uuid)? {
            continue;
        }
        copy_member(&located.io, m, &plan.rbd_group, &gs_name, &planned.snap_uuid).map_err(on_member(m))?;
    }
    finish(&located, &mut plan, members.iter())?;
    view(&located, Some(&plan))
}

fn copy_member(io: &IoCtx, m: &Member, rbd_group: &str, gs_name: &str, snap_uuid: &str) -> Result<(), Error> {
    let source = Image::open_read_only(&m.vol.io, &m.vol.image)
        .map_err(|e| not_found_is_missing(Error::Ceph { what: format!("cannot open {}", m.vol.spec()), source: e }))?;
    let snap_id = member_snaps(io.pool_id(), rbd_group, gs_name, &[(m, &source)])?[0].ok_or_else(|| {
        Error::WrongState(format!(
            "{} lost its snapshot of the group snapshot; delete it and take a new one",
            m.vol.spec()
        ))
    })?;
    source.read_snapshot(snap_id).map_err(Error::ceph("cannot open the group snapshot"))?;
    let name = snap_journal::image_name(snap_uuid);
    clear_partial(io, &name)?;
    let started = Instant::now();
    let mut total = 0u64;
    source
        .copy_to(io, &name, SNAPSHOT_IMAGE_FEATURES, &mut |_, t| total = t)
        .map_err(Error::ceph(format!("cannot copy {} from the group snapshot", m.vol.spec())))?;
    seal(io, snap_uuid)?;
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let allocated = Image::open_read_only(io, &name).and_then(|i| i.allocated_bytes()).unwrap_or(0);
    info!(
        image = %m.vol.spec(),
        snapshot = name,
        size_mib = total >> 20,
        written_mib = allocated >> 20,
        elapsed_ms = (secs * 1000.0) as u64,
        mb_per_s = format!("{:.1}", allocated as f64 / 1e6 / secs),
        "member snapshot copied"
    );
    Ok(())
}

/// Removes the instant and a temporary group once every member is
/// restorable, and records that the group snapshot is finished.
fn finish<'a>(located: &Located, plan: &mut Plan, members: impl Iterator<Item = &'a Member>) -> Result<(), Error> {
    let io = &located.io;
    remove_instant(io, plan, &located.id.encode(), members)?;
    plan.finished = true;
    write_plan(io, &located.id.uuid, plan)?;
    info!(group_snapshot = %plan.name, "group snapshot ready");
    Ok(())
}

fn remove_instant<'a>(
    io: &IoCtx,
    plan: &Plan,
    gs_name: &str,
    members: impl Iterator<Item = &'a Member>,
) -> Result<(), Error> {
    let group = &plan.rbd_group;
    io.group_snap_remove(group, gs_name)
        .or_done(libc::ENOENT)
        .map_err(Error::ceph(format!("cannot remove RBD group snapshot {group}")))?;
    if plan.temporary {
        for m in members {
            io.group_image_remove(group, &m.vol.io, &m.vol.image)
                .or_done(libc::ENOENT)
                .map_err(Error::ceph(format!("cannot take {} out of RBD group {group}", m.vol.spec())))?;
        }
        io.group_remove(group)
            .or_done(libc::ENOENT)
            .map_err(Error::ceph(format!("cannot remove RBD group {group}")))?;
    }
    Ok(())
}

fn locate(resolver: &Resolver, creds: &Credentials, id: &CsiId) -> Result<Option<Located>, Error> {
    let pools = match resolver.group_pools(id, creds) {
        Ok(p) => p,
        Err(crate::cephcsi::Error::PoolNotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    for (i, (cluster_id, io)) in pools.into_iter().enumerate() {
        let id = CsiId { cluster_id, pool_id: io.pool_id(), uuid: id.uuid.clone() };
        match locate_in(io, id) {
            Ok(Some(found)) => return Ok(Some(found)),
            Ok(None) => {}
            // A cluster-mapping candidate these credentials may not read is
            // another pool that happens to carry the ID on this site.
            Err(Error::Ceph { source, .. }) if i > 0 && matches!(source.errno, libc::EPERM | libc::EACCES) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn locate_in(io: IoCtx, id: CsiId) -> Result<Option<Located>, Error> {
    Ok(journal::read(&io, &id.uuid).map_err(Error::ceph("cannot read the group journal"))?.map(|record| Located {
        io,
        id,
        record,
    }))
}

/// GetVolumeGroupSnapshot: NOT_FOUND when missing. Answers whether copies
/// remain (a copy interrupted by a restart is started again by the caller).
pub(crate) fn get(resolver: &Resolver, creds: &Credentials, id: &CsiId) -> Result<(GroupSnapshotView, bool), Error> {
    let missing = || Error::Missing("it does not exist on this cluster".into());
    let located = locate(resolver, creds, id)?.ok_or_else(missing)?;
    if !located.record.is_group_snapshot() {
        return Err(missing());
    }
    let plan = read_plan(&located.io, &id.uuid)?;
    let view = view(&located, plan.as_ref())?;
    let pending = plan.is_some_and(|p| !p.finished) && !view.ready();
    Ok((view, pending))
}

/// The group snapshot as the journal and the images say it is.
fn view(located: &Located, plan: Option<&Plan>) -> Result<GroupSnapshotView, Error> {
    let io = &located.io;
    let created = humantime::parse_rfc3339_weak(&located.record.created).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut snapshots = Vec::with_capacity(located.record.members.len());
    let planned: HashMap<String, &PlannedMember> =
        plan.map(|p| p.members.iter().map(|m| (located.snapshot_id(&m.snap_uuid), m)).collect()).unwrap_or_default();
    for snapshot_id in &located.record.members {
        let uuid = CsiId::decode(snapshot_id).map_err(|e| Error::Malformed(e.to_string()))?.uuid;
        let (source_volume_id, size_bytes) = match planned.get(snapshot_id) {
            Some(p) => (p.volume_id.clone(), p.size_bytes),
            // Made by ceph-csi: the source's volume ID follows from its image name.
            None => {
                let source = snap_journal::read(io, &uuid).map_err(Error::ceph("cannot read the snapshot journal"))?;
                let volume = source.and_then(|s| s.source.strip_prefix("csi-vol-").map(str::to_owned));
                let id = volume.map(|uuid| {
                    CsiId { cluster_id: located.id.cluster_id.clone(), pool_id: located.id.pool_id, uuid }.encode()
                });
                (id.unwrap_or_default(), image_size(io, &snap_journal::image_name(&uuid))?)
            }
        };
        let ready = member_ready(io, &uuid)?;
        snapshots.push(SnapshotView { snapshot_id: snapshot_id.clone(), source_volume_id, size_bytes, ready });
    }
    // In the order the request listed the volumes (the plan's order).
    if let Some(p) = plan {
        let order: HashMap<String, usize> =
            p.members.iter().enumerate().map(|(i, m)| (located.snapshot_id(&m.snap_uuid), i)).collect();
        snapshots.sort_by_key(|s| order.get(&s.snapshot_id).copied().unwrap_or(usize::MAX));
    }
    Ok(GroupSnapshotView { group_snapshot_id: located.id.encode(), created, snapshots })
}

fn image_size(io: &IoCtx, name: &str) -> Result<u64, Error> {
    match Image::open_read_only(io, name) {
        Ok(i) => i.size().map_err(Error::ceph("cannot read the image size")),
        Err(e) if e.is(libc::ENOENT) => Ok(0),
        Err(e) => Err(Error::Ceph { what: format!("cannot open {name}"), source: e }),
    }
}

/// DeleteVolumeGroupSnapshot: OK when missing; removes every member snapshot
/// as ceph-csi's DeleteSnapshot does, then the instant if still there, then
/// the journal. Each step tolerates being done already, so a retry resumes.
pub(crate) fn delete(
    resolver: &Resolver,
    creds: &Credentials,
    claims: &Claims,
    id: &CsiId,
    snapshot_ids: &[String],
) -> Result<(), Error> {
    let Some(located) = locate(resolver, creds, id)? else {
        return Ok(());
    };
    if !located.record.is_group_snapshot() {
        return Err(Error::Malformed(format!("{} is a volume group, not a group snapshot", id.encode())));
    }
    let _work = claims.claim(&work_key(&id.uuid))?;
    if !snapshot_ids.is_empty() {
        let given: BTreeSet<&String> = snapshot_ids.iter().collect();
        let ours: BTreeSet<&String> = located.record.members.iter().collect();
        if given != ours {
            return Err(Error::Malformed(format!(
                "snapshot_ids do not match group snapshot {}: it has {} member snapshots, {} were given, or other ones",
                id.encode(),
                ours.len(),
                given.len()
            )));
        }
    }
    let io = &located.io;
    sweep_trash(io);
    let plan = read_plan(io, &id.uuid)?;
    for snapshot_id in &located.record.members {
        let uuid = CsiId::decode(snapshot_id).map_err(|e| Error::Malformed(e.to_string()))?.uuid;
        let name = match snap_journal::read(io, &uuid).map_err(Error::ceph("cannot read the snapshot journal"))? {
            Some(rec) => rec.name,
            None => located.record.snapshot_names.get(snapshot_id).cloned().unwrap_or_default(),
        };
        remove_snapshot_image(io, &snap_journal::image_name(&uuid))?;
        snap_journal::remove(io, &name, &uuid).map_err(Error::ceph("cannot remove a snapshot from the journal"))?;
    }
    if let Some(plan) = plan.as_ref().filter(|p| !p.finished) {
        let members = plan
            .members
            .iter()
            .filter_map(|p| {
                let vid = CsiId::decode(&p.volume_id).ok()?;
                Some(Member { volume_id: p.volume_id.clone(), vol: resolver.resolve(&vid, creds).ok()? })
            })
            .collect::<Vec<_>>();
        remove_instant(io, plan, &id.encode(), members.iter())?;
    }
    journal::remove(io, &located.record.name, &id.uuid).map_err(Error::ceph("cannot remove the group snapshot"))?;
    io.remove(&plan_object(&id.uuid))
        .or_done(libc::ENOENT)
        .map_err(Error::ceph("cannot remove the group snapshot's plan"))?;
    info!(group_snapshot = %located.record.name, "group snapshot deleted");
    Ok(())
}

/// Removes a snapshot image as ceph-csi does: its snapshot (which moves to
/// the trash namespace while a restored volume still clones from it), then
/// the image through the trash. When a clone still depends on it, it is
/// written down in `DEFERRED_REMOVALS` and a later group snapshot call in the
/// pool deletes it (`sweep_trash`). ceph-csi queues the mgr's trash-remove
/// task instead; that task's progress callback crashes the ceph-mgr of
/// Debian's Reef build (Python 3.13; ceph-csi issue 5502), so we keep the mgr
/// out of it.
fn remove_snapshot_image(io: &IoCtx, name: &str) -> Result<(), Error> {
    let image_id = {
        let image = match Image::open(io, name) {
            Ok(i) => i,
            Err(e) if e.is(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(Error::Ceph { what: format!("cannot open snapshot image {name}"), source: e }),
        };
        image
            .snap_remove(name)
            .or_done(libc::ENOENT)
            .map_err(Error::ceph(format!("cannot remove snapshot {name}@{name}")))?;
        image.id().map_err(Error::ceph(format!("cannot read the ID of {name}")))?
    };
    io.trash_move(name).or_done(libc::ENOENT).map_err(Error::ceph(format!("cannot move {name} to the trash")))?;
    match io.trash_remove(&image_id) {
        Ok(()) => Ok(()),
        Err(e) if e.is(libc::ENOENT) => Ok(()),
        Err(e) if still_needed(&e) => {
            io.omap_set(DEFERRED_REMOVALS, &[(&image_id, name.as_bytes())])
                .map_err(Error::ceph(format!("cannot note {name} for a later removal")))?;
            info!(image = name, image_id, "a restored volume still depends on it: left in the trash until it is gone");
            Ok(())
        }
        Err(e) => Err(Error::Ceph { what: format!("cannot delete {name} from the trash"), source: e }),
    }
}

/// The omap object (per pool and namespace) listing trashed snapshot images
/// whose removal waits for the restored volumes that depend on them: key
/// the image ID, value its name.
const DEFERRED_REMOVALS: &str = "rbd-addons.deferred-removals";

/// How many waiting removals one call tries: a call stays fast however
/// many restored volumes are still around.
const SWEEP_BATCH: u64 = 16;

fn still_needed(e: &CephError) -> bool {
    e.is(libc::EBUSY) || e.is(libc::ENOTEMPTY)
}

/// Deletes trashed snapshot images whose last dependent clone is gone.
/// Best effort: a failure is logged and retried by the next call, never
/// the caller's error.
fn sweep_trash(io: &IoCtx) {
    let waiting = match io.omap_list(DEFERRED_REMOVALS, "", "", SWEEP_BATCH) {
        Ok(w) => w,
        Err(e) if e.is(libc::ENOENT) => return,
        Err(e) => return warn!(error = %e, "cannot read the snapshot images waiting for removal"),
    };
    for (image_id, name) in waiting {
        let name = String::from_utf8_lossy(&name);
        match io.trash_remove(&image_id).or_done(libc::ENOENT) {
            Ok(()) => {
                if let Err(e) = io.omap_rm_keys(DEFERRED_REMOVALS, &[&image_id]) {
                    warn!(image = %name, error = %e, "deleted, but cannot strike it from the waiting list");
                    continue;
                }
                info!(image = %name, image_id, "snapshot image deleted: nothing depends on it any more");
            }
            Err(e) if still_needed(&e) => {}
            Err(e) => warn!(image = %name, error = %e, "cannot delete a snapshot image from the trash"),
        }
    }
}

fn not_found_is_missing(e: Error) -> Error {
    match e {
        Error::ImageNotFound { image } => Error::Missing(format!("its image {image} does not exist")),
        Error::Ceph { source, what } if source.is(libc::ENOENT) => Error::Missing(what),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params;

    #[test]
    fn parameters_are_ceph_csis_class_keys() {
        let p = CreateParams::parse(&params(&[("clusterID", "c"), ("pool", "p")])).unwrap();
        assert_eq!(p, CreateParams { cluster_id: Some("c".into()), pool: Some("p".into()) });
        assert_eq!(CreateParams::parse(&HashMap::new()).unwrap(), CreateParams::default());
        let err = CreateParams::parse(&params(&[("imageFeatures", "layering")])).unwrap_err();
        assert!(matches!(err, Error::Malformed(_)) && err.to_string().contains("imageFeatures"), "{err}");
    }

    #[test]
    fn sources_are_checked_before_any_ceph_call() {
        let id = |n: u8| format!("0001-0009-rook-ceph-0000000000000002-{:08x}-0000-0000-0000-000000000000", n);
        assert!(check_sources(&[id(1), id(2)]).is_ok());
        let malformed = |ids: Vec<String>| matches!(check_sources(&ids), Err(Error::Malformed(_)));
        assert!(malformed(vec![]), "none");
        assert!(malformed(vec![id(1), id(1)]), "twice");
        assert!(malformed(vec!["nope".into()]), "undecodable");
        let many: Vec<String> = (0..=MAX_SNAPSHOT_MEMBERS as u8).map(id).collect();
        assert!(matches!(check_sources(&many), Err(Error::TooMany(_))), "{} ids", many.len());
    }

    #[test]
    fn a_plan_survives_its_round_trip_through_json() {
        let plan = Plan {
            name: "groupsnapshot-1".into(),
            rbd_group: "csi-vgs-x".into(),
            temporary: true,
            members: vec![PlannedMember {
                volume_id: "v".into(),
                snap_uuid: "u".into(),
                snap_name: "groupsnapshot-1-snap-0".into(),
                size_bytes: 4096,
            }],
            finished: false,
        };
        let raw = serde_json::to_vec(&plan).unwrap();
        assert_eq!(serde_json::from_slice::<Plan>(&raw).unwrap(), plan);
    }
}
