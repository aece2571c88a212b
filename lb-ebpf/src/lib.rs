//! Map key and value types shared by the kernel programs and the agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so that its layout is the same on both sides
//! and no uninitialised byte ever reaches a map key. Addresses are stored as the bytes of the
//! network-order address; ports are stored in network byte order, exactly as in the packet, so
//! the kernel never swaps bytes on the hot path. Use [`port_to_map`]/[`port_from_map`] from the
//! agent.
#![no_std]

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Flow direction stored in a flow key: client towards the service.
pub const FLOW_FORWARD: u8 = 0;
/// Flow direction stored in a flow key: backend replying to the client.
pub const FLOW_REPLY: u8 = 1;

/// Flow flag: the client closed its direction (a FIN or RST from the client). Set on forward
/// entries.
pub const FLOW_F_CLOSED_FWD: u8 = 1;
/// Flow flag: the backend closed its direction (a FIN or RST from the backend). Set on forward
/// entries by the reply path. With [`FLOW_F_CLOSED_FWD`] the flow lives [`FLOW_TCP_CLOSE_NS`]
/// more; one direction closed alone changes nothing (a half-closed connection lives on, and a
/// stray RST cannot end a live connection).
pub const FLOW_F_CLOSED_REV: u8 = 8;
/// Flow flag: a reply of the flow was seen. On forward entries: set by the reply path; an
/// unconfirmed flow whose client sends again after a reply is confirmed (moved to the long-lived
/// table). On reply and SNAT entries: the forward entry has been told.
pub const FLOW_F_REPLIED: u8 = 16;
/// Both closing flags.
pub const FLOW_F_CLOSED: u8 = FLOW_F_CLOSED_FWD | FLOW_F_CLOSED_REV;

/// Names of the maps the agent opens or sizes. Every map of the object file (the SNAT maps,
/// which only the kernel reads and writes, too) is pinned under `--bpffs` by its own name.
pub mod map_names {
    pub const SERVICES_V4: &str = "LB_SERVICES_V4";
    pub const SERVICES_V6: &str = "LB_SERVICES_V6";
    pub const BACKENDS_V4: &str = "LB_BACKENDS_V4";
    pub const BACKENDS_V6: &str = "LB_BACKENDS_V6";
    /// Confirmed flows (the client spoke again after a reply): forward and reply entries.
    pub const FLOWS_V4: &str = "LB_FLOWS_V4";
    pub const FLOWS_V6: &str = "LB_FLOWS_V6";
    /// Unconfirmed flows (a SYN, a datagram without answer): forward and reply entries, apart
    /// from the confirmed ones, so that a flood of new flows never evicts an established one.
    pub const FLOWS_NEW_V4: &str = "LB_FLOWS_NEW_V4";
    pub const FLOWS_NEW_V6: &str = "LB_FLOWS_NEW_V6";
    /// SNAT entries (a hash map, not LRU: a live entry is never evicted).
    pub const SNAT_V4: &str = "LB_SNAT_V4";
    pub const SNAT_V6: &str = "LB_SNAT_V6";
    pub const SOURCE_RANGES_V4: &str = "LB_SOURCE_RANGES_V4";
    pub const SOURCE_RANGES_V6: &str = "LB_SOURCE_RANGES_V6";
    /// This node's SNAT addresses per family, the sources of SNATed flows, by slot
    /// ([`super::FlowValue::snat_slot`]): slot 0 is the node's default address of the family
    /// (also the node's address where one is needed, as for source ranges), slots 1 and up
    /// those of other devices ([`super::SnatDevice`]); an empty slot is all zero.
    pub const NODE_ADDR_V4: &str = "LB_NODE_ADDR_V4";
    pub const NODE_ADDR_V6: &str = "LB_NODE_ADDR_V6";
    /// Egress device (ifindex) -> the SNAT address slots of flows the FIB sends out of it
    /// ([`super::SnatDevice`]); a device without an entry uses slot 0.
    pub const SNAT_DEVICES: &str = "LB_SNAT_DEVICES";
    pub const SOCK_REVNAT_V4: &str = "LB_SOCK_REVNAT_V4";
    pub const SOCK_REVNAT_V6: &str = "LB_SOCK_REVNAT_V6";
    pub const STATS: &str = "LB_STATS";
    /// Devices running the XDP program (ifindex -> ifindex), the targets of XDP redirects.
    pub const XDP_DEVICES: &str = "LB_XDP_DEVICES";
    /// Per-CPU traffic counters per frontend ([`super::service_stats`]).
    pub const SERVICE_STATS: &str = "LB_SERVICE_STATS";
    /// Session affinity: the backend a client was last sent to, per frontend.
    pub const AFFINITY_V4: &str = "LB_AFFINITY_V4";
    pub const AFFINITY_V6: &str = "LB_AFFINITY_V6";
    /// Session affinity of sockets, by network namespace instead of client address.
    pub const SOCK_AFFINITY: &str = "LB_SOCK_AFFINITY";
    /// The backends of every frontend with session affinity, so that affinity never leads to a
    /// backend the frontend no longer has (the agent writes it).
    pub const AFFINITY_MATCH: &str = "LB_AFFINITY_MATCH";
    /// What each frontend entry is (its kind and service port, by reverse-NAT ID) and the
    /// health check node ports, for `lb-agent list` and the metrics: written by the agent,
    /// never read by a program.
    pub const NAMES: &str = "LB_NAMES";
}

