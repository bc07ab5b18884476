use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rbd_addons::client::{self, ClientError, Connection, Subject};
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
    /// Serve the csi-addons services on a Unix socket (and, optionally, the CSI front).
    Serve(ServeArgs),
    /// Show the driver name and version a running server reports.
    Identity(ClientArgs),
    /// List the capabilities a running server advertises.
    Capabilities(ClientArgs),
    /// Ask a running server whether it is ready.
    Probe(ClientArgs),
    /// Enable mirroring of a volume (EnableVolumeReplication).
    Enable(VolumeCommand),
    /// Disable mirroring of a volume (DisableVolumeReplication).
    Disable(VolumeCommand),
    /// Show when a primary volume last synced to its peer (GetVolumeReplicationInfo).
    Info(VolumeCommand),
    /// Make this site's copy of a volume the primary (PromoteVolume).
    Promote(ForceCommand),
    /// Make this site's copy of a volume a secondary (DemoteVolume).
    Demote(ForceCommand),
    /// Re-copy a split-brained secondary from the peer (ResyncVolume); prints ready.
    Resync(ForceCommand),
    /// Show the handle(s) that address this volume or group on the peer site
    /// (GetReplicationDestinationInfo).
    Destination(VolumeCommand),
    /// Volume groups: create, modify, delete, get, list, and their consistency generations.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Volume group snapshots (csi.v1.GroupController on the CSI front's
    /// socket: give --endpoint the server's --csi-endpoint).
    #[command(subcommand)]
    GroupSnapshot(GroupSnapshotCommand),
    /// Give a volume's zeroed space back to the cluster (ControllerReclaimSpace).
    ReclaimSpace(ReclaimArgs),
    /// Network fencing: cut CIDR blocks off a cluster (OSD blocklist ranges).
    #[command(subcommand)]
    Fence(FenceCommand),
}

#[derive(Args)]
struct ReclaimArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The ceph-csi volume handle (PV spec.csi.volumeHandle).
    #[arg(long)]
    volume_id: String,
    #[arg(long, env = "RBD_ADDONS_SECRETS_FILE")]
    secrets_file: PathBuf,
}

#[derive(Subcommand)]
enum FenceCommand {
    /// Fence CIDR blocks (FenceClusterNetwork); fencing again renews.
    Add(FenceArgs),
    /// Unfence CIDR blocks (UnfenceClusterNetwork); unfenced ones are fine.
    Remove(FenceArgs),
    /// List the fenced CIDR blocks (ListClusterFence).
    List(FenceListArgs),
}

#[derive(Args)]
struct FenceArgs {
    #[command(flatten)]
    list: FenceListArgs,
    /// A CIDR block such as 192.0.2.0/24 (repeatable).
    #[arg(long = "cidr", required = true)]
    cidrs: Vec<String>,
}

#[derive(Args)]
struct FenceListArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// A parameter as in a NetworkFenceClass (repeatable); clusterID is required.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    #[arg(long, env = "RBD_ADDONS_SECRETS_FILE")]
    secrets_file: PathBuf,
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create a group (CreateVolumeGroup); idempotent by name.
    Create(GroupCreateArgs),
    /// Set a group's members to exactly the given volumes (ModifyVolumeGroupMembership).
    Modify(GroupMembersArgs),
    /// Delete an empty group (DeleteVolumeGroup).
    Delete(GroupIdArgs),
    /// Show a group and its members (ControllerGetVolumeGroup).
    Get(GroupIdArgs),
    /// List the groups of every cluster in the server's config (ListVolumeGroups).
    List(GroupListArgs),
    /// List the consistency generations on each member, read from Ceph directly.
    Generations(GenerationsArgs),
}

#[derive(Args)]
struct GroupCreateArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The request name (the VolumeGroupReplicationContent's name).
    #[arg(long)]
    name: String,
    /// A member volume handle (repeatable).
    #[arg(long = "volume-id")]
    volume_ids: Vec<String>,
    /// A class parameter (repeatable); clusterID and pool are required.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    #[arg(long, env = "RBD_ADDONS_SECRETS_FILE")]
    secrets_file: PathBuf,
}

#[derive(Args)]
struct GroupMembersArgs {
    #[command(flatten)]
    group: GroupIdArgs,
    /// A member volume handle (repeatable); none removes every member.
    #[arg(long = "volume-id")]
    volume_ids: Vec<String>,
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
}

