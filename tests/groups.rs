//! Volume groups through the real server against the lab: the VolumeGroup
//! service checked in Ceph's own view (RBD groups, ceph-csi's journal omap,
//! member metadata), and group replication through a planned failover and
//! back with the data checked by checksum on both sites.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use rbd_addons::proto::volumegroup::VolumeGroup;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(150);

fn uuid_of(group_id: &str) -> &str {
    &group_id[group_id.len() - 36..]
}

fn rbd_group_members(lab: &Lab, s: Site, group_id: &str) -> Vec<String> {
    let group = format!("{}/csi-vol-group-{}", lab.pool(), uuid_of(group_id));
    lab.rbd_json(s, &["group", "image", "ls", &group])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m["image"].as_str().map(str::to_owned))
        .collect()
}

fn journal_keys(lab: &Lab, group_id: &str) -> Vec<String> {
    let out = std::process::Command::new("timeout")
        .args(["30", "rados", "-c", &lab.conf(Site::A), "-p", &lab.pool(), "listomapkeys"])
        .arg(format!("csi.volume.group.{}", uuid_of(group_id)))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn rbd_groups(lab: &Lab, s: Site) -> Vec<String> {
    let groups = lab.rbd_json(s, &["group", "ls", &lab.pool()]).expect("rbd group ls");
    groups.as_array().unwrap().iter().filter_map(|g| g.as_str().map(str::to_owned)).collect()
}

fn directory_names(lab: &Lab) -> Vec<String> {
    let out = std::process::Command::new("timeout")
        .args(["30", "rados", "-c", &lab.conf(Site::A), "-p", &lab.pool(), "listomapkeys", "csi.groups.default"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn image_of(v: &TestVolume) -> String {
    v.spec.rsplit('/').next().unwrap().to_owned()
}

/// The end of a test: the group emptied and deleted, its volumes removed.
async fn retire_group(g: &Client, lab: &Lab, gid: &str, vols: &[TestVolume]) {
    g.group_modify(gid, &[], Params::new()).await.expect("empty the group");
    g.group_delete(gid).await.expect("delete the group");
    for v in vols {
        cleanup(lab, &v.spec);
    }
}

fn code(r: Result<impl Sized, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn volume_group_lifecycle_in_ceph_and_the_journal() {
    let lab = Lab::load();
    let mut server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let g = server.client(&lab).await;
    let vols: Vec<TestVolume> = (0..3).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    let (v1, v2, v3) = (vols[0].id.as_str(), vols[1].id.as_str(), vols[2].id.as_str());
    let name = format!("vgrc-{}", new_uuid());

    let group = g.group_create(&name, &[v1, v2], group_params(&lab)).await.expect("create");
    let gid = group.volume_group_id.clone();
    assert!(gid.starts_with("0001-0009-rook-ceph-"), "{gid}");
    let mut listed: Vec<String> = group.volumes.iter().map(|v| v.volume_id.clone()).collect();
    listed.sort();
    let mut want = vec![v1.to_owned(), v2.to_owned()];
    want.sort();
    assert_eq!(listed, want);
    assert!(group.volumes.iter().all(|v| v.capacity_bytes == 16 << 20));
    assert_eq!(group.volume_group_context.get("pool"), Some(&lab.pool()));
    // Ceph's view: the RBD group, ceph-csi's journal, the members' tags.
    let mut members = rbd_group_members(&lab, Site::A, &gid);
    members.sort();
    let mut images = vec![image_of(&vols[0]), image_of(&vols[1])];
    images.sort();
    assert_eq!(members, images);
    let keys = journal_keys(&lab, &gid);
    for k in ["csi.volname", "csi.groupname", "csi.creationtime", v1, v2] {
        assert!(keys.iter().any(|x| x == k), "journal lacks {k}: {keys:?}");
    }
    let tag = lab.rbd(Site::A, &["image-meta", "get", &vols[0].spec, "rbd-addons.group"]);
    assert_eq!(tag.trim(), uuid_of(&gid));

    // Create is idempotent by name; other members under the same name are not.
    let again = g.group_create(&name, &[v2, v1], group_params(&lab)).await.expect("create again");
    assert_eq!(again.volume_group_id, gid);
    assert_eq!(code(g.group_create(&name, &[v3], group_params(&lab)).await), Code::AlreadyExists);
    // A volume in another group cannot join, and nothing is left behind.
    let other = format!("vgrc-other-{}", new_uuid());
    assert_eq!(code(g.group_create(&other, &[v3, v1], group_params(&lab)).await), Code::FailedPrecondition);
    assert!(!directory_names(&lab).contains(&format!("csi.volume.group.{other}")), "a refused create left a name");
    let other_group = g.group_create(&other, &[], group_params(&lab)).await.expect("an empty group is allowed");
    assert!(other_group.volumes.is_empty());

    // Modify takes the full desired list.
    let modified = g.group_modify(&gid, &[v2, v3], Params::new()).await.expect("modify");
    assert_eq!(modified.volumes.len(), 2);
    let mut members = rbd_group_members(&lab, Site::A, &gid);
    members.sort();
    let mut images = vec![image_of(&vols[1]), image_of(&vols[2])];
    images.sort();
    assert_eq!(members, images);
    assert!(lab.rbd_try(Site::A, &["image-meta", "get", &vols[0].spec, "rbd-addons.group"]).is_err(), "v1 untagged");
    assert!(!journal_keys(&lab, &gid).iter().any(|k| k == v1));
    g.group_modify(&gid, &[v3, v2], Params::new()).await.expect("modify again is a no-op");
    assert_eq!(rbd_group_members(&lab, Site::A, &gid).len(), 2);

    // State lives in RADOS: a new server sees the same group.
    server.stop().await;
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let g = server.client(&lab).await;
    assert_eq!(g.group_get(&gid).await.expect("get after restart").volumes.len(), 2);

    // Listing pages through every group; a token that names no group is ABORTED.
    let (first, mut token) = g.group_list(1, "").await.expect("list");
    assert_eq!(first.len(), 1);
    assert!(!token.is_empty());
    let mut seen = vec![first[0].volume_group_id.clone()];
    while !token.is_empty() {
        let (page, next) = g.group_list(2, &token).await.expect("next page");
        seen.extend(page.into_iter().map(|g| g.volume_group_id));
        token = next;
    }
    assert!(seen.contains(&gid) && seen.contains(&other_group.volume_group_id), "{seen:?}");
    assert_eq!(code(g.group_list(0, "nope").await), Code::Aborted);
    assert_eq!(code(g.group_list(-1, "").await), Code::InvalidArgument);

    // Delete: refused with members; fine once empty; fine when gone.
    assert_eq!(code(g.group_delete(&gid).await), Code::FailedPrecondition);
    g.group_modify(&gid, &[], Params::new()).await.expect("remove all members");
    g.group_delete(&gid).await.expect("delete");
    let rbd_group = format!("csi-vol-group-{}", uuid_of(&gid));
    assert!(!rbd_groups(&lab, Site::A).contains(&rbd_group), "the RBD group is gone");
    assert!(journal_keys(&lab, &gid).is_empty(), "the journal object is gone");
    g.group_delete(&gid).await.expect("delete again is OK");
    assert_eq!(code(g.group_get(&gid).await), Code::NotFound);
    assert_eq!(code(g.group_modify(&gid, &[v1], Params::new()).await), Code::NotFound);
    g.group_delete(&other_group.volume_group_id).await.expect("delete the empty group");
    for v in &vols {
        cleanup(&lab, &v.spec);
    }
}

#[tokio::test]
async fn volume_group_bad_inputs_have_exact_codes() {
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let g = server.client(&lab).await;
    let c = server.client(&lab).await;
    let v = lab.create_volume(VolumeOpts::default());
    let missing_group = volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &new_uuid());
    // A CreateVolumeGroup's name, class parameters and members.
    type Create = (String, Params, Vec<String>);
    let create =
        |name: &str, params: HashMap<String, String>, ids: Vec<String>| -> Create { (name.to_owned(), params, ids) };
    let mut no_pool = group_params(&lab);
    no_pool.remove("pool");
    let mut no_cluster = group_params(&lab);
    no_cluster.remove("clusterID");
    let mut unknown_pool = group_params(&lab);
    unknown_pool.insert("pool".into(), "no-such-pool".into());
    let mut bad_prefix = group_params(&lab);
    bad_prefix.insert("volumeGroupNamePrefix".into(), "a/b".into());
    let mut bad_mode = group_params(&lab);
    bad_mode.insert("mirroringMode".into(), "sync".into());
    let too_many: Vec<String> =
        (0..101).map(|_| volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &new_uuid())).collect();
    let cases: Vec<(&str, Create, Code)> = vec![
        ("empty name", create("", group_params(&lab), vec![]), Code::InvalidArgument),
        ("overlong name", create(&"n".repeat(300), group_params(&lab), vec![]), Code::InvalidArgument),
        ("no pool", create("x", no_pool, vec![]), Code::InvalidArgument),
        ("no clusterID", create("x", no_cluster, vec![]), Code::InvalidArgument),
        ("unknown pool", create("x", unknown_pool, vec![]), Code::InvalidArgument),
        ("bad name prefix", create("x", bad_prefix, vec![]), Code::InvalidArgument),
        ("bad mirroringMode", create("x", bad_mode, vec![]), Code::InvalidArgument),
        ("malformed member", create("x", group_params(&lab), vec!["not-an-id".into()]), Code::InvalidArgument),
        ("101 members", create("x", group_params(&lab), too_many.clone()), Code::ResourceExhausted),
        ("member image missing", create("x", group_params(&lab), vec![too_many[0].clone()]), Code::InvalidArgument),
    ];
    for (what, (name, params, ids), want) in cases {
        assert_eq!(code(g.group_create(&name, &refs(&ids), params).await), want, "{what}");
    }
    let no_secret = g.clone().with_secrets(Params::new());
    let r = no_secret.group_create("x", &[v.id.as_str()], group_params(&lab)).await;
    assert_eq!(code(r), Code::InvalidArgument, "no secret");
    let mut wrong_key = lab.secrets();
    wrong_key.insert("userKey".into(), "AQBkZXJwIHNlY3JldCBrZXkgbm90IHZhbGlkAAAAAA==".into());
    let r = g.clone().with_secrets(wrong_key).group_create("x", &[v.id.as_str()], group_params(&lab)).await;
    assert_eq!(code(r), Code::Unauthenticated, "wrong key");
    assert_eq!(code(g.group_get("").await), Code::InvalidArgument, "empty group ID");
    assert_eq!(code(g.group_get("0001-xyz").await), Code::InvalidArgument, "malformed group ID");
    assert_eq!(code(g.group_get(&missing_group).await), Code::NotFound, "unknown group");
    assert_eq!(code(g.group_delete(&missing_group).await), Code::Ok, "delete unknown group");
    assert_eq!(code(g.group_modify(&missing_group, &[], Params::new()).await), Code::NotFound, "modify unknown group");
    // Group replication's own inputs.
    assert_eq!(code(c.enable(&Subject::group(&missing_group), HashMap::new()).await), Code::NotFound);
    let bad_interval = HashMap::from([("generationInterval".to_owned(), "5x".to_owned())]);
    assert_eq!(code(c.enable(&Subject::group(&missing_group), bad_interval).await), Code::InvalidArgument);
    let zero = HashMap::from([("generationInterval".to_owned(), "0s".to_owned())]);
    assert_eq!(code(c.enable(&Subject::group(&missing_group), zero).await), Code::InvalidArgument);
    let group = g.group_create(&format!("vgrc-empty-{}", new_uuid()), &[], group_params(&lab)).await.unwrap();
    assert_eq!(
        code(c.enable(&Subject::group(&group.volume_group_id), HashMap::new()).await),
        Code::FailedPrecondition,
        "an empty group cannot replicate"
    );
    g.group_delete(&group.volume_group_id).await.unwrap();
    // A member that fails is named, with its own code; nothing else is hidden.
    let gone = lab.create_volume(VolumeOpts::default());
    let group =
        g.group_create(&format!("vgrc-gone-{}", new_uuid()), &[&v.id, &gone.id], group_params(&lab)).await.unwrap();
    lab.rbd(
        Site::A,
        &[
            "group",
            "image",
            "rm",
            &format!("{}/csi-vol-group-{}", lab.pool(), uuid_of(&group.volume_group_id)),
            &gone.spec,
        ],
    );
    lab.rbd(Site::A, &["rm", "--no-progress", &gone.spec]);
    let err = c.enable(&Subject::group(&group.volume_group_id), HashMap::new()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(&format!("member {}", gone.id)), "{}", err.message());
    // Disable skips the member that is gone (nothing to disable there) and
    // disables the rest: NOT_FOUND would tell the controller all was done.
    c.disable(&Subject::group(&group.volume_group_id), Params::new()).await.expect("disable with a member gone");
    assert_eq!(lab.mirror_info(Site::A, &v.spec).unwrap()["state"], "disabled");
    g.group_modify(&group.volume_group_id, &[], Params::new()).await.unwrap();
    g.group_delete(&group.volume_group_id).await.unwrap();
    cleanup(&lab, &v.spec);
    let log = server.log_text();
    assert!(!log.contains(&lab.key()), "the key reached the log");
}

/// A group of three volumes with data, replicating in journal mode, with
/// site-b holding every member.
async fn replicated_group(lab: &Lab, sites: &SitePair, params: HashMap<String, String>) -> (String, Vec<TestVolume>) {
    let a = sites.a.client(lab).await;
    let g = sites.a.client(lab).await;
    let vols: Vec<TestVolume> = (0..3).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    for v in &vols {
        write_data(lab, Site::A, &v.spec);
    }
    let ids: Vec<&str> = vols.iter().map(|v| v.id.as_str()).collect();
    let group =
        g.group_create(&format!("vgrc-dr-{}", new_uuid()), &ids, group_params(lab)).await.expect("create group");
    let gid = group.volume_group_id;
    a.enable(&Subject::group(&gid), params).await.expect("enable group replication");
    for v in &vols {
        let sum = checksum(lab, Site::A, &v.spec).unwrap();
        wait_same_data(lab, &v.spec, &sum, Site::B, LIMIT).await;
    }
    (gid, vols)
}

#[tokio::test]
async fn group_planned_failover_and_failback_lose_nothing() {
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    let (a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let params = HashMap::from([("generationInterval".to_owned(), "3s".to_owned())]);
    let (gid, vols) = replicated_group(&lab, &sites, params).await;
    for v in &vols {
        assert_eq!(lab.mirror_info(Site::A, &v.spec).unwrap()["mode"], "journal", "groups default to journal mode");
        assert!(snap_names(&lab, Site::A, &v.spec).iter().any(|s| s.starts_with("rbd-addons.pre.")));
    }
    // The generations reach site-b through journal replay; info reports one.
    let start = Instant::now();
    let info = loop {
        match a.info(&Subject::group(&gid)).await {
            Ok(i) => break i,
            Err(e) if e.code() == Code::NotFound && start.elapsed() < LIMIT => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            Err(e) => panic!("group info: {e:?}"),
        }
    };
    assert!(info.last_sync_time.unwrap().seconds > 0);
    // The metrics say what Info said: the group is primary (as Ceph says of
    // every member), and its newest complete generation is Info's time.
    let (_, page) = http_get(&sites.a.metrics_address(), "/metrics");
    let series = |name: &str, extra: &str| metric(&page, &format!(r#"rbd_addons_group_{name}{{id="{gid}"{extra}}}"#));
    assert_eq!(series("replication_state", r#",state="primary""#), Some(1.0), "{page}");
    assert_eq!(series("last_sync_timestamp_seconds", ""), Some(info.last_sync_time.unwrap().seconds as f64));
    // The RPO a site loss would cost now: the age of that generation at the scrape.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    let rpo = series("rpo_seconds", "").expect("the group's RPO series");
    let age = now - info.last_sync_time.unwrap().seconds as f64;
    assert!((rpo - age).abs() <= 2.0, "rpo {rpo} s, the newest complete generation is {age} s old");
    // Ceph's own view: the generation Info (and so the RPO) names, found by
    // its time on site-a, is one every member holds on site-b, and no
    // generation common to all of them there is newer than the peer's status
    // reports (every 30 s) can have told.
    let named = info.last_sync_time.unwrap().seconds;
    let specs: Vec<&str> = vols.iter().map(|v| v.spec.as_str()).collect();
    let newest_common = generation_on_every_member_on_b(&lab, named, &specs);
    assert!(
        newest_common - named <= 35,
        "Info names the generation of {named}; site-b holds one of {newest_common} on every member"
    );
    for v in &vols {
        assert_eq!(is_primary(&lab, Site::A, &v.spec), Some(true));
    }
    assert_eq!(code(b.info(&Subject::group(&gid)).await), Code::FailedPrecondition, "info on the secondary");

    // While the group is worked on, a call that changes one of its members is
    // refused (ABORTED), and the other way round: a group call that finds a
    // member busy is refused with nothing done, and its retry finishes the
    // job. A member's Info only reads: it answers, never ABORTED.
    let (mut aborted, mut infos_during, mut infos_aborted) = (0, 0, 0);
    for attempt in 0.. {
        let racing = {
            let a2 = sites.a.client(&lab).await;
            let gid = gid.clone();
            tokio::spawn(async move { a2.demote(&Subject::group(&gid), false, Params::new()).await })
        };
        // Let the group call take its guards first (it works for a few hundred ms).
        tokio::time::sleep(Duration::from_millis(20)).await;
        while !racing.is_finished() {
            // Enable on an enabled member keeps it as it is.
            if let Err(e) = a.enable(&Subject::volume(&vols[0].id), Params::new()).await
                && e.code() == Code::Aborted
            {
                aborted += 1;
            }
            let info = a.info(&Subject::volume(&vols[0].id)).await;
            let whole = a.info(&Subject::group(&gid)).await;
            if !racing.is_finished() {
                infos_during += 1;
                infos_aborted += usize::from(info.as_ref().is_err_and(|e| e.code() == Code::Aborted));
                infos_aborted += usize::from(whole.as_ref().is_err_and(|e| e.code() == Code::Aborted));
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        match racing.await.unwrap() {
            Ok(()) => break,
            Err(e) if e.code() == Code::Aborted && attempt < 10 => {}
            Err(e) => panic!("group demote: {e:?}"),
        }
    }
    assert!(aborted > 0, "no member call was refused while the group was demoted");
    assert!(infos_during > 0, "no member Info was asked while the group was demoted");
    assert_eq!(
        infos_aborted, 0,
        "{infos_aborted} Info calls (of {infos_during} rounds) were ABORTED during the demote"
    );
    let sums: Vec<String> = vols.iter().map(|v| checksum(&lab, Site::A, &v.spec).unwrap()).collect();
    a.demote(&Subject::group(&gid), false, Params::new()).await.expect("demote again is OK");
    for v in &vols {
        assert_eq!(is_primary(&lab, Site::A, &v.spec), Some(false));
    }
    // Group Info reads the pool-wide view, which held every member as primary
    // a moment ago: right after the demote it shows the new role.
    assert_eq!(
        code(a.info(&Subject::group(&gid)).await),
        Code::FailedPrecondition,
        "group Info right after the demote"
    );

    // Failover: non-forced promote on b, with the handle minted on a.
    b.promote(&Subject::group(&gid), false, Params::new()).await.expect("promote on b");
    b.promote(&Subject::group(&gid), false, Params::new()).await.expect("promote again is OK");
    // Primary on b at once: Info answers or says no generation has reached
    // site-a yet, never that the group is not primary.
    match b.info(&Subject::group(&gid)).await {
        Ok(_) => {}
        Err(e) => assert_eq!(e.code(), Code::NotFound, "group Info on b right after the promote: {e:?}"),
    }
    // A promote interrupted after its members were promoted (its marker still
    // in the group's state object on this site) is finished by the retry:
    // revert included, marker cleared, data unchanged.
    let state = format!("rbd-addons.group.{}", uuid_of(&gid));
    let rados_b = |args: &[&str]| {
        std::process::Command::new("timeout")
            .args(["30", "rados", "-c", &lab.conf(Site::B), "-p", &lab.pool()])
            .args(args)
            .output()
            .unwrap()
    };
    assert!(rados_b(&["setomapval", &state, "promoting", "1"]).status.success());
    b.promote(&Subject::group(&gid), false, Params::new()).await.expect("the retried promote finishes the job");
    let keys = String::from_utf8_lossy(&rados_b(&["listomapkeys", &state]).stdout).into_owned();
    assert!(!keys.lines().any(|k| k == "promoting"), "marker left behind: {keys}");
    assert!(sites.b.log_text().contains("members reverted"), "the retry did not revert");
    // Logged on the blocking pool, deep inside the call: the line names it.
    let log = sites.b.log_text();
    let reverted = log.lines().rfind(|l| l.contains("members reverted")).unwrap();
    let line: serde_json::Value = serde_json::from_str(reverted).expect("a JSON log line");
    assert_eq!(line["span"]["method"], "PromoteVolume", "{reverted}");
    assert!(line["span"]["target"].as_str().is_some_and(|t| t.ends_with(&gid[gid.len() - 36..])), "{reverted}");
    assert!(line["span"]["request"].as_u64().is_some(), "{reverted}");
    for (v, sum) in vols.iter().zip(&sums) {
        assert_eq!(is_primary(&lab, Site::B, &v.spec), Some(true));
        assert_eq!(checksum(&lab, Site::B, &v.spec).as_deref(), Some(sum.as_str()), "{} lost data", v.spec);
    }
    assert_eq!(rbd_group_members(&lab, Site::B, &gid).len(), 3, "site-b's RBD group holds every member");
    let gb = sites.b.client(&lab).await;
    let seen_on_b = gb.group_get(&gid).await.expect("the peer's view of the group");
    let mut named: Vec<String> = seen_on_b.volumes.iter().map(|v| v.volume_id.clone()).collect();
    named.sort();
    let mut want: Vec<String> = vols.iter().map(|v| handle_on(&lab, Site::B, &v.id)).collect();
    want.sort();
    assert_eq!(named, want, "site-b names the members as it names them (its pool ID)");

    // Work on b, then fail back once a has replayed it.
    for v in &vols {
        write_data(&lab, Site::B, &v.spec);
    }
    let sums_b: Vec<String> = vols.iter().map(|v| checksum(&lab, Site::B, &v.spec).unwrap()).collect();
    for (v, sum) in vols.iter().zip(&sums_b) {
        wait_same_data(&lab, &v.spec, sum, Site::A, LIMIT).await;
    }
    group_fail_over(&b, &a, &lab, &gid, &vols, &sums_b, Site::A).await;

    // Old generations are pruned: the three newest stay, and those taken
    // within ten intervals (30 s) of the newest, at most one per interval,
    // plus one being taken: at most 12.
    for v in &vols {
        let pre = snap_names(&lab, Site::A, &v.spec).iter().filter(|s| s.starts_with("rbd-addons.pre.")).count();
        assert!((1..=12).contains(&pre), "{} holds {pre} fence posts", v.spec);
    }
    a.disable(&Subject::group(&gid), Params::new()).await.expect("disable");
    a.disable(&Subject::group(&gid), Params::new()).await.expect("disable again is OK");
    for v in &vols {
        assert_eq!(lab.mirror_info(Site::A, &v.spec).unwrap()["state"], "disabled");
        assert!(
            !snap_names(&lab, Site::A, &v.spec).iter().any(|s| s.starts_with("rbd-addons.")),
            "generations removed"
        );
    }
    let g = sites.a.client(&lab).await;
    retire_group(&g, &lab, &gid, &vols).await;
}

#[tokio::test]
async fn snapshot_mode_groups_say_they_are_not_crash_consistent() {
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    let a = sites.a.client(&lab).await;
    let params = HashMap::from([("mirroringMode".to_owned(), "snapshot".to_owned())]);
    let (gid, vols) = replicated_group(&lab, &sites, params).await;
    for v in &vols {
        assert_eq!(lab.mirror_info(Site::A, &v.spec).unwrap()["mode"], "snapshot");
        assert!(!snap_names(&lab, Site::A, &v.spec).iter().any(|s| s.starts_with("rbd-addons.pre.")));
    }
    let start = Instant::now();
    let info = loop {
        match a.info(&Subject::group(&gid)).await {
            Ok(i) => break i,
            Err(e) if e.code() == Code::NotFound && start.elapsed() < LIMIT => {
                for v in &vols {
                    mirror_snapshot(&lab, Site::A, &v.spec);
                }
                tokio::time::sleep(Duration::from_secs(2)).await
            }
            Err(e) => panic!("group info: {e:?}"),
        }
    };
    assert!(info.status_message.contains("NOT crash-consistent"), "{}", info.status_message);
    assert!(sites.a.log_text().contains("NOT crash-consistent"), "the log says it too");
    // Pacific has no native group mirroring; the server looked and says so.
    assert!(sites.a.log_text().contains("librbd has no native group mirroring"));
    a.disable(&Subject::group(&gid), Params::new()).await.expect("disable");
    let g = sites.a.client(&lab).await;
    retire_group(&g, &lab, &gid, &vols).await;
}

#[tokio::test]
async fn a_group_ceph_csi_created_is_served() {
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let g = server.client(&lab).await;
    let vols: Vec<TestVolume> = (0..2).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    // What ceph-csi's CreateVolumeGroup leaves: an RBD group, a directory entry
    // and a group object with one key per member.
    let (uuid, name) = (new_uuid(), format!("vgrc-csi-{}", new_uuid()));
    let rbd_group = format!("{}/csi-vol-group-{uuid}", lab.pool());
    lab.rbd(Site::A, &["group", "create", &rbd_group]);
    for v in &vols {
        lab.rbd(Site::A, &["group", "image", "add", &rbd_group, &v.spec]);
    }
    let object = format!("csi.volume.group.{uuid}");
    let set = |oid: &str, key: &str, value: &str| {
        let st = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "printf %s '{value}' | timeout 30 rados -c {} -p {} setomapval {oid} {key}",
                lab.conf(Site::A),
                lab.pool()
            ))
            .status()
            .unwrap();
        assert!(st.success(), "setomapval {oid} {key}");
    };
    set("csi.groups.default", &format!("csi.volume.group.{name}"), &uuid);
    set(&object, "csi.volname", &name);
    set(&object, "csi.groupname", &format!("csi-vol-group-{uuid}"));
    set(&object, "csi.creationtime", "2026-11-23T10:00:00Z");
    for v in &vols {
        set(&object, &v.id, "");
    }
    let gid = volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &uuid);

    let group = g.group_get(&gid).await.expect("get a ceph-csi group");
    let mut got: Vec<String> = group.volumes.iter().map(|v| v.volume_id.clone()).collect();
    got.sort();
    let mut want: Vec<String> = vols.iter().map(|v| v.id.clone()).collect();
    want.sort();
    assert_eq!(got, want);
    // Create with the same name finds it rather than making another.
    let again = g.group_create(&name, &[], group_params(&lab)).await.expect("create by the same name");
    assert_eq!(again.volume_group_id, gid);
    g.group_modify(&gid, &[&vols[1].id], Params::new()).await.expect("modify a ceph-csi group");
    assert_eq!(rbd_group_members(&lab, Site::A, &gid), vec![vols[1].spec.rsplit('/').next().unwrap().to_owned()]);
    g.group_modify(&gid, &[], Params::new()).await.unwrap();
    g.group_delete(&gid).await.expect("delete a ceph-csi group");
    assert!(directory_names(&lab).iter().all(|k| k != &format!("csi.volume.group.{name}")));
    for v in &vols {
        cleanup(&lab, &v.spec);
    }
}

#[tokio::test]
async fn one_server_takes_the_generations_and_old_ones_are_pruned_on_both_sites() {
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    // A second server on site-a, as a second replica of the same deployment.
    let twin = Server::start(&lab.csi_config(Site::A), &[]).await;
    let params = HashMap::from([("generationInterval".to_owned(), "1s".to_owned())]);
    let (gid, vols) = replicated_group(&lab, &sites, params).await;
    let t = twin.client(&lab).await;
    // Any call makes the twin watch the group too; the RADOS lock decides.
    t.info(&Subject::group(&gid)).await.ok();
    // Written to for 12 s at least, and until five fence posts were taken
    // (one serves up to four cuts): more than pruning keeps.
    let newest_post = |spec: &str| {
        snap_names(&lab, Site::A, spec).iter().filter_map(|n| n.strip_prefix("rbd-addons.pre.")?.parse().ok()).max()
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(12) || newest_post(&vols[0].spec).unwrap_or(0) < 5 {
        assert!(started.elapsed() < LIMIT, "no fifth fence post after {:?}", started.elapsed());
        for v in &vols {
            write_data(&lab, Site::A, &v.spec);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let taken = |s: &Server| s.log_text().matches("consistency generation taken").count();
    // One generation is taken, written to or not, once the peer reports every
    // member replaying (its report may come late, as on Tentacle).
    wait_until("the first generation since site-b replays every member", LIMIT, || {
        sites.a.log_text().contains("first generation since the peer replays every member")
    })
    .await;
    // Once writes stop, a generation may still take the last of them (under
    // load, one retried 5 s after a failed attempt: seen on Tentacle); then
    // an idle group takes none: at a 1 s interval, 4 s without one.
    let settling = Instant::now();
    let mut idle_from = taken(&sites.a);
    loop {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let now = taken(&sites.a);
        if now == idle_from {
            break;
        }
        assert!(settling.elapsed() < Duration::from_secs(60), "an idle group kept taking generations ({now} taken)");
        idle_from = now;
    }
    let (by_a, by_twin) = (taken(&sites.a), taken(&twin));
    assert!(by_a >= 4, "the lock holder took {by_a} generations");
    assert_eq!(by_twin, 0, "the twin took generations while another server held the group's lock");
    // The three newest fence posts stay, and those taken within ten
    // intervals (10 s) of the newest, here and (through replay) on site-b: at
    // most 11 at one a second, and a 12th while a generation is being taken,
    // until its prune. Fence posts were taken for more than 10 s, so the
    // first ones are gone.
    for v in &vols {
        let posts = |s: Site| -> Vec<u64> {
            snap_names(&lab, s, &v.spec)
                .iter()
                .filter_map(|n| n.strip_prefix("rbd-addons.pre.")?.parse().ok())
                .collect()
        };
        let on_a = posts(Site::A);
        assert!(on_a.len() <= 12, "{} holds {} fence posts on site-a", v.spec, on_a.len());
        assert!(on_a.iter().all(|n| *n > 1), "{}: generation 1 was never pruned on site-a: {on_a:?}", v.spec);
        wait_until("site-b to prune as well", LIMIT, || {
            let on_b = posts(Site::B);
            (1..=12).contains(&on_b.len()) && on_b.iter().all(|n| *n > 1)
        })
        .await;
    }
    let a = sites.a.client(&lab).await;
    a.disable(&Subject::group(&gid), Params::new()).await.expect("disable");
    let g = sites.a.client(&lab).await;
    retire_group(&g, &lab, &gid, &vols).await;
}

#[tokio::test]
async fn a_volume_joining_a_replicated_group_is_replicated_like_the_others() {
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let (g, c) = (server.client(&lab).await, server.client(&lab).await);
    let vols: Vec<TestVolume> = (0..4).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    let ids: Vec<&str> = vols.iter().map(|v| v.id.as_str()).collect();
    let mut params = group_params(&lab);
    params.insert("volumeGroupNamePrefix".into(), "app-".into());
    let name = format!("vgrc-join-{}", new_uuid());
    let gid = g.group_create(&name, &ids[..2], params).await.expect("create").volume_group_id;
    let rbd_group = format!("app-{}", uuid_of(&gid));
    assert!(rbd_groups(&lab, Site::A).contains(&rbd_group), "the RBD group takes the class's prefix");
    let snapshot = HashMap::from([("mirroringMode".to_owned(), "snapshot".to_owned())]);
    c.enable(&Subject::group(&gid), snapshot).await.expect("enable");

    g.group_modify(&gid, &ids[..3], Params::new()).await.expect("add a volume to the replicated group");
    let joined = lab.mirror_info(Site::A, &vols[2].spec).unwrap();
    assert_eq!((joined["state"].as_str(), joined["mode"].as_str()), (Some("enabled"), Some("snapshot")), "{joined}");
    assert_eq!(joined["primary"], true);

    // Secondary here: adding is refused, with nothing done.
    c.demote(&Subject::group(&gid), false, Params::new()).await.expect("demote");
    assert_eq!(code(g.group_modify(&gid, &ids, Params::new()).await), Code::FailedPrecondition);
    assert!(lab.rbd_json(Site::A, &["info", &vols[3].spec]).unwrap()["group"].is_null());
    assert_eq!(lab.mirror_info(Site::A, &vols[3].spec).unwrap()["state"], "disabled");

    c.promote(&Subject::group(&gid), false, Params::new()).await.expect("promote back after our own demote");
    c.disable(&Subject::group(&gid), Params::new()).await.expect("disable");
    retire_group(&g, &lab, &gid, &vols).await;
}

/// The peer site finds a replicated group's members through its index (one
/// scan, then only the members' headers), and still sees a member join and
/// another leave on the primary.
#[tokio::test]
async fn the_peer_sees_members_join_and_leave_through_its_index() {
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    let (ga, c) = (sites.a.client(&lab).await, sites.a.client(&lab).await);
    let gb = sites.b.client(&lab).await;
    let vols: Vec<TestVolume> = (0..3).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    let ids: Vec<&str> = vols.iter().map(|v| v.id.as_str()).collect();
    let gid = ga
        .group_create(&format!("vgrc-peer-{}", new_uuid()), &ids[..2], group_params(&lab))
        .await
        .expect("create")
        .volume_group_id;
    c.enable(&Subject::group(&gid), HashMap::new()).await.expect("enable (journal mode)");
    // Site-b names the members as it names them: its own pool ID.
    let want = |members: &[&str]| {
        let mut want: Vec<String> = members.iter().map(|id| handle_on(&lab, Site::B, id)).collect();
        want.sort();
        want
    };
    let members_on_b = |g: VolumeGroup| -> Vec<String> {
        let mut got: Vec<String> = g.volumes.into_iter().map(|v| v.volume_id).collect();
        got.sort();
        got
    };
    let index = || lab.rados_omap_keys(Site::B, "rbd-addons.group-index");
    let started = Instant::now();
    loop {
        match gb.group_get(&gid).await {
            Ok(g) if members_on_b(g.clone()) == want(&ids[..2]) => break,
            other => assert!(started.elapsed() < LIMIT, "site-b never found both members: {other:?}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(index().contains(&uuid_of(&gid).to_owned()), "site-b indexed the group: {:?}", index());

    // The group's seed (the fence post from which on its cuts can be on
    // site-b) is recorded once site-b replays both members...
    let started = Instant::now();
    let seed = loop {
        if let Some(seed) = seed_on_a(&lab, &gid) {
            break seed;
        }
        assert!(started.elapsed() < LIMIT, "the group was never seeded on site-a");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    ga.group_modify(&gid, &ids, Params::new()).await.expect("a third member joins on site-a");
    // ...and a join drops it (site-b syncs the newcomer without the cuts
    // taken before): none, or a newer one taken since site-b replays all three.
    assert!(
        seed_on_a(&lab, &gid).is_none_or(|now| now > seed),
        "the seed {seed} outlived the join: {:?}",
        seed_on_a(&lab, &gid)
    );
    let started = Instant::now();
    while members_on_b(gb.group_get(&gid).await.expect("get on site-b")) != want(&ids) {
        assert!(started.elapsed() < LIMIT, "site-b never saw the member join");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("site-b saw the join after {:.1} s", started.elapsed().as_secs_f64());
    // The newcomer's initial sync copies none of the group's earlier cuts:
    // Info names only a generation every member, the newcomer too, holds on
    // site-b (the group is seeded anew once site-b replays all three).
    let started = Instant::now();
    let named = loop {
        match c.info(&Subject::group(&gid)).await {
            Ok(i) => break i.last_sync_time.unwrap().seconds,
            Err(e) if e.code() == Code::NotFound && started.elapsed() < LIMIT => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            Err(e) => panic!("group info after the join: {e:?}"),
        }
    };
    let specs: Vec<&str> = vols.iter().map(|v| v.spec.as_str()).collect();
    generation_on_every_member_on_b(&lab, named, &specs);

    ga.group_modify(&gid, &ids[1..], Params::new()).await.expect("the first member leaves on site-a");
    let started = Instant::now();
    while members_on_b(gb.group_get(&gid).await.expect("get on site-b")) != want(&ids[1..]) {
        assert!(started.elapsed() < LIMIT, "site-b never saw the member leave");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("site-b saw the leave after {:.1} s", started.elapsed().as_secs_f64());
    // A call renews the index only once every member found carries the new
    // list's signature; the leaver's key can replay before the others' new
    // signature (seen on Reef), and until then each call scans. Polled.
    let started = Instant::now();
    while !index().contains(&uuid_of(&gid).to_owned()) {
        assert!(started.elapsed() < LIMIT, "site-b never renewed its index after the leave: {:?}", index());
        tokio::time::sleep(Duration::from_secs(1)).await;
        gb.group_get(&gid).await.expect("get on site-b");
    }
    println!("site-b renewed its index {:.1} s after", started.elapsed().as_secs_f64());

    c.disable(&Subject::group(&gid), Params::new()).await.expect("disable");
    retire_group(&ga, &lab, &gid, &vols).await;
}

/// The group's seed on site-a, as the server recorded it in RADOS (the
/// group's state object), if any.
fn seed_on_a(lab: &Lab, gid: &str) -> Option<u64> {
    let file = std::env::temp_dir().join(format!("rbd-addons-seed-{}", new_uuid()));
    let oid = format!("rbd-addons.group.{}", uuid_of(gid));
    let ok = rbd_addons::testkit::lab::lab_tool(60, "rados")
        .args(["-c", &lab.conf(Site::A), "-p", &lab.pool(), "getomapval", &oid, "seeded"])
        .arg(&file)
        .output()
        .expect("rados")
        .status
        .success();
    let seed = ok.then(|| std::fs::read_to_string(&file).ok()).flatten().and_then(|v| v.trim().parse().ok());
    let _ = std::fs::remove_file(&file);
    seed
}

/// Ceph's view: the generation taken at `named` (found by its time on
/// site-a) is held by every member on site-b. Answers the time of the newest
/// generation every member holds there.
fn generation_on_every_member_on_b(lab: &Lab, named: i64, specs: &[&str]) -> i64 {
    let on_a = group_snapshots(lab, Site::A, specs[0]);
    let key = on_a.iter().find(|(_, t)| *t == named).map(|(k, _)| k.clone());
    let key = key.unwrap_or_else(|| panic!("no generation of {} on site-a was taken at {named}: {on_a:?}", specs[0]));
    let on_b: Vec<Vec<String>> =
        specs.iter().map(|v| group_snapshots(lab, Site::B, v).into_iter().map(|(k, _)| k).collect()).collect();
    assert!(on_b.iter().all(|m| m.contains(&key)), "generation {key} is not on every member on site-b: {on_b:?}");
    on_a.iter().filter(|(k, _)| on_b.iter().all(|m| m.contains(k))).map(|(_, t)| *t).max().unwrap_or(named)
}

/// Ceph's view of the group snapshots a member holds on a site: (the group
/// snapshot's ID, the same on every member and site; Unix seconds).
fn group_snapshots(lab: &Lab, s: Site, spec: &str) -> Vec<(String, i64)> {
    use rbd_addons::testkit::{Image, IoCtx, SnapKind};
    let cluster = connect(lab, s);
    let io = IoCtx::open(&cluster, lab.pool_id(s), "").expect("open the pool");
    let name = spec.rsplit('/').next().unwrap();
    let image = Image::open_read_only(&io, name).expect("open the member");
    let snaps = image.snapshots().expect("list snapshots");
    snaps
        .iter()
        .filter(|s| s.kind == SnapKind::Group)
        // A snapshot pruned since the listing has no time: left out.
        .filter_map(|s| Some((s.name.rsplit('_').next()?.to_owned(), image.snap_timestamp(s.id).ok()?)))
        .collect()
}
