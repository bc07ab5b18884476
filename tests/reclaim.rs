//! ControllerReclaimSpace against the lab, judged by `rbd du`: zeroed objects
//! are given back; a secondary copy and an image in use are left alone.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rbd_addons::testkit::{Image, IoCtx};
use tonic::Code;

const MIB: u64 = 1 << 20;

/// `rbd du`'s used bytes of an image on a site.
fn du(lab: &Lab, s: Site, spec: &str) -> u64 {
    let v = lab.rbd_json(s, &["du", spec]).expect("rbd du");
    v["images"].as_array().and_then(|a| a.first()).and_then(|i| i["used_size"].as_u64()).expect("used_size")
}

/// Writes `mib` MiB of zeros from offset 0 as an application would (data,
/// not discards): every touched object is allocated.
fn write_zeros(lab: &Lab, spec: &str, mib: u64) {
    let cluster = connect(lab, Site::A);
    let io = IoCtx::open(&cluster, lab.pool_id(Site::A), "").unwrap();
    let image = Image::open(&io, spec.rsplit('/').next().unwrap()).unwrap();
    let zeros = vec![0u8; MIB as usize];
    for i in 0..mib {
        image.write_at(i * MIB, &zeros).unwrap();
    }
    image.flush().unwrap();
}

fn usage(r: &rbd_addons::client::Reclaimed) -> (u64, u64) {
    (r.pre_usage_bytes.unwrap() as u64, r.post_usage_bytes.unwrap() as u64)
}

#[tokio::test]
async fn zeroed_space_is_given_back_as_rbd_du_counts_it() {
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let c = server.client(&lab).await;
    let vol = lab.create_volume(VolumeOpts { size_mb: 256, ..Default::default() });
    write_zeros(&lab, &vol.spec, 64);
    let before = du(&lab, Site::A, &vol.spec);
    assert_eq!(before, 64 * MIB, "the zeros were not allocated");

    let started = Instant::now();
    let r = c.reclaim_space(&vol.id).await.expect("reclaim");
    let took = started.elapsed();
    let (pre, post) = usage(&r);
    let after = du(&lab, Site::A, &vol.spec);
    println!(
        "sparsify of {} MiB of zeros: {took:?} ({:.0} MiB/s)",
        (pre - post) / MIB,
        (pre - post) as f64 / MIB as f64 / took.as_secs_f64()
    );
    assert_eq!((pre, post), (before, after), "the answer differs from rbd du");
    assert_eq!(after, 0, "zeroed objects are still allocated");
    // Again: nothing left to give back.
    assert_eq!(usage(&c.reclaim_space(&vol.id).await.unwrap()), (0, 0));
    cleanup(&lab, &vol.spec);
}

/// A volume of `mib` MiB of zeros, mirrored in `mode` (None: not mirrored).
async fn zeroed_volume(lab: &Lab, c: &mut Client, mode: Option<&str>) -> TestVolume {
    let vol = lab.create_volume(VolumeOpts { size_mb: 64, ..Default::default() });
    if mode == Some("journal") {
        lab.rbd(Site::A, &["feature", "enable", &vol.spec, "journaling"]);
    }
    write_zeros(lab, &vol.spec, 8);
    if let Some(mode) = mode {
        let params = Params::from([("mirroringMode".to_owned(), mode.to_owned())]);
        c.enable(&Subject::volume(&vol.id), params).await.expect("enable");
        // The peer's rbd-mirror reports (and, in snapshot mode, watches).
        wait_until("the peer to report", Duration::from_secs(60), || {
            lab.mirror_status(Site::A, &vol.spec).is_some_and(|s| {
                s["peer_sites"].as_array().is_some_and(|p| p.iter().any(|p| p["state"] == "up+replaying"))
            })
        })
        .await;
    }
    vol
}

#[tokio::test]
async fn an_image_in_use_is_left_alone_mirrored_or_not() {
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &["--log-format", "text"]).await;
    let c = server.client(&lab).await;
    let mut r = server.client(&lab).await;
    for mode in [None, Some("snapshot"), Some("journal")] {
        let vol = zeroed_volume(&lab, &mut r, mode).await;
        let before = du(&lab, Site::A, &vol.spec);
        {
            // An application holding the image open (as a mapped krbd device would).
            let cluster = connect(&lab, Site::A);
            let io = IoCtx::open(&cluster, lab.pool_id(Site::A), "").unwrap();
            let _open = Image::open(&io, vol.spec.rsplit('/').next().unwrap()).unwrap();
            let r = c.reclaim_space(&vol.id).await.expect("reclaim of an image in use answers OK");
            assert_eq!(usage(&r), (before, before), "{mode:?}");
            assert_eq!(du(&lab, Site::A, &vol.spec), before, "an image in use was sparsified ({mode:?})");
        }
        // Closed again (rbd-mirror's own watch is no use): reclaimed.
        let r = c.reclaim_space(&vol.id).await.expect("reclaim");
        assert_eq!(usage(&r).1, 0, "not reclaimed once closed ({mode:?})");
        remove_everywhere(&lab, &vol.spec);
    }
    assert!(server.log_text().contains("in use"), "the log does not say why it was skipped");
}

#[tokio::test]
async fn a_mirrored_primary_is_reclaimed_and_its_secondary_copy_is_not() {
    let lab = Lab::load();
    let sites = SitePair::start(&lab, &["--log-format", "text"]).await;
    let (a, b) = (sites.a.client(&lab).await, sites.b.client(&lab).await);
    let ra = sites.a.client(&lab).await;
    let vol = lab.create_volume(VolumeOpts { size_mb: 64, ..Default::default() });
    write_zeros(&lab, &vol.spec, 8);
    ra.enable(&Subject::volume(&vol.id), Params::new()).await.expect("enable");
    let sum = checksum(&lab, Site::A, &vol.spec).unwrap();
    wait_same_data(&lab, &vol.spec, &sum, Site::B, Duration::from_secs(120)).await;

    let on_b = du(&lab, Site::B, &vol.spec);
    let r = b.reclaim_space(&vol.id).await.expect("reclaim on the secondary answers OK");
    assert_eq!(usage(&r), (on_b, on_b));
    assert_eq!(du(&lab, Site::B, &vol.spec), on_b, "the secondary copy was sparsified");
    assert!(sites.b.log_text().contains("secondary"), "the log does not say why it was skipped");

    // The primary is watched only by rbd-mirror: that is not "in use".
    let r = a.reclaim_space(&vol.id).await.expect("reclaim on the primary");
    assert_eq!(usage(&r).1, du(&lab, Site::A, &vol.spec));
    assert_eq!(usage(&r).1, 0, "the mirrored primary's zeroed objects are still allocated");
    ra.disable(&Subject::volume(&vol.id), Params::new()).await.ok();
    remove_everywhere(&lab, &vol.spec);
}

#[tokio::test]
async fn bad_reclaim_requests_have_exact_codes() {
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let c = server.client(&lab).await;
    let code = |r: Result<rbd_addons::client::Reclaimed, tonic::Status>| r.expect_err("refused").code();
    assert_eq!(code(c.reclaim_space("").await), Code::InvalidArgument);
    assert_eq!(code(c.reclaim_space("not-a-handle").await), Code::InvalidArgument);
    let missing = volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &new_uuid());
    assert_eq!(code(c.reclaim_space(&missing).await), Code::NotFound);
    let mut no_key = lab.secrets();
    no_key.remove("userKey");
    assert_eq!(code(c.clone().with_secrets(no_key).reclaim_space(&missing).await), Code::InvalidArgument);
}
