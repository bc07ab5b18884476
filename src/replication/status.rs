//! What rbd-mirror's site statuses say: the JSON in a description, and the
//! health the csi-addons controller shows for a volume.

use serde::Deserialize;

use crate::ceph::{SiteState, SiteStatus};

/// The JSON part of a replaying site's description, e.g.
/// `replaying, {"local_snapshot_timestamp":1684675261,...}`. Snapshot mode and
/// journal mode fill different fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ReplayDescription {
    #[serde(default)]
    pub local_snapshot_timestamp: Option<i64>,
    #[serde(default)]
    pub last_snapshot_bytes: Option<i64>,
    #[serde(default)]
    pub last_snapshot_sync_seconds: Option<i64>,
    #[serde(default)]
    pub replay_state: Option<String>,
    #[serde(default)]
    pub entries_behind_primary: Option<i64>,
}

impl ReplayDescription {
    /// None when the description carries no JSON (e.g. "local image is primary").
    /// The JSON runs from the first `{` to the last `}`, which tolerates any
    /// prefix rbd-mirror puts in front of it.
    pub fn parse(description: &str) -> Option<Self> {
        let start = description.find('{')?;
        let end = description.rfind('}')?;
        if end < start {
            return None;
        }
        serde_json::from_str(&description[start..=end]).ok()
    }
}

/// GetVolumeReplicationInfoResponse.Status, by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Healthy,
    Degraded,
    Error,
}

/// The health of the local site and its message: the description up to the
/// first comma, so a JSON tail never reaches a Kubernetes condition.
pub fn health(local: Option<&SiteStatus>) -> (Health, String) {
    let Some(local) = local else {
        return (Health::Unknown, "status not found".to_owned());
    };
    let message = local.description.split(',').next().unwrap_or_default().trim().to_owned();
    let health = if !local.up {
        Health::Degraded
    } else {
        match local.state {
            SiteState::Error => Health::Error,
            SiteState::Replaying | SiteState::Stopped => Health::Healthy,
            SiteState::Unknown | SiteState::Syncing | SiteState::StartingReplay | SiteState::StoppingReplay => {
                Health::Unknown
            }
        }
    };
    (health, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(state: SiteState, up: bool, description: &str) -> SiteStatus {
        SiteStatus { mirror_uuid: String::new(), state, description: description.into(), last_update: 0, up }
    }

    #[test]
    fn parses_snapshot_description_from_the_lab() {
        let d = r#"replaying, {"bytes_per_second":2184.53,"bytes_per_snapshot":32768.0,"last_snapshot_bytes":65536,"last_snapshot_sync_seconds":0,"local_snapshot_timestamp":1795304186,"remote_snapshot_timestamp":1795304186,"replay_state":"idle"}"#;
        let p = ReplayDescription::parse(d).unwrap();
        assert_eq!(p.local_snapshot_timestamp, Some(1795304186));
        assert_eq!(p.last_snapshot_bytes, Some(65536));
        assert_eq!(p.last_snapshot_sync_seconds, Some(0));
        assert_eq!(p.replay_state.as_deref(), Some("idle"));
    }

    #[test]
    fn parses_journal_description_and_plain_text() {
        let d = r#"replaying, {"bytes_per_second":2.4,"entries_behind_primary":0,"entries_per_second":0.1,"non_primary_position":{"entry_tid":0,"object_number":0,"tag_tid":4},"primary_position":{"entry_tid":0,"object_number":0,"tag_tid":4}}"#;
        let p = ReplayDescription::parse(d).unwrap();
        assert_eq!(p.entries_behind_primary, Some(0));
        assert_eq!(p.local_snapshot_timestamp, None);
        assert_eq!(ReplayDescription::parse("local image is primary"), None);
        assert_eq!(ReplayDescription::parse("replaying, {broken"), None);
    }

    #[test]
    fn maps_site_states_to_health() {
        assert_eq!(health(None), (Health::Unknown, "status not found".into()));
        assert_eq!(health(Some(&site(SiteState::Stopped, true, "local image is primary"))).0, Health::Healthy);
        assert_eq!(health(Some(&site(SiteState::Stopped, false, "x"))).0, Health::Degraded);
        assert_eq!(health(Some(&site(SiteState::Error, true, "split-brain"))), (Health::Error, "split-brain".into()));
        let (h, m) = health(Some(&site(SiteState::Replaying, true, r#"replaying, {"a":1}"#)));
        assert_eq!((h, m.as_str()), (Health::Healthy, "replaying"));
        assert_eq!(health(Some(&site(SiteState::Syncing, true, "syncing"))).0, Health::Unknown);
    }
}
