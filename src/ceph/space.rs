//! Space on an image: who has it open, how much of it is allocated, and
//! giving zeroed runs back to the cluster (sparsify).

use std::ffi::{CStr, c_int, c_void};
use std::mem::MaybeUninit;

use rbd_sys as sys;

use super::{CephError, Image};

impl Image<'_> {
    /// The addresses of the clients watching the image's header: every
    /// read-write open, krbd or rbd-nbd mapping, and rbd-mirror on a primary.
    /// A read-only open (as this one may be) does not watch.
    pub fn watchers(&self) -> Result<Vec<String>, CephError> {
        let mut cap = 8usize;
        loop {
            let mut list: Vec<sys::rbd_image_watcher_t> = Vec::with_capacity(cap);
            let mut n = cap;
            // SAFETY: `list` has room for `n` entries; librbd fills at most that
            // many and sets `n`, or returns -ERANGE with the count it needs.
            let ret = unsafe { sys::rbd_watchers_list(self.raw(), list.as_mut_ptr(), &mut n) };
            if ret == -libc::ERANGE && n > cap {
                cap = n;
                continue;
            }
            CephError::check("rbd_watchers_list", ret)?;
            // SAFETY: librbd initialised the first `n` entries.
            unsafe { list.set_len(n) };
            let addrs = list
                .iter()
                .map(|w| {
                    if w.addr.is_null() {
                        String::new()
                    } else {
                        // SAFETY: librbd allocated a NUL-terminated address string.
                        unsafe { CStr::from_ptr(w.addr) }.to_string_lossy().into_owned()
                    }
                })
                .collect();
            // SAFETY: frees the strings librbd allocated for these `n` entries,
            // once; `list` is not read afterwards.
            unsafe { sys::rbd_watchers_list_cleanup(list.as_mut_ptr(), n) };
            return Ok(addrs);
        }
    }

    /// The image's object size (its allocation unit).
    pub fn object_size(&self) -> Result<u64, CephError> {
        let mut info = MaybeUninit::<sys::rbd_image_info_t>::zeroed();
        // SAFETY: `info` is writable for the size we pass.
        let ret = unsafe { sys::rbd_stat(self.raw(), info.as_mut_ptr(), std::mem::size_of::<sys::rbd_image_info_t>()) };
        CephError::check("rbd_stat", ret)?;
        // SAFETY: rbd_stat filled the struct on success.
        Ok(unsafe { info.assume_init() }.obj_size)
    }

    /// Bytes allocated in the head, counted per object (as `rbd du` counts:
    /// a touched object counts whole), the parent's data left out.
    pub fn allocated_bytes(&self) -> Result<u64, CephError> {
        extern "C" fn add(_offset: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
            // SAFETY: `arg` is the &mut u64 passed below, alive for the call.
            let total = unsafe { &mut *arg.cast::<u64>() };
            if exists != 0 {
                *total += len as u64;
            }
            0
        }
        let size = self.size()?;
        let mut total = 0u64;
        // SAFETY: a null from-snapshot diffs against nothing (everything
        // allocated); the callback only touches `total`, which outlives this
        // synchronous call.
        let ret = unsafe {
            sys::rbd_diff_iterate2(
                self.raw(),
                std::ptr::null(),
                0,
                size,
                0,
                1,
                Some(add),
                (&mut total as *mut u64).cast(),
            )
        };
        CephError::check("rbd_diff_iterate2", ret)?;
        Ok(total)
    }

    /// Deallocates zeroed runs of at least `sparse_size` bytes.
    pub fn sparsify(&self, sparse_size: usize) -> Result<(), CephError> {
        // SAFETY: valid open image; librbd works on it synchronously.
        let ret = unsafe { sys::rbd_sparsify(self.raw(), sparse_size) };
        CephError::check("rbd_sparsify", ret).map(drop)
    }
}
