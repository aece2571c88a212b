//! Per-packet cost of the TC ingress program (DNAT) through BPF_PROG_TEST_RUN, with 1 to
//! 100 000 services programmed, against an empty TC program measured the same way.
//!
//! Run by `cargo xtask bench` (needs root), or by hand: `cargo bench -p lb-agent --bench
//! datapath -- --services 1,1000,10000,100000`. Prints one JSON object per line on stdout
//! (machine-readable, read by xtask); progress goes to stderr. Run as a test (`cargo test
//! --all-targets`), it makes one small pass to show that it still works ([`Args::from_env`]).
//!
//! How each case is measured, and why:
//! - Every timed run is a BPF_PROG_TEST_RUN with `repeat = 1` on a fresh copy of the frame, and
//!   the kernel's own per-run `duration` is recorded (ns; it includes the test-run timer's
//!   `ktime_get_ns()`, which the floor includes too). `repeat > 1` cannot measure a translated
//!   packet: the kernel runs every repetition on the same skb, which the first run has already
//!   rewritten to the backend (`repeat_check` in the output shows it: 100 repetitions, one
//!   translation), so later repetitions measure a packet that is not for a service.
//! - New flow: a TCP SYN from a tuple never used before (source address and port from a global
//!   counter), to a service chosen at random among the N, so service map lookups meet cold
//!   entries as they would on a busy node.
//! - New flow to one service: the same, always to the first service, whose map entries then
//!   stay in the cache; the difference to the above is what cache misses cost at N.
//! - Established flow: a TCP ACK of one of 1 000 flows opened beforehand (each to a random
//!   service), chosen at random per run.
//! - Floor: a two-instruction TC program (`r0 = TC_ACT_OK; exit`) loaded from bytes assembled
//!   here, run on the same frames the same way.
//! - Cases are interleaved in rounds (rotating order), so machine noise hits all of them alike;
//!   each N gets a freshly loaded datapath, so flow tables hold the same number of flows at
//!   every N.
//!
//! Services are written straight into the maps through the agent's `MapOps` (the same entries
//! its writer produces): the writer hands out 16-bit reverse-NAT IDs, so it stops at 65 535
//! frontends, below the 100 000 this benchmark programs.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::PathBuf,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use aya::programs::SchedClassifier;
use clap::Parser;
use lb_agent::{
    kernel::{LoadOptions, Programs, ServiceCounterLevel, SocketLb},
    lbmap::{BackendKey, MapOps as _, Vip, bpf::BpfMaps},
    model::{Frontend, Protocol},
};
use lb_ebpf::{ServiceValue, program_names, stats};
use lb_tests::rawbpf::TestRun;

/// Backends per service: 10, the service size the performance targets in BENCHMARKS.md are
/// stated for.
const BACKENDS: u32 = 10;
/// Service port, and backend port.
const PORT: u16 = 8080;
/// Established flows opened before the established-flow runs.
const ESTABLISHED_FLOWS: usize = 1_000;
/// Repetitions of the floor's amortised measurement (`repeat`), for reference.
const FLOOR_REPEAT: u32 = 1_000_000;
/// Room for the output frame; the program never grows a packet.
const DATA_OUT_LEN: usize = 256;
/// Service map entries per service: the frontend and one slot per backend.
const ENTRIES_PER_SERVICE: u32 = BACKENDS + 1;

