//! The agent's run loop: source -> model -> selection -> datapath writer, plus device
//! attachment, the kernel logger and the health server.
//!
//! Every sync rebuilds the desired state from the source's whole current state (never from the
//! change events, which only trigger it), after a short debounce so that a burst of changes
//! becomes one sync, and again periodically.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use ipnet::IpNet;

use anyhow::Context as _;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, sync::mpsc};
use tracing::{debug, error, info, warn};

use crate::{
    bpf::{BpfMaps, Datapath, DatapathMode, LoadOptions},
    datapath::Writer,
    devices::{self, DevicePatterns},
    external,
    health::{self, Health},
    healthcheck::{HealthCheckServers, ServiceHealth},
    k8s,
    model::IpFamily,
    nodeaddr,
    selection::{self, NodeContext},
    source::{Source, SourceOptions},
};

/// How long a change may wait for a sync before health turns 503 (kube-proxy: 2 x sync period).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often devices are rescanned.
const DEVICE_SCAN_INTERVAL: Duration = Duration::from_millis(500);
/// How often a sync also deletes map entries the writer did not program: a full resync that
/// repairs drift, e.g. entries another process or a crashed run left behind.
const REPAIR_INTERVAL: Duration = Duration::from_secs(30);
/// How often to say that the agent still waits for its source's first complete state.
const WAITING_NOTICE: Duration = Duration::from_secs(10);

/// Options of `lb-agent run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where services come from: manifest files or the Kubernetes API.
    pub source: SourceOptions,
    /// Names or globs of the pod-facing devices the programs attach to.
    pub pod_devices: DevicePatterns,
    /// This node's name, for endpoint locality and the Node object; with the Kubernetes source
    /// it defaults to the host name, as kube-proxy's.
    pub node_name: Option<String>,
    /// Map sizes, pin directory and socket programs.
    pub load: LoadOptions,
    /// Address of `/healthz` and `/livez`.
    pub healthz_bind_address: SocketAddr,
    /// The node's devices for external traffic (node ports, external and load balancer IPs);
    /// `None`: every device with a usable address that is not a pod device.
    pub devices: Option<DevicePatterns>,
    /// `--nodeport-addresses`: node ports answer only on node addresses in these CIDRs.
    pub nodeport_addresses: Vec<IpNet>,
    /// XDP, TC or a choice per device for external traffic.
    pub datapath_mode: DatapathMode,
}

/// Which devices are external: the `--devices` patterns, or by default every device with a
/// usable address except loopback and pod devices.
fn is_external_device(
    name: &str,
    devices: Option<&DevicePatterns>,
    pod_devices: &DevicePatterns,
    addrs: &[nodeaddr::DeviceAddr],
) -> bool {
    match devices {
        Some(patterns) => patterns.matches(name),
        None => {
            name != "lo"
                && !pod_devices.matches(name)
                && addrs
                    .iter()
                    .any(|a| a.device == name && nodeaddr::usable(&a.addr))
        }
    }
}

/// Logs lines not logged last time, so periodic resyncs do not repeat themselves.
#[derive(Default)]
struct Once {
    last: BTreeSet<String>,
}

impl Once {
    fn log(&mut self, lines: impl IntoIterator<Item = String>, level: tracing::Level) {
        let now: BTreeSet<String> = lines.into_iter().collect();
        for line in now.difference(&self.last) {
            if level == tracing::Level::ERROR {
                error!("{line}");
            } else {
                warn!("{line}");
            }
        }
        self.last = now;
    }
}

struct Syncer {
    source: Source,
    writer: Writer<BpfMaps>,
    devices: Option<DevicePatterns>,
    pod_devices: DevicePatterns,
    nodeport_cidrs: Vec<IpNet>,
    /// SNAT source per family last programmed.
    snat_addrs: [Option<IpAddr>; 2],
    health_checks: BTreeMap<u16, ServiceHealth>,
    node_name: Option<String>,
    health: Health,
    synced_once: bool,
    /// The last sync programmed everything it meant to.
    last_sync_ok: bool,
    last_sweep: Instant,
    problems: Once,
}

