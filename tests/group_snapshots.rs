//! Volume group snapshots through the CSI front against the lab, judged the
//! way csi-rbdplugin would use them: each member snapshot is found through
//! ceph-csi's snapshot journal and restored as a clone of
//! `csi-snap-<uuid>@csi-snap-<uuid>`; the restored images must hold one
//! instant across members (the interleaved writer's gap-free prefix).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use rbd_addons::client::Connection;
use rbd_addons::proto::csi::v1::VolumeGroupSnapshot;
use rbd_addons::testkit::IoCtx;
use rbd_addons::testkit::interleave::{MEMBERS, Writer, arm_writer, first_gap, join_writer, records_on};
use serde_json::Value;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(150);
const CUTS: usize = 4;
/// One test at a time: the proof measures the writer, the others restart servers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cut_count() -> usize {
    std::env::var("GROUP_SNAPSHOT_CUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(CUTS)
}

fn params(lab: &Lab) -> HashMap<String, String> {
    HashMap::from([("clusterID".to_owned(), lab.cluster_id()), ("pool".to_owned(), lab.pool())])
}

/// A front whose upstream is absent: these tests talk to the GroupController.
async fn front_server(lab: &Lab) -> (Server, Connection) {
    front_on(lab, Site::A).await
}

async fn front_on(lab: &Lab, site: Site) -> (Server, Connection) {
    let mapping = lab.facts["sites"][site.key()]["cluster_mapping"].as_str().unwrap().to_owned();
    let extra = ["--cluster-mapping", mapping.as_str()];
    let server = Server::start_with_front(&lab.csi_config(site), Path::new("/nonexistent/csi.sock"), &extra).await;
    let conn = Connection::open(&format!("unix://{}", server.front().display()), Duration::from_secs(120))
        .await
        .expect("connect to the CSI front")
        .with_secrets(lab.secrets());
    (server, conn)
}

fn code(e: tonic::Status) -> Code {
    e.code()
}

fn uuid_of(id: &str) -> &str {
    &id[id.len() - 36..]
}

