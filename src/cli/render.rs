//! What a client command prints: each typed answer as one JSON object, shown
//! as that object (`--output json`) or as `key: value` lines (text).

use clap::ValueEnum;
use rbd_addons::client::{ClientError, Destination, Generations, Reclaimed, Subject, code_name, rfc3339};
use rbd_addons::proto::csi::v1::VolumeGroupSnapshot;
use rbd_addons::proto::identity::GetIdentityResponse;
use rbd_addons::proto::replication::GetVolumeReplicationInfoResponse;
use rbd_addons::proto::replication::get_volume_replication_info_response::Status as InfoStatus;
use rbd_addons::proto::volumegroup::VolumeGroup;
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

pub(super) fn print(reply: &Value, format: Format) {
    match format {
        Format::Json => println!("{reply}"),
        Format::Text => println!("{}", text(reply)),
    }
}

/// The error on stderr; with JSON output also as `{"error": {code, message}}`
/// on stdout, so a script reads one object either way.
pub(super) fn print_error(e: &ClientError, format: Format) {
    if format == Format::Json {
        let code = match e {
            ClientError::Rpc(s) => code_name(s.code()),
            ClientError::Connect { .. } => "UNAVAILABLE",
            ClientError::Usage(_) => "USAGE",
        };
        println!("{}", json!({"error": {"code": code, "message": e.to_string()}}));
    }
    eprintln!("rbd-addons: {e}");
}

pub(super) fn identity(r: &GetIdentityResponse) -> Value {
    json!({"name": r.name, "vendor_version": r.vendor_version, "manifest": r.manifest})
}

pub(super) fn capabilities(names: &[String]) -> Value {
    json!({ "capabilities": names })
}

pub(super) fn ready(ready: bool) -> Value {
    json!({ "ready": ready })
}

/// A replication call's outcome: the subject's field and one `key: value`.
pub(super) fn about(subject: &Subject, key: &str, value: impl Into<Value>) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(key.to_owned(), value.into());
    insert_subject(&mut map, subject);
    Value::Object(map)
}

fn insert_subject(map: &mut serde_json::Map<String, Value>, subject: &Subject) {
    let (k, v) = match subject {
        Subject::Volume(v) => ("volume_id", v),
        Subject::Group(g) => ("group_id", g),
    };
    map.insert(k.to_owned(), json!(v));
}

pub(super) fn info(subject: &Subject, r: &GetVolumeReplicationInfoResponse) -> Value {
    let status = InfoStatus::try_from(r.status).unwrap_or(InfoStatus::Unknown);
    let last = r.last_sync_time.as_ref().map(|t| t.seconds);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut v = json!({
        "last_sync_time": last.map(rfc3339),
        "last_sync_age_seconds": last.map(|t| now - t),
        "last_sync_duration_seconds": r.last_sync_duration.as_ref().map(|d| d.seconds),
        "last_sync_bytes": r.last_sync_bytes,
        "status": status.as_str_name(),
        "status_message": r.status_message,
    });
    if let Value::Object(map) = &mut v {
        insert_subject(map, subject);
    }
    v
}

pub(super) fn destination(d: &Destination) -> Value {
    match d {
        Destination::Volume(v) => json!({ "destination_volume_id": v }),
        Destination::Group { group_id, volume_ids } => {
            json!({"destination_group_id": group_id, "destination_volume_ids": volume_ids})
        }
        Destination::None => json!({}),
    }
}

pub(super) fn group(g: &VolumeGroup) -> Value {
    let volumes: Vec<&str> = g.volumes.iter().map(|v| v.volume_id.as_str()).collect();
    json!({"group_id": g.volume_group_id, "volumes": volumes})
}

pub(super) fn group_list(groups: &[VolumeGroup], next_token: &str) -> Value {
    let details: Vec<Value> = groups.iter().map(group).collect();
    let ids: Vec<&str> = groups.iter().map(|g| g.volume_group_id.as_str()).collect();
    json!({"groups": ids, "details": details, "next_token": Some(next_token).filter(|t| !t.is_empty())})
}

pub(super) fn deleted(key: &str, id: &str) -> Value {
    json!({ key: id, "deleted": true })
}

pub(super) fn generations(g: &Generations) -> Value {
    let lines: Vec<String> = g
        .members
        .iter()
        .map(|m| {
            let held: Vec<String> = m
                .generations
                .iter()
                .map(|h| {
                    let cuts = match h.cuts {
                        0 => " (fence post only)".to_owned(),
                        1 => String::new(),
                        k => format!(" ({k} cuts)"),
                    };
                    format!("{}@{}{cuts}", h.number, rfc3339(h.taken))
                })
                .collect();
            format!("{}: {}", m.volume_id, if held.is_empty() { "none".to_owned() } else { held.join(" ") })
        })
        .collect();
    json!({"group_id": g.group_id, "newest_common_generation": g.newest_common, "members": lines})
}

pub(super) fn group_snapshot(g: &VolumeGroupSnapshot) -> Value {
    let snapshots: Vec<Value> = g
        .snapshots
        .iter()
        .map(|s| {
            json!({
                "snapshot_id": s.snapshot_id,
                "source_volume_id": s.source_volume_id,
                "size_bytes": s.size_bytes,
                "ready_to_use": s.ready_to_use,
                "group_snapshot_id": s.group_snapshot_id,
            })
        })
        .collect();
    json!({
        "group_snapshot_id": g.group_snapshot_id,
        "ready_to_use": g.ready_to_use,
        "creation_time": g.creation_time.as_ref().map(|t| rfc3339(t.seconds)),
        "snapshots": snapshots,
    })
}

pub(super) fn fenced(cidrs: &[String], fenced: bool) -> Value {
    json!({"cidrs": cidrs, "fenced": fenced})
}

pub(super) fn fence_list(cidrs: &[String]) -> Value {
    json!({ "cidrs": cidrs })
}

pub(super) fn reclaimed(volume_id: &str, r: &Reclaimed) -> Value {
    json!({"volume_id": volume_id, "pre_usage_bytes": r.pre_usage_bytes, "post_usage_bytes": r.post_usage_bytes})
}

/// One `key: value` line per field, nulls left out.
fn text(v: &Value) -> String {
    let Value::Object(map) = v else {
        return v.to_string();
    };
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}: {s}"),
            // One level down (GetIdentity's manifest): `manifest.key: value`.
            Value::Object(inner) => inner
                .iter()
                .map(|(ik, iv)| format!("{k}.{ik}: {}", iv.as_str().map_or(iv.to_string(), str::to_owned)))
                .collect::<Vec<_>>()
                .join("\n"),
            Value::Array(items) => {
                let parts: Vec<String> =
                    items.iter().map(|i| i.as_str().map_or(i.to_string(), str::to_owned)).collect();
                format!("{k}: {}", parts.join(", "))
            }
            other => format!("{k}: {other}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
