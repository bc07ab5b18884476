//! `reclaimspace.ReclaimSpaceController`: ControllerReclaimSpace (the OFFLINE
//! capability) for one ceph-csi volume. Node-side reclaim (fstrim of a
//! mounted filesystem) stays with the node plugin and is not served here.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::envelope::{About, Envelope, refuse_oversize_map};
use crate::Error;
use crate::cephcsi::{CsiId, Resolver};
use crate::exec::Executor;
use crate::proto::reclaimspace::reclaim_space_controller_server::ReclaimSpaceController;
use crate::proto::reclaimspace::*;
use crate::reclaim;

pub(super) struct ReclaimSpaceService {
    envelope: Envelope,
}

impl ReclaimSpaceService {
    pub(super) fn new(exec: Arc<Executor>, resolver: Arc<Resolver>) -> Self {
        Self { envelope: Envelope::new(exec, resolver) }
    }
}

fn usage(bytes: u64) -> Option<StorageConsumption> {
    Some(StorageConsumption { usage_bytes: i64::try_from(bytes).unwrap_or(i64::MAX) })
}

#[tonic::async_trait]
impl ReclaimSpaceController for ReclaimSpaceService {
    async fn controller_reclaim_space(
        &self,
        request: Request<ControllerReclaimSpaceRequest>,
    ) -> Result<Response<ControllerReclaimSpaceResponse>, Status> {
        let req = request.into_inner();
        let volume_id = req.volume_id;
        let check = || {
            refuse_oversize_map("parameter", &req.parameters)?;
            CsiId::decode(&volume_id).map_err(|e| Error::Resolve(e.into()))
        };
        // The volume's own guard: no replication call runs on it meanwhile.
        let done = self
            .envelope
            .run(
                "ControllerReclaimSpace",
                About::Volume(volume_id.clone()),
                |_| Some(volume_id.clone()),
                &req.secrets,
                check,
                |id, resolver, creds, _| {
                    let vol = resolver.resolve(&id, creds)?;
                    reclaim::reclaim(&vol)
                },
            )
            .await?;
        Ok(Response::new(ControllerReclaimSpaceResponse {
            pre_usage: usage(done.pre_usage),
            post_usage: usage(done.post_usage),
        }))
    }
}
