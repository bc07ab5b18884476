//! `reclaim-space`: the ReclaimSpace service.

use clap::Args;
use rbd_addons::client::ClientError;
use serde_json::Value;

use super::{ClientArgs, Format, Run, SecretsArg, render};

#[derive(Args)]
pub(crate) struct ReclaimSpace {
    #[command(flatten)]
    client: ClientArgs,
    /// The ceph-csi volume handle (PV spec.csi.volumeHandle).
    #[arg(long)]
    volume_id: String,
    #[command(flatten)]
    secrets: SecretsArg,
}

impl Run for ReclaimSpace {
    fn format(&self) -> Format {
        self.client.output.format()
    }

    async fn run(self) -> Result<Value, ClientError> {
        let conn = self.client.connect(Some(&self.secrets)).await?;
        Ok(render::reclaimed(&self.volume_id, &conn.reclaim_space(&self.volume_id).await?))
    }
}
