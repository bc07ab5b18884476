//! ceph-csi compatibility: its volume IDs, config.json, secrets and journal, so
//! that a volume ceph-csi provisioned is found exactly as ceph-csi finds it.

mod config;
pub(crate) mod group;
mod mapping;
mod secrets;
pub(crate) mod snapshot;
mod volume_id;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub(crate) use config::{ClusterInfo, ConfigError};
pub(crate) use secrets::{Credentials, KeyType, SecretsError};
pub(crate) use volume_id::{CsiId, CsiIdError};

use crate::ceph::{CephError, ConnectionPool, IoCtx};

/// The omap key of a volume's journal object that names its RBD image.
const IMAGE_NAME_KEY: &str = "csi.imagename";

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("invalid volume ID: it {0}")]
    BadId(#[from] CsiIdError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("cannot connect to cluster {cluster_id:?} as user {user:?}: {source}")]
    Connect { cluster_id: String, user: String, source: CephError },
    #[error(
        "cannot connect to cluster {cluster_id:?} as user {user:?}: its key is a cephx AES256K key, which \
         this server's Ceph library (librbd {librbd}) cannot read; AES256K needs Ceph 19.2.6 or 20.2.4 on: \
         run an rbd-addons image built on the cluster's release, or give the user an AES key"
    )]
    KeyTypeUnreadable { cluster_id: String, user: String, librbd: String },
    #[error("pool {pool_id} of cluster {cluster_id:?} does not exist")]
    PoolNotFound { cluster_id: String, pool_id: i64 },
    #[error("pool {pool:?} of cluster {cluster_id:?} does not exist")]
    PoolNameNotFound { cluster_id: String, pool: String },
    #[error("cannot open pool {pool_id}: {source}")]
    OpenPool { pool_id: i64, source: CephError },
    #[error("cannot read the volume's journal object {object}: {source}")]
    Journal { object: String, source: CephError },
    /// ceph-csi's `replicationDestination` and the cluster mapping both say
    /// how the peer names a pool, and say it differently.
    #[error("{0}: make the two agree, or keep one")]
    DestinationConflict(String),
}

