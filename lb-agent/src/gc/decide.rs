//! What a collection deletes, decided from entries alone: no map, no clock, no root.
//!
//! [`garbage`] judges a snapshot of one family's three maps. The collector runs the same
//! per-entry rules ([`flow_dead`], [`snat_dead`]) again on each entry just before it deletes
//! it, with the forward entries read from the live maps.
//!
//! The rules, after Cilium's CT GC and `PurgeOrphanNATEntries` (`pkg/maps/ctmap/ctmap.go`):
//! - a forward entry is the truth about its flow: it is dead once its own expiry has passed;
//! - a reply entry's expiry is only a cache. It goes once that cache has expired *and* its
//!   forward entry is dead or missing. A reply entry whose cache is still valid stays, so the
//!   kernel never misses one it expects to find;
//! - a SNAT entry lives exactly as long as its forward entry, whatever its own expiry says.
//!   The SNAT map is a plain hash map that nothing else ever empties, so a SNAT port whose flow
//!   is gone stays taken until this collection frees it (datapath review, finding 1).

use std::{collections::HashMap, convert::Infallible, fmt::Debug, hash::Hash};

use lb_ebpf::{FLOW_FORWARD, FLOW_REPLY, FlowKey, FlowValue, SnatValue};

/// An address of the flow maps: `[u8; 4]` or `[u8; 16]`.
pub trait FlowAddr: Copy + Eq + Hash + Debug + Default {
    /// The source address of the packets the kernel sends into a hairpinned pod
    /// (`lb_ebpf::HAIRPIN_V4`/`HAIRPIN_V6`). It is the destination of a hairpin flow's reply
    /// key. The client of such a flow is
    /// the pod itself, i.e. the key's source.
    const HAIRPIN: Self;
}

impl FlowAddr for [u8; 4] {
    /// 169.254.42.1.
    const HAIRPIN: Self = lb_ebpf::HAIRPIN_V4;
}

impl FlowAddr for [u8; 16] {
    /// `100::42`.
    const HAIRPIN: Self = lb_ebpf::HAIRPIN_V6;
}

/// Whether an entry with this absolute expiry (`bpf_ktime_get_ns()` time) is alive at `now`.
/// The kernel uses the same rule: an entry is dead from `expires_ns` on.
pub const fn alive(expires_ns: u64, now: u64) -> bool {
    now < expires_ns
}

/// The forward key of a reply entry: the client's packet towards the service address that the
/// reply entry restores. A hairpin reply (to [`FlowAddr::HAIRPIN`]) comes from the client pod
/// itself, so the client is the key's source there.
pub fn reply_forward_key<A: FlowAddr, const PAD: usize>(
    key: &FlowKey<A>,
    value: &FlowValue<A, PAD>,
) -> FlowKey<A> {
    let client = if key.daddr == A::HAIRPIN {
        key.saddr
    } else {
        key.daddr
    };
    FlowKey {
        saddr: client,
        daddr: value.nat_addr,
        sport: key.dport,
        dport: value.nat_port,
        proto: key.proto,
        dir: FLOW_FORWARD,
        _pad: [0; 2],
    }
}

/// The forward key of a SNAT entry: the client's packet towards the service.
pub fn snat_forward_key<A: FlowAddr>(key: &FlowKey<A>, value: &SnatValue<A>) -> FlowKey<A> {
    FlowKey {
        saddr: value.client_addr,
        daddr: value.service_addr,
        sport: value.client_port,
        dport: value.service_port,
        proto: key.proto,
        dir: FLOW_FORWARD,
        _pad: [0; 2],
    }
}

/// Whether a flow table entry is garbage at `now`. `forward_alive` tells whether a live forward
/// entry exists for a key in either flow table; it is asked only about reply entries whose own
/// cache has expired. An entry of neither direction is not ours to judge and stays.
pub fn flow_dead<A: FlowAddr, const PAD: usize, E>(
    now: u64,
    key: &FlowKey<A>,
    value: &FlowValue<A, PAD>,
    forward_alive: impl FnOnce(&FlowKey<A>) -> Result<bool, E>,
) -> Result<bool, E> {
    Ok(match key.dir {
        FLOW_FORWARD => !alive(value.expires_ns, now),
        FLOW_REPLY => {
            !alive(value.expires_ns, now) && !forward_alive(&reply_forward_key(key, value))?
        }
        _ => false,
    })
}

/// Whether a SNAT entry is garbage: its forward entry is dead or missing in both flow tables.
pub fn snat_dead<A: FlowAddr, E>(
    key: &FlowKey<A>,
    value: &SnatValue<A>,
    forward_alive: impl FnOnce(&FlowKey<A>) -> Result<bool, E>,
) -> Result<bool, E> {
    Ok(!forward_alive(&snat_forward_key(key, value))?)
}

/// One family's three maps, as read at one time.
#[derive(Clone, Debug, Default)]
pub struct Entries<A: FlowAddr, const PAD: usize> {
    /// The confirmed flow table (`LB_FLOWS_V4`/`_V6`).
    pub flows: HashMap<FlowKey<A>, FlowValue<A, PAD>>,
    /// The unconfirmed flow table (`LB_FLOWS_NEW_V4`/`_V6`).
    pub new_flows: HashMap<FlowKey<A>, FlowValue<A, PAD>>,
    /// The SNAT map (`LB_SNAT_V4`/`_V6`).
    pub snat: HashMap<FlowKey<A>, SnatValue<A>>,
}

impl<A: FlowAddr, const PAD: usize> Entries<A, PAD> {
    /// Whether a live forward entry for `key` is in either flow table. A forward entry moves
    /// from the unconfirmed table to the confirmed one, and may be in both for a moment.
    pub fn forward_alive(&self, key: &FlowKey<A>, now: u64) -> bool {
        [&self.new_flows, &self.flows]
            .into_iter()
            .any(|table| table.get(key).is_some_and(|v| alive(v.expires_ns, now)))
    }
}

/// The keys to delete, per map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Garbage<A> {
    pub flows: Vec<FlowKey<A>>,
    pub new_flows: Vec<FlowKey<A>>,
    pub snat: Vec<FlowKey<A>>,
}

/// The entries of `entries` that are garbage at `now`: dead forward entries, expired reply
/// entries of dead or missing flows, and SNAT entries of dead or missing flows. Every entry is
/// judged against the same snapshot, so a reply entry whose forward entry is dead goes in the
/// same run as that forward entry.
pub fn garbage<A: FlowAddr, const PAD: usize>(now: u64, entries: &Entries<A, PAD>) -> Garbage<A> {
    let forward_alive = |key: &FlowKey<A>| Ok::<_, Infallible>(entries.forward_alive(key, now));
    let dead_flows = |table: &HashMap<FlowKey<A>, FlowValue<A, PAD>>| {
        table
            .iter()
            .filter(|(key, value)| {
                let Ok(dead) = flow_dead(now, key, value, forward_alive);
                dead
            })
            .map(|(key, _)| *key)
            .collect()
    };
    Garbage {
        flows: dead_flows(&entries.flows),
        new_flows: dead_flows(&entries.new_flows),
        snat: entries
            .snat
            .iter()
            .filter(|(key, value)| {
                let Ok(dead) = snat_dead(key, value, forward_alive);
                dead
            })
            .map(|(key, _)| *key)
            .collect(),
    }
}

#[cfg(test)]
mod tests;
