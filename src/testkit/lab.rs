//! The two-site lab of `scripts/lab.sh up` as the integration tests and
//! benchmarks see it: its facts (lab.json), Ceph's own view through the `rbd`
//! and `rados` CLIs of the lab's release, test volumes made as ceph-csi makes
//! them, and daemons frozen and revived. Helpers panic on a broken lab: they
//! serve tests, never the server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::interleave;
use crate::ceph::{Cluster, ConnectOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    A,
    B,
}

impl Site {
    pub fn key(self) -> &'static str {
        match self {
            Site::A => "a",
            Site::B => "b",
        }
    }
}

/// Facts of the running lab, from $CEPHLAB_DIR/lab.json.
pub struct Lab {
    pub facts: Value,
}

fn lab_json_path() -> PathBuf {
    let dir = std::env::var("CEPHLAB_DIR").unwrap_or_else(|_| "/tmp/cephlab".into());
    Path::new(&dir).join("lab.json")
}

/// The Debian root a reef or tentacle lab runs in (`scripts/lab.sh --release`):
/// the server and the Ceph CLI run inside it, so they use that release's
/// libraries. None for the host's own (Pacific) lab, and None when this test
/// binary already runs inside the root (`scripts/in-lab-root.sh`).
pub fn lab_root() -> Option<String> {
    if std::env::var_os("CEPHLAB_IN_ROOT").is_some() {
        return None;
    }
    let text = std::fs::read_to_string(lab_json_path()).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["root"].as_str().map(str::to_owned)
}

/// The network namespace a namespaced lab (`scripts/lab.sh up --netns`) runs
/// the site whose ceph-csi config.json is `config` in: the server for that
/// site runs there too. None on the loopback lab.
pub fn site_netns(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(lab_json_path()).ok()?;
    let facts: Value = serde_json::from_str(&text).ok()?;
    ["a", "b"].into_iter().find_map(|s| {
        let site = &facts["sites"][s];
        (site["csi_config"].as_str().map(Path::new) == Some(config))
            .then(|| facts["netns"][s].as_str().map(str::to_owned))
            .flatten()
    })
}

/// What runs a program on the lab's release: `chroot ROOT` for a reef or
/// tentacle lab seen from the host, nothing otherwise.
pub fn root_prefix() -> Vec<String> {
    lab_root().map(|root| vec!["chroot".to_owned(), root]).unwrap_or_default()
}

/// `timeout SECS [chroot ROOT] PROG`: a program of the lab's release, bounded.
pub fn lab_tool(secs: u32, prog: &str) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg(secs.to_string()).args(root_prefix()).arg(prog);
    cmd
}

impl Lab {
    pub fn load() -> Self {
        let path = lab_json_path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no Ceph lab at {}: {e}; run `scripts/lab.sh up` first", path.display()));
        Self { facts: serde_json::from_str(&text).expect("lab.json") }
    }

    /// The Ceph release the lab runs (pacific, reef, tentacle).
    pub fn release(&self) -> String {
        self.facts["release"].as_str().unwrap_or("pacific").to_owned()
    }

    fn site(&self, s: Site) -> &Value {
        &self.facts["sites"][s.key()]
    }

    pub fn conf(&self, s: Site) -> String {
        self.site(s)["conf"].as_str().unwrap().to_owned()
    }

    pub fn csi_config(&self, s: Site) -> PathBuf {
        PathBuf::from(self.site(s)["csi_config"].as_str().unwrap())
    }

    pub fn mon_host(&self, s: Site) -> String {
        self.site(s)["mon_host"].as_str().unwrap().to_owned()
    }

    pub fn pool_id(&self, s: Site) -> i64 {
        self.site(s)["pool_id"].as_i64().unwrap()
    }

    pub fn pool(&self) -> String {
        self.facts["pool"].as_str().unwrap().to_owned()
    }

    pub fn namespace(&self) -> String {
        self.facts["namespace"].as_str().unwrap().to_owned()
    }

    pub fn cluster_id(&self) -> String {
        self.facts["cluster_id"].as_str().unwrap().to_owned()
    }

    pub fn user(&self) -> String {
        self.facts["user"].as_str().unwrap().to_owned()
    }

    pub fn key(&self) -> String {
        self.facts["key"].as_str().unwrap().to_owned()
    }

    pub fn secrets(&self) -> HashMap<String, String> {
        HashMap::from([("userID".into(), self.user()), ("userKey".into(), self.key())])
    }

    /// Whether the sites run in network namespaces joined by a WAN that
    /// `partition` and `heal` cut and restore.
    pub fn is_namespaced(&self) -> bool {
        self.facts["netns"].is_object()
    }

