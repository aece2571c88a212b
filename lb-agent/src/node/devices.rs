//! Network devices of this namespace, the `--devices` and `--pod-devices` name patterns, and
//! the rules on which devices can carry the programs and which look like the node's uplink.

use std::fmt;

use globset::{Glob, GlobSet, GlobSetBuilder};
use nix::libc;

pub use super::rtnl::{Link, links};

/// The name kube-proxy's IPVS mode gives the dummy device holding every ClusterIP.
const KUBE_IPVS_DEVICE: &str = "kube-ipvs0";

/// Why a device never gets the programs, whatever `--devices` and `--pod-devices` say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfit {
    /// The loopback device: nothing from outside arrives on it.
    Loopback,
    /// Its frames have no Ethernet header (`/sys/class/net/<dev>/type` is not 1,
    /// `ARPHRD_ETHER`): wireguard and tun (65534), ipip (768), sit (776), gre (778). The programs
    /// read the EtherType at offset 12 and the IP header at 14, and the reject path swaps MAC
    /// addresses, so on such a device they would misparse the IP header and could rewrite it
    /// (datapath review, finding 13). Cilium compiles an L3 variant of its programs for these
    /// (`IS_L3_DEV`); until there is one, they are left alone.
    NotEthernet(u16),
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Loopback => f.write_str("is the loopback device"),
            Self::NotEthernet(t) => {
                write!(f, "has link type {t}")?;
                if let Some(name) = link_type_name(*t) {
                    write!(f, " ({name})")?;
                }
                write!(
                    f,
                    ", not Ethernet ({}): the programs expect Ethernet headers",
                    libc::ARPHRD_ETHER
                )
            }
        }
    }
}

/// Names of the `ARPHRD_*` link types (`linux/if_arp.h`) a node is likely to have.
fn link_type_name(link_type: u16) -> Option<&'static str> {
    Some(match link_type {
        libc::ARPHRD_ETHER => "Ethernet",
        libc::ARPHRD_INFINIBAND => "InfiniBand",
        libc::ARPHRD_PPP => "PPP",
        libc::ARPHRD_TUNNEL => "IPIP tunnel",
        libc::ARPHRD_TUNNEL6 => "IPv6-in-IPv6 tunnel",
        libc::ARPHRD_LOOPBACK => "loopback",
        libc::ARPHRD_SIT => "SIT tunnel",
        libc::ARPHRD_IPGRE => "GRE tunnel",
        libc::ARPHRD_NONE => "no link-layer header: tun, wireguard",
        _ => return None,
    })
}

/// Whether the programs cannot run on `link` at all; `None` when they can.
pub fn unfit(link: &Link) -> Option<Unfit> {
    if link.link_type == libc::ARPHRD_LOOPBACK || link.name == "lo" {
        Some(Unfit::Loopback)
    } else if link.link_type != libc::ARPHRD_ETHER {
        Some(Unfit::NotEthernet(link.link_type))
    } else {
        None
    }
}

/// How much an external device looks like the node's uplink, best first: where the SNAT address
/// is taken from when the kernel's default route does not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Uplink {
    /// Backed by a bus device (`/sys/class/net/<dev>/device`: PCI, virtio, USB): a NIC.
    Physical,
    /// Built on NICs (bond, team, VLAN, macvlan, ipvlan), or the uplink a container runtime or a
    /// test gives a network namespace (veth).
    Stacked,
}

impl fmt::Display for Uplink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Physical => "a NIC",
            Self::Stacked => "a bond, VLAN, macvlan, ipvlan or veth device",
        })
    }
}

/// Whether `link` can be the node's uplink. Never: bridges (docker0, cni0, a libvirt bridge),
/// kube-ipvs0 and other dummy devices, overlays (vxlan such as flannel.1, geneve), tun/tap,
/// VRFs, and every software device of another kind, or with no kind and no bus device.
pub fn uplink(link: &Link) -> Option<Uplink> {
    if unfit(link).is_some() || link.name == KUBE_IPVS_DEVICE {
        return None;
    }
    if link.parent.is_some() {
        return Some(Uplink::Physical);
    }
    match link.kind.as_deref()? {
        "bond" | "team" | "vlan" | "macvlan" | "ipvlan" | "veth" => Some(Uplink::Stacked),
        _ => None,
    }
}

/// Comma-separated device names or globs (`veth*,lxc+`).
#[derive(Clone, Debug)]
pub struct DevicePatterns {
    set: GlobSet,
}

