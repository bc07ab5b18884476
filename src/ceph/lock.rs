//! An image's exclusive lock, held on purpose. A promote that must know that
//! nothing writes to an image any more (rbd-mirror's replayer above all)
//! holds its lock: once held this way librbd refuses every other client's
//! request for it until the handle releases it or closes.

use std::ffi::c_char;
use std::ptr;

use rbd_sys as sys;

use super::{CephError, Image, c_string};

/// Who holds an image's exclusive lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOwner {
    /// The client entity, e.g. `client.4151` (its global ID).
    pub entity: String,
    /// The client instance's address, as librbd names it to break the lock.
    pub address: String,
}

impl Image<'_> {
    /// Takes the exclusive lock and keeps it. Fails (EROFS, EBUSY) while
    /// another client holds it and does not give it up on request.
    pub fn lock_hold(&self) -> Result<(), CephError> {
        // SAFETY: valid image handle. The lock belongs to this handle: librbd
        // releases it when the handle is closed (Drop), and keeps it until then.
        let ret = unsafe { sys::rbd_lock_acquire(self.raw(), sys::rbd_lock_mode_t::RBD_LOCK_MODE_EXCLUSIVE) };
        CephError::check("rbd_lock_acquire", ret).map(drop)
    }

    /// Whether this handle holds the exclusive lock.
    pub fn holds_lock(&self) -> Result<bool, CephError> {
        let mut owner = 0;
        // SAFETY: plain out-parameter.
        let ret = unsafe { sys::rbd_is_exclusive_lock_owner(self.raw(), &mut owner) };
        CephError::check("rbd_is_exclusive_lock_owner", ret)?;
        Ok(owner != 0)
    }

    /// The holder of the exclusive lock, if any.
    pub fn lock_owner(&self) -> Result<Option<LockOwner>, CephError> {
        let (mut exclusive, mut tag_len, mut clients_len, mut cookies_len, mut addrs_len) = (0, 0usize, 0, 0, 0);
        // SAFETY: with zero lengths librbd writes no buffer; it fills in the
        // sizes it needs and answers ERANGE (or the count when unlocked).
        let ret = unsafe {
            sys::rbd_list_lockers(
                self.raw(),
                &mut exclusive,
                ptr::null_mut(),
                &mut tag_len,
                ptr::null_mut(),
                &mut clients_len,
                ptr::null_mut(),
                &mut cookies_len,
                ptr::null_mut(),
                &mut addrs_len,
            )
        };
        if ret == 0 {
            return Ok(None);
        }
        if ret != -(libc::ERANGE as isize) {
            CephError::check("rbd_list_lockers", ret as i32)?;
        }
        let (mut tag, mut clients, mut cookies, mut addrs) =
            (vec![0u8; tag_len], vec![0u8; clients_len], vec![0u8; cookies_len], vec![0u8; addrs_len]);
        // SAFETY: every buffer is as long as its length says; librbd writes
        // NUL-separated names within them.
        let ret = unsafe {
            sys::rbd_list_lockers(
                self.raw(),
                &mut exclusive,
                tag.as_mut_ptr().cast::<c_char>(),
                &mut tag_len,
                clients.as_mut_ptr().cast::<c_char>(),
                &mut clients_len,
                cookies.as_mut_ptr().cast::<c_char>(),
                &mut cookies_len,
                addrs.as_mut_ptr().cast::<c_char>(),
                &mut addrs_len,
            )
        };
        let count = CephError::check("rbd_list_lockers", ret as i32)?;
        if count == 0 {
            return Ok(None);
        }
        let first =
            |buf: &[u8]| String::from_utf8_lossy(buf.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
        Ok(Some(LockOwner { entity: first(&clients), address: first(&addrs) }))
    }

    /// Breaks the exclusive lock held by the client at `address`. librbd
    /// first blocklists that client instance on this cluster, so it can
    /// write nothing more, then removes its lock.
    pub fn lock_break(&self, address: &str) -> Result<(), CephError> {
        let owner = c_string("rbd_lock_break", address)?;
        // SAFETY: valid image and C string for the duration of the call.
        let ret =
            unsafe { sys::rbd_lock_break(self.raw(), sys::rbd_lock_mode_t::RBD_LOCK_MODE_EXCLUSIVE, owner.as_ptr()) };
        CephError::check("rbd_lock_break", ret).map(drop)
    }
}
