//! `rbd-addons <command>`: calls a running server over its socket, the way the
//! csi-addons sidecar does, for operators and scripts.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::proto::csi::v1::group_controller_client::GroupControllerClient;
use crate::proto::csi::v1::{
    CreateVolumeGroupSnapshotRequest, DeleteVolumeGroupSnapshotRequest, GetVolumeGroupSnapshotRequest,
    GroupControllerGetCapabilitiesRequest, VolumeGroupSnapshot, group_controller_service_capability,
};
use crate::proto::fence::fence_controller_client::FenceControllerClient;
use crate::proto::fence::{Cidr, FenceClusterNetworkRequest, ListClusterFenceRequest, UnfenceClusterNetworkRequest};
use crate::proto::identity::identity_client::IdentityClient;
use crate::proto::identity::{
    GetCapabilitiesRequest, GetIdentityRequest, GetIdentityResponse, ProbeRequest, capability,
};
use crate::proto::replication::controller_client::ControllerClient;
use crate::proto::replication::replication_source::{Type as SourceType, VolumeGroupSource, VolumeSource};
use crate::proto::replication::*;
use crate::proto::volumegroup::controller_client::ControllerClient as GroupClient;
use crate::proto::volumegroup::{
    ControllerGetVolumeGroupRequest, CreateVolumeGroupRequest, DeleteVolumeGroupRequest, ListVolumeGroupsRequest,
    ModifyVolumeGroupMembershipRequest, VolumeGroup,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the server at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(Status),
}

impl ClientError {
    /// grpcurl's convention, so scripts can tell codes apart: 64 + code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Connect { .. } => 64 + Code::Unavailable as u8,
            Self::Rpc(s) => 64 + s.code() as u8,
        }
    }
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        Self::Rpc(s)
    }
}

/// The canonical upper-case name of a gRPC code, as grpc-go and grpcurl print it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What a replication command is about: one volume, or a volume group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Volume(String),
    Group(String),
}

impl Subject {
    pub fn volume(id: impl Into<String>) -> Self {
        Self::Volume(id.into())
    }

    pub fn group(id: impl Into<String>) -> Self {
        Self::Group(id.into())
    }

    fn source(&self) -> Option<ReplicationSource> {
        Some(ReplicationSource {
            r#type: Some(match self {
                Subject::Volume(v) => SourceType::Volume(VolumeSource { volume_id: v.clone() }),
                Subject::Group(g) => SourceType::Volumegroup(VolumeGroupSource { volume_group_id: g.clone() }),
            }),
        })
    }
}

/// Class parameters or secrets, as the protocol carries them.
pub type Params = HashMap<String, String>;

/// The peer-site handle(s) of a volume or group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Volume(String),
    /// The peer's group handle and each member's peer handle, by this site's.
    Group {
        group_id: String,
        volume_ids: HashMap<String, String>,
    },
    /// The server answered with no destination.
    None,
}

/// Allocated bytes of a volume before and after ControllerReclaimSpace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reclaimed {
    pub pre_usage_bytes: Option<i64>,
    pub post_usage_bytes: Option<i64>,
}

/// A group's consistency generations as each member holds them on one site.
#[derive(Debug, Clone)]
pub struct Generations {
    pub group_id: String,
    /// The fence post of the newest cut (group snapshot) every member holds.
    pub newest_common: Option<u64>,
    pub members: Vec<MemberGenerations>,
}

#[derive(Debug, Clone)]
pub struct MemberGenerations {
    pub volume_id: String,
    /// Oldest first.
    pub generations: Vec<HeldGeneration>,
}

#[derive(Debug, Clone, Copy)]
pub struct HeldGeneration {
    /// Its fence post's number.
    pub number: u64,
    /// Unix seconds of its fence post.
    pub taken: i64,
    /// The cuts (group snapshots) after the fence post the member holds.
    pub cuts: usize,
}

/// A connection to a running server, typed as the csi-addons sidecar calls it:
/// every request carries this connection's secrets and deadline.
#[derive(Clone)]
pub struct Connection {
    channel: Channel,
    timeout: Duration,
    secrets: Params,
}

