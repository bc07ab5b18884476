//! The interleaved writer of the group-consistency proof, shared by the test
//! (`tests/group_consistency.rs`) and the example that measures it
//! (`examples/group_consistency.rs`): record k goes to member k mod N, each
//! write after the previous one was acknowledged, so the records any site
//! holds must form a gap-free prefix 1..K if its members show one instant.
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ceph::{Cluster, Image, IoCtx, QuiesceWatch, WriteGate};
use serde_json::Value;

pub const MEMBERS: usize = 3;
/// Every acknowledged record's (instant acknowledged, write latency), record
/// k at index k - 1: what the RPO in seconds and the writer's stalls are
/// measured from.
pub type Acks = Arc<Mutex<Vec<(Instant, Duration)>>>;
const RECORD: usize = 4096;
const MAGIC: &[u8; 8] = b"RBDADDRC";

fn record(k: u64, member: usize) -> Vec<u8> {
    let mut buf = vec![0u8; RECORD];
    buf[..8].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(&k.to_le_bytes());
    buf[16..24].copy_from_slice(&check(k, member).to_le_bytes());
    buf
}

fn check(k: u64, member: usize) -> u64 {
    k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (member as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
}

/// Record k's member and offset, in a group of `members`.
fn place(k: u64, members: usize) -> (usize, u64) {
    ((k % members as u64) as usize, (k / members as u64) * RECORD as u64)
}

/// The records present on a site: every valid record in every member.
pub fn records_on(cluster: &Arc<Cluster>, pool_id: i64, images: &[String], upto: u64) -> BTreeSet<u64> {
    let io = IoCtx::open(cluster, pool_id, "").expect("open pool");
    let mut found = BTreeSet::new();
    for (member, name) in images.iter().enumerate() {
        let image = Image::open_read_only(&io, name).expect("open member read-only");
        let blocks = upto / images.len() as u64 + 2;
        let mut buf = vec![0u8; (blocks as usize) * RECORD];
        image.read_at(0, &mut buf).expect("read member");
        for block in buf.chunks(RECORD) {
            if &block[..8] != MAGIC {
                continue;
            }
            let k = u64::from_le_bytes(block[8..16].try_into().unwrap());
            let sum = u64::from_le_bytes(block[16..24].try_into().unwrap());
            if sum == check(k, member) && place(k, images.len()).0 == member {
                found.insert(k);
            }
        }
    }
    found
}

/// The first missing record below the newest present one, if any.
pub fn first_gap(present: &BTreeSet<u64>) -> Option<u64> {
    let newest = *present.iter().next_back()?;
    (1..newest).find(|k| !present.contains(k))
}

/// How an armed writer reports that it is ready and waits to be let go.
struct Arming {
    ready: SyncSender<()>,
    go: Receiver<()>,
}

/// A writer thread whose images are open and, when it honours quiesce,
/// whose quiesce watches are registered, but which has not written yet.
/// Arm it before anything snapshots its images: librbd 20.2 (Tentacle)
/// aborts the process (`ceph_assert(m_blocked)` in QuiesceWatchers::notify)
/// when a watch registered between a group snapshot's quiesce and its
/// unquiesce receives that unquiesce.
pub struct ArmedWriter {
    go: SyncSender<()>,
    thread: JoinHandle<u64>,
}

/// Starts a writer thread and waits until it is armed (bounded).
pub fn arm_writer(w: Writer) -> ArmedWriter {
    let (ready_tx, ready_rx) = sync_channel(1);
    let (go_tx, go_rx) = sync_channel(1);
    let arming = Arming { ready: ready_tx, go: go_rx };
    let thread = std::thread::spawn(move || writer(w, arming));
    ready_rx.recv_timeout(Duration::from_secs(60)).expect("the writer did not open its images within 60 s");
    ArmedWriter { go: go_tx, thread }
}

impl ArmedWriter {
    /// Lets the writer write; join the thread with [`join_writer`].
    pub fn start(self) -> JoinHandle<u64> {
        let _ = self.go.send(());
        self.thread
    }
}

/// The interleaved writer's setup.
pub struct Writer {
    pub cluster: Arc<Cluster>,
    pub pool_id: i64,
    /// The members' image names, in the pool's default namespace.
    pub images: Vec<String>,
    /// Set to stop writing.
    pub stop: Arc<AtomicBool>,
    /// The last record acknowledged.
    pub written: Arc<AtomicU64>,
    /// When given, receives every record's acknowledgement.
    pub acks: Option<Acks>,
    /// Pause while librbd asks writers to quiesce (as `rbd-nbd --quiesce`).
    pub honour_quiesce: bool,
}

impl Writer {
    /// A writer on `images` with its own stop flag and progress counter,
    /// honouring quiesce requests, no acknowledgement log.
    pub fn new(cluster: Arc<Cluster>, pool_id: i64, images: Vec<String>) -> Self {
        let (stop, written) = (Arc::default(), Arc::default());
        Self { cluster, pool_id, images, stop, written, acks: None, honour_quiesce: true }
    }
}

/// Writes records 1, 2, 3, ... until stopped or cut off, each after the last
/// was acknowledged; `acks`, when given, receives every record's
/// acknowledgement.
/// With `honour_quiesce` it pauses while librbd snapshots a group, as an
/// application mapped with `rbd-nbd --quiesce` does; without, librbd cannot
/// pause it and a group snapshot may split one of its instants. It says
/// through `arming` when it is ready and waits to be let go (see
/// [`arm_writer`]). Returns how many quiesce requests paused it.
fn writer(w: Writer, arming: Arming) -> u64 {
    let Writer { cluster, pool_id, images, stop, written, acks, honour_quiesce } = w;
    let io = IoCtx::open(&cluster, pool_id, "").expect("open pool");
    let handles: Vec<Image<'_>> = images.iter().map(|n| Image::open(&io, n).expect("open member")).collect();
    let gate = WriteGate::new();
    let _watches: Vec<QuiesceWatch<'_>> = if honour_quiesce {
        handles.iter().map(|h| QuiesceWatch::register(h, gate.clone()).expect("quiesce watch")).collect()
    } else {
        Vec::new()
    };
    // Never let go (the caller gave up): no writes, but the watches are
    // still dropped only once quiet.
    let go = arming.ready.send(()).is_ok() && arming.go.recv().is_ok();
    let mut k = 1u64;
    while go && !stop.load(Ordering::Relaxed) {
        let (member, offset) = place(k, handles.len());
        // A quiesce pause counts in the write's latency: the application waits.
        let started = Instant::now();
        let pass = gate.enter();
        if handles[member].write_at(offset, &record(k, member)).is_err() {
            break; // the site was cut off
        }
        drop(pass);
        if let Some(a) = &acks {
            a.lock().unwrap().push((Instant::now(), started.elapsed()));
        }
        written.store(k, Ordering::Relaxed);
        k += 1;
    }
    if honour_quiesce {
        println!("writer: {} records, paused for {} quiesce requests", k - 1, gate.quiesced());
        if !gate.wait_quiet(Duration::from_millis(500), Duration::from_secs(60)) {
            println!("writer: quiesce requests never stopped; unregistering anyway");
        }
    }
    gate.quiesced()
}