/// `TC_ACT_OK` from `linux/pkt_cls.h`.
const TC_ACT_OK: u32 = 0;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[derive(Parser)]
#[command(about = "Per-packet cost of the TC ingress program through BPF_PROG_TEST_RUN")]
struct Args {
    /// Numbers of services to measure at, ascending, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000,100000")]
    services: Vec<u32>,
    /// Timed runs per case and number of services.
    #[arg(long, default_value_t = 20_000)]
    runs: usize,
    /// Rounds the runs are split into (cases rotate within each round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// What the per-frontend traffic counters count (the agent's `--service-counters`).
    #[arg(long, value_enum, default_value_t = ServiceCounterLevel::Flows)]
    service_counters: ServiceCounterLevel,
    /// Set by `cargo bench` (and xtask): measure, rather than run as a test.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The name cargo gives this target, which test name filters are matched against.
const TARGET: &str = "datapath";

impl Args {
    /// What to run, or `None` for nothing. `cargo bench` passes `--bench`; without it, cargo
    /// runs this target as a test (`cargo test --benches` or `--all-targets`) with libtest's
    /// arguments instead of ours, and one small pass checks that the benchmark still runs end
    /// to end, unless the test run only lists tests or filters by names that `datapath` does
    /// not contain.
    fn from_env() -> Option<Self> {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        if argv.iter().any(|a| a == "--bench") {
            return Some(Self::parse());
        }
        let filters: Vec<&String> = argv.iter().filter(|a| !a.starts_with('-')).collect();
        let filtered_out = !filters.is_empty() && !filters.iter().any(|f| TARGET.contains(*f));
        if filtered_out || argv.iter().any(|a| a == "--list") {
            return None;
        }
        Some(Self {
            services: vec![1],
            runs: 100,
            rounds: 1,
            service_counters: ServiceCounterLevel::Packets,
            bench: false,
        })
    }
}

/// Summary of one case at one N, printed as a JSON line.
fn summary(n: u32, case: &str, samples: &mut [u32]) -> serde_json::Value {
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    let mean = samples.iter().map(|&s| f64::from(s)).sum::<f64>() / samples.len() as f64;
    serde_json::json!({
        "n": n,
        "case": case,
        "runs": samples.len(),
        "median_ns": pct(0.5),
        "p10_ns": pct(0.1),
        "p90_ns": pct(0.9),
        "p99_ns": pct(0.99),
        "mean_ns": (mean * 10.0).round() / 10.0,
    })
}

/// BPF_PROG_TEST_RUN by hand, so the floor (not an aya program) and the load balancer's
/// programs go through exactly the same call.
fn test_run(prog_fd: i32, frame: &[u8], repeat: u32) -> anyhow::Result<TestRun> {
    lb_tests::rawbpf::test_run(prog_fd, frame, repeat, 0, DATA_OUT_LEN).context("BPF_PROG_TEST_RUN")
}

/// Loads `r0 = TC_ACT_OK; exit` as a TC classifier: the cheapest program BPF_PROG_TEST_RUN can
/// run, so its cost is the floor of what any TC program costs measured this way.
fn load_floor() -> anyhow::Result<OwnedFd> {
    lb_tests::rawbpf::load_return_program(
        lb_tests::rawbpf::BPF_PROG_TYPE_SCHED_CLS,
        TC_ACT_OK,
        "bench_floor",
    )
    .context("BPF_PROG_LOAD of the floor program")
}

/// A small deterministic PRNG (xorshift64*): reproducible choices, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

fn ones_complement_sum(data: &[u8]) -> u32 {
    let mut sum = 0_u32;
    for chunk in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame with a 20-byte TCP header (no payload), checksums correct.
fn tcp_frame(src: SocketAddr, dst: SocketAddr, flags: u8) -> Vec<u8> {
    let mut tcp = vec![0_u8; 20];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&1_u32.to_be_bytes());
    if flags & TCP_ACK != 0 {
        tcp[8..12].copy_from_slice(&1_u32.to_be_bytes());
    }
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64_240_u16.to_be_bytes());
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    let pseudo: Vec<u8> = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame.extend_from_slice(&0x0800_u16.to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let csum = fold(ones_complement_sum(&ip));
            ip[10..12].copy_from_slice(&csum.to_be_bytes());
            frame.extend_from_slice(&ip);
            [&s.octets()[..], &d.octets(), &[0, 6, 0, 20]].concat()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame.extend_from_slice(&0x86dd_u16.to_be_bytes());
            frame.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
            frame.extend_from_slice(&s.octets());
            frame.extend_from_slice(&d.octets());
            [&s.octets()[..], &d.octets(), &[0, 0, 0, 20, 0, 0, 0, 6]].concat()
        }
        _ => unreachable!("addresses of one family"),
    };
    let csum = fold(ones_complement_sum(&pseudo) + ones_complement_sum(&tcp));
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    frame.extend_from_slice(&tcp);
    frame
}