impl DevicePatterns {
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for pattern in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if pattern.len() > 15 && !pattern.contains(['*', '?', '[']) {
                return Err(format!(
                    "device name {pattern:?} is longer than the kernel's 15 characters"
                ));
            }
            let glob =
                Glob::new(pattern).map_err(|e| format!("device pattern {pattern:?}: {e}"))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| e.to_string())?;
        Ok(Self { set })
    }

    pub fn matches(&self, device: &str) -> bool {
        self.set.is_match(device)
    }
}

/// Devices of the current network namespace as (name, ifindex). Uses `if_nameindex(3)`, which
/// asks the kernel through a socket of this process's namespace (unlike `/sys/class/net`, which
/// shows the namespace of whoever mounted sysfs).
pub fn list() -> std::io::Result<Vec<(String, u32)>> {
    let interfaces = nix::net::if_::if_nameindex()?;
    Ok(interfaces
        .iter()
        .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
        .collect())
}

/// `ETHTOOL_GDRVINFO` (`linux/ethtool.h`): the command that fills a [`EthtoolDrvinfo`].
const ETHTOOL_GDRVINFO: u32 = 0x3;
/// Length of each string of [`EthtoolDrvinfo`] (`ETHTOOL_BUSINFO_LEN` and its siblings).
const ETHTOOL_STRING_LEN: usize = 32;

/// `struct ethtool_drvinfo` (`linux/ethtool.h`). Neither libc, nix nor rustix defines it, and
/// ethtool's netlink interface has no driver query (`ethtool -i` still uses this ioctl).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; ETHTOOL_STRING_LEN],
    version: [u8; ETHTOOL_STRING_LEN],
    fw_version: [u8; ETHTOOL_STRING_LEN],
    bus_info: [u8; ETHTOOL_STRING_LEN],
    erom_version: [u8; ETHTOOL_STRING_LEN],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

// `SIOCETHTOOL` takes a `struct ifreq` whose `ifr_data` points at the command's buffer; the
// kernel reads and writes through that pointer (`net/ethtool/ioctl.c`).
nix::ioctl_readwrite_bad!(siocethtool, nix::libc::SIOCETHTOOL, nix::libc::ifreq);