/// The journal object of a member snapshot, read as ceph-csi reads it.
fn snap_journal(lab: &Lab, snapshot_id: &str) -> HashMap<String, String> {
    let cluster = connect(lab, Site::A);
    let io = IoCtx::open(&cluster, lab.pool_id(Site::A), "").unwrap();
    let oid = format!("csi.snap.{}", uuid_of(snapshot_id));
    let keys = ["csi.snapname", "csi.imagename", "csi.source", "csi.imageid", "csi.groupid"];
    io.omap_get(&oid, &keys)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

/// Restores a member as csi-rbdplugin's CreateVolume does: the snapshot ID
/// names a journal object, whose `csi.imagename` is an image holding a
/// snapshot of the same name; the new volume is a clone (format 2) of it.
fn restore(lab: &Lab, snapshot_id: &str) -> String {
    let journal = snap_journal(lab, snapshot_id);
    let image = journal.get("csi.imagename").unwrap_or_else(|| panic!("no journal entry for {snapshot_id}"));
    let restored = format!("restored-{}", new_uuid());
    let (parent, child) = (format!("{}/{image}@{image}", lab.pool()), format!("{}/{restored}", lab.pool()));
    lab.rbd(Site::A, &["clone", "--rbd-default-clone-format", "2", &parent, &child]);
    restored
}

fn image_of(spec: &str) -> String {
    spec.rsplit('/').next().unwrap().to_owned()
}

async fn until_ready(conn: &Connection, id: &str) -> VolumeGroupSnapshot {
    let started = Instant::now();
    loop {
        let v = conn.group_snapshot_get(id).await.expect("get group snapshot");
        if v.ready_to_use {
            return v;
        }
        assert!(started.elapsed() < LIMIT, "group snapshot {id} not ready after {LIMIT:?}: {v:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The snapshot IDs of a group snapshot, in the order of `vols`.
fn member_snapshots(v: &VolumeGroupSnapshot, vols: &[TestVolume]) -> Vec<String> {
    vols.iter()
        .map(|vol| {
            let s = v.snapshots.iter().find(|s| s.source_volume_id == vol.id).expect("a snapshot per volume");
            assert_eq!(s.group_snapshot_id, v.group_snapshot_id, "{s:?}");
            s.snapshot_id.clone()
        })
        .collect()
}

fn remove_images(lab: &Lab, images: &[String]) {
    for i in images {
        lab.rbd_try(Site::A, &["rm", "--no-progress", &format!("{}/{i}", lab.pool())]).ok();
    }
}

/// No image, journal entry or RBD group of this group snapshot is left.
fn assert_gone(lab: &Lab, group_snapshot_id: &str, snapshot_ids: &[String]) {
    let images = lab.rbd(Site::A, &["ls", &lab.pool()]);
    for s in snapshot_ids {
        assert!(!images.contains(uuid_of(s)), "snapshot image of {s} is still listed");
        assert!(snap_journal(lab, s).is_empty(), "journal entry of {s} is still there");
    }
    let groups = lab.rbd(Site::A, &["group", "ls", &lab.pool()]);
    assert!(!groups.contains(uuid_of(group_snapshot_id)), "a temporary RBD group is left: {groups}");
}

#[tokio::test]
async fn group_snapshots_restore_as_ceph_csi_does_and_hold_one_instant() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let (_server, conn) = front_server(&lab).await;
    let vols: Vec<TestVolume> =
        (0..MEMBERS).map(|_| lab.create_volume(VolumeOpts { size_mb: 256, ..Default::default() })).collect();
    let ids: Vec<String> = vols.iter().map(|v| v.id.clone()).collect();
    let names: Vec<String> = vols.iter().map(|v| image_of(&v.spec)).collect();

    let cluster = connect(&lab, Site::A);
    let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let w = arm_writer(Writer {
        cluster,
        pool_id: lab.pool_id(Site::A),
        images: names.clone(),
        stop: stop.clone(),
        written: written.clone(),
        acks: Some(latencies.clone()),
        honour_quiesce: true,
    })
    .start();
    let cluster = connect(&lab, Site::A);
    let pool = lab.pool_id(Site::A);
    let mut rng = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut control_broke = 0;
    for cut in 0..cut_count() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(500 + rng % 1500)).await;
        // The control: one member after another, as per-volume snapshots are.
        let control = format!("control-{cut}");
        for v in &vols {
            lab.rbd(Site::A, &["snap", "create", "--skip-quiesce", &format!("{}@{control}", v.spec)]);
        }
        let started = Instant::now();
        let name = format!("groupsnapshot-{}", new_uuid());
        let created = conn.group_snapshot_create(&name, &refs(&ids), params(&lab)).await.expect("create");
        let gid = created.group_snapshot_id.clone();
        let ready = until_ready(&conn, &gid).await;
        let took = started.elapsed();
        let snapshot_ids = member_snapshots(&ready, &vols);

        // Each member, restored as csi-rbdplugin restores a snapshot.
        let restored: Vec<String> = snapshot_ids.iter().map(|s| restore(&lab, s)).collect();
        for (s, v) in snapshot_ids.iter().zip(&vols) {
            let j = snap_journal(&lab, s);
            assert_eq!(j.get("csi.source").map(String::as_str), Some(image_of(&v.spec).as_str()), "{j:?}");
            assert_eq!(j.get("csi.groupid").map(String::as_str), Some(gid.as_str()), "{j:?}");
            assert!(j.get("csi.imageid").is_some_and(|i| !i.is_empty()), "{j:?}");
        }
        let upto = written.load(Ordering::Relaxed) + 64;
        let present = records_on(&cluster, pool, &restored, upto);
        assert!(!present.is_empty(), "cut {cut}: no record in the restored volumes");
        assert_eq!(
            first_gap(&present),
            None,
            "cut {cut}: the restored members hold records up to {:?} with a gap",
            present.iter().next_back()
        );
        let controls: Vec<String> = vols
            .iter()
            .map(|v| {
                let clone = format!("control-{}", new_uuid());
                let (parent, child) = (format!("{}@{control}", v.spec), format!("{}/{clone}", lab.pool()));
                lab.rbd(Site::A, &["clone", "--rbd-default-clone-format", "2", &parent, &child]);
                clone
            })
            .collect();
        let control_gap = first_gap(&records_on(&cluster, pool, &controls, upto));
        control_broke += usize::from(control_gap.is_some());
        println!(
            "cut {cut}: group snapshot ready in {:.2}s, restored prefix 1..{} gap-free; control gap at {control_gap:?}",
            took.as_secs_f64(),
            present.iter().next_back().unwrap()
        );
        remove_images(&lab, &controls);
        remove_images(&lab, &restored);
        for v in &vols {
            lab.rbd(Site::A, &["snap", "rm", "--no-progress", &format!("{}@{control}", v.spec)]);
        }
        conn.group_snapshot_delete(&gid, &refs(&snapshot_ids)).await.expect("delete");
        assert_gone(&lab, &gid, &snapshot_ids);
    }
    stop.store(true, Ordering::Relaxed);
    let quiesced = join_writer(w, Duration::from_secs(120));
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    println!(
        "writer: {} records, paused {quiesced} times; write latency p50 {:?}, max {:?}",
        written.load(Ordering::Relaxed),
        l.get(l.len() / 2),
        l.last()
    );
    assert!(quiesced >= cut_count() as u64, "librbd did not ask the writer to pause for every group snapshot");
    assert!(control_broke > 0, "member-by-member snapshots never split an instant: the test proves nothing");
    for v in &vols {
        cleanup(&lab, &v.spec);
    }
}

#[tokio::test]
async fn create_is_idempotent_by_name_and_get_and_delete_answer_as_csi_says() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let (_server, conn) = front_server(&lab).await;
    let vols: Vec<TestVolume> = (0..2).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    for v in &vols {
        write_data(&lab, Site::A, &v.spec);
    }
    let ids: Vec<String> = vols.iter().map(|v| v.id.clone()).collect();
    let name = format!("groupsnapshot-{}", new_uuid());
    let first = conn.group_snapshot_create(&name, &refs(&ids), params(&lab)).await.expect("create");
    assert!(first.ready_to_use, "{first:?}");
    let again = conn.group_snapshot_create(&name, &refs(&ids), params(&lab)).await.expect("retry");
    assert_eq!(first, again, "a retried Create must give the same answer");
    let gid = first.group_snapshot_id.clone();
    assert_eq!(conn.group_snapshot_get(&gid).await.expect("get"), first);
    let snapshot_ids = member_snapshots(&first, &vols);
    // With rbd_clone4 (Tentacle) a member image is a clone of the group
    // snapshot; without it (Pacific, Reef) a copy with no parent.
    let cloned = lab.release() == "tentacle";
    for s in &snapshot_ids {
        let image = snap_journal(&lab, s)["csi.imagename"].clone();
        let info = lab.rbd_json(Site::A, &["info", &format!("{}/{image}", lab.pool())]).unwrap();
        assert_eq!(info.get("parent").is_some(), cloned, "{image} on {}: {info}", lab.release());
    }
    for (s, v) in snapshot_ids.iter().zip(&vols) {
        let r = restore(&lab, s);
        assert_eq!(checksum(&lab, Site::A, &format!("{}/{r}", lab.pool())), checksum(&lab, Site::A, &v.spec));
        remove_images(&lab, &[r]);
    }

    // The same name for other volumes, and bad or missing group snapshots.
    let other = lab.create_volume(VolumeOpts::default());
    let e = conn.group_snapshot_create(&name, &[other.id.as_str()], params(&lab)).await.unwrap_err();
    assert_eq!(code(e), Code::AlreadyExists);
    let wrong = vec![snapshot_ids[0].clone()];
    assert_eq!(code(conn.group_snapshot_delete(&gid, &refs(&wrong)).await.unwrap_err()), Code::InvalidArgument);

    conn.group_snapshot_delete(&gid, &refs(&snapshot_ids)).await.expect("delete");
    assert_gone(&lab, &gid, &snapshot_ids);
    conn.group_snapshot_delete(&gid, &refs(&snapshot_ids)).await.expect("delete again: OK");
    assert_eq!(code(conn.group_snapshot_get(&gid).await.unwrap_err()), Code::NotFound);
    for v in vols.iter().chain([&other]) {
        cleanup(&lab, &v.spec);
    }
}