impl Connection {
    pub async fn open(endpoint: &str, timeout: Duration) -> Result<Self, ClientError> {
        let path = crate::server::parse_endpoint(endpoint).map_err(|e| ClientError::Usage(e.to_string()))?;
        let channel = Endpoint::from_shared(format!("unix://{}", path.display()))
            .map_err(|e| ClientError::Usage(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| ClientError::Connect { endpoint: endpoint.to_owned(), reason: source_text(&e) })?;
        Ok(Self { channel, timeout, secrets: Params::new() })
    }

    /// The secret (userID, userKey) every later request carries.
    pub fn with_secrets(mut self, secrets: Params) -> Self {
        self.secrets = secrets;
        self
    }

    /// The channel, for a generated client of a call this type does not wrap.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        req
    }

    fn replication(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }

    fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel.clone())
    }

    pub async fn identity_info(&self) -> Result<GetIdentityResponse, Status> {
        Ok(self.identity().get_identity(self.request(GetIdentityRequest {})).await?.into_inner())
    }

    /// The advertised capabilities as `Kind/NAME` (e.g. `VolumeGroup/VOLUME_GROUP`).
    pub async fn capabilities(&self) -> Result<Vec<String>, Status> {
        let r = self.identity().get_capabilities(self.request(GetCapabilitiesRequest {})).await?.into_inner();
        Ok(r.capabilities.iter().filter_map(|c| c.r#type.as_ref()).map(capability_name).collect())
    }

    pub async fn probe(&self) -> Result<bool, Status> {
        Ok(self.identity().probe(self.request(ProbeRequest {})).await?.into_inner().ready.unwrap_or(true))
    }

    pub async fn enable(&self, subject: &Subject, parameters: Params) -> Result<(), Status> {
        let req = EnableVolumeReplicationRequest {
            parameters,
            secrets: self.secrets.clone(),
            replication_source: subject.source(),
            ..Default::default()
        };
        self.replication().enable_volume_replication(self.request(req)).await.map(drop)
    }

    pub async fn disable(&self, subject: &Subject, parameters: Params) -> Result<(), Status> {
        let req = DisableVolumeReplicationRequest {
            parameters,
            secrets: self.secrets.clone(),
            replication_source: subject.source(),
            ..Default::default()
        };
        self.replication().disable_volume_replication(self.request(req)).await.map(drop)
    }

    pub async fn promote(&self, subject: &Subject, force: bool, parameters: Params) -> Result<(), Status> {
        let req = PromoteVolumeRequest {
            force,
            parameters,
            secrets: self.secrets.clone(),
            replication_source: subject.source(),
            ..Default::default()
        };
        self.replication().promote_volume(self.request(req)).await.map(drop)
    }

    pub async fn demote(&self, subject: &Subject, force: bool, parameters: Params) -> Result<(), Status> {
        let req = DemoteVolumeRequest {
            force,
            parameters,
            secrets: self.secrets.clone(),
            replication_source: subject.source(),
            ..Default::default()
        };
        self.replication().demote_volume(self.request(req)).await.map(drop)
    }

    /// Whether the resynced copy is ready.
    pub async fn resync(&self, subject: &Subject, force: bool, parameters: Params) -> Result<bool, Status> {
        let req = ResyncVolumeRequest {
            force,
            parameters,
            secrets: self.secrets.clone(),
            replication_source: subject.source(),
            ..Default::default()
        };
        Ok(self.replication().resync_volume(self.request(req)).await?.into_inner().ready)
    }

    pub async fn info(&self, subject: &Subject) -> Result<GetVolumeReplicationInfoResponse, Status> {
        let req = GetVolumeReplicationInfoRequest {
            secrets: self.secrets.clone(),
            replication_source: subject.source(),
            ..Default::default()
        };
        Ok(self.replication().get_volume_replication_info(self.request(req)).await?.into_inner())
    }

    /// The peer-site handle(s) of a volume or group (GetReplicationDestinationInfo).
    pub async fn destination(&self, subject: &Subject) -> Result<Destination, Status> {
        use crate::proto::replication::replication_destination::Type;
        let req = GetReplicationDestinationInfoRequest {
            secrets: self.secrets.clone(),
            replication_source: subject.source(),
        };
        let r = self.replication().get_replication_destination_info(self.request(req)).await?.into_inner();
        Ok(match r.replication_destination.and_then(|d| d.r#type) {
            Some(Type::Volume(v)) => Destination::Volume(v.volume_id),
            Some(Type::Volumegroup(g)) => Destination::Group { group_id: g.volume_group_id, volume_ids: g.volume_ids },
            None => Destination::None,
        })
    }
}

/// The volume-group calls.
impl Connection {
    fn groups(&self) -> GroupClient<Channel> {
        GroupClient::new(self.channel.clone())
    }

    pub async fn group_create(
        &self,
        name: &str,
        volume_ids: &[&str],
        parameters: Params,
    ) -> Result<VolumeGroup, Status> {
        let req = CreateVolumeGroupRequest {
            name: name.to_owned(),
            parameters,
            secrets: self.secrets.clone(),
            volume_ids: owned(volume_ids),
        };
        Ok(self.groups().create_volume_group(self.request(req)).await?.into_inner().volume_group.unwrap_or_default())
    }

    /// Sets the group's members to exactly `volume_ids`.
    pub async fn group_modify(
        &self,
        group_id: &str,
        volume_ids: &[&str],
        parameters: Params,
    ) -> Result<VolumeGroup, Status> {
        let req = ModifyVolumeGroupMembershipRequest {
            volume_group_id: group_id.to_owned(),
            volume_ids: owned(volume_ids),
            secrets: self.secrets.clone(),
            parameters,
        };
        let r = self.groups().modify_volume_group_membership(self.request(req)).await?.into_inner();
        Ok(r.volume_group.unwrap_or_default())
    }

    pub async fn group_delete(&self, group_id: &str) -> Result<(), Status> {
        let req = DeleteVolumeGroupRequest { volume_group_id: group_id.to_owned(), secrets: self.secrets.clone() };
        self.groups().delete_volume_group(self.request(req)).await.map(drop)
    }

    pub async fn group_get(&self, group_id: &str) -> Result<VolumeGroup, Status> {
        let req =
            ControllerGetVolumeGroupRequest { volume_group_id: group_id.to_owned(), secrets: self.secrets.clone() };
        let r = self.groups().controller_get_volume_group(self.request(req)).await?.into_inner();
        Ok(r.volume_group.unwrap_or_default())
    }

    /// One page of groups and the token of the next (empty: the last page).
    pub async fn group_list(
        &self,
        max_entries: i32,
        starting_token: &str,
    ) -> Result<(Vec<VolumeGroup>, String), Status> {
        let req = ListVolumeGroupsRequest {
            max_entries,
            starting_token: starting_token.to_owned(),
            secrets: self.secrets.clone(),
        };
        let r = self.groups().list_volume_groups(self.request(req)).await?.into_inner();
        Ok((r.entries.into_iter().map(|e| e.volume_group.unwrap_or_default()).collect(), r.next_token))
    }
}

/// Fencing and space reclaim.
impl Connection {
    fn fences(&self) -> FenceControllerClient<Channel> {
        FenceControllerClient::new(self.channel.clone())
    }

    /// Fences (`fence: true`) or unfences CIDR blocks on a cluster.
    pub async fn fence(&self, fence: bool, cidrs: &[String], parameters: Params) -> Result<(), Status> {
        let cidrs: Vec<Cidr> = cidrs.iter().map(|c| Cidr { cidr: c.clone() }).collect();
        let secrets = self.secrets.clone();
        if fence {
            let req = FenceClusterNetworkRequest { parameters, secrets, cidrs };
            self.fences().fence_cluster_network(self.request(req)).await.map(drop)
        } else {
            let req = UnfenceClusterNetworkRequest { parameters, secrets, cidrs };
            self.fences().unfence_cluster_network(self.request(req)).await.map(drop)
        }
    }

    /// The CIDR blocks fenced on a cluster now.
    pub async fn fence_list(&self, parameters: Params) -> Result<Vec<String>, Status> {
        let req = ListClusterFenceRequest { parameters, secrets: self.secrets.clone() };
        let r = self.fences().list_cluster_fence(self.request(req)).await?.into_inner();
        Ok(r.cidrs.into_iter().map(|c| c.cidr).collect())
    }

    /// Sparsifies a volume (ControllerReclaimSpace).
    pub async fn reclaim_space(&self, volume_id: &str) -> Result<Reclaimed, Status> {
        use crate::proto::reclaimspace::ControllerReclaimSpaceRequest;
        use crate::proto::reclaimspace::reclaim_space_controller_client::ReclaimSpaceControllerClient;
        let req = ControllerReclaimSpaceRequest {
            volume_id: volume_id.to_owned(),
            secrets: self.secrets.clone(),
            ..Default::default()
        };
        let r = ReclaimSpaceControllerClient::new(self.channel.clone())
            .controller_reclaim_space(self.request(req))
            .await?
            .into_inner();
        Ok(Reclaimed {
            pre_usage_bytes: r.pre_usage.map(|u| u.usage_bytes),
            post_usage_bytes: r.post_usage.map(|u| u.usage_bytes),
        })
    }
}

/// `rbd-addons group generations`: reads the members' snapshots on this site
/// directly (no server involved), so it also works while the server is down.
/// Blocks on librados: call it off the async runtime.
pub fn generations(
    config: &Path,
    mapping: &Path,
    group_id: &str,
    secrets: &Params,
) -> Result<Generations, ClientError> {
    use crate::ceph::ConnectionPool;
    use crate::cephcsi::{Credentials, Resolver};
    use crate::groups;
    let fail = |e: crate::Error| ClientError::Rpc(crate::server::to_group_status(Some(group_id), &e));
    let id = groups::decode_group_id(group_id).map_err(fail)?;
    let creds = Credentials::from_secrets(secrets).map_err(|e| fail(crate::Error::Resolve(e.into())))?;
    let pool = std::sync::Arc::new(ConnectionPool::new(Duration::from_secs(60), Duration::from_secs(30)));
    let resolver = Resolver::new(config.to_owned(), Some(mapping.to_owned()), pool);
    let group = groups::find(&resolver, &id, &creds).map_err(fail)?;
    let members = groups::members_unguarded(&resolver, &group, &creds).map_err(fail)?;
    let held = groups::generations::held(&groups::open_members(&members).map_err(fail)?).map_err(fail)?;
    let newest_common = held.newest_common;
    let members: Vec<MemberGenerations> = held
        .members
        .into_iter()
        .map(|(volume_id, gens)| MemberGenerations {
            volume_id,
            generations: gens
                .iter()
                .map(|g| HeldGeneration { number: g.number, taken: g.taken, cuts: g.cuts })
                .collect(),
        })
        .collect();
    Ok(Generations { group_id: group_id.to_owned(), newest_common, members })
}

/// The volume group snapshot calls (csi.v1.GroupController), served on the
/// CSI front's socket (`serve --csi-endpoint`), not the csi-addons socket.
impl Connection {
    fn group_controller(&self) -> GroupControllerClient<Channel> {
        GroupControllerClient::new(self.channel.clone())
    }

    /// The advertised RPC capabilities by name (e.g. `CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT`).
    pub async fn group_snapshot_capabilities(&self) -> Result<Vec<String>, Status> {
        let r = self
            .group_controller()
            .group_controller_get_capabilities(self.request(GroupControllerGetCapabilitiesRequest {}))
            .await?
            .into_inner();
        Ok(r.capabilities
            .iter()
            .filter_map(|c| match &c.r#type {
                Some(group_controller_service_capability::Type::Rpc(rpc)) => {
                    group_controller_service_capability::rpc::Type::try_from(rpc.r#type)
                        .ok()
                        .map(|t| t.as_str_name().to_owned())
                }
                None => None,
            })
            .collect())
    }

    pub async fn group_snapshot_create(
        &self,
        name: &str,
        source_volume_ids: &[&str],
        parameters: Params,
    ) -> Result<VolumeGroupSnapshot, Status> {
        let req = CreateVolumeGroupSnapshotRequest {
            name: name.to_owned(),
            source_volume_ids: owned(source_volume_ids),
            secrets: self.secrets.clone(),
            parameters,
        };
        let r = self.group_controller().create_volume_group_snapshot(self.request(req)).await?.into_inner();
        Ok(r.group_snapshot.unwrap_or_default())
    }

    pub async fn group_snapshot_get(&self, group_snapshot_id: &str) -> Result<VolumeGroupSnapshot, Status> {
        let req = GetVolumeGroupSnapshotRequest {
            group_snapshot_id: group_snapshot_id.to_owned(),
            snapshot_ids: Vec::new(),
            secrets: self.secrets.clone(),
        };
        let r = self.group_controller().get_volume_group_snapshot(self.request(req)).await?.into_inner();
        Ok(r.group_snapshot.unwrap_or_default())
    }

    /// `snapshot_ids` empty: whatever the group snapshot holds.
    pub async fn group_snapshot_delete(&self, group_snapshot_id: &str, snapshot_ids: &[&str]) -> Result<(), Status> {
        let req = DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: group_snapshot_id.to_owned(),
            snapshot_ids: owned(snapshot_ids),
            secrets: self.secrets.clone(),
        };
        self.group_controller().delete_volume_group_snapshot(self.request(req)).await.map(drop)
    }
}

