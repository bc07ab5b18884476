use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::envelope::Envelope;
use crate::ceph::Library;
use crate::metrics::Metrics;
use crate::proto::identity::capability::{self, NetworkFence, ReclaimSpace, Service, VolumeGroup, VolumeReplication};
use crate::proto::identity::identity_server::Identity;
use crate::proto::identity::{
    Capability, GetCapabilitiesRequest, GetCapabilitiesResponse, GetIdentityRequest, GetIdentityResponse, ProbeRequest,
    ProbeResponse,
};

/// Answers without touching Ceph: credentials come with each request, and the
/// sidecar blocks its start-up on Probe.
pub(super) struct IdentityService {
    driver_name: String,
    library: Library,
    metrics: Arc<Metrics>,
}

impl IdentityService {
    pub(super) fn new(driver_name: String, library: Library, metrics: Arc<Metrics>) -> Self {
        Self { driver_name, library, metrics }
    }
}

/// Only what really works is advertised; the controller trusts this list. It
/// is the same on Pacific, Reef and Tentacle (each proven by the lab suite);
/// what the loaded librbd offers beyond it is in GetIdentity's manifest.
pub(crate) fn capabilities() -> Vec<Capability> {
    let mut caps = vec![
        Capability {
            r#type: Some(capability::Type::Service(Service {
                r#type: capability::service::Type::ControllerService as i32,
            })),
        },
        Capability {
            r#type: Some(capability::Type::VolumeReplication(VolumeReplication {
                r#type: capability::volume_replication::Type::VolumeReplication as i32,
            })),
        },
        Capability {
            r#type: Some(capability::Type::VolumeReplication(VolumeReplication {
                r#type: capability::volume_replication::Type::GetReplicationDestinationInfo as i32,
            })),
        },
    ];
    use capability::volume_group::Type as G;
    // RBD allows one group per image; a group with members cannot be deleted.
    for t in [
        G::VolumeGroup,
        G::LimitVolumeToOneVolumeGroup,
        G::DoNotAllowVgToDeleteVolumes,
        G::ModifyVolumeGroup,
        G::GetVolumeGroup,
        G::ListVolumeGroups,
    ] {
        caps.push(Capability { r#type: Some(capability::Type::VolumeGroup(VolumeGroup { r#type: t as i32 })) });
    }
    // OFFLINE only: ONLINE (fstrim on the node) belongs to the node plugin.
    caps.push(Capability {
        r#type: Some(capability::Type::ReclaimSpace(ReclaimSpace {
            r#type: capability::reclaim_space::Type::Offline as i32,
        })),
    });
    // GET_CLIENTS_TO_FENCE is CephFS's (MDS sessions); RBD has nothing to list.
    caps.push(Capability {
        r#type: Some(capability::Type::NetworkFence(NetworkFence {
            r#type: capability::network_fence::Type::NetworkFence as i32,
        })),
    });
    caps
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_identity(&self, _: Request<GetIdentityRequest>) -> Result<Response<GetIdentityResponse>, Status> {
        let identity = GetIdentityResponse {
            name: self.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: self.library.manifest(),
        };
        Envelope::answer(&self.metrics, "GetIdentity", Ok(Response::new(identity)))
    }

    async fn get_capabilities(
        &self,
        _: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        Envelope::answer(
            &self.metrics,
            "GetCapabilities",
            Ok(Response::new(GetCapabilitiesResponse { capabilities: capabilities() })),
        )
    }

    // Ready without any cluster: a Ceph outage must not restart the pod.
    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Envelope::answer(&self.metrics, "Probe", Ok(Response::new(ProbeResponse { ready: Some(true) })))
    }
}
