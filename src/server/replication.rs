use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost_types::{Duration as PbDuration, Timestamp};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::status::{to_group_status, to_status};
use crate::cephcsi::{Credentials, CsiId, ResolvedVolume, Resolver};
use crate::exec::Executor;
use crate::groups::{self, Group, Member, scheduler::Scheduler};
use crate::proto::replication::controller_server::Controller;
use crate::proto::replication::get_volume_replication_info_response::Status as InfoStatus;
use crate::proto::replication::replication_destination::{
    Type as DestinationType, VolumeDestination, VolumeGroupDestination,
};
use crate::proto::replication::replication_source::Type as SourceType;
use crate::proto::replication::*;
use crate::replication::{self, DisableParams, EnableParams, Error, Health, ParamError};

/// Bounds on what a request may carry; real requests are far below them.
const MAX_MAP_ENTRIES: usize = 64;
const MAX_KEY_LEN: usize = 256;

pub struct ReplicationService {
    exec: Arc<Executor>,
    resolver: Arc<Resolver>,
    scheduler: Arc<Scheduler>,
}

/// What a group RPC works on: the group, its members (guarded), the caller's
/// credentials.
type GroupWork<T> = Box<dyn FnOnce(&Group, &[Member], &Credentials) -> Result<T, Error> + Send>;

impl ReplicationService {
    pub fn new(exec: Arc<Executor>, resolver: Arc<Resolver>, scheduler: Arc<Scheduler>) -> Self {
        Self { exec, resolver, scheduler }
    }

    /// The common path of every RPC: validate, then run the volume's or the
    /// group's work off the runtime, under its guard(s) and the op deadline.
    async fn run<T: Send + 'static>(
        &self,
        method: &'static str,
        target: Result<Target, Error>,
        secrets: &HashMap<String, String>,
        volume_work: impl FnOnce(&ResolvedVolume) -> Result<T, Error> + Send + 'static,
        group_work: GroupWork<T>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let (subject, is_group) = match &target {
            Ok(Target::Volume(v)) => (v.clone(), false),
            Ok(Target::Group(g)) => (g.clone(), true),
            Err(_) => (String::new(), false),
        };
        let result = async {
            check_map("secrets", secrets)?;
            match target? {
                Target::Volume(volume_id) => {
                    let id = CsiId::decode(&volume_id).map_err(|e| Error::Resolve(e.into()))?;
                    let creds = Credentials::from_secrets(secrets).map_err(|e| Error::Resolve(e.into()))?;
                    let resolver = self.resolver.clone();
                    self.exec
                        .run(&volume_id, move || {
                            let vol = resolver.resolve(&id, &creds)?;
                            volume_work(&vol)
                        })
                        .await
                }
                Target::Group(group_id) => {
                    let id = groups::decode_group_id(&group_id)?;
                    let creds = Credentials::from_secrets(secrets).map_err(|e| Error::Resolve(e.into()))?;
                    let resolver = self.resolver.clone();
                    let claims = self.exec.claims();
                    let scheduler = self.scheduler.clone();
                    let key = group_id.clone();
                    self.exec
                        .run(&key, move || {
                            let group = groups::find(&resolver, &id, &creds)?;
                            let _generations = groups::claim_waiting(&claims, &groups::generations_key(&id))?;
                            let (members, _guards) = groups::resolve_members(&resolver, &group, &creds, &claims)?;
                            let out = group_work(&group, &members, &creds);
                            // Any call about a group keeps its generations going
                            // while it is primary here; the scheduler drops it
                            // when it is not.
                            scheduler.watch(&group_id, &id, &creds);
                            out
                        })
                        .await
                }
            }
        }
        .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let status_of = |err: &Error| {
            if is_group { to_group_status(Some(&subject), err) } else { to_status(Some(&subject), err) }
        };
        result
            .map_err(|err| {
                let status = status_of(&err);
                warn!(method, target = subject, code = ?status.code(), elapsed_ms, error = %status.message(), "call failed");
                status
            })
            .inspect(|_| info!(method, target = subject, elapsed_ms, "call succeeded"))
    }
}

