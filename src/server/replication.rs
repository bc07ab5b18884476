use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use prost_types::{Duration as PbDuration, Timestamp};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::status::to_status;
use crate::cephcsi::{Credentials, CsiId, ResolvedVolume, Resolver};
use crate::exec::Executor;
use crate::proto::replication::controller_server::Controller;
use crate::proto::replication::get_volume_replication_info_response::Status as InfoStatus;
use crate::proto::replication::replication_source::Type as SourceType;
use crate::proto::replication::*;
use crate::replication::{self, DisableParams, EnableParams, Error, Health, ParamError};

/// Bounds on what a request may carry; real requests are far below them.
const MAX_MAP_ENTRIES: usize = 64;
const MAX_KEY_LEN: usize = 256;

pub struct ReplicationService {
    exec: Arc<Executor>,
    resolver: Arc<Resolver>,
}

impl ReplicationService {
    pub fn new(exec: Arc<Executor>, resolver: Arc<Resolver>) -> Self {
        Self { exec, resolver }
    }

    /// The common path of every RPC: validate, then run `work` on the resolved
    /// volume off the runtime, under the volume's guard and the op deadline.
    async fn run<T: Send + 'static>(
        &self,
        method: &'static str,
        target: Result<String, Error>,
        secrets: &HashMap<String, String>,
        work: impl FnOnce(&ResolvedVolume) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let volume_id = target.as_ref().map(String::clone).unwrap_or_default();
        let result = async {
            let volume_id = target?;
            let id = CsiId::decode(&volume_id).map_err(|e| Error::Resolve(e.into()))?;
            check_map("secrets", secrets)?;
            let creds = Credentials::from_secrets(secrets).map_err(|e| Error::Resolve(e.into()))?;
            let resolver = self.resolver.clone();
            self.exec
                .run(&volume_id, move || {
                    let vol = resolver.resolve(&id, &creds)?;
                    work(&vol)
                })
                .await
        }
        .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        result
            .map_err(|err| {
                let status = to_status(Some(&volume_id), &err);
                warn!(method, volume_id, code = ?status.code(), elapsed_ms, error = %status.message(), "call failed");
                status
            })
            .inspect(|_| info!(method, volume_id, elapsed_ms, "call succeeded"))
    }
}

/// The volume a request is about: `replication_source.volume` (sidecars since
/// v0.9) or the deprecated field 1 (sidecars up to v0.8).
fn target(legacy_id: &str, source: Option<&ReplicationSource>) -> Result<String, Error> {
    let from_source = match source.and_then(|s| s.r#type.as_ref()) {
        Some(SourceType::Volumegroup(g)) => {
            return Err(Error::Unimplemented(format!(
                "volume group {:?}: group replication is not supported by this server yet",
                g.volume_group_id
            )));
        }
        Some(SourceType::Volume(v)) => v.volume_id.as_str(),
        None => "",
    };
    match (legacy_id, from_source) {
        ("", "") => Err(Error::InvalidArgument("no volume given: set replication_source.volume.volume_id".to_owned())),
        (id, "") | ("", id) => Ok(id.to_owned()),
        (a, b) if a == b => Ok(a.to_owned()),
        (a, b) => Err(Error::InvalidArgument(format!(
            "volume_id {a:?} and replication_source.volume.volume_id {b:?} differ; set only one"
        ))),
    }
}

fn check_map(what: &str, map: &HashMap<String, String>) -> Result<(), Error> {
    if map.len() > MAX_MAP_ENTRIES {
        return Err(Error::InvalidArgument(format!(
            "{what} has {} entries; at most {MAX_MAP_ENTRIES} are accepted",
            map.len()
        )));
    }
    if map.keys().any(|k| k.len() > MAX_KEY_LEN) {
        return Err(Error::InvalidArgument(format!("{what} has a key longer than {MAX_KEY_LEN} characters")));
    }
    Ok(())
}

/// Validates a request's parameters before any Ceph work, answering for the
/// volume the request names.
fn parse_params<P>(
    method: &'static str,
    target: &Result<String, Error>,
    params: &HashMap<String, String>,
    parse: fn(&HashMap<String, String>) -> Result<P, ParamError>,
) -> Result<P, Status> {
    check_map("parameters", params).and_then(|()| parse(params).map_err(Error::from)).map_err(|err| {
        let volume_id = target.as_deref().unwrap_or_default();
        let status = to_status(Some(volume_id), &err);
        warn!(method, volume_id, code = ?status.code(), error = %status.message(), "call refused");
        status
    })
}

fn info_response(i: replication::ReplicationInfo) -> GetVolumeReplicationInfoResponse {
    let status = match i.health {
        Health::Unknown => InfoStatus::Unknown,
        Health::Healthy => InfoStatus::Healthy,
        Health::Degraded => InfoStatus::Degraded,
        Health::Error => InfoStatus::Error,
    };
    GetVolumeReplicationInfoResponse {
        last_sync_time: Some(Timestamp { seconds: i.last_sync_time, nanos: 0 }),
        last_sync_duration: i.last_sync_duration_secs.map(|s| PbDuration { seconds: s, nanos: 0 }),
        last_sync_bytes: i.last_sync_bytes,
        status: status as i32,
        status_message: i.status_message,
    }
}