/// A restored volume keeps its snapshot image alive: Delete answers OK, the
/// journal is gone, and the image waits in the trash for the clone to go.
#[tokio::test]
async fn delete_while_a_restored_volume_depends_on_a_member() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let (_server, conn) = front_server(&lab).await;
    let v = lab.create_volume(VolumeOpts::default());
    write_data(&lab, Site::A, &v.spec);
    let name = format!("groupsnapshot-{}", new_uuid());
    let created = conn.group_snapshot_create(&name, &[v.id.as_str()], params(&lab)).await.unwrap();
    let gid = created.group_snapshot_id.clone();
    let snapshot_ids = member_snapshots(&created, std::slice::from_ref(&v));
    let restored = restore(&lab, &snapshot_ids[0]);
    conn.group_snapshot_delete(&gid, &[]).await.expect("delete with a dependent clone");
    assert_gone(&lab, &gid, &snapshot_ids);
    let spec = format!("{}/{restored}", lab.pool());
    assert_eq!(checksum(&lab, Site::A, &spec), checksum(&lab, Site::A, &v.spec), "the restored volume still reads");
    let waiting = uuid_of(&snapshot_ids[0]).to_owned();
    let in_trash = || lab.rbd(Site::A, &["trash", "ls", &lab.pool()]).contains(&waiting);
    let listed = || {
        let cluster = connect(&lab, Site::A);
        let io = IoCtx::open(&cluster, lab.pool_id(Site::A), "").unwrap();
        io.omap_list("rbd-addons.deferred-removals", "", "", 100).map(|e| e.len()).unwrap_or(0)
    };
    assert!(in_trash() && listed() == 1, "the snapshot image waits in the trash, noted for later");
    // Another group snapshot's calls sweep the waiting list, but leave what a
    // restored volume still needs.
    another_round(&lab, &conn, &v.id).await;
    assert!(in_trash() && listed() == 1, "still needed by the restored volume");
    assert_eq!(checksum(&lab, Site::A, &spec), checksum(&lab, Site::A, &v.spec), "the restored volume still reads");
    lab.rbd(Site::A, &["flatten", "--no-progress", &spec]);
    remove_images(&lab, &[restored]);
    another_round(&lab, &conn, &v.id).await;
    assert!(!in_trash(), "deleted by the next call once nothing depends on it");
    assert_eq!(listed(), 0, "struck from the waiting list");
    cleanup(&lab, &v.spec);
}

