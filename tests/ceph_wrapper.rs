//! The safe librados/librbd wrapper on its own, against site-a of the lab as
//! the restricted CSI user: omap writes and reads, RBD groups and membership.
//! (The groundwork of volume groups; checked against the rbd CLI's view.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rbd_addons::testkit::{Cluster, ConnectOptions, Image, IoCtx};

fn connect(lab: &Lab) -> Arc<Cluster> {
    let (mon, user, key) = (lab.mon_host(Site::A), lab.user(), lab.key());
    Cluster::connect(&ConnectOptions { mon_host: &mon, user: &user, key: &key, op_timeout: Duration::from_secs(30) })
        .expect("connect as the CSI user")
}

#[test]
fn omap_writes_reads_pages_and_removes() {
    let lab = Lab::load();
    let io = IoCtx::open(&connect(&lab), lab.pool_id(Site::A), "").unwrap();
    let oid = format!("rbd-addons-test.{}", new_uuid());
    io.omap_set(&oid, &[("csi.a.1", b"one"), ("csi.a.2", b""), ("other", b"x")]).unwrap();
    let got = io.omap_get(&oid, &["csi.a.1", "csi.a.2", "absent"]).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got["csi.a.1"], b"one");

    // Paging by prefix: one entry at a time.
    let first = io.omap_list(&oid, "csi.a.", "", 1).unwrap();
    assert_eq!(first.len(), 1);
    let rest = io.omap_list(&oid, "csi.a.", &first[0].0, 10).unwrap();
    assert_eq!(rest.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["csi.a.2"]);

    io.omap_rm_keys(&oid, &["csi.a.1", "absent"]).unwrap();
    assert!(io.omap_get(&oid, &["csi.a.1"]).unwrap().is_empty());
    io.remove(&oid).unwrap();
    assert_eq!(io.omap_get(&oid, &["csi.a.2"]).unwrap_err().errno, libc::ENOENT);
    assert_eq!(io.remove(&oid).unwrap_err().errno, libc::ENOENT);
    assert_eq!(io.omap_list(&oid, "", "", 10).unwrap_err().errno, libc::ENOENT);
}

#[test]
fn rbd_groups_and_membership() {
    let lab = Lab::load();
    let io = IoCtx::open(&connect(&lab), lab.pool_id(Site::A), "").unwrap();
    let group = format!("rbd-addons-test-{}", &new_uuid()[..8]);
    let (v1, v2) = (lab.create_volume(VolumeOpts::default()), lab.create_volume(VolumeOpts::default()));
    let name = |v: &TestVolume| v.spec.rsplit('/').next().unwrap().to_owned();

    io.group_create(&group).unwrap();
    assert_eq!(io.group_create(&group).unwrap_err().errno, libc::EEXIST);
    io.group_image_add(&group, &io, &name(&v1)).unwrap();
    io.group_image_add(&group, &io, &name(&v2)).unwrap();
    let mut members: Vec<String> = io.group_image_list(&group).unwrap().into_iter().map(|m| m.image).collect();
    members.sort();
    let mut want = vec![name(&v1), name(&v2)];
    want.sort();
    assert_eq!(members, want);
    // Ceph's own view agrees.
    let cli = lab.rbd(Site::A, &["group", "image", "list", &format!("{}/{group}", lab.pool())]);
    assert!(cli.contains(&name(&v1)) && cli.contains(&name(&v2)), "{cli}");

    let image = Image::open(&io, &name(&v1)).unwrap();
    assert_eq!(image.group().unwrap(), Some((lab.pool_id(Site::A), group.clone())));
    drop(image);
    // An image belongs to one group at most.
    let other = format!("{group}-other");
    io.group_create(&other).unwrap();
    assert!(io.group_image_add(&other, &io, &name(&v1)).is_err());

    io.group_image_remove(&group, &io, &name(&v1)).unwrap();
    assert_eq!(Image::open(&io, &name(&v2)).unwrap().group().unwrap().map(|g| g.1), Some(group.clone()));
    assert_eq!(Image::open(&io, &name(&v1)).unwrap().group().unwrap(), None);
    io.group_image_remove(&group, &io, &name(&v2)).unwrap();
    assert!(io.group_image_list(&group).unwrap().is_empty());
    io.group_remove(&group).unwrap();
    io.group_remove(&other).unwrap();
    // librbd treats removing a missing group as done: deletes are idempotent.
    io.group_remove(&group).unwrap();
    assert!(lab.rbd(Site::A, &["group", "list", &lab.pool()]).lines().all(|g| g != group));
    cleanup(&lab, &v1.spec);
    cleanup(&lab, &v2.spec);
}
