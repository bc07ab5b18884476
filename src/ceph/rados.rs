use std::collections::BTreeMap;
use std::ffi::{CStr, c_char};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use rados_sys as sys;

use super::{CephError, c_string};

/// How to reach a cluster without any conf file: what ceph-csi gets from its
/// config.json (monitors) and from the request's secret (user and key).
pub struct ConnectOptions<'a> {
    pub mon_host: &'a str,
    /// The cephx user without the `client.` prefix, as in a ceph-csi secret.
    pub user: &'a str,
    pub key: &'a str,
    /// Bound of every monitor and OSD operation, and of the initial connect, so
    /// that a dead cluster fails a call instead of hanging its thread forever.
    pub op_timeout: Duration,
}

/// A connected librados cluster handle.
pub struct Cluster {
    handle: sys::rados_t,
}

// SAFETY: librados documents `rados_t` as thread-safe: any thread may issue
// operations on a connected handle. The handle is only shut down in Drop, when
// no other reference (and so no IoCtx, which holds an Arc<Cluster>) remains.
unsafe impl Send for Cluster {}
// SAFETY: see Send; shared use from several threads is librados' intended use.
unsafe impl Sync for Cluster {}

impl Cluster {
    pub fn connect(opts: &ConnectOptions<'_>) -> Result<Arc<Self>, CephError> {
        let name = c_string("rados_create2", &format!("client.{}", opts.user))?;
        let cluster_name = c_string("rados_create2", "ceph")?;
        let mut handle: sys::rados_t = ptr::null_mut();
        // SAFETY: both strings are valid NUL-terminated C strings that outlive the
        // call; on success librados hands us a handle we own and must shut down.
        let ret = unsafe { sys::rados_create2(&mut handle, cluster_name.as_ptr(), name.as_ptr(), 0) };
        CephError::check("rados_create2", ret)?;
        // From here the handle is owned by `cluster`, whose Drop shuts it down on
        // every early return below.
        let cluster = Self { handle };
        let secs = opts.op_timeout.as_secs().max(1).to_string();
        cluster.set("mon_host", opts.mon_host)?;
        cluster.set("key", opts.key)?;
        cluster.set("rados_mon_op_timeout", &secs)?;
        cluster.set("rados_osd_op_timeout", &secs)?;
        cluster.set("client_mount_timeout", &secs)?;
        // SAFETY: the handle is created and configured but not yet connected.
        let ret = unsafe { sys::rados_connect(cluster.handle) };
        CephError::check("rados_connect", ret)?;
        Ok(Arc::new(cluster))
    }

    fn set(&self, option: &str, value: &str) -> Result<(), CephError> {
        let o = c_string("rados_conf_set", option)?;
        let v = c_string("rados_conf_set", value)?;
        // SAFETY: the handle is valid; librados copies both strings.
        let ret = unsafe { sys::rados_conf_set(self.handle, o.as_ptr(), v.as_ptr()) };
        CephError::check("rados_conf_set", ret).map(drop)
    }

    /// This client's own addresses as the OSDs see it (what a lock owner's
    /// address is compared with, and what `osd blocklist add` takes).
    pub fn client_addrs(&self) -> Result<String, CephError> {
        let mut out: *mut c_char = ptr::null_mut();
        // SAFETY: connected handle; librados strdup()s the string into `out`,
        // which we own and release with free(3) below.
        let ret = unsafe { sys::rados_getaddrs(self.handle, &mut out) };
        CephError::check("rados_getaddrs", ret)?;
        if out.is_null() {
            return Err(CephError::new("rados_getaddrs", libc::EINVAL));
        }
        // SAFETY: `out` is a NUL-terminated string allocated by strdup.
        let addrs = unsafe { CStr::from_ptr(out) }.to_string_lossy().into_owned();
        // SAFETY: allocated with malloc by strdup, freed once, never used after.
        unsafe { libc::free(out.cast()) };
        Ok(addrs)
    }

    /// Fences a client address from every OSD for `expire` (the monitors'
    /// `osd blocklist add`): its watches drop, so the locks it held can be
    /// broken at once, and nothing it still sends is applied.
    pub fn blocklist_add(&self, addr: &str, expire: Duration) -> Result<(), CephError> {
        let a = c_string("rados_blocklist_add", addr)?;
        let secs = u32::try_from(expire.as_secs()).unwrap_or(u32::MAX).max(1);
        // SAFETY: connected handle; librados only reads the address string,
        // which outlives the call (the C API takes it as non-const).
        let ret = unsafe { sys::rados_blocklist_add(self.handle, a.as_ptr().cast_mut(), secs) };
        CephError::check("rados_blocklist_add", ret).map(drop)
    }