impl Syncer {
    /// Rebuilds the desired state and programs it. A periodic resync (`periodic`) skips the
    /// rebuild when the source knows nothing changed, the last sync programmed everything and no
    /// drift repair is due: at tens of thousands of services a rebuild takes noticeable CPU.
    fn sync(&mut self, periodic: bool) {
        let started = Instant::now();
        let sweep_due = !self.synced_once || self.last_sweep.elapsed() >= REPAIR_INTERVAL;
        let only_if_changed = periodic && self.last_sync_ok && !sweep_due;
        let snapshot = match self.source.snapshot(only_if_changed) {
            Ok(Some(s)) => s,
            Ok(None) => {
                self.health.updated();
                return;
            }
            Err(e) => {
                error!("{:#}; keeping the programmed state", anyhow::Error::new(e));
                self.last_sync_ok = false;
                return;
            }
        };
        if let Some(node) = &snapshot.node {
            self.health.set_node_eligible(node.eligible);
        }
        let node = NodeContext {
            node_name: self.node_name.clone(),
            zone: snapshot.node.and_then(|n| n.zone),
        };
        let services = snapshot.services.len();
        let snapshot_done = started.elapsed();
        let mut sel = selection::select(&snapshot.services, &snapshot.slices, &node);
        let select_done = started.elapsed();
        let all_addrs = nodeaddr::list().unwrap_or_else(|e| {
            warn!("listing the node's addresses: {e}");
            Vec::new()
        });
        let node_addrs = nodeaddr::nodeport_addresses(
            &all_addrs,
            |d| is_external_device(d, self.devices.as_ref(), &self.pod_devices, &all_addrs),
            &self.nodeport_cidrs,
        );
        self.program_snat_addrs(&node_addrs);
        let local_ips = external::local_endpoint_ips(&snapshot.slices, self.node_name.as_deref());
        let mut frontends = std::mem::take(&mut sel.frontends);
        let mut problems = std::mem::take(&mut sel.problems);
        external::add_external_frontends(
            &sel,
            &snapshot.services,
            &node_addrs,
            &local_ips,
            &mut frontends,
            &mut problems,
        );
        self.health_checks = external::health_checks(&sel, &snapshot.services);
        sel.frontends = frontends;
        self.problems.log(
            snapshot.problems.into_iter().chain(problems),
            tracing::Level::ERROR,
        );
        // Warnings come once per file read or object version.
        for w in snapshot.warnings {
            warn!("{w}");
        }
        let external_done = started.elapsed();
        let applied = self.writer.apply(&sel.frontends);
        debug!(
            snapshot_us = snapshot_done.as_micros() as u64,
            select_us = (select_done - snapshot_done).as_micros() as u64,
            external_us = (external_done - select_done).as_micros() as u64,
            apply_us = (started.elapsed() - external_done).as_micros() as u64,
            "sync"
        );
        for e in &applied.errors {
            error!("{e}");
        }
        if applied.frontends_changed + applied.frontends_removed > 0 {
            info!(
                services,
                frontends = sel.frontends.len(),
                changed = applied.frontends_changed,
                removed = applied.frontends_removed,
                elapsed_us = started.elapsed().as_micros() as u64,
                "maps programmed"
            );
        }
        self.last_sync_ok = applied.errors.is_empty();
        if sweep_due && applied.errors.is_empty() {
            match self.writer.sweep() {
                Ok(0) => {}
                Ok(n) if !self.synced_once => {
                    info!("repaired or removed {n} map entries left by an earlier run")
                }
                Ok(n) => {
                    warn!("repaired {n} map entries that drifted from what the agent programmed")
                }
                Err(e) => warn!("repairing map drift: {e}"),
            }
            self.synced_once = true;
            self.last_sweep = Instant::now();
        }
        if applied.errors.is_empty() {
            self.health.updated();
        } else {
            self.health.queued();
        }
    }
}

impl Syncer {
    /// The source address per family of external flows SNATed to other nodes' backends.
    fn program_snat_addrs(&mut self, node_addrs: &[IpAddr]) {
        for (i, family) in [IpFamily::V4, IpFamily::V6].into_iter().enumerate() {
            let addr = nodeaddr::snat_address(node_addrs, family == IpFamily::V6);
            if self.snat_addrs[i] == addr {
                continue;
            }
            match self.writer.maps_mut().set_node_addr(family, addr) {
                Ok(()) => {
                    info!(
                        "{family} node address for external traffic: {}",
                        addr.map_or_else(|| "none".to_owned(), |a| a.to_string())
                    );
                    self.snat_addrs[i] = addr;
                }
                Err(e) => error!("setting the {family} node address: {e}"),
            }
        }
    }
}

