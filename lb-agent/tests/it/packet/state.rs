//! Flow and NAT state through BPF_PROG_TEST_RUN: confirmation, expiry that is safe across
//! CPUs, TCP close and RST handling, replies far apart, flood resistance and SNAT ports.
//! Time passing is simulated by writing expiries into the pinned maps; the programs read
//! `bpf_ktime_get_ns`, which is `CLOCK_MONOTONIC`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::{TestResult, lb_with, sock};
use crate::support::{
    frame::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, summary, verify_checksums},
    lb::{External, Lb, TC_ACT_SHOT},
};
use lb_agent::model::{Frontend, Protocol};
use lb_ebpf::{
    DEFAULT_MAX_NEW_FLOWS, FLOW_F_SNAT, FLOW_FORWARD, FLOW_REPLY, FLOW_TCP_CLOSE_NS,
    FLOW_TCP_LIFETIME_NS, program_names, stats,
};

/// Two backends of one ClusterIP per family.
const CASES: [(&str, [&str; 2], &str); 2] = [
    (
        "10.96.7.1:80",
        ["10.0.7.11:8080", "10.0.7.12:8080"],
        "10.0.1.5",
    ),
    (
        "[fd00:96::7:1]:80",
        ["[fd00:7::11]:8080", "[fd00:7::12]:8080"],
        "fd00:1::5",
    ),
];

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cluster_ip(service: &str, backends: &[&str]) -> anyhow::Result<Lb> {
    let mut lb = Lb::load()?;
    let backends: Vec<SocketAddr> = backends.iter().map(|b| sock(b)).collect();
    lb.apply(&[
        (
            Frontend {
                addr: sock(service),
                protocol: Protocol::Tcp,
            },
            &backends,
        ),
        (
            Frontend {
                addr: sock(service),
                protocol: Protocol::Udp,
            },
            &backends,
        ),
    ])?;
    Ok(lb)
}

/// Where the pod program sent a packet of the client (after checking its checksums).
fn to(lb: &mut Lb, packet: &Packet) -> anyhow::Result<SocketAddr> {
    let out = lb.ingress(&packet.frame())?;
    verify_checksums(&out).map_err(anyhow::Error::msg)?;
    Ok(summary(&out).map_err(anyhow::Error::msg)?.dst)
}

/// The source a reply leaves the pod egress program with.
fn reply_from(lb: &mut Lb, packet: &Packet) -> anyhow::Result<SocketAddr> {
    let out = lb.egress(&packet.frame())?;
    verify_checksums(&out).map_err(anyhow::Error::msg)?;
    Ok(summary(&out).map_err(anyhow::Error::msg)?.src)
}

/// A TCP handshake from `client` to `service` through the pod programs: the backend.
fn handshake(lb: &mut Lb, client: SocketAddr, service: SocketAddr) -> anyhow::Result<SocketAddr> {
    let backend = to(lb, &Packet::tcp(client, service, TCP_SYN))?;
    assert_eq!(
        reply_from(lb, &Packet::tcp(backend, client, TCP_SYN | TCP_ACK))?,
        service,
        "SYN-ACK"
    );
    assert_eq!(to(lb, &Packet::tcp(client, service, TCP_ACK))?, backend);
    Ok(backend)
}

/// Expiries of the forward entries (both tables) of `client`, in ns from now.
fn forward_expiry(lb: &Lb, client: SocketAddr) -> Vec<i128> {
    let now = i128::from(monotonic_ns());
    let port = client.port().to_be();
    let mut out = Vec::new();
    match client.ip() {
        IpAddr::V4(ip) => {
            for (k, v) in lb.maps().flows_v4() {
                if k.dir == FLOW_FORWARD && k.saddr == ip.octets() && k.sport == port {
                    out.push(i128::from(v.expires_ns) - now);
                }
            }
        }
        IpAddr::V6(ip) => {
            for (k, v) in lb.maps().flows_v6() {
                if k.dir == FLOW_FORWARD && k.saddr == ip.octets() && k.sport == port {
                    out.push(i128::from(v.expires_ns) - now);
                }
            }
        }
    }
    out
}

/// Entries of the unconfirmed table (both families).
fn unconfirmed(lb: &Lb) -> usize {
    lb.maps().new_flows_v4().len() + lb.maps().new_flows_v6().len()
}

