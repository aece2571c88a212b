//! `lb-agent explain SRC DST:PORT/PROTO`: what the datapath would do with a new connection or
//! datagram from `SRC` to `DST:PORT` now, decided from the live maps by the kernel programs'
//! rules: which service map entry it meets (the in-cluster entry of an external frontend with
//! `externalTrafficPolicy: Local` for pods and node processes, the frontend's own entry
//! otherwise), `loadBalancerSourceRanges`, refusal or drop without backends, session affinity,
//! and the backends a new flow picks among.
//!
//! Established flows keep the backend stored in their flow entry whatever the maps say now
//! (`lb-agent flows` shows them); this explains new ones.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use super::list::Listing;
use crate::model::{Backend, Frontend, FrontendState, Protocol};

/// Where the packet comes from, which decides the service map entry it meets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Origin {
    /// A pod or a process of the node (the pod and socket programs).
    #[default]
    Cluster,
    /// Outside the node, through an external device (the external TC and XDP programs).
    External,
}

/// The client's affinity entry for the frontend, as the affinity map holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityEntry {
    pub backend: SocketAddr,
    /// Since the client's last new flow there.
    pub age: Duration,
}

/// What happens to the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No frontend: the packet goes on untouched.
    NotAService,
    /// `loadBalancerSourceRanges` do not admit the source: dropped.
    SourceRangeDropped,
    /// No endpoint anywhere: TCP answered with a reset, UDP with an ICMP port unreachable.
    Refused,
    /// Endpoints exist, none in this entry's scope: dropped.
    NoBackendInScope,
    /// Affinity sends it to this backend.
    Affinity(Backend),
    /// A new flow picks one of these backends.
    Translated(Vec<Backend>),
}

/// The whole explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub src: IpAddr,
    pub dst: Frontend,
    pub origin: Origin,
    /// The frontend and the entry met, when there is one.
    pub state: Option<FrontendState>,
    /// The in-cluster entry of an external frontend with a Local policy was met.
    pub in_cluster_entry: bool,
    pub affinity: Option<AffinityEntry>,
    pub verdict: Verdict,
}

/// Explains a packet from `src` to `dst` arriving from `origin`, given the maps' listing and
/// the client's affinity entry for the frontend (if the affinity map has one).
pub fn explain(
    listing: &Listing,
    src: IpAddr,
    dst: Frontend,
    origin: Origin,
    affinity: Option<AffinityEntry>,
) -> Explanation {
    let Some(state) = listing.desired.frontends.get(&dst) else {
        return Explanation {
            src,
            dst,
            origin,
            state: None,
            in_cluster_entry: false,
            affinity: None,
            verdict: Verdict::NotAService,
        };
    };
    let in_cluster_entry = origin == Origin::Cluster && state.internal_backends.is_some();
    let backends = match (&state.internal_backends, in_cluster_entry) {
        (Some(internal), true) => internal.clone(),
        _ => state.backends.clone(),
    };
    let admitted = state
        .source_ranges
        .as_ref()
        .is_none_or(|ranges| ranges.iter().any(|r| r.contains(&src)));
    let timeout = state
        .session_affinity
        .map(|s| Duration::from_secs(u64::from(s)));
    let affine = affinity.filter(|a| timeout.is_some_and(|t| a.age < t));
    let verdict = if !admitted {
        Verdict::SourceRangeDropped
    } else if backends.is_empty() && state.reject {
        Verdict::Refused
    } else if backends.is_empty() {
        Verdict::NoBackendInScope
    } else if let Some(b) =
        affine.and_then(|a| backends.iter().find(|b| b.addr == a.backend).copied())
    {
        Verdict::Affinity(b)
    } else {
        Verdict::Translated(backends)
    };
    Explanation {
        src,
        dst,
        origin,
        state: Some(state.clone()),
        in_cluster_entry,
        affinity,
        verdict,
    }
}

