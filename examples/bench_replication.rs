//! How fast the server answers compared with what an operator (or a CLI-based
//! driver) would do by hand, on the two-site lab. Prints medians and ratios.
//!
//!   scripts/lab.sh up
//!   cargo build --release && cargo run --release --example bench_replication [VOLUMES]
//!
//! 1. GetVolumeReplicationInfo through the server, warm, over every enabled
//!    volume, p50/p99, vs librbd's own status call on an open image and vs
//!    open + status (and vs `rbd mirror image status`, a process per call).
//! 2. Enable for VOLUMES volumes at once through the server (as the csi-addons
//!    controller sends up to 100 reconciles in parallel) vs `rbd mirror image
//!    enable` one after another.
//! 3. A planned failover of those VOLUMES volumes to site-b (demote on a, then
//!    promote on b), in parallel through the two sites' servers, vs the same
//!    with `rbd mirror image demote/promote`, one volume after another (with
//!    the retries a promote needs right after the peer's demote).
//!    Then the same failover with librbd itself, 16 threads per site. The
//!    servers and librbd each fail over three times (a to b, back, to b),
//!    taking turns, and their medians are compared.
//! 4. The server's resident memory: idle, with one connection, after all that.
//! 5. A group call on the peer site with 0, 1,000 and 3,000 other images in the
//!    pool (second argument: a comma-separated list of counts).
//!
//! Then it says which of issue 12's goals this one run met.
//!
//! `--scale N` (default 1,000) instead enables N volumes through the server at
//! once and fails them over in both directions through the servers and with
//! librbd (16 threads per site), each direction once each, so that neither
//! leans on one site's rbd-mirror more: how the server holds up past the
//! 100-way load. Not part of the test suite.
//!
//! `--group-info [MEMBERS]` (default 10) instead makes a journal-mode group of
//! MEMBERS volumes (generationInterval 5s), waits for its first generation on
//! the peer, and prints group Info p50/p99 beside volume Info of one member,
//! warm, and group Info's p99 against the 2 ms goal.

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

/// Runs `work` on every item with `threads` threads.
fn in_threads<T: Sync>(threads: usize, items: &[T], work: impl Fn(&T) + Sync) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    work(item);
                }
            });
        }
    });
}

fn connect_site(lab: &Value, site: &str) -> std::sync::Arc<rbd_addons::testkit::Cluster> {
    rbd_addons::testkit::Cluster::connect(&rbd_addons::testkit::ConnectOptions {
        mon_host: lab["sites"][site]["mon_host"].as_str().unwrap(),
        user: lab["user"].as_str().unwrap(),
        key: lab["key"].as_str().unwrap(),
        op_timeout: Duration::from_secs(30),
    })
    .expect("connect")
}

/// A planned failover with librbd alone: demote every image on `from`,
/// then promote each on `to`, retrying while `to`'s rbd-mirror still holds
/// it (as the server does), 16 threads per site. Returns (demotes, total).
fn librbd_fail_over(lab: &Value, specs: &[String], from: &str, to: &str) -> (Duration, Duration) {
    use rbd_addons::testkit::{Image, IoCtx};
    let (a, b) = (connect_site(lab, from), connect_site(lab, to));
    let (pool_a, pool_b) =
        (lab["sites"][from]["pool_id"].as_i64().unwrap(), lab["sites"][to]["pool_id"].as_i64().unwrap());
    let names: Vec<&str> = specs.iter().map(|s| s.rsplit('/').next().unwrap()).collect();
    let started = Instant::now();
    // An I/O context per call (local, no round trip): they are not shared across threads.
    in_threads(16, &names, |name| {
        let io = IoCtx::open(&a, pool_a, "").unwrap();
        Image::open(&io, name).unwrap().mirror_demote().unwrap()
    });
    let demoted = started.elapsed();
    in_threads(16, &names, |name| {
        let io = IoCtx::open(&b, pool_b, "").unwrap();
        let image = Image::open(&io, name).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Err(e) = image.mirror_promote(false) {
            assert!(Instant::now() < deadline, "promote {name}: {e}");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    (demoted, started.elapsed())
}

/// A planned failover through the servers: every Demote at once on `from`,
/// then every Promote at once on `to`. A promote answered UNAVAILABLE (the
/// peer's rbd-mirror still held the image when the server's own retries
/// ran out) is sent again a second later, as the controller requeues it.
/// Returns (demotes, total, how many times each promote was sent again).
async fn server_fail_over(
    from: &ControllerClient<tonic::transport::Channel>,
    to: &ControllerClient<tonic::transport::Channel>,
    ids: &[String],
    secrets: &HashMap<String, String>,
) -> (Duration, Duration, Vec<usize>) {
    let started = Instant::now();
    let demotes: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut c = from.clone();
            let req =
                DemoteVolumeRequest { secrets: secrets.clone(), replication_source: source(id), ..Default::default() };
            tokio::spawn(async move { c.demote_volume(req).await.map(drop) })
        })
        .collect();
    for t in demotes {
        t.await.unwrap().expect("demote through the server");
    }
    let demoted = started.elapsed();
    let promotes: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut c = to.clone();
            let req =
                PromoteVolumeRequest { secrets: secrets.clone(), replication_source: source(id), ..Default::default() };
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(600);
                let mut again = 0;
                loop {
                    match c.promote_volume(req.clone()).await {
                        Ok(_) => return again,
                        Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                            again += 1;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => panic!("promote through the server: {e:?}"),
                    }
                }
            })
        })
        .collect();
    let mut again = Vec::with_capacity(promotes.len());
    for t in promotes {
        again.push(t.await.unwrap());
    }
    (demoted, started.elapsed(), again)
}

