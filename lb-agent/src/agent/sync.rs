//! One sync: the source's current state -> [`plan::plan`] -> [`Writer::apply`] -> health. Every
//! sync rebuilds the desired state from the source's whole current state (never from change
//! events, which only trigger it), so a lost event cannot leave the maps wrong.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use tracing::{debug, error, info, warn};

use crate::{
    health::proxy::Health,
    lbmap::{MapOps, Writer},
    metrics::{self, Metrics, NoLocalEndpoints, ProblemKind},
    model::{FrontendKind, ServiceHealth},
    plan::{self, Desired, NodeFacts},
    source::{Snapshot, Source, SourceError},
};

/// How often a sync also deletes map entries the writer did not program: a full resync that
/// repairs drift, e.g. entries another process or a crashed run left behind.
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(30);

/// Where a sync reads the current state from: a running [`Source`], or a test's list.
pub trait SnapshotSource {
    /// The current state; with `only_if_changed`, `None` when the source can tell nothing
    /// changed since the last call.
    fn snapshot(&mut self, only_if_changed: bool) -> Result<Option<Snapshot>, SourceError>;
}

impl SnapshotSource for Source {
    fn snapshot(&mut self, only_if_changed: bool) -> Result<Option<Snapshot>, SourceError> {
        Source::snapshot(self, only_if_changed)
    }
}

/// Logs lines not logged last time, so periodic resyncs do not repeat themselves.
#[derive(Default)]
struct NewLines {
    last: BTreeSet<String>,
}

impl NewLines {
    fn error(&mut self, lines: impl IntoIterator<Item = String>) {
        let now: BTreeSet<String> = lines.into_iter().collect();
        for line in now.difference(&self.last) {
            error!("{line}");
        }
        self.last = now;
    }
}

/// What one [`Syncer::sync`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// The source said nothing changed; nothing was rebuilt.
    pub skipped: bool,
    /// Frontends written or removed.
    pub changed: usize,
    /// Everything meant was programmed.
    pub ok: bool,
}

/// Keeps the maps equal to the plan of the source's state.
pub struct Syncer<M> {
    writer: Writer<M>,
    health: Health,
    /// Health check node port -> what it reports, from the last plan.
    health_checks: BTreeMap<u16, ServiceHealth>,
    /// The addresses the last plan served node ports on.
    nodeport_addresses: Vec<IpAddr>,
    /// A sync has swept the maps of what an earlier run left.
    swept_once: bool,
    /// The last sync programmed everything it meant to.
    last_sync_ok: bool,
    last_sweep: Instant,
    problems: NewLines,
    metrics: &'static Metrics,
    /// Names of the programmed frontends in the maps, for `lb-agent list`; `None` in tests
    /// that do not look.
    names: Option<crate::inspect::names::NameWriter>,
}

impl<M: MapOps> Syncer<M> {
    pub fn new(writer: Writer<M>, health: Health) -> Self {
        Self {
            writer,
            health,
            health_checks: BTreeMap::new(),
            nodeport_addresses: Vec::new(),
            swept_once: false,
            last_sync_ok: false,
            last_sweep: Instant::now(),
            problems: NewLines::default(),
            metrics: metrics::global(),
            names: None,
        }
    }

