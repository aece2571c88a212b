//! BENCHMARKS.md: the machine, one markdown table per section with absolute figures and ratios,
//! and the performance targets marked met or missed: per-packet cost at the largest N within
//! 15 % of its cost at 1 service and within 3x of an empty program's, new connections per
//! second at least iptables' (3x at 10 000 services) and within 10 % of the direct path's,
//! throughput within 5 % of the direct path's. Everything above the notes marker is rewritten
//! by each run; the hand-written notes below it are kept.

use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

use anyhow::Context as _;

use super::{
    Config,
    datapath::Results as Datapath,
    e2e::{NResult, Proxy, Results as Proxies, med, quantile},
};

/// Everything below this line in BENCHMARKS.md survives a new run.
pub const NOTES_MARKER: &str = "<!-- notes: kept across runs of cargo xtask bench -->";

/// The machine and what else ran on it.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
    pub date: String,
    pub commit: String,
    pub load_before: String,
    pub load_after: String,
    pub compilers_before: usize,
    pub compilers_after: usize,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Compiler and linker processes running now: other engineers' builds on a shared machine.
fn compilers() -> usize {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .filter(|c| matches!(c.trim(), "rustc" | "cc1" | "ld" | "cc" | "bpf-linker"))
                .count()
        })
        .unwrap_or(0)
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let dirty =
            !first_line("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
                .unwrap_or_else(|| "unknown".into()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            memory_gib: mem_kb / 1024.0 / 1024.0,
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit: format!(
                "{}{}",
                first_line("git", &["rev-parse", "--short", "HEAD"]),
                if dirty {
                    " with uncommitted changes"
                } else {
                    ""
                }
            ),
            load_before: loadavg(),
            compilers_before: compilers(),
            ..Self::default()
        }
    }

    pub fn finish(&mut self) {
        self.load_after = loadavg();
        self.compilers_after = compilers();
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".into()
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**missed**" }
}

fn rate(r: &NResult, p: Proxy) -> f64 {
    med(&r
        .rates
        .get(&p)
        .map(|v| v.iter().map(|x| x.per_second).collect::<Vec<_>>())
        .unwrap_or_default())
}

fn gbps(r: &NResult, p: Proxy) -> f64 {
    med(r.gbps.get(&p).map(Vec::as_slice).unwrap_or_default())
}

fn change_p(r: &NResult, p: Proxy, q: f64) -> f64 {
    quantile(
        r.change_ms.get(&p).map(Vec::as_slice).unwrap_or_default(),
        q,
    )
}

fn program_ms(r: &NResult, p: Proxy) -> f64 {
    r.program.get(&p).map_or(f64::NAN, |x| x.wall_ms)
}

