//! kube-proxy's rulesets for the same services, generated the way kube-proxy lays them out
//! (`pkg/proxy/iptables/proxier.go` and `pkg/proxy/nftables/proxier.go`): the iptables mode's
//! `KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-*` chains with `statistic --mode random`, and the
//! nftables mode's `service-ips` verdict map with per-service chains choosing an endpoint with
//! `numgen random`. Only ClusterIP services with ready endpoints, as the benchmark programs.
//!
//! Chain names carry a hash of the service port (and endpoint) as kube-proxy's do; kube-proxy
//! takes base32 of SHA-256, we take base32 of FNV-1a, which changes nothing a packet or
//! `iptables-restore` sees but the letters.

use std::{fmt::Write as _, net::SocketAddrV4};

use super::Svc;

/// kube-proxy's masquerade mark (`--iptables-masquerade-bit 14`).
const MASQ_MARK: &str = "0x4000";

/// Namespace of every benchmark service.
const NAMESPACE: &str = "default";

/// `default/svc-1:http`: kube-proxy's ServicePortName.
fn port_name(svc: &Svc) -> String {
    format!("{NAMESPACE}/{}:{}", svc.name, svc.port_name)
}

/// Base32 (RFC 4648 alphabet) of an 80-bit FNV-1a digest of `s`, `len` characters.
fn hash32(s: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |seed: u64| {
        s.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let digest =
        (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x8422_2325_cbf2_9ce4));
    (0..len)
        .map(|i| char::from(ALPHABET[((digest >> (5 * i)) & 31) as usize]))
        .collect()
}

fn svc_chain(svc: &Svc) -> String {
    format!("KUBE-SVC-{}", hash32(&format!("{}tcp", port_name(svc)), 16))
}

fn sep_chain(svc: &Svc, ep: &SocketAddrV4) -> String {
    format!(
        "KUBE-SEP-{}",
        hash32(&format!("{}tcp{ep}", port_name(svc)), 16)
    )
}

/// Rules of the built-in chains and kube-proxy's fixed chains, nat table.
const IPTABLES_NAT_HEAD: &str = "\
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
";

/// The filter table kube-proxy writes on every sync (no service here lacks endpoints, so its
/// per-service filter chains stay empty).
fn iptables_filter(builtin: bool) -> String {
    let mut out = String::from("*filter\n");
    if builtin {
        out.push_str(":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    }
    out.push_str(
        ":KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-NODEPORTS - [0:0]\n\
         :KUBE-PROXY-FIREWALL - [0:0]\n:KUBE-SERVICES - [0:0]\n",
    );
    if builtin {
        out.push_str(
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
             -A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
             -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
             -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
             -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
             -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
             -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
             -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        );
    }
    // kube-proxy also counts these drops with `-m nfacct`, which needs an accounting object
    // created beforehand; the rule is the same without the counter.
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = write!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n"
    );
    out
}

/// The `KUBE-SERVICES` rule of a service.
fn kube_services_rule(out: &mut String, svc: &Svc) {
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {} --dport {} -j {}",
        port_name(svc),
        svc.vip,
        svc.port,
        svc_chain(svc)
    );
}

/// The chain declarations and rules of one service: its KUBE-SVC chain and a KUBE-SEP chain
/// per endpoint. kube-proxy writes these for a service on a full sync, or when it changed.
fn service_chains(chains: &mut String, rules: &mut String, svc: &Svc, cluster_cidr: &str) {
    let (name, svc_chain) = (port_name(svc), svc_chain(svc));
    let _ = writeln!(chains, ":{svc_chain} - [0:0]");
    let _ = writeln!(
        rules,
        "-A {svc_chain} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {} --dport {} ! -s {cluster_cidr} -j KUBE-MARK-MASQ",
        svc.vip, svc.port
    );
    let n = svc.endpoints.len();
    for (i, ep) in svc.endpoints.iter().enumerate() {
        let sep = sep_chain(svc, ep);
        let _ = writeln!(chains, ":{sep} - [0:0]");
        // Endpoint i of n is taken with probability 1/(n-i): uniform overall.
        if i + 1 < n {
            let _ = writeln!(
                rules,
                "-A {svc_chain} -m comment --comment \"{name} -> {ep}\" -m statistic --mode random --probability {:.10} -j {sep}",
                1.0 / (n - i) as f64
            );
        } else {
            let _ = writeln!(
                rules,
                "-A {svc_chain} -m comment --comment \"{name} -> {ep}\" -j {sep}"
            );
        }
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {name} -s {}/32 -j KUBE-MARK-MASQ",
            ep.ip()
        );
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {name} -m tcp -p tcp -j DNAT --to-destination {ep}"
        );
    }
}

