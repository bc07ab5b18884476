//! `group create|modify|delete|get|list|generations`: the VolumeGroup service,
//! and the consistency generations read from Ceph directly.

use clap::{Args, Subcommand};
use rbd_addons::client::{self, ClientError};
use serde_json::Value;

use super::{CephCsiFiles, ClassParams, ClientArgs, Creation, Format, OutputArgs, Run, SecretsArg, render};

#[derive(Subcommand)]
pub(crate) enum GroupCommand {
    /// Create a group (CreateVolumeGroup); idempotent by name.
    Create(Creation),
    /// Set a group's members to exactly the given volumes (ModifyVolumeGroupMembership).
    Modify(Modify),
    /// Delete an empty group (DeleteVolumeGroup).
    Delete(GroupId),
    /// Show a group and its members (ControllerGetVolumeGroup).
    Get(GroupId),
    /// List the groups of every cluster in the server's config (ListVolumeGroups).
    List(List),
    /// List the consistency generations on each member, read from Ceph directly.
    Generations(Generations),
}

#[derive(Args)]
pub(crate) struct GroupId {
    #[command(flatten)]
    client: ClientArgs,
    /// The group handle (VolumeGroupReplicationContent's volumeGroupReplicationHandle).
    #[arg(long)]
    group_id: String,
    #[command(flatten)]
    secrets: SecretsArg,
}

#[derive(Args)]
pub(crate) struct Modify {
    #[command(flatten)]
    group: GroupId,
    /// A member volume handle (repeatable); none removes every member.
    #[arg(long = "volume-id")]
    volume_ids: Vec<String>,
    #[command(flatten)]
    params: ClassParams,
}

#[derive(Args)]
pub(crate) struct List {
    #[command(flatten)]
    client: ClientArgs,
    #[arg(long, default_value_t = 0)]
    max_entries: i32,
    #[arg(long, default_value = "")]
    starting_token: String,
    #[command(flatten)]
    secrets: SecretsArg,
}

#[derive(Args)]
pub(crate) struct Generations {
    #[arg(long)]
    group_id: String,
    #[command(flatten)]
    secrets: SecretsArg,
    #[command(flatten)]
    files: CephCsiFiles,
    #[command(flatten)]
    output: OutputArgs,
}

impl Run for GroupCommand {
    fn format(&self) -> Format {
        match self {
            Self::Create(a) => a.client.output.format(),
            Self::Modify(a) => a.group.client.output.format(),
            Self::Delete(a) | Self::Get(a) => a.client.output.format(),
            Self::List(a) => a.client.output.format(),
            Self::Generations(a) => a.output.format(),
        }
    }

    async fn run(self) -> Result<Value, ClientError> {
        match self {
            Self::Create(a) => {
                let params = a.params.parse()?;
                let conn = a.client.connect(Some(&a.secrets)).await?;
                Ok(render::group(&conn.group_create(&a.name, &a.volume_ids(), params).await?))
            }
            Self::Modify(a) => {
                let params = a.params.parse()?;
                let conn = a.group.client.connect(Some(&a.group.secrets)).await?;
                let ids: Vec<&str> = a.volume_ids.iter().map(String::as_str).collect();
                Ok(render::group(&conn.group_modify(&a.group.group_id, &ids, params).await?))
            }
            Self::Delete(a) => {
                a.client.connect(Some(&a.secrets)).await?.group_delete(&a.group_id).await?;
                Ok(render::deleted("group_id", &a.group_id))
            }
            Self::Get(a) => {
                let conn = a.client.connect(Some(&a.secrets)).await?;
                Ok(render::group(&conn.group_get(&a.group_id).await?))
            }
            Self::List(a) => {
                let conn = a.client.connect(Some(&a.secrets)).await?;
                let (groups, next) = conn.group_list(a.max_entries, &a.starting_token).await?;
                Ok(render::group_list(&groups, &next))
            }
            Self::Generations(a) => {
                let secrets = client::read_secrets(&a.secrets.secrets_file)?;
                // Reads Ceph directly: librados blocks, so off the runtime.
                let held = tokio::task::spawn_blocking(move || {
                    let (config, mapping) = a.files.paths();
                    client::generations(config, mapping, &a.group_id, &secrets)
                })
                .await
                .map_err(|e| ClientError::Usage(format!("generations: {e}")))??;
                Ok(render::generations(&held))
            }
        }
    }
}