/// The kernel driver of a device (`veth`, `virtio_net`, `mlx5_core`...), as `ethtool -i`
/// shows it; `None` when the device has none or does not answer.
pub fn driver(device: &str) -> Option<String> {
    use std::os::fd::AsRawFd as _;

    use nix::{
        libc::{__c_anonymous_ifr_ifru, IFNAMSIZ, c_char, ifreq},
        sys::socket::{AddressFamily, SockFlag, SockType, socket},
    };

    // One byte stays for the terminating NUL.
    if device.len() >= IFNAMSIZ || device.as_bytes().contains(&0) {
        return None;
    }
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; ETHTOOL_STRING_LEN],
        version: [0; ETHTOOL_STRING_LEN],
        fw_version: [0; ETHTOOL_STRING_LEN],
        bus_info: [0; ETHTOOL_STRING_LEN],
        erom_version: [0; ETHTOOL_STRING_LEN],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    let mut req = ifreq {
        ifr_name: [0; IFNAMSIZ],
        ifr_ifru: __c_anonymous_ifr_ifru {
            ifru_data: (&raw mut info).cast::<c_char>(),
        },
    };
    for (dst, src) in req.ifr_name.iter_mut().zip(device.bytes()) {
        *dst = src as c_char;
    }
    // Any socket of this process's network namespace answers for the namespace's devices.
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    // SAFETY: `sock` is an open socket for the whole call; `req` holds a NUL-terminated name and
    // points `ifr_data` at `info`, a live `struct ethtool_drvinfo` whose `cmd` is
    // ETHTOOL_GDRVINFO, which is what the kernel reads and fills through it; nothing else
    // aliases either while the call runs.
    unsafe { siocethtool(sock.as_raw_fd(), &raw mut req) }.ok()?;
    let len = info
        .driver
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(ETHTOOL_STRING_LEN);
    (len > 0).then(|| String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, link_type: u16, kind: Option<&str>, parent: Option<&str>) -> Link {
        Link {
            index: 2,
            name: name.into(),
            link_type,
            kind: kind.map(Into::into),
            parent: parent.map(Into::into),
            master: None,
        }
    }

    #[test]
    fn only_ethernet_devices_other_than_loopback_can_carry_the_programs() {
        let ether = libc::ARPHRD_ETHER;
        let cases = [
            (link("eth0", ether, None, Some("0000:00:03.0")), None),
            (link("veth1", ether, Some("veth"), None), None),
            // tap and vxlan carry Ethernet frames.
            (link("tap0", ether, Some("tun"), None), None),
            (
                link("lo", libc::ARPHRD_LOOPBACK, None, None),
                Some(Unfit::Loopback),
            ),
            (
                link("wg0", 65534, Some("wireguard"), None),
                Some(Unfit::NotEthernet(65534)),
            ),
            (
                link("tun0", 65534, Some("tun"), None),
                Some(Unfit::NotEthernet(65534)),
            ),
            (
                link("tunl0", 768, Some("ipip"), None),
                Some(Unfit::NotEthernet(768)),
            ),
            (
                link("sit0", 776, Some("sit"), None),
                Some(Unfit::NotEthernet(776)),
            ),
        ];
        for (l, want) in cases {
            assert_eq!(unfit(&l), want, "{}", l.name);
        }
        let why = Unfit::NotEthernet(65534).to_string();
        assert!(
            why.contains("65534") && why.contains("tun, wireguard"),
            "{why}"
        );
        assert!(Unfit::NotEthernet(9999).to_string().contains("9999"));
    }

    #[test]
    fn uplinks_are_nics_then_stacked_devices_never_bridges_dummies_or_overlays() {
        let ether = libc::ARPHRD_ETHER;
        let cases = [
            (
                link("eth0", ether, None, Some("0000:00:03.0")),
                Some(Uplink::Physical),
            ),
            (
                link("wlan0", ether, None, Some("phy0")),
                Some(Uplink::Physical),
            ),
            (
                link("bond0", ether, Some("bond"), None),
                Some(Uplink::Stacked),
            ),
            (
                link("eth0.100", ether, Some("vlan"), None),
                Some(Uplink::Stacked),
            ),
            (
                link("eth0", ether, Some("veth"), None),
                Some(Uplink::Stacked),
            ),
            (link("docker0", ether, Some("bridge"), None), None),
            (link("cni0", ether, Some("bridge"), None), None),
            (link("kube-ipvs0", ether, Some("dummy"), None), None),
            (link("kube-ipvs0", ether, None, None), None),
            (link("flannel.1", ether, Some("vxlan"), None), None),
            (link("genev_sys_6081", ether, Some("geneve"), None), None),
            (link("tap0", ether, Some("tun"), None), None),
            (link("vrf-blue", ether, Some("vrf"), None), None),
            (link("mystery0", ether, None, None), None),
            (link("wg0", 65534, Some("wireguard"), None), None),
        ];
        for (l, want) in cases {
            assert_eq!(uplink(&l), want, "{} ({:?})", l.name, l.kind);
        }
        assert!(Uplink::Physical < Uplink::Stacked);
    }

    #[test]
    fn names_and_globs() {
        let p = DevicePatterns::parse("veth*, lxc0 ,eth[12]").unwrap();
        assert!(p.matches("veth123"));
        assert!(p.matches("lxc0"));
        assert!(p.matches("eth2"));
        assert!(!p.matches("eth0"));
        assert!(!p.matches("lo"));
    }

    #[test]
    fn bad_patterns_are_rejected_with_the_pattern_named() {
        let e = DevicePatterns::parse("veth[").unwrap_err();
        assert!(e.contains("veth["), "{e}");
        let e = DevicePatterns::parse("averyveryverylongname").unwrap_err();
        assert!(e.contains("15"), "{e}");
    }

    #[test]
    fn loopback_has_no_driver_and_unknown_devices_none() {
        // `lo` answers ETHTOOL_GDRVINFO with an empty driver name on some kernels, or not at all.
        assert_eq!(driver("lo").filter(|d| !d.is_empty()), None);
        assert_eq!(driver("no-such-dev0"), None);
        assert_eq!(driver("a-name-longer-than-ifnamsiz"), None);
    }

    #[test]
    fn drivers_are_asked_in_the_callers_network_namespace() {
        lb_tests::require_root();
        let ns = lb_tests::netns::Netns::new("lbdrv").unwrap();
        // A name of this process alone, so the machine's own namespace has no such device.
        let veth = lb_tests::unique_name("lbd");
        let peer = format!("{veth}p");
        ns.ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])
            .unwrap();
        let (in_ns, listed) = ns
            .run(|| ((driver(&veth), driver("lo")), list().unwrap()))
            .unwrap();
        assert_eq!(in_ns.0.as_deref(), Some("veth"));
        assert_eq!(in_ns.1.filter(|d| !d.is_empty()), None);
        assert!(listed.iter().any(|(n, _)| *n == peer), "{listed:?}");
        assert_eq!(driver(&veth), None, "the device is not in this namespace");
    }

    #[test]
    fn lists_loopback() {
        let devices = list().unwrap();
        assert!(devices.iter().any(|(n, _)| n == "lo"), "{devices:?}");
    }
}
