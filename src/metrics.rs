//! What an admin alerts on, as Prometheus metrics (OpenMetrics text on
//! `/metrics`), and the HTTP side port that also answers kubelet's `/healthz`
//! and `/readyz` (kubelet's probes cannot reach a Unix socket).
//!
//! Per-volume and per-group series come from the calls the server answers
//! (the controller asks Info every half scheduling interval), so a volume's
//! series appear with its first call and go when it is disabled or gone.
//! Timestamps are exported, and ages only where they are computed at scrape
//! time (a group's RPO): an age frozen at the last call would look fresh
//! forever, while `time() - timestamp` keeps growing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::info;

/// Latency buckets (seconds) from a warm Info (~1 ms) to a slow promote.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Volumes (and groups) followed at most: series beyond are not made, so a
/// runaway caller cannot blow up Prometheus.
pub(crate) const MAX_TRACKED: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdLabels {
    id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    id: String,
    state: String,
}

/// Where a volume or group stands, as the `state` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplicationState {
    /// Primary here and the local rbd-mirror reports nothing wrong.
    Primary,
    Secondary,
    /// A resync was asked for and has not been seen finished.
    Resyncing,
    /// Primary, but the local rbd-mirror is down or has not reported.
    Degraded,
    /// rbd-mirror reports an error.
    Error,
}

impl ReplicationState {
    pub(crate) fn label(self) -> &'static str {
        match self {
            ReplicationState::Primary => "primary",
            ReplicationState::Secondary => "secondary",
            ReplicationState::Resyncing => "resyncing",
            ReplicationState::Degraded => "degraded",
            ReplicationState::Error => "error",
        }
    }
}

/// The last completed sync the peer holds, as Info reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LastSync {
    pub(crate) time: i64,
    pub(crate) bytes: Option<i64>,
    pub(crate) duration_secs: Option<i64>,
}

/// One kind of followed object (volumes, groups): its state series and the
/// state each one is in, so a change removes the old series.
struct Followed {
    state: Family<StateLabels, Gauge>,
    last_sync: Family<IdLabels, Gauge>,
    last_sync_bytes: Family<IdLabels, Gauge>,
    last_sync_duration: Family<IdLabels, Gauge>,
    /// Seconds since the last sync, set from `synced` at every scrape; only
    /// for the kinds whose age is exported (groups), so a volume's Info pays
    /// for no map it never reads.
    age: Family<IdLabels, Gauge>,
    synced: Option<Mutex<HashMap<String, i64>>>,
    current: Mutex<HashMap<String, ReplicationState>>,
}

impl Followed {
    fn new(with_age: bool) -> Self {
        Self {
            state: Family::default(),
            last_sync: Family::default(),
            last_sync_bytes: Family::default(),
            last_sync_duration: Family::default(),
            age: Family::default(),
            synced: with_age.then(|| Mutex::new(HashMap::new())),
            current: Mutex::new(HashMap::new()),
        }
    }

    fn set_state(&self, id: &str, state: ReplicationState) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.get(id) {
            Some(old) if *old == state => return,
            Some(old) => {
                self.state.remove(&StateLabels { id: id.to_owned(), state: old.label().to_owned() });
            }
            None if current.len() >= MAX_TRACKED => return,
            None => {}
        }
        current.insert(id.to_owned(), state);
        self.state.get_or_create(&StateLabels { id: id.to_owned(), state: state.label().to_owned() }).set(1);
    }

    fn set_last_sync(&self, id: &str, sync: LastSync) {
        if !self.current.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id) {
            return;
        }
        let labels = IdLabels { id: id.to_owned() };
        self.last_sync.get_or_create(&labels).set(sync.time);
        if let Some(synced) = &self.synced {
            synced.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), sync.time);
        }
        if let Some(bytes) = sync.bytes {
            self.last_sync_bytes.get_or_create(&labels).set(bytes);
        }
        if let Some(secs) = sync.duration_secs {
            self.last_sync_duration.get_or_create(&labels).set(secs);
        }
    }

    fn forget(&self, id: &str) {
        let Some(old) = self.current.lock().unwrap_or_else(|p| p.into_inner()).remove(id) else {
            return;
        };
        self.state.remove(&StateLabels { id: id.to_owned(), state: old.label().to_owned() });
        let labels = IdLabels { id: id.to_owned() };
        self.last_sync.remove(&labels);
        self.last_sync_bytes.remove(&labels);
        self.last_sync_duration.remove(&labels);
        self.age.remove(&labels);
        if let Some(synced) = &self.synced {
            synced.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        }
    }

    /// Ages as of `now` (Unix seconds), for the scrape about to be encoded.
    fn set_ages(&self, now: i64) {
        let Some(synced) = &self.synced else { return };
        for (id, time) in synced.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            self.age.get_or_create(&IdLabels { id: id.clone() }).set((now - time).max(0));
        }
    }

    fn register(&self, registry: &mut Registry, kind: &str) {
        registry.register(
            format!("{kind}_replication_state"),
            format!("1 for each {kind} the server has answered about, labelled by its replication state"),
            self.state.clone(),
        );
        registry.register(
            format!("{kind}_last_sync_timestamp_seconds"),
            format!("Unix time of the newest point the peer site holds of the {kind} (Info's last sync time)"),
            self.last_sync.clone(),
        );
        if self.synced.is_some() {
            registry.register(
                "group_rpo_seconds",
                "Seconds since the newest point the peer holds of the group (its newest complete generation in \
                 journal mode), as of this scrape: what a site loss now would lose",
                self.age.clone(),
            );
        }
        if kind == "volume" {
            registry.register(
                "volume_last_sync_bytes",
                "Bytes the last snapshot sync moved (snapshot mode)",
                self.last_sync_bytes.clone(),
            );
            registry.register(
                "volume_last_sync_duration_seconds",
                "How long the last snapshot sync took (snapshot mode)",
                self.last_sync_duration.clone(),
            );
        }
    }
}

