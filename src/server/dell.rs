//! Dell CSM's volumegroupsnapshot.v1 extension on the csi-addons socket: a
//! thin adapter over the same group snapshots as the CSI GroupController.
//! Its requests carry no secrets, so the Ceph user's come from a mounted
//! Kubernetes Secret (files `userID` and `userKey` in one directory), read
//! at each call so that a rotated key is picked up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

use tonic::{Request, Response, Status};

use super::envelope::Envelope;
use super::groupsnapshot::GroupSnapshots;
use crate::Error;
use crate::cephcsi::CsiId;
use crate::proto::common::v1::{ProbeControllerRequest, ProbeControllerResponse};
use crate::proto::volumegroupsnapshot::v1::volume_group_snapshot_server::VolumeGroupSnapshot;
use crate::proto::volumegroupsnapshot::v1::*;

pub(super) struct DellService {
    snapshots: GroupSnapshots,
    driver_name: String,
    secret_dir: Option<PathBuf>,
}

impl DellService {
    pub(super) fn new(snapshots: GroupSnapshots, driver_name: String, secret_dir: Option<PathBuf>) -> Self {
        Self { snapshots, driver_name, secret_dir }
    }

    /// The mounted Secret as the `secrets` map of a CSI request.
    fn secrets(&self) -> Result<HashMap<String, String>, Status> {
        let Some(dir) = &self.secret_dir else {
            return Err(Status::failed_precondition(
                "Dell's extension carries no Ceph credentials: start rbd-addons with --group-snapshot-secret-dir \
                 pointing at a mounted Secret with userID and userKey",
            ));
        };
        let mut secrets = HashMap::new();
        for key in ["userID", "userKey"] {
            let value = std::fs::read_to_string(dir.join(key)).map_err(|e| {
                Status::failed_precondition(format!("cannot read {key} from {}: {}", dir.display(), e.kind()))
            })?;
            secrets.insert(key.to_owned(), value.trim().to_owned());
        }
        Ok(secrets)
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[tonic::async_trait]
impl VolumeGroupSnapshot for DellService {
    async fn probe_controller(
        &self,
        _: Request<ProbeControllerRequest>,
    ) -> Result<Response<ProbeControllerResponse>, Status> {
        let answer = ProbeControllerResponse {
            name: self.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: HashMap::new(),
            ready: Some(true),
        };
        Envelope::answer(self.snapshots.metrics(), "ProbeController", Ok(answer)).map(Response::new)
    }

    async fn create_volume_group_snapshot(
        &self,
        request: Request<CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<CreateVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        let secrets = self.secrets()?;
        let view = self.snapshots.create(req.name, req.source_volume_i_ds, req.parameters, &secrets).await?;
        let created = unix_seconds(view.created);
        Ok(Response::new(CreateVolumeGroupSnapshotResponse {
            snapshots: view
                .snapshots
                .iter()
                .enumerate()
                .map(|(i, s)| Snapshot {
                    capacity_bytes: s.size_bytes as i64,
                    snap_id: s.snapshot_id.clone(),
                    source_id: s.source_volume_id.clone(),
                    ready_to_use: s.ready,
                    creation_time: created,
                    name: format!("{}-{i}", view.group_snapshot_id),
                })
                .collect(),
            snapshot_group_id: view.group_snapshot_id,
            creation_time: created,
        }))
    }

    async fn parse_volume_handle(
        &self,
        request: Request<VolumeHandleRequest>,
    ) -> Result<Response<VolumeHandleResponse>, Status> {
        let handle = request.into_inner().volume_handle;
        let parsed =
            CsiId::decode(&handle).map_err(|e| Error::Malformed(format!("invalid volume handle: it {e}"))).map(|id| {
                VolumeHandleResponse { array_id: id.cluster_id, volume_id: handle.clone(), protocol: "rbd".into() }
            });
        Envelope::answer(self.snapshots.metrics(), "ParseVolumeHandle", parsed).map(Response::new)
    }
}
