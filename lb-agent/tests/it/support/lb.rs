//! A loaded datapath of its own per test: maps pinned in a directory named after the process and
//! a counter (tests run in parallel threads), programmed through the agent's real writer, and the
//! TC programs run on crafted frames with BPF_PROG_TEST_RUN.
//!
//! The frontends the tests program are built here, and only here: [`cluster_ip`],
//! [`with_affinity`], [`rejecting`], and [`External::node_port`] or [`External::load_balancer_ip`]. They are
//! the tests' one place that writes the model's `FrontendState`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{Context as _, bail, ensure};
use aya::programs::{SchedClassifier, TestRunOptions, Xdp};
use lb_agent::{
    agent::devices::{attach_external, detach_external},
    kernel::{Attached, DatapathMode, LoadOptions, Programs, SocketLb},
    lbmap::{Writer, bpf::BpfMaps},
    model::{
        Backend, Frontend, FrontendKind, FrontendState, IpFamily, NamespacedName, Protocol,
        ServicePortName, SnatAddrs,
    },
};
use lb_ebpf::stats;

/// Where bpffs is mounted on the test machines.
const BPFFS: &str = "/sys/fs/bpf";
/// `TC_ACT_OK` (`linux/pkt_cls.h`): the packet goes on, translated or not.
pub const TC_ACT_OK: u32 = 0;
/// `TC_ACT_SHOT`: the packet is dropped.
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT`: the program sent the packet out itself (a reset back to the client).
pub const TC_ACT_REDIRECT: u32 = 7;
/// Room for the output frame: larger than any frame these tests build, and than the ICMP errors
/// the programs build from them (which never exceed IPv6's minimum MTU), so BPF_PROG_TEST_RUN
/// never fails with ENOSPC.
const DATA_OUT_LEN: usize = 4096;

pub const MAX_SERVICES: u32 = 1024;
pub const MAX_AFFINITY: u32 = 2048;
const MAX_BACKENDS: u32 = 1024;
/// Well above what any test creates: the common LRU hands free entries to each CPU in batches,
/// so a table sized close to its use could evict live flows.
const MAX_FLOWS: u32 = 16_384;

/// A pin directory of its own, removed on drop (also when the test panics).
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(BPFFS).join(format!("lb-test-{}-{n}", std::process::id()));
        // A leftover of an earlier process with the same pid would hand us its maps.
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One loaded datapath.
pub struct Lb {
    programs: Programs,
    writer: Writer<BpfMaps>,
    /// Declared last: the directory goes after the maps and programs are closed.
    pin_dir: PinDir,
}

impl Lb {
    /// Loads both programs with fresh maps. Failing to load fails the test: it never skips.
    pub fn load() -> anyhow::Result<Self> {
        Self::load_counting(lb_agent::kernel::ServiceCounterLevel::Packets)
    }

    /// [`Lb::load`] with the per-frontend traffic counters at `level`.
    pub fn load_counting(level: lb_agent::kernel::ServiceCounterLevel) -> anyhow::Result<Self> {
        let pin_dir = PinDir::new();
        let mut programs = Programs::load(&LoadOptions {
            pin_dir: pin_dir.0.clone(),
            max_services: MAX_SERVICES,
            max_backends: MAX_BACKENDS,
            max_flows: MAX_FLOWS,
            max_new_flows: MAX_FLOWS,
            max_snat: MAX_FLOWS,
            max_sockets: 1024,
            max_affinity: MAX_AFFINITY,
            socket_lb: SocketLb::Off,
            socket_lb_scope: Default::default(),
            service_counters: level,
            timeouts: Default::default(),
            snat_ports: Default::default(),
        })
        .with_context(|| {
            format!(
                "loading the datapath with maps under {} (needs root and bpffs)",
                pin_dir.0.display()
            )
        })?;
        let maps = BpfMaps::take(programs.ebpf_mut())?;
        Ok(Self {
            programs,
            writer: Writer::new(maps, MAX_BACKENDS),
            pin_dir,
        })
    }

    /// Makes the maps serve exactly these ClusterIP frontends, through the agent's writer.
    pub fn apply(&mut self, services: &[(Frontend, &[SocketAddr])]) -> anyhow::Result<()> {
        let states: Vec<_> = services
            .iter()
            .map(|(frontend, backends)| cluster_ip(*frontend, backends))
            .collect();
        self.apply_states(&states)
    }

    /// Makes the maps serve exactly these frontends with their whole state (built by
    /// [`cluster_ip`], [`rejecting`] or an [`External`]), through the agent's writer.
    pub fn apply_states(&mut self, states: &[(Frontend, FrontendState)]) -> anyhow::Result<()> {
        let desired: BTreeMap<Frontend, FrontendState> = states.iter().cloned().collect();
        let report = self.writer.apply(&desired);
        ensure!(report.errors.is_empty(), "apply: {:?}", report.errors);
        Ok(())
    }

    /// Runs `lb_tc_ext_ingress` (external traffic) on a frame: the verdict and the frame.
    pub fn ext_ingress(&mut self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        let name = lb_ebpf::program_names::TC_EXT_INGRESS;
        run_program(self.classifier(name)?, name, frame, None)
    }

    /// Runs `lb_xdp_ext` (the XDP fast path for external traffic) on a frame received on
    /// device `ingress_ifindex` of the calling thread's network namespace (0: none, and no FIB
    /// lookup can succeed): the verdict and the frame.
    pub fn xdp(&mut self, frame: &[u8], ingress_ifindex: u32) -> anyhow::Result<(u32, Vec<u8>)> {
        let name = lb_ebpf::program_names::XDP_EXT;
        let program: &mut Xdp = self
            .programs
            .ebpf_mut()
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()
            .with_context(|| format!("program {name} is not an XDP program"))?;
        // `struct xdp_md`: data, data_end (the frame's length), data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let mut ctx = [0_u8; 24];
        ctx[4..8].copy_from_slice(&u32::try_from(frame.len())?.to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        run_program(
            program,
            name,
            frame,
            (ingress_ifindex != 0).then_some(&ctx[..]),
        )
    }

    /// Sets the node's SNAT address of the address's family, through the agent's writer.
    pub fn set_node_addr(&mut self, addr: std::net::IpAddr) -> anyhow::Result<()> {
        let snat = match addr {
            std::net::IpAddr::V4(a) => SnatAddrs {
                v4: Some(a),
                ..SnatAddrs::default()
            },
            std::net::IpAddr::V6(a) => SnatAddrs {
                v6: Some(a),
                ..SnatAddrs::default()
            },
        };
        self.set_snat(&snat)
    }

    /// Sets the node's SNAT addresses (defaults and devices), through the agent's writer.
    pub fn set_snat(&mut self, snat: &SnatAddrs) -> anyhow::Result<()> {
        self.writer.set_snat(snat)?;
        Ok(())
    }

    /// Runs `lb_tc_ext_ingress` on a frame received on device `ifindex` of the calling
    /// thread's network namespace (the FIB lookups of the SNAT path see that device and its
    /// namespace's routes): the verdict and the frame.
    pub fn ext_ingress_on(&mut self, frame: &[u8], ifindex: u32) -> anyhow::Result<(u32, Vec<u8>)> {
        let name = lb_ebpf::program_names::TC_EXT_INGRESS;
        // `struct __sk_buff` up to `ifindex`: BPF_PROG_TEST_RUN takes `ingress_ifindex`
        // (offset 36) and `ifindex` (offset 40, the device the skb is on); the rest must be 0.
        let mut ctx = [0_u8; 44];
        ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        run_program(self.classifier(name)?, name, frame, Some(&ctx))
    }

    /// The traffic counters (`lb_ebpf::service_stats`) of the frontend `addr`/`protocol`,
    /// summed over CPUs and over its scopes (the internal entry of a Local policy too).
    pub fn service_counters(
        &self,
        addr: std::net::SocketAddr,
        protocol: Protocol,
    ) -> anyhow::Result<[u64; lb_ebpf::service_stats::COUNT]> {
        let reader = lb_agent::kernel::ServiceCounterReader::open(&self.pin_dir.0)?;
        let ids: Vec<u16> = self
            .writer
            .rev_nat_ids()
            .filter(|(vip, _)| vip.frontend().addr == addr && vip.frontend().protocol == protocol)
            .map(|(_, id)| id)
            .collect();
        ensure!(!ids.is_empty(), "{addr}/{protocol:?} is not programmed");
        let mut sum = [0; lb_ebpf::service_stats::COUNT];
        for id in ids {
            for (total, n) in sum.iter_mut().zip(reader.read(id)?) {
                *total += n;
            }
        }
        Ok(sum)
    }

    pub fn maps(&self) -> &BpfMaps {
        self.writer.maps()
    }

    /// The SNAT ports (host byte order) held towards `backend`, each checked to be in the
    /// default SNAT range.
    pub fn snat_ports(&self, backend: std::net::SocketAddr) -> Vec<u16> {
        let held: Vec<(std::net::IpAddr, u16, u16)> = match backend.ip() {
            std::net::IpAddr::V4(_) => self
                .maps()
                .snat_v4()
                .into_iter()
                .map(|(k, _)| (k.saddr.into(), k.sport, k.dport))
                .collect(),
            std::net::IpAddr::V6(_) => self
                .maps()
                .snat_v6()
                .into_iter()
                .map(|(k, _)| (k.saddr.into(), k.sport, k.dport))
                .collect(),
        };
        let ports: Vec<u16> = held
            .into_iter()
            .filter(|(addr, port, _)| {
                *addr == backend.ip() && u16::from_be(*port) == backend.port()
            })
            .map(|(_, _, snat)| u16::from_be(snat))
            .collect();
        for port in &ports {
            assert!(
                (lb_ebpf::DEFAULT_SNAT_PORT_MIN..=lb_ebpf::DEFAULT_SNAT_PORT_MAX).contains(port),
                "SNAT port {port} towards {backend} outside the range"
            );
        }
        ports
    }

    /// The one SNAT port held towards `backend`.
    pub fn snat_port(&self, backend: std::net::SocketAddr) -> u16 {
        match self.snat_ports(backend)[..] {
            [port] => port,
            ref ports => panic!("SNAT ports towards {backend}: {ports:?}"),
        }
    }

    /// The directory the maps are pinned in (the agent's `--bpffs`).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir.0
    }

    /// Attaches the external programs to a device as the agent does (XDP redirect target
    /// included); call inside the device's namespace.
    pub fn attach_ext_device(
        &mut self,
        name: &str,
        ifindex: u32,
        mode: DatapathMode,
    ) -> anyhow::Result<Attached> {
        Ok(attach_external(
            &mut self.programs,
            &mut self.writer,
            name,
            ifindex,
            mode,
        )?)
    }

    /// Undoes [`Lb::attach_ext_device`].
    pub fn detach_ext_device(&mut self, name: &str, ifindex: u32) {
        detach_external(&mut self.programs, &mut self.writer, name, ifindex);
    }

    /// The size the kernel gave a map of this datapath (read from its pin).
    pub fn max_entries(&self, map: &str) -> anyhow::Result<u32> {
        let info = aya::maps::MapInfo::from_pin(self.pin_dir.0.join(map))
            .with_context(|| format!("map {map}"))?;
        Ok(info.max_entries())
    }

    /// A counter of `lb_ebpf::stats`, summed over CPUs.
    pub fn stat(&self, index: u32) -> u64 {
        self.programs.stat(index)
    }

    /// Runs `lb_tc_pod_ingress` (DNAT) on a frame and returns the frame it leaves.
    pub fn ingress(&mut self, frame: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.run(lb_ebpf::program_names::TC_POD_INGRESS, frame)
    }

    /// Runs `lb_tc_pod_ingress` on a frame: the verdict and the frame, whatever the verdict.
    pub fn ingress_verdict(&mut self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        let name = lb_ebpf::program_names::TC_POD_INGRESS;
        run_program(self.classifier(name)?, name, frame, None)
    }

    /// Runs `lb_tc_pod_egress` (reverse NAT) on a frame and returns the frame it leaves.
    pub fn egress(&mut self, frame: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.run(lb_ebpf::program_names::TC_POD_EGRESS, frame)
    }

    /// Like [`Lb::ingress`], on an skb in the CHECKSUM_COMPLETE state (as received from a NIC
    /// that checksums in hardware): the run fails with EBADMSG if the program leaves `skb->csum`
    /// out of step with the packet.
    pub fn ingress_checksum_complete(&mut self, frame: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.run_checksum_complete(lb_ebpf::program_names::TC_POD_INGRESS, frame)
    }

    /// Like [`Lb::egress`], on an skb in the CHECKSUM_COMPLETE state.
    pub fn egress_checksum_complete(&mut self, frame: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.run_checksum_complete(lb_ebpf::program_names::TC_POD_EGRESS, frame)
    }

    /// Like [`Lb::ingress_verdict`], on an skb in the CHECKSUM_COMPLETE state: the run fails
    /// with EBADMSG if the program leaves `skb->csum` out of step with the packet.
    pub fn ingress_checksum_complete_verdict(
        &mut self,
        frame: &[u8],
    ) -> anyhow::Result<(u32, Vec<u8>)> {
        self.run_checksum_complete_verdict(lb_ebpf::program_names::TC_POD_INGRESS, frame)
    }

    /// Like [`Lb::ext_ingress`], on an skb in the CHECKSUM_COMPLETE state.
    pub fn ext_ingress_checksum_complete(
        &mut self,
        frame: &[u8],
    ) -> anyhow::Result<(u32, Vec<u8>)> {
        self.run_checksum_complete_verdict(lb_ebpf::program_names::TC_EXT_INGRESS, frame)
    }

    /// The file descriptor of a TC program, for test runs from other threads
    /// (`lb_tests::rawbpf::test_run`); valid while `self` lives.
    pub fn program_fd(&mut self, name: &'static str) -> anyhow::Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        Ok(self
            .classifier(name)?
            .fd()
            .with_context(|| format!("program {name} is not loaded"))?
            .as_fd()
            .as_raw_fd())
    }

    /// Sets the expiry of every flow entry (both tables, both families) whose key `which`
    /// selects to `expires_ns` (`bpf_ktime_get_ns` time), as if time had passed; returns how
    /// many entries changed.
    pub fn set_flow_expiry(
        &self,
        which: impl Fn(u8) -> bool,
        expires_ns: u64,
    ) -> anyhow::Result<usize> {
        use lb_ebpf::{Flow4Key, Flow4Value, Flow6Key, Flow6Value, map_names};
        let mut changed = 0;
        for name in [map_names::FLOWS_V4, map_names::FLOWS_NEW_V4] {
            changed += self.rewrite_entries::<Flow4Key, Flow4Value>(name, |k, v| {
                which(k.dir).then(|| v.expires_ns = expires_ns).is_some()
            })?;
        }
        for name in [map_names::FLOWS_V6, map_names::FLOWS_NEW_V6] {
            changed += self.rewrite_entries::<Flow6Key, Flow6Value>(name, |k, v| {
                which(k.dir).then(|| v.expires_ns = expires_ns).is_some()
            })?;
        }
        Ok(changed)
    }

    /// Sets the expiry of every SNAT entry (both families), as [`Lb::set_flow_expiry`].
    pub fn set_snat_expiry(&self, expires_ns: u64) -> anyhow::Result<usize> {
        use lb_ebpf::{Snat4Key, Snat4Value, Snat6Key, Snat6Value, map_names};
        Ok(
            self.rewrite_entries::<Snat4Key, Snat4Value>(map_names::SNAT_V4, |_, v| {
                v.expires_ns = expires_ns;
                true
            })? + self.rewrite_entries::<Snat6Key, Snat6Value>(map_names::SNAT_V6, |_, v| {
                v.expires_ns = expires_ns;
                true
            })?,
        )
    }

    /// Rewrites the entries of a pinned map that `edit` changes (returning `true`); returns how
    /// many.
    fn rewrite_entries<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &str,
        edit: impl Fn(&K, &mut V) -> bool,
    ) -> anyhow::Result<usize> {
        let mut map = self.pinned_map::<K, V>(name)?;
        let entries: Vec<(K, V)> = map.iter().filter_map(Result::ok).collect();
        let mut changed = 0;
        for (key, mut value) in entries {
            if edit(&key, &mut value) {
                map.insert(key, value, 0)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// A hash or LRU map of this datapath, opened from its pin.
    fn pinned_map<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &str,
    ) -> anyhow::Result<aya::maps::HashMap<aya::maps::MapData, K, V>> {
        let data = aya::maps::MapData::from_pin(self.pin_dir.0.join(name))
            .with_context(|| format!("map {name}"))?;
        let map = aya::maps::Map::from_map_data(data).with_context(|| format!("map {name}"))?;
        aya::maps::HashMap::try_from(map).with_context(|| format!("map {name}"))
    }

    fn classifier(&mut self, name: &'static str) -> anyhow::Result<&mut SchedClassifier> {
        self.programs
            .ebpf_mut()
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()
            .with_context(|| format!("program {name} is not a classifier"))
    }

    fn run(&mut self, name: &'static str, frame: &[u8]) -> anyhow::Result<Vec<u8>> {
        let (verdict, out) = run_program(self.classifier(name)?, name, frame, None)?;
        check_verdict(name, verdict)?;
        Ok(out)
    }

    /// BPF_PROG_TEST_RUN by hand: aya 0.14 has no way to pass
    /// `BPF_F_TEST_SKB_CHECKSUM_COMPLETE` (its `TestRunAttrs` only sets the XDP flag).
    fn run_checksum_complete(
        &mut self,
        name: &'static str,
        frame: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        let (verdict, out) = self.run_checksum_complete_verdict(name, frame)?;
        check_verdict(name, verdict)?;
        Ok(out)
    }

    fn run_checksum_complete_verdict(
        &mut self,
        name: &'static str,
        frame: &[u8],
    ) -> anyhow::Result<(u32, Vec<u8>)> {
        let prog_fd = self
            .classifier(name)?
            .fd()
            .with_context(|| format!("program {name} is not loaded"))?
            .as_fd()
            .as_raw_fd();
        let run = lb_tests::rawbpf::test_run(
            prog_fd,
            frame,
            1,
            lb_tests::rawbpf::BPF_F_TEST_SKB_CHECKSUM_COMPLETE,
            DATA_OUT_LEN,
        )
        .with_context(|| {
            format!("BPF_PROG_TEST_RUN of {name} with BPF_F_TEST_SKB_CHECKSUM_COMPLETE")
        })?;
        Ok((run.retval, run.out))
    }
}

/// The counters of packets dropped or refused by rule, one per reason: a packet the datapath
/// drops or refuses raises exactly one of them, once.
pub const DROP_COUNTERS: [u32; 5] = [
    stats::NO_BACKEND,
    stats::SOURCE_RANGE_DROPPED,
    stats::NO_ENDPOINT_DROPPED,
    stats::SNAT_FAILED,
    stats::REJECTED,
];

/// Asserts the drop counters of a freshly loaded `lb`: each of `expected` at its value, every
/// other drop counter at 0, so a packet counted under two reasons fails.
pub fn assert_drops(lb: &Lb, expected: &[(u32, u64)], what: &str) {
    let name = |index: u32| {
        stats::NAMES
            .iter()
            .find(|(i, _)| *i == index)
            .map_or("?", |(_, name)| *name)
    };
    for index in DROP_COUNTERS {
        let want = expected
            .iter()
            .find(|(i, _)| *i == index)
            .map_or(0, |(_, n)| *n);
        assert_eq!(lb.stat(index), want, "{what}: counter {}", name(index));
    }
    for (index, _) in expected {
        assert!(
            DROP_COUNTERS.contains(index),
            "{what}: {} is not a drop counter",
            name(*index)
        );
    }
}

/// A ClusterIP frontend served by `backends`.
pub fn cluster_ip(frontend: Frontend, backends: &[SocketAddr]) -> (Frontend, FrontendState) {
    let state = FrontendState {
        owner: owner(frontend),
        kind: FrontendKind::ClusterIp,
        backends: backends_of(backends, &[]),
        internal_backends: None,
        local_only: false,
        source_ranges: None,
        session_affinity: None,
        reject: false,
    };
    (frontend, state)
}

/// The same frontend with `sessionAffinity: ClientIP` and this timeout in seconds.
pub fn with_affinity(
    (frontend, state): (Frontend, FrontendState),
    timeout_seconds: u32,
) -> (Frontend, FrontendState) {
    (
        frontend,
        FrontendState {
            session_affinity: Some(timeout_seconds),
            ..state
        },
    )
}

/// A frontend of a service port without any endpoint: connections are refused (kube-proxy's
/// REJECT).
pub fn rejecting(frontend: Frontend) -> (Frontend, FrontendState) {
    let (frontend, state) = cluster_ip(frontend, &[]);
    (
        frontend,
        FrontendState {
            reject: true,
            ..state
        },
    )
}

/// A frontend that takes traffic from outside the node, with its backends and its external
/// policy (every source, backends on every node, unless set otherwise); made by
/// [`External::node_port`] or [`External::load_balancer_ip`], finished by [`External::build`].
#[must_use = "an external frontend is programmed once built"]
pub struct External {
    frontend: Frontend,
    kind: FrontendKind,
    backends: Vec<SocketAddr>,
    local_backends: Vec<SocketAddr>,
    local_only: bool,
    source_ranges: Option<Vec<ipnet::IpNet>>,
    in_cluster: Option<Vec<SocketAddr>>,
    reject: bool,
}

impl External {
    /// A node port on `addr` (`ip:port`), without backends until some are added.
    pub fn node_port(addr: &str, protocol: Protocol) -> Self {
        Self::new(addr, protocol, FrontendKind::NodePort)
    }

    /// A load balancer IP and port, `addr`, without backends until some are added.
    pub fn load_balancer_ip(addr: &str, protocol: Protocol) -> Self {
        Self::new(addr, protocol, FrontendKind::LoadBalancer)
    }

    fn new(addr: &str, protocol: Protocol, kind: FrontendKind) -> Self {
        Self {
            frontend: Frontend {
                addr: addr.parse().expect("frontend address"),
                protocol,
            },
            kind,
            backends: Vec::new(),
            local_backends: Vec::new(),
            local_only: false,
            source_ranges: None,
            in_cluster: None,
            reject: false,
        }
    }

    /// What in-cluster clients get instead (the plan sets it for `externalTrafficPolicy:
    /// Local`): these backends, on other nodes.
    pub fn in_cluster(mut self, backends: &[&str]) -> Self {
        self.in_cluster = Some(parse(backends));
        self
    }

    /// Adds backends on this node: reached from outside without SNAT.
    pub fn local(mut self, backends: &[&str]) -> Self {
        let backends = parse(backends);
        self.local_backends.extend(&backends);
        self.backends.extend(backends);
        self
    }

    /// Adds backends on other nodes: reached from outside through SNAT.
    pub fn remote(mut self, backends: &[&str]) -> Self {
        self.backends.extend(parse(backends));
        self
    }

    /// `externalTrafficPolicy: Local`: local backends only, the client address kept.
    pub fn local_only(mut self) -> Self {
        self.local_only = true;
        self
    }

    /// `loadBalancerSourceRanges` of the frontend's family (as the plan leaves them): only
    /// clients in these CIDRs get in.
    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.source_ranges.get_or_insert_with(Vec::new).extend(
            ranges
                .iter()
                .map(|r| r.parse::<ipnet::IpNet>().expect("CIDR")),
        );
        self
    }

    /// No endpoint anywhere: connections are refused.
    pub fn rejecting(mut self) -> Self {
        self.reject = true;
        self
    }

    /// The frontend and its state, for [`Lb::apply_states`].
    pub fn build(self) -> (Frontend, FrontendState) {
        let source_ranges = self.source_ranges.map(|mut r| {
            r.sort();
            r.dedup();
            r
        });
        let state = FrontendState {
            owner: owner(self.frontend),
            kind: self.kind,
            backends: backends_of(&self.backends, &self.local_backends),
            internal_backends: self
                .in_cluster
                .map(|b| backends_of(&b, &self.local_backends)),
            local_only: self.local_only,
            source_ranges,
            session_affinity: None,
            reject: self.reject,
        };
        (self.frontend, state)
    }
}

