//! The map writer: diffs the desired state against what it has programmed and writes only the
//! difference, through [`MapOps`]: frontends and their backends, the node's SNAT addresses and
//! the XDP redirect devices. One write path into the maps; [`bpf::BpfMaps`] is the real
//! implementation of [`MapOps`], [`memory::MemoryMaps`] the one for tests.
//!
//! Guarantees the kernel side relies on:
//! - a frontend's backend slots are written before its count covers them, and its count shrinks
//!   before the slots beyond it go, so a lookup never meets a missing slot;
//! - slot positions are stable: a backend that stays keeps its slot, a removed one's slot is
//!   filled by an addition or by the last slot, so unrelated entries are not rewritten;
//! - backend IDs are shared by every frontend of a backend and freed with the last reference;
//! - every operation is idempotent, so a failed apply is repaired by the next one.

pub mod bpf;
pub mod memory;
mod snat;

pub use snat::SnatReport;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;
use lb_ebpf::{
    SVC_F_AFFINITY, SVC_F_EXTERNAL, SVC_F_LOCAL, SVC_F_REJECT, SVC_F_SOURCE_RANGES, ServiceValue,
    SnatDevice,
};
use thiserror::Error;

use crate::model::{Frontend, FrontendState, IpFamily, Protocol};

/// Identifies a backend in the backend maps and in flow entries.
pub type BackendId = u32;

/// A backend as the maps hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// Runs on this node: traffic from outside reaches it without SNAT.
    pub local: bool,
}

/// Which of a frontend's service map entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The entry every path reads; for an external frontend with `externalTrafficPolicy:
    /// Local`, the local backends traffic from outside gets.
    Default,
    /// Read by the pod and socket paths, for in-cluster clients of an external frontend with
    /// `externalTrafficPolicy: Local`: every backend of the cluster (kube-proxy's short-circuit).
    Internal,
}

/// A service map entry's frontend: address, port, protocol and scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vip {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub scope: Scope,
}

impl Vip {
    pub fn of(frontend: &Frontend, scope: Scope) -> Self {
        Self {
            addr: frontend.addr,
            protocol: frontend.protocol,
            scope,
        }
    }

    pub fn frontend(&self) -> Frontend {
        Frontend {
            addr: self.addr,
            protocol: self.protocol,
        }
    }
}

impl From<Frontend> for Vip {
    fn from(frontend: Frontend) -> Self {
        Self::of(&frontend, Scope::Default)
    }
}

impl std::fmt::Display for Vip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.frontend())?;
        if self.scope == Scope::Internal {
            f.write_str(" (in-cluster)")?;
        }
        Ok(())
    }
}

