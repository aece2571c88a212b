//! The proxies side by side: one namespace topology per proxy (a node namespace, a client pod
//! and ten backend pods, as `lb-tests` builds them), all alive at once, so every measurement
//! interleaves the proxies round by round under the same machine load:
//! - `direct`: no proxy; the client connects to backend pod addresses (the limit);
//! - `lb`: this project's agent and TC programs on the pod devices;
//! - `iptables`: kube-proxy's iptables-mode ruleset in the node namespace (iptables-restore);
//! - `nftables`: kube-proxy's nftables-mode ruleset in the node namespace (nft -f).
//!
//! Each proxy gets its own node namespace because the rules would otherwise tax each other's
//! traffic: kube-proxy's `KUBE-SERVICES` chain is walked by every new connection in the
//! namespace, the TC programs by every packet on the pod devices.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_tests::{
    agent::Agent,
    http::{HttpServer, RateReport, connection_rate, http_server},
    manifests::{ManifestDir, endpoint_slice, service},
    netns::Netns,
    topology::Topology,
};

use super::{Config, Svc, kubeproxy};

/// Backend pods per topology; every service points at all of them: 10 backends per service,
/// the service size the performance targets are stated for.
const BACKENDS: usize = 10;
const HTTP_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;
/// Accept threads per backend HTTP server.
const SERVER_THREADS: usize = 2;
/// The pods' addresses (`lb-tests` topology), for kube-proxy's masquerade rule.
const CLUSTER_CIDR: &str = "10.200.0.0/16";
/// Longest any single programming step may take before the run gives up.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(600);
/// Upper bound on connections per client thread and measurement.
const MAX_CONNECTIONS: u64 = 10_000_000;

/// The four paths, in the order tables list them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proxy {
    Lb,
    Iptables,
    Nftables,
    Direct,
}

impl Proxy {
    pub const ALL: [Proxy; 4] = [Proxy::Lb, Proxy::Iptables, Proxy::Nftables, Proxy::Direct];
    /// The three that program services.
    pub const PROXIES: [Proxy; 3] = [Proxy::Lb, Proxy::Iptables, Proxy::Nftables];

    pub fn name(self) -> &'static str {
        match self {
            Self::Lb => "lb (this project)",
            Self::Iptables => "kube-proxy iptables",
            Self::Nftables => "kube-proxy nftables",
            Self::Direct => "direct (no proxy)",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Self::Lb => "lb",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::Direct => "direct",
        }
    }
}

/// One connection-rate measurement.
#[derive(Clone, Debug)]
pub struct Rate {
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

/// Programming N services from scratch.
#[derive(Clone, Debug, Default)]
pub struct Program {
    /// From the change to the rules/maps in place (ms).
    pub wall_ms: f64,
    /// The agent's own sync time (`elapsed_us` of `maps programmed`), ms.
    pub sync_ms: Option<f64>,
}

/// Everything measured at one N.
#[derive(Clone, Debug, Default)]
pub struct NResult {
    pub n: usize,
    pub program: BTreeMap<Proxy, Program>,
    /// One changed service, wall ms per change.
    pub change_ms: BTreeMap<Proxy, Vec<f64>>,
    /// The agent's own sync time per change, ms.
    pub change_sync_ms: Vec<f64>,
    pub rates: BTreeMap<Proxy, Vec<Rate>>,
    /// Gbit/s per round.
    pub gbps: BTreeMap<Proxy, Vec<f64>>,
    pub rss_kb: Option<u64>,
    pub hwm_kb: Option<u64>,
    /// The agent's CPU use while the traffic ran, in % of one CPU.
    pub agent_cpu_pct: Option<f64>,
}

/// All of section 2 and 3.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub by_n: Vec<NResult>,
    pub ipvs_available: bool,
    pub versions: Vec<(String, String)>,
    pub agent_args: Vec<String>,
    /// Why the run stopped before the last N, if it did.
    pub error: Option<String>,
}

/// A child process killed on drop (iperf3 servers).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One topology with its servers.
struct Lab {
    proxy: Proxy,
    topo: Topology,
    _http: Vec<HttpServer>,
    _iperf: ChildGuard,
}

