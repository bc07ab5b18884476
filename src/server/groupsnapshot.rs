//! csi.v1.GroupController, served on the CSI front for the csi-snapshotter:
//! crash-consistent volume group snapshots whose members csi-rbdplugin
//! restores. Dell's volumegroupsnapshot.v1 extension is an adapter over the
//! same calls (`GroupSnapshots`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};

use super::envelope::{About, Envelope, MAX_ID_LEN, refuse_oversize_id, refuse_oversize_map};
use crate::Error;
use crate::cephcsi::Resolver;
use crate::exec::Executor;
use crate::groups::snapshots::{self, CreateParams, GroupSnapshotView};
use crate::proto::csi::v1::group_controller_server::GroupController;
use crate::proto::csi::v1::*;

/// Longest request name accepted (Kubernetes names are at most 253 bytes;
/// the snapshotter's are `groupsnapshot-<uid>`).
const MAX_NAME_LEN: usize = 253;
/// How long Create waits for copies that continue after the instant, before
/// answering `ready_to_use = false` (the snapshotter's own timeout is 60 s).
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// The group snapshot calls, shared by the CSI GroupController and Dell's
/// extension.
#[derive(Clone)]
pub(super) struct GroupSnapshots {
    envelope: Envelope,
}

impl GroupSnapshots {
    pub(super) fn new(exec: Arc<Executor>, resolver: Arc<Resolver>) -> Self {
        Self { envelope: Envelope::new(exec, resolver) }
    }

