//! Thin tonic services over the domain layer, and the Unix socket they serve on.

pub(crate) mod codec;
mod dell;
mod envelope;
mod fence;
mod front;
mod groupsnapshot;
mod identity;
mod reclaimspace;
mod replication;
mod status;
mod volumegroup;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tracing::{info, warn};

pub(crate) use status::to_group_status;

use crate::ceph::{ClientLedger, ConnectionPool};
use crate::cephcsi::Resolver;
use crate::exec::Executor;
use crate::groups::scheduler::Scheduler;
use crate::proto::csi::v1::group_controller_server::GroupControllerServer;
use crate::proto::fence::fence_controller_server::FenceControllerServer;
use crate::proto::identity::identity_server::IdentityServer;
use crate::proto::reclaimspace::reclaim_space_controller_server::ReclaimSpaceControllerServer;
use crate::proto::replication::controller_server::ControllerServer;
use crate::proto::volumegroup::controller_server::ControllerServer as VolumeGroupServer;
use crate::proto::volumegroupsnapshot::v1::volume_group_snapshot_server::VolumeGroupSnapshotServer;

/// Services listed by reflection: exactly the ones answered on the socket.
pub(crate) const SERVED_SERVICES: &[&str] = &[
    "identity.Identity",
    "replication.Controller",
    "volumegroup.Controller",
    "fence.FenceController",
    "reclaimspace.ReclaimSpaceController",
    "volumegroupsnapshot.v1.VolumeGroupSnapshot",
    "grpc.health.v1.Health",
];

/// The CSI front's two sockets: where it listens, and csi-rbdplugin's.
pub struct CsiFront {
    pub endpoint: PathBuf,
    pub upstream: PathBuf,
}

pub struct ServeConfig {
    pub socket_path: PathBuf,
    pub csi_front: Option<CsiFront>,
    /// The Ceph user's Secret for Dell's extension (no secrets on its wire).
    pub group_snapshot_secret_dir: Option<PathBuf>,
    pub socket_mode: u32,
    pub driver_name: String,
    pub ceph_csi_config: PathBuf,
    /// ceph-csi's cluster-mapping.json; a missing file means no mapping.
    pub cluster_mapping: PathBuf,
    pub op_timeout: Duration,
    pub ceph_timeout: Duration,
    pub max_concurrent_ops: usize,
    pub connection_idle_expiry: Duration,
    /// How long in-flight calls may run on after SIGTERM before we exit anyway.
    pub shutdown_grace: Duration,
    /// The HTTP side port for /metrics, /healthz and /readyz; None: no port.
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// How a server ended. Ceph work that outlived the grace period is still
/// blocked inside librados, and the process must leave without waiting for it.
#[derive(Debug)]
pub struct Stopped {
    pub ceph_ops_running: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("endpoint {0:?} is not a Unix socket; use unix:///absolute/path or /absolute/path")]
    BadEndpoint(String),
    #[error("refusing to start: {0} exists and is not a socket")]
    NotASocket(String),
    #[error("refusing to start: another server is listening on {0}; stop it first (its socket is left untouched)")]
    SocketInUse(String),
    #[error("refusing to start: cannot tell whether the socket {path} is in use ({source}); remove it if it is stale")]
    SocketUnknown { path: String, source: std::io::Error },
    #[error("cannot listen on {path}: {source}")]
    Listen { path: String, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot listen for metrics on {address}: {source}; pick another --metrics-address (or \"off\")")]
    MetricsListen { address: std::net::SocketAddr, source: std::io::Error },
    #[error("refusing to start: {0}; make the two agree, or keep one")]
    DestinationConflict(String),
}

/// `unix:///abs/path` or `/abs/path`; TCP and relative paths are refused.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if path.starts_with('/') && path.len() > 1 {
        Ok(PathBuf::from(path))
    } else {
        Err(ServeError::BadEndpoint(endpoint.to_owned()))
    }
}