fn section1(out: &mut String, cfg: &Config, d: &Datapath) {
    let _ = writeln!(
        out,
        "## 1. Per-packet cost of the TC ingress program (BPF_PROG_TEST_RUN)\n\n\
         `lb_tc_pod_ingress` run by the kernel on a crafted Ethernet frame, {} timed runs per case \
         and N in {} interleaved rounds, with N services per family programmed (10 backends \
         each, N x 11 service map entries per family). Each run is one BPF_PROG_TEST_RUN with \
         `repeat = 1` and the kernel's own `duration` is kept: with `repeat > 1` the kernel \
         reruns the program on the skb the first run already translated (here: {}), so only the \
         first repetition would be measured for what it is. **New flow**: a TCP SYN from a \
         tuple never seen before (fresh source address and port per run) to a service chosen at \
         random among the N. **New one service**: the same, always to the first service, whose \
         map entries then stay in the CPU cache: the gap between the two is what cache misses \
         on service entries cost at N. **Established**: a TCP ACK of one of 1 000 open flows chosen at \
         random. **Floor**: a two-instruction TC program (`r0 = TC_ACT_OK; exit`) assembled at \
         bench time and run the same way; its cost is the test-run machinery's \
         ({} ns amortised over 10^6 repetitions). Each N runs on a freshly loaded datapath, so \
         the flow tables hold as many flows at every N.\n",
        cfg.datapath_runs,
        cfg.datapath_rounds,
        d.repeat_check.map_or_else(
            || "not checked".into(),
            |(rep, tr)| format!("{rep} repetitions of a SYN to a service counted {tr} translation")
        ),
        d.floor_repeat_ns
            .first()
            .map_or_else(|| "-".into(), |(_, ns)| num(*ns, 0)),
    );
    let _ = writeln!(
        out,
        "| services | case | median ns | p90 ns | p99 ns | median vs floor | median vs 1 service |\n\
         |---:|---|---:|---:|---:|---:|---:|"
    );
    for &n in &d.services {
        let floor = d.get(n, "floor").map_or(f64::NAN, |c| c.median_ns);
        for case in [
            "floor",
            "v4_new",
            "v4_new_one_service",
            "v4_established",
            "v6_new",
            "v6_established",
        ] {
            let Some(c) = d.get(n, case) else { continue };
            let at1 = d.get(d.services[0], case).map_or(f64::NAN, |c| c.median_ns);
            let _ = writeln!(
                out,
                "| {n} | {} | {} | {} | {} | {} | {} |",
                case.replace('_', " "),
                num(c.median_ns, 0),
                num(c.p90_ns, 0),
                num(c.p99_ns, 0),
                ratio(c.median_ns, floor),
                ratio(c.median_ns, at1)
            );
        }
    }
    out.push('\n');
}

fn section2(out: &mut String, cfg: &Config, p: &Proxies) {
    let _ = writeln!(
        out,
        "## 2. Proxies side by side: short connections and bulk throughput\n\n\
         One namespace topology per path (node namespace, a client pod, 10 backend pods with an \
         HTTP server each, IPv4), all alive at once; measurements rotate through the paths \
         round by round. **lb**: the agent (`{}`) with its TC programs on the pod devices. \
         **iptables**: kube-proxy's iptables-mode ruleset (`KUBE-SERVICES` -> `KUBE-SVC-*` with \
         `statistic --mode random --probability` -> `KUBE-SEP-*` DNAT, plus the masquerade \
         and forward chains) loaded with `iptables-restore` into the node namespace. \
         **nftables**: kube-proxy's nftables-mode ruleset (table `ip kube-proxy`, \
         `service-ips` verdict map, per-service chains picking an endpoint with `numgen random \
         mod 10 vmap`, per-endpoint DNAT chains) loaded with `nft -f`. **direct**: the client \
         connects to the backend pods' own addresses, nothing in between. The agent is paused \
         (SIGSTOP) while the other paths are measured, as kube-proxy's modes run with their \
         rules and no kube-proxy process: its CPU use counts against its own path only. Each \
         proxy serves \
         N + 2 services (N with 10 endpoints, one for iperf3, one that the control-plane test \
         changes).\n\n\
         New connections: {} client threads in the client pod, each looping connect -> \
         `GET /` with `Connection: close` -> whole response -> close, to a service chosen at \
         random among the N (direct: a backend at random), for {} s per measurement, {} \
         rounds; the table gives the median over rounds of the rate and of each round's p50 \
         and p99 connect latency (SYN sent to connect() returning). The server closes first; \
         the client then closes with a reset (SO_LINGER 0) so that neither TIME_WAIT sockets \
         nor 120 s TIME_WAIT conntrack entries pile up over the run (every path sees the same \
         packets). wrk is not used: it connects to one address per run and could not spread \
         connections over N services. Throughput: `iperf3 -t {}` through the `iperf` service \
         (one backend), {} rounds, median.\n",
        p.agent_args.join(" "),
        cfg.client_threads,
        cfg.conn_secs,
        cfg.rounds,
        cfg.iperf_secs,
        cfg.iperf_rounds,
    );
    let _ = writeln!(
        out,
        "### New TCP connections per second (higher is better)\n\n\
         | N | path | conn/s | vs iptables | vs nftables | vs direct | connect p50 us | connect p99 us | failed |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &p.by_n {
        let (ipt, nft, dir) = (
            rate(r, Proxy::Iptables),
            rate(r, Proxy::Nftables),
            rate(r, Proxy::Direct),
        );
        for proxy in Proxy::ALL {
            let v = r.rates.get(&proxy).cloned().unwrap_or_default();
            let x = rate(r, proxy);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.n,
                proxy.name(),
                num(x, 0),
                ratio(x, ipt),
                ratio(x, nft),
                ratio(x, dir),
                num(med(&v.iter().map(|x| x.p50_us).collect::<Vec<_>>()), 0),
                num(med(&v.iter().map(|x| x.p99_us).collect::<Vec<_>>()), 0),
                v.iter().map(|x| x.errors).sum::<u64>()
            );
        }
    }
    let _ = writeln!(
        out,
        "\n### Bulk TCP throughput through the service address (higher is better)\n\n\
         | N | path | Gbit/s | vs iptables | vs nftables | vs direct |\n|---:|---|---:|---:|---:|---:|"
    );
    for r in &p.by_n {
        let (ipt, nft, dir) = (
            gbps(r, Proxy::Iptables),
            gbps(r, Proxy::Nftables),
            gbps(r, Proxy::Direct),
        );
        for proxy in Proxy::ALL {
            let x = gbps(r, proxy);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.n,
                proxy.name(),
                num(x, 2),
                ratio(x, ipt),
                ratio(x, nft),
                ratio(x, dir)
            );
        }
    }
    let _ = writeln!(
        out,
        "\n**kube-proxy ipvs mode**: {}\n",
        if p.ipvs_available {
            "IPVS is available on this kernel but this benchmark does not drive it yet."
        } else {
            "not measured: IPVS is not built into this kernel (`CONFIG_IP_VS` unset, no `ip_vs` module), so the ipvs mode cannot run here."
        }
    );
}

