use std::fmt;

/// A failed librados/librbd call: which operation, and the errno it returned.
/// The errno is kept as a number because it decides the gRPC code upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub struct CephError {
    pub op: &'static str,
    pub errno: i32,
}

impl CephError {
    pub fn new(op: &'static str, errno: i32) -> Self {
        Self { op, errno }
    }

    /// Builds an error from a librados/librbd return code (negative errno).
    pub fn check(op: &'static str, ret: i32) -> Result<i32, Self> {
        if ret < 0 { Err(Self::new(op, -ret)) } else { Ok(ret) }
    }

    pub fn is(&self, errno: i32) -> bool {
        self.errno == errno
    }
}

/// For idempotent steps: a create that finds its object there (EEXIST), or a
/// remove that finds it gone (ENOENT), has nothing left to do.
pub(crate) trait AlreadyDone {
    fn or_done(self, errno: i32) -> Result<(), CephError>;
}

impl AlreadyDone for Result<(), CephError> {
    fn or_done(self, errno: i32) -> Result<(), CephError> {
        match self {
            Err(e) if e.is(errno) => Ok(()),
            r => r,
        }
    }
}

impl fmt::Display for CephError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.errno);
        // io::Error's Display appends "(os error N)"; keep only the text.
        let text = text.to_string();
        let text = text.split(" (os error").next().unwrap_or_default();
        write!(f, "{}: {} (errno {})", self.op, text, self.errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_maps_negative_returns_only() {
        assert_eq!(CephError::check("x", 3), Ok(3));
        assert_eq!(CephError::check("x", -2), Err(CephError::new("x", 2)));
    }

    #[test]
    fn only_the_named_errno_counts_as_done() {
        let gone: Result<(), CephError> = Err(CephError::new("rbd_remove", libc::ENOENT));
        assert_eq!(gone.or_done(libc::ENOENT), Ok(()));
        assert_eq!(gone.or_done(libc::EEXIST), gone);
        assert_eq!(Ok(()).or_done(libc::ENOENT), Ok(()));
    }

    #[test]
    fn display_names_op_and_errno() {
        let e = CephError::new("rbd_open", libc::ENOENT);
        assert_eq!(e.to_string(), "rbd_open: No such file or directory (errno 2)");
    }
}