/// The service port the test frontends belong to, `test/<frontend>`, for the agent's messages.
fn owner(frontend: Frontend) -> ServicePortName {
    ServicePortName {
        service: NamespacedName {
            namespace: "test".into(),
            name: frontend.to_string(),
        },
        port: String::new(),
        protocol: frontend.protocol,
        family: IpFamily::of(&frontend.addr.ip()),
    }
}

/// Backend addresses written in a test.
fn parse(backends: &[&str]) -> Vec<SocketAddr> {
    backends
        .iter()
        .map(|b| b.parse().expect("backend address"))
        .collect()
}

/// Sorted and without duplicates, as the plan keeps backends, each marked local when in
/// `local`.
fn backends_of(backends: &[SocketAddr], local: &[SocketAddr]) -> Vec<Backend> {
    let mut addrs = backends.to_vec();
    addrs.sort();
    addrs.dedup();
    addrs
        .into_iter()
        .map(|addr| Backend {
            addr,
            local: local.contains(&addr),
        })
        .collect()
}

/// Runs a program once on `frame` (with a context, for XDP's ingress device): its verdict and
/// the frame it leaves.
fn run_program<P>(
    program: &mut P,
    name: &str,
    frame: &[u8],
    ctx_in: Option<&[u8]>,
) -> anyhow::Result<(u32, Vec<u8>)>
where
    P: for<'a> aya::programs::TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::TestRunResult>,
{
    let mut out = vec![0; DATA_OUT_LEN];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in,
            ..TestRunOptions::new()
        })
        .with_context(|| format!("BPF_PROG_TEST_RUN of {name}"))?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

fn check_verdict(name: &str, verdict: u32) -> anyhow::Result<()> {
    if verdict != TC_ACT_OK {
        bail!("{name} returned {verdict} instead of TC_ACT_OK");
    }
    Ok(())
}
