//! The proof that a group fails over as one crash-consistent unit: an
//! interleaved writer puts record k on member k mod 3, each write after the
//! previous one was acknowledged, while the server takes generations at the
//! default `generationInterval` (10 s). At a random instant site-a is frozen
//! (SIGSTOP: a memstore OSD loses its data if killed) and the group is
//! force-promoted on site-b through the server, with both cores kept busy
//! throughout and rbd-mirror at Ceph's defaults (no op timeouts). The
//! records site-b then holds must be a gap-free prefix 1..K, and stay exactly
//! so for a while after the promote answered (nothing still replaying into a
//! member).
//!
//! The cuts alternate between a writer that registered librbd's quiesce
//! watch (`rbd-nbd --quiesce`) and one that only cooperates on the exclusive
//! lock (as krbd, ceph-csi's default mounter, does). Generations never ask
//! either to quiesce: the members' exclusive locks alone make the cut.
//!
//! Before the promote, site-b's replayed copies are read as they are: that is
//! what plain per-volume failover would hand the application (the control).
//! This binary freezes a whole site, so its tests run one at a time and no
//! other binary runs meanwhile (cargo runs test binaries one after another).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use rbd_addons::testkit::interleave::{CpuHog, MEMBERS, Writer, arm_writer, first_gap, join_writer, records_on};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(150);
/// Both tests freeze site-a: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const CUTS: usize = 10;

fn cut_count() -> usize {
    std::env::var("GROUP_CUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(CUTS)
}
struct Cut {
    acknowledged: u64,
    on_b: u64,
    control_gap: Option<u64>,
}

async fn one_cut(lab: &Lab, sites: &SitePair, round: usize, rng: &mut u64, honour_quiesce: bool) -> Cut {
    let (a, b) = (sites.a.client(lab).await, sites.b.client(lab).await);
    let groups_a = sites.a.client(lab).await;
    let vols: Vec<TestVolume> =
        (0..MEMBERS).map(|_| lab.create_volume(VolumeOpts { size_mb: 64, ..Default::default() })).collect();
    let ids: Vec<&str> = vols.iter().map(|v| v.id.as_str()).collect();
    let names: Vec<String> = vols.iter().map(|v| v.spec.rsplit('/').next().unwrap().to_owned()).collect();
    let group = groups_a
        .group_create(&format!("consistency-{round}-{}", new_uuid()), &ids, group_params(lab))
        .await
        .expect("create group");
    let gid = group.volume_group_id;
    // The writer is armed before the first generation can quiesce its images.
    let cluster_a = connect(lab, Site::A);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let armed = arm_writer(Writer {
        cluster: cluster_a,
        pool_id: lab.pool_id(Site::A),
        images: names.clone(),
        stop: stop.clone(),
        written: written.clone(),
        acks: None,
        honour_quiesce,
    });
    // At the default generationInterval: the proof holds for what admins get.
    a.enable(&Subject::group(&gid), HashMap::new()).await.expect("enable group replication");
    // Site-b holds every member, replaying.
    for v in &vols {
        wait_until(&format!("{} on site-b", v.spec), Duration::from_secs(60), || {
            lab.mirror_info(Site::B, &v.spec).is_some_and(|m| m["primary"] == false)
        })
        .await;
    }

    let w = armed.start();
    // A random instant 8 to 20 s into the writes: one or two generations in
    // at the default interval.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let run_for = Duration::from_millis(8000 + *rng % 12000);
    tokio::time::sleep(run_for).await;
    // The group has a recovery point on site-b once a generation replayed on
    // every member (before that a forced promote refuses, saying so).
    let specs: Vec<&str> = vols.iter().map(|v| v.spec.as_str()).collect();
    wait_group_cut(lab, Site::B, &specs, Duration::from_secs(60)).await;

    let frozen = Frozen::daemons(lab, "site-a", &[]);
    stop.store(true, Ordering::Relaxed);
    let acknowledged = written.load(Ordering::Relaxed);
    let cluster_b = connect(lab, Site::B);
    let pool_b = lab.pool_id(Site::B);
    let control = records_on(&cluster_b, pool_b, &names, acknowledged + 64);
    let started = Instant::now();
    group_promote_after_site_loss(&b, &gid).await.expect("forced group promote on site-b with site-a frozen");
    let promote_s = started.elapsed().as_secs_f64();
    for v in &vols {
        assert_eq!(is_primary(lab, Site::B, &v.spec), Some(true), "{} is not primary on site-b", v.spec);
    }
    let after = records_on(&cluster_b, pool_b, &names, acknowledged + 64);
    assert_eq!(
        first_gap(&after),
        None,
        "round {round}: after the group promote site-b holds records up to {:?} with a gap",
        after.iter().next_back()
    );
    let on_b = after.iter().next_back().copied().unwrap_or(0);
    assert!(on_b <= acknowledged + 1, "site-b holds record {on_b}, never acknowledged ({acknowledged})");
    // Nothing may write to a member once Promote answered (a replayer still
    // applying what it had fetched would add records here).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = records_on(&cluster_b, pool_b, &names, acknowledged + 64);
    assert_eq!(later, after, "round {round}: a member changed after the group promote answered OK");
    println!(
        "round {round} ({} quiesce): ran {:.1}s, {acknowledged} records acknowledged on a, {} replayed on b (control \
         gap at {:?}), consistent prefix 1..{on_b} after the group promote ({promote_s:.1}s), unchanged 3 s later",
        if honour_quiesce { "honouring" } else { "ignoring" },
        run_for.as_secs_f64(),
        control.len(),
        first_gap(&control),
    );

    drop(frozen);
    let quiesced = join_writer(w, Duration::from_secs(120));
    // Generations are cut by the members' exclusive locks alone: a writer
    // that registered a quiesce watch (rbd-nbd --quiesce) is never asked to
    // freeze for one.
    assert_eq!(quiesced, 0, "round {round}: a generation asked the writer to quiesce");
    // Both sites are primary now: drop the test's images everywhere.
    for v in &vols {
        remove_everywhere(lab, &v.spec);
    }
    Cut { acknowledged, on_b, control_gap: first_gap(&control) }
}

#[tokio::test]
async fn forced_group_failover_at_random_instants_keeps_a_gap_free_prefix() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &["--ceph-timeout", "10s"]).await;
    let mut rng = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let _hog = CpuHog::start(2);
    let mut cuts = Vec::new();
    for round in 0..cut_count() {
        cuts.push(one_cut(&lab, &sites, round, &mut rng, round % 2 == 0).await);
    }
    let broken = cuts.iter().filter(|c| c.control_gap.is_some()).count();
    let kept: u64 = cuts.iter().map(|c| c.on_b).sum();
    let acked: u64 = cuts.iter().map(|c| c.acknowledged).sum();
    println!(
        "{} cuts: the group promote kept a gap-free prefix every time ({kept} of {acked} acknowledged records); \
         without generations site-b's copies had a gap in {broken} of {} cuts",
        cuts.len(),
        cuts.len()
    );
    assert!(kept > 0, "no record ever reached site-b");
    assert!(broken > 0, "the control (per-volume failover) never broke the prefix: the test proves nothing");
}

