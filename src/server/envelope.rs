//! The one path every RPC takes: refusal of oversize input, the service's own
//! checks, the credentials, the work off the runtime under its guard, the one
//! error → Status mapping, and one log line (method, target, code, elapsed).
//! All of it runs in one span per call (method, target, request number), so a
//! line logged deep inside the call, on the blocking pool too, names its call.
//! A new service is a file in `server/` whose methods call `Envelope::run`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tonic::Status;
use tracing::{Instrument, debug, info, warn};

use super::status::status_about;
use crate::Error;
use crate::cephcsi::{Credentials, Resolver};
use crate::exec::{Claims, Executor};
use crate::metrics::Metrics;

/// Longest volume or group ID accepted: ceph-csi's handles are about 100
/// bytes. A longer one is refused without being echoed, as a message holding
/// it could outgrow HTTP/2's header limit (a 20 kB ID used to come back as
/// INTERNAL, a 100 kB one as RESOURCE_EXHAUSTED, from the transport).
pub(crate) const MAX_ID_LEN: usize = 512;
/// Bounds of a request's maps (parameters, secrets); real ones are far below.
const MAX_MAP_ENTRIES: usize = 64;
const MAX_KEY_LEN: usize = 256;
const MAX_VALUE_LEN: usize = 4096;
/// How much of an ID a message or log line shows.
const SHOWN_ID_LEN: usize = 128;

/// What a call is about, for its messages and its log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum About {
    Volume(String),
    Group(String),
    GroupSnapshot(String),
    Cluster(String),
    /// A call about no one object (a list, a request not yet understood).
    Nothing,
}

impl About {
    fn id(&self) -> &str {
        match self {
            About::Volume(id) | About::Group(id) | About::GroupSnapshot(id) | About::Cluster(id) => id,
            About::Nothing => "",
        }
    }

    /// The ID as messages show it: whole when it is a plausible one.
    pub(crate) fn shown(&self) -> String {
        let id = self.id();
        if id.len() <= SHOWN_ID_LEN {
            id.to_owned()
        } else {
            let cut = (0..=SHOWN_ID_LEN / 2).rev().find(|i| id.is_char_boundary(*i)).unwrap_or(0);
            format!("{}... ({} bytes)", &id[..cut], id.len())
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            About::Volume(_) => "volume",
            About::Group(_) => "volume group",
            About::GroupSnapshot(_) => "volume group snapshot",
            About::Cluster(_) => "cluster",
            About::Nothing => "",
        }
    }

    /// The Status for an error about this object.
    pub(crate) fn status(&self, err: &Error) -> Status {
        let id = self.shown();
        status_about(self.kind(), Some(id.as_str()).filter(|i| !i.is_empty()), err)
    }
}

