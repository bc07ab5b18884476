//! The application side of librbd's quiesce protocol, for writers that open
//! images with librbd themselves (the tests' writer, the examples): before a
//! group snapshot librbd asks every writer of every member to pause and waits
//! for each to say it has; after the last member's snapshot it lets them go.
//! A writer that has not registered a watch is not paused at all (librbd acks
//! for it at once), so a group snapshot is one instant across its members
//! only for writers that honour the protocol, as `rbd-nbd --quiesce` does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rbd_sys as sys;

use super::{CephError, Image};

/// Holds writes back while any watched image is quiesced. A writer passes
/// through [`WriteGate::enter`] for each write and keeps the pass until the
/// write was acknowledged.
#[derive(Default)]
pub struct WriteGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    /// Watched images currently quiesced.
    paused: usize,
    /// Writes entered and not yet acknowledged.
    in_flight: usize,
    /// Quiesce requests received so far.
    quiesced: u64,
    /// When the last quiesce or unquiesce arrived.
    last_event: Option<Instant>,
}

/// One write let through the gate; dropping it marks the write acknowledged.
pub struct GatePass<'g>(&'g WriteGate);

impl WriteGate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Waits while any watched image is quiesced, then lets one write through.
    pub fn enter(&self) -> GatePass<'_> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.paused > 0 {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.in_flight += 1;
        GatePass(self)
    }

    /// How many quiesce requests reached the gate: a writer can show that
    /// librbd did pause it.
    pub fn quiesced(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).quiesced
    }

    /// Waits until no image is quiesced and none has been for `quiet`
    /// (bounded by `limit`); false if that never happened. Unregistering a
    /// watch must wait for this: librbd (16.2.15) loses an unregister that
    /// races a quiesce notification (the unregister waits for an unquiesce
    /// that, with no watcher left, never calls back), and the caller hangs.
    pub fn wait_quiet(&self, quiet: Duration, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let since = s.last_event.map_or(quiet, |t| t.elapsed());
            if s.paused == 0 && since >= quiet {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wait = quiet.saturating_sub(since).max(Duration::from_millis(10)).min(deadline - now);
            s = self.changed.wait_timeout(s, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn pause(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.paused += 1;
        s.quiesced += 1;
        s.last_event = Some(Instant::now());
    }

    fn wait_drained(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.in_flight > 0 {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn resume(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.paused = s.paused.saturating_sub(1);
        s.last_event = Some(Instant::now());
        self.changed.notify_all();
    }
}

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s.in_flight -= 1;
        self.0.changed.notify_all();
    }
}

/// What librbd's callbacks get as their argument: where to report back.
struct WatchContext {
    gate: Arc<WriteGate>,
    image: SendImage,
    /// The watch's handle, known only once registration returned: a quiesce
    /// may arrive before that, and its acknowledgement waits for it.
    handle: Arc<AtomicU64>,
}

const NO_HANDLE: u64 = u64::MAX;

/// The raw handle, moved to the thread that acknowledges a quiesce.
#[derive(Clone, Copy)]
struct SendImage(sys::rbd_image_t);
// SAFETY: librbd image handles may be used from any thread;
// rbd_quiesce_complete is meant to be called from the application's own.
unsafe impl Send for SendImage {}

/// A registered quiesce watch on one image; unregistered on drop, which
/// must happen before the image closes (the borrow makes sure of it), and
/// after [`WriteGate::wait_quiet`].
pub struct QuiesceWatch<'img> {
    image: &'img Image<'img>,
    context: *mut WatchContext,
}

impl<'img> QuiesceWatch<'img> {
    pub fn register(image: &'img Image<'img>, gate: Arc<WriteGate>) -> Result<Self, CephError> {
        let context = Box::into_raw(Box::new(WatchContext {
            gate,
            image: SendImage(image.raw()),
            handle: Arc::new(AtomicU64::new(NO_HANDLE)),
        }));
        let mut handle = 0u64;
        // SAFETY: `context` stays allocated until Drop, after rbd_quiesce_unwatch
        // returned, so no callback can see it freed; librbd calls the callbacks
        // with exactly this pointer.
        let ret = unsafe {
            sys::rbd_quiesce_watch(image.raw(), Some(on_quiesce), Some(on_unquiesce), context.cast(), &mut handle)
        };
        if let Err(e) = CephError::check("rbd_quiesce_watch", ret) {
            // SAFETY: the watch was not registered: nothing else holds the box.
            drop(unsafe { Box::from_raw(context) });
            return Err(e);
        }
        // SAFETY: the box is alive (freed only in Drop); the handle is atomic
        // because a callback thread may read it meanwhile.
        unsafe { (*context).handle.store(handle, Ordering::Release) };
        Ok(Self { image, context })
    }
}

impl Drop for QuiesceWatch<'_> {
    fn drop(&mut self) {
        // SAFETY: the watch was registered on this still-open image; once
        // unwatch returns librbd makes no more callbacks, so the box is ours.
        unsafe {
            sys::rbd_quiesce_unwatch(self.image.raw(), (*self.context).handle.load(Ordering::Acquire));
            drop(Box::from_raw(self.context));
        }
    }
}

/// librbd asks this image's writer to pause: stop new writes at once, and
/// acknowledge from another thread once the writes in flight are done (the
/// callback runs on librbd's work queue, which those writes may need).
extern "C" fn on_quiesce(arg: *mut std::ffi::c_void) {
    // SAFETY: `arg` is the WatchContext registered with this callback, alive
    // until the watch is unregistered.
    let ctx = unsafe { &*(arg as *const WatchContext) };
    ctx.gate.pause();
    let (gate, image, handle) = (ctx.gate.clone(), ctx.image, ctx.handle.clone());
    std::thread::spawn(move || {
        gate.wait_drained();
        let handle = loop {
            match handle.load(Ordering::Acquire) {
                NO_HANDLE => std::thread::sleep(std::time::Duration::from_millis(1)),
                h => break h,
            }
        };
        let image = image;
        // SAFETY: the image is open (the watch is still registered, or
        // unwatch is waiting for this quiesce to be acknowledged).
        unsafe { sys::rbd_quiesce_complete(image.0, handle, 0) };
    });
}

extern "C" fn on_unquiesce(arg: *mut std::ffi::c_void) {
    // SAFETY: as in on_quiesce.
    let ctx = unsafe { &*(arg as *const WatchContext) };
    ctx.gate.resume();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_paused_gate_holds_writes_until_resumed_and_drains_in_flight_ones() {
        let gate = WriteGate::new();
        let pass = gate.enter();
        gate.pause();
        let drained = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.wait_drained())
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!drained.is_finished(), "drained with a write in flight");
        drop(pass);
        drained.join().unwrap();
        let blocked = {
            let gate = gate.clone();
            std::thread::spawn(move || drop(gate.enter()))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!blocked.is_finished(), "a write passed a paused gate");
        gate.resume();
        blocked.join().unwrap();
    }

    #[test]
    fn quiet_means_not_paused_and_no_event_for_a_while() {
        let gate = WriteGate::new();
        assert!(gate.wait_quiet(Duration::from_millis(5), Duration::ZERO), "a gate that never paused is quiet");
        gate.pause();
        assert!(!gate.wait_quiet(Duration::from_millis(5), Duration::from_millis(30)), "paused is not quiet");
        gate.resume();
        let started = Instant::now();
        assert!(gate.wait_quiet(Duration::from_millis(40), Duration::from_secs(5)));
        assert!(started.elapsed() >= Duration::from_millis(35), "did not wait out the quiet period");
    }
}
