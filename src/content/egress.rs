//! Where the cell connects on a workspace's behalf: the clones of its repositories and the
//! pulls of its images. Those URLs are a member's to choose, and the cell connects from the
//! host's own network, where its API, its admin services and the cloud's metadata service are
//! one address away. A destination is refused when any address its name resolves to is a
//! loopback, link-local, unspecified, multicast or cloud metadata address, or one of this
//! host's own, unless the operator allows it (`workspace.allow_destinations`). The check is
//! made before connecting and the answer never says whether a refused port is open; the
//! connection then goes to the very addresses that were checked (pinned), so a name that
//! resolves differently a moment later (DNS rebinding) changes nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Addresses of the clouds' instance metadata services that are not link-local.
const METADATA: &[IpAddr] = &[
    // Alibaba Cloud.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // Azure's wire server.
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    // AWS over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error(
        "{host} is not reachable from this cell's workspaces: it is this host or a loopback, link-local or metadata address, or the organization allows its workspaces no outbound network (an operator can allow it with workspace.allow_destinations)"
    )]
    Refused { host: String },
    #[error("cannot resolve {host}: {message}")]
    Unresolved { host: String, message: String },
}

/// One destination the operator allows: an address or network, on every port or one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Allowed {
    net: ipnet::IpNet,
    port: Option<u16>,
}

/// The cell's rule for outgoing connections made for workspaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    allowed: Vec<Allowed>,
    /// Only the operator's allowed destinations (for an organization whose workspaces have
    /// no outbound network: the cell does not fetch from the internet for them either).
    only_allowed: bool,
    /// The operator's extra CA certificates (`tls.trust_bundle`), for clones and pulls.
    trust: Option<Trust>,
}

/// Shared extra trust; two rules are equal when they share the same.
#[derive(Debug, Clone)]
struct Trust(std::sync::Arc<crate::trust::Outbound>);

impl PartialEq for Trust {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Trust {}

impl Egress {
    /// The rule with the operator's allowed destinations: `ADDR`, `ADDR:PORT`, `NET/LEN`,
    /// `[V6ADDR]:PORT` or `[V6NET/LEN]:PORT`.
    pub fn new(allow: &[String]) -> Result<Egress, String> {
        let allowed = allow
            .iter()
            .map(|a| parse_allowed(a).ok_or_else(|| format!("{a:?} is not an address, network or address:port like 10.0.0.5:443 or 192.168.0.0/16")))
            .collect::<Result<_, _>>()?;
        Ok(Egress {
            allowed,
            only_allowed: false,
            trust: None,
        })
    }

    /// The same rule, trusting `trust`'s CA certificates besides the host's.
    pub fn with_trust(mut self, trust: Option<std::sync::Arc<crate::trust::Outbound>>) -> Egress {
        self.trust = trust.map(Trust);
        self
    }

    /// The extra CA certificates clones and pulls trust, if any.
    pub fn trust(&self) -> Option<&crate::trust::Outbound> {
        self.trust.as_ref().map(|t| t.0.as_ref())
    }

    /// The same rule reaching only the operator's allowed destinations.
    pub fn only_allowed(&self) -> Egress {
        Egress {
            allowed: self.allowed.clone(),
            only_allowed: true,
            trust: self.trust.clone(),
        }
    }

    /// Whether the cell may connect to `addr` for a workspace.
    pub fn permits(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        if self
            .allowed
            .iter()
            .any(|a| a.net.contains(&ip) && a.port.is_none_or(|p| p == addr.port()))
        {
            return true;
        }
        !self.only_allowed && !is_internal(ip) && !host_addresses().contains(&ip)
    }

    /// Whether `ip` may be reached on some port (for resolvers, which do not know the port).
    pub fn permits_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allowed.iter().any(|a| a.net.contains(&ip))
            || (!self.only_allowed && !is_internal(ip) && !host_addresses().contains(&ip))
    }

    /// Checks the host and port of a URL the cell is about to fetch.
    pub async fn check_url(&self, url: &url::Url) -> Result<(), EgressError> {
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(443);
        self.resolve(host, port).await.map(|_| ())
    }

    /// An HTTP client's name resolver that hands out permitted addresses only, and a redirect
    /// policy that follows no redirect to a refused address: together they keep a fetch
    /// within this rule however the server answers.
    pub fn for_http(&self) -> (std::sync::Arc<Resolver>, reqwest::redirect::Policy) {
        let for_redirects = self.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            let url = attempt.url();
            let literal = url
                .host_str()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                .and_then(|h| h.parse::<IpAddr>().ok());
            match literal {
                Some(ip)
                    if !for_redirects.permits(SocketAddr::new(
                        ip,
                        url.port_or_known_default().unwrap_or(443),
                    )) =>
                {
                    attempt.error(EgressError::Refused {
                        host: ip.to_string(),
                    })
                }
                _ => attempt.follow(),
            }
        });
        (std::sync::Arc::new(Resolver(self.clone())), policy)
    }

    /// The addresses `host` resolves to for `port`, all of them permitted; refused as a whole
    /// if any is not (an attacker who controls a name may mix in one of ours).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| EgressError::Unresolved {
                    host: host.to_owned(),
                    message: e.to_string(),
                })?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(EgressError::Unresolved {
                host: host.to_owned(),
                message: "no address".into(),
            });
        }
        if addrs.iter().all(|a| self.permits(*a)) {
            Ok(addrs)
        } else {
            Err(EgressError::Refused {
                host: host.to_owned(),
            })
        }
    }
}

