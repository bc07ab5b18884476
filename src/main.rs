use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use rbd_addons::server::{self, ServeConfig};

/// CSI-Addons server for Ceph RBD.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve csi-addons Identity and Replication on a Unix socket.
    Serve(ServeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Parser)]
struct ServeArgs {
    /// Socket to listen on: unix:///absolute/path or /absolute/path.
    #[arg(
        long,
        env = "RBD_ADDONS_ENDPOINT",
        default_value = "unix:///csi/csi-addons.sock"
    )]
    endpoint: String,
    /// Driver name returned by GetIdentity; must equal the classes' provisioner.
    #[arg(
        long,
        env = "RBD_ADDONS_DRIVERNAME",
        default_value = "rbd.csi.ceph.com"
    )]
    drivername: String,
    /// ceph-csi's config.json (clusterID → monitors, RADOS namespace).
    #[arg(
        long,
        env = "RBD_ADDONS_CEPH_CSI_CONFIG",
        default_value = "/etc/ceph-csi-config/config.json"
    )]
    ceph_csi_config: PathBuf,
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
    /// Ceph operations running at once; further calls queue.
    #[arg(long, env = "RBD_ADDONS_MAX_CONCURRENT_OPS", default_value_t = 32)]
    max_concurrent_ops: usize,
    /// Idle time after which a cached cluster connection is closed.
    #[arg(long, env = "RBD_ADDONS_CONNECTION_IDLE_EXPIRY", default_value = "10m", value_parser = humantime::parse_duration)]
    connection_idle_expiry: Duration,
    #[arg(
        long,
        env = "RBD_ADDONS_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    log_format: LogFormat,
    /// A tracing filter: a level (info, debug, trace) or per-target directives.
    #[arg(long, env = "RBD_ADDONS_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode"))?;
    if mode > 0o777 {
        return Err(format!("{s:?} is not a permission mode"));
    }
    if mode & 0o007 != 0 {
        return Err(format!(
            "{s:?} gives other users access to the socket; use at most 0770"
        ));
    }
    Ok(mode)
}

fn init_logging(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("bad --log-level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
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
            let cfg = ServeConfig {
                socket_path,
                socket_mode: args.socket_mode,
                driver_name: args.drivername,
                ceph_csi_config: args.ceph_csi_config,
                op_timeout: args.op_timeout,
                ceph_timeout: args.ceph_timeout,
                max_concurrent_ops: args.max_concurrent_ops,
                connection_idle_expiry: args.connection_idle_expiry,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(server::serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