/// Creates and deletes one more group snapshot of the volume.
async fn another_round(lab: &Lab, conn: &Connection, volume_id: &str) {
    let name = format!("groupsnapshot-{}", new_uuid());
    let made = conn.group_snapshot_create(&name, &[volume_id], params(lab)).await.unwrap();
    let gid = made.group_snapshot_id.clone();
    conn.group_snapshot_delete(&gid, &[]).await.unwrap();
}

/// The copy of a member that a crash interrupted is made again by the next
/// server when asked (Get), and the group snapshot becomes ready.
#[tokio::test]
async fn an_interrupted_copy_resumes_after_a_restart() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    if lab.release() == "tentacle" {
        // rbd_clone4 makes member images instantly: nothing to interrupt.
        return;
    }
    let vols: Vec<TestVolume> =
        (0..MEMBERS).map(|_| lab.create_volume(VolumeOpts { size_mb: 256, ..Default::default() })).collect();
    for v in &vols {
        lab.rbd(Site::A, &["bench", "--io-type", "write", "--io-size", "4M", "--io-total", "256M", &v.spec]);
    }
    let ids: Vec<String> = vols.iter().map(|v| v.id.clone()).collect();
    let cluster = connect(&lab, Site::A);
    let io = IoCtx::open(&cluster, lab.pool_id(Site::A), "").unwrap();
    let copying =
        || io.omap_list("rbd_directory", "name_csi-snap-", "", 16).map(|keys| !keys.is_empty()).unwrap_or(false);
    let mut interrupted = None;
    for attempt in 0..3 {
        let (mut server, conn) = front_server(&lab).await;
        let name = format!("groupsnapshot-{}", new_uuid());
        let create = {
            let (ids, params) = (ids.clone(), params(&lab));
            tokio::spawn(async move { conn.group_snapshot_create(&name, &refs(&ids), params).await })
        };
        let started = Instant::now();
        while !copying() && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // SIGKILL mid-copy: nothing is cleaned up, as in a crash.
        server.take_child().kill().ok();
        create.await.ok();
        let v = lab.rbd(Site::A, &["ls", &lab.pool()]);
        let partial = v.lines().filter(|l| l.starts_with("csi-snap-")).count();
        println!("attempt {attempt}: killed the server with {partial} member image(s) begun");
        if let Some(gid) = group_snapshot_named(&lab) {
            interrupted = Some(gid);
            break;
        }
    }
    let gid = interrupted.expect("never caught a copy in progress");
    let (_server, conn) = front_server(&lab).await;
    let resumed = Instant::now();
    let first = conn.group_snapshot_get(&gid).await.expect("get after the restart");
    assert!(!first.ready_to_use, "the copy was interrupted: {first:?}");
    let ready = until_ready(&conn, &gid).await;
    println!(
        "resumed: {MEMBERS} x 256 MiB members restorable {:.2}s after the first Get",
        resumed.elapsed().as_secs_f64()
    );
    let snapshot_ids = member_snapshots(&ready, &vols);
    for (s, v) in snapshot_ids.iter().zip(&vols) {
        let r = restore(&lab, s);
        assert_eq!(checksum(&lab, Site::A, &format!("{}/{r}", lab.pool())), checksum(&lab, Site::A, &v.spec));
        remove_images(&lab, &[r]);
    }
    conn.group_snapshot_delete(&gid, &[]).await.expect("delete");
    assert_gone(&lab, &gid, &snapshot_ids);
    for v in &vols {
        cleanup(&lab, &v.spec);
    }
}

