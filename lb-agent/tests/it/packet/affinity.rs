//! Session affinity (`sessionAffinity: ClientIP`) on every packet path, both families, TCP and
//! UDP: a client's new flows stay on one backend while its affinity entry is fresh, move once
//! it expires or its backend leaves, and spread again when affinity is switched off. The e2e
//! suite's threshold ("the last 15 consecutive requests from one client hit one backend")
//! is the shape of each check.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use lb_agent::model::{Frontend, Protocol};

use super::{TestResult, lb_with, sock};
use crate::support::{
    frame::{Packet, TCP_SYN, summary, verify_checksums},
    lb::{External, Lb, MAX_AFFINITY, MAX_SERVICES, cluster_ip, with_affinity},
};

/// `XDP_PASS`: the frame goes on to the kernel (translated, for a local backend).
const XDP_PASS: u32 = 2;
/// New flows per client: the e2e tests look at the last 15 of their requests.
const FLOWS: u16 = 15;

/// Which program a test drives.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// `lb_tc_pod_ingress`: a pod to a ClusterIP.
    Pod,
    /// `lb_tc_ext_ingress`: a client outside to a node port.
    ExtTc,
    /// `lb_xdp_ext`: the same, in XDP.
    Xdp,
}

/// A service of the family of `vip` with four backends.
fn backends(vip: &SocketAddr) -> Vec<SocketAddr> {
    (1..=4)
        .map(|i| match vip.ip() {
            IpAddr::V4(_) => sock(&format!("10.210.0.{i}:8080")),
            IpAddr::V6(_) => sock(&format!("[fd00:210::{i}]:8080")),
        })
        .collect()
}

/// Client `n` of the family of `vip`.
fn client(vip: &SocketAddr, n: u16, port: u16) -> SocketAddr {
    match vip.ip() {
        IpAddr::V4(_) => sock(&format!("192.0.2.{}:{port}", 100 + n)),
        IpAddr::V6(_) => sock(&format!("[2001:db8::{:x}]:{port}", 0x100 + n)),
    }
}

/// Where the service lives on `path`, for a family.
fn vip(path: Path, v6: bool) -> SocketAddr {
    match (path, v6) {
        (Path::Pod, false) => sock("10.96.0.50:80"),
        (Path::Pod, true) => sock("[fd00:96::50]:80"),
        (_, false) => sock("192.0.2.1:30050"),
        (_, true) => sock("[2001:db8::1]:30050"),
    }
}

/// The frontend of `vip` on `path`, with affinity when `timeout` is set.
fn programmed(
    lb: &mut Lb,
    path: Path,
    vip: SocketAddr,
    protocol: Protocol,
    backends: &[SocketAddr],
    timeout: Option<u32>,
) -> TestResult {
    let state = match path {
        Path::Pod => cluster_ip(
            Frontend {
                addr: vip,
                protocol,
            },
            backends,
        ),
        Path::ExtTc | Path::Xdp => {
            let local: Vec<String> = backends.iter().map(ToString::to_string).collect();
            let local: Vec<&str> = local.iter().map(String::as_str).collect();
            External::node_port(&vip.to_string(), protocol)
                .local(&local)
                .build()
        }
    };
    let state = match timeout {
        Some(t) => with_affinity(state, t),
        None => state,
    };
    lb.apply_states(&[state])
}

/// Sends the first packet of a new flow and returns the backend it went to.
fn new_flow(
    lb: &mut Lb,
    path: Path,
    protocol: Protocol,
    from: SocketAddr,
    vip: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    let input = match protocol {
        Protocol::Tcp => Packet::tcp(from, vip, TCP_SYN),
        _ => Packet::udp(from, vip),
    };
    let out = match path {
        Path::Pod => lb.ingress(&input.frame())?,
        Path::ExtTc => {
            let (verdict, out) = lb.ext_ingress(&input.frame())?;
            anyhow::ensure!(verdict == 0, "{input:?}: TC verdict {verdict}");
            out
        }
        Path::Xdp => {
            let (verdict, out) = lb.xdp(&input.frame(), 0)?;
            anyhow::ensure!(verdict == XDP_PASS, "{input:?}: XDP verdict {verdict}");
            out
        }
    };
    verify_checksums(&out).map_err(anyhow::Error::msg)?;
    let to = summary(&out)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("output of {input:?}"))?
        .dst;
    anyhow::ensure!(to != vip, "{input:?} was not translated");
    Ok(to)
}

/// The backends of `FLOWS` new flows from one client (a new source port each).
fn flows_of(
    lb: &mut Lb,
    path: Path,
    protocol: Protocol,
    n: u16,
    vip: SocketAddr,
    round: u16,
) -> anyhow::Result<Vec<SocketAddr>> {
    (0..FLOWS)
        .map(|i| {
            new_flow(
                lb,
                path,
                protocol,
                client(&vip, n, 20_000 + round * 100 + i),
                vip,
            )
        })
        .collect()
}

fn distinct(addrs: &[SocketAddr]) -> BTreeSet<SocketAddr> {
    addrs.iter().copied().collect()
}

/// Every path, family and protocol.
fn cases() -> Vec<(Path, bool, Protocol)> {
    let mut out = Vec::new();
    for path in [Path::Pod, Path::ExtTc, Path::Xdp] {
        for v6 in [false, true] {
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                out.push((path, v6, protocol));
            }
        }
    }
    out
}

