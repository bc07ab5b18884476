//! What an operator's worst day does to the server itself: SIGTERM while a
//! call is stuck on a frozen cluster, a second server started on a live
//! socket, a restart after SIGKILL while images were locked, racing first
//! calls, an unknown cephx user, and a demote that would strand a volume.
//! Tests that freeze daemons run one at a time (SERIAL).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rbd_addons::client::Subject;
use tonic::Code;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn code_of<T>(r: &Result<T, tonic::Status>) -> Code {
    r.as_ref().err().map_or(Code::Ok, tonic::Status::code)
}

fn message_of<T>(r: &Result<T, tonic::Status>) -> String {
    r.as_ref().err().map_or_else(|| "OK".to_owned(), |s| s.message().to_owned())
}

/// Waits (bounded) for a child to exit; the time it took, or None.
async fn exit_within(child: &mut std::process::Child, limit: Duration) -> Option<(Duration, std::process::ExitStatus)> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((started.elapsed(), status));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn sigterm_with_a_call_stuck_on_a_frozen_cluster_exits_within_the_grace_period() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    // The Ceph bound is far longer than the grace: only the grace may count.
    let mut server = Server::start(
        &lab.csi_config(Site::A),
        &["--shutdown-grace", "3s", "--ceph-timeout", "60s", "--log-format", "text"],
    )
    .await;
    let client = server.client(&lab).await;
    let id = volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &new_uuid());
    // A monitor that stops answering: the first call's connect hangs in
    // librados for the whole Ceph timeout.
    let frozen = Frozen::daemons(&lab, "site-a", &["mon"]);
    let stuck = tokio::spawn(async move { client.info(&Subject::Volume(id)).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!stuck.is_finished(), "the call was expected to hang on the frozen monitor");

    let mut child = server.take_child();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let exited = exit_within(&mut child, Duration::from_secs(20)).await;
    drop(frozen);
    let (took, status) = exited.expect("the server did not exit within 20 s of SIGTERM with a call stuck");
    println!("exit after SIGTERM with a call stuck on a frozen monitor: {took:?} (grace 3 s, Ceph timeout 60 s)");
    assert!(took < Duration::from_secs(6), "exit took {took:?}, the grace is 3 s");
    assert!(status.success(), "{status:?}");
    assert!(!server.socket.exists(), "socket left behind");
    let log = server.log_text();
    assert!(log.contains("calls still running after the grace period"), "{log}");
    stuck.abort();
}

#[tokio::test]
async fn a_second_server_on_a_live_socket_refuses_to_start_and_takes_nothing() {
    let lab = Lab::load();
    let mut first = Server::start(&lab.csi_config(Site::A), &[]).await;
    let second = |socket: &std::path::Path| {
        let started = Instant::now();
        let out = Command::new("timeout")
            .args(["20", BIN, "serve", "--metrics-address", "off", "--log-format", "text", "--endpoint"])
            .arg(socket)
            .arg("--ceph-csi-config")
            .arg(lab.csi_config(Site::A))
            .output()
            .unwrap();
        (out, started.elapsed())
    };
    let (out, took) = second(&first.socket);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.status.code() != Some(124), "the second server started: {stderr}");
    assert!(stderr.contains("another server is listening"), "{stderr}");
    assert!(took < Duration::from_secs(5), "refusing took {took:?}");
    // The first one still owns its path and answers.
    let probe = first.client(&lab).await.probe().await.expect("the first server no longer answers");
    assert!(probe);

    // A frozen server is still live (its backlog accepts): not stale either.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(first.pid(), libc::SIGSTOP) };
    let (out, _) = second(&first.socket);
    // SAFETY: as above.
    unsafe { libc::kill(first.pid(), libc::SIGCONT) };
    assert!(!out.status.success(), "a server started over a frozen one's socket");
    assert!(String::from_utf8_lossy(&out.stderr).contains("another server is listening"));
    assert!(first.client(&lab).await.probe().await.unwrap());
    first.stop().await;
}

#[tokio::test]
async fn racing_first_calls_share_one_ceph_connection() {
    let lab = Lab::load();
    let mut server = Server::start(&lab.csi_config(Site::A), &["--log-format", "text"]).await;
    let client = server.client(&lab).await;
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let c = client.clone();
            let lab = Lab::load();
            // Volumes that do not exist: each call connects, then answers NOT_FOUND.
            let id = volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &new_uuid());
            tokio::spawn(async move { c.info(&Subject::volume(&id)).await.map(drop) })
        })
        .collect();
    for call in calls {
        let r = call.await.unwrap();
        assert_eq!(r.unwrap_err().code(), Code::NotFound);
    }
    server.stop().await;
    let log = server.log_text();
    assert_eq!(log.matches("connected to Ceph").count(), 1, "one connection per key, always:\n{log}");
    // A text log written to a file carries no terminal colour codes.
    assert!(!log.contains('\u{1b}'), "colour codes in a text log file");
}

