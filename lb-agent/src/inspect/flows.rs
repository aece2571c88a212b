//! `lb-agent flows`: the flow tables (confirmed and unconfirmed) and the SNAT maps, one line
//! per entry: protocol, table, the packet's tuple as the entry keys it, what it translates to,
//! the service it belongs to (from the name map), its flags and its remaining lifetime.
//!
//! Entries carry an absolute expiry only (`bpf_ktime_get_ns()` time), no creation time: the
//! lifetime left is what the table can tell, and how old a flow is cannot be told.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_ebpf::{
    FLOW_F_CLOSED_FWD, FLOW_F_CLOSED_REV, FLOW_F_HAIRPIN, FLOW_F_REPLIED, FLOW_F_SNAT,
    FLOW_FORWARD, FlowKey, FlowValue, SnatValue, port_from_map,
};

use super::names::Name;
use crate::model::{IpFamily, NamespacedName, Protocol};

/// Which map an entry is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    /// The confirmed flows (`LB_FLOWS_*`).
    Confirmed,
    /// The unconfirmed flows (`LB_FLOWS_NEW_*`).
    New,
    /// The SNAT maps (`LB_SNAT_*`).
    Snat,
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Confirmed => "confirmed",
            Self::New => "new",
            Self::Snat => "snat",
        })
    }
}

/// One entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRow {
    pub table: Table,
    pub protocol: Option<Protocol>,
    /// `forward` (client to service), `reply` (backend to client) or, for SNAT entries, the
    /// reply of a SNATed flow to this node's address.
    pub direction: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Forward entries: the backend; reply entries: the service address restored; SNAT
    /// entries: the client the reply goes back to.
    pub nat: SocketAddr,
    /// SNAT entries: the service address the reply comes from.
    pub service_addr: Option<SocketAddr>,
    pub rev_nat_id: Option<u16>,
    /// The node's source port of a SNATed forward entry.
    pub snat_port: Option<u16>,
    pub flags: u8,
    /// Lifetime left; `None` when expired (dead, waiting for the GC or for reuse).
    pub expires_in: Option<Duration>,
}

fn sa<A: Into<IpAddr>>(addr: A, port: u16) -> SocketAddr {
    SocketAddr::new(addr.into(), port_from_map(port))
}

fn protocol(proto: u8) -> Option<Protocol> {
    match proto {
        lb_ebpf::PROTO_TCP => Some(Protocol::Tcp),
        lb_ebpf::PROTO_UDP => Some(Protocol::Udp),
        _ => None,
    }
}

fn left(expires_ns: u64, now_ns: u64) -> Option<Duration> {
    (expires_ns > now_ns).then(|| Duration::from_nanos(expires_ns - now_ns))
}

impl FlowRow {
    /// A flow table entry.
    pub fn flow<A: Into<IpAddr> + Copy, const PAD: usize>(
        table: Table,
        key: &FlowKey<A>,
        value: &FlowValue<A, PAD>,
        now_ns: u64,
    ) -> Self {
        let forward = key.dir == FLOW_FORWARD;
        Self {
            table,
            protocol: protocol(key.proto),
            direction: if forward { "forward" } else { "reply" },
            src: sa(key.saddr, key.sport),
            dst: sa(key.daddr, key.dport),
            nat: sa(value.nat_addr, value.nat_port),
            service_addr: None,
            rev_nat_id: Some(value.rev_nat_id),
            snat_port: (value.snat_port != 0).then(|| port_from_map(value.snat_port)),
            flags: value.flags,
            expires_in: left(value.expires_ns, now_ns),
        }
    }

