//! A loaded datapath of its own per test: maps pinned in a directory named after the process and
//! a counter (tests run in parallel threads), programmed through the agent's real writer, and the
//! TC programs run on crafted frames with BPF_PROG_TEST_RUN.
//!
//! The frontends the tests program are built here, and only here: [`cluster_ip`],
//! [`rejecting`], and [`External::node_port`] or [`External::load_balancer_ip`]. They are
//! the tests' one place that writes the model's `FrontendState` and `ExternalPolicy`.

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
    bpf::{BpfMaps, Datapath, LoadOptions, SocketLb},
    datapath::Writer,
    model::{ExternalPolicy, Frontend, FrontendState, Protocol},
};

/// Where bpffs is mounted on the test machines.
const BPFFS: &str = "/sys/fs/bpf";
/// `TC_ACT_OK` (`linux/pkt_cls.h`): the packet goes on, translated or not.
pub const TC_ACT_OK: u32 = 0;
/// `TC_ACT_SHOT`: the packet is dropped.
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT`: the program sent the packet out itself (a reset back to the client).
pub const TC_ACT_REDIRECT: u32 = 7;
/// Room for the output frame: larger than any frame these tests build (the programs never grow
/// a packet), so BPF_PROG_TEST_RUN never fails with ENOSPC.
const DATA_OUT_LEN: usize = 4096;

const MAX_SERVICES: u32 = 1024;
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
    datapath: Datapath,
    writer: Writer<BpfMaps>,
    /// Declared last: the directory goes after the maps and programs are closed.
    _pin_dir: PinDir,
}

impl Lb {
    /// Loads both programs with fresh maps. Failing to load fails the test: it never skips.
    pub fn load() -> anyhow::Result<Self> {
        let pin_dir = PinDir::new();
        let (datapath, maps) = Datapath::load(&LoadOptions {
            pin_dir: pin_dir.0.clone(),
            max_services: MAX_SERVICES,
            max_backends: MAX_BACKENDS,
            max_flows: MAX_FLOWS,
            max_sockets: 1024,
            socket_lb: SocketLb::Off,
        })
        .with_context(|| {
            format!(
                "loading the datapath with maps under {} (needs root and bpffs)",
                pin_dir.0.display()
            )
        })?;
        Ok(Self {
            datapath,
            writer: Writer::new(maps, MAX_BACKENDS),
            _pin_dir: pin_dir,
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
            .datapath
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

    /// The writer's maps, for settings outside the service table (the node's SNAT address).
    pub fn maps_mut(&mut self) -> &mut BpfMaps {
        self.writer.maps_mut()
    }

    pub fn maps(&self) -> &BpfMaps {
        self.writer.maps()
    }

    /// The loaded programs, for attaching them to devices.
    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.datapath
    }

    /// A counter of `lb_ebpf::stats`, summed over CPUs.
    pub fn stat(&self, index: u32) -> u64 {
        self.maps().stat(index)
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

    fn classifier(&mut self, name: &'static str) -> anyhow::Result<&mut SchedClassifier> {
        self.datapath
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
        check_verdict(name, run.retval)?;
        Ok(run.out)
    }
}

/// A ClusterIP frontend served by `backends`.
pub fn cluster_ip(frontend: Frontend, backends: &[SocketAddr]) -> (Frontend, FrontendState) {
    let state = FrontendState {
        service_port: service_port(frontend),
        backends: sorted(backends.to_vec()),
        ..FrontendState::default()
    };
    (frontend, state)
}

/// A frontend of a service port without any endpoint: connections are refused (kube-proxy's
/// REJECT).
pub fn rejecting(frontend: Frontend) -> (Frontend, FrontendState) {
    let state = FrontendState {
        service_port: service_port(frontend),
        reject: true,
        ..FrontendState::default()
    };
    (frontend, state)
}

/// A frontend that takes traffic from outside the node, with its backends and its external
/// policy (every source, backends on every node, unless set otherwise); made by
/// [`External::node_port`] or [`External::load_balancer_ip`], finished by [`External::build`].
#[must_use = "an external frontend is programmed once built"]
pub struct External {
    frontend: Frontend,
    backends: Vec<SocketAddr>,
    local_backends: Vec<SocketAddr>,
    local_only: bool,
    source_ranges: Vec<ipnet::IpNet>,
}

impl External {
    /// A node port on `addr` (`ip:port`), without backends until some are added.
    pub fn node_port(addr: &str, protocol: Protocol) -> Self {
        Self::new(addr, protocol)
    }

    /// A load balancer IP and port, `addr`, without backends until some are added.
    pub fn load_balancer_ip(addr: &str, protocol: Protocol) -> Self {
        Self::new(addr, protocol)
    }

    fn new(addr: &str, protocol: Protocol) -> Self {
        Self {
            frontend: Frontend {
                addr: addr.parse().expect("frontend address"),
                protocol,
            },
            backends: Vec::new(),
            local_backends: Vec::new(),
            local_only: false,
            source_ranges: Vec::new(),
        }
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

    /// `loadBalancerSourceRanges`: only clients in these CIDRs get in.
    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.source_ranges.extend(
            ranges
                .iter()
                .map(|r| r.parse::<ipnet::IpNet>().expect("CIDR")),
        );
        self
    }

    /// The frontend and its state, for [`Lb::apply_states`].
    pub fn build(self) -> (Frontend, FrontendState) {
        let state = FrontendState {
            service_port: service_port(self.frontend),
            backends: sorted(self.backends),
            local_backends: sorted(self.local_backends),
            external: Some(ExternalPolicy {
                local_only: self.local_only,
                source_ranges: self.source_ranges,
            }),
            reject: false,
        };
        (self.frontend, state)
    }
}

/// The name the test frontends' service ports get, for the agent's messages.
fn service_port(frontend: Frontend) -> String {
    format!("test/{frontend}")
}

/// Backend addresses written in a test.
fn parse(backends: &[&str]) -> Vec<SocketAddr> {
    backends
        .iter()
        .map(|b| b.parse().expect("backend address"))
        .collect()
}

/// Sorted and without duplicates, as the model keeps backends.
fn sorted(mut backends: Vec<SocketAddr>) -> Vec<SocketAddr> {
    backends.sort();
    backends.dedup();
    backends
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
