use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost_types::{Duration as PbDuration, Timestamp};
use tonic::{Request, Response, Status};

use super::envelope::{About, Envelope, refuse_oversize_map};
use crate::Error;
use crate::cephcsi::{Credentials, CsiId, ResolvedVolume, Resolver};
use crate::exec::Executor;
use crate::groups::{self, Group, Member, scheduler::Scheduler};
use crate::metrics::{LastSync, Metrics, ReplicationState};
use crate::proto::replication::controller_server::Controller;
use crate::proto::replication::get_volume_replication_info_response::Status as InfoStatus;
use crate::proto::replication::replication_destination::{
    Type as DestinationType, VolumeDestination, VolumeGroupDestination,
};
use crate::proto::replication::replication_source::Type as SourceType;
use crate::proto::replication::*;
use crate::replication::{self, DisableParams, EnableParams, Health, StatusCache};

pub(super) struct ReplicationService {
    envelope: Envelope,
    scheduler: Arc<Scheduler>,
    statuses: Arc<StatusCache>,
    generation_times: Arc<groups::GenerationTimes>,
}

/// What a group RPC works on: the group, its members (guarded), the caller's
/// credentials, and what the method's checks prepared.
type GroupWork<Q, T> = Box<dyn FnOnce(&Group, &[Member], &Credentials, Q) -> Result<T, Error> + Send>;

impl ReplicationService {
    pub(super) fn new(exec: Arc<Executor>, resolver: Arc<Resolver>, scheduler: Arc<Scheduler>) -> Self {
        Self {
            envelope: Envelope::new(exec, resolver),
            scheduler,
            statuses: Arc::new(StatusCache::new()),
            generation_times: Arc::new(groups::GenerationTimes::new()),
        }
    }

    /// Every replication RPC: the envelope's path, with the target decoded and
    /// the method's `check` in its checks, then the volume's or the group's
    /// work under its guard(s).
    async fn run<Q, T>(
        &self,
        (method, access): (&'static str, Access),
        target: Result<Target, Error>,
        secrets: &HashMap<String, String>,
        check: impl FnOnce(&Target) -> Result<Q, Error>,
        volume_work: impl FnOnce(&ResolvedVolume, Q) -> Result<T, Error> + Send + 'static,
        group_work: GroupWork<Q, T>,
    ) -> Result<T, Status>
    where
        Q: Send + 'static,
        T: Send + 'static,
    {
        let about = match &target {
            Ok(Target::Volume(v)) => About::Volume(v.clone()),
            Ok(Target::Group(g)) => About::Group(g.clone()),
            Err(_) => About::Nothing,
        };
        let scheduler = self.scheduler.clone();
        // Whatever is not a read may change roles: Info must not answer
        // from a view taken before it.
        let reads = access == Access::Reads;
        let (statuses, generation_times) = (self.statuses.clone(), self.generation_times.clone());
        let prepare = move || {
            let target = target?;
            let id = match &target {
                Target::Volume(v) => CsiId::decode(v).map_err(|e| Error::Resolve(e.into()))?,
                Target::Group(g) => groups::decode_group_id(g)?,
            };
            let prepared = check(&target)?;
            Ok((target, id, prepared))
        };
        let work = move |(target, id, prepared): (Target, CsiId, Q),
                         resolver: &Resolver,
                         creds: &Credentials,
                         claims: &crate::exec::Claims| {
            match target {
                Target::Volume(_) => {
                    let vol = resolver.resolve(&id, creds)?;
                    let out = volume_work(&vol, prepared);
                    if !reads {
                        statuses.changed(&vol);
                    }
                    out
                }
                Target::Group(group_id) => {
                    let group = groups::find(resolver, &id, creds)?;
                    let out = if reads {
                        // A read takes neither the generations' key nor the
                        // members': a generation being taken, or a member
                        // being promoted, does not hold it up.
                        let members = groups::resolve_members_unclaimed(resolver, &group, creds)?;
                        group_work(&group, &members, creds, prepared)
                    } else {
                        let _generations = groups::claim_waiting(claims, &groups::generations_key(&id))?;
                        let (members, _guards) = groups::resolve_members(resolver, &group, creds, claims)?;
                        let out = group_work(&group, &members, creds, prepared);
                        for m in &members {
                            statuses.changed(&m.vol);
                        }
                        generation_times.forget(&group.id.uuid);
                        out
                    };
                    // Any call about a group keeps its generations going
                    // while it is primary here; the scheduler drops it
                    // when it is not.
                    scheduler.watch(&group_id, &id, creds);
                    out
                }
            }
        };
        let key = move |(target, _, _): &(Target, CsiId, Q)| (!reads).then(|| target.id().to_owned());
        self.envelope.run(method, about, key, secrets, prepare, work).await
    }
}

impl ReplicationService {
    fn metrics(&self) -> &Arc<Metrics> {
        self.envelope.metrics()
    }