/// Names of the programs' read-only globals the agent sets when it loads them (`u64`
/// nanoseconds for lifetimes, `u32` host-order ports). Unset, they hold the `DEFAULT_*` and
/// `FLOW_*_NS` values of this crate.
pub mod global_names {
    /// [`crate::FLOW_TCP_LIFETIME_NS`]: a confirmed TCP connection, after its last packet.
    pub const TCP_ESTABLISHED_NS: &str = "LB_TCP_ESTABLISHED_NS";
    /// [`crate::FLOW_TCP_SYN_NS`]: a TCP flow not confirmed yet.
    pub const TCP_SYN_NS: &str = "LB_TCP_SYN_NS";
    /// [`crate::FLOW_TCP_CLOSE_NS`]: a TCP flow closed both ways (or reset unconfirmed).
    pub const TCP_CLOSE_NS: &str = "LB_TCP_CLOSE_NS";
    /// [`crate::FLOW_UDP_LIFETIME_NS`]: a confirmed UDP flow.
    pub const UDP_NS: &str = "LB_UDP_NS";
    /// [`crate::FLOW_UDP_NEW_NS`]: a UDP flow not confirmed yet.
    pub const UDP_NEW_NS: &str = "LB_UDP_NEW_NS";
    /// [`crate::DEFAULT_SNAT_PORT_MIN`] and [`crate::DEFAULT_SNAT_PORT_MAX`]: SNAT source ports.
    pub const SNAT_PORT_MIN: &str = "LB_SNAT_PORT_MIN";
    pub const SNAT_PORT_MAX: &str = "LB_SNAT_PORT_MAX";
}

/// Names of the programs in the object file.
pub mod program_names {
    /// TC ingress on pod-facing devices: service translation (DNAT) of pod traffic.
    pub const TC_POD_INGRESS: &str = "lb_tc_pod_ingress";
    /// TC egress on pod-facing devices: reverse translation of replies towards the client pod.
    pub const TC_POD_EGRESS: &str = "lb_tc_pod_egress";
    /// TC ingress on the node's external devices: NodePort, ExternalIP and LoadBalancer traffic.
    pub const TC_EXT_INGRESS: &str = "lb_tc_ext_ingress";
    /// XDP on the node's external devices: the fast path of `lb_tc_ext_ingress`.
    pub const XDP_EXT: &str = "lb_xdp_ext";
    /// cgroup `connect4`/`connect6`: socket-level translation of TCP and UDP `connect()`.
    pub const SOCK_CONNECT4: &str = "lb_sock_connect4";
    pub const SOCK_CONNECT6: &str = "lb_sock_connect6";
    /// cgroup `sendmsg4`/`sendmsg6`: translation of unconnected UDP datagrams.
    pub const SOCK_SENDMSG4: &str = "lb_sock_sendmsg4";
    pub const SOCK_SENDMSG6: &str = "lb_sock_sendmsg6";
    /// cgroup `recvmsg4`/`recvmsg6`: UDP answers appear to come from the service address.
    pub const SOCK_RECVMSG4: &str = "lb_sock_recvmsg4";
    pub const SOCK_RECVMSG6: &str = "lb_sock_recvmsg6";
    /// cgroup `getpeername4`/`getpeername6`: a translated socket's peer is the service address.
    pub const SOCK_GETPEERNAME4: &str = "lb_sock_getpeername4";
    pub const SOCK_GETPEERNAME6: &str = "lb_sock_getpeername6";
}