/// After the unplanned failover, the old primary comes back: demote it (it
/// reports split-brain), resync it from site-b through the group, then fail
/// back without force; nothing site-b wrote is lost.
#[tokio::test]
async fn group_failback_after_site_loss_through_resync() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &["--ceph-timeout", "10s"]).await;
    let (a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let groups_a = sites.a.client(&lab).await;
    let vols: Vec<TestVolume> = (0..MEMBERS).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    for v in &vols {
        write_data(&lab, Site::A, &v.spec);
    }
    let ids: Vec<&str> = vols.iter().map(|v| v.id.as_str()).collect();
    let gid = groups_a
        .group_create(&format!("site-loss-{}", new_uuid()), &ids, group_params(&lab))
        .await
        .expect("create group")
        .volume_group_id;
    a.enable(&Subject::group(&gid), HashMap::new()).await.expect("enable");
    for v in &vols {
        let sum = checksum(&lab, Site::A, &v.spec).unwrap();
        wait_same_data(&lab, &v.spec, &sum, Site::B, LIMIT).await;
    }
    // The peer's initial sync copies no group snapshot: the group has a
    // recovery point there once a generation has replayed on every member.
    let specs: Vec<&str> = vols.iter().map(|v| v.spec.as_str()).collect();
    wait_group_cut(&lab, Site::B, &specs, LIMIT).await;
    {
        let _frozen = Frozen::daemons(&lab, "site-a", &[]);
        group_promote_after_site_loss(&b, &gid).await.expect("forced promote with site-a frozen");
    }
    for v in &vols {
        write_data(&lab, Site::B, &v.spec);
    }
    let sums_b: Vec<String> = vols.iter().map(|v| checksum(&lab, Site::B, &v.spec).unwrap()).collect();

    // Site-a is back and still primary: demote, then resync until ready.
    a.demote(&Subject::group(&gid), false, Params::new()).await.expect("demote the old primary");
    let started = Instant::now();
    let mut first = true;
    loop {
        match a.resync(&Subject::group(&gid), true, Params::new()).await {
            Ok(true) => break,
            Ok(false) => first = false,
            Err(e) if matches!(e.code(), Code::Aborted | Code::NotFound) => first = false,
            // Thawed together, the mgr may reap site-a's rbd-mirror from its
            // service map (stale beacon) before the daemon reports again.
            Err(e) if e.code() == Code::Unavailable && e.message().contains("rbd-mirror daemon") => {}
            Err(e) => panic!("group resync: {e:?}"),
        }
        assert!(started.elapsed() < LIMIT, "group resync not ready after {LIMIT:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(!first, "a split-brained group cannot be ready before its resync");
    for (v, sum) in vols.iter().zip(&sums_b) {
        wait_same_data(&lab, &v.spec, sum, Site::A, LIMIT).await;
    }
    // Planned failback.
    group_fail_over(&b, &a, &lab, &gid, &vols, &sums_b, Site::A).await;
    // The resynced members are back in site-a's RBD group, and generations go on.
    let group = format!("{}/csi-vol-group-{}", lab.pool(), &gid[gid.len() - 36..]);
    let listed = lab.rbd(Site::A, &["group", "image", "ls", &group]);
    for v in &vols {
        assert!(listed.contains(&v.spec), "{} not in {group}: {listed}", v.spec);
    }
    a.disable(&Subject::group(&gid), Params::new()).await.expect("disable");
    for v in &vols {
        remove_everywhere(&lab, &v.spec);
    }
}

/// A forced promote refuses when no generation reached every member on this
/// site: here none did (the peer's initial sync copies no group snapshot,
/// and site-a's server stopped before it took another). The way out the
/// refusal names, disable the group's replication here and enable it again,
/// leaves every member primary here with the data it held, and replicating
/// again from here.
#[tokio::test]
async fn a_refused_forced_promote_and_the_way_out_it_names() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let mut sites = SitePair::start(&lab, &[]).await;
    let (a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let groups_a = sites.a.client(&lab).await;
    let vols: Vec<TestVolume> = (0..MEMBERS).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    for v in &vols {
        write_data(&lab, Site::A, &v.spec);
    }
    let ids: Vec<&str> = vols.iter().map(|v| v.id.as_str()).collect();
    let gid = groups_a
        .group_create(&format!("no-cut-{}", new_uuid()), &ids, group_params(&lab))
        .await
        .expect("create group")
        .volume_group_id;
    a.enable(&Subject::group(&gid), HashMap::new()).await.expect("enable");
    drop((a, groups_a));
    sites.a.stop().await;
    let mut sums = Vec::new();
    for v in &vols {
        let sum = checksum(&lab, Site::A, &v.spec).unwrap();
        wait_same_data(&lab, &v.spec, &sum, Site::B, LIMIT).await;
        sums.push(sum);
    }
    {
        let _frozen = Frozen::daemons(&lab, "site-a", &[]);
        let refused = group_promote_after_site_loss(&b, &gid).await.expect_err("promote without a cut");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("disable the group's replication on this site and enable it again"),
            "the refusal names no way out: {}",
            refused.message()
        );
        b.disable(&Subject::group(&gid), Params::new()).await.expect("disable on site-b, as the refusal says");
        b.enable(&Subject::group(&gid), HashMap::new()).await.expect("enable again on site-b");
        for (v, sum) in vols.iter().zip(&sums) {
            assert_eq!(is_primary(&lab, Site::B, &v.spec), Some(true), "{} is not primary on site-b", v.spec);
            assert_eq!(checksum(&lab, Site::B, &v.spec).as_ref(), Some(sum), "{} lost data on site-b", v.spec);
            let mirroring = lab.mirror_info(Site::B, &v.spec).unwrap_or_default();
            assert_eq!(mirroring["state"], "enabled", "{} is not mirrored from site-b: {mirroring}", v.spec);
        }
        // Writable, and generations are taken here again.
        for v in &vols {
            write_data(&lab, Site::B, &v.spec);
        }
        let specs: Vec<&str> = vols.iter().map(|v| v.spec.as_str()).collect();
        wait_group_cut(&lab, Site::B, &specs, LIMIT).await;
    }
    b.disable(&Subject::group(&gid), Params::new()).await.expect("disable");
    for v in &vols {
        remove_everywhere(&lab, &v.spec);
    }
    for s in [Site::A, Site::B] {
        lab.rbd_try(s, &["group", "rm", &format!("{}/csi-vol-group-{}", lab.pool(), &gid[gid.len() - 36..])]).ok();
    }
}