/// The server's metrics: one registry, owned here, served on `/metrics`.
pub(crate) struct Metrics {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<RpcLabels, Histogram>,
    ceph_op_duration: Family<OpLabels, Histogram>,
    guard_rejections: Family<OpLabels, Counter>,
    ops_in_flight: Gauge,
    ops_queued: Gauge,
    connections: Gauge,
    volumes: Followed,
    groups: Followed,
    ready: AtomicBool,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("rbd_addons");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_duration = Family::<RpcLabels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let ceph_op_duration = Family::<OpLabels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let guard_rejections = Family::<OpLabels, Counter>::default();
        let (ops_in_flight, ops_queued, connections) = (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("rpc_requests", "gRPC calls answered, by method and code", rpc_requests.clone());
        registry.register("rpc_duration_seconds", "gRPC call latency, by method and code", rpc_duration.clone());
        registry.register(
            "ceph_op_duration_seconds",
            "Time a call's Ceph work ran on the blocking pool, by the method it served",
            ceph_op_duration.clone(),
        );
        registry.register(
            "guard_rejections",
            "Calls refused (ABORTED) because another call was working on the same volume or group",
            guard_rejections.clone(),
        );
        registry.register("ceph_ops_in_flight", "Ceph work running on the blocking pool", ops_in_flight.clone());
        registry.register(
            "ceph_ops_queued",
            "Ceph work waiting for a free slot (--max-concurrent-ops)",
            ops_queued.clone(),
        );
        registry.register(
            "ceph_connections",
            "Cluster connections held open (per monitors, user and key)",
            connections.clone(),
        );
        let (volumes, groups) = (Followed::new(false), Followed::new(true));
        volumes.register(&mut registry, "volume");
        groups.register(&mut registry, "group");
        Self {
            registry,
            rpc_requests,
            rpc_duration,
            ceph_op_duration,
            guard_rejections,
            ops_in_flight,
            ops_queued,
            connections,
            volumes,
            groups,
            ready: AtomicBool::new(false),
        }
    }

    pub(crate) fn rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let labels = RpcLabels { method: method.to_owned(), code: code_name(code).to_owned() };
        self.rpc_requests.get_or_create(&labels).inc();
        self.rpc_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    pub(crate) fn ceph_op(&self, op: &str, elapsed: Duration) {
        self.ceph_op_duration.get_or_create(&OpLabels { op: op.to_owned() }).observe(elapsed.as_secs_f64());
    }

    pub(crate) fn guard_rejected(&self, op: &str) {
        self.guard_rejections.get_or_create(&OpLabels { op: op.to_owned() }).inc();
    }

    pub(crate) fn in_flight(&self) -> &Gauge {
        &self.ops_in_flight
    }

    pub(crate) fn queued(&self) -> &Gauge {
        &self.ops_queued
    }

    pub(crate) fn set_connections(&self, n: usize) {
        self.connections.set(n as i64);
    }

    pub(crate) fn volume_state(&self, id: &str, state: ReplicationState) {
        self.volumes.set_state(id, state);
    }

    pub(crate) fn volume_synced(&self, id: &str, sync: LastSync) {
        self.volumes.set_last_sync(id, sync);
    }

    pub(crate) fn forget_volume(&self, id: &str) {
        self.volumes.forget(id);
    }

    pub(crate) fn group_state(&self, id: &str, state: ReplicationState) {
        self.groups.set_state(id, state);
    }

    pub(crate) fn group_synced(&self, id: &str, time: i64) {
        self.groups.set_last_sync(id, LastSync { time, bytes: None, duration_secs: None });
    }

