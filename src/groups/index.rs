//! How the peer site finds a group's members without reading every image
//! header in the pool (~0.55 ms per image: 1.7 s with 3,000 images).
//!
//! The site that owns a group writes onto every member, besides the group
//! key, a signature of the whole member list (`MEMBERS_KEY`); rbd-mirror
//! mirrors it with the image. The peer keeps an index object per pool (group
//! UUID → the members' image and volume IDs), made by one scan. A call reads
//! only the indexed members' headers and trusts the index when each still
//! carries the group key and its own volume ID, and every one's signature is
//! the index's list: a join or leave on the owning site changes the
//! signature on every member, so the first of them to be mirrored sends the
//! next call back to a scan. Groups tagged before signatures existed are
//! never indexed: they are scanned on every call, as before.
//!
//! A join whose new member's tag is mirrored before any old member's new
//! signature is not seen until one is; a forced promote therefore checks the
//! index against a scan (`members_by_scan`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{GROUP_KEY, VOLUME_ID_KEY};
use crate::Error;
use crate::ceph::{AlreadyDone, IoCtx};

/// Image metadata on every member: `<count>:<FNV-1a of the sorted volume
/// IDs, one per line>`, rewritten on every member at every membership change.
pub(super) const MEMBERS_KEY: &str = "rbd-addons.group-members";
/// The peer's index object, in the group's pool (and RADOS namespace).
const INDEX_OBJECT: &str = "rbd-addons.group-index";

/// The signature of a member list, as `MEMBERS_KEY` holds it.
pub(super) fn signature<'a>(volume_ids: impl IntoIterator<Item = &'a String>) -> String {
    let sorted: BTreeSet<&String> = volume_ids.into_iter().collect();
    // FNV-1a: stable across builds and releases, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for id in &sorted {
        for b in id.bytes().chain(std::iter::once(b'\n')) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{}:{hash:016x}", sorted.len())
}

/// One member as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Indexed {
    image_id: String,
    volume_id: String,
}

/// A header that carries the group's key, as a scan found it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tagged {
    image_id: String,
    volume_id: String,
    signature: Option<String>,
}

/// The group's member volume IDs on this (peer) site, sorted: from the
/// index when the members confirm it, else by a scan (which renews it).
pub(super) fn members(io: &IoCtx, uuid: &str) -> Result<Vec<String>, Error> {
    if let Some(indexed) = read_index(io, uuid)? {
        if confirmed(io, uuid, &indexed)? {
            let mut ids: Vec<String> = indexed.into_iter().map(|m| m.volume_id).collect();
            ids.sort();
            return Ok(ids);
        }
        debug!(group = uuid, "the group's index is stale; scanning the pool");
    }
    members_by_scan(io, uuid)
}

/// The members by a scan of every header, and the index renewed from it
/// (or dropped, while the members' signatures disagree with what was found).
pub(super) fn members_by_scan(io: &IoCtx, uuid: &str) -> Result<Vec<String>, Error> {
    let tagged = scan(io, uuid)?;
    let ids: Vec<String> = tagged.iter().map(|t| t.volume_id.clone()).collect();
    let expected = signature(&ids);
    let settled = !tagged.is_empty() && tagged.iter().all(|t| t.signature.as_deref() == Some(expected.as_str()));
    let renewed = if settled {
        let indexed: Vec<Indexed> =
            tagged.into_iter().map(|t| Indexed { image_id: t.image_id, volume_id: t.volume_id }).collect();
        serde_json::to_vec(&indexed)
            .map_err(|e| Error::Malformed(format!("cannot encode the group index: {e}")))
            .and_then(|v| io.omap_set(INDEX_OBJECT, &[(uuid, &v)]).map_err(Error::ceph("cannot write the group index")))
    } else {
        io.omap_rm_keys(INDEX_OBJECT, &[uuid]).or_done(libc::ENOENT).map_err(Error::ceph("cannot drop a group index"))
    };
    // The index only saves time: a failure to keep it never fails the call.
    if let Err(e) = renewed {
        warn!(group = uuid, error = %e, "cannot keep the group index; the next call scans again");
    }
    let mut ids = ids;
    ids.sort();
    Ok(ids)
}