/// A config.json whose monitors are bare `ip:port` entries, as ceph-csi's
/// usually are: clusterID `bare-v2` names site-a's msgr2 port, `bare-v1` its
/// msgr1 port.
fn bare_monitor_config(lab: &Lab, dir: &std::path::Path) -> std::path::PathBuf {
    let mon = lab.mon_host(Site::A);
    let addr = |proto: &str| {
        let start = mon.find(proto).unwrap() + proto.len();
        mon[start..].split([',', ']']).next().unwrap().to_owned()
    };
    let config = serde_json::json!([
        {"clusterID": "bare-v2", "monitors": [addr("v2:")]},
        {"clusterID": "bare-v1", "monitors": [addr("v1:")]},
    ]);
    let path = dir.join("bare-config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

#[tokio::test]
async fn refused_credentials_are_unauthenticated_at_once_also_with_bare_monitor_addresses() {
    let lab = Lab::load();
    let dir = std::env::temp_dir().join(format!("rbd-addons-bare-{}", new_uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = Server::start(&bare_monitor_config(&lab, &dir), &["--ceph-timeout", "30s"]).await;
    let client = server.client(&lab).await;
    let wrong_key =
        String::from_utf8(Command::new("ceph-authtool").arg("--gen-print-key").output().unwrap().stdout).unwrap();
    for cluster in ["bare-v2", "bare-v1"] {
        let id = volume_id(cluster, lab.pool_id(Site::A), &new_uuid());
        let unknown_user = HashMap::from([
            ("userID".to_owned(), format!("nobody-{}", &new_uuid()[..8])),
            ("userKey".to_owned(), lab.key()),
        ]);
        let wrong = HashMap::from([("userID".to_owned(), lab.user()), ("userKey".to_owned(), wrong_key.trim().into())]);
        for (what, secrets) in [("unknown user", unknown_user), ("wrong key", wrong)] {
            let started = Instant::now();
            let r = client.clone().with_secrets(secrets).info(&Subject::Volume(id.clone())).await;
            let took = started.elapsed();
            println!("{what} through {cluster}: {:?} after {took:?}", code_of(&r));
            assert_eq!(code_of(&r), Code::Unauthenticated, "{what} via {cluster}: {}", message_of(&r));
            assert!(took < Duration::from_secs(5), "{what} via {cluster} took {took:?}: the monitor refuses at once");
            assert!(!message_of(&r).contains(&lab.key()), "the key reached the message");
        }
        // The right credentials reach the cluster through the same entry.
        let r = client.info(&Subject::Volume(id)).await;
        assert_eq!(code_of(&r), Code::NotFound, "valid user via {cluster}: {}", message_of(&r));
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The image's exclusive-lock owners' addresses on a site.
fn lock_owners(lab: &Lab, s: Site, spec: &str) -> Vec<String> {
    let v = lab.rbd_json(s, &["lock", "ls", spec]).unwrap_or_default();
    let list = v.as_array().cloned().unwrap_or_default();
    list.iter().filter_map(|l| l["address"].as_str().map(str::to_owned)).collect()
}

fn blocklist(lab: &Lab, s: Site) -> String {
    let out = Command::new("timeout")
        .args(["20", "ceph", "-c", &lab.conf(s), "osd", "blocklist", "ls"])
        .output()
        .expect("ceph osd blocklist ls");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test]
async fn a_restart_after_sigkill_fences_the_dead_server_and_its_locks_break_at_once() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let dir = std::env::temp_dir().join(format!("rbd-addons-test-{}", new_uuid()));
    std::fs::create_dir_all(&dir).unwrap();

    // Kill a server while it holds an image's exclusive lock: enable volumes
    // in parallel, freeze it mid-way, and keep it only if a lock is held.
    let mut locked = None;
    let mut all = Vec::new();
    for round in 0..12u64 {
        let mut dead = Server::start_in(dir.clone(), &lab.csi_config(Site::A), &[]).await;
        let client = dead.client(&lab).await;
        let vols: Vec<TestVolume> = (0..4).map(|_| lab.create_volume(VolumeOpts::default())).collect();
        for v in &vols {
            let (c, _lab, id) = (client.clone(), Lab::load(), v.id.clone());
            tokio::spawn(async move { c.enable(&Subject::volume(&id), Params::new()).await });
        }
        tokio::time::sleep(Duration::from_millis(15 + 10 * round)).await;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(dead.pid(), libc::SIGSTOP) };
        let held: Vec<(String, Vec<String>)> =
            vols.iter().map(|v| (v.spec.clone(), lock_owners(&lab, Site::A, &v.spec))).collect();
        all.extend(vols);
        if let Some((spec, owners)) = held.into_iter().find(|(_, o)| !o.is_empty()) {
            // SAFETY: as above; SIGKILL also ends a stopped process.
            unsafe { libc::kill(dead.pid(), libc::SIGKILL) };
            dead.stop().await;
            locked = Some((spec, owners));
            break;
        }
        // SAFETY: as above.
        unsafe { libc::kill(dead.pid(), libc::SIGCONT) };
        dead.stop().await;
    }
    let (spec, owners) = locked.expect("no round left an image locked by the killed server");
    let ledger = std::fs::read_to_string(dir.join("csi-addons.sock.clients")).expect("the dead server's client ledger");
    for owner in &owners {
        assert!(ledger.contains(owner.as_str()), "lock owner {owner} is not the dead server ({ledger})");
    }
    let vol_id = all.iter().find(|v| v.spec == spec).unwrap().id.clone();

    // Its successor on the same socket: the retried call must not wait out
    // the dead one's watch (30 s).
    let mut next = Server::start_in(dir.clone(), &lab.csi_config(Site::A), &["--log-format", "text"]).await;
    let c = next.client(&lab).await;
    let started = Instant::now();
    c.enable(&Subject::volume(&vol_id), Params::new()).await.expect("retried enable");
    let enable_took = started.elapsed();
    // Writing needs the exclusive lock: it is free now, not in 30 s.
    let started = Instant::now();
    lab.rbd(Site::A, &["bench", "--io-type", "write", "--io-size", "4K", "--io-total", "4K", &spec]);
    let write_took = started.elapsed();
    println!("after SIGKILL: retried enable {enable_took:?}, then a write needing the lock {write_took:?}");
    let listed = blocklist(&lab, Site::A);
    for owner in &owners {
        let addr = owner.trim_start_matches("v1:").trim_start_matches("v2:");
        assert!(listed.contains(addr), "the dead server's client {owner} is not fenced:\n{listed}");
    }
    assert!(
        lock_owners(&lab, Site::A, &spec).iter().all(|o| !owners.contains(o)),
        "the dead server still holds the lock"
    );
    assert!(enable_took + write_took < Duration::from_secs(20), "waited out the dead server's watch");
    next.stop().await;
    assert!(next.log_text().contains("fenced the previous server's Ceph client"));
    for v in &all {
        cleanup(&lab, &v.spec);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn demote_before_the_peer_has_a_copy_is_refused_and_promote_tells_the_truth() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    let (a, a_raw) = (sites.a.client(&lab).await, sites.a.client(&lab).await);
    let g = sites.a.client(&lab).await;
    // Site-b's rbd-mirror stopped: it cannot create its copies.
    let frozen = Frozen::daemons(&lab, "site-b", &["rbd-mirror"]);
    let vol = lab.create_volume(VolumeOpts::default());
    let members: Vec<TestVolume> = (0..2).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    a_raw.enable(&Subject::volume(&vol.id), Params::new()).await.expect("enable");
    let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    let group = g.group_create(&format!("strand-{}", new_uuid()), &ids, group_params(&lab)).await.expect("group");
    a_raw.enable(&Subject::group(&group.volume_group_id), HashMap::new()).await.expect("group enable");

    let (volume, group_subject) = (Subject::Volume(vol.id.clone()), Subject::Group(group.volume_group_id.clone()));
    let no_params = HashMap::new;
    let started = Instant::now();
    let (refused, group_refused) =
        tokio::join!(a.demote(&volume, false, no_params()), a.demote(&group_subject, false, no_params()));
    println!("demote refused after {:?}: {}", started.elapsed(), message_of(&refused));
    assert_eq!(code_of(&refused), Code::FailedPrecondition, "{}", message_of(&refused));
    assert!(message_of(&refused).contains("no copy on the peer site"), "{}", message_of(&refused));
    assert!(message_of(&refused).contains("rbd-mirror reports"), "{}", message_of(&refused));
    assert_eq!(code_of(&group_refused), Code::FailedPrecondition, "{}", message_of(&group_refused));
    // Ceph's view: nothing changed, every copy is still primary on site-a.
    assert_eq!(is_primary(&lab, Site::A, &vol.spec), Some(true));
    for m in &members {
        assert_eq!(is_primary(&lab, Site::A, &m.spec), Some(true), "{} was demoted", m.spec);
    }

    // Forced, the demote strands the volume knowingly; then a non-forced
    // promote on site-a is the way back and must not be refused with a story
    // about a primary peer that holds no copy at all.
    a.demote(&volume, true, no_params()).await.expect("forced demote");
    assert_eq!(is_primary(&lab, Site::A, &vol.spec), Some(false));
    assert!(lab.mirror_info(Site::B, &vol.spec).is_none(), "site-b has a copy after all");
    // Let site-a's rbd-mirror report its failed bootstrap, the state in
    // which a promote used to be refused.
    wait_until("site-a to report on the demoted image", Duration::from_secs(60), || {
        state_of(&lab.mirror_status(Site::A, &vol.spec)) == "up+error"
    })
    .await;
    let promoted = a.promote(&volume, false, no_params()).await;
    assert_eq!(code_of(&promoted), Code::Ok, "{}", message_of(&promoted));
    assert_eq!(is_primary(&lab, Site::A, &vol.spec), Some(true));

    drop(frozen);
    a_raw.disable(&Subject::group(&group.volume_group_id), Params::new()).await.ok();
    g.group_modify(&group.volume_group_id, &[], Params::new()).await.ok();
    g.group_delete(&group.volume_group_id).await.ok();
    for v in members.iter().chain([&vol]) {
        remove_everywhere(&lab, &v.spec);
    }
}