    /// Cuts the link between the sites; every daemon keeps running and this
    /// process still reaches both sites.
    pub fn partition(&self) {
        self.lab_script("partition");
    }

    /// Restores the link `partition` cut.
    pub fn heal(&self) {
        self.lab_script("heal");
    }

    fn lab_script(&self, command: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lab.sh");
        let out = Command::new("timeout")
            .args(["30", "bash"])
            .arg(script)
            .arg(command)
            .env("CEPHLAB_DIR", self.facts["dir"].as_str().unwrap())
            .output()
            .expect("run scripts/lab.sh");
        assert!(out.status.success(), "lab.sh {command}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs the rbd CLI as the site's admin; panics with its stderr on failure.
    pub fn rbd(&self, s: Site, args: &[&str]) -> String {
        let out = self.rbd_try(s, args);
        out.unwrap_or_else(|e| panic!("rbd {args:?} on site-{} failed: {e}", s.key()))
    }

    pub fn rbd_try(&self, s: Site, args: &[&str]) -> Result<String, String> {
        let out = lab_tool(60, "rbd").args(["-c", &self.conf(s)]).args(args).output().expect("run rbd");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn rbd_json(&self, s: Site, args: &[&str]) -> Result<Value, String> {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        self.rbd_try(s, &all).map(|o| serde_json::from_str(&o).unwrap_or(Value::Null))
    }

    /// `rbd mirror snapshot schedule ls ARGS` as JSON. The mgr's rbd_support
    /// answers garbage ("invalid schedule list JSON received") or "not ready"
    /// while it reloads, which a loaded 2-core machine has seen last for
    /// minutes: polled, bounded by two minutes.
    pub fn schedules(&self, s: Site, args: &[&str]) -> Value {
        let mut all = vec!["mirror", "snapshot", "schedule", "ls"];
        all.extend(args);
        let start = Instant::now();
        loop {
            match self.rbd_json(s, &all) {
                Ok(v) => return v,
                Err(e)
                    if (e.contains("schedule list JSON") || e.contains("not ready"))
                        && start.elapsed() < Duration::from_secs(120) =>
                {
                    std::thread::sleep(Duration::from_secs(1))
                }
                Err(e) => panic!("rbd {all:?} on site-{} failed after {:?}: {e}", s.key(), start.elapsed()),
            }
        }
    }

    pub fn rados(&self, s: Site, args: &[&str]) {
        let st = lab_tool(60, "rados").args(["-c", &self.conf(s)]).args(args).status().expect("run rados");
        assert!(st.success(), "rados {args:?} failed");
    }

    /// The objects of the pool (default namespace) on a site.
    pub fn rados_ls(&self, s: Site) -> Vec<String> {
        let out = lab_tool(60, "rados").args(["-c", &self.conf(s), "-p", &self.pool(), "ls"]).output().expect("rados");
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }

    /// The omap keys of an object of the pool (default namespace) on a site;
    /// none when the object does not exist.
    pub fn rados_omap_keys(&self, s: Site, oid: &str) -> Vec<String> {
        let out = lab_tool(60, "rados")
            .args(["-c", &self.conf(s), "-p", &self.pool(), "listomapkeys", oid])
            .output()
            .expect("rados");
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }

    /// A ceph-csi style volume on site A: image `csi-vol-<uuid>` (or a custom
    /// name recorded in the journal omap, as ceph-csi does for a name prefix).
    pub fn create_volume(&self, opts: VolumeOpts) -> TestVolume {
        let uuid = new_uuid();
        let pool = self.pool();
        let ns = if opts.namespace { self.namespace() } else { String::new() };
        let cluster_id = if opts.namespace { format!("{}-{}", self.cluster_id(), ns) } else { self.cluster_id() };
        let image = opts.image_name.clone().unwrap_or_else(|| format!("csi-vol-{uuid}"));
        let spec = if ns.is_empty() { format!("{pool}/{image}") } else { format!("{pool}/{ns}/{image}") };
        self.rbd(Site::A, &["create", &spec, "--size", &opts.size_mb.to_string()]);
        if opts.image_name.is_some() {
            let mut args = vec!["-p", pool.as_str()];
            if !ns.is_empty() {
                args.extend(["-N", ns.as_str()]);
            }
            let object = format!("csi.volume.{uuid}");
            args.extend(["setomapval", object.as_str(), "csi.imagename", image.as_str()]);
            self.rados(Site::A, &args);
        }
        let id = volume_id(&cluster_id, self.pool_id(Site::A), &uuid);
        TestVolume { id, spec, uuid }
    }

    pub fn mirror_status(&self, s: Site, spec: &str) -> Option<Value> {
        self.rbd_json(s, &["mirror", "image", "status", spec]).ok()
    }

    /// The image's mirroring section of `rbd info` on a site; None when the
    /// image is absent. `rbd info` omits the section when mirroring is off.
    pub fn mirror_info(&self, s: Site, spec: &str) -> Option<Value> {
        self.rbd_json(s, &["info", spec]).ok().map(|v| match &v["mirroring"] {
            Value::Null => serde_json::json!({"state": "disabled"}),
            m => m.clone(),
        })
    }
}

pub struct VolumeOpts {
    pub namespace: bool,
    pub image_name: Option<String>,
    pub size_mb: u32,
}

impl Default for VolumeOpts {
    fn default() -> Self {
        Self { namespace: false, image_name: None, size_mb: 16 }
    }
}

pub struct TestVolume {
    pub id: String,
    pub spec: String,
    pub uuid: String,
}

pub fn new_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid").expect("uuid").trim().to_owned()
}

pub fn volume_id(cluster_id: &str, pool_id: i64, uuid: &str) -> String {
    format!("0001-{:04x}-{}-{:016x}-{}", cluster_id.len(), cluster_id, pool_id, uuid)
}

/// The handle site `s` gives the volume (or group) that `id` names: the lab's
/// sites share the clusterID and differ in pool ID.
pub fn handle_on(lab: &Lab, s: Site, id: &str) -> String {
    volume_id(&lab.cluster_id(), lab.pool_id(s), &id[id.len() - 36..])
}

/// Whether site-a's mgr lists a snapshot schedule for the image.
pub fn has_schedule(lab: &Lab, spec: &str) -> bool {
    has_schedule_on(lab, Site::A, spec)
}

pub fn has_schedule_on(lab: &Lab, s: Site, spec: &str) -> bool {
    let image = spec.rsplit('/').next().unwrap();
    let all = lab.schedules(s, &["--pool", &lab.pool(), "--recursive"]);
    all.as_array().unwrap().iter().any(|s| s["image"] == image)
}

/// A site's mirror status state ("up+replaying", ...) or "" when unavailable.
pub fn state_of(status: &Option<Value>) -> String {
    status.as_ref().and_then(|s| s["state"].as_str()).unwrap_or_default().to_owned()
}

/// Removes a test image on site A, disabling mirroring first (so B's copy goes too).
pub fn cleanup(lab: &Lab, spec: &str) {
    lab.rbd_try(Site::A, &["mirror", "image", "disable", spec, "--force"]).ok();
    lab.rbd_try(Site::A, &["snap", "purge", spec]).ok();
    lab.rbd_try(Site::A, &["rm", "--no-progress", spec]).ok();
}

/// sha256 of the image's whole content on a site (None if it cannot be read).
pub fn checksum(lab: &Lab, s: Site, spec: &str) -> Option<String> {
    let rbd = lab_tool(60, "rbd");
    let argv: Vec<_> = std::iter::once(rbd.get_program()).chain(rbd.get_args()).map(|a| a.to_string_lossy()).collect();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} -c {} export --no-progress {spec} - 2>/dev/null | sha256sum",
            argv.join(" "),
            lab.conf(s)
        ))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().map(str::to_owned)
}

