//! What is being measured: a subscribe URL template, a publish URL template (both with a
//! `{topic}` placeholder), and the server's process ids. Presets fill the templates for
//! herald and nginx + nchan. Only addresses in the loopback range 127.0.0.0/8 are
//! accepted: this tool never sends traffic anywhere else.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use serde::Serialize;

/// A URL template split into what a raw HTTP client needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Where to connect (always in 127.0.0.0/8).
    pub addr: SocketAddrV4,
    /// The `Host` header value (`host:port` as written in the URL).
    pub host: String,
    /// Path and query with a `{topic}` placeholder.
    pub path_template: String,
}

impl Endpoint {
    /// Parses `http://HOST[:PORT]/path?query` where HOST is a 127.x.y.z literal or
    /// `localhost`; the template must contain `{topic}`.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let slash = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(slash);
        let addr = loopback_addr(authority).map_err(|e| format!("{url}: {e}"))?;
        if !path.contains("{topic}") {
            return Err(format!("{url}: the template needs a {{topic}} placeholder"));
        }
        Ok(Endpoint {
            addr,
            host: authority.to_owned(),
            path_template: path.to_owned(),
        })
    }

    /// The path for one topic.
    pub fn path(&self, topic: &str) -> String {
        self.path_template.replace("{topic}", topic)
    }
}

/// Resolves `host[:port]` to a loopback socket address, refusing anything else.
pub fn loopback_addr(authority: &str) -> Result<SocketAddrV4, String> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("bad port {port:?}"))?;
            (host, port)
        }
        None => (authority, 80),
    };
    let ip = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse::<Ipv4Addr>()
            .map_err(|_| format!("host {host:?} is not an IPv4 literal or localhost"))?
    };
    if !ip.is_loopback() || port == 0 {
        return Err(format!(
            "{ip}:{port} is not a loopback address with a port (only 127.0.0.0/8 may be targeted)"
        ));
    }
    Ok(SocketAddrV4::new(ip, port))
}

/// The kinds of server with preset URL templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// herald: `/events?topic=T` and `/publish?topic=T`.
    Herald,
    /// nginx + nchan with the locations `peers` writes: `/sub/T` and `/pub/T`.
    Nchan,
}

impl Preset {
    /// The (subscribe, publish) URL templates for a server at `addr`.
    pub fn templates(self, addr: SocketAddr) -> (String, String) {
        match self {
            Preset::Herald => (
                format!("http://{addr}/events?topic={{topic}}"),
                format!("http://{addr}/publish?topic={{topic}}"),
            ),
            Preset::Nchan => (
                format!("http://{addr}/sub/{{topic}}"),
                format!("http://{addr}/pub/{{topic}}"),
            ),
        }
    }
}

/// One more node of a clustered target: its own subscribe and publish endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    /// Where this node's subscribers connect.
    pub subscribe: Endpoint,
    /// Where events are published through this node.
    pub publish: Endpoint,
}

/// One server under test (one process, or several nodes sharing one bus).
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// A label for reports (`herald`, `nchan`, or what the user called it).
    pub name: String,
    /// Where subscribers connect (the first node's endpoint for a cluster).
    pub subscribe: Endpoint,
    /// Where events are published (the first node's endpoint for a cluster).
    pub publish: Endpoint,
    /// The other nodes of a cluster: worker `w` subscribes on node `w % nodes` and publish
    /// connection `c` goes through node `c % nodes`. Empty for a single server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub more_nodes: Vec<Node>,
    /// The server's processes (memory and CPU are summed over them).
    pub pids: Vec<u32>,
}

impl Target {
    /// A target from URL templates and pids; each pid's direct children are added (an
    /// nginx master brings its workers), duplicates removed.
    pub fn new(name: &str, sub_url: &str, pub_url: &str, pids: &[u32]) -> Result<Target, String> {
        let mut all = pids.to_vec();
        for &pid in pids {
            all.extend(crate::procfs::children(pid));
        }
        all.sort_unstable();
        all.dedup();
        Ok(Target {
            name: name.to_owned(),
            subscribe: Endpoint::parse(sub_url)?,
            publish: Endpoint::parse(pub_url)?,
            more_nodes: Vec::new(),
            pids: all,
        })
    }