/// Group requests get group defaults: journal mirroring (the only mode in
/// which a group is crash-consistent) unless the class asks otherwise.
fn group_defaults(target: &Result<Target, Error>, params: &HashMap<String, String>) -> HashMap<String, String> {
    let mut params = params.clone();
    if matches!(target, Ok(Target::Group(_))) {
        params.entry(replication::MIRRORING_MODE.to_owned()).or_insert_with(|| "journal".to_owned());
    }
    params
}

fn group_interval(
    target: &Result<Target, Error>,
    params: &HashMap<String, String>,
) -> Result<Option<Duration>, Status> {
    groups::parse_interval(params).map_err(|e| {
        let subject = match target {
            Ok(Target::Group(g)) | Ok(Target::Volume(g)) => g.as_str(),
            Err(_) => "",
        };
        to_group_status(Some(subject), &e)
    })
}

/// What a replication request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Volume(String),
    Group(String),
}

/// `replication_source.volumegroup`, or else the volume (see `volume_target`).
fn target(legacy_id: &str, source: Option<&ReplicationSource>) -> Result<Target, Error> {
    if let Some(SourceType::Volumegroup(g)) = source.and_then(|s| s.r#type.as_ref()) {
        if !legacy_id.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "volume_id {legacy_id:?} and replication_source.volumegroup are both set; set only the group"
            )));
        }
        if g.volume_group_id.is_empty() {
            return Err(Error::InvalidArgument("replication_source.volumegroup.volume_group_id is empty".into()));
        }
        return Ok(Target::Group(g.volume_group_id.clone()));
    }
    volume_target(legacy_id, source).map(Target::Volume)
}

