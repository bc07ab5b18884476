//! Network fencing for RBD: a CIDR block becomes one OSD blocklist range, so
//! no client in it can write to the cluster (a lost site's nodes, before a
//! forced failover). Blocking; runs off the runtime. gRPC stays in `server`.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tracing::info;

use crate::Error;
use crate::ceph::{CephError, Cluster};

/// How long a fence lasts. Ceph has no permanent blocklist entry and its
/// default is ONE HOUR, after which a fenced site could write again unseen;
/// like ceph-csi we ask for five years, and Unfence ends it.
pub(crate) const FENCE_DURATION: Duration = Duration::from_secs(157_784_760);

/// At most this many CIDRs in one call.
pub(crate) const MAX_CIDRS: usize = 256;

/// A network block in canonical form: the address has no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `a.b.c.d/n` or `x:y::/n`; a bare address is one host (`/32`, `/128`).
    /// Host bits are refused: Ceph would store `198.51.100.7/24` as written,
    /// an entry that unfencing `198.51.100.0/24` never removes.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not a CIDR block such as 192.0.2.0/24"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        let cidr = Self { addr, prefix };
        let network = cidr.network();
        if network != addr {
            return Err(format!("{text:?} has host bits set; the block is {network}/{prefix}"));
        }
        Ok(cidr)
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let same_family = self.addr.is_ipv4() == ip.is_ipv4();
        same_family && Self { addr: ip, prefix: self.prefix }.network() == self.addr
    }

    /// How `osd blocklist ls` prints a range: `192.0.2.0:0/24`, `[2001:db8::]:0/32`.
    /// Taken as written, host bits and all: a range someone else added is
    /// listed as Ceph holds it.
    fn from_ceph_range(range: &str) -> Option<Self> {
        let (host, prefix) = range.rsplit_once('/')?;
        let host = host.strip_suffix(":0")?;
        let addr: IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= if addr.is_ipv4() { 32 } else { 128 })?;
        Some(Self { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses a request's CIDRs: at least one, every one valid, duplicates once.
pub(crate) fn parse_cidrs<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Vec<Cidr>, Error> {
    let mut out = Vec::new();
    for t in texts {
        let cidr = Cidr::parse(t).map_err(Error::Malformed)?;
        if !out.contains(&cidr) {
            out.push(cidr);
        }
    }
    if out.is_empty() {
        return Err(Error::Malformed("no CIDR given: cidrs must name at least one block".into()));
    }
    if out.len() > MAX_CIDRS {
        return Err(Error::Malformed(format!("{} CIDRs in one call; at most {MAX_CIDRS}", out.len())));
    }
    Ok(out)
}

/// The IP of a Ceph address as librados and the monitors print it:
/// `127.0.0.1:6789`, `v2:127.0.0.1:3300/0`, `[::1]:6789`, `127.0.0.1:0/123`.
fn ip_of(addr: &str) -> Option<IpAddr> {
    let addr = addr.trim().trim_start_matches("v1:").trim_start_matches("v2:").trim_start_matches("any:");
    let addr = addr.split('/').next()?;
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    addr.rsplit_once(':').map_or(addr, |(h, _)| h).parse().ok()
}

/// The ranges Ceph holds now, from `osd blocklist ls` (JSON: an array of
/// single addresses, then one of ranges). Entries past their `until` are left
/// out: the monitors drop them only on a later tick.
fn parse_fences(output: &str, now: SystemTime) -> Vec<Cidr> {
    let mut out = Vec::new();
    for array in serde_json::Deserializer::from_str(output).into_iter::<Value>().flatten() {
        for entry in array.as_array().into_iter().flatten() {
            let Some(cidr) = entry["range"].as_str().and_then(Cidr::from_ceph_range) else { continue };
            let expired = entry["until"].as_str().and_then(parse_ceph_time).is_some_and(|until| until <= now);
            if !expired && !out.contains(&cidr) {
                out.push(cidr);
            }
        }
    }
    out.sort();
    out
}

/// `2026-11-30T06:19:15.797831+0000` (the monitors print UTC).
fn parse_ceph_time(text: &str) -> Option<SystemTime> {
    let utc = text.strip_suffix("+0000")?;
    humantime::parse_rfc3339(&format!("{utc}Z")).ok()
}

fn mon(what: &str) -> impl FnOnce((CephError, String)) -> Error + '_ {
    move |(source, status)| {
        let what = if source.is(libc::EACCES) || source.is(libc::EPERM) {
            format!(
                "{what}: the user may not change the OSD blocklist; its mon caps need `allow command \"osd blocklist\"` \
                 (as Rook gives its RBD provisioner user; `profile rbd` alone allows adding, not removing)"
            )
        } else {
            what.to_owned()
        };
        Error::Mon { what, source, status }
    }
}

/// The monitors' addresses, from the monitor map: fencing their hosts would
/// cut the cluster's own daemons off.
fn monitor_ips(cluster: &Cluster) -> Result<Vec<IpAddr>, Error> {
    let out = cluster
        .mon_command(r#"{"prefix": "mon dump", "format": "json"}"#)
        .map_err(mon("cannot read the monitor map"))?;
    let map: Value = serde_json::from_str(&out).unwrap_or_default();
    let mut ips = Vec::new();
    for m in map["mons"].as_array().into_iter().flatten() {
        let vec = m["public_addrs"]["addrvec"].as_array().cloned().unwrap_or_default();
        let addrs = vec.iter().filter_map(|a| a["addr"].as_str()).chain(m["addr"].as_str());
        ips.extend(addrs.filter_map(ip_of));
    }
    Ok(ips)
}

/// Refuses, before anything is changed, a block that would fence a monitor
/// or this server's own connection to the cluster.
fn refuse_self_fencing(cluster: &Cluster, cidrs: &[Cidr]) -> Result<(), Error> {
    let monitors = monitor_ips(cluster)?;
    let own = cluster.client_addrs().map_err(Error::ceph("cannot read this server's address"))?;
    let own: Vec<IpAddr> = crate::ceph::single_addrs(&own).iter().filter_map(|a| ip_of(a)).collect();
    for cidr in cidrs {
        if let Some(ip) = monitors.iter().find(|ip| cidr.contains(**ip)) {
            return Err(Error::WrongState(format!(
                "{cidr} covers the monitor at {ip}: fencing it would cut the cluster off from itself; nothing was fenced"
            )));
        }
        if let Some(ip) = own.iter().find(|ip| cidr.contains(**ip)) {
            return Err(Error::WrongState(format!(
                "{cidr} covers this server's own address {ip}: it would fence itself off the cluster; nothing was fenced"
            )));
        }
    }
    Ok(())
}

fn blocklist_range(cluster: &Cluster, op: &str, cidr: &Cidr, expire: Option<Duration>) -> Result<(), Error> {
    let mut cmd = serde_json::json!({
        "prefix": "osd blocklist", "range": "range", "blocklistop": op, "addr": cidr.to_string(),
    });
    if let Some(expire) = expire {
        cmd["expire"] = serde_json::json!(expire.as_secs_f64());
    }
    cluster.mon_command(&cmd.to_string()).map(drop).map_err(mon(&format!("cannot {op} the blocklist range {cidr}")))
}

/// Fences every block; fencing a fenced block again renews it.
pub(crate) fn fence(cluster: &Cluster, cidrs: &[Cidr]) -> Result<(), Error> {
    refuse_self_fencing(cluster, cidrs)?;
    for cidr in cidrs {
        blocklist_range(cluster, "add", cidr, Some(FENCE_DURATION))?;
        info!(%cidr, "fenced");
    }
    Ok(())
}

/// Unfences every block; one that is not fenced is fine.
pub(crate) fn unfence(cluster: &Cluster, cidrs: &[Cidr]) -> Result<(), Error> {
    for cidr in cidrs {
        blocklist_range(cluster, "rm", cidr, None)?;
        info!(%cidr, "unfenced");
    }
    Ok(())
}

/// The blocks fenced now.
pub(crate) fn list(cluster: &Cluster) -> Result<Vec<Cidr>, Error> {
    let out = cluster
        .mon_command(r#"{"prefix": "osd blocklist ls", "format": "json"}"#)
        .map_err(mon("cannot list the blocklist"))?;
    Ok(parse_fences(&out, SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_canonically_or_say_what_is_wrong() {
        for (text, want) in [
            ("192.0.2.0/24", Some("192.0.2.0/24")),
            (" 198.51.100.0/28 ", Some("198.51.100.0/28")),
            ("198.51.100.7", Some("198.51.100.7/32")),
            ("0.0.0.0/0", Some("0.0.0.0/0")),
            ("2001:db8::/32", Some("2001:db8::/32")),
            ("2001:db8::1", Some("2001:db8::1/128")),
            ("192.0.2.5/24", None),
            ("192.0.2.0/33", None),
            ("2001:db8::/129", None),
            ("192.0.2.0/", None),
            ("192.0.2.0/-1", None),
            ("garbage", None),
            ("", None),
            ("2001:db8::1/32", None),
        ] {
            assert_eq!(Cidr::parse(text).ok().map(|c| c.to_string()).as_deref(), want, "{text:?}");
        }
        assert!(Cidr::parse("192.0.2.5/24").unwrap_err().contains("192.0.2.0/24"), "the error names the block");
    }

    #[test]
    fn requests_need_a_valid_non_empty_list() {
        assert!(matches!(parse_cidrs([]), Err(Error::Malformed(_))));
        assert!(matches!(parse_cidrs(["192.0.2.0/24", "nope"]), Err(Error::Malformed(_))));
        assert_eq!(parse_cidrs(["192.0.2.0/24", "192.0.2.0/24"]).unwrap().len(), 1);
        let many: Vec<String> = (0..=MAX_CIDRS).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)).collect();
        assert!(matches!(parse_cidrs(many.iter().map(String::as_str)), Err(Error::Malformed(_))));
    }

    #[test]
    fn containment_respects_family_and_prefix() {
        let c = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(c.contains("127.0.0.1".parse().unwrap()));
        assert!(!c.contains("128.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("203.0.113.9".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32").unwrap().contains("2001:db8:1::5".parse().unwrap()));
    }

    #[test]
    fn addresses_as_ceph_prints_them() {
        for (addr, ip) in [
            ("127.0.0.1:13300", "127.0.0.1"),
            ("v2:127.0.0.1:3300/0", "127.0.0.1"),
            ("127.0.0.1:0/3543", "127.0.0.1"),
            ("[::1]:6789", "::1"),
            ("v1:[2001:db8::2]:6789/0", "2001:db8::2"),
        ] {
            assert_eq!(ip_of(addr), Some(ip.parse().unwrap()), "{addr}");
        }
    }

    #[test]
    fn listing_reads_ranges_and_drops_expired_ones() {
        // As Pacific 16.2.15 prints it: single addresses, then ranges.
        let out = r#"[{"addr":"127.0.0.1:0/99","until":"2030-01-01T00:00:00.000000+0000"}][{"range":"192.0.2.0:0/24","until":"2030-01-01T00:00:00.000000+0000"},{"range":"[2001:db8::]:0/32","until":"2030-01-01T00:00:00.000000+0000"},{"range":"198.51.100.0:0/28","until":"2026-11-30T06:19:15.797831+0000"}]"#;
        let now = humantime::parse_rfc3339("2027-01-01T00:00:00Z").unwrap();
        let listed: Vec<String> = parse_fences(out, now).iter().map(ToString::to_string).collect();
        assert_eq!(listed, ["192.0.2.0/24", "2001:db8::/32"]);
        assert!(parse_fences("[][]", now).is_empty());
    }
}
