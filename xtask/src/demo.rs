//! The demo: a node namespace with a client pod and three backend pods, the agent running on
//! `manifests/demo/`, and requests to every ClusterIP it serves, IPv4 and IPv6, TCP and UDP.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use lb_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    manifests::ManifestDir,
    probe::{Mode, Outcome, probe},
    topology::{POD_DEVICE_GLOB, Topology},
    traffic::{Server, tcp_request, tcp_server, udp_request, udp_server},
};

/// Requests sent to each frontend.
const REQUESTS: usize = 12;

fn agent_binary(root: &Path) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    target.join("debug").join("lb-agent")
}

/// Frontends of `lb-agent plan` output lines: `10.96.0.10:80/TCP ClusterIP default/web:http ->
/// [...]` (health check and SNAT lines, which start with a word, are not frontends).
fn frontends(plan: &str) -> anyhow::Result<Vec<(SocketAddr, String, String)>> {
    plan.lines()
        .filter(|line| line.starts_with(|c: char| c.is_ascii_digit() || c == '['))
        .map(|line| {
            let mut words = line.split_whitespace();
            let frontend = words.next().context("empty plan line")?;
            let _kind = words.next().context("plan line without a kind")?;
            let service = words.next().context("plan line without service")?;
            let (addr, proto) = frontend
                .rsplit_once('/')
                .context("frontend without protocol")?;
            Ok((addr.parse()?, proto.to_owned(), service.to_owned()))
        })
        .collect()
}

pub fn run(root: &Path) -> anyhow::Result<()> {
    let binary = agent_binary(root);
    let manifests = root.join("manifests").join("demo");

    println!("\n== What the agent will serve (lb-agent plan --manifests manifests/demo) ==");
    let plan = Command::new(&binary)
        .args(["plan", "--manifests"])
        .arg(&manifests)
        .args(["--node-name", "node-a"])
        .output()
        .context("running lb-agent plan")?;
    if !plan.status.success() {
        bail!(
            "lb-agent plan failed: {}",
            String::from_utf8_lossy(&plan.stderr)
        );
    }
    let plan = String::from_utf8(plan.stdout)?;
    print!("{plan}");

    println!(
        "\n== Topology: node namespace, pods client, b1, b2, b3 (IPv4 + IPv6 on every veth) =="
    );
    let topo = Topology::new(&["client", "b1", "b2", "b3"])?;
    for pod in &topo.pods {
        println!(
            "  {:<6} {} {} (node side: {})",
            pod.name, pod.v4, pod.v6, pod.host_device
        );
    }
    println!("  The node has no default route and no route to any ClusterIP:");
    let routes = topo.node.ip(&["route", "show", "default"])?;
    let routes6 = topo.node.ip(&["-6", "route", "show", "default"])?;
    println!(
        "  ip route show default -> {:?}, ip -6 route show default -> {:?}",
        String::from_utf8_lossy(&routes.stdout).trim(),
        String::from_utf8_lossy(&routes6.stdout).trim()
    );
    let mut servers: Vec<Server> = Vec::new();
    for name in ["b1", "b2", "b3"] {
        let ns = &topo.pod(name).ns;
        servers.push(tcp_server(ns, name, 8080)?);
        servers.push(udp_server(ns, name, 5353)?);
    }

    println!(
        "\n== Agent: lb-agent run --manifests manifests/demo --pod-devices '{POD_DEVICE_GLOB}' =="
    );
    // The agent gets a copy so the demo can never alter the repository's files.
    let dir = ManifestDir::new()?;
    for entry in std::fs::read_dir(&manifests)? {
        let path = entry?.path();
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            dir.write(name, &std::fs::read_to_string(&path)?)?;
        }
    }
    let mut agent = Agent::builder(&binary, &topo.node)
        .manifests(&dir)
        .start()?;
    agent.wait_healthy(&topo.node, Duration::from_secs(20))?;
    println!(
        "  healthy (GET /healthz -> 200), maps pinned under {}",
        agent.pin_dir.display()
    );

    println!("\n== {REQUESTS} requests from pod 'client' to each ClusterIP ==");
    let client = &topo.pod("client").ns;
    let mut failures = 0;
    for (addr, proto, service) in frontends(&plan)? {
        let mut answered: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..REQUESTS {
            let answer = match proto.as_str() {
                "TCP" => tcp_request(client, addr),
                "UDP" => udp_request(client, addr).and_then(|(name, from)| {
                    if from == addr {
                        Ok(name)
                    } else {
                        bail!("answer came from {from}, not from the service address")
                    }
                }),
                other => bail!("unexpected protocol {other}"),
            };
            match answer {
                Ok(name) => *answered.entry(name).or_default() += 1,
                Err(e) => {
                    failures += 1;
                    eprintln!("  {addr}/{proto}: {e:#}");
                }
            }
        }
        let spread: Vec<String> = answered.iter().map(|(b, n)| format!("{b} x{n}")).collect();
        println!(
            "  {:<24} {:<4} {:<22} answered by {}",
            addr.to_string(),
            proto,
            service,
            spread.join(", ")
        );
    }
    println!(
        "\n== From the node itself (no default route of either family): a process in the agent's \
         cgroup, and one outside it as kube-proxy's iptables mode would leave it =="
    );
    let outside = TestCgroup::new()?;
    for (addr, proto, service) in frontends(&plan)? {
        if proto != "TCP" {
            continue;
        }
        let inside = probe(&topo.node, Some(&agent.cgroup), Mode::Tcp, addr, 1)?;
        let without = probe(&topo.node, Some(&outside), Mode::Tcp, addr, 1)?;
        let describe = |o: &Outcome| match o {
            Outcome::Answer { answer, peer, .. } => format!(
                "answered by {answer}, getpeername() = {}",
                peer.map_or_else(|| "?".to_owned(), |p| p.to_string())
            ),
            Outcome::Error(e) => format!("connect() failed: {e}"),
        };
        println!("  curl-like TCP to {addr} ({service})");
        println!(
            "    with the agent's socket programs: {}",
            describe(&inside[0])
        );
        println!(
            "    without them:                     {}",
            describe(&without[0])
        );
        if !matches!(inside[0], Outcome::Answer { peer: Some(p), .. } if p == addr) {
            failures += 1;
        }
    }
    drop(outside);
    drop(agent);
    drop(servers);
    drop(topo);
    println!("\n== Torn down: agent stopped, namespaces and pinned maps removed ==");
    if failures > 0 {
        bail!("{failures} requests failed");
    }
    Ok(())
}
