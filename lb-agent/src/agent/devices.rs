//! Keeps the programs on the right devices: pod devices (`--pod-devices`) get the pod programs,
//! external devices (`--devices`, or by default every device with a usable address that is
//! neither loopback nor a pod device) the external ones, with XDP where the mode allows.

use std::collections::HashMap;

use ipnet::IpNet;
use tracing::{debug, error, info, warn};

use crate::{
    kernel::{Attached, DatapathMode, KernelError, Programs},
    lbmap::{MapOps, Writer},
    node::{
        addrs::{self, DeviceAddr},
        devices::{self, DevicePatterns},
    },
};

/// The two roles a device can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    Pod,
    External,
}

/// Which devices get which programs, and the failures already reported.
pub struct DeviceScanner {
    pub pod_devices: DevicePatterns,
    /// `None`: every device with a usable address except loopback and pod devices.
    pub devices: Option<DevicePatterns>,
    pub nodeport_cidrs: Vec<IpNet>,
    pub mode: DatapathMode,
    /// Device -> the ifindex it failed to attach at; reported once until it changes.
    failed: HashMap<(Role, String), u32>,
}

impl DeviceScanner {
    pub fn new(
        pod_devices: DevicePatterns,
        devices: Option<DevicePatterns>,
        nodeport_cidrs: Vec<IpNet>,
        mode: DatapathMode,
    ) -> Self {
        Self {
            pod_devices,
            devices,
            nodeport_cidrs,
            mode,
            failed: HashMap::new(),
        }
    }

    /// Whether a device is external.
    fn is_external(&self, name: &str, addrs: &[DeviceAddr]) -> bool {
        match &self.devices {
            Some(patterns) => patterns.matches(name),
            None => {
                name != "lo"
                    && !self.pod_devices.matches(name)
                    && addrs
                        .iter()
                        .any(|a| a.device == name && addrs::usable(&a.addr))
            }
        }
    }

    /// The addresses node ports answer on, among `all` the node has.
    pub fn nodeport_addresses(&self, all: &[DeviceAddr]) -> Vec<std::net::IpAddr> {
        addrs::nodeport_addresses(all, |d| self.is_external(d, all), &self.nodeport_cidrs)
    }

    /// Attaches to new devices of both roles and forgets vanished ones; returns the node's
    /// addresses it listed (`None` when listing failed, and nothing changed).
    pub fn scan<M: MapOps>(
        &mut self,
        programs: &mut Programs,
        writer: &mut Writer<M>,
    ) -> Option<Vec<DeviceAddr>> {
        let (present, all) = match (devices::list(), addrs::list()) {
            (Ok(present), Ok(all)) => (present, all),
            (Err(e), _) | (_, Err(e)) => {
                warn!("listing network devices and addresses: {e}");
                return None;
            }
        };
        for role in [Role::Pod, Role::External] {
            self.reconcile(role, &present, &all, programs, writer);
        }
        Some(all)
    }

    fn reconcile<M: MapOps>(
        &mut self,
        role: Role,
        present: &[(String, u32)],
        all: &[DeviceAddr],
        programs: &mut Programs,
        writer: &mut Writer<M>,
    ) {
        let attached: HashMap<String, u32> = match role {
            Role::Pod => programs
                .devices
                .pod()
                .map(|(n, i)| (n.to_owned(), i))
                .collect(),
            Role::External => programs
                .devices
                .external()
                .map(|(n, i)| (n.to_owned(), i))
                .collect(),
        };
        for (name, ifindex) in &attached {
            if !present.iter().any(|(n, i)| n == name && i == ifindex) {
                debug!("{role:?} device {name} went away");
                detach(role, name, *ifindex, programs, writer);
            }
        }
        for (name, ifindex) in present {
            let wanted = match role {
                Role::Pod => self.pod_devices.matches(name),
                Role::External => self.is_external(name, all),
            };
            if !wanted || attached.get(name) == Some(ifindex) {
                continue;
            }
            match attach(role, name, *ifindex, self.mode, programs, writer) {
                Ok(()) => {
                    self.failed.remove(&(role, name.clone()));
                }
                Err(e) => {
                    if self.failed.insert((role, name.clone()), *ifindex) != Some(*ifindex) {
                        error!("attaching to {role:?} device {name}: {e}");
                    }
                }
            }
        }
    }
}

/// Attaches the external programs to a device and makes it an XDP redirect target when XDP
/// runs there (or takes an earlier run's entry away when it does not).
pub fn attach_external<M: MapOps>(
    programs: &mut Programs,
    writer: &mut Writer<M>,
    name: &str,
    ifindex: u32,
    mode: DatapathMode,
) -> Result<Attached, KernelError> {
    Ok(match programs.attach_ext_device(name, ifindex, mode)? {
        // XDP redirects reach only devices in the redirect map; one that cannot be added
        // keeps TC alone.
        Attached::Xdp => match writer.add_xdp_device(ifindex) {
            Ok(()) => Attached::Xdp,
            Err(e) => {
                programs.detach_xdp(name);
                let _ = writer.remove_xdp_device(ifindex);
                Attached::TcOnly(format!("adding it to the XDP redirect targets failed: {e}"))
            }
        },
        Attached::TcOnly(why) => {
            // An earlier run's redirect entry for the device goes with its XDP program.
            let _ = writer.remove_xdp_device(ifindex);
            Attached::TcOnly(why)
        }
    })
}

/// Undoes [`attach_external`], or forgets a device that went away.
pub fn detach_external<M: MapOps>(
    programs: &mut Programs,
    writer: &mut Writer<M>,
    name: &str,
    ifindex: u32,
) {
    let _ = writer.remove_xdp_device(ifindex);
    programs.detach_ext_device(name);
}

fn attach<M: MapOps>(
    role: Role,
    name: &str,
    ifindex: u32,
    mode: DatapathMode,
    programs: &mut Programs,
    writer: &mut Writer<M>,
) -> anyhow::Result<()> {
    if role == Role::Pod {
        programs.attach_pod_device(name, ifindex)?;
        info!("attached to pod device {name} (ifindex {ifindex})");
        return Ok(());
    }
    match attach_external(programs, writer, name, ifindex, mode)? {
        Attached::Xdp => {
            info!("attached to external device {name} (ifindex {ifindex}): XDP (native) and TC")
        }
        Attached::TcOnly(why) => {
            let line = format!(
                "attached to external device {name} (ifindex {ifindex}): TC only, no XDP: {why}"
            );
            if mode == DatapathMode::Xdp {
                warn!("{line}");
            } else {
                info!("{line}");
            }
        }
    }
    Ok(())
}

fn detach<M: MapOps>(
    role: Role,
    name: &str,
    ifindex: u32,
    programs: &mut Programs,
    writer: &mut Writer<M>,
) {
    match role {
        Role::Pod => programs.detach_pod_device(name),
        Role::External => detach_external(programs, writer, name, ifindex),
    }
}
