//! ceph-csi's volume-group journal: a directory object `csi.groups.<instance>`
//! mapping request names to UUIDs, and one object `csi.volume.group.<uuid>` per
//! group holding its request name, RBD group name, creation time and one key
//! per member volume ID. Written in that layout so ceph-csi reads our groups
//! and we read its groups.

use std::collections::BTreeMap;

use crate::ceph::{CephError, IoCtx};

/// ceph-csi's `--instanceid` default.
const INSTANCE: &str = "default";
const NAME_KEY: &str = "csi.volname";
const GROUP_NAME_KEY: &str = "csi.groupname";
const CREATED_KEY: &str = "csi.creationtime";
/// ceph-csi's default `volumeGroupNamePrefix`.
pub(crate) const DEFAULT_GROUP_PREFIX: &str = "csi-vol-group-";

fn directory() -> String {
    format!("csi.groups.{INSTANCE}")
}

fn name_key(name: &str) -> String {
    format!("csi.volume.group.{name}")
}

pub(crate) fn group_object(uuid: &str) -> String {
    format!("csi.volume.group.{uuid}")
}

/// One group as its journal records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupRecord {
    pub uuid: String,
    pub name: String,
    /// The RBD group's name in the pool.
    pub rbd_group: String,
    /// RFC 3339, as ceph-csi writes it.
    pub created: String,
    /// Member volume IDs, sorted; for a group snapshot, its member snapshot IDs.
    pub members: Vec<String>,
    /// A group snapshot's members: snapshot ID → the snapshot's request name
    /// (ceph-csi writes "" for a volume group's members).
    pub snapshot_names: BTreeMap<String, String>,
}

impl GroupRecord {
    /// Volume groups and group snapshots share ceph-csi's journal; a group
    /// snapshot's members carry their request names.
    pub(crate) fn is_group_snapshot(&self) -> bool {
        !self.snapshot_names.is_empty()
    }
}

/// Reads a group's record; None when the journal has no such group.
pub(crate) fn read(io: &IoCtx, uuid: &str) -> Result<Option<GroupRecord>, CephError> {
    let entries = match all_entries(io, &group_object(uuid)) {
        Ok(e) => e,
        Err(e) if e.is(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let text = |k: &str| entries.get(k).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    let Some(name) = entries.get(NAME_KEY).map(|v| String::from_utf8_lossy(v).into_owned()) else {
        // An object without its name key is a reservation that never finished.
        return Ok(None);
    };
    let is_member = |k: &&String| !matches!(k.as_str(), NAME_KEY | GROUP_NAME_KEY | CREATED_KEY);
    let members = entries.keys().filter(is_member).cloned().collect();
    let snapshot_names = entries
        .iter()
        .filter(|(k, v)| is_member(k) && !v.is_empty())
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let rbd_group =
        Some(text(GROUP_NAME_KEY)).filter(|g| !g.is_empty()).unwrap_or_else(|| format!("{DEFAULT_GROUP_PREFIX}{uuid}"));
    Ok(Some(GroupRecord {
        uuid: uuid.to_owned(),
        name,
        rbd_group,
        created: text(CREATED_KEY),
        members,
        snapshot_names,
    }))
}

fn all_entries(io: &IoCtx, oid: &str) -> Result<BTreeMap<String, Vec<u8>>, CephError> {
    let mut out = BTreeMap::new();
    let mut after = String::new();
    loop {
        let page = io.omap_list(oid, "", &after, 1000)?;
        let full = page.len() == 1000;
        if let Some((k, _)) = page.last() {
            after = k.clone();
        }
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// The UUID reserved for a request name, if any.
pub(crate) fn lookup_name(io: &IoCtx, name: &str) -> Result<Option<String>, CephError> {
    let key = name_key(name);
    match io.omap_get(&directory(), &[&key]) {
        Ok(vals) => Ok(vals.get(&key).map(|v| String::from_utf8_lossy(v).into_owned())),
        Err(e) if e.is(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Records a new group: its object first, then the directory entry, so that
/// a crash in between leaves an unreferenced object rather than a name that
/// points nowhere; a retry with the same name finds nothing and starts over.
pub(crate) fn reserve(io: &IoCtx, name: &str, uuid: &str, rbd_group: &str, created: &str) -> Result<(), CephError> {
    io.omap_set(
        &group_object(uuid),
        &[(NAME_KEY, name.as_bytes()), (GROUP_NAME_KEY, rbd_group.as_bytes()), (CREATED_KEY, created.as_bytes())],
    )?;
    io.omap_set(&directory(), &[(&name_key(name), uuid.as_bytes())])
}

/// Records a new group snapshot with its members (snapshot ID → request
/// name) in one write, then its directory entry: no reader ever sees a group
/// snapshot without members, which would look like an empty volume group.
pub(crate) fn reserve_snapshot(
    io: &IoCtx,
    name: &str,
    uuid: &str,
    created: &str,
    members: &[(String, String)],
) -> Result<(), CephError> {
    let rbd_group = format!("{DEFAULT_GROUP_PREFIX}{uuid}");
    let mut pairs: Vec<(&str, &[u8])> =
        vec![(NAME_KEY, name.as_bytes()), (GROUP_NAME_KEY, rbd_group.as_bytes()), (CREATED_KEY, created.as_bytes())];
    pairs.extend(members.iter().map(|(id, snap)| (id.as_str(), snap.as_bytes())));
    io.omap_set(&group_object(uuid), &pairs)?;
    io.omap_set(&directory(), &[(&name_key(name), uuid.as_bytes())])
}

pub(crate) fn add_members(io: &IoCtx, uuid: &str, volume_ids: &[String]) -> Result<(), CephError> {
    if volume_ids.is_empty() {
        return Ok(());
    }
    let pairs: Vec<(&str, &[u8])> = volume_ids.iter().map(|v| (v.as_str(), &b""[..])).collect();
    io.omap_set(&group_object(uuid), &pairs)
}

pub(crate) fn remove_members(io: &IoCtx, uuid: &str, volume_ids: &[String]) -> Result<(), CephError> {
    if volume_ids.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = volume_ids.iter().map(String::as_str).collect();
    io.omap_rm_keys(&group_object(uuid), &keys)
}

/// Removes the directory entry first (the name is free again), then the object.
pub(crate) fn remove(io: &IoCtx, name: &str, uuid: &str) -> Result<(), CephError> {
    super::remove_entry(io, &directory(), &name_key(name), &group_object(uuid))
}

/// Up to `max` (request name, uuid) pairs after the request name `after`.
pub(crate) fn list(io: &IoCtx, after: &str, max: u64) -> Result<Vec<(String, String)>, CephError> {
    let prefix = name_key("");
    let start = if after.is_empty() { String::new() } else { name_key(after) };
    let page = match io.omap_list(&directory(), &prefix, &start, max) {
        Ok(p) => p,
        Err(e) if e.is(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(page
        .into_iter()
        .map(|(k, v)| (k[prefix.len()..].to_owned(), String::from_utf8_lossy(&v).into_owned()))
        .collect())
}