impl fmt::Display for About {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

/// Numbers the calls this process answers, for their spans.
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// The span of one call. The target is shown as messages show it (bounded,
/// never a secret: secrets are not part of what a call is about).
fn rpc_span(method: &'static str, about: &About) -> tracing::Span {
    let request = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
    tracing::info_span!("rpc", method, target = %about, request)
}

/// Refuses an ID past `MAX_ID_LEN`, saying how long it was, not what it was.
pub(crate) fn refuse_oversize_id(what: &str, id: &str) -> Result<(), Error> {
    if id.len() > MAX_ID_LEN {
        return Err(Error::Malformed(format!(
            "{what} is {} bytes long; a ceph-csi ID is at most {MAX_ID_LEN}",
            id.len()
        )));
    }
    Ok(())
}

/// Refuses a map with too many entries, or a key or value past its bound.
pub(crate) fn refuse_oversize_map(what: &str, map: &HashMap<String, String>) -> Result<(), Error> {
    if map.len() > MAX_MAP_ENTRIES {
        return Err(Error::Malformed(format!(
            "{what} has {} entries; at most {MAX_MAP_ENTRIES} are accepted",
            map.len()
        )));
    }
    if map.keys().any(|k| k.len() > MAX_KEY_LEN) {
        return Err(Error::Malformed(format!("{what} has a key longer than {MAX_KEY_LEN} bytes")));
    }
    // Which value is too long is said by its key, never by the value (a secret).
    if let Some(k) = map.iter().find(|(_, v)| v.len() > MAX_VALUE_LEN).map(|(k, _)| k) {
        return Err(Error::Malformed(format!("{what} {k:?} is longer than {MAX_VALUE_LEN} bytes")));
    }
    Ok(())
}

/// A call's work off the runtime: what its checks prepared, the resolver,
/// the caller's credentials and the claims in; its answer out.
pub(crate) trait Work<P, T>:
    FnOnce(P, &Resolver, &Credentials, &Claims) -> Result<T, Error> + Send + 'static
{
}

impl<P, T, F> Work<P, T> for F where F: FnOnce(P, &Resolver, &Credentials, &Claims) -> Result<T, Error> + Send + 'static {}

/// What every Ceph-touching service holds: the one blocking door and the
/// resolver of ceph-csi handles.
#[derive(Clone)]
pub(crate) struct Envelope {
    exec: Arc<Executor>,
    resolver: Arc<Resolver>,
}

impl Envelope {
    pub(crate) fn new(exec: Arc<Executor>, resolver: Arc<Resolver>) -> Self {
        Self { exec, resolver }
    }

    pub(crate) fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// Runs one RPC. `check` is the service's own validation (no Ceph, on
    /// the runtime); its output and the credentials go to `work`, which runs
    /// off the runtime under the guard of `key` (one call per key at a time).
    /// A call that only reads gives no key: it answers while another call
    /// changes the same volume or group instead of waiting or ABORTED.
    pub(crate) async fn run<P, T, C, W>(
        &self,
        method: &'static str,
        about: About,
        key: impl FnOnce(&P) -> Option<String>,
        secrets: &HashMap<String, String>,
        check: C,
        work: W,
    ) -> Result<T, Status>
    where
        C: FnOnce() -> Result<P, Error>,
        W: Work<P, T>,
        P: Send + 'static,
        T: Send + 'static,
    {
        let span = rpc_span(method, &about);
        async move {
            let started = Instant::now();
            let result = async {
                refuse_oversize_id("the ID", about.id())?;
                refuse_oversize_map("secret", secrets)?;
                let prepared = check()?;
                let creds = Credentials::from_secrets(secrets).map_err(|e| Error::Resolve(e.into()))?;
                let key = key(&prepared);
                let (resolver, claims) = (self.resolver.clone(), self.exec.claims());
                let work = move || work(prepared, &resolver, &creds, &claims);
                match key {
                    Some(key) => self.exec.run_op(method, &key, work).await,
                    None => self.exec.read_op(method, work).await,
                }
            }
            .await;
            if let Err(e) = &result {
                e.forget_blocklisted_client(&self.resolver);
            }
            let answer = finish(method, &about, started, result);
            count(self.exec.metrics(), method, started, &answer);
            answer
        }
        .instrument(span)
        .await
    }

    /// The server's metrics, for a service's per-volume observations.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        self.exec.metrics()
    }

