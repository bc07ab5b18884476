//! Image snapshots, plain image I/O and group snapshots: what consistency
//! generations are made of (a user snapshot per member, one group snapshot,
//! and a revert that copies changed extents back from the group snapshot).

use std::ffi::{c_int, c_void};

use rbd_sys as sys;

use super::rbd::owned;
use super::{CephError, Image, IoCtx, c_string};

/// How many images `on_each_at_once` works on at once.
const AT_ONCE: usize = 16;

/// Runs one librbd call on each of `images` at once (a thread per image, at
/// most `AT_ONCE` at a time) and answers per image, in order.
fn on_each_at_once(
    images: &[&Image<'_>],
    what: &'static str,
    call: impl Fn(sys::rbd_image_t) -> c_int + Sync,
) -> Vec<Result<(), CephError>> {
    /// A handle lent to one thread for one call.
    struct Lent(sys::rbd_image_t);
    // SAFETY: librbd image handles are not tied to the thread that opened
    // them; each is lent to exactly one thread, and the scope below ends
    // before `images`, which own and close them, can go.
    unsafe impl Send for Lent {}
    impl Lent {
        fn handle(&self) -> sys::rbd_image_t {
            self.0
        }
    }
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(AT_ONCE) {
        std::thread::scope(|scope| {
            let running: Vec<_> = chunk
                .iter()
                .map(|image| {
                    let (lent, call) = (Lent(image.raw()), &call);
                    scope.spawn(move || call(lent.handle()))
                })
                .collect();
            for t in running {
                out.push(CephError::check(what, t.join().unwrap_or(-libc::EIO)).map(drop));
            }
        });
    }
    out
}

/// Which kind of snapshot an image snapshot is (`rbd_snap_namespace_type_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapKind {
    User,
    /// Part of a group snapshot; on a mirrored copy the group it names lives
    /// on the other site.
    Group,
    Trash,
    Mirror,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapInfo {
    pub id: u64,
    pub name: String,
    pub kind: SnapKind,
}

/// One extent that differs between a snapshot and the image head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

impl Image<'_> {
    /// Every snapshot of the image (all namespaces), oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapInfo>, CephError> {
        let mut capacity = 16usize;
        loop {
            // One extra slot: librbd terminates the list with an empty entry.
            // SAFETY: all-zero is a valid empty value for this plain C struct.
            let mut infos: Vec<sys::rbd_snap_info_t> =
                (0..capacity + 1).map(|_| unsafe { std::mem::zeroed() }).collect();
            let mut max = capacity as c_int;
            // SAFETY: `infos` has room for `max` entries plus the terminator; on
            // success librbd fills `ret` entries and allocates their names, which
            // rbd_snap_list_end frees.
            let ret = unsafe { sys::rbd_snap_list(self.raw(), infos.as_mut_ptr(), &mut max) };
            if ret == -libc::ERANGE && max as usize > capacity {
                capacity = max as usize;
                continue;
            }
            let count = CephError::check("rbd_snap_list", ret)? as usize;
            // SAFETY: the first `count` entries were filled by librbd.
            let raw: Vec<(u64, String)> = infos[..count].iter().map(|i| (i.id, unsafe { owned(i.name) })).collect();
            // SAFETY: frees exactly what rbd_snap_list allocated.
            unsafe { sys::rbd_snap_list_end(infos.as_mut_ptr()) };
            let mut snaps = Vec::with_capacity(raw.len());
            for (id, name) in raw {
                let kind = self.snap_kind(id)?;
                snaps.push(SnapInfo { id, name, kind });
            }
            snaps.sort_by_key(|s| s.id);
            return Ok(snaps);
        }
    }

    fn snap_kind(&self, id: u64) -> Result<SnapKind, CephError> {
        let mut t = sys::rbd_snap_namespace_type_t(0);
        // SAFETY: plain out-parameter on a valid image.
        let ret = unsafe { sys::rbd_snap_get_namespace_type(self.raw(), id, &mut t) };
        CephError::check("rbd_snap_get_namespace_type", ret)?;
        use sys::rbd_snap_namespace_type_t as T;
        Ok(match t {
            T::RBD_SNAP_NAMESPACE_TYPE_USER => SnapKind::User,
            T::RBD_SNAP_NAMESPACE_TYPE_GROUP => SnapKind::Group,
            T::RBD_SNAP_NAMESPACE_TYPE_TRASH => SnapKind::Trash,
            T::RBD_SNAP_NAMESPACE_TYPE_MIRROR => SnapKind::Mirror,
            _ => SnapKind::Other,
        })
    }

    /// Creates a user snapshot (EEXIST when the name is taken).
    pub fn snap_create(&self, name: &str) -> Result<(), CephError> {
        let n = c_string("rbd_snap_create", name)?;
        // SAFETY: valid image and C string.
        let ret = unsafe { sys::rbd_snap_create(self.raw(), n.as_ptr()) };
        CephError::check("rbd_snap_create", ret).map(drop)
    }

    /// Creates the same user snapshot on each of `images` without asking
    /// writers to quiesce, all at once (a thread per image, at most
    /// `AT_ONCE` at a time). A snapshot holds its image's writes
    /// while librbd takes it; taken one after another they would hold a writer
    /// that writes across the images once per image. Answers per image.
    pub fn snap_create_unquiesced_each(images: &[&Image<'_>], name: &str) -> Vec<Result<(), CephError>> {
        unsafe extern "C" fn no_progress(_: u64, _: u64, _: *mut c_void) -> c_int {
            0
        }
        let n = match c_string("rbd_snap_create2", name) {
            Ok(n) => n,
            Err(e) => return images.iter().map(|_| Err(e)).collect(),
        };
        on_each_at_once(images, "rbd_snap_create2", |image| {
            // SAFETY: a valid image lent to this call alone (`on_each_at_once`)
            // and a C string that outlives it; the callback takes no argument
            // and runs only during the call.
            unsafe {
                sys::rbd_snap_create2(
                    image,
                    n.as_ptr(),
                    sys::RBD_SNAP_CREATE_SKIP_QUIESCE,
                    Some(no_progress),
                    std::ptr::null_mut(),
                )
            }
        })
    }

    /// Force-promotes each of `images`, all at once (as above). A forced
    /// promote right after a site loss waits 5 s on every watch the lost
    /// site's clients still hold on the image's journal (until the OSDs time
    /// them out); one after another, ten images took up to 35 s. Answers per
    /// image.
    pub fn mirror_promote_forced_each(images: &[&Image<'_>]) -> Vec<Result<(), CephError>> {
        on_each_at_once(images, "rbd_mirror_image_promote", |image| {
            // SAFETY: a valid image lent to this call alone (`on_each_at_once`).
            unsafe { sys::rbd_mirror_image_promote(image, true) }
        })
    }

    /// Removes a snapshot of any namespace by its ID; this is how a group
    /// snapshot replayed from the peer (whose group does not exist here) goes.
    pub fn snap_remove_by_id(&self, id: u64) -> Result<(), CephError> {
        // SAFETY: valid image.
        let ret = unsafe { sys::rbd_snap_remove_by_id(self.raw(), id) };
        CephError::check("rbd_snap_remove_by_id", ret).map(drop)
    }

    /// Unix seconds at which the snapshot was taken.
    pub fn snap_timestamp(&self, id: u64) -> Result<i64, CephError> {
        let mut ts = sys::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: plain out-parameter.
        let ret = unsafe { sys::rbd_snap_get_timestamp(self.raw(), id, &mut ts) };
        CephError::check("rbd_snap_get_timestamp", ret)?;
        Ok(ts.tv_sec)
    }

    /// Makes this handle read the given snapshot instead of the head.
    pub fn read_snapshot(&self, id: u64) -> Result<(), CephError> {
        // SAFETY: valid image; the ID is checked by librbd.
        let ret = unsafe { sys::rbd_snap_set_by_id(self.raw(), id) };
        CephError::check("rbd_snap_set_by_id", ret).map(drop)
    }

    pub fn size(&self) -> Result<u64, CephError> {
        let mut size = 0u64;
        // SAFETY: plain out-parameter.
        let ret = unsafe { sys::rbd_get_size(self.raw(), &mut size) };
        CephError::check("rbd_get_size", ret)?;
        Ok(size)
    }

    /// The extents of the head that changed since the named user snapshot.
    pub fn changed_since(&self, snap: &str) -> Result<Vec<Extent>, CephError> {
        extern "C" fn collect(offset: u64, len: usize, _exists: c_int, arg: *mut c_void) -> c_int {
            // SAFETY: `arg` is the &mut Vec passed below, alive for the call.
            let out = unsafe { &mut *arg.cast::<Vec<Extent>>() };
            out.push(Extent { offset, len: len as u64 });
            0
        }
        let from = c_string("rbd_diff_iterate2", snap)?;
        let size = self.size()?;
        let mut extents: Vec<Extent> = Vec::new();
        // SAFETY: the callback only touches `extents`, which outlives the
        // synchronous call; librbd calls it on this thread before returning.
        let ret = unsafe {
            sys::rbd_diff_iterate2(
                self.raw(),
                from.as_ptr(),
                0,
                size,
                0,
                0,
                Some(collect),
                (&mut extents as *mut Vec<Extent>).cast(),
            )
        };
        CephError::check("rbd_diff_iterate2", ret)?;
        Ok(extents)
    }

    /// Reads exactly `buf.len()` bytes at `offset` (zeros past the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), CephError> {
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: `rest` is writable for its length.
            let ret = unsafe { sys::rbd_read(self.raw(), offset + done as u64, rest.len(), rest.as_mut_ptr().cast()) };
            let n = CephError::check("rbd_read", ret as i32)? as usize;
            if n == 0 {
                rest.fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`; returns once librbd acknowledged it.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), CephError> {
        // SAFETY: `buf` is readable for its length for the synchronous call.
        let ret = unsafe { sys::rbd_write(self.raw(), offset, buf.len(), buf.as_ptr().cast()) };
        let n = CephError::check("rbd_write", ret as i32)? as usize;
        if n != buf.len() {
            return Err(CephError::new("rbd_write", libc::EIO));
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<(), CephError> {
        // SAFETY: valid image.
        let ret = unsafe { sys::rbd_flush(self.raw()) };
        CephError::check("rbd_flush", ret).map(drop)
    }
}

/// Group snapshots of a group in this pool.
impl IoCtx {
    /// Takes a crash-consistent snapshot of every member: librbd takes every
    /// member's exclusive lock from its owner (which stops writing until it
    /// gets it back) before it snapshots any member. With `quiesce`, it first
    /// asks each member's quiesce watchers (e.g. `rbd-nbd --quiesce`'s
    /// fsfreeze hook) to pause too: a frozen filesystem, at the cost of a
    /// longer pause, not more crash consistency.
    pub fn group_snap_create(&self, group: &str, snap: &str, quiesce: bool) -> Result<(), CephError> {
        let g = c_string("rbd_group_snap_create2", group)?;
        let s = c_string("rbd_group_snap_create2", snap)?;
        let flags = if quiesce { 0 } else { sys::RBD_SNAP_CREATE_SKIP_QUIESCE };
        // SAFETY: valid ioctx and C strings for the duration of the call.
        let ret = unsafe { sys::rbd_group_snap_create2(self.raw(), g.as_ptr(), s.as_ptr(), flags) };
        CephError::check("rbd_group_snap_create2", ret).map(drop)
    }

    pub fn group_snap_remove(&self, group: &str, snap: &str) -> Result<(), CephError> {
        let g = c_string("rbd_group_snap_remove", group)?;
        let s = c_string("rbd_group_snap_remove", snap)?;
        // SAFETY: valid ioctx and C strings for the duration of the call.
        let ret = unsafe { sys::rbd_group_snap_remove(self.raw(), g.as_ptr(), s.as_ptr()) };
        CephError::check("rbd_group_snap_remove", ret).map(drop)
    }

    /// Names of the group's snapshots (complete or not).
    pub fn group_snap_list(&self, group: &str) -> Result<Vec<String>, CephError> {
        let g = c_string("rbd_group_snap_list", group)?;
        let entry = size_of::<sys::rbd_group_snap_info_t>();
        let mut capacity = 16usize;
        loop {
            // SAFETY: all-zero is a valid empty value for this plain C struct.
            let mut infos: Vec<sys::rbd_group_snap_info_t> =
                (0..capacity).map(|_| unsafe { std::mem::zeroed() }).collect();
            let mut count = capacity;
            // SAFETY: room for `count` entries; librbd allocates their names,
            // freed by rbd_group_snap_list_cleanup.
            let ret =
                unsafe { sys::rbd_group_snap_list(self.raw(), g.as_ptr(), infos.as_mut_ptr(), entry, &mut count) };
            if ret == -libc::ERANGE && count > capacity {
                capacity = count;
                continue;
            }
            CephError::check("rbd_group_snap_list", ret)?;
            // SAFETY: the first `count` entries were filled by librbd.
            let names = infos[..count].iter().map(|i| unsafe { owned(i.name) }).collect();
            // SAFETY: cleans up exactly the entries librbd filled.
            unsafe { sys::rbd_group_snap_list_cleanup(infos.as_mut_ptr(), entry, count) };
            return Ok(names);
        }
    }

    /// Names of the RBD groups of this pool (and namespace).
    pub fn group_list(&self) -> Result<Vec<String>, CephError> {
        let mut buf = vec![0u8; 1024];
        loop {
            let mut size = buf.len();
            // SAFETY: buf is writable for `size` bytes; on -ERANGE librbd sets
            // `size` to what it needs. Names come back NUL-separated.
            let ret = unsafe { sys::rbd_group_list(self.raw(), buf.as_mut_ptr().cast(), &mut size) };
            if ret == -libc::ERANGE && size > buf.len() {
                buf.resize(size, 0);
                continue;
            }
            CephError::check("rbd_group_list", ret)?;
            let used = &buf[..size.min(buf.len())];
            return Ok(used
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect());
        }
    }

    /// `(image id, image name)` of every image in the pool's directory.
    pub fn image_directory(&self) -> Result<Vec<(String, String)>, CephError> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = match self.omap_list("rbd_directory", "id_", &after, 512) {
                Ok(p) => p,
                Err(e) if e.is(libc::ENOENT) => return Ok(out),
                Err(e) => return Err(e),
            };
            let Some((last, _)) = page.last() else { return Ok(out) };
            after = last.clone();
            let full = page.len() == 512;
            for (key, val) in page {
                // Values are a length-prefixed string (u32 LE + bytes).
                let name = val.get(4..).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                out.push((key.trim_start_matches("id_").to_owned(), name));
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// Takes (or renews) an exclusive RADOS lock on an object for `secs`.
    /// EBUSY: another holder (cookie) has it; EEXIST is a renewal of ours.
    pub fn lock_exclusive(&self, oid: &str, name: &str, cookie: &str, secs: u64) -> Result<(), CephError> {
        let o = c_string("rados_lock_exclusive", oid)?;
        let n = c_string("rados_lock_exclusive", name)?;
        let c = c_string("rados_lock_exclusive", cookie)?;
        let d = c_string("rados_lock_exclusive", "rbd-addons consistency generations")?;
        let mut duration = libc::timeval { tv_sec: secs as libc::time_t, tv_usec: 0 };
        // LIBRADOS_LOCK_FLAG_RENEW: renewing our own lock extends it.
        const RENEW: u8 = 1;
        // SAFETY: valid ioctx and C strings; duration is read during the call.
        let ret = unsafe {
            rados_sys::rados_lock_exclusive(
                self.raw(),
                o.as_ptr(),
                n.as_ptr(),
                c.as_ptr(),
                d.as_ptr(),
                (&mut duration as *mut libc::timeval).cast(),
                RENEW,
            )
        };
        CephError::check("rados_lock_exclusive", ret).map(drop)
    }
}
