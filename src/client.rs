//! `rbd-addons <command>`: calls a running server over its socket, the way the
//! csi-addons sidecar does, for operators and scripts.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
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
use crate::proto::identity::{GetCapabilitiesRequest, GetIdentityRequest, ProbeRequest, capability};
use crate::proto::replication::controller_client::ControllerClient;
use crate::proto::replication::get_volume_replication_info_response::Status as InfoStatus;
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
    fn source(&self) -> Option<ReplicationSource> {
        Some(ReplicationSource {
            r#type: Some(match self {
                Subject::Volume(v) => SourceType::Volume(VolumeSource { volume_id: v.clone() }),
                Subject::Group(g) => SourceType::Volumegroup(VolumeGroupSource { volume_group_id: g.clone() }),
            }),
        })
    }

    /// The output field naming the subject.
    fn field(&self) -> (&'static str, &str) {
        match self {
            Subject::Volume(v) => ("volume_id", v),
            Subject::Group(g) => ("group_id", g),
        }
    }

    fn with(&self, mut fields: Value) -> Value {
        let (k, v) = self.field();
        if let Value::Object(map) = &mut fields {
            map.insert(k.to_owned(), json!(v));
        }
        fields
    }
}

pub struct Connection {
    channel: Channel,
    timeout: Duration,
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
        Ok(Self { channel, timeout })
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

    pub async fn identity_info(&self) -> Result<Value, ClientError> {
        let r = self.identity().get_identity(self.request(GetIdentityRequest {})).await?.into_inner();
        Ok(json!({"name": r.name, "vendor_version": r.vendor_version, "manifest": r.manifest}))
    }