/// The service map entries of one frontend: its own, and for in-cluster clients of an external
/// frontend with other backends, the internal one (without `SVC_F_LOCAL`: it serves every
/// backend).
fn entries<'a>(
    frontend: &Frontend,
    state: &'a FrontendState,
) -> impl Iterator<Item = (Vip, (Vec<BackendKey>, FrontendPolicy, &'a FrontendState))> + use<'a> {
    let keys = |backends: &[crate::model::Backend]| -> Vec<BackendKey> {
        backends
            .iter()
            .map(|b| BackendKey {
                addr: b.addr,
                protocol: frontend.protocol,
                local: b.local,
            })
            .collect()
    };
    let policy = FrontendPolicy::of(state);
    let internal = state.internal_backends.as_ref().map(|backends| {
        let mut policy = policy.clone();
        policy.flags &= !SVC_F_LOCAL;
        (
            Vip::of(frontend, Scope::Internal),
            (keys(backends), policy, state),
        )
    });
    std::iter::once((
        Vip::of(frontend, Scope::Default),
        (keys(&state.backends), policy, state),
    ))
    .chain(internal)
}

/// What a frontend entry says besides its backends: `lb_ebpf::SVC_F_*` flags, the source
/// ranges allowed when `SVC_F_SOURCE_RANGES` is set, and the session affinity timeout when
/// `SVC_F_AFFINITY` is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendPolicy {
    pub flags: u8,
    pub source_ranges: Vec<IpNet>,
    /// Seconds; 0 without affinity.
    pub affinity_timeout: u32,
}

impl FrontendPolicy {
    fn of(state: &FrontendState) -> Self {
        let mut flags = 0;
        if state.reject {
            flags |= SVC_F_REJECT;
        }
        if state.kind.is_external() {
            flags |= SVC_F_EXTERNAL;
            if state.local_only {
                flags |= SVC_F_LOCAL;
            }
        }
        if state.source_ranges.is_some() {
            flags |= SVC_F_SOURCE_RANGES;
        }
        // A timeout of 0 cannot be asked for (the plan's input allows 1 to 86400 s).
        let affinity_timeout = state.session_affinity.unwrap_or(0);
        if affinity_timeout != 0 {
            flags |= SVC_F_AFFINITY;
        }
        Self {
            flags,
            source_ranges: state.source_ranges.clone().unwrap_or_default(),
            affinity_timeout,
        }
    }
}

/// A failed map operation.
#[derive(Debug, Error)]
pub enum MapError {
    #[error("{op} in map {map} failed: {source}")]
    Io {
        op: &'static str,
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no free backend ID: raise --max-backends")]
    NoBackendId,
    #[error("no free reverse-NAT ID: more than 65535 frontends")]
    NoRevNatId,
    #[error("{0} backends: at most 65535")]
    TooManyBackends(usize),
    /// [`memory::MemoryMaps::fail_after`] ran out.
    #[error("injected failure")]
    Injected,
}

/// The map operations the writer needs; implemented on the real BPF maps and in memory.
pub trait MapOps {
    fn put_backend(&mut self, id: BackendId, backend: &BackendKey) -> Result<(), MapError>;
    /// Deleting an absent entry succeeds.
    fn delete_backend(&mut self, id: BackendId, family: IpFamily) -> Result<(), MapError>;
    fn put_slot(&mut self, vip: &Vip, slot: u16, value: &ServiceValue) -> Result<(), MapError>;
    /// Deleting an absent entry succeeds.
    fn delete_slot(&mut self, vip: &Vip, slot: u16) -> Result<(), MapError>;
    /// Sets SNAT address `slot` of `family` ([`snat`]): slot 0 is the default that SNATed
    /// external flows leave from; `None` clears the slot (flows of a cleared default are then
    /// dropped).
    fn set_snat_addr(
        &mut self,
        family: IpFamily,
        slot: u8,
        addr: Option<IpAddr>,
    ) -> Result<(), MapError>;
    /// Every SNAT address slot that holds an address: (family, slot, address).
    fn list_snat_addrs(&self) -> Result<Vec<(IpFamily, u8, IpAddr)>, MapError>;
    /// Names the SNAT slots of flows leaving through device `ifindex`.
    fn put_snat_device(&mut self, ifindex: u32, device: &SnatDevice) -> Result<(), MapError>;
    /// Deleting an absent entry succeeds.
    fn delete_snat_device(&mut self, ifindex: u32) -> Result<(), MapError>;
    /// Every SNAT device entry present.
    fn list_snat_devices(&self) -> Result<Vec<(u32, SnatDevice)>, MapError>;
    /// Zeroes the traffic counters of the frontend `rev_nat_id` on every CPU.
    fn reset_service_counters(&mut self, rev_nat_id: u16) -> Result<(), MapError>;
    /// Lets XDP redirect frames to the device `ifindex` (it runs the XDP program).
    fn put_xdp_device(&mut self, ifindex: u32) -> Result<(), MapError>;
    /// Deleting an absent entry succeeds.
    fn delete_xdp_device(&mut self, ifindex: u32) -> Result<(), MapError>;
    /// Every service map entry present (entries of protocols the agent does not program are
    /// left out).
    fn list_slots(&self) -> Result<Vec<(Vip, u16, ServiceValue)>, MapError>;
    /// Every backend map entry present; `None` for an entry the agent cannot read back.
    fn list_backends(&self) -> Result<Vec<(BackendId, IpFamily, Option<BackendKey>)>, MapError>;
    /// Allows sources in `range` on the frontend with `rev_nat_id`.
    fn put_source_range(&mut self, rev_nat_id: u16, range: &IpNet) -> Result<(), MapError>;
    /// Deleting an absent entry succeeds.
    fn delete_source_range(&mut self, rev_nat_id: u16, range: &IpNet) -> Result<(), MapError>;
    /// Every source range entry present.
    fn list_source_ranges(&self) -> Result<Vec<(u16, IpNet)>, MapError>;
    /// Lets session affinity of the frontend with `rev_nat_id` keep sending clients to
    /// `backend_id`.
    fn put_affinity_match(
        &mut self,
        rev_nat_id: u16,
        backend_id: BackendId,
    ) -> Result<(), MapError>;
    /// Deleting an absent entry succeeds.
    fn delete_affinity_match(
        &mut self,
        rev_nat_id: u16,
        backend_id: BackendId,
    ) -> Result<(), MapError>;
    /// Every affinity match entry present.
    fn list_affinity_matches(&self) -> Result<Vec<(u16, BackendId)>, MapError>;
    /// The sockets the socket programs translated: (socket cookie, the backend it was sent to,
    /// the reverse-NAT ID of the frontend it asked for). Written by the kernel only.
    fn list_translated_sockets(&self) -> Result<Vec<(u64, SocketAddr, u16)>, MapError>;
}

#[derive(Clone, Debug)]
struct Programmed {
    rev_nat_id: u16,
    policy: FrontendPolicy,
    /// Sorted backends, compared with the desired list to detect changes.
    backends: Vec<BackendKey>,
    /// Backend ID in slot `i + 1`.
    slots: Vec<BackendId>,
}

impl Programmed {
    /// The backends session affinity may keep clients on: every slot's, with affinity.
    fn affinity_matches(&self) -> HashSet<BackendId> {
        if self.policy.affinity_timeout == 0 {
            HashSet::new()
        } else {
            self.slots.iter().copied().collect()
        }
    }
}

/// Hands out small integer IDs, reusing freed ones.
#[derive(Debug)]
struct IdPool {
    next: u32,
    max: u32,
    free: Vec<u32>,
}

impl IdPool {
    fn new(max: u32) -> Self {
        Self {
            next: 1,
            max,
            free: Vec::new(),
        }
    }
    fn take(&mut self) -> Option<u32> {
        self.free.pop().or_else(|| {
            (self.next <= self.max).then(|| {
                self.next += 1;
                self.next - 1
            })
        })
    }
    fn give(&mut self, id: u32) {
        self.free.push(id);
    }
    /// Marks `id` as taken (adopted from the maps of an earlier run).
    fn reserve(&mut self, id: u32) {
        if id >= self.next {
            self.free.extend(self.next..id);
            self.next = id + 1;
        } else {
            self.free.retain(|f| *f != id);
        }
    }
}

/// What one [`Writer::apply`] did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub frontends_changed: usize,
    pub frontends_removed: usize,
    /// Each names the frontend, its service port and the failure; retried on the next apply.
    pub errors: Vec<String>,
}

/// Keeps the maps equal to the desired state with as few writes as possible.
pub struct Writer<M> {
    maps: M,
    frontends: BTreeMap<Vip, Programmed>,
    /// Backend -> (ID, number of frontends using it).
    backends: HashMap<BackendKey, (BackendId, usize)>,
    backend_ids: IdPool,
    rev_nat_ids: IdPool,
    /// IDs found in the maps by [`Writer::adopt`] but not adopted: kept out of use until
    /// [`Writer::sweep`] has deleted their entries, so no stale slot can name a new backend.
    orphan_backend_ids: HashSet<BackendId>,
    orphan_rev_nat_ids: HashSet<u16>,
    /// The SNAT addresses as programmed ([`snat`]).
    snat: snat::SnatState,
}

impl<M: MapOps> Writer<M> {
    pub fn new(maps: M, max_backends: u32) -> Self {
        Self {
            maps,
            frontends: BTreeMap::new(),
            backends: HashMap::new(),
            backend_ids: IdPool::new(max_backends),
            rev_nat_ids: IdPool::new(u32::from(u16::MAX)),
            orphan_backend_ids: HashSet::new(),
            orphan_rev_nat_ids: HashSet::new(),
            snat: snat::SnatState::default(),
        }
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The maps, for tests that fake faults or drift behind the writer's back.
    #[cfg(test)]
    pub(crate) fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// The reverse-NAT ID of every programmed service map entry, for naming them
    /// ([`crate::inspect::names`]).
    pub fn rev_nat_ids(&self) -> impl Iterator<Item = (&Vip, u16)> + '_ {
        self.frontends.iter().map(|(vip, p)| (vip, p.rev_nat_id))
    }

    /// The maps, the writer gone (a restart hands them to the next writer).
    pub fn into_maps(self) -> M {
        self.maps
    }

    /// The cookies of sockets the socket programs sent to a backend their frontend no longer
    /// has (or to a frontend that is gone): connected UDP sockets among them keep sending to a
    /// removed backend unless they are closed ([`crate::node::sockets::destroy_udp`]).
    pub fn stale_sockets(&self) -> Result<HashSet<u64>, MapError> {
        let by_rev_nat: HashMap<u16, &Programmed> =
            self.frontends.values().map(|p| (p.rev_nat_id, p)).collect();
        Ok(self
            .maps
            .list_translated_sockets()?
            .into_iter()
            .filter(|(_, backend, rev_nat_id)| {
                by_rev_nat
                    .get(rev_nat_id)
                    .is_none_or(|p| !p.backends.iter().any(|b| b.addr == *backend))
            })
            .map(|(cookie, _, _)| cookie)
            .collect())
    }

    /// Makes `ifindex` a target of XDP redirects.
    pub fn add_xdp_device(&mut self, ifindex: u32) -> Result<(), MapError> {
        self.maps.put_xdp_device(ifindex)
    }

    /// Stops XDP redirects to `ifindex` (its XDP program goes, or the device went).
    pub fn remove_xdp_device(&mut self, ifindex: u32) -> Result<(), MapError> {
        self.maps.delete_xdp_device(ifindex)
    }

    /// Makes the maps serve exactly `desired`.
    pub fn apply(&mut self, desired: &BTreeMap<Frontend, FrontendState>) -> ApplyReport {
        let mut report = ApplyReport::default();
        let wanted: BTreeMap<Vip, (Vec<BackendKey>, FrontendPolicy, &FrontendState)> = desired
            .iter()
            .flat_map(|(frontend, state)| entries(frontend, state))
            .collect();
        let stale: Vec<Vip> = self
            .frontends
            .keys()
            .filter(|v| !wanted.contains_key(v))
            .copied()
            .collect();
        for vip in stale {
            match self.remove_frontend(&vip) {
                Ok(()) => report.frontends_removed += 1,
                Err(e) => report.errors.push(format!("removing {vip}: {e}")),
            }
        }
        for (vip, (backends, policy, state)) in wanted {
            if self
                .frontends
                .get(&vip)
                .is_some_and(|p| p.backends == backends && p.policy == policy)
            {
                continue;
            }
            match self.update_frontend(&vip, backends, policy) {
                Ok(()) => report.frontends_changed += 1,
                Err(e) => report
                    .errors
                    .push(format!("programming {vip} of service {}: {e}", state.owner)),
            }
        }
        report
    }

    /// Takes over what an earlier run of the agent left in the (pinned) maps: its frontends, slot
    /// layouts, backend IDs and reverse-NAT IDs. The next [`Writer::apply`] then only writes
    /// differences, so a restart rewrites nothing that is still right, and no backend ID is ever
    /// reused for another backend while slots still name it. Frontends that cannot be read back
    /// consistently are not adopted; [`Writer::sweep`] removes their entries after the first apply.
    /// The SNAT slots are taken over too. Returns the number of frontends adopted.
    pub fn adopt(&mut self) -> Result<usize, MapError> {
        let listed = self.maps.list_backends()?;
        let backends: HashMap<BackendId, BackendKey> = listed
            .iter()
            .copied()
            .filter_map(|(id, family, key)| {
                key.filter(|k| IpFamily::of(&k.addr.ip()) == family)
                    .map(|k| (id, k))
            })
            .collect();
        let mut frontends: BTreeMap<Vip, BTreeMap<u16, ServiceValue>> = BTreeMap::new();
        for (frontend, slot, value) in self.maps.list_slots()? {
            if slot == 0 && value.rev_nat_id != 0 {
                self.orphan_rev_nat_ids.insert(value.rev_nat_id);
            }
            frontends.entry(frontend).or_default().insert(slot, value);
        }
        self.orphan_backend_ids
            .extend(listed.iter().map(|(id, _, _)| *id));
        let mut ranges: HashMap<u16, Vec<IpNet>> = HashMap::new();
        for (rev_nat_id, range) in self.maps.list_source_ranges()? {
            ranges.entry(rev_nat_id).or_default().push(range);
        }
        let mut adopted = 0;
        let mut rev_nat_ids = HashSet::new();
        for (frontend, slots) in frontends {
            let Some(head) = slots.get(&0) else { continue };
            let ids: Option<Vec<BackendId>> = (1..=head.count)
                .map(|slot| slots.get(&slot).map(|v| v.backend_id))
                .collect();
            let Some(ids) = ids else { continue };
            let keys: Option<Vec<BackendKey>> = ids
                .iter()
                .map(|id| {
                    backends.get(id).copied().filter(|k| {
                        k.protocol == frontend.protocol
                            && IpFamily::of(&k.addr.ip()) == IpFamily::of(&frontend.addr.ip())
                    })
                })
                .collect();
            let Some(mut keys) = keys else { continue };
            keys.sort();
            let distinct = keys.windows(2).all(|w| w[0] != w[1]);
            if !distinct || head.rev_nat_id == 0 || !rev_nat_ids.insert(head.rev_nat_id) {
                continue;
            }
            for (id, key) in ids.iter().zip(ids.iter().map(|id| backends[id])) {
                let entry = self.backends.entry(key).or_insert((*id, 0));
                if entry.0 != *id {
                    // The same backend under two IDs: keep the first; the second's slots are
                    // rewritten by the next apply, as this frontend is not adopted as is.
                    continue;
                }
                entry.1 += 1;
            }
            self.orphan_rev_nat_ids.remove(&head.rev_nat_id);
            let mut source_ranges = ranges.remove(&head.rev_nat_id).unwrap_or_default();
            source_ranges.sort();
            self.frontends.insert(
                frontend,
                Programmed {
                    rev_nat_id: head.rev_nat_id,
                    policy: FrontendPolicy {
                        flags: head.flags,
                        source_ranges,
                        affinity_timeout: if head.flags & SVC_F_AFFINITY != 0 {
                            head.backend_id
                        } else {
                            0
                        },
                    },
                    backends: keys,
                    slots: ids,
                },
            );
            adopted += 1;
        }
        for (id, _) in self.backends.values() {
            self.orphan_backend_ids.remove(id);
        }
        for id in listed.iter().map(|(id, _, _)| *id) {
            self.backend_ids.reserve(id);
        }
        for id in self.frontends.values().map(|p| p.rev_nat_id) {
            self.rev_nat_ids.reserve(u32::from(id));
        }
        for id in &self.orphan_rev_nat_ids {
            self.rev_nat_ids.reserve(u32::from(*id));
        }
        self.adopt_snat()?;
        Ok(adopted)
    }

    /// Makes the maps exactly what the writer programmed: entries that went missing or were
    /// changed behind its back are written again, entries it did not program (left by an earlier
    /// run, or by anyone else) are deleted. Call after the first apply, and periodically to
    /// repair drift. Returns the number of entries written or deleted.
    pub fn sweep(&mut self) -> Result<usize, MapError> {
        let mut repaired = self.rewrite_drifted()?;
        let mut removed = 0;
        for (frontend, slot, _) in self.maps.list_slots()? {
            let known = self
                .frontends
                .get(&frontend)
                .is_some_and(|p| usize::from(slot) <= p.slots.len());
            if !known {
                self.maps.delete_slot(&frontend, slot)?;
                removed += 1;
            }
        }
        let known: HashSet<(BackendId, IpFamily)> = self
            .backends
            .iter()
            .map(|(b, (id, _))| (*id, IpFamily::of(&b.addr.ip())))
            .collect();
        for (id, family, _) in self.maps.list_backends()? {
            if !known.contains(&(id, family)) {
                self.maps.delete_backend(id, family)?;
                removed += 1;
            }
        }
        let known_ranges: HashSet<(u16, IpNet)> = self
            .frontends
            .values()
            .flat_map(|p| p.policy.source_ranges.iter().map(|r| (p.rev_nat_id, *r)))
            .collect();
        for (rev_nat_id, range) in self.maps.list_source_ranges()? {
            if !known_ranges.contains(&(rev_nat_id, range)) {
                self.maps.delete_source_range(rev_nat_id, &range)?;
                removed += 1;
            }
        }
        let known_matches: HashSet<(u16, BackendId)> = self
            .frontends
            .values()
            .flat_map(|p| p.affinity_matches().into_iter().map(|b| (p.rev_nat_id, b)))
            .collect();
        for (rev_nat_id, backend_id) in self.maps.list_affinity_matches()? {
            if !known_matches.contains(&(rev_nat_id, backend_id)) {
                self.maps.delete_affinity_match(rev_nat_id, backend_id)?;
                removed += 1;
            }
        }
        // Their entries are gone: the IDs may serve new backends and frontends now.
        for id in std::mem::take(&mut self.orphan_backend_ids) {
            self.backend_ids.give(id);
        }
        for id in std::mem::take(&mut self.orphan_rev_nat_ids) {
            self.rev_nat_ids.give(u32::from(id));
        }
        repaired += removed;
        Ok(repaired)
    }

    /// Writes again every programmed entry that is missing or differs: backends first, then
    /// ranges and slots, frontend entries last, as [`Writer::apply`] orders them.
    fn rewrite_drifted(&mut self) -> Result<usize, MapError> {
        let mut written = 0;
        let backends: HashMap<BackendId, Option<BackendKey>> = self
            .maps
            .list_backends()?
            .into_iter()
            .map(|(id, _, key)| (id, key))
            .collect();
        for (key, (id, _)) in &self.backends {
            if backends.get(id) != Some(&Some(*key)) {
                self.maps.put_backend(*id, key)?;
                written += 1;
            }
        }
        let ranges: HashSet<(u16, IpNet)> = self.maps.list_source_ranges()?.into_iter().collect();
        let matches: HashSet<(u16, BackendId)> =
            self.maps.list_affinity_matches()?.into_iter().collect();
        let slots: HashMap<(Vip, u16), ServiceValue> = self
            .maps
            .list_slots()?
            .into_iter()
            .map(|(f, slot, v)| ((f, slot), v))
            .collect();
        for (frontend, p) in &self.frontends {
            for range in &p.policy.source_ranges {
                if !ranges.contains(&(p.rev_nat_id, *range)) {
                    self.maps.put_source_range(p.rev_nat_id, range)?;
                    written += 1;
                }
            }
            for backend_id in p.affinity_matches() {
                if !matches.contains(&(p.rev_nat_id, backend_id)) {
                    self.maps.put_affinity_match(p.rev_nat_id, backend_id)?;
                    written += 1;
                }
            }
            for (i, id) in p.slots.iter().enumerate() {
                let want = slot_value(*id);
                let slot = i as u16 + 1;
                if slots.get(&(*frontend, slot)) != Some(&want) {
                    self.maps.put_slot(frontend, slot, &want)?;
                    written += 1;
                }
            }
            let head = head_value(p.slots.len() as u16, p.rev_nat_id, &p.policy);
            if slots.get(&(*frontend, 0)) != Some(&head) {
                self.maps.put_slot(frontend, 0, &head)?;
                written += 1;
            }
        }
        Ok(written)
    }

    fn acquire(&mut self, backend: &BackendKey) -> Result<BackendId, MapError> {
        if let Some((id, refs)) = self.backends.get_mut(backend) {
            *refs += 1;
            return Ok(*id);
        }
        let id = self.backend_ids.take().ok_or(MapError::NoBackendId)?;
        if let Err(e) = self.maps.put_backend(id, backend) {
            self.backend_ids.give(id);
            return Err(e);
        }
        self.backends.insert(*backend, (id, 1));
        Ok(id)
    }

    fn release(&mut self, backend: &BackendKey) -> Result<(), MapError> {
        let Some((id, refs)) = self.backends.get_mut(backend) else {
            return Ok(());
        };
        *refs -= 1;
        if *refs > 0 {
            return Ok(());
        }
        let id = *id;
        self.backends.remove(backend);
        self.backend_ids.give(id);
        self.maps
            .delete_backend(id, IpFamily::of(&backend.addr.ip()))
    }

    fn update_frontend(
        &mut self,
        frontend: &Vip,
        wanted: Vec<BackendKey>,
        policy: FrontendPolicy,
    ) -> Result<(), MapError> {
        let mut ids = Vec::with_capacity(wanted.len());
        for backend in &wanted {
            match self.acquire(backend) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    for b in &wanted[..ids.len()] {
                        self.release(b)?;
                    }
                    return Err(e);
                }
            }
        }
        let old = self.frontends.get(frontend).cloned();
        let rev_nat_id = match &old {
            Some(p) => p.rev_nat_id,
            None => {
                let id = self
                    .rev_nat_ids
                    .take()
                    .map(|id| id as u16)
                    .ok_or(MapError::NoRevNatId)?;
                // A reused ID starts its traffic counters from zero: they belonged to another
                // frontend.
                if let Err(e) = self.maps.reset_service_counters(id) {
                    self.rev_nat_ids.give(u32::from(id));
                    return Err(e);
                }
                id
            }
        };
        let old_slots = old.as_ref().map(|p| p.slots.as_slice()).unwrap_or(&[]);
        let slots = stable_slots(old_slots, &ids);
        let count =
            u16::try_from(slots.len()).map_err(|_| MapError::TooManyBackends(slots.len()))?;

        let old_ranges: &[IpNet] = old
            .as_ref()
            .map(|p| p.policy.source_ranges.as_slice())
            .unwrap_or(&[]);
        let old_head = old
            .as_ref()
            .map(|p| (p.policy.flags, p.policy.affinity_timeout));
        let old_matches = old
            .as_ref()
            .map(Programmed::affinity_matches)
            .unwrap_or_default();
        let new_matches: HashSet<BackendId> = if policy.affinity_timeout == 0 {
            HashSet::new()
        } else {
            slots.iter().copied().collect()
        };
        let result = (|| {
            // Affinity never keeps a client on a backend the frontend is losing: its match goes
            // before anything else changes, and a new backend's comes before its slot.
            for id in old_matches.difference(&new_matches) {
                self.maps.delete_affinity_match(rev_nat_id, *id)?;
            }
            for id in new_matches.difference(&old_matches) {
                self.maps.put_affinity_match(rev_nat_id, *id)?;
            }
            // New ranges are in place before the flag that makes the kernel check them, and old
            // ones go only after.
            for range in &policy.source_ranges {
                if !old_ranges.contains(range) {
                    self.maps.put_source_range(rev_nat_id, range)?;
                }
            }
            for (i, id) in slots.iter().enumerate() {
                if old_slots.get(i) != Some(id) {
                    self.maps
                        .put_slot(frontend, i as u16 + 1, &slot_value(*id))?;
                }
            }
            if old.is_none()
                || old_slots.len() != slots.len()
                || old_head != Some((policy.flags, policy.affinity_timeout))
            {
                self.maps
                    .put_slot(frontend, 0, &head_value(count, rev_nat_id, &policy))?;
            }
            for slot in slots.len()..old_slots.len() {
                self.maps.delete_slot(frontend, slot as u16 + 1)?;
            }
            for range in old_ranges {
                if !policy.source_ranges.contains(range) {
                    self.maps.delete_source_range(rev_nat_id, range)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            for b in &wanted {
                self.release(b)?;
            }
            if old.is_none() {
                self.rev_nat_ids.give(u32::from(rev_nat_id));
            }
            return Err(e);
        }
        if let Some(old) = old {
            for b in &old.backends {
                self.release(b)?;
            }
        }
        self.frontends.insert(
            *frontend,
            Programmed {
                rev_nat_id,
                policy,
                backends: wanted,
                slots,
            },
        );
        Ok(())
    }

    fn remove_frontend(&mut self, frontend: &Vip) -> Result<(), MapError> {
        let Some(old) = self.frontends.get(frontend).cloned() else {
            return Ok(());
        };
        // The frontend entry goes first: new flows stop looking at the slots.
        self.maps.delete_slot(frontend, 0)?;
        for slot in 1..=old.slots.len() {
            self.maps.delete_slot(frontend, slot as u16)?;
        }
        for range in &old.policy.source_ranges {
            self.maps.delete_source_range(old.rev_nat_id, range)?;
        }
        for id in old.affinity_matches() {
            self.maps.delete_affinity_match(old.rev_nat_id, id)?;
        }
        self.frontends.remove(frontend);
        self.rev_nat_ids.give(u32::from(old.rev_nat_id));
        for b in &old.backends {
            self.release(b)?;
        }
        Ok(())
    }
}

/// The service map value of a backend slot.
fn slot_value(backend_id: BackendId) -> ServiceValue {
    ServiceValue {
        backend_id,
        count: 0,
        rev_nat_id: 0,
        flags: 0,
        _pad: [0; 3],
    }
}

/// The service map value of a frontend entry (slot 0); its backend ID field carries the
/// session affinity timeout.
fn head_value(count: u16, rev_nat_id: u16, policy: &FrontendPolicy) -> ServiceValue {
    ServiceValue {
        backend_id: policy.affinity_timeout,
        count,
        rev_nat_id,
        flags: policy.flags,
        _pad: [0; 3],
    }
}

/// New slot layout: IDs that stay keep their position, additions fill the holes first, and the
/// last slots move into holes that remain.
fn stable_slots(old: &[BackendId], wanted: &[BackendId]) -> Vec<BackendId> {
    let wanted_set: HashSet<BackendId> = wanted.iter().copied().collect();
    let mut slots: Vec<Option<BackendId>> = old
        .iter()
        .map(|id| wanted_set.contains(id).then_some(*id))
        .collect();
    let present: HashSet<BackendId> = slots.iter().flatten().copied().collect();
    let mut additions: VecDeque<BackendId> = wanted
        .iter()
        .filter(|id| !present.contains(id))
        .copied()
        .collect();
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        match additions.pop_front() {
            Some(id) => *slot = Some(id),
            None => break,
        }
    }
    slots.extend(additions.into_iter().map(Some));
    let mut i = 0;
    while i < slots.len() {
        if slots[i].is_none() {
            slots.swap_remove(i);
        } else {
            i += 1;
        }
    }
    slots.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests;
