//! Map definitions. Sizes here are placeholders: the agent sets the real ones from its flags
//! before loading, and pins every map by name under its `--bpffs` directory.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use lb_ebpf::{
    Affinity4Key, Affinity6Key, AffinityMatchKey, AffinityValue, Backend4, Backend6,
    DEFAULT_MAX_AFFINITY, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_NEW_FLOWS,
    DEFAULT_MAX_SERVICES, DEFAULT_MAX_SNAT, DEFAULT_MAX_SOCKETS, DEFAULT_MAX_SOURCE_RANGES,
    Flow4Key, Flow4Value, Flow6Key, Flow6Value, FrontendName, MAX_NAMES, MAX_SNAT_DEVICES,
    MAX_XDP_DEVICES, SERVICE_STATS_ENTRIES, SNAT_ADDR_SLOTS, Service4Key, Service6Key,
    ServiceCounters, ServiceValue, Snat4Key, Snat4Value, Snat6Key, Snat6Value, SnatDevice,
    Sock4Key, Sock4Value, Sock6Key, Sock6Value, SockAffinityKey, SourceRange, stats,
};

#[map]
pub static LB_SERVICES_V4: HashMap<Service4Key, ServiceValue> =
    HashMap::pinned(DEFAULT_MAX_SERVICES, 0);
#[map]
pub static LB_SERVICES_V6: HashMap<Service6Key, ServiceValue> =
    HashMap::pinned(DEFAULT_MAX_SERVICES, 0);
#[map]
pub static LB_BACKENDS_V4: HashMap<u32, Backend4> = HashMap::pinned(DEFAULT_MAX_BACKENDS, 0);
#[map]
pub static LB_BACKENDS_V6: HashMap<u32, Backend6> = HashMap::pinned(DEFAULT_MAX_BACKENDS, 0);
#[map]
pub static LB_FLOWS_V4: LruHashMap<Flow4Key, Flow4Value> = LruHashMap::pinned(DEFAULT_MAX_FLOWS, 0);
#[map]
pub static LB_FLOWS_V6: LruHashMap<Flow6Key, Flow6Value> = LruHashMap::pinned(DEFAULT_MAX_FLOWS, 0);
/// Unconfirmed flows, apart from the confirmed ones above (see `map_names::FLOWS_NEW_V4`).
#[map]
pub static LB_FLOWS_NEW_V4: LruHashMap<Flow4Key, Flow4Value> =
    LruHashMap::pinned(DEFAULT_MAX_NEW_FLOWS, 0);
#[map]
pub static LB_FLOWS_NEW_V6: LruHashMap<Flow6Key, Flow6Value> =
    LruHashMap::pinned(DEFAULT_MAX_NEW_FLOWS, 0);
/// Not LRU: a SNAT entry goes only when its flow is dead (reused by a new flow, or collected
/// by the agent), never evicted under a live flow.
#[map]
pub static LB_SNAT_V4: HashMap<Snat4Key, Snat4Value> = HashMap::pinned(DEFAULT_MAX_SNAT, 0);
#[map]
pub static LB_SNAT_V6: HashMap<Snat6Key, Snat6Value> = HashMap::pinned(DEFAULT_MAX_SNAT, 0);
#[map]
pub static LB_SOURCE_RANGES_V4: LpmTrie<SourceRange<[u8; 4]>, u8> =
    LpmTrie::pinned(DEFAULT_MAX_SOURCE_RANGES, 0);
#[map]
pub static LB_SOURCE_RANGES_V6: LpmTrie<SourceRange<[u8; 16]>, u8> =
    LpmTrie::pinned(DEFAULT_MAX_SOURCE_RANGES, 0);