const NODEPORTS_LAST: &str = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";

/// The whole ruleset for `iptables-restore` (a full sync into empty tables).
pub fn iptables_full(svcs: &[Svc], cluster_cidr: &str) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for svc in svcs {
        kube_services_rule(&mut rules, svc);
    }
    rules.push_str(NODEPORTS_LAST);
    for svc in svcs {
        service_chains(&mut chains, &mut rules, svc, cluster_cidr);
    }
    format!(
        "{}*nat\n{IPTABLES_NAT_HEAD}{chains}{rules}COMMIT\n",
        iptables_filter(true)
    )
}

/// What kube-proxy (1.28+, `MinimizeIPTablesRestore`) hands `iptables-restore --noflush` when
/// one service changed: the filter table, `KUBE-SERVICES` rewritten whole (one rule per service,
/// so O(N)), and the changed service's chains.
pub fn iptables_partial(svcs: &[Svc], changed: &Svc, cluster_cidr: &str) -> String {
    let mut chains = String::from(":KUBE-SERVICES - [0:0]\n");
    let mut rules = String::new();
    for svc in svcs {
        kube_services_rule(
            &mut rules,
            if svc.name == changed.name {
                changed
            } else {
                svc
            },
        );
    }
    rules.push_str(NODEPORTS_LAST);
    service_chains(&mut chains, &mut rules, changed, cluster_cidr);
    format!("{}*nat\n{chains}{rules}COMMIT\n", iptables_filter(false))
}

/// Table of the nftables mode (IPv4).
const NFT_TABLE: &str = "ip kube-proxy";

fn nft_service_chain(svc: &Svc) -> String {
    let id = format!("{NAMESPACE}/{}/tcp/{}", svc.name, svc.port_name);
    format!("service-{}-{id}", hash32(&id, 8))
}

fn nft_endpoint_chain(svc: &Svc, ep: &SocketAddrV4) -> String {
    let id = format!(
        "{NAMESPACE}/{}/tcp/{}__{}/{}",
        svc.name,
        svc.port_name,
        ep.ip(),
        ep.port()
    );
    format!("endpoint-{}-{id}", hash32(&id, 8))
}

/// The fixed part of kube-proxy's nftables ruleset: base chains, masquerading, the service
/// dispatch through the `service-ips` verdict map.
fn nft_head(cluster_cidr: &str) -> String {
    let t = NFT_TABLE;
    format!(
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}
flush table {t}
add chain {t} mark-for-masquerade
add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}
add chain {t} masquerading
add rule {t} masquerading mark and {MASQ_MARK} == 0 return
add rule {t} masquerading mark set mark xor {MASQ_MARK}
add rule {t} masquerading masquerade fully-random
add chain {t} services
add chain {t} service-endpoints-check
add chain {t} forward
add chain {t} filter-forward {{ type filter hook forward priority -110 ; }}
add rule {t} filter-forward ct state new jump service-endpoints-check
add rule {t} filter-forward jump forward
add rule {t} forward ct state invalid drop
add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add rule {t} nat-prerouting jump services
add chain {t} nat-output {{ type nat hook output priority -100 ; }}
add rule {t} nat-output jump services
add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add rule {t} nat-postrouting jump masquerading
add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}
add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}
add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}
add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}
add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips
add rule {t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
# cluster CIDR {cluster_cidr}
"
    )
}

/// The service chain's rules: masquerade check, then a uniform pick among the endpoints.
fn nft_service_rules(out: &mut String, svc: &Svc, cluster_cidr: &str) {
    let (t, chain) = (NFT_TABLE, nft_service_chain(svc));
    let _ = writeln!(
        out,
        "add rule {t} {chain} ip daddr {} tcp dport {} ip saddr != {cluster_cidr} jump mark-for-masquerade",
        svc.vip, svc.port
    );
    let picks: Vec<String> = svc
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto {}", nft_endpoint_chain(svc, ep)))
        .collect();
    let _ = writeln!(
        out,
        "add rule {t} {chain} numgen random mod {} vmap {{ {} }}",
        svc.endpoints.len(),
        picks.join(" , ")
    );
}