/// A writer that takes over what an earlier run left in the pinned maps, so a restart rewrites
/// nothing that is still right.
fn resume_writer(maps: BpfMaps, max_backends: u32) -> Writer<BpfMaps> {
    let mut writer = Writer::new(maps, max_backends);
    match writer.adopt() {
        Ok(0) => {}
        Ok(n) => info!("took over {n} frontends from the pinned maps of an earlier run"),
        Err(e) => warn!("reading the pinned maps of an earlier run: {e}; rewriting them"),
    }
    writer
}

/// Attaches the external programs to the node's external devices and forgets vanished ones.
fn scan_ext_devices(
    dp: &mut Datapath,
    devices: Option<&DevicePatterns>,
    pod_devices: &DevicePatterns,
    mode: DatapathMode,
    failed: &mut HashMap<String, u32>,
) -> Option<Vec<nodeaddr::DeviceAddr>> {
    let (Ok(present), Ok(addrs)) = (devices::list(), nodeaddr::list()) else {
        warn!("listing network devices and addresses failed");
        return None;
    };
    let attached: HashMap<String, u32> = dp.ext_devices().map(|(n, i)| (n.to_owned(), i)).collect();
    for (name, ifindex) in &attached {
        if !present.iter().any(|(n, i)| n == name && i == ifindex) {
            dp.detach_ext_device(name);
        }
    }
    for (name, ifindex) in present {
        if !is_external_device(&name, devices, pod_devices, &addrs)
            || attached.get(&name) == Some(&ifindex)
        {
            continue;
        }
        match dp.attach_ext_device(&name, ifindex, mode) {
            Ok(None) => {
                info!(
                    "attached to external device {name} (ifindex {ifindex}): XDP (native) and TC"
                );
                failed.remove(&name);
            }
            Ok(Some(why)) => {
                let line = format!(
                    "attached to external device {name} (ifindex {ifindex}): TC only, no XDP: {why}"
                );
                if mode == DatapathMode::Xdp {
                    warn!("{line}");
                } else {
                    info!("{line}");
                }
                failed.remove(&name);
            }
            Err(e) => {
                if failed.insert(name.clone(), ifindex) != Some(ifindex) {
                    error!("attaching to external device {name}: {e}");
                }
            }
        }
    }
    Some(addrs)
}

/// Attaches to new matching devices and forgets vanished ones.
fn scan_devices(dp: &mut Datapath, patterns: &DevicePatterns, failed: &mut HashMap<String, u32>) {
    let present = match devices::list() {
        Ok(d) => d,
        Err(e) => {
            warn!("listing network devices: {e}");
            return;
        }
    };
    let attached: HashMap<String, u32> = dp.pod_devices().map(|(n, i)| (n.to_owned(), i)).collect();
    for (name, ifindex) in &attached {
        if !present.iter().any(|(n, i)| n == name && i == ifindex) {
            debug!("pod device {name} went away");
            dp.detach_pod_device(name);
        }
    }
    for (name, ifindex) in present {
        if !patterns.matches(&name) || attached.get(&name) == Some(&ifindex) {
            continue;
        }
        match dp.attach_pod_device(&name, ifindex) {
            Ok(()) => {
                info!("attached to pod device {name} (ifindex {ifindex})");
                failed.remove(&name);
            }
            Err(e) => {
                if failed.insert(name.clone(), ifindex) != Some(ifindex) {
                    error!("attaching to pod device {name}: {e}");
                }
            }
        }
    }
}

