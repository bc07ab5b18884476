//! The Ceph client addresses a server process has connected with, kept in a
//! file beside its socket. A process killed mid-call leaves its exclusive
//! locks on images, and librbd breaks a lock only once the owner's watch has
//! timed out on the OSDs (30 s): every retried call on those images waits that
//! long. The next server on the same socket knows its predecessor is not
//! running (it binds only when the old socket refuses connections), so the
//! addresses in this file are certainly a dead process's, never an
//! application's: it fences them (`osd blocklist add`), the OSDs drop their
//! watches, and librbd breaks the stale locks at once.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LedgerEntry {
    pub mon_host: String,
    /// As librados prints them: one address, or a `[v2:…,v1:…]` vector.
    pub addrs: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LedgerFile {
    /// Addresses of this process's own connections.
    #[serde(default)]
    own: Vec<LedgerEntry>,
    /// A dead predecessor's addresses not fenced yet (no call has reached
    /// their cluster since, or fencing failed).
    #[serde(default)]
    pending: Vec<LedgerEntry>,
}

pub(crate) struct ClientLedger {
    path: PathBuf,
    state: Mutex<LedgerFile>,
}

impl ClientLedger {
    /// The ledger for a socket path: `<socket>.clients`.
    pub(crate) fn path_for(socket: &Path) -> PathBuf {
        let mut name = socket.as_os_str().to_owned();
        name.push(".clients");
        PathBuf::from(name)
    }

    /// Takes over the file of a predecessor that is known not to run: every
    /// address it recorded, and whatever it still had pending, is to be fenced.
    /// A missing or unreadable file means nothing to fence.
    pub(crate) fn take_over(path: PathBuf) -> Self {
        let old: LedgerFile = if trusted(&path) {
            std::fs::read(&path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
        } else {
            LedgerFile::default()
        };
        let mut pending = old.pending;
        for e in old.own {
            if !pending.contains(&e) {
                pending.push(e);
            }
        }
        if !pending.is_empty() {
            tracing::info!(
                ledger = %path.display(),
                clients = pending.len(),
                "the previous server on this socket left Ceph clients behind; they are fenced when their cluster is next used"
            );
        }
        let ledger = Self { path, state: Mutex::new(LedgerFile { own: Vec::new(), pending }) };
        ledger.save(&ledger.lock());
        ledger
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerFile> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one of this process's connections, before it does any work.
    pub(crate) fn record(&self, entry: LedgerEntry) {
        let mut state = self.lock();
        if !state.own.contains(&entry) {
            state.own.push(entry);
            self.save(&state);
        }
    }

    /// The predecessor's addresses on this cluster, still to be fenced.
    pub(crate) fn pending_for(&self, mon_host: &str) -> Vec<LedgerEntry> {
        self.lock().pending.iter().filter(|e| e.mon_host == mon_host).cloned().collect()
    }

    pub(crate) fn fenced(&self, entry: &LedgerEntry) {
        let mut state = self.lock();
        state.pending.retain(|e| e != entry);
        self.save(&state);
    }

    /// At exit. When no Ceph call is left running, this process holds no lock
    /// and its own addresses need no fencing; otherwise they stay recorded.
    pub(crate) fn close(&self, no_work_left: bool) {
        let mut state = self.lock();
        if no_work_left {
            state.own.clear();
        }
        if state.own.is_empty() && state.pending.is_empty() {
            if let Err(e) = std::fs::remove_file(&self.path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(ledger = %self.path.display(), error = %e, "cannot remove the client ledger");
            }
        } else {
            self.save(&state);
        }
    }

    /// Written whole to a temporary file, then renamed: a crash mid-write
    /// leaves the previous version, never a torn one.
    fn save(&self, state: &LedgerFile) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.path.with_extension("clients.tmp");
        let bytes = serde_json::to_vec(state).unwrap_or_default();
        let written = std::fs::remove_file(&tmp)
            .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
            .and_then(|()| std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp))
            .and_then(|mut f| f.write_all(&bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!(ledger = %self.path.display(), error = %e,
                "cannot write the client ledger; after a crash the next server waits out this one's locks");
        }
    }
}

/// Whether a ledger file may be acted on: what it names gets fenced, so one
/// planted by another user (the socket directory is shared with the sidecar)
/// must not make us blocklist an application's client. Ours is owned by our
/// user and writable by no one else.
fn trusted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return false };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let ok = meta.file_type().is_file() && meta.uid() == euid && meta.mode() & 0o022 == 0;
    if !ok {
        tracing::warn!(ledger = %path.display(),
            "ignoring a client ledger that is not a regular file of ours, writable only by us: nothing is fenced from it");
    }
    ok
}

/// The single addresses inside librados' address text, for `osd blocklist
/// add`, which takes one at a time: `[v2:1.2.3.4:0/7,v1:1.2.3.4:0/7]` or
/// `1.2.3.4:0/7`.
pub(crate) fn single_addrs(addrs: &str) -> Vec<String> {
    addrs
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mon: &str, addrs: &str) -> LedgerEntry {
        LedgerEntry { mon_host: mon.into(), addrs: addrs.into() }
    }

    #[test]
    fn address_vectors_split_into_single_addresses() {
        assert_eq!(single_addrs("127.0.0.1:0/123"), ["127.0.0.1:0/123"]);
        assert_eq!(single_addrs("[v2:127.0.0.1:0/5,v1:127.0.0.1:0/5]"), ["v2:127.0.0.1:0/5", "v1:127.0.0.1:0/5"]);
        assert!(single_addrs("").is_empty());
    }

    #[test]
    fn a_crashed_process_leaves_its_addresses_to_the_next_one() {
        let dir = std::env::temp_dir().join(format!("rbd-addons-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = ClientLedger::path_for(&dir.join("csi-addons.sock"));
        std::fs::remove_file(&path).ok();

        let first = ClientLedger::take_over(path.clone());
        assert!(first.pending_for("m").is_empty());
        first.record(entry("m", "1.2.3.4:0/1"));
        first.record(entry("n", "1.2.3.4:0/2"));
        drop(first); // killed: close() never ran

        let second = ClientLedger::take_over(path.clone());
        assert_eq!(second.pending_for("m"), [entry("m", "1.2.3.4:0/1")]);
        second.fenced(&entry("m", "1.2.3.4:0/1"));
        second.record(entry("m", "1.2.3.4:0/3"));
        second.close(true); // clean exit, but "n" was never fenced

        let third = ClientLedger::take_over(path.clone());
        assert!(third.pending_for("m").is_empty(), "a clean exit leaves its own addresses out");
        assert_eq!(third.pending_for("n"), [entry("n", "1.2.3.4:0/2")]);
        third.fenced(&entry("n", "1.2.3.4:0/2"));
        third.close(true);
        assert!(!path.exists(), "nothing left to fence, yet the ledger remains");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_ledger_others_could_have_written_is_not_acted_on() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rbd-addons-ledger-perm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = ClientLedger::path_for(&dir.join("csi-addons.sock"));
        std::fs::write(&path, r#"{"own":[{"mon_host":"m","addrs":"1.2.3.4:0/9"}]}"#).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(ClientLedger::take_over(path.clone()).pending_for("m").is_empty());
        // Rewritten by us, it is private.
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).ok();
    }
}
