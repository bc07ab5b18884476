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

impl ReplicationService {
    pub(super) fn new(exec: Arc<Executor>, resolver: Arc<Resolver>, scheduler: Arc<Scheduler>) -> Self {
        Self {
            envelope: Envelope::new(exec, resolver),
            generation_times: scheduler.times(),
            scheduler,
            statuses: Arc::new(StatusCache::new()),
        }
    }

    /// Every replication RPC: the envelope's path, with the target decoded
    /// once and the op's checks among its checks, then the op on the volume
    /// or on the group, under its guard(s) unless it only reads.
    async fn run<O: Op>(
        &self,
        op: O,
        target: Result<Target, Error>,
        secrets: &HashMap<String, String>,
    ) -> Result<O::Out, Status> {
        let about = match &target {
            Ok(Target::Volume(v)) => About::Volume(v.clone()),
            Ok(Target::Group(g)) => About::Group(g.clone()),
            Err(_) => About::Nothing,
        };
        let scheduler = self.scheduler.clone();
        let (statuses, generation_times) = (self.statuses.clone(), self.generation_times.clone());
        let prepare = move || {
            let target = target?;
            let id = match &target {
                Target::Volume(v) => CsiId::decode(v).map_err(|e| Error::Resolve(e.into()))?,
                Target::Group(g) => groups::decode_group_id(g)?,
            };
            let checked = op.check(&target)?;
            Ok((target, id, op, checked))
        };
        let work = move |(target, id, op, checked): (Target, CsiId, O, O::Checked),
                         resolver: &Resolver,
                         creds: &Credentials,
                         claims: &crate::exec::Claims| {
            match target {
                Target::Volume(_) => {
                    let vol = resolver.resolve(&id, creds)?;
                    let out = op.on_volume(&vol, &id, checked);
                    // Info must not answer from a view taken before a call
                    // that may have changed the role.
                    if O::CHANGES_ROLES {
                        statuses.changed(&vol);
                    }
                    out
                }
                Target::Group(group_id) => {
                    let group = groups::find(resolver, &id, creds)?;
                    let out = if O::CHANGES_ROLES {
                        let _generations = groups::claim_waiting(claims, &groups::generations_key(&id))?;
                        let (members, _guards) = groups::resolve_members(resolver, &group, creds, claims)?;
                        let out = op.on_group(&group, &members, checked);
                        for m in &members {
                            statuses.changed(&m.vol);
                        }
                        generation_times.forget(&group.id.uuid);
                        out
                    } else {
                        // A read takes neither the generations' key nor the
                        // members': a generation being taken, or a member
                        // being promoted, does not hold it up.
                        let members = groups::resolve_members_unclaimed(resolver, &group, creds)?;
                        op.on_group(&group, &members, checked)
                    };
                    // Any call about a group keeps its generations going
                    // while it is primary here; the scheduler drops it
                    // when it is not.
                    scheduler.watch(&group_id, &id, creds);
                    out
                }
            }
        };
        let key = |(target, ..): &(Target, CsiId, O, O::Checked)| O::CHANGES_ROLES.then(|| target.id().to_owned());
        self.envelope.run(O::METHOD, about, key, secrets, prepare, work).await
    }
}

/// One replication RPC as the server does it: its name, whether it may
/// change roles (then it holds the volume's or the group's guard, and Info
/// forgets its view after it), the checks that need no Ceph, and the work on
/// a volume or on a volume group. Both run off the runtime, in the envelope.
trait Op: Send + 'static {
    const METHOD: &'static str;
    const CHANGES_ROLES: bool = true;
    /// What the checks hand the work (parsed parameters, say).
    type Checked: Send + 'static;
    type Out: Send + 'static;

    fn check(&self, target: &Target) -> Result<Self::Checked, Error>;
    /// `id`: the volume's handle, decoded.
    fn on_volume(self, vol: &ResolvedVolume, id: &CsiId, checked: Self::Checked) -> Result<Self::Out, Error>;
    fn on_group(self, group: &Group, members: &[Member], checked: Self::Checked) -> Result<Self::Out, Error>;
}

/// The parameters every call refuses when oversized, though only Enable,
/// Disable and Promote use them.
fn unused_parameters(raw: &HashMap<String, String>) -> Result<(), Error> {
    refuse_oversize_map("parameter", raw)
}

struct Enable {
    parameters: HashMap<String, String>,
}

impl Op for Enable {
    const METHOD: &'static str = "EnableVolumeReplication";
    type Checked = (EnableParams, Option<Duration>);
    type Out = ();

    fn check(&self, target: &Target) -> Result<Self::Checked, Error> {
        enable_params(target, &self.parameters)
    }

    fn on_volume(self, vol: &ResolvedVolume, _: &CsiId, (params, _): Self::Checked) -> Result<(), Error> {
        replication::enable(vol, &params)
    }

    fn on_group(self, group: &Group, members: &[Member], (params, interval): Self::Checked) -> Result<(), Error> {
        groups::enable(group, members, &params, interval)
    }
}

struct Disable {
    parameters: HashMap<String, String>,
}