    /// A cluster target: nodes given as (subscribe, publish) URL templates, the first one
    /// first; `pids` as for [`Target::new`] (every node, plus the bus if it is a process).
    pub fn cluster(name: &str, nodes: &[(String, String)], pids: &[u32]) -> Result<Target, String> {
        let Some(((sub, publish), rest)) = nodes.split_first() else {
            return Err("a cluster needs at least one node".into());
        };
        let mut target = Target::new(name, sub, publish, pids)?;
        for (sub, publish) in rest {
            target.more_nodes.push(Node {
                subscribe: Endpoint::parse(sub)?,
                publish: Endpoint::parse(publish)?,
            });
        }
        Ok(target)
    }

    /// Every node's subscribe endpoint, the first node first.
    pub fn subscribe_endpoints(&self) -> Vec<&Endpoint> {
        std::iter::once(&self.subscribe)
            .chain(self.more_nodes.iter().map(|n| &n.subscribe))
            .collect()
    }

    /// Every node's publish endpoint, the first node first.
    pub fn publish_endpoints(&self) -> Vec<Endpoint> {
        std::iter::once(&self.publish)
            .chain(self.more_nodes.iter().map(|n| &n.publish))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:8080/events?topic={topic}").unwrap();
        assert_eq!(e.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(e.host, "127.0.0.1:8080");
        assert_eq!(e.path("a"), "/events?topic=a");
        let e = Endpoint::parse("http://localhost:9/sub/{topic}").unwrap();
        assert_eq!(e.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(
            Endpoint::parse("http://127.9.9.9/p/{topic}").unwrap().addr,
            "127.9.9.9:80".parse().unwrap()
        );
    }

    #[test]
    fn only_loopback() {
        for url in [
            "http://10.0.0.1:80/{topic}",
            "http://192.168.1.1:80/{topic}",
            "http://8.8.8.8:80/{topic}",
            "http://example.com:80/{topic}",
            "https://127.0.0.1:443/{topic}",
            "http://127.0.0.1:0/{topic}",
            "http://127.0.0.1:80/no-placeholder",
            "http://[::1]:80/{topic}",
        ] {
            assert!(Endpoint::parse(url).is_err(), "{url} must be refused");
        }
    }

    #[test]
    fn presets() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let (s, p) = Preset::Nchan.templates(addr);
        assert_eq!(s, "http://127.0.0.1:1/sub/{topic}");
        assert_eq!(p, "http://127.0.0.1:1/pub/{topic}");
        let (s, _) = Preset::Herald.templates(addr);
        assert!(Endpoint::parse(&s).is_ok());
    }

    #[test]
    fn cluster_nodes() {
        let nodes: Vec<(String, String)> = (1..=3)
            .map(|port| Preset::Herald.templates(SocketAddr::from(([127, 0, 0, 1], port))))
            .collect();
        let t = Target::cluster("c", &nodes, &[]).unwrap();
        let subs: Vec<u16> = t
            .subscribe_endpoints()
            .iter()
            .map(|e| e.addr.port())
            .collect();
        assert_eq!(subs, vec![1, 2, 3]);
        let pubs: Vec<u16> = t
            .publish_endpoints()
            .iter()
            .map(|e| e.addr.port())
            .collect();
        assert_eq!(pubs, vec![1, 2, 3]);
        assert!(Target::cluster("c", &[], &[]).is_err());
        let single = Target::new("s", &nodes[0].0, &nodes[0].1, &[]).unwrap();
        assert_eq!(single.subscribe_endpoints().len(), 1);
        assert_eq!(single.publish_endpoints().len(), 1);
    }
}