/// Destination address of a frame built by [`tcp_frame`] (or translated from one).
fn frame_destination(frame: &[u8]) -> Option<IpAddr> {
    match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        0x0800 => Some(IpAddr::from(<[u8; 4]>::try_from(frame.get(30..34)?).ok()?)),
        0x86dd => Some(IpAddr::from(<[u8; 16]>::try_from(frame.get(38..54)?).ok()?)),
        _ => None,
    }
}

/// The address family of a case.
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Self::V4 => "v4",
            Self::V6 => "v6",
        }
    }
    fn vip(self, service: u32) -> IpAddr {
        match self {
            Self::V4 => Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + service).into(),
            Self::V6 => Ipv6Addr::from(
                u128::from(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 1)) + u128::from(service),
            )
            .into(),
        }
    }
    fn backend(self, b: u32) -> IpAddr {
        match self {
            Self::V4 => Ipv4Addr::new(10, 200, b as u8 + 2, 2).into(),
            Self::V6 => Ipv6Addr::new(0xfd00, 0x200, b as u16 + 2, 0, 0, 0, 0, 2).into(),
        }
    }
    /// Client tuple number `k`: never reused within a process.
    fn client(self, k: u32) -> SocketAddr {
        let port = 1024 + (k % 60_000) as u16;
        let host = k / 60_000;
        let ip: IpAddr = match self {
            Self::V4 => Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + host).into(),
            Self::V6 => Ipv6Addr::from(
                u128::from(Ipv6Addr::new(0xfd00, 0x128, 0, 0, 0, 0, 0, 1)) + u128::from(host),
            )
            .into(),
        };
        SocketAddr::new(ip, port)
    }
    fn backend_id(self, b: u32) -> u32 {
        match self {
            Self::V4 => 1 + b,
            Self::V6 => 1 + BACKENDS + b,
        }
    }
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// Writes services `from..to` of both families: frontend in slot 0, one backend per slot.
fn program_services(maps: &mut BpfMaps, from: u32, to: u32) -> anyhow::Result<()> {
    for family in FAMILIES {
        for i in from..to {
            let frontend = Vip::from(Frontend {
                addr: SocketAddr::new(family.vip(i), PORT),
                protocol: Protocol::Tcp,
            });
            for slot in 1..=BACKENDS {
                // Slots start at a different backend per service, as independent services would.
                let b = (i + slot) % BACKENDS;
                let value = ServiceValue {
                    backend_id: family.backend_id(b),
                    count: 0,
                    rev_nat_id: 0,
                    flags: 0,
                    _pad: [0; 3],
                };
                maps.put_slot(&frontend, slot as u16, &value)?;
            }
            let value = ServiceValue {
                backend_id: 0,
                count: BACKENDS as u16,
                rev_nat_id: (i % u32::from(u16::MAX)) as u16 + 1,
                flags: 0,
                _pad: [0; 3],
            };
            maps.put_slot(&frontend, 0, &value)?;
        }
    }
    Ok(())
}

/// One timed case.
#[derive(Clone, Copy)]
enum Case {
    Floor,
    New(Family),
    /// A new flow, always to the first service: the same frontend entries every run (hot in
    /// the cache), to tell cache misses on service entries apart from the cost of N itself.
    NewOneService(Family),
    Established(Family),
}

impl Case {
    fn name(self) -> String {
        match self {
            Self::Floor => "floor".into(),
            Self::New(f) => format!("{}_new", f.name()),
            Self::NewOneService(f) => format!("{}_new_one_service", f.name()),
            Self::Established(f) => format!("{}_established", f.name()),
        }
    }
}

const CASES: [Case; 6] = [
    Case::Floor,
    Case::New(Family::V4),
    Case::NewOneService(Family::V4),
    Case::Established(Family::V4),
    Case::New(Family::V6),
    Case::Established(Family::V6),
];

struct Bench {
    ingress_fd: i32,
    egress_fd: i32,
    floor_fd: i32,
    rng: Rng,
    /// Next never-used client tuple.
    next_client: u32,
    backends_v4: Vec<IpAddr>,
    backends_v6: Vec<IpAddr>,
}

impl Bench {
    fn fresh_client(&mut self, family: Family) -> SocketAddr {
        self.next_client += 1;
        family.client(self.next_client)
    }

    fn backends(&self, family: Family) -> &[IpAddr] {
        match family {
            Family::V4 => &self.backends_v4,
            Family::V6 => &self.backends_v6,
        }
    }

