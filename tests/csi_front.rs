//! The CSI front against a small csi.v1 upstream written here: what the
//! front forwards must arrive and come back unchanged (unary and streaming
//! calls, metadata, an error with details, a deadline), GetPluginCapabilities
//! gains GROUP_CONTROLLER_SERVICE, and an upstream that is gone answers
//! UNAVAILABLE at once. The front, not Ceph, is what this checks.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rbd_addons::client::Connection;
use rbd_addons::proto::csi::v1::controller_server::{Controller, ControllerServer};
use rbd_addons::proto::csi::v1::identity_client::IdentityClient;
use rbd_addons::proto::csi::v1::identity_server::{Identity, IdentityServer};
use rbd_addons::proto::csi::v1::plugin_capability::{Service, Type, service};
use rbd_addons::proto::csi::v1::*;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

const DETAILS: &[u8] = b"\x0a\x05why?\x12\x03not";

/// What the upstream saw of the calls forwarded to it.
#[derive(Default)]
struct Seen {
    deadline: Option<String>,
}

#[derive(Clone)]
struct Upstream {
    seen: Arc<Mutex<Seen>>,
}

fn capability(t: service::Type) -> PluginCapability {
    PluginCapability { r#type: Some(Type::Service(Service { r#type: t as i32 })) }
}

#[tonic::async_trait]
impl Identity for Upstream {
    async fn get_plugin_info(
        &self,
        req: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        let echo = req.metadata().get("x-echo").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let mut resp = Response::new(GetPluginInfoResponse {
            name: "rbd.csi.ceph.com".into(),
            vendor_version: "upstream-for-tests".into(),
            manifest: [("echo".to_owned(), echo)].into(),
        });
        resp.metadata_mut().insert("x-upstream", "csi-rbdplugin".parse().unwrap());
        Ok(resp)
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: vec![
                capability(service::Type::ControllerService),
                capability(service::Type::VolumeAccessibilityConstraints),
            ],
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Err(Status::with_details(Code::FailedPrecondition, "not ready: the upstream says so", DETAILS.into()))
    }
}

#[tonic::async_trait]
impl Controller for Upstream {
    async fn controller_get_capabilities(
        &self,
        req: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let deadline = req.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).map(str::to_owned);
        self.seen.lock().unwrap().deadline = deadline;
        // Longer than the caller's deadline: the caller must not wait for it.
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(Response::new(ControllerGetCapabilitiesResponse::default()))
    }
}

async fn channel(path: &Path) -> Channel {
    Endpoint::from_shared(format!("unix://{}", path.display())).unwrap().connect().await.expect("connect")
}

#[tokio::test]
async fn the_front_forwards_calls_unchanged_and_serves_the_group_controller() {
    let lab = Lab::load();
    let dir = std::env::temp_dir().join(format!("csi-upstream-{}", new_uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let upstream_path: PathBuf = dir.join("csi.sock");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let upstream = Upstream { seen: seen.clone() };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("csi", tonic_health::ServingStatus::Serving).await;
    // The upstream runs on its own runtime, so that stopping it closes its
    // connections as a csi-rbdplugin that exits would.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let path = upstream_path.clone();
    let upstream_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            tokio::select! {
                r = tonic::transport::Server::builder()
                    .add_service(IdentityServer::new(upstream.clone()))
                    .add_service(ControllerServer::new(upstream))
                    .add_service(health_service)
                    .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)) => r.unwrap(),
                _ = stopped => {}
            }
        });
        rt.shutdown_timeout(Duration::from_secs(1));
    });
    wait_until("the upstream's socket", Duration::from_secs(5), || upstream_path.exists()).await;
    let server = Server::start_with_front(&lab.csi_config(Site::A), &upstream_path, &[]).await;
    let front = channel(&server.front()).await;

    // Unary, with metadata both ways.
    let mut identity = IdentityClient::new(front.clone());
    let mut req = Request::new(GetPluginInfoRequest {});
    req.metadata_mut().insert("x-echo", "from-the-sidecar".parse().unwrap());
    let resp = identity.get_plugin_info(req).await.expect("GetPluginInfo through the front");
    assert_eq!(resp.metadata().get("x-upstream").map(|v| v.to_str().unwrap()), Some("csi-rbdplugin"));
    let info = resp.into_inner();
    assert_eq!((info.name.as_str(), info.vendor_version.as_str()), ("rbd.csi.ceph.com", "upstream-for-tests"));
    assert_eq!(info.manifest["echo"], "from-the-sidecar");

    // The one edit: the upstream's capabilities, plus the GroupController.
    let caps = identity.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(
        caps.capabilities,
        vec![
            capability(service::Type::ControllerService),
            capability(service::Type::VolumeAccessibilityConstraints),
            capability(service::Type::GroupControllerService),
        ]
    );

    // An error with details comes back byte for byte.
    let err = identity.probe(ProbeRequest {}).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::FailedPrecondition, "not ready: the upstream says so"));
    assert_eq!(err.details(), DETAILS);

    // The caller's deadline reaches the upstream, and holds at the front.
    let mut controller = rbd_addons::proto::csi::v1::controller_client::ControllerClient::new(front.clone());
    let mut req = Request::new(ControllerGetCapabilitiesRequest {});
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = controller.controller_get_capabilities(req).await.unwrap_err();
    // tonic's channel enforces the deadline too and reports it as CANCELLED.
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "the front held the call for {:?}", started.elapsed());
    let forwarded = seen.lock().unwrap().deadline.clone();
    assert!(
        forwarded.as_ref().is_some_and(|d| d.ends_with('m') || d.ends_with('u')),
        "grpc-timeout forwarded: {forwarded:?}"
    );

    // A server stream: every message, as the upstream sends it.
    let mut watch = HealthClient::new(front.clone())
        .watch(HealthCheckRequest { service: "csi".into() })
        .await
        .expect("Watch through the front")
        .into_inner();
    let first = watch.next().await.expect("a first message").expect("ok");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    health.set_service_status("csi", tonic_health::ServingStatus::NotServing).await;
    let second = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("in time").unwrap().unwrap();
    assert_eq!(second.status, ServingStatus::NotServing as i32);
    drop(watch);

    // The GroupController is the front's own.
    let conn =
        Connection::open(&format!("unix://{}", server.front().display()), Duration::from_secs(10)).await.unwrap();
    let gc = conn.group_snapshot_capabilities().await.expect("GroupControllerGetCapabilities");
    assert_eq!(gc, ["CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT"]);

    // The upstream gone: UNAVAILABLE at once, never a hang.
    stop.send(()).ok();
    upstream_thread.join().unwrap();
    std::fs::remove_file(&upstream_path).ok();
    let mut fresh = IdentityClient::new(channel(&server.front()).await);
    let started = Instant::now();
    let err = fresh.get_plugin_info(GetPluginInfoRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("csi-rbdplugin"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(6), "took {:?}", started.elapsed());
    // The front's own service does not depend on the upstream.
    assert!(conn.group_snapshot_capabilities().await.is_ok());
    std::fs::remove_dir_all(&dir).ok();
}