    /// A call that succeeded moved its volume or group to `state`; None: it
    /// is no longer replicated, and its series go.
    fn observe(&self, target: &Option<Target>, state: Option<ReplicationState>) {
        let m = self.metrics();
        match (target, state) {
            (Some(Target::Volume(id)), Some(s)) => m.volume_state(id, s),
            (Some(Target::Volume(id)), None) => m.forget_volume(id),
            (Some(Target::Group(id)), Some(s)) => m.group_state(id, s),
            (Some(Target::Group(id)), None) => m.forget_group(id),
            (None, _) => {}
        }
    }
}

fn target_id(target: &Result<Target, Error>) -> Option<Target> {
    target.as_ref().ok().cloned()
}

/// The state label Info's health gives a primary.
fn state_of(health: Health) -> ReplicationState {
    match health {
        Health::Healthy => ReplicationState::Primary,
        Health::Unknown | Health::Degraded => ReplicationState::Degraded,
        Health::Error => ReplicationState::Error,
    }
}

/// What an Info call tells the metrics: the state and the last sync of a
/// primary; the role of one that Info refuses; nothing left of a volume
/// that is gone or no longer mirrored.
fn observe_info(
    m: &Metrics,
    target: &Option<Target>,
    vol: &ResolvedVolume,
    info: &Result<replication::ReplicationInfo, Error>,
) {
    let Some(Target::Volume(id)) = target else { return };
    match info {
        Ok(i) => {
            m.volume_state(id, state_of(i.health));
            m.volume_synced(
                id,
                LastSync {
                    time: i.last_sync_time,
                    bytes: Some(i.last_sync_bytes),
                    duration_secs: i.last_sync_duration_secs,
                },
            );
        }
        Err(Error::NoInfoYet(_)) => m.volume_state(id, ReplicationState::Primary),
        Err(Error::ImageNotFound { .. }) => m.forget_volume(id),
        Err(Error::WrongState(_)) => match replication::role(vol) {
            Ok(Some(false)) => m.volume_state(id, ReplicationState::Secondary),
            Ok(None) | Err(Error::ImageNotFound { .. }) => m.forget_volume(id),
            _ => {}
        },
        Err(_) => {}
    }
}

/// Group requests get group defaults: journal mirroring (the only mode in
/// which a group is crash-consistent) unless the class asks otherwise.
fn group_defaults(target: &Target, params: &HashMap<String, String>) -> HashMap<String, String> {
    let mut params = params.clone();
    if matches!(target, Target::Group(_)) {
        params.entry(replication::MIRRORING_MODE.to_owned()).or_insert_with(|| "journal".to_owned());
    }
    params
}

/// Parameters as Enable and Promote take them: the replication parameters
/// with group defaults, and a group's generation interval.
fn enable_params(target: &Target, raw: &HashMap<String, String>) -> Result<(EnableParams, Option<Duration>), Error> {
    refuse_oversize_map("parameter", raw)?;
    let params = EnableParams::parse(&group_defaults(target, raw))?;
    Ok((params, groups::parse_interval(raw)?))
}

/// Whether an RPC only reads (Info, destination info: no guard key, answered
/// while another call changes the volume) or may change roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Reads,
    Changes,
}

/// What a replication request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Volume(String),
    Group(String),
}

impl Target {
    fn id(&self) -> &str {
        match self {
            Target::Volume(id) | Target::Group(id) => id,
        }
    }
}