/// Default number of service map entries (frontends and their backend slots), per family.
pub const DEFAULT_MAX_SERVICES: u32 = 65_536;
/// Default number of backends, per family.
pub const DEFAULT_MAX_BACKENDS: u32 = 262_144;
/// Default number of sockets whose service address is remembered, per family.
pub const DEFAULT_MAX_SOCKETS: u32 = 262_144;
/// Default number of SNATed external flows, per family.
pub const DEFAULT_MAX_SNAT: u32 = 131_072;
/// Default number of loadBalancerSourceRanges prefixes, per family.
pub const DEFAULT_MAX_SOURCE_RANGES: u32 = 16_384;
/// Devices the XDP program can run on at once (entries of `LB_XDP_DEVICES`).
pub const MAX_XDP_DEVICES: u32 = 1_024;
/// SNAT address slots per family (entries of `LB_NODE_ADDR_*`): the node's default SNAT
/// address (slot 0) and one per other external device with an address of the family.
pub const SNAT_ADDR_SLOTS: u32 = 32;
/// Egress devices with SNAT addresses of their own (entries of `LB_SNAT_DEVICES`).
pub const MAX_SNAT_DEVICES: u32 = 1_024;
/// Default size of each session affinity map (clients x frontends with affinity).
pub const DEFAULT_MAX_AFFINITY: u32 = 131_072;
/// Default number of entries of the confirmed flow table (each flow takes a forward and a reply
/// entry; a SNATed one a forward entry and a SNAT entry), per family.
pub const DEFAULT_MAX_FLOWS: u32 = 524_288;
/// Default number of entries of the unconfirmed flow table, per family.
pub const DEFAULT_MAX_NEW_FLOWS: u32 = 131_072;
/// Default SNAT source ports, inclusive (host byte order): below the NodePort range and the
/// kernel's default ephemeral range (32768-60999), as Calico's 20000-29999.
pub const DEFAULT_SNAT_PORT_MIN: u16 = 20_000;
pub const DEFAULT_SNAT_PORT_MAX: u16 = 29_999;
/// Ports tried for a new SNATed flow, each a random one of the range.
pub const SNAT_ATTEMPTS: u32 = 64;

/// Indexes of the per-CPU counters in the `LB_STATS` array.
///
/// A packet dropped or refused by rule counts once, under the most specific of
/// [`NO_BACKEND`](stats::NO_BACKEND), [`SOURCE_RANGE_DROPPED`](stats::SOURCE_RANGE_DROPPED),
/// [`NO_ENDPOINT_DROPPED`](stats::NO_ENDPOINT_DROPPED), [`SNAT_FAILED`](stats::SNAT_FAILED) and
/// [`REJECTED`](stats::REJECTED). Where XDP hands a packet to TC untouched, only TC counts it.
/// Per-frontend traffic counters (`LB_SERVICE_STATS`, a per-CPU array indexed by the frontend's
/// reverse-NAT ID; index 0 collects what belongs to no known frontend). Indices into
/// [`ServiceCounters::counts`].
pub mod service_stats {
    /// New flows (connections, UDP flows) recorded by the TC and XDP programs, and `connect()`
    /// and unconnected `sendmsg()` calls the socket programs translated.
    pub const NEW_FLOWS: usize = 0;
    /// Packets the TC and XDP programs translated, both directions (the socket programs'
    /// packets are not translated per packet and not counted).
    pub const PACKETS: usize = 1;
    /// Bytes of those packets (L2 frame length).
    pub const BYTES: usize = 2;
    /// Refusals: a service port without any endpoint answered with a reset, a port
    /// unreachable, or a failed call.
    pub const REFUSED: usize = 3;
    /// Packets and calls dropped by rule: outside `loadBalancerSourceRanges`, no endpoint in
    /// the frontend's scope, no free SNAT port.
    pub const DROPPED: usize = 4;
    /// Number of counters.
    pub const COUNT: usize = 5;
    /// `LB_SERVICE_COUNTERS` ([`GLOBAL`]): nothing counted.
    pub const LEVEL_OFF: u8 = 0;
    /// Counts new flows, refusals and drops: events of a flow's first packet or of a refused or
    /// dropped one, on paths that cost far more already.
    pub const LEVEL_FLOWS: u8 = 1;
    /// Counts every translated packet and its bytes too: a write to the frontend's counters
    /// for each packet, which misses the CPU caches when traffic spreads over many services.
    pub const LEVEL_PACKETS: u8 = 2;
    /// The programs' global holding the level.
    pub const GLOBAL: &str = "LB_SERVICE_COUNTERS";
    /// Every counter with its metric name stem.
    pub const NAMES: [(usize, &str); COUNT] = [
        (NEW_FLOWS, "new_flows"),
        (PACKETS, "packets"),
        (BYTES, "bytes"),
        (REFUSED, "refused"),
        (DROPPED, "dropped"),
    ];
}

/// One CPU's traffic counters of one frontend ([`service_stats`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    pub counts: [u64; service_stats::COUNT],
}