#[test]
fn a_clients_new_flows_stay_on_one_backend_and_clients_still_spread() -> TestResult {
    for (path, v6, protocol) in cases() {
        let what = format!("{path:?} {protocol:?} IPv{}", if v6 { 6 } else { 4 });
        let vip = vip(path, v6);
        let backends = backends(&vip);
        let mut lb = Lb::load()?;
        programmed(&mut lb, path, vip, protocol, &backends, Some(60))?;
        let mut firsts = BTreeSet::new();
        for n in 0..12 {
            let got = flows_of(&mut lb, path, protocol, n, vip, 0)?;
            assert_eq!(
                distinct(&got).len(),
                1,
                "{what}: client {n} went to {got:?}"
            );
            firsts.insert(got[0]);
        }
        // 12 clients on one backend of four by chance: about 1 in 4 million.
        assert!(firsts.len() > 1, "{what}: every client on {firsts:?}");
    }
    Ok(())
}

#[test]
fn without_affinity_one_clients_flows_spread_and_switching_it_on_makes_them_stick() -> TestResult {
    for (path, v6, protocol) in cases() {
        let what = format!("{path:?} {protocol:?} IPv{}", if v6 { 6 } else { 4 });
        let vip = vip(path, v6);
        let backends = backends(&vip);
        let mut lb = lb_with(&[])?;
        programmed(&mut lb, path, vip, protocol, &backends, None)?;
        let spread = flows_of(&mut lb, path, protocol, 0, vip, 0)?;
        // 15 flows on one backend of four by chance: about 1 in 270 million.
        assert!(
            distinct(&spread).len() > 1,
            "{what}: no affinity, yet {spread:?}"
        );
        programmed(&mut lb, path, vip, protocol, &backends, Some(60))?;
        let sticky = flows_of(&mut lb, path, protocol, 0, vip, 1)?;
        assert_eq!(
            distinct(&sticky).len(),
            1,
            "{what}: switched on, got {sticky:?}"
        );
        programmed(&mut lb, path, vip, protocol, &backends, None)?;
        let again = flows_of(&mut lb, path, protocol, 0, vip, 2)?;
        assert!(
            distinct(&again).len() > 1,
            "{what}: switched off, yet {again:?}"
        );
    }
    Ok(())
}

#[test]
fn affinity_never_keeps_a_client_on_a_backend_the_service_lost() -> TestResult {
    for (path, v6, protocol) in cases() {
        let what = format!("{path:?} {protocol:?} IPv{}", if v6 { 6 } else { 4 });
        let vip = vip(path, v6);
        let backends = backends(&vip);
        let mut lb = Lb::load()?;
        programmed(&mut lb, path, vip, protocol, &backends, Some(60))?;
        let before = flows_of(&mut lb, path, protocol, 0, vip, 0)?[0];
        let rest: Vec<SocketAddr> = backends.iter().copied().filter(|b| *b != before).collect();
        programmed(&mut lb, path, vip, protocol, &rest, Some(60))?;
        let after = flows_of(&mut lb, path, protocol, 0, vip, 1)?;
        assert!(
            !after.contains(&before),
            "{what}: still sent to {before}: {after:?}"
        );
        assert_eq!(
            distinct(&after).len(),
            1,
            "{what}: a new backend, kept: {after:?}"
        );
    }
    Ok(())
}

#[test]
fn affinity_expires_after_its_timeout_and_each_new_flow_refreshes_it() -> TestResult {
    // Both families and protocols on the pod path here; expiry is the same code on every path.
    for (v6, protocol) in [
        (false, Protocol::Tcp),
        (false, Protocol::Udp),
        (true, Protocol::Tcp),
        (true, Protocol::Udp),
    ] {
        let what = format!("{protocol:?} IPv{}", if v6 { 6 } else { 4 });
        let vip = vip(Path::Pod, v6);
        let backends = backends(&vip);
        let mut lb = Lb::load()?;
        programmed(&mut lb, Path::Pod, vip, protocol, &backends, Some(1))?;
        let clients = 16;
        let mut first = Vec::new();
        for n in 0..clients {
            first.push(new_flow(
                &mut lb,
                Path::Pod,
                protocol,
                client(&vip, n, 30_000),
                vip,
            )?);
        }
        // Flows 0.6 s apart keep the entry fresh past the 1 s timeout.
        for round in 1..=2 {
            std::thread::sleep(Duration::from_millis(600));
            for n in 0..clients {
                let to = new_flow(
                    &mut lb,
                    Path::Pod,
                    protocol,
                    client(&vip, n, 30_000 + round),
                    vip,
                )?;
                assert_eq!(
                    to,
                    first[usize::from(n)],
                    "{what}: client {n}, refreshed, round {round}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(1_100));
        let mut moved = 0;
        for n in 0..clients {
            let to = new_flow(&mut lb, Path::Pod, protocol, client(&vip, n, 30_100), vip)?;
            moved += usize::from(to != first[usize::from(n)]);
        }
        // After expiry each client chooses anew: none of 16 moving is a 1 in 4 billion chance.
        assert!(moved > 0, "{what}: no client chose anew after the timeout");
    }
    Ok(())
}

#[test]
fn affinity_maps_are_sized_by_the_load_options() -> TestResult {
    let lb = Lb::load()?;
    for map in [
        lb_ebpf::map_names::AFFINITY_V4,
        lb_ebpf::map_names::AFFINITY_V6,
        lb_ebpf::map_names::SOCK_AFFINITY,
    ] {
        assert_eq!(lb.max_entries(map)?, MAX_AFFINITY, "{map}");
    }
    // One match per backend slot of either family at most.
    assert_eq!(
        lb.max_entries(lb_ebpf::map_names::AFFINITY_MATCH)?,
        2 * MAX_SERVICES
    );
    Ok(())
}
