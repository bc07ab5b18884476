//! The only door to blocking Ceph work. Every librados/librbd call runs on the
//! blocking pool behind a global semaphore, bounded by the op deadline, and one
//! volume (or group) is changed by at most one call at a time. A call that only
//! reads takes no key: it neither waits behind nor refuses one that changes.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};

use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ExecError {
    #[error("an operation on {0} is already in progress; retry when it has finished")]
    Busy(String),
    #[error("too many Ceph operations are queued; none became free within {}s", .0.as_secs())]
    Overloaded(Duration),
    #[error("the operation did not finish within {}s; it goes on in the background{}", .after.as_secs(),
        .locked.as_ref().map(|key| format!(" and {key} stays locked until it ends")).unwrap_or_default())]
    TimedOut { after: Duration, locked: Option<String> },
    #[error("the operation failed unexpectedly (it panicked)")]
    Panicked,
}

/// Marks further keys (a group's member volumes) as worked on from inside a
/// running call; each claim lasts as long as the guard it returns.
#[derive(Clone)]
pub(crate) struct Claims {
    in_flight: Arc<Mutex<HashSet<String>>>,
}

impl Claims {
    pub(crate) fn claim(&self, key: &str) -> Result<KeyGuard, ExecError> {
        claim(&self.in_flight, key)
    }
}

fn claim(in_flight: &Arc<Mutex<HashSet<String>>>, key: &str) -> Result<KeyGuard, ExecError> {
    let mut set = in_flight.lock().unwrap_or_else(|p| p.into_inner());
    if !set.insert(key.to_owned()) {
        return Err(ExecError::Busy(key.to_owned()));
    }
    Ok(KeyGuard { in_flight: in_flight.clone(), key: key.to_owned() })
}