/// At start: every clusterID whose `replicationDestination` (in the ceph-csi
/// config) names a peer clusterID that the cluster mapping does not pair it
/// with. Pools can only be compared once a call names one (the config names
/// them, the mapping numbers them). A file that cannot be read is no
/// conflict: the calls will say what is wrong with it.
pub(crate) fn destination_conflicts(config_path: &Path, mapping_path: &Path) -> Vec<String> {
    let Ok(destinations) = config::destinations(config_path) else { return Vec::new() };
    let mut out = Vec::new();
    for (cluster_id, d) in destinations {
        let peers = mapping::peer_clusters(mapping_path, &cluster_id).unwrap_or_default();
        if !peers.is_empty() && !peers.contains(&d.cluster_id) {
            out.push(format!(
                "clusterID {cluster_id:?}: ceph-csi config {} names its replication destination {:?}, cluster \
                 mapping {} pairs it with {}",
                config_path.display(),
                d.cluster_id,
                mapping_path.display(),
                peers.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    out
}

/// Removes one entry of a ceph-csi journal (groups or snapshots): its key in
/// the directory object first, so the request name is free again, then its
/// own object; either already gone is fine.
fn remove_entry(io: &IoCtx, directory: &str, key: &str, object: &str) -> Result<(), CephError> {
    use crate::ceph::AlreadyDone;
    io.omap_rm_keys(directory, &[key]).or_done(libc::ENOENT)?;
    io.remove(object).or_done(libc::ENOENT)
}

/// Where a volume lives: its pool (as an open I/O context) and image name.
pub(crate) struct ResolvedVolume {
    pub io: IoCtx,
    pub image: String,
    /// The clusterID (of this site's config.json) the pool was found under.
    pub cluster_id: String,
}

impl ResolvedVolume {
    /// Whether the pool's image directory lists the image: one omap read,
    /// far cheaper than opening the image.
    pub(crate) fn image_exists(&self) -> Result<bool, CephError> {
        let key = format!("name_{}", self.image);
        match self.io.omap_get("rbd_directory", &[&key]) {
            Ok(vals) => Ok(vals.contains_key(&key)),
            Err(e) if e.is(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `pool/[namespace/]image`, as the rbd CLI and the mgr spell an image.
    pub(crate) fn spec(&self) -> String {
        match self.io.namespace() {
            "" => format!("{}/{}", self.io.pool_name(), self.image),
            ns => format!("{}/{}/{}", self.io.pool_name(), ns, self.image),
        }
    }
}

impl Error {
    /// cephx refused the user or key, or the key does not decode (the
    /// errors that answer UNAUTHENTICATED), or this library cannot read it.
    fn refuses_credentials(&self) -> bool {
        match self {
            Error::Connect { source, .. } => matches!(source.errno, libc::EACCES | libc::EPERM | libc::EINVAL),
            Error::KeyTypeUnreadable { .. } => true,
            _ => false,
        }
    }

    /// Errors that may only mean the handle was minted on the peer site, so
    /// that a cluster-mapping translation is worth trying (as ceph-csi does).
    fn may_be_peer_handle(&self) -> bool {
        match self {
            Error::Config(ConfigError::UnknownCluster { .. }) | Error::PoolNotFound { .. } => true,
            Error::OpenPool { source, .. } | Error::Journal { source, .. } => {
                matches!(source.errno, libc::ENOENT | libc::EPERM | libc::EACCES)
            }
            _ => false,
        }
    }
}

/// Turns ceph-csi volume IDs into open pools and image names.
pub(crate) struct Resolver {
    config_path: PathBuf,
    mapping_path: Option<PathBuf>,
    connections: Arc<ConnectionPool>,
    /// Image names read from ceph-csi's journal. ceph-csi writes a volume's
    /// name once, under a UUID never used again, so a name once read stays
    /// right; a deleted volume's stale entry names an image that is gone,
    /// which every caller then reports as it would without the entry. This
    /// spares Info its only OSD round trip when the pool's view answers.
    names: Mutex<HashMap<NameKey, String>>,
}

/// (cluster ID, pool ID, RADOS namespace, volume UUID).
type NameKey = (String, i64, String, String);

/// Names kept at most; past that the cache starts again empty.
const NAMES_KEPT: usize = 65_536;

impl Resolver {
    pub(crate) fn new(config_path: PathBuf, mapping_path: Option<PathBuf>, connections: Arc<ConnectionPool>) -> Self {
        Self { config_path, mapping_path, connections, names: Mutex::default() }
    }

    /// Drops the cached Ceph connections (see `ConnectionPool::forget_all`):
    /// after this server's client was blocklisted.
    pub(crate) fn forget_connections(&self) {
        self.connections.forget_all();
    }

    /// Blocking: reads config.json, may connect, reads the journal omap. When
    /// the handle does not resolve to an existing image here and a cluster
    /// mapping is configured, the handle's peer-site translations are tried.
    pub(crate) fn resolve(&self, id: &CsiId, creds: &Credentials) -> Result<ResolvedVolume, Error> {
        let direct = self.resolve_in(&id.cluster_id, id.pool_id, &id.uuid, creds);
        let Some(mapping) = &self.mapping_path else { return direct };
        if direct.as_ref().is_err_and(|e| !e.may_be_peer_handle()) {
            return direct;
        }
        let candidates = mapping::candidates(mapping, &id.cluster_id, id.pool_id)?;
        if candidates.is_empty() || direct.as_ref().is_ok_and(|v| v.image_exists().unwrap_or(true)) {
            return direct;
        }
        for (cluster_id, pool_id) in candidates {
            if let Ok(vol) = self.resolve_in(&cluster_id, pool_id, &id.uuid, creds)
                && vol.image_exists().unwrap_or(false)
            {
                tracing::debug!(volume = %id, cluster_id, pool_id, "resolved through the cluster mapping");
                return Ok(vol);
            }
        }
        direct
    }

    /// The pools a group ID may live in on this site: the one it names, then
    /// its cluster-mapping translations (a group handle minted on the peer).
    /// Blocking. Candidates that do not exist here are skipped; when none
    /// opens, the first candidate's error is returned.
    pub(crate) fn group_pools(&self, id: &CsiId, creds: &Credentials) -> Result<Vec<(String, IoCtx)>, Error> {
        let mut candidates = vec![(id.cluster_id.clone(), id.pool_id)];
        if let Some(mapping) = &self.mapping_path {
            for c in mapping::candidates(mapping, &id.cluster_id, id.pool_id)? {
                if !candidates.contains(&c) {
                    candidates.push(c);
                }
            }
        }
        let mut first_err = None;
        let mut pools = Vec::new();
        for (cluster_id, pool_id) in candidates {
            match self.open_pool(&cluster_id, pool_id, creds) {
                Ok(io) => pools.push((cluster_id, io)),
                Err(e) if e.may_be_peer_handle() => {
                    first_err.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match (pools.is_empty(), first_err) {
            (true, Some(e)) => Err(e),
            _ => Ok(pools),
        }
    }

    /// Every pool of every cluster in config.json (in each clusterID's RADOS
    /// namespace), for listing groups. Clusters these credentials cannot
    /// reach are skipped with a warning: one dead site must not hide the rest.
    /// But when no cluster accepted them and one refused them, the refusal
    /// is the answer: an empty list would say the secret was right.
    pub(crate) fn all_pools(&self, creds: &Credentials) -> Result<Vec<(String, IoCtx)>, Error> {
        let mut out = Vec::new();
        let (mut connected, mut refused) = (false, None);
        for cluster_id in config::cluster_ids(&self.config_path)? {
            let info = config::lookup(&self.config_path, &cluster_id)?;
            let cluster = match self.connect(&cluster_id, &info, creds) {
                Ok(c) => c,
                Err(e) if e.refuses_credentials() => {
                    tracing::warn!(cluster_id, error = %e, "a cluster refused the credentials while listing groups");
                    refused.get_or_insert(e);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(cluster_id, error = %e, "skipping a cluster while listing groups");
                    continue;
                }
            };
            connected = true;
            let names = IoCtx::pools(&cluster).map_err(|source| Error::OpenPool { pool_id: -1, source })?;
            for name in names {
                let Ok(pool_id) = cluster.pool_id(&name) else { continue };
                if let Ok(io) = IoCtx::open(&cluster, pool_id, &info.rados_namespace) {
                    out.push((cluster_id.clone(), io));
                }
            }
        }
        match refused {
            Some(e) if !connected => Err(e),
            _ => Ok(out),
        }
    }

    /// The ID that names on the peer site what `id` names here, where it was
    /// found in pool `pool_id` of `cluster_id`. A handle minted on the peer
    /// (found here through the cluster mapping) already names the peer's
    /// object. One minted here is translated by the cluster mapping; without
    /// an entry for it, both sites are taken to share the clusterID and pool
    /// ID (as when Rook names both clusters alike and the pools were created
    /// in the same order), and the handle is returned unchanged.
    ///
    /// ceph-csi's `replicationDestination` of `cluster_id` in config.json,
    /// where present, says it first (the peer's clusterID; the pool's peer ID
    /// by the pool's name, else the same ID); a cluster mapping that says
    /// otherwise is an error, not a choice.
    pub(crate) fn peer_id(&self, id: &CsiId, cluster_id: &str, io: &IoCtx) -> Result<CsiId, Error> {
        let pool_id = io.pool_id();
        if (id.cluster_id.as_str(), id.pool_id) != (cluster_id, pool_id) {
            return Ok(id.clone());
        }
        let mapped = match &self.mapping_path {
            Some(mapping) => mapping::candidates(mapping, &id.cluster_id, id.pool_id)?.into_iter().next(),
            None => None,
        };
        let Some(d) = config::lookup(&self.config_path, cluster_id)?.destination else {
            return Ok(match mapped {
                Some((cluster_id, pool_id)) => CsiId { cluster_id, pool_id, uuid: id.uuid.clone() },
                None => id.clone(),
            });
        };
        let peer_pool = d.pool_ids.get(io.pool_name()).copied().unwrap_or(pool_id);
        // The mapping's fallback to the same pool ID asserts nothing: only
        // a clusterID, or a pool it maps to another ID, can disagree.
        if let Some((mapped_cluster, mapped_pool)) = mapped
            && (mapped_cluster != d.cluster_id || (mapped_pool != pool_id && mapped_pool != peer_pool))
        {
            return Err(Error::DestinationConflict(format!(
                "the peer of pool {:?} of cluster {cluster_id:?} is clusterID {:?} pool {peer_pool} in ceph-csi \
                 config {} (replicationDestination) but clusterID {mapped_cluster:?} pool {mapped_pool} in \
                 cluster mapping {}",
                io.pool_name(),
                d.cluster_id,
                self.config_path.display(),
                self.mapping_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            )));
        }
        Ok(CsiId { cluster_id: d.cluster_id, pool_id: peer_pool, uuid: id.uuid.clone() })
    }

    /// A connection to the cluster `cluster_id` of config.json, for
    /// cluster-wide calls (fencing) that name no pool.
    pub(crate) fn cluster(&self, cluster_id: &str, creds: &Credentials) -> Result<Arc<crate::ceph::Cluster>, Error> {
        let info = config::lookup(&self.config_path, cluster_id)?;
        self.connect(cluster_id, &info, creds)
    }

    /// The pool named `pool` of the cluster `cluster_id`, for creating groups.
    pub(crate) fn pool_by_name(&self, cluster_id: &str, pool: &str, creds: &Credentials) -> Result<IoCtx, Error> {
        let cluster_info = config::lookup(&self.config_path, cluster_id)?;
        let cluster = self.connect(cluster_id, &cluster_info, creds)?;
        let pool_id = cluster.pool_id(pool).map_err(|source| {
            if source.is(libc::ENOENT) {
                Error::PoolNameNotFound { cluster_id: cluster_id.to_owned(), pool: pool.to_owned() }
            } else {
                Error::OpenPool { pool_id: -1, source }
            }
        })?;
        self.open_pool(cluster_id, pool_id, creds)
    }

    fn connect(
        &self,
        cluster_id: &str,
        cluster_info: &ClusterInfo,
        creds: &Credentials,
    ) -> Result<Arc<crate::ceph::Cluster>, Error> {
        self.connections.get(&cluster_info.mon_host, &creds.user, creds.key()).map_err(|source| {
            // A library older than the AES256K key type fails to parse such a
            // key with EINVAL before it asks any monitor: say so, since
            // "Invalid argument" alone sends an admin after the wrong secret.
            if source.is(libc::EINVAL) && creds.key_type() == KeyType::Aes256k {
                return Error::KeyTypeUnreadable {
                    cluster_id: cluster_id.to_owned(),
                    user: creds.user.clone(),
                    librbd: crate::ceph::Library::probe().version_string(),
                };
            }
            Error::Connect { cluster_id: cluster_id.to_owned(), user: creds.user.clone(), source }
        })
    }

    fn open_pool(&self, cluster_id: &str, pool_id: i64, creds: &Credentials) -> Result<IoCtx, Error> {
        let cluster_info = config::lookup(&self.config_path, cluster_id)?;
        let cluster = self.connect(cluster_id, &cluster_info, creds)?;
        IoCtx::open(&cluster, pool_id, &cluster_info.rados_namespace).map_err(|source| {
            if source.is(libc::ENOENT) {
                Error::PoolNotFound { cluster_id: cluster_id.to_owned(), pool_id }
            } else {
                Error::OpenPool { pool_id, source }
            }
        })
    }

    /// The volume with this UUID in a given pool of this site, whatever pool
    /// its handle names (a group's members, found on the peer by their
    /// metadata; a handle's own or mapped pool).
    pub(crate) fn resolve_in(
        &self,
        cluster_id: &str,
        pool_id: i64,
        uuid: &str,
        creds: &Credentials,
    ) -> Result<ResolvedVolume, Error> {
        let io = self.open_pool(cluster_id, pool_id, creds)?;
        let key = (cluster_id.to_owned(), pool_id, io.namespace().to_owned(), uuid.to_owned());
        let known = self.names.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        if let Some(image) = known {
            return Ok(ResolvedVolume { io, image, cluster_id: cluster_id.to_owned() });
        }
        let object = format!("csi.volume.{uuid}");
        // ceph-csi records a custom image name (volumeNamePrefix) in the journal;
        // a volume without a journal entry uses the default name (not kept: its
        // entry may be about to be written).
        let recorded = match io.omap_get(&object, &[IMAGE_NAME_KEY]) {
            Ok(vals) => vals.get(IMAGE_NAME_KEY).map(|v| String::from_utf8_lossy(v).into_owned()),
            Err(e) if e.is(libc::ENOENT) => None,
            Err(source) => return Err(Error::Journal { object, source }),
        };
        let recorded = recorded.filter(|n| !n.is_empty());
        if let Some(name) = &recorded {
            let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
            if names.len() >= NAMES_KEPT {
                names.clear();
            }
            names.insert(key, name.clone());
        }
        let image = recorded.unwrap_or_else(|| format!("csi-vol-{uuid}"));
        Ok(ResolvedVolume { io, image, cluster_id: cluster_id.to_owned() })
    }
}
