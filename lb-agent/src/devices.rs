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
    fn lists_loopback() {
        let devices = list().unwrap();
        assert!(devices.iter().any(|(n, _)| n == "lo"), "{devices:?}");
    }
}
