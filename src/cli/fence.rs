//! `fence add|remove|list`: the NetworkFence service.

use clap::{Args, Subcommand};
use rbd_addons::client::ClientError;
use serde_json::Value;

use super::{ClassParams, ClientArgs, Format, Run, SecretsArg, render};

#[derive(Subcommand)]
pub(crate) enum FenceCommand {
    /// Fence CIDR blocks (FenceClusterNetwork); fencing again renews.
    Add(Blocks),
    /// Unfence CIDR blocks (UnfenceClusterNetwork); unfenced ones are fine.
    Remove(Blocks),
    /// List the fenced CIDR blocks (ListClusterFence).
    List(Cluster),
}

#[derive(Args)]
pub(crate) struct Cluster {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    params: ClassParams,
    #[command(flatten)]
    secrets: SecretsArg,
}

#[derive(Args)]
pub(crate) struct Blocks {
    #[command(flatten)]
    cluster: Cluster,
    /// A CIDR block such as 192.0.2.0/24 (repeatable).
    #[arg(long = "cidr", required = true)]
    cidrs: Vec<String>,
}

impl Run for FenceCommand {
    fn format(&self) -> Format {
        match self {
            Self::Add(b) | Self::Remove(b) => b.cluster.client.output.format(),
            Self::List(c) => c.client.output.format(),
        }
    }

    async fn run(self) -> Result<Value, ClientError> {
        let (fence, cluster, cidrs) = match self {
            Self::Add(b) => (Some(true), b.cluster, b.cidrs),
            Self::Remove(b) => (Some(false), b.cluster, b.cidrs),
            Self::List(c) => (None, c, Vec::new()),
        };
        let params = cluster.params.parse()?;
        let conn = cluster.client.connect(Some(&cluster.secrets)).await?;
        match fence {
            Some(fence) => {
                conn.fence(fence, &cidrs, params).await?;
                Ok(render::fenced(&cidrs, fence))
            }
            None => Ok(render::fence_list(&conn.fence_list(params).await?)),
        }
    }
}