/// A new flow is unconfirmed until its client speaks after the backend's answer: the ACK
/// completing a TCP handshake, a second datagram after a reply. Then both its entries move to
/// the confirmed table (counted once). A SYN-ACK alone, as a spoofed client's flow gets, never
/// confirms. Both families, TCP and UDP.
#[test]
fn flows_are_confirmed_when_the_client_speaks_after_a_reply() -> TestResult {
    for (service, backends, client_ip) in CASES {
        let mut lb = cluster_ip(service, &backends)?;
        let service = sock(service);
        let client = SocketAddr::new(client_ip.parse()?, 40_000);
        let backend = to(&mut lb, &Packet::tcp(client, service, TCP_SYN))?;
        assert_eq!(
            unconfirmed(&lb),
            2,
            "{service}: SYN: forward and reply entry"
        );
        reply_from(&mut lb, &Packet::tcp(backend, client, TCP_SYN | TCP_ACK))?;
        assert_eq!(unconfirmed(&lb), 2, "{service}: a SYN-ACK does not confirm");
        assert_eq!(lb.stat(stats::CONFIRMED), 0);
        assert_eq!(
            to(&mut lb, &Packet::tcp(client, service, TCP_ACK))?,
            backend
        );
        assert_eq!(unconfirmed(&lb), 0, "{service}: the ACK moved both entries");
        assert_eq!(lb.stat(stats::CONFIRMED), 1);
        let ahead = forward_expiry(&lb, client);
        assert!(
            ahead.len() == 1 && ahead[0] > i128::from(FLOW_TCP_LIFETIME_NS) - 60_000_000_000,
            "{service}: confirmed, the established lifetime: {ahead:?}"
        );
        // Still the same flow both ways.
        assert_eq!(
            to(&mut lb, &Packet::tcp(client, service, TCP_ACK))?,
            backend
        );
        assert_eq!(
            reply_from(&mut lb, &Packet::tcp(backend, client, TCP_ACK))?,
            service
        );

        let udp_client = SocketAddr::new(client_ip.parse()?, 40_001);
        let udp_backend = to(&mut lb, &Packet::udp(udp_client, service))?;
        reply_from(&mut lb, &Packet::udp(udp_backend, udp_client))?;
        assert_eq!(lb.stat(stats::CONFIRMED), 1, "{service}: one UDP exchange");
        assert_eq!(to(&mut lb, &Packet::udp(udp_client, service))?, udp_backend);
        assert_eq!(
            lb.stat(stats::CONFIRMED),
            2,
            "{service}: UDP after an answer"
        );
        assert_eq!(unconfirmed(&lb), 0);
        assert_eq!(lb.stat(stats::NEW_FLOWS), 2);
    }
    Ok(())
}

/// An entry another CPU refreshed a moment after this one read the clock has an expiry ahead
/// of "now": it is alive, never re-balanced (a last-seen timestamp compared with wrapping
/// arithmetic read as expired). Both families.
#[test]
fn an_expiry_written_ahead_by_another_cpu_is_not_read_as_expired() -> TestResult {
    for (service, backends, client_ip) in CASES {
        let mut lb = cluster_ip(service, &backends)?;
        let service = sock(service);
        for port in 40_000..40_020 {
            let client = SocketAddr::new(client_ip.parse()?, port);
            let backend = handshake(&mut lb, client, service)?;
            lb.set_flow_expiry(|_| true, monotonic_ns() + 3_600_000_000_000)?;
            let new_flows = lb.stat(stats::NEW_FLOWS);
            assert_eq!(
                to(&mut lb, &Packet::tcp(client, service, TCP_ACK))?,
                backend
            );
            assert_eq!(
                lb.stat(stats::NEW_FLOWS),
                new_flows,
                "{client}: no new choice"
            );
        }
    }
    Ok(())
}

