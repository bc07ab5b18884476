//! `identity`, `capabilities`, `probe`: the Identity service.

use clap::Args;
use rbd_addons::client::ClientError;
use serde_json::Value;

use super::{ClientArgs, Format, Run, render};

#[derive(Args)]
pub(crate) struct Identity {
    #[command(flatten)]
    client: ClientArgs,
}

impl Run for Identity {
    fn format(&self) -> Format {
        self.client.output.format()
    }

    async fn run(self) -> Result<Value, ClientError> {
        let conn = self.client.connect(None).await?;
        Ok(render::identity(&conn.identity_info().await?))
    }
}

#[derive(Args)]
pub(crate) struct Capabilities {
    #[command(flatten)]
    client: ClientArgs,
}

impl Run for Capabilities {
    fn format(&self) -> Format {
        self.client.output.format()
    }

    async fn run(self) -> Result<Value, ClientError> {
        let conn = self.client.connect(None).await?;
        Ok(render::capabilities(&conn.capabilities().await?))
    }
}

#[derive(Args)]
pub(crate) struct Probe {
    #[command(flatten)]
    client: ClientArgs,
}

impl Run for Probe {
    fn format(&self) -> Format {
        self.client.output.format()
    }

    async fn run(self) -> Result<Value, ClientError> {
        let conn = self.client.connect(None).await?;
        Ok(render::ready(conn.probe().await?))
    }
}