/// The unfinished group snapshot the previous attempt left, if any (one
/// whose plan is not finished), as its group snapshot ID.
fn group_snapshot_named(lab: &Lab) -> Option<String> {
    let cluster = connect(lab, Site::A);
    let io = IoCtx::open(&cluster, lab.pool_id(Site::A), "").unwrap();
    let objects = lab.rados_ls(Site::A);
    for oid in objects.iter().filter(|o| o.starts_with("rbd-addons.group-snapshot.")) {
        let plan = io.omap_get(oid, &["plan"]).ok()?.remove("plan")?;
        let plan: Value = serde_json::from_slice(&plan).ok()?;
        if plan["finished"] == false {
            let uuid = oid.trim_start_matches("rbd-addons.group-snapshot.");
            return Some(volume_id(&lab.cluster_id(), lab.pool_id(Site::A), uuid));
        }
    }
    None
}

#[tokio::test]
async fn bad_requests_get_exact_codes() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let (server, conn) = front_server(&lab).await;
    let v = lab.create_volume(VolumeOpts::default());
    let ns = lab.create_volume(VolumeOpts { namespace: true, ..Default::default() });
    let missing = volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &new_uuid());
    let create = |name: &str, ids: Vec<String>, params: HashMap<String, String>| {
        let conn = &conn;
        let name = name.to_owned();
        async move { conn.group_snapshot_create(&name, &refs(&ids), params).await.map(drop).map_err(code) }
    };
    let name = format!("groupsnapshot-{}", new_uuid());
    let many: Vec<String> = (0..101).map(|_| volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &new_uuid())).collect();
    let cases: Vec<(&str, Result<(), Code>)> = vec![
        ("no name", create("", vec![v.id.clone()], params(&lab)).await),
        ("no volumes", create(&name, vec![], params(&lab)).await),
        ("a volume twice", create(&name, vec![v.id.clone(), v.id.clone()], params(&lab)).await),
        ("an undecodable volume ID", create(&name, vec!["nope".into()], params(&lab)).await),
        ("101 volumes", create(&name, many, params(&lab)).await),
        ("an unknown volume", create(&name, vec![missing.clone()], params(&lab)).await),
        ("volumes of two pools", create(&name, vec![v.id.clone(), ns.id.clone()], params(&lab)).await),
        (
            "an unknown parameter",
            create(&name, vec![v.id.clone()], HashMap::from([("imageFeatures".into(), "layering".into())])).await,
        ),
        (
            "another pool as parameter",
            create(&name, vec![v.id.clone()], HashMap::from([("pool".into(), "other".into())])).await,
        ),
    ];
    let want = [
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::ResourceExhausted,
        Code::NotFound,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::InvalidArgument,
    ];
    for ((what, got), want) in cases.into_iter().zip(want) {
        assert_eq!(got, Err(want), "{what}");
    }
    let long_id = format!("{}{}", v.id, "0".repeat(600));
    let more: Vec<(&str, Result<(), Code>, Code)> = vec![
        ("a 254-byte name", create(&"n".repeat(254), vec![v.id.clone()], params(&lab)).await, Code::InvalidArgument),
        ("a name with a newline", create("snap\n1", vec![v.id.clone()], params(&lab)).await, Code::InvalidArgument),
        ("a 600-byte volume ID", create(&name, vec![long_id], params(&lab)).await, Code::InvalidArgument),
        (
            "another clusterID as parameter",
            create(&name, vec![v.id.clone()], HashMap::from([("clusterID".into(), "other".into())])).await,
            Code::InvalidArgument,
        ),
    ];
    for (what, got, want) in more {
        assert_eq!(got, Err(want), "{what}");
    }
    // Nothing was left behind by the refusals.
    assert!(!lab.rbd(Site::A, &["group", "ls", &lab.pool()]).contains("csi-vgs-"));
    assert_eq!(code(conn.group_snapshot_get("").await.unwrap_err()), Code::InvalidArgument);
    let e = conn.group_snapshot_delete("bad", &[]).await.unwrap_err();
    assert_eq!(code(e), Code::InvalidArgument);
    // A volume group's ID is not a group snapshot's (they share ceph-csi's journal).
    let groups = server.client(&lab).await;
    let vg = groups.group_create(&format!("not-a-snapshot-{}", new_uuid()), &[], group_params(&lab)).await.unwrap();
    let e = conn.group_snapshot_delete(&vg.volume_group_id, &[]).await.unwrap_err();
    assert_eq!(code(e), Code::InvalidArgument);
    assert_eq!(code(conn.group_snapshot_get(&vg.volume_group_id).await.unwrap_err()), Code::NotFound);
    groups.group_delete(&vg.volume_group_id).await.expect("delete the volume group");
    let unknown = volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &new_uuid());
    assert_eq!(code(conn.group_snapshot_get(&unknown).await.unwrap_err()), Code::NotFound);
    assert_eq!(code(conn.group_snapshot_get("bad").await.unwrap_err()), Code::InvalidArgument);
    conn.group_snapshot_delete(&unknown, &[]).await.expect("deleting what is not there is OK");
    let mut bad_secrets = lab.secrets();
    bad_secrets.insert("userKey".into(), "AQBAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==".into());
    let e = conn.clone().with_secrets(bad_secrets).group_snapshot_create(&name, &[v.id.as_str()], params(&lab)).await;
    let e = e.unwrap_err();
    assert!(!e.to_string().contains("AQBAAAAA"), "the key leaked: {e}");
    assert_eq!(code(e), Code::Unauthenticated);
    assert!(!server.log_text().contains("AQBAAAAA") && !server.log_text().contains(&lab.key()), "a key in the log");
    cleanup(&lab, &v.spec);
    cleanup(&lab, &ns.spec);
}

