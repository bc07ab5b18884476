//! Disaster-recovery drills under a true network partition: each site runs in
//! a network namespace of its own (`scripts/lab.sh up --netns`), its server
//! too, and the link between them is cut while every daemon keeps running.
//! Unlike the frozen-site drills (tests/dr_site_loss.rs), site-a stays alive
//! and its application keeps writing: after a forced promote on site-b there
//! are two live primaries until the link heals.
//!
//! The tests need that lab; `scripts/test.sh` brings it up and runs them with
//! `--ignored`, one at a time. The data is judged by checksums and the roles
//! by Ceph's own mirror status on both sites. A failing drill names its step
//! and prints both sites' mirror status; the link is always healed on the way
//! out.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(180);
const NEEDS: &str = "needs the namespaced lab: scripts/lab.sh up --netns (scripts/test.sh runs it)";

/// The drill under way: its current step, and on a panic that step and both
/// sites' mirror status of its volumes. The link is healed when it ends.
struct Drill<'a> {
    lab: &'a Lab,
    specs: Vec<String>,
    step: String,
    started: Instant,
}

impl<'a> Drill<'a> {
    fn new(lab: &'a Lab) -> Self {
        assert!(lab.is_namespaced(), "{NEEDS}");
        lab.heal();
        Self { lab, specs: Vec::new(), step: "setting up".into(), started: Instant::now() }
    }

    fn step(&mut self, what: &str) {
        println!("[{:>6.1} s] {what}", self.started.elapsed().as_secs_f64());
        self.step = what.to_owned();
    }

    /// A mirrored volume, primary on site-a, with its data complete on
    /// site-b; the drill reports on it if it fails.
    async fn mirrored(&mut self, a: &mut Client) -> (TestVolume, String) {
        self.step("enable on site-a; site-b's copy complete");
        let v = self.lab.create_volume(VolumeOpts::default());
        self.specs.push(v.spec.clone());
        write_data(self.lab, Site::A, &v.spec);
        a.enable(&Subject::volume(&v.id), Params::new()).await.expect("enable");
        let sum = checksum(self.lab, Site::A, &v.spec).unwrap();
        wait_same_data(self.lab, &v.spec, &sum, Site::B, LIMIT).await;
        (v, sum)
    }

    async fn wait_split_brain(&self, spec: &str) {
        wait_until("site-a to report split-brain", LIMIT, || {
            self.lab.mirror_status(Site::A, spec).is_some_and(|s| s["description"] == "split-brain")
        })
        .await;
    }
}

impl Drop for Drill<'_> {
    fn drop(&mut self) {
        self.lab.heal();
        if std::thread::panicking() {
            eprintln!("== the drill failed at step: {}", self.step);
            for spec in &self.specs {
                for s in [Site::A, Site::B] {
                    let status = self.lab.rbd_try(s, &["mirror", "image", "status", spec]);
                    eprintln!("== site-{} {spec}:\n{}", s.key(), status.unwrap_or_else(|e| e));
                }
            }
        }
    }
}

/// An application writing to a volume on one site until stopped: 256 KiB of
/// random 4 KiB writes per round, as fast as the site takes them.
struct Writer {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(site: Site, spec: &str) -> Self {
        let (stop, rounds) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (stop2, rounds2, spec) = (stop.clone(), rounds.clone(), spec.to_owned());
        let thread = std::thread::spawn(move || {
            let lab = Lab::load();
            while !stop2.load(Ordering::Relaxed) {
                write_data(&lab, site, &spec);
                rounds2.fetch_add(1, Ordering::Relaxed);
            }
        });
        Self { stop, rounds, thread: Some(thread) }
    }

