//! How fast the server answers compared with what an operator (or a CLI-based
//! driver) would do by hand, on the two-site lab. Prints medians and ratios.
//!
//!   scripts/lab.sh up
//!   cargo build --release && cargo run --release --example bench_replication [VOLUMES]
//!
//! 1. GetVolumeReplicationInfo through the server vs `rbd mirror image status`
//!    (a process per call, as ceph-csi used to shell out).
//! 2. Enable for VOLUMES volumes at once through the server (as the csi-addons
//!    controller sends up to 100 reconciles in parallel) vs `rbd mirror image
//!    enable` one after another.
//! 3. The server's resident memory after all that.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rbd_addons::proto::replication::controller_client::ControllerClient;
use rbd_addons::proto::replication::replication_source::{Type, VolumeSource};
use rbd_addons::proto::replication::*;
use serde_json::Value;
use tonic::transport::Endpoint;

fn rbd(conf: &str, args: &[&str]) -> std::process::Output {
    Command::new("rbd").arg("-c").arg(conf).args(args).stderr(Stdio::null()).output().expect("rbd")
}

fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap().trim().to_owned()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn source(id: &str) -> Option<ReplicationSource> {
    Some(ReplicationSource { r#type: Some(Type::Volume(VolumeSource { volume_id: id.to_owned() })) })
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let volumes: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(40);
    let lab_dir = std::env::var("CEPHLAB_DIR").unwrap_or_else(|_| "/tmp/cephlab".into());
    let lab: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{lab_dir}/lab.json")).expect("lab.json: run scripts/lab.sh up"),
    )
    .unwrap();
    let conf = lab["sites"]["a"]["conf"].as_str().unwrap().to_owned();
    let pool = lab["pool"].as_str().unwrap().to_owned();
    let pool_id = lab["sites"]["a"]["pool_id"].as_i64().unwrap();
    let cluster_id = lab["cluster_id"].as_str().unwrap().to_owned();
    let secrets: HashMap<String, String> = HashMap::from([
        ("userID".into(), lab["user"].as_str().unwrap().into()),
        ("userKey".into(), lab["key"].as_str().unwrap().into()),
    ]);

    let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("rbd-addons");
    assert!(bin.exists(), "build the binary first: cargo build --release");
    let dir = std::env::temp_dir().join(format!("rbd-addons-bench-{}", uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket: PathBuf = dir.join("s.sock");
    let mut server = Command::new(&bin)
        .args(["serve", "--endpoint", socket.to_str().unwrap(), "--log-level", "warn", "--ceph-csi-config"])
        .arg(lab["sites"]["a"]["csi_config"].as_str().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = Endpoint::from_shared(format!("unix://{}", socket.display())).unwrap().connect().await.unwrap();
    let client = ControllerClient::new(channel);

    // Volumes as ceph-csi names them; half enabled through the server, half by CLI.
    let mut ids = Vec::new();
    let mut specs = Vec::new();
    for _ in 0..volumes * 2 {
        let u = uuid();
        let spec = format!("{pool}/csi-vol-{u}");
        assert!(rbd(&conf, &["create", &spec, "--size", "8M"]).status.success());
        ids.push(format!("0001-{:04x}-{cluster_id}-{pool_id:016x}-{u}", cluster_id.len()));
        specs.push(spec);
    }

    // 2. Mass enable.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in &ids[..volumes] {
        let mut c = client.clone();
        let req = EnableVolumeReplicationRequest {
            secrets: secrets.clone(),
            replication_source: source(id),
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move { c.enable_volume_replication(req).await.map(drop) }));
    }
    for t in tasks {
        t.await.unwrap().expect("enable through the server");
    }
    let server_enable = started.elapsed();
    let started = Instant::now();
    for spec in &specs[volumes..] {
        assert!(rbd(&conf, &["mirror", "image", "enable", spec, "snapshot"]).status.success());
    }
    let cli_enable = started.elapsed();

    // 1. Info latency on one enabled volume (answers OK or NOT_FOUND; both take the full path).
    let mut server_info = Vec::new();
    for _ in 0..50 {
        let mut c = client.clone();
        let req = GetVolumeReplicationInfoRequest {
            secrets: secrets.clone(),
            replication_source: source(&ids[0]),
            ..Default::default()
        };
        let t = Instant::now();
        let _ = c.get_volume_replication_info(req).await;
        server_info.push(t.elapsed());
    }
    let mut cli_info = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        rbd(&conf, &["mirror", "image", "status", &specs[0], "--format", "json"]);
        cli_info.push(t.elapsed());
    }
    let rss = rss_kib(server.id());

    let (si, ci) = (median(server_info), median(cli_info));
    println!("GetVolumeReplicationInfo via server: median {:>8.2} ms", si.as_secs_f64() * 1e3);
    println!(
        "rbd mirror image status (CLI):       median {:>8.2} ms   ratio CLI/server = {:.1}x",
        ci.as_secs_f64() * 1e3,
        ci.as_secs_f64() / si.as_secs_f64()
    );
    println!("Enable {volumes} volumes in parallel via server: {:>8.2} s", server_enable.as_secs_f64());
    println!(
        "rbd mirror image enable x{volumes}, sequential:   {:>8.2} s   ratio CLI/server = {:.1}x",
        cli_enable.as_secs_f64(),
        cli_enable.as_secs_f64() / server_enable.as_secs_f64()
    );
    println!("server RSS after the run: {} MiB", rss / 1024);

    for spec in &specs {
        rbd(&conf, &["mirror", "image", "disable", spec, "--force"]);
        rbd(&conf, &["rm", "--no-progress", spec]);
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    server.wait().ok();
    std::fs::remove_dir_all(&dir).ok();
}
