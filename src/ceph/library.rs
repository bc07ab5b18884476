//! What the librbd this process loaded can do. The same binary runs on
//! Pacific, Reef and Tentacle libraries (the image or host decides which), so
//! newer entry points are looked up at run time, never linked: a symbol that
//! one release lacks would stop the binary from loading on it.

use std::collections::HashMap;
use std::ffi::CStr;

use rbd_sys as sys;

/// Facts about the loaded librbd, probed once at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Library {
    /// librbd's own version (`rbd_version`), e.g. 1.16.0 on Pacific.
    pub version: (i32, i32, i32),
    /// `rbd_clone4` (Squid on): clones that take image options and a snapshot ID.
    pub clone4: bool,
    /// `rbd_group_snap_get_info` (Squid on): one group snapshot by name, with its ID.
    pub group_snap_get_info: bool,
    /// `rbd_mirror_group_enable` (no upstream release up to Tentacle).
    pub group_mirroring: bool,
}

impl Library {
    pub(crate) fn probe() -> Self {
        let (mut major, mut minor, mut extra) = (0, 0, 0);
        // SAFETY: rbd_version only writes the three integers it is given.
        unsafe { sys::rbd_version(&mut major, &mut minor, &mut extra) };
        Self {
            version: (major, minor, extra),
            clone4: exports(c"rbd_clone4"),
            group_snap_get_info: exports(c"rbd_group_snap_get_info"),
            group_mirroring: exports(c"rbd_mirror_group_enable"),
        }
    }

    /// The Ceph release whose librbd this is: every release bumps librbd's
    /// minor version by one (Pacific ships 1.16).
    pub(crate) fn release(&self) -> Option<&'static str> {
        match self.version {
            (1, 16, _) => Some("pacific"),
            (1, 17, _) => Some("quincy"),
            (1, 18, _) => Some("reef"),
            (1, 19, _) => Some("squid"),
            (1, 20, _) => Some("tentacle"),
            _ => None,
        }
    }

    pub(crate) fn version_string(&self) -> String {
        let (major, minor, extra) = self.version;
        format!("{major}.{minor}.{extra}")
    }

    /// The facts as GetIdentity's manifest carries them, so that an admin (or
    /// a test) can ask a running server which library it works with.
    pub(crate) fn manifest(&self) -> HashMap<String, String> {
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
        HashMap::from([
            ("librbd-version".to_owned(), self.version_string()),
            ("ceph-release".to_owned(), self.release().unwrap_or("unknown").to_owned()),
            ("librbd-clone4".to_owned(), yes_no(self.clone4)),
            ("librbd-group-snap-get-info".to_owned(), yes_no(self.group_snap_get_info)),
            ("librbd-group-mirroring".to_owned(), yes_no(self.group_mirroring)),
        ])
    }
}

/// Whether an already loaded object exports `name`.
fn exports(name: &CStr) -> bool {
    // SAFETY: dlsym with RTLD_DEFAULT searches the already loaded objects; the
    // name is a valid C string and the result is only compared with null.
    !unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }.is_null()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_version(minor: i32) -> Library {
        Library { version: (1, minor, 0), clone4: false, group_snap_get_info: false, group_mirroring: false }
    }

    #[test]
    fn release_follows_librbd_minor_version() {
        for (minor, want) in [
            (15, None),
            (16, Some("pacific")),
            (17, Some("quincy")),
            (18, Some("reef")),
            (19, Some("squid")),
            (20, Some("tentacle")),
            (21, None),
        ] {
            assert_eq!(with_version(minor).release(), want, "librbd 1.{minor}");
        }
    }

    #[test]
    fn the_loaded_library_is_probed() {
        let lib = Library::probe();
        assert_eq!(lib.version.0, 1, "librbd's major version");
        let manifest = lib.manifest();
        assert_eq!(manifest["librbd-version"], lib.version_string());
        // The build links only symbols every supported release exports.
        assert!(exports(c"rbd_open"));
        assert!(!exports(c"rbd_no_such_call"));
    }
}
