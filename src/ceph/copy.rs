//! New images made from a snapshot, and their removal: what a ceph-csi
//! snapshot image (`csi-snap-<uuid>`) is made of. A clone by snapshot ID
//! (`rbd_clone4`, Squid on, looked up at run time) or a full copy (`rbd_copy`,
//! every release); removal through the trash, as ceph-csi removes its images.

use std::ffi::{c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

use rbd_sys as sys;

use super::rbd::owned;
use super::{CephError, Image, IoCtx, c_string};

/// Features of a snapshot image: layering, so that volumes clone from it, and
/// deep-flatten, so that a restored volume can drop its parent for good.
pub(crate) const SNAPSHOT_IMAGE_FEATURES: u64 = (sys::RBD_FEATURE_LAYERING | sys::RBD_FEATURE_DEEP_FLATTEN) as u64;

/// Writes of zeroes shorter than this are skipped by the copy (unallocated
/// extents read back as zeroes and are never written).
const SPARSE_SIZE: usize = 4096;

/// `rbd_image_options_t`, destroyed on drop.
struct ImageOptions(sys::rbd_image_options_t);

impl ImageOptions {
    /// Format 2 images with the given features.
    fn new(features: u64) -> Result<Self, CephError> {
        let mut raw: sys::rbd_image_options_t = ptr::null_mut();
        // SAFETY: librbd allocates the options; Drop destroys them.
        unsafe { sys::rbd_image_options_create(&mut raw) };
        let opts = Self(raw);
        opts.set(sys::RBD_IMAGE_OPTION_FORMAT as c_int, 2)?;
        opts.set(sys::RBD_IMAGE_OPTION_FEATURES as c_int, features)?;
        Ok(opts)
    }

    /// For a clone: format 2 clones need no protected parent snapshot.
    fn for_clone(features: u64) -> Result<Self, CephError> {
        let opts = Self::new(features)?;
        opts.set(sys::RBD_IMAGE_OPTION_CLONE_FORMAT as c_int, 2)?;
        Ok(opts)
    }

    fn set(&self, option: c_int, value: u64) -> Result<(), CephError> {
        // SAFETY: valid options handle owned by self.
        let ret = unsafe { sys::rbd_image_options_set_uint64(self.0, option, value) };
        CephError::check("rbd_image_options_set_uint64", ret).map(drop)
    }
}

impl Drop for ImageOptions {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed exactly once here.
        unsafe { sys::rbd_image_options_destroy(self.0) };
    }
}

type Clone4 = unsafe extern "C" fn(
    sys::rados_ioctx_t,
    *const c_char,
    u64,
    sys::rados_ioctx_t,
    *const c_char,
    sys::rbd_image_options_t,
) -> c_int;

/// `rbd_clone4` of the loaded librbd, if it has one. Never linked: Pacific's
/// librbd lacks the symbol and the binary must load there.
fn clone4() -> Option<Clone4> {
    static FOUND: OnceLock<Option<usize>> = OnceLock::new();
    let addr = *FOUND.get_or_init(|| {
        // SAFETY: dlsym on the already loaded objects with a valid C string.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"rbd_clone4".as_ptr()) };
        (!p.is_null()).then_some(p as usize)
    });
    // SAFETY: the symbol is librbd's rbd_clone4, whose C signature (Squid's
    // librbd.h) is the one `Clone4` spells.
    addr.map(|a| unsafe { std::mem::transmute::<usize, Clone4>(a) })
}

impl IoCtx {
    /// Clones `parent` at the snapshot `snap_id` (any namespace, a group
    /// snapshot's too) into a new image `child` in `child_io`. ENOSYS when the
    /// loaded librbd has no `rbd_clone4`.
    pub fn clone_by_snap_id(
        &self,
        parent: &str,
        snap_id: u64,
        child_io: &IoCtx,
        child: &str,
        features: u64,
    ) -> Result<(), CephError> {
        let Some(clone4) = clone4() else { return Err(CephError::new("rbd_clone4", libc::ENOSYS)) };
        let p = c_string("rbd_clone4", parent)?;
        let c = c_string("rbd_clone4", child)?;
        let opts = ImageOptions::for_clone(features)?;
        // SAFETY: valid ioctxs, C strings and options for the duration of the call.
        let ret = unsafe { clone4(self.raw(), p.as_ptr(), snap_id, child_io.raw(), c.as_ptr(), opts.0) };
        CephError::check("rbd_clone4", ret).map(drop)
    }

    /// Removes an image that has no snapshots (ENOTEMPTY if it has some).
    pub fn image_remove(&self, name: &str) -> Result<(), CephError> {
        let n = c_string("rbd_remove", name)?;
        // SAFETY: valid ioctx and C string.
        let ret = unsafe { sys::rbd_remove(self.raw(), n.as_ptr()) };
        CephError::check("rbd_remove", ret).map(drop)
    }

