//! Drills that take part of the lab away: a whole site frozen (SIGSTOP, as a
//! memstore OSD loses its data if killed), and a stopped rbd-mirror daemon.
//! They run one at a time, in their own test binary, so no other test sees the
//! lab degraded.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(150);
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn mirrored(lab: &Lab, a: &mut Client) -> TestVolume {
    let v = lab.create_volume(VolumeOpts::default());
    write_data(lab, Site::A, &v.spec);
    a.enable(&Subject::volume(&v.id), Params::new()).await.expect("enable");
    let sum = checksum(lab, Site::A, &v.spec).unwrap();
    wait_same_data(lab, &v.spec, &sum, Site::B, LIMIT).await;
    v
}

fn rbd_mirror_daemons(lab: &Lab, s: Site) -> usize {
    let out = Command::new("timeout")
        .args(["20", "ceph", "-c", &lab.conf(s), "service", "dump", "-f", "json"])
        .output()
        .expect("ceph service dump");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["services"]["rbd-mirror"]["daemons"].as_object().map_or(0, |d| d.keys().filter(|k| *k != "summary").count())
}

#[tokio::test]
async fn unplanned_failover_after_site_loss_then_resync_restores_replication() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    // A short op deadline, so that a forced promote that hung would show.
    let sites = SitePair::start(&lab, &["--op-timeout", "30s"]).await;
    let (mut a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let vol = mirrored(&lab, &mut a).await;
    let id = vol.id.clone();

    // Site-a is lost: every daemon frozen mid-flight.
    let frozen = Frozen::daemons(&lab, "site-a", &[]);
    let started = Instant::now();
    let promoted = b.promote(&Subject::volume(&id), true, Params::new()).await;
    let took = started.elapsed();
    println!("forced promote with site-a frozen took {took:?}");
    assert!(took < Duration::from_secs(35), "forced promote outlived the op deadline: {took:?}");
    promoted.expect("forced promote on b while site-a is gone");
    assert_eq!(is_primary(&lab, Site::B, &vol.spec), Some(true));
    write_data(&lab, Site::B, &vol.spec);
    mirror_snapshot(&lab, Site::B, &vol.spec);
    let sum_b = checksum(&lab, Site::B, &vol.spec).unwrap();

    // Site-a comes back, still believing it is primary; fail it back.
    drop(frozen);
    wait_until("site-a to answer again", LIMIT, || lab.rbd_try(Site::A, &["info", &vol.spec]).is_ok()).await;
    a.demote(&Subject::volume(&id), false, Params::new()).await.expect("demote the returning site-a");
    wait_until("a to report split-brain", LIMIT, || {
        lab.mirror_status(Site::A, &vol.spec).is_some_and(|s| s["description"] == "split-brain")
    })
    .await;
    resync_until_ready(&a, &id, LIMIT).await;
    assert_eq!(checksum(&lab, Site::A, &vol.spec).as_deref(), Some(sum_b.as_str()), "a does not hold b's data");
    assert_eq!(state_of(&lab.mirror_status(Site::A, &vol.spec)), "up+replaying");

    b.disable(&Subject::volume(&id), Params::new()).await.expect("disable");
    lab.rbd_try(Site::B, &["rm", "--no-progress", &vol.spec]).ok();
    cleanup(&lab, &vol.spec);
}

#[tokio::test]
async fn resync_with_the_rbd_mirror_daemon_down_is_an_error_not_progress() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    let (mut a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let vol = mirrored(&lab, &mut a).await;
    let resync_b = || {
        let c = b.clone();
        let (_lab, id) = (&lab, vol.id.clone());
        async move { c.resync(&Subject::volume(&id), true, Params::new()).await }
    };

    {
        let _frozen = Frozen::daemons(&lab, "site-b", &["rbd-mirror"]);
        wait_until("the mgr to drop site-b's rbd-mirror", LIMIT, || rbd_mirror_daemons(&lab, Site::B) == 0).await;
        let err = resync_b().await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("rbd-mirror"), "{err:?}");
    }
    wait_until("site-b's rbd-mirror to be back", LIMIT, || rbd_mirror_daemons(&lab, Site::B) == 1).await;
    // Back in service, the same call no longer fails for the daemon.
    let start = Instant::now();
    loop {
        match resync_b().await {
            Ok(_) => break,
            Err(e) if e.code() == Code::Unavailable && start.elapsed() < LIMIT => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            Err(e) => panic!("resync after the daemon came back: {e:?}"),
        }
    }
    cleanup(&lab, &vol.spec);
}