fn nft_endpoint(out: &mut String, svc: &Svc, ep: &SocketAddrV4) {
    let (t, chain) = (NFT_TABLE, nft_endpoint_chain(svc, ep));
    let _ = writeln!(out, "add chain {t} {chain}");
    let _ = writeln!(
        out,
        "add rule {t} {chain} ip saddr {} jump mark-for-masquerade",
        ep.ip()
    );
    let _ = writeln!(out, "add rule {t} {chain} meta l4proto tcp dnat to {ep}");
}

/// The whole ruleset for `nft -f` (a full sync).
pub fn nft_full(svcs: &[Svc], cluster_cidr: &str) -> String {
    let t = NFT_TABLE;
    let mut out = nft_head(cluster_cidr);
    for svc in svcs {
        let chain = nft_service_chain(svc);
        let _ = writeln!(out, "add chain {t} {chain}");
        for ep in &svc.endpoints {
            nft_endpoint(&mut out, svc, ep);
        }
        nft_service_rules(&mut out, svc, cluster_cidr);
        let _ = writeln!(out, "add element {t} cluster-ips {{ {} }}", svc.vip);
        let _ = writeln!(
            out,
            "add element {t} service-ips {{ {} . tcp . {} : goto {chain} }}",
            svc.vip, svc.port
        );
    }
    out
}

/// The transaction kube-proxy's nftables mode sends when one service's endpoints went from
/// `before` to `after`: new endpoint chains added, the service chain flushed and rewritten,
/// endpoint chains that went away flushed and deleted. O(change), whatever N is.
pub fn nft_change(before: &Svc, after: &Svc, cluster_cidr: &str) -> String {
    let (t, chain) = (NFT_TABLE, nft_service_chain(after));
    let mut out = String::new();
    for ep in after
        .endpoints
        .iter()
        .filter(|e| !before.endpoints.contains(e))
    {
        nft_endpoint(&mut out, after, ep);
    }
    let _ = writeln!(out, "flush chain {t} {chain}");
    nft_service_rules(&mut out, after, cluster_cidr);
    for ep in before
        .endpoints
        .iter()
        .filter(|e| !after.endpoints.contains(e))
    {
        let gone = nft_endpoint_chain(before, ep);
        let _ = writeln!(out, "flush chain {t} {gone}");
        let _ = writeln!(out, "delete chain {t} {gone}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, endpoints: usize) -> Svc {
        Svc {
            name: name.into(),
            port_name: "http".into(),
            vip: "10.96.0.1".parse().unwrap(),
            port: 8080,
            endpoints: (0..endpoints)
                .map(|i| format!("10.200.{}.2:8080", i + 2).parse().unwrap())
                .collect(),
        }
    }

    #[test]
    fn iptables_probabilities_make_a_uniform_choice() {
        let rules = iptables_full(&[svc("a", 4)], "10.200.0.0/16");
        let probabilities: Vec<&str> = rules
            .lines()
            .filter_map(|l| l.split("--probability ").nth(1))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            probabilities,
            ["0.2500000000", "0.3333333333", "0.5000000000"]
        );
        assert_eq!(rules.matches("-j DNAT --to-destination").count(), 4);
    }

    #[test]
    fn nft_change_removes_the_endpoint_chain_and_rewrites_the_pick() {
        let change = nft_change(&svc("a", 3), &svc("a", 2), "10.200.0.0/16");
        assert!(change.contains("numgen random mod 2 vmap"));
        assert_eq!(change.matches("delete chain").count(), 1);
        assert!(change.contains("__10.200.4.2/8080"));
    }

    #[test]
    fn chain_names_are_stable_and_distinct() {
        assert_eq!(svc_chain(&svc("a", 1)), svc_chain(&svc("a", 2)));
        assert_ne!(svc_chain(&svc("a", 1)), svc_chain(&svc("b", 1)));
        assert_eq!(svc_chain(&svc("a", 1)).len(), "KUBE-SVC-".len() + 16);
    }
}