/// Dell's volumegroupsnapshot.v1 on the csi-addons socket: the same group
/// snapshots, with the Ceph user from a mounted Secret.
#[tokio::test]
async fn dells_extension_round_trip() {
    use rbd_addons::proto::common::v1::ProbeControllerRequest;
    use rbd_addons::proto::volumegroupsnapshot::v1::CreateVolumeGroupSnapshotRequest;
    use rbd_addons::proto::volumegroupsnapshot::v1::volume_group_snapshot_client::VolumeGroupSnapshotClient;

    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let secret_dir = std::env::temp_dir().join(format!("dell-secret-{}", new_uuid()));
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("userID"), lab.user()).unwrap();
    std::fs::write(secret_dir.join("userKey"), format!("{}\n", lab.key())).unwrap();
    let dir_arg = secret_dir.display().to_string();
    let server = Server::start_with_front(
        &lab.csi_config(Site::A),
        Path::new("/nonexistent/csi.sock"),
        &["--group-snapshot-secret-dir", &dir_arg],
    )
    .await;
    let mut dell = VolumeGroupSnapshotClient::new(server.channel().await);
    let probe = dell.probe_controller(ProbeControllerRequest {}).await.expect("ProbeController").into_inner();
    assert_eq!((probe.name.as_str(), probe.ready), ("rbd.csi.ceph.com", Some(true)));
    let handle = |h: &str| rbd_addons::proto::volumegroupsnapshot::v1::VolumeHandleRequest { volume_handle: h.into() };
    let err = dell.parse_volume_handle(handle("nope")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let id = volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &new_uuid());
    let parsed = dell.parse_volume_handle(handle(&id)).await.expect("ParseVolumeHandle").into_inner();
    assert_eq!((parsed.array_id, parsed.volume_id, parsed.protocol.as_str()), (lab.cluster_id(), id, "rbd"));

    let vols: Vec<TestVolume> = (0..2).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    for v in &vols {
        write_data(&lab, Site::A, &v.spec);
    }
    let req = CreateVolumeGroupSnapshotRequest {
        source_volume_i_ds: vols.iter().map(|v| v.id.clone()).collect(),
        name: format!("dell-vgs-{}", new_uuid()),
        description: "from Dell's snapshotter".into(),
        parameters: params(&lab),
    };
    let resp = dell.create_volume_group_snapshot(req).await.expect("CreateVolumeGroupSnapshot").into_inner();
    assert_eq!(resp.snapshots.len(), 2);
    assert!(resp.creation_time > 0);
    for (s, v) in resp.snapshots.iter().zip(&vols) {
        assert_eq!((s.source_id.as_str(), s.ready_to_use), (v.id.as_str(), true), "{s:?}");
        assert_eq!(s.capacity_bytes, 16 << 20);
        let r = restore(&lab, &s.snap_id);
        assert_eq!(checksum(&lab, Site::A, &format!("{}/{r}", lab.pool())), checksum(&lab, Site::A, &v.spec));
        remove_images(&lab, &[r]);
    }
    // Dell's extension has no delete: the CSI front's GroupController does it.
    let conn = Connection::open(&format!("unix://{}", server.front().display()), Duration::from_secs(60))
        .await
        .unwrap()
        .with_secrets(lab.secrets());
    conn.group_snapshot_delete(&resp.snapshot_group_id, &[]).await.expect("delete");

    // Without a mounted Secret the extension says what is missing.
    drop(server);
    let (plain, _) = front_server(&lab).await;
    let mut dell = VolumeGroupSnapshotClient::new(plain.channel().await);
    let req = CreateVolumeGroupSnapshotRequest {
        source_volume_i_ds: vec![vols[0].id.clone()],
        name: format!("dell-vgs-{}", new_uuid()),
        ..Default::default()
    };
    let err = dell.create_volume_group_snapshot(req).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("--group-snapshot-secret-dir"), "{err:?}");
    for v in &vols {
        cleanup(&lab, &v.spec);
    }
    std::fs::remove_dir_all(&secret_dir).ok();
}

