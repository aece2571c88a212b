//! Garbage collection of the kernel's flow state, after Cilium's CT GC and
//! `PurgeOrphanNATEntries`: dead flows leave the flow tables, and SNAT entries of dead flows
//! leave the SNAT maps.
//!
//! The flow tables are LRU maps, so their dead entries only take room that the kernel would
//! otherwise give to live flows. The SNAT maps are plain hash maps that nothing else empties:
//! without this collection, a SNAT port whose flow is over stays taken and the map fills up
//! (datapath review, finding 1).
//!
//! [`decide`] says what is garbage, from entries alone. [`Collector`] reads the pinned maps
//! ([`Collector::scan`]), then checks every candidate again and deletes it
//! ([`Collector::collect`]). [`periodic`] runs the collector in the agent, and `lb-agent gc`
//! runs it once.
//!
//! # Races with the kernel
//! A run reads `now` once, before it reads any entry. Entries the kernel refreshes during the
//! run get an expiry after that `now`, so they read as alive. A candidate is read again just
//! before it is deleted (the entry, then its forward entry for reply and SNAT entries) and
//! judged again by the same rules. So an entry a CPU refreshed since the snapshot stays.
//!
//! One window is left. It lies between that last read and the delete system call, a few
//! microseconds, because BPF hash maps have no compare-and-delete. If the kernel starts a *new*
//! flow on the same tuple inside that window, the delete removes the new flow's entry:
//! - a forward entry: the flow's next packet picks a backend again, which is exactly what an LRU
//!   eviction does;
//! - a reply entry: the kernel treats it as missing, the same case as an LRU eviction of it;
//! - a SNAT entry reused by the same client tuple: the new flow's replies find no SNAT entry
//!   until the kernel records one again.
//!
//! This needs a tuple that was dead to be reused within microseconds of its check, at most once
//! per run. It costs that one new flow what an eviction would.
//!
//! Live entries are never at risk. The kernel refreshes them in place. A forward entry that is
//! confirmed moves from the unconfirmed table to the confirmed one. Lookups ask the unconfirmed
//! table first and then the confirmed one, so they always find it, as long as the kernel writes
//! the confirmed copy before it deletes the unconfirmed one. Deleting first would leave a moment
//! in which the flow is in neither table, for the kernel's own lookups too.

pub mod decide;
pub mod periodic;

use std::{collections::HashMap, fmt, hash::Hash, path::Path};

use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, Map, MapData, MapError},
};
use lb_ebpf::{FLOW4_PAD, FLOW6_PAD, FlowKey, FlowValue, SnatValue, map_names};
use thiserror::Error;

use self::decide::{Entries, FlowAddr, Garbage};

/// A pinned map could not be opened, read or written. The message ends with aya's error and
/// what it holds (the errno of a failed system call).
#[derive(Debug, Error)]
pub enum GcError {
    #[error("opening pinned map {path}: {}", with_sources(.source))]
    Open {
        path: String,
        #[source]
        source: MapError,
    },
    #[error("{op} on map {map}: {}", with_sources(.source))]
    Map {
        op: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// An error and its sources, `: `-separated: aya's map errors name the failed system call and
/// keep its errno as their source.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        out.push_str(": ");
        out.push_str(&source.to_string());
        next = source.source();
    }
    out
}

/// How many entries of one map a run read and deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Entries read.
    pub scanned: usize,
    /// Entries deleted.
    pub collected: usize,
    /// The walk stopped at its bound before reaching the end. The kernel changed the map so
    /// fast that key iteration kept starting over. The rest waits for the next run.
    pub incomplete: bool,
}

impl Counts {
    fn add(&mut self, other: Self) {
        self.scanned += other.scanned;
        self.collected += other.collected;
        self.incomplete |= other.incomplete;
    }
}

/// One family's maps in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FamilyReport {
    /// The confirmed flow table.
    pub flows: Counts,
    /// The unconfirmed flow table.
    pub new_flows: Counts,
    /// The SNAT map.
    pub snat: Counts,
}

/// What a run did, per map and family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub v4: FamilyReport,
    pub v6: FamilyReport,
}

impl Report {
    /// Every map with its name.
    pub fn maps(&self) -> [(&'static str, Counts); 6] {
        [
            (map_names::FLOWS_V4, self.v4.flows),
            (map_names::FLOWS_NEW_V4, self.v4.new_flows),
            (map_names::SNAT_V4, self.v4.snat),
            (map_names::FLOWS_V6, self.v6.flows),
            (map_names::FLOWS_NEW_V6, self.v6.new_flows),
            (map_names::SNAT_V6, self.v6.snat),
        ]
    }

    /// The sums over every map.
    pub fn total(&self) -> Counts {
        let mut total = Counts::default();
        for (_, counts) in self.maps() {
            total.add(counts);
        }
        total
    }
}

/// `MAP collected/scanned` for every map, with a `+` where the walk was incomplete.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, counts)) in self.maps().into_iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            let more = if counts.incomplete { "+" } else { "" };
            write!(
                f,
                "{sep}{name} {}/{}{more}",
                counts.collected, counts.scanned
            )?;
        }
        Ok(())
    }
}

