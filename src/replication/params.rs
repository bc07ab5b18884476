//! Parameters of replication requests, validated before anything is touched.
//! Unknown keys are ignored: classes written for ceph-csi must keep working.

use std::collections::HashMap;

use crate::ceph::MirrorImageMode;
use crate::error::ParamError;

pub(crate) const MIRRORING_MODE: &str = "mirroringMode";
pub(crate) const SCHEDULING_INTERVAL: &str = "schedulingInterval";
pub(super) const SCHEDULING_START_TIME: &str = "schedulingStartTime";
pub(super) const FLATTEN_MODE: &str = "flattenMode";
pub(super) const FORCE: &str = "force";

/// Longest value we accept for any parameter; real ones are a few characters.
const MAX_VALUE_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// As the mgr takes it: digits and one unit of m, h or d.
    pub interval: String,
    pub start_time: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlattenMode {
    Never,
    Force,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnableParams {
    pub mode: MirrorImageMode,
    pub schedule: Option<Schedule>,
    pub flatten: FlattenMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DisableParams {
    pub force: bool,
}

fn bad(key: &'static str, problem: impl Into<String>) -> ParamError {
    ParamError { key, problem: problem.into() }
}

fn get<'a>(params: &'a HashMap<String, String>, key: &'static str) -> Result<Option<&'a str>, ParamError> {
    match params.get(key) {
        None => Ok(None),
        Some(v) if v.len() > MAX_VALUE_LEN => Err(bad(key, format!("is longer than {MAX_VALUE_LEN} characters"))),
        Some(v) => Ok(Some(v.as_str())),
    }
}

impl EnableParams {
    pub(crate) fn parse(params: &HashMap<String, String>) -> Result<Self, ParamError> {
        let mode = match get(params, MIRRORING_MODE)? {
            None | Some("snapshot") => MirrorImageMode::Snapshot,
            Some("journal") => MirrorImageMode::Journal,
            Some(other) => {
                return Err(bad(MIRRORING_MODE, format!("is {other:?}; use \"snapshot\" or \"journal\"")));
            }
        };
        let interval = get(params, SCHEDULING_INTERVAL)?.map(parse_interval).transpose()?;
        let start_time = get(params, SCHEDULING_START_TIME)?.map(parse_start_time).transpose()?;
        let schedule = match (interval, start_time) {
            (None, Some(_)) => {
                return Err(bad(SCHEDULING_START_TIME, format!("needs {SCHEDULING_INTERVAL} as well")));
            }
            (None, None) => None,
            (Some(interval), start_time) => Some(Schedule { interval, start_time }),
        };
        let flatten = match get(params, FLATTEN_MODE)? {
            None | Some("never") => FlattenMode::Never,
            Some("force") => FlattenMode::Force,
            Some(other) => {
                return Err(bad(FLATTEN_MODE, format!("is {other:?}; use \"never\" or \"force\"")));
            }
        };
        Ok(Self { mode, schedule, flatten })
    }
}

impl DisableParams {
    pub(crate) fn parse(params: &HashMap<String, String>) -> Result<Self, ParamError> {
        let force = match get(params, FORCE)? {
            None => false,
            Some(v) => parse_bool(v).ok_or_else(|| bad(FORCE, format!("is {v:?}; use \"true\" or \"false\"")))?,
        };
        Ok(Self { force })
    }
}

/// The spellings Go's strconv.ParseBool accepts, since ceph-csi classes use them.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// `^\d+[mhd]$`, the only form the mgr's schedule accepts, and not zero.
fn parse_interval(v: &str) -> Result<String, ParamError> {
    let (digits, unit) = v.split_at(v.len().saturating_sub(1));
    let ok_form = !digits.is_empty()
        && digits.len() <= 6
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "m" | "h" | "d");
    if !ok_form {
        return Err(bad(SCHEDULING_INTERVAL, format!("is {v:?}; use a whole number with m, h or d, like \"5m\"")));
    }
    if digits.bytes().all(|b| b == b'0') {
        return Err(bad(SCHEDULING_INTERVAL, "must be greater than zero"));
    }
    Ok(v.to_owned())
}

/// The mgr parses start times leniently (ISO 8601 date and/or time with an
/// optional offset). We only refuse what cannot be a time, so that the mgr's
/// own check is the one that decides, and it runs before anything changes.
fn parse_start_time(v: &str) -> Result<String, ParamError> {
    let plausible = !v.is_empty()
        && v.len() <= 40
        && v.bytes().any(|b| b.is_ascii_digit())
        && v.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'T' | b'Z' | b'+' | b'.'));
    if !plausible {
        return Err(bad(SCHEDULING_START_TIME, format!("is {v:?}; use an ISO 8601 time like \"14:00:00-05:00\"")));
    }
    Ok(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params as p;

    #[test]
    fn defaults_to_snapshot_without_schedule() {
        let e = EnableParams::parse(&p(&[("unknownKey", "x")])).unwrap();
        assert_eq!(e, EnableParams { mode: MirrorImageMode::Snapshot, schedule: None, flatten: FlattenMode::Never });
    }

    #[test]
    fn reads_every_key() {
        let e = EnableParams::parse(&p(&[
            ("mirroringMode", "journal"),
            ("schedulingInterval", "12h"),
            ("schedulingStartTime", "14:00:00-05:00"),
            ("flattenMode", "force"),
        ]))
        .unwrap();
        assert_eq!(e.mode, MirrorImageMode::Journal);
        assert_eq!(e.schedule, Some(Schedule { interval: "12h".into(), start_time: Some("14:00:00-05:00".into()) }));
        assert_eq!(e.flatten, FlattenMode::Force);
    }

    #[test]
    fn rejects_bad_values() {
        for (k, v) in [
            ("mirroringMode", "Snapshot"),
            ("mirroringMode", ""),
            ("schedulingInterval", ""),
            ("schedulingInterval", "1"),
            ("schedulingInterval", "m"),
            ("schedulingInterval", "1s"),
            ("schedulingInterval", "1h30m"),
            ("schedulingInterval", "-1m"),
            ("schedulingInterval", "0m"),
            ("schedulingInterval", "1234567m"),
            ("flattenMode", "always"),
        ] {
            let err = EnableParams::parse(&p(&[(k, v)])).unwrap_err();
            assert_eq!(err.key, k, "{k}={v}");
        }
        let err = EnableParams::parse(&p(&[("schedulingStartTime", "14:00")])).unwrap_err();
        assert_eq!(err.key, SCHEDULING_START_TIME);
        let err =
            EnableParams::parse(&p(&[("schedulingInterval", "1m"), ("schedulingStartTime", "noon")])).unwrap_err();
        assert_eq!(err.key, SCHEDULING_START_TIME);
        let long = "1".repeat(300) + "m";
        assert!(EnableParams::parse(&p(&[("schedulingInterval", &long)])).unwrap_err().problem.contains("longer"));
    }

    #[test]
    fn force_accepts_go_booleans() {
        assert!(DisableParams::parse(&p(&[("force", "true")])).unwrap().force);
        assert!(DisableParams::parse(&p(&[("force", "1")])).unwrap().force);
        assert!(!DisableParams::parse(&p(&[])).unwrap().force);
        assert!(DisableParams::parse(&p(&[("force", "yes")])).is_err());
    }
}
