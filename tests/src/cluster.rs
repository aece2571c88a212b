//! The node most end-to-end tests run on: a [`Topology`] with a client pod and three backend
//! pods, each backend serving TCP and UDP, and the checks of which backends answer a service.
//!
//! Services map port [`SERVICE_TCP_PORT`] to the backends' TCP server and
//! [`SERVICE_UDP_PORT`] to their UDP server ([`SERVICE_PORTS`] to [`TARGET_PORTS`]).

use std::{collections::BTreeSet, net::IpAddr};

use crate::{
    netns::Netns,
    sa,
    topology::Topology,
    traffic::{Server, tcp_request, tcp_server, udp_exchange, udp_server},
};

/// The backend pods; each answers with its name.
pub const BACKENDS: [&str; 3] = ["b1", "b2", "b3"];
/// The pod the tests' requests come from.
pub const CLIENT: &str = "client";
/// The TCP port of the tests' services.
pub const SERVICE_TCP_PORT: u16 = 80;
/// The UDP port of the tests' services.
pub const SERVICE_UDP_PORT: u16 = 53;
/// The port the backends' TCP server listens on.
pub const BACKEND_TCP_PORT: u16 = 8080;
/// The port the backends' UDP server listens on.
pub const BACKEND_UDP_PORT: u16 = 5353;
/// A service's ports (name, port, protocol), as the manifests and the API server take them.
pub const SERVICE_PORTS: &[(&str, u16, &str)] = &[
    ("http", SERVICE_TCP_PORT, "TCP"),
    ("dns", SERVICE_UDP_PORT, "UDP"),
];
/// The endpoints' ports, named as [`SERVICE_PORTS`].
pub const TARGET_PORTS: &[(&str, u16, &str)] = &[
    ("http", BACKEND_TCP_PORT, "TCP"),
    ("dns", BACKEND_UDP_PORT, "UDP"),
];

/// A node with pod [`CLIENT`] and the [`BACKENDS`], each serving TCP on [`BACKEND_TCP_PORT`]
/// and UDP on [`BACKEND_UDP_PORT`]. Dropping it stops the servers and removes every namespace.
pub struct Cluster {
    pub topo: Topology,
    _servers: Vec<Server>,
}

impl Cluster {
    /// Fails the test unless it runs as root ([`crate::require_root`]): it never skips.
    pub fn new() -> anyhow::Result<Self> {
        crate::require_root();
        let mut names = vec![CLIENT];
        names.extend(BACKENDS);
        let topo = Topology::new(&names)?;
        let mut servers = Vec::new();
        for name in BACKENDS {
            let ns = &topo.pod(name).ns;
            servers.push(tcp_server(ns, name, BACKEND_TCP_PORT)?);
            servers.push(udp_server(ns, name, BACKEND_UDP_PORT)?);
        }
        Ok(Self {
            topo,
            _servers: servers,
        })
    }

    /// The node namespace, where the agent runs.
    pub fn node(&self) -> &Netns {
        &self.topo.node
    }

    /// The namespace of pod [`CLIENT`].
    pub fn client(&self) -> &Netns {
        &self.topo.pod(CLIENT).ns
    }

    /// The addresses of the family `v6` of the named pods, all ready: endpoints for a slice.
    pub fn ready_endpoints(&self, v6: bool, pods: &[&str]) -> Vec<(IpAddr, bool)> {
        pods.iter()
            .map(|pod| (self.topo.pod(pod).addr(v6), true))
            .collect()
    }

    /// Backends answering `n` new TCP connections from the client to `vip:80`.
    pub fn tcp_spread(&self, vip: IpAddr, n: usize) -> BTreeSet<String> {
        (0..n)
            .map(|_| tcp_request(self.client(), sa(vip, SERVICE_TCP_PORT)).expect("tcp request"))
            .collect()
    }

    /// Backends answering `n` new UDP flows from the client to `vip:53`; checks that every
    /// answer comes from the service address. Each flow has a source port of its own (an
    /// ephemeral port could repeat that of a flow still alive, which keeps its backend).
    pub fn udp_spread(&self, vip: IpAddr, n: usize) -> BTreeSet<String> {
        let service = sa(vip, SERVICE_UDP_PORT);
        (0..n)
            .map(|_| {
                let socket = self.fresh_udp_socket(vip.is_ipv6());
                let (name, from) = udp_exchange(&socket, service).expect("udp request");
                assert_eq!(
                    from, service,
                    "UDP answer must come from the service address"
                );
                name
            })
            .collect()
    }
}

impl Cluster {
    /// A UDP socket of the client bound to a source port no earlier call of this process used
    /// (20000-59999, in turn).
    fn fresh_udp_socket(&self, v6: bool) -> std::net::UdpSocket {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        loop {
            let port =
                20_000 + (NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 40_000) as u16;
            let bind = if v6 {
                std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
            } else {
                std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port))
            };
            if let Ok(Ok(socket)) = self.client().run(|| std::net::UdpSocket::bind(bind)) {
                return socket;
            }
        }
    }
}

/// A set of pod names, to compare with what [`Cluster::tcp_spread`] and
/// [`Cluster::udp_spread`] return.
pub fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}