/// `replication_source.volumegroup`, or else the volume (see `volume_target`).
fn target(legacy_id: &str, source: Option<&ReplicationSource>) -> Result<Target, Error> {
    if let Some(SourceType::Volumegroup(g)) = source.and_then(|s| s.r#type.as_ref()) {
        if !legacy_id.is_empty() {
            return Err(Error::Malformed(format!(
                "volume_id {legacy_id:?} and replication_source.volumegroup are both set; set only the group"
            )));
        }
        if g.volume_group_id.is_empty() {
            return Err(Error::Malformed("replication_source.volumegroup.volume_group_id is empty".into()));
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
        ("", "") => Err(Error::Malformed("no volume given: set replication_source.volume.volume_id".to_owned())),
        (id, "") | ("", id) => Ok(id.to_owned()),
        (a, b) if a == b => Ok(a.to_owned()),
        (a, b) => Err(Error::Malformed(format!(
            "volume_id {a:?} and replication_source.volume.volume_id {b:?} differ; set only one"
        ))),
    }
}

fn info_status(health: Health) -> InfoStatus {
    match health {
        Health::Unknown => InfoStatus::Unknown,
        Health::Healthy => InfoStatus::Healthy,
        Health::Degraded => InfoStatus::Degraded,
        Health::Error => InfoStatus::Error,
    }
}

fn info_response(i: replication::ReplicationInfo) -> GetVolumeReplicationInfoResponse {
    let status = info_status(i.health);
    GetVolumeReplicationInfoResponse {
        last_sync_time: Some(Timestamp { seconds: i.last_sync_time, nanos: 0 }),
        last_sync_duration: i.last_sync_duration_secs.map(|s| PbDuration { seconds: s, nanos: 0 }),
        last_sync_bytes: i.last_sync_bytes,
        status: status as i32,
        status_message: i.status_message,
    }
}

fn group_info_response(i: groups::GroupInfo) -> GetVolumeReplicationInfoResponse {
    GetVolumeReplicationInfoResponse {
        last_sync_time: Some(Timestamp { seconds: i.last_sync_time, nanos: 0 }),
        last_sync_duration: None,
        last_sync_bytes: 0,
        status: info_status(i.health) as i32,
        status_message: i.status_message,
    }
}

#[tonic::async_trait]
impl Controller for ReplicationService {
    async fn enable_volume_replication(
        &self,
        request: Request<EnableVolumeReplicationRequest>,
    ) -> Result<Response<EnableVolumeReplicationResponse>, Status> {
        let req = request.into_inner();
        #[allow(deprecated)]
        let target = target(&req.volume_id, req.replication_source.as_ref());
        let raw = req.parameters;
        let id = target_id(&target);
        self.run(
            ("EnableVolumeReplication", Access::Changes),
            target,
            &req.secrets,
            move |t| enable_params(t, &raw),
            |vol, (params, _)| replication::enable(vol, &params),
            Box::new(|g, m, _, (params, interval)| groups::enable(g, m, &params, interval)),
        )
        .await?;
        self.observe(&id, Some(ReplicationState::Primary));
        Ok(Response::new(EnableVolumeReplicationResponse {}))
    }

    async fn disable_volume_replication(
        &self,
        request: Request<DisableVolumeReplicationRequest>,
    ) -> Result<Response<DisableVolumeReplicationResponse>, Status> {
        let req = request.into_inner();
        #[allow(deprecated)]
        let target = target(&req.volume_id, req.replication_source.as_ref());
        let raw = req.parameters;
        let id = target_id(&target);
        self.run(
            ("DisableVolumeReplication", Access::Changes),
            target,
            &req.secrets,
            move |_| {
                refuse_oversize_map("parameter", &raw)?;
                Ok(DisableParams::parse(&raw)?)
            },
            |vol, params| replication::disable(vol, &params),
            Box::new(|g, m, _, params| groups::disable(g, m, &params)),
        )
        .await?;
        self.observe(&id, None);
        Ok(Response::new(DisableVolumeReplicationResponse {}))
    }

    async fn get_volume_replication_info(
        &self,
        request: Request<GetVolumeReplicationInfoRequest>,
    ) -> Result<Response<GetVolumeReplicationInfoResponse>, Status> {
        let req = request.into_inner();
        #[allow(deprecated)]
        let target = target(&req.volume_id, req.replication_source.as_ref());
        let (id, for_volume, for_group) = (target_id(&target), self.metrics().clone(), self.metrics().clone());
        let (group_id, statuses, group_statuses) = (id.clone(), self.statuses.clone(), self.statuses.clone());
        let times = self.generation_times.clone();
        let info = self
            .run(
                ("GetVolumeReplicationInfo", Access::Reads),
                target,
                &req.secrets,
                |_| Ok(()),
                move |vol, ()| {
                    let info = statuses.info(vol);
                    observe_info(&for_volume, &id, vol, &info);
                    info.map(info_response)
                },
                Box::new(move |g, m, _, ()| {
                    let info = groups::info(g, m, &group_statuses, &times);
                    if let (Ok(i), Some(Target::Group(gid))) = (&info, &group_id) {
                        for_group.group_state(gid, state_of(i.health));
                        for_group.group_synced(gid, i.last_sync_time);
                    }
                    info.map(group_info_response)
                }),
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
        let (for_volume, for_group) = (self.envelope.resolver().clone(), self.envelope.resolver().clone());
        let destination = self
            .run(
                ("GetReplicationDestinationInfo", Access::Reads),
                target,
                &req.secrets,
                |t| Ok(t.id().to_owned()),
                move |vol, source_id| {
                    replication::require_destination(vol)?;
                    let id = CsiId::decode(&source_id).map_err(|e| Error::Resolve(e.into()))?;
                    let peer = for_volume.peer_id(&id, &vol.cluster_id, &vol.io)?;
                    Ok(DestinationType::Volume(VolumeDestination { volume_id: peer.encode() }))
                },
                Box::new(move |g, members, _, _| {
                    groups::require_destinations(g, members)?;
                    let mut volume_ids = HashMap::with_capacity(members.len());
                    // Keyed by the handles a caller on this site holds: the
                    // recorded ones name the site that added each member.
                    for m in members {
                        let here = m.local_id()?;
                        let peer = for_group.peer_id(&here, &m.vol.cluster_id, &m.vol.io)?;
                        volume_ids.insert(here.encode(), peer.encode());
                    }
                    let group = for_group.peer_id(&g.id, &g.cluster_id, &g.io)?;
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
        let req = request.into_inner();
        #[allow(deprecated)]
        let target = target(&req.volume_id, req.replication_source.as_ref());
        let force = req.force;
        // Promote carries the class parameters: the schedule is (re)applied.
        let raw = req.parameters;
        let id = target_id(&target);
        self.run(
            ("PromoteVolume", Access::Changes),
            target,
            &req.secrets,
            move |t| enable_params(t, &raw),
            move |vol, (params, _)| replication::promote(vol, force, params.schedule.as_ref()),
            Box::new(move |g, m, _, (params, interval): (EnableParams, _)| {
                groups::promote(g, m, force, params.schedule.as_ref(), interval).map(drop)
            }),
        )
        .await?;
        self.observe(&id, Some(ReplicationState::Primary));
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
        let id = target_id(&target);
        // Demote uses no parameter, but refuses what every call refuses.
        let raw = req.parameters;
        self.run(
            ("DemoteVolume", Access::Changes),
            target,
            &req.secrets,
            move |_| refuse_oversize_map("parameter", &raw),
            move |vol, ()| replication::demote(vol, force),
            Box::new(move |g, m, _, ()| groups::demote(g, m, force)),
        )
        .await?;
        self.observe(&id, Some(ReplicationState::Secondary));
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
        let id = target_id(&target);
        // Resync uses no parameter, but refuses what every call refuses.
        let raw = req.parameters;
        let ready = self
            .run(
                ("ResyncVolume", Access::Changes),
                target,
                &req.secrets,
                move |_| refuse_oversize_map("parameter", &raw),
                move |vol, ()| replication::resync(vol, force),
                Box::new(move |_, m, _, ()| groups::resync(m, force)),
            )
            .await?;
        self.observe(&id, Some(if ready { ReplicationState::Secondary } else { ReplicationState::Resyncing }));
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
        assert!(matches!(target("a", vol("b").as_ref()), Err(Error::Malformed(_))));
        assert!(matches!(target("", None), Err(Error::Malformed(_))));
        let group = |id: &str| {
            Some(ReplicationSource {
                r#type: Some(SourceType::Volumegroup(VolumeGroupSource { volume_group_id: id.into() })),
            })
        };
        assert_eq!(target("", group("g").as_ref()).unwrap(), Target::Group("g".into()));
        assert!(matches!(target("v", group("g").as_ref()), Err(Error::Malformed(_))));
        assert!(matches!(target("", group("").as_ref()), Err(Error::Malformed(_))));
    }
}
