use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};
use std::mem::MaybeUninit;
use std::ptr;

use rbd_sys as sys;

use super::{CephError, IoCtx, c_string};

/// The pool's (or RADOS namespace's) mirroring mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMirrorMode {
    Disabled,
    Image,
    Pool,
}

/// How an image is mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorImageMode {
    Journal,
    Snapshot,
}

impl MirrorImageMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Journal => "journal",
            Self::Snapshot => "snapshot",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorState {
    Disabling,
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorInfo {
    pub global_id: String,
    pub state: MirrorState,
    pub primary: bool,
}

/// rbd-mirror's view of an image on one site (`rbd_mirror_image_status_state_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteState {
    Unknown,
    Error,
    Syncing,
    StartingReplay,
    Replaying,
    StoppingReplay,
    Stopped,
}

impl SiteState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Error => "error",
            Self::Syncing => "syncing",
            Self::StartingReplay => "starting_replay",
            Self::Replaying => "replaying",
            Self::StoppingReplay => "stopping_replay",
            Self::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteStatus {
    /// Empty for the local site; the peer's mirror uuid otherwise.
    pub mirror_uuid: String,
    pub state: SiteState,
    pub description: String,
    /// Unix seconds of the daemon's last status update.
    pub last_update: i64,
    /// Whether an rbd-mirror daemon is reporting for this site.
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalStatus {
    pub info: MirrorInfo,
    pub sites: Vec<SiteStatus>,
}

impl GlobalStatus {
    pub fn local(&self) -> Option<&SiteStatus> {
        self.sites.iter().find(|s| s.mirror_uuid.is_empty())
    }

    pub fn remotes(&self) -> impl Iterator<Item = &SiteStatus> {
        self.sites.iter().filter(|s| !s.mirror_uuid.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentSpec {
    pub pool_id: i64,
    pub pool_name: String,
    pub namespace: String,
    pub image: String,
}

impl ParentSpec {
    pub fn spec(&self) -> String {
        match self.namespace.as_str() {
            "" => format!("{}/{}", self.pool_name, self.image),
            ns => format!("{}/{}/{}", self.pool_name, ns, self.image),
        }
    }
}

/// An open RBD image; closed on drop. It borrows its IoCtx, which librbd
/// requires to outlive the image.
pub struct Image<'io> {
    handle: sys::rbd_image_t,
    name: String,
    _io: &'io IoCtx,
}

impl<'io> Image<'io> {
    pub fn open(io: &'io IoCtx, name: &str) -> Result<Self, CephError> {
        let name_c = c_string("rbd_open", name)?;
        let mut handle: sys::rbd_image_t = ptr::null_mut();
        // SAFETY: the ioctx is valid for 'io; a null snap name opens the head. On
        // success we own the image handle and close it in Drop.
        let ret = unsafe { sys::rbd_open(io.raw(), name_c.as_ptr(), &mut handle, ptr::null()) };
        CephError::check("rbd_open", ret)?;
        Ok(Self { handle, name: name.to_owned(), _io: io })
    }

    /// Opens without taking part in exclusive-lock or header-watch traffic,
    /// for calls that only read state (e.g. mirroring status).
    pub fn open_read_only(io: &'io IoCtx, name: &str) -> Result<Self, CephError> {
        let name_c = c_string("rbd_open_read_only", name)?;
        let mut handle: sys::rbd_image_t = ptr::null_mut();
        // SAFETY: as in `open`; the handle is closed in Drop.
        let ret = unsafe { sys::rbd_open_read_only(io.raw(), name_c.as_ptr(), &mut handle, ptr::null()) };
        CephError::check("rbd_open_read_only", ret)?;
        Ok(Self { handle, name: name.to_owned(), _io: io })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn raw(&self) -> sys::rbd_image_t {
        self.handle
    }

    pub fn mirror_info(&self) -> Result<MirrorInfo, CephError> {
        let mut raw = MaybeUninit::<sys::rbd_mirror_image_info_t>::zeroed();
        // SAFETY: librbd fills the struct (allocating global_id) on success;
        // rbd_mirror_image_get_info_cleanup frees what it allocated.
        let ret = unsafe {
            sys::rbd_mirror_image_get_info(self.handle, raw.as_mut_ptr(), size_of::<sys::rbd_mirror_image_info_t>())
        };
        CephError::check("rbd_mirror_image_get_info", ret)?;
        // SAFETY: filled on success, see above; cleaned up once, after copying.
        unsafe {
            let mut raw = raw.assume_init();
            let info = convert_info(&raw);
            sys::rbd_mirror_image_get_info_cleanup(&mut raw);
            Ok(info)
        }
    }

    pub fn mirror_mode(&self) -> Result<MirrorImageMode, CephError> {
        let mut mode = sys::rbd_mirror_image_mode_t(0);
        // SAFETY: plain out-parameter.
        let ret = unsafe { sys::rbd_mirror_image_get_mode(self.handle, &mut mode) };
        CephError::check("rbd_mirror_image_get_mode", ret)?;
        Ok(if mode == sys::rbd_mirror_image_mode_t::RBD_MIRROR_IMAGE_MODE_JOURNAL {
            MirrorImageMode::Journal
        } else {
            MirrorImageMode::Snapshot
        })
    }

    pub fn mirror_enable(&self, mode: MirrorImageMode) -> Result<(), CephError> {
        let raw = match mode {
            MirrorImageMode::Journal => sys::rbd_mirror_image_mode_t::RBD_MIRROR_IMAGE_MODE_JOURNAL,
            MirrorImageMode::Snapshot => sys::rbd_mirror_image_mode_t::RBD_MIRROR_IMAGE_MODE_SNAPSHOT,
        };
        // SAFETY: valid open image.
        let ret = unsafe { sys::rbd_mirror_image_enable2(self.handle, raw) };
        CephError::check("rbd_mirror_image_enable", ret).map(drop)
    }

    pub fn mirror_disable(&self, force: bool) -> Result<(), CephError> {
        // SAFETY: valid open image.
        let ret = unsafe { sys::rbd_mirror_image_disable(self.handle, force) };
        CephError::check("rbd_mirror_image_disable", ret).map(drop)
    }

    pub fn mirror_promote(&self, force: bool) -> Result<(), CephError> {
        // SAFETY: valid open image.
        let ret = unsafe { sys::rbd_mirror_image_promote(self.handle, force) };
        CephError::check("rbd_mirror_image_promote", ret).map(drop)
    }

    pub fn mirror_demote(&self) -> Result<(), CephError> {
        // SAFETY: valid open image.
        let ret = unsafe { sys::rbd_mirror_image_demote(self.handle) };
        CephError::check("rbd_mirror_image_demote", ret).map(drop)
    }

    /// Flags the (non-primary) image for resync: rbd-mirror deletes and
    /// re-creates it from the primary.
    pub fn mirror_resync(&self) -> Result<(), CephError> {
        // SAFETY: valid open image.
        let ret = unsafe { sys::rbd_mirror_image_resync(self.handle) };
        CephError::check("rbd_mirror_image_resync", ret).map(drop)
    }

    /// When the image was created, as (seconds, nanoseconds) since the epoch.
    pub fn create_timestamp(&self) -> Result<(i64, i64), CephError> {
        let mut ts = sys::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: plain out-parameter.
        let ret = unsafe { sys::rbd_get_create_timestamp(self.handle, &mut ts) };
        CephError::check("rbd_get_create_timestamp", ret)?;
        Ok((ts.tv_sec, ts.tv_nsec))
    }

    pub fn metadata_set(&self, key: &str, value: &str) -> Result<(), CephError> {
        let k = c_string("rbd_metadata_set", key)?;
        let v = c_string("rbd_metadata_set", value)?;
        // SAFETY: valid image; librbd copies both strings.
        let ret = unsafe { sys::rbd_metadata_set(self.handle, k.as_ptr(), v.as_ptr()) };
        CephError::check("rbd_metadata_set", ret).map(drop)
    }

    pub fn mirror_global_status(&self) -> Result<GlobalStatus, CephError> {
        let mut raw = MaybeUninit::<sys::rbd_mirror_image_global_status_t>::zeroed();
        // SAFETY: librbd fills the struct and allocates its strings and the
        // site_statuses array; rbd_mirror_image_global_status_cleanup frees them all.
        let ret = unsafe {
            sys::rbd_mirror_image_get_global_status(
                self.handle,
                raw.as_mut_ptr(),
                size_of::<sys::rbd_mirror_image_global_status_t>(),
            )
        };
        CephError::check("rbd_mirror_image_get_global_status", ret)?;
        // SAFETY: filled on success; everything is copied out before the
        // single cleanup call.
        unsafe {
            let mut raw = raw.assume_init();
            let status = convert_global(&raw);
            sys::rbd_mirror_image_global_status_cleanup(&mut raw);
            Ok(status)
        }
    }

    /// The image's parent, if it is a clone.
    pub fn parent(&self) -> Result<Option<ParentSpec>, CephError> {
        let mut spec = MaybeUninit::<sys::rbd_linked_image_spec_t>::zeroed();
        let mut snap = MaybeUninit::<sys::rbd_snap_spec_t>::zeroed();
        // SAFETY: on success librbd allocates strings in both specs, freed by the
        // paired rbd_linked_image_spec_cleanup / rbd_snap_spec_cleanup below.
        let ret = unsafe { sys::rbd_get_parent(self.handle, spec.as_mut_ptr(), snap.as_mut_ptr()) };
        if ret == -libc::ENOENT {
            return Ok(None);
        }
        CephError::check("rbd_get_parent", ret)?;
        // SAFETY: see above.
        unsafe {
            let mut spec = spec.assume_init();
            let mut snap = snap.assume_init();
            let parent = ParentSpec {
                pool_id: spec.pool_id,
                pool_name: owned(spec.pool_name),
                namespace: owned(spec.pool_namespace),
                image: owned(spec.image_name),
            };
            sys::rbd_linked_image_spec_cleanup(&mut spec);
            sys::rbd_snap_spec_cleanup(&mut snap);
            Ok(Some(parent))
        }
    }

    /// Removes a metadata key; an absent key is fine.
    pub fn metadata_remove(&self, key: &str) -> Result<(), CephError> {
        let k = c_string("rbd_metadata_remove", key)?;
        // SAFETY: valid image and C string.
        let ret = unsafe { sys::rbd_metadata_remove(self.handle, k.as_ptr()) };
        if ret == -libc::ENOENT {
            return Ok(());
        }
        CephError::check("rbd_metadata_remove", ret).map(drop)
    }

    /// An image metadata value, or None when the key is absent.
    pub fn metadata_get(&self, key: &str) -> Result<Option<String>, CephError> {
        let key_c = c_string("rbd_metadata_get", key)?;
        let mut buf = vec![0u8; 256];
        loop {
            let mut len = buf.len();
            // SAFETY: buf is writable for len bytes; on -ERANGE librbd sets len to
            // the size it needs.
            let ret = unsafe { sys::rbd_metadata_get(self.handle, key_c.as_ptr(), buf.as_mut_ptr().cast(), &mut len) };
            if ret == -libc::ERANGE && len > buf.len() {
                buf.resize(len, 0);
                continue;
            }
            if ret == -libc::ENOENT {
                return Ok(None);
            }
            CephError::check("rbd_metadata_get", ret)?;
            let value = CStr::from_bytes_until_nul(&buf).map(|c| c.to_string_lossy().into_owned());
            return Ok(Some(value.unwrap_or_default()));
        }
    }
}

impl Drop for Image<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the handle; it is closed exactly once.
        unsafe {
            sys::rbd_close(self.handle);
        }
    }
}

/// The mirroring mode of the ioctx's pool or namespace.
fn pool_mirror_mode(io: &IoCtx) -> Result<PoolMirrorMode, CephError> {
    let mut mode = sys::rbd_mirror_mode_t(0);
    // SAFETY: plain out-parameter on a valid ioctx.
    let ret = unsafe { sys::rbd_mirror_mode_get(io.raw(), &mut mode) };
    CephError::check("rbd_mirror_mode_get", ret)?;
    Ok(match mode {
        sys::rbd_mirror_mode_t::RBD_MIRROR_MODE_IMAGE => PoolMirrorMode::Image,
        sys::rbd_mirror_mode_t::RBD_MIRROR_MODE_POOL => PoolMirrorMode::Pool,
        _ => PoolMirrorMode::Disabled,
    })
}

impl IoCtx {
    pub fn mirror_mode(&self) -> Result<PoolMirrorMode, CephError> {
        pool_mirror_mode(self)
    }
}

/// Copies a C string owned by librbd; null becomes "".
///
/// # Safety
/// `p` must be null or a valid NUL-terminated string.
pub(super) unsafe fn owned(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// # Safety
/// `raw` must have been filled by librbd.
unsafe fn convert_info(raw: &sys::rbd_mirror_image_info_t) -> MirrorInfo {
    let state = match raw.state {
        sys::rbd_mirror_image_state_t::RBD_MIRROR_IMAGE_DISABLING => MirrorState::Disabling,
        sys::rbd_mirror_image_state_t::RBD_MIRROR_IMAGE_ENABLED => MirrorState::Enabled,
        _ => MirrorState::Disabled,
    };
    // SAFETY: global_id is null or a librbd-owned C string.
    MirrorInfo { global_id: unsafe { owned(raw.global_id) }, state, primary: raw.primary }
}

/// # Safety
/// `raw` must have been filled by librbd: `site_statuses` holds
/// `site_statuses_count` entries (or is null).
unsafe fn convert_global(raw: &sys::rbd_mirror_image_global_status_t) -> GlobalStatus {
    let count = raw.site_statuses_count as usize;
    let sites = if raw.site_statuses.is_null() || count == 0 {
        Vec::new()
    } else {
        // SAFETY: see the function's contract; the strings are librbd's.
        unsafe { std::slice::from_raw_parts(raw.site_statuses, count) }
            .iter()
            // SAFETY: both strings are null or librbd-owned C strings.
            .map(|s| SiteStatus {
                mirror_uuid: unsafe { owned(s.mirror_uuid) },
                state: convert_site_state(s.state),
                // SAFETY: as above.
                description: unsafe { owned(s.description) },
                last_update: s.last_update,
                up: s.up,
            })
            .collect()
    };
    // SAFETY: see the function's contract.
    GlobalStatus { info: unsafe { convert_info(&raw.info) }, sites }
}

/// Pages of the pool-wide mirror listings: a few round trips per thousand
/// images.
const LIST_PAGE: usize = 1024;

/// One image of the pool-wide status listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedStatus {
    pub image_id: String,
    pub name: String,
    /// `status.info.primary` is NOT filled by this listing (librbd leaves it
    /// false); `mirror_roles` says who is primary.
    pub status: GlobalStatus,
}

impl IoCtx {
    /// Every mirror-enabled image of the pool (or namespace) with rbd-mirror's
    /// statuses of it, in a few listing calls instead of one open per image.
    pub fn mirror_statuses(&self) -> Result<Vec<ListedStatus>, CephError> {
        let mut out = Vec::new();
        let mut start = CString::default();
        loop {
            let mut ids: Vec<*mut std::os::raw::c_char> = vec![std::ptr::null_mut(); LIST_PAGE];
            // SAFETY: a C struct of pointers and integers: all zero (null
            // pointers) is a valid value, and librbd overwrites it.
            let mut raws: Vec<sys::rbd_mirror_image_global_status_t> =
                (0..LIST_PAGE).map(|_| unsafe { std::mem::zeroed() }).collect();
            let mut len = LIST_PAGE;
            // SAFETY: both arrays hold LIST_PAGE entries; librbd fills `len`
            // of them and allocates their strings, freed by the paired cleanup.
            let ret = unsafe {
                sys::rbd_mirror_image_global_status_list(
                    self.raw(),
                    start.as_ptr(),
                    LIST_PAGE,
                    ids.as_mut_ptr(),
                    raws.as_mut_ptr(),
                    &mut len,
                )
            };
            CephError::check("rbd_mirror_image_global_status_list", ret)?;
            // SAFETY: `len` entries were filled; copied out before the cleanup.
            unsafe {
                for i in 0..len {
                    out.push(ListedStatus {
                        image_id: owned(ids[i]),
                        name: owned(raws[i].name),
                        status: convert_global(&raws[i]),
                    });
                }
                sys::rbd_mirror_image_global_status_list_cleanup(ids.as_mut_ptr(), raws.as_mut_ptr(), len);
            }
            match out.last() {
                Some(last) if len == LIST_PAGE => {
                    start = c_string("rbd_mirror_image_global_status_list", &last.image_id)?
                }
                _ => return Ok(out),
            }
        }
    }

    /// Every mirror-enabled image's mode and whether it is primary here, by
    /// image ID.
    pub fn mirror_roles(&self) -> Result<HashMap<String, (MirrorImageMode, MirrorInfo)>, CephError> {
        let mut out = HashMap::new();
        let mut start = CString::default();
        loop {
            let mut ids: Vec<*mut std::os::raw::c_char> = vec![std::ptr::null_mut(); LIST_PAGE];
            let mut modes: Vec<sys::rbd_mirror_image_mode_t> = vec![sys::rbd_mirror_image_mode_t(0); LIST_PAGE];
            // SAFETY: as above, all zero is a valid value of this C struct.
            let mut infos: Vec<sys::rbd_mirror_image_info_t> =
                (0..LIST_PAGE).map(|_| unsafe { std::mem::zeroed() }).collect();
            let mut len = LIST_PAGE;
            // SAFETY: the three arrays hold LIST_PAGE entries; librbd fills
            // `len` of them (allocating ids and global ids), freed by the
            // paired cleanup; a null filter lists every mode.
            let ret = unsafe {
                sys::rbd_mirror_image_info_list(
                    self.raw(),
                    std::ptr::null_mut(),
                    start.as_ptr(),
                    LIST_PAGE,
                    ids.as_mut_ptr(),
                    modes.as_mut_ptr(),
                    infos.as_mut_ptr(),
                    &mut len,
                )
            };
            CephError::check("rbd_mirror_image_info_list", ret)?;
            let mut last = String::new();
            // SAFETY: `len` entries were filled; copied out before the cleanup.
            unsafe {
                for i in 0..len {
                    let mode = if modes[i] == sys::rbd_mirror_image_mode_t::RBD_MIRROR_IMAGE_MODE_JOURNAL {
                        MirrorImageMode::Journal
                    } else {
                        MirrorImageMode::Snapshot
                    };
                    last = owned(ids[i]);
                    out.insert(last.clone(), (mode, convert_info(&infos[i])));
                }
                sys::rbd_mirror_image_info_list_cleanup(ids.as_mut_ptr(), infos.as_mut_ptr(), len);
            }
            if len < LIST_PAGE {
                return Ok(out);
            }
            start = c_string("rbd_mirror_image_info_list", &last)?;
        }
    }
}

fn convert_site_state(raw: sys::rbd_mirror_image_status_state_t) -> SiteState {
    use sys::rbd_mirror_image_status_state_t as S;
    match raw {
        S::MIRROR_IMAGE_STATUS_STATE_ERROR => SiteState::Error,
        S::MIRROR_IMAGE_STATUS_STATE_SYNCING => SiteState::Syncing,
        S::MIRROR_IMAGE_STATUS_STATE_STARTING_REPLAY => SiteState::StartingReplay,
        S::MIRROR_IMAGE_STATUS_STATE_REPLAYING => SiteState::Replaying,
        S::MIRROR_IMAGE_STATUS_STATE_STOPPING_REPLAY => SiteState::StoppingReplay,
        S::MIRROR_IMAGE_STATUS_STATE_STOPPED => SiteState::Stopped,
        _ => SiteState::Unknown,
    }
}

/// A member image of an RBD group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub pool_id: i64,
    pub image: String,
}

/// RBD groups of one pool (and RADOS namespace).
impl IoCtx {
    pub fn group_create(&self, name: &str) -> Result<(), CephError> {
        let n = c_string("rbd_group_create", name)?;
        // SAFETY: valid ioctx and C string.
        let ret = unsafe { sys::rbd_group_create(self.raw(), n.as_ptr()) };
        CephError::check("rbd_group_create", ret).map(drop)
    }

    pub fn group_remove(&self, name: &str) -> Result<(), CephError> {
        let n = c_string("rbd_group_remove", name)?;
        // SAFETY: valid ioctx and C string.
        let ret = unsafe { sys::rbd_group_remove(self.raw(), n.as_ptr()) };
        CephError::check("rbd_group_remove", ret).map(drop)
    }

    /// Adds an image (in `image_io`'s pool) to a group of this pool.
    pub fn group_image_add(&self, group: &str, image_io: &IoCtx, image: &str) -> Result<(), CephError> {
        let g = c_string("rbd_group_image_add", group)?;
        let i = c_string("rbd_group_image_add", image)?;
        // SAFETY: valid ioctxs and C strings for the duration of the call.
        let ret = unsafe { sys::rbd_group_image_add(self.raw(), g.as_ptr(), image_io.raw(), i.as_ptr()) };
        CephError::check("rbd_group_image_add", ret).map(drop)
    }

    pub fn group_image_remove(&self, group: &str, image_io: &IoCtx, image: &str) -> Result<(), CephError> {
        let g = c_string("rbd_group_image_remove", group)?;
        let i = c_string("rbd_group_image_remove", image)?;
        // SAFETY: valid ioctxs and C strings for the duration of the call.
        let ret = unsafe { sys::rbd_group_image_remove(self.raw(), g.as_ptr(), image_io.raw(), i.as_ptr()) };
        CephError::check("rbd_group_image_remove", ret).map(drop)
    }

    /// Unlinks an image from a group by its ID: the way to unlink one that
    /// has no name any more (moved to the trash by rbd-mirror's deleter).
    pub fn group_image_remove_by_id(&self, group: &str, image_io: &IoCtx, image_id: &str) -> Result<(), CephError> {
        let g = c_string("rbd_group_image_remove_by_id", group)?;
        let i = c_string("rbd_group_image_remove_by_id", image_id)?;
        // SAFETY: valid ioctxs and C strings for the duration of the call.
        let ret = unsafe { sys::rbd_group_image_remove_by_id(self.raw(), g.as_ptr(), image_io.raw(), i.as_ptr()) };
        CephError::check("rbd_group_image_remove_by_id", ret).map(drop)
    }

    /// `(pool ID, image ID)` of every image a group links, read from the
    /// group's header (names cannot be had for images in the trash).
    pub fn group_image_ids(&self, group: &str) -> Result<Vec<(i64, String)>, CephError> {
        let dir = self.omap_get("rbd_group_directory", &[&format!("name_{group}")])?;
        let Some(raw) = dir.get(&format!("name_{group}")) else {
            return Err(CephError::new("rbd_group_image_ids", libc::ENOENT));
        };
        let group_id = String::from_utf8_lossy(raw.get(4..).unwrap_or_default()).into_owned();
        let entries = self.omap_list(&format!("rbd_group_header.{group_id}"), "image_", "", 1024)?;
        Ok(entries
            .into_iter()
            .filter_map(|(k, _)| {
                let (pool, id) = k.strip_prefix("image_")?.split_once('_')?;
                Some((i64::from_str_radix(pool, 16).ok()?, id.to_owned()))
            })
            .collect())
    }

    pub fn group_image_list(&self, group: &str) -> Result<Vec<GroupMember>, CephError> {
        let g = c_string("rbd_group_image_list", group)?;
        let entry = size_of::<sys::rbd_group_image_info_t>();
        let mut capacity = 8usize;
        loop {
            let mut infos: Vec<sys::rbd_group_image_info_t> =
                // SAFETY: all-zero is a valid "empty" value for this plain C struct.
                (0..capacity).map(|_| unsafe { std::mem::zeroed() }).collect();
            let mut count = capacity;
            // SAFETY: `infos` has room for `count` entries; on success librbd fills
            // `count` of them and allocates their names, which
            // rbd_group_image_list_cleanup frees.
            let ret =
                unsafe { sys::rbd_group_image_list(self.raw(), g.as_ptr(), infos.as_mut_ptr(), entry, &mut count) };
            if ret == -libc::ERANGE && count > capacity {
                capacity = count;
                continue;
            }
            CephError::check("rbd_group_image_list", ret)?;
            // SAFETY: the first `count` entries were filled by librbd.
            let members = infos[..count]
                .iter()
                .map(|i| GroupMember { pool_id: i.pool, image: unsafe { owned(i.name) } })
                .collect();
            // SAFETY: cleans up exactly the entries librbd filled.
            unsafe { sys::rbd_group_image_list_cleanup(infos.as_mut_ptr(), entry, count) };
            return Ok(members);
        }
    }
}

impl Image<'_> {
    /// The group the image belongs to, as (pool ID, group name), if any.
    pub fn group(&self) -> Result<Option<(i64, String)>, CephError> {
        let mut info = MaybeUninit::<sys::rbd_group_info_t>::zeroed();
        let size = size_of::<sys::rbd_group_info_t>();
        // SAFETY: librbd fills the struct and allocates its name; the paired
        // rbd_group_info_cleanup frees it.
        let ret = unsafe { sys::rbd_get_group(self.handle, info.as_mut_ptr(), size) };
        CephError::check("rbd_get_group", ret)?;
        // SAFETY: filled on success; cleaned up once after copying.
        unsafe {
            let mut info = info.assume_init();
            let name = owned(info.name);
            let pool = info.pool;
            sys::rbd_group_info_cleanup(&mut info, size);
            // A pool of -1 (and no name) means "in no group".
            Ok((pool >= 0 && !name.is_empty()).then_some((pool, name)))
        }
    }
}