fn section3(out: &mut String, cfg: &Config, p: &Proxies) {
    let _ = writeln!(
        out,
        "## 3. Control plane: programming N services, one change at N, agent memory\n\n\
         **From scratch**: lb: the agent runs on a directory holding only the changing service; \
         one file with the other N + 1 services (Service + EndpointSlice each) is written \
         atomically, and the time runs from the rename to the agent's `maps programmed` log \
         line (inotify, a 50 ms debounce, reading and parsing the YAML, selection, map writes); \
         the agent's own sync time (`elapsed_us` of that line) is given beside it. iptables: \
         `iptables-restore` of the full ruleset into empty tables; nftables: `nft -f` of the \
         full ruleset into an empty namespace. **One change** ({} per proxy and N, \
         interleaved): one endpoint of `svc-change` is removed, then added back, alternately. \
         lb: its manifest file is rewritten; iptables: `iptables-restore --noflush` of what \
         kube-proxy 1.28+ writes on a partial sync (the filter table, `KUBE-SERVICES` whole - \
         one rule per service - and the changed service's chains); nftables: `nft -f` of \
         kube-proxy's incremental transaction (new endpoint chains, the service chain flushed \
         and rewritten, gone endpoint chains flushed and deleted). Times for iptables and \
         nftables are the commands' wall time; generating their input is not counted.\n",
        cfg.changes
    );
    let _ = writeln!(
        out,
        "| N | proxy | from scratch ms | vs iptables | vs nftables | one change p50 ms | one change p99 ms | p50 vs iptables | p50 vs nftables |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &p.by_n {
        let (ipt, nft) = (
            program_ms(r, Proxy::Iptables),
            program_ms(r, Proxy::Nftables),
        );
        let (ipt1, nft1) = (
            change_p(r, Proxy::Iptables, 0.5),
            change_p(r, Proxy::Nftables, 0.5),
        );
        for proxy in Proxy::PROXIES {
            let x = program_ms(r, proxy);
            let c = change_p(r, proxy, 0.5);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.n,
                proxy.name(),
                num(x, 1),
                ratio(x, ipt),
                ratio(x, nft),
                num(c, 2),
                num(change_p(r, proxy, 0.99), 2),
                ratio(c, ipt1),
                ratio(c, nft1)
            );
        }
        let sync = r
            .program
            .get(&Proxy::Lb)
            .and_then(|x| x.sync_ms)
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| {} | lb, agent's own sync time | {} | {} | {} | {} | {} | {} | {} |",
            r.n,
            num(sync, 1),
            ratio(sync, ipt),
            ratio(sync, nft),
            num(quantile(&r.change_sync_ms, 0.5), 2),
            num(quantile(&r.change_sync_ms, 0.99), 2),
            ratio(quantile(&r.change_sync_ms, 0.5), ipt1),
            ratio(quantile(&r.change_sync_ms, 0.5), nft1)
        );
    }
    let _ = writeln!(
        out,
        "\nAgent memory after programming N + 2 services and the traffic runs (`/proc/PID/status`), \
         and the agent's CPU use while the traffic ran (`/proc/PID/stat`, % of one CPU; no \
         service changed then):\n\n\
         | N | VmRSS MiB | VmHWM (peak) MiB | agent CPU while idle % |\n|---:|---:|---:|---:|"
    );
    for r in &p.by_n {
        let mib = |kb: Option<u64>| {
            kb.map_or_else(|| "-".into(), |kb| format!("{:.1}", kb as f64 / 1024.0))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            r.n,
            mib(r.rss_kb),
            mib(r.hwm_kb),
            num(r.agent_cpu_pct.unwrap_or(f64::NAN), 1)
        );
    }
    out.push('\n');
}

