//! Keeps the programs on the right devices: pod devices (`--pod-devices`) get the pod programs,
//! external devices (`--devices`, or by default every device with a usable address that is
//! neither loopback nor a pod device) the external ones, with XDP where the mode allows. Devices
//! whose frames have no Ethernet header (wireguard, tun, ipip) get neither
//! ([`devices::unfit`]): the default selection leaves them out with a note, and patterns that
//! name them get a warning. Each scan also makes the devices' choice of the SNAT address (rules
//! 2 to 4 of [`addrs`]).

use std::{collections::HashMap, io};

use ipnet::IpNet;
use tracing::{debug, error, info, warn};

use crate::{
    kernel::{Attached, DatapathMode, KernelError, Programs},
    lbmap::{MapOps, Writer},
    model::DeviceAddrs,
    node::{
        addrs::{self, DeviceAddr, SnatChoice},
        devices::{self, DevicePatterns, Link, Unfit},
        rtnl::{self, Route},
    },
};

/// The two roles a device can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Pod,
    External,
}

/// What a scan makes of one device in one role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The role's programs go on it.
    Attach,
    /// Not a device of the role.
    Ignore,
    /// A device of the role by name or address that the programs cannot run on.
    Refuse(Unfit),
}

/// What one scan reads of the network namespace: devices, addresses (in the kernel's order)
/// and the kernel's route to each family's [`addrs::route_probe`] (IPv4, IPv6).
#[derive(Clone, Debug)]
pub struct Survey {
    pub links: Vec<Link>,
    pub addrs: Vec<DeviceAddr>,
    pub routes: [Option<Route>; 2],
}