    pub(crate) fn forget_group(&self, id: &str) {
        self.groups.forget(id);
    }

    /// The socket is bound and the services are up: `/readyz` says 200.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The OpenMetrics text of every metric.
    pub(crate) fn encode(&self) -> String {
        self.groups.set_ages(crate::unix_now());
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).ok();
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// gRPC's canonical code names, as Prometheus users know them.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What `/metrics` needs at scrape time besides the registry.
#[derive(Clone)]
pub(crate) struct Scrape {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) connections: Arc<dyn Fn() -> usize + Send + Sync>,
}

/// Binds the side port; a failure stops the server at start, where an admin
/// sees it, rather than leaving probes that never answer.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `stop` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    scrape: Scrape,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(address = %addr, "serving metrics and health probes over HTTP");
    }
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(scrape);
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}

async fn metrics_page(State(scrape): State<Scrape>) -> impl IntoResponse {
    scrape.metrics.set_connections((scrape.connections)());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], scrape.metrics.encode())
}

async fn readyz(State(scrape): State<Scrape>) -> impl IntoResponse {
    if scrape.metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_change_replaces_the_series_and_forgetting_drops_all() {
        let m = Metrics::new();
        m.volume_state("v1", ReplicationState::Primary);
        m.volume_synced("v1", LastSync { time: 1_700_000_000, bytes: Some(4096), duration_secs: Some(2) });
        m.volume_state("v1", ReplicationState::Secondary);
        let text = m.encode();
        assert!(text.contains(r#"rbd_addons_volume_replication_state{id="v1",state="secondary"} 1"#), "{text}");
        assert!(!text.contains(r#"state="primary""#), "{text}");
        assert!(text.contains(r#"rbd_addons_volume_last_sync_timestamp_seconds{id="v1"} 1700000000"#), "{text}");
        assert!(text.contains(r#"rbd_addons_volume_last_sync_bytes{id="v1"} 4096"#), "{text}");
        m.forget_volume("v1");
        assert!(!m.encode().contains(r#"id="v1""#));
    }

    #[test]
    fn a_groups_rpo_is_its_age_at_each_scrape_and_goes_with_it() {
        let m = Metrics::new();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        m.group_state("g1", ReplicationState::Primary);
        m.group_synced("g1", now - 7);
        let rpo = |text: &str| -> Option<i64> {
            let line = text.lines().find(|l| l.starts_with(r#"rbd_addons_group_rpo_seconds{id="g1"}"#))?;
            line.rsplit(' ').next()?.parse().ok()
        };
        let first = rpo(&m.encode()).expect("an RPO series");
        // Computed at the scrape, so it grows between scrapes with no call.
        assert!((7..=9).contains(&first), "{first}");
        m.forget_group("g1");
        assert_eq!(rpo(&m.encode()), None);
    }

    #[test]
    fn a_sync_of_an_unfollowed_volume_makes_no_series() {
        let m = Metrics::new();
        m.volume_synced("ghost", LastSync { time: 1, bytes: None, duration_secs: None });
        assert!(!m.encode().contains("ghost"));
    }

    #[test]
    fn followed_objects_are_bounded() {
        let f = Followed::new(false);
        for i in 0..MAX_TRACKED + 5 {
            f.set_state(&i.to_string(), ReplicationState::Primary);
        }
        assert_eq!(f.current.lock().unwrap().len(), MAX_TRACKED);
        // One that is followed can still change state.
        f.set_state("0", ReplicationState::Error);
        assert_eq!(f.current.lock().unwrap()["0"], ReplicationState::Error);
    }

    #[test]
    fn rpc_counts_and_latency_carry_method_and_code() {
        let m = Metrics::new();
        m.rpc("PromoteVolume", tonic::Code::Ok, Duration::from_millis(3));
        m.rpc("PromoteVolume", tonic::Code::Aborted, Duration::from_millis(1));
        m.guard_rejected("PromoteVolume");
        let text = m.encode();
        assert!(text.contains(r#"rbd_addons_rpc_requests_total{method="PromoteVolume",code="OK"} 1"#), "{text}");
        assert!(text.contains(r#"rbd_addons_rpc_requests_total{method="PromoteVolume",code="ABORTED"} 1"#));
        assert!(
            text.contains(r#"rbd_addons_rpc_duration_seconds_bucket{le="0.005",method="PromoteVolume",code="OK"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"rbd_addons_guard_rejections_total{op="PromoteVolume"} 1"#));
    }

    #[test]
    fn every_code_has_its_canonical_name() {
        for (code, name) in [(tonic::Code::NotFound, "NOT_FOUND"), (tonic::Code::Unauthenticated, "UNAUTHENTICATED")] {
            assert_eq!(code_name(code), name);
        }
    }
}