fn owned(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

fn capability_name(t: &capability::Type) -> String {
    match t {
        capability::Type::Service(s) => format!("Service/{}", service_name(s.r#type)),
        capability::Type::VolumeReplication(v) => {
            let name =
                capability::volume_replication::Type::try_from(v.r#type).map(|t| t.as_str_name()).unwrap_or("UNKNOWN");
            format!("VolumeReplication/{name}")
        }
        capability::Type::VolumeGroup(v) => {
            let name = capability::volume_group::Type::try_from(v.r#type).map(|t| t.as_str_name()).unwrap_or("UNKNOWN");
            format!("VolumeGroup/{name}")
        }
        capability::Type::ReclaimSpace(r) => {
            let name =
                capability::reclaim_space::Type::try_from(r.r#type).map(|t| t.as_str_name()).unwrap_or("UNKNOWN");
            format!("ReclaimSpace/{name}")
        }
        capability::Type::NetworkFence(f) => {
            let name =
                capability::network_fence::Type::try_from(f.r#type).map(|t| t.as_str_name()).unwrap_or("UNKNOWN");
            format!("NetworkFence/{name}")
        }
        capability::Type::EncryptionKeyRotation(_) => "EncryptionKeyRotation".to_owned(),
    }
}

fn service_name(t: i32) -> &'static str {
    capability::service::Type::try_from(t).map(|t| t.as_str_name()).unwrap_or("UNKNOWN")
}

fn source_text(e: &dyn std::error::Error) -> String {
    // Transport errors repeat their cause at each level; show each text once.
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Reads `userID`/`userKey` (and anything else the secret holds) from a file:
/// a JSON object, or `key=value` lines. Secrets never come from argv, where
/// any user of the machine could read them in the process list.
pub fn read_secrets(path: &Path) -> Result<Params, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Usage(format!("cannot read secrets file {}: {}", path.display(), e.kind())))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let map: HashMap<String, Value> = serde_json::from_str(trimmed).map_err(|_| {
            ClientError::Usage(format!("secrets file {} is not a JSON object of strings", path.display()))
        })?;
        return map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                _ => Err(ClientError::Usage(format!("secret {k:?} in {} is not a string", path.display()))),
            })
            .collect();
    }
    let mut map = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The error names the line, never its content: it may hold the key.
        let bad = || ClientError::Usage(format!("line {} of secrets file {} is not key=value", n + 1, path.display()));
        let (k, v) = line.split_once('=').ok_or_else(bad)?;
        let (k, v) = (k.trim(), v.trim());
        // Secret names are identifiers; anything else is a mistake such as a
        // bare key or "userKey: ..." (YAML). A value of only '=' is the tail of
        // a bare base64 key, not a value.
        let key_ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !key_ok || v.is_empty() || v.bytes().all(|b| b == b'=') {
            return Err(bad());
        }
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(map)
}

/// `--param k=v` values into a map.
pub fn parse_params(pairs: &[String]) -> Result<Params, ClientError> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| ClientError::Usage(format!("--param {p:?} is not key=value")))
        })
        .collect()
}

