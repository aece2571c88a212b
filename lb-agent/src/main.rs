//! `lb-agent`: replaces kube-proxy with eBPF service load balancing.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;

use clap::{
    ArgMatches, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, parser::ValueSource,
};
use lb_agent::{
    agent::{self, RunOptions},
    gc,
    kernel::{
        DatapathMode, FlowTimeouts, LoadOptions, PortRange, ServiceCounterLevel, SocketLb,
        SocketLbScope, settings::parse_timeout,
    },
    model::NodePortAddresses,
    node::{addrs::usable, devices::DevicePatterns},
    plan::{self, NodeFacts},
    source::{SourceOptions, kube::KubeOptions, manifest::ManifestSource},
};
use lb_ebpf::{
    DEFAULT_MAX_AFFINITY, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_NEW_FLOWS,
    DEFAULT_MAX_SERVICES, DEFAULT_MAX_SNAT, DEFAULT_MAX_SOCKETS,
};

#[derive(Parser)]
#[command(
    version,
    about = "eBPF service load balancer for Kubernetes (kube-proxy replacement)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start; boxing the run flags buys nothing"
)]
enum Command {
    /// Program the datapath and keep it in sync with the services.
    Run(RunArgs),
    /// Detach the programs and remove the maps an agent pinned: the agent leaves its programs
    /// attached when it stops, so that traffic keeps flowing across restarts and upgrades; run
    /// this when uninstalling.
    Cleanup {
        /// The agent's pin directory.
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/lb")]
        bpffs: PathBuf,
    },
    /// Print the datapath's counters (translations, flows, drops by rule, XDP and TC sends), one
    /// `name value` line each, from the maps an agent pinned.
    Stats {
        /// The agent's pin directory.
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/lb")]
        bpffs: PathBuf,
    },
    /// Delete dead flows and the SNAT entries of dead flows from the maps an agent pinned, once
    /// (a running agent does this every --gc-interval), and print what was read and deleted per
    /// map.
    Gc {
        /// The agent's pin directory.
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/lb")]
        bpffs: PathBuf,
    },
    /// Print the frontends the pinned maps serve, in `lb-agent plan`'s format (so `diff` of the
    /// two is empty when the maps hold the plan), with the agent running or stopped.
    List {
        /// The agent's pin directory.
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/lb")]
        bpffs: PathBuf,
        /// `table` (plan's format) or `json`.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Only this service's frontends and health check node port.
        #[arg(long, value_name = "NS/NAME", value_parser = lb_agent::inspect::list::parse_service)]
        service: Option<lb_agent::model::NamespacedName>,
        /// Only this family's frontends (4 or 6).
        #[arg(long, value_parser = lb_agent::inspect::list::parse_family)]
        family: Option<lb_agent::model::IpFamily>,
    },
    /// Print the flow tables (one line per flow: client, service, backend, state, NAT, lifetime
    /// left) from the pinned maps.
    Flows {
        /// The agent's pin directory.
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/lb")]
        bpffs: PathBuf,
        /// Only entries with this address anywhere in their tuple or translation.
        #[arg(long, value_name = "IP")]
        addr: Option<IpAddr>,
        /// Only entries with this port anywhere in their tuple or translation.
        #[arg(long)]
        port: Option<u16>,
        /// Only TCP or UDP.
        #[arg(long, value_parser = parse_protocol)]
        protocol: Option<lb_agent::model::Protocol>,
        /// Only this service's flows.
        #[arg(long, value_name = "NS/NAME", value_parser = lb_agent::inspect::list::parse_service)]
        service: Option<lb_agent::model::NamespacedName>,
        /// Only this family (4 or 6).
        #[arg(long, value_parser = lb_agent::inspect::list::parse_family)]
        family: Option<lb_agent::model::IpFamily>,
        /// Reply and SNAT entries too, not only one line per flow.
        #[arg(long)]
        all: bool,
    },
    /// Explain what the datapath would do now with a new connection from SRC to
    /// DST:PORT/PROTO: the frontend met, source ranges, affinity, the backends, the verdict.
    Explain {
        /// The client's address.
        src: IpAddr,
        /// `ADDR:PORT/PROTO`, e.g. `10.96.0.10:53/UDP` or `[fd00::10]:80/TCP`.
        #[arg(value_parser = lb_agent::inspect::explain::parse_destination)]
        dst: lb_agent::model::Frontend,
        /// Where the packet comes from: `cluster` (a pod or node process) or `external`.
        #[arg(long, value_enum, default_value_t = lb_agent::inspect::explain::Origin::Cluster)]
        from: lb_agent::inspect::explain::Origin,
        /// The agent's pin directory.
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/lb")]
        bpffs: PathBuf,
    },
    /// Print every frontend the agent would program for a manifest directory (ClusterIPs, node
    /// ports on the given node addresses, external and load balancer IPs), the health check node
    /// ports and any problems, from the same plan the agent runs; needs no privileges.
    Plan {
        /// Directory of Service and EndpointSlice manifests.
        #[arg(long, value_name = "DIR")]
        manifests: PathBuf,
        /// This node's name, for endpoint locality.
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        /// Comma-separated addresses node ports answer on (the agent takes them from its
        /// external devices); none: no node port frontends are shown.
        #[arg(long, value_name = "LIST", default_value = "")]
        node_addresses: String,
        /// As `run --nodeport-addresses`: node ports only on the node addresses in these
        /// CIDRs, and with `primary` on the Node object's first InternalIP of each family.
        #[arg(long, value_name = "LIST", default_value = "")]
        nodeport_addresses: String,
    },
}

