//! The programs' settings the agent sets when it loads them (`lb_ebpf::global_names`): flow
//! lifetimes and the SNAT source ports, with the validation of the flags that carry them.

use std::{fmt, path::Path, str::FromStr, time::Duration};

use lb_ebpf::{
    DEFAULT_SNAT_PORT_MAX, DEFAULT_SNAT_PORT_MIN, FLOW_TCP_CLOSE_NS, FLOW_TCP_LIFETIME_NS,
    FLOW_TCP_SYN_NS, FLOW_UDP_LIFETIME_NS, FLOW_UDP_NEW_NS, SNAT_ATTEMPTS, global_names,
};

/// The longest flow lifetime accepted: beyond a week a typo (`24d` for `24h`) is likelier than
/// intent, and kube-proxy's longest conntrack default is a day.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest flow lifetime accepted: conntrack timeouts are whole seconds (the kernel's
/// `nf_conntrack_*_timeout` sysctls), and `10ms` is likelier a typo for `10m`.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The lowest SNAT port: below it are the privileged ports services listen on.
pub const MIN_SNAT_PORT: u16 = 1024;
/// The fewest SNAT ports accepted: a new SNATed flow tries up to [`SNAT_ATTEMPTS`] ports, so
/// a smaller range would have it try the same ports again and fail sooner.
pub const MIN_SNAT_PORTS: u32 = SNAT_ATTEMPTS;

/// Where Linux keeps the ephemeral port range of the network namespace (both families).
pub const IP_LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// Ports the kernel never picks as ephemeral ports (`net.ipv4.ip_local_reserved_ports`).
pub const IP_LOCAL_RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Flow lifetimes after a flow's last packet, kube-proxy's conntrack settings. Each is a
/// `u64` nanosecond global of the programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// A confirmed TCP connection (`LB_TCP_ESTABLISHED_NS`).
    pub tcp_established: Duration,
    /// A TCP flow not confirmed yet (`LB_TCP_SYN_NS`).
    pub tcp_syn: Duration,
    /// A TCP flow closed both ways, or reset before it was confirmed (`LB_TCP_CLOSE_NS`).
    pub tcp_close: Duration,
    /// A confirmed UDP flow (`LB_UDP_NS`).
    pub udp: Duration,
    /// A UDP flow without an answer yet (`LB_UDP_NEW_NS`).
    pub udp_unreplied: Duration,
}

impl Default for FlowTimeouts {
    /// The programs' own defaults.
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_nanos(FLOW_TCP_LIFETIME_NS),
            tcp_syn: Duration::from_nanos(FLOW_TCP_SYN_NS),
            tcp_close: Duration::from_nanos(FLOW_TCP_CLOSE_NS),
            udp: Duration::from_nanos(FLOW_UDP_LIFETIME_NS),
            udp_unreplied: Duration::from_nanos(FLOW_UDP_NEW_NS),
        }
    }
}

impl FlowTimeouts {
    /// Every lifetime with the name of its global, in nanoseconds.
    pub fn globals(&self) -> [(&'static str, u64); 5] {
        let Self {
            tcp_established,
            tcp_syn,
            tcp_close,
            udp,
            udp_unreplied,
        } = *self;
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        [
            (global_names::TCP_ESTABLISHED_NS, ns(tcp_established)),
            (global_names::TCP_SYN_NS, ns(tcp_syn)),
            (global_names::TCP_CLOSE_NS, ns(tcp_close)),
            (global_names::UDP_NS, ns(udp)),
            (global_names::UDP_NEW_NS, ns(udp_unreplied)),
        ]
    }
}

/// Parses a flow lifetime flag: a humantime duration (`24h`, `90s`, `1h30m`) of at least
/// [`MIN_TIMEOUT`] and at most [`MAX_TIMEOUT`].
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration such as 24h, 90s or 1h30m: {e}"))?;
    check_timeout(d).map_err(|e| format!("{s}: {e}"))
}

/// A flow lifetime within [`MIN_TIMEOUT`] and [`MAX_TIMEOUT`].
pub fn check_timeout(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        return Err("a flow lifetime of zero would expire every flow at once".to_owned());
    }
    if d < MIN_TIMEOUT {
        return Err(format!(
            "shorter than {} (did you mean minutes, `m`?)",
            humantime::format_duration(MIN_TIMEOUT)
        ));
    }
    if d > MAX_TIMEOUT {
        return Err(format!(
            "longer than {} (7 days)",
            humantime::format_duration(MAX_TIMEOUT)
        ));
    }
    Ok(d)
}