impl Survey {
    /// Reads the calling thread's network namespace. A failed route query counts as no route
    /// (the SNAT address then comes from the devices alone); failing to list devices or
    /// addresses is an error.
    pub fn read() -> io::Result<Self> {
        let links = devices::links()?;
        let addrs = addrs::list(&links)?;
        let routes = [false, true].map(|v6| {
            let probe = addrs::route_probe(v6);
            rtnl::route_to(probe).unwrap_or_else(|e| {
                debug!("asking the kernel for its route to {probe}: {e}");
                None
            })
        });
        Ok(Self {
            links,
            addrs,
            routes,
        })
    }
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
    /// Device -> the ifindex it was refused at ([`Verdict::Refuse`]); reported once until it
    /// changes.
    refused: HashMap<(Role, String), u32>,
    /// The SNAT address of each family (IPv4, IPv6) the last scan chose, once there was one:
    /// a change is logged.
    snat: Option<[Option<SnatChoice>; 2]>,
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
            refused: HashMap::new(),
            snat: None,
        }
    }

    /// Whether a device is external by its name and addresses alone, whatever its link type.
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

    /// What the scan does with `link` in `role`, `addrs` being the namespace's addresses.
    pub fn verdict(&self, role: Role, link: &Link, addrs: &[DeviceAddr]) -> Verdict {
        let named = match role {
            Role::Pod => self.pod_devices.matches(&link.name),
            Role::External => self.is_external(&link.name, addrs),
        };
        match (named, devices::unfit(link)) {
            (false, _) => Verdict::Ignore,
            (true, None) => Verdict::Attach,
            // Not worth a word: `--devices '*'` matches it too.
            (true, Some(Unfit::Loopback)) => Verdict::Ignore,
            (true, Some(unfit)) => Verdict::Refuse(unfit),
        }
    }

    /// The addresses node ports answer on, among `all` the node has.
    pub fn nodeport_addresses(&self, all: &[DeviceAddr]) -> Vec<std::net::IpAddr> {
        addrs::nodeport_addresses(all, |d| self.is_external(d, all), &self.nodeport_cidrs)
    }

    /// The external devices among `all` (as [`DeviceScanner::addresses`] returns them: devices
    /// the programs can run on) with their usable addresses, in the kernel's order: the SNAT
    /// address of flows the FIB sends out of each is chosen from them
    /// ([`crate::model::SnatAddrs::choose`]).
    pub fn snat_devices(&self, all: &[DeviceAddr]) -> Vec<DeviceAddrs> {
        let mut out: Vec<DeviceAddrs> = Vec::new();
        for a in all {
            if !addrs::usable(&a.addr) || !self.is_external(&a.device, all) {
                continue;
            }
            match out.iter_mut().find(|d| d.ifindex == a.ifindex) {
                Some(device) => device.addrs.push(a.addr),
                None => out.push(DeviceAddrs {
                    ifindex: a.ifindex,
                    name: a.device.clone(),
                    addrs: vec![a.addr],
                }),
            }
        }
        out
    }

    /// The addresses of `survey` on devices the programs can run on, with each family's SNAT
    /// address marked ([`DeviceAddr::snat`]); logs a choice that changed since the last call.
    pub fn addresses(&mut self, survey: &Survey) -> Vec<DeviceAddr> {
        let fit = |name: &str| {
            survey
                .links
                .iter()
                .any(|l| l.name == name && devices::unfit(l).is_none())
        };
        let mut out: Vec<DeviceAddr> = survey
            .addrs
            .iter()
            .filter(|a| fit(&a.device))
            .cloned()
            .collect();
        let choices = [false, true].map(|v6| {
            addrs::choose_snat(
                v6,
                &survey.links,
                |l| self.verdict(Role::External, l, &out) == Verdict::Attach,
                &out,
                survey.routes[usize::from(v6)].as_ref(),
            )
        });
        for choice in choices.iter().flatten() {
            for a in out.iter_mut() {
                a.snat |= a.addr == choice.addr && a.device == choice.device;
            }
        }
        self.note_snat(choices, &out);
        out
    }

    /// Logs each family's SNAT choice that differs from the last one noted.
    fn note_snat(&mut self, choices: [Option<SnatChoice>; 2], addrs: &[DeviceAddr]) {
        let before = self.snat.take();
        for (v6, choice) in [false, true].into_iter().zip(&choices) {
            let family = if v6 { "IPv6" } else { "IPv4" };
            if before
                .as_ref()
                .is_some_and(|b| b[usize::from(v6)] == *choice)
            {
                continue;
            }
            match choice {
                Some(c) => info!("{family} SNAT address of the devices: {c}"),
                None if self
                    .nodeport_addresses(addrs)
                    .iter()
                    .any(|a| a.is_ipv6() == v6) =>
                {
                    warn!(
                        "{family}: no external device qualifies for the SNAT address (the \
                         kernel's route to {} has no source on one, and none is a NIC, bond, \
                         VLAN, macvlan, ipvlan or veth device); flows to other nodes' backends \
                         leave from the Node's InternalIP if it is a node port address, else \
                         from the lowest node port address",
                        addrs::route_probe(v6)
                    )
                }
                None => debug!("{family}: no SNAT address: no external device has one"),
            }
        }
        self.snat = Some(choices);
    }

    /// Attaches to new devices of both roles and forgets vanished ones; returns the addresses
    /// of the devices the programs can run on, with the SNAT choice of each family marked
    /// ([`DeviceScanner::addresses`]); `None` when listing failed, and nothing changed.
    pub fn scan<M: MapOps>(
        &mut self,
        programs: &mut Programs,
        writer: &mut Writer<M>,
    ) -> Option<Vec<DeviceAddr>> {
        let survey = match Survey::read() {
            Ok(survey) => survey,
            Err(e) => {
                warn!("listing network devices and addresses: {e}");
                return None;
            }
        };
        for role in [Role::Pod, Role::External] {
            self.reconcile(role, &survey, programs, writer);
        }
        Some(self.addresses(&survey))
    }

    fn reconcile<M: MapOps>(
        &mut self,
        role: Role,
        survey: &Survey,
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
        let present = |name: &str, ifindex: u32| {
            survey
                .links
                .iter()
                .any(|l| l.name == name && l.index == ifindex)
        };
        for (name, ifindex) in &attached {
            if !present(name, *ifindex) {
                debug!("{role:?} device {name} went away");
                detach(role, name, *ifindex, programs, writer);
            }
        }
        self.refused
            .retain(|(r, name), ifindex| *r != role || present(name, *ifindex));
        for link in &survey.links {
            let (name, ifindex) = (&link.name, link.index);
            match self.verdict(role, link, &survey.addrs) {
                Verdict::Ignore => continue,
                Verdict::Refuse(why) => {
                    self.refuse(role, link, why);
                    continue;
                }
                Verdict::Attach => {}
            }
            if attached.get(name) == Some(&ifindex) {
                continue;
            }
            match attach(role, name, ifindex, self.mode, programs, writer) {
                Ok(()) => {
                    self.failed.remove(&(role, name.clone()));
                }
                Err(e) => {
                    if self.failed.insert((role, name.clone()), ifindex) != Some(ifindex) {
                        error!("attaching to {role:?} device {name}: {e}");
                    }
                }
            }
        }
    }

    /// Reports a refused device, once until its ifindex changes.
    fn refuse(&mut self, role: Role, link: &Link, why: Unfit) {
        let key = (role, link.name.clone());
        if self.refused.insert(key, link.index) == Some(link.index) {
            return;
        }
        let (name, ifindex) = (&link.name, link.index);
        match (role, &self.devices) {
            (Role::Pod, _) => {
                warn!("--pod-devices matches {name} (ifindex {ifindex}), which {why}; not attached")
            }
            (Role::External, Some(_)) => {
                warn!("--devices matches {name} (ifindex {ifindex}), which {why}; not attached")
            }
            (Role::External, None) => {
                info!("not attaching to device {name} (ifindex {ifindex}): it {why}")
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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use nix::libc;

    use super::*;

    fn link(index: u32, name: &str, link_type: u16, kind: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            link_type,
            kind: kind.map(Into::into),
            parent: (kind.is_none() && name != "lo").then(|| format!("0000:00:0{index}.0")),
            master: None,
        }
    }

    /// An address of a device of [`survey`], whose ifindex follows from its name.
    fn da(device: &str, addr: &str) -> DeviceAddr {
        let ifindex = ["lo", "eth0", "docker0", "wg0", "tun0", "lxc1"]
            .iter()
            .position(|d| *d == device)
            .map_or(0, |i| i as u32 + 1);
        DeviceAddr {
            device: device.into(),
            ifindex,
            addr: addr.parse().unwrap(),
            snat: false,
        }
    }

    /// A node with a NIC, docker's bridge, a wireguard and a tun device, a pod veth and a
    /// default route out of the NIC.
    fn survey() -> Survey {
        Survey {
            links: vec![
                link(1, "lo", libc::ARPHRD_LOOPBACK, None),
                link(2, "eth0", libc::ARPHRD_ETHER, None),
                link(3, "docker0", libc::ARPHRD_ETHER, Some("bridge")),
                link(4, "wg0", libc::ARPHRD_NONE, Some("wireguard")),
                link(5, "tun0", libc::ARPHRD_NONE, Some("tun")),
                link(6, "lxc1", libc::ARPHRD_ETHER, Some("veth")),
            ],
            addrs: vec![
                da("lo", "127.0.0.1"),
                da("eth0", "192.168.10.21"),
                da("docker0", "172.17.0.1"),
                da("wg0", "10.8.0.1"),
                da("lxc1", "10.0.0.1"),
                da("eth0", "2001:db8::21"),
            ],
            routes: [
                Some(Route {
                    oif: Some(2),
                    prefsrc: Some("192.168.10.21".parse().unwrap()),
                }),
                None,
            ],
        }
    }

    fn scanner(devices: Option<&str>) -> DeviceScanner {
        DeviceScanner::new(
            DevicePatterns::parse("lxc*").unwrap(),
            devices.map(|d| DevicePatterns::parse(d).unwrap()),
            Vec::new(),
            DatapathMode::Tc,
        )
    }

    fn verdicts(scanner: &DeviceScanner, role: Role, survey: &Survey) -> Vec<(String, Verdict)> {
        survey
            .links
            .iter()
            .map(|l| (l.name.clone(), scanner.verdict(role, l, &survey.addrs)))
            .filter(|(_, v)| *v != Verdict::Ignore)
            .collect()
    }

    #[test]
    fn by_default_devices_without_ethernet_headers_and_loopback_are_left_out() {
        let s = survey();
        let not_ethernet = Verdict::Refuse(Unfit::NotEthernet(libc::ARPHRD_NONE));
        assert_eq!(
            verdicts(&scanner(None), Role::External, &s),
            [
                ("eth0".to_owned(), Verdict::Attach),
                ("docker0".to_owned(), Verdict::Attach),
                ("wg0".to_owned(), not_ethernet),
            ],
            "tun0 has no address, lxc1 is a pod device, lo is loopback"
        );
        assert_eq!(
            verdicts(&scanner(None), Role::Pod, &s),
            [("lxc1".to_owned(), Verdict::Attach)]
        );
    }

    #[test]
    fn named_devices_without_ethernet_headers_are_refused() {
        let s = survey();
        let not_ethernet = Verdict::Refuse(Unfit::NotEthernet(libc::ARPHRD_NONE));
        assert_eq!(
            verdicts(&scanner(Some("eth0,tun0,wg*")), Role::External, &s),
            [
                ("eth0".to_owned(), Verdict::Attach),
                ("wg0".to_owned(), not_ethernet),
                ("tun0".to_owned(), not_ethernet),
            ]
        );
        // `*` matches the loopback too, which is left out without a word.
        let all = verdicts(&scanner(Some("*")), Role::External, &s);
        assert!(all.iter().all(|(n, _)| n != "lo"), "{all:?}");
    }

    #[test]
    fn the_scan_marks_the_default_routes_source_and_drops_unfit_devices_addresses() {
        let s = survey();
        let mut scanner = scanner(None);
        let out = scanner.addresses(&s);
        let marked: Vec<(&str, String)> = out
            .iter()
            .filter(|a| a.snat)
            .map(|a| (a.device.as_str(), a.addr.to_string()))
            .collect();
        // IPv6 has no route: eth0, the NIC, holds the only address of the family.
        assert_eq!(
            marked,
            [
                ("eth0", "192.168.10.21".to_owned()),
                ("eth0", "2001:db8::21".to_owned())
            ]
        );
        assert!(out.iter().all(|a| a.device != "wg0" && a.device != "lo"));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            scanner.nodeport_addresses(&out),
            [ip("192.168.10.21"), ip("2001:db8::21"), ip("172.17.0.1")],
            "docker0's address serves node ports but is not the SNAT address"
        );
        // No route and no NIC: the bridge is never chosen, and nothing is marked.
        let mut bridge_only = s.clone();
        bridge_only.routes = [None, None];
        bridge_only.links.retain(|l| l.name != "eth0");
        bridge_only.addrs.retain(|a| a.device != "eth0");
        let out = scanner.addresses(&bridge_only);
        assert!(out.iter().all(|a| !a.snat), "{out:?}");
        assert_eq!(scanner.nodeport_addresses(&out), [ip("172.17.0.1")]);
    }
}