/// TCP close: a FIN from one side (a half-closed connection) keeps the established lifetime;
/// FINs from both sides give the short close lifetime. A RST from one side of a confirmed
/// connection, followed by a packet of that side (a stray RST), leaves it established, and
/// even once its entries expired a segment of it keeps its backend and its replies are still
/// reversed: a stray RST never re-balances a live connection. Both families.
#[test]
fn half_closed_and_reset_connections_keep_their_backend_until_both_sides_close() -> TestResult {
    const LONG: i128 = FLOW_TCP_LIFETIME_NS as i128 - 60_000_000_000;
    const SHORT: i128 = FLOW_TCP_CLOSE_NS as i128;
    for (service, backends, client_ip) in CASES {
        let mut lb = cluster_ip(service, &backends)?;
        let service = sock(service);

        let client = SocketAddr::new(client_ip.parse()?, 40_000);
        let backend = handshake(&mut lb, client, service)?;
        to(&mut lb, &Packet::tcp(client, service, TCP_FIN | TCP_ACK))?;
        let ahead = forward_expiry(&lb, client);
        assert!(ahead[0] > LONG, "{service}: half-closed: {ahead:?}");
        assert_eq!(
            reply_from(&mut lb, &Packet::tcp(backend, client, TCP_ACK))?,
            service,
            "the server still answers a half-closed connection"
        );
        reply_from(&mut lb, &Packet::tcp(backend, client, TCP_FIN | TCP_ACK))?;
        let ahead = forward_expiry(&lb, client);
        assert!(ahead[0] <= SHORT, "{service}: closed both ways: {ahead:?}");
        assert_eq!(
            to(&mut lb, &Packet::tcp(client, service, TCP_ACK))?,
            backend,
            "last ACK"
        );

        let client = SocketAddr::new(client_ip.parse()?, 40_001);
        let backend = handshake(&mut lb, client, service)?;
        // A RST "from the backend", then the backend goes on: a stray one.
        reply_from(&mut lb, &Packet::tcp(backend, client, TCP_RST))?;
        let ahead = forward_expiry(&lb, client);
        assert!(ahead[0] <= SHORT, "{service}: after a RST: {ahead:?}");
        reply_from(&mut lb, &Packet::tcp(backend, client, TCP_ACK))?;
        let ahead = forward_expiry(&lb, client);
        assert!(
            ahead[0] > LONG,
            "{service}: the backend spoke again: {ahead:?}"
        );
        // Another RST, then silence longer than the close lifetime.
        reply_from(&mut lb, &Packet::tcp(backend, client, TCP_RST))?;
        lb.set_flow_expiry(|_| true, monotonic_ns() - 1)?;
        let new_flows = lb.stat(stats::NEW_FLOWS);
        for _ in 0..2 {
            assert_eq!(
                to(&mut lb, &Packet::tcp(client, service, TCP_ACK))?,
                backend,
                "{service}: a segment of the connection keeps its backend"
            );
            assert_eq!(
                reply_from(&mut lb, &Packet::tcp(backend, client, TCP_ACK))?,
                service
            );
        }
        assert_eq!(
            lb.stat(stats::NEW_FLOWS),
            new_flows,
            "{service}: not re-balanced"
        );
    }
    Ok(())
}

/// The reply entry of a flow lives as long as its flow: a UDP server that answers less often
/// than the UDP lifetime, while its client keeps sending, still answers from the service
/// address (its reply entry's own expiry passed, the flow's did not). Both families.
#[test]
fn udp_replies_further_apart_than_the_lifetime_are_still_reversed() -> TestResult {
    for (service, backends, client_ip) in CASES {
        let mut lb = cluster_ip(service, &backends)?;
        let service = sock(service);
        let client = SocketAddr::new(client_ip.parse()?, 40_000);
        let backend = to(&mut lb, &Packet::udp(client, service))?;
        reply_from(&mut lb, &Packet::udp(backend, client))?;
        assert_eq!(to(&mut lb, &Packet::udp(client, service))?, backend);
        // The last reply was long ago; the client's datagram just now.
        lb.set_flow_expiry(|dir| dir == FLOW_REPLY, monotonic_ns() - 1)?;
        assert_eq!(
            reply_from(&mut lb, &Packet::udp(backend, client))?,
            service,
            "{service}: reversed"
        );
        // And once the whole flow expired, a reply is no longer taken for one.
        lb.set_flow_expiry(|_| true, monotonic_ns() - 1)?;
        let out = lb.egress(&Packet::udp(backend, client).frame())?;
        assert_eq!(
            summary(&out).map_err(anyhow::Error::msg)?.src,
            backend,
            "{service}: a dead flow's reply passes untouched"
        );
    }
    Ok(())
}