/// The current time in `bpf_ktime_get_ns()` terms: both read `CLOCK_MONOTONIC`.
pub fn monotonic_now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // CLOCK_MONOTONIC is never negative.
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// How many keys a walk reads at most, per entry the map can hold. Key iteration starts over
/// when the key it stands on is deleted meanwhile (evicted by the kernel). Keys read twice are
/// merged, and this bound ends walks that keep starting over.
const WALK_BOUND_PER_ENTRY: u32 = 2;

/// One pinned map of the collector.
struct Table<K, V> {
    name: &'static str,
    map: BpfHashMap<MapData, K, V>,
    /// At most this many keys are read in one walk.
    bound: usize,
}

impl<K: Pod + Eq + Hash, V: Pod> Table<K, V> {
    /// Opens `pin_dir/name`, a hash or LRU hash map whose key and value sizes are `K`'s and
    /// `V`'s.
    fn open(pin_dir: &Path, name: &'static str) -> Result<Self, GcError> {
        let path = pin_dir.join(name);
        let open_err = |source| GcError::Open {
            path: path.display().to_string(),
            source,
        };
        let data = MapData::from_pin(&path).map_err(open_err)?;
        let max_entries = data.info().map_err(open_err)?.max_entries();
        let map = Map::from_map_data(data)
            .and_then(BpfHashMap::try_from)
            .map_err(open_err)?;
        Ok(Self {
            name,
            map,
            bound: usize::try_from(max_entries.saturating_mul(WALK_BOUND_PER_ENTRY))
                .unwrap_or(usize::MAX),
        })
    }

    /// Every entry, keys first and then their values. Entries deleted meanwhile are left out.
    fn snapshot(&self) -> Result<(HashMap<K, V>, Counts), GcError> {
        let mut keys = Vec::new();
        let mut incomplete = false;
        for key in self.map.keys() {
            if keys.len() == self.bound {
                incomplete = true;
                break;
            }
            keys.push(key.map_err(|source| self.err("bpf_map_get_next_key", source))?);
        }
        let mut entries = HashMap::with_capacity(keys.len());
        for key in keys {
            if let Some(value) = self.get(&key)? {
                entries.insert(key, value);
            }
        }
        let counts = Counts {
            scanned: entries.len(),
            collected: 0,
            incomplete,
        };
        Ok((entries, counts))
    }

    /// The entry's value; `None` when it is gone.
    fn get(&self, key: &K) -> Result<Option<V>, GcError> {
        match self.map.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(self.err("bpf_map_lookup_elem", source)),
        }
    }

    /// Deletes the entry; `false` when it was already gone (evicted, or deleted by the kernel).
    fn remove(&mut self, key: &K) -> Result<bool, GcError> {
        match self.map.remove(key) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
                Ok(false)
            }
            Err(source) => Err(self.err("bpf_map_delete_elem", source)),
        }
    }

    fn err(&self, op: &'static str, source: MapError) -> GcError {
        GcError::Map {
            op,
            map: self.name,
            source,
        }
    }
}

/// The names of one family's maps.
struct FamilyNames {
    flows: &'static str,
    new_flows: &'static str,
    snat: &'static str,
}

/// One family's maps.
struct Family<A, const PAD: usize> {
    flows: Table<FlowKey<A>, FlowValue<A, PAD>>,
    new_flows: Table<FlowKey<A>, FlowValue<A, PAD>>,
    snat: Table<FlowKey<A>, SnatValue<A>>,
}

/// Which flow table.
#[derive(Clone, Copy)]
enum FlowTable {
    Confirmed,
    New,
}

