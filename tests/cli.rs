//! The `rbd-addons` client subcommands against a real server and the lab.

mod common;

use std::process::{Command, Output};

use common::*;

fn cli(server: &Server, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RBD_ADDONS_ENDPOINT", format!("unix://{}", server.socket.display()))
        .output()
        .expect("run rbd-addons")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn identity_capabilities_and_probe_in_both_output_forms() {
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let o = cli(&server, &["identity"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("name: rbd.csi.ceph.com"), "{}", stdout(&o));
    let o = cli(&server, &["identity", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["manifest"]["ceph-release"], lab.release().as_str(), "{v}");
    let o = cli(&server, &["capabilities", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["capabilities"],
        serde_json::json!([
            "Service/CONTROLLER_SERVICE",
            "VolumeReplication/VOLUME_REPLICATION",
            "VolumeReplication/GET_REPLICATION_DESTINATION_INFO",
            "VolumeGroup/VOLUME_GROUP",
            "VolumeGroup/LIMIT_VOLUME_TO_ONE_VOLUME_GROUP",
            "VolumeGroup/DO_NOT_ALLOW_VG_TO_DELETE_VOLUMES",
            "VolumeGroup/MODIFY_VOLUME_GROUP",
            "VolumeGroup/GET_VOLUME_GROUP",
            "VolumeGroup/LIST_VOLUME_GROUPS",
            "ReclaimSpace/OFFLINE",
            "NetworkFence/NETWORK_FENCE"
        ])
    );
    let o = cli(&server, &["probe", "--json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["ready"], true);

    // No server: UNAVAILABLE, 64 + 14.
    let o = Command::new(BIN).args(["probe", "--endpoint", "/nonexistent/socket"]).output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
}

#[tokio::test]
async fn a_failover_driven_from_the_command_line() {
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    let vol = lab.create_volume(VolumeOpts::default());
    let dir = std::env::temp_dir().join(format!("cli-{}", new_uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    // One secret file per supported form.
    let json_secret = dir.join("secret.json");
    std::fs::write(&json_secret, serde_json::json!({"userID": lab.user(), "userKey": lab.key()}).to_string()).unwrap();
    let kv_secret = dir.join("secret.env");
    std::fs::write(&kv_secret, format!("# replication secret\nuserID={}\nuserKey={}\n", lab.user(), lab.key()))
        .unwrap();
    let (js, kv) = (json_secret.to_str().unwrap(), kv_secret.to_str().unwrap());
    let id = vol.id.as_str();

    let o = cli(&sites.a, &["enable", "--volume-id", id, "--secrets-file", js, "--param", "mirroringMode=snapshot"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lab.mirror_info(Site::A, &vol.spec).unwrap()["state"], "enabled");
    wait_until("b's copy", std::time::Duration::from_secs(120), || lab.rbd_try(Site::B, &["info", &vol.spec]).is_ok())
        .await;

    // Not forced while site-a is primary: FAILED_PRECONDITION, exit 64 + 9.
    let o = cli(&sites.b, &["promote", "--volume-id", id, "--secrets-file", kv]);
    assert_eq!(o.status.code(), Some(73), "{}", stderr(&o));
    assert!(stderr(&o).contains("FAILED_PRECONDITION"), "{}", stderr(&o));
    let o = cli(&sites.b, &["promote", "--volume-id", id, "--secrets-file", kv, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["code"], "FAILED_PRECONDITION");

    let o = cli(&sites.a, &["demote", "--volume-id", id, "--secrets-file", js]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cli(&sites.b, &["promote", "--volume-id", id, "--secrets-file", kv]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(is_primary(&lab, Site::B, &vol.spec), Some(true));
    let o = cli(&sites.a, &["resync", "--volume-id", id, "--secrets-file", js, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["ready"].is_boolean());

    // Bad usage never echoes the key and exits 2: a bare key line, a YAML line.
    let broken = dir.join("broken.env");
    for content in
        [format!("userID={}\n{}\n", lab.user(), lab.key()), format!("userID={}\nuserKey: {}\n", lab.user(), lab.key())]
    {
        std::fs::write(&broken, content).unwrap();
        let o = cli(&sites.b, &["info", "--volume-id", id, "--secrets-file", broken.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
        assert!(!stderr(&o).contains(&lab.key()) && !stdout(&o).contains(&lab.key()));
    }
    let o = cli(&sites.b, &["enable", "--volume-id", id, "--secrets-file", kv, "--param", "novalue"]);
    assert_eq!(o.status.code(), Some(2));

    let o = cli(&sites.b, &["disable", "--volume-id", id, "--secrets-file", kv]);
    assert!(o.status.success(), "{}", stderr(&o));
    lab.rbd_try(Site::B, &["rm", "--no-progress", &vol.spec]).ok();
    cleanup(&lab, &vol.spec);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_group_failover_driven_from_the_command_line() {
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &[]).await;
    let vols: Vec<TestVolume> = (0..2).map(|_| lab.create_volume(VolumeOpts::default())).collect();
    let dir = std::env::temp_dir().join(format!("cli-group-{}", new_uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret.json");
    std::fs::write(&secret, serde_json::json!({"userID": lab.user(), "userKey": lab.key()}).to_string()).unwrap();
    let s = secret.to_str().unwrap();
    let name = format!("cli-group-{}", new_uuid());
    let (cluster, pool) = (format!("clusterID={}", lab.cluster_id()), format!("pool={}", lab.pool()));

    let o = cli(
        &sites.a,
        &[
            "group",
            "create",
            "--name",
            &name,
            "--param",
            &cluster,
            "--param",
            &pool,
            "--volume-id",
            &vols[0].id,
            "--volume-id",
            &vols[1].id,
            "--secrets-file",
            s,
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let created: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let gid = created["group_id"].as_str().unwrap().to_owned();
    assert_eq!(created["volumes"].as_array().unwrap().len(), 2);
    let o = cli(&sites.a, &["group", "list", "--secrets-file", s]);
    assert!(stdout(&o).contains(&gid), "{}", stdout(&o));

    let o = cli(&sites.a, &["enable", "--group-id", &gid, "--secrets-file", s, "--param", "generationInterval=2s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("group_id: {gid}")), "{}", stdout(&o));
    for v in &vols {
        assert_eq!(lab.mirror_info(Site::A, &v.spec).unwrap()["mode"], "journal");
        wait_until("b's copy", std::time::Duration::from_secs(120), || {
            is_primary(&lab, Site::B, &v.spec) == Some(false)
        })
        .await;
    }
    let mapping = lab.facts["sites"]["a"]["cluster_mapping"].as_str().unwrap().to_owned();
    let config = lab.csi_config(Site::A);
    let o = Command::new(BIN)
        .args(["group", "generations", "--group-id", &gid, "--secrets-file", s, "--cluster-mapping", &mapping])
        .arg("--ceph-csi-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("newest_common_generation: "), "{}", stdout(&o));
    assert!(stdout(&o).contains(&vols[0].id), "{}", stdout(&o));

    let o = cli(&sites.a, &["demote", "--group-id", &gid, "--secrets-file", s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cli(&sites.b, &["promote", "--group-id", &gid, "--secrets-file", s]);
    assert!(o.status.success(), "{}", stderr(&o));
    for v in &vols {
        assert_eq!(is_primary(&lab, Site::B, &v.spec), Some(true));
    }
    // Both flags, or neither: usage errors.
    let o = cli(&sites.b, &["info", "--group-id", &gid, "--volume-id", &vols[0].id, "--secrets-file", s]);
    assert_eq!(o.status.code(), Some(2));
    let o = cli(&sites.b, &["info", "--secrets-file", s]);
    assert_eq!(o.status.code(), Some(2));

    let o = cli(&sites.b, &["disable", "--group-id", &gid, "--secrets-file", s]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Disabled this soon after the failover, site-a never replayed from b, so
    // its rbd-mirror does not own (and will not delete) the demoted copies:
    // they stay as orphans, which an admin disables by hand (Ceph's rule).
    for v in &vols {
        lab.rbd_try(Site::A, &["mirror", "image", "disable", "--force", &v.spec]).ok();
    }
    let o = cli(&sites.a, &["group", "modify", "--group-id", &gid, "--secrets-file", s]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Site-a's copies go away shortly after site-b's disable; until then the
    // delete answers UNAVAILABLE (64 + 14) and is retried, as the controller does.
    let started = std::time::Instant::now();
    loop {
        let o = cli(&sites.a, &["group", "delete", "--group-id", &gid, "--secrets-file", s]);
        if o.status.success() {
            break;
        }
        assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "{}", stderr(&o));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let o = cli(&sites.a, &["group", "get", "--group-id", &gid, "--secrets-file", s]);
    assert_eq!(o.status.code(), Some(64 + 5), "NOT_FOUND: {}", stderr(&o));
    for v in &vols {
        lab.rbd_try(Site::B, &["rm", "--no-progress", &v.spec]).ok();
        cleanup(&lab, &v.spec);
    }
    std::fs::remove_dir_all(&dir).ok();
}
