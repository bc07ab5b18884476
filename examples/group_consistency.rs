//! What crash-consistent group failover costs and buys, measured on the
//! two-site lab. Prints figures and ratios:
//!
//!   scripts/lab.sh up
//!   cargo build --release && cargo run --release --example group_consistency [CUTS] [--no-quiesce] [--load] [--kill]
//!
//! --no-quiesce: the writer does not register librbd's quiesce watch (as an
//!   application on krbd): it only cooperates on the exclusive lock.
//! --load: two CPU busy loops (both cores) and a second writer on two other
//!   journal-mirrored images of the pool run throughout.
//! --kill: the site-b server is SIGKILLed at a random instant of the forced
//!   promote, started again, and the promote sent again until it answers OK.
//!
//! RBD_ADDONS_BIN=<path> runs another build of the server (e.g. an older
//! commit's, to compare).
//!
//! Every cut leaves a folder (printed) with both servers' logs at debug,
//! `rbd snap ls --all` and `rbd mirror image status` of every member on both
//! sites, before and after the promote; it is removed when the cut was whole.
//!
//! 1. Journal mode's write overhead: the interleaved writer (one 4 KiB write at
//!    a time, each acknowledged before the next) on three unmirrored volumes,
//!    then on three journal-mirrored volumes.
//! 2. CUTS forced failovers at random instants (default 20): the writer runs
//!    on site-a while the server takes a generation every 2 s; site-a is frozen
//!    (SIGSTOP) and the group is force-promoted on site-b. Before the promote,
//!    site-b's copies are read as they are: what a plain per-volume failover
//!    hands the application (promoting each volume changes no data). After it,
//!    the records must form a gap-free prefix.
//! 3. The cost: bytes the revert rewrote (site-b's server log), the pause a
//!    generation puts on writers (the writer's own latencies, and the group
//!    snapshot's duration from site-a's server log).

#[path = "../tests/common/interleave.rs"]
mod interleave;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use interleave::{CpuHog, MEMBERS, arm_writer, first_gap, heal_lone_osd, join_writer, records_on, revive_rbd_mirror};
use rbd_addons::ceph::{Cluster, ConnectOptions};
use rbd_addons::proto::replication::controller_client::ControllerClient;
use rbd_addons::proto::replication::replication_source::{Type, VolumeGroupSource};
use rbd_addons::proto::replication::*;
use rbd_addons::proto::volumegroup::CreateVolumeGroupRequest;
use rbd_addons::proto::volumegroup::controller_client::ControllerClient as GroupClient;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap().trim().to_owned()
}

struct Lab {
    facts: Value,
}