    /// Runs the ingress program once and checks it translated the frame to a backend.
    fn translate(&self, family: Family, frame: &[u8]) -> anyhow::Result<u32> {
        let r = test_run(self.ingress_fd, frame, 1)?;
        ensure!(r.retval == TC_ACT_OK, "ingress returned {}", r.retval);
        let dst = frame_destination(&r.out).context("output frame")?;
        ensure!(
            self.backends(family).contains(&dst),
            "ingress left the frame to {dst}, not to a backend"
        );
        Ok(r.duration_ns)
    }

    /// Opens flows to random services among `n`, each with a whole handshake (the SYN, the
    /// backend's SYN-ACK through the egress program, the client's ACK), so that it is
    /// confirmed as an established connection is; returns (client, service) per flow.
    fn open_flows(
        &mut self,
        family: Family,
        n: u32,
    ) -> anyhow::Result<Vec<(SocketAddr, SocketAddr)>> {
        (0..ESTABLISHED_FLOWS)
            .map(|_| {
                let client = self.fresh_client(family);
                let vip = SocketAddr::new(family.vip(self.rng.below(n)), PORT);
                let syn = test_run(self.ingress_fd, &tcp_frame(client, vip, TCP_SYN), 1)?;
                let backend =
                    SocketAddr::new(frame_destination(&syn.out).context("SYN output")?, PORT);
                let synack = tcp_frame(backend, client, TCP_SYN | TCP_ACK);
                let r = test_run(self.egress_fd, &synack, 1)?;
                ensure!(r.retval == TC_ACT_OK, "egress returned {}", r.retval);
                self.translate(family, &tcp_frame(client, vip, TCP_ACK))?;
                Ok((client, vip))
            })
            .collect()
    }

    fn run_case(
        &mut self,
        case: Case,
        n: u32,
        flows: &[(SocketAddr, SocketAddr)],
    ) -> anyhow::Result<u32> {
        match case {
            Case::Floor => {
                // The same kind of frame as the other cases.
                let client = self.fresh_client(Family::V4);
                let vip = SocketAddr::new(Family::V4.vip(self.rng.below(n)), PORT);
                let r = test_run(self.floor_fd, &tcp_frame(client, vip, TCP_SYN), 1)?;
                ensure!(r.retval == TC_ACT_OK, "floor returned {}", r.retval);
                Ok(r.duration_ns)
            }
            Case::New(family) => {
                let client = self.fresh_client(family);
                let vip = SocketAddr::new(family.vip(self.rng.below(n)), PORT);
                self.translate(family, &tcp_frame(client, vip, TCP_SYN))
            }
            Case::NewOneService(family) => {
                let client = self.fresh_client(family);
                let vip = SocketAddr::new(family.vip(0), PORT);
                self.translate(family, &tcp_frame(client, vip, TCP_SYN))
            }
            Case::Established(family) => {
                let (client, vip) = flows[self.rng.below(flows.len() as u32) as usize];
                self.translate(family, &tcp_frame(client, vip, TCP_ACK))
            }
        }
    }
}

fn classifier_fd(dp: &mut Programs, name: &'static str) -> anyhow::Result<i32> {
    let prog: &mut SchedClassifier = dp
        .ebpf_mut()
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a classifier"))?;
    Ok(prog
        .fd()
        .with_context(|| format!("program {name} is not loaded"))?
        .as_fd()
        .as_raw_fd())
}