/// A flood of SYNs from spoofed sources, more than the unconfirmed table holds, to a service:
/// an established connection that stays idle through it keeps its backend and its replies
/// are still reversed. Both families.
#[test]
fn a_syn_flood_larger_than_the_flow_tables_evicts_no_established_flow() -> TestResult {
    for (service, backends, client_ip) in CASES {
        let mut lb = cluster_ip(service, &backends)?;
        let service = sock(service);
        let client = SocketAddr::new(client_ip.parse()?, 40_000);
        let backend = handshake(&mut lb, client, service)?;
        let flood = DEFAULT_MAX_NEW_FLOWS + DEFAULT_MAX_NEW_FLOWS / 8;
        for i in 0..flood {
            let src = match client.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(0xc612_0000 + (i >> 4))),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(
                    0x2001_0db8_0000_0000_0000_0000_0000_0000_u128 + u128::from(i >> 4),
                )),
            };
            let spoofed = SocketAddr::new(src, 1024 + (i & 15) as u16);
            lb.ingress(&Packet::tcp(spoofed, service, TCP_SYN).frame())?;
        }
        assert!(lb.stat(stats::NEW_FLOWS) > u64::from(DEFAULT_MAX_NEW_FLOWS));
        let new_flows = lb.stat(stats::NEW_FLOWS);
        assert_eq!(
            to(&mut lb, &Packet::tcp(client, service, TCP_ACK))?,
            backend,
            "{service}: the idle connection keeps its backend"
        );
        assert_eq!(
            lb.stat(stats::NEW_FLOWS),
            new_flows,
            "{service}: its flow was kept"
        );
        assert_eq!(
            reply_from(&mut lb, &Packet::tcp(backend, client, TCP_ACK))?,
            service,
            "{service}: its replies are still reversed"
        );
    }
    Ok(())
}

/// A node port whose only backend is on another node, with this node's address set.
fn remote_node_port(node: &str, node_port: &str, backend: &str) -> anyhow::Result<Lb> {
    let mut lb = lb_with(&[External::node_port(node_port, Protocol::Tcp)
        .remote(&[backend])
        .build()])?;
    lb.set_node_addr(node.parse()?)?;
    Ok(lb)
}

/// SNAT ports from two CPUs at once: every SNATed flow's port leads back to that flow's own
/// client, so no port was handed to two flows (`BPF_NOEXIST`). Each thread runs the external
/// program on its own CPU with flows from clients of its own.
#[test]
fn two_cpus_allocating_snat_ports_at_once_never_share_one() -> TestResult {
    const PER_CPU: u32 = 4_000;
    let mut lb = remote_node_port("192.0.2.1", "192.0.2.1:30080", "10.202.1.2:8080")?;
    let fd = lb.program_fd(program_names::TC_EXT_INGRESS)?;
    let cpus = std::thread::available_parallelism()?.get().min(2);
    anyhow::ensure!(cpus == 2, "needs two CPUs, has {cpus}");
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..2u32)
            .map(|cpu| {
                s.spawn(move || -> anyhow::Result<()> {
                    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it, and
                    // sched_setaffinity only reads it, for the calling thread.
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(cpu as usize, &mut set);
                        let rc = libc::sched_setaffinity(
                            0,
                            std::mem::size_of::<libc::cpu_set_t>(),
                            &set,
                        );
                        anyhow::ensure!(
                            rc == 0,
                            "sched_setaffinity: {}",
                            std::io::Error::last_os_error()
                        );
                    }
                    for i in 0..PER_CPU {
                        let client = SocketAddr::new(
                            IpAddr::V4(Ipv4Addr::from(0xc612_0000 + (cpu << 16) + i)),
                            40_000,
                        );
                        let frame = Packet::tcp(client, sock("192.0.2.1:30080"), TCP_SYN).frame();
                        lb_tests::rawbpf::test_run(fd, &frame, 1, 0, 256)?;
                    }
                    Ok(())
                })
            })
            .collect();
        runs.into_iter()
            .try_for_each(|r| r.join().map_err(|_| anyhow::anyhow!("thread panicked"))?)
    })?;
    let snat: BTreeMap<u16, [u8; 4]> = lb
        .maps()
        .snat_v4()
        .into_iter()
        .map(|(k, v)| (u16::from_be(k.dport), v.client_addr))
        .collect();
    let flows: Vec<([u8; 4], u16)> = lb
        .maps()
        .flows_v4()
        .into_iter()
        .filter(|(k, v)| k.dir == FLOW_FORWARD && v.flags & FLOW_F_SNAT != 0)
        .map(|(k, v)| (k.saddr, u16::from_be(v.snat_port)))
        .collect();
    // The SNAT map is not LRU: one entry per connection. The unconfirmed flow table is, and
    // concurrent inserts may fail or evict a few entries before it is full (its per-CPU free
    // lists); such a connection's SNAT entry has no flow, so its port is free again.
    assert_eq!(lb.stat(stats::SNAT_NO_PORT), 0);
    assert_eq!(
        lb.stat(stats::NEW_FLOWS) + lb.stat(stats::FLOW_UPDATE_FAILED),
        u64::from(2 * PER_CPU),
        "every connection counted once"
    );
    assert_eq!(
        snat.len() as u32,
        2 * PER_CPU,
        "one SNAT entry per connection"
    );
    assert!(
        flows.len() as u32 > 2 * PER_CPU * 99 / 100,
        "{} flows",
        flows.len()
    );
    for (client, port) in &flows {
        assert_eq!(snat.get(port), Some(client), "port {port} of {client:?}");
    }
    let ports: BTreeSet<u16> = flows.iter().map(|(_, p)| *p).collect();
    assert_eq!(ports.len(), flows.len(), "no port twice");
    Ok(())
}