    pub async fn capabilities(&self) -> Result<Value, ClientError> {
        let r = self.identity().get_capabilities(self.request(GetCapabilitiesRequest {})).await?.into_inner();
        let caps: Vec<String> = r.capabilities.iter().filter_map(|c| c.r#type.as_ref()).map(capability_name).collect();
        Ok(json!({"capabilities": caps}))
    }

    pub async fn probe(&self) -> Result<Value, ClientError> {
        let r = self.identity().probe(self.request(ProbeRequest {})).await?.into_inner();
        Ok(json!({"ready": r.ready.unwrap_or(true)}))
    }

    pub async fn enable(
        &self,
        subject: &Subject,
        parameters: HashMap<String, String>,
        secrets: HashMap<String, String>,
    ) -> Result<Value, ClientError> {
        let req = EnableVolumeReplicationRequest {
            parameters,
            secrets,
            replication_source: subject.source(),
            ..Default::default()
        };
        self.replication().enable_volume_replication(self.request(req)).await?;
        Ok(subject.with(json!({"replication": "enabled"})))
    }

    pub async fn disable(
        &self,
        subject: &Subject,
        parameters: HashMap<String, String>,
        secrets: HashMap<String, String>,
    ) -> Result<Value, ClientError> {
        let req = DisableVolumeReplicationRequest {
            parameters,
            secrets,
            replication_source: subject.source(),
            ..Default::default()
        };
        self.replication().disable_volume_replication(self.request(req)).await?;
        Ok(subject.with(json!({"replication": "disabled"})))
    }

    pub async fn promote(
        &self,
        subject: &Subject,
        force: bool,
        parameters: HashMap<String, String>,
        secrets: HashMap<String, String>,
    ) -> Result<Value, ClientError> {
        let req = PromoteVolumeRequest {
            force,
            parameters,
            secrets,
            replication_source: subject.source(),
            ..Default::default()
        };
        self.replication().promote_volume(self.request(req)).await?;
        Ok(subject.with(json!({"role": "primary"})))
    }

    pub async fn demote(
        &self,
        subject: &Subject,
        force: bool,
        parameters: HashMap<String, String>,
        secrets: HashMap<String, String>,
    ) -> Result<Value, ClientError> {
        let req = DemoteVolumeRequest {
            force,
            parameters,
            secrets,
            replication_source: subject.source(),
            ..Default::default()
        };
        self.replication().demote_volume(self.request(req)).await?;
        Ok(subject.with(json!({"role": "secondary"})))
    }

    pub async fn resync(
        &self,
        subject: &Subject,
        force: bool,
        parameters: HashMap<String, String>,
        secrets: HashMap<String, String>,
    ) -> Result<Value, ClientError> {
        let req = ResyncVolumeRequest {
            force,
            parameters,
            secrets,
            replication_source: subject.source(),
            ..Default::default()
        };
        let r = self.replication().resync_volume(self.request(req)).await?.into_inner();
        Ok(subject.with(json!({"ready": r.ready})))
    }

    pub async fn info(&self, subject: &Subject, secrets: HashMap<String, String>) -> Result<Value, ClientError> {
        let req =
            GetVolumeReplicationInfoRequest { secrets, replication_source: subject.source(), ..Default::default() };
        let r = self.replication().get_volume_replication_info(self.request(req)).await?.into_inner();
        let status = InfoStatus::try_from(r.status).unwrap_or(InfoStatus::Unknown);
        let last = r.last_sync_time.map(|t| t.seconds);
        Ok(subject.with(json!({
            "last_sync_time": last.map(rfc3339),
            "last_sync_age_seconds": last.map(|t| crate::unix_now() - t),
            "last_sync_duration_seconds": r.last_sync_duration.map(|d| d.seconds),
            "last_sync_bytes": r.last_sync_bytes,
            "status": status.as_str_name(),
            "status_message": r.status_message,
        })))
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
        volume_ids: Vec<String>,
        parameters: HashMap<String, String>,
        secrets: HashMap<String, String>,
    ) -> Result<Value, ClientError> {
        let req = CreateVolumeGroupRequest { name: name.to_owned(), parameters, secrets, volume_ids };
        let r = self.groups().create_volume_group(self.request(req)).await?.into_inner();
        Ok(group_json(r.volume_group))
    }

    pub async fn group_modify(
        &self,
        group_id: &str,
        volume_ids: Vec<String>,
        parameters: HashMap<String, String>,
        secrets: HashMap<String, String>,
    ) -> Result<Value, ClientError> {
        let req = ModifyVolumeGroupMembershipRequest {
            volume_group_id: group_id.to_owned(),
            volume_ids,
            secrets,
            parameters,
        };
        let r = self.groups().modify_volume_group_membership(self.request(req)).await?.into_inner();
        Ok(group_json(r.volume_group))
    }

    pub async fn group_delete(&self, group_id: &str, secrets: HashMap<String, String>) -> Result<Value, ClientError> {
        let req = DeleteVolumeGroupRequest { volume_group_id: group_id.to_owned(), secrets };
        self.groups().delete_volume_group(self.request(req)).await?;
        Ok(json!({"group_id": group_id, "deleted": true}))
    }

    pub async fn group_get(&self, group_id: &str, secrets: HashMap<String, String>) -> Result<Value, ClientError> {
        let req = ControllerGetVolumeGroupRequest { volume_group_id: group_id.to_owned(), secrets };
        let r = self.groups().controller_get_volume_group(self.request(req)).await?.into_inner();
        Ok(group_json(r.volume_group))
    }

    pub async fn group_list(
        &self,
        max_entries: i32,
        starting_token: String,
        secrets: HashMap<String, String>,
    ) -> Result<Value, ClientError> {
        let req = ListVolumeGroupsRequest { max_entries, starting_token, secrets };
        let r = self.groups().list_volume_groups(self.request(req)).await?.into_inner();
        let groups: Vec<Value> = r.entries.into_iter().map(|e| group_json(e.volume_group)).collect();
        let ids: Vec<Value> = groups.iter().map(|g| g["group_id"].clone()).collect();
        Ok(json!({"groups": ids, "details": groups, "next_token": Some(r.next_token).filter(|t| !t.is_empty())}))
    }

    /// The peer-site handle(s) of a volume or group (GetReplicationDestinationInfo).
    pub async fn destination(&self, subject: &Subject, secrets: HashMap<String, String>) -> Result<Value, ClientError> {
        use crate::proto::replication::replication_destination::Type;
        let req = GetReplicationDestinationInfoRequest { secrets, replication_source: subject.source() };
        let r = self.replication().get_replication_destination_info(self.request(req)).await?.into_inner();
        Ok(match r.replication_destination.and_then(|d| d.r#type) {
            Some(Type::Volume(v)) => json!({"destination_volume_id": v.volume_id}),
            Some(Type::Volumegroup(g)) => {
                json!({"destination_group_id": g.volume_group_id, "destination_volume_ids": g.volume_ids})
            }
            None => json!({}),
        })
    }

    /// Fences (`fence: true`) or unfences CIDR blocks on a cluster.
    pub async fn fence(
        &self,
        fence: bool,
        cidrs: &[String],
        parameters: HashMap<String, String>,
        secrets: HashMap<String, String>,
    ) -> Result<Value, ClientError> {
        let cidrs: Vec<Cidr> = cidrs.iter().map(|c| Cidr { cidr: c.clone() }).collect();
        let mut client = FenceControllerClient::new(self.channel.clone());
        if fence {
            let req = FenceClusterNetworkRequest { parameters, secrets, cidrs: cidrs.clone() };
            client.fence_cluster_network(self.request(req)).await?;
        } else {
            let req = UnfenceClusterNetworkRequest { parameters, secrets, cidrs: cidrs.clone() };
            client.unfence_cluster_network(self.request(req)).await?;
        }
        let shown: Vec<&str> = cidrs.iter().map(|c| c.cidr.as_str()).collect();
        Ok(json!({"cidrs": shown, "fenced": fence}))
    }

    /// Sparsifies a volume (ControllerReclaimSpace): allocated bytes before and after.
    pub async fn reclaim_space(&self, volume_id: &str, secrets: HashMap<String, String>) -> Result<Value, ClientError> {
        use crate::proto::reclaimspace::ControllerReclaimSpaceRequest;
        use crate::proto::reclaimspace::reclaim_space_controller_client::ReclaimSpaceControllerClient;
        let req = ControllerReclaimSpaceRequest { volume_id: volume_id.to_owned(), secrets, ..Default::default() };
        let r = ReclaimSpaceControllerClient::new(self.channel.clone())
            .controller_reclaim_space(self.request(req))
            .await?
            .into_inner();
        let bytes = |u: Option<crate::proto::reclaimspace::StorageConsumption>| u.map(|u| u.usage_bytes);
        Ok(
            json!({"volume_id": volume_id, "pre_usage_bytes": bytes(r.pre_usage), "post_usage_bytes": bytes(r.post_usage)}),
        )
    }

    /// The CIDR blocks fenced on a cluster now.
    pub async fn fence_list(
        &self,
        parameters: HashMap<String, String>,
        secrets: HashMap<String, String>,
    ) -> Result<Value, ClientError> {
        let req = ListClusterFenceRequest { parameters, secrets };
        let r = FenceControllerClient::new(self.channel.clone()).list_cluster_fence(self.request(req)).await?;
        let cidrs: Vec<String> = r.into_inner().cidrs.into_iter().map(|c| c.cidr).collect();
        Ok(json!({ "cidrs": cidrs }))
    }
}

/// `rbd-addons group generations`: reads the members' snapshots on this site
/// directly (no server involved), so it also works while the server is down.
pub fn generations(
    config: &Path,
    mapping: &Path,
    group_id: &str,
    secrets: &HashMap<String, String>,
) -> Result<Value, ClientError> {
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
    let mut lines = Vec::new();
    for (volume_id, gens) in &held {
        let text: Vec<String> = gens
            .iter()
            .map(|g| format!("{}@{}{}", g.number, rfc3339(g.taken), if g.complete { "" } else { " (fence post only)" }))
            .collect();
        lines.push(format!("{volume_id}: {}", if text.is_empty() { "none".to_owned() } else { text.join(" ") }));
    }
    let complete_everywhere = held
        .iter()
        .map(|(_, g)| g.iter().filter(|g| g.complete).map(|g| g.number).collect::<std::collections::BTreeSet<_>>())
        .reduce(|a, b| a.intersection(&b).copied().collect())
        .and_then(|s| s.last().copied());
    Ok(json!({
        "group_id": group_id,
        "newest_common_generation": complete_everywhere,
        "members": lines,
    }))
}

/// The volume group snapshot calls (csi.v1.GroupController), served on the
/// CSI front's socket (`serve --csi-endpoint`), not the csi-addons socket.
impl Connection {
    fn group_controller(&self) -> GroupControllerClient<Channel> {
        GroupControllerClient::new(self.channel.clone())
    }