fn targets(out: &mut String, d: &Datapath, p: &Proxies) {
    let _ = writeln!(
        out,
        "## Performance targets (goals, reported, never asserted)\n\n| target | measured | |\n|---|---|---|"
    );
    let (first, last) = (d.services[0], *d.services.last().unwrap_or(&d.services[0]));
    for case in ["v4_new", "v4_established", "v6_new", "v6_established"] {
        let (Some(a), Some(b), Some(f)) =
            (d.get(first, case), d.get(last, case), d.get(last, "floor"))
        else {
            continue;
        };
        let growth = b.median_ns / a.median_ns - 1.0;
        let _ = writeln!(
            out,
            "| per-packet cost at {last} services within 15 % of 1 service ({}) | {} ns vs {} ns: {:+.0} % | {} |",
            case.replace('_', " "),
            num(b.median_ns, 0),
            num(a.median_ns, 0),
            growth * 100.0,
            met(growth <= 0.15)
        );
        let x = b.median_ns / f.median_ns;
        let _ = writeln!(
            out,
            "| per-packet cost within 3x of the empty program ({}, {last} services) | {:.1}x ({} ns vs {} ns) | {} |",
            case.replace('_', " "),
            x,
            num(b.median_ns, 0),
            num(f.median_ns, 0),
            met(x <= 3.0)
        );
    }
    let at = |n: usize| p.by_n.iter().find(|r| r.n == n);
    match at(1) {
        Some(r) => {
            let x = rate(r, Proxy::Lb) / rate(r, Proxy::Iptables);
            let _ = writeln!(
                out,
                "| new connections/s >= iptables at N = 1 | {x:.2}x | {} |",
                met(x >= 1.0)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "| new connections/s >= iptables at N = 1 | not measured in this run | - |"
            );
        }
    }
    match at(10_000) {
        Some(r) => {
            let x = rate(r, Proxy::Lb) / rate(r, Proxy::Iptables);
            let _ = writeln!(
                out,
                "| new connections/s >= 3x iptables at N = 10 000 | {x:.2}x | {} |",
                met(x >= 3.0)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "| new connections/s >= 3x iptables at N = 10 000 | not measured in this run | - |"
            );
        }
    }
    for r in &p.by_n {
        let x = rate(r, Proxy::Lb) / rate(r, Proxy::Direct);
        let _ = writeln!(
            out,
            "| new connections/s within 10 % of direct, N = {} | {:.0} % of direct | {} |",
            r.n,
            x * 100.0,
            met(x >= 0.9)
        );
    }
    for r in &p.by_n {
        let x = gbps(r, Proxy::Lb) / gbps(r, Proxy::Direct);
        let _ = writeln!(
            out,
            "| throughput within 5 % of direct, N = {} | {:.0} % of direct | {} |",
            r.n,
            x * 100.0,
            met(x >= 0.95)
        );
    }
    match at(10_000) {
        Some(r) => {
            let prog = r.program.get(&Proxy::Lb).cloned().unwrap_or_default();
            let _ = writeln!(
                out,
                "| 10 000 services from scratch in under 2 s | {:.0} ms from the file write ({:.0} ms agent sync) | {} |",
                prog.wall_ms,
                prog.sync_ms.unwrap_or(f64::NAN),
                met(prog.wall_ms < 2_000.0)
            );
            let sync99 = quantile(&r.change_sync_ms, 0.99);
            let wall99 = change_p(r, Proxy::Lb, 0.99);
            let _ = writeln!(
                out,
                "| one change at 10 000 services under 10 ms at p99: agent sync | {sync99:.2} ms | {} |",
                met(sync99 < 10.0)
            );
            let _ = writeln!(
                out,
                "| one change at 10 000 services under 10 ms at p99: from the file write (includes the agent's fixed 50 ms debounce) | {wall99:.1} ms | {} |",
                met(wall99 < 10.0)
            );
            let rss = r.rss_kb.map_or(f64::NAN, |kb| kb as f64 / 1024.0);
            let _ = writeln!(
                out,
                "| agent memory under 150 MB at 10 000 services | {rss:.1} MiB VmRSS | {} |",
                met(rss * 1.048_576 < 150.0)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "| control-plane targets at 10 000 services | not measured in this run | - |"
            );
        }
    }
    out.push('\n');
}