/// Root: the scan's reading of a real network namespace.
#[cfg(test)]
mod netns_tests {
    use lb_tests::netns::Netns;
    use nix::libc;

    use super::*;
    use crate::model::{DeviceSnat, SnatAddrs, SnatReason};

    /// A namespace with a veth uplink (`up`, 10.77.0.2 and fd00:77::2, default routes of both
    /// families out of it), a bridge whose addresses (10.1.0.1, fd00:1::1) sort before the
    /// uplink's, and a tun device with an address of its own.
    struct Node {
        ns: Netns,
        up: String,
        bridge: String,
        tun: String,
    }

    impl Node {
        fn new() -> Self {
            lb_tests::require_root();
            let ns = Netns::new("lbsnat").unwrap();
            let lb_tests::netns::UplinkBridgeTun { up, bridge, tun } =
                lb_tests::netns::add_uplink_bridge_tun(&ns).unwrap();
            Self {
                ns,
                up,
                bridge,
                tun,
            }
        }

        fn survey(&self) -> Survey {
            self.ns.run(Survey::read).unwrap().unwrap()
        }
    }

    fn scanner() -> DeviceScanner {
        DeviceScanner::new(
            DevicePatterns::parse("lxc*").unwrap(),
            None,
            Vec::new(),
            DatapathMode::Tc,
        )
    }