/// Entries of `LB_SERVICE_STATS`: every reverse-NAT ID.
pub const SERVICE_STATS_ENTRIES: u32 = 65_536;

pub mod stats {
    /// Packets whose destination was translated to a backend.
    pub const TRANSLATED: u32 = 0;
    /// Replies whose source was translated back to the service address.
    pub const REVERSED: u32 = 1;
    /// New flows: a backend was chosen and the flow recorded.
    pub const NEW_FLOWS: u32 = 2;
    /// Pod packets, and node processes' `connect()`/`sendmsg()`, to a service port without a
    /// usable backend that are not refused ([`REJECTED`]): a pod's packet is dropped when the
    /// frontend has no backend (endpoints exist, none in its scope: internalTrafficPolicy Local),
    /// passed on untouched when a slot or its backend is missing (an update applied halfway); a
    /// node process's call goes on untranslated. External packets count as
    /// [`NO_ENDPOINT_DROPPED`] instead.
    pub const NO_BACKEND: u32 = 3;
    /// IP fragments, passed on untouched by rule: ports are only in the first fragment.
    pub const FRAGMENTS: u32 = 4;
    /// IPv6 packets whose extension headers could not be walked (passed on untouched).
    pub const UNPARSED_EXT_HEADERS: u32 = 5;
    /// Flow entries that could not be written (map full or update error).
    pub const FLOW_UPDATE_FAILED: u32 = 6;
    /// External packets dropped by loadBalancerSourceRanges.
    pub const SOURCE_RANGE_DROPPED: u32 = 7;
    /// External packets (TC or XDP) dropped because the service has endpoints but none this
    /// frontend may use (externalTrafficPolicy Local: none on this node).
    pub const NO_ENDPOINT_DROPPED: u32 = 8;
    /// External packets, and replies of SNATed flows, dropped because no node address or route
    /// was found (no free port counts as [`SNAT_NO_PORT`]).
    pub const SNAT_FAILED: u32 = 9;
    /// Packets TC sent out itself by redirect: SNATed flows and their replies (after a FIB
    /// lookup), and both directions of hairpin flows.
    pub const REDIRECTED: u32 = 10;
    /// Frames the XDP program sent out itself (`XDP_TX` or a redirect to another XDP device).
    pub const XDP_SENT: u32 = 11;
    /// Translatable frames XDP left untouched to the TC program: the next hop's neighbour entry
    /// is not resolved, the egress device runs no XDP, or the frame exceeds the egress MTU.
    pub const XDP_TO_TC: u32 = 12;
    /// Refusals of a service port without any endpoint: packets answered by the TC programs
    /// with a TCP reset or an ICMP port unreachable, or dropped when no answer is allowed (XDP
    /// leaves them to TC), and node processes' `connect()` and unconnected UDP `sendmsg()` calls
    /// failed with ECONNREFUSED by the socket programs.
    pub const REJECTED: u32 = 13;
    /// New external flows dropped because no SNAT port was free towards their backend (every
    /// port tried belongs to a live flow, or the SNAT map is full).
    pub const SNAT_NO_PORT: u32 = 14;
    /// Unconfirmed flows confirmed: moved to the long-lived flow table.
    pub const CONFIRMED: u32 = 15;
    /// Number of counters.
    pub const COUNT: u32 = 16;

    /// Every counter with the name `lb-agent stats` prints.
    pub const NAMES: [(u32, &str); COUNT as usize] = [
        (TRANSLATED, "translated"),
        (REVERSED, "reversed"),
        (NEW_FLOWS, "new_flows"),
        (NO_BACKEND, "no_backend"),
        (FRAGMENTS, "fragments"),
        (UNPARSED_EXT_HEADERS, "unparsed_ext_headers"),
        (FLOW_UPDATE_FAILED, "flow_update_failed"),
        (SOURCE_RANGE_DROPPED, "source_range_dropped"),
        (NO_ENDPOINT_DROPPED, "no_endpoint_dropped"),
        (SNAT_FAILED, "snat_failed"),
        (REDIRECTED, "tc_redirected"),
        (XDP_SENT, "xdp_sent"),
        (XDP_TO_TC, "xdp_to_tc"),
        (REJECTED, "rejected"),
        (SNAT_NO_PORT, "snat_no_port"),
        (CONFIRMED, "confirmed_flows"),
    ];
}

