//! GetReplicationDestinationInfo: the handles that address on site-b what a
//! handle addresses on site-a (the lab's pool IDs differ: 2 and 3), proven by
//! using them on site-b's server to fail over, and checked in Ceph's view.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use rbd_addons::client::Destination;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);

/// Polls while the answer is UNAVAILABLE (the peer has not reported its copy).
async fn destination_once_available(c: &Client, subject: &Subject) -> Destination {
    let started = Instant::now();
    loop {
        match c.destination(subject).await {
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

async fn promote_when_ready(c: &Client, subject: &Subject) {
    let started = Instant::now();
    loop {
        match c.promote(subject, false, Params::new()).await {
            Ok(()) => return,
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
    let (a, b) = (server_a.client(&lab).await, server_b.client(&lab).await);
    let vol = lab.create_volume(VolumeOpts::default());

    // Not replicated yet: FAILED_PRECONDITION; a volume that does not exist: NOT_FOUND.
    let err = a.destination(&Subject::volume(&vol.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let missing = volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &new_uuid());
    assert_eq!(a.destination(&Subject::volume(&missing)).await.unwrap_err().code(), Code::NotFound);
    // No source at all: only a raw request can say that.
    let no_source = rbd_addons::proto::replication::GetReplicationDestinationInfoRequest {
        secrets: lab.secrets(),
        replication_source: None,
    };
    let err = server_a.replication().await.get_replication_destination_info(no_source).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    write_data(&lab, Site::A, &vol.spec);
    a.enable(&Subject::volume(&vol.id), Params::new()).await.expect("enable");
    let Destination::Volume(dest) = destination_once_available(&a, &Subject::volume(&vol.id)).await else {
        panic!("a group destination for a volume")
    };
    assert_eq!(dest, peer_handle_of(&lab, &vol.id), "site-b's pool ID from the cluster mapping");
    assert_ne!(dest, vol.id);

    // Planned failover, site-b addressed only through the destination handle.
    let sum = checksum(&lab, Site::A, &vol.spec).unwrap();
    wait_same_data(&lab, &vol.spec, &sum, Site::B, LIMIT).await;
    a.demote(&Subject::volume(&vol.id), false, Params::new()).await.expect("demote on a");
    promote_when_ready(&b, &Subject::volume(&dest)).await;
    assert_eq!(is_primary(&lab, Site::B, &vol.spec), Some(true), "site-b's copy did not become primary");
    assert_eq!(is_primary(&lab, Site::A, &vol.spec), Some(false));
    assert_eq!(checksum(&lab, Site::B, &vol.spec).as_deref(), Some(sum.as_str()), "data lost on the way");
    // From site-b the destination is site-a's handle again.
    let Destination::Volume(back) = destination_once_available(&b, &Subject::volume(&dest)).await else {
        panic!("a group destination for a volume")
    };
    assert_eq!(back, dest, "without a mapping on site-b, the same handle is assumed");

    b.disable(&Subject::volume(&dest), Params::new()).await.expect("disable on b");
    remove_everywhere(&lab, &vol.spec);
}

#[tokio::test]
async fn a_group_destination_maps_every_member_and_fails_over_on_a_peer_without_any_cluster_mapping() {
    let lab = Lab::load();
    let mapping_a = lab.facts["sites"]["a"]["cluster_mapping"].as_str().unwrap().to_owned();
    let server_a = Server::start(&lab.csi_config(Site::A), &["--cluster-mapping", &mapping_a]).await;
    let server_b = Server::start(&lab.csi_config(Site::B), &["--cluster-mapping", "/nonexistent/mapping.json"]).await;
    let (a, b) = (server_a.client(&lab).await, server_b.client(&lab).await);
    let g = server_a.client(&lab).await;
    let vols: Vec<TestVolume> = (0..2).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    let ids: Vec<&str> = vols.iter().map(|v| v.id.as_str()).collect();
    let group = g.group_create(&format!("dest-{}", new_uuid()), &ids, group_params(&lab)).await.expect("group");
    let gid = group.volume_group_id.clone();

    let err = a.destination(&Subject::group(&gid)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "not replicated yet: {err:?}");
    for v in &vols {
        write_data(&lab, Site::A, &v.spec);
    }
    a.enable(&Subject::group(&gid), HashMap::new()).await.expect("group enable");
    let Destination::Group { group_id: dest_group, volume_ids: dest_ids } =
        destination_once_available(&a, &Subject::group(&gid)).await
    else {
        panic!("a volume destination for a group")
    };
    assert_eq!(dest_group, peer_handle_of(&lab, &gid));
    let want: HashMap<String, String> = vols.iter().map(|v| (v.id.clone(), peer_handle_of(&lab, &v.id))).collect();
    assert_eq!(dest_ids, want, "the map must hold every member, each with site-b's handle");

    let sums: Vec<String> = vols.iter().map(|v| checksum(&lab, Site::A, &v.spec).unwrap()).collect();
    for (v, sum) in vols.iter().zip(&sums) {
        wait_same_data(&lab, &v.spec, sum, Site::B, LIMIT).await;
    }
    a.demote(&Subject::group(&gid), false, Params::new()).await.expect("group demote on a");
    promote_when_ready(&b, &Subject::group(&dest_group)).await;
    for (v, sum) in vols.iter().zip(&sums) {
        assert_eq!(is_primary(&lab, Site::B, &v.spec), Some(true), "{} is not primary on b", v.spec);
        assert_eq!(checksum(&lab, Site::B, &v.spec).as_deref(), Some(sum.as_str()), "{} lost data", v.spec);
    }

    // Asked on site-b after the failover, with the handles site-b holds:
    // every key is one of them (not site-a's recorded handle), and every
    // value names the member on site-a (through site-b's mapping) or, with
    // no mapping, is the same handle.
    let on_b: HashMap<String, String> = vols.iter().map(|v| (peer_handle_of(&lab, &v.id), v.id.clone())).collect();
    let Destination::Group { group_id: _back_group, volume_ids: back_ids } =
        destination_once_available(&b, &Subject::group(&dest_group)).await
    else {
        panic!("a volume destination for a group")
    };
    let same: HashMap<String, String> = on_b.keys().map(|k| (k.clone(), k.clone())).collect();
    assert_eq!(back_ids, same, "site-b without a mapping: its own handles, each mapped to itself");
    let mapping_b = lab.facts["sites"]["b"]["cluster_mapping"].as_str().unwrap().to_owned();
    let mapped_b = Server::start(&lab.csi_config(Site::B), &["--cluster-mapping", &mapping_b]).await;
    let mb = mapped_b.client(&lab).await;
    let Destination::Group { group_id: back_group, volume_ids: back_ids } =
        destination_once_available(&mb, &Subject::group(&dest_group)).await
    else {
        panic!("a volume destination for a group")
    };
    assert_eq!(back_group, gid, "site-b's mapping names the group on site-a");
    assert_eq!(back_ids, on_b, "site-b's handles, each mapped to site-a's");
    for v in &vols {
        assert!(lab.rbd_try(Site::A, &["info", &v.spec]).is_ok(), "{} is gone on site-a", v.spec);
    }

    b.disable(&Subject::group(&dest_group), Params::new()).await.expect("group disable on b");
    g.group_modify(&gid, &[], Params::new()).await.ok();
    g.group_delete(&gid).await.ok();
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
    let (a, b) = (server_a.client(&lab).await, server_b.client(&lab).await);
    let g = server_a.client(&lab).await;

    let vol = lab.create_volume(VolumeOpts::default());
    let members: Vec<TestVolume> = (0..3).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    for v in std::iter::once(&vol).chain(&members) {
        write_data(&lab, Site::A, &v.spec);
    }
    let ids: Vec<&str> = members.iter().map(|v| v.id.as_str()).collect();
    let gid = g
        .group_create(&format!("dest-cfg-{}", new_uuid()), &ids, group_params(&lab))
        .await
        .expect("group")
        .volume_group_id;
    a.enable(&Subject::volume(&vol.id), Params::new()).await.expect("enable");
    a.enable(&Subject::group(&gid), HashMap::new()).await.expect("group enable");

    let Destination::Volume(v_dest) = destination_once_available(&a, &Subject::volume(&vol.id)).await else {
        panic!("a group destination for a volume")
    };
    assert_eq!(v_dest, handle_on(&lab, Site::B, &vol.id), "the pool ID from replicationDestination");
    let Destination::Group { group_id: g_dest_group, volume_ids: g_dest_ids } =
        destination_once_available(&a, &Subject::group(&gid)).await
    else {
        panic!("a volume destination for a group")
    };
    assert_eq!(g_dest_group, handle_on(&lab, Site::B, &gid));
    let on_b: HashMap<String, String> =
        members.iter().map(|v| (v.id.clone(), handle_on(&lab, Site::B, &v.id))).collect();
    assert_eq!(g_dest_ids, on_b);

    // Planned failover to site-b through the returned handles only.
    let sums: Vec<String> = members.iter().map(|v| checksum(&lab, Site::A, &v.spec).unwrap()).collect();
    for (v, sum) in members.iter().zip(&sums) {
        wait_same_data(&lab, &v.spec, sum, Site::B, LIMIT).await;
    }
    let vol_sum = checksum(&lab, Site::A, &vol.spec).unwrap();
    wait_same_data(&lab, &vol.spec, &vol_sum, Site::B, LIMIT).await;
    a.demote(&Subject::volume(&vol.id), false, Params::new()).await.expect("demote on a");
    a.demote(&Subject::group(&gid), false, Params::new()).await.expect("group demote on a");
    promote_when_ready(&b, &Subject::volume(&v_dest)).await;
    promote_when_ready(&b, &Subject::group(&g_dest_group)).await;
    for v in std::iter::once(&vol).chain(&members) {
        assert_eq!(is_primary(&lab, Site::B, &v.spec), Some(true), "{} is not primary on site-b", v.spec);
    }

    // Asked on site-b with site-b's handles: site-a's, keyed by site-b's.
    let Destination::Volume(back) = destination_once_available(&b, &Subject::volume(&v_dest)).await else {
        panic!("a group destination for a volume")
    };
    assert_eq!(back, vol.id);
    let Destination::Group { group_id: g_back_group, volume_ids: g_back_ids } =
        destination_once_available(&b, &Subject::group(&g_dest_group)).await
    else {
        panic!("a volume destination for a group")
    };
    assert_eq!(g_back_group, gid);
    let back_to_a: HashMap<String, String> = on_b.iter().map(|(a_id, b_id)| (b_id.clone(), a_id.clone())).collect();
    assert_eq!(g_back_ids, back_to_a, "site-b's handles, each mapped to site-a's");

    // And back to site-a through those.
    b.demote(&Subject::volume(&v_dest), false, Params::new()).await.expect("demote on b");
    b.demote(&Subject::group(&g_dest_group), false, Params::new()).await.expect("group demote on b");
    promote_when_ready(&a, &Subject::volume(&back)).await;
    promote_when_ready(&a, &Subject::group(&g_back_group)).await;
    for v in std::iter::once(&vol).chain(&members) {
        assert_eq!(is_primary(&lab, Site::A, &v.spec), Some(true), "{} is not primary on site-a again", v.spec);
    }
    // After the failback, site-a answers as it did before the failover.
    let Destination::Group { group_id: again_group, volume_ids: again_ids } =
        destination_once_available(&a, &Subject::group(&gid)).await
    else {
        panic!("a volume destination for a group")
    };
    assert_eq!((again_group, again_ids), (g_dest_group.clone(), g_dest_ids.clone()));
    // Every value names an image that exists on the peer it names.
    for (site, handles) in [(Site::B, g_dest_ids.values()), (Site::A, g_back_ids.values())] {
        for h in handles {
            let spec = format!("{}/csi-vol-{}", lab.pool(), &h[h.len() - 36..]);
            assert!(lab.rbd_try(site, &["info", &spec]).is_ok(), "{h} names no image on site-{}", site.key());
        }
    }

    // With the lab's mapping too: agreeing, the same answer; a pool at odds,
    // FAILED_PRECONDITION naming both files; a clusterID at odds, no start.
    let mapping_a = lab.facts["sites"]["a"]["cluster_mapping"].as_str().unwrap().to_owned();
    let both = Server::start(std::path::Path::new(&cfg_a), &["--cluster-mapping", &mapping_a]).await;
    let both_c = both.client(&lab).await;
    let Destination::Volume(same) = destination_once_available(&both_c, &Subject::volume(&vol.id)).await else {
        panic!("a group destination for a volume")
    };
    assert_eq!(same, v_dest);
    // With neither file, both sites are taken to name it alike.
    let neither = Server::start(&lab.csi_config(Site::A), &no_mapping).await;
    let Destination::Group { group_id: alike_group, volume_ids: alike_ids } =
        destination_once_available(&neither.client(&lab).await, &Subject::group(&gid)).await
    else {
        panic!("a volume destination for a group")
    };
    assert_eq!(alike_group, gid);
    assert_eq!(alike_ids, members.iter().map(|v| (v.id.clone(), v.id.clone())).collect::<HashMap<_, _>>());
    let odd_pool = config_with_destination(&lab, Site::A, &dir, &cid, 77);
    let odd = Server::start(std::path::Path::new(&odd_pool), &["--cluster-mapping", &mapping_a]).await;
    let err = odd.client(&lab).await.destination(&Subject::volume(&vol.id)).await.unwrap_err();
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

    a.disable(&Subject::volume(&vol.id), Params::new()).await.expect("disable");
    a.disable(&Subject::group(&gid), Params::new()).await.expect("group disable");
    g.group_modify(&gid, &[], Params::new()).await.ok();
    g.group_delete(&gid).await.ok();
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
    let g = server_a.client(&lab).await;
    let vols: Vec<TestVolume> = (0..2).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    let by_b = handle_on(&lab, Site::B, &vols[1].id);
    let gid = g
        .group_create(&format!("peer-named-{}", new_uuid()), &[vols[0].id.as_str(), by_b.as_str()], group_params(&lab))
        .await
        .expect("a group with a member named by site-b's handle")
        .volume_group_id;
    let mut named: Vec<String> =
        g.group_get(&gid).await.expect("get").volumes.into_iter().map(|v| v.volume_id).collect();
    named.sort();
    let mut want: Vec<String> = vols.iter().map(|v| v.id.clone()).collect();
    want.sort();
    assert_eq!(named, want, "members named with site-a's handles");
    g.group_modify(&gid, &[], Params::new()).await.ok();
    g.group_delete(&gid).await.expect("delete");
}
