//! Looking inside the datapath from its pinned maps, with the agent running or stopped:
//! `lb-agent list` ([`list`]: the frontends, in `lb-agent plan`'s format), `lb-agent flows`
//! ([`flows`]: the flow and SNAT tables) and `lb-agent explain` ([`explain`]: what a new
//! packet would meet). The name map the agent keeps for them is [`names`].

pub mod explain;
pub mod flows;
pub mod list;
pub mod names;

use std::{collections::HashMap, net::IpAddr, path::Path, time::Duration};

use aya::maps::{HashMap as BpfHashMap, MapData};
use lb_ebpf::{Affinity4Key, Affinity6Key, AffinityValue, map_names};
use thiserror::Error;

use self::{
    explain::AffinityEntry,
    flows::{FlowRow, Table},
    list::{Listing, MapContents},
    names::{BpfNames, Name, NameError, NameStore as _, decode},
};
use crate::{
    lbmap::{
        MapError, Scope, Vip,
        bpf::{BpfMaps, OpenError},
    },
    model::Frontend,
};

/// The pinned maps could not be read.
#[derive(Debug, Error)]
pub enum InspectError {
    #[error("opening the pinned maps under {dir}: {source} (is an agent's --bpffs there?)")]
    Open {
        dir: String,
        #[source]
        source: OpenError,
    },
    #[error("reading the pinned maps: {0}")]
    Read(#[from] MapError),
    #[error("the name map: {0} (maps of an agent that kept no names list as unnamed)")]
    Names(#[from] NameError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The maps pinned under `pin_dir`.
pub fn open(pin_dir: &Path) -> Result<BpfMaps, InspectError> {
    BpfMaps::from_pins(pin_dir).map_err(|source| InspectError::Open {
        dir: pin_dir.display().to_string(),
        source,
    })
}

/// What the maps under `pin_dir` hold, and their name entries.
pub fn read_contents(pin_dir: &Path) -> Result<(BpfMaps, MapContents), InspectError> {
    let maps = open(pin_dir)?;
    let names = BpfNames::from_pin(pin_dir)?.list()?;
    let snat = maps.node_addrs();
    let contents = MapContents::read(&maps, names, snat)?;
    Ok((maps, contents))
}

/// The frontends the maps under `pin_dir` serve.
pub fn read_listing(pin_dir: &Path) -> Result<Listing, InspectError> {
    let (_, contents) = read_contents(pin_dir)?;
    Ok(Listing::of(&contents))
}

/// The decoded name entries.
pub fn decoded_names(contents: &MapContents) -> HashMap<u32, Name> {
    contents
        .names
        .iter()
        .filter_map(|(k, v)| decode(v).map(|n| (*k, n)))
        .collect()
}

/// Every flow and SNAT entry of both families under `pin_dir`, judged at `now_ns`
/// (`CLOCK_MONOTONIC`, the kernel's `bpf_ktime_get_ns`).
pub fn read_flows(maps: &BpfMaps, now_ns: u64) -> Vec<FlowRow> {
    let mut rows = Vec::new();
    let new4: std::collections::HashSet<_> =
        maps.new_flows_v4().into_iter().map(|(k, _)| k).collect();
    let new6: std::collections::HashSet<_> =
        maps.new_flows_v6().into_iter().map(|(k, _)| k).collect();
    // `flows_v*` lists the confirmed table first, then the unconfirmed one.
    for (k, v) in maps.flows_v4() {
        let table = if new4.contains(&k) {
            Table::New
        } else {
            Table::Confirmed
        };
        rows.push(FlowRow::flow(table, &k, &v, now_ns));
    }
    for (k, v) in maps.flows_v6() {
        let table = if new6.contains(&k) {
            Table::New
        } else {
            Table::Confirmed
        };
        rows.push(FlowRow::flow(table, &k, &v, now_ns));
    }
    for (k, v) in maps.snat_v4() {
        rows.push(FlowRow::snat(&k, &v, now_ns));
    }
    for (k, v) in maps.snat_v6() {
        rows.push(FlowRow::snat(&k, &v, now_ns));
    }
    rows
}

/// The reverse-NAT ID of the service map entry of `frontend` in `scope`.
pub fn rev_nat_id(contents: &MapContents, frontend: &Frontend, scope: Scope) -> Option<u16> {
    let vip = Vip::of(frontend, scope);
    contents
        .slots
        .iter()
        .find(|(v, slot, _)| *v == vip && *slot == 0)
        .map(|(_, _, value)| value.rev_nat_id)
}

/// The affinity entry of `client` for the frontend entry `rev_nat_id`, from the pinned
/// affinity map of its family, with its age at `now_ns`.
pub fn affinity_entry(
    pin_dir: &Path,
    contents: &MapContents,
    client: IpAddr,
    rev_nat_id: u16,
    now_ns: u64,
) -> Result<Option<AffinityEntry>, InspectError> {
    fn lookup<K: aya::Pod>(
        pin_dir: &Path,
        name: &'static str,
        key: K,
    ) -> Result<Option<AffinityValue>, InspectError> {
        let map: BpfHashMap<MapData, K, AffinityValue> = MapData::from_pin(pin_dir.join(name))
            .and_then(aya::maps::Map::from_map_data)
            .and_then(BpfHashMap::try_from)
            .map_err(|source| InspectError::Map { name, source })?;
        match map.get(&key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(InspectError::Map { name, source }),
        }
    }
    let value = match client {
        IpAddr::V4(a) => lookup(
            pin_dir,
            map_names::AFFINITY_V4,
            Affinity4Key {
                client: a.octets(),
                rev_nat_id,
                _pad: [0; 2],
            },
        )?,
        IpAddr::V6(a) => lookup(
            pin_dir,
            map_names::AFFINITY_V6,
            Affinity6Key {
                client: a.octets(),
                rev_nat_id,
                _pad: [0; 2],
            },
        )?,
    };
    Ok(value.and_then(|v| {
        let backend = contents
            .backends
            .iter()
            .find(|(id, _, _)| *id == v.backend_id)
            .and_then(|(_, _, key)| *key)?;
        Some(AffinityEntry {
            backend: backend.addr,
            age: Duration::from_nanos(now_ns.saturating_sub(v.last_used_ns)),
        })
    }))
}
