//! NetworkFence against the lab, judged by `ceph osd blocklist ls`. Only
//! documentation ranges are fenced (RFC 5737, RFC 3849): a blocklist entry
//! sends no traffic, but a wrong range could fence the lab itself.

mod common;

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use common::*;
use rbd_addons::client::Connection;
use tonic::Code;

/// The blocklist is one per cluster: tests that compare it before and after
/// must not interleave.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ceph(lab: &Lab, args: &[&str]) -> String {
    // The lab release's own CLI: Tentacle's keyrings hold keys Pacific cannot parse.
    let out = lab_tool(30, "ceph").args(["-c", &lab.conf(Site::A)]).args(args).output().expect("run ceph");
    assert!(out.status.success(), "ceph {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ceph's own view: the blocklisted ranges on site-a and their expiry.
fn ranges(lab: &Lab) -> HashMap<String, String> {
    let out = ceph(lab, &["osd", "blocklist", "ls", "-f", "json"]);
    let mut found = HashMap::new();
    for v in serde_json::Deserializer::from_str(&out).into_iter::<serde_json::Value>().flatten() {
        for e in v.as_array().into_iter().flatten() {
            if let (Some(r), Some(u)) = (e["range"].as_str(), e["until"].as_str()) {
                found.insert(r.to_owned(), u.to_owned());
            }
        }
    }
    found
}

fn params(lab: &Lab) -> HashMap<String, String> {
    HashMap::from([("clusterID".to_owned(), lab.cluster_id())])
}

fn code_of<T>(r: &Result<T, tonic::Status>) -> Code {
    r.as_ref().err().map_or(Code::Ok, tonic::Status::code)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn fence_unfence_and_list_documentation_ranges_in_cephs_view() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let c: Connection = server.client(&lab).await;
    let blocks = strings(&["192.0.2.0/24", "2001:db8::/32"]);
    let in_ceph = ["192.0.2.0:0/24", "[2001:db8::]:0/32"];

    let started = Instant::now();
    c.fence(true, &blocks, params(&lab)).await.expect("fence");
    let fence_took = started.elapsed();
    let now = ranges(&lab);
    for r in in_ceph {
        let until = now.get(r).unwrap_or_else(|| panic!("{r} is not blocklisted: {now:?}"));
        // Not Ceph's one-hour default: the fence must not lapse by itself.
        let year: i32 = until[..4].parse().unwrap();
        let this_year =
            1970 + (SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() / 31_556_952) as i32;
        assert!(year >= this_year + 4, "{r} expires {until}");
    }
    // Fencing again is fine; List gives exactly what Ceph holds as ranges.
    c.fence(true, &blocks, params(&lab)).await.expect("fence again");
    let listed = c.fence_list(params(&lab)).await.expect("list");
    let mut listed: Vec<String> = listed.to_vec();
    listed.sort();
    let mut want: Vec<String> = ranges(&lab)
        .keys()
        .map(|r| {
            let (host, prefix) = r.rsplit_once('/').unwrap();
            format!("{}/{prefix}", host.trim_end_matches(":0").trim_matches(|c| c == '[' || c == ']'))
        })
        .collect();
    want.sort();
    assert_eq!(listed, want);
    assert!(listed.contains(&"192.0.2.0/24".to_owned()) && listed.contains(&"2001:db8::/32".to_owned()));

    let started = Instant::now();
    c.fence(false, &blocks, params(&lab)).await.expect("unfence");
    let unfence_took = started.elapsed();
    let now = ranges(&lab);
    assert!(in_ceph.iter().all(|r| !now.contains_key(*r)), "still blocklisted: {now:?}");
    c.fence(false, &blocks, params(&lab)).await.expect("unfencing what is not fenced is fine");
    let listed = c.fence_list(params(&lab)).await.unwrap();
    assert!(!listed.iter().any(|c| c.contains("192.0.2.0/24")));
    println!("fence of 2 ranges: {fence_took:?}, unfence: {unfence_took:?}");
}

#[tokio::test]
async fn a_fence_that_would_cut_the_cluster_off_from_itself_is_refused_and_bad_input_has_exact_codes() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let c = server.client(&lab).await;
    let before = ranges(&lab);
    // The lab's monitors (and this server) are on 127.0.0.1.
    for cover in ["127.0.0.0/8", "127.0.0.1", "0.0.0.0/0"] {
        let r = c.fence(true, &strings(&["198.51.100.0/24", cover]), params(&lab)).await;
        assert_eq!(code_of(&r), Code::FailedPrecondition, "{cover}: {r:?}");
        assert!(format!("{r:?}").contains("monitor"), "{cover}: {r:?}");
    }
    assert_eq!(ranges(&lab), before, "a refused fence changed the blocklist");

    for (cidrs, what) in [
        (vec![], "empty list"),
        (strings(&["garbage"]), "garbage"),
        (strings(&["192.0.2.5/24"]), "host bits"),
        (strings(&["192.0.2.0/33"]), "prefix out of range"),
        (strings(&["2001:db8::/129"]), "IPv6 prefix out of range"),
    ] {
        let r = c.fence(true, &cidrs, params(&lab)).await;
        assert_eq!(code_of(&r), Code::InvalidArgument, "{what}: {r:?}");
    }
    let block = strings(&["192.0.2.0/24"]);
    let r = c.fence(true, &block, HashMap::new()).await;
    assert_eq!(code_of(&r), Code::InvalidArgument, "no clusterID: {r:?}");
    let unknown = HashMap::from([("clusterID".to_owned(), "no-such-cluster".to_owned())]);
    assert_eq!(code_of(&c.fence(true, &block, unknown).await), Code::InvalidArgument);
    let mut no_key = lab.secrets();
    no_key.remove("userKey");
    let r = c.clone().with_secrets(no_key).fence(true, &block, params(&lab)).await;
    assert_eq!(code_of(&r), Code::InvalidArgument);
    assert_eq!(ranges(&lab), before, "bad input changed the blocklist");

    // GetFenceClients is not served for RBD.
    let mut raw = rbd_addons::proto::fence::fence_controller_client::FenceControllerClient::new(server.channel().await);
    let err = raw
        .get_fence_clients(rbd_addons::proto::fence::GetFenceClientsRequest {
            parameters: params(&lab),
            secrets: lab.secrets(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn a_user_without_the_blocklist_cap_gets_permission_denied_naming_it() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let user = format!("nofence-{}", &new_uuid()[..8]);
    let key = ceph(
        &lab,
        &["auth", "get-or-create", &format!("client.{user}"), "mon", "allow r", "osd", "allow rwx", "--format", "json"],
    );
    let key: serde_json::Value = serde_json::from_str(&key).unwrap();
    let key = key[0]["key"].as_str().unwrap().to_owned();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let secrets = HashMap::from([("userID".to_owned(), user.clone()), ("userKey".to_owned(), key.clone())]);
    let c = server.client(&lab).await.with_secrets(secrets);
    let r = c.fence(true, &strings(&["192.0.2.0/24"]), params(&lab)).await;
    ceph(&lab, &["auth", "del", &format!("client.{user}")]);
    assert_eq!(code_of(&r), Code::PermissionDenied, "{r:?}");
    let text = format!("{r:?}");
    assert!(text.contains(r#"allow command \"osd blocklist\""#), "the message must name the cap: {text}");
    assert!(!text.contains(&key), "the key reached the message");
    assert!(!ranges(&lab).contains_key("192.0.2.0:0/24"));
}