/// Writes data that differs from call to call (random offsets) on a site.
/// Random 4 KiB writes, 256 KiB in all, as an application would make them.
/// While librbd takes a group snapshot it holds every member's exclusive lock
/// and answers lock requests with EBUSY; the Tentacle 20.2.4 rbd CLI then
/// once aborted on it (AsyncOpTracker assert, seen in CI). Such a writer is
/// started again, at most four times; any other failure fails the test.
pub fn write_data(lab: &Lab, s: Site, spec: &str) {
    let args = ["bench", "--io-type", "write", "--io-size", "4K", "--io-total", "256K", "--io-pattern", "rand", spec];
    for _ in 0..4 {
        match lab.rbd_try(s, &args) {
            Ok(_) => return,
            Err(e) if e.contains("error requesting lock: (16)") => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("rbd {args:?} on site-{} failed: {e}", s.key()),
        }
    }
    lab.rbd(s, &args);
}

/// A mirror snapshot on the primary, as the schedule would take: it carries
/// the writes so far to the peer (snapshot mode).
pub fn mirror_snapshot(lab: &Lab, s: Site, spec: &str) {
    lab.rbd(s, &["mirror", "image", "snapshot", spec]);
}

/// Whether the site's copy is primary (None when the image is absent there).
pub fn is_primary(lab: &Lab, s: Site, spec: &str) -> Option<bool> {
    lab.mirror_info(s, spec).and_then(|m| m["primary"].as_bool())
}