/// Joins a writer thread within `limit`, or fails the test instead of
/// hanging it (a writer stuck in librbd would otherwise stop the suite).
/// Returns how many quiesce requests paused the writer.
pub fn join_writer(w: std::thread::JoinHandle<u64>, limit: Duration) -> u64 {
    let started = Instant::now();
    while !w.is_finished() {
        assert!(started.elapsed() < limit, "the writer did not stop within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    w.join().unwrap_or(0)
}

/// A lone OSD that was stopped for longer than its read lease (16 s: 0.8 of
/// the 20 s heartbeat grace) comes back with some PGs "laggy": it renews
/// leases through peer OSDs, and has none, so they stay laggy and every op on
/// them waits. Marking it down makes it re-peer (memstore keeps its data: the
/// process never stopped). After a freeze of `frozen_for` ≥ 8 s it is marked
/// down without asking: right after SIGCONT the mgr still reports the PG
/// states from before the freeze ("active+clean"), so looking for laggy PGs
/// first can find nothing to heal. (The lab raises `osd_max_markdown_count`:
/// past 5 marks in 10 minutes an OSD shuts itself down.)
pub fn heal_lone_osd(conf: &str, frozen_for: Duration) {
    let serves =
        |state: &str| state.starts_with("active+clean") && !state.contains("laggy") && !state.contains("stale");
    let ceph = |args: &[&str]| {
        Command::new("timeout").args(["20", "ceph", "-c", conf]).args(args).output().ok().filter(|o| o.status.success())
    };
    let json = |args: &[&str]| ceph(args).and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok());
    let clean = || {
        json(&["pg", "stat", "-f", "json"]).is_some_and(|v| {
            let s = &v["pg_summary"];
            s["num_pgs"].as_u64().unwrap_or(0) > 0
                && s["num_pg_by_state"]
                    .as_array()
                    .is_some_and(|a| a.iter().all(|st| st["num"] == 0 || serves(st["name"].as_str().unwrap_or(""))))
        })
    };
    // The epoch from which the OSD has been up, None while it is down.
    let up_from = || {
        json(&["osd", "dump", "-f", "json"]).and_then(|v| {
            let osd = v["osds"].as_array()?.first()?.clone();
            (osd["up"] == 1).then(|| osd["up_from"].as_u64().unwrap_or(0))
        })
    };
    let started = Instant::now();
    let deadline = Duration::from_secs(150);
    let mut before = up_from();
    while before.is_none() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        before = up_from();
    }
    let Some(before) = before else {
        println!("heal: the OSD is not up 30 s after the thaw");
        return;
    };
    if frozen_for >= Duration::from_secs(8) {
        while ceph(&["osd", "down", "0"]).is_none() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(500));
        }
        // Back up in a later epoch.
        while up_from().is_none_or(|e| e <= before) && started.elapsed() < deadline {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // Then clean for 3 s in a row (the first report may still be an old one).
    let mut clean_since: Option<Instant> = None;
    while started.elapsed() < deadline {
        if clean() {
            if clean_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_secs(3) {
                return;
            }
        } else {
            clean_since = None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("heal: the lone OSD's PGs did not all serve within {deadline:?}");
}

/// Busy loops on both cores, until dropped: a guarantee must hold on a busy
/// machine, not only on an idle lab.
pub struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    pub fn start(n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..100_000 {
                            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().ok();
        }
    }
}

/// Whether site `site` (`a` or `b`) of the lab in `lab_dir` has an rbd-mirror
/// daemon that answers on its admin socket with pool replayers whose clients
/// are alive. Its status command takes the lock its pool replayer restarts
/// hold, so a daemon deadlocked in such a restart does not answer; one whose
/// client was blocklisted may answer yet never restart its pool replayer
/// (seen: its image replayers "Stopping" for minutes, nothing replicated,
/// the status saying it leads or not). Every instance watches the pool's
/// `rbd_mirror_leader` object, leader or not, and a blocklisted client's
/// watch is gone: a replayer restarted on a new client is alive even before
/// it leads again. `tool(secs, program)` builds a bounded command
/// (inside the release's root, where the lab has one).
pub fn rbd_mirror_answers(lab_dir: &str, site: &str, tool: &dyn Fn(u32, &str) -> Command) -> bool {
    let run = format!("{lab_dir}/{site}/run");
    // The running daemon's own socket: its name carries its PID; the newest
    // line is a restarted daemon's.
    let pids = std::fs::read_to_string(format!("{lab_dir}/pids")).unwrap_or_default();
    let Some(pid) = pids.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 3 && f[0] == format!("site-{site}") && f[1] == "rbd-mirror").then(|| f[2].to_owned())
    }) else {
        return false;
    };
    let name = format!("ceph-client.rbd-mirror.{site}.{pid}.");
    let Ok(entries) = std::fs::read_dir(&run) else { return false };
    let sockets: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&name) && n.ends_with(".asok"))
        .map(|n| format!("{run}/{n}"))
        .collect();
    sockets.iter().any(|sock| {
        let Ok(out) = tool(10, "ceph").args(["--admin-daemon", sock, "rbd", "mirror", "status", "-f", "json"]).output()
        else {
            return false;
        };
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let alive = |p: &Value| {
            let (Some(pool), Some(instance)) = (p["pool"].as_str(), p["instance_id"].as_str()) else { return false };
            let watchers = tool(10, "rados")
                .args(["-c", &format!("{lab_dir}/{site}/ceph.conf"), "-p", pool, "listwatchers", "rbd_mirror_leader"])
                .output();
            watchers.is_ok_and(|w| String::from_utf8_lossy(&w.stdout).contains(&format!(" client.{instance} ")))
        };
        out.status.success()
            && status["pool_replayers"].as_array().is_some_and(|pools| !pools.is_empty() && pools.iter().all(alive))
    })
}

/// After its client was blocklisted (a forced promote took an image from
/// it), rbd-mirror restarts its pool replayer by itself; rbd-mirror 16.2.15
/// can deadlock doing so when its image deleter was deleting an image at
/// that moment (see docs/ceph-releases.md). Waits up to 30 s for the daemon to answer,
/// else restarts it as an admin would, and says so. Returns whether it had
/// to be restarted.
pub fn revive_rbd_mirror(lab_dir: &str, site: &str, release: &str, tool: &dyn Fn(u32, &str) -> Command) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if rbd_mirror_answers(lab_dir, site, tool) {
            return false;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("site-{site}'s rbd-mirror does not answer, or its client is gone, 30 s after the freeze: restarting it");
    let out = Command::new("scripts/lab.sh")
        .args(["restart-mirror", site, "--release", release])
        .env("CEPHLAB_DIR", lab_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("scripts/lab.sh restart-mirror");
    assert!(out.status.success(), "restart-mirror: {}", String::from_utf8_lossy(&out.stderr));
    true
}