#[derive(Subcommand)]
enum GroupSnapshotCommand {
    /// Take a crash-consistent snapshot of volumes (CreateVolumeGroupSnapshot);
    /// idempotent by name. Each member restores with csi-rbdplugin.
    Create(GroupSnapshotCreateArgs),
    /// Show a group snapshot and whether every member is ready (GetVolumeGroupSnapshot).
    Get(GroupSnapshotIdArgs),
    /// Delete a group snapshot and its member snapshots (DeleteVolumeGroupSnapshot).
    Delete(GroupSnapshotIdArgs),
    /// List what the CSI front's GroupController advertises.
    Capabilities(ClientArgs),
}

#[derive(Args)]
struct GroupSnapshotCreateArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The request name (the snapshotter uses groupsnapshot-<uid>).
    #[arg(long)]
    name: String,
    /// A source volume handle (repeatable).
    #[arg(long = "volume-id", required = true)]
    volume_ids: Vec<String>,
    /// A class parameter (repeatable): clusterID, pool.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    #[arg(long, env = "RBD_ADDONS_SECRETS_FILE")]
    secrets_file: PathBuf,
}

#[derive(Args)]
struct GroupSnapshotIdArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The group snapshot handle (VolumeGroupSnapshotContent's volumeGroupSnapshotHandle).
    #[arg(long)]
    group_snapshot_id: String,
    #[arg(long, env = "RBD_ADDONS_SECRETS_FILE")]
    secrets_file: PathBuf,
}

#[derive(Args)]
struct GroupIdArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The group handle (VolumeGroupReplicationContent's volumeGroupReplicationHandle).
    #[arg(long)]
    group_id: String,
    #[arg(long, env = "RBD_ADDONS_SECRETS_FILE")]
    secrets_file: PathBuf,
}

#[derive(Args)]
struct GroupListArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[arg(long, default_value_t = 0)]
    max_entries: i32,
    #[arg(long, default_value = "")]
    starting_token: String,
    #[arg(long, env = "RBD_ADDONS_SECRETS_FILE")]
    secrets_file: PathBuf,
}

#[derive(Args)]
struct GenerationsArgs {
    #[arg(long)]
    group_id: String,
    #[arg(long, env = "RBD_ADDONS_SECRETS_FILE")]
    secrets_file: PathBuf,
    /// ceph-csi's config.json of this site.
    #[arg(long, env = "RBD_ADDONS_CEPH_CSI_CONFIG", default_value = "/etc/ceph-csi-config/config.json")]
    ceph_csi_config: PathBuf,
    #[arg(long, env = "RBD_ADDONS_CLUSTER_MAPPING", default_value = "/etc/ceph-csi-config/cluster-mapping.json")]
    cluster_mapping: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ForceCommand {
    #[command(flatten)]
    volume: VolumeCommand,
    /// Promote even while the peer still holds the primary (unplanned
    /// failover), demote although the peer holds no copy yet (leaves no
    /// primary anywhere), or resync discarding this site's changes.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ClientArgs {
    /// The server's socket: unix:///absolute/path or /absolute/path.
    #[arg(long, env = "RBD_ADDONS_ENDPOINT", default_value = "unix:///csi/csi-addons.sock")]
    endpoint: String,
    /// Deadline of the call (the csi-addons controller uses 3 minutes).
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print JSON instead of `key: value` lines.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VolumeCommand {
    #[command(flatten)]
    client: ClientArgs,
    /// The ceph-csi volume handle (PV spec.csi.volumeHandle).
    #[arg(long, required_unless_present = "group_id", conflicts_with = "group_id")]
    volume_id: Option<String>,
    /// A volume group handle instead: the call acts on every member.
    #[arg(long)]
    group_id: Option<String>,
    /// A replication parameter, as in a VolumeReplicationClass (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// File with the replication secret (userID, userKey): a JSON object or
    /// key=value lines. Never passed on the command line.
    #[arg(long, env = "RBD_ADDONS_SECRETS_FILE")]
    secrets_file: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Parser)]
struct ServeArgs {
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

impl VolumeCommand {
    fn subject(&self) -> Subject {
        match (&self.volume_id, &self.group_id) {
            (Some(v), _) => Subject::Volume(v.clone()),
            (None, Some(g)) => Subject::Group(g.clone()),
            (None, None) => unreachable!("clap requires one of them"),
        }
    }

