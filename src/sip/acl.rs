//! Source-address allow list for inbound SIP (CIDR blocks, like Kamailio's permissions module).

use std::net::IpAddr;

use thiserror::Error;

/// An ACL entry that is not an address or a CIDR block (the entry).
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid ACL entry {0:?}: expected an IP address or CIDR block such as 203.0.113.0/24")]
pub struct AclError(pub String);

/// Source addresses allowed to send SIP: IPv4 and IPv6 CIDR blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    blocks: Vec<(IpAddr, u8)>,
}

impl Acl {
    /// Parse entries such as `203.0.113.0/24`, `2001:db8::/32` or a single address.
    pub fn parse(entries: &[String]) -> Result<Self, AclError> {
        let mut blocks = Vec::with_capacity(entries.len());
        for e in entries {
            let (ip, len) = match e.split_once('/') {
                Some((ip, len)) => (ip, Some(len)),
                None => (e.as_str(), None),
            };
            let ip: IpAddr = ip.trim().parse().map_err(|_| AclError(e.clone()))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                Some(l) => l
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| AclError(e.clone()))?,
                None => max,
            };
            blocks.push((ip, len));
        }
        Ok(Acl { blocks })
    }

    /// Every block of `self` and of `other`.
    pub fn union(&self, other: &Acl) -> Acl {
        let mut blocks = self.blocks.clone();
        blocks.extend(other.blocks.iter().copied());
        Acl { blocks }
    }

    /// Whether `ip` is in one of the blocks (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.blocks.iter().any(|&(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), len),
            _ => false,
        })
    }
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let full = (len / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rem = len % 8;
    if rem == 0 {
        return true;
    }
    let mask = 0xFFu8 << (8 - rem);
    (a[full] & mask) == (b[full] & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let acl =
            Acl::parse(&["127.0.0.0/8".into(), "::1".into(), "203.0.113.64/27".into()]).unwrap();
        assert!(acl.allows("127.9.9.9".parse().unwrap()));
        assert!(acl.allows("::1".parse().unwrap()));
        assert!(acl.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(acl.allows("203.0.113.95".parse().unwrap()));
        assert!(!acl.allows("203.0.113.96".parse().unwrap()));
        assert!(!acl.allows("10.0.0.1".parse().unwrap()));
        assert!(Acl::parse(&["1.2.3.4/33".into()]).is_err());
        assert!(Acl::parse(&["nonsense".into()]).is_err());
        assert!(!Acl::default().allows("127.0.0.1".parse().unwrap()));
    }
}