/// An inclusive range of ports, host byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    /// Number of ports in the range.
    pub fn ports(&self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }

    /// The ports both ranges hold, if any.
    pub fn overlap(&self, other: &PortRange) -> Option<PortRange> {
        let min = self.min.max(other.min);
        let max = self.max.min(other.max);
        (min <= max).then_some(PortRange { min, max })
    }

    /// The programs' globals: `LB_SNAT_PORT_MIN` and `LB_SNAT_PORT_MAX`, `u32`.
    pub fn globals(&self) -> [(&'static str, u32); 2] {
        [
            (global_names::SNAT_PORT_MIN, u32::from(self.min)),
            (global_names::SNAT_PORT_MAX, u32::from(self.max)),
        ]
    }
}

impl Default for PortRange {
    /// The programs' default SNAT ports.
    fn default() -> Self {
        Self {
            min: DEFAULT_SNAT_PORT_MIN,
            max: DEFAULT_SNAT_PORT_MAX,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// Parses `MIN-MAX` into a range of at least [`MIN_SNAT_PORTS`] ports from [`MIN_SNAT_PORT`]
/// up: `--snat-ports`.
impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (min, max) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a port range MIN-MAX, such as 20000-29999"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{p:?} in {s:?} is not a port (1-65535)"))
        };
        let range = PortRange {
            min: port(min)?,
            max: port(max)?,
        };
        if range.min > range.max {
            return Err(format!("{s}: the first port is above the last"));
        }
        if range.min < MIN_SNAT_PORT {
            return Err(format!(
                "{s}: ports below {MIN_SNAT_PORT} are privileged ports services listen on"
            ));
        }
        if range.ports() < MIN_SNAT_PORTS {
            return Err(format!(
                "{s} holds {} ports; SNAT needs at least {MIN_SNAT_PORTS} (the ports one new flow \
                 tries)",
                range.ports()
            ));
        }
        Ok(range)
    }
}

/// Parses `ip_local_port_range`: two numbers separated by white space.
pub fn parse_ip_local_port_range(s: &str) -> Option<PortRange> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(min)), Some(Ok(max)), None) = (it.next(), it.next(), it.next()) else {
        return None;
    };
    (min <= max).then_some(PortRange { min, max })
}

/// Parses `ip_local_reserved_ports`: comma-separated ports and ranges (`20000-29999,8080`).
pub fn parse_reserved_ports(s: &str) -> Vec<PortRange> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (min, max) = p.split_once('-').unwrap_or((p, p));
            let (min, max) = (min.trim().parse().ok()?, max.trim().parse().ok()?);
            (min <= max).then_some(PortRange { min, max })
        })
        .collect()
}

/// Whether every port of `range` is in one of `reserved`.
fn covered(range: PortRange, reserved: &[PortRange]) -> bool {
    let mut next = u32::from(range.min);
    // Walk up from the range's start, jumping over each reserved range that holds `next`.
    while next <= u32::from(range.max) {
        match reserved
            .iter()
            .filter(|r| u32::from(r.min) <= next && next <= u32::from(r.max))
            .map(|r| u32::from(r.max))
            .max()
        {
            Some(end) => next = end + 1,
            None => return false,
        }
    }
    true
}

/// The warning to log when the SNAT ports overlap the kernel's ephemeral ports without being
/// reserved: a host connection from an ephemeral port to a backend could take the tuple of a
/// SNATed flow, and either would see the other's packets. `None` when there is nothing to say.
pub fn ephemeral_overlap_warning(
    snat: PortRange,
    ephemeral: PortRange,
    reserved: &[PortRange],
) -> Option<String> {
    let overlap = snat.overlap(&ephemeral)?;
    if covered(overlap, reserved) {
        return None;
    }
    Some(format!(
        "--snat-ports {snat} overlaps the kernel's ephemeral ports {ephemeral} \
         (net.ipv4.ip_local_port_range) in {overlap}: a connection of the host from an \
         ephemeral port could collide with a SNATed flow; reserve the SNAT ports with \
         `sysctl net.ipv4.ip_local_reserved_ports={snat}`, or move one of the ranges"
    ))
}