    async fn connect(
        &self,
    ) -> Result<
        (Connection, std::collections::HashMap<String, String>, std::collections::HashMap<String, String>),
        ClientError,
    > {
        let params = client::parse_params(&self.params)?;
        let secrets = client::read_secrets(&self.secrets_file)?;
        let conn = Connection::open(&self.client.endpoint, self.client.timeout).await?;
        Ok((conn, params, secrets))
    }
}

async fn client_call(command: Command) -> Result<serde_json::Value, ClientError> {
    match command {
        Command::Serve(_) => unreachable!("serve is not a client command"),
        Command::Identity(a) => Connection::open(&a.endpoint, a.timeout).await?.identity_info().await,
        Command::Capabilities(a) => Connection::open(&a.endpoint, a.timeout).await?.capabilities().await,
        Command::Probe(a) => Connection::open(&a.endpoint, a.timeout).await?.probe().await,
        Command::Enable(v) => {
            let (conn, params, secrets) = v.connect().await?;
            conn.enable(&v.subject(), params, secrets).await
        }
        Command::Disable(v) => {
            let (conn, params, secrets) = v.connect().await?;
            conn.disable(&v.subject(), params, secrets).await
        }
        Command::Info(v) => {
            let (conn, _, secrets) = v.connect().await?;
            conn.info(&v.subject(), secrets).await
        }
        Command::Promote(f) => {
            let (conn, params, secrets) = f.volume.connect().await?;
            conn.promote(&f.volume.subject(), f.force, params, secrets).await
        }
        Command::Demote(f) => {
            let (conn, params, secrets) = f.volume.connect().await?;
            conn.demote(&f.volume.subject(), f.force, params, secrets).await
        }
        Command::Resync(f) => {
            let (conn, params, secrets) = f.volume.connect().await?;
            conn.resync(&f.volume.subject(), f.force, params, secrets).await
        }
        Command::Destination(v) => {
            let (conn, _, secrets) = v.connect().await?;
            conn.destination(&v.subject(), secrets).await
        }
        Command::Group(g) => group_call(g).await,
        Command::GroupSnapshot(g) => match g {
            GroupSnapshotCommand::Create(a) => {
                let (params, secrets) = (client::parse_params(&a.params)?, client::read_secrets(&a.secrets_file)?);
                Connection::open(&a.client.endpoint, a.client.timeout)
                    .await?
                    .group_snapshot_create(&a.name, a.volume_ids, params, secrets)
                    .await
            }
            GroupSnapshotCommand::Get(a) => {
                let secrets = client::read_secrets(&a.secrets_file)?;
                let conn = Connection::open(&a.client.endpoint, a.client.timeout).await?;
                conn.group_snapshot_get(&a.group_snapshot_id, secrets).await
            }
            GroupSnapshotCommand::Delete(a) => {
                let secrets = client::read_secrets(&a.secrets_file)?;
                let conn = Connection::open(&a.client.endpoint, a.client.timeout).await?;
                conn.group_snapshot_delete(&a.group_snapshot_id, Vec::new(), secrets).await
            }
            GroupSnapshotCommand::Capabilities(a) => {
                Connection::open(&a.endpoint, a.timeout).await?.group_snapshot_capabilities().await
            }
        },
        Command::ReclaimSpace(a) => {
            let secrets = client::read_secrets(&a.secrets_file)?;
            Connection::open(&a.client.endpoint, a.client.timeout).await?.reclaim_space(&a.volume_id, secrets).await
        }
        Command::Fence(f) => {
            let (fence, args, cidrs) = match f {
                FenceCommand::Add(a) => (Some(true), a.list, a.cidrs),
                FenceCommand::Remove(a) => (Some(false), a.list, a.cidrs),
                FenceCommand::List(a) => (None, a, Vec::new()),
            };
            let (params, secrets) = (client::parse_params(&args.params)?, client::read_secrets(&args.secrets_file)?);
            let conn = Connection::open(&args.client.endpoint, args.client.timeout).await?;
            match fence {
                Some(fence) => conn.fence(fence, &cidrs, params, secrets).await,
                None => conn.fence_list(params, secrets).await,
            }
        }
    }
}

async fn group_call(command: GroupCommand) -> Result<serde_json::Value, ClientError> {
    match command {
        GroupCommand::Create(a) => {
            let (params, secrets) = (client::parse_params(&a.params)?, client::read_secrets(&a.secrets_file)?);
            Connection::open(&a.client.endpoint, a.client.timeout)
                .await?
                .group_create(&a.name, a.volume_ids, params, secrets)
                .await
        }
        GroupCommand::Modify(a) => {
            let (params, secrets) = (client::parse_params(&a.params)?, client::read_secrets(&a.group.secrets_file)?);
            Connection::open(&a.group.client.endpoint, a.group.client.timeout)
                .await?
                .group_modify(&a.group.group_id, a.volume_ids, params, secrets)
                .await
        }
        GroupCommand::Delete(a) => {
            let secrets = client::read_secrets(&a.secrets_file)?;
            Connection::open(&a.client.endpoint, a.client.timeout).await?.group_delete(&a.group_id, secrets).await
        }
        GroupCommand::Get(a) => {
            let secrets = client::read_secrets(&a.secrets_file)?;
            Connection::open(&a.client.endpoint, a.client.timeout).await?.group_get(&a.group_id, secrets).await
        }
        GroupCommand::List(a) => {
            let secrets = client::read_secrets(&a.secrets_file)?;
            Connection::open(&a.client.endpoint, a.client.timeout)
                .await?
                .group_list(a.max_entries, a.starting_token, secrets)
                .await
        }
        GroupCommand::Generations(a) => {
            let secrets = client::read_secrets(&a.secrets_file)?;
            // Reads Ceph directly: librados blocks, so off the runtime.
            tokio::task::spawn_blocking(move || {
                client::generations(&a.ceph_csi_config, &a.cluster_mapping, &a.group_id, &secrets)
            })
            .await
            .map_err(|e| ClientError::Usage(format!("generations: {e}")))?
        }
    }
}

fn run_client(command: Command) -> ExitCode {
    let json = match &command {
        Command::Serve(_) => false,
        Command::Identity(a) | Command::Capabilities(a) | Command::Probe(a) => a.json,
        Command::Enable(v) | Command::Disable(v) | Command::Info(v) | Command::Destination(v) => v.client.json,
        Command::Fence(FenceCommand::Add(a) | FenceCommand::Remove(a)) => a.list.client.json,
        Command::Fence(FenceCommand::List(a)) => a.client.json,
        Command::ReclaimSpace(a) => a.client.json,
        Command::Promote(f) | Command::Demote(f) | Command::Resync(f) => f.volume.client.json,
        Command::Group(g) => match g {
            GroupCommand::Create(a) => a.client.json,
            GroupCommand::Modify(a) => a.group.client.json,
            GroupCommand::Delete(a) | GroupCommand::Get(a) => a.client.json,
            GroupCommand::List(a) => a.client.json,
            GroupCommand::Generations(a) => a.json,
        },
        Command::GroupSnapshot(g) => match g {
            GroupSnapshotCommand::Create(a) => a.client.json,
            GroupSnapshotCommand::Get(a) | GroupSnapshotCommand::Delete(a) => a.client.json,
            GroupSnapshotCommand::Capabilities(a) => a.json,
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(client_call(command)) {
        Ok(value) => {
            println!("{}", if json { value.to_string() } else { client::human(&value) });
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json {
                let code = match &e {
                    ClientError::Rpc(s) => client::code_name(s.code()),
                    ClientError::Connect { .. } => "UNAVAILABLE",
                    ClientError::Usage(_) => "USAGE",
                };
                println!("{}", serde_json::json!({"error": {"code": code, "message": e.to_string()}}));
            }
            eprintln!("rbd-addons: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        client_command @ (Command::Identity(_)
        | Command::Capabilities(_)
        | Command::Probe(_)
        | Command::Enable(_)
        | Command::Disable(_)
        | Command::Info(_)
        | Command::Promote(_)
        | Command::Demote(_)
        | Command::Resync(_)
        | Command::Destination(_)
        | Command::Group(_)
        | Command::GroupSnapshot(_)
        | Command::Fence(_)
        | Command::ReclaimSpace(_)) => run_client(client_command),
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
            let csi_front = match (&args.csi_endpoint, &args.csi_upstream) {
                (Some(front), Some(upstream)) => {
                    match (server::parse_endpoint(front), server::parse_endpoint(upstream)) {
                        (Ok(endpoint), Ok(upstream)) => Some(server::CsiFront { endpoint, upstream }),
                        (Err(e), _) | (_, Err(e)) => {
                            tracing::error!("{e}");
                            return ExitCode::from(2);
                        }
                    }
                }
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
    }
}
