//! `serve`: the server itself, configured from flags and environment.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rbd_addons::server::{self, ServeConfig};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Json,
    Text,
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Socket to listen on: unix:///absolute/path or /absolute/path.
    #[arg(long, env = "RBD_ADDONS_ENDPOINT", default_value = "unix:///csi/csi-addons.sock")]
    endpoint: String,
    /// Driver name returned by GetIdentity; must equal the classes' provisioner.
    #[arg(long, env = "RBD_ADDONS_DRIVERNAME", default_value = "rbd.csi.ceph.com")]
    drivername: String,
    /// ceph-csi's config.json (clusterID → monitors, RADOS namespace).
    #[arg(long, env = "RBD_ADDONS_CEPH_CSI_CONFIG", default_value = "/etc/ceph-csi-config/config.json")]
    ceph_csi_config: PathBuf,
    /// ceph-csi's cluster-mapping.json, used to find volumes whose handle was
    /// minted on the peer site (after a failover); ignored when absent.
    #[arg(long, env = "RBD_ADDONS_CLUSTER_MAPPING", default_value = "/etc/ceph-csi-config/cluster-mapping.json")]
    cluster_mapping: PathBuf,
    /// Permissions of the socket file, in octal.
    #[arg(long, env = "RBD_ADDONS_SOCKET_MODE", default_value = "0660", value_parser = parse_mode)]
    socket_mode: u32,
    /// Longest an RPC may work on Ceph before it answers DEADLINE_EXCEEDED
    /// (the csi-addons controller gives each call 3 minutes).
    #[arg(long, env = "RBD_ADDONS_OP_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    op_timeout: Duration,
    /// Bound of each monitor/OSD operation and of connecting to a cluster.
    #[arg(long, env = "RBD_ADDONS_CEPH_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    ceph_timeout: Duration,
    /// Ceph operations running at once; further calls queue (a call that only waits gives its slot back).
    #[arg(long, env = "RBD_ADDONS_MAX_CONCURRENT_OPS", default_value_t = 32)]
    max_concurrent_ops: usize,
    /// Idle time after which a cached cluster connection is closed.
    #[arg(long, env = "RBD_ADDONS_CONNECTION_IDLE_EXPIRY", default_value = "10m", value_parser = humantime::parse_duration)]
    connection_idle_expiry: Duration,
    /// After SIGTERM, how long running calls may finish before the process
    /// exits anyway (keep it below the pod's terminationGracePeriodSeconds).
    #[arg(long, env = "RBD_ADDONS_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// A second socket, for the csi-snapshotter only: it serves
    /// csi.v1.GroupController (volume group snapshots) and forwards every
    /// other CSI call to --csi-upstream. Needs --csi-upstream.
    #[arg(long, env = "RBD_ADDONS_CSI_ENDPOINT", requires = "csi_upstream")]
    csi_endpoint: Option<String>,
    /// csi-rbdplugin's own CSI socket, where the CSI front forwards to.
    #[arg(long, env = "RBD_ADDONS_CSI_UPSTREAM", requires = "csi_endpoint")]
    csi_upstream: Option<String>,
    /// A mounted Secret (files userID and userKey) with the Ceph user for
    /// Dell's volumegroupsnapshot.v1 extension, whose requests carry none.
    #[arg(long, env = "RBD_ADDONS_GROUP_SNAPSHOT_SECRET_DIR")]
    group_snapshot_secret_dir: Option<PathBuf>,
    /// Where Prometheus scrapes /metrics and kubelet probes /healthz and
    /// /readyz (HTTP). In a pod, listen on the pod's address, e.g.
    /// 0.0.0.0:9690; "off" serves none of them.
    #[arg(long, env = "RBD_ADDONS_METRICS_ADDRESS", default_value = "127.0.0.1:9690", value_parser = parse_metrics_address)]
    metrics_address: MetricsAddress,
    #[arg(long, env = "RBD_ADDONS_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// A tracing filter: a level (info, debug, trace) or per-target directives.
    #[arg(long, env = "RBD_ADDONS_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[derive(Debug, Clone, Copy)]
struct MetricsAddress(Option<std::net::SocketAddr>);

fn parse_metrics_address(s: &str) -> Result<MetricsAddress, String> {
    if s == "off" {
        return Ok(MetricsAddress(None));
    }
    s.parse()
        .map(|a| MetricsAddress(Some(a)))
        .map_err(|_| format!("{s:?} is not an address:port such as 0.0.0.0:9690 (or \"off\")"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| format!("{s:?} is not an octal mode"))?;
    if mode > 0o777 {
        return Err(format!("{s:?} is not a permission mode"));
    }
    if mode & 0o007 != 0 {
        return Err(format!("{s:?} gives other users access to the socket; use at most 0770"));
    }
    Ok(mode)
}

fn init_logging(format: LogFormat, level: &str) -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).map_err(|e| format!("bad --log-level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        // Each line names the call it was logged in: the RPC's span (method,
        // target, request number), not the spans around it.
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
        // Colour codes only for a terminal, not in a log file.
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
    Ok(())
}

pub(super) fn run(args: ServeArgs) -> ExitCode {
    if let Err(e) = init_logging(args.log_format, &args.log_level) {
        eprintln!("rbd-addons: {e}");
        return ExitCode::from(2);
    }
    let socket_path = match server::parse_endpoint(&args.endpoint) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let csi_front = match (&args.csi_endpoint, &args.csi_upstream) {
        (Some(front), Some(upstream)) => match (server::parse_endpoint(front), server::parse_endpoint(upstream)) {
            (Ok(endpoint), Ok(upstream)) => Some(server::CsiFront { endpoint, upstream }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("{e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let cfg = ServeConfig {
        csi_front,
        group_snapshot_secret_dir: args.group_snapshot_secret_dir,
        socket_path,
        socket_mode: args.socket_mode,
        driver_name: args.drivername,
        ceph_csi_config: args.ceph_csi_config,
        cluster_mapping: args.cluster_mapping,
        op_timeout: args.op_timeout,
        ceph_timeout: args.ceph_timeout,
        max_concurrent_ops: args.max_concurrent_ops,
        connection_idle_expiry: args.connection_idle_expiry,
        shutdown_grace: args.shutdown_grace,
        metrics_address: args.metrics_address.0,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let outcome = runtime.block_on(server::serve(cfg, server::shutdown_signal()));
    // Dropping a runtime waits for its blocking threads without limit,
    // and a call stuck on a frozen cluster holds one until its Ceph
    // timeout (or for ever): the grace period must be the last wait.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(stopped) if stopped.ceph_ops_running > 0 => {
            // Those threads are still inside librados; exit handlers and
            // librados' static destructors must not run under them.
            // SAFETY: _exit ends the process at once; stderr, our only
            // output, is unbuffered, so nothing written is lost.
            unsafe { libc::_exit(0) }
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