    /// Goes on with a call's work after its answer (a group snapshot's
    /// copies) under its own guard `key`; when the key is busy the same work
    /// already runs and the handle answers `ExecError::Busy`. None when the
    /// secrets do not make credentials (the call itself said so already).
    pub(crate) fn continue_in_background<T, W>(
        &self,
        key: String,
        secrets: &HashMap<String, String>,
        work: W,
    ) -> Option<tokio::task::JoinHandle<Result<T, Error>>>
    where
        W: FnOnce(&Resolver, &Credentials) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        let creds = Credentials::from_secrets(secrets).ok()?;
        let (exec, resolver) = (self.exec.clone(), self.resolver.clone());
        // Work that outlives its call's answer: a span of its own, so what it
        // logs on the blocking pool names it.
        let span = tracing::info_span!("background", work = %key);
        Some(tokio::spawn(
            async move {
                let started = Instant::now();
                let result = exec.run(&key, move || work(&resolver, &creds)).await;
                match &result {
                    Ok(_) => {
                        info!(work = %key, elapsed_ms = started.elapsed().as_millis() as u64, "background work done")
                    }
                    Err(Error::Exec(crate::exec::ExecError::TimedOut { .. })) => {
                        info!(work = %key, "background work goes on past the op deadline")
                    }
                    Err(Error::Exec(crate::exec::ExecError::Busy(_))) => debug!(work = %key, "already running"),
                    Err(e) => warn!(work = %key, error = %e, "background work failed; the next call retries it"),
                }
                result
            }
            .instrument(span),
        ))
    }

    /// An RPC that needs no Ceph (identity): the same mapping and metrics,
    /// and its log line at debug level, since kubelet and the sidecar probe
    /// often.
    pub(crate) fn answer<T>(metrics: &Metrics, method: &'static str, result: Result<T, Error>) -> Result<T, Status> {
        let started = Instant::now();
        let result = finish_quietly(method, &About::Nothing, started, result);
        if result.is_ok() {
            debug!(method, "call succeeded");
        }
        count(metrics, method, started, &result);
        result
    }
}

/// Every answer's one count: by method and code, with its latency.
fn count<T>(metrics: &Metrics, method: &'static str, started: Instant, answer: &Result<T, Status>) {
    let code = answer.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
    metrics.rpc(method, code, started.elapsed());
}

/// The outcome's one log line and Status.
fn finish<T>(method: &'static str, about: &About, started: Instant, result: Result<T, Error>) -> Result<T, Status> {
    let result = finish_quietly(method, about, started, result);
    if result.is_ok() {
        info!(method, target = %about, elapsed_ms = started.elapsed().as_millis() as u64, "call succeeded");
    }
    result
}

fn finish_quietly<T>(
    method: &'static str,
    about: &About,
    started: Instant,
    result: Result<T, Error>,
) -> Result<T, Status> {
    result.map_err(|err| {
        let status = about.status(&err);
        warn!(method, target = %about, code = ?status.code(), elapsed_ms = started.elapsed().as_millis() as u64,
            error = %status.message(), "call failed");
        status
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn oversize_input_is_malformed_and_never_echoed() {
        let long = "a".repeat(100_000);
        let err = refuse_oversize_id("the ID", &long).unwrap_err();
        assert!(matches!(err, Error::Malformed(_)));
        assert!(err.to_string().len() < 200, "{err}");
        assert!(refuse_oversize_id("the ID", &"a".repeat(MAX_ID_LEN)).is_ok());

        let secret = HashMap::from([("userKey".to_owned(), "k".repeat(MAX_VALUE_LEN + 1))]);
        let err = refuse_oversize_map("secret", &secret).unwrap_err();
        assert!(err.to_string().contains("userKey") && !err.to_string().contains("kkkk"), "{err}");
        let many: HashMap<String, String> = (0..=MAX_MAP_ENTRIES).map(|i| (i.to_string(), String::new())).collect();
        assert!(refuse_oversize_map("parameter", &many).is_err());
        assert!(
            refuse_oversize_map("parameter", &HashMap::from([("k".repeat(MAX_KEY_LEN + 1), String::new())])).is_err()
        );
    }

    #[test]
    fn statuses_name_their_object_briefly() {
        let long = About::Volume("é".repeat(20_000));
        let status = long.status(&Error::Malformed("bad".into()));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().len() < 200 && status.message().contains("40000 bytes"), "{}", status.message());
        let s = About::Group("0001-g".into()).status(&Error::Missing("gone".into()));
        assert_eq!((s.code(), s.message()), (Code::NotFound, "volume group 0001-g: gone"));
        assert_eq!(About::Nothing.status(&Error::Malformed("x".into())).message(), "x");
    }
}