#[tonic::async_trait]
impl Controller for ReplicationService {
    async fn enable_volume_replication(
        &self,
        request: Request<EnableVolumeReplicationRequest>,
    ) -> Result<Response<EnableVolumeReplicationResponse>, Status> {
        const METHOD: &str = "EnableVolumeReplication";
        let req = request.into_inner();
        #[allow(deprecated)]
        let target = target(&req.volume_id, req.replication_source.as_ref());
        let params = parse_params(METHOD, &target, &req.parameters, EnableParams::parse)?;
        self.run(METHOD, target, &req.secrets, move |vol| replication::enable(vol, &params)).await?;
        Ok(Response::new(EnableVolumeReplicationResponse {}))
    }

    async fn disable_volume_replication(
        &self,
        request: Request<DisableVolumeReplicationRequest>,
    ) -> Result<Response<DisableVolumeReplicationResponse>, Status> {
        const METHOD: &str = "DisableVolumeReplication";
        let req = request.into_inner();
        #[allow(deprecated)]
        let target = target(&req.volume_id, req.replication_source.as_ref());
        let params = parse_params(METHOD, &target, &req.parameters, DisableParams::parse)?;
        self.run(METHOD, target, &req.secrets, move |vol| replication::disable(vol, &params)).await?;
        Ok(Response::new(DisableVolumeReplicationResponse {}))
    }

    async fn get_volume_replication_info(
        &self,
        request: Request<GetVolumeReplicationInfoRequest>,
    ) -> Result<Response<GetVolumeReplicationInfoResponse>, Status> {
        let req = request.into_inner();
        #[allow(deprecated)]
        let target = target(&req.volume_id, req.replication_source.as_ref());
        let info = self.run("GetVolumeReplicationInfo", target, &req.secrets, replication::info).await?;
        Ok(Response::new(info_response(info)))
    }

    async fn promote_volume(
        &self,
        request: Request<PromoteVolumeRequest>,
    ) -> Result<Response<PromoteVolumeResponse>, Status> {
        const METHOD: &str = "PromoteVolume";
        let req = request.into_inner();
        #[allow(deprecated)]
        let target = target(&req.volume_id, req.replication_source.as_ref());
        // Promote carries the class parameters: the schedule is (re)applied.
        let params = parse_params(METHOD, &target, &req.parameters, EnableParams::parse)?;
        let force = req.force;
        self.run(METHOD, target, &req.secrets, move |vol| replication::promote(vol, force, params.schedule.as_ref()))
            .await?;
        Ok(Response::new(PromoteVolumeResponse {}))
    }

    async fn demote_volume(
        &self,
        request: Request<DemoteVolumeRequest>,
    ) -> Result<Response<DemoteVolumeResponse>, Status> {
        let req = request.into_inner();
        #[allow(deprecated)]
        let target = target(&req.volume_id, req.replication_source.as_ref());
        self.run("DemoteVolume", target, &req.secrets, replication::demote).await?;
        Ok(Response::new(DemoteVolumeResponse {}))
    }

    async fn resync_volume(
        &self,
        request: Request<ResyncVolumeRequest>,
    ) -> Result<Response<ResyncVolumeResponse>, Status> {
        let req = request.into_inner();
        #[allow(deprecated)]
        let target = target(&req.volume_id, req.replication_source.as_ref());
        let force = req.force;
        let ready = self.run("ResyncVolume", target, &req.secrets, move |vol| replication::resync(vol, force)).await?;
        Ok(Response::new(ResyncVolumeResponse { ready }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::replication::replication_source::{VolumeGroupSource, VolumeSource};

    fn vol(id: &str) -> Option<ReplicationSource> {
        Some(ReplicationSource { r#type: Some(SourceType::Volume(VolumeSource { volume_id: id.into() })) })
    }

    #[test]
    fn target_accepts_either_field_but_not_two_different_ones() {
        assert_eq!(target("a", None).unwrap(), "a");
        assert_eq!(target("", vol("b").as_ref()).unwrap(), "b");
        assert_eq!(target("b", vol("b").as_ref()).unwrap(), "b");
        assert!(matches!(target("a", vol("b").as_ref()), Err(Error::InvalidArgument(_))));
        assert!(matches!(target("", None), Err(Error::InvalidArgument(_))));
        let group = Some(ReplicationSource {
            r#type: Some(SourceType::Volumegroup(VolumeGroupSource { volume_group_id: "g".into() })),
        });
        assert!(matches!(target("", group.as_ref()), Err(Error::Unimplemented(_))));
    }
}