/// Binds the socket with its mode set on the fd before bind, so the path never
/// exists with looser permissions, then chmods it because bind applies umask.
fn bind(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    let listen_err = |source| ServeError::Listen { path: path.display().to_string(), source };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            // Only a refused connection proves nobody listens: a live server
            // (even a frozen one, whose backlog still accepts) must keep its path.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                info!(path = %path.display(), "removing stale socket");
                std::fs::remove_file(path).map_err(listen_err)?;
            }
            Ok(_) => return Err(ServeError::SocketInUse(path.display().to_string())),
            Err(source) => return Err(ServeError::SocketUnknown { path: path.display().to_string(), source }),
        },
        Ok(_) => return Err(ServeError::NotASocket(path.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).map_err(listen_err)?;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fchmod on a socket fd we own; it only changes the mode the
        // socket file gets at bind.
        let ret = unsafe { libc::fchmod(socket.as_raw_fd(), mode as libc::mode_t) };
        if ret != 0 {
            return Err(listen_err(std::io::Error::last_os_error()));
        }
    }
    let addr = socket2::SockAddr::unix(path).map_err(listen_err)?;
    socket.bind(&addr).map_err(listen_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(listen_err)?;
    socket.listen(1024).map_err(listen_err)?;
    socket.set_nonblocking(true).map_err(listen_err)?;
    let std_listener: std::os::unix::net::UnixListener = socket.into();
    UnixListener::from_std(std_listener).map_err(listen_err)
}

/// SIGTERM or SIGINT: what the binary passes to `serve` as its shutdown.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    // We may be PID 1 in a container, where the kernel gives SIGTERM no default
    // action: both signals must be handled here.
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, shutting down"),
        _ = int.recv() => info!("SIGINT received, shutting down"),
    }
}