pub(crate) struct Executor {
    /// Blocking work handed to the pool and not yet returned, idling or not.
    works: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
    in_flight: Arc<Mutex<HashSet<String>>>,
    op_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// Marks a key as being worked on; dropping it frees the key. It is moved into
/// the blocking closure, so a caller that gives up (deadline, cancel) cannot
/// free the key while librbd is still working on the volume.
pub(crate) struct KeyGuard {
    in_flight: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// The `--max-concurrent-ops` slot of the work running on this blocking
/// thread, so that `idle` can give it back while the work only waits.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    permits: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
    deadline: Instant,
}

thread_local! {
    static SLOT: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

/// Sleeps `pause` inside blocking work without holding its slot: a promote
/// that waits for rbd-mirror to let go of its image must not keep a slot
/// that other calls could use meanwhile (at 1,000 volumes, promotes would
/// queue behind others' waits). The key stays held. The slot is taken again
/// before the work goes on; past the call's deadline (its caller has had
/// DEADLINE_EXCEEDED) the work finishes without one rather than half-done.
/// Outside work run by the executor (tests, examples), a plain sleep.
pub(crate) fn idle(pause: Duration) {
    let given_back = SLOT.with(|s| s.borrow_mut().as_mut().and_then(|slot| slot.permit.take()).is_some());
    std::thread::sleep(pause);
    if !given_back {
        return;
    }
    SLOT.with(|s| {
        if let Some(slot) = s.borrow_mut().as_mut() {
            let acquire = timeout_at(slot.deadline, slot.permits.clone().acquire_owned());
            slot.permit = slot.runtime.block_on(acquire).ok().and_then(Result::ok);
        }
    });
}

/// Counts one piece of work in flight for as long as it runs, panics included.
struct Running<'a>(&'a Metrics);

impl<'a> Running<'a> {
    fn start(metrics: &'a Metrics) -> Self {
        metrics.in_flight().inc();
        Self(metrics)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.in_flight().dec();
    }
}

impl Executor {
    pub(crate) fn new(max_concurrent: usize, op_timeout: Duration) -> Self {
        Self {
            works: Arc::new(AtomicUsize::new(0)),
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            op_timeout,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// The metrics the work through this door is counted in.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Blocking Ceph work running now, including work whose caller gave up
    /// and work that idles without its slot (a permit count would miss it,
    /// and shutdown must know of every thread still inside librados).
    pub(crate) fn running(&self) -> usize {
        self.works.load(Ordering::Acquire)
    }

    /// For calls that learn further keys to guard only once they run.
    pub(crate) fn claims(&self) -> Claims {
        Claims { in_flight: self.in_flight.clone() }
    }

    /// Runs `work` for `key` (a volume or group ID) off the async runtime.
    /// Waiting for a permit and the work itself share one deadline.
    pub(crate) async fn run<T, E, F>(&self, key: &str, work: F) -> Result<T, E>
    where
        F: FnOnce() -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<ExecError> + Send + 'static,
    {
        self.run_op("background", key, work).await
    }

    /// `run`, with the work counted under `op` (the RPC it serves).
    pub(crate) async fn run_op<T, E, F>(&self, op: &'static str, key: &str, work: F) -> Result<T, E>
    where
        F: FnOnce() -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<ExecError> + Send + 'static,
    {
        let guard = claim(&self.in_flight, key).inspect_err(|_| self.metrics.guard_rejected(op))?;
        self.run_holding(op, Some(guard), work).await
    }

    /// `run_op` for work that only reads `key`: the same permit and deadline,
    /// but no key, so a read never waits behind a change of the same volume
    /// (what it reads is then as of some instant during that change).
    pub(crate) async fn read_op<T, E, F>(&self, op: &'static str, work: F) -> Result<T, E>
    where
        F: FnOnce() -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<ExecError> + Send + 'static,
    {
        self.run_holding(op, None, work).await
    }

    async fn run_holding<T, E, F>(&self, op: &'static str, guard: Option<KeyGuard>, work: F) -> Result<T, E>
    where
        F: FnOnce() -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<ExecError> + Send + 'static,
    {
        let deadline = Instant::now() + self.op_timeout;
        let locked = guard.as_ref().map(|g| g.key.clone());
        let queued = self.metrics.queued().clone();
        queued.inc();
        let permit = timeout_at(deadline, self.permits.clone().acquire_owned()).await;
        queued.dec();
        let permit = match permit {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; a timeout means the queue is full.
            _ => return Err(ExecError::Overloaded(self.op_timeout).into()),
        };
        let metrics = self.metrics.clone();
        let (permits, runtime) = (self.permits.clone(), tokio::runtime::Handle::current());
        // Counted from here until the closure is dropped, run or not.
        let work_count = WorkCount::start(&self.works);
        // What the work logs belongs to the call (the RPC's span).
        let span = tracing::Span::current();
        let task = tokio::task::spawn_blocking(move || {
            let _in_call = span.enter();
            let _work_count = work_count;
            let _guard = guard;
            let slot = Slot { permit: Some(permit), permits, runtime, deadline };
            SLOT.with(|s| *s.borrow_mut() = Some(slot));
            // The slot goes back when the work ends, panics included.
            let _slot = scopeguard(|| SLOT.with(|s| s.borrow_mut().take()));
            let _running = Running::start(&metrics);
            let started = std::time::Instant::now();
            let result = work();
            metrics.ceph_op(op, started.elapsed());
            result
        });
        match timeout_at(deadline, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(_join)) => Err(ExecError::Panicked.into()),
            Err(_elapsed) => Err(ExecError::TimedOut { after: self.op_timeout, locked }.into()),
        }
    }
}

/// One piece of blocking work handed to the pool, until it is dropped.
struct WorkCount(Arc<AtomicUsize>);

impl WorkCount {
    fn start(works: &Arc<AtomicUsize>) -> Self {
        works.fetch_add(1, Ordering::AcqRel);
        Self(works.clone())
    }
}

impl Drop for WorkCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs `f` when dropped.
fn scopeguard<R>(f: impl FnOnce() -> R) -> impl Drop {
    struct Guard<F: FnOnce() -> R, R>(Option<F>);
    impl<F: FnOnce() -> R, R> Drop for Guard<F, R> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test]
    async fn second_call_on_a_busy_key_is_refused_until_the_first_ends() {
        let exec = Arc::new(Executor::new(4, Duration::from_secs(5)));
        let (release, wait) = mpsc::channel::<()>();
        let first = {
            let exec = exec.clone();
            tokio::spawn(async move {
                exec.run::<_, ExecError, _>("vol", move || {
                    wait.recv().ok();
                    Ok(1)
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = exec.run::<i32, ExecError, _>("vol", || Ok(2)).await;
        assert_eq!(second, Err(ExecError::Busy("vol".into())));
        assert_eq!(exec.run::<i32, ExecError, _>("other", || Ok(3)).await, Ok(3));
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(1));
        assert_eq!(exec.run::<i32, ExecError, _>("vol", || Ok(4)).await, Ok(4));
    }

    #[tokio::test]
    async fn a_read_neither_waits_behind_nor_refuses_a_change_of_its_key() {
        let exec = Arc::new(Executor::new(4, Duration::from_secs(5)));
        let (release, wait) = mpsc::channel::<()>();
        let change = {
            let exec = exec.clone();
            tokio::spawn(async move {
                exec.run_op::<_, ExecError, _>("Promote", "vol", move || {
                    wait.recv().ok();
                    Ok(1)
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(exec.read_op::<i32, ExecError, _>("Info", || Ok(2)).await, Ok(2));
        // The change still holds its key against other changes.
        assert_eq!(exec.run::<i32, ExecError, _>("vol", || Ok(3)).await, Err(ExecError::Busy("vol".into())));
        release.send(()).unwrap();
        assert_eq!(change.await.unwrap(), Ok(1));
    }

    #[tokio::test]
    async fn work_that_idles_gives_its_slot_to_other_work_meanwhile() {
        // One slot: the first call idles for a second, and the second call
        // (another key) runs and ends within it.
        let exec = Arc::new(Executor::new(1, Duration::from_secs(5)));
        let (idling, idle_started) = mpsc::channel::<()>();
        let first = {
            let exec = exec.clone();
            tokio::spawn(async move {
                exec.run::<_, ExecError, _>("waits", move || {
                    idling.send(()).unwrap();
                    idle(Duration::from_secs(1));
                    Ok(std::time::Instant::now())
                })
                .await
            })
        };
        tokio::task::spawn_blocking(move || idle_started.recv().unwrap()).await.unwrap();
        assert_eq!(exec.running(), 1, "work that idles without its slot still counts as running");
        let second = exec.run::<_, ExecError, _>("other", || Ok(std::time::Instant::now())).await.unwrap();
        let first = first.await.unwrap().unwrap();
        assert!(second < first, "the second call waited for the first one's idle to end");
        assert_eq!(exec.running(), 0, "the slot went back when the work ended");
    }

    #[tokio::test]
    async fn claims_made_inside_a_call_last_as_long_as_their_guards() {
        let exec = Executor::new(4, Duration::from_secs(5));
        let claims = exec.claims();
        let held = claims.claim("member").unwrap();
        assert_eq!(exec.run::<i32, ExecError, _>("member", || Ok(1)).await, Err(ExecError::Busy("member".into())));
        assert!(matches!(claims.claim("member"), Err(ExecError::Busy(_))));
        drop(held);
        assert_eq!(exec.run::<i32, ExecError, _>("member", || Ok(2)).await, Ok(2));
    }

    #[tokio::test]
    async fn a_timed_out_call_keeps_its_key_until_the_work_ends() {
        let exec = Executor::new(4, Duration::from_millis(100));
        let (release, wait) = mpsc::channel::<()>();
        let r = exec
            .run::<i32, ExecError, _>("vol", move || {
                wait.recv().ok();
                Ok(1)
            })
            .await;
        assert!(matches!(r, Err(ExecError::TimedOut { .. })));
        assert_eq!(exec.run::<i32, ExecError, _>("vol", || Ok(2)).await, Err(ExecError::Busy("vol".into())));
        release.send(()).unwrap();
        let start = std::time::Instant::now();
        loop {
            match exec.run::<i32, ExecError, _>("vol", || Ok(3)).await {
                Ok(3) => break,
                _ if start.elapsed() < Duration::from_secs(5) => tokio::time::sleep(Duration::from_millis(10)).await,
                other => panic!("key never freed: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_panic_becomes_an_error_and_frees_the_key() {
        let exec = Executor::new(1, Duration::from_secs(5));
        let r = exec.run::<i32, ExecError, _>("vol", || panic!("boom")).await;
        assert_eq!(r, Err(ExecError::Panicked));
        assert_eq!(exec.run::<i32, ExecError, _>("vol", || Ok(1)).await, Ok(1));
    }
}
