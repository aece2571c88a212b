//! Session affinity (`sessionAffinity: ClientIP`), kube-proxy's semantics: a new flow from a
//! client to a frontend goes to the backend the client's last new flow there went to, while
//! that was less than the timeout ago (each new flow refreshes it, as kube-proxy's `recent`
//! match does with `--set`); a backend the frontend no longer has is never chosen this way.
//!
//! The client is the source address on the packet paths and the network namespace on the
//! socket path (a socket has no source address before it connects, and every process of a
//! namespace shares its addresses, as a client IP would). Frontends without affinity pay one
//! flag test.

use aya_ebpf::maps::LruHashMap;
use lb_ebpf::{AffinityMatchKey, AffinityValue, ServiceValue};

use super::{family::Family, lb::Chosen, maps::LB_AFFINITY_MATCH};

/// The backend affinity keeps for the client `key` of `frontend`, when it is due: the frontend
/// has affinity, the entry is younger than its timeout, and the backend is still one of the
/// frontend's and programmed.
#[inline(always)]
pub fn remembered<F: Family, K>(
    map: &LruHashMap<K, AffinityValue>,
    key: &K,
    frontend: &ServiceValue,
    now: u64,
) -> Option<Chosen<F::Addr>> {
    let timeout = frontend.affinity_timeout_ns()?;
    // SAFETY: read-only copy of a map value.
    let entry = unsafe { map.get(key) }.copied()?;
    if now.wrapping_sub(entry.last_used_ns) >= timeout {
        return None;
    }
    let member = AffinityMatchKey {
        backend_id: entry.backend_id,
        rev_nat_id: frontend.rev_nat_id,
        _pad: [0; 2],
    };
    // SAFETY: read-only look at a map value.
    unsafe { LB_AFFINITY_MATCH.get(&member) }?;
    // SAFETY: read-only copy of a map value.
    let backend = unsafe { F::backends().get(&entry.backend_id) }.copied()?;
    Some(Chosen {
        rev_nat_id: frontend.rev_nat_id,
        backend_id: entry.backend_id,
        backend,
    })
}

/// Remembers (or refreshes) that the client `key` of `frontend` went to `backend_id` now;
/// nothing for frontends without affinity. A full map evicts its oldest entries: affinity then
/// starts anew for those clients, which only costs stickiness.
#[inline(always)]
pub fn remember<K>(
    map: &LruHashMap<K, AffinityValue>,
    key: &K,
    frontend: &ServiceValue,
    backend_id: u32,
    now: u64,
) {
    if frontend.affinity_timeout_ns().is_none() {
        return;
    }
    let value = AffinityValue {
        backend_id,
        _pad: 0,
        last_used_ns: now,
    };
    let _ = map.insert(key, &value, 0);
}
