//! Credentials from a request's `secrets`, as ceph-csi reads them.

use std::collections::HashMap;
use std::fmt;

pub const USER_ID: &str = "userID";
pub const USER_KEY: &str = "userKey";

/// A cephx user and key. Debug never shows the key, so a Credentials value can
/// sit in any struct that is logged without leaking it.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("key", &"<redacted>").finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets lack {0}; the replication secret must hold userID and userKey")]
    Missing(&'static str),
    #[error("secret userID is not a valid cephx user name")]
    BadUser,
    // Deliberately says nothing about the value.
    #[error("secret userKey is not a cephx key (base64 text)")]
    BadKey,
}

impl Credentials {
    pub fn from_secrets(secrets: &HashMap<String, String>) -> Result<Self, SecretsError> {
        let user = secrets.get(USER_ID).map(|s| s.trim()).unwrap_or_default();
        if user.is_empty() {
            return Err(SecretsError::Missing(USER_ID));
        }
        let key = secrets.get(USER_KEY).map(|s| s.trim()).unwrap_or_default();
        if key.is_empty() {
            return Err(SecretsError::Missing(USER_KEY));
        }
        // ceph-csi users are plain names ("csi-rbd-provisioner"); the
        // "client." prefix is added when connecting.
        let user = user.strip_prefix("client.").unwrap_or(user);
        if user.is_empty()
            || user.len() > 128
            || !user.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(SecretsError::BadUser);
        }
        if key.len() > 256 || !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) {
            return Err(SecretsError::BadKey);
        }
        Ok(Self { user: user.to_owned(), key: key.to_owned() })
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reads_user_and_key() {
        let c =
            Credentials::from_secrets(&secrets(&[("userID", "csi"), ("userKey", "QUJD+/=="), ("other", "x")])).unwrap();
        assert_eq!(c.user, "csi");
        assert_eq!(c.key(), "QUJD+/==");
        assert!(!format!("{c:?}").contains("QUJD"));
        let c = Credentials::from_secrets(&secrets(&[("userID", "client.csi"), ("userKey", "QUJD")])).unwrap();
        assert_eq!(c.user, "csi");
    }

    #[test]
    fn rejects_missing_and_malformed() {
        assert_eq!(Credentials::from_secrets(&secrets(&[])).unwrap_err(), SecretsError::Missing(USER_ID));
        assert_eq!(
            Credentials::from_secrets(&secrets(&[("userID", "u")])).unwrap_err(),
            SecretsError::Missing(USER_KEY)
        );
        assert_eq!(
            Credentials::from_secrets(&secrets(&[("userID", "u"), ("userKey", " ")])).unwrap_err(),
            SecretsError::Missing(USER_KEY)
        );
        assert_eq!(
            Credentials::from_secrets(&secrets(&[("userID", "a b"), ("userKey", "QUJD")])).unwrap_err(),
            SecretsError::BadUser
        );
        let err = Credentials::from_secrets(&secrets(&[("userID", "u"), ("userKey", "not a key!")])).unwrap_err();
        assert_eq!(err, SecretsError::BadKey);
        assert!(!err.to_string().contains("not a key"));
    }
}
