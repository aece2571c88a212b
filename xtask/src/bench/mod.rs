//! `cargo xtask bench [--quick]`: this project's datapath against kube-proxy's iptables and
//! nftables modes and the direct path, side by side in one run, on namespaces of this machine.
//!
//! 1. Per-packet cost through BPF_PROG_TEST_RUN (`lb-agent/benches/datapath.rs`).
//! 2. Short TCP connections and bulk throughput through each proxy ([`e2e`]).
//! 3. Control plane: programming N services from scratch and one change at N, agent memory.
//!
//! Results go to BENCHMARKS.md and `docs/bench/*.png` (full run) or `target/bench/quick/`
//! (`--quick`, a smoke test with small N and short runs).

mod chart;
mod datapath;
mod e2e;
mod kubeproxy;
mod report;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;

/// A ClusterIP service with one TCP port, as each proxy is given it.
#[derive(Clone, Debug)]
pub struct Svc {
    pub name: String,
    pub port_name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<SocketAddrV4>,
}

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    /// Service counts of the per-packet benchmark.
    pub datapath_services: Vec<u32>,
    /// Timed BPF_PROG_TEST_RUN runs per case and N.
    pub datapath_runs: usize,
    pub datapath_rounds: usize,
    /// Service counts of the proxy comparison.
    pub services: Vec<usize>,
    /// Interleaved rounds of the connection benchmark (every proxy once per round).
    pub rounds: usize,
    /// Seconds of each connection-rate measurement.
    pub conn_secs: f64,
    /// Connections in flight.
    pub client_threads: usize,
    pub iperf_rounds: usize,
    pub iperf_secs: u32,
    /// One-service changes timed per proxy and N.
    pub changes: usize,
}

impl Config {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                datapath_services: vec![1, 1_000],
                datapath_runs: 2_000,
                datapath_rounds: 2,
                services: vec![1, 100],
                rounds: 1,
                conn_secs: 1.0,
                client_threads: 4,
                iperf_rounds: 1,
                iperf_secs: 1,
                changes: 3,
            }
        } else {
            Self {
                quick,
                datapath_services: vec![1, 1_000, 10_000, 100_000],
                datapath_runs: 50_000,
                datapath_rounds: 10,
                // 30 000 would not stay bounded: kube-proxy's nftables ruleset for 10 000
                // services already takes minutes to load with this Debian's nft (BENCHMARKS.md).
                services: vec![1, 1_000, 10_000],
                rounds: 5,
                conn_secs: 3.0,
                client_threads: 4,
                iperf_rounds: 3,
                iperf_secs: 3,
                changes: 30,
            }
        }
    }

    /// The command that reproduces this run.
    pub fn command(&self) -> &'static str {
        if self.quick {
            "cargo xtask bench --quick"
        } else {
            "cargo xtask bench"
        }
    }
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

pub fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let cfg = Config::new(quick);
    // The quick run is a smoke test: the debug build `cargo test` has just made is good enough
    // and saves CI a second, optimised build of the agent. The kernel programs are the same
    // either way (the eBPF object is always built optimised).
    let mut build = crate::cargo();
    build.args([
        "build",
        "--package",
        "lb-agent",
        "--bin",
        "lb-agent",
        "--bench",
        "datapath",
    ]);
    if !quick {
        build.arg("--release");
    }
    let built = build_executables(&mut build)?;
    let executable = |kind: &str, name: &str| {
        built
            .get(&(kind.to_owned(), name.to_owned()))
            .with_context(|| format!("cargo built no {kind} target {name}"))
    };
    let (agent, bench) = (
        executable("bin", "lb-agent")?,
        executable("bench", "datapath")?,
    );
    let mut machine = report::Machine::read();

    eprintln!("\n== 1. Per-packet cost (BPF_PROG_TEST_RUN) ==");
    let datapath = datapath::run(bench, &cfg)?;

    eprintln!("\n== 2 and 3. Proxies side by side, control plane ==");
    let proxies = e2e::run(agent, &cfg)?;
    machine.finish();

    let (out_dir, md_path) = if quick {
        let dir = target_dir(root).join("bench").join("quick");
        (dir.clone(), dir.join("BENCHMARKS.md"))
    } else {
        (root.join("docs").join("bench"), root.join("BENCHMARKS.md"))
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let charts = chart::draw(&out_dir, &datapath, &proxies)?;
    let chart_links: Vec<String> = charts
        .iter()
        .map(|p| {
            p.strip_prefix(md_path.parent().unwrap_or(root))
                .unwrap_or(p)
                .display()
                .to_string()
        })
        .collect();
    let generated = report::render(
        &cfg,
        &machine,
        &datapath,
        &proxies,
        &chart_links,
        started.elapsed(),
    );
    print!("{generated}");
    report::write(&md_path, &generated)?;
    eprintln!(
        "\nbench: results in {} and {} (took {:.0} s)",
        md_path.display(),
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(e) = &proxies.error {
        anyhow::bail!("the proxy comparison stopped early {e}");
    }
    Ok(())
}

/// Runs the cargo `build` command and returns the executables it built, by kind (`bin`,
/// `bench`, ...) and target name, read from cargo's JSON messages: the name of a bench
/// executable carries a hash that only cargo knows.
fn build_executables(
    build: &mut std::process::Command,
) -> anyhow::Result<BTreeMap<(String, String), PathBuf>> {
    build
        .arg("--message-format=json-render-diagnostics")
        .stdout(std::process::Stdio::piped());
    eprintln!("+ {build:?}");
    let out = build
        .spawn()
        .with_context(|| format!("spawning {build:?}"))?
        .wait_with_output()?;
    anyhow::ensure!(out.status.success(), "{build:?} failed with {}", out.status);
    let mut built = BTreeMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let message: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("cargo printed {line:?}"))?;
        let (Some(executable), Some(name), Some(kinds)) = (
            message["executable"].as_str(),
            message["target"]["name"].as_str(),
            message["target"]["kind"].as_array(),
        ) else {
            continue;
        };
        for kind in kinds.iter().filter_map(serde_json::Value::as_str) {
            built.insert(
                (kind.to_owned(), name.to_owned()),
                PathBuf::from(executable),
            );
        }
    }
    Ok(built)
}
