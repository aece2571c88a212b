//! Network devices of this namespace and the `--pod-devices` name patterns.

use globset::{Glob, GlobSet, GlobSetBuilder};

/// Comma-separated device names or globs (`veth*,lxc+`).
#[derive(Clone, Debug)]
pub struct DevicePatterns {
    set: GlobSet,
    raw: Vec<String>,
}

impl DevicePatterns {
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        let mut raw = Vec::new();
        for pattern in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if pattern.len() > 15 && !pattern.contains(['*', '?', '[']) {
                return Err(format!(
                    "device name {pattern:?} is longer than the kernel's 15 characters"
                ));
            }
            let glob =
                Glob::new(pattern).map_err(|e| format!("device pattern {pattern:?}: {e}"))?;
            builder.add(glob);
            raw.push(pattern.to_owned());
        }
        let set = builder.build().map_err(|e| e.to_string())?;
        Ok(Self { set, raw })
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    pub fn matches(&self, device: &str) -> bool {
        self.set.is_match(device)
    }
}

/// Devices of the current network namespace as (name, ifindex). Uses `if_nameindex(3)`, which
/// asks the kernel through a socket of this process's namespace (unlike `/sys/class/net`, which
/// shows the namespace of whoever mounted sysfs).
pub fn list() -> std::io::Result<Vec<(String, u32)>> {
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut cur = head;
        while (*cur).if_index != 0 && !(*cur).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*cur).if_name)
                .to_string_lossy()
                .into_owned();
            out.push((name, (*cur).if_index));
            cur = cur.add(1);
        }
        libc::if_freenameindex(head);
        Ok(out)
    }
}

/// `SIOCETHTOOL` and `ETHTOOL_GDRVINFO` (`linux/sockios.h`, `linux/ethtool.h`).
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x3;

/// `struct ethtool_drvinfo` (`linux/ethtool.h`).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ifreq` with the `ifr_data` member.
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// The kernel driver of a device (`veth`, `virtio_net`, `mlx5_core`...), as `ethtool -i`
/// shows it; `None` when the device has none or does not answer.
pub fn driver(device: &str) -> Option<String> {
    if device.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: (&raw mut info).cast(),
        _pad: [0; 16],
    };
    req.name[..device.len()].copy_from_slice(device.as_bytes());
    // SAFETY: a datagram socket of this namespace, closed below; the ioctl fills `info` through
    // the pointer in `req`, both alive for the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
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
    fn lists_loopback() {
        let devices = list().unwrap();
        assert!(devices.iter().any(|(n, _)| n == "lo"), "{devices:?}");
    }
}
