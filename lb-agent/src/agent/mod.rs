//! The agent's run loop: the source wakes it, [`sync::Syncer`] programs the plan of the
//! source's state, [`devices::DeviceScanner`] keeps the programs on the devices, and the health
//! servers answer from what the syncs did.
//!
//! Every sync rebuilds the desired state from the source's whole current state, after a short
//! debounce so that a burst of changes becomes one sync, and again periodically.

pub mod devices;
pub mod sync;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};
use tracing::{debug, info, warn};

use self::{devices::DeviceScanner, sync::Syncer};
use crate::{
    gc,
    health::{
        proxy::{self, Health},
        service::HealthCheckServers,
    },
    kernel::{DatapathMode, LoadOptions, Programs},
    lbmap::{Writer, bpf::BpfMaps},
    model::NodePortAddresses,
    node::{addrs::DeviceAddr, devices::DevicePatterns, sockets::UdpCloser, watch::Wakeups},
    plan::NodeFacts,
    source::{Changes, Source, SourceOptions, kube},
};

/// How long a change may wait for a sync before health turns 503 (kube-proxy: 2 x sync period).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often devices are rescanned where rtnetlink cannot tell of their changes: a device
/// that appears is attached within this long.
const DEVICE_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often devices are rescanned although rtnetlink tells of every change: a safety net for a
/// change the scan missed all the same.
const DEVICE_SAFETY_NET: Duration = Duration::from_secs(30);
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
    /// Address of `/metrics` and `/proxyMode`.
    pub metrics_bind_address: SocketAddr,
    /// The node's devices for external traffic (node ports, external and load balancer IPs);
    /// `None`: every device with a usable address that is not a pod device.
    pub devices: Option<DevicePatterns>,
    /// `--nodeport-addresses`: node ports answer only on these node addresses.
    pub nodeport_addresses: NodePortAddresses,
    /// XDP, TC or a choice per device for external traffic.
    pub datapath_mode: DatapathMode,
    /// How often dead flows and the SNAT entries of dead flows leave the maps (`--gc-interval`).
    pub gc_interval: Duration,
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

/// Forwards kernel-side aya-log records to the agent's logger.
fn spawn_kernel_logger(programs: &mut Programs) {
    match aya_log::EbpfLogger::init(programs.ebpf_mut()) {
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

/// The node facts a sync plans with, from the addresses the last device scan listed.
fn node_facts(
    opts: &RunOptions,
    node_name: &Option<String>,
    scanner: &DeviceScanner,
    addrs: Option<&[DeviceAddr]>,
) -> NodeFacts {
    NodeFacts {
        name: node_name.clone(),
        addresses: addrs.map_or_else(Vec::new, |a| scanner.nodeport_addresses(a)),
        devices: addrs.map_or_else(Vec::new, |a| scanner.snat_devices(a)),
        nodeport: opts.nodeport_addresses.clone(),
    }
}

/// Where the health check node ports listen: as kube-proxy, on the node port addresses when
/// `--nodeport-addresses` restricts them, else on every address (empty).
fn health_check_addresses<'a, M: crate::lbmap::MapOps>(
    opts: &RunOptions,
    syncer: &'a Syncer<M>,
) -> &'a [std::net::IpAddr] {
    if opts.nodeport_addresses.is_restricted() {
        syncer.nodeport_addresses()
    } else {
        &[]
    }
}

