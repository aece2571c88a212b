//! The two address families behind one interface, so that the load-balancing logic in `lb` is
//! written once and compiled for each family.

use aya_ebpf::maps::{HashMap, LruHashMap};
use lb_ebpf::{AffinityKey, AffinityValue, Backend, FlowKey, FlowValue, ServiceKey, ServiceValue};

use super::{
    maps::{
        LB_AFFINITY_V4, LB_AFFINITY_V6, LB_BACKENDS_V4, LB_BACKENDS_V6, LB_FLOWS_NEW_V4,
        LB_FLOWS_NEW_V6, LB_FLOWS_V4, LB_FLOWS_V6, LB_SERVICES_V4, LB_SERVICES_V6,
    },
    nat::{End, Rewrite},
    parse::Packet,
};

/// An IP family: its address type, its maps and how to rewrite its addresses.
pub trait Family {
    type Addr: Copy + PartialEq + 'static;
    type Flow: FlowEntry<Self::Addr> + 'static;
    /// 4 or 6, where a key holds both families.
    const NUMBER: u8;

    fn services() -> &'static HashMap<ServiceKey<Self::Addr>, ServiceValue>;
    fn backends() -> &'static HashMap<u32, Backend<Self::Addr>>;
    /// Confirmed flows.
    fn flows() -> &'static LruHashMap<FlowKey<Self::Addr>, Self::Flow>;
    /// Unconfirmed flows.
    fn new_flows() -> &'static LruHashMap<FlowKey<Self::Addr>, Self::Flow>;
    fn affinity() -> &'static LruHashMap<AffinityKey<Self::Addr>, AffinityValue>;
    fn rewrite_addr<C: Rewrite>(
        ctx: &C,
        pkt: &Packet<Self::Addr>,
        end: End,
        new: Self::Addr,
    ) -> Result<(), i64>;
}

/// Field access on a flow value of either family.
pub trait FlowEntry<A>: Copy {
    fn new(nat_addr: A, nat_port: u16, rev_nat_id: u16, backend_id: u32, expires_ns: u64) -> Self;
    fn nat_addr(&self) -> A;
    fn nat_port(&self) -> u16;
    fn backend_id(&self) -> u32;
    fn rev_nat_id(&self) -> u16;
    fn flags(&self) -> u8;
    fn set_flags(&mut self, flags: u8);
    fn snat_port(&self) -> u16;
    /// The SNAT address slot of a SNATed forward entry ([`lb_ebpf::FlowValue::snat_slot`]).
    fn snat_slot(&self) -> u8;
    /// Marks a forward entry as SNATed to `port` (never 0) of the node's SNAT address in
    /// `slot`.
    fn set_snat(&mut self, port: u16, slot: u8);
    fn expires_ns(&self) -> u64;
    fn set_expires(&mut self, expires_ns: u64);
}

impl<A: Copy, const PAD: usize> FlowEntry<A> for FlowValue<A, PAD> {
    #[inline(always)]
    fn new(nat_addr: A, nat_port: u16, rev_nat_id: u16, backend_id: u32, expires_ns: u64) -> Self {
        Self {
            nat_addr,
            nat_port,
            rev_nat_id,
            backend_id,
            snat_port: 0,
            flags: 0,
            snat_slot: 0,
            _pad: [0; PAD],
            expires_ns,
        }
    }
    #[inline(always)]
    fn nat_addr(&self) -> A {
        self.nat_addr
    }
    #[inline(always)]
    fn nat_port(&self) -> u16 {
        self.nat_port
    }
    #[inline(always)]
    fn backend_id(&self) -> u32 {
        self.backend_id
    }
    #[inline(always)]
    fn rev_nat_id(&self) -> u16 {
        self.rev_nat_id
    }
    #[inline(always)]
    fn flags(&self) -> u8 {
        self.flags
    }
    #[inline(always)]
    fn set_flags(&mut self, flags: u8) {
        self.flags = flags;
    }
    #[inline(always)]
    fn snat_port(&self) -> u16 {
        self.snat_port
    }
    #[inline(always)]
    fn snat_slot(&self) -> u8 {
        self.snat_slot
    }
    #[inline(always)]
    fn set_snat(&mut self, port: u16, slot: u8) {
        self.snat_port = port;
        self.snat_slot = slot;
        self.flags |= lb_ebpf::FLOW_F_SNAT;
    }
    #[inline(always)]
    fn expires_ns(&self) -> u64 {
        self.expires_ns
    }
    #[inline(always)]
    fn set_expires(&mut self, expires_ns: u64) {
        self.expires_ns = expires_ns;
    }
}

pub struct V4;
pub struct V6;

impl Family for V4 {
    type Addr = [u8; 4];
    type Flow = lb_ebpf::Flow4Value;
    const NUMBER: u8 = 4;

    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKey<[u8; 4]>, ServiceValue> {
        &LB_SERVICES_V4
    }
    #[inline(always)]
    fn backends() -> &'static HashMap<u32, Backend<[u8; 4]>> {
        &LB_BACKENDS_V4
    }
    #[inline(always)]
    fn flows() -> &'static LruHashMap<FlowKey<[u8; 4]>, Self::Flow> {
        &LB_FLOWS_V4
    }
    #[inline(always)]
    fn new_flows() -> &'static LruHashMap<FlowKey<[u8; 4]>, Self::Flow> {
        &LB_FLOWS_NEW_V4
    }
    #[inline(always)]
    fn affinity() -> &'static LruHashMap<AffinityKey<[u8; 4]>, AffinityValue> {
        &LB_AFFINITY_V4
    }
    #[inline(always)]
    fn rewrite_addr<C: Rewrite>(
        ctx: &C,
        pkt: &Packet<[u8; 4]>,
        end: End,
        new: [u8; 4],
    ) -> Result<(), i64> {
        ctx.rewrite_v4_addr(pkt, end, new)
    }
}

impl Family for V6 {
    type Addr = [u8; 16];
    type Flow = lb_ebpf::Flow6Value;
    const NUMBER: u8 = 6;

    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKey<[u8; 16]>, ServiceValue> {
        &LB_SERVICES_V6
    }
    #[inline(always)]
    fn backends() -> &'static HashMap<u32, Backend<[u8; 16]>> {
        &LB_BACKENDS_V6
    }
    #[inline(always)]
    fn flows() -> &'static LruHashMap<FlowKey<[u8; 16]>, Self::Flow> {
        &LB_FLOWS_V6
    }
    #[inline(always)]
    fn new_flows() -> &'static LruHashMap<FlowKey<[u8; 16]>, Self::Flow> {
        &LB_FLOWS_NEW_V6
    }
    #[inline(always)]
    fn affinity() -> &'static LruHashMap<AffinityKey<[u8; 16]>, AffinityValue> {
        &LB_AFFINITY_V6
    }
    #[inline(always)]
    fn rewrite_addr<C: Rewrite>(
        ctx: &C,
        pkt: &Packet<[u8; 16]>,
        end: End,
        new: [u8; 16],
    ) -> Result<(), i64> {
        ctx.rewrite_v6_addr(pkt, end, new)
    }
}
