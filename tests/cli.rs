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
    let o = cli(&server, &["capabilities", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["capabilities"],
        serde_json::json!(["Service/CONTROLLER_SERVICE", "VolumeReplication/VOLUME_REPLICATION"])
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