/// Key of the service maps, generic over the address bytes (`[u8; 4]` or `[u8; 16]`).
///
/// `slot == 0` is the frontend entry ([`ServiceValue::count`], [`ServiceValue::rev_nat_id`]);
/// slots `1..=count` name one backend each ([`ServiceValue::backend_id`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey<A> {
    pub addr: A,
    /// Service port, network byte order.
    pub port: u16,
    pub slot: u16,
    pub proto: u8,
    /// [`SCOPE_DEFAULT`] or [`SCOPE_INTERNAL`]. Keys pinned by earlier agents hold 0 here, the
    /// default scope, and stay valid.
    pub scope: u8,
    pub _pad: [u8; 2],
}

/// The service entry every path reads.
pub const SCOPE_DEFAULT: u8 = 0;
/// The entry in-cluster clients (the pod and socket programs) read instead for an external
/// frontend with `externalTrafficPolicy: Local` ([`SVC_F_LOCAL`]): every backend of the
/// cluster, where the default entry holds this node's only.
pub const SCOPE_INTERNAL: u8 = 1;

/// Key of the IPv4 service map.
pub type Service4Key = ServiceKey<[u8; 4]>;
/// Key of the IPv6 service map.
pub type Service6Key = ServiceKey<[u8; 16]>;

/// Value of both service maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Backend slots: the backend's ID. Frontend: the session affinity timeout in seconds
    /// with [`SVC_F_AFFINITY`], else 0 (Cilium keeps it in the same place).
    pub backend_id: u32,
    /// Frontend: number of backend slots. Backend slots: 0.
    pub count: u16,
    /// Frontend: identifies the service port (for counters and future per-service state).
    pub rev_nat_id: u16,
    pub flags: u8,
    pub _pad: [u8; 3],
}

impl ServiceValue {
    /// Whether this frontend refuses what is sent to it: no backend slot, and [`SVC_F_REJECT`]
    /// (no endpoint anywhere). A frontend without backends but without the flag has endpoints,
    /// none in its scope, and drops instead. Read by the kernel on every new flow.
    #[inline(always)]
    pub const fn refuses(&self) -> bool {
        self.count == 0 && self.flags & SVC_F_REJECT != 0
    }

    /// A frontend's session affinity timeout in nanoseconds; `None` without affinity.
    #[inline(always)]
    pub const fn affinity_timeout_ns(&self) -> Option<u64> {
        if self.flags & SVC_F_AFFINITY != 0 {
            Some(self.backend_id as u64 * 1_000_000_000)
        } else {
            None
        }
    }
}

/// Key of the session affinity maps: a client and the frontend (by reverse-NAT ID) it used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey<A> {
    /// The client's address; for sockets ([`SockAffinityKey`]) its network namespace instead.
    pub client: A,
    pub rev_nat_id: u16,
    pub _pad: [u8; 2],
}

/// Key of the IPv4 session affinity map.
pub type Affinity4Key = AffinityKey<[u8; 4]>;
/// Key of the IPv6 session affinity map.
pub type Affinity6Key = AffinityKey<[u8; 16]>;

/// Key of the sockets' session affinity map: the socket's network namespace cookie
/// (`bpf_get_netns_cookie`), the frontend, and its family (4 or 6), as a socket of the node
/// has no client address before it connects.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockAffinityKey {
    pub netns_cookie: u64,
    pub rev_nat_id: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}

/// Value of the session affinity maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    /// When a new flow last went to the backend through this entry (`bpf_ktime_get_ns`).
    pub last_used_ns: u64,
}

/// Key of the affinity match map: a backend of a frontend with session affinity. Backend and
/// reverse-NAT IDs are unique across both families, so one map serves both.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityMatchKey {
    pub backend_id: u32,
    pub rev_nat_id: u16,
    pub _pad: [u8; 2],
}

/// Entries of the name map (`LB_NAMES`): every reverse-NAT ID (at most 65535) and every health
/// check node port ([`NAME_KEY_HEALTH_CHECK`] plus the port).
pub const MAX_NAMES: u32 = 131_072;
/// Keys of the name map at and above this are health check node ports (this plus the port);
/// below it, reverse-NAT IDs of frontend entries.
pub const NAME_KEY_HEALTH_CHECK: u32 = 0x1_0000;
/// [`FrontendName::kind`]: a cluster IP.
pub const NAME_KIND_CLUSTER_IP: u8 = 1;
/// [`FrontendName::kind`]: a node port on a node address.
pub const NAME_KIND_NODE_PORT: u8 = 2;
/// [`FrontendName::kind`]: a `spec.externalIPs` address.
pub const NAME_KIND_EXTERNAL_IP: u8 = 3;
/// [`FrontendName::kind`]: a load balancer ingress IP.
pub const NAME_KIND_LOAD_BALANCER: u8 = 4;
/// [`FrontendName::kind`]: a health check node port (`value` holds the local ready endpoints).
pub const NAME_KIND_HEALTH_CHECK: u8 = 5;
/// Bytes of [`FrontendName::text`]: a namespace and a name (63 bytes each at most, DNS labels),
/// the `/` between them and a port name (15 bytes at most) fit.
pub const NAME_TEXT_LEN: usize = 152;