/// Serves until `shutdown` completes (the binary passes `shutdown_signal`, a
/// test its own trigger), then lets running calls finish within the grace
/// period and removes its sockets.
pub async fn serve(cfg: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<Stopped, ServeError> {
    // Two files that say differently where a volume fails over to: settled
    // by the admin before any handle is handed out.
    let conflicts = crate::cephcsi::destination_conflicts(&cfg.ceph_csi_config, &cfg.cluster_mapping);
    if !conflicts.is_empty() {
        return Err(ServeError::DestinationConflict(conflicts.join("; ")));
    }
    // The metrics port first: a port in use must stop the start before the
    // socket exists, or it would be left behind.
    let metrics_listener = match cfg.metrics_address {
        Some(address) => {
            Some(crate::metrics::bind(address).await.map_err(|source| ServeError::MetricsListen { address, source })?)
        }
        None => None,
    };
    let listener = bind(&cfg.socket_path, cfg.socket_mode)?;
    // Past bind, no other server runs on this socket: what the last one
    // recorded belongs to a process that is gone.
    let ledger = Arc::new(ClientLedger::take_over(ClientLedger::path_for(&cfg.socket_path)));
    let connections =
        Arc::new(ConnectionPool::new(cfg.connection_idle_expiry, cfg.ceph_timeout).with_ledger(ledger.clone()));
    let resolver =
        Arc::new(Resolver::new(cfg.ceph_csi_config.clone(), Some(cfg.cluster_mapping.clone()), connections.clone()));
    let exec = Arc::new(Executor::new(cfg.max_concurrent_ops, cfg.op_timeout));
    let metrics = exec.metrics().clone();
    let (metrics_stop_tx, metrics_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = match metrics_listener {
        Some(listener) => {
            let pool = connections.clone();
            let scrape = crate::metrics::Scrape {
                metrics: metrics.clone(),
                connections: Arc::new(move || pool.open_connections()),
            };
            Some(tokio::spawn(crate::metrics::serve(listener, scrape, async {
                metrics_stop_rx.await.ok();
            })))
        }
        None => None,
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<IdentityServer<identity::IdentityService>>().await;
    health_reporter.set_serving::<ControllerServer<replication::ReplicationService>>().await;
    health_reporter.set_serving::<VolumeGroupServer<volumegroup::VolumeGroupService>>().await;
    health_reporter.set_serving::<FenceControllerServer<fence::FenceService>>().await;
    health_reporter.set_serving::<ReclaimSpaceControllerServer<reclaimspace::ReclaimSpaceService>>().await;
    health_reporter.set_serving::<VolumeGroupSnapshotServer<dell::DellService>>().await;
    let scheduler = Scheduler::new();
    let generations = scheduler.clone().spawn(exec.clone(), resolver.clone());

    let mut v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    let mut v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for name in SERVED_SERVICES {
        v1 = v1.with_service_name(*name);
        v1alpha = v1alpha.with_service_name(*name);
    }

    info!(
        socket = %cfg.socket_path.display(),
        driver = %cfg.driver_name,
        version = env!("CARGO_PKG_VERSION"),
        config = %cfg.ceph_csi_config.display(),
        op_timeout_s = cfg.op_timeout.as_secs(),
        "serving"
    );
    let library = crate::ceph::Library::probe();
    info!(
        librbd = %library.version_string(),
        release = library.release().unwrap_or("unknown"),
        clone4 = library.clone4,
        group_snap_get_info = library.group_snap_get_info,
        group_mirroring = library.group_mirroring,
        "librbd loaded"
    );
    if library.group_mirroring {
        warn!(
            "librbd exports rbd_mirror_group_*, whose signatures are not stable across releases; \
               snapshot-mode groups still replicate member by member (not crash-consistent): use journal mode"
        );
    } else {
        info!(
            "librbd has no native group mirroring: journal-mode groups are made crash-consistent by \
               consistency generations; snapshot-mode groups replicate member by member (not crash-consistent)"
        );
    }
    let group_snapshots = groupsnapshot::GroupSnapshots::new(exec.clone(), resolver.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (front_stop_tx, front_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let front = match &cfg.csi_front {
        Some(f) => Some(tokio::spawn(serve_front(
            bind(&f.endpoint, cfg.socket_mode)?,
            f.upstream.clone(),
            group_snapshots.clone(),
            front_stop_rx,
        ))),
        None => None,
    };
    if let Some(f) = &cfg.csi_front {
        info!(socket = %f.endpoint.display(), upstream = %f.upstream.display(), "serving the CSI front (GroupController)");
    }
    let server = Server::builder()
        .add_service(health_service)
        .add_service(v1.build_v1()?)
        .add_service(v1alpha.build_v1alpha()?)
        .add_service(IdentityServer::new(identity::IdentityService::new(
            cfg.driver_name.clone(),
            library,
            metrics.clone(),
        )))
        .add_service(ControllerServer::new(replication::ReplicationService::new(
            exec.clone(),
            resolver.clone(),
            scheduler,
        )))
        .add_service(VolumeGroupServer::new(volumegroup::VolumeGroupService::new(exec.clone(), resolver.clone())))
        .add_service(FenceControllerServer::new(fence::FenceService::new(exec.clone(), resolver.clone())))
        .add_service(ReclaimSpaceControllerServer::new(reclaimspace::ReclaimSpaceService::new(exec.clone(), resolver)))
        .add_service(VolumeGroupSnapshotServer::new(dell::DellService::new(
            group_snapshots,
            cfg.driver_name.clone(),
            cfg.group_snapshot_secret_dir.clone(),
        )))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            stop_rx.await.ok();
        });
    tokio::pin!(server);
    metrics.set_ready(true);

    let result = tokio::select! {
        r = &mut server => r.map_err(ServeError::from),
        () = shutdown => {
            stop_tx.send(()).ok();
            // Let in-flight calls finish, within bounds: a call stuck in librbd
            // must not keep the pod from terminating.
            match tokio::time::timeout(cfg.shutdown_grace, &mut server).await {
                Ok(r) => r.map_err(ServeError::from),
                Err(_) => {
                    warn!(
                        grace_ms = cfg.shutdown_grace.as_millis() as u64,
                        "calls still running after the grace period; exiting"
                    );
                    Ok(())
                }
            }
        }
    };
    metrics.set_ready(false);
    metrics_stop_tx.send(()).ok();
    if let Some(m) = metrics_server
        && let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(1), m).await
    {
        warn!(error = %e, "the metrics port failed");
    }
    front_stop_tx.send(()).ok();
    if let Some(front) = front {
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(1), front).await {
            warn!(error = %e, "the CSI front failed");
        }
        if let Some(f) = &cfg.csi_front
            && let Err(e) = std::fs::remove_file(&f.endpoint)
        {
            warn!(error = %e, "could not remove the CSI front's socket");
        }
    }
    generations.abort();
    if let Err(e) = std::fs::remove_file(&cfg.socket_path) {
        warn!(error = %e, "could not remove the socket");
    }
    let ceph_ops_running = exec.running();
    ledger.close(ceph_ops_running == 0);
    info!(ceph_ops_running, "stopped");
    result.map(|()| Stopped { ceph_ops_running })
}

/// The CSI front: the GroupController here, every other call upstream.
async fn serve_front(
    listener: UnixListener,
    upstream: PathBuf,
    group_snapshots: groupsnapshot::GroupSnapshots,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), ServeError> {
    let layer = front::FrontLayer { upstream: front::Upstream::new(upstream) };
    Server::builder()
        .layer(layer)
        .add_service(GroupControllerServer::new(groupsnapshot::GroupControllerService::new(group_snapshots)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            stop.await.ok();
        })
        .await
        .map_err(ServeError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server started and stopped inside this process, no Ceph needed:
    /// it answers on its socket, and once its shutdown future completes it
    /// stops and removes the socket.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_answers_then_stops_when_its_shutdown_completes() {
        let dir = std::env::temp_dir().join(format!("rbd-addons-in-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket_path = dir.join("csi-addons.sock");
        let cfg = ServeConfig {
            csi_front: None,
            group_snapshot_secret_dir: None,
            socket_path: socket_path.clone(),
            socket_mode: 0o660,
            driver_name: "rbd.csi.ceph.com".into(),
            ceph_csi_config: dir.join("config.json"),
            cluster_mapping: dir.join("cluster-mapping.json"),
            op_timeout: Duration::from_secs(5),
            ceph_timeout: Duration::from_secs(5),
            max_concurrent_ops: 4,
            connection_idle_expiry: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(2),
            metrics_address: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(cfg, async {
            stopped.await.ok();
        }));
        let started = std::time::Instant::now();
        while !socket_path.exists() {
            assert!(started.elapsed() < Duration::from_secs(10), "no socket");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let client =
            crate::client::Connection::open(&format!("unix://{}", socket_path.display()), Duration::from_secs(5))
                .await
                .expect("connect");
        let identity = client.identity_info().await.expect("GetIdentity");
        assert_eq!(identity.name, "rbd.csi.ceph.com", "{identity:?}");
        stop.send(()).unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(10), server).await.expect("stopped").unwrap();
        assert_eq!(stopped.expect("a clean stop").ceph_ops_running, 0);
        assert!(!socket_path.exists(), "the socket is removed");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn endpoints() {
        assert_eq!(parse_endpoint("unix:///csi/csi-addons.sock").unwrap(), PathBuf::from("/csi/csi-addons.sock"));
        assert_eq!(parse_endpoint("/tmp/x.sock").unwrap(), PathBuf::from("/tmp/x.sock"));
        for bad in ["tcp://127.0.0.1:9070", "unix://relative.sock", "relative.sock", "", "unix://", "/"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