/// Closes the connected UDP sockets, of node processes and of pods, that the socket programs
/// sent to a backend their service no longer has, once a sync changed the maps: they would
/// keep sending to it (DNS resolvers and statsd clients do). Their applications see
/// ECONNABORTED and reconnect. TCP sockets are never touched.
fn close_stale_udp(syncer: &Syncer<BpfMaps>, closer: &mut UdpCloser, outcome: &sync::SyncOutcome) {
    if outcome.changed == 0 {
        return;
    }
    let stale = match syncer.writer().stale_sockets() {
        Ok(stale) => stale,
        Err(e) => {
            warn!("listing the sockets the socket programs translated: {e}");
            return;
        }
    };
    if stale.is_empty() {
        return;
    }
    match closer.close(&stale) {
        Ok(closed) => {
            if closed.own + closed.others > 0 {
                info!(
                    node = closed.own,
                    pods = closed.others,
                    namespaces = closed.namespaces,
                    "closed connected UDP sockets of removed backends"
                );
            }
            if let Some((path, e)) = closed.failed.first() {
                warn!(
                    failed = closed.failed.len(),
                    "closing pods' connected UDP sockets of removed backends: {}: {e} \
                     (entering a pod's network namespace needs CAP_SYS_ADMIN)",
                    path.display()
                );
            }
        }
        Err(e) => warn!("closing connected UDP sockets of removed backends: {e}"),
    }
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // The source first: a bad kubeconfig or manifest directory fails before the datapath is
    // touched.
    let node_name = match (&opts.source, &opts.node_name) {
        (_, Some(name)) => Some(name.clone()),
        (SourceOptions::Kubernetes(_), None) => kube::hostname(),
        (SourceOptions::Manifests(_), None) => None,
    };
    let changes = Changes::default();
    let mut source = Source::start(&opts.source, node_name.as_deref(), changes.clone())
        .await
        .context("starting the source of services")?;

    let metrics = crate::metrics::install(opts.load.pin_dir.clone());
    let mut programs = Programs::load(&opts.load).context("loading the datapath")?;
    let maps = BpfMaps::take(programs.ebpf_mut()).context("taking the datapath's maps")?;
    let names = crate::inspect::names::BpfNames::take(programs.ebpf_mut())
        .context("taking the datapath's name map")?;
    info!(pin_dir = %opts.load.pin_dir.display(), "datapath loaded");
    spawn_kernel_logger(&mut programs);
    // From the pins, on blocking threads of its own; it ends with the runtime.
    gc::periodic::spawn(opts.load.pin_dir.clone(), opts.gc_interval);

    let health = Health::new(HEALTH_TIMEOUT);
    let listener = tokio::net::TcpListener::bind(opts.healthz_bind_address)
        .await
        .with_context(|| format!("binding healthz to {}", opts.healthz_bind_address))?;
    let server_health = health.clone();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, proxy::router(server_health)).await {
            tracing::error!("healthz server: {e}");
        }
    });

    let metrics_listener = tokio::net::TcpListener::bind(opts.metrics_bind_address)
        .await
        .with_context(|| format!("binding metrics to {}", opts.metrics_bind_address))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(metrics_listener, crate::metrics::router(metrics)).await {
            tracing::error!("metrics server: {e}");
        }
    });

    let mut scanner = DeviceScanner::new(
        opts.pod_devices.clone(),
        opts.devices.clone(),
        opts.nodeport_addresses.scan_cidrs().to_vec(),
        opts.datapath_mode,
    );
    // The writer takes over the earlier run's maps before the first scan, which may write the
    // XDP redirect devices; frontends are written only once the source is ready.
    let mut syncer = Syncer::new(resume_writer(maps, opts.load.max_backends), health.clone())
        .with_metrics(metrics)
        .with_names(crate::inspect::names::NameWriter::new(names));
    // Subscribed before the first scan: a change between the two wakes the next scan.
    let mut device_wake = Wakeups::start(DEVICE_SAFETY_NET, DEVICE_POLL_INTERVAL);
    let mut last_addrs = scanner.scan(&mut programs, syncer.writer_mut());
    // This run's programs replaced the old ones on every device: what the old programs
    // added to migrated maps since the load is copied now.
    programs.finish_migrations();
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
                () = device_wake.next() => {
                    if let Some(addrs) = scanner.scan(&mut programs, syncer.writer_mut()) {
                        last_addrs = Some(addrs);
                    }
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
    let mut health_check_servers = HealthCheckServers::default();
    let mut facts = node_facts(&opts, &node_name, &scanner, last_addrs.as_deref());
    // The first sync is a full one; the periodic resyncs count from its end.
    let mut periodic = false;
    let mut first = true;
    let mut closer = UdpCloser::default();
    loop {
        let outcome = syncer.sync(&mut source, &facts, periodic);
        close_stale_udp(&syncer, &mut closer, &outcome);
        health_check_servers
            .update(
                syncer.health_checks(),
                &health,
                health_check_addresses(&opts, &syncer),
            )
            .await;
        if std::mem::take(&mut first) {
            resync_tick.reset();
        }
        periodic = loop {
            tokio::select! {
                () = changes.notified() => {
                    health.queued();
                    metrics.queued();
                    tokio::time::sleep(debounce).await;
                    // The burst's later changes left one wake-up behind; this sync covers them.
                    let _ = futures::FutureExt::now_or_never(changes.notified());
                    break false;
                }
                _ = resync_tick.tick() => break true,
                () = device_wake.next() => {
                    // A node address that comes or goes changes the node ports: sync at once
                    // rather than at the next periodic resync.
                    let addrs = scanner.scan(&mut programs, syncer.writer_mut());
                    if addrs.is_none() || addrs == last_addrs {
                        continue;
                    }
                    debug!("the node's addresses changed");
                    last_addrs = addrs;
                    facts = node_facts(&opts, &node_name, &scanner, last_addrs.as_deref());
                    break false;
                }
                _ = tokio::signal::ctrl_c() => {
                    info!("stopping");
                    return Ok(());
                }
                _ = sigterm.recv() => {
                    info!("stopping");
                    return Ok(());
                }
            }
        };
    }
}