/// Parses `DST:PORT/PROTO` (`10.96.0.10:53/UDP`, `[fd00::10]:80/tcp`; TCP when no protocol).
pub fn parse_destination(s: &str) -> Result<Frontend, String> {
    let (addr, proto) = match s.rsplit_once('/') {
        Some((addr, proto)) => (addr, proto.to_ascii_uppercase()),
        None => (s, "TCP".to_owned()),
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not ADDRESS:PORT ([ADDRESS]:PORT for IPv6)"))?;
    let protocol = match proto.as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        other => return Err(format!("protocol {other:?}: TCP or UDP")),
    };
    Ok(Frontend { addr, protocol })
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = match self.origin {
            Origin::Cluster => "a pod or node process",
            Origin::External => "outside the node",
        };
        writeln!(f, "packet: {} -> {} from {from}", self.src, self.dst)?;
        match &self.state {
            None => writeln!(f, "frontend: none (not a service address and port)")?,
            Some(s) => {
                writeln!(f, "frontend: {} {}", self.dst, s)?;
                if self.in_cluster_entry {
                    writeln!(
                        f,
                        "entry: in-cluster (externalTrafficPolicy Local: clients inside the \
                         cluster get every backend)"
                    )?;
                }
                if let Some(ranges) = &s.source_ranges {
                    let ok = ranges.iter().any(|r| r.contains(&self.src));
                    writeln!(
                        f,
                        "source ranges: {} {}",
                        self.src,
                        if ok { "admitted" } else { "not admitted" }
                    )?;
                }
                match (s.session_affinity, &self.affinity) {
                    (None, _) => {}
                    (Some(t), None) => {
                        writeln!(f, "affinity: ClientIP {t}s, no entry for {}", self.src)?
                    }
                    (Some(t), Some(a)) => writeln!(
                        f,
                        "affinity: ClientIP {t}s, last new flow to {} {}s ago{}",
                        a.backend,
                        a.age.as_secs(),
                        if a.age.as_secs() >= u64::from(t) {
                            " (expired)"
                        } else {
                            ""
                        }
                    )?,
                }
            }
        }
        let verdict = match &self.verdict {
            Verdict::NotAService => "passed on untouched".to_owned(),
            Verdict::SourceRangeDropped => "dropped (loadBalancerSourceRanges)".to_owned(),
            Verdict::Refused => {
                "refused: no endpoint anywhere (TCP reset, UDP ICMP port unreachable, \
                 connect() ECONNREFUSED)"
                    .to_owned()
            }
            Verdict::NoBackendInScope => {
                "dropped: endpoints exist, none in this entry's scope (Local traffic policy)"
                    .to_owned()
            }
            Verdict::Affinity(b) => format!("translated to {b} (session affinity)"),
            Verdict::Translated(list) => {
                let list: Vec<String> = list.iter().map(ToString::to_string).collect();
                format!(
                    "translated: a new flow picks one of {} backends [{}]",
                    list.len(),
                    list.join(", ")
                )
            }
        };
        writeln!(f, "verdict: {verdict}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FrontendKind, IpFamily, NamespacedName, ServicePortName};

    fn state(backends: &[&str]) -> FrontendState {
        FrontendState {
            owner: ServicePortName {
                service: NamespacedName {
                    namespace: "default".into(),
                    name: "web".into(),
                },
                port: String::new(),
                protocol: Protocol::Tcp,
                family: IpFamily::V4,
            },
            kind: FrontendKind::LoadBalancer,
            backends: backends
                .iter()
                .map(|b| Backend {
                    addr: b.parse().unwrap(),
                    local: true,
                })
                .collect(),
            internal_backends: None,
            local_only: false,
            source_ranges: None,
            session_affinity: None,
            reject: false,
        }
    }

    fn listing(dst: Frontend, s: FrontendState) -> Listing {
        let mut l = Listing::default();
        l.desired.frontends.insert(dst, s);
        l
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn destinations_parse_with_both_families_and_refuse_bad_input() {
        let d = parse_destination("[fd00::10]:53/udp").unwrap();
        assert_eq!(d.to_string(), "[fd00::10]:53/UDP");
        assert_eq!(
            parse_destination("10.96.0.10:80").unwrap().protocol,
            Protocol::Tcp
        );
        assert!(
            parse_destination("10.96.0.10/TCP")
                .unwrap_err()
                .contains("ADDRESS:PORT")
        );
        assert!(
            parse_destination("10.96.0.10:80/SCTP")
                .unwrap_err()
                .contains("SCTP")
        );
    }

    #[test]
    fn each_rule_gives_its_verdict() {
        let dst = parse_destination("192.0.2.80:80/TCP").unwrap();
        let none = explain(
            &Listing::default(),
            ip("10.0.0.1"),
            dst,
            Origin::External,
            None,
        );
        assert_eq!(none.verdict, Verdict::NotAService);

        let mut s = state(&["10.200.1.2:8080", "10.200.2.2:8080"]);
        s.source_ranges = Some(vec!["198.51.100.0/24".parse().unwrap()]);
        let l = listing(dst, s.clone());
        let out = explain(&l, ip("203.0.113.1"), dst, Origin::External, None);
        assert_eq!(out.verdict, Verdict::SourceRangeDropped);
        let ok = explain(&l, ip("198.51.100.7"), dst, Origin::External, None);
        assert!(
            matches!(&ok.verdict, Verdict::Translated(b) if b.len() == 2),
            "{ok}"
        );

        s.source_ranges = None;
        s.session_affinity = Some(60);
        let l = listing(dst, s.clone());
        let affinity = AffinityEntry {
            backend: "10.200.2.2:8080".parse().unwrap(),
            age: Duration::from_secs(5),
        };
        let out = explain(
            &l,
            ip("198.51.100.7"),
            dst,
            Origin::External,
            Some(affinity),
        );
        assert_eq!(out.verdict, Verdict::Affinity(s.backends[1]), "{out}");
        let old = AffinityEntry {
            age: Duration::from_secs(61),
            ..affinity
        };
        let out = explain(&l, ip("198.51.100.7"), dst, Origin::External, Some(old));
        assert!(matches!(out.verdict, Verdict::Translated(_)), "{out}");
        assert!(out.to_string().contains("(expired)"), "{out}");

        let mut local = state(&[]);
        local.local_only = true;
        local.internal_backends = Some(state(&["10.200.2.2:8080"]).backends);
        let l = listing(dst, local);
        let outside = explain(&l, ip("203.0.113.1"), dst, Origin::External, None);
        assert_eq!(outside.verdict, Verdict::NoBackendInScope);
        let inside = explain(&l, ip("10.200.1.9"), dst, Origin::Cluster, None);
        assert!(inside.in_cluster_entry);
        assert!(
            matches!(&inside.verdict, Verdict::Translated(b) if b.len() == 1),
            "{inside}"
        );

        let mut empty = state(&[]);
        empty.reject = true;
        let out = explain(
            &listing(dst, empty),
            ip("10.0.0.1"),
            dst,
            Origin::Cluster,
            None,
        );
        assert_eq!(out.verdict, Verdict::Refused);
        assert!(out.to_string().contains("verdict: refused"), "{out}");
    }
}