/// Value of the name map (`LB_NAMES`): what a frontend entry or health check node port is, in
/// words. The kernel never reads it; it lets `lb-agent list` print what `lb-agent plan` prints
/// from the pinned maps alone, with or without a running agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrontendName {
    /// `NAME_KIND_*`.
    pub kind: u8,
    /// Bytes of `text` holding the service's `namespace/name`.
    pub service_len: u8,
    /// Bytes of `text` after those holding the port's name (0: a single unnamed port).
    pub port_len: u8,
    /// Frontends: the IP family, 4 or 6 (0 in entries of builds before it); else 0.
    pub family: u8,
    /// Health check node ports: the service's local ready endpoints; else 0.
    pub value: u32,
    /// UTF-8 `namespace/name` then the port name, zero-filled.
    pub text: [u8; NAME_TEXT_LEN],
}

/// Value of the backend maps, keyed by a `u32` backend ID.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend<A> {
    pub addr: A,
    /// Backend port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

/// Value of the IPv4 backend map.
pub type Backend4 = Backend<[u8; 4]>;
/// Value of the IPv6 backend map.
pub type Backend6 = Backend<[u8; 16]>;

/// Key of the flow (connection tracking) maps: the packet's tuple as seen on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey<A> {
    pub saddr: A,
    pub daddr: A,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    /// [`FLOW_FORWARD`] or [`FLOW_REPLY`].
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// Key of the IPv4 flow map.
pub type Flow4Key = FlowKey<[u8; 4]>;
/// Key of the IPv6 flow map.
pub type Flow6Key = FlowKey<[u8; 16]>;

/// Value of the flow maps. `PAD` makes the padding before the 8-byte timestamp explicit.
///
/// Forward entries hold the backend the flow was sent to; reply entries hold the service address
/// to restore as the source of replies. The translation is stored in the flow itself, so
/// established TCP flows keep working when the service or backend maps change (as they do with
/// kube-proxy's conntrack entries).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowValue<A, const PAD: usize> {
    pub nat_addr: A,
    /// Network byte order.
    pub nat_port: u16,
    pub rev_nat_id: u16,
    pub backend_id: u32,
    /// Forward entries of flows from outside sent to a backend on another node: the source port
    /// of the node address the flow is SNATed to (network byte order); else 0.
    pub snat_port: u16,
    /// `FLOW_F_*` bits.
    pub flags: u8,
    /// Forward entries of SNATed flows: which of the node's SNAT addresses the flow leaves
    /// from, chosen by the device the FIB sends it out of ([`SnatDevice`]): an index of
    /// `LB_NODE_ADDR_*` ([`map_names::NODE_ADDR_V4`]). Else 0.
    pub snat_slot: u8,
    pub _pad: [u8; PAD],
    /// `bpf_ktime_get_ns()` from which on the entry is dead: an absolute expiry, so that an
    /// entry another CPU just refreshed can never read as expired. Forward entries are the
    /// truth about their flow; a reply entry's own expiry only says whether it must ask its
    /// forward entry.
    pub expires_ns: u64,
}

/// The padding of [`Flow4Value`] before its timestamp.
pub const FLOW4_PAD: usize = 0;
/// The padding of [`Flow6Value`] before its timestamp.
pub const FLOW6_PAD: usize = 4;
/// Value of the IPv4 flow map.
pub type Flow4Value = FlowValue<[u8; 4], FLOW4_PAD>;
/// Value of the IPv6 flow map.
pub type Flow6Value = FlowValue<[u8; 16], FLOW6_PAD>;

/// Key of the SNAT maps: a reply from a backend on another node to this node's address, as seen
/// on the wire (`dir` is [`FLOW_REPLY`]).
pub type Snat4Key = FlowKey<[u8; 4]>;
/// See [`Snat4Key`].
pub type Snat6Key = FlowKey<[u8; 16]>;

/// Value of the SNAT maps: who the reply goes to, and from which service address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnatValue<A> {
    pub client_addr: A,
    pub service_addr: A,
    /// Network byte order.
    pub client_port: u16,
    /// Network byte order.
    pub service_port: u16,
    /// `FLOW_F_*` bits ([`FLOW_F_REPLIED`]).
    pub flags: u8,
    pub _pad: u8,
    /// The frontend's reverse-NAT ID, for its traffic counters (0 in entries of builds before
    /// them).
    pub rev_nat_id: u16,
    /// Absolute expiry, as [`FlowValue::expires_ns`]; past it, the forward entry (found from
    /// this value) decides whether the port is still in use.
    pub expires_ns: u64,
}