/// Resolves names for an HTTP client, refusing any name with an address the rule refuses.
pub struct Resolver(Egress);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() || !addrs.iter().all(|a| egress.permits_ip(a.ip())) {
                return Err(Box::new(EgressError::Refused { host }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Loopback, unspecified, link-local (where clouds keep their metadata service), multicast,
/// broadcast, "this network" and the other metadata addresses.
fn is_internal(ip: IpAddr) -> bool {
    if METADATA.contains(&ip) {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
        }
    }
}

/// This host's own addresses (the cell may listen on any of them): IPv4 from the kernel's
/// local routing table, IPv6 from the interfaces.
fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<Ipv4Addr> = None;
        for line in trie.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("|-- ") {
                last = rest.parse().ok();
            } else if t.contains("/32 host LOCAL")
                && let Some(ip) = last
            {
                out.push(IpAddr::V4(ip));
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in text.lines() {
            if let Some(hex) = line.split_whitespace().next()
                && let Ok(n) = u128::from_str_radix(hex, 16)
            {
                out.push(IpAddr::V6(Ipv6Addr::from(n)));
            }
        }
    }
    out
}

fn parse_allowed(s: &str) -> Option<Allowed> {
    let s = s.trim();
    let net = |t: &str| -> Option<ipnet::IpNet> {
        t.parse::<ipnet::IpNet>()
            .ok()
            .or_else(|| t.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some(Allowed {
            net: net(inner)?,
            port,
        });
    }
    if let Some(n) = net(s) {
        return Some(Allowed { net: n, port: None });
    }
    let (addr, port) = s.rsplit_once(':')?;
    Some(Allowed {
        net: net(addr)?,
        port: Some(port.parse().ok()?),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_link_local_metadata_and_this_host_are_refused_public_and_private_networks_not() {
        let e = Egress::default();
        for refused in [
            "127.0.0.1:8080",
            "127.1.2.3:22",
            "0.0.0.0:80",
            "169.254.169.254:80",
            "100.100.100.200:80",
            "168.63.129.16:80",
            "[::1]:443",
            "[::ffff:127.0.0.1]:443",
            "[fe80::1]:443",
            "[fd00:ec2::254]:80",
            "224.0.0.1:80",
        ] {
            assert!(!e.permits(sa(refused)), "{refused}");
        }
        for permitted in [
            "140.82.112.3:443",
            "10.1.2.3:443",
            "192.168.7.7:22",
            "[2606:4700::1]:443",
        ] {
            assert!(e.permits(sa(permitted)), "{permitted}");
        }
        // This host's own addresses: whatever it listens on.
        for ip in host_addresses() {
            assert!(!e.permits(SocketAddr::new(ip, 8080)), "{ip}");
        }
    }

    #[test]
    fn the_operator_allows_addresses_networks_and_single_ports() {
        let e = Egress::new(&[
            "127.0.0.1:5000".into(),
            "169.254.0.0/16".into(),
            "[::1]:22".into(),
        ])
        .unwrap();
        assert!(e.permits(sa("127.0.0.1:5000")));
        assert!(!e.permits(sa("127.0.0.1:8080")), "only the port allowed");
        assert!(e.permits(sa("169.254.169.254:80")));
        assert!(e.permits(sa("[::1]:22")));
        assert!(!e.permits(sa("[::1]:23")));
        assert!(Egress::new(&["not an address".into()]).is_err());
        // For an organization without outbound network: the allowed destinations only.
        let offline = e.only_allowed();
        assert!(offline.permits(sa("127.0.0.1:5000")));
        assert!(!offline.permits(sa("140.82.112.3:443")));
        assert!(Egress::new(&["127.0.0.1:99999".into()]).is_err());
    }

    #[tokio::test]
    async fn names_are_refused_when_any_address_is_and_the_error_says_nothing_of_the_port() {
        let e = Egress::default();
        let refused = e.resolve("localhost", 8080).await.unwrap_err();
        let closed = e.resolve("localhost", 1).await.unwrap_err();
        assert!(matches!(refused, EgressError::Refused { .. }), "{refused}");
        assert_eq!(refused.to_string(), closed.to_string());
        assert!(e.resolve("127.0.0.1", 22).await.is_err());
        assert_eq!(
            e.resolve("140.82.112.3", 443).await.unwrap(),
            vec![sa("140.82.112.3:443")]
        );
    }
}