/// Short connections to a node port whose only backend is on another node, more than its
/// SNAT port range holds, each reset before it completes (a SYN then a RST): a port comes free
/// once its flow is dead, and every connection gets one. Both families. Without a route to the
/// backend the packets are dropped after translation (`snat_failed`); what counts is that
/// every connection got its flow and port.
#[test]
fn snat_ports_of_dead_flows_are_taken_again_so_connections_never_run_out() -> TestResult {
    for (node, node_port, backend, client_base) in [
        (
            "192.0.2.1",
            "192.0.2.1:30080",
            "10.202.1.2:8080",
            "198.18.0.0",
        ),
        (
            "2001:db8::1",
            "[2001:db8::1]:30080",
            "[fd00:202:1::2]:8080",
            "2001:db8:18::",
        ),
    ] {
        let mut lb = remote_node_port(node, node_port, backend)?;
        let ports = u32::from(lb_ebpf::DEFAULT_SNAT_PORT_MAX - lb_ebpf::DEFAULT_SNAT_PORT_MIN) + 1;
        let connections = 4 * ports;
        for i in 0..connections {
            let client = match client_base.parse::<IpAddr>()? {
                IpAddr::V4(b) => IpAddr::V4(Ipv4Addr::from(u32::from(b) + i)),
                IpAddr::V6(b) => IpAddr::V6(Ipv6Addr::from(u128::from(b) + u128::from(i))),
            };
            let client = SocketAddr::new(client, 40_000);
            let (verdict, _) =
                lb.ext_ingress(&Packet::tcp(client, sock(node_port), TCP_SYN).frame())?;
            assert_eq!(verdict, TC_ACT_SHOT, "no route to the backend here");
            lb.ext_ingress(&Packet::tcp(client, sock(node_port), TCP_RST).frame())?;
            // The close lifetime passes each time half the range was used.
            if (i + 1) % (ports / 2) == 0 {
                lb.set_flow_expiry(|_| true, monotonic_ns() - 1)?;
                lb.set_snat_expiry(monotonic_ns() - 1)?;
            }
        }
        assert_eq!(
            lb.stat(stats::SNAT_NO_PORT),
            0,
            "{node_port}: never out of ports"
        );
        assert_eq!(
            lb.stat(stats::NEW_FLOWS),
            u64::from(connections),
            "{node_port}: every connection got its flow"
        );
        // Every port at most once (`snat_ports` checks the range).
        let held = lb.snat_ports(sock(backend));
        assert!(
            held.len() as u32 <= ports,
            "{node_port}: {} entries",
            held.len()
        );
        // Connections that stay open take every port; then one more is refused a port, counted.
        let mut opened = 0;
        while lb.stat(stats::SNAT_NO_PORT) == 0 && opened <= ports {
            let client = match client_base.parse::<IpAddr>()? {
                IpAddr::V4(b) => IpAddr::V4(Ipv4Addr::from(u32::from(b) + connections + opened)),
                IpAddr::V6(b) => IpAddr::V6(Ipv6Addr::from(
                    u128::from(b) + u128::from(connections + opened),
                )),
            };
            let client = SocketAddr::new(client, 40_000);
            lb.ext_ingress(&Packet::tcp(client, sock(node_port), TCP_SYN).frame())?;
            opened += 1;
        }
        assert!(
            opened <= ports,
            "{node_port}: {opened} open connections and no exhaustion counted"
        );
    }
    Ok(())
}