/// Value of the SNAT device map: the SNAT address slot of each family for flows leaving
/// through the device (0: the node's default SNAT address of the family).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnatDevice {
    pub slot_v4: u8,
    pub slot_v6: u8,
    pub _pad: [u8; 2],
}

/// Value of the IPv4 SNAT map.
pub type Snat4Value = SnatValue<[u8; 4]>;
/// Value of the IPv6 SNAT map.
pub type Snat6Value = SnatValue<[u8; 16]>;

/// Data of the source-range LPM keys: the service port (by its rev-NAT ID) and a client
/// prefix. The LPM prefix length counts 32 bits for `rev_nat_id` and `_pad`, then the prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceRange<A> {
    /// Network byte order, so the LPM trie compares it bytewise.
    pub rev_nat_id: u16,
    pub _pad: u16,
    pub addr: A,
}

/// Frontend flag: reachable from outside the node (NodePort, ExternalIP, LoadBalancer IP).
pub const SVC_F_EXTERNAL: u8 = 1;
/// Frontend flag: externalTrafficPolicy Local: only local backends, the client address is kept,
/// and traffic is dropped when there is none.
pub const SVC_F_LOCAL: u8 = 2;
/// Frontend flag: loadBalancerSourceRanges apply; other sources are dropped.
pub const SVC_F_SOURCE_RANGES: u8 = 4;

/// Frontend flag: the service port has no endpoint anywhere (ready, serving or terminating):
/// new TCP connections are refused with a reset, other packets dropped, and node processes'
/// `connect()` fails with ECONNREFUSED, as kube-proxy's REJECT rules do. A frontend without
/// backends but without this flag (endpoints exist, none in its scope) drops.
pub const SVC_F_REJECT: u8 = 8;
/// Frontend flag: `sessionAffinity: ClientIP`; the frontend entry's `backend_id` holds the
/// timeout in seconds.
pub const SVC_F_AFFINITY: u8 = 16;

/// Backend flag: the backend runs on this node.
pub const BACKEND_F_LOCAL: u8 = 1;

/// Flow flag: the flow is SNATed to this node's address (backend on another node).
pub const FLOW_F_SNAT: u8 = 2;
/// Flow flag: a hairpin flow (the client is its own backend); its packets leave from the
/// hairpin address (`kern/hairpin.rs`).
pub const FLOW_F_HAIRPIN: u8 = 4;

/// The source a pod sees on a hairpinned connection, IPv4: Cilium's loopback for the same
/// purpose (link-local, never on a wire).
pub const HAIRPIN_V4: [u8; 4] = [169, 254, 42, 1];
/// The same for IPv6: `100::42`, in the discard-only prefix 100::/64 (RFC 6666), never routed.
pub const HAIRPIN_V6: [u8; 16] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42];

/// Key of the socket reverse-translation maps: a socket (by cookie) and the backend it was sent
/// to. `PAD` makes the trailing padding explicit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey<A, const PAD: usize> {
    /// `bpf_get_socket_cookie()`.
    pub cookie: u64,
    pub addr: A,
    /// Network byte order.
    pub port: u16,
    pub _pad: [u8; PAD],
}

/// Key of the IPv4 socket reverse-translation map.
pub type Sock4Key = SockKey<[u8; 4], 2>;
/// Key of the IPv6 socket reverse-translation map.
pub type Sock6Key = SockKey<[u8; 16], 6>;

/// Value of the socket reverse-translation maps: the service address the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockValue<A> {
    pub addr: A,
    /// Network byte order.
    pub port: u16,
    pub rev_nat_id: u16,
}

/// Value of the IPv4 socket reverse-translation map.
pub type Sock4Value = SockValue<[u8; 4]>;
/// Value of the IPv6 socket reverse-translation map.
pub type Sock6Value = SockValue<[u8; 16]>;