/// The members of a replicated VolumeGroup are snapshotted through the
/// group's own RBD group while its consistency generations go on; the peer
/// site, where they are secondary, refuses.
#[tokio::test]
async fn a_replicated_volume_groups_rbd_group_is_reused_beside_its_generations() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    let (a, groups_a) = (sites.a.client(&lab).await, sites.a.client(&lab).await);
    let vols: Vec<TestVolume> =
        (0..MEMBERS).map(|_| lab.create_volume(VolumeOpts { size_mb: 64, ..Default::default() })).collect();
    let ids: Vec<String> = vols.iter().map(|v| v.id.clone()).collect();
    let names: Vec<String> = vols.iter().map(|v| image_of(&v.spec)).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let group = groups_a.group_create(&format!("vgs-beside-{}", new_uuid()), &refs, group_params(&lab)).await.unwrap();
    let gid = group.volume_group_id;
    let params_2s = HashMap::from([("generationInterval".to_owned(), "2s".to_owned())]);
    // Generations are taken while the members change: the writer changes
    // them. It is armed before the first generation can quiesce its images.
    let writer = Writer::new(connect(&lab, Site::A), lab.pool_id(Site::A), names.clone());
    let (stop, written) = (writer.stop.clone(), writer.written.clone());
    let armed = arm_writer(writer);
    a.enable(&Subject::group(&gid), params_2s).await.expect("enable group replication");
    let rbd_group = format!("{}/csi-vol-group-{}", lab.pool(), uuid_of(&gid));
    let generations =
        |lab: &Lab| snap_names(lab, Site::A, &vols[0].spec).iter().filter(|n| n.starts_with("rbd-addons.pre.")).count();
    let w = armed.start();
    wait_until("two generations", LIMIT, || generations(&lab) >= 2).await;
    for v in &vols {
        wait_until(&format!("{} on site-b", v.spec), LIMIT, || {
            lab.mirror_info(Site::B, &v.spec).is_some_and(|m| m["primary"] == false)
        })
        .await;
    }

    let (_front_a, conn) = front_on(&lab, Site::A).await;
    let name = format!("groupsnapshot-{}", new_uuid());
    let created = conn.group_snapshot_create(&name, &refs, params(&lab)).await.expect("create");
    let vgs = created.group_snapshot_id.clone();
    let ready = until_ready(&conn, &vgs).await;
    // The VolumeGroup's RBD group gave the instant, and kept its members.
    assert!(!lab.rbd(Site::A, &["group", "ls", &lab.pool()]).contains("csi-vgs-"), "a temporary group was made");
    let listed = lab.rbd(Site::A, &["group", "image", "ls", &rbd_group]);
    for v in &vols {
        assert!(listed.contains(&v.spec), "{} left {rbd_group}: {listed}", v.spec);
    }
    let group_snaps = lab.rbd(Site::A, &["group", "snap", "ls", &rbd_group]);
    assert!(!group_snaps.contains(&vgs), "the instant outlived the member snapshots: {group_snaps}");
    let restored: Vec<String> = member_snapshots(&ready, &vols).iter().map(|s| restore(&lab, s)).collect();
    let present =
        records_on(&connect(&lab, Site::A), lab.pool_id(Site::A), &restored, written.load(Ordering::Relaxed) + 64);
    assert!(!present.is_empty() && first_gap(&present).is_none(), "restored records: {present:?}");
    remove_images(&lab, &restored);
    // Generations go on after it.
    let before = generations(&lab);
    wait_until("a generation after the group snapshot", LIMIT, || {
        snap_names(&lab, Site::A, &vols[0].spec).iter().any(|n| {
            n.strip_prefix("rbd-addons.pre.").and_then(|k| k.parse::<usize>().ok()).is_some_and(|k| k > before + 1)
        })
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    join_writer(w, Duration::from_secs(120));

    // On site-b the members are secondary: no group snapshot there.
    let (_front_b, conn_b) = front_on(&lab, Site::B).await;
    let err = conn_b
        .group_snapshot_create(&format!("groupsnapshot-{}", new_uuid()), &refs, HashMap::new())
        .await
        .unwrap_err();
    assert_eq!(code(err), Code::FailedPrecondition);

    conn.group_snapshot_delete(&vgs, &[]).await.expect("delete");
    a.disable(&Subject::group(&gid), Params::new()).await.expect("disable");
    groups_a.group_delete(&gid).await.ok();
    for v in &vols {
        remove_everywhere(&lab, &v.spec);
    }
}

/// The CSI front needs both of its sockets named.
#[test]
fn the_csi_front_needs_its_upstream() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--csi-endpoint", "unix:///tmp/front-without-upstream.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--csi-upstream"), "{out:?}");
}
