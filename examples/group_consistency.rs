//! What crash-consistent group failover costs and buys, measured on the
//! two-site lab. Prints figures and ratios:
//!
//!   scripts/lab.sh up
//!   cargo build --release && cargo run --release --example group_consistency [CUTS] [--members 3,10]
//!       [--interval 5s] [--no-quiesce] [--load] [--kill]
//!
//! --members N,M,...: one series of CUTS cuts per group size (default 3).
//! --interval: the `generationInterval` sent on Enable (default: none, the
//!   server's default).
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
//! 2. CUTS forced failovers at random instants (default 20) per group size:
//!    the writer runs on site-a for 3 to 15 s while the server takes
//!    generations; site-a is frozen (SIGSTOP) and the group is force-promoted
//!    on site-b. Before the promote,
//!    site-b's copies are read as they are: what a plain per-volume failover
//!    hands the application (promoting each volume changes no data). After it,
//!    the records must form a gap-free prefix.
//! 3. Per group size, what it bought and cost: the group's RPO (the writes
//!    lost at each cut, in time: from when the newest record kept was
//!    acknowledged to the freeze), bytes the revert rewrote (site-b's server
//!    log), the writer's stall per generation (what its writes overlapping
//!    the generation took beyond their median, and the slow writes right
//!    after it while it took its members' locks back) and as a share of the
//!    time it wrote, the
//!    group snapshot's duration (site-a's server log), and the OSDs'
//!    snap-trim queues afterwards. For 10 members or more, issue 22's goals.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rbd_addons::proto::replication::controller_client::ControllerClient;
use rbd_addons::proto::replication::replication_source::{Type, VolumeGroupSource};
use rbd_addons::proto::replication::*;
use rbd_addons::proto::volumegroup::CreateVolumeGroupRequest;
use rbd_addons::proto::volumegroup::controller_client::ControllerClient as GroupClient;
use rbd_addons::testkit::interleave::{
    Acks, CpuHog, MEMBERS, Writer, arm_writer, first_gap, heal_lone_osd, join_writer, records_on, revive_rbd_mirror,
};
use rbd_addons::testkit::{Cluster, ConnectOptions};
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
    /// `count` fresh images on site-a: (names, volume handles).
    fn volumes(&self, count: usize) -> (Vec<String>, Vec<String>) {
        let pool = self.facts["pool"].as_str().unwrap();
        let cluster = self.facts["cluster_id"].as_str().unwrap();
        let pool_id: i64 = self.site("a", "pool_id").parse().unwrap();
        let mut names = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..count {
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
    /// Every number the server logged under `field` from byte `from` on.
    fn logged_since(&self, field: &str, from: u64) -> Vec<f64> {
        self.log_since(from)
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
    let io = rbd_addons::testkit::IoCtx::open(&cluster, pool_id, "").unwrap();
    let images: Vec<_> = names.iter().map(|n| rbd_addons::testkit::Image::open(&io, n).unwrap()).collect();
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

/// Runs the writer for `run_for`; returns how many records were
/// acknowledged and the share of its time its slow writes took (see
/// `slow_writes`).
fn write_for(cluster: Arc<Cluster>, pool_id: i64, names: Vec<String>, run_for: Duration) -> (u64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let acks: Acks = Arc::default();
    let w = arm_writer(Writer {
        cluster,
        pool_id,
        images: names,
        stop: stop.clone(),
        written: written.clone(),
        acks: Some(acks.clone()),
        honour_quiesce: true,
    })
    .start();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    join_writer(w, Duration::from_secs(600));
    let (wrote, slow) = slow_writes(&acks.lock().unwrap());
    (written.load(Ordering::Relaxed), slow.as_secs_f64() / wrote.as_secs_f64().max(1e-9))
}

/// What one series of cuts (one group size) measured.
#[derive(Default)]
struct Series {
    members: usize,
    kept_all: bool,
    /// Cuts where plain per-volume failover split the writer's records.
    broken: usize,
    lost_records: Vec<u64>,
    /// Writes lost to the recovery point, in time: from the newest record
    /// the group kept to the instant site-a froze (the RPO of that cut).
    lost: Vec<Duration>,
    promotes: Vec<Duration>,
    attempts: Vec<usize>,
    /// The writer's stall per generation taken while it wrote, in all (see
    /// `generation_stalls`)...
    stalls: Vec<Duration>,
    /// ...and its part during the barrier alone.
    barrier_stalls: Vec<Duration>,
    /// All its slow writes, generations or not (see `slow_writes`).
    slow: Duration,
    written_for: Duration,
    latencies: Vec<Duration>,
    /// Group snapshots' durations (ms) from site-a's server log.
    pauses: Vec<f64>,
    reverted: Vec<f64>,
    revived: usize,
}

impl Series {
    fn cuts(&self) -> usize {
        self.lost.len()
    }
    fn stall_share(&self) -> f64 {
        self.stalls.iter().sum::<Duration>().as_secs_f64() / self.written_for.as_secs_f64().max(1e-9)
    }
    fn slow_share(&self) -> f64 {
        self.slow.as_secs_f64() / self.written_for.as_secs_f64().max(1e-9)
    }
}

fn median_latency(acks: &[(Instant, Duration)]) -> Duration {
    let mut sorted: Vec<Duration> = acks.iter().map(|a| a.1).collect();
    sorted.sort();
    percentile(&sorted, 0.5)
}

/// A slow write: over 5× the median latency, and at least 10 ms.
fn slow_threshold(median: Duration) -> Duration {
    (median * 5).max(Duration::from_millis(10))
}

/// How long the writer wrote, and what its slow writes (over 5× its median
/// latency, and at least 10 ms) held it beyond the median, whatever slowed
/// them: the journal's own flushes and trims, the OSD, the CPU.
fn slow_writes(acks: &[(Instant, Duration)]) -> (Duration, Duration) {
    let (Some(first), Some(last)) = (acks.first(), acks.last()) else { return (Duration::ZERO, Duration::ZERO) };
    let median = median_latency(acks);
    let threshold = slow_threshold(median);
    let slow = acks.iter().filter(|a| a.1 > threshold).map(|a| a.1 - median).sum();
    (last.0 - (first.0 - first.1), slow)
}

/// A forced group promote slower than this keeps its cut's logs: a healthy
/// one takes the 8 s grace for site-b's rbd-mirror and a second or two more.
const SLOW_PROMOTE: Duration = Duration::from_secs(30);

/// One generation as site-a's server logged it: when it ended, and how long
/// its fence posts and its group snapshot took.
struct Generation {
    group: String,
    ended: SystemTime,
    fence: Duration,
    pause: Duration,
}

/// The generations site-a's server logged from byte `from` on.
fn generations_logged(server: &Server, from: u64) -> Vec<Generation> {
    server
        .log_since(from)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "consistency generation taken")
        .filter_map(|v| {
            Some(Generation {
                group: v["fields"]["group"].as_str()?.to_owned(),
                ended: parse_utc(v["timestamp"].as_str()?)?,
                fence: Duration::from_millis(v["fields"]["fence_ms"].as_u64().unwrap_or(0)),
                pause: Duration::from_millis(v["fields"]["pause_ms"].as_u64()?),
            })
        })
        .collect()
}

/// `2026-12-05T18:04:54.681643Z` as a time.
fn parse_utc(t: &str) -> Option<SystemTime> {
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac: f64 = t.get(19..)?.trim_end_matches('Z').parse().unwrap_or(0.0);
    // Days since 1970-01-01 of a proleptic Gregorian date.
    let (y, m) = if m <= 2 { (y - 1, m + 12) } else { (y, m) };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * (m - 3) + 2) / 5 + d - 719469;
    let secs = days * 86400 + h * 3600 + mi * 60 + s;
    Some(UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_secs_f64(frac))
}

/// The writer's stall per generation of its group taken while it wrote, as
/// (during the barrier, in all): what its writes overlapping the generation
/// (from its first fence post to the end of its group snapshot) took beyond
/// its median latency, then also the run of slow writes right after it. The
/// group snapshot took every member's exclusive lock, and a writer takes each
/// back (lock, journal open) only when it next writes there: one member after
/// another for this writer, which writes one record at a time. `clock` maps
/// the writer's instants to wall-clock time.
fn generation_stalls(
    acks: &[(Instant, Duration)],
    generations: &[Generation],
    group: &str,
    clock: (Instant, SystemTime),
) -> Vec<(Duration, Duration)> {
    let (Some(first), Some(last)) = (acks.first(), acks.last()) else { return Vec::new() };
    let wall = |i: Instant| clock.1 + (i - clock.0);
    let (from, to) = (wall(first.0 - first.1), wall(last.0));
    let median = median_latency(acks);
    let slow = slow_threshold(median);
    generations
        .iter()
        .filter(|g| g.group == group)
        .filter_map(|g| {
            let start = g.ended.checked_sub(g.fence + g.pause)?;
            (start >= from && g.ended <= to).then(|| {
                // Acknowledgements are in order: the first one after the
                // generation started opens its window.
                let mut rest = acks[acks.partition_point(|a| wall(a.0) <= start)..].iter().peekable();
                let mut during = Duration::ZERO;
                while let Some(a) = rest.next_if(|a| wall(a.0 - a.1) < g.ended) {
                    during += a.1.saturating_sub(median);
                }
                let after: Duration = rest.take_while(|a| a.1 > slow).map(|a| a.1 - median).sum();
                (during, during + after)
            })
        })
        .collect()
}

/// The OSD's snap-trim queue on a site (snapshots removed but not trimmed
/// yet), summed over its PGs; None when the mgr does not answer.
fn snaptrim_queue(lab: &Lab, site: &str) -> Option<u64> {
    let out = Command::new("timeout")
        .args(["20", "ceph", "-c", &lab.site(site, "conf"), "pg", "dump", "pgs", "-f", "json"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let pgs = v["pg_stats"].as_array().or_else(|| v.as_array())?;
    Some(pgs.iter().filter_map(|pg| pg["snaptrimq_len"].as_u64()).sum())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Everything one run of cuts needs.
struct Bench<'l> {
    lab: &'l Lab,
    lab_dir: String,
    dir: PathBuf,
    a: Server,
    b: Server,
    rep_a: ControllerClient<Channel>,
    rep_b: ControllerClient<Channel>,
    groups_a: GroupClient<Channel>,
    cluster_b: Arc<Cluster>,
    pool: String,
    pool_a: i64,
    pool_b: i64,
    quiesce: bool,
    kill: bool,
    /// `generationInterval` sent on Enable; None: the server's default.
    interval: Option<String>,
    rng: u64,
    /// The writer's instants as wall-clock time (the server logs the latter).
    clock: (Instant, SystemTime),
}

impl Bench<'_> {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// `cuts` forced failovers of fresh groups of `members` volumes.
    async fn series(&mut self, members: usize, cuts: usize) -> Series {
        let mut s = Series { members, kept_all: true, ..Default::default() };
        let (pauses_from, reverted_from) = (self.a.log_len(), self.b.log_len());
        for round in 0..cuts {
            self.cut(&mut s, round).await;
        }
        s.pauses = self.a.logged_since("pause_ms", pauses_from);
        s.reverted = self.b.logged_since("reverted_bytes", reverted_from);
        s
    }

    async fn cut(&mut self, s: &mut Series, round: usize) {
        let lab = self.lab;
        let pool = self.pool.clone();
        let (names, ids) = lab.volumes(s.members);
        let logs_from = (self.a.log_len(), self.b.log_len());
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
            match self.groups_a.create_volume_group(req.clone()).await {
                Ok(r) => break r.into_inner().volume_group.unwrap().volume_group_id,
                Err(e) if e.code() == tonic::Code::Unavailable && creating.elapsed() < Duration::from_secs(120) => {
                    println!("cut {round:2}: create group: {:?} {}", e.code(), e.message());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("cut {round}: create group: {e:?}"),
            }
        };
        let enable = EnableVolumeReplicationRequest {
            parameters: self.interval.iter().map(|i| ("generationInterval".to_owned(), i.clone())).collect(),
            secrets: lab.secrets(),
            replication_source: group(&gid),
            ..Default::default()
        };
        // The writer is armed before the first generation can quiesce its images.
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let acks: Acks = Arc::default();
        // Each cut's writer has its own client: once site-a is thawed,
        // site-a's server taking a generation may find the writer's lock
        // owner silent (its watch lapsed while frozen) and librbd then breaks
        // the lock and blocklists the owner's client.
        let armed = arm_writer(Writer {
            cluster: lab.connect("a"),
            pool_id: self.pool_a,
            images: names.clone(),
            stop: stop.clone(),
            written: written.clone(),
            acks: Some(acks.clone()),
            honour_quiesce: self.quiesce,
        });
        // Sent again after UNAVAILABLE or ABORTED, as the controller does.
        let enabling = Instant::now();
        loop {
            match self.rep_a.enable_volume_replication(enable.clone()).await {
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
                // Slow after a cut: the forced promote blocklisted site-b's
                // rbd-mirror client, and it restarts its replayers.
                assert!(started.elapsed() < Duration::from_secs(180), "{n} never reached site-b");
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        let writing_from = Instant::now();
        let w = armed.start();
        let run_for = Duration::from_millis(3000 + self.next() % 12000);
        tokio::time::sleep(run_for).await;
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
        let acked_log: Vec<(Instant, Duration)> = acks.lock().unwrap().iter().take(acked as usize).copied().collect();
        let control = records_on(&self.cluster_b, self.pool_b, &names, acked + 64);
        let before = ceph_view(lab, &["b"], &names);
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
                let mut c = self.rep_b.clone();
                let req = promote.clone();
                tokio::spawn(async move { c.promote_volume(req).await })
            };
            if self.kill && killed_after.is_none() {
                let after = Duration::from_millis(self.next() % 2500);
                tokio::time::sleep(after).await;
                killed_after = Some(after);
                self.b.kill_and_restart();
                self.rep_b = ControllerClient::new(self.b.channel().await);
            }
            match call.await.unwrap() {
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
        let promoted_in = started.elapsed();
        let after = records_on(&self.cluster_b, self.pool_b, &names, acked + 64);
        // Nothing may change a member once the promote answered: no replayer
        // still applying what it had fetched.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let later = records_on(&self.cluster_b, self.pool_b, &names, acked + 64);
        let after_view = ceph_view(lab, &["b"], &names);
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
        if revive_rbd_mirror(&self.lab_dir, "b", &release, &plain) {
            s.revived += 1;
        }
        let prefix = after.iter().next_back().copied().unwrap_or(0);
        let whole = first_gap(&after).is_none() && after == later && prefix <= acked + 1;
        let ok = r.is_ok() && whole;
        s.kept_all &= ok;
        s.broken += usize::from(first_gap(&control).is_some());
        s.lost_records.push(acked.saturating_sub(prefix));
        // The recovery point: when the newest record kept was acknowledged
        // (the writer's start when none was).
        let lost = if prefix >= acked {
            Duration::ZERO
        } else {
            frozen_at - prefix.checked_sub(1).map_or(writing_from, |i| acked_log[i as usize].0)
        };
        s.lost.push(lost);
        s.promotes.push(promoted_in);
        s.attempts.push(attempts);
        let (wrote, slow) = slow_writes(&acked_log);
        s.written_for += wrote;
        s.slow += slow;
        let generations = generations_logged(&self.a, logs_from.0);
        for (barrier, all) in generation_stalls(&acked_log, &generations, &gid, self.clock) {
            s.barrier_stalls.push(barrier);
            s.stalls.push(all);
        }
        s.latencies.extend(acked_log.iter().map(|a| a.1));
        println!(
            "cut {round:2}: {} members, {acked:5} acknowledged, per-volume failover {}, group failover {} (prefix \
             1..{prefix}, {:.1}s of writes lost, promote {:.1}s, {attempts} attempt(s){})",
            s.members,
            first_gap(&control).map_or("consistent".to_owned(), |g| format!("BROKEN (record {g} missing)")),
            match (&r, whole) {
                (Ok(()), true) => "consistent".to_owned(),
                (Ok(()), false) if after != later =>
                    format!("CHANGED after OK ({} then {} records)", after.len(), later.len()),
                (Ok(()), false) => format!("SPLIT (record {:?} missing)", first_gap(&after)),
                (Err(e), _) => format!("FAILED ({:?}: {})", e.code(), e.message()),
            },
            lost.as_secs_f64(),
            promoted_in.as_secs_f64(),
            killed_after.map_or(String::new(), |k| format!(", server killed {:.1}s in", k.as_secs_f64())),
        );
        let cut_dir = self.dir.join(format!("cut-{}-{round:02}", s.members));
        std::fs::create_dir_all(&cut_dir).unwrap();
        std::fs::write(cut_dir.join("a.log"), self.a.log_since(logs_from.0)).unwrap();
        std::fs::write(cut_dir.join("b.log"), self.b.log_since(logs_from.1)).unwrap();
        std::fs::write(cut_dir.join("ceph-before-promote.txt"), before).unwrap();
        std::fs::write(cut_dir.join("ceph-after-promote.txt"), after_view).unwrap();
        std::fs::write(cut_dir.join("ceph-after-thaw.txt"), ceph_view(lab, &["a", "b"], &names)).unwrap();
        std::fs::write(
            cut_dir.join("records.txt"),
            format!("acknowledged {acked}\ncontrol {:?}\nafter {:?}\nlater {:?}\n", control.len(), after, later),
        )
        .unwrap();
        // A slow promote keeps its logs too: where its time went is the question.
        if ok && promoted_in < SLOW_PROMOTE {
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
            lab.remove(&names);
        } else {
            println!(
                "cut {round:2}: the writer still closes its images 120 s after the thaw (client blocklisted?); left behind"
            );
        }
    }
}

fn report(s: &Series, quiesce: bool, load: bool, kill: bool, interval: &str) {
    let cuts = s.cuts();
    let mut lost = s.lost.clone();
    lost.sort();
    let mut lost_records = s.lost_records.clone();
    lost_records.sort();
    let mut promotes = s.promotes.clone();
    promotes.sort();
    let mut attempts = s.attempts.clone();
    attempts.sort();
    let mut stalls = s.stalls.clone();
    stalls.sort();
    let mut l = s.latencies.clone();
    l.sort();
    let mut p = s.pauses.clone();
    p.sort_by(|x, y| x.total_cmp(y));
    let mut reverted = s.reverted.clone();
    reverted.sort_by(|x, y| x.total_cmp(y));
    println!(
        "\n{} members, generationInterval {interval}: {cuts} forced failovers at random instants, the writer {} \
         librbd's quiesce{}{}:",
        s.members,
        if quiesce { "honouring" } else { "ignoring" },
        if load { ", both cores busy and a second writer on the pool" } else { "" },
        if kill { ", site-b's server SIGKILLed during each promote" } else { "" },
    );
    println!("  promote attempts until OK (median / max): {} / {}", attempts[cuts / 2], attempts[cuts - 1]);
    println!(
        "  group failover kept a gap-free prefix: {}; plain per-volume failover broke it in {} of {cuts} ({:.0}%)",
        if s.kept_all { "every time" } else { "NOT every time" },
        s.broken,
        100.0 * s.broken as f64 / cuts as f64
    );
    println!(
        "  group RPO, writes lost at the forced failover (median / max): {:.1} s / {:.1} s ({} / {} records); \
         forced group promote (median / max): {:.1} s / {:.1} s",
        lost[cuts / 2].as_secs_f64(),
        lost[cuts - 1].as_secs_f64(),
        lost_records[cuts / 2],
        lost_records[cuts - 1],
        promotes[cuts / 2].as_secs_f64(),
        promotes[cuts - 1].as_secs_f64()
    );
    println!(
        "  revert rewrote (median / max per failover): {:.1} MiB / {:.1} MiB",
        reverted.get(reverted.len() / 2).copied().unwrap_or(0.0) / 1048576.0,
        reverted.last().copied().unwrap_or(0.0) / 1048576.0
    );
    println!(
        "  generations: {} taken; group snapshot (write barrier) median {:.0} ms, max {:.0} ms",
        p.len(),
        p.get(p.len() / 2).copied().unwrap_or(0.0),
        p.last().copied().unwrap_or(0.0)
    );
    let mut barrier = s.barrier_stalls.clone();
    barrier.sort();
    println!(
        "  writer's stall per generation (p50 / p99 / max): {:.0} / {:.0} / {:.0} ms over {} generations, {:.0} / \
         {:.0} / {:.0} ms of it during the barrier, the rest taking its locks back; {:.2}% of {:.0} s of writing \
         (all its slow writes, generations or not: {:.2}%)",
        ms(percentile(&stalls, 0.5)),
        ms(percentile(&stalls, 0.99)),
        ms(percentile(&stalls, 1.0)),
        stalls.len(),
        ms(percentile(&barrier, 0.5)),
        ms(percentile(&barrier, 0.99)),
        ms(percentile(&barrier, 1.0)),
        100.0 * s.stall_share(),
        s.written_for.as_secs_f64(),
        100.0 * s.slow_share()
    );
    println!(
        "  writer latency: p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms",
        ms(percentile(&l, 0.5)),
        ms(percentile(&l, 0.99)),
        ms(percentile(&l, 1.0)),
    );
    println!("  site-b's rbd-mirror restarted after {} of {cuts} cuts (deadlocked after a lock break)", s.revived);
}

/// Issue 22's goals for a 10-member group at the default interval.
fn verdict(s: &Series) {
    let mut lost = s.lost.clone();
    lost.sort();
    let mut stalls = s.stalls.clone();
    stalls.sort();
    let cuts = s.cuts();
    let goals = [
        ("group RPO median <= 10 s", lost[cuts / 2] <= Duration::from_secs(10)),
        ("group RPO max <= 15 s", lost[cuts - 1] <= Duration::from_secs(15)),
        ("writer's stall <= 2% of wall time", s.stall_share() <= 0.02),
        ("writer's stall p99 <= 150 ms", percentile(&stalls, 0.99) <= Duration::from_millis(150)),
        ("every cut consistent", s.kept_all),
    ];
    for (goal, met) in goals {
        println!("  goal ({} members): {goal}: {}", s.members, if met { "met" } else { "NOT met" });
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cuts: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let value_of = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    // --members 3,10: one series of cuts per group size.
    let sizes: Vec<usize> = value_of("--members")
        .map_or_else(|| vec![MEMBERS], |v| v.split(',').map(|n| n.parse().expect("--members 3,10")).collect());
    let interval = value_of("--interval");
    // The writer pauses for group snapshots (librbd's quiesce), as an
    // application mapped with `rbd-nbd --quiesce` does; --no-quiesce measures
    // one that does not.
    let quiesce = !args.iter().any(|a| a == "--no-quiesce");
    let load = args.iter().any(|a| a == "--load");
    let kill = args.iter().any(|a| a == "--kill");
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
    let (a, b) = (Server::start(&bin, &lab, "a", &dir), Server::start(&bin, &lab, "b", &dir));
    let pool = lab.facts["pool"].as_str().unwrap().to_owned();
    let pool_a: i64 = lab.site("a", "pool_id").parse().unwrap();
    let pool_b: i64 = lab.site("b", "pool_id").parse().unwrap();
    let cluster_a = lab.connect("a");

    // 1. Journal mode's write overhead.
    let (plain, _) = lab.volumes(MEMBERS);
    let (plain_writes, _) = write_for(cluster_a.clone(), pool_a, plain.clone(), Duration::from_secs(5));
    let (journaled, _) = lab.volumes(MEMBERS);
    for n in &journaled {
        assert!(lab.rbd("a", &["mirror", "image", "enable", &format!("{pool}/{n}"), "journal"]));
    }
    let (journal_writes, journal_slow) =
        write_for(cluster_a.clone(), pool_a, journaled.clone(), Duration::from_secs(5));
    println!(
        "sequential 4 KiB writes: {:.0}/s unmirrored, {:.0}/s journal-mirrored (journal mode costs {:.2}x; slow \
         writes took {:.2}% of the journal-mirrored writer's time with no group at all)",
        plain_writes as f64 / 5.0,
        journal_writes as f64 / 5.0,
        plain_writes as f64 / journal_writes.max(1) as f64,
        100.0 * journal_slow
    );
    lab.remove(&plain);
    lab.remove(&journaled);

    // 2. Forced failovers at random instants.
    let _hog = load.then(|| CpuHog::start(2));
    let busy_stop = Arc::new(AtomicBool::new(false));
    let (busy, _) = lab.volumes(MEMBERS);
    let busy_writer = load.then(|| {
        for n in &busy {
            assert!(lab.rbd("a", &["mirror", "image", "enable", &format!("{pool}/{n}"), "journal"]));
        }
        // Its own client, apart from the cuts' writers (see below).
        let (cluster, names, stop) = (lab.connect("a"), busy.clone(), busy_stop.clone());
        std::thread::spawn(move || background_writer(cluster, pool_a, names, stop))
    });
    let rng = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut bench = Bench {
        rep_a: ControllerClient::new(a.channel().await),
        rep_b: ControllerClient::new(b.channel().await),
        groups_a: GroupClient::new(a.channel().await),
        cluster_b: lab.connect("b"),
        lab: &lab,
        lab_dir,
        dir: dir.clone(),
        a,
        b,
        pool: pool.clone(),
        pool_a,
        pool_b,
        quiesce,
        kill,
        interval: interval.clone(),
        rng,
        clock: (Instant::now(), SystemTime::now()),
    };
    // 3. What it cost and bought, after each series.
    let shown_interval = interval.clone().unwrap_or_else(|| "the server's default".to_owned());
    let mut series = Vec::new();
    for &members in &sizes {
        let s = bench.series(members, cuts).await;
        report(&s, quiesce, load, kill, &shown_interval);
        println!(
            "  OSD snap-trim queue (snapshots to trim, summed over PGs) after the series: site-a {:?}, site-b {:?}",
            snaptrim_queue(&lab, "a"),
            snaptrim_queue(&lab, "b")
        );
        series.push(s);
    }
    busy_stop.store(true, Ordering::Relaxed);
    if let Some(w) = busy_writer {
        w.join().ok();
    }
    lab.remove(&busy);

    println!();
    for s in series.iter().filter(|s| s.members >= 10) {
        verdict(s);
    }
    let kept_cuts = std::fs::read_dir(&dir)
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("cut-")))
        .unwrap_or(false);
    if !kept_cuts {
        std::fs::remove_dir_all(&dir).ok();
    } else {
        println!("  evidence of the failed or slow cuts: {}", dir.display());
    }
}
