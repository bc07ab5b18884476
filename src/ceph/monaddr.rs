//! Monitor addresses with their protocol spelled out. librados accepts a bare
//! `ip:port` (ceph-csi's config.json usually holds such entries), but then
//! cannot tell the monitor's refusal of the credentials from a protocol
//! mismatch: it keeps hunting until `client_mount_timeout`. Measured on
//! Pacific 16.2.15: an unknown user (or a wrong key) through `127.0.0.1:13300`
//! fails after 30 s with ETIMEDOUT, through `v2:127.0.0.1:13300` or
//! `v1:127.0.0.1:13301` after 0.12 s with EACCES. A monitor greets every TCP
//! connection with its banner (`ceph v2\n` for msgr2, `ceph v027` for msgr1),
//! so reading it tells the protocol exactly.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `mon_host` with each bare `host:port` entry prefixed by the protocol its
/// monitor speaks. Entries that already name one, carry no port, or whose
/// monitor does not answer within `timeout` are left as they are. Blocking.
pub(super) fn typed(mon_host: &str, timeout: Duration) -> String {
    let entries = entries(mon_host);
    // In parallel: an unreachable monitor costs one timeout, not one each.
    std::thread::scope(|scope| {
        let probes: Vec<_> = entries
            .iter()
            .map(|entry| {
                scope.spawn(move || match bare_host_port(entry) {
                    Some(addr) => {
                        banner_protocol(addr, timeout).map_or_else(|| entry.clone(), |p| format!("{p}:{entry}"))
                    }
                    None => entry.clone(),
                })
            })
            .collect();
        probes
            .into_iter()
            .zip(&entries)
            .map(|(p, entry)| p.join().unwrap_or_else(|_| entry.clone()))
            .collect::<Vec<_>>()
    })
    .join(",")
}

/// The entries of a `mon_host` list: separated by commas, semicolons or
/// spaces outside brackets (an address vector `[v2:…,v1:…]` and an IPv6
/// `[::1]:6789` both keep their inner commas and colons).
fn entries(mon_host: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0u32;
    for c in mon_host.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth == 0 && (c == ',' || c == ';' || c.is_whitespace()) {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `host:port` for an entry that names no protocol and has a port; None for
/// `v1:`/`v2:`/`any:` entries, address vectors and port-less hosts.
fn bare_host_port(entry: &str) -> Option<&str> {
    let lower = entry.to_ascii_lowercase();
    if ["v1:", "v2:", "any:", "[v", "[a"].iter().any(|p| lower.starts_with(p)) {
        return None;
    }
    // A port follows the last colon, after the IPv6 bracket if there is one.
    let tail = entry.rsplit_once(']').map_or(entry, |(_, t)| t);
    let port = tail.rsplit_once(':')?.1;
    let ipv6_unbracketed = !entry.starts_with('[') && entry.matches(':').count() > 1;
    (!ipv6_unbracketed && !port.is_empty() && port.chars().all(|c| c.is_ascii_digit())).then_some(entry)
}

fn banner_protocol(addr: &str, timeout: Duration) -> Option<&'static str> {
    let sockaddr = addr.to_socket_addrs().ok()?.next()?;
    let mut stream = TcpStream::connect_timeout(&sockaddr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let mut banner = [0u8; 8];
    stream.read_exact(&mut banner).ok()?;
    protocol_of_banner(&banner)
}

fn protocol_of_banner(banner: &[u8]) -> Option<&'static str> {
    if banner.starts_with(b"ceph v2") {
        Some("v2")
    } else if banner.starts_with(b"ceph v0") {
        Some("v1")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn splits_lists_keeping_vectors_and_ipv6_whole() {
        assert_eq!(entries("10.0.0.1:6789,10.0.0.2:6789"), ["10.0.0.1:6789", "10.0.0.2:6789"]);
        assert_eq!(
            entries("[v2:1.2.3.4:3300,v1:1.2.3.4:6789], [::1]:6789;h:1 x"),
            ["[v2:1.2.3.4:3300,v1:1.2.3.4:6789]", "[::1]:6789", "h:1", "x"]
        );
        assert!(entries(" , ").is_empty());
    }

    #[test]
    fn only_bare_entries_with_a_port_are_probed() {
        for (entry, bare) in [
            ("10.0.0.1:6789", true),
            ("mon-a.example:3300", true),
            ("[::1]:6789", true),
            ("v2:10.0.0.1:3300", false),
            ("V1:10.0.0.1:6789", false),
            ("[v2:1.2.3.4:3300,v1:1.2.3.4:6789]", false),
            ("10.0.0.1", false),
            ("::1", false),
            ("fe80::1:6789", false),
            ("host:", false),
        ] {
            assert_eq!(bare_host_port(entry).is_some(), bare, "{entry}");
        }
    }

    #[test]
    fn banners_name_the_protocol() {
        assert_eq!(protocol_of_banner(b"ceph v2\n"), Some("v2"));
        assert_eq!(protocol_of_banner(b"ceph v027"), Some("v1"));
        assert_eq!(protocol_of_banner(b"HTTP/1.1"), None);
    }

    fn greeter(banner: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                s.write_all(banner).ok();
            }
        });
        addr
    }

    #[test]
    fn bare_entries_get_the_protocol_their_listener_greets_with() {
        let (v2, v1) = (greeter(b"ceph v2\n"), greeter(b"ceph v027"));
        // Nothing listens on port 9: left as it is, for librados to report.
        let mon_host = format!("{v2},{v1},v2:127.0.0.1:1,127.0.0.1:9");
        assert_eq!(typed(&mon_host, Duration::from_secs(2)), format!("v2:{v2},v1:{v1},v2:127.0.0.1:1,127.0.0.1:9"));
    }
}