    /// The name of the pool with this ID; ENOENT when there is none.
    pub fn pool_name(&self, pool_id: i64) -> Result<String, CephError> {
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: buf is writable for buf.len() bytes; librados writes a
            // NUL-terminated name or returns -ERANGE when it does not fit.
            let ret =
                unsafe { sys::rados_pool_reverse_lookup(self.handle, pool_id, buf.as_mut_ptr().cast(), buf.len()) };
            if ret == -libc::ERANGE && buf.len() < 65536 {
                buf.resize(buf.len() * 4, 0);
                continue;
            }
            CephError::check("rados_pool_reverse_lookup", ret)?;
            let name = CStr::from_bytes_until_nul(&buf)
                .map_err(|_| CephError::new("rados_pool_reverse_lookup", libc::EINVAL))?;
            return Ok(name.to_string_lossy().into_owned());
        }
    }

    /// The ID of the pool with this name; ENOENT when there is none.
    pub fn pool_id(&self, name: &str) -> Result<i64, CephError> {
        let n = c_string("rados_pool_lookup", name)?;
        // SAFETY: valid connected handle and C string.
        let ret = unsafe { sys::rados_pool_lookup(self.handle, n.as_ptr()) };
        if ret < 0 {
            return Err(CephError::new("rados_pool_lookup", (-ret) as i32));
        }
        Ok(ret)
    }

    /// Sends one JSON command to the active mgr and returns its output.
    /// The error carries the mgr's status text, which says what was wrong.
    pub fn mgr_command(&self, json: &str) -> Result<String, (CephError, String)> {
        self.command("rados_mgr_command", sys::rados_mgr_command, json)
    }

    /// Sends one JSON command to the monitors and returns its output; the
    /// error carries the monitors' status text.
    pub fn mon_command(&self, json: &str) -> Result<String, (CephError, String)> {
        self.command("rados_mon_command", sys::rados_mon_command, json)
    }

    fn command(&self, op: &'static str, send: CommandFn, json: &str) -> Result<String, (CephError, String)> {
        let cmd = c_string(op, json).map_err(|e| (e, String::new()))?;
        let mut cmds = [cmd.as_ptr()];
        let mut outbuf: *mut c_char = ptr::null_mut();
        let mut outbuf_len = 0usize;
        let mut outs: *mut c_char = ptr::null_mut();
        let mut outs_len = 0usize;
        // SAFETY: `cmds` holds one valid C string for the duration of the call. On
        // return librados may have allocated `outbuf` and `outs`; both are freed
        // below with rados_buffer_free, the deallocator librados pairs with them.
        let ret = unsafe {
            send(
                self.handle,
                cmds.as_mut_ptr(),
                1,
                ptr::null(),
                0,
                &mut outbuf,
                &mut outbuf_len,
                &mut outs,
                &mut outs_len,
            )
        };
        // SAFETY: each buffer is either null or valid for its reported length.
        let take = |p: *mut c_char, len: usize| unsafe {
            if p.is_null() {
                return String::new();
            }
            let s = String::from_utf8_lossy(std::slice::from_raw_parts(p.cast::<u8>(), len)).into_owned();
            sys::rados_buffer_free(p);
            s
        };
        let out = take(outbuf, outbuf_len);
        let status = take(outs, outs_len);
        match CephError::check(op, ret) {
            Ok(_) => Ok(out),
            Err(e) => Err((e, status)),
        }
    }
}

/// The signature librados' command calls (mon, mgr, osd) share.
type CommandFn = unsafe extern "C" fn(
    sys::rados_t,
    *mut *const c_char,
    usize,
    *const c_char,
    usize,
    *mut *mut c_char,
    *mut usize,
    *mut *mut c_char,
    *mut usize,
) -> i32;

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: we own the handle and nothing else refers to it any more:
        // every IoCtx holds an Arc<Cluster>, so they are all gone by now.
        unsafe { sys::rados_shutdown(self.handle) }
    }
}

/// An I/O context on one pool (and RADOS namespace). It keeps its cluster alive.
pub struct IoCtx {
    handle: sys::rados_ioctx_t,
    pool_name: String,
    namespace: String,
    cluster: Arc<Cluster>,
}

// SAFETY: a librados ioctx may be used from any thread, one call at a time; we
// never share an IoCtx between threads (it is not Sync), only move it.
unsafe impl Send for IoCtx {}