    /// A SNAT entry.
    pub fn snat<A: Into<IpAddr> + Copy>(
        key: &FlowKey<A>,
        value: &SnatValue<A>,
        now_ns: u64,
    ) -> Self {
        Self {
            table: Table::Snat,
            protocol: protocol(key.proto),
            direction: "reply",
            src: sa(key.saddr, key.sport),
            dst: sa(key.daddr, key.dport),
            nat: sa(value.client_addr, value.client_port),
            service_addr: Some(sa(value.service_addr, value.service_port)),
            rev_nat_id: None,
            snat_port: None,
            flags: value.flags,
            expires_in: left(value.expires_ns, now_ns),
        }
    }

    /// The flag words.
    pub fn flag_words(&self) -> Vec<&'static str> {
        [
            (FLOW_F_REPLIED, "replied"),
            (FLOW_F_CLOSED_FWD, "closed-by-client"),
            (FLOW_F_CLOSED_REV, "closed-by-backend"),
            (FLOW_F_SNAT, "snat"),
            (FLOW_F_HAIRPIN, "hairpin"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.flags & bit != 0)
        .map(|(_, word)| word)
        .collect()
    }

    /// The connection state the flags and table say: `new`, `replied`, `established`,
    /// `closing` (one side closed), `closed` (both).
    pub fn state(&self) -> &'static str {
        let closed = self.flags & (FLOW_F_CLOSED_FWD | FLOW_F_CLOSED_REV);
        if closed == FLOW_F_CLOSED_FWD | FLOW_F_CLOSED_REV {
            "closed"
        } else if closed != 0 {
            "closing"
        } else if self.table == Table::Confirmed {
            "established"
        } else if self.flags & FLOW_F_REPLIED != 0 {
            "replied"
        } else {
            "new"
        }
    }
}

/// `lb-agent flows` filters.
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    /// Entries with this address on either side of the tuple or in the translation.
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
    pub protocol: Option<Protocol>,
    pub family: Option<IpFamily>,
    pub service: Option<NamespacedName>,
    /// Reply and SNAT entries too (by default only forward entries: one line per flow).
    pub all: bool,
}

impl FlowFilter {
    pub fn keeps(&self, row: &FlowRow, service: Option<&NamespacedName>) -> bool {
        let addrs = [
            Some(row.src),
            Some(row.dst),
            Some(row.nat),
            row.service_addr,
        ];
        (self.all || row.direction == "forward")
            && self
                .addr
                .is_none_or(|a| addrs.iter().flatten().any(|s| s.ip() == a))
            && self
                .port
                .is_none_or(|p| addrs.iter().flatten().any(|s| s.port() == p))
            && self.protocol.is_none_or(|p| row.protocol == Some(p))
            && self.family.is_none_or(|f| IpFamily::of(&row.src.ip()) == f)
            && self
                .service
                .as_ref()
                .is_none_or(|want| service == Some(want))
    }
}

/// A duration as `1h2m3s`, seconds rounded down.
fn short(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
        .to_string()
        .replace(' ', "")
}

/// The service port name of a reverse-NAT ID, from the name map.
pub fn service_of(names: &HashMap<u32, Name>, rev_nat_id: u16) -> Option<(&NamespacedName, &str)> {
    match names.get(&u32::from(rev_nat_id))? {
        Name::Frontend { service, port, .. } => Some((service, port.as_str())),
        Name::HealthCheck { .. } => None,
    }
}

/// One line: `PROTO TABLE DIR SRC -> DST nat=ADDR [service=NS/NAME:PORT] state=S [flags=..]
/// [snat-port=P] expires=1h2m`.
pub fn format_row(row: &FlowRow, names: &HashMap<u32, Name>) -> String {
    let proto = row
        .protocol
        .map_or_else(|| "?".to_owned(), |p| p.to_string());
    let mut line = format!(
        "{proto} {} {} {} -> {} nat={}",
        row.table, row.direction, row.src, row.dst, row.nat
    );
    if let Some(service) = row.service_addr {
        line.push_str(&format!(" service-addr={service}"));
    }
    if let Some((service, port)) = row.rev_nat_id.and_then(|id| service_of(names, id)) {
        if port.is_empty() {
            line.push_str(&format!(" service={service}"));
        } else {
            line.push_str(&format!(" service={service}:{port}"));
        }
    }
    line.push_str(&format!(" state={}", row.state()));
    let words = row.flag_words();
    if !words.is_empty() {
        line.push_str(&format!(" flags={}", words.join(",")));
    }
    if let Some(port) = row.snat_port {
        line.push_str(&format!(" snat-port={port}"));
    }
    match row.expires_in {
        Some(d) => line.push_str(&format!(" expires={}", short(d))),
        None => line.push_str(" expired"),
    }
    line
}

