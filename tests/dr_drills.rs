//! Disaster-recovery drills on the two-site lab, through the real servers, with
//! the data checked by checksum on both sites. Every call uses the volume handle
//! minted on site-a; site-b's server resolves it through its cluster mapping.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(150);

struct Vol {
    v: TestVolume,
}

impl Vol {
    fn id(&self) -> &str {
        &self.v.id
    }
    fn spec(&self) -> &str {
        &self.v.spec
    }
}

/// A mirrored volume, primary on site-a, with its data complete on site-b.
async fn mirrored_volume(lab: &Lab, a: &mut Client) -> (Vol, String) {
    let v = lab.create_volume(VolumeOpts::default());
    write_data(lab, Site::A, &v.spec);
    a.enable(&Subject::volume(&v.id), Params::new()).await.expect("enable");
    let sum = checksum(lab, Site::A, &v.spec).unwrap();
    wait_same_data(lab, &v.spec, &sum, Site::B, LIMIT).await;
    (Vol { v }, sum)
}

fn marker(lab: &Lab, s: Site, spec: &str) -> Option<String> {
    lab.rbd_try(s, &["image-meta", "get", spec, ".rbd.image.creation_time"]).ok().map(|v| v.trim().to_owned())
}

#[tokio::test]
async fn planned_failover_and_failback_lose_nothing() {
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    let (mut a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let (vol, sum_a) = mirrored_volume(&lab, &mut a).await;

    // Failover to site-b.
    a.demote(&Subject::volume(vol.id()), false, Params::new()).await.expect("demote a");
    let m = marker(&lab, Site::A, vol.spec()).expect("demote records the creation-time marker");
    let secs: i64 = m.strip_prefix("seconds:").and_then(|r| r.split(' ').next()).and_then(|s| s.parse().ok()).unwrap();
    assert!(m.contains(" nanos:"), "{m}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - 600..=now).contains(&secs), "marker {m} is not this image's creation time");
    let class = std::collections::HashMap::from([("schedulingInterval".to_owned(), "3h".to_owned())]);
    b.promote(&Subject::volume(vol.id()), false, class.clone())
        .await
        .expect("non-forced promote on b after a's demote");
    assert_eq!(is_primary(&lab, Site::B, vol.spec()), Some(true));
    assert!(has_schedule_on(&lab, Site::B, vol.spec()), "promote must apply the class's schedule");
    b.promote(&Subject::volume(vol.id()), false, class).await.expect("promote again: already primary is OK");
    assert_eq!(is_primary(&lab, Site::A, vol.spec()), Some(false));
    assert_eq!(checksum(&lab, Site::B, vol.spec()).as_deref(), Some(sum_a.as_str()), "b lost a's data");

    // Work on site-b, then fail back once site-a has replayed it.
    write_data(&lab, Site::B, vol.spec());
    mirror_snapshot(&lab, Site::B, vol.spec());
    let sum_b = checksum(&lab, Site::B, vol.spec()).unwrap();
    assert_ne!(sum_a, sum_b);
    wait_same_data(&lab, vol.spec(), &sum_b, Site::A, LIMIT).await;
    b.demote(&Subject::volume(vol.id()), false, Params::new()).await.expect("demote b");
    assert!(!has_schedule_on(&lab, Site::B, vol.spec()), "the schedule follows the primary");
    a.promote(&Subject::volume(vol.id()), false, Params::new()).await.expect("non-forced promote on a");
    assert_eq!(is_primary(&lab, Site::A, vol.spec()), Some(true));
    assert_eq!(checksum(&lab, Site::A, vol.spec()).as_deref(), Some(sum_b.as_str()), "a lost b's data");

    a.disable(&Subject::volume(vol.id()), Params::new()).await.expect("disable");
    cleanup(&lab, vol.spec());
}

#[tokio::test]
async fn forced_promote_split_brain_then_resync_failback() {
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    let (mut a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let (vol, _) = mirrored_volume(&lab, &mut a).await;

    let err = b.promote(&Subject::volume(vol.id()), false, Params::new()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(is_primary(&lab, Site::B, vol.spec()), Some(false), "a refused promote changed nothing");

    // What the controller does next: force. Both sites are now primary.
    b.promote(&Subject::volume(vol.id()), true, Params::new()).await.expect("forced promote");
    assert_eq!(is_primary(&lab, Site::B, vol.spec()), Some(true));
    assert_eq!(is_primary(&lab, Site::A, vol.spec()), Some(true));
    write_data(&lab, Site::B, vol.spec());
    mirror_snapshot(&lab, Site::B, vol.spec());
    let sum_b = checksum(&lab, Site::B, vol.spec()).unwrap();

    // Failback: a gives up its copy and takes b's.
    a.demote(&Subject::volume(vol.id()), false, Params::new()).await.expect("demote a");
    wait_until("a to report split-brain", LIMIT, || {
        lab.mirror_status(Site::A, vol.spec()).is_some_and(|s| s["description"] == "split-brain")
    })
    .await;
    let err = a.resync(&Subject::volume(vol.id()), false, Params::new()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "resync without force must refuse: {err:?}");
    resync_until_ready(&a, vol.id(), LIMIT).await;
    assert_eq!(checksum(&lab, Site::A, vol.spec()).as_deref(), Some(sum_b.as_str()), "a does not hold b's data");
    assert!(marker(&lab, Site::A, vol.spec()).is_none(), "the re-created image must not carry the old marker");
    // Both healthy again: a replays, b is the primary.
    assert_eq!(state_of(&lab.mirror_status(Site::A, vol.spec())), "up+replaying");
    assert_eq!(is_primary(&lab, Site::B, vol.spec()), Some(true));
    assert!(
        a.resync(&Subject::volume(vol.id()), true, Params::new()).await.unwrap(),
        "a second resync must not start over"
    );

    b.disable(&Subject::volume(vol.id()), Params::new()).await.expect("disable on the new primary");
    lab.rbd_try(Site::B, &["rm", "--no-progress", vol.spec()]).ok();
    cleanup(&lab, vol.spec());
}

#[tokio::test]
async fn peer_site_handles_resolve_through_cluster_mapping() {
    let lab = Lab::load();
    let server_a = Server::start(&lab.csi_config(Site::A), &[]).await;
    let mut a = server_a.client(&lab).await;
    let (vol, _) = mirrored_volume(&lab, &mut a).await;
    assert_ne!(lab.pool_id(Site::A), lab.pool_id(Site::B), "the lab must have different pool IDs per site");

    // Without a mapping, the handle's pool ID names another pool on site-b, one
    // the CSI user has no access to: refused, and never mistaken for "gone".
    let plain = Server::start(&lab.csi_config(Site::B), &["--cluster-mapping", "/nonexistent/mapping.json"]).await;
    let err = plain.client(&lab).await.info(&Subject::volume(vol.id())).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Same clusterID on both sites, pool IDs mapped (the lab's own mapping).
    let sites = SitePair::start(&lab, &[]).await;
    let err = sites.b.client(&lab).await.info(&Subject::volume(vol.id())).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "found, and secondary: {err:?}");

    // Different clusterIDs per site: both the clusterID and the pool are mapped.
    let dir = std::env::temp_dir().join(format!("mapping-{}", new_uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.json");
    let mapping = dir.join("cluster-mapping.json");
    std::fs::write(
        &config,
        serde_json::json!([{"clusterID": "dr-site-b", "monitors": [lab.mon_host(Site::B)]}]).to_string(),
    )
    .unwrap();
    let pools = serde_json::json!({lab.pool_id(Site::A).to_string(): lab.pool_id(Site::B).to_string()});
    std::fs::write(
        &mapping,
        serde_json::json!([{"clusterIDMapping": {"rook-ceph": "dr-site-b"}, "RBDPoolIDMapping": [pools]}]).to_string(),
    )
    .unwrap();
    let other = Server::start(&config, &["--cluster-mapping", mapping.to_str().unwrap()]).await;
    let ob = other.client(&lab).await;
    let err = ob.info(&Subject::volume(vol.id())).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "found through the clusterID mapping: {err:?}");
    // And the mapped handle drives real operations there.
    a.demote(&Subject::volume(vol.id()), false, Params::new()).await.expect("demote a");
    ob.promote(&Subject::volume(vol.id()), false, Params::new()).await.expect("promote b through the mapped handle");
    assert_eq!(is_primary(&lab, Site::B, vol.spec()), Some(true));

    ob.disable(&Subject::volume(vol.id()), Params::new()).await.expect("disable on b");
    lab.rbd_try(Site::B, &["rm", "--no-progress", vol.spec()]).ok();
    cleanup(&lab, vol.spec());
    std::fs::remove_dir_all(&dir).ok();
}

/// The code of a call, or "ok"/"ready=…" when it succeeded.
async fn outcome(rpc: &str, c: &mut Client, _lab: &Lab, id: &str) -> String {
    let code = |r: Result<(), tonic::Status>| r.map_or_else(|e| format!("{:?}", e.code()), |()| "ok".into());
    match rpc {
        "enable" => code(c.enable(&Subject::volume(id), Params::new()).await),
        "disable" => code(c.disable(&Subject::volume(id), Params::new()).await),
        "promote" => code(c.promote(&Subject::volume(id), false, Params::new()).await),
        "demote" => code(c.demote(&Subject::volume(id), false, Params::new()).await),
        "resync" => c
            .resync(&Subject::volume(id), false, Params::new())
            .await
            .map_or_else(|e| format!("{:?}", e.code()), |r| format!("ready={r}")),
        "info" => code(c.info(&Subject::volume(id)).await.map(drop)),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn every_rpc_twice_in_every_state_answers_the_same() {
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    let (mut a, mut b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let mut report = Vec::new();
    let mut failures = Vec::new();

    // Each state is set up on fresh volumes; RPCs that change the state get a
    // volume of their own, so that each pair of calls starts from the state.
    struct Case {
        state: &'static str,
        site: Site,
        /// Each RPC with the answer it must give (both times).
        rpcs: &'static [(&'static str, &'static str)],
    }
    const FP: &str = "FailedPrecondition";
    let cases = [
        Case {
            state: "disabled",
            site: Site::A,
            rpcs: &[("disable", "ok"), ("promote", FP), ("demote", FP), ("resync", FP), ("info", FP)],
        },
        Case { state: "disabled", site: Site::A, rpcs: &[("enable", "ok")] },
        Case {
            state: "primary",
            site: Site::A,
            rpcs: &[("enable", "ok"), ("promote", "ok"), ("resync", "InvalidArgument")],
        },
        Case { state: "primary", site: Site::A, rpcs: &[("demote", "ok")] },
        Case { state: "primary", site: Site::A, rpcs: &[("disable", "ok")] },
        Case {
            state: "secondary",
            site: Site::B,
            rpcs: &[
                ("enable", "ok"),
                ("promote", FP),
                ("demote", "ok"),
                ("info", FP),
                ("resync", "ready=true"),
                ("disable", "ok"),
            ],
        },
        Case {
            state: "both demoted",
            site: Site::A,
            rpcs: &[("enable", "ok"), ("demote", "ok"), ("info", FP), ("disable", FP), ("promote", "ok")],
        },
        Case {
            state: "split-brain",
            site: Site::B,
            rpcs: &[
                ("enable", "ok"),
                ("demote", "ok"),
                ("info", FP),
                ("resync", FP),
                ("disable", FP),
                // The peer is primary: never a silent second primary.
                ("promote", FP),
            ],
        },
    ];
    for case in cases {
        let (vol, _) = if case.state == "disabled" {
            let v = lab.create_volume(VolumeOpts::default());
            (Vol { v }, String::new())
        } else {
            mirrored_volume(&lab, &mut a).await
        };
        match case.state {
            "secondary" => {
                wait_until("b to report up+replaying", LIMIT, || {
                    state_of(&lab.mirror_status(Site::B, vol.spec())) == "up+replaying"
                })
                .await;
            }
            "both demoted" => {
                a.demote(&Subject::volume(vol.id()), false, Params::new()).await.unwrap();
                // Both demoted shows as up+unknown ("remote image demoted", later
                // "remote image is not primary").
                wait_until("b to see a's demotion", LIMIT, || {
                    state_of(&lab.mirror_status(Site::B, vol.spec())) == "up+unknown"
                })
                .await;
            }
            "split-brain" => {
                b.promote(&Subject::volume(vol.id()), true, Params::new()).await.unwrap();
                b.demote(&Subject::volume(vol.id()), false, Params::new()).await.unwrap();
                wait_until("b to report split-brain", LIMIT, || {
                    lab.mirror_status(Site::B, vol.spec()).is_some_and(|s| s["description"] == "split-brain")
                })
                .await;
            }
            _ => {}
        }
        let c = if case.site == Site::A { &mut a } else { &mut b };
        for (rpc, want) in case.rpcs {
            let first = outcome(rpc, c, &lab, vol.id()).await;
            let second = outcome(rpc, c, &lab, vol.id()).await;
            report.push(format!("{:<13} {:<8} {first:<20} {second}", case.state, rpc));
            if first != *want || second != *want {
                failures.push(format!("{} / {rpc}: {first} then {second}, want {want}", case.state));
            }
        }
        lab.rbd_try(Site::B, &["mirror", "image", "disable", "--force", vol.spec()]).ok();
        lab.rbd_try(Site::B, &["rm", "--no-progress", vol.spec()]).ok();
        cleanup(&lab, vol.spec());
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "answers changed between identical calls:\n{}", failures.join("\n"));
}

#[derive(Clone, Copy)]
enum Step {
    Enable,
    Demote,
    Promote,
    Disable,
}

/// One concurrent wave of calls, one per volume, as the controller's parallel
/// reconciles send them; every call must succeed. Returns the wave's duration.
async fn wave(client: &Client, ids: &[String], step: Step) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (c, subject) = (client.clone(), Subject::volume(id));
            tokio::spawn(async move {
                match step {
                    Step::Enable => c.enable(&subject, Params::new()).await,
                    Step::Demote => c.demote(&subject, false, Params::new()).await,
                    Step::Promote => c.promote(&subject, false, Params::new()).await,
                    Step::Disable => c.disable(&subject, Params::new()).await,
                }
            })
        })
        .collect();
    for (id, t) in ids.iter().zip(tasks) {
        t.await.unwrap().unwrap_or_else(|e| panic!("{id}: {e:?}"));
    }
    started.elapsed()
}

#[tokio::test]
async fn twenty_volumes_fail_over_and_back_in_parallel() {
    const N: usize = 20;
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    let (a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let vols: Vec<TestVolume> = (0..N).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    let ids: Vec<String> = vols.iter().map(|v| v.id.clone()).collect();

    let t_enable = wave(&a, &ids, Step::Enable).await;
    for v in &vols {
        wait_until("b's copy", LIMIT, || lab.rbd_try(Site::B, &["info", &v.spec]).is_ok()).await;
    }
    let t_demote = wave(&a, &ids, Step::Demote).await;
    let t_promote = wave(&b, &ids, Step::Promote).await;
    for v in &vols {
        assert_eq!(is_primary(&lab, Site::B, &v.spec), Some(true), "{}", v.spec);
    }
    // Fail back once every old primary replays from b.
    for v in &vols {
        wait_until("a to replay from b", LIMIT, || state_of(&lab.mirror_status(Site::A, &v.spec)) == "up+replaying")
            .await;
    }
    let t_back_demote = wave(&b, &ids, Step::Demote).await;
    let t_back_promote = wave(&a, &ids, Step::Promote).await;
    for v in &vols {
        assert_eq!(is_primary(&lab, Site::A, &v.spec), Some(true), "{}", v.spec);
    }
    println!(
        "{N} volumes: enable {t_enable:?}; failover: demote {t_demote:?}, promote {t_promote:?}; \
         failback: demote {t_back_demote:?}, promote {t_back_promote:?}"
    );
    wave(&a, &ids, Step::Disable).await;
    for v in &vols {
        cleanup(&lab, &v.spec);
    }
}