/// The generated part of BENCHMARKS.md.
pub fn render(
    cfg: &Config,
    m: &Machine,
    d: &Datapath,
    p: &Proxies,
    charts: &[String],
    took: Duration,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- generated by `{}`; everything above the notes marker is rewritten by each run -->\n\
         # Benchmarks\n\n\
         Latest {} run: `{}` (as root), {} on commit {}, took {:.1} min. All figures \
         come from this one run; ratios compare paths measured side by side in it.\n",
        cfg.command(),
        if cfg.quick {
            "quick (smoke-test)"
        } else {
            "full"
        },
        cfg.command(),
        m.date,
        m.commit,
        took.as_secs_f64() / 60.0
    );
    let _ = writeln!(
        out,
        "| machine | |\n|---|---|\n| CPUs (nproc) | {} |\n| CPU model | {} |\n| kernel | {} |\n\
         | memory | {:.1} GiB |\n| load average before / after | {} / {} |\n\
         | compiler processes of other work running at start / end | {} / {} |",
        m.cpus,
        m.cpu_model,
        m.kernel,
        m.memory_gib,
        m.load_before,
        m.load_after,
        m.compilers_before,
        m.compilers_after
    );
    for (tool, version) in &p.versions {
        let _ = writeln!(out, "| {tool} | {version} |");
    }
    out.push('\n');
    if let Some(e) = &p.error {
        let _ = writeln!(
            out,
            "**This run stopped early** {e}; the tables hold what was measured before.\n"
        );
    }
    if !charts.is_empty() {
        for c in charts {
            let _ = writeln!(out, "![{c}]({c})");
        }
        out.push('\n');
    }
    targets(&mut out, d, p);
    section1(&mut out, cfg, d);
    section2(&mut out, cfg, p);
    section3(&mut out, cfg, p);
    out
}

/// Writes `generated` to `path`, keeping the notes below [`NOTES_MARKER`] of the file there.
pub fn write(path: &Path, generated: &str) -> anyhow::Result<()> {
    let notes = std::fs::read_to_string(path)
        .ok()
        .and_then(|old| old.find(NOTES_MARKER).map(|i| old[i..].to_owned()))
        .unwrap_or_else(|| format!("{NOTES_MARKER}\n"));
    std::fs::write(path, format!("{generated}{notes}"))
        .with_context(|| format!("writing {}", path.display()))
}
