//! `fence.FenceController`: NetworkFence for RBD (OSD blocklist ranges).
//! GetFenceClients is not served: RBD has no per-client session list to offer
//! (that is CephFS's MDS `client ls`), so it answers UNIMPLEMENTED and is not
//! advertised.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::status::to_status;
use crate::ceph::Cluster;
use crate::cephcsi::{Credentials, Resolver};
use crate::exec::Executor;
use crate::fence;
use crate::proto::fence::fence_controller_server::FenceController;
use crate::proto::fence::*;
use crate::replication::Error;

/// The class parameter naming the cluster in ceph-csi's config.json.
const CLUSTER_ID: &str = "clusterID";

pub struct FenceService {
    exec: Arc<Executor>,
    resolver: Arc<Resolver>,
}

impl FenceService {
    pub fn new(exec: Arc<Executor>, resolver: Arc<Resolver>) -> Self {
        Self { exec, resolver }
    }

    /// Validates the cluster and secrets, then runs `work` on a connection to
    /// that cluster, off the runtime. One fence call per cluster at a time: a
    /// second one answers ABORTED, so fence and unfence never interleave.
    async fn run<T: Send + 'static>(
        &self,
        method: &'static str,
        parameters: &HashMap<String, String>,
        secrets: &HashMap<String, String>,
        work: impl FnOnce(&Cluster) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let cluster_id = parameters.get(CLUSTER_ID).cloned().unwrap_or_default();
        let result = async {
            if cluster_id.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "parameter {CLUSTER_ID} is required: the clusterID of ceph-csi's config.json to fence on"
                )));
            }
            let creds = Credentials::from_secrets(secrets).map_err(|e| Error::Resolve(e.into()))?;
            let resolver = self.resolver.clone();
            let id = cluster_id.clone();
            self.exec
                .run(&format!("fence/{cluster_id}"), move || {
                    let cluster = resolver.cluster(&id, &creds)?;
                    work(&cluster)
                })
                .await
        }
        .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        result
            .map_err(|err| {
                let status = to_status(None, &err);
                warn!(method, cluster = cluster_id, code = ?status.code(), elapsed_ms, error = %status.message(), "call failed");
                status
            })
            .inspect(|_| info!(method, cluster = cluster_id, elapsed_ms, "call succeeded"))
    }
}

fn cidrs_of(cidrs: &[Cidr]) -> Result<Vec<fence::Cidr>, Status> {
    fence::parse_cidrs(cidrs.iter().map(|c| c.cidr.as_str())).map_err(|e| to_status(None, &e))
}

#[tonic::async_trait]
impl FenceController for FenceService {
    async fn fence_cluster_network(
        &self,
        request: Request<FenceClusterNetworkRequest>,
    ) -> Result<Response<FenceClusterNetworkResponse>, Status> {
        let req = request.into_inner();
        let cidrs = cidrs_of(&req.cidrs)?;
        self.run("FenceClusterNetwork", &req.parameters, &req.secrets, move |c| fence::fence(c, &cidrs)).await?;
        Ok(Response::new(FenceClusterNetworkResponse {}))
    }

    async fn unfence_cluster_network(
        &self,
        request: Request<UnfenceClusterNetworkRequest>,
    ) -> Result<Response<UnfenceClusterNetworkResponse>, Status> {
        let req = request.into_inner();
        let cidrs = cidrs_of(&req.cidrs)?;
        self.run("UnfenceClusterNetwork", &req.parameters, &req.secrets, move |c| fence::unfence(c, &cidrs)).await?;
        Ok(Response::new(UnfenceClusterNetworkResponse {}))
    }

    async fn list_cluster_fence(
        &self,
        request: Request<ListClusterFenceRequest>,
    ) -> Result<Response<ListClusterFenceResponse>, Status> {
        let req = request.into_inner();
        let fenced = self.run("ListClusterFence", &req.parameters, &req.secrets, fence::list).await?;
        let cidrs = fenced.iter().map(|c| Cidr { cidr: c.to_string() }).collect();
        Ok(Response::new(ListClusterFenceResponse { cidrs }))
    }

    async fn get_fence_clients(
        &self,
        _: Request<GetFenceClientsRequest>,
    ) -> Result<Response<GetFenceClientsResponse>, Status> {
        Err(Status::unimplemented(
            "GetFenceClients is not served for RBD: Ceph keeps no list of RBD client sessions to fence by; \
             fence the nodes' CIDR blocks instead",
        ))
    }
}
