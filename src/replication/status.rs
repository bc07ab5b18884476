//! What rbd-mirror's site statuses say: the JSON in a description, and the
//! health the csi-addons controller shows for a volume.

use serde::Deserialize;

use crate::ceph::{GlobalStatus, SiteState, SiteStatus};

/// The JSON part of a replaying site's description, e.g.
/// `replaying, {"local_snapshot_timestamp":1684675261,...}`. Snapshot mode and
/// journal mode fill different fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub(crate) struct ReplayDescription {
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
    pub(crate) fn parse(description: &str) -> Option<Self> {
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
pub(crate) enum Health {
    Unknown,
    Healthy,
    Degraded,
    Error,
}

/// The health of the local site and its message: the description up to the
/// first comma, so a JSON tail never reaches a Kubernetes condition.
pub(crate) fn health(local: Option<&SiteStatus>) -> (Health, String) {
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

/// What rbd-mirror has told this site about the peer's copy of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerCopy {
    /// The peer's rbd-mirror has reported on its own copy: it exists.
    Reported,
    /// No report yet (a new image is `status not found` for up to 30 s), or
    /// the peer failed to create its copy: as far as this site can tell, the
    /// peer holds nothing, and can create its copy only from a primary.
    NoneKnown,
}

/// Whether the peer holds a copy, from the peer sites' entries of this site's
/// global status (written here by the peer's rbd-mirror).
pub(super) fn peer_copy(status: &GlobalStatus) -> PeerCopy {
    let has_copy = |r: &SiteStatus| match r.state {
        SiteState::Syncing | SiteState::Replaying | SiteState::StoppingReplay | SiteState::Stopped => true,
        // "starting_replay" is every bootstrap, also one that will fail.
        SiteState::StartingReplay => false,
        // Bootstrap failures ("error bootstrapping replay", "remote image is
        // not primary") leave nothing; any other error is about a copy.
        SiteState::Error => !r.description.contains("bootstrap") && !r.description.contains("is not primary"),
        SiteState::Unknown => !r.description.is_empty() && r.description != "status not found",
    };
    if status.remotes().any(has_copy) { PeerCopy::Reported } else { PeerCopy::NoneKnown }
}

/// Info's message when the peer's report has gone down: Ceph's own words
/// and when the peer last spoke.
pub(super) fn peer_silent(remote: &SiteStatus) -> String {
    let since = u64::try_from(remote.last_update)
        .ok()
        .filter(|s| *s > 0)
        .map(|s| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)));
    format!(
        "the peer site is unreachable or its rbd-mirror is down: rbd-mirror reports the peer {}{}; the last sync \
         time is the peer's last report",
        report(remote),
        since.map_or_else(String::new, |t| format!(", last heard at {t}"))
    )
}

/// One site's report as `up+error (split-brain)`; the JSON tail is left out.
fn report(s: &SiteStatus) -> String {
    let text = s.description.split(", {").next().unwrap_or_default().trim();
    format!("{}+{} ({})", if s.up { "up" } else { "down" }, s.state.as_str(), if text.is_empty() { "-" } else { text })
}

/// What rbd-mirror reports for both sites, for refusal messages: the operator
/// then sees Ceph's own words, not our reading of them.
pub(super) fn describe(status: &GlobalStatus) -> String {
    let local = status.local().map_or_else(|| "no status yet".to_owned(), report);
    let remotes: Vec<String> = status.remotes().map(report).collect();
    let peer = if remotes.is_empty() {
        "nothing from the peer".to_owned()
    } else {
        format!("the peer {}", remotes.join(", "))
    };
    format!("rbd-mirror reports this site {local} and {peer}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ceph::{MirrorInfo, MirrorState};

    /// A peer site's report: state, up, description.
    type Report<'a> = (SiteState, bool, &'a str);

    fn global(local: Option<SiteStatus>, remotes: &[Report<'_>]) -> GlobalStatus {
        let info = MirrorInfo { global_id: String::new(), state: MirrorState::Enabled, primary: true };
        let mut sites: Vec<SiteStatus> = local.into_iter().collect();
        for (state, up, d) in remotes {
            sites.push(SiteStatus {
                mirror_uuid: "peer".into(),
                state: *state,
                description: (*d).into(),
                last_update: 0,
                up: *up,
            });
        }
        GlobalStatus { info, sites }
    }

    #[test]
    fn the_peer_holds_a_copy_only_once_it_reported_on_one() {
        use SiteState::*;
        let cases: &[(&[Report<'_>], PeerCopy)] = &[
            (&[], PeerCopy::NoneKnown),
            (&[(Unknown, false, "status not found")], PeerCopy::NoneKnown),
            (&[(StartingReplay, true, "starting replay")], PeerCopy::NoneKnown),
            (&[(Error, true, "error bootstrapping replay")], PeerCopy::NoneKnown),
            (&[(Error, true, "remote image is not primary")], PeerCopy::NoneKnown),
            (&[(Replaying, true, r#"replaying, {"a":1}"#)], PeerCopy::Reported),
            (&[(Replaying, false, "replaying")], PeerCopy::Reported),
            (&[(Syncing, true, "syncing")], PeerCopy::Reported),
            (&[(Stopped, true, "local image is primary")], PeerCopy::Reported),
            (&[(Unknown, true, "remote image demoted")], PeerCopy::Reported),
            (&[(Error, true, "split-brain")], PeerCopy::Reported),
            (&[(Unknown, false, "status not found"), (Replaying, true, "replaying")], PeerCopy::Reported),
        ];
        for (remotes, want) in cases {
            assert_eq!(peer_copy(&global(None, remotes)), *want, "{remotes:?}");
        }
    }

    #[test]
    fn descriptions_quote_both_sites_without_json() {
        let local = SiteStatus {
            mirror_uuid: String::new(),
            state: SiteState::Error,
            description: "error bootstrapping replay".into(),
            last_update: 0,
            up: true,
        };
        assert_eq!(
            describe(&global(Some(local), &[])),
            "rbd-mirror reports this site up+error (error bootstrapping replay) and nothing from the peer"
        );
        let d = describe(&global(None, &[(SiteState::Replaying, true, r#"replaying, {"x":1}"#)]));
        assert_eq!(d, "rbd-mirror reports this site no status yet and the peer up+replaying (replaying)");
    }

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