    /// Records into `metrics` instead of the process's ([`metrics::global`]).
    pub fn with_metrics(mut self, metrics: &'static Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Keeps the frontends' names in `names` after every sync that programmed something.
    pub fn with_names(mut self, names: crate::inspect::names::NameWriter) -> Self {
        self.names = Some(names);
        self
    }

    pub fn writer(&self) -> &Writer<M> {
        &self.writer
    }

    pub fn writer_mut(&mut self) -> &mut Writer<M> {
        &mut self.writer
    }

    /// The health check node ports the last plan asked for.
    pub fn health_checks(&self) -> &BTreeMap<u16, ServiceHealth> {
        &self.health_checks
    }

    /// The addresses the last plan served node ports on.
    pub fn nodeport_addresses(&self) -> &[IpAddr] {
        &self.nodeport_addresses
    }

    /// Rebuilds the desired state and programs it. A periodic resync (`periodic`) skips the
    /// rebuild when the source knows nothing changed, the last sync programmed everything and
    /// no drift repair is due: at tens of thousands of services a rebuild takes noticeable CPU.
    /// A source error leaves the programmed state as it is.
    pub fn sync(
        &mut self,
        source: &mut impl SnapshotSource,
        node: &NodeFacts,
        periodic: bool,
    ) -> SyncOutcome {
        let started = Instant::now();
        let sweep_due = !self.swept_once || self.last_sweep.elapsed() >= REPAIR_INTERVAL;
        let only_if_changed = periodic && self.last_sync_ok && !sweep_due;
        self.metrics.snapshot_taken();
        let snapshot = match source.snapshot(only_if_changed) {
            Ok(Some(s)) => s,
            Ok(None) => {
                self.health.updated();
                self.metrics.programmed(std::time::SystemTime::now());
                return SyncOutcome {
                    skipped: true,
                    changed: 0,
                    ok: true,
                };
            }
            Err(e) => {
                error!("{:#}; keeping the programmed state", anyhow::Error::new(e));
                self.last_sync_ok = false;
                return SyncOutcome::default();
            }
        };
        if let Some(state) = &snapshot.node {
            self.health.set_node_eligible(state.eligible);
        }
        let snapshot_done = started.elapsed();
        let desired = plan::plan(&snapshot, node);
        let plan_done = started.elapsed();
        self.problems.error(
            snapshot
                .problems
                .iter()
                .cloned()
                .chain(desired.problems.iter().map(ToString::to_string)),
        );
        let mut by_kind: BTreeMap<&'static str, i64> = BTreeMap::new();
        let kinds = (snapshot
            .problems
            .iter()
            .map(|p| ProblemKind::of_source_problem(p)))
        .chain(desired.problems.iter().map(ProblemKind::of_plan_problem));
        for kind in kinds {
            *by_kind.entry(kind.name()).or_default() += 1;
        }
        self.metrics.set_problems(&by_kind);
        // Warnings come once per file read or object version.
        for w in &snapshot.warnings {
            warn!("{w}");
        }
        let mut errors = Vec::new();
        match self.writer.set_snat(&desired.snat) {
            Ok(report) => {
                for ifindex in &report.devices {
                    match desired.snat.devices.get(ifindex) {
                        Some(d) => info!(
                            "flows SNATed out of device {} (ifindex {ifindex}) leave from {}",
                            d.name,
                            [d.v4.map(IpAddr::V4), d.v6.map(IpAddr::V6)]
                                .iter()
                                .flatten()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(" and ")
                        ),
                        None => info!(
                            "flows SNATed out of device {ifindex} leave from the node's \
                             default addresses"
                        ),
                    }
                }
                if !report.no_slot.is_empty() {
                    warn!(
                        "no free SNAT address slot (the node has more than {} devices with \
                         addresses of a family) for {:?}: flows SNATed out of their devices \
                         leave from the default address of the family",
                        lb_ebpf::SNAT_ADDR_SLOTS - 1,
                        report.no_slot
                    );
                }
                for family in report.defaults {
                    match (desired.snat.get(family), desired.snat_reasons.get(family)) {
                        (Some(addr), Some(why)) => info!(
                            "{family} node address for external traffic (the source of flows \
                             SNATed to other nodes' backends): {addr}, {why}"
                        ),
                        (Some(addr), None) => {
                            info!("{family} node address for external traffic: {addr}")
                        }
                        (None, _) => info!("{family} node address for external traffic: none"),
                    }
                }
            }
            Err(e) => errors.push(format!("setting the node's SNAT addresses: {e}")),
        }
        let applied = self.writer.apply(&desired.frontends);
        errors.extend(applied.errors);
        debug!(
            snapshot_us = snapshot_done.as_micros() as u64,
            plan_us = (plan_done - snapshot_done).as_micros() as u64,
            apply_us = (started.elapsed() - plan_done).as_micros() as u64,
            "sync"
        );
        for e in &errors {
            error!("{e}");
        }
        let changed = applied.frontends_changed + applied.frontends_removed;
        if changed > 0 || !self.swept_once {
            // What changes only with the frontends: once per sync that changed them.
            self.metrics
                .set_no_local_endpoints(&no_local_endpoints(&desired));
        }
        if let Some(names) = &mut self.names
            && let Err(e) = names.update(&desired, self.writer.rev_nat_ids())
        {
            warn!("writing the frontends' names for lb-agent list: {e}");
        }
        if changed > 0 {
            info!(
                services = snapshot.services.len(),
                frontends = desired.frontends.len(),
                changed = applied.frontends_changed,
                removed = applied.frontends_removed,
                elapsed_us = started.elapsed().as_micros() as u64,
                "maps programmed"
            );
        }
        self.health_checks = desired.health_checks;
        self.nodeport_addresses = desired.nodeport_addresses;
        self.last_sync_ok = errors.is_empty();
        self.metrics
            .synced(started.elapsed(), sweep_due, errors.is_empty());
        if sweep_due && errors.is_empty() {
            match self.writer.sweep() {
                Ok(0) => {}
                Ok(n) if !self.swept_once => {
                    info!("repaired or removed {n} map entries left by an earlier run")
                }
                Ok(n) => {
                    warn!("repaired {n} map entries that drifted from what the agent programmed")
                }
                Err(e) => warn!("repairing map drift: {e}"),
            }
            self.swept_once = true;
            self.last_sweep = Instant::now();
        }
        if errors.is_empty() {
            self.health.updated();
        } else {
            self.health.queued();
        }
        SyncOutcome {
            skipped: false,
            changed,
            ok: errors.is_empty(),
        }
    }
}

/// kube-proxy's `no_local_endpoints` counts: service ports with `internalTrafficPolicy: Local`
/// whose cluster IP has endpoints but none here, and ports with `externalTrafficPolicy: Local`
/// whose external frontends have none here, once per port and family.
pub fn no_local_endpoints(desired: &Desired) -> NoLocalEndpoints {
    let mut out = NoLocalEndpoints::default();
    let mut external = BTreeSet::new();
    for (frontend, state) in &desired.frontends {
        if !state.backends.is_empty() || state.reject {
            continue;
        }
        let family = frontend.family() as usize;
        if state.kind == FrontendKind::ClusterIp {
            out.internal[family] += 1;
        } else if state.local_only && external.insert(&state.owner) {
            out.external[family] += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests;