/// After a site loss this site's rbd-mirror may never let go of a promoted
/// image by itself (it runs with no op timeout and waits on the lost site).
/// Here site-b's rbd-mirror is frozen outright, so it cannot let go: a
/// forced promote must take the image from it (breaking its lock, which
/// blocklists that rbd-mirror client on site-b) and answer only once the
/// image takes writes, well before the OSD would drop the frozen daemon's
/// watch (30 s). Afterwards rbd-mirror recovers by itself: it replays
/// another image again, and, after the failback, this one.
#[tokio::test]
async fn a_forced_promote_takes_the_image_from_a_stuck_rbd_mirror() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    let (a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let journal = || std::collections::HashMap::from([("mirroringMode".to_owned(), "journal".to_owned())]);
    let mut vols = Vec::new();
    for _ in 0..2 {
        let v = lab.create_volume(VolumeOpts::default());
        write_data(&lab, Site::A, &v.spec);
        a.enable(&Subject::volume(&v.id), journal()).await.expect("enable in journal mode");
        let sum = checksum(&lab, Site::A, &v.spec).unwrap();
        wait_same_data(&lab, &v.spec, &sum, Site::B, LIMIT).await;
        vols.push(v);
    }
    let (x, y) = (&vols[0], &vols[1]);
    wait_until("site-b's rbd-mirror to hold the lock of x", LIMIT, || {
        lab.rbd_try(Site::B, &["lock", "ls", &x.spec]).is_ok_and(|o| o.contains("client."))
    })
    .await;

    let took = {
        let _site_a = Frozen::daemons(&lab, "site-a", &[]);
        let _mirror_b = Frozen::daemons(&lab, "site-b", &["rbd-mirror"]);
        let started = Instant::now();
        b.promote(&Subject::volume(&x.id), true, Params::new())
            .await
            .expect("forced promote with site-a lost and rbd-mirror stuck");
        let took = started.elapsed();
        // Answered only once the image takes writes.
        lab.rbd(Site::B, &["bench", "--io-type", "write", "--io-size", "4K", "--io-total", "64K", &x.spec]);
        took
    };
    println!("forced promote took the image from the frozen rbd-mirror in {took:?}");
    assert!(took < Duration::from_secs(25), "the forced promote waited {took:?}: it did not take the image");
    assert_eq!(is_primary(&lab, Site::B, &x.spec), Some(true));

    // rbd-mirror comes back blocklisted and restarts its replayers: y
    // replays again.
    write_data(&lab, Site::A, &y.spec);
    let sum_y = checksum(&lab, Site::A, &y.spec).unwrap();
    wait_same_data(&lab, &y.spec, &sum_y, Site::B, LIMIT).await;

    // Fail x back to site-a; site-b's rbd-mirror then replays it again.
    write_data(&lab, Site::B, &x.spec);
    a.demote(&Subject::volume(&x.id), false, Params::new()).await.expect("demote the returning site-a");
    resync_until_ready(&a, &x.id, LIMIT).await;
    let sum_b = checksum(&lab, Site::B, &x.spec).unwrap();
    wait_same_data(&lab, &x.spec, &sum_b, Site::A, LIMIT).await;
    b.demote(&Subject::volume(&x.id), false, Params::new()).await.expect("planned failback: demote b");
    let started = Instant::now();
    loop {
        match a.promote(&Subject::volume(&x.id), false, Params::new()).await {
            Ok(()) => break,
            Err(e) if matches!(e.code(), Code::Unavailable | Code::FailedPrecondition) && started.elapsed() < LIMIT => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            Err(e) => panic!("planned failback: promote a: {e:?}"),
        }
    }
    write_data(&lab, Site::A, &x.spec);
    let sum_a = checksum(&lab, Site::A, &x.spec).unwrap();
    wait_same_data(&lab, &x.spec, &sum_a, Site::B, LIMIT).await;

    for v in &vols {
        a.disable(&Subject::volume(&v.id), Params::new()).await.ok();
        lab.rbd_try(Site::B, &["rm", "--no-progress", &v.spec]).ok();
        cleanup(&lab, &v.spec);
    }
}