/// `lb-agent list -o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

fn parse_protocol(s: &str) -> Result<lb_agent::model::Protocol, String> {
    match s.to_ascii_uppercase().as_str() {
        "TCP" => Ok(lb_agent::model::Protocol::Tcp),
        "UDP" => Ok(lb_agent::model::Protocol::Udp),
        _ => Err(format!("{s:?}: tcp or udp")),
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// kube-proxy's configuration file (a `KubeProxyConfiguration`, e.g. the `kube-proxy`
    /// ConfigMap's `config.conf`): its fields that apply set the flags of the same meaning
    /// (flags given here win), fields only kube-proxy's proxiers use are reported and ignored,
    /// an unknown field is an error.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Standalone mode: a directory of Service and EndpointSlice manifests (`*.yaml`, `*.yml`,
    /// `*.json`), watched for changes, instead of the Kubernetes API.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Watch the Kubernetes API with this kubeconfig. Without it and without --manifests, the
    /// configuration is found as kubectl finds it (KUBECONFIG, ~/.kube/config), then in-cluster
    /// (the pod's service account).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Comma-separated names or globs of pod-facing devices; programs attach to matching
    /// devices now and as they appear.
    #[arg(long, value_name = "LIST", default_value = "")]
    pod_devices: String,
    /// Comma-separated names or globs of the node's devices for external traffic (node ports,
    /// external IPs, load balancer IPs). Default: every device with a non-link-local address
    /// that is neither loopback nor a pod device.
    #[arg(long, value_name = "LIST")]
    devices: Option<String>,
    /// Comma-separated CIDRs and keywords (kube-proxy's): node ports answer only on node
    /// addresses inside the CIDRs (both families may be given), and with `primary` on the Node
    /// object's first InternalIP of each family; `all` is 0.0.0.0/0 and ::/0. Default: every
    /// usable address of the external devices.
    #[arg(long, value_name = "CIDRS", default_value = "")]
    nodeport_addresses: String,
    /// How the external devices serve node ports, external IPs and load balancer IPs: `xdp`
    /// (XDP in native mode, TC finishing what XDP leaves, TC alone where XDP cannot attach),
    /// `tc`, or `auto` (XDP except on veth devices, whose peer must run an XDP program too to
    /// take frames from XDP).
    #[arg(long, value_enum, default_value_t = DatapathMode::Auto)]
    datapath_mode: DatapathMode,
    /// This node's name, for endpoint locality and its Node object (the Kubernetes source
    /// defaults to the host name, as kube-proxy does).
    #[arg(long, env = "NODE_NAME", alias = "hostname-override")]
    node_name: Option<String>,
    /// Directory on a BPF filesystem where maps are pinned; agents with different directories
    /// do not share state.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/lb")]
    bpffs: PathBuf,
    /// Address of the /healthz and /livez server.
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind_address: SocketAddr,
    /// Address of the /metrics (Prometheus text format) and /proxyMode server; kube-proxy's
    /// default, reachable from the node only.
    #[arg(long, default_value = lb_agent::metrics::DEFAULT_BIND_ADDRESS)]
    metrics_bind_address: SocketAddr,
    /// Service map entries per family (a frontend plus one per backend slot).
    #[arg(long, default_value_t = DEFAULT_MAX_SERVICES, value_parser = clap::value_parser!(u32).range(1..))]
    max_services: u32,
    /// Backends per family.
    #[arg(long, default_value_t = DEFAULT_MAX_BACKENDS, value_parser = clap::value_parser!(u32).range(1..))]
    max_backends: u32,
    /// Entries of the confirmed flow table per family (flows whose client spoke again after a
    /// reply; each takes two entries). Changed across a restart, the flows are copied into the
    /// table of the new size.
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS, value_parser = clap::value_parser!(u32).range(2..))]
    max_flows: u32,
    /// Entries of the unconfirmed flow table per family (a SYN, a datagram without answer; each
    /// takes two entries): kept apart so that a flood of new flows never evicts an established
    /// one.
    #[arg(long, default_value_t = DEFAULT_MAX_NEW_FLOWS, value_parser = clap::value_parser!(u32).range(2..))]
    max_new_flows: u32,
    /// SNATed flows per family (external traffic sent to a backend on another node). A hash
    /// map: when full, new SNATed flows are dropped rather than live ones evicted.
    #[arg(long, default_value_t = DEFAULT_MAX_SNAT, value_parser = clap::value_parser!(u32).range(1..))]
    max_snat: u32,
    /// Sockets of node processes translated at connect()/sendmsg() remembered per family, for
    /// getpeername()/recvmsg().
    #[arg(long, default_value_t = DEFAULT_MAX_SOCKETS, value_parser = clap::value_parser!(u32).range(1..))]
    max_sockets: u32,
    /// Session affinity entries per family: clients times frontends with `sessionAffinity:
    /// ClientIP` (least recently used ones go when full, and those clients choose anew).
    #[arg(long, default_value_t = DEFAULT_MAX_AFFINITY, value_parser = clap::value_parser!(u32).range(1..))]
    max_affinity: u32,
    /// Socket-level load balancing of traffic sent by processes on the node (cgroup hooks).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    socket_lb: bool,
    /// Which sockets the socket programs translate: `all` (every network namespace of the
    /// cgroup: pods too) or `host` (the agent's namespace only; pods see the service address
    /// and the TC programs translate their packets, as service meshes, KubeVirt and Kata need).
    #[arg(long, value_enum, default_value_t = SocketLbScope::All)]
    socket_lb_scope: SocketLbScope,
    /// What the per-frontend traffic counters count: `off`, `flows` (new flows, refusals and
    /// drops; no per-packet cost) or `packets` (every translated packet and its bytes too, at a
    /// cost per packet).
    #[arg(long, value_enum, default_value_t = ServiceCounterLevel::Flows)]
    service_counters: ServiceCounterLevel,
    /// How long a confirmed TCP connection lives after its last packet (kube-proxy's conntrack
    /// `tcpEstablishedTimeout`). Durations such as `24h`, `90s`, `1h30m`, from 1s to 7 days.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_timeout)]
    tcp_established_timeout: Duration,
    /// How long a TCP flow not confirmed yet lives (a SYN whose handshake did not finish).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_timeout)]
    tcp_syn_timeout: Duration,
    /// How long a TCP flow lives once closed in both directions (a FIN or RST from each
    /// side), or reset before it was confirmed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    tcp_close_timeout: Duration,
    /// How long a confirmed UDP flow (answered, then the client spoke again) lives after its
    /// last datagram (kube-proxy's conntrack `udpStreamTimeout`).
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_timeout)]
    udp_timeout: Duration,
    /// How long a UDP flow without an answer lives (kube-proxy's conntrack `udpTimeout`).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    udp_unreplied_timeout: Duration,
    /// Source ports of SNATed flows (external traffic sent to a backend on another node),
    /// `MIN-MAX` inclusive: at least 64 ports, none below 1024. Keep them out of the node's
    /// ephemeral ports (`net.ipv4.ip_local_port_range`) or reserve them
    /// (`net.ipv4.ip_local_reserved_ports`); the agent warns at start when they overlap.
    #[arg(long, value_name = "MIN-MAX", default_value_t = PortRange::default())]
    snat_ports: PortRange,
    /// cgroup2 directory for the socket programs; only processes below it are affected.
    /// Default: the host's cgroup2 root (a cgroup2 hierarchy is mounted when the host has only
    /// cgroup v1).
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// How often dead flows, and the SNAT entries (source ports) of dead flows, are deleted
    /// from the maps, e.g. `30s` or `2m`; not 0.
    #[arg(long, value_name = "DURATION", default_value = gc::periodic::DEFAULT_INTERVAL, value_parser = gc::periodic::parse_interval)]
    gc_interval: std::time::Duration,
}