    pub async fn group_snapshot_capabilities(&self) -> Result<Value, ClientError> {
        let r = self
            .group_controller()
            .group_controller_get_capabilities(self.request(GroupControllerGetCapabilitiesRequest {}))
            .await?
            .into_inner();
        let names: Vec<&str> = r
            .capabilities
            .iter()
            .filter_map(|c| match &c.r#type {
                Some(group_controller_service_capability::Type::Rpc(rpc)) => {
                    group_controller_service_capability::rpc::Type::try_from(rpc.r#type).ok().map(|t| t.as_str_name())
                }
                None => None,
            })
            .collect();
        Ok(json!({"capabilities": names}))
    }

    pub async fn group_snapshot_create(
        &self,
        name: &str,
        source_volume_ids: Vec<String>,
        parameters: HashMap<String, String>,
        secrets: HashMap<String, String>,
    ) -> Result<Value, ClientError> {
        let req = CreateVolumeGroupSnapshotRequest { name: name.to_owned(), source_volume_ids, secrets, parameters };
        let r = self.group_controller().create_volume_group_snapshot(self.request(req)).await?.into_inner();
        Ok(group_snapshot_json(r.group_snapshot))
    }

    pub async fn group_snapshot_get(
        &self,
        group_snapshot_id: &str,
        secrets: HashMap<String, String>,
    ) -> Result<Value, ClientError> {
        let req = GetVolumeGroupSnapshotRequest {
            group_snapshot_id: group_snapshot_id.to_owned(),
            snapshot_ids: Vec::new(),
            secrets,
        };
        let r = self.group_controller().get_volume_group_snapshot(self.request(req)).await?.into_inner();
        Ok(group_snapshot_json(r.group_snapshot))
    }