impl IoCtx {
    /// Opens the pool with this ID in the given RADOS namespace ("" = default).
    pub fn open(cluster: &Arc<Cluster>, pool_id: i64, namespace: &str) -> Result<Self, CephError> {
        let pool_name = cluster.pool_name(pool_id)?;
        let ns = c_string("rados_ioctx_set_namespace", namespace)?;
        let mut handle: sys::rados_ioctx_t = ptr::null_mut();
        // SAFETY: the cluster handle is connected; on success we own the ioctx
        // and destroy it in Drop.
        let ret = unsafe { sys::rados_ioctx_create2(cluster.handle, pool_id, &mut handle) };
        CephError::check("rados_ioctx_create2", ret)?;
        // SAFETY: the ioctx was just created and is not shared; librados copies ns.
        unsafe { sys::rados_ioctx_set_namespace(handle, ns.as_ptr()) };
        Ok(Self { handle, pool_name, namespace: namespace.to_owned(), cluster: cluster.clone() })
    }

    pub fn pool_name(&self) -> &str {
        &self.pool_name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn pool_id(&self) -> i64 {
        // SAFETY: valid ioctx; a plain getter.
        unsafe { sys::rados_ioctx_get_id(self.handle) }
    }

    /// Names of every pool of the cluster.
    pub fn pools(cluster: &Cluster) -> Result<Vec<String>, CephError> {
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: buf is writable for its length; librados returns the
            // length it needs, which may exceed what it wrote.
            let ret = unsafe { sys::rados_pool_list(cluster.handle, buf.as_mut_ptr().cast(), buf.len()) };
            let need = CephError::check("rados_pool_list", ret)? as usize;
            if need > buf.len() {
                buf.resize(need, 0);
                continue;
            }
            return Ok(buf[..need]
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect());
        }
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    pub(super) fn raw(&self) -> sys::rados_ioctx_t {
        self.handle
    }

    /// Reads the given omap keys of one object. Keys that are absent are simply
    /// missing from the result; a missing object is ENOENT.
    pub fn omap_get(&self, oid: &str, keys: &[&str]) -> Result<BTreeMap<String, Vec<u8>>, CephError> {
        const OP: &str = "rados_read_op_omap_get_vals_by_keys";
        let oid_c = c_string(OP, oid)?;
        let keys_c = keys.iter().map(|k| c_string(OP, k)).collect::<Result<Vec<_>, _>>()?;
        let key_ptrs: Vec<*const c_char> = keys_c.iter().map(|k| k.as_ptr()).collect();
        // SAFETY: a read op is created here and released below on every path.
        let op = unsafe { sys::rados_create_read_op() };
        if op.is_null() {
            return Err(CephError::new(OP, libc::ENOMEM));
        }
        let mut iter: sys::rados_omap_iter_t = ptr::null_mut();
        let mut prval: i32 = 0;
        // SAFETY: key pointers stay valid until the op has been operated; the
        // iterator is filled by operate and ended with rados_omap_get_end.
        let ret = unsafe {
            sys::rados_read_op_omap_get_vals_by_keys(op, key_ptrs.as_ptr(), key_ptrs.len(), &mut iter, &mut prval);
            sys::rados_read_op_operate(op, self.handle, oid_c.as_ptr(), 0)
        };
        let result = CephError::check("rados_read_op_operate", ret)
            .and_then(|_| CephError::check(OP, prval))
            // SAFETY: the op was operated successfully, so the iterator is valid.
            .map(|_| unsafe { drain_omap(iter) }.into_iter().collect::<BTreeMap<_, _>>());
        // SAFETY: the iterator (if any) and the op are ours and released once.
        unsafe {
            if !iter.is_null() {
                sys::rados_omap_get_end(iter);
            }
            sys::rados_release_read_op(op);
        }
        result
    }
}

impl IoCtx {
    /// Sets omap keys on an object, creating it if needed, in one atomic op.
    pub fn omap_set(&self, oid: &str, pairs: &[(&str, &[u8])]) -> Result<(), CephError> {
        const OP: &str = "rados_write_op_omap_set";
        let keys = pairs.iter().map(|(k, _)| c_string(OP, k)).collect::<Result<Vec<_>, _>>()?;
        let key_ptrs: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
        let val_ptrs: Vec<*const c_char> = pairs.iter().map(|(_, v)| v.as_ptr().cast()).collect();
        let lens: Vec<usize> = pairs.iter().map(|(_, v)| v.len()).collect();
        self.write(OP, oid, |op| {
            // SAFETY: the three arrays hold pairs.len() valid entries and live
            // until the op has been operated (inside `write`).
            unsafe {
                sys::rados_write_op_omap_set(op, key_ptrs.as_ptr(), val_ptrs.as_ptr(), lens.as_ptr(), pairs.len())
            }
        })
    }

