//! `group-snapshot create|get|delete|capabilities`: csi.v1.GroupController,
//! on the CSI front's socket.

use clap::{Args, Subcommand};
use rbd_addons::client::ClientError;
use serde_json::Value;

use super::{ClientArgs, Creation, Format, Run, SecretsArg, render};

#[derive(Subcommand)]
pub(crate) enum GroupSnapshotCommand {
    /// Take a crash-consistent snapshot of volumes (CreateVolumeGroupSnapshot);
    /// idempotent by name. Each member restores with csi-rbdplugin.
    Create(Creation),
    /// Show a group snapshot and whether every member is ready (GetVolumeGroupSnapshot).
    Get(SnapshotId),
    /// Delete a group snapshot and its member snapshots (DeleteVolumeGroupSnapshot).
    Delete(SnapshotId),
    /// List what the CSI front's GroupController advertises.
    Capabilities(ClientArgs),
}

#[derive(Args)]
pub(crate) struct SnapshotId {
    #[command(flatten)]
    client: ClientArgs,
    /// The group snapshot handle (VolumeGroupSnapshotContent's volumeGroupSnapshotHandle).
    #[arg(long)]
    group_snapshot_id: String,
    #[command(flatten)]
    secrets: SecretsArg,
}

impl Run for GroupSnapshotCommand {
    fn format(&self) -> Format {
        match self {
            Self::Create(a) => a.client.output.format(),
            Self::Get(a) | Self::Delete(a) => a.client.output.format(),
            Self::Capabilities(a) => a.output.format(),
        }
    }

    async fn run(self) -> Result<Value, ClientError> {
        match self {
            Self::Create(a) => {
                if a.volume_ids.is_empty() {
                    return Err(ClientError::Usage("a group snapshot needs at least one --volume-id".into()));
                }
                let params = a.params.parse()?;
                let conn = a.client.connect(Some(&a.secrets)).await?;
                Ok(render::group_snapshot(&conn.group_snapshot_create(&a.name, &a.volume_ids(), params).await?))
            }
            Self::Get(a) => {
                let conn = a.client.connect(Some(&a.secrets)).await?;
                Ok(render::group_snapshot(&conn.group_snapshot_get(&a.group_snapshot_id).await?))
            }
            Self::Delete(a) => {
                let conn = a.client.connect(Some(&a.secrets)).await?;
                conn.group_snapshot_delete(&a.group_snapshot_id, &[]).await?;
                Ok(render::deleted("group_snapshot_id", &a.group_snapshot_id))
            }
            Self::Capabilities(a) => {
                Ok(render::capabilities(&a.connect(None).await?.group_snapshot_capabilities().await?))
            }
        }
    }
}