/// Unix seconds as an RFC 3339 UTC time.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_304_186), "2026-11-21T23:36:26Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn reads_secrets_files_without_echoing_them() {
        let dir = std::env::temp_dir().join(format!("rbd-addons-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json_file = dir.join("s.json");
        std::fs::write(&json_file, r#"{"userID": "csi", "userKey": "QUJD"}"#).unwrap();
        let m = read_secrets(&json_file).unwrap();
        assert_eq!((m["userID"].as_str(), m["userKey"].as_str()), ("csi", "QUJD"));
        let kv = dir.join("s.env");
        std::fs::write(&kv, "# a comment\nuserID=csi\nuserKey = QUJD==\n").unwrap();
        assert_eq!(read_secrets(&kv).unwrap()["userKey"], "QUJD==");
        for broken in
            ["userID=csi\nSECRETVALUE\n", "userID=csi\nQUJDSECRETVALUE==\n", "userID=csi\nuserKey: SECRET==\n"]
        {
            std::fs::write(&kv, broken).unwrap();
            let err = read_secrets(&kv).unwrap_err().to_string();
            assert!(err.contains("line 2") && !err.contains("SECRET"), "{err}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn params_and_exit_codes() {
        let p = parse_params(&["a=1".into(), "b=x=y".into()]).unwrap();
        assert_eq!(p["b"], "x=y");
        assert!(parse_params(&["novalue".into()]).is_err());
        assert_eq!(ClientError::Rpc(Status::not_found("x")).exit_code(), 69);
        assert_eq!(ClientError::Rpc(Status::not_found("x")).to_string(), "NOT_FOUND: x");
    }
}