    /// The SNAT addresses the plan makes of a scan's addresses, with no Node object.
    fn snat_of(scanner: &mut DeviceScanner, survey: &Survey) -> SnatAddrs {
        let marked = scanner.addresses(survey);
        let addresses = scanner.nodeport_addresses(&marked);
        let devices = scanner.snat_devices(&marked);
        let (snat, reasons) = SnatAddrs::choose(&addresses, &[], &devices);
        assert_eq!(reasons.v4, Some(SnatReason::NodeAddress));
        snat
    }

    #[test]
    fn a_tun_device_is_left_out_a_veth_and_a_bridge_are_external() {
        let node = Node::new();
        let survey = node.survey();
        let scanner = scanner();
        let verdict = |name: &str| {
            let link = survey
                .links
                .iter()
                .find(|l| l.name == name)
                .unwrap_or_else(|| panic!("{name} not in {:?}", survey.links));
            scanner.verdict(Role::External, link, &survey.addrs)
        };
        assert_eq!(verdict(&node.up), Verdict::Attach);
        assert_eq!(verdict(&node.bridge), Verdict::Attach);
        assert_eq!(
            verdict(&node.tun),
            Verdict::Refuse(Unfit::NotEthernet(libc::ARPHRD_NONE))
        );
        assert_eq!(verdict("lo"), Verdict::Ignore);
        let tun = survey.links.iter().find(|l| l.name == node.tun).unwrap();
        assert_eq!(tun.kind.as_deref(), Some("tun"));
        let bridge = survey.links.iter().find(|l| l.name == node.bridge).unwrap();
        assert_eq!(bridge.kind.as_deref(), Some("bridge"));
        assert_eq!(bridge.parent, None);
        // Named explicitly, the tun device is refused all the same.
        let named = DeviceScanner::new(
            DevicePatterns::parse("lxc*").unwrap(),
            Some(DevicePatterns::parse(&format!("{},{}", node.up, node.tun)).unwrap()),
            Vec::new(),
            DatapathMode::Tc,
        );
        let tun_verdict = named.verdict(Role::External, tun, &survey.addrs);
        assert_eq!(
            tun_verdict,
            Verdict::Refuse(Unfit::NotEthernet(libc::ARPHRD_NONE))
        );
    }