    /// Removes omap keys (absent keys are fine) from an existing object.
    pub fn omap_rm_keys(&self, oid: &str, keys: &[&str]) -> Result<(), CephError> {
        const OP: &str = "rados_write_op_omap_rm_keys";
        let keys_c = keys.iter().map(|k| c_string(OP, k)).collect::<Result<Vec<_>, _>>()?;
        let ptrs: Vec<*const c_char> = keys_c.iter().map(|k| k.as_ptr()).collect();
        self.write(OP, oid, |op| {
            // SAFETY: ptrs holds keys.len() valid C strings alive until operate.
            unsafe { sys::rados_write_op_omap_rm_keys(op, ptrs.as_ptr(), ptrs.len()) }
        })
    }

    /// Deletes an object; ENOENT when it does not exist.
    pub fn remove(&self, oid: &str) -> Result<(), CephError> {
        // SAFETY: a plain remove on the op.
        self.write("rados_write_op_remove", oid, |op| unsafe { sys::rados_write_op_remove(op) })
    }

    fn write(
        &self,
        op_name: &'static str,
        oid: &str,
        fill: impl FnOnce(sys::rados_write_op_t),
    ) -> Result<(), CephError> {
        let oid_c = c_string(op_name, oid)?;
        // SAFETY: the op is created here and released below on every path.
        let op = unsafe { sys::rados_create_write_op() };
        if op.is_null() {
            return Err(CephError::new(op_name, libc::ENOMEM));
        }
        fill(op);
        // SAFETY: valid op and ioctx; a null mtime means "now".
        let ret = unsafe { sys::rados_write_op_operate(op, self.handle, oid_c.as_ptr(), ptr::null_mut(), 0) };
        // SAFETY: released exactly once.
        unsafe { sys::rados_release_write_op(op) };
        CephError::check(op_name, ret).map(drop)
    }

    /// Up to `max` omap entries of an object whose keys start with `prefix`,
    /// after `start_after` (for paging). A missing object is ENOENT.
    pub fn omap_list(
        &self,
        oid: &str,
        prefix: &str,
        start_after: &str,
        max: u64,
    ) -> Result<Vec<(String, Vec<u8>)>, CephError> {
        const OP: &str = "rados_read_op_omap_get_vals2";
        let oid_c = c_string(OP, oid)?;
        let prefix_c = c_string(OP, prefix)?;
        let after_c = c_string(OP, start_after)?;
        // SAFETY: a read op is created here and released below on every path.
        let op = unsafe { sys::rados_create_read_op() };
        if op.is_null() {
            return Err(CephError::new(OP, libc::ENOMEM));
        }
        let mut iter: sys::rados_omap_iter_t = ptr::null_mut();
        let mut more: u8 = 0;
        let mut prval: i32 = 0;
        // SAFETY: the strings outlive the operate call; the iterator is ended below.
        let ret = unsafe {
            sys::rados_read_op_omap_get_vals2(
                op,
                after_c.as_ptr(),
                prefix_c.as_ptr(),
                max,
                &mut iter,
                &mut more,
                &mut prval,
            );
            sys::rados_read_op_operate(op, self.handle, oid_c.as_ptr(), 0)
        };
        let result = CephError::check("rados_read_op_operate", ret)
            .and_then(|_| CephError::check(OP, prval))
            // SAFETY: the op was operated successfully, so the iterator is valid.
            .map(|_| unsafe { drain_omap(iter) });
        // SAFETY: iterator and op are ours and released once.
        unsafe {
            if !iter.is_null() {
                sys::rados_omap_get_end(iter);
            }
            sys::rados_release_read_op(op);
        }
        result
    }
}

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: we own the ioctx; no image opened on it outlives it, because
        // Image borrows its IoCtx.
        unsafe { sys::rados_ioctx_destroy(self.handle) }
    }
}

/// Copies every entry out of an omap iterator filled by a read op.
///
/// # Safety
/// `iter` must be null or an iterator returned by a successfully operated
/// read op that has not been ended yet.
unsafe fn drain_omap(iter: sys::rados_omap_iter_t) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while !iter.is_null() {
        let mut k: *mut c_char = ptr::null_mut();
        let mut v: *mut c_char = ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: the iterator is valid (caller's guarantee); the entries are
        // owned by it and copied at once.
        let r = unsafe { sys::rados_omap_get_next(iter, &mut k, &mut v, &mut len) };
        if r < 0 || k.is_null() {
            break;
        }
        // SAFETY: k is NUL-terminated, v valid for len bytes.
        let entry = unsafe {
            let key = CStr::from_ptr(k).to_string_lossy().into_owned();
            let val = if v.is_null() { Vec::new() } else { std::slice::from_raw_parts(v.cast::<u8>(), len).to_vec() };
            (key, val)
        };
        out.push(entry);
    }
    out
}