impl Op for Disable {
    const METHOD: &'static str = "DisableVolumeReplication";
    type Checked = DisableParams;
    type Out = ();

    fn check(&self, _: &Target) -> Result<DisableParams, Error> {
        refuse_oversize_map("parameter", &self.parameters)?;
        Ok(DisableParams::parse(&self.parameters)?)
    }

    fn on_volume(self, vol: &ResolvedVolume, _: &CsiId, params: DisableParams) -> Result<(), Error> {
        replication::disable(vol, &params)
    }

    fn on_group(self, group: &Group, members: &[Member], params: DisableParams) -> Result<(), Error> {
        groups::disable(group, members, &params)
    }
}

struct Promote {
    force: bool,
    /// The class parameters: the schedule is (re)applied on promote.
    parameters: HashMap<String, String>,
}

impl Op for Promote {
    const METHOD: &'static str = "PromoteVolume";
    type Checked = (EnableParams, Option<Duration>);
    type Out = ();

    fn check(&self, target: &Target) -> Result<Self::Checked, Error> {
        enable_params(target, &self.parameters)
    }

    fn on_volume(self, vol: &ResolvedVolume, _: &CsiId, (params, _): Self::Checked) -> Result<(), Error> {
        replication::promote(vol, self.force, params.schedule.as_ref())
    }

    fn on_group(self, group: &Group, members: &[Member], (params, interval): Self::Checked) -> Result<(), Error> {
        groups::promote(group, members, self.force, params.schedule.as_ref(), interval).map(drop)
    }
}

struct Demote {
    /// Demote even when the peer holds no copy yet (strands the volume
    /// without a primary; the controller never sets it).
    force: bool,
    parameters: HashMap<String, String>,
}

impl Op for Demote {
    const METHOD: &'static str = "DemoteVolume";
    type Checked = ();
    type Out = ();

    fn check(&self, _: &Target) -> Result<(), Error> {
        unused_parameters(&self.parameters)
    }

    fn on_volume(self, vol: &ResolvedVolume, _: &CsiId, (): ()) -> Result<(), Error> {
        replication::demote(vol, self.force)
    }

    fn on_group(self, group: &Group, members: &[Member], (): ()) -> Result<(), Error> {
        groups::demote(group, members, self.force)
    }
}

struct Resync {
    force: bool,
    parameters: HashMap<String, String>,
}

impl Op for Resync {
    const METHOD: &'static str = "ResyncVolume";
    type Checked = ();
    /// Whether the copy is ready.
    type Out = bool;

    fn check(&self, _: &Target) -> Result<(), Error> {
        unused_parameters(&self.parameters)
    }

    fn on_volume(self, vol: &ResolvedVolume, _: &CsiId, (): ()) -> Result<bool, Error> {
        replication::resync(vol, self.force)
    }

    fn on_group(self, _: &Group, members: &[Member], (): ()) -> Result<bool, Error> {
        groups::resync(members, self.force)
    }
}

/// Info answers from the pool's view (a volume) or the members' (a group),
/// and tells the metrics what it saw.
struct Info {
    target: Option<Target>,
    metrics: Arc<Metrics>,
    statuses: Arc<StatusCache>,
    generation_times: Arc<groups::GenerationTimes>,
}

impl Op for Info {
    const METHOD: &'static str = "GetVolumeReplicationInfo";
    const CHANGES_ROLES: bool = false;
    type Checked = ();
    type Out = GetVolumeReplicationInfoResponse;

    fn check(&self, _: &Target) -> Result<(), Error> {
        Ok(())
    }

    fn on_volume(self, vol: &ResolvedVolume, _: &CsiId, (): ()) -> Result<Self::Out, Error> {
        let info = self.statuses.info(vol);
        observe_info(&self.metrics, &self.target, vol, &info);
        info.map(info_response)
    }

    fn on_group(self, group: &Group, members: &[Member], (): ()) -> Result<Self::Out, Error> {
        let info = groups::info(group, members, &self.statuses, &self.generation_times);
        if let (Ok(i), Some(Target::Group(gid))) = (&info, &self.target) {
            self.metrics.group_state(gid, state_of(i.health));
            self.metrics.group_synced(gid, i.last_sync_time);
        }
        info.map(group_info_response)
    }
}

/// The handles the peer site gives the volume, or the group and each member.
struct Destination {
    resolver: Arc<Resolver>,
}

impl Op for Destination {
    const METHOD: &'static str = "GetReplicationDestinationInfo";
    const CHANGES_ROLES: bool = false;
    type Checked = ();
    type Out = DestinationType;

    fn check(&self, _: &Target) -> Result<(), Error> {
        Ok(())
    }

    fn on_volume(self, vol: &ResolvedVolume, id: &CsiId, (): ()) -> Result<DestinationType, Error> {
        replication::require_destination(vol)?;
        let peer = self.resolver.peer_id(id, &vol.cluster_id, &vol.io)?;
        Ok(DestinationType::Volume(VolumeDestination { volume_id: peer.encode() }))
    }

