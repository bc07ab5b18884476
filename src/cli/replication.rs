//! `enable`, `disable`, `info`, `promote`, `demote`, `resync`, `destination`:
//! the Replication service, on one volume or on a volume group.

use clap::Args;
use rbd_addons::client::{ClientError, Connection, Params, Subject};
use serde_json::Value;

use super::{ClassParams, ClientArgs, Format, Run, SecretsArg, render};

/// What every replication command is about and carries.
#[derive(Args)]
struct Target {
    #[command(flatten)]
    client: ClientArgs,
    /// The ceph-csi volume handle (PV spec.csi.volumeHandle).
    #[arg(long, required_unless_present = "group_id", conflicts_with = "group_id")]
    volume_id: Option<String>,
    /// A volume group handle instead: the call acts on every member.
    #[arg(long)]
    group_id: Option<String>,
    #[command(flatten)]
    params: ClassParams,
    #[command(flatten)]
    secrets: SecretsArg,
}

impl Target {
    fn subject(&self) -> Subject {
        match (&self.volume_id, &self.group_id) {
            (Some(v), _) => Subject::volume(v),
            (None, Some(g)) => Subject::group(g),
            (None, None) => unreachable!("clap requires one of them"),
        }
    }

    async fn open(&self) -> Result<(Connection, Subject, Params), ClientError> {
        let params = self.params.parse()?;
        let conn = self.client.connect(Some(&self.secrets)).await?;
        Ok((conn, self.subject(), params))
    }
}

/// A role change's target and whether to force it.
#[derive(Args)]
struct Forcible {
    #[command(flatten)]
    target: Target,
    /// Promote even while the peer still holds the primary (unplanned
    /// failover), demote although the peer holds no copy yet (leaves no
    /// primary anywhere), or resync discarding this site's changes.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub(crate) struct Enable {
    #[command(flatten)]
    target: Target,
}

impl Run for Enable {
    fn format(&self) -> Format {
        self.target.client.output.format()
    }

    async fn run(self) -> Result<Value, ClientError> {
        let (conn, subject, params) = self.target.open().await?;
        conn.enable(&subject, params).await?;
        Ok(render::about(&subject, "replication", "enabled"))
    }
}

#[derive(Args)]
pub(crate) struct Disable {
    #[command(flatten)]
    target: Target,
}

impl Run for Disable {
    fn format(&self) -> Format {
        self.target.client.output.format()
    }

    async fn run(self) -> Result<Value, ClientError> {
        let (conn, subject, params) = self.target.open().await?;
        conn.disable(&subject, params).await?;
        Ok(render::about(&subject, "replication", "disabled"))
    }
}

#[derive(Args)]
pub(crate) struct Info {
    #[command(flatten)]
    target: Target,
}

impl Run for Info {
    fn format(&self) -> Format {
        self.target.client.output.format()
    }

    async fn run(self) -> Result<Value, ClientError> {
        let (conn, subject, _) = self.target.open().await?;
        Ok(render::info(&subject, &conn.info(&subject).await?))
    }
}

#[derive(Args)]
pub(crate) struct Destination {
    #[command(flatten)]
    target: Target,
}

impl Run for Destination {
    fn format(&self) -> Format {
        self.target.client.output.format()
    }

    async fn run(self) -> Result<Value, ClientError> {
        let (conn, subject, _) = self.target.open().await?;
        Ok(render::destination(&conn.destination(&subject).await?))
    }
}

#[derive(Args)]
pub(crate) struct Promote {
    #[command(flatten)]
    role: Forcible,
}

impl Run for Promote {
    fn format(&self) -> Format {
        self.role.target.client.output.format()
    }

    async fn run(self) -> Result<Value, ClientError> {
        let (conn, subject, params) = self.role.target.open().await?;
        conn.promote(&subject, self.role.force, params).await?;
        Ok(render::about(&subject, "role", "primary"))
    }
}

#[derive(Args)]
pub(crate) struct Demote {
    #[command(flatten)]
    role: Forcible,
}

impl Run for Demote {
    fn format(&self) -> Format {
        self.role.target.client.output.format()
    }

    async fn run(self) -> Result<Value, ClientError> {
        let (conn, subject, params) = self.role.target.open().await?;
        conn.demote(&subject, self.role.force, params).await?;
        Ok(render::about(&subject, "role", "secondary"))
    }
}

#[derive(Args)]
pub(crate) struct Resync {
    #[command(flatten)]
    role: Forcible,
}

impl Run for Resync {
    fn format(&self) -> Format {
        self.role.target.client.output.format()
    }

    async fn run(self) -> Result<Value, ClientError> {
        let (conn, subject, params) = self.role.target.open().await?;
        let ready = conn.resync(&subject, self.role.force, params).await?;
        Ok(render::about(&subject, "ready", ready))
    }
}