/// The volume a request is about: `replication_source.volume` (sidecars since
/// v0.9) or the deprecated field 1 (sidecars up to v0.8).
fn volume_target(legacy_id: &str, source: Option<&ReplicationSource>) -> Result<String, Error> {
    let from_source = match source.and_then(|s| s.r#type.as_ref()) {
        Some(SourceType::Volume(v)) => v.volume_id.as_str(),
        _ => "",
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
    target: &Result<Target, Error>,
    params: &HashMap<String, String>,
    parse: fn(&HashMap<String, String>) -> Result<P, ParamError>,
) -> Result<P, Status> {
    check_map("parameters", params).and_then(|()| parse(params).map_err(Error::from)).map_err(|err| {
        let status = match target {
            Ok(Target::Group(g)) => to_group_status(Some(g), &err),
            Ok(Target::Volume(v)) => to_status(Some(v), &err),
            Err(_) => to_status(None, &err),
        };
        warn!(method, code = ?status.code(), error = %status.message(), "call refused");
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

fn group_info_response(i: groups::GroupInfo) -> GetVolumeReplicationInfoResponse {
    info_response(replication::ReplicationInfo {
        last_sync_time: i.last_sync_time,
        last_sync_duration_secs: None,
        last_sync_bytes: 0,
        health: i.health,
        status_message: i.status_message,
    })
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
        let params = parse_params(METHOD, &target, &group_defaults(&target, &req.parameters), EnableParams::parse)?;
        let interval = group_interval(&target, &req.parameters)?;
        let group_params = params.clone();
        self.run(
            METHOD,
            target,
            &req.secrets,
            move |vol| replication::enable(vol, &params),
            Box::new(move |g, m, _| groups::enable(g, m, &group_params, interval)),
        )
        .await?;
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
        self.run(
            METHOD,
            target,
            &req.secrets,
            move |vol| replication::disable(vol, &params),
            Box::new(move |g, m, _| groups::disable(g, m, &params)),
        )
        .await?;
        Ok(Response::new(DisableVolumeReplicationResponse {}))
    }

    async fn get_volume_replication_info(
        &self,
        request: Request<GetVolumeReplicationInfoRequest>,
    ) -> Result<Response<GetVolumeReplicationInfoResponse>, Status> {
        let req = request.into_inner();
        #[allow(deprecated)]
        let target = target(&req.volume_id, req.replication_source.as_ref());
        let info = self
            .run(
                "GetVolumeReplicationInfo",
                target,
                &req.secrets,
                |vol| replication::info(vol).map(info_response),
                Box::new(|g, m, _| groups::info(g, m).map(group_info_response)),
            )
            .await?;
        Ok(Response::new(info))
    }

    async fn get_replication_destination_info(
        &self,
        request: Request<GetReplicationDestinationInfoRequest>,
    ) -> Result<Response<GetReplicationDestinationInfoResponse>, Status> {
        let req = request.into_inner();
        let target = target("", req.replication_source.as_ref());
        let source_id = match &target {
            Ok(Target::Volume(id) | Target::Group(id)) => id.clone(),
            Err(_) => String::new(),
        };
        let (for_volume, for_group) = (self.resolver.clone(), self.resolver.clone());
        let destination = self
            .run(
                "GetReplicationDestinationInfo",
                target,
                &req.secrets,
                move |vol| {
                    replication::require_destination(vol)?;
                    let id = CsiId::decode(&source_id).map_err(|e| Error::Resolve(e.into()))?;
                    let peer = for_volume.peer_id(&id, &vol.cluster_id, vol.io.pool_id())?;
                    Ok(DestinationType::Volume(VolumeDestination { volume_id: peer.encode() }))
                },
                Box::new(move |g, members, _| {
                    groups::require_destinations(g, members)?;
                    let mut volume_ids = HashMap::with_capacity(members.len());
                    for m in members {
                        let id = CsiId::decode(&m.volume_id).map_err(|e| Error::Resolve(e.into()))?;
                        let peer = for_group.peer_id(&id, &m.vol.cluster_id, m.vol.io.pool_id())?;
                        volume_ids.insert(m.volume_id.clone(), peer.encode());
                    }
                    let group = for_group.peer_id(&g.id, &g.cluster_id, g.io.pool_id())?;
                    Ok(DestinationType::Volumegroup(VolumeGroupDestination {
                        volume_group_id: group.encode(),
                        volume_ids,
                    }))
                }),
            )
            .await?;
        Ok(Response::new(GetReplicationDestinationInfoResponse {
            replication_destination: Some(ReplicationDestination { r#type: Some(destination) }),
        }))
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
        let params = parse_params(METHOD, &target, &group_defaults(&target, &req.parameters), EnableParams::parse)?;
        let interval = group_interval(&target, &req.parameters)?;
        let force = req.force;
        let schedule = params.schedule.clone();
        self.run(
            METHOD,
            target,
            &req.secrets,
            move |vol| replication::promote(vol, force, params.schedule.as_ref()),
            Box::new(move |g, m, _| groups::promote(g, m, force, schedule.as_ref(), interval).map(drop)),
        )
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
        // force: demote even when the peer holds no copy yet (strands the
        // volume without a primary; the controller never sets it).
        let force = req.force;
        self.run(
            "DemoteVolume",
            target,
            &req.secrets,
            move |vol| replication::demote(vol, force),
            Box::new(move |g, m, _| groups::demote(g, m, force)),
        )
        .await?;
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
        let ready = self
            .run(
                "ResyncVolume",
                target,
                &req.secrets,
                move |vol| replication::resync(vol, force),
                Box::new(move |_, m, _| groups::resync(m, force)),
            )
            .await?;
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
        let v = |s: &str| Target::Volume(s.into());
        assert_eq!(target("a", None).unwrap(), v("a"));
        assert_eq!(target("", vol("b").as_ref()).unwrap(), v("b"));
        assert_eq!(target("b", vol("b").as_ref()).unwrap(), v("b"));
        assert!(matches!(target("a", vol("b").as_ref()), Err(Error::InvalidArgument(_))));
        assert!(matches!(target("", None), Err(Error::InvalidArgument(_))));
        let group = |id: &str| {
            Some(ReplicationSource {
                r#type: Some(SourceType::Volumegroup(VolumeGroupSource { volume_group_id: id.into() })),
            })
        };
        assert_eq!(target("", group("g").as_ref()).unwrap(), Target::Group("g".into()));
        assert!(matches!(target("v", group("g").as_ref()), Err(Error::InvalidArgument(_))));
        assert!(matches!(target("", group("").as_ref()), Err(Error::InvalidArgument(_))));
    }
}