    /// Moves an image to the pool's trash, where it is known by its ID only.
    pub fn trash_move(&self, name: &str) -> Result<(), CephError> {
        let n = c_string("rbd_trash_move", name)?;
        // SAFETY: valid ioctx and C string.
        let ret = unsafe { sys::rbd_trash_move(self.raw(), n.as_ptr(), 0) };
        CephError::check("rbd_trash_move", ret).map(drop)
    }

    /// Deletes an image from the trash; EBUSY or ENOTEMPTY while a clone
    /// still depends on one of its snapshots.
    pub fn trash_remove(&self, image_id: &str) -> Result<(), CephError> {
        let i = c_string("rbd_trash_remove", image_id)?;
        // SAFETY: valid ioctx and C string.
        let ret = unsafe { sys::rbd_trash_remove(self.raw(), i.as_ptr(), true) };
        CephError::check("rbd_trash_remove", ret).map(drop)
    }
}

impl Image<'_> {
    /// Copies what this handle reads (the head, or the snapshot chosen with
    /// `read_snapshot`) into a new image `dest` in `io`; runs of zeroes are
    /// not written, so only allocated data costs. `progress(done, total)`
    /// is called as the copy goes on.
    pub fn copy_to(
        &self,
        io: &IoCtx,
        dest: &str,
        features: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), CephError> {
        unsafe extern "C" fn report(done: u64, total: u64, arg: *mut c_void) -> c_int {
            // SAFETY: `arg` is the `&mut &mut dyn FnMut` passed below, alive
            // for the whole copy call that invokes this.
            let f = unsafe { &mut *arg.cast::<&mut dyn FnMut(u64, u64)>() };
            f(done, total);
            0
        }
        let d = c_string("rbd_copy_with_progress4", dest)?;
        let opts = ImageOptions::new(features)?;
        let mut progress = progress;
        // SAFETY: valid image, ioctx, C string and options; the callback's
        // argument outlives the call, which invokes it only while it runs.
        let ret = unsafe {
            sys::rbd_copy_with_progress4(
                self.raw(),
                io.raw(),
                d.as_ptr(),
                opts.0,
                Some(report),
                (&mut progress as *mut &mut dyn FnMut(u64, u64)).cast(),
                SPARSE_SIZE,
            )
        };
        CephError::check("rbd_copy_with_progress4", ret).map(drop)
    }

    /// The image's ID (its name in the trash and in `rbd_header.<id>`).
    pub fn id(&self) -> Result<String, CephError> {
        let mut buf = vec![0u8; 64];
        // SAFETY: buf is writable for its length; librbd NUL-terminates.
        let ret = unsafe { sys::rbd_get_id(self.raw(), buf.as_mut_ptr().cast(), buf.len()) };
        CephError::check("rbd_get_id", ret)?;
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    /// Removes a user snapshot by name. With clone format 2 a snapshot that
    /// clones still depend on moves to the trash namespace instead.
    pub fn snap_remove(&self, name: &str) -> Result<(), CephError> {
        let n = c_string("rbd_snap_remove", name)?;
        // SAFETY: valid image and C string.
        let ret = unsafe { sys::rbd_snap_remove(self.raw(), n.as_ptr()) };
        CephError::check("rbd_snap_remove", ret).map(drop)
    }

    /// The group snapshot an image snapshot of the group namespace belongs to:
    /// (group pool ID, group name, group snapshot name). ENOENT when its group
    /// does not exist here (a snapshot replayed from the peer's group).
    pub fn group_snap_of(&self, snap_id: u64) -> Result<(i64, String, String), CephError> {
        // SAFETY: all-zero is a valid empty value for this plain C struct.
        let mut ns: sys::rbd_snap_group_namespace_t = unsafe { std::mem::zeroed() };
        let size = size_of::<sys::rbd_snap_group_namespace_t>();
        // SAFETY: `ns` is writable for `size` bytes; librbd allocates the two
        // names, freed by rbd_snap_group_namespace_cleanup.
        let ret = unsafe { sys::rbd_snap_get_group_namespace(self.raw(), snap_id, &mut ns, size) };
        CephError::check("rbd_snap_get_group_namespace", ret)?;
        // SAFETY: filled by librbd above.
        let out = (ns.group_pool, unsafe { owned(ns.group_name) }, unsafe { owned(ns.group_snap_name) });
        // SAFETY: frees exactly what rbd_snap_get_group_namespace allocated.
        unsafe { sys::rbd_snap_group_namespace_cleanup(&mut ns, size) };
        Ok(out)
    }
}
