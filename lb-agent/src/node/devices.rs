//! Network devices of this namespace and the `--pod-devices` name patterns.

use globset::{Glob, GlobSet, GlobSetBuilder};

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