#[cfg(test)]
mod tests {
    use lb_ebpf::{FLOW_REPLY, Flow4Key, Flow4Value, Flow6Key, Flow6Value, port_to_map};

    use super::*;
    use crate::model::FrontendKind;

    #[test]
    fn a_forward_entry_reads_as_client_service_backend_with_its_service() {
        let key = Flow4Key {
            saddr: [10, 0, 0, 5],
            daddr: [10, 96, 0, 10],
            sport: port_to_map(40000),
            dport: port_to_map(80),
            proto: lb_ebpf::PROTO_TCP,
            dir: FLOW_FORWARD,
            _pad: [0; 2],
        };
        let value = Flow4Value {
            nat_addr: [10, 200, 1, 2],
            nat_port: port_to_map(8080),
            rev_nat_id: 7,
            backend_id: 3,
            snat_port: 0,
            flags: FLOW_F_REPLIED,
            snat_slot: 0,
            _pad: [0; lb_ebpf::FLOW4_PAD],
            expires_ns: 5_000_000_000 + 3_723_000_000_000,
        };
        let names = HashMap::from([(
            7,
            Name::Frontend {
                kind: FrontendKind::ClusterIp,
                service: NamespacedName {
                    namespace: "default".into(),
                    name: "web".into(),
                },
                port: "http".into(),
                family: Some(crate::model::IpFamily::V4),
            },
        )]);
        let row = FlowRow::flow(Table::Confirmed, &key, &value, 5_000_000_000);
        assert_eq!(
            format_row(&row, &names),
            "TCP confirmed forward 10.0.0.5:40000 -> 10.96.0.10:80 nat=10.200.1.2:8080 \
             service=default/web:http state=established flags=replied expires=1h2m3s"
        );
        let filter = FlowFilter {
            service: Some(NamespacedName {
                namespace: "default".into(),
                name: "web".into(),
            }),
            ..FlowFilter::default()
        };
        let svc = service_of(&names, 7).map(|(s, _)| s);
        assert!(filter.keeps(&row, svc));
        assert!(!filter.keeps(&row, None));
    }

    #[test]
    fn an_expired_ipv6_reply_entry_is_shown_only_with_all() {
        let key = Flow6Key {
            saddr: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            daddr: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
            sport: port_to_map(8080),
            dport: port_to_map(40000),
            proto: lb_ebpf::PROTO_UDP,
            dir: FLOW_REPLY,
            _pad: [0; 2],
        };
        let value = Flow6Value {
            nat_addr: [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
            nat_port: port_to_map(53),
            rev_nat_id: 1,
            backend_id: 1,
            snat_port: 0,
            flags: FLOW_F_CLOSED_FWD,
            snat_slot: 0,
            _pad: [0; lb_ebpf::FLOW6_PAD],
            expires_ns: 10,
        };
        let row = FlowRow::flow(Table::New, &key, &value, 20);
        assert_eq!(
            format_row(&row, &HashMap::new()),
            "UDP new reply [fd00::2]:8080 -> [fd00::5]:40000 nat=[fd00:96::10]:53 \
             state=closing flags=closed-by-client expired"
        );
        assert!(!FlowFilter::default().keeps(&row, None));
        let all = FlowFilter {
            all: true,
            family: Some(IpFamily::V6),
            port: Some(53),
            ..FlowFilter::default()
        };
        assert!(all.keeps(&row, None));
    }
}