/// Default lifetimes of flows after their last packet (the agent sets the programs' globals from
/// its flags). A confirmed TCP connection: 24 h, kube-proxy's conntrack
/// `tcpEstablishedTimeout`.
pub const FLOW_TCP_LIFETIME_NS: u64 = 24 * 3600 * 1_000_000_000;
/// A TCP flow not confirmed yet (a SYN without the client's ACK after the backend's answer).
pub const FLOW_TCP_SYN_NS: u64 = 60 * 1_000_000_000;
/// A TCP flow closed in both directions, or reset before it was confirmed.
pub const FLOW_TCP_CLOSE_NS: u64 = 10 * 1_000_000_000;
/// A confirmed UDP flow: kube-proxy's conntrack `udpStreamTimeout` (120 s).
pub const FLOW_UDP_LIFETIME_NS: u64 = 120 * 1_000_000_000;
/// A UDP flow not confirmed yet: kube-proxy's conntrack `udpTimeout` (30 s).
pub const FLOW_UDP_NEW_NS: u64 = 30 * 1_000_000_000;

/// Converts a host-order port into the byte order stored in the maps.
#[inline(always)]
pub const fn port_to_map(port: u16) -> u16 {
    port.to_be()
}

/// Converts a port read from a map into host order.
#[inline(always)]
pub const fn port_from_map(port: u16) -> u16 {
    u16::from_be(port)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, made only of integers and byte arrays, with every
    // padding byte spelled out as a field, so any bit pattern is valid and none is uninitialised.
    unsafe impl aya::Pod for Service4Key {}
    unsafe impl aya::Pod for Service6Key {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend4 {}
    unsafe impl aya::Pod for Backend6 {}
    unsafe impl aya::Pod for Flow4Key {}
    unsafe impl aya::Pod for Flow6Key {}
    unsafe impl aya::Pod for Flow4Value {}
    unsafe impl aya::Pod for Flow6Value {}
    unsafe impl aya::Pod for Snat4Value {}
    unsafe impl aya::Pod for Snat6Value {}
    unsafe impl aya::Pod for SnatDevice {}
    unsafe impl aya::Pod for ServiceCounters {}
    unsafe impl aya::Pod for SourceRange<[u8; 4]> {}
    unsafe impl aya::Pod for SourceRange<[u8; 16]> {}
    unsafe impl aya::Pod for Sock4Key {}
    unsafe impl aya::Pod for Sock6Key {}
    unsafe impl aya::Pod for Sock4Value {}
    unsafe impl aya::Pod for Sock6Value {}
    unsafe impl aya::Pod for Affinity4Key {}
    unsafe impl aya::Pod for Affinity6Key {}
    unsafe impl aya::Pod for SockAffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for AffinityMatchKey {}
    unsafe impl aya::Pod for FrontendName {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// A size change here is an ABI change between kernel and agent: pinned maps from an older
    /// agent would no longer match.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Service4Key>(), 12);
        assert_eq!(size_of::<Service6Key>(), 24);
        assert_eq!(size_of::<ServiceValue>(), 12);
        assert_eq!(size_of::<Backend4>(), 8);
        assert_eq!(size_of::<Backend6>(), 20);
        assert_eq!(size_of::<Flow4Key>(), 16);
        assert_eq!(size_of::<Flow6Key>(), 40);
        assert_eq!(size_of::<Flow4Value>(), 24);
        assert_eq!(size_of::<Flow6Value>(), 40);
        assert_eq!(size_of::<Snat4Value>(), 24);
        assert_eq!(size_of::<Snat6Value>(), 48);
        assert_eq!(size_of::<SourceRange<[u8; 4]>>(), 8);
        assert_eq!(size_of::<SourceRange<[u8; 16]>>(), 20);
        assert_eq!(size_of::<Sock4Key>(), 16);
        assert_eq!(size_of::<Sock6Key>(), 32);
        assert_eq!(size_of::<Sock4Value>(), 8);
        assert_eq!(size_of::<Sock6Value>(), 20);
        assert_eq!(size_of::<Affinity4Key>(), 8);
        assert_eq!(size_of::<Affinity6Key>(), 20);
        assert_eq!(size_of::<SockAffinityKey>(), 16);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<AffinityMatchKey>(), 8);
        assert_eq!(size_of::<FrontendName>(), 160);
    }

    #[test]
    fn only_frontends_without_backends_and_with_the_reject_flag_refuse() {
        let frontend = |count, flags| ServiceValue {
            backend_id: 0,
            count,
            rev_nat_id: 1,
            flags,
            _pad: [0; 3],
        };
        assert!(frontend(0, SVC_F_REJECT).refuses());
        assert!(frontend(0, SVC_F_REJECT | SVC_F_EXTERNAL | SVC_F_LOCAL).refuses());
        assert!(
            !frontend(0, SVC_F_EXTERNAL | SVC_F_LOCAL).refuses(),
            "endpoints, none in scope: dropped, not refused"
        );
        assert!(
            !frontend(2, SVC_F_REJECT).refuses(),
            "backends win over a stale flag"
        );
        assert!(!frontend(2, 0).refuses());
    }
}
