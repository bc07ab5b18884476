//! ceph-csi's snapshot journal: a directory object `csi.snaps.<instance>`
//! mapping request names (`csi.snap.<name>`) to UUIDs, and one object
//! `csi.snap.<uuid>` per snapshot naming its request, its image
//! (`csi-snap-<uuid>`, which holds a snapshot of the same name), its source
//! image, the image's ID and, for a member of a group snapshot, the group
//! snapshot's ID. csi-rbdplugin's CreateVolume restores from exactly these.

use crate::ceph::{CephError, IoCtx};

const INSTANCE: &str = "default";
const NAME_KEY: &str = "csi.snapname";
const IMAGE_KEY: &str = "csi.imagename";
const SOURCE_KEY: &str = "csi.source";
const IMAGE_ID_KEY: &str = "csi.imageid";
const GROUP_ID_KEY: &str = "csi.groupid";

fn directory() -> String {
    format!("csi.snaps.{INSTANCE}")
}

fn name_key(name: &str) -> String {
    format!("csi.snap.{name}")
}

fn snap_object(uuid: &str) -> String {
    format!("csi.snap.{uuid}")
}

/// The image (and the snapshot on it) ceph-csi names after a snapshot UUID.
pub(crate) fn image_name(uuid: &str) -> String {
    format!("csi-snap-{uuid}")
}

/// One snapshot as its journal records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapRecord {
    pub name: String,
    /// `csi-snap-<uuid>`: the image, and its snapshot's name.
    pub image: String,
    /// The image the snapshot was taken of.
    pub source: String,
    pub image_id: Option<String>,
    pub group_id: Option<String>,
}

/// Records a snapshot: its object first, then the directory entry, so that a
/// crash in between leaves an unreferenced object rather than a dangling name.
/// Idempotent for the same arguments.
pub(crate) fn reserve(io: &IoCtx, name: &str, uuid: &str, source: &str, group_id: &str) -> Result<(), CephError> {
    let image = image_name(uuid);
    io.omap_set(
        &snap_object(uuid),
        &[
            (NAME_KEY, name.as_bytes()),
            (IMAGE_KEY, image.as_bytes()),
            (SOURCE_KEY, source.as_bytes()),
            (GROUP_ID_KEY, group_id.as_bytes()),
        ],
    )?;
    io.omap_set(&directory(), &[(&name_key(name), uuid.as_bytes())])
}

pub(crate) fn set_image_id(io: &IoCtx, uuid: &str, image_id: &str) -> Result<(), CephError> {
    io.omap_set(&snap_object(uuid), &[(IMAGE_ID_KEY, image_id.as_bytes())])
}

/// A snapshot's record; None when the journal has no (finished) entry.
pub(crate) fn read(io: &IoCtx, uuid: &str) -> Result<Option<SnapRecord>, CephError> {
    let vals = match io.omap_get(&snap_object(uuid), &[NAME_KEY, IMAGE_KEY, SOURCE_KEY, IMAGE_ID_KEY, GROUP_ID_KEY]) {
        Ok(v) => v,
        Err(e) if e.is(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let text = |k: &str| vals.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
    let Some(name) = text(NAME_KEY) else { return Ok(None) };
    Ok(Some(SnapRecord {
        name,
        image: text(IMAGE_KEY).unwrap_or_else(|| image_name(uuid)),
        source: text(SOURCE_KEY).unwrap_or_default(),
        image_id: text(IMAGE_ID_KEY).filter(|v| !v.is_empty()),
        group_id: text(GROUP_ID_KEY).filter(|v| !v.is_empty()),
    }))
}

/// Removes the directory entry first (the name is free again), then the object.
pub(crate) fn remove(io: &IoCtx, name: &str, uuid: &str) -> Result<(), CephError> {
    super::remove_entry(io, &directory(), &name_key(name), &snap_object(uuid))
}
