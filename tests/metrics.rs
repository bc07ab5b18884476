//! The HTTP side port against the real lab: kubelet's probes answer, and what
//! /metrics says about a volume matches Ceph's own view (`rbd mirror image
//! status` on both sites) after real calls.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const SYNC_LIMIT: Duration = Duration::from_secs(120);

/// What site-a's rbd-mirror reports of the peer's newest synced snapshot:
/// the JSON tail of the peer site's description.
fn ceph_last_sync(lab: &Lab, spec: &str) -> Option<i64> {
    let status = lab.mirror_status(Site::A, spec)?;
    let desc = status["peer_sites"][0]["description"].as_str()?.to_owned();
    let tail: Value = serde_json::from_str(desc.split_once(", ")?.1).ok()?;
    tail["local_snapshot_timestamp"].as_i64()
}

#[tokio::test]
async fn probes_answer_and_volume_metrics_match_cephs_view() {
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let address = server.metrics_address();
    assert_eq!(http_get(&address, "/healthz").0, 200);
    assert_eq!(http_get(&address, "/readyz").0, 200);
    assert_eq!(http_get(&address, "/nothing-here").0, 404);

    let c = server.client(&lab).await;
    let vol = lab.create_volume(VolumeOpts::default());
    write_data(&lab, Site::A, &vol.spec);
    c.enable(&Subject::volume(&vol.id), Params::new()).await.expect("enable");
    let synced = info_once_synced(&c, &vol.id, SYNC_LIMIT).await;
    let (_, page) = http_get(&address, "/metrics");
    let id = format!(r#"{{id="{}""#, vol.id);
    let state =
        |page: &str, s: &str| metric(page, &format!(r#"rbd_addons_volume_replication_state{id},state="{s}"}}"#));
    assert_eq!(state(&page, "primary"), Some(1.0), "{page}");
    // The series' last sync is Info's, and Info's is rbd-mirror's.
    let exported = metric(&page, &format!("rbd_addons_volume_last_sync_timestamp_seconds{id}}}")).unwrap();
    assert_eq!(exported as i64, synced.last_sync_time.unwrap().seconds);
    assert_eq!(Some(exported as i64), ceph_last_sync(&lab, &vol.spec), "Ceph's own view");
    assert_eq!(
        metric(&page, &format!("rbd_addons_volume_last_sync_bytes{id}}}")).map(|b| b as i64),
        Some(synced.last_sync_bytes)
    );
    let ok = |page: &str, method: &str| {
        metric(page, &format!(r#"rbd_addons_rpc_requests_total{{method="{method}",code="OK"}}"#)).unwrap_or(0.0)
    };
    assert_eq!(ok(&page, "EnableVolumeReplication"), 1.0, "{page}");
    assert!(ok(&page, "GetVolumeReplicationInfo") >= 1.0);
    assert!(page.contains("rbd_addons_ceph_op_duration_seconds_count{op=\"GetVolumeReplicationInfo\"}"), "{page}");
    assert_eq!(metric(&page, "rbd_addons_ceph_connections"), Some(1.0), "one cluster, one connection");
    assert!(page.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");

    // The sidecar's probes are calls too: counted, though they touch no Ceph.
    server.identity().await.probe(rbd_addons::proto::identity::ProbeRequest {}).await.expect("probe");
    let (_, page) = http_get(&address, "/metrics");
    assert_eq!(ok(&page, "Probe"), 1.0, "{page}");

    // A bad request is counted by its code.
    let err = c.info(&Subject::volume("not-a-volume-id")).await.unwrap_err();
    let (_, page) = http_get(&address, "/metrics");
    let code = format!("{:?}", err.code());
    assert_eq!(code, "InvalidArgument");
    assert_eq!(
        metric(&page, r#"rbd_addons_rpc_requests_total{method="GetVolumeReplicationInfo",code="INVALID_ARGUMENT"}"#),
        Some(1.0),
        "{page}"
    );

    // Demote: the series says secondary, as Ceph does.
    c.demote(&Subject::volume(&vol.id), false, Params::new()).await.expect("demote");
    assert_eq!(is_primary(&lab, Site::A, &vol.spec), Some(false));
    let (_, page) = http_get(&address, "/metrics");
    assert_eq!(state(&page, "secondary"), Some(1.0), "{page}");
    assert_eq!(state(&page, "primary"), None, "one state per volume");

    // Promote back and disable: the volume's series are gone.
    c.promote(&Subject::volume(&vol.id), false, Params::new()).await.expect("promote");
    let (_, page) = http_get(&address, "/metrics");
    assert_eq!(state(&page, "primary"), Some(1.0), "{page}");
    c.disable(&Subject::volume(&vol.id), Params::new()).await.expect("disable");
    assert_eq!(lab.mirror_info(Site::A, &vol.spec).unwrap()["state"], "disabled");
    let (_, page) = http_get(&address, "/metrics");
    assert!(!page.contains(&vol.id), "a disabled volume drops out: {page}");
    cleanup(&lab, &vol.spec);
}
