//! ceph-csi's volume handle (`CSIIdentifier`, encoding version 1):
//! `<version:4 hex>-<len(clusterID):4 hex>-<clusterID>-<pool id:16 hex>-<uuid:36>`.
//! Volume, snapshot and group IDs share the format; only the object the UUID
//! names differs.

use std::fmt;

const VERSION: u16 = 1;
const UUID_LEN: usize = 36;
/// Everything but the clusterID: 4 + 1 + 4 + 1 + 1 + 16 + 1 + 36.
const FIXED_LEN: usize = 64;
const MAX_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CsiId {
    pub cluster_id: String,
    pub pool_id: i64,
    pub uuid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CsiIdError {
    #[error("is empty")]
    Empty,
    #[error("is {0} characters long; a ceph-csi ID has 64 to 128")]
    Length(usize),
    #[error("has encoding version {0:?}; only 0001 is known")]
    Version(String),
    #[error("has a malformed clusterID length field {0:?}")]
    ClusterLength(String),
    #[error("does not match its own clusterID length")]
    Layout,
    #[error("has a malformed pool ID {0:?}")]
    PoolId(String),
    #[error("has a malformed UUID {0:?}")]
    Uuid(String),
}

impl CsiId {
    pub(crate) fn decode(id: &str) -> Result<Self, CsiIdError> {
        if id.is_empty() {
            return Err(CsiIdError::Empty);
        }
        if !id.is_ascii() || id.len() < FIXED_LEN || id.len() > MAX_LEN {
            return Err(CsiIdError::Length(id.chars().count()));
        }
        let version = &id[0..4];
        if u16::from_str_radix(version, 16) != Ok(VERSION) {
            return Err(CsiIdError::Version(version.to_owned()));
        }
        if &id[4..5] != "-" || &id[9..10] != "-" {
            return Err(CsiIdError::Layout);
        }
        let len_field = &id[5..9];
        let cluster_len =
            u16::from_str_radix(len_field, 16).map_err(|_| CsiIdError::ClusterLength(len_field.to_owned()))? as usize;
        if id.len() != FIXED_LEN + cluster_len {
            return Err(CsiIdError::Layout);
        }
        let cluster_id = &id[10..10 + cluster_len];
        let rest = &id[10 + cluster_len..];
        // rest = "-" + 16 hex + "-" + uuid
        if !rest.starts_with('-') || &rest[17..18] != "-" {
            return Err(CsiIdError::Layout);
        }
        let pool_hex = &rest[1..17];
        let pool_id = u64::from_str_radix(pool_hex, 16)
            .ok()
            .and_then(|p| i64::try_from(p).ok())
            .filter(|_| pool_hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| CsiIdError::PoolId(pool_hex.to_owned()))?;
        let uuid = &rest[18..];
        if !is_uuid(uuid) {
            return Err(CsiIdError::Uuid(uuid.to_owned()));
        }
        Ok(Self { cluster_id: cluster_id.to_owned(), pool_id, uuid: uuid.to_owned() })
    }

    pub(crate) fn encode(&self) -> String {
        format!("{:04x}-{:04x}-{}-{:016x}-{}", VERSION, self.cluster_id.len(), self.cluster_id, self.pool_id, self.uuid)
    }
}

impl fmt::Display for CsiId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// The canonical 8-4-4-4-12 hex form that ceph-csi writes.
fn is_uuid(s: &str) -> bool {
    s.len() == UUID_LEN
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "0001-0009-rook-ceph-0000000000000002-71f1dc66-e334-4b9b-9f7c-536f4c3f03fa";

    #[test]
    fn decodes_a_real_rook_handle() {
        let id = CsiId::decode(REAL).unwrap();
        assert_eq!(id.cluster_id, "rook-ceph");
        assert_eq!(id.pool_id, 2);
        assert_eq!(id.uuid, "71f1dc66-e334-4b9b-9f7c-536f4c3f03fa");
        assert_eq!(id.encode(), REAL);
    }

    #[test]
    fn round_trips_long_cluster_ids_and_big_pools() {
        let id = CsiId {
            cluster_id: "c".repeat(64),
            pool_id: 0x7fff_ffff,
            uuid: "71f1dc66-e334-4b9b-9f7c-536f4c3f03fa".into(),
        };
        assert_eq!(CsiId::decode(&id.encode()).unwrap(), id);
    }

    #[test]
    fn rejects_malformed_ids() {
        let cases: &[(&str, CsiIdError)] = &[
            ("", CsiIdError::Empty),
            ("0001-0009-rook-ceph", CsiIdError::Length(19)),
            (&REAL.replacen("0001", "0002", 1), CsiIdError::Version("0002".into())),
            (&REAL.replacen("0009", "00zz", 1), CsiIdError::ClusterLength("00zz".into())),
            (&REAL.replacen("0009", "0008", 1), CsiIdError::Layout),
            (&REAL.replacen("0000000000000002", "000000000000000g", 1), CsiIdError::PoolId("000000000000000g".into())),
            (&REAL.replacen("0000000000000002", "8000000000000000", 1), CsiIdError::PoolId("8000000000000000".into())),
            (&REAL.replacen("-e334-", "xe334-", 1), CsiIdError::Uuid("71f1dc66xe334-4b9b-9f7c-536f4c3f03fa".into())),
        ];
        for (input, want) in cases {
            assert_eq!(CsiId::decode(input).as_ref(), Err(want), "{input}");
        }
        assert!(matches!(CsiId::decode(&"x".repeat(129)), Err(CsiIdError::Length(129))));
        assert!(matches!(CsiId::decode(&"é".repeat(40)), Err(CsiIdError::Length(40))));
    }
}
