//! `reclaimspace.ReclaimSpaceController`: ControllerReclaimSpace (the OFFLINE
//! capability) for one ceph-csi volume. Node-side reclaim (fstrim of a
//! mounted filesystem) stays with the node plugin and is not served here.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::status::to_status;
use crate::cephcsi::{Credentials, CsiId, Resolver};
use crate::exec::Executor;
use crate::proto::reclaimspace::reclaim_space_controller_server::ReclaimSpaceController;
use crate::proto::reclaimspace::*;
use crate::reclaim;
use crate::replication::Error;

pub struct ReclaimSpaceService {
    exec: Arc<Executor>,
    resolver: Arc<Resolver>,
}

impl ReclaimSpaceService {
    pub fn new(exec: Arc<Executor>, resolver: Arc<Resolver>) -> Self {
        Self { exec, resolver }
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
        const METHOD: &str = "ControllerReclaimSpace";
        let req = request.into_inner();
        let started = Instant::now();
        let volume_id = req.volume_id.clone();
        let result = async {
            let id = CsiId::decode(&volume_id).map_err(|e| Error::Resolve(e.into()))?;
            let creds = Credentials::from_secrets(&req.secrets).map_err(|e| Error::Resolve(e.into()))?;
            let resolver = self.resolver.clone();
            // The volume's guard: no replication call runs on it meanwhile.
            self.exec
                .run(&volume_id, move || {
                    let vol = resolver.resolve(&id, &creds)?;
                    reclaim::reclaim(&vol)
                })
                .await
        }
        .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let done = result.map_err(|err| {
            let status = to_status(Some(&volume_id), &err);
            warn!(method = METHOD, target = volume_id, code = ?status.code(), elapsed_ms, error = %status.message(), "call failed");
            status
        })?;
        info!(method = METHOD, target = volume_id, elapsed_ms, skipped = done.skipped.as_deref(), "call succeeded");
        Ok(Response::new(ControllerReclaimSpaceResponse {
            pre_usage: usage(done.pre_usage),
            post_usage: usage(done.post_usage),
        }))
    }
}