    /// `snapshot_ids` empty: whatever the group snapshot holds.
    pub async fn group_snapshot_delete(
        &self,
        group_snapshot_id: &str,
        snapshot_ids: Vec<String>,
        secrets: HashMap<String, String>,
    ) -> Result<Value, ClientError> {
        let req =
            DeleteVolumeGroupSnapshotRequest { group_snapshot_id: group_snapshot_id.to_owned(), snapshot_ids, secrets };
        self.group_controller().delete_volume_group_snapshot(self.request(req)).await?;
        Ok(json!({"group_snapshot_id": group_snapshot_id, "deleted": true}))
    }
}

fn group_snapshot_json(g: Option<VolumeGroupSnapshot>) -> Value {
    let g = g.unwrap_or_default();
    let created = g.creation_time.map(|t| rfc3339(t.seconds));
    let snapshots: Vec<Value> = g
        .snapshots
        .iter()
        .map(|s| {
            json!({
                "snapshot_id": s.snapshot_id,
                "source_volume_id": s.source_volume_id,
                "size_bytes": s.size_bytes,
                "ready_to_use": s.ready_to_use,
                "group_snapshot_id": s.group_snapshot_id,
            })
        })
        .collect();
    json!({
        "group_snapshot_id": g.group_snapshot_id,
        "ready_to_use": g.ready_to_use,
        "creation_time": created,
        "snapshots": snapshots,
    })
}

fn group_json(g: Option<VolumeGroup>) -> Value {
    let g = g.unwrap_or_default();
    let volumes: Vec<&str> = g.volumes.iter().map(|v| v.volume_id.as_str()).collect();
    json!({"group_id": g.volume_group_id, "volumes": volumes})
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
pub fn read_secrets(path: &Path) -> Result<HashMap<String, String>, ClientError> {
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
pub fn parse_params(pairs: &[String]) -> Result<HashMap<String, String>, ClientError> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| ClientError::Usage(format!("--param {p:?} is not key=value")))
        })
        .collect()
}

/// Human output: one `key: value` line per field, nulls left out.
pub fn human(v: &Value) -> String {
    let Value::Object(map) = v else {
        return v.to_string();
    };
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}: {s}"),
            // One level down (GetIdentity's manifest): `manifest.key: value`.
            Value::Object(inner) => inner
                .iter()
                .map(|(ik, iv)| format!("{k}.{ik}: {}", iv.as_str().map_or(iv.to_string(), str::to_owned)))
                .collect::<Vec<_>>()
                .join("\n"),
            Value::Array(items) => {
                let parts: Vec<String> =
                    items.iter().map(|i| i.as_str().map_or(i.to_string(), str::to_owned)).collect();
                format!("{k}: {}", parts.join(", "))
            }
            other => format!("{k}: {other}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
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
