//! Garbage collection of the kernel's flow state, after Cilium's CT GC and
//! `PurgeOrphanNATEntries`: dead flows leave the flow tables, and SNAT entries of dead flows
//! leave the SNAT maps.
//!
//! The flow tables are LRU maps, so their dead entries only take room that the kernel would
//! otherwise give to live flows. The SNAT maps are plain hash maps that nothing else empties:
//! without this collection, a SNAT port whose flow is over stays taken and the map fills up
//! (datapath review, finding 1).
//!
//! [`decide`] says what is garbage, from entries alone.

pub mod decide;