    #[test]
    fn snat_is_the_uplinks_address_not_the_bridges_that_sorts_first() {
        let node = Node::new();
        let survey = node.survey();
        let up = survey.links.iter().find(|l| l.name == node.up).unwrap();
        assert_eq!(
            survey.routes,
            [
                Some(Route {
                    oif: Some(up.index),
                    prefsrc: Some("10.77.0.2".parse().unwrap()),
                }),
                Some(Route {
                    oif: Some(up.index),
                    prefsrc: Some("fd00:77::2".parse().unwrap()),
                }),
            ],
            "the kernel's answer for the probes"
        );
        let mut scanner = scanner();
        let bridge = survey.links.iter().find(|l| l.name == node.bridge).unwrap();
        // Flows the FIB sends out of the bridge leave from the bridge's addresses.
        let want = SnatAddrs {
            v4: Some("10.77.0.2".parse().unwrap()),
            v6: Some("fd00:77::2".parse().unwrap()),
            devices: [(
                bridge.index,
                DeviceSnat {
                    name: node.bridge.clone(),
                    v4: Some("10.1.0.1".parse().unwrap()),
                    v6: Some("fd00:1::1".parse().unwrap()),
                },
            )]
            .into(),
        };
        assert_eq!(snat_of(&mut scanner, &survey), want);
        // The tun device's address is no node port address.
        let marked = scanner.addresses(&survey);
        let addresses = scanner.nodeport_addresses(&marked);
        assert!(
            !addresses.contains(&"10.2.0.1".parse().unwrap()),
            "{addresses:?}"
        );
        // Without default routes the uplink still wins: a veth ranks, a bridge never does.
        node.ns.ip(&["route", "del", "default"]).unwrap();
        node.ns.ip(&["-6", "route", "del", "default"]).unwrap();
        let survey = node.survey();
        assert_eq!(survey.routes, [None, None]);
        assert_eq!(snat_of(&mut scanner, &survey), want);
        // A route with its own `src` on the bridge is the kernel's choice, and taken.
        node.ns
            .ip(&[
                "route",
                "add",
                "default",
                "via",
                "10.77.0.1",
                "dev",
                &node.up,
                "src",
                "10.1.0.1",
            ])
            .unwrap();
        let survey = node.survey();
        assert_eq!(
            snat_of(&mut scanner, &survey).v4,
            Some("10.1.0.1".parse().unwrap())
        );
    }
}
