//! Shared harness of the integration tests: the real `rbd-addons serve` on a
//! temporary socket, a generated client, and the two-site lab from
//! `scripts/lab.sh up`, checked through the `rbd` CLI (Ceph's own view).
#![allow(dead_code)]

pub mod interleave;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use rbd_addons::client::{Params, Subject};
use rbd_addons::proto::identity::identity_client::IdentityClient;
use rbd_addons::proto::replication::controller_client::ControllerClient;
use rbd_addons::proto::replication::replication_source::{Type as SourceType, VolumeSource};
use rbd_addons::proto::replication::*;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

pub const BIN: &str = env!("CARGO_BIN_EXE_rbd-addons");

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
fn site_netns(config: &Path) -> Option<String> {
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
fn root_prefix() -> Vec<String> {
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

pub fn source(volume_id: &str) -> Option<ReplicationSource> {
    Some(ReplicationSource { r#type: Some(SourceType::Volume(VolumeSource { volume_id: volume_id.into() })) })
}

/// A running `rbd-addons serve`, stopped with SIGTERM on drop.
pub struct Server {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Whether dropping the server removes `dir`.
    owns_dir: bool,
}

impl Server {
    pub async fn start(config: &Path, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("rbd-addons-test-{}", new_uuid()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self::start_in(dir, config, extra).await;
        server.owns_dir = true;
        server
    }

    /// A server that also serves the CSI front on `front()`, forwarding
    /// what it does not serve itself to `upstream`.
    pub async fn start_with_front(config: &Path, upstream: &Path, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("rbd-addons-test-{}", new_uuid()));
        std::fs::create_dir_all(&dir).unwrap();
        let (front, upstream) =
            (format!("unix://{}", dir.join("front.sock").display()), format!("unix://{}", upstream.display()));
        let mut args = vec!["--csi-endpoint", front.as_str(), "--csi-upstream", upstream.as_str()];
        args.extend_from_slice(extra);
        let mut server = Self::start_in(dir, config, &args).await;
        server.owns_dir = true;
        server
    }

    /// The CSI front's socket (see `start_with_front`).
    pub fn front(&self) -> PathBuf {
        self.dir.join("front.sock")
    }

    /// A server on `dir/csi-addons.sock`, e.g. the successor of one killed
    /// there; its log is a new file in `dir`, which the caller removes.
    pub async fn start_in(dir: PathBuf, config: &Path, extra: &[&str]) -> Self {
        let socket = dir.join("csi-addons.sock");
        let log = dir.join(format!("server-{}.log", new_uuid()));
        // In a reef or tentacle lab the server runs in its root, on that
        // release's librbd (the binary is on a path bind-mounted there).
        let mut argv = root_prefix();
        if let Some(ns) = site_netns(config) {
            argv.extend(["ip".to_owned(), "netns".to_owned(), "exec".to_owned(), ns]);
        }
        argv.push(BIN.to_owned());
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        let child = command
            .arg("serve")
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--ceph-csi-config")
            .arg(config)
            // Many servers run at once: each on a port of its own.
            .args(["--metrics-address", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start rbd-addons");
        let server = Self { child: Some(child), dir, socket, log, owns_dir: false };
        wait_until("the server's socket", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&server.socket).is_ok()
        })
        .await;
        server
    }

    /// The address of the server's HTTP side port (/metrics, /healthz,
    /// /readyz), as its log says it bound it.
    pub fn metrics_address(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|l| {
                l["fields"]["address"]
                    .as_str()
                    .filter(|_| l["fields"]["message"].as_str().is_some_and(|m| m.contains("metrics")))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("the server's log names no metrics address: {log}"))
    }

    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("unix://{}", self.socket.display()))
            .unwrap()
            .connect()
            .await
            .expect("connect to the server's socket")
    }

    pub async fn replication(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel().await)
    }

    pub async fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel().await)
    }

    /// The process itself, for tests that signal and time it; Drop then
    /// leaves it alone.
    pub fn take_child(&mut self) -> Child {
        self.child.take().expect("the server was already stopped")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends SIGTERM and waits (bounded) for the exit status. Async, so that
    /// the test's own clients can answer the server's graceful HTTP/2 close
    /// meanwhile (a blocked test runtime would make the server wait out its
    /// drain period).
    pub async fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                child.kill().ok();
                return child.wait().ok();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The CLI's own typed client on this server's socket.
    /// The typed client, carrying the lab's replication secret.
    pub async fn client(&self, lab: &Lab) -> Client {
        self.cli_client().await.with_secrets(lab.secrets())
    }

    pub async fn cli_client(&self) -> rbd_addons::client::Connection {
        let endpoint = format!("unix://{}", self.socket.display());
        rbd_addons::client::Connection::open(&endpoint, Duration::from_secs(180)).await.expect("connect")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    /// A test that did not stop its server: SIGTERM, then SIGKILL after a short
    /// while (Drop cannot let the runtime serve the graceful close).
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            child.kill().ok();
            child.wait().ok();
        }
        if self.owns_dir {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}

/// Polls `check` every 250 ms until it holds; panics after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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

/// One server per site, as in a two-cluster deployment, each with its site's
/// config.json and cluster-mapping.json (handles minted on site-a resolve on
/// site-b through the pool-ID mapping).
pub struct SitePair {
    pub a: Server,
    pub b: Server,
}

impl SitePair {
    pub async fn start(lab: &Lab, extra: &[&str]) -> Self {
        let mapping = |s: Site| lab.facts["sites"][s.key()]["cluster_mapping"].as_str().unwrap().to_owned();
        let (ma, mb) = (mapping(Site::A), mapping(Site::B));
        let mut args_a = vec!["--cluster-mapping", ma.as_str()];
        args_a.extend(extra);
        let mut args_b = vec!["--cluster-mapping", mb.as_str()];
        args_b.extend(extra);
        Self {
            a: Server::start(&lab.csi_config(Site::A), &args_a).await,
            b: Server::start(&lab.csi_config(Site::B), &args_b).await,
        }
    }

    pub fn on(&self, s: Site) -> &Server {
        match s {
            Site::A => &self.a,
            Site::B => &self.b,
        }
    }
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

pub async fn wait_same_data(lab: &Lab, spec: &str, want: &str, on: Site, limit: Duration) {
    wait_until(&format!("site-{} to hold the expected data of {spec}", on.key()), limit, || {
        checksum(lab, on, spec).as_deref() == Some(want)
    })
    .await;
}

pub fn secrets_for(lab: &Lab) -> HashMap<String, String> {
    lab.secrets()
}

/// The typed client the CLI uses, carrying the lab's replication secret.
pub type Client = rbd_addons::client::Connection;

/// The `&str`s of owned IDs, as the typed client takes them.
pub fn refs(ids: &[String]) -> Vec<&str> {
    ids.iter().map(String::as_str).collect()
}

/// Polls Resync(force) until it answers ready, tolerating the window in which
/// rbd-mirror re-creates the image (ABORTED); asserts it was not ready first.
pub async fn resync_until_ready(c: &Client, id: &str, limit: Duration) {
    let start = Instant::now();
    let mut first = None;
    loop {
        match c.resync(&Subject::volume(id), true, Params::new()).await {
            Ok(true) if first.is_none() => panic!("a split-brained secondary cannot be ready before its resync"),
            Ok(true) => return,
            Ok(false) => first = Some(false),
            Err(e) if e.code() == tonic::Code::Aborted && first.is_some() => {}
            // After a site's thaw the mgr may reap its rbd-mirror from the
            // service map before the daemon reports again.
            Err(e) if e.code() == tonic::Code::Unavailable && e.message().contains("rbd-mirror daemon") => {}
            Err(e) => panic!("resync: {e:?}"),
        }
        assert!(start.elapsed() < limit, "resync not ready after {limit:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Polls GetVolumeReplicationInfo until the peer has reported a sync (the
/// controller's "no info yet" is NOT_FOUND).
pub async fn info_once_synced(c: &Client, id: &str, limit: Duration) -> GetVolumeReplicationInfoResponse {
    let start = Instant::now();
    loop {
        match c.info(&Subject::volume(id)).await {
            Ok(r) => return r,
            Err(e) if e.code() == tonic::Code::NotFound && start.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => panic!("info: {e:?}"),
        }
    }
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

// Volume groups: the VolumeGroup service and group replication, as the
// controller drives them (VolumeGroupReplicationContent, then a VR whose
// source is the group).

/// The class parameters ceph-csi requires for a group.
pub fn group_params(lab: &Lab) -> HashMap<String, String> {
    HashMap::from([("clusterID".into(), lab.cluster_id()), ("pool".into(), lab.pool())])
}

/// A forced group promote with the other site lost, retried as the
/// csi-addons controller retries UNAVAILABLE. A just-promoted member is
/// held by this site's rbd-mirror until it lets go, or until the server takes
/// it from rbd-mirror (after `MIRROR_RELEASE_GRACE`); rbd-mirror runs at
/// Ceph's defaults in the lab, with no op timeout. Bounded: the whole
/// failover must answer OK within 60 s. Returns the attempts.
pub async fn group_promote_after_site_loss(c: &Client, id: &str) -> Result<u32, tonic::Status> {
    let started = Instant::now();
    let mut attempts = 1;
    loop {
        match c.promote(&Subject::group(id), true, Params::new()).await {
            Ok(()) => {
                let took = started.elapsed();
                assert!(took < Duration::from_secs(60), "the forced group promote took {took:?} (bound: 60 s)");
                return Ok(attempts);
            }
            Err(e) if e.code() == tonic::Code::Unavailable && started.elapsed() < Duration::from_secs(60) => {
                println!("forced group promote, attempt {attempts}: {}", e.message());
                attempts += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Waits until every member on site `s` holds a complete generation (a
/// group snapshot) of the same group snapshot: a recovery point the group
/// can fail over to. The peer's initial sync copies no group snapshot.
pub async fn wait_group_cut(lab: &Lab, s: Site, specs: &[&str], limit: Duration) {
    wait_until("a consistency generation on every member", limit, || {
        let mut keys = Vec::new();
        for spec in specs {
            let snaps = lab.rbd_json(s, &["snap", "ls", "--all", spec]).unwrap_or_default();
            let mine: Vec<String> = snaps
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v["namespace"]["type"] == "group")
                .filter_map(|v| v["name"].as_str()?.rsplit('_').next().map(str::to_owned))
                .collect();
            keys.push(mine);
        }
        keys.first().is_some_and(|first| first.iter().any(|k| keys.iter().all(|m| m.contains(k))))
    })
    .await;
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
pub fn connect(lab: &Lab, s: Site) -> std::sync::Arc<rbd_addons::testkit::Cluster> {
    let (mon, user, key) = (lab.mon_host(s), lab.user(), lab.key());
    rbd_addons::testkit::Cluster::connect(&rbd_addons::testkit::ConnectOptions {
        mon_host: &mon,
        user: &user,
        key: &key,
        op_timeout: Duration::from_secs(30),
    })
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

/// A planned group failback: demote on `from`, then promote on `to` without
/// force, retrying the transient UNAVAILABLE right after the peer's demote;
/// then every member is primary on `to_site` and holds the data in `sums`.
pub async fn group_fail_over(
    from: &Client,
    to: &Client,
    lab: &Lab,
    id: &str,
    vols: &[TestVolume],
    sums: &[String],
    to_site: Site,
) {
    from.demote(&Subject::group(id), false, Params::new()).await.expect("group demote");
    let started = Instant::now();
    loop {
        match to.promote(&Subject::group(id), false, Params::new()).await {
            Ok(()) => break,
            Err(e) if e.code() == tonic::Code::Unavailable && started.elapsed() < Duration::from_secs(150) => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            Err(e) => panic!("group promote: {e:?}"),
        }
    }
    for (v, sum) in vols.iter().zip(sums) {
        assert_eq!(is_primary(lab, to_site, &v.spec), Some(true));
        assert_eq!(checksum(lab, to_site, &v.spec).as_deref(), Some(sum.as_str()), "{} lost data", v.spec);
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