fn read_index(io: &IoCtx, uuid: &str) -> Result<Option<Vec<Indexed>>, Error> {
    let raw = match io.omap_get(INDEX_OBJECT, &[uuid]) {
        Ok(mut vals) => vals.remove(uuid),
        Err(e) if e.is(libc::ENOENT) => None,
        Err(e) => return Err(Error::ceph("cannot read the group index")(e)),
    };
    // An entry that does not parse is as good as none: the scan rewrites it.
    Ok(raw.and_then(|r| serde_json::from_slice(&r).ok()))
}

/// Whether every indexed member still carries the group key, its own volume
/// ID and the signature of exactly the indexed list.
fn confirmed(io: &IoCtx, uuid: &str, indexed: &[Indexed]) -> Result<bool, Error> {
    if indexed.is_empty() {
        return Ok(false);
    }
    let expected = signature(indexed.iter().map(|m| &m.volume_id));
    let keys = [meta_key(GROUP_KEY), meta_key(VOLUME_ID_KEY), meta_key(MEMBERS_KEY)];
    for m in indexed {
        let vals = match io.omap_get(&format!("rbd_header.{}", m.image_id), &[&keys[0], &keys[1], &keys[2]]) {
            Ok(v) => v,
            Err(e) if e.is(libc::ENOENT) => return Ok(false),
            Err(e) => return Err(Error::ceph("cannot read a member's header")(e)),
        };
        let text = |k: &String| vals.get(k).map(|v| metadata_text(v));
        if text(&keys[0]).as_deref() != Some(uuid)
            || text(&keys[1]).as_deref() != Some(m.volume_id.as_str())
            || text(&keys[2]).as_deref() != Some(expected.as_str())
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Every header of the pool that carries this group's key: one omap read per
/// image, no image opened.
fn scan(io: &IoCtx, uuid: &str) -> Result<Vec<Tagged>, Error> {
    let images = io.image_directory().map_err(Error::ceph("cannot list the pool's images"))?;
    let keys = [meta_key(GROUP_KEY), meta_key(VOLUME_ID_KEY), meta_key(MEMBERS_KEY)];
    let mut tagged = Vec::new();
    for (image_id, _name) in images {
        let vals = match io.omap_get(&format!("rbd_header.{image_id}"), &[&keys[0], &keys[1], &keys[2]]) {
            Ok(v) => v,
            Err(e) if e.is(libc::ENOENT) => continue,
            Err(e) => return Err(Error::ceph("cannot read an image header")(e)),
        };
        if vals.get(&keys[0]).is_some_and(|g| metadata_text(g) == uuid)
            && let Some(v) = vals.get(&keys[1])
        {
            let signature = vals.get(&keys[2]).map(|s| metadata_text(s));
            tagged.push(Tagged { image_id, volume_id: metadata_text(v), signature });
        }
    }
    Ok(tagged)
}

/// Image metadata lives in the header's omap under this prefix.
fn meta_key(key: &str) -> String {
    format!("metadata_{key}")
}

/// Image metadata values in a header's omap are encoded strings (u32 length
/// prefix); `rbd_metadata_set` writes them that way.
fn metadata_text(raw: &[u8]) -> String {
    match raw.get(..4).map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize) {
        Some(len) if raw.len() == len + 4 => String::from_utf8_lossy(&raw[4..]).into_owned(),
        _ => String::from_utf8_lossy(raw).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_values_in_a_header_are_length_prefixed() {
        assert_eq!(metadata_text(b"\x03\x00\x00\x00abc"), "abc");
        // Anything else is taken as it is.
        assert_eq!(metadata_text(b"abc"), "abc");
        assert_eq!(metadata_text(b"\x09\x00\x00\x00abc"), "\t\0\0\0abc");
    }

    #[test]
    fn a_signature_names_the_set_whatever_its_order() {
        let (a, b, c) = ("0001-a".to_owned(), "0001-b".to_owned(), "0001-c".to_owned());
        assert_eq!(signature([&a, &b]), signature([&b, &a]));
        assert_ne!(signature([&a, &b]), signature([&a, &c]));
        assert_ne!(signature([&a, &b]), signature([&a, &b, &c]));
        assert!(signature([&a, &b]).starts_with("2:"));
        // Fixed across builds: the peer may run another version of us.
        assert_eq!(signature(Vec::<&String>::new()), "0:cbf29ce484222325");
        // Joining without a separator must not collide ("ab" + "c" vs "a" + "bc").
        assert_ne!(signature([&"ab".to_owned(), &"c".to_owned()]), signature([&"a".to_owned(), &"bc".to_owned()]));
    }
}
