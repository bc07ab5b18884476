use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::envelope::{About, Envelope, MAX_ID_LEN, refuse_oversize_id, refuse_oversize_map};
use crate::Error;
use crate::cephcsi::Resolver;
use crate::exec::Executor;
use crate::groups::{self, CreateParams, GroupView};
use crate::proto::csi::v1::Volume;
use crate::proto::volumegroup::controller_server::Controller;
use crate::proto::volumegroup::*;

/// Longest request name we accept (Kubernetes object names are at most 253).
const MAX_NAME_LEN: usize = 253;
/// ListVolumeGroups' page size when the caller sets none, and the largest.
const MAX_PAGE: usize = 1000;

pub(super) struct VolumeGroupService {
    envelope: Envelope,
}

impl VolumeGroupService {
    pub(super) fn new(exec: Arc<Executor>, resolver: Arc<Resolver>) -> Self {
        Self { envelope: Envelope::new(exec, resolver) }
    }
}

fn to_proto(v: GroupView) -> VolumeGroup {
    VolumeGroup {
        volume_group_id: v.group_id,
        volume_group_context: v.context,
        volumes: v
            .members
            .into_iter()
            .map(|m| Volume { capacity_bytes: m.size_bytes, volume_id: m.volume_id, ..Default::default() })
            .collect(),
    }
}

fn check_group_id(id: &str) -> Result<crate::cephcsi::CsiId, Error> {
    if id.is_empty() {
        return Err(Error::Malformed("volume_group_id is empty".into()));
    }
    groups::decode_group_id(id)
}

#[tonic::async_trait]
impl Controller for VolumeGroupService {
    async fn create_volume_group(
        &self,
        request: Request<CreateVolumeGroupRequest>,
    ) -> Result<Response<CreateVolumeGroupResponse>, Status> {
        let req = request.into_inner();
        let (name, raw, volume_ids) = (req.name, req.parameters, req.volume_ids);
        let about = About::Group(name.clone());
        let check = move || {
            if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
                return Err(Error::Malformed(format!("name must be 1 to {MAX_NAME_LEN} printable characters")));
            }
            refuse_oversize_map("parameter", &raw)?;
            if let Some(v) = volume_ids.iter().find(|v| v.len() > MAX_ID_LEN) {
                refuse_oversize_id("a volume ID", v)?;
            }
            Ok((name, CreateParams::parse(&raw)?, volume_ids))
        };
        let key = |(name, _, _): &(String, CreateParams, Vec<String>)| Some(format!("group-name/{name}"));
        let view = self
            .envelope
            .run(
                "CreateVolumeGroup",
                about,
                key,
                &req.secrets,
                check,
                |(name, params, ids), resolver, creds, claims| {
                    groups::create(resolver, creds, claims, &name, &params, &ids)
                },
            )
            .await?;
        Ok(Response::new(CreateVolumeGroupResponse { volume_group: Some(to_proto(view)) }))
    }

    async fn modify_volume_group_membership(
        &self,
        request: Request<ModifyVolumeGroupMembershipRequest>,
    ) -> Result<Response<ModifyVolumeGroupMembershipResponse>, Status> {
        let req = request.into_inner();
        let (group_id, volume_ids) = (req.volume_group_id, req.volume_ids);
        let check = || {
            if let Some(v) = volume_ids.iter().find(|v| v.len() > MAX_ID_LEN) {
                refuse_oversize_id("a volume ID", v)?;
            }
            Ok((check_group_id(&group_id)?, volume_ids))
        };
        let view = self
            .envelope
            .run(
                "ModifyVolumeGroupMembership",
                About::Group(group_id.clone()),
                |_| Some(group_id.clone()),
                &req.secrets,
                check,
                |(id, ids), resolver, creds, claims| groups::modify(resolver, creds, claims, &id, &ids),
            )
            .await?;
        Ok(Response::new(ModifyVolumeGroupMembershipResponse { volume_group: Some(to_proto(view)) }))
    }

    async fn delete_volume_group(
        &self,
        request: Request<DeleteVolumeGroupRequest>,
    ) -> Result<Response<DeleteVolumeGroupResponse>, Status> {
        let req = request.into_inner();
        let group_id = req.volume_group_id;
        self.envelope
            .run(
                "DeleteVolumeGroup",
                About::Group(group_id.clone()),
                |_| Some(group_id.clone()),
                &req.secrets,
                || check_group_id(&group_id),
                |id, resolver, creds, _| groups::delete(resolver, creds, &id),
            )
            .await?;
        Ok(Response::new(DeleteVolumeGroupResponse {}))
    }

    async fn list_volume_groups(
        &self,
        request: Request<ListVolumeGroupsRequest>,
    ) -> Result<Response<ListVolumeGroupsResponse>, Status> {
        let req = request.into_inner();
        let (max_entries, token) = (req.max_entries, req.starting_token);
        let check = move || {
            let max = match max_entries {
                n if n < 0 => return Err(Error::Malformed(format!("max_entries is {n}; it cannot be negative"))),
                0 => MAX_PAGE,
                n => (n as usize).min(MAX_PAGE),
            };
            refuse_oversize_id("starting_token", &token)?;
            Ok((max, token))
        };
        // Lists change nothing: no key.
        let key = |_: &(usize, String)| None;
        let page = self
            .envelope
            .run("ListVolumeGroups", About::Nothing, key, &req.secrets, check, |(max, token), resolver, creds, _| {
                groups::list(resolver, creds, max, &token)
            })
            .await?;
        Ok(Response::new(ListVolumeGroupsResponse {
            entries: page
                .groups
                .into_iter()
                .map(|g| list_volume_groups_response::Entry { volume_group: Some(to_proto(g)) })
                .collect(),
            next_token: page.next_token,
        }))
    }

    async fn controller_get_volume_group(
        &self,
        request: Request<ControllerGetVolumeGroupRequest>,
    ) -> Result<Response<ControllerGetVolumeGroupResponse>, Status> {
        let req = request.into_inner();
        let group_id = req.volume_group_id;
        let view = self
            .envelope
            .run(
                "ControllerGetVolumeGroup",
                About::Group(group_id.clone()),
                |_| Some(group_id.clone()),
                &req.secrets,
                || check_group_id(&group_id),
                |id, resolver, creds, _| groups::get(resolver, creds, &id),
            )
            .await?;
        Ok(Response::new(ControllerGetVolumeGroupResponse { volume_group: Some(to_proto(view)) }))
    }
}