/// A pin directory of this process, removed on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> anyhow::Result<()> {
    let Some(args) = Args::from_env() else {
        return Ok(());
    };
    ensure!(
        !args.services.is_empty() && args.services.windows(2).all(|w| w[0] < w[1]),
        "--services must be ascending"
    );
    ensure!(
        args.rounds > 0 && args.runs >= args.rounds,
        "--runs must be >= --rounds > 0"
    );
    // New flows never reuse a tuple: size the flow table above everything one N opens, so no
    // LRU eviction happens during the runs.
    let max_flows = u32::try_from((CASES.len() - 1) * 2 * (args.runs + ESTABLISHED_FLOWS) + 4_096)?
        .next_power_of_two();
    let floor = load_floor()?;
    let mut bench = Bench {
        ingress_fd: -1,
        egress_fd: -1,
        floor_fd: floor.as_raw_fd(),
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        next_client: 0,
        backends_v4: (0..BACKENDS).map(|b| Family::V4.backend(b)).collect(),
        backends_v6: (0..BACKENDS).map(|b| Family::V6.backend(b)).collect(),
    };
    for (i, &n) in args.services.iter().enumerate() {
        // A fresh datapath per N: every N starts from empty flow tables and the same history.
        let pin_dir = PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/lb-bench-{}-{n}",
            std::process::id()
        )));
        let _ = std::fs::remove_dir_all(&pin_dir.0);
        let mut dp = Programs::load(&LoadOptions {
            pin_dir: pin_dir.0.clone(),
            max_services: n * ENTRIES_PER_SERVICE + 1_024,
            max_backends: 1_024,
            max_flows,
            max_new_flows: max_flows,
            max_snat: max_flows,
            max_sockets: 1_024,
            max_affinity: 1_024,
            socket_lb: SocketLb::Off,
            socket_lb_scope: Default::default(),
            service_counters: args.service_counters,
            timeouts: Default::default(),
            snat_ports: Default::default(),
        })
        .context("loading the datapath (needs root and bpffs)")?;
        let mut maps = BpfMaps::take(dp.ebpf_mut())?;
        bench.ingress_fd = classifier_fd(&mut dp, program_names::TC_POD_INGRESS)?;
        bench.egress_fd = classifier_fd(&mut dp, program_names::TC_POD_EGRESS)?;
        for family in FAMILIES {
            for b in 0..BACKENDS {
                let key = BackendKey {
                    addr: SocketAddr::new(family.backend(b), PORT),
                    protocol: Protocol::Tcp,
                    local: true,
                };
                maps.put_backend(family.backend_id(b), &key)?;
            }
        }
        let started = Instant::now();
        program_services(&mut maps, 0, n)?;
        eprintln!(
            "datapath bench: {n} services per family programmed ({} map entries) in {:.1} s",
            2 * n * ENTRIES_PER_SERVICE,
            started.elapsed().as_secs_f64()
        );
        let frame = tcp_frame(
            bench.fresh_client(Family::V4),
            SocketAddr::new(Family::V4.vip(0), PORT),
            TCP_SYN,
        );
        if i == 0 {
            // repeat > 1 reruns the program on the skb the first run rewrote: one translation.
            let before = dp.stat(stats::TRANSLATED);
            test_run(bench.ingress_fd, &frame, 100)?;
            println!(
                "{}",
                serde_json::json!({
                    "case": "repeat_check",
                    "repeat": 100,
                    "translated": dp.stat(stats::TRANSLATED) - before,
                })
            );
        }
        let flows = [
            bench.open_flows(Family::V4, n)?,
            bench.open_flows(Family::V6, n)?,
        ];
        let mut samples: Vec<Vec<u32>> = vec![Vec::with_capacity(args.runs); CASES.len()];
        let per_round = args.runs / args.rounds;
        for round in 0..args.rounds {
            for k in 0..CASES.len() {
                let c = (k + round) % CASES.len();
                let case = CASES[c];
                let family_flows = match case {
                    Case::Established(Family::V6) => &flows[1],
                    _ => &flows[0],
                };
                for _ in 0..per_round {
                    let ns = bench.run_case(case, n, family_flows)?;
                    samples[c].push(ns);
                }
            }
        }
        for (case, s) in CASES.iter().zip(samples.iter_mut()) {
            println!("{}", summary(n, &case.name(), s));
        }
        let amortised = test_run(bench.floor_fd, &frame, FLOOR_REPEAT)?;
        println!(
            "{}",
            serde_json::json!({
                "n": n,
                "case": "floor_repeat",
                "repeat": FLOOR_REPEAT,
                "mean_ns": amortised.duration_ns,
            })
        );
        let failed = dp.stat(stats::FLOW_UPDATE_FAILED);
        if failed > 0 {
            bail!("{failed} flow entries could not be written: the flow table was too small");
        }
        // Programs and maps go before their pin directory.
        drop(maps);
        drop(dp);
        drop(pin_dir);
    }
    Ok(())
}
