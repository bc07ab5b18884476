//! Every bad input gets its exact gRPC code, a message that says what is wrong,
//! never the key, and leaves the volume as it was.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::*;
use rbd_addons::proto::replication::replication_source::{Type as SourceType, VolumeGroupSource};
use rbd_addons::proto::replication::*;
use tonic::Code;

#[derive(Clone, Copy, Debug)]
enum Rpc {
    Enable,
    Disable,
    Info,
    Demote,
    Resync,
}

struct Case {
    name: &'static str,
    rpc: Rpc,
    legacy_id: String,
    source: Option<ReplicationSource>,
    parameters: HashMap<String, String>,
    secrets: HashMap<String, String>,
    want: Code,
}

fn p(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn other_cephx_key() -> String {
    let out = Command::new("ceph-authtool").arg("--gen-print-key").output().expect("ceph-authtool");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn table_of_bad_inputs() {
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let mut client = server.replication().await;

    // Real images for the cases that need one: a plain volume (never enabled by
    // any case) and a clone of a parent that is not mirrored.
    let plain = lab.create_volume(VolumeOpts::default());
    let parent = lab.create_volume(VolumeOpts::default());
    lab.rbd(Site::A, &["snap", "create", &format!("{}@base", parent.spec)]);
    let clone_uuid = new_uuid();
    let clone_spec = format!("{}/csi-vol-{clone_uuid}", lab.pool());
    lab.rbd(Site::A, &["clone", &format!("{}@base", parent.spec), &clone_spec]);
    let clone_id = volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &clone_uuid);

    let good = lab.secrets();
    let real_key = lab.key();
    let wrong_key = other_cephx_key();
    let cid = lab.cluster_id();
    let pool = lab.pool_id(Site::A);
    let missing_image = volume_id(&cid, pool, &new_uuid());
    let base = |name, rpc, id: &str, want| Case {
        name,
        rpc,
        legacy_id: String::new(),
        source: source(id),
        parameters: HashMap::new(),
        secrets: good.clone(),
        want,
    };
    let with_params = |name, id: &str, params: &[(&str, &str)], want| Case {
        parameters: p(params),
        ..base(name, Rpc::Enable, id, want)
    };
    let with_secrets =
        |name, secrets: HashMap<String, String>, want| Case { secrets, ..base(name, Rpc::Enable, &plain.id, want) };
    let oversize_value = "1".repeat(300) + "m";
    let huge_id = "a".repeat(100_000);
    let huge_value = "1".repeat(20_000) + "m";
    let many: Vec<(String, String)> = (0..100).map(|i| (format!("k{i}"), "v".to_owned())).collect();

    let cases = vec![
        Case { source: None, ..base("no volume at all", Rpc::Enable, "", Code::InvalidArgument) },
        Case { source: source(""), ..base("empty replication_source volume_id", Rpc::Info, "", Code::InvalidArgument) },
        Case {
            legacy_id: missing_image.clone(),
            ..base("legacy and new fields differ", Rpc::Enable, &plain.id, Code::InvalidArgument)
        },
        base("not a ceph-csi ID", Rpc::Enable, "pvc-1234", Code::InvalidArgument),
        base("unknown encoding version", Rpc::Enable, &plain.id.replacen("0001", "0002", 1), Code::InvalidArgument),
        base(
            "clusterID length disagrees",
            Rpc::Enable,
            &plain.id.replacen("-0009-", "-0008-", 1),
            Code::InvalidArgument,
        ),
        base(
            "pool ID not hex",
            Rpc::Disable,
            &plain.id.replacen(&format!("-{pool:016x}-"), "-00000000000000zz-", 1),
            Code::InvalidArgument,
        ),
        base("UUID malformed", Rpc::Info, &(plain.id[..plain.id.len() - 1].to_owned() + "x"), Code::InvalidArgument),
        base("oversize volume ID", Rpc::Enable, &volume_id(&"c".repeat(100), pool, &new_uuid()), Code::InvalidArgument),
        base(
            "clusterID not in config.json",
            Rpc::Disable,
            &volume_id("no-such-cluster", pool, &plain.uuid),
            Code::InvalidArgument,
        ),
        base("pool ID that does not exist", Rpc::Enable, &volume_id(&cid, 0x7fff, &plain.uuid), Code::NotFound),
        base("image that does not exist (enable)", Rpc::Enable, &missing_image, Code::NotFound),
        base("image that does not exist (disable)", Rpc::Disable, &missing_image, Code::NotFound),
        base("image that does not exist (info)", Rpc::Info, &missing_image, Code::NotFound),
        Case {
            source: Some(ReplicationSource {
                r#type: Some(SourceType::Volumegroup(VolumeGroupSource { volume_group_id: plain.id.clone() })),
            }),
            // A volume's handle is no group's: nothing by that UUID here.
            ..base("volume handle as a group source", Rpc::Enable, "", Code::NotFound)
        },
        with_secrets("no secrets", HashMap::new(), Code::InvalidArgument),
        with_secrets("no userKey", p(&[("userID", "csi-rbd")]), Code::InvalidArgument),
        with_secrets("empty userID", p(&[("userID", ""), ("userKey", &real_key)]), Code::InvalidArgument),
        with_secrets(
            "userKey not base64",
            p(&[("userID", "csi-rbd"), ("userKey", &format!("{real_key}!"))]),
            Code::InvalidArgument,
        ),
        with_secrets(
            "oversize userKey",
            p(&[("userID", "csi-rbd"), ("userKey", &"A".repeat(400))]),
            Code::InvalidArgument,
        ),
        with_secrets("wrong userKey", p(&[("userID", "csi-rbd"), ("userKey", &wrong_key)]), Code::Unauthenticated),
        with_secrets("unknown user", p(&[("userID", "nobody"), ("userKey", &real_key)]), Code::Unauthenticated),
        with_params("mirroringMode unknown", &plain.id, &[("mirroringMode", "async")], Code::InvalidArgument),
        with_params("schedulingInterval empty", &plain.id, &[("schedulingInterval", "")], Code::InvalidArgument),
        with_params(
            "schedulingInterval in seconds",
            &plain.id,
            &[("schedulingInterval", "30s")],
            Code::InvalidArgument,
        ),
        with_params("schedulingInterval zero", &plain.id, &[("schedulingInterval", "0m")], Code::InvalidArgument),
        with_params(
            "schedulingInterval compound",
            &plain.id,
            &[("schedulingInterval", "1h30m")],
            Code::InvalidArgument,
        ),
        with_params(
            "schedulingStartTime alone",
            &plain.id,
            &[("schedulingStartTime", "14:00:00")],
            Code::InvalidArgument,
        ),
        with_params(
            "schedulingStartTime not a time",
            &plain.id,
            &[("schedulingInterval", "1h"), ("schedulingStartTime", "noon")],
            Code::InvalidArgument,
        ),
        // Plausible to us, refused by the mgr: must not leave mirroring enabled.
        with_params(
            "schedulingStartTime refused by the mgr",
            &plain.id,
            &[("schedulingInterval", "1h"), ("schedulingStartTime", "25:00")],
            Code::InvalidArgument,
        ),
        with_params("flattenMode unknown", &plain.id, &[("flattenMode", "sometimes")], Code::InvalidArgument),
        with_params(
            "oversize parameter value",
            &plain.id,
            &[("schedulingInterval", &oversize_value)],
            Code::InvalidArgument,
        ),
        Case {
            parameters: many.into_iter().collect(),
            ..base("too many parameters", Rpc::Enable, &plain.id, Code::InvalidArgument)
        },
        Case {
            parameters: p(&[("force", "maybe")]),
            ..base("force not a boolean", Rpc::Disable, &plain.id, Code::InvalidArgument)
        },
        base("info on a volume that is not mirrored", Rpc::Info, &plain.id, Code::FailedPrecondition),
        // Oversize input is the caller's fault, answered without echoing it
        // (a 100 kB ID once came back as RESOURCE_EXHAUSTED from HTTP/2).
        base("a 100 kB volume ID", Rpc::Enable, &huge_id, Code::InvalidArgument),
        Case { legacy_id: huge_id.clone(), ..base("a 100 kB legacy volume ID", Rpc::Info, "", Code::InvalidArgument) },
        with_params(
            "a 20 kB parameter value",
            &plain.id,
            &[("schedulingInterval", &huge_value)],
            Code::InvalidArgument,
        ),
        base("clone of a parent that is not mirrored", Rpc::Enable, &clone_id, Code::FailedPrecondition),
        // Demote and Resync use no parameter, yet refuse what every call refuses.
        Case {
            parameters: p(&[("any", &huge_value)]),
            ..base("a 20 kB parameter value (demote)", Rpc::Demote, &plain.id, Code::InvalidArgument)
        },
        Case {
            parameters: p(&[("any", &huge_value)]),
            ..base("a 20 kB parameter value (resync)", Rpc::Resync, &plain.id, Code::InvalidArgument)
        },
    ];
    assert!(cases.len() >= 25);

    let mut failures = Vec::new();
    for case in cases {
        #[allow(deprecated)]
        let result = match case.rpc {
            Rpc::Enable => client
                .enable_volume_replication(EnableVolumeReplicationRequest {
                    volume_id: case.legacy_id.clone(),
                    parameters: case.parameters.clone(),
                    secrets: case.secrets.clone(),
                    replication_source: case.source.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::Disable => client
                .disable_volume_replication(DisableVolumeReplicationRequest {
                    volume_id: case.legacy_id.clone(),
                    parameters: case.parameters.clone(),
                    secrets: case.secrets.clone(),
                    replication_source: case.source.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::Demote => client
                .demote_volume(DemoteVolumeRequest {
                    volume_id: case.legacy_id.clone(),
                    parameters: case.parameters.clone(),
                    secrets: case.secrets.clone(),
                    replication_source: case.source.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::Resync => client
                .resync_volume(ResyncVolumeRequest {
                    volume_id: case.legacy_id.clone(),
                    parameters: case.parameters.clone(),
                    secrets: case.secrets.clone(),
                    replication_source: case.source.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::Info => client
                .get_volume_replication_info(GetVolumeReplicationInfoRequest {
                    volume_id: case.legacy_id.clone(),
                    secrets: case.secrets.clone(),
                    replication_source: case.source.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        };
        match result {
            Ok(()) => failures.push(format!("{}: succeeded, want {:?}", case.name, case.want)),
            Err(s) => {
                if s.code() != case.want {
                    failures.push(format!("{}: got {:?} ({}), want {:?}", case.name, s.code(), s.message(), case.want));
                }
                if s.message().trim().is_empty() {
                    failures.push(format!("{}: empty message", case.name));
                }
                if s.message().len() > 1024 {
                    failures.push(format!("{}: a {}-byte message", case.name, s.message().len()));
                }
                if s.message().contains(&real_key) || s.message().contains(&wrong_key) {
                    failures.push(format!("{}: message leaks a key", case.name));
                }
                println!("{:<45} {:?}: {}", case.name, s.code(), s.message());
            }
        }
    }

    // Nothing was half-done: the plain volume was never left mirror-enabled,
    // and the clone was not flattened or enabled.
    assert_eq!(lab.mirror_info(Site::A, &plain.spec).unwrap()["state"], "disabled");
    assert_eq!(lab.mirror_info(Site::A, &clone_spec).unwrap()["state"], "disabled");
    assert!(failures.is_empty(), "bad-input cases failed:\n{}", failures.join("\n"));

    // Listing groups with a key cephx refuses is UNAUTHENTICATED, not an
    // empty list that would say the secret was right.
    let mut groups = rbd_addons::proto::volumegroup::controller_client::ControllerClient::new(server.channel().await);
    let wrong = p(&[("userID", "csi-rbd"), ("userKey", &wrong_key)]);
    let req = rbd_addons::proto::volumegroup::ListVolumeGroupsRequest { secrets: wrong, ..Default::default() };
    let err = groups.list_volume_groups(req).await.expect_err("a list with a wrong key");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(!err.message().contains(&wrong_key), "the message leaks the key");

    cleanup(&lab, &clone_spec);
    cleanup(&lab, &parent.spec);
    cleanup(&lab, &plain.spec);
}

#[tokio::test]
async fn oversize_ids_are_invalid_arguments_on_every_service() {
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let c = server.client(&lab).await;
    let huge = "a".repeat(100_000);
    fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
        let s = r.expect_err("refused");
        assert!(s.message().len() < 1024, "a {}-byte message", s.message().len());
        s.code()
    }
    let group = rbd_addons::client::Subject::Group(huge.clone());
    assert_eq!(code(c.info(&group).await), Code::InvalidArgument, "group replication");
    assert_eq!(code(c.group_get(&huge).await), Code::InvalidArgument, "ControllerGetVolumeGroup");
    assert_eq!(code(c.group_delete(&huge).await), Code::InvalidArgument, "DeleteVolumeGroup");
    assert_eq!(code(c.reclaim_space(&huge).await), Code::InvalidArgument, "ControllerReclaimSpace");
    let cluster = HashMap::from([("clusterID".to_owned(), huge.clone())]);
    let r = c.fence(true, &["192.0.2.0/24".to_owned()], cluster).await;
    assert_eq!(code(r), Code::InvalidArgument, "FenceClusterNetwork");
    let mut secrets = lab.secrets();
    secrets.insert("userID".into(), huge.clone());
    let id = volume_id(&lab.cluster_id(), lab.pool_id(Site::A), &new_uuid());
    let r = c.clone().with_secrets(secrets).info(&Subject::volume(id)).await;
    assert_eq!(code(r), Code::InvalidArgument, "a 100 kB secret value");
}

/// A cephx AES256K key (the default of Ceph 19.2.6 and 20.2.4 on) given to a
/// server whose library predates that key type: FAILED_PRECONDITION naming
/// the key type and the library, not "Invalid argument" (which sends an admin
/// after a secret that is right). A library that reads the type asks the
/// monitors, which refuse this unregistered key: UNAUTHENTICATED.
#[tokio::test]
async fn an_aes256k_key_on_an_older_library_says_so() {
    // Generated by Tentacle's ceph-authtool; registered in no cluster.
    const AES256K_KEY: &str = "AgCENA1rmL3aNyAAQ/nviRVdpzUpn4U75N0q3uMtyirWqGOSICkm+mFtahc=";
    let lab = Lab::load();
    let server = Server::start(&lab.csi_config(Site::A), &[]).await;
    let mut client = server.replication().await;
    let volume = lab.create_volume(VolumeOpts::default());
    let status = client
        .get_volume_replication_info(GetVolumeReplicationInfoRequest {
            secrets: p(&[("userID", &lab.user()), ("userKey", AES256K_KEY)]),
            replication_source: source(&volume.id),
            ..Default::default()
        })
        .await
        .expect_err("an unregistered key");
    if lab.release() == "tentacle" {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    } else {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("AES256K"), "{}", status.message());
        assert!(status.message().contains("cannot read"), "{}", status.message());
    }
    assert!(!status.message().contains(AES256K_KEY), "the key leaked: {}", status.message());
}
