//! `fence.FenceController`: NetworkFence for RBD (OSD blocklist ranges).
//! GetFenceClients is not served: RBD has no per-client session list to offer
//! (that is CephFS's MDS `client ls`), so it answers UNIMPLEMENTED and is not
//! advertised.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::envelope::{About, Envelope, refuse_oversize_map};
use crate::Error;
use crate::ceph::Cluster;
use crate::cephcsi::Resolver;
use crate::exec::Executor;
use crate::fence;
use crate::proto::fence::fence_controller_server::FenceController;
use crate::proto::fence::*;

/// The class parameter naming the cluster in ceph-csi's config.json.
const CLUSTER_ID: &str = "clusterID";

pub(super) struct FenceService {
    envelope: Envelope,
}

impl FenceService {
    pub(super) fn new(exec: Arc<Executor>, resolver: Arc<Resolver>) -> Self {
        Self { envelope: Envelope::new(exec, resolver) }
    }

    /// One fence call on the cluster of `parameters.clusterID`, through the
    /// envelope. One at a time per cluster (a second answers ABORTED), so
    /// fence and unfence never interleave.
    async fn run<P: Send + 'static, T: Send + 'static>(
        &self,
        method: &'static str,
        parameters: &HashMap<String, String>,
        secrets: &HashMap<String, String>,
        check: impl FnOnce() -> Result<P, Error>,
        work: impl FnOnce(&Cluster, P) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let cluster_id = parameters.get(CLUSTER_ID).cloned().unwrap_or_default();
        let about = if cluster_id.is_empty() { About::Nothing } else { About::Cluster(cluster_id.clone()) };
        let check = || {
            refuse_oversize_map("parameter", parameters)?;
            if cluster_id.is_empty() {
                return Err(Error::Malformed(format!(
                    "parameter {CLUSTER_ID} is required: the clusterID of ceph-csi's config.json to fence on"
                )));
            }
            Ok((cluster_id, check()?))
        };
        let key = |(cluster_id, _): &(String, P)| Some(format!("fence/{cluster_id}"));
        self.envelope
            .run(method, about, key, secrets, check, |(cluster_id, prepared), resolver, creds, _| {
                let cluster = resolver.cluster(&cluster_id, creds)?;
                work(&cluster, prepared)
            })
            .await
    }
}

fn cidrs_of(cidrs: Vec<Cidr>) -> impl FnOnce() -> Result<Vec<fence::Cidr>, Error> {
    move || fence::parse_cidrs(cidrs.iter().map(|c| c.cidr.as_str()))
}

#[tonic::async_trait]
impl FenceController for FenceService {
    async fn fence_cluster_network(
        &self,
        request: Request<FenceClusterNetworkRequest>,
    ) -> Result<Response<FenceClusterNetworkResponse>, Status> {
        let req = request.into_inner();
        let check = cidrs_of(req.cidrs);
        self.run("FenceClusterNetwork", &req.parameters, &req.secrets, check, |c, cidrs| fence::fence(c, &cidrs))
            .await?;
        Ok(Response::new(FenceClusterNetworkResponse {}))
    }

    async fn unfence_cluster_network(
        &self,
        request: Request<UnfenceClusterNetworkRequest>,
    ) -> Result<Response<UnfenceClusterNetworkResponse>, Status> {
        let req = request.into_inner();
        let check = cidrs_of(req.cidrs);
        self.run("UnfenceClusterNetwork", &req.parameters, &req.secrets, check, |c, cidrs| fence::unfence(c, &cidrs))
            .await?;
        Ok(Response::new(UnfenceClusterNetworkResponse {}))
    }

    async fn list_cluster_fence(
        &self,
        request: Request<ListClusterFenceRequest>,
    ) -> Result<Response<ListClusterFenceResponse>, Status> {
        let req = request.into_inner();
        let fenced =
            self.run("ListClusterFence", &req.parameters, &req.secrets, || Ok(()), |c, ()| fence::list(c)).await?;
        let cidrs = fenced.iter().map(|c| Cidr { cidr: c.to_string() }).collect();
        Ok(Response::new(ListClusterFenceResponse { cidrs }))
    }

    async fn get_fence_clients(
        &self,
        _: Request<GetFenceClientsRequest>,
    ) -> Result<Response<GetFenceClientsResponse>, Status> {
        Envelope::answer(
            self.envelope.metrics(),
            "GetFenceClients",
            Err(Error::NotSupported(
                "GetFenceClients is not served for RBD: Ceph keeps no list of RBD client sessions to fence by; \
                 fence the nodes' CIDR blocks instead"
                    .into(),
            )),
        )
    }
}