/// Waits (at most three minutes, or 0.6 s per image if that is longer)
/// until `site`'s rbd-mirror replays every one of `specs`: the next failover
/// then starts from a settled secondary, as a planned one does.
async fn wait_replaying(conf: &str, pool: &str, specs: &[String]) {
    let deadline = Instant::now() + Duration::from_millis(600 * specs.len() as u64).max(Duration::from_secs(180));
    loop {
        let out = rbd(conf, &["mirror", "pool", "status", pool, "--verbose", "--format", "json"]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let replaying: std::collections::HashSet<&str> = status["images"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["state"] == "up+replaying")
            .filter_map(|i| i["name"].as_str())
            .collect();
        if specs.iter().all(|s| replaying.contains(s.rsplit('/').next().unwrap())) {
            return;
        }
        assert!(Instant::now() < deadline, "the secondaries did not settle into replaying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Times one group call on the peer (Demote of a group that is secondary
/// there: it must find the members, check them and answer) with `fillers`
/// other images in the pool, for each count in turn.
async fn group_call_on_the_peer(
    lab: &Value,
    socket_a: &std::path::Path,
    socket_b: &std::path::Path,
    secrets: &HashMap<String, String>,
    fillers: &[usize],
) -> Vec<(usize, Duration)> {
    use rbd_addons::client::{Connection, Subject};
    let conf = lab["sites"]["a"]["conf"].as_str().unwrap().to_owned();
    let conf_b = lab["sites"]["b"]["conf"].as_str().unwrap().to_owned();
    let pool = lab["pool"].as_str().unwrap().to_owned();
    let (cluster_id, pool_id) = (lab["cluster_id"].as_str().unwrap(), lab["sites"]["a"]["pool_id"].as_i64().unwrap());
    let a = Connection::open(&format!("unix://{}", socket_a.display()), Duration::from_secs(60))
        .await
        .unwrap()
        .with_secrets(secrets.clone());
    let b = Connection::open(&format!("unix://{}", socket_b.display()), Duration::from_secs(60))
        .await
        .unwrap()
        .with_secrets(secrets.clone());
    let mut members = Vec::new();
    let mut member_specs = Vec::new();
    for _ in 0..2 {
        let u = uuid();
        let spec = format!("{pool}/csi-vol-{u}");
        assert!(rbd(&conf, &["create", &spec, "--size", "8M"]).status.success());
        members.push(format!("0001-{:04x}-{cluster_id}-{pool_id:016x}-{u}", cluster_id.len()));
        member_specs.push(spec);
    }
    let params = HashMap::from([("clusterID".to_owned(), cluster_id.to_owned()), ("pool".to_owned(), pool.clone())]);
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let group_id = a.group_create(&format!("bench-{}", uuid()), &members, params).await.unwrap().volume_group_id;
    let subject = Subject::Group(group_id.clone());
    a.enable(&subject, HashMap::new()).await.expect("enable the group");
    // Timed once the peer's copies carry the group's membership metadata,
    // which arrives with their first completed sync; before that the peer
    // finds members by a scan of the pool (correct, not fast).
    for spec in &member_specs {
        while !rbd(&conf_b, &["image-meta", "get", spec, "rbd-addons.group-members"]).status.success() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut made: Vec<String> = Vec::new();
    let mut medians = Vec::new();
    for &count in fillers {
        let more: Vec<String> = (made.len()..count).map(|_| format!("{pool}/bench-filler-{}", uuid())).collect();
        in_threads(16, &more, |spec| {
            assert!(rbd(&conf_b, &["create", spec, "--size", "1M"]).status.success());
        });
        made.extend(more);
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            b.demote(&subject, false, HashMap::new()).await.expect("demote the secondary group");
            times.push(t.elapsed());
        }
        let m = median(times);
        println!(
            "group call on the peer with {count:>5} other images: median {:>8.2} ms   ratio to the 50 ms goal = {:.2}x",
            m.as_secs_f64() * 1e3,
            m.as_secs_f64() / 0.050
        );
        medians.push((count, m));
    }
    in_threads(16, &made, |spec| {
        rbd(&conf_b, &["rm", "--no-progress", spec]);
    });
    a.disable(&subject, HashMap::new()).await.ok();
    a.group_modify(&group_id, &[], HashMap::new()).await.ok();
    a.group_delete(&group_id).await.ok();
    for spec in &member_specs {
        rbd(&conf, &["mirror", "image", "disable", spec, "--force"]);
        rbd(&conf, &["rm", "--no-progress", spec]);
    }
    medians
}

fn percentile(v: &[Duration], p: usize) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// librbd's own cost of what Info needs, on the same volumes: (the status
/// call on an image opened once, open + status + mode per call).
fn librbd_info_costs(lab: &Value, specs: &[String], rounds: usize) -> (Vec<Duration>, Vec<Duration>) {
    use rbd_addons::testkit::{Cluster, ConnectOptions, Image, IoCtx};
    let site = &lab["sites"]["a"];
    let cluster = Cluster::connect(&ConnectOptions {
        mon_host: site["mon_host"].as_str().unwrap(),
        user: lab["user"].as_str().unwrap(),
        key: lab["key"].as_str().unwrap(),
        op_timeout: Duration::from_secs(30),
    })
    .expect("connect");
    let io = IoCtx::open(&cluster, site["pool_id"].as_i64().unwrap(), "").unwrap();
    let names: Vec<&str> = specs.iter().map(|s| s.rsplit('/').next().unwrap()).collect();
    let images: Vec<Image<'_>> = names.iter().map(|n| Image::open_read_only(&io, n).unwrap()).collect();
    let mut status = Vec::with_capacity(rounds * images.len());
    for _ in 0..rounds {
        for image in &images {
            let t = Instant::now();
            image.mirror_global_status().unwrap();
            status.push(t.elapsed());
        }
    }
    drop(images);
    let mut open = Vec::with_capacity(names.len() * 2);
    for _ in 0..2 {
        for name in &names {
            let t = Instant::now();
            let image = Image::open_read_only(&io, name).unwrap();
            image.mirror_global_status().unwrap();
            image.mirror_mode().unwrap();
            drop(image);
            open.push(t.elapsed());
        }
    }
    (status, open)
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

/// `count` volumes on site-a as ceph-csi makes them: the image and its
/// journal entry, which names the image (a handle without one costs the
/// server a round trip to the OSD on every call; ceph-csi's volumes always
/// have one). Returns their handles and `pool/image` specs.
fn create_volumes(lab: &Value, journal: &rbd_addons::testkit::IoCtx, count: usize) -> (Vec<String>, Vec<String>) {
    let conf = lab["sites"]["a"]["conf"].as_str().unwrap();
    let pool = lab["pool"].as_str().unwrap();
    let (cluster_id, pool_id) = (lab["cluster_id"].as_str().unwrap(), lab["sites"]["a"]["pool_id"].as_i64().unwrap());
    let uuids: Vec<String> = (0..count).map(|_| uuid()).collect();
    in_threads(16, &uuids, |u| {
        assert!(rbd(conf, &["create", &format!("{pool}/csi-vol-{u}"), "--size", "8M"]).status.success());
    });
    // An I/O context is not shared across threads: the entries go one by one.
    for u in &uuids {
        let image = format!("csi-vol-{u}");
        journal.omap_set(&format!("csi.volume.{u}"), &[("csi.imagename", image.as_bytes())]).expect("journal entry");
    }
    let ids = uuids.iter().map(|u| format!("0001-{:04x}-{cluster_id}-{pool_id:016x}-{u}", cluster_id.len())).collect();
    (ids, uuids.iter().map(|u| format!("{pool}/csi-vol-{u}")).collect())
}

fn remove_journal(journal: &rbd_addons::testkit::IoCtx, specs: &[String]) {
    for spec in specs {
        let uuid = spec.rsplit('/').next().unwrap().trim_start_matches("csi-vol-");
        journal.remove(&format!("csi.volume.{uuid}")).ok();
    }
}

/// A server process of the bench's, stopped when dropped, so that a failed
/// assertion does not leave it running.
struct ServerProcess(std::process::Child);

impl ServerProcess {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, which has not been waited for yet.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        self.0.wait().ok();
    }
}

/// The server for one site (site-b's with the cluster mapping), once its
/// socket exists.
async fn spawn_server(lab: &Value, site: &str, socket: &std::path::Path) -> ServerProcess {
    let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("rbd-addons");
    assert!(bin.exists(), "build the binary first: cargo build --release");
    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--log-level", "warn", "--metrics-address", "127.0.0.1:0", "--endpoint"])
        .arg(socket)
        .arg("--ceph-csi-config")
        .arg(lab["sites"][site]["csi_config"].as_str().unwrap());
    if site == "b" {
        cmd.arg("--cluster-mapping").arg(lab["sites"]["b"]["cluster_mapping"].as_str().unwrap());
    }
    let server = ServerProcess(cmd.stderr(Stdio::null()).spawn().unwrap());
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

async fn controller(socket: &std::path::Path) -> ControllerClient<tonic::transport::Channel> {
    ControllerClient::new(
        Endpoint::from_shared(format!("unix://{}", socket.display())).unwrap().connect().await.unwrap(),
    )
}

/// Enable of every one of `ids` through the server, all sent at once (the
/// controller sends up to 100 reconciles in parallel). Returns how long.
async fn enable_all(
    client: &ControllerClient<tonic::transport::Channel>,
    ids: &[String],
    secrets: &HashMap<String, String>,
) -> Duration {
    let started = Instant::now();
    let enables: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut c = client.clone();
            let req = EnableVolumeReplicationRequest {
                secrets: secrets.clone(),
                replication_source: source(id),
                ..Default::default()
            };
            tokio::spawn(async move { c.enable_volume_replication(req).await.map(drop) })
        })
        .collect();
    for t in enables {
        t.await.unwrap().expect("enable through the server");
    }
    started.elapsed()
}

/// The CSI user's credentials, as a request's secrets.
fn lab_secrets(lab: &Value) -> HashMap<String, String> {
    HashMap::from([
        ("userID".into(), lab["user"].as_str().unwrap().into()),
        ("userKey".into(), lab["key"].as_str().unwrap().into()),
    ])
}

/// `--group-info MEMBERS`: group Info's cost beside volume Info's.
async fn group_info_cost(lab: &Value, members: usize) {
    use rbd_addons::client::{Connection, Subject};
    let secrets = lab_secrets(lab);
    let (conf, conf_b) = (lab["sites"]["a"]["conf"].as_str().unwrap(), lab["sites"]["b"]["conf"].as_str().unwrap());
    let pool = lab["pool"].as_str().unwrap();
    let cluster_id = lab["cluster_id"].as_str().unwrap();
    let pool_id = lab["sites"]["a"]["pool_id"].as_i64().unwrap();
    let dir = std::env::temp_dir().join(format!("rbd-addons-bench-{}", uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let (socket, socket_b) = (dir.join("a.sock"), dir.join("b.sock"));
    let (_server, _server_b) = (spawn_server(lab, "a", &socket).await, spawn_server(lab, "b", &socket_b).await);
    let journal = rbd_addons::testkit::IoCtx::open(&connect_site(lab, "a"), pool_id, "").expect("open the pool");
    let (ids, specs) = create_volumes(lab, &journal, members);
    let a = Connection::open(&format!("unix://{}", socket.display()), Duration::from_secs(60))
        .await
        .unwrap()
        .with_secrets(secrets.clone());
    let params = HashMap::from([("clusterID".to_owned(), cluster_id.to_owned()), ("pool".to_owned(), pool.to_owned())]);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let group_id = a.group_create(&format!("bench-{}", uuid()), &refs, params).await.unwrap().volume_group_id;
    let group = Subject::Group(group_id.clone());
    let interval = HashMap::from([("generationInterval".to_owned(), "5s".to_owned())]);
    a.enable(&group, interval).await.expect("enable the group");
    // Info answers once a generation has reached every member on the peer
    // and rbd-mirror has said so (its status refreshes every 30 s).
    let started = Instant::now();
    while a.info(&group).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(300), "group Info never answered");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("group of {members} members: Info answered {:.0} s after Enable", started.elapsed().as_secs_f64());
    let member = Subject::Volume(ids[0].clone());
    let rounds = 300;
    let (mut group_times, mut volume_times) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        let t = Instant::now();
        a.info(&group).await.expect("group Info");
        group_times.push(t.elapsed());
        let t = Instant::now();
        a.info(&member).await.expect("volume Info");
        volume_times.push(t.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "group Info ({members} members) p50 {:.2} ms p99 {:.2} ms   volume Info p50 {:.2} ms p99 {:.2} ms   \
         group p99 ratio to the 2 ms goal = {:.2}x",
        ms(percentile(&group_times, 50)),
        ms(percentile(&group_times, 99)),
        ms(percentile(&volume_times, 50)),
        ms(percentile(&volume_times, 99)),
        ms(percentile(&group_times, 99)) / 2.0
    );
    a.disable(&group, HashMap::new()).await.ok();
    a.group_modify(&group_id, &[], HashMap::new()).await.ok();
    a.group_delete(&group_id).await.ok();
    for spec in &specs {
        for c in [conf, conf_b] {
            rbd(c, &["mirror", "image", "disable", spec, "--force"]);
            rbd(c, &["rm", "--no-progress", spec]);
        }
    }
    remove_journal(&journal, &specs);
    std::fs::remove_dir_all(&dir).ok();
}

/// `--scale N`: enable N volumes through the server at once, wait until the
/// peer replays them all, then fail them over to site-b through the servers,
/// back to site-a and again to site-b with librbd (16 threads per site), and
/// back to site-a through the servers, and print both.
async fn at_scale(lab: &Value, volumes: usize) {
    let secrets = lab_secrets(lab);
    let (conf, conf_b) = (lab["sites"]["a"]["conf"].as_str().unwrap(), lab["sites"]["b"]["conf"].as_str().unwrap());
    let pool = lab["pool"].as_str().unwrap();
    let journal =
        rbd_addons::testkit::IoCtx::open(&connect_site(lab, "a"), lab["sites"]["a"]["pool_id"].as_i64().unwrap(), "")
            .expect("open the pool");
    let dir = std::env::temp_dir().join(format!("rbd-addons-bench-{}", uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let (socket, socket_b) = (dir.join("a.sock"), dir.join("b.sock"));
    let (server, server_b) = (spawn_server(lab, "a", &socket).await, spawn_server(lab, "b", &socket_b).await);
    let (client, client_b) = (controller(&socket).await, controller(&socket_b).await);

    let started = Instant::now();
    let (ids, specs) = create_volumes(lab, &journal, volumes);
    println!("{volumes} volumes created (rbd CLI, 16 at a time) in {:.1} s", started.elapsed().as_secs_f64());
    let enabled = enable_all(&client, &ids, &secrets).await;
    println!("Enable of {volumes} volumes, all at once, via the server: {:.2} s", enabled.as_secs_f64());
    let started = Instant::now();
    wait_replaying(conf_b, pool, &specs).await;
    println!("site-b's rbd-mirror replays all {volumes} after {:.1} s more", started.elapsed().as_secs_f64());

    // Each side fails over once in each direction (a to b, b to a), so
    // neither leans on one site's rbd-mirror more than the other does.
    let (server_ab_demoted, server_ab, again_ab) = server_fail_over(&client, &client_b, &ids, &secrets).await;
    wait_replaying(conf, pool, &specs).await;
    let (librbd_ba_demoted, librbd_ba) = librbd_fail_over(lab, &specs, "b", "a");
    wait_replaying(conf_b, pool, &specs).await;
    let (librbd_ab_demoted, librbd_ab) = librbd_fail_over(lab, &specs, "a", "b");
    wait_replaying(conf, pool, &specs).await;
    let (server_ba_demoted, server_ba, again_ba) = server_fail_over(&client_b, &client, &ids, &secrets).await;
    let again: Vec<usize> = again_ab.iter().chain(&again_ba).copied().collect();
    let sent_again = again.iter().filter(|&&n| n > 0).count();
    let more_than_once = again.iter().filter(|&&n| n > 1).count();
    let most = again.iter().max().copied().unwrap_or(0);
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "Failover of {volumes} volumes via the servers: a to b {:.2} s (demotes {:.2} s), b to a {:.2} s (demotes \
         {:.2} s); {sent_again} of {} promotes answered UNAVAILABLE and were sent again, {more_than_once} more than \
         once (at most {most} times)",
        secs(server_ab),
        secs(server_ab_demoted),
        secs(server_ba),
        secs(server_ba_demoted),
        again.len()
    );
    println!(
        "librbd, 16 threads per site:              a to b {:.2} s (demotes {:.2} s), b to a {:.2} s (demotes {:.2} s)",
        secs(librbd_ab),
        secs(librbd_ab_demoted),
        secs(librbd_ba),
        secs(librbd_ba_demoted)
    );
    let (server_total, librbd_total) = (server_ab + server_ba, librbd_ab + librbd_ba);
    let ratio = secs(server_total) / secs(librbd_total);
    println!(
        "both directions: servers {:.2} s, librbd-16 {:.2} s, {:.1} ms per volume per failover via the servers; \
         ratio server/librbd-16 = {ratio:.2}x (a to b {:.2}x, b to a {:.2}x)",
        secs(server_total),
        secs(librbd_total),
        secs(server_total) * 1e3 / (2 * volumes) as f64,
        secs(server_ab) / secs(librbd_ab),
        secs(server_ba) / secs(librbd_ba)
    );
    println!(
        "goal (issue 22): failover <= 0.7x librbd-16: {}; no promote answered UNAVAILABLE more than once: {}",
        if ratio <= 0.7 { "met" } else { "NOT met" },
        if more_than_once == 0 { "met" } else { "NOT met" }
    );
    println!(
        "server RSS after: site-a {} MiB, site-b {} MiB",
        rss_kib(server.id()) / 1024,
        rss_kib(server_b.id()) / 1024
    );

    // Every volume is primary on site-a again.
    in_threads(16, &specs, |spec| {
        rbd(conf, &["mirror", "image", "disable", spec, "--force"]);
        rbd(conf, &["rm", "--no-progress", spec]);
        rbd(conf_b, &["mirror", "image", "disable", spec, "--force"]);
        rbd(conf_b, &["rm", "--no-progress", spec]);
    });
    remove_journal(&journal, &specs);
    drop((server, server_b));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::main]
async fn main() {
    let lab_dir = std::env::var("CEPHLAB_DIR").unwrap_or_else(|_| "/tmp/cephlab".into());
    let lab: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{lab_dir}/lab.json")).expect("lab.json: run scripts/lab.sh up"),
    )
    .unwrap();
    if std::env::args().nth(1).as_deref() == Some("--group-info") {
        let members = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(10);
        return group_info_cost(&lab, members).await;
    }
    if std::env::args().nth(1).as_deref() == Some("--scale") {
        let volumes = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
        return at_scale(&lab, volumes).await;
    }
    let volumes: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(40);
    let conf = lab["sites"]["a"]["conf"].as_str().unwrap().to_owned();
    let pool = lab["pool"].as_str().unwrap().to_owned();
    let pool_id = lab["sites"]["a"]["pool_id"].as_i64().unwrap();
    let secrets = lab_secrets(&lab);

    let conf_b = lab["sites"]["b"]["conf"].as_str().unwrap().to_owned();
    let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("rbd-addons");
    assert!(bin.exists(), "build the binary first: cargo build --release");
    let dir = std::env::temp_dir().join(format!("rbd-addons-bench-{}", uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket: PathBuf = dir.join("s.sock");
    let server = spawn_server(&lab, "a", &socket).await;
    let rss_idle = rss_kib(server.id());
    let socket_b: PathBuf = dir.join("b.sock");
    let server_b = spawn_server(&lab, "b", &socket_b).await;
    let (client, client_b) = (controller(&socket).await, controller(&socket_b).await);

    // Volumes as ceph-csi makes them: the image and its journal entry (which
    // names the image; a handle without one costs the server a round trip
    // to the OSD on every call, which ceph-csi's volumes never do). A third
    // each is enabled through the server, by the CLI, and by librbd.
    let journal = rbd_addons::testkit::IoCtx::open(&connect_site(&lab, "a"), pool_id, "").expect("open the pool");
    let (ids, specs) = create_volumes(&lab, &journal, volumes * 3);

    // 2. Mass enable.
    let server_enable = enable_all(&client, &ids[..volumes], &secrets).await;
    let rss_one_connection = rss_kib(server.id());
    let started = Instant::now();
    for spec in &specs[volumes..volumes * 2] {
        assert!(rbd(&conf, &["mirror", "image", "enable", spec, "snapshot"]).status.success());
    }
    let cli_enable = started.elapsed();
    let librbd_set: Vec<String> = specs[volumes * 2..].to_vec();
    in_threads(16, &librbd_set, |spec| {
        assert!(rbd(&conf, &["mirror", "image", "enable", spec, "snapshot"]).status.success());
    });

    let mut cli_info = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        rbd(&conf, &["mirror", "image", "status", &specs[0], "--format", "json"]);
        cli_info.push(t.elapsed());
    }
    // 3. Mass planned failover, once every copy exists on site-b.
    for spec in &specs {
        while !rbd(&conf_b, &["info", spec]).status.success() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Info is the steady-state load: measured once site-b's rbd-mirror has
    // taken up every image, not while it bootstraps 300 of them.
    wait_replaying(&conf_b, &pool, &specs).await;
    // 1. Info, warm, as the controller asks it: every enabled volume in turn,
    //    ROUNDS times, through the server; then librbd itself on the same
    //    volumes: the status call on an image opened once (the floor), and
    //    open + status + mode (what answering one Info costs without a view).
    const ROUNDS: usize = 50;
    let mut server_info = Vec::with_capacity(ROUNDS * volumes);
    for _ in 0..ROUNDS {
        for id in &ids[..volumes] {
            let mut c = client.clone();
            let req = GetVolumeReplicationInfoRequest {
                secrets: secrets.clone(),
                replication_source: source(id),
                ..Default::default()
            };
            let t = Instant::now();
            let answer = c.get_volume_replication_info(req).await;
            server_info.push(t.elapsed());
            if let Err(e) = answer {
                assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
            }
        }
    }
    let (librbd_status, librbd_open) = librbd_info_costs(&lab, &specs[..volumes], ROUNDS);

    // Three failovers each way of measuring (a to b, back, to b again), the
    // two ways taking turns, each from settled secondaries: the medians are
    // compared, as one failover on a 2-core lab varies by a third.
    let (conf_of, sides) =
        (|site: &str| lab["sites"][site]["conf"].as_str().unwrap().to_owned(), [("a", "b"), ("b", "a"), ("a", "b")]);
    let (mut server_runs, mut librbd_runs, mut sent_again) = (Vec::new(), Vec::new(), 0);
    for (from, to) in sides {
        let (c_from, c_to) = if from == "a" { (&client, &client_b) } else { (&client_b, &client) };
        let (demoted, total, again) = server_fail_over(c_from, c_to, &ids[..volumes], &secrets).await;
        sent_again += again.iter().filter(|&&n| n > 0).count();
        server_runs.push((demoted, total));
        librbd_runs.push(librbd_fail_over(&lab, &librbd_set, from, to));
        wait_replaying(&conf_of(from), &pool, &specs[..volumes]).await;
        wait_replaying(&conf_of(from), &pool, &librbd_set).await;
    }
    let median_run = |mut runs: Vec<(Duration, Duration)>| {
        runs.sort_by_key(|r| r.1);
        runs[runs.len() / 2]
    };
    let all_runs = |runs: &[(Duration, Duration)]| {
        runs.iter().map(|r| format!("{:.2}", r.1.as_secs_f64())).collect::<Vec<_>>().join(" / ")
    };
    let (server_list, librbd_list) = (all_runs(&server_runs), all_runs(&librbd_runs));
    let ((server_demoted, server_failover), (librbd_demoted, librbd_failover)) =
        (median_run(server_runs), median_run(librbd_runs));
    let started = Instant::now();
    for spec in &specs[volumes..volumes * 2] {
        assert!(rbd(&conf, &["mirror", "image", "demote", spec]).status.success());
        // Right after the demote the peer's rbd-mirror still holds the image.
        while !rbd(&conf_b, &["mirror", "image", "promote", spec]).status.success() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let cli_failover = started.elapsed();

    let rss = rss_kib(server.id());

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (si, si99) = (percentile(&server_info, 50), percentile(&server_info, 99));
    let (ls, ls99) = (percentile(&librbd_status, 50), percentile(&librbd_status, 99));
    let (lo, lo99) = (percentile(&librbd_open, 50), percentile(&librbd_open, 99));
    println!("Info, warm, {volumes} volumes x {ROUNDS}:");
    println!("  via the server:                   p50 {:>7.2} ms  p99 {:>7.2} ms", ms(si), ms(si99));
    println!(
        "  librbd status on an open image:   p50 {:>7.2} ms  p99 {:>7.2} ms   server/librbd p99 = {:.2}x",
        ms(ls),
        ms(ls99),
        si99.as_secs_f64() / ls99.as_secs_f64()
    );
    println!(
        "  librbd open + status + mode:      p50 {:>7.2} ms  p99 {:>7.2} ms   server/that p99 = {:.2}x",
        ms(lo),
        ms(lo99),
        si99.as_secs_f64() / lo99.as_secs_f64()
    );
    let ci = median(cli_info);
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
    println!(
        "Failover of {volumes} volumes via the servers:    {:>8.2} s   median of {server_list} s (its demotes {:.2} s; librbd-16's {:.2} s; {sent_again} promotes sent again)",
        server_failover.as_secs_f64(),
        server_demoted.as_secs_f64(),
        librbd_demoted.as_secs_f64()
    );
    println!(
        "rbd demote+promote x{volumes}, sequential:     {:>8.2} s   ratio CLI/server = {:.1}x",
        cli_failover.as_secs_f64(),
        cli_failover.as_secs_f64() / server_failover.as_secs_f64()
    );
    println!(
        "librbd demote+promote x{volumes}, 16 threads: {:>8.2} s   median of {librbd_list} s   ratio server/librbd-16 = {:.2}x",
        librbd_failover.as_secs_f64(),
        server_failover.as_secs_f64() / librbd_failover.as_secs_f64()
    );
    println!(
        "server RSS: idle {} MiB, one connection {} MiB, after {volumes}-way load {} MiB",
        rss_idle / 1024,
        rss_one_connection / 1024,
        rss / 1024
    );

    // 5. A group call on the peer site, which finds the group's members by
    //    their mirrored metadata, with more and more other images in the pool.
    let fillers: Vec<usize> = std::env::args()
        .nth(2)
        .map(|a| a.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 1000, 3000]);
    let group_calls = group_call_on_the_peer(&lab, &socket, &socket_b, &secrets, &fillers).await;

    // The goals, judged on this one run.
    let failover_ratio = server_failover.as_secs_f64() / librbd_failover.as_secs_f64();
    let mut goals = vec![
        ("failover via the servers / librbd-16", format!("{failover_ratio:.2}x"), "<= 1.05x", failover_ratio <= 1.05),
        ("Info p99 / 2 ms", format!("{:.2}x", ms(si99) / 2.0), "<= 1.00x", ms(si99) <= 2.0),
        ("RSS after the load / 120 MiB", format!("{:.2}x", rss as f64 / 1024.0 / 120.0), "<= 1.00x", rss <= 120 * 1024),
    ];
    if let Some((count, m)) = group_calls.iter().max_by_key(|(count, _)| *count) {
        let ratio = m.as_secs_f64() / 0.050;
        goals.push((
            "group call on the peer / 50 ms",
            format!("{ratio:.2}x with {count} fillers"),
            "<= 1.00x",
            ratio <= 1.0,
        ));
    }
    println!("Goals in this run:");
    for (what, figure, goal, met) in &goals {
        println!("  {what:<38} {figure:<24} goal {goal}  {}", if *met { "met" } else { "NOT met" });
    }

    // Every volume is primary on site-b now: disable there, delete on both.
    for spec in &specs {
        rbd(&conf_b, &["mirror", "image", "disable", spec, "--force"]);
        rbd(&conf_b, &["rm", "--no-progress", spec]);
        rbd(&conf, &["mirror", "image", "disable", spec, "--force"]);
        rbd(&conf, &["rm", "--no-progress", spec]);
    }
    remove_journal(&journal, &specs);
    drop((server, server_b));
    std::fs::remove_dir_all(&dir).ok();
}