/// A new connection on the tuple of a confirmed connection that closed (a client port reused
/// at once, as after a reset) is a new flow in the unconfirmed table: the old flow's entries,
/// in the confirmed table that is looked up first, are retired, so the new connection's next
/// packets go to its own backend and its backend's replies are reversed. Both families.
#[test]
fn a_new_connection_on_the_tuple_of_a_closed_confirmed_one_follows_its_own_backend() -> TestResult {
    for (service, backends, client_ip) in CASES {
        let mut lb = cluster_ip(service, &backends)?;
        let service = sock(service);
        let mut moved = false;
        for port in 40_000..40_040 {
            let client = SocketAddr::new(client_ip.parse()?, port);
            let old = handshake(&mut lb, client, service)?;
            to(&mut lb, &Packet::tcp(client, service, TCP_RST))?;
            let new = to(&mut lb, &Packet::tcp(client, service, TCP_SYN))?;
            assert_eq!(
                reply_from(&mut lb, &Packet::tcp(new, client, TCP_SYN | TCP_ACK))?,
                service
            );
            assert_eq!(
                to(&mut lb, &Packet::tcp(client, service, TCP_ACK))?,
                new,
                "{client}: the new connection's ACK (old backend {old})"
            );
            assert_eq!(
                reply_from(&mut lb, &Packet::tcp(new, client, TCP_ACK))?,
                service
            );
            moved |= new != old;
        }
        assert!(
            moved,
            "{service}: no reused tuple ever chose another backend"
        );
    }
    Ok(())
}

/// A confirmed UDP flow whose backend leaves the service moves to a remaining backend with
/// its next datagram, once: the datagrams after it stay there. Both families.
#[test]
fn a_confirmed_udp_flow_whose_backend_went_moves_once() -> TestResult {
    for (service, backends, client_ip) in CASES {
        let mut lb = cluster_ip(service, &backends)?;
        let service = sock(service);
        let client = SocketAddr::new(client_ip.parse()?, 40_000);
        let first = to(&mut lb, &Packet::udp(client, service))?;
        reply_from(&mut lb, &Packet::udp(first, client))?;
        assert_eq!(to(&mut lb, &Packet::udp(client, service))?, first);
        assert_eq!(lb.stat(stats::CONFIRMED), 1);
        let other: Vec<SocketAddr> = backends
            .iter()
            .map(|b| sock(b))
            .filter(|b| *b != first)
            .collect();
        lb.apply(&[(
            Frontend {
                addr: service,
                protocol: Protocol::Udp,
            },
            &other,
        )])?;
        let new_flows = lb.stat(stats::NEW_FLOWS);
        for _ in 0..5 {
            assert_eq!(to(&mut lb, &Packet::udp(client, service))?, other[0]);
        }
        assert_eq!(
            lb.stat(stats::NEW_FLOWS),
            new_flows + 1,
            "{service}: moved once"
        );
    }
    Ok(())
}

/// A client port reused towards another service of the same backend (Linux picks ephemeral
/// ports per destination): to the backend it is the same connection tuple, so the newest flow
/// owns it, and its SYN-ACK is reversed to the service it asked for, not to the confirmed
/// flow's. Both families.
#[test]
fn a_client_port_reused_towards_another_service_of_the_backend_gets_its_own_answers() -> TestResult
{
    for (service, backends, client_ip) in CASES {
        let first = sock(service);
        let second = SocketAddr::new(first.ip(), 81);
        let backend = sock(backends[0]);
        let mut lb = Lb::load()?;
        lb.apply(&[
            (
                Frontend {
                    addr: first,
                    protocol: Protocol::Tcp,
                },
                &[backend],
            ),
            (
                Frontend {
                    addr: second,
                    protocol: Protocol::Tcp,
                },
                &[backend],
            ),
        ])?;
        let client = SocketAddr::new(client_ip.parse()?, 40_000);
        assert_eq!(handshake(&mut lb, client, first)?, backend);
        assert_eq!(to(&mut lb, &Packet::tcp(client, second, TCP_SYN))?, backend);
        assert_eq!(
            reply_from(&mut lb, &Packet::tcp(backend, client, TCP_SYN | TCP_ACK))?,
            second,
            "{second}: the new flow's SYN-ACK"
        );
        assert_eq!(to(&mut lb, &Packet::tcp(client, second, TCP_ACK))?, backend);
        assert_eq!(
            reply_from(&mut lb, &Packet::tcp(backend, client, TCP_ACK))?,
            second
        );
    }
    Ok(())
}
