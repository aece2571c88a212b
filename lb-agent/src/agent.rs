//! The agent's run loop: source -> model -> selection -> datapath writer, plus device
//! attachment, the kernel logger and the health server.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, sync::mpsc};
use tracing::{debug, error, info, warn};

use crate::{
    bpf::{BpfMaps, Datapath, LoadOptions},
    datapath::Writer,
    devices::{self, DevicePatterns},
    health::{self, Health},
    manifest::ManifestSource,
    selection::{self, NodeContext},
};

/// How long a change may wait for a sync before health turns 503 (kube-proxy: 2 x sync period).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often devices are rescanned.
const DEVICE_SCAN_INTERVAL: Duration = Duration::from_millis(500);
/// How often the manifest directory is re-read even without a file event (a safety net for
/// missed events; unchanged files are not parsed again).
const RESYNC_INTERVAL: Duration = Duration::from_secs(2);
/// How long to wait after a file event for the rest of a burst.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Options of `lb-agent run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub manifests: PathBuf,
    pub pod_devices: DevicePatterns,
    pub node_name: Option<String>,
    pub load: LoadOptions,
    pub healthz_bind_address: SocketAddr,
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
    source: ManifestSource,
    writer: Writer<BpfMaps>,
    node: NodeContext,
    health: Health,
    synced_once: bool,
    problems: Once,
}

impl Syncer {
    fn sync(&mut self) {
        let started = std::time::Instant::now();
        let report = match self.source.reload() {
            Ok(r) => r,
            Err(e) => {
                error!(
                    "reading manifest directory {}: {e}; keeping the programmed state",
                    self.source.dir().display()
                );
                return;
            }
        };
        let (services, slices, duplicates) = self.source.snapshot();
        let sel = selection::select(&services, &slices, &self.node);
        self.problems.log(
            report
                .problems
                .into_iter()
                .chain(duplicates)
                .chain(sel.problems),
            tracing::Level::ERROR,
        );
        // Warnings are per file read, so they only appear when a file changes.
        for w in report.warnings {
            warn!("{w}");
        }
        let applied = self.writer.apply(&sel.frontends);
        for e in &applied.errors {
            error!("{e}");
        }
        if applied.frontends_changed + applied.frontends_removed > 0 {
            info!(
                services = services.len(),
                frontends = sel.frontends.len(),
                changed = applied.frontends_changed,
                removed = applied.frontends_removed,
                elapsed_us = started.elapsed().as_micros() as u64,
                "maps programmed"
            );
        }
        if !self.synced_once && applied.errors.is_empty() {
            match self.writer.sweep() {
                Ok(0) => {}
                Ok(n) => info!("removed {n} map entries left by an earlier run"),
                Err(e) => warn!("removing map entries left by an earlier run: {e}"),
            }
            self.synced_once = true;
        }
        if applied.errors.is_empty() {
            self.health.updated();
        } else {
            self.health.queued();
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

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = events_tx.send(());
        }
    })
    .context("creating the manifest directory watcher")?;
    notify::Watcher::watch(
        &mut watcher,
        &opts.manifests,
        notify::RecursiveMode::NonRecursive,
    )
    .with_context(|| format!("watching {}", opts.manifests.display()))?;

    let mut syncer = Syncer {
        source: ManifestSource::new(&opts.manifests),
        writer: resume_writer(maps, opts.load.max_backends),
        node: NodeContext {
            node_name: opts.node_name.clone(),
            zone: None,
        },
        health: health.clone(),
        synced_once: false,
        problems: Once::default(),
    };
    let mut failed_devices = HashMap::new();
    scan_devices(&mut dp, &opts.pod_devices, &mut failed_devices);
    syncer.sync();

    let mut device_tick = tokio::time::interval(DEVICE_SCAN_INTERVAL);
    let mut resync_tick = tokio::time::interval(RESYNC_INTERVAL);
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            Some(()) = events.recv() => {
                health.queued();
                tokio::time::sleep(DEBOUNCE).await;
                while events.try_recv().is_ok() {}
                syncer.sync();
            }
            _ = resync_tick.tick() => syncer.sync(),
            _ = device_tick.tick() => scan_devices(&mut dp, &opts.pod_devices, &mut failed_devices),
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    info!("stopping");
    drop(watcher);
    Ok(())
}
