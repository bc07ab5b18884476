//! The server process itself: identity, reflection, health, socket hygiene,
//! shutdown, and that no secret reaches its log even at trace level.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use common::*;
use rbd_addons::proto::identity::capability::Type as CapType;
use rbd_addons::proto::identity::{GetCapabilitiesRequest, GetIdentityRequest, ProbeRequest};
use rbd_addons::proto::replication::{EnableVolumeReplicationRequest, GetVolumeReplicationInfoRequest};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SERVED: [&str; 7] = [
    "fence.FenceController",
    "grpc.health.v1.Health",
    "identity.Identity",
    "reclaimspace.ReclaimSpaceController",
    "replication.Controller",
    "volumegroup.Controller",
    "volumegroupsnapshot.v1.VolumeGroupSnapshot",
];

#[tokio::test]
async fn identity_capabilities_and_probe() {
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &["--drivername", "rook-ceph.rbd.csi.ceph.com"]).await;
    let mut id = server.identity().await;
    let ident = id.get_identity(GetIdentityRequest {}).await.unwrap().into_inner();
    assert_eq!(ident.name, "rook-ceph.rbd.csi.ceph.com");
    assert_eq!(ident.vendor_version, env!("CARGO_PKG_VERSION"));
    // The manifest names the librbd the server loaded: the lab's release (a
    // reef or tentacle server runs in that release's root). clone4 and
    // group_snap_get_info came with Squid; group mirroring with no release yet.
    let release = lab.release();
    let newer = if release == "tentacle" { "yes" } else { "no" };
    for (key, want) in [
        ("ceph-release", release.as_str()),
        ("librbd-clone4", newer),
        ("librbd-group-snap-get-info", newer),
        ("librbd-group-mirroring", "no"),
    ] {
        assert_eq!(ident.manifest.get(key).map(String::as_str), Some(want), "manifest {key}: {:?}", ident.manifest);
    }

    let caps = id.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner().capabilities;
    let shown: Vec<String> = caps
        .iter()
        .map(|c| match c.r#type.as_ref().unwrap() {
            CapType::Service(s) => format!("service/{}", s.r#type),
            CapType::VolumeReplication(v) => format!("replication/{}", v.r#type),
            CapType::VolumeGroup(g) => format!("group/{}", g.r#type),
            CapType::NetworkFence(f) => format!("fence/{}", f.r#type),
            CapType::ReclaimSpace(r) => format!("reclaim/{}", r.r#type),
            other => format!("unexpected {other:?}"),
        })
        .collect();
    // CONTROLLER_SERVICE = 1, VOLUME_REPLICATION = 1,
    // GET_REPLICATION_DESTINATION_INFO = 2, the six VolumeGroup capabilities
    // (VOLUME_GROUP = 1 .. LIST_VOLUME_GROUPS = 6), ReclaimSpace OFFLINE = 1 (not
    // ONLINE, the node's) and NETWORK_FENCE = 1 (not GET_CLIENTS_TO_FENCE):
    // only what works.
    assert_eq!(
        shown,
        [
            "service/1",
            "replication/1",
            "replication/2",
            "group/1",
            "group/2",
            "group/3",
            "group/4",
            "group/5",
            "group/6",
            "reclaim/1",
            "fence/1"
        ]
    );

    let probe = id.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
}

#[tokio::test]
async fn probe_answers_without_any_ceph_cluster() {
    // A config that cannot even be read: Identity must not care.
    let server = Server::start(std::path::Path::new("/nonexistent/config.json"), &[]).await;
    let mut id = server.identity().await;
    let started = std::time::Instant::now();
    assert_eq!(id.probe(ProbeRequest {}).await.unwrap().into_inner().ready, Some(true));
    assert!(started.elapsed() < Duration::from_secs(1));
    // ... while a replication call says plainly what is wrong.
    let lab = Lab::load();
    let mut r = server.replication().await;
    let err = r
        .get_volume_replication_info(GetVolumeReplicationInfoRequest {
            secrets: lab.secrets(),
            replication_source: source(&volume_id("rook-ceph", 2, &new_uuid())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(err.message().contains("/nonexistent/config.json"), "{err:?}");
}

async fn list_services_v1(server: &Server) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("{resp:?}") };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

async fn list_services_v1alpha(server: &Server) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("{resp:?}") };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn reflection_lists_exactly_the_served_services_and_health_is_serving() {
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    assert_eq!(list_services_v1(&server).await, SERVED);
    assert_eq!(list_services_v1alpha(&server).await, SERVED);

    let mut health = HealthClient::new(server.channel().await);
    for service in [
        "",
        "identity.Identity",
        "replication.Controller",
        "volumegroup.Controller",
        "fence.FenceController",
        "reclaimspace.ReclaimSpaceController",
        "volumegroupsnapshot.v1.VolumeGroupSnapshot",
    ] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    // Not served, so not known to health either.
    let err = health.check(HealthCheckRequest { service: "reclaimspace.ReclaimSpaceNode".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn socket_mode_stale_socket_and_clean_shutdown() {
    let lab = Lab::load();
    let mut server = Server::start(&lab.csi_config(Site::A), &["--socket-mode", "0600"]).await;
    let meta = std::fs::symlink_metadata(&server.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // A second server on the same path replaces the (now stale) socket of a
    // killed one; simulate the stale file by SIGKILLing the first server.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.pid(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.socket.exists(), "SIGKILL leaves the socket behind");
    let socket = server.socket.clone();
    let mut again = Command::new(BIN)
        .args(["serve", "--metrics-address", "off", "--endpoint", socket.to_str().unwrap(), "--ceph-csi-config"])
        .arg(lab.csi_config(Site::A))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut probed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(ch) =
            tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display())).unwrap().connect().await
        {
            let mut id = rbd_addons::proto::identity::identity_client::IdentityClient::new(ch);
            if id.probe(ProbeRequest {}).await.is_ok() {
                probed = true;
                break;
            }
        }
    }
    assert!(probed, "the restarted server did not take over the stale socket");
    // Default mode is 0660.
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o660);

    // SIGTERM: exit 0 and the socket is gone.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(again.id() as i32, libc::SIGTERM) };
    // Poll without blocking the runtime, so the probe client's connection can
    // answer the server's graceful close.
    let status = loop {
        if let Some(st) = again.try_wait().unwrap() {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "socket left behind after SIGTERM");
    server.stop().await;
}

#[tokio::test]
async fn refuses_to_replace_a_file_that_is_not_a_socket_and_bad_flags() {
    let dir = std::env::temp_dir().join(format!("rbd-addons-nosock-{}", new_uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("important.txt");
    std::fs::write(&path, "keep me").unwrap();
    let out = Command::new(BIN).args(["serve", "--endpoint", path.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");

    for bad in [&["--endpoint", "tcp://127.0.0.1:9070"][..], &["--socket-mode", "0666"], &["--socket-mode", "rw"]] {
        let out = Command::new(BIN).arg("serve").args(bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?} was accepted");
    }
    for bad in ["9690", "localhost:9690", "", "127.0.0.1:99999"] {
        let out = Command::new(BIN).args(["serve", "--metrics-address", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "--metrics-address {bad:?} was accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("is not an address:port"), "{out:?}");
    }
    // A metrics port in use stops the start, naming the flag, before the socket exists.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let socket = dir.join("never.sock");
    let out = Command::new(BIN)
        .args(["serve", "--metrics-address", &busy, "--log-format", "text", "--endpoint", socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "started on a busy metrics port");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen for metrics") && stderr.contains("--metrics-address"), "{stderr}");
    assert!(!socket.exists(), "a refused start leaves no socket behind");
    // "off" serves the socket and no HTTP port at all.
    let log = dir.join("off.log");
    let mut off = Command::new(BIN)
        .args(["serve", "--metrics-address", "off", "--log-format", "text", "--endpoint", socket.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until("the socket with metrics off", Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(off.id() as i32, libc::SIGTERM) };
    assert!(off.wait().unwrap().success());
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("serving") && !said.contains("metrics"), "{said}");
    // Flags are also read from the environment.
    let out = Command::new(BIN).arg("serve").env("RBD_ADDONS_ENDPOINT", "tcp://x:1").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Unix socket"));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn user_key_never_reaches_the_log_at_trace_level() {
    let lab = Lab::load();
    let mut server = Server::start(&lab.csi_config(Site::A), &["--log-level", "trace", "--log-format", "text"]).await;
    let mut client = server.replication().await;
    let vol = lab.create_volume(VolumeOpts::default());
    let key = lab.key();
    let wrong = String::from_utf8(Command::new("ceph-authtool").arg("--gen-print-key").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();

    let call = |secrets: std::collections::HashMap<String, String>| EnableVolumeReplicationRequest {
        secrets,
        replication_source: source(&vol.id),
        ..Default::default()
    };
    client.enable_volume_replication(call(lab.secrets())).await.expect("enable");
    let mut wrong_secrets = lab.secrets();
    wrong_secrets.insert("userKey".into(), wrong.clone());
    client.enable_volume_replication(call(wrong_secrets)).await.unwrap_err();
    let mut broken = lab.secrets();
    broken.insert("userKey".into(), format!("{key} trailing"));
    client.enable_volume_replication(call(broken)).await.unwrap_err();
    let _ = client
        .get_volume_replication_info(GetVolumeReplicationInfoRequest {
            secrets: lab.secrets(),
            replication_source: source(&vol.id),
            ..Default::default()
        })
        .await;
    server.stop().await;

    let log = server.log_text();
    assert!(log.contains("TRACE"), "the server did not log at trace level");
    assert!(log.contains(&vol.id), "the log does not name the volume");
    // Calls with the same credentials share one cached connection.
    assert_eq!(log.matches("connected to Ceph").count(), 1, "connections are not reused");
    for secret in [&key, &wrong] {
        assert!(!log.contains(secret.as_str()), "a key appears in the server log");
        // Not even the base64 body without its padding.
        assert!(!log.contains(secret.trim_end_matches('=')), "a key appears in the server log");
    }
    cleanup(&lab, &vol.spec);
}