/// Default log filter. aya warns at every start, with a page of BTF dump, that the kernel
/// refused the object's BTF: Rust type names such as `MaybeUninit<u8>` (from aya-log's level
/// global) are not valid BTF names. aya then loads without object BTF, which our maps and
/// programs do not need, so that one warning is hidden unless RUST_LOG asks for it.
const DEFAULT_LOG_FILTER: &str = "info,aya::bpf=error";

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Parses `--node-addresses`: comma-separated IP addresses, sorted as the agent sorts them;
/// the ones the agent never serves node ports on (loopback, link-local) are left out, with a
/// warning.
fn parse_addresses(list: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let addr: IpAddr = s
            .parse()
            .map_err(|_| anyhow::anyhow!("--node-addresses: {s:?} is not an IP address"))?;
        if usable(&addr) {
            out.push(addr);
        } else {
            eprintln!("warning: --node-addresses: {addr} never serves node ports; left out");
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `lb-agent plan`: the plan as [`plan::Desired`] prints it; warnings and problems on stderr.
/// Fails when there are problems.
fn plan(
    manifests: PathBuf,
    node_name: Option<String>,
    node_addresses: &str,
    nodeport_addresses: &str,
) -> anyhow::Result<bool> {
    let nodeport = NodePortAddresses::parse(nodeport_addresses)
        .map_err(|e| anyhow::anyhow!("--nodeport-addresses: {e}"))?;
    let mut addresses = parse_addresses(node_addresses)?;
    // As the agent's device scan: the ranges narrow the addresses; `primary` the plan decides.
    let cidrs = nodeport.scan_cidrs();
    addresses.retain(|a| cidrs.is_empty() || cidrs.iter().any(|c| c.contains(a)));
    let node = NodeFacts {
        name: node_name,
        addresses,
        devices: Vec::new(),
        nodeport,
    };
    let snapshot = ManifestSource::new(&manifests)
        .read(false)
        .with_context(|| format!("reading {}", manifests.display()))?
        .unwrap_or_default();
    let desired = plan::plan(&snapshot, &node);
    print!("{desired}");
    for w in &snapshot.warnings {
        eprintln!("warning: {w}");
    }
    let problems: Vec<String> = snapshot
        .problems
        .iter()
        .cloned()
        .chain(desired.problems.iter().map(ToString::to_string))
        .collect();
    for p in &problems {
        eprintln!("error: {p}");
    }
    Ok(problems.is_empty())
}

/// `lb-agent list`.
fn list(
    bpffs: &std::path::Path,
    output: Output,
    filter: &lb_agent::inspect::list::Filter,
) -> anyhow::Result<bool> {
    let mut listing = lb_agent::inspect::read_listing(bpffs)?;
    listing.filter(filter);
    match output {
        Output::Table => print!("{}", listing.desired),
        Output::Json => println!("{:#}", listing.to_json()),
    }
    for u in &listing.unlisted {
        eprintln!("warning: not listed: {u}");
    }
    Ok(true)
}

/// `lb-agent flows`.
fn flows(
    bpffs: &std::path::Path,
    filter: &lb_agent::inspect::flows::FlowFilter,
) -> anyhow::Result<bool> {
    use lb_agent::inspect::{self, flows};
    let (maps, contents) = inspect::read_contents(bpffs)?;
    let names = inspect::decoded_names(&contents);
    for row in inspect::read_flows(&maps, gc::monotonic_now_ns()) {
        let service = row
            .rev_nat_id
            .and_then(|id| flows::service_of(&names, id))
            .map(|(s, _)| s);
        if filter.keeps(&row, service) {
            println!("{}", flows::format_row(&row, &names));
        }
    }
    Ok(true)
}

/// `lb-agent explain`.
fn explain(
    bpffs: &std::path::Path,
    src: IpAddr,
    dst: lb_agent::model::Frontend,
    from: lb_agent::inspect::explain::Origin,
) -> anyhow::Result<bool> {
    use lb_agent::{inspect, lbmap::Scope};
    let (_, contents) = inspect::read_contents(bpffs)?;
    let listing = inspect::list::Listing::of(&contents);
    let in_cluster = from == inspect::explain::Origin::Cluster
        && listing
            .desired
            .frontends
            .get(&dst)
            .is_some_and(|s| s.internal_backends.is_some());
    let scope = if in_cluster {
        Scope::Internal
    } else {
        Scope::Default
    };
    let affinity = match inspect::rev_nat_id(&contents, &dst, scope) {
        Some(id) => inspect::affinity_entry(bpffs, &contents, src, id, gc::monotonic_now_ns())?,
        None => None,
    };
    print!(
        "{}",
        inspect::explain::explain(&listing, src, dst, from, affinity)
    );
    Ok(true)
}

/// `--config`: what the file sets goes into the flags it did not come on the command line or
/// in the environment for; what it sets in vain is reported, once.
fn apply_config(mut args: RunArgs, matches: &ArgMatches) -> anyhow::Result<RunArgs> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let config = lb_agent::config::load(&path)?;
    let given = |id: &str| {
        matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let mut applied: Vec<&str> = Vec::new();
    let s = config.settings;
    if let Some(v) = s.node_name
        && !given("node_name")
    {
        args.node_name = Some(v);
        applied.push("hostnameOverride");
    }
    // --manifests means no API server: the file's kubeconfig has nothing to do.
    if let Some(v) = s.kubeconfig
        && !given("kubeconfig")
        && args.manifests.is_none()
    {
        args.kubeconfig = Some(v);
        applied.push("clientConnection.kubeconfig");
    }
    if let Some(v) = s.healthz_bind_address
        && !given("healthz_bind_address")
    {
        args.healthz_bind_address = v;
        applied.push("healthzBindAddress");
    }
    if let Some(v) = s.metrics_bind_address
        && !given("metrics_bind_address")
    {
        args.metrics_bind_address = v;
        applied.push("metricsBindAddress");
    }
    if let Some(v) = s.nodeport_addresses
        && !given("nodeport_addresses")
    {
        args.nodeport_addresses = v;
        applied.push("nodePortAddresses");
    }
    if let Some(v) = s.tcp_established_timeout
        && !given("tcp_established_timeout")
    {
        args.tcp_established_timeout = v;
        applied.push("conntrack.tcpEstablishedTimeout");
    }
    if let Some(v) = s.udp_timeout
        && !given("udp_timeout")
    {
        args.udp_timeout = v;
        applied.push("conntrack.udpStreamTimeout");
    }
    if let Some(v) = s.udp_unreplied_timeout
        && !given("udp_unreplied_timeout")
    {
        args.udp_unreplied_timeout = v;
        applied.push("conntrack.udpTimeout");
    }
    tracing::info!(
        path = %path.display(),
        applied = %applied.join(","),
        "read kube-proxy's configuration"
    );
    for ignored in &config.ignored {
        tracing::warn!("--config {}: {ignored}", path.display());
    }
    Ok(args)
}

/// `lb-agent run`.
fn run(args: RunArgs) -> anyhow::Result<bool> {
    let pod_devices = DevicePatterns::parse(&args.pod_devices)
        .map_err(|e| anyhow::anyhow!("--pod-devices: {e}"))?;
    let devices = args
        .devices
        .as_deref()
        .map(DevicePatterns::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--devices: {e}"))?;
    let nodeport_addresses = lb_agent::model::NodePortAddresses::parse(&args.nodeport_addresses)
        .map_err(|e| anyhow::anyhow!("--nodeport-addresses: {e}"))?;
    let source = match args.manifests {
        Some(dir) => SourceOptions::Manifests(dir),
        None => SourceOptions::Kubernetes(KubeOptions {
            kubeconfig: args.kubeconfig,
        }),
    };
    let opts = RunOptions {
        source,
        pod_devices,
        node_name: args.node_name,
        load: LoadOptions {
            pin_dir: args.bpffs,
            max_services: args.max_services,
            max_backends: args.max_backends,
            max_flows: args.max_flows,
            max_new_flows: args.max_new_flows,
            max_snat: args.max_snat,
            max_sockets: args.max_sockets,
            max_affinity: args.max_affinity,
            timeouts: FlowTimeouts {
                tcp_established: args.tcp_established_timeout,
                tcp_syn: args.tcp_syn_timeout,
                tcp_close: args.tcp_close_timeout,
                udp: args.udp_timeout,
                udp_unreplied: args.udp_unreplied_timeout,
            },
            snat_ports: args.snat_ports,
            socket_lb: match (args.socket_lb, args.cgroup) {
                (false, _) => SocketLb::Off,
                (true, Some(dir)) => SocketLb::Cgroup(dir),
                (true, None) => SocketLb::HostRoot,
            },
            socket_lb_scope: args.socket_lb_scope,
            service_counters: args.service_counters,
        },
        healthz_bind_address: args.healthz_bind_address,
        metrics_bind_address: args.metrics_bind_address,
        devices,
        nodeport_addresses,
        datapath_mode: args.datapath_mode,
        gc_interval: args.gc_interval,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(agent::run(opts)).map(|()| true)
}

fn main() -> ExitCode {
    init_logging();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Plan {
            manifests,
            node_name,
            node_addresses,
            nodeport_addresses,
        } => plan(manifests, node_name, &node_addresses, &nodeport_addresses),
        Command::Stats { bpffs } => lb_agent::kernel::read_stats(&bpffs)
            .map(|stats| {
                for (name, value) in stats {
                    println!("{name} {value}");
                }
                true
            })
            .map_err(|e| anyhow::anyhow!("reading the counters under {}: {e}", bpffs.display())),
        Command::Cleanup { bpffs } => lb_agent::kernel::cleanup(&bpffs)
            .map(|()| {
                println!(
                    "removed {} (programs detached, maps unpinned)",
                    bpffs.display()
                );
                true
            })
            .map_err(|e| anyhow::anyhow!("removing {}: {e}", bpffs.display())),
        Command::Gc { bpffs } => gc::Collector::open(&bpffs)
            .and_then(|mut collector| collector.run())
            .map(|report| {
                println!("{report}");
                true
            })
            .map_err(|e| anyhow::anyhow!("collecting the maps under {}: {e}", bpffs.display())),
        Command::List {
            bpffs,
            output,
            service,
            family,
        } => list(
            &bpffs,
            output,
            &lb_agent::inspect::list::Filter { service, family },
        ),
        Command::Flows {
            bpffs,
            addr,
            port,
            protocol,
            service,
            family,
            all,
        } => flows(
            &bpffs,
            &lb_agent::inspect::flows::FlowFilter {
                addr,
                port,
                protocol,
                family,
                service,
                all,
            },
        ),
        Command::Explain {
            src,
            dst,
            from,
            bpffs,
        } => explain(&bpffs, src, dst, from),
        Command::Run(args) => {
            let run_matches = matches.subcommand_matches("run").expect("parsed `run`");
            apply_config(args, run_matches).and_then(run)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let args = ["lb-agent", "run"].iter().chain(extra);
        match Cli::try_parse_from(args)?.command {
            Command::Run(args) => Ok(args),
            _ => unreachable!("parsed `run`"),
        }
    }

    #[test]
    fn datapath_settings_default_to_the_programs_own() {
        let args = run_args(&[]).unwrap();
        let timeouts = FlowTimeouts {
            tcp_established: args.tcp_established_timeout,
            tcp_syn: args.tcp_syn_timeout,
            tcp_close: args.tcp_close_timeout,
            udp: args.udp_timeout,
            udp_unreplied: args.udp_unreplied_timeout,
        };
        assert_eq!(timeouts, FlowTimeouts::default());
        assert_eq!(args.snat_ports, PortRange::default());
        assert_eq!(args.max_flows, DEFAULT_MAX_FLOWS);
        assert_eq!(args.max_new_flows, DEFAULT_MAX_NEW_FLOWS);
        assert_eq!(args.max_snat, DEFAULT_MAX_SNAT);
    }

    #[test]
    fn datapath_settings_parse() {
        let args = run_args(&[
            "--tcp-established-timeout",
            "2h",
            "--udp-unreplied-timeout",
            "5s",
            "--snat-ports",
            "40000-40999",
            "--max-new-flows",
            "1000",
            "--max-snat",
            "500",
        ])
        .unwrap();
        assert_eq!(args.tcp_established_timeout, Duration::from_secs(7200));
        assert_eq!(args.udp_unreplied_timeout, Duration::from_secs(5));
        assert_eq!(
            args.snat_ports,
            PortRange {
                min: 40_000,
                max: 40_999
            }
        );
        assert_eq!((args.max_new_flows, args.max_snat), (1000, 500));
    }

    #[test]
    fn bad_datapath_settings_are_refused_naming_the_flag() {
        for (flag, value, reason) in [
            ("--tcp-syn-timeout", "0s", "zero"),
            ("--udp-timeout", "8d", "longer than"),
            ("--tcp-close-timeout", "10", "not a duration"),
            ("--snat-ports", "30000-20000", "above the last"),
            ("--snat-ports", "500-2000", "privileged"),
            ("--snat-ports", "20000-20010", "at least 64"),
            ("--snat-ports", "20000", "MIN-MAX"),
            ("--max-new-flows", "1", "not in 2.."),
            ("--max-snat", "0", "not in 1.."),
        ] {
            let err = run_args(&[flag, value])
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(flag) && err.contains(reason),
                "{flag} {value}: {err}"
            );
        }
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    fn run_with(extra: &[&str]) -> anyhow::Result<RunArgs> {
        let argv = ["lb-agent", "run"].iter().chain(extra);
        let matches = Cli::command().try_get_matches_from(argv)?;
        let Command::Run(args) = Cli::from_arg_matches(&matches)?.command else {
            unreachable!("parsed `run`")
        };
        apply_config(args, matches.subcommand_matches("run").expect("run"))
    }

    fn testdata(name: &str) -> String {
        format!("{}/testdata/config/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn the_file_sets_what_the_command_line_leaves_at_its_default() {
        let tuned = testdata("tuned.yaml");
        let args = run_with(&["--config", &tuned]).unwrap();
        assert_eq!(args.node_name.as_deref(), Some("worker-7"));
        assert_eq!(args.healthz_bind_address, "0.0.0.0:20256".parse().unwrap());
        assert_eq!(args.metrics_bind_address, "[::]:10249".parse().unwrap());
        assert_eq!(args.nodeport_addresses, "primary,192.168.100.0/24");
        assert_eq!(args.tcp_established_timeout, Duration::from_secs(7200));
        assert_eq!(args.udp_timeout, Duration::from_secs(300));
        assert_eq!(args.udp_unreplied_timeout, Duration::from_secs(45));
        assert_eq!(
            args.kubeconfig.as_deref(),
            Some(std::path::Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let tuned = testdata("tuned.yaml");
        let args = run_with(&[
            "--config",
            &tuned,
            "--hostname-override",
            "flag-node",
            "--metrics-bind-address",
            "127.0.0.1:9999",
            "--udp-timeout",
            "1m",
            // Given explicitly with the default's value: still the flag's.
            "--healthz-bind-address",
            "0.0.0.0:10256",
        ])
        .unwrap();
        assert_eq!(args.node_name.as_deref(), Some("flag-node"));
        assert_eq!(args.metrics_bind_address, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(args.udp_timeout, Duration::from_secs(60));
        assert_eq!(args.healthz_bind_address, "0.0.0.0:10256".parse().unwrap());
        // What no flag said still comes from the file.
        assert_eq!(args.udp_unreplied_timeout, Duration::from_secs(45));

        // Standalone mode: the file's kubeconfig is not used (the flags conflict).
        let dir = lb_tests::manifests::ManifestDir::new().unwrap();
        let args = run_with(&[
            "--config",
            &tuned,
            "--manifests",
            dir.path().to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(args.kubeconfig, None);
    }

    #[test]
    fn a_bad_file_fails_naming_the_file_and_the_field() {
        let dir = lb_tests::manifests::ManifestDir::new().unwrap();
        dir.write(
            "config.conf",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             conntrack:\n  tcpEstablishedTimeot: 1h\n",
        )
        .unwrap();
        let path = dir.path().join("config.conf");
        let err = run_with(&["--config", path.to_str().unwrap()])
            .map(|_| ())
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("config.conf") && err.contains("tcpEstablishedTimeot"),
            "{err}"
        );
        let missing = run_with(&["--config", "/nonexistent/config.conf"])
            .map(|_| ())
            .unwrap_err();
        assert!(format!("{missing:#}").contains("/nonexistent/config.conf"));
    }
}