    fn rounds(&self) -> usize {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Stops after the round under way; panics if a write failed.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("a write of the application failed");
        }
        self.rounds()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Info on the primary, once it answers at all.
async fn info_now(c: &mut Client, _lab: &Lab, id: &str) -> GetInfo {
    let start = Instant::now();
    loop {
        match c.info(&Subject::volume(id)).await {
            Ok(i) => return i,
            Err(e) if e.code() == Code::NotFound && start.elapsed() < LIMIT => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            Err(e) => panic!("info: {e:?}"),
        }
    }
}

type GetInfo = rbd_addons::proto::replication::GetVolumeReplicationInfoResponse;

fn last_sync(i: &GetInfo) -> i64 {
    i.last_sync_time.as_ref().map_or(0, |t| t.seconds)
}

#[tokio::test]
#[ignore = "needs the namespaced lab: scripts/lab.sh up --netns (scripts/test.sh runs it)"]
async fn planned_failover_and_failback_across_the_namespaced_link() {
    let lab = Lab::load();
    let mut drill = Drill::new(&lab);
    let sites = SitePair::start(&lab, &[]).await;
    let (mut a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let (vol, sum_a) = drill.mirrored(&mut a).await;

    drill.step("planned failover to site-b");
    a.demote(&Subject::volume(&vol.id), false, Params::new()).await.expect("demote a");
    b.promote(&Subject::volume(&vol.id), false, Params::new()).await.expect("promote b");
    assert_eq!(is_primary(&lab, Site::B, &vol.spec), Some(true));
    assert_eq!(is_primary(&lab, Site::A, &vol.spec), Some(false));
    assert_eq!(checksum(&lab, Site::B, &vol.spec).as_deref(), Some(sum_a.as_str()), "b lost a's data");

    drill.step("writes on site-b reach site-a");
    write_data(&lab, Site::B, &vol.spec);
    mirror_snapshot(&lab, Site::B, &vol.spec);
    let sum_b = checksum(&lab, Site::B, &vol.spec).unwrap();
    wait_same_data(&lab, &vol.spec, &sum_b, Site::A, LIMIT).await;

    drill.step("planned failback to site-a");
    b.demote(&Subject::volume(&vol.id), false, Params::new()).await.expect("demote b");
    a.promote(&Subject::volume(&vol.id), false, Params::new()).await.expect("promote a");
    assert_eq!(is_primary(&lab, Site::A, &vol.spec), Some(true));
    assert_eq!(checksum(&lab, Site::A, &vol.spec).as_deref(), Some(sum_b.as_str()), "a lost b's data");

    a.disable(&Subject::volume(&vol.id), Params::new()).await.expect("disable");
    cleanup(&lab, &vol.spec);
}

#[tokio::test]
#[ignore = "needs the namespaced lab: scripts/lab.sh up --netns (scripts/test.sh runs it)"]
async fn partition_forced_promote_two_primaries_then_resync_and_failback() {
    let lab = Lab::load();
    let mut drill = Drill::new(&lab);
    // A short op deadline, so that a forced promote that hung would show.
    let sites = SitePair::start(&lab, &["--op-timeout", "30s"]).await;
    let (mut a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let (vol, _) = drill.mirrored(&mut a).await;
    let synced_before = last_sync(&info_now(&mut a, &lab, &vol.id).await);

    drill.step("the application writes on site-a; the link is cut");
    let writer_a = Writer::start(Site::A, &vol.spec);
    lab.partition();
    let cut_at = Instant::now();

    drill.step("Info on site-a says the peer is unreachable, with the last sync");
    let mut seen = None;
    while cut_at.elapsed() < LIMIT {
        let i = info_now(&mut a, &lab, &vol.id).await;
        if i.status_message.contains("unreachable") {
            seen = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let shown = seen.unwrap_or_else(|| panic!("Info never said the peer is unreachable within {LIMIT:?}"));
    println!("Info after {:.0} s of partition: {}", cut_at.elapsed().as_secs_f64(), shown.status_message);
    assert!(last_sync(&shown) >= synced_before, "the last sync time went back: {shown:?}");

    drill.step("forced promote on site-b while site-a is alive but cut off");
    let started = Instant::now();
    b.promote(&Subject::volume(&vol.id), true, Params::new()).await.expect("forced promote on b");
    let promote_took = started.elapsed();
    println!("forced promote under partition took {promote_took:?}");
    assert!(promote_took < Duration::from_secs(35), "forced promote outlived the op deadline: {promote_took:?}");
    assert_eq!(is_primary(&lab, Site::B, &vol.spec), Some(true));
    assert_eq!(is_primary(&lab, Site::A, &vol.spec), Some(true), "site-a, cut off, still believes it is primary");

    drill.step("both sites write: two live primaries");
    write_data(&lab, Site::B, &vol.spec);
    mirror_snapshot(&lab, Site::B, &vol.spec);
    let sum_b = checksum(&lab, Site::B, &vol.spec).unwrap();
    let rounds_a = writer_a.stop();
    println!("site-a's application wrote {} KiB during the partition", rounds_a * 256);
    assert!(rounds_a > 0, "site-a's application could not write while cut off");
    let sum_a = checksum(&lab, Site::A, &vol.spec).unwrap();
    assert_ne!(sum_a, sum_b, "the two primaries should hold different data");

    drill.step("heal; demote site-a; rbd-mirror reports the split-brain");
    lab.heal();
    a.demote(&Subject::volume(&vol.id), false, Params::new()).await.expect("demote the old primary");
    drill.wait_split_brain(&vol.spec).await;
    let refused = a.promote(&Subject::volume(&vol.id), false, Params::new()).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("split-brain"), "{refused:?}");

    drill.step("forced resync brings site-a back as a secondary with b's data");
    let started = Instant::now();
    resync_until_ready(&a, &vol.id, LIMIT).await;
    let used = lab.rbd_json(Site::B, &["du", &vol.spec]).ok().and_then(|d| d["images"][0]["used_size"].as_u64());
    println!(
        "resync after the partition took {:.1?} for {:.1} MiB in use",
        started.elapsed(),
        used.unwrap_or(0) as f64 / 1048576.0
    );
    assert_eq!(checksum(&lab, Site::A, &vol.spec).as_deref(), Some(sum_b.as_str()), "a does not hold b's data");
    assert_eq!(state_of(&lab.mirror_status(Site::A, &vol.spec)), "up+replaying");

    drill.step("failback to site-a: nothing b acknowledged is lost");
    b.demote(&Subject::volume(&vol.id), false, Params::new()).await.expect("demote b");
    let start = Instant::now();
    loop {
        match a.promote(&Subject::volume(&vol.id), false, Params::new()).await {
            Ok(()) => break,
            Err(e) if start.elapsed() < LIMIT => {
                println!("promote a: {e:?}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await
            }
            Err(e) => panic!("failback promote: {e:?}"),
        }
    }
    assert_eq!(checksum(&lab, Site::A, &vol.spec).as_deref(), Some(sum_b.as_str()), "the failback lost b's writes");

    a.disable(&Subject::volume(&vol.id), Params::new()).await.expect("disable");
    cleanup(&lab, &vol.spec);
}

#[tokio::test]
#[ignore = "needs the namespaced lab: scripts/lab.sh up --netns (scripts/test.sh runs it)"]
async fn a_partition_that_heals_before_any_promote_needs_no_call() {
    let lab = Lab::load();
    let mut drill = Drill::new(&lab);
    let sites = SitePair::start(&lab, &[]).await;
    let mut a = sites.a.client(&lab).await;
    let (vol, _) = drill.mirrored(&mut a).await;
    let before = last_sync(&info_now(&mut a, &lab, &vol.id).await);

    drill.step("the link is cut; site-a keeps writing and snapshotting");
    lab.partition();
    write_data(&lab, Site::A, &vol.spec);
    mirror_snapshot(&lab, Site::A, &vol.spec);
    let sum = checksum(&lab, Site::A, &vol.spec).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = last_sync(&info_now(&mut a, &lab, &vol.id).await);
    assert_eq!(during, before, "nothing can have synced while cut off");

    drill.step("heal: replication resumes by itself");
    lab.heal();
    let healed = Instant::now();
    wait_same_data(&lab, &vol.spec, &sum, Site::B, LIMIT).await;
    println!("site-b caught up {:.1} s after the heal", healed.elapsed().as_secs_f64());
    let mut closed = 0;
    while closed <= before {
        assert!(healed.elapsed() < LIMIT, "Info still shows the sync of before the partition after {LIMIT:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        closed = a.info(&Subject::volume(&vol.id)).await.map(|i| last_sync(&i)).unwrap_or(0);
    }
    println!("Info showed the gap closed {:.1} s after the heal", healed.elapsed().as_secs_f64());
    assert_eq!(is_primary(&lab, Site::A, &vol.spec), Some(true));
    assert_eq!(is_primary(&lab, Site::B, &vol.spec), Some(false));

    a.disable(&Subject::volume(&vol.id), Params::new()).await.expect("disable");
    cleanup(&lab, &vol.spec);
}

/// The image's ID on a site: rbd-mirror's resync deletes the image and
/// creates it again under a new ID.
fn image_id(lab: &Lab, s: Site, spec: &str) -> Option<String> {
    lab.rbd_json(s, &["info", spec]).ok().and_then(|v| v["id"].as_str().map(str::to_owned))
}

#[tokio::test]
#[ignore = "needs the namespaced lab: scripts/lab.sh up --netns (scripts/test.sh runs it)"]
async fn a_flapping_link_during_resync_finishes_it_once() {
    let lab = Lab::load();
    let mut drill = Drill::new(&lab);
    let sites = SitePair::start(&lab, &["--op-timeout", "30s"]).await;
    let (mut a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let (vol, _) = drill.mirrored(&mut a).await;

    drill.step("partition; forced promote on site-b; both write; heal; demote site-a");
    lab.partition();
    b.promote(&Subject::volume(&vol.id), true, Params::new()).await.expect("forced promote on b");
    write_data(&lab, Site::A, &vol.spec);
    // Enough for the resync to take a while: 8 MiB more on the new primary.
    lab.rbd(Site::B, &["bench", "--io-type", "write", "--io-size", "64K", "--io-total", "8M", &vol.spec]);
    mirror_snapshot(&lab, Site::B, &vol.spec);
    let sum_b = checksum(&lab, Site::B, &vol.spec).unwrap();
    lab.heal();
    a.demote(&Subject::volume(&vol.id), false, Params::new()).await.expect("demote the old primary");
    drill.wait_split_brain(&vol.spec).await;
    let old_id = image_id(&lab, Site::A, &vol.spec).expect("site-a's image");

    drill.step("forced resync, the link cut and healed three times while it runs");
    let mut ids = std::collections::BTreeSet::from([old_id.clone()]);
    let mut answers = Vec::new();
    let started = Instant::now();
    for round in 0..3 {
        for cut in [true, false] {
            if cut {
                lab.partition()
            } else {
                lab.heal()
            }
            let phase = Instant::now();
            while phase.elapsed() < Duration::from_secs(4) {
                // The controller keeps asking, whatever the link does.
                let answer = a.resync(&Subject::volume(&vol.id), true, Params::new()).await;
                answers.push(match &answer {
                    Ok(ready) => format!("ready={ready}"),
                    Err(e) => format!("{:?}", e.code()),
                });
                ids.extend(image_id(&lab, Site::A, &vol.spec));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            println!("round {round}, link {}: answers so far {answers:?}", if cut { "cut" } else { "up" });
        }
    }
    drill.step("after the flapping the resync finishes");
    let settle = Instant::now();
    loop {
        match a.resync(&Subject::volume(&vol.id), true, Params::new()).await {
            Ok(true) => break,
            Ok(false) => {}
            // rbd-mirror re-creating the image, or not yet back in the map.
            Err(e) if matches!(e.code(), Code::Aborted | Code::Unavailable) => {}
            Err(e) => panic!("resync after the flapping: {e:?}"),
        }
        assert!(settle.elapsed() < LIMIT, "resync not ready {LIMIT:?} after the link settled");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("resync finished {:.1} s after it was asked, through 3 cuts", started.elapsed().as_secs_f64());
    ids.extend(image_id(&lab, Site::A, &vol.spec));
    assert_eq!(checksum(&lab, Site::A, &vol.spec).as_deref(), Some(sum_b.as_str()), "a does not hold b's data");
    assert_eq!(state_of(&lab.mirror_status(Site::A, &vol.spec)), "up+replaying");
    assert!(ids.len() <= 2, "site-a's image was re-created more than once: IDs {ids:?}");
    let requested = sites.a.log_text().matches("resync from the peer requested").count();
    assert_eq!(requested, 1, "the resync was requested {requested} times for one demotion");
    assert!(
        a.resync(&Subject::volume(&vol.id), true, Params::new()).await.unwrap(),
        "a resync after the end must not start over"
    );

    b.disable(&Subject::volume(&vol.id), Params::new()).await.expect("disable on the new primary");
    lab.rbd_try(Site::B, &["rm", "--no-progress", &vol.spec]).ok();
    cleanup(&lab, &vol.spec);
}

#[tokio::test]
#[ignore = "needs the namespaced lab: scripts/lab.sh up --netns (scripts/test.sh runs it)"]
async fn group_partition_keeps_a_gap_free_prefix_and_resyncs_to_the_new_primary() {
    use rbd_addons::testkit::interleave::{MEMBERS, Writer, arm_writer, first_gap, join_writer, records_on};

    let lab = Lab::load();
    let mut drill = Drill::new(&lab);
    let sites = SitePair::start(&lab, &["--ceph-timeout", "10s"]).await;
    let (a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let groups_a = sites.a.client(&lab).await;
    drill.step("a journal-mode group of three, generations every 2 s, replaying on site-b");
    let vols: Vec<TestVolume> =
        (0..MEMBERS).map(|_| lab.create_volume(VolumeOpts { size_mb: 64, ..Default::default() })).collect();
    drill.specs = vols.iter().map(|v| v.spec.clone()).collect();
    let ids: Vec<&str> = vols.iter().map(|v| v.id.as_str()).collect();
    let names: Vec<String> = vols.iter().map(|v| v.spec.rsplit('/').next().unwrap().to_owned()).collect();
    let gid = groups_a
        .group_create(&format!("partition-{}", new_uuid()), &ids, group_params(&lab))
        .await
        .expect("create group")
        .volume_group_id;
    // The writer is armed before the first generation can quiesce its images.
    let writer = Writer::new(connect(&lab, Site::A), lab.pool_id(Site::A), names.clone());
    let (stop, written) = (writer.stop.clone(), writer.written.clone());
    let armed = arm_writer(writer);
    let params = std::collections::HashMap::from([("generationInterval".to_owned(), "2s".to_owned())]);
    a.enable(&Subject::group(&gid), params).await.expect("enable group replication");
    for v in &vols {
        wait_until(&format!("{} on site-b", v.spec), LIMIT, || {
            lab.mirror_info(Site::B, &v.spec).is_some_and(|m| m["primary"] == false)
        })
        .await;
    }

    drill.step("the interleaved writer runs on site-a; the link is cut mid-write");
    let w = armed.start();
    tokio::time::sleep(Duration::from_secs(8)).await;
    // A forced promote answers OK only with a recovery point on site-b (a
    // generation every member replayed); site-b's replay may lag the writer
    // by several seconds here, so cut the link once it has one.
    let specs: Vec<&str> = vols.iter().map(|v| v.spec.as_str()).collect();
    wait_group_cut(&lab, Site::B, &specs, LIMIT).await;
    lab.partition();
    let at_cut = written.load(Ordering::Relaxed);

    drill.step("forced group promote on site-b while site-a keeps writing");
    let started = Instant::now();
    let attempts = group_promote_after_site_loss(&b, &gid).await.expect("forced group promote on site-b");
    let promote_took = started.elapsed();
    for v in &vols {
        assert_eq!(is_primary(&lab, Site::B, &v.spec), Some(true), "{} is not primary on site-b", v.spec);
        assert_eq!(is_primary(&lab, Site::A, &v.spec), Some(true), "{} on site-a, cut off, let go", v.spec);
    }
    let (cluster_b, pool_b) = (connect(&lab, Site::B), lab.pool_id(Site::B));
    let on_b = records_on(&cluster_b, pool_b, &names, at_cut + 64);
    assert_eq!(first_gap(&on_b), None, "site-b holds records up to {:?} with a gap", on_b.iter().next_back());
    let newest_b = on_b.iter().next_back().copied().unwrap_or(0);
    assert!(newest_b <= at_cut + 1, "site-b holds record {newest_b}, written after the cut ({at_cut})");
    let after_promote = written.load(Ordering::Relaxed);
    println!(
        "group: {at_cut} records when the link was cut, gap-free prefix 1..{newest_b} on site-b after a forced \
         promote of {promote_took:.1?} ({attempts} attempts); site-a wrote {} more meanwhile",
        after_promote - at_cut
    );

    drill.step("site-b writes as the new primary; site-a's writer stops");
    for v in &vols {
        write_data(&lab, Site::B, &v.spec);
    }
    let sums_b: Vec<String> = vols.iter().map(|v| checksum(&lab, Site::B, &v.spec).unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    join_writer(w, Duration::from_secs(120));
    let during = written.load(Ordering::Relaxed) - at_cut;
    println!("site-a's application wrote {during} records during the partition");
    assert!(during > 0, "site-a's application stopped writing when the link was cut");

    drill.step("heal; demote site-a's group; forced group resync until ready");
    lab.heal();
    a.demote(&Subject::group(&gid), false, Params::new()).await.expect("demote the old primary group");
    let started = Instant::now();
    let mut first = true;
    loop {
        match a.resync(&Subject::group(&gid), true, Params::new()).await {
            Ok(true) => break,
            Ok(false) => first = false,
            Err(e) if matches!(e.code(), Code::Aborted | Code::NotFound | Code::FailedPrecondition) => {
                // FAILED_PRECONDITION until rbd-mirror has reported the split-brain.
                if e.code() != Code::FailedPrecondition {
                    first = false
                }
            }
            Err(e) if e.code() == Code::Unavailable => {}
            Err(e) => panic!("group resync: {e:?}"),
        }
        assert!(started.elapsed() < LIMIT, "group resync not ready after {LIMIT:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(!first, "a split-brained group cannot be ready before its resync");
    println!("group resync after the partition: ready in {:.1?}", started.elapsed());

    drill.step("site-a's members equal site-b's");
    for (v, sum) in vols.iter().zip(&sums_b) {
        wait_same_data(&lab, &v.spec, sum, Site::A, LIMIT).await;
    }
    b.disable(&Subject::group(&gid), Params::new()).await.expect("disable on the new primary");
    for v in &vols {
        remove_everywhere(&lab, &v.spec);
    }
}