    fn on_group(self, group: &Group, members: &[Member], (): ()) -> Result<DestinationType, Error> {
        groups::require_destinations(group, members)?;
        let mut volume_ids = HashMap::with_capacity(members.len());
        // Keyed by the handles a caller on this site holds: the recorded
        // ones name the site that added each member.
        for m in members {
            let here = m.local_id()?;
            let peer = self.resolver.peer_id(&here, &m.vol.cluster_id, &m.vol.io)?;
            volume_ids.insert(here.encode(), peer.encode());
        }
        let peer_group = self.resolver.peer_id(&group.id, &group.cluster_id, &group.io)?;
        Ok(DestinationType::Volumegroup(VolumeGroupDestination { volume_group_id: peer_group.encode(), volume_ids }))
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

impl ReplicationService {
    /// A call that may change roles: the op on the request's target, then
    /// the metrics told the state it left (None: no longer replicated).
    async fn change<O: Op>(
        &self,
        op: O,
        (legacy_id, source): (&str, Option<&ReplicationSource>),
        secrets: &HashMap<String, String>,
        state: impl FnOnce(&O::Out) -> Option<ReplicationState>,
    ) -> Result<O::Out, Status> {
        let target = target(legacy_id, source);
        let id = target_id(&target);
        let out = self.run(op, target, secrets).await?;
        self.observe(&id, state(&out));
        Ok(out)
    }
}

#[tonic::async_trait]
impl Controller for ReplicationService {
    async fn enable_volume_replication(
        &self,
        request: Request<EnableVolumeReplicationRequest>,
    ) -> Result<Response<EnableVolumeReplicationResponse>, Status> {
        let r = request.into_inner();
        #[allow(deprecated)]
        let on = (r.volume_id.as_str(), r.replication_source.as_ref());
        self.change(Enable { parameters: r.parameters }, on, &r.secrets, |_| Some(ReplicationState::Primary)).await?;
        Ok(Response::new(EnableVolumeReplicationResponse {}))
    }

    async fn disable_volume_replication(
        &self,
        request: Request<DisableVolumeReplicationRequest>,
    ) -> Result<Response<DisableVolumeReplicationResponse>, Status> {
        let r = request.into_inner();
        #[allow(deprecated)]
        let on = (r.volume_id.as_str(), r.replication_source.as_ref());
        self.change(Disable { parameters: r.parameters }, on, &r.secrets, |_| None).await?;
        Ok(Response::new(DisableVolumeReplicationResponse {}))
    }

    async fn get_volume_replication_info(
        &self,
        request: Request<GetVolumeReplicationInfoRequest>,
    ) -> Result<Response<GetVolumeReplicationInfoResponse>, Status> {
        let req = request.into_inner();
        #[allow(deprecated)]
        let target = target(&req.volume_id, req.replication_source.as_ref());
        let op = Info {
            target: target_id(&target),
            metrics: self.metrics().clone(),
            statuses: self.statuses.clone(),
            generation_times: self.generation_times.clone(),
        };
        Ok(Response::new(self.run(op, target, &req.secrets).await?))
    }

    async fn get_replication_destination_info(
        &self,
        request: Request<GetReplicationDestinationInfoRequest>,
    ) -> Result<Response<GetReplicationDestinationInfoResponse>, Status> {
        let req = request.into_inner();
        let target = target("", req.replication_source.as_ref());
        let op = Destination { resolver: self.envelope.resolver().clone() };
        let destination = self.run(op, target, &req.secrets).await?;
        Ok(Response::new(GetReplicationDestinationInfoResponse {
            replication_destination: Some(ReplicationDestination { r#type: Some(destination) }),
        }))
    }

    async fn promote_volume(
        &self,
        request: Request<PromoteVolumeRequest>,
    ) -> Result<Response<PromoteVolumeResponse>, Status> {
        let r = request.into_inner();
        #[allow(deprecated)]
        let on = (r.volume_id.as_str(), r.replication_source.as_ref());
        let op = Promote { force: r.force, parameters: r.parameters };
        self.change(op, on, &r.secrets, |_| Some(ReplicationState::Primary)).await?;
        Ok(Response::new(PromoteVolumeResponse {}))
    }

    async fn demote_volume(
        &self,
        request: Request<DemoteVolumeRequest>,
    ) -> Result<Response<DemoteVolumeResponse>, Status> {
        let r = request.into_inner();
        #[allow(deprecated)]
        let on = (r.volume_id.as_str(), r.replication_source.as_ref());
        let op = Demote { force: r.force, parameters: r.parameters };
        self.change(op, on, &r.secrets, |_| Some(ReplicationState::Secondary)).await?;
        Ok(Response::new(DemoteVolumeResponse {}))
    }

    async fn resync_volume(
        &self,
        request: Request<ResyncVolumeRequest>,
    ) -> Result<Response<ResyncVolumeResponse>, Status> {
        let r = request.into_inner();
        #[allow(deprecated)]
        let on = (r.volume_id.as_str(), r.replication_source.as_ref());
        let state = |ready: &bool| Some(if *ready { ReplicationState::Secondary } else { ReplicationState::Resyncing });
        let ready = self.change(Resync { force: r.force, parameters: r.parameters }, on, &r.secrets, state).await?;
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