impl<A: FlowAddr, const PAD: usize> Family<A, PAD>
where
    FlowKey<A>: Pod,
    FlowValue<A, PAD>: Pod,
    SnatValue<A>: Pod,
{
    fn open(pin_dir: &Path, names: &FamilyNames) -> Result<Self, GcError> {
        Ok(Self {
            flows: Table::open(pin_dir, names.flows)?,
            new_flows: Table::open(pin_dir, names.new_flows)?,
            snat: Table::open(pin_dir, names.snat)?,
        })
    }

    fn table(&mut self, which: FlowTable) -> &mut Table<FlowKey<A>, FlowValue<A, PAD>> {
        match which {
            FlowTable::Confirmed => &mut self.flows,
            FlowTable::New => &mut self.new_flows,
        }
    }

    /// Whether a live forward entry for `key` is in either table, as the maps hold it now. The
    /// unconfirmed table is asked first, the order that never misses an entry being confirmed
    /// (see the module's races).
    fn forward_alive(&self, key: &FlowKey<A>, now: u64) -> Result<bool, GcError> {
        for table in [&self.new_flows, &self.flows] {
            if table
                .get(key)?
                .is_some_and(|value| decide::alive(value.expires_ns, now))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes the candidates of one flow table that are still garbage when read again.
    fn collect_flows(
        &mut self,
        which: FlowTable,
        candidates: Vec<FlowKey<A>>,
        now: u64,
    ) -> Result<usize, GcError> {
        let mut collected = 0;
        for key in candidates {
            let Some(value) = self.table(which).get(&key)? else {
                continue;
            };
            if decide::flow_dead(now, &key, &value, |fwd| self.forward_alive(fwd, now))?
                && self.table(which).remove(&key)?
            {
                collected += 1;
            }
        }
        Ok(collected)
    }

    /// Deletes the SNAT candidates that are still garbage when read again.
    fn collect_snat(&mut self, candidates: Vec<FlowKey<A>>, now: u64) -> Result<usize, GcError> {
        let mut collected = 0;
        for key in candidates {
            let Some(value) = self.snat.get(&key)? else {
                continue;
            };
            if decide::snat_dead(&key, &value, |fwd| self.forward_alive(fwd, now))?
                && self.snat.remove(&key)?
            {
                collected += 1;
            }
        }
        Ok(collected)
    }

    /// Reads the three maps and judges them: the candidates, and the entries read per map.
    fn scan(&self, now: u64) -> Result<(Garbage<A>, FamilyReport), GcError> {
        let (flows, flow_counts) = self.flows.snapshot()?;
        let (new_flows, new_counts) = self.new_flows.snapshot()?;
        let (snat, snat_counts) = self.snat.snapshot()?;
        let garbage = decide::garbage(
            now,
            &Entries {
                flows,
                new_flows,
                snat,
            },
        );
        let read = FamilyReport {
            flows: flow_counts,
            new_flows: new_counts,
            snat: snat_counts,
        };
        Ok((garbage, read))
    }

    /// Deletes the candidates that are still garbage; adds the counts to `report`.
    fn collect(
        &mut self,
        garbage: Garbage<A>,
        now: u64,
        report: &mut FamilyReport,
    ) -> Result<(), GcError> {
        report.flows.collected = self.collect_flows(FlowTable::Confirmed, garbage.flows, now)?;
        report.new_flows.collected = self.collect_flows(FlowTable::New, garbage.new_flows, now)?;
        report.snat.collected = self.collect_snat(garbage.snat, now)?;
        Ok(())
    }
}

/// What a scan found: the keys that were garbage when read, for [`Collector::collect`], which
/// checks each one again.
#[derive(Debug)]
pub struct Candidates {
    /// The time the scan judged by; the collection judges by it again.
    now: u64,
    v4: Garbage<[u8; 4]>,
    v6: Garbage<[u8; 16]>,
    /// Entries read; nothing collected yet.
    report: Report,
}

impl Candidates {
    /// How many keys were garbage when read.
    pub fn len(&self) -> usize {
        [&self.v4.flows, &self.v4.new_flows, &self.v4.snat]
            .into_iter()
            .map(Vec::len)
            .sum::<usize>()
            + [&self.v6.flows, &self.v6.new_flows, &self.v6.snat]
                .into_iter()
                .map(Vec::len)
                .sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The flow and SNAT maps an agent pinned, opened for collection.
pub struct Collector {
    v4: Family<[u8; 4], FLOW4_PAD>,
    v6: Family<[u8; 16], FLOW6_PAD>,
}

impl Collector {
    /// Opens the flow tables and SNAT maps pinned under `pin_dir` (the agent's `--bpffs`). Maps
    /// whose key or value size is not this agent's are refused.
    pub fn open(pin_dir: &Path) -> Result<Self, GcError> {
        Ok(Self {
            v4: Family::open(
                pin_dir,
                &FamilyNames {
                    flows: map_names::FLOWS_V4,
                    new_flows: map_names::FLOWS_NEW_V4,
                    snat: map_names::SNAT_V4,
                },
            )?,
            v6: Family::open(
                pin_dir,
                &FamilyNames {
                    flows: map_names::FLOWS_V6,
                    new_flows: map_names::FLOWS_NEW_V6,
                    snat: map_names::SNAT_V6,
                },
            )?,
        })
    }

    /// One collection, now: [`Collector::scan`], then [`Collector::collect`].
    pub fn run(&mut self) -> Result<Report, GcError> {
        let candidates = self.scan(monotonic_now_ns())?;
        self.collect(candidates)
    }

    /// Reads every entry and judges it at `now` (`CLOCK_MONOTONIC` nanoseconds, see
    /// [`monotonic_now_ns`]); deletes nothing. A `now` ahead of the clock makes live entries
    /// candidates.
    pub fn scan(&self, now: u64) -> Result<Candidates, GcError> {
        let (v4, v4_read) = self.v4.scan(now)?;
        let (v6, v6_read) = self.v6.scan(now)?;
        Ok(Candidates {
            now,
            v4,
            v6,
            report: Report {
                v4: v4_read,
                v6: v6_read,
            },
        })
    }

    /// Deletes the candidates of a scan that are still garbage when read again, entry by entry
    /// (see the module's races): an entry refreshed since the scan stays.
    pub fn collect(&mut self, candidates: Candidates) -> Result<Report, GcError> {
        let Candidates {
            now,
            v4,
            v6,
            mut report,
        } = candidates;
        self.v4.collect(v4, now, &mut report.v4)?;
        self.v6.collect(v6, now, &mut report.v6)?;
        Ok(report)
    }
}