/// Daemons stopped with SIGSTOP; they are continued when this is dropped, also
/// when a test fails halfway.
pub struct Frozen {
    lab: Lab,
    site: String,
    whole_site: bool,
    pids: Vec<i32>,
    /// The site's conf when its OSD was frozen (see `heal_lone_osd`).
    osd_conf: Option<String>,
    since: Instant,
}

impl Frozen {
    pub fn daemons(lab: &Lab, site: &str, which: &[&str]) -> Self {
        let pids = std::fs::read_to_string(format!("{}/pids", lab.facts["dir"].as_str().unwrap())).unwrap();
        let mut frozen = Vec::new();
        let mut osd = false;
        for line in pids.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 3 && f[0] == site && (which.is_empty() || which.contains(&f[1])) {
                let pid: i32 = f[2].parse().unwrap();
                // SAFETY: kill(2) on a lab daemon this test suite's lab started.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                frozen.push(pid);
                osd |= f[1] == "osd";
            }
        }
        assert!(!frozen.is_empty(), "no {site} daemons found to freeze");
        let site_key = site.trim_start_matches("site-");
        let osd_conf = osd.then(|| lab.facts["sites"][site_key]["conf"].as_str().unwrap().to_owned());
        Self {
            lab: Lab { facts: lab.facts.clone() },
            site: site.to_owned(),
            whole_site: which.is_empty(),
            pids: frozen,
            osd_conf,
            since: Instant::now(),
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.pids {
            // SAFETY: kill(2) on the daemons frozen above.
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }
        if let Some(conf) = &self.osd_conf {
            interleave::heal_lone_osd(conf, self.since.elapsed());
        }
        // With a whole site lost, a forced promote on the other site may have
        // taken an image from that site's rbd-mirror (blocklisting its client).
        if self.whole_site {
            let other = if self.site == "site-a" { Site::B } else { Site::A };
            revive_mirror(&self.lab, other);
        }
    }
}

/// Whether a site's rbd-mirror daemon answers on its admin socket (see
/// [`interleave::rbd_mirror_answers`]).
pub fn mirror_answers(lab: &Lab, s: Site) -> bool {
    interleave::rbd_mirror_answers(lab.facts["dir"].as_str().unwrap(), s.key(), &lab_tool)
}

/// Restarts a site's rbd-mirror that stopped answering (see
/// [`interleave::revive_rbd_mirror`]). Returns whether it had to.
pub fn revive_mirror(lab: &Lab, s: Site) -> bool {
    interleave::revive_rbd_mirror(lab.facts["dir"].as_str().unwrap(), s.key(), &lab.release(), &lab_tool)
}

/// The class parameters ceph-csi requires for a group.
pub fn group_params(lab: &Lab) -> HashMap<String, String> {
    HashMap::from([("clusterID".into(), lab.cluster_id()), ("pool".into(), lab.pool())])
}

/// Snapshot names of an image on a site, all namespaces (empty if absent).
pub fn snap_names(lab: &Lab, s: Site, spec: &str) -> Vec<String> {
    lab.rbd_json(s, &["snap", "ls", "--all", spec])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect()
}

/// A librbd connection to a site as the CSI user, for tests that write and
/// read image data directly (as an application would).
pub fn connect(lab: &Lab, s: Site) -> Arc<Cluster> {
    let (mon, user, key) = (lab.mon_host(s), lab.user(), lab.key());
    Cluster::connect(&ConnectOptions { mon_host: &mon, user: &user, key: &key, op_timeout: Duration::from_secs(30) })
        .expect("connect as the CSI user")
}

/// Removes a test image on both sites, whatever its state: mirroring off, out
/// of its RBD group, every snapshot (group ones by ID), then the image.
pub fn remove_everywhere(lab: &Lab, spec: &str) {
    for s in [Site::A, Site::B] {
        lab.rbd_try(s, &["mirror", "image", "disable", "--force", spec]).ok();
        if let Ok(info) = lab.rbd_json(s, &["info", spec])
            && let Some(group) = info["group"].as_str()
        {
            lab.rbd_try(s, &["group", "image", "rm", group, spec]).ok();
        }
        let snaps = lab.rbd_json(s, &["snap", "ls", "--all", spec]).ok().and_then(|v| v.as_array().cloned());
        for snap in snaps.unwrap_or_default() {
            if let Some(id) = snap["id"].as_u64() {
                lab.rbd_try(s, &["snap", "rm", "--snap-id", &id.to_string(), spec]).ok();
            }
        }
        lab.rbd_try(s, &["rm", "--no-progress", spec]).ok();
    }
}

/// One HTTP/1.0 GET: (status code, body).
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(address).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let code = reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// The value of the one series `name{labels}` (labels as written, in order).
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}