impl Lab {
    fn site(&self, s: &str, key: &str) -> String {
        let v = &self.facts["sites"][s][key];
        v.as_str().map_or_else(|| v.to_string(), str::to_owned)
    }
    fn rbd(&self, s: &str, args: &[&str]) -> bool {
        Command::new("rbd")
            .arg("-c")
            .arg(self.site(s, "conf"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|st| st.success())
    }
    fn connect(&self, s: &str) -> Arc<Cluster> {
        let (mon, user, key) =
            (self.site(s, "mon_host"), self.facts["user"].as_str().unwrap(), self.facts["key"].as_str().unwrap());
        Cluster::connect(&ConnectOptions { mon_host: &mon, user, key, op_timeout: Duration::from_secs(30) }).unwrap()
    }
    fn secrets(&self) -> HashMap<String, String> {
        HashMap::from([
            ("userID".into(), self.facts["user"].as_str().unwrap().into()),
            ("userKey".into(), self.facts["key"].as_str().unwrap().into()),
        ])
    }
    /// Three fresh images on site-a: (names, volume handles).
    fn volumes(&self) -> (Vec<String>, Vec<String>) {
        let pool = self.facts["pool"].as_str().unwrap();
        let cluster = self.facts["cluster_id"].as_str().unwrap();
        let pool_id: i64 = self.site("a", "pool_id").parse().unwrap();
        let mut names = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..MEMBERS {
            let u = uuid();
            let name = format!("csi-vol-{u}");
            assert!(self.rbd("a", &["create", &format!("{pool}/{name}"), "--size", "256M"]));
            ids.push(format!("0001-{:04x}-{cluster}-{pool_id:016x}-{u}", cluster.len()));
            names.push(name);
        }
        (names, ids)
    }
    fn remove(&self, names: &[String]) {
        let pool = self.facts["pool"].as_str().unwrap();
        for s in ["a", "b"] {
            for n in names {
                let spec = format!("{pool}/{n}");
                self.rbd(s, &["mirror", "image", "disable", "--force", &spec]);
                let out = Command::new("rbd")
                    .arg("-c")
                    .arg(self.site(s, "conf"))
                    .args(["info", "--format", "json", &spec])
                    .stderr(Stdio::null())
                    .output()
                    .unwrap();
                let info: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                if let Some(g) = info["group"].as_str() {
                    self.rbd(s, &["group", "image", "rm", g, &spec]);
                }
                let out = Command::new("rbd")
                    .arg("-c")
                    .arg(self.site(s, "conf"))
                    .args(["snap", "ls", "--all", "--format", "json", &spec])
                    .stderr(Stdio::null())
                    .output()
                    .unwrap();
                let snaps: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                for snap in snaps.as_array().cloned().unwrap_or_default() {
                    if let Some(id) = snap["id"].as_u64() {
                        self.rbd(s, &["snap", "rm", "--snap-id", &id.to_string(), &spec]);
                    }
                }
                self.rbd(s, &["rm", "--no-progress", &spec]);
            }
        }
    }
    /// Whether every member on site-b holds one same group snapshot.
    fn has_cut(&self, names: &[String]) -> bool {
        let pool = self.facts["pool"].as_str().unwrap();
        let keys: Vec<Vec<String>> = names
            .iter()
            .map(|n| {
                let out = Command::new("rbd")
                    .arg("-c")
                    .arg(self.site("b", "conf"))
                    .args(["snap", "ls", "--all", "--format", "json", &format!("{pool}/{n}")])
                    .stderr(Stdio::null())
                    .output()
                    .unwrap();
                let snaps: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                snaps
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|v| v["namespace"]["type"] == "group")
                    .filter_map(|v| v["name"].as_str()?.rsplit('_').next().map(str::to_owned))
                    .collect()
            })
            .collect();
        keys.first().is_some_and(|first| first.iter().any(|k| keys.iter().all(|m| m.contains(k))))
    }
    fn site_a_pids(&self) -> Vec<i32> {
        let dir = self.facts["dir"].as_str().unwrap();
        std::fs::read_to_string(format!("{dir}/pids"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3 && f[0] == "site-a").then(|| f[2].parse().ok()).flatten()
            })
            .collect()
    }
}

fn signal(pids: &[i32], sig: i32) {
    for pid in pids {
        // SAFETY: kill(2) on the lab's own daemons.
        unsafe { libc::kill(*pid, sig) };
    }
}

struct Server {
    child: Child,
    command: Vec<String>,
    socket: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(bin: &Path, lab: &Lab, site: &str, dir: &Path) -> Self {
        let socket = dir.join(format!("{site}.sock"));
        let log = dir.join(format!("{site}.log"));
        let mut command: Vec<String> = [bin.to_str().unwrap(), "serve", "--endpoint", socket.to_str().unwrap()]
            .into_iter()
            .map(str::to_owned)
            .collect();
        command.extend(
            ["--log-format", "json", "--ceph-timeout", "10s", "--log-level", "info,rbd_addons=debug"]
                .into_iter()
                .chain(["--metrics-address", "127.0.0.1:0"])
                .map(str::to_owned),
        );
        command.extend(["--ceph-csi-config".to_owned(), lab.site(site, "csi_config")]);
        command.extend(["--cluster-mapping".to_owned(), lab.site(site, "cluster_mapping")]);
        let child = Self::spawn(&command, &socket, &log);
        Self { child, command, socket, log }
    }
    fn spawn(command: &[String], socket: &Path, log: &Path) -> Child {
        // A killed server leaves its socket behind.
        std::fs::remove_file(socket).ok();
        let child = Command::new(&command[0])
            .args(&command[1..])
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !socket.exists() {
            assert!(started.elapsed() < Duration::from_secs(30), "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }
    /// SIGKILL, then a new server on the same socket (its start fences the
    /// killed one's Ceph client, as after a crash in production).
    fn kill_and_restart(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        self.child = Self::spawn(&self.command, &self.socket, &self.log);
    }
    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("unix://{}", self.socket.display())).unwrap().connect().await.unwrap()
    }
    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }
    /// The log from byte `from` on.
    fn log_since(&self, from: u64) -> String {
        let all = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(all.get(from as usize..).unwrap_or_default()).into_owned()
    }
    /// Every number the server logged under `field`.
    fn logged(&self, field: &str) -> Vec<f64> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["fields"][field].as_f64())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// 64 KiB writes at random places of other journal-mirrored images, until
