//! Shared harness of the integration tests: the real `rbd-addons serve` on a
//! temporary socket, driven through the CLI's typed client (or a generated
//! one for requests no client would build), and the two-site lab from
//! `rbd_addons::testkit::lab` (Ceph's own view).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use rbd_addons::client::{Params, Subject};
use rbd_addons::proto::identity::identity_client::IdentityClient;
use rbd_addons::proto::replication::controller_client::ControllerClient;
use rbd_addons::proto::replication::replication_source::{Type as SourceType, VolumeSource};
use rbd_addons::proto::replication::*;
pub use rbd_addons::testkit::lab::*;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

pub const BIN: &str = env!("CARGO_BIN_EXE_rbd-addons");

/// A raw request's source: one volume.
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

    /// The CLI's own typed client on this server's socket, carrying the
    /// lab's replication secret as the controller's requests do.
    pub async fn client(&self, lab: &Lab) -> Client {
        let endpoint = format!("unix://{}", self.socket.display());
        Client::open(&endpoint, Duration::from_secs(180)).await.expect("connect").with_secrets(lab.secrets())
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

pub async fn wait_same_data(lab: &Lab, spec: &str, want: &str, on: Site, limit: Duration) {
    wait_until(&format!("site-{} to hold the expected data of {spec}", on.key()), limit, || {
        checksum(lab, on, spec).as_deref() == Some(want)
    })
    .await;
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

// Volume groups: the VolumeGroup service and group replication, as the
// controller drives them (VolumeGroupReplicationContent, then a VR whose
// source is the group).

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
