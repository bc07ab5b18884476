//! GetReplicationDestinationInfo: the handles that address on site-b what a
//! handle addresses on site-a (the lab's pool IDs differ: 2 and 3), proven by
//! using them on site-b's server to fail over, and checked in Ceph's view.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use rbd_addons::proto::replication::replication_destination::Type as DestinationType;
use rbd_addons::proto::replication::{GetReplicationDestinationInfoRequest, ReplicationSource};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);

async fn destination(
    c: &mut Client,
    lab: &Lab,
    source: Option<ReplicationSource>,
) -> Result<DestinationType, tonic::Status> {
    let req = GetReplicationDestinationInfoRequest { secrets: lab.secrets(), replication_source: source };
    let resp = c.get_replication_destination_info(req).await?.into_inner();
    Ok(resp.replication_destination.and_then(|d| d.r#type).expect("a destination"))
}

/// Polls while the answer is UNAVAILABLE (the peer has not reported its copy).
async fn destination_once_available(c: &mut Client, lab: &Lab, source: Option<ReplicationSource>) -> DestinationType {
    let started = Instant::now();
    loop {
        match destination(c, lab, source.clone()).await {
            Err(e) if e.code() == Code::Unavailable && started.elapsed() < LIMIT => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            other => return other.expect("destination info"),
        }
    }
}

fn peer_handle_of(lab: &Lab, site_a_id: &str) -> String {
    handle_on(lab, Site::B, site_a_id)
}

async fn promote_when_ready(c: &mut Client, lab: &Lab, source: Option<ReplicationSource>) {
    let started = Instant::now();
    loop {
        let req = rbd_addons::proto::replication::PromoteVolumeRequest {
            secrets: lab.secrets(),
            replication_source: source.clone(),
            ..Default::default()
        };
        match c.promote_volume(req).await {
            Ok(_) => return,
            Err(e) if e.code() == Code::Unavailable && started.elapsed() < LIMIT => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            Err(e) => panic!("promote through the destination handle: {e:?}"),
        }
    }
}

#[tokio::test]
async fn a_volume_destination_handle_fails_over_on_a_peer_without_any_cluster_mapping() {
    let lab = Lab::load();
    let mapping_a = lab.facts["sites"]["a"]["cluster_mapping"].as_str().unwrap().to_owned();
    let server_a = Server::start(&lab.csi_config(Site::A), &["--cluster-mapping", &mapping_a]).await;
    // Site-b knows nothing of site-a's pool IDs: only the destination handle
    // can name the volume there.
    let server_b = Server::start(&lab.csi_config(Site::B), &["--cluster-mapping", "/nonexistent/mapping.json"]).await;
    let (mut a, mut b) = (server_a.replication().await, server_b.replication().await);
    let vol = lab.create_volume(VolumeOpts::default());

    // Not replicated yet: FAILED_PRECONDITION; a volume that does not exist: NOT_FOUND.
    let err = destination(&mut a, &lab, source(&vol.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let missing = volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &new_uuid());
    assert_eq!(destination(&mut a, &lab, source(&missing)).await.unwrap_err().code(), Code::NotFound);
    let err = destination(&mut a, &lab, None).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    write_data(&lab, Site::A, &vol.spec);
    enable(&mut a, &lab, &vol.id).await.expect("enable");
    let DestinationType::Volume(dest) = destination_once_available(&mut a, &lab, source(&vol.id)).await else {
        panic!("a group destination for a volume")
    };
    assert_eq!(dest.volume_id, peer_handle_of(&lab, &vol.id), "site-b's pool ID from the cluster mapping");
    assert_ne!(dest.volume_id, vol.id);

    // Planned failover, site-b addressed only through the destination handle.
    let sum = checksum(&lab, Site::A, &vol.spec).unwrap();
    wait_same_data(&lab, &vol.spec, &sum, Site::B, LIMIT).await;
    demote(&mut a, &lab, &vol.id).await.expect("demote on a");
    promote_when_ready(&mut b, &lab, source(&dest.volume_id)).await;
    assert_eq!(is_primary(&lab, Site::B, &vol.spec), Some(true), "site-b's copy did not become primary");
    assert_eq!(is_primary(&lab, Site::A, &vol.spec), Some(false));
    assert_eq!(checksum(&lab, Site::B, &vol.spec).as_deref(), Some(sum.as_str()), "data lost on the way");
    // From site-b the destination is site-a's handle again.
    let DestinationType::Volume(back) = destination_once_available(&mut b, &lab, source(&dest.volume_id)).await else {
        panic!("a group destination for a volume")
    };
    assert_eq!(back.volume_id, dest.volume_id, "without a mapping on site-b, the same handle is assumed");

    disable(&mut b, &lab, &dest.volume_id).await.expect("disable on b");
    remove_everywhere(&lab, &vol.spec);
}

#[tokio::test]
async fn a_group_destination_maps_every_member_and_fails_over_on_a_peer_without_any_cluster_mapping() {
    let lab = Lab::load();
    let mapping_a = lab.facts["sites"]["a"]["cluster_mapping"].as_str().unwrap().to_owned();
    let server_a = Server::start(&lab.csi_config(Site::A), &["--cluster-mapping", &mapping_a]).await;
    let server_b = Server::start(&lab.csi_config(Site::B), &["--cluster-mapping", "/nonexistent/mapping.json"]).await;
    let (mut a, mut b) = (server_a.replication().await, server_b.replication().await);
    let mut g = server_a.groups().await;
    let vols: Vec<TestVolume> = (0..2).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    let ids: Vec<&str> = vols.iter().map(|v| v.id.as_str()).collect();
    let group = create_group(&mut g, &lab, &format!("dest-{}", new_uuid()), &ids).await.expect("group");
    let gid = group.volume_group_id.clone();

    let err = destination(&mut a, &lab, group_source(&gid)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "not replicated yet: {err:?}");
    for v in &vols {
        write_data(&lab, Site::A, &v.spec);
    }
    group_enable(&mut a, &lab, &gid, HashMap::new()).await.expect("group enable");
    let DestinationType::Volumegroup(dest) = destination_once_available(&mut a, &lab, group_source(&gid)).await else {
        panic!("a volume destination for a group")
    };
    assert_eq!(dest.volume_group_id, peer_handle_of(&lab, &gid));
    let want: HashMap<String, String> = vols.iter().map(|v| (v.id.clone(), peer_handle_of(&lab, &v.id))).collect();
    assert_eq!(dest.volume_ids, want, "the map must hold every member, each with site-b's handle");

    let sums: Vec<String> = vols.iter().map(|v| checksum(&lab, Site::A, &v.spec).unwrap()).collect();
    for (v, sum) in vols.iter().zip(&sums) {
        wait_same_data(&lab, &v.spec, sum, Site::B, LIMIT).await;
    }
    group_demote(&mut a, &lab, &gid).await.expect("group demote on a");
    promote_when_ready(&mut b, &lab, group_source(&dest.volume_group_id)).await;
    for (v, sum) in vols.iter().zip(&sums) {
        assert_eq!(is_primary(&lab, Site::B, &v.spec), Some(true), "{} is not primary on b", v.spec);
        assert_eq!(checksum(&lab, Site::B, &v.spec).as_deref(), Some(sum.as_str()), "{} lost data", v.spec);
    }

    // Asked on site-b after the failover, with the handles site-b holds:
    // every key is one of them (not site-a's recorded handle), and every
    // value names the member on site-a (through site-b's mapping) or, with
    // no mapping, is the same handle.
    let on_b: HashMap<String, String> = vols.iter().map(|v| (peer_handle_of(&lab, &v.id), v.id.clone())).collect();
    let DestinationType::Volumegroup(back) =
        destination_once_available(&mut b, &lab, group_source(&dest.volume_group_id)).await
    else {
        panic!("a volume destination for a group")
    };
    let same: HashMap<String, String> = on_b.keys().map(|k| (k.clone(), k.clone())).collect();
    assert_eq!(back.volume_ids, same, "site-b without a mapping: its own handles, each mapped to itself");
    let mapping_b = lab.facts["sites"]["b"]["cluster_mapping"].as_str().unwrap().to_owned();
    let mapped_b = Server::start(&lab.csi_config(Site::B), &["--cluster-mapping", &mapping_b]).await;
    let mut mb = mapped_b.replication().await;
    let DestinationType::Volumegroup(back) =
        destination_once_available(&mut mb, &lab, group_source(&dest.volume_group_id)).await
    else {
        panic!("a volume destination for a group")
    };
    assert_eq!(back.volume_group_id, gid, "site-b's mapping names the group on site-a");
    assert_eq!(back.volume_ids, on_b, "site-b's handles, each mapped to site-a's");
    for v in &vols {
        assert!(lab.rbd_try(Site::A, &["info", &v.spec]).is_ok(), "{} is gone on site-a", v.spec);
    }

    group_disable(&mut b, &lab, &dest.volume_group_id).await.expect("group disable on b");
    modify_group(&mut g, &lab, &gid, &[]).await.ok();
    delete_group(&mut g, &lab, &gid).await.ok();
    for v in &vols {
        remove_everywhere(&lab, &v.spec);
    }
}

/// site's config.json with ceph-csi's `replicationDestination` on the lab's
/// clusterID: the peer's clusterID, and the lab pool's ID there.
fn config_with_destination(
    lab: &Lab,
    site: Site,
    dir: &std::path::Path,
    remote_cluster: &str,
    peer_pool: i64,
) -> String {
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.csi_config(site)).unwrap()).unwrap();
    for entry in cfg.as_array_mut().unwrap() {
        if entry["clusterID"] == lab.cluster_id().as_str() {
            entry["replicationDestination"] = serde_json::json!({
                "remoteClusterID": remote_cluster,
                "rbd": {"remotePoolMapping": {lab.pool(): {"poolID": peer_pool.to_string()}}},
            });
        }
    }
    let path = dir.join(format!("config-{}-{remote_cluster}-{peer_pool}.json", site.key()));
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// An admin coming from ceph-csi keeps its configuration: config.json's
/// `replicationDestination` names the peer as the cluster mapping would,
/// with no mapping file at all, for a volume and a group, there and back.
/// Both files present and at odds are refused: at start for the clusterID,
/// per call for a pool.
#[tokio::test]
async fn ceph_csis_replication_destination_in_config_json_names_the_peer() {
    let lab = Lab::load();
    let dir = std::env::temp_dir().join(format!("rbd-addons-destination-{}", new_uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let cid = lab.cluster_id();
    let cfg_a = config_with_destination(&lab, Site::A, &dir, &cid, lab.pool_id(Site::B));
    let cfg_b = config_with_destination(&lab, Site::B, &dir, &cid, lab.pool_id(Site::A));
    let no_mapping = ["--cluster-mapping", "/nonexistent/mapping.json"];
    let server_a = Server::start(std::path::Path::new(&cfg_a), &no_mapping).await;
    let server_b = Server::start(std::path::Path::new(&cfg_b), &no_mapping).await;
    let (mut a, mut b) = (server_a.replication().await, server_b.replication().await);
    let mut g = server_a.groups().await;

    let vol = lab.create_volume(VolumeOpts::default());
    let members: Vec<TestVolume> = (0..3).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    for v in std::iter::once(&vol).chain(&members) {
        write_data(&lab, Site::A, &v.spec);
    }
    let ids: Vec<&str> = members.iter().map(|v| v.id.as_str()).collect();
    let gid =
        create_group(&mut g, &lab, &format!("dest-cfg-{}", new_uuid()), &ids).await.expect("group").volume_group_id;
    enable(&mut a, &lab, &vol.id).await.expect("enable");
    group_enable(&mut a, &lab, &gid, HashMap::new()).await.expect("group enable");

    let DestinationType::Volume(v_dest) = destination_once_available(&mut a, &lab, source(&vol.id)).await else {
        panic!("a group destination for a volume")
    };
    assert_eq!(v_dest.volume_id, handle_on(&lab, Site::B, &vol.id), "the pool ID from replicationDestination");
    let DestinationType::Volumegroup(g_dest) = destination_once_available(&mut a, &lab, group_source(&gid)).await
    else {
        panic!("a volume destination for a group")
    };
    assert_eq!(g_dest.volume_group_id, handle_on(&lab, Site::B, &gid));
    let on_b: HashMap<String, String> =
        members.iter().map(|v| (v.id.clone(), handle_on(&lab, Site::B, &v.id))).collect();
    assert_eq!(g_dest.volume_ids, on_b);

    // Planned failover to site-b through the returned handles only.
    let sums: Vec<String> = members.iter().map(|v| checksum(&lab, Site::A, &v.spec).unwrap()).collect();
    for (v, sum) in members.iter().zip(&sums) {
        wait_same_data(&lab, &v.spec, sum, Site::B, LIMIT).await;
    }
    let vol_sum = checksum(&lab, Site::A, &vol.spec).unwrap();
    wait_same_data(&lab, &vol.spec, &vol_sum, Site::B, LIMIT).await;
    demote(&mut a, &lab, &vol.id).await.expect("demote on a");
    group_demote(&mut a, &lab, &gid).await.expect("group demote on a");
    promote_when_ready(&mut b, &lab, source(&v_dest.volume_id)).await;
    promote_when_ready(&mut b, &lab, group_source(&g_dest.volume_group_id)).await;
    for v in std::iter::once(&vol).chain(&members) {
        assert_eq!(is_primary(&lab, Site::B, &v.spec), Some(true), "{} is not primary on site-b", v.spec);
    }

    // Asked on site-b with site-b's handles: site-a's, keyed by site-b's.
    let DestinationType::Volume(back) = destination_once_available(&mut b, &lab, source(&v_dest.volume_id)).await
    else {
        panic!("a group destination for a volume")
    };
    assert_eq!(back.volume_id, vol.id);
    let DestinationType::Volumegroup(g_back) =
        destination_once_available(&mut b, &lab, group_source(&g_dest.volume_group_id)).await
    else {
        panic!("a volume destination for a group")
    };
    assert_eq!(g_back.volume_group_id, gid);
    let back_to_a: HashMap<String, String> = on_b.iter().map(|(a_id, b_id)| (b_id.clone(), a_id.clone())).collect();
    assert_eq!(g_back.volume_ids, back_to_a, "site-b's handles, each mapped to site-a's");

    // And back to site-a through those.
    demote(&mut b, &lab, &v_dest.volume_id).await.expect("demote on b");
    group_demote(&mut b, &lab, &g_dest.volume_group_id).await.expect("group demote on b");
    promote_when_ready(&mut a, &lab, source(&back.volume_id)).await;
    promote_when_ready(&mut a, &lab, group_source(&g_back.volume_group_id)).await;
    for v in std::iter::once(&vol).chain(&members) {
        assert_eq!(is_primary(&lab, Site::A, &v.spec), Some(true), "{} is not primary on site-a again", v.spec);
    }
    // After the failback, site-a answers as it did before the failover.
    let DestinationType::Volumegroup(again) = destination_once_available(&mut a, &lab, group_source(&gid)).await else {
        panic!("a volume destination for a group")
    };
    assert_eq!((again.volume_group_id, again.volume_ids), (g_dest.volume_group_id.clone(), g_dest.volume_ids.clone()));
    // Every value names an image that exists on the peer it names.
    for (site, handles) in [(Site::B, g_dest.volume_ids.values()), (Site::A, g_back.volume_ids.values())] {
        for h in handles {
            let spec = format!("{}/csi-vol-{}", lab.pool(), &h[h.len() - 36..]);
            assert!(lab.rbd_try(site, &["info", &spec]).is_ok(), "{h} names no image on site-{}", site.key());
        }
    }

    // With the lab's mapping too: agreeing, the same answer; a pool at odds,
    // FAILED_PRECONDITION naming both files; a clusterID at odds, no start.
    let mapping_a = lab.facts["sites"]["a"]["cluster_mapping"].as_str().unwrap().to_owned();
    let both = Server::start(std::path::Path::new(&cfg_a), &["--cluster-mapping", &mapping_a]).await;
    let mut both_c = both.replication().await;
    let DestinationType::Volume(same) = destination_once_available(&mut both_c, &lab, source(&vol.id)).await else {
        panic!("a group destination for a volume")
    };
    assert_eq!(same.volume_id, v_dest.volume_id);
    // With neither file, both sites are taken to name it alike.
    let neither = Server::start(&lab.csi_config(Site::A), &no_mapping).await;
    let DestinationType::Volumegroup(alike) =
        destination_once_available(&mut neither.replication().await, &lab, group_source(&gid)).await
    else {
        panic!("a volume destination for a group")
    };
    assert_eq!(alike.volume_group_id, gid);
    assert_eq!(alike.volume_ids, members.iter().map(|v| (v.id.clone(), v.id.clone())).collect::<HashMap<_, _>>());
    let odd_pool = config_with_destination(&lab, Site::A, &dir, &cid, 77);
    let odd = Server::start(std::path::Path::new(&odd_pool), &["--cluster-mapping", &mapping_a]).await;
    let err = destination(&mut odd.replication().await, &lab, source(&vol.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&odd_pool) && err.message().contains(&mapping_a), "{}", err.message());
    let odd_cluster = config_with_destination(&lab, Site::A, &dir, "elsewhere", lab.pool_id(Site::B));
    let socket = dir.join("never.sock");
    let out = std::process::Command::new(BIN)
        .args(["serve", "--log-format", "text", "--metrics-address", "off"])
        .args(["--ceph-csi-config", &odd_cluster, "--cluster-mapping", &mapping_a])
        .args(["--endpoint", socket.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with the two files at odds: {stderr}");
    assert!(stderr.contains("refusing to start") && stderr.contains("\"elsewhere\""), "{stderr}");
    assert!(!socket.exists(), "a refused start leaves no socket behind");

    disable(&mut a, &lab, &vol.id).await.expect("disable");
    group_disable(&mut a, &lab, &gid).await.expect("group disable");
    modify_group(&mut g, &lab, &gid, &[]).await.ok();
    delete_group(&mut g, &lab, &gid).await.ok();
    for v in std::iter::once(&vol).chain(&members) {
        remove_everywhere(&lab, &v.spec);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A member added with the handle the peer site gives it (a caller holding
/// site-b's handles, found here through the cluster mapping) is still named
/// as this site names it in every answer about the group.
#[tokio::test]
async fn a_member_added_by_the_peers_handle_is_named_as_this_site_names_it() {
    let lab = Lab::load();
    let mapping_a = lab.facts["sites"]["a"]["cluster_mapping"].as_str().unwrap().to_owned();
    let server_a = Server::start(&lab.csi_config(Site::A), &["--cluster-mapping", &mapping_a]).await;
    let mut g = server_a.groups().await;
    let vols: Vec<TestVolume> = (0..2).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    let by_b = handle_on(&lab, Site::B, &vols[1].id);
    let gid = create_group(&mut g, &lab, &format!("peer-named-{}", new_uuid()), &[vols[0].id.as_str(), by_b.as_str()])
        .await
        .expect("a group with a member named by site-b's handle")
        .volume_group_id;
    let mut named: Vec<String> =
        get_group(&mut g, &lab, &gid).await.expect("get").volumes.into_iter().map(|v| v.volume_id).collect();
    named.sort();
    let mut want: Vec<String> = vols.iter().map(|v| v.id.clone()).collect();
    want.sort();
    assert_eq!(named, want, "members named with site-a's handles");
    modify_group(&mut g, &lab, &gid, &[]).await.ok();
    delete_group(&mut g, &lab, &gid).await.expect("delete");
}