#[map]
pub static LB_NODE_ADDR_V4: Array<[u8; 4]> = Array::pinned(SNAT_ADDR_SLOTS, 0);
#[map]
pub static LB_NODE_ADDR_V6: Array<[u8; 16]> = Array::pinned(SNAT_ADDR_SLOTS, 0);
#[map]
pub static LB_SNAT_DEVICES: HashMap<u32, SnatDevice> = HashMap::pinned(MAX_SNAT_DEVICES, 0);
#[map]
pub static LB_SOCK_REVNAT_V4: LruHashMap<Sock4Key, Sock4Value> =
    LruHashMap::pinned(DEFAULT_MAX_SOCKETS, 0);
#[map]
pub static LB_SOCK_REVNAT_V6: LruHashMap<Sock6Key, Sock6Value> =
    LruHashMap::pinned(DEFAULT_MAX_SOCKETS, 0);
/// The devices running the XDP program, by ifindex: where XDP may redirect translated frames.
#[map]
pub static LB_XDP_DEVICES: DevMapHash = DevMapHash::pinned(MAX_XDP_DEVICES, 0);
#[map]
pub static LB_STATS: PerCpuArray<u64> = PerCpuArray::pinned(stats::COUNT, 0);
/// Traffic counters per frontend, by reverse-NAT ID (`lb_ebpf::service_stats`).
#[map]
pub static LB_SERVICE_STATS: PerCpuArray<ServiceCounters> =
    PerCpuArray::pinned(SERVICE_STATS_ENTRIES, 0);
#[map]
pub static LB_AFFINITY_V4: LruHashMap<Affinity4Key, AffinityValue> =
    LruHashMap::pinned(DEFAULT_MAX_AFFINITY, 0);
#[map]
pub static LB_AFFINITY_V6: LruHashMap<Affinity6Key, AffinityValue> =
    LruHashMap::pinned(DEFAULT_MAX_AFFINITY, 0);
#[map]
pub static LB_SOCK_AFFINITY: LruHashMap<SockAffinityKey, AffinityValue> =
    LruHashMap::pinned(DEFAULT_MAX_AFFINITY, 0);
/// Sized as the backend maps: at most one entry per backend slot of a frontend.
#[map]
pub static LB_AFFINITY_MATCH: HashMap<AffinityMatchKey, u8> =
    HashMap::pinned(DEFAULT_MAX_BACKENDS, 0);

/// Written by the agent only, never read here (`map_names::NAMES`). Not preallocated: it
/// costs the kernel memory of the entries present, not of `MAX_NAMES`.
#[map]
pub static LB_NAMES: HashMap<u32, FrontendName> =
    HashMap::pinned(MAX_NAMES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = LB_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not migrate CPUs while running.
        unsafe { *counter += 1 };
    }
}

/// Adds one to counter `what` (`lb_ebpf::service_stats`) of the frontend `rev_nat_id`.
#[inline(always)]
pub fn count_service(rev_nat_id: u16, what: usize) {
    if super::conf::service_counters() == lb_ebpf::service_stats::LEVEL_OFF {
        return;
    }
    if let Some(c) = LB_SERVICE_STATS.get_ptr_mut(u32::from(rev_nat_id)) {
        // SAFETY: per-CPU slot, as in `count`; `what` is one of the constant indices.
        unsafe {
            if let Some(n) = (*c).counts.get_mut(what) {
                *n += 1;
            }
        }
    }
}

/// Counts a translated packet of `len` bytes for the frontend `rev_nat_id`.
#[inline(always)]
pub fn count_service_packet(rev_nat_id: u16, len: u32) {
    if super::conf::service_counters() != lb_ebpf::service_stats::LEVEL_PACKETS {
        return;
    }
    if let Some(c) = LB_SERVICE_STATS.get_ptr_mut(u32::from(rev_nat_id)) {
        // SAFETY: per-CPU slot, as in `count`.
        unsafe {
            (*c).counts[lb_ebpf::service_stats::PACKETS] += 1;
            (*c).counts[lb_ebpf::service_stats::BYTES] += u64::from(len);
        }
    }
}