/// Forwards kernel-side aya-log records to the agent's logger.
fn spawn_kernel_logger(dp: &mut Datapath) {
    match aya_log::EbpfLogger::init(dp.ebpf_mut()) {
        // SAFETY: the logger owns its ring buffer's fd and neither closes nor replaces it while
        // registered.
        Ok(logger) => {
            match unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            {
                Ok(mut fd) => {
                    tokio::spawn(async move {
                        loop {
                            let Ok(mut guard) = fd.readable_mut().await else {
                                return;
                            };
                            guard.get_inner_mut().flush();
                            guard.clear_ready();
                        }
                    });
                }
                Err(e) => warn!("kernel log records will not be shown: {e}"),
            }
        }
        Err(e) => warn!("kernel log records will not be shown: {e}"),
    }
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // The source first: a bad kubeconfig or manifest directory fails before the datapath is
    // touched.
    let node_name = match (&opts.source, &opts.node_name) {
        (_, Some(name)) => Some(name.clone()),
        (SourceOptions::Kubernetes(_), None) => k8s::hostname(),
        (SourceOptions::Manifests(_), None) => None,
    };
    let (changes_tx, mut changes) = mpsc::unbounded_channel();
    let source = Source::start(&opts.source, node_name.as_deref(), changes_tx)
        .await
        .context("starting the source of services")?;

    let (mut dp, maps) = Datapath::load(&opts.load).context("loading the datapath")?;
    info!(pin_dir = %opts.load.pin_dir.display(), "datapath loaded");
    spawn_kernel_logger(&mut dp);

    let health = Health::new(HEALTH_TIMEOUT);
    let listener = tokio::net::TcpListener::bind(opts.healthz_bind_address)
        .await
        .with_context(|| format!("binding healthz to {}", opts.healthz_bind_address))?;
    let server_health = health.clone();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, health::router(server_health)).await {
            error!("healthz server: {e}");
        }
    });

    let mut failed_devices = HashMap::new();
    let mut failed_ext = HashMap::new();
    // Returns the node's addresses it listed.
    let mut scan_all = |dp: &mut Datapath| {
        scan_devices(dp, &opts.pod_devices, &mut failed_devices);
        scan_ext_devices(
            dp,
            opts.devices.as_ref(),
            &opts.pod_devices,
            opts.datapath_mode,
            &mut failed_ext,
        )
    };
    scan_all(&mut dp);
    let mut device_tick = tokio::time::interval(DEVICE_SCAN_INTERVAL);
    // After a stall (a starved CPU, a stopped process) one tick, not a burst of missed ones.
    device_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;

    // The first sync waits for the complete state: programming a partial view would delete
    // what an earlier run left in the pinned maps and still serves. Meanwhile devices are
    // attached, /livez answers 200 and /healthz 503.
    {
        let ready = source.ready();
        tokio::pin!(ready);
        let mut notice =
            tokio::time::interval_at(tokio::time::Instant::now() + WAITING_NOTICE, WAITING_NOTICE);
        loop {
            tokio::select! {
                r = &mut ready => {
                    r.context("waiting for the source's first complete state")?;
                    break;
                }
                _ = device_tick.tick() => {
                    scan_all(&mut dp);
                }
                _ = notice.tick() => info!("still waiting for the first complete list from the API server"),
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
            }
        }
    }

    let debounce = source.debounce();
    let mut resync_tick = tokio::time::interval(source.resync_interval());
    resync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut syncer = Syncer {
        source,
        writer: resume_writer(maps, opts.load.max_backends),
        devices: opts.devices.clone(),
        pod_devices: opts.pod_devices.clone(),
        nodeport_cidrs: opts.nodeport_addresses.clone(),
        snat_addrs: [None, None],
        health_checks: BTreeMap::new(),
        node_name,
        health: health.clone(),
        synced_once: false,
        last_sync_ok: false,
        last_sweep: Instant::now(),
        problems: Once::default(),
    };
    let mut health_check_servers = HealthCheckServers::default();
    syncer.sync(false);
    health_check_servers
        .update(&syncer.health_checks, &health)
        .await;
    resync_tick.reset();
    let mut last_addrs = nodeaddr::list().ok();
    loop {
        tokio::select! {
            Some(()) = changes.recv() => {
                health.queued();
                tokio::time::sleep(debounce).await;
                while changes.try_recv().is_ok() {}
                syncer.sync(false);
                health_check_servers.update(&syncer.health_checks, &health).await;
            }
            _ = resync_tick.tick() => {
                syncer.sync(true);
                health_check_servers.update(&syncer.health_checks, &health).await;
            }
            _ = device_tick.tick() => {
                // A node address that comes or goes changes the node ports: sync at once rather
                // than at the next periodic resync.
                let addrs = scan_all(&mut dp);
                if addrs.is_some() && addrs != last_addrs {
                    if last_addrs.is_some() {
                        debug!("the node's addresses changed");
                        syncer.sync(false);
                        health_check_servers.update(&syncer.health_checks, &health).await;
                    }
                    last_addrs = addrs;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    info!("stopping");
    Ok(())
}
