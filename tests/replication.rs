//! Enable / Disable / GetVolumeReplicationInfo against the real two-site lab,
//! checked in Ceph's own view (`rbd info`, `rbd mirror image status`, the mgr's
//! schedule list, data checksums on both sites).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use rbd_addons::proto::replication::get_volume_replication_info_response::Status as InfoStatus;
use rbd_addons::proto::replication::*;
use tonic::Code;

const SYNC_LIMIT: Duration = Duration::from_secs(120);

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn same_volume_on_b(lab: &Lab, vol: &TestVolume) -> String {
    volume_id(&lab.cluster_id(), lab.pool_id(Site::B), &vol.uuid)
}

#[tokio::test]
async fn snapshot_mode_enable_info_disable_round_trip() {
    let lab = Lab::load();
    let a = Server::start(&lab.csi_config(Site::A), &[]).await;
    let b = Server::start(&lab.csi_config(Site::B), &[]).await;
    let ca = a.client(&lab).await;
    let cb = b.client(&lab).await;
    let vol = lab.create_volume(VolumeOpts::default());
    write_data(&lab, Site::A, &vol.spec);
    let name = vol.spec.rsplit('/').next().unwrap().to_owned();

    // Info before enabling: not enabled.
    let err = ca.info(&Subject::volume(&vol.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    ca.enable(&Subject::volume(&vol.id), params(&[("mirroringMode", "snapshot"), ("schedulingInterval", "1h")]))
        .await
        .expect("enable");
    let m = lab.mirror_info(Site::A, &vol.spec).expect("rbd info on site-a");
    assert_eq!(
        (m["state"].as_str(), m["mode"].as_str(), m["primary"].as_bool()),
        (Some("enabled"), Some("snapshot"), Some(true))
    );

    // No completed sync reported by the peer yet: "no info yet" for the
    // controller. (On a fast lab the first sync may already be reported;
    // then the answer must carry it.)
    match ca.info(&Subject::volume(&vol.id)).await {
        Err(early) => assert_eq!(early.code(), Code::NotFound, "{early:?}"),
        Ok(r) => assert!(r.last_sync_time.is_some(), "an answer before any sync must be NOT_FOUND"),
    }

    // The mgr really holds the schedule.
    let sched = lab.schedules(Site::A, &["--pool", &lab.pool(), "--image", &name]);
    assert!(sched.as_array().unwrap().iter().any(|s| s["interval"] == "1h"), "schedule list: {sched}");

    // Repeated Enable is a no-op success.
    ca.enable(&Subject::volume(&vol.id), params(&[("schedulingInterval", "1h")])).await.expect("enable again");

    // Site-b holds the same data, and its rbd-mirror reports up+replaying.
    let sum_a = checksum(&lab, Site::A, &vol.spec).unwrap();
    wait_until("site-b to hold site-a's data", SYNC_LIMIT, || {
        checksum(&lab, Site::B, &vol.spec).as_ref() == Some(&sum_a)
    })
    .await;
    wait_until("site-b to report up+replaying", SYNC_LIMIT, || {
        state_of(&lab.mirror_status(Site::B, &vol.spec)) == "up+replaying"
    })
    .await;

    // Info after a real sync: the peer's newest synced snapshot, health from site-a.
    let info = info_once_synced(&ca, &vol.id, SYNC_LIMIT).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let t = info.last_sync_time.unwrap().seconds;
    assert!(t > now - 600 && t <= now + 5, "last_sync_time {t} vs now {now}");
    assert_eq!(info.status, InfoStatus::Healthy as i32, "{info:?}");
    assert_eq!(info.status_message, "local image is primary");
    assert!(info.last_sync_duration.is_some());

    // On site-b the volume is a healthy secondary: Info refuses, Disable is a no-op.
    let b_id = same_volume_on_b(&lab, &vol);
    let err = cb.info(&Subject::volume(&b_id)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    cb.disable(&Subject::volume(&b_id), Params::new()).await.expect("disable on the healthy secondary");
    let mb = lab.mirror_info(Site::B, &vol.spec).expect("site-b image still there");
    assert_eq!((mb["state"].as_str(), mb["primary"].as_bool()), (Some("enabled"), Some(false)));

    // Disable on the primary: mirroring off, site-b's copy deleted, schedule gone.
    ca.disable(&Subject::volume(&vol.id), Params::new()).await.expect("disable");
    assert_eq!(lab.mirror_info(Site::A, &vol.spec).unwrap()["state"], "disabled");
    wait_until("site-b's copy to be removed", SYNC_LIMIT, || lab.rbd_try(Site::B, &["info", &vol.spec]).is_err()).await;
    assert!(!has_schedule(&lab, &vol.spec), "schedule left behind");

    // Idempotent: disabled already → OK; Info → not enabled.
    ca.disable(&Subject::volume(&vol.id), Params::new()).await.expect("disable again");
    let err = ca.info(&Subject::volume(&vol.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    cleanup(&lab, &vol.spec);
}

#[tokio::test]
async fn journal_mode_replicates_every_write() {
    let lab = Lab::load();
    let a = Server::start(&lab.csi_config(Site::A), &[]).await;
    let ca = a.client(&lab).await;
    let vol = lab.create_volume(VolumeOpts::default());

    // The schedule is ignored in journal mode (there are no mirror snapshots).
    ca.enable(&Subject::volume(&vol.id), params(&[("mirroringMode", "journal"), ("schedulingInterval", "5m")]))
        .await
        .expect("enable journal");
    let m = lab.mirror_info(Site::A, &vol.spec).unwrap();
    assert_eq!((m["state"].as_str(), m["mode"].as_str()), (Some("enabled"), Some("journal")));
    let features = lab.rbd_json(Site::A, &["info", &vol.spec]).unwrap()["features"].clone();
    assert!(features.as_array().unwrap().iter().any(|f| f == "journaling"), "{features}");
    ca.enable(&Subject::volume(&vol.id), params(&[("mirroringMode", "journal")])).await.expect("enable again");

    write_data(&lab, Site::A, &vol.spec);
    let sum_a = checksum(&lab, Site::A, &vol.spec).unwrap();
    wait_until("site-b to replay the journal", SYNC_LIMIT, || {
        checksum(&lab, Site::B, &vol.spec).as_ref() == Some(&sum_a)
    })
    .await;
    wait_until("site-b to report up+replaying", SYNC_LIMIT, || {
        state_of(&lab.mirror_status(Site::B, &vol.spec)) == "up+replaying"
    })
    .await;

    let info = info_once_synced(&ca, &vol.id, SYNC_LIMIT).await;
    assert!(info.last_sync_time.unwrap().seconds > 0);
    assert_eq!(info.status, InfoStatus::Healthy as i32);

    ca.disable(&Subject::volume(&vol.id), Params::new()).await.expect("disable");
    assert_eq!(lab.mirror_info(Site::A, &vol.spec).unwrap()["state"], "disabled");
    cleanup(&lab, &vol.spec);
}

#[tokio::test]
async fn custom_image_name_from_the_journal_and_legacy_volume_id_field() {
    let lab = Lab::load();
    let a = Server::start(&lab.csi_config(Site::A), &[]).await;
    let mut ca = a.replication().await;
    let custom = format!("app-data-{}", &new_uuid()[..8]);
    let vol = lab.create_volume(VolumeOpts { image_name: Some(custom.clone()), ..Default::default() });
    assert!(vol.spec.ends_with(&custom));

    // Sidecars up to v0.8 send only the deprecated field 1.
    #[allow(deprecated)]
    let legacy =
        EnableVolumeReplicationRequest { volume_id: vol.id.clone(), secrets: lab.secrets(), ..Default::default() };
    ca.enable_volume_replication(legacy).await.expect("enable through the legacy field");
    assert_eq!(lab.mirror_info(Site::A, &vol.spec).unwrap()["state"], "enabled");
    // No image under the default name was touched or created.
    assert!(lab.rbd_try(Site::A, &["info", &format!("{}/csi-vol-{}", lab.pool(), vol.uuid)]).is_err());

    // Both fields set to the same ID is fine.
    #[allow(deprecated)]
    let both = DisableVolumeReplicationRequest {
        volume_id: vol.id.clone(),
        secrets: lab.secrets(),
        replication_source: source(&vol.id),
        ..Default::default()
    };
    ca.disable_volume_replication(both).await.expect("disable with both fields");
    assert_eq!(lab.mirror_info(Site::A, &vol.spec).unwrap()["state"], "disabled");
    cleanup(&lab, &vol.spec);
}

#[tokio::test]
async fn rados_namespace_from_config_json() {
    let lab = Lab::load();
    let a = Server::start(&lab.csi_config(Site::A), &[]).await;
    let ca = a.client(&lab).await;
    let vol = lab.create_volume(VolumeOpts { namespace: true, ..Default::default() });
    assert!(vol.spec.contains(&format!("/{}/", lab.namespace())));

    ca.enable(&Subject::volume(&vol.id), params(&[("schedulingInterval", "2h")])).await.expect("enable");
    assert_eq!(lab.mirror_info(Site::A, &vol.spec).unwrap()["state"], "enabled");
    let image = vol.spec.rsplit('/').next().unwrap();
    let (pool, ns) = (lab.pool(), lab.namespace());
    let sched = lab.schedules(Site::A, &["--pool", &pool, "--namespace", &ns, "--image", image]);
    assert!(sched.as_array().unwrap().iter().any(|s| s["interval"] == "2h"), "{sched}");
    wait_until("the namespaced image on site-b", SYNC_LIMIT, || lab.rbd_try(Site::B, &["info", &vol.spec]).is_ok())
        .await;

    ca.disable(&Subject::volume(&vol.id), Params::new()).await.expect("disable");
    assert_eq!(lab.mirror_info(Site::A, &vol.spec).unwrap()["state"], "disabled");
    assert!(!has_schedule(&lab, &vol.spec), "schedule left behind");
    cleanup(&lab, &vol.spec);
}

#[tokio::test]
async fn second_call_on_a_busy_volume_is_aborted_and_a_dead_cluster_cannot_hang_it() {
    // A cluster whose monitor never answers keeps the first call connecting
    // until the Ceph timeout; meanwhile a second call that changes the same
    // volume must get ABORTED at once, a read (Info) goes its own way instead
    // of ABORTED, and a call on another volume must not be blocked.
    let dir = std::env::temp_dir().join(format!("blackhole-{}", new_uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.json");
    std::fs::write(&config, r#"[{"clusterID": "blackhole", "monitors": ["127.0.0.1:9"]}]"#).unwrap();
    let lab = Lab::load();
    let server = Server::start(&config, &["--ceph-timeout", "5s"]).await;
    let vol = volume_id("blackhole", 2, &new_uuid());
    let other = volume_id("blackhole", 2, &new_uuid());

    let c1 = server.client(&lab).await;
    let subject = Subject::volume(&vol);
    let first = tokio::spawn(async move { c1.enable(&subject, Params::new()).await });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let c2 = server.client(&lab).await;
    let started = std::time::Instant::now();
    let busy = c2.disable(&Subject::volume(&vol), Params::new()).await.unwrap_err();
    assert_eq!(busy.code(), Code::Aborted, "{busy:?}");
    assert!(busy.message().contains(&vol), "{busy:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    let read = tokio::spawn({
        let c = server.client(&lab).await;
        let subject = Subject::volume(&vol);
        async move { c.info(&subject).await }
    });

    let other_call = tokio::spawn({
        let c3 = server.client(&lab).await;
        let subject = Subject::volume(&other);
        async move { c3.info(&subject).await }
    });

    let first = first.await.unwrap().unwrap_err();
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "the dead cluster held the call for {:?}", started.elapsed());
    assert_eq!(other_call.await.unwrap().unwrap_err().code(), Code::Unavailable);
    let read = read.await.unwrap().unwrap_err();
    assert_eq!(read.code(), Code::Unavailable, "Info on the busy volume went to the cluster: {read:?}");

    // The guard is released once the work ends.
    let again = c2.disable(&Subject::volume(&vol), Params::new()).await.unwrap_err();
    assert_eq!(again.code(), Code::Unavailable, "{again:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Info reads a pool-wide view (at most a second old) instead of opening the
/// image: a role changed through the server shows at once, one changed behind
/// its back (the `rbd` CLI) within a few seconds.
#[tokio::test]
async fn info_right_after_a_role_change_shows_the_new_role() {
    let lab = Lab::load();
    let a = Server::start(&lab.csi_config(Site::A), &[]).await;
    let ca = a.client(&lab).await;
    let vol = lab.create_volume(VolumeOpts::default());
    write_data(&lab, Site::A, &vol.spec);
    ca.enable(&Subject::volume(&vol.id), Params::new()).await.expect("enable");
    info_once_synced(&ca, &vol.id, SYNC_LIMIT).await;
    // Warm: the pool's view now holds the volume as primary.
    ca.info(&Subject::volume(&vol.id)).await.expect("info");

    ca.demote(&Subject::volume(&vol.id), false, Params::new()).await.expect("demote");
    let err = ca.info(&Subject::volume(&vol.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "right after Demote: {err:?}");
    assert!(err.message().contains("not primary"), "{err:?}");
    assert_eq!(is_primary(&lab, Site::A, &vol.spec), Some(false), "Ceph agrees");

    ca.promote(&Subject::volume(&vol.id), false, Params::new()).await.expect("promote");
    match ca.info(&Subject::volume(&vol.id)).await {
        Ok(_) => {}
        Err(e) => assert_eq!(e.code(), Code::NotFound, "right after Promote: primary, no new sync yet: {e:?}"),
    }
    assert_eq!(is_primary(&lab, Site::A, &vol.spec), Some(true));

    // Behind the server's back: seen within the view's age, bounded.
    ca.info(&Subject::volume(&vol.id)).await.ok();
    lab.rbd(Site::A, &["mirror", "image", "demote", &vol.spec]);
    let started = std::time::Instant::now();
    loop {
        match ca.info(&Subject::volume(&vol.id)).await {
            Err(e) if e.code() == Code::FailedPrecondition => break,
            other => assert!(started.elapsed() < Duration::from_secs(5), "still {other:?} after an rbd CLI demote"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("an rbd CLI demote showed in Info after {:.2} s", started.elapsed().as_secs_f64());
    lab.rbd(Site::A, &["mirror", "image", "promote", &vol.spec]);
    ca.disable(&Subject::volume(&vol.id), Params::new()).await.expect("disable");
    cleanup(&lab, &vol.spec);
}

/// Another client may break a lock this server held and blocklist its Ceph
/// client (after its site was frozen, say). The call that meets the blocklist
/// answers UNAVAILABLE and the server drops its connection; the retry
/// connects anew and works, in Ceph's view too.
#[tokio::test]
async fn a_blocklisted_server_client_reconnects_on_the_retry() {
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let c = server.client(&lab).await;
    let vol = lab.create_volume(VolumeOpts::default());
    c.enable(&Subject::volume(&vol.id), Params::new()).await.expect("enable");
    let ledger: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}.clients", server.socket.display())).unwrap()).unwrap();
    let addrs = ledger["own"][0]["addrs"].as_str().expect("the server's client address").to_owned();
    let out = lab_tool(30, "ceph")
        .args(["-c", &lab.conf(Site::A), "osd", "blocklist", "add", &addrs, "600"])
        .output()
        .unwrap();
    assert!(out.status.success(), "blocklist add: {}", String::from_utf8_lossy(&out.stderr));

    // The first call may meet the blocklist (UNAVAILABLE); within a few
    // retries one connects anew and succeeds.
    let started = Instant::now();
    let mut refused = 0;
    loop {
        match c.disable(&Subject::volume(&vol.id), Params::new()).await {
            Ok(()) => break,
            Err(e) if e.code() == Code::Unavailable && started.elapsed() < Duration::from_secs(60) => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("disable after the blocklist: {e:?}"),
        }
    }
    println!("{refused} call(s) met the blocklist before the server reconnected");
    assert!(refused <= 2, "the server kept its blocklisted connection for {refused} calls");
    assert_eq!(lab.mirror_info(Site::A, &vol.spec).unwrap()["state"], "disabled");
    lab_tool(30, "ceph").args(["-c", &lab.conf(Site::A), "osd", "blocklist", "rm", &addrs]).output().ok();
    cleanup(&lab, &vol.spec);
}