/// stopped or cut off (site-a frozen): other work on the same pool.
fn background_writer(cluster: Arc<Cluster>, pool_id: i64, names: Vec<String>, stop: Arc<AtomicBool>) {
    let io = rbd_addons::ceph::IoCtx::open(&cluster, pool_id, "").unwrap();
    let images: Vec<_> = names.iter().map(|n| rbd_addons::ceph::Image::open(&io, n).unwrap()).collect();
    let buf = vec![0x5au8; 64 << 10];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    while !stop.load(Ordering::Relaxed) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let image = &images[(rng % images.len() as u64) as usize];
        let offset = (rng >> 8) % ((256 << 20) / buf.len() as u64) * buf.len() as u64;
        if image.write_at(offset, &buf).is_err() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What Ceph says of each member on both sites, for the cut's folder.
fn ceph_view(lab: &Lab, sites: &[&str], names: &[String]) -> String {
    let pool = lab.facts["pool"].as_str().unwrap();
    let mut out = String::new();
    for &s in sites {
        for n in names {
            for args in [&["snap", "ls", "--all"][..], &["mirror", "image", "status"][..], &["lock", "ls"][..]] {
                let o = Command::new("timeout")
                    .args(["10", "rbd", "-c", &lab.site(s, "conf")])
                    .args(args)
                    .arg(format!("{pool}/{n}"))
                    .output()
                    .unwrap();
                out += &format!(
                    "== site-{s} rbd {} {pool}/{n}\n{}{}\n",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
    out
}

fn group(id: &str) -> Option<ReplicationSource> {
    Some(ReplicationSource { r#type: Some(Type::Volumegroup(VolumeGroupSource { volume_group_id: id.into() })) })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default()
}

/// Runs the writer for `run_for` and returns how many records were acknowledged.
fn write_for(cluster: Arc<Cluster>, pool_id: i64, names: Vec<String>, run_for: Duration) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let w = arm_writer(cluster, pool_id, names, stop.clone(), written.clone(), None, true).start();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    join_writer(w, Duration::from_secs(600));
    written.load(Ordering::Relaxed)
}

#[tokio::main]
async fn main() {
    let cuts: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    // The writer pauses for group snapshots (librbd's quiesce), as an
    // application mapped with `rbd-nbd --quiesce` does; --no-quiesce measures
    // one that does not.
    let quiesce = !std::env::args().any(|a| a == "--no-quiesce");
    let load = std::env::args().any(|a| a == "--load");
    let kill = std::env::args().any(|a| a == "--kill");
    let lab_dir = std::env::var("CEPHLAB_DIR").unwrap_or_else(|_| "/tmp/cephlab".into());
    let lab = Lab {
        facts: serde_json::from_str(
            &std::fs::read_to_string(format!("{lab_dir}/lab.json")).expect("run scripts/lab.sh up"),
        )
        .unwrap(),
    };
    // RBD_ADDONS_BIN: another build of the server (an older commit, to
    // compare); by default the one built beside this example.
    let bin = std::env::var_os("RBD_ADDONS_BIN").map_or_else(
        || std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("rbd-addons"),
        PathBuf::from,
    );
    assert!(bin.exists(), "build the binary first: cargo build --release");
    let dir = std::env::temp_dir().join(format!("rbd-addons-groupbench-{}", uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, mut b) = (Server::start(&bin, &lab, "a", &dir), Server::start(&bin, &lab, "b", &dir));
    let pool = lab.facts["pool"].as_str().unwrap().to_owned();
    let pool_a: i64 = lab.site("a", "pool_id").parse().unwrap();
    let pool_b: i64 = lab.site("b", "pool_id").parse().unwrap();
    let (cluster_a, cluster_b) = (lab.connect("a"), lab.connect("b"));
    let mut rep_a = ControllerClient::new(a.channel().await);
    let mut rep_b = ControllerClient::new(b.channel().await);
    let mut groups_a = GroupClient::new(a.channel().await);

    // 1. Journal mode's write overhead.
    let (plain, _) = lab.volumes();
    let plain_writes = write_for(cluster_a.clone(), pool_a, plain.clone(), Duration::from_secs(5));
    let (journaled, _) = lab.volumes();
    for n in &journaled {
        assert!(lab.rbd("a", &["mirror", "image", "enable", &format!("{pool}/{n}"), "journal"]));
    }
    let journal_writes = write_for(cluster_a.clone(), pool_a, journaled.clone(), Duration::from_secs(5));
    println!(
        "sequential 4 KiB writes: {:.0}/s unmirrored, {:.0}/s journal-mirrored (journal mode costs {:.2}x)",
        plain_writes as f64 / 5.0,
        journal_writes as f64 / 5.0,
        plain_writes as f64 / journal_writes.max(1) as f64
    );
    lab.remove(&plain);
    lab.remove(&journaled);

    // 2. Forced failovers at random instants.
    let _hog = load.then(|| CpuHog::start(2));
    let busy_stop = Arc::new(AtomicBool::new(false));
    let (busy, _) = lab.volumes();
    let busy_writer = load.then(|| {
        for n in &busy {
            assert!(lab.rbd("a", &["mirror", "image", "enable", &format!("{pool}/{n}"), "journal"]));
        }
        // Its own client, apart from the cuts' writers (see below).
        let (cluster, names, stop) = (lab.connect("a"), busy.clone(), busy_stop.clone());
        std::thread::spawn(move || background_writer(cluster, pool_a, names, stop))
    });
    let mut rng = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut kept_all, mut broken, mut lost, mut promotes, mut attempts_all) =
        (true, 0usize, Vec::new(), Vec::new(), Vec::new());
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut revived = 0usize;
    for round in 0..cuts {
        let (names, ids) = lab.volumes();
        let logs_from = (a.log_len(), b.log_len());
        let req = CreateVolumeGroupRequest {
            name: format!("bench-{}", uuid()),
            parameters: HashMap::from([
                ("clusterID".into(), lab.facts["cluster_id"].as_str().unwrap().into()),
                ("pool".into(), pool.clone()),
            ]),
            secrets: lab.secrets(),
            volume_ids: ids,
        };
        // Sent again after UNAVAILABLE (e.g. the server's client was
        // blocklisted after the last thaw: the retry reconnects).
        let creating = Instant::now();
        let gid = loop {
            match groups_a.create_volume_group(req.clone()).await {
                Ok(r) => break r.into_inner().volume_group.unwrap().volume_group_id,
                Err(e) if e.code() == tonic::Code::Unavailable && creating.elapsed() < Duration::from_secs(120) => {
                    println!("cut {round:2}: create group: {:?} {}", e.code(), e.message());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("cut {round}: create group: {e:?}"),
            }
        };
        let enable = EnableVolumeReplicationRequest {
            parameters: HashMap::from([("generationInterval".into(), "2s".into())]),
            secrets: lab.secrets(),
            replication_source: group(&gid),
            ..Default::default()
        };
        // The writer is armed before the first generation can quiesce its images.
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        // Each cut's writer has its own client: once site-a is thawed,
        // site-a's server taking a generation may find the writer's lock
        // owner silent (its watch lapsed while frozen) and librbd then breaks
        // the lock and blocklists the owner's client.
        let armed = arm_writer(
            lab.connect("a"),
            pool_a,
            names.clone(),
            stop.clone(),
            written.clone(),
            Some(latencies.clone()),
            quiesce,
        );
        // Sent again after UNAVAILABLE or ABORTED, as the controller does.
        let enabling = Instant::now();
        loop {
            match rep_a.enable_volume_replication(enable.clone()).await {
                Ok(_) => break,
                Err(e)
                    if matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Aborted)
                        && enabling.elapsed() < Duration::from_secs(120) =>
                {
                    println!("cut {round:2}: enable: {:?} {}", e.code(), e.message());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("cut {round}: enable: {e:?}"),
            }
        }
        for n in &names {
            let started = Instant::now();
            while !lab.rbd("b", &["info", &format!("{pool}/{n}")]) {
                assert!(started.elapsed() < Duration::from_secs(60), "{n} never reached site-b");
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        let w = armed.start();
        tokio::time::sleep(Duration::from_millis(3000 + next() % 7000)).await;
        // Cut only once the group has a recovery point on site-b (a generation
        // every member replayed): before that a forced promote refuses.
        let cut_on_b = Instant::now();
        while !lab.has_cut(&names) {
            assert!(cut_on_b.elapsed() < Duration::from_secs(60), "no generation reached every member on site-b");
            std::thread::sleep(Duration::from_millis(250));
        }
        let pids = lab.site_a_pids();
        signal(&pids, libc::SIGSTOP);
        let frozen_at = Instant::now();
        stop.store(true, Ordering::Relaxed);
        let acked = written.load(Ordering::Relaxed);
        let control = records_on(&cluster_b, pool_b, &names, acked + 64);
        let before = ceph_view(&lab, &["b"], &names);
        let started = Instant::now();
        let promote = PromoteVolumeRequest {
            force: true,
            secrets: lab.secrets(),
            replication_source: group(&gid),
            ..Default::default()
        };
        // The controller sends the promote again after UNAVAILABLE, ABORTED
        // or a broken connection; so does this loop, for up to 5 minutes.
        let mut attempts = 0;
        let mut killed_after = None;
        let r = loop {
            attempts += 1;
            let call = {
                let mut c = rep_b.clone();
                let req = promote.clone();
                tokio::spawn(async move { c.promote_volume(req).await })
            };
            let r = if kill && killed_after.is_none() {
                let after = Duration::from_millis(next() % 2500);
                tokio::time::sleep(after).await;
                killed_after = Some(after);
                b.kill_and_restart();
                rep_b = ControllerClient::new(b.channel().await);
                call.await.unwrap()
            } else {
                call.await.unwrap()
            };
            match r {
                Ok(_) => break Ok(()),
                Err(e)
                    if matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::Unknown)
                        && started.elapsed() < Duration::from_secs(300) =>
                {
                    println!("cut {round:2}: promote attempt {attempts}: {:?} {}", e.code(), e.message());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => break Err(e),
            }
        };
        promotes.push(started.elapsed());
        attempts_all.push(attempts);
        let after = records_on(&cluster_b, pool_b, &names, acked + 64);
        // Nothing may change a member once the promote answered: no replayer
        // still applying what it had fetched.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let later = records_on(&cluster_b, pool_b, &names, acked + 64);
        let after_view = ceph_view(&lab, &["b"], &names);
        signal(&pids, libc::SIGCONT);
        heal_lone_osd(&lab.site("a", "conf"), frozen_at.elapsed());
        // A promote that took a member from site-b's rbd-mirror blocklisted
        // its client; the daemon may deadlock restarting (see docs/ceph-releases.md).
        let release = lab.facts["release"].as_str().unwrap_or("pacific").to_owned();
        let plain = |secs: u32, prog: &str| {
            let mut c = Command::new("timeout");
            c.arg(secs.to_string()).arg(prog);
            c
        };
        if revive_rbd_mirror(&lab_dir, "b", &release, &plain) {
            revived += 1;
        }
        let prefix = after.iter().next_back().copied().unwrap_or(0);
        let whole = first_gap(&after).is_none() && after == later && prefix <= acked + 1;
        let ok = r.is_ok() && whole;
        kept_all &= ok;
        broken += usize::from(first_gap(&control).is_some());
        lost.push(acked.saturating_sub(prefix));
        println!(
            "cut {round:2}: {acked:5} acknowledged, per-volume failover {}, group failover {} (prefix 1..{prefix}, {:.1}s, \
             {attempts} attempt(s){})",
            first_gap(&control).map_or("consistent".to_owned(), |g| format!("BROKEN (record {g} missing)")),
            match (&r, whole) {
                (Ok(()), true) => "consistent".to_owned(),
                (Ok(()), false) if after != later =>
                    format!("CHANGED after OK ({} then {} records)", after.len(), later.len()),
                (Ok(()), false) => format!("SPLIT (record {:?} missing)", first_gap(&after)),
                (Err(e), _) => format!("FAILED ({:?}: {})", e.code(), e.message()),
            },
            promotes.last().unwrap().as_secs_f64(),
            killed_after.map_or(String::new(), |k| format!(", server killed {:.1}s in", k.as_secs_f64())),
        );
        let cut_dir = dir.join(format!("cut-{round:02}"));
        std::fs::create_dir_all(&cut_dir).unwrap();
        std::fs::write(cut_dir.join("a.log"), a.log_since(logs_from.0)).unwrap();
        std::fs::write(cut_dir.join("b.log"), b.log_since(logs_from.1)).unwrap();
        std::fs::write(cut_dir.join("ceph-before-promote.txt"), before).unwrap();
        std::fs::write(cut_dir.join("ceph-after-promote.txt"), after_view).unwrap();
        std::fs::write(cut_dir.join("ceph-after-thaw.txt"), ceph_view(&lab, &["a", "b"], &names)).unwrap();
        std::fs::write(
            cut_dir.join("records.txt"),
            format!("acknowledged {acked}\ncontrol {:?}\nafter {:?}\nlater {:?}\n", control.len(), after, later),
        )
        .unwrap();
        if ok {
            std::fs::remove_dir_all(&cut_dir).ok();
        } else {
            println!("cut {round:2}: evidence kept in {}", cut_dir.display());
        }
        // A writer whose client was blocklisted after the thaw (see above)
        // never finishes closing its images: it is left behind, with them.
        let closing = Instant::now();
        while !w.is_finished() && closing.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if w.is_finished() {
            w.join().ok();
        } else {
            println!(
                "cut {round:2}: the writer still closes its images 120 s after the thaw (client blocklisted?); left behind"
            );
            continue;
        }
        lab.remove(&names);
    }
    busy_stop.store(true, Ordering::Relaxed);
    if let Some(w) = busy_writer {
        w.join().ok();
    }
    lab.remove(&busy);

    // 3. What it cost.
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let pauses = a.logged("pause_ms");
    let reverted = b.logged("reverted_bytes");
    let max_pause = pauses.iter().copied().fold(0.0, f64::max);
    let mut p = pauses.clone();
    p.sort_by(|x, y| x.total_cmp(y));
    lost.sort();
    promotes.sort();
    println!(
        "\n{cuts} forced failovers at random instants, the writer {} librbd's quiesce{}{}:",
        if quiesce { "honouring" } else { "ignoring" },
        if load { ", both cores busy and a second writer on the pool" } else { "" },
        if kill { ", site-b's server SIGKILLed during each promote" } else { "" },
    );
    attempts_all.sort();
    println!(
        "  promote attempts until OK (median / max): {} / {}",
        attempts_all[attempts_all.len() / 2],
        attempts_all.last().unwrap()
    );
    println!(
        "  group failover kept a gap-free prefix: {}; plain per-volume failover broke it in {broken} of {cuts} ({:.0}%)",
        if kept_all { "every time" } else { "NOT every time" },
        100.0 * broken as f64 / cuts as f64
    );
    println!(
        "  records lost to the recovery point (median / max): {} / {}; forced group promote (median / max): {:.1}s / {:.1}s",
        lost[lost.len() / 2],
        lost.last().unwrap(),
        promotes[promotes.len() / 2].as_secs_f64(),
        promotes.last().unwrap().as_secs_f64()
    );
    println!(
        "  revert rewrote (median / max per failover): {:.1} MiB / {:.1} MiB",
        reverted.get(reverted.len() / 2).copied().unwrap_or(0.0) / 1048576.0,
        reverted.iter().copied().fold(0.0, f64::max) / 1048576.0
    );
    println!(
        "  generations: {} taken; group snapshot (write barrier) median {:.0} ms, max {:.0} ms",
        pauses.len(),
        p.get(p.len() / 2).copied().unwrap_or(0.0),
        max_pause
    );
    println!(
        "  writer latency: p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms (max/p50 = {:.0}x)",
        percentile(&l, 0.5).as_secs_f64() * 1e3,
        percentile(&l, 0.99).as_secs_f64() * 1e3,
        percentile(&l, 1.0).as_secs_f64() * 1e3,
        percentile(&l, 1.0).as_secs_f64() / percentile(&l, 0.5).as_secs_f64().max(1e-9)
    );
    println!("  site-b's rbd-mirror restarted after {revived} of {cuts} cuts (deadlocked after a lock break)");
    if kept_all {
        std::fs::remove_dir_all(&dir).ok();
    } else {
        println!("  evidence of the failed cuts: {}", dir.display());
    }
}