    pub(crate) fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        self.envelope.metrics()
    }

    /// Creates (or finds, by name) a group snapshot; waits a bounded time for
    /// copies still running, then answers with what is ready.
    pub(crate) async fn create(
        &self,
        name: String,
        volume_ids: Vec<String>,
        parameters: HashMap<String, String>,
        secrets: &HashMap<String, String>,
    ) -> Result<GroupSnapshotView, Status> {
        let about = About::GroupSnapshot(name.clone());
        let check = move || {
            if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
                return Err(Error::Malformed(format!("name must be 1 to {MAX_NAME_LEN} printable characters")));
            }
            refuse_oversize_map("parameter", &parameters)?;
            if let Some(v) = volume_ids.iter().find(|v| v.len() > MAX_ID_LEN) {
                refuse_oversize_id("a source volume ID", v)?;
            }
            let ids = snapshots::check_sources(&volume_ids)?;
            Ok((name, CreateParams::parse(&parameters)?, ids, volume_ids))
        };
        let key =
            |(name, ..): &(String, CreateParams, Vec<String>, Vec<String>)| Some(format!("group-snapshot-name/{name}"));
        let (view, pending) = self
            .envelope
            .run(
                "CreateVolumeGroupSnapshot",
                about.clone(),
                key,
                secrets,
                check,
                |(name, params, _, ordered), resolver, creds, claims| {
                    snapshots::create(resolver, creds, claims, (&name, &params, &ordered))
                },
            )
            .await?;
        if !pending {
            return Ok(view);
        }
        let Some(copies) = self.resume(&view, secrets) else { return Ok(view) };
        match tokio::time::timeout(ANSWER_WITHIN, copies).await {
            Ok(Ok(Ok(done))) => Ok(done),
            Ok(Ok(Err(Error::Exec(_)))) | Err(_) => Ok(view),
            Ok(Ok(Err(e))) => Err(about.status(&e)),
            Ok(Err(_join)) => Ok(view),
        }
    }

    /// Starts the copies of an unfinished group snapshot, unless they run.
    fn resume(
        &self,
        view: &GroupSnapshotView,
        secrets: &HashMap<String, String>,
    ) -> Option<tokio::task::JoinHandle<Result<GroupSnapshotView, Error>>> {
        let id = snapshots::decode_id(&view.group_snapshot_id).ok()?;
        self.envelope.continue_in_background(snapshots::work_key(&id.uuid), secrets, move |resolver, creds| {
            snapshots::copy_members(resolver, creds, &id)
        })
    }

    pub(crate) async fn get(
        &self,
        group_snapshot_id: String,
        secrets: &HashMap<String, String>,
    ) -> Result<GroupSnapshotView, Status> {
        let key = |id: &crate::cephcsi::CsiId| Some(format!("group-snapshot-view/{}", id.uuid));
        let (view, pending) = self
            .envelope
            .run(
                "GetVolumeGroupSnapshot",
                About::GroupSnapshot(group_snapshot_id.clone()),
                key,
                secrets,
                || snapshots::decode_id(&group_snapshot_id),
                |id, resolver, creds, _| snapshots::get(resolver, creds, &id),
            )
            .await?;
        if pending {
            // A copy that a restart interrupted starts again here.
            self.resume(&view, secrets);
        }
        Ok(view)
    }

    pub(crate) async fn delete(
        &self,
        group_snapshot_id: String,
        snapshot_ids: Vec<String>,
        secrets: &HashMap<String, String>,
    ) -> Result<(), Status> {
        let check = || {
            if let Some(v) = snapshot_ids.iter().find(|v| v.len() > MAX_ID_LEN) {
                refuse_oversize_id("a snapshot ID", v)?;
            }
            Ok((snapshots::decode_id(&group_snapshot_id)?, snapshot_ids))
        };
        self.envelope
            .run(
                "DeleteVolumeGroupSnapshot",
                About::GroupSnapshot(group_snapshot_id.clone()),
                |(id, _)| Some(format!("group-snapshot-delete/{}", id.uuid)),
                secrets,
                check,
                |(id, ids), resolver, creds, claims| snapshots::delete(resolver, creds, claims, &id, &ids),
            )
            .await
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn to_proto(v: GroupSnapshotView) -> VolumeGroupSnapshot {
    let created = timestamp(v.created);
    let ready = v.ready();
    VolumeGroupSnapshot {
        snapshots: v
            .snapshots
            .into_iter()
            .map(|s| Snapshot {
                size_bytes: s.size_bytes as i64,
                snapshot_id: s.snapshot_id,
                source_volume_id: s.source_volume_id,
                creation_time: Some(created),
                ready_to_use: s.ready,
                group_snapshot_id: v.group_snapshot_id.clone(),
            })
            .collect(),
        group_snapshot_id: v.group_snapshot_id,
        creation_time: Some(created),
        ready_to_use: ready,
    }
}

/// The GroupController service of the CSI front.
pub(super) struct GroupControllerService {
    snapshots: GroupSnapshots,
}

impl GroupControllerService {
    pub(super) fn new(snapshots: GroupSnapshots) -> Self {
        Self { snapshots }
    }
}

#[tonic::async_trait]
impl GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _: Request<GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<GroupControllerGetCapabilitiesResponse>, Status> {
        use group_controller_service_capability::{Rpc, Type, rpc};
        let rpc = Rpc { r#type: rpc::Type::CreateDeleteGetVolumeGroupSnapshot as i32 };
        let capabilities = vec![GroupControllerServiceCapability { r#type: Some(Type::Rpc(rpc)) }];
        Envelope::answer(
            self.snapshots.metrics(),
            "GroupControllerGetCapabilities",
            Ok(GroupControllerGetCapabilitiesResponse { capabilities }),
        )
        .map(Response::new)
    }

    async fn create_volume_group_snapshot(
        &self,
        request: Request<CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<CreateVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        let view = self.snapshots.create(req.name, req.source_volume_ids, req.parameters, &req.secrets).await?;
        Ok(Response::new(CreateVolumeGroupSnapshotResponse { group_snapshot: Some(to_proto(view)) }))
    }

    async fn delete_volume_group_snapshot(
        &self,
        request: Request<DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<DeleteVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        self.snapshots.delete(req.group_snapshot_id, req.snapshot_ids, &req.secrets).await?;
        Ok(Response::new(DeleteVolumeGroupSnapshotResponse {}))
    }

    async fn get_volume_group_snapshot(
        &self,
        request: Request<GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<GetVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        let view = self.snapshots.get(req.group_snapshot_id, &req.secrets).await?;
        Ok(Response::new(GetVolumeGroupSnapshotResponse { group_snapshot: Some(to_proto(view)) }))
    }
}
