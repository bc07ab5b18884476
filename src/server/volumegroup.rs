use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::status::to_group_status;
use crate::cephcsi::{Credentials, Resolver};
use crate::exec::{Claims, Executor};
use crate::groups::{self, CreateParams, GroupView};
use crate::proto::csi::v1::Volume;
use crate::proto::volumegroup::controller_server::Controller;
use crate::proto::volumegroup::*;
use crate::replication::Error;

/// Longest request name we accept (Kubernetes object names are at most 253).
const MAX_NAME_LEN: usize = 253;
/// ListVolumeGroups' page size when the caller sets none, and the largest.
const MAX_PAGE: usize = 1000;
/// Guard keys of list calls (never a group ID, which starts with 0001-).
const LIST_KEY: &str = "list-volume-groups/";

pub struct VolumeGroupService {
    exec: Arc<Executor>,
    resolver: Arc<Resolver>,
}

impl VolumeGroupService {
    pub fn new(exec: Arc<Executor>, resolver: Arc<Resolver>) -> Self {
        Self { exec, resolver }
    }

    /// Validates the secrets, then runs `work` off the runtime under the guard
    /// of `key` (the group ID, or the request name for Create).
    async fn run<T: Send + 'static>(
        &self,
        method: &'static str,
        key: String,
        secrets: &HashMap<String, String>,
        work: impl FnOnce(&Resolver, &Credentials, &Claims) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = async {
            let creds = Credentials::from_secrets(secrets).map_err(|e| Error::Resolve(e.into()))?;
            let resolver = self.resolver.clone();
            let claims = self.exec.claims();
            self.exec.run(&key, move || work(&resolver, &creds, &claims)).await
        }
        .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        result
            .map_err(|err| {
                // A list is about no one group.
                let subject = Some(key.as_str()).filter(|k| !k.starts_with(LIST_KEY));
                let status = to_group_status(subject, &err);
                warn!(method, group = key, code = ?status.code(), elapsed_ms, error = %status.message(), "call failed");
                status
            })
            .inspect(|_| info!(method, group = key, elapsed_ms, "call succeeded"))
    }
}

fn refuse(key: &str, err: Error) -> Status {
    to_group_status(Some(key), &err)
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

fn check_group_id(id: &str) -> Result<crate::cephcsi::CsiId, Status> {
    if id.is_empty() {
        return Err(refuse(id, Error::InvalidArgument("volume_group_id is empty".into())));
    }
    groups::decode_group_id(id).map_err(|e| refuse(id, e))
}

#[tonic::async_trait]
impl Controller for VolumeGroupService {
    async fn create_volume_group(
        &self,
        request: Request<CreateVolumeGroupRequest>,
    ) -> Result<Response<CreateVolumeGroupResponse>, Status> {
        let req = request.into_inner();
        let name = req.name;
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(refuse(
                &name,
                Error::InvalidArgument(format!("name must be 1 to {MAX_NAME_LEN} printable characters")),
            ));
        }
        let params = CreateParams::parse(&req.parameters).map_err(|e| refuse(&name, e))?;
        let volume_ids = req.volume_ids;
        let key = format!("group-name/{name}");
        let view = self
            .run("CreateVolumeGroup", key, &req.secrets, move |resolver, creds, claims| {
                groups::create(resolver, creds, claims, &name, &params, &volume_ids)
            })
            .await?;
        Ok(Response::new(CreateVolumeGroupResponse { volume_group: Some(to_proto(view)) }))
    }

    async fn modify_volume_group_membership(
        &self,
        request: Request<ModifyVolumeGroupMembershipRequest>,
    ) -> Result<Response<ModifyVolumeGroupMembershipResponse>, Status> {
        let req = request.into_inner();
        let id = check_group_id(&req.volume_group_id)?;
        let volume_ids = req.volume_ids;
        let view = self
            .run("ModifyVolumeGroupMembership", req.volume_group_id, &req.secrets, move |resolver, creds, claims| {
                groups::modify(resolver, creds, claims, &id, &volume_ids)
            })
            .await?;
        Ok(Response::new(ModifyVolumeGroupMembershipResponse { volume_group: Some(to_proto(view)) }))
    }

    async fn delete_volume_group(
        &self,
        request: Request<DeleteVolumeGroupRequest>,
    ) -> Result<Response<DeleteVolumeGroupResponse>, Status> {
        let req = request.into_inner();
        let id = check_group_id(&req.volume_group_id)?;
        self.run("DeleteVolumeGroup", req.volume_group_id, &req.secrets, move |resolver, creds, _| {
            groups::delete(resolver, creds, &id)
        })
        .await?;
        Ok(Response::new(DeleteVolumeGroupResponse {}))
    }

    async fn list_volume_groups(
        &self,
        request: Request<ListVolumeGroupsRequest>,
    ) -> Result<Response<ListVolumeGroupsResponse>, Status> {
        let req = request.into_inner();
        let max = match req.max_entries {
            n if n < 0 => {
                return Err(refuse("", Error::InvalidArgument(format!("max_entries is {n}; it cannot be negative"))));
            }
            0 => MAX_PAGE,
            n => (n as usize).min(MAX_PAGE),
        };
        let token = req.starting_token;
        // Lists change nothing: each call gets its own guard key.
        static LISTS: AtomicU64 = AtomicU64::new(0);
        let key = format!("{LIST_KEY}{}", LISTS.fetch_add(1, Ordering::Relaxed));
        let page = self
            .run("ListVolumeGroups", key, &req.secrets, move |resolver, creds, _| {
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
        let id = check_group_id(&req.volume_group_id)?;
        let view = self
            .run("ControllerGetVolumeGroup", req.volume_group_id, &req.secrets, move |resolver, creds, _| {
                groups::get(resolver, creds, &id)
            })
            .await?;
        Ok(Response::new(ControllerGetVolumeGroupResponse { volume_group: Some(to_proto(view)) }))
    }
}
