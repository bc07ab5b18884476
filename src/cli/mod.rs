//! The command line: `serve`, and the client commands that call a running
//! server the way the csi-addons sidecar does. One file per command family;
//! each command is a type that knows how to run itself ([`Run`]), and
//! `render.rs` prints what it returns. A new command is one type in its
//! family's file and one line in `commands!` below.

mod fence;
mod group_snapshots;
mod groups;
mod identity;
mod reclaim;
mod render;
mod replication;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rbd_addons::client::{self, ClientError, Connection};
use serde_json::Value;

pub(crate) use render::Format;

/// A client command: where it prints, and what it does.
trait Run {
    fn format(&self) -> Format;

    /// Calls the server (or Ceph) and returns what to print.
    async fn run(self) -> Result<Value, ClientError>;
}

/// The command line's top: `serve`, then every client command, each one
/// line: `Variant(type implementing Run)` with its help as a doc comment.
macro_rules! commands {
    ($($(#[$doc:meta])* $variant:ident($ty:ty),)*) => {
        #[derive(Subcommand)]
        pub(crate) enum Command {
            /// Serve the csi-addons services on a Unix socket (and, optionally, the CSI front).
            Serve(serve::ServeArgs),
            $($(#[$doc])* $variant($ty),)*
        }

        impl Command {
            pub(crate) fn run(self) -> ExitCode {
                match self {
                    Command::Serve(args) => serve::run(args),
                    $(Command::$variant(c) => run_client(c),)*
                }
            }
        }
    };
}

commands! {
    /// Show the driver name and version a running server reports.
    Identity(identity::Identity),
    /// List the capabilities a running server advertises.
    Capabilities(identity::Capabilities),
    /// Ask a running server whether it is ready.
    Probe(identity::Probe),
    /// Enable mirroring of a volume (EnableVolumeReplication).
    Enable(replication::Enable),
    /// Disable mirroring of a volume (DisableVolumeReplication).
    Disable(replication::Disable),
    /// Show when a primary volume last synced to its peer (GetVolumeReplicationInfo).
    Info(replication::Info),
    /// Make this site's copy of a volume the primary (PromoteVolume).
    Promote(replication::Promote),
    /// Make this site's copy of a volume a secondary (DemoteVolume).
    Demote(replication::Demote),
    /// Re-copy a split-brained secondary from the peer (ResyncVolume); prints ready.
    Resync(replication::Resync),
    /// Show the handle(s) that address this volume or group on the peer site
    /// (GetReplicationDestinationInfo).
    Destination(replication::Destination),
    /// Volume groups: create, modify, delete, get, list, and their consistency generations.
    #[command(subcommand)]
    Group(groups::GroupCommand),
    /// Volume group snapshots (csi.v1.GroupController on the CSI front's
    /// socket: give --endpoint the server's --csi-endpoint).
    #[command(subcommand)]
    GroupSnapshot(group_snapshots::GroupSnapshotCommand),
    /// Give a volume's zeroed space back to the cluster (ControllerReclaimSpace).
    ReclaimSpace(reclaim::ReclaimSpace),
    /// Network fencing: cut CIDR blocks off a cluster (OSD blocklist ranges).
    #[command(subcommand)]
    Fence(fence::FenceCommand),
}

/// CSI-Addons server for Ceph RBD.
#[derive(Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How every client command reaches the server and prints.
#[derive(Args)]
pub(crate) struct ClientArgs {
    /// The server's socket: unix:///absolute/path or /absolute/path.
    #[arg(long, env = "RBD_ADDONS_ENDPOINT", default_value = "unix:///csi/csi-addons.sock")]
    endpoint: String,
    /// Deadline of the call (the csi-addons controller uses 3 minutes).
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct OutputArgs {
    /// Print `key: value` lines (text) or one JSON object (json).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    output: Format,
    /// The same as --output json.
    #[arg(long)]
    json: bool,
}

impl OutputArgs {
    fn format(&self) -> Format {
        if self.json { Format::Json } else { self.output }
    }
}

#[derive(Args)]
pub(crate) struct SecretsArg {
    /// File with the secret (userID, userKey): a JSON object or key=value
    /// lines. Never passed on the command line, where `ps` would show it.
    #[arg(long, env = "RBD_ADDONS_SECRETS_FILE")]
    secrets_file: PathBuf,
}

impl ClientArgs {
    /// Connects, carrying the secret from `secrets` (read before connecting,
    /// so a bad file is a usage error even with the server down).
    async fn connect(&self, secrets: Option<&SecretsArg>) -> Result<Connection, ClientError> {
        let secrets = secrets.map(|s| client::read_secrets(&s.secrets_file)).transpose()?;
        let conn = Connection::open(&self.endpoint, self.timeout).await?;
        Ok(match secrets {
            Some(s) => conn.with_secrets(s),
            None => conn,
        })
    }
}

/// Parameters as a class sets them (VolumeReplicationClass,
/// VolumeGroupReplicationClass, NetworkFenceClass, VolumeGroupSnapshotClass).
#[derive(Args)]
pub(crate) struct ClassParams {
    /// A class parameter (repeatable), e.g. clusterID=<id>, pool=<pool>, mirroringMode=journal.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
}

impl ClassParams {
    fn parse(&self) -> Result<client::Params, ClientError> {
        client::parse_params(&self.params)
    }
}

/// What a create carries: its name (a retry with the same name answers what
/// the first one made), the volumes, the class's parameters and the secret.
#[derive(Args)]
pub(crate) struct Creation {
    #[command(flatten)]
    client: ClientArgs,
    /// The request name (a VolumeGroupReplicationContent's, or groupsnapshot-<uid>).
    #[arg(long)]
    name: String,
    /// A volume handle (repeatable).
    #[arg(long = "volume-id")]
    volume_ids: Vec<String>,
    #[command(flatten)]
    params: ClassParams,
    #[command(flatten)]
    secrets: SecretsArg,
}

impl Creation {
    fn volume_ids(&self) -> Vec<&str> {
        self.volume_ids.iter().map(String::as_str).collect()
    }
}

fn run_client(command: impl Run) -> ExitCode {
    let format = command.format();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(command.run()) {
        Ok(reply) => {
            render::print(&reply, format);
            ExitCode::SUCCESS
        }
        Err(e) => {
            render::print_error(&e, format);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Paths of ceph-csi's files on this site, for commands that read Ceph directly.
#[derive(Args)]
struct CephCsiFiles {
    /// ceph-csi's config.json of this site.
    #[arg(long, env = "RBD_ADDONS_CEPH_CSI_CONFIG", default_value = "/etc/ceph-csi-config/config.json")]
    ceph_csi_config: PathBuf,
    #[arg(long, env = "RBD_ADDONS_CLUSTER_MAPPING", default_value = "/etc/ceph-csi-config/cluster-mapping.json")]
    cluster_mapping: PathBuf,
}

impl CephCsiFiles {
    fn paths(&self) -> (&Path, &Path) {
        (&self.ceph_csi_config, &self.cluster_mapping)
    }
}