/// Reads this network namespace's ephemeral and reserved ports from `/proc` and warns when the
/// SNAT ports overlap them ([`ephemeral_overlap_warning`]).
pub fn check_ephemeral_overlap(snat: PortRange) {
    let read = |path: &str| std::fs::read_to_string(Path::new(path));
    let ephemeral = match read(IP_LOCAL_PORT_RANGE) {
        Ok(s) => match parse_ip_local_port_range(&s) {
            Some(range) => range,
            None => {
                tracing::warn!("{IP_LOCAL_PORT_RANGE}: unexpected contents {s:?}");
                return;
            }
        },
        Err(e) => {
            tracing::warn!(
                "reading {IP_LOCAL_PORT_RANGE} to check --snat-ports {snat} against: {e}"
            );
            return;
        }
    };
    let reserved = read(IP_LOCAL_RESERVED_PORTS)
        .map(|s| parse_reserved_ports(&s))
        .unwrap_or_default();
    if let Some(warning) = ephemeral_overlap_warning(snat, ephemeral, &reserved) {
        tracing::warn!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn range(min: u16, max: u16) -> PortRange {
        PortRange { min, max }
    }

    #[test]
    fn snat_ports_parse_and_print_as_min_dash_max() {
        assert_eq!("20000-29999".parse(), Ok(range(20_000, 29_999)));
        assert_eq!(" 1024 - 1087 ".parse(), Ok(range(1024, 1087)));
        assert_eq!("1024-65535".parse(), Ok(range(1024, 65_535)));
        assert_eq!(PortRange::default(), range(20_000, 29_999));
        assert_eq!(PortRange::default().to_string(), "20000-29999");
        assert_eq!(
            PortRange::default().to_string().parse(),
            Ok(PortRange::default())
        );
    }

    #[test]
    fn bad_snat_ports_are_refused_with_the_reason() {
        for (input, reason) in [
            ("20000", "not a port range"),
            ("", "not a port range"),
            ("20000:29999", "not a port range"),
            ("a-29999", "is not a port"),
            ("20000-", "is not a port"),
            ("20000-70000", "is not a port"),
            ("-5-100", "is not a port"),
            ("29999-20000", "above the last"),
            ("80-30000", "privileged"),
            ("1023-2000", "privileged"),
            ("0-2000", "privileged"),
            ("20000-20062", "holds 63 ports"),
            ("20000-20000", "holds 1 ports"),
        ] {
            let err = input.parse::<PortRange>().unwrap_err();
            assert!(err.contains(reason), "{input:?}: {err}");
        }
        assert_eq!(
            "20000-20063".parse::<PortRange>().map(|r| r.ports()),
            Ok(64)
        );
    }

    #[test]
    fn snat_ports_become_u32_globals() {
        assert_eq!(
            range(20_000, 29_999).globals(),
            [("LB_SNAT_PORT_MIN", 20_000), ("LB_SNAT_PORT_MAX", 29_999)]
        );
    }

    #[test]
    fn timeouts_parse_as_humantime_within_bounds() {
        assert_eq!(parse_timeout("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("1h30m"), Ok(Duration::from_secs(5_400)));
        // kube-proxy's Go spelling.
        assert_eq!(parse_timeout("24h0m0s"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_timeout("7d"), Ok(MAX_TIMEOUT));
        assert_eq!(parse_timeout("1s"), Ok(MIN_TIMEOUT));
        for (input, reason) in [
            ("0s", "zero"),
            ("0", "zero"),
            ("10ms", "shorter than 1s"),
            ("7d 1s", "longer than"),
            ("1y", "longer than"),
            ("60", "not a duration"),
            ("ten seconds", "not a duration"),
            ("", "not a duration"),
            ("-5s", "not a duration"),
        ] {
            let err = parse_timeout(input).unwrap_err();
            assert!(err.contains(reason), "{input:?}: {err}");
        }
    }

    /// The flags' defaults (strings in `main.rs`) are the programs' own.
    #[test]
    fn default_timeouts_are_the_programs_defaults() {
        let flags = FlowTimeouts {
            tcp_established: parse_timeout("24h").unwrap(),
            tcp_syn: parse_timeout("60s").unwrap(),
            tcp_close: parse_timeout("10s").unwrap(),
            udp: parse_timeout("120s").unwrap(),
            udp_unreplied: parse_timeout("30s").unwrap(),
        };
        assert_eq!(flags, FlowTimeouts::default());
        assert_eq!(
            flags.globals(),
            [
                ("LB_TCP_ESTABLISHED_NS", 86_400_000_000_000),
                ("LB_TCP_SYN_NS", 60_000_000_000),
                ("LB_TCP_CLOSE_NS", 10_000_000_000),
                ("LB_UDP_NS", 120_000_000_000),
                ("LB_UDP_NEW_NS", 30_000_000_000),
            ]
        );
    }

    /// The loader sets every global with `must_exist`, as here: an object without one of them,
    /// or with another size, fails to load instead of running on its defaults.
    #[test]
    fn the_object_has_every_setting_with_its_size() {
        let mut object = aya_obj::Object::parse(super::super::object::EBPF_OBJECT).unwrap();
        let timeouts: Vec<_> = FlowTimeouts::default()
            .globals()
            .into_iter()
            .map(|(name, ns)| (name, ns.to_ne_bytes()))
            .collect();
        let ports: Vec<_> = PortRange::default()
            .globals()
            .into_iter()
            .map(|(name, port)| (name, port.to_ne_bytes()))
            .collect();
        let globals: std::collections::HashMap<&str, (&[u8], bool)> = timeouts
            .iter()
            .map(|(name, bytes)| (*name, (&bytes[..], true)))
            .chain(
                ports
                    .iter()
                    .map(|(name, bytes)| (*name, (&bytes[..], true))),
            )
            .collect();
        assert_eq!(globals.len(), 7);
        object.patch_map_data(globals).unwrap();
        let missing =
            std::collections::HashMap::from([("LB_NO_SUCH_SETTING", (&[0_u8; 8][..], true))]);
        assert!(matches!(
            object.patch_map_data(missing),
            Err(aya_obj::ParseError::SymbolNotFound { .. })
        ));
        let wrong_size = std::collections::HashMap::from([(
            global_names::SNAT_PORT_MIN,
            (&[0_u8; 2][..], true),
        )]);
        assert!(object.patch_map_data(wrong_size).is_err());
    }

    #[test]
    fn the_kernels_port_files_parse() {
        assert_eq!(
            parse_ip_local_port_range("32768\t60999\n"),
            Some(range(32_768, 60_999))
        );
        assert_eq!(parse_ip_local_port_range("32768"), None);
        assert_eq!(parse_ip_local_port_range("60999 32768"), None);
        assert_eq!(parse_ip_local_port_range("1 2 3"), None);
        assert_eq!(parse_reserved_ports("\n"), vec![]);
        assert_eq!(
            parse_reserved_ports("8080,20000-29999\n"),
            vec![range(8080, 8080), range(20_000, 29_999)]
        );
    }

    #[test]
    fn overlapping_unreserved_ephemeral_ports_are_warned_about() {
        let snat = range(20_000, 29_999);
        // The kernel's default ephemeral range starts above the default SNAT ports.
        assert_eq!(
            ephemeral_overlap_warning(snat, range(32_768, 60_999), &[]),
            None
        );
        let warning = ephemeral_overlap_warning(snat, range(10_000, 60_999), &[]).unwrap();
        for part in [
            "20000-29999",
            "10000-60999",
            "ip_local_port_range",
            "net.ipv4.ip_local_reserved_ports=20000-29999",
        ] {
            assert!(warning.contains(part), "{part} missing from {warning}");
        }
        let warning = ephemeral_overlap_warning(snat, range(25_000, 60_999), &[]).unwrap();
        assert!(warning.contains("in 25000-29999"), "{warning}");
        // Reserved ports are never ephemeral: nothing can collide.
        assert_eq!(
            ephemeral_overlap_warning(snat, range(10_000, 60_999), &[snat]),
            None
        );
        assert_eq!(
            ephemeral_overlap_warning(
                snat,
                range(25_000, 60_999),
                &[range(27_000, 30_000), range(25_000, 26_999)]
            ),
            None
        );
        assert!(
            ephemeral_overlap_warning(
                snat,
                range(25_000, 60_999),
                &[range(25_000, 26_000), range(26_002, 29_999)]
            )
            .is_some(),
            "port 26001 is not reserved"
        );
    }
}