impl Lab {
    fn new(proxy: Proxy) -> anyhow::Result<Self> {
        let mut names = vec!["client".to_owned()];
        names.extend((1..=BACKENDS).map(|i| format!("b{i}")));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let topo = Topology::new(&names)?;
        // Client ports: the whole range, so short connections never wait for a free port.
        topo.pod("client")
            .ns
            .sysctl(&["net.ipv4.ip_local_port_range=1024 65000"])?;
        let mut http = Vec::new();
        for pod in &topo.pods[1..] {
            http.push(http_server(&pod.ns, &pod.name, HTTP_PORT, SERVER_THREADS)?);
        }
        let iperf = topo.pods[1]
            .ns
            .command("iperf3")
            .args(["-s", "-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        Ok(Self {
            proxy,
            topo,
            _http: http,
            _iperf: ChildGuard(iperf),
        })
    }

    fn backends(&self) -> Vec<SocketAddrV4> {
        self.topo.pods[1..]
            .iter()
            .map(|p| SocketAddrV4::new(p.v4, HTTP_PORT))
            .collect()
    }

    fn client(&self) -> &Netns {
        &self.topo.pod("client").ns
    }

    /// Runs a command in the node namespace, feeding it `input`; returns how long it took.
    fn node_cmd(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&Path>,
    ) -> anyhow::Result<Duration> {
        let mut cmd = self.topo.node.command(program);
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        if let Some(path) = input {
            cmd.stdin(std::fs::File::open(path)?);
        }
        let started = Instant::now();
        let child = cmd.spawn().with_context(|| format!("spawning {program}"))?;
        let out = wait_bounded(child, PROGRAM_TIMEOUT)?;
        let took = started.elapsed();
        if !out.status.success() {
            bail!(
                "{program} {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(took)
    }
}

/// Waits for a child, killing it after `timeout`.
fn wait_bounded(mut child: Child, timeout: Duration) -> anyhow::Result<std::process::Output> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The benchmark's services for N: `svc-0..N` on 10.96.0.1 and up, each with every backend,
/// plus `iperf` (one backend, the iperf3 server) and `svc-change` (the one that changes).
fn services(n: usize, backends: &[SocketAddrV4]) -> Vec<Svc> {
    let base = u32::from(Ipv4Addr::new(10, 96, 0, 1));
    let mut svcs: Vec<Svc> = (0..n)
        .map(|i| Svc {
            name: format!("svc-{i}"),
            port_name: "http".into(),
            vip: Ipv4Addr::from(base + i as u32),
            port: HTTP_PORT,
            endpoints: backends.to_vec(),
        })
        .collect();
    svcs.push(Svc {
        name: "iperf".into(),
        port_name: "iperf".into(),
        vip: Ipv4Addr::new(10, 97, 0, 1),
        port: IPERF_PORT,
        endpoints: vec![SocketAddrV4::new(*backends[0].ip(), IPERF_PORT)],
    });
    svcs.push(change_service(backends, false));
    svcs
}

/// `svc-change` with all backends, or with the last one removed.
fn change_service(backends: &[SocketAddrV4], shrunk: bool) -> Svc {
    let keep = if shrunk {
        backends.len() - 1
    } else {
        backends.len()
    };
    Svc {
        name: "svc-change".into(),
        port_name: "http".into(),
        vip: Ipv4Addr::new(10, 97, 0, 2),
        port: HTTP_PORT,
        endpoints: backends[..keep].to_vec(),
    }
}

/// Service and EndpointSlice manifests for the agent.
fn manifests(svcs: &[Svc]) -> String {
    let mut out = String::new();
    for svc in svcs {
        let ports = [(svc.port_name.as_str(), svc.port, "TCP")];
        let eps: Vec<(IpAddr, bool)> = svc
            .endpoints
            .iter()
            .map(|e| (IpAddr::V4(*e.ip()), true))
            .collect();
        let _ = write!(
            out,
            "---\n{}---\n{}",
            service(&svc.name, &[IpAddr::V4(svc.vip)], &ports),
            endpoint_slice(&format!("{}-1", svc.name), &svc.name, &ports, &eps)
        );
    }
    out
}

/// Strips ANSI colour sequences from a log line.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `key=value` fields of the agent's `maps programmed` lines, in order.
fn programmed_lines(logs: &str) -> Vec<BTreeMap<String, String>> {
    logs.lines()
        .filter(|l| l.contains("maps programmed"))
        .map(|l| {
            strip_ansi(l)
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

/// The agent, its manifest directory, and how to find its process.
///
/// The agent is paused (SIGSTOP) whenever another path is measured and runs only while its own
/// path is: kube-proxy's modes are measured with their rules in place and no kube-proxy process
/// at all, so the agent's CPU use must not tax their measurements, while it does count against
/// its own. Its TC programs keep working while it is paused.
struct LbAgent {
    agent: Agent,
    dir: ManifestDir,
    pid: Option<i32>,
}

impl Drop for LbAgent {
    fn drop(&mut self) {
        // A stopped process would not act on the SIGTERM that stops it.
        self.resume();
    }
}

impl LbAgent {
    fn start(binary: &Path, lab: &Lab, extra: &[String], change: &Svc) -> anyhow::Result<Self> {
        let dir = ManifestDir::new()?;
        dir.write("change.yaml", &manifests(std::slice::from_ref(change)))?;
        let mut agent = Agent::builder(binary, &lab.topo.node)
            .manifests(&dir)
            .args(extra)
            .start()?;
        agent.wait_healthy(&lab.topo.node, Duration::from_secs(60))?;
        let mut agent = Self {
            agent,
            dir,
            pid: None,
        };
        agent.pid = agent
            .proc_dir()
            .and_then(|p| p.file_name()?.to_str()?.parse().ok());
        Ok(agent)
    }

    fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid {
            // SAFETY: kill(2) on the agent, a process this run started.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Stops the agent's process until [`LbAgent::resume`].
    fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Writes `file` and waits for the sync that programs `frontends` frontends; returns the
    /// wall time from the write to the log line, and the agent's own sync time.
    fn apply(&self, file: &str, content: &str, frontends: usize) -> anyhow::Result<(f64, f64)> {
        let before = programmed_lines(&self.agent.logs()).len();
        self.dir.write(file, content)?;
        let written = Instant::now();
        let deadline = written + PROGRAM_TIMEOUT;
        loop {
            let lines = programmed_lines(&self.agent.logs());
            if let Some(line) = lines[before.min(lines.len())..]
                .iter()
                .find(|l| l.get("frontends").and_then(|f| f.parse().ok()) == Some(frontends))
            {
                let wall = written.elapsed().as_secs_f64() * 1e3;
                let sync = line
                    .get("elapsed_us")
                    .and_then(|v| v.parse::<f64>().ok())
                    .context("maps programmed line without elapsed_us")?;
                return Ok((wall, sync / 1e3));
            }
            if Instant::now() > deadline {
                bail!(
                    "agent did not program {frontends} frontends within {PROGRAM_TIMEOUT:?}; log tail:\n{}",
                    tail(&self.agent.logs(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `/proc/PID` of the agent, found by its unique pin path on its command line.
    fn proc_dir(&self) -> Option<std::path::PathBuf> {
        let needle = self.agent.pin_dir.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|path| {
                std::fs::read(path.join("cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains(needle.as_str()) && c.contains("lb-agent")
                })
            })
    }

    /// (VmRSS, VmHWM) in kB, from `/proc/PID/status`.
    fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(self.proc_dir()?.join("status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// CPU time the agent used so far (user + system), from `/proc/PID/stat`.
    fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(self.proc_dir()?.join("stat")).ok()?;
        // Fields after the command name (which may hold spaces) start at field 3.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Some(Duration::from_secs_f64(ticks as f64 / hz.max(1) as f64))
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Extra arguments for the agent: map sizes for the largest N, and no socket-level load
/// balancing (the benchmark measures the pods' TC path; the socket programs would attach to the
/// machine's cgroup root) when this agent has that option.
fn agent_args(binary: &Path, max_n: usize) -> anyhow::Result<Vec<String>> {
    let entries = (max_n + 2) * (BACKENDS + 1) + 1_024;
    let mut args = vec!["--max-services".to_owned(), entries.to_string()];
    let help = Command::new(binary)
        .args(["run", "--help"])
        .output()
        .context("lb-agent run --help")?;
    if String::from_utf8_lossy(&help.stdout).contains("--socket-lb") {
        args.extend(["--socket-lb".to_owned(), "false".to_owned()]);
    }
    Ok(args)
}

pub fn med(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The `p`-quantile (nearest rank) of a sample.
pub fn quantile(v: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn rate_of(r: &RateReport) -> Rate {
    Rate {
        per_second: r.per_second(),
        p50_us: r.connect_quantile_us(0.5).map_or(f64::NAN, f64::from),
        p99_us: r.connect_quantile_us(0.99).map_or(f64::NAN, f64::from),
        errors: r.errors,
    }
}

/// iperf3 from the client pod to `target` for `secs`; Gbit/s received.
fn iperf(lab: &Lab, target: SocketAddrV4, secs: u32) -> anyhow::Result<f64> {
    let mut last = None;
    // The server may still be starting on the first try.
    for _ in 0..3 {
        let child = lab
            .client()
            .command("iperf3")
            .args([
                "-c",
                &target.ip().to_string(),
                "-p",
                &target.port().to_string(),
            ])
            .args(["-t", &secs.to_string(), "-J", "--connect-timeout", "2000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting iperf3 -c")?;
        let out = wait_bounded(child, Duration::from_secs(u64::from(secs) + 20))?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = json
            .pointer("/end/sum_received/bits_per_second")
            .and_then(serde_json::Value::as_f64)
        {
            return Ok(bps / 1e9);
        }
        last = Some(format!(
            "{} {}",
            json.get("error")
                .map(ToString::to_string)
                .unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        ));
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!(
        "iperf3 via {} to {target} failed: {}",
        lab.proxy.short(),
        last.unwrap_or_default()
    )
}

/// Programs kube-proxy's full ruleset for `svcs` into an empty namespace; returns ms.
fn program_kube_proxy(lab: &Lab, svcs: &[Svc], scratch: &Path) -> anyhow::Result<f64> {
    let _ = lab.node_cmd("nft", &["flush", "ruleset"], None);
    let took = match lab.proxy {
        Proxy::Iptables => {
            let file = scratch.join("iptables.rules");
            std::fs::write(&file, kubeproxy::iptables_full(svcs, CLUSTER_CIDR))?;
            lab.node_cmd("iptables-restore", &[], Some(&file))?
        }
        Proxy::Nftables => {
            let file = scratch.join("full.nft");
            std::fs::write(&file, kubeproxy::nft_full(svcs, CLUSTER_CIDR))?;
            lab.node_cmd("nft", &["-f", &file.to_string_lossy()], None)?
        }
        Proxy::Lb | Proxy::Direct => bail!("not a kube-proxy mode"),
    };
    Ok(took.as_secs_f64() * 1e3)
}

/// Measures everything at one N.
#[expect(clippy::too_many_lines, reason = "one sequence of steps, each short")]
fn measure_n(
    cfg: &Config,
    n: usize,
    labs: &[Lab],
    binary: &Path,
    args: &[String],
    scratch: &Path,
) -> anyhow::Result<NResult> {
    let lab = |p: Proxy| labs.iter().find(|l| l.proxy == p).expect("a lab per proxy");
    let backends = labs[0].backends();
    let svcs = services(n, &backends);
    let mut res = NResult {
        n,
        ..NResult::default()
    };

    eprintln!("-- N = {n}: programming {} services per proxy", svcs.len());
    let agent = LbAgent::start(
        binary,
        lab(Proxy::Lb),
        args,
        &change_service(&backends, false),
    )?;
    let others: Vec<Svc> = svcs
        .iter()
        .filter(|s| s.name != "svc-change")
        .cloned()
        .collect();
    let (wall, sync) = agent.apply("services.yaml", &manifests(&others), svcs.len())?;
    res.program.insert(
        Proxy::Lb,
        Program {
            wall_ms: wall,
            sync_ms: Some(sync),
        },
    );
    agent.pause();
    for p in [Proxy::Iptables, Proxy::Nftables] {
        let ms = program_kube_proxy(lab(p), &svcs, scratch)?;
        res.program.insert(
            p,
            Program {
                wall_ms: ms,
                sync_ms: None,
            },
        );
    }
    for (p, prog) in &res.program {
        eprintln!("   {:<20} {:>10.1} ms", p.name(), prog.wall_ms);
    }

    let vips: Vec<SocketAddr> = svcs[..n]
        .iter()
        .map(|s| SocketAddr::V4(SocketAddrV4::new(s.vip, s.port)))
        .collect();
    let direct: Vec<SocketAddr> = backends.iter().map(|b| SocketAddr::V4(*b)).collect();
    let duration = Duration::from_secs_f64(cfg.conn_secs);
    agent.pause();
    let (mut lb_time, cpu_before) = (Duration::ZERO, agent.cpu_time());
    for round in 0..cfg.rounds {
        for k in 0..Proxy::ALL.len() {
            let p = Proxy::ALL[(k + round) % Proxy::ALL.len()];
            let targets = if p == Proxy::Direct { &direct } else { &vips };
            let seed = (n * 1_000 + round * 10 + k) as u64 + 1;
            if p == Proxy::Lb {
                agent.resume();
            }
            let slot = Instant::now();
            let report = connection_rate(
                lab(p).client(),
                targets,
                cfg.client_threads,
                duration,
                MAX_CONNECTIONS,
                seed,
            );
            if p == Proxy::Lb {
                agent.pause();
                lb_time += slot.elapsed();
            }
            let report = report?;
            ensure!(
                report.completed > 0 && report.errors * 20 <= report.completed,
                "{} at N={n}: {} connections completed, {} failed",
                p.name(),
                report.completed,
                report.errors
            );
            let rate = rate_of(&report);
            eprintln!(
                "   round {round} {:<20} {:>8.0} conn/s  connect p50 {:>5.0} us p99 {:>6.0} us  errors {}",
                p.name(),
                rate.per_second,
                rate.p50_us,
                rate.p99_us,
                rate.errors
            );
            res.rates.entry(p).or_default().push(rate);
        }
    }

    let iperf_vip = SocketAddrV4::new(svcs[n].vip, IPERF_PORT);
    let iperf_direct = SocketAddrV4::new(*backends[0].ip(), IPERF_PORT);
    for round in 0..cfg.iperf_rounds {
        for k in 0..Proxy::ALL.len() {
            let p = Proxy::ALL[(k + round) % Proxy::ALL.len()];
            let target = if p == Proxy::Direct {
                iperf_direct
            } else {
                iperf_vip
            };
            if p == Proxy::Lb {
                agent.resume();
            }
            let slot = Instant::now();
            let gbps = iperf(lab(p), target, cfg.iperf_secs);
            if p == Proxy::Lb {
                agent.pause();
                lb_time += slot.elapsed();
            }
            let gbps = gbps?;
            eprintln!(
                "   iperf3 round {round} {:<20} {gbps:>6.2} Gbit/s",
                p.name()
            );
            res.gbps.entry(p).or_default().push(gbps);
        }
    }

    if let (Some(before), Some(after)) = (cpu_before, agent.cpu_time()) {
        let pct = (after - before).as_secs_f64() / lb_time.as_secs_f64() * 100.0;
        res.agent_cpu_pct = Some(pct);
        eprintln!("   agent CPU while traffic ran: {pct:.1} % of one CPU");
    }

    // One service changes (an endpoint goes, then comes back), interleaved across proxies.
    for i in 0..cfg.changes {
        let shrunk = i % 2 == 0;
        let (before, after) = (
            change_service(&backends, !shrunk),
            change_service(&backends, shrunk),
        );
        agent.resume();
        let applied = agent.apply(
            "change.yaml",
            &manifests(std::slice::from_ref(&after)),
            svcs.len(),
        );
        agent.pause();
        let (wall, sync) = applied?;
        res.change_ms.entry(Proxy::Lb).or_default().push(wall);
        res.change_sync_ms.push(sync);

        let current: Vec<Svc> = svcs
            .iter()
            .map(|s| {
                if s.name == after.name {
                    after.clone()
                } else {
                    s.clone()
                }
            })
            .collect();
        let file = scratch.join("partial.rules");
        std::fs::write(
            &file,
            kubeproxy::iptables_partial(&current, &after, CLUSTER_CIDR),
        )?;
        let took =
            lab(Proxy::Iptables).node_cmd("iptables-restore", &["--noflush"], Some(&file))?;
        res.change_ms
            .entry(Proxy::Iptables)
            .or_default()
            .push(took.as_secs_f64() * 1e3);

        let file = scratch.join("change.nft");
        std::fs::write(&file, kubeproxy::nft_change(&before, &after, CLUSTER_CIDR))?;
        let took = lab(Proxy::Nftables).node_cmd("nft", &["-f", &file.to_string_lossy()], None)?;
        res.change_ms
            .entry(Proxy::Nftables)
            .or_default()
            .push(took.as_secs_f64() * 1e3);
    }
    for p in Proxy::PROXIES {
        let v = &res.change_ms[&p];
        eprintln!(
            "   one change: {:<20} p50 {:>8.2} ms  p99 {:>8.2} ms",
            p.name(),
            med(v),
            quantile(v, 0.99)
        );
    }
    if let Some((rss, hwm)) = agent.memory() {
        res.rss_kb = Some(rss);
        res.hwm_kb = Some(hwm);
        eprintln!(
            "   agent VmRSS {} MiB, VmHWM {} MiB",
            rss / 1024,
            hwm / 1024
        );
    }
    Ok(res)
}

fn versions() -> Vec<(String, String)> {
    let version = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_else(|| "not found".into())
    };
    vec![
        ("iptables".into(), version("iptables", "--version")),
        ("nft".into(), version("nft", "--version")),
        ("iperf3".into(), version("iperf3", "--version")),
    ]
}

/// Sections 2 and 3.
pub fn run(binary: &Path, cfg: &Config) -> anyhow::Result<Results> {
    let max_n = cfg.services.iter().copied().max().unwrap_or(1);
    let args = agent_args(binary, max_n)?;
    let scratch = std::env::temp_dir().join(lb_tests::unique_name("lb-bench-"));
    std::fs::create_dir_all(&scratch)?;
    let result = (|| {
        let labs = Proxy::ALL
            .iter()
            .map(|&p| Lab::new(p))
            .collect::<anyhow::Result<Vec<Lab>>>()?;
        let mut results = Results {
            ipvs_available: Path::new("/proc/net/ip_vs").exists()
                || Path::new("/sys/module/ip_vs").exists(),
            versions: versions(),
            agent_args: args.clone(),
            by_n: Vec::new(),
            error: None,
        };
        for &n in &cfg.services {
            match measure_n(cfg, n, &labs, binary, &args, &scratch) {
                Ok(r) => results.by_n.push(r),
                // Keep what was measured: the report shows it and says where the run stopped.
                Err(e) => {
                    results.error = Some(format!("at N = {n}: {e:#}"));
                    break;
                }
            }
        }
        Ok(results)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agents_sync_lines_with_or_without_colour() {
        let logs = "2026-01-01T00:00:00Z  INFO lb_agent::agent: datapath loaded\n\
                    2026-01-01T00:00:01Z  INFO lb_agent::agent: maps programmed services=3 frontends=3 changed=3 removed=0 elapsed_us=1234\n\
                    \u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m maps programmed \u{1b}[3mfrontends\u{1b}[0m\u{1b}[2m=\u{1b}[0m7 \u{1b}[3melapsed_us\u{1b}[0m\u{1b}[2m=\u{1b}[0m99\n";
        let lines = programmed_lines(logs);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["elapsed_us"], "1234");
        assert_eq!(lines[1]["frontends"], "7");
        assert_eq!(lines[1]["elapsed_us"], "99");
    }

    #[test]
    fn services_end_with_iperf_and_the_changing_one() {
        let backends: Vec<SocketAddrV4> = (2..12)
            .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 200, i, 2), HTTP_PORT))
            .collect();
        let svcs = services(300, &backends);
        assert_eq!(svcs.len(), 302);
        assert_eq!(svcs[299].vip, Ipv4Addr::new(10, 96, 1, 44));
        assert_eq!(svcs[300].name, "iperf");
        assert_eq!(
            change_service(&backends, true).endpoints.len(),
            BACKENDS - 1
        );
    }
}
