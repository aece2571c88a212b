//! `cargo xtask setup | demo | test | bench`: the project's entry points. Each installs what it
//! needs first, so the README commands work on a fresh machine.

mod bench;
mod demo;
mod setup;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what builds and tests need: rust-src, bpf-linker 0.10.0, iproute2 and friends.
    Setup,
    /// Build, create a small namespace topology, run the agent on manifests/demo/ and show
    /// requests to IPv4, IPv6 and dual-stack ClusterIPs answered by different backends.
    Demo,
    /// Run every test (unit, packet and end-to-end; needs root).
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks against kube-proxy's iptables and nftables modes, side by side in one run;
    /// writes BENCHMARKS.md and docs/bench/*.png (needs root).
    Bench {
        /// Small N and short runs (a few minutes): a smoke test that the benchmark works;
        /// results go to target/bench/quick/ instead of BENCHMARKS.md.
        #[arg(long)]
        quick: bool,
    },
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (network namespaces, BPF programs); run it as root");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::all(),
        Task::Demo => {
            require_root("the demo")?;
            setup::all()?;
            run(cargo().args(["build", "--package", "lb-agent", "--bin", "lb-agent"]))?;
            demo::run(&workspace_root())
        }
        Task::Test { args } => {
            require_root("the test suite")?;
            setup::all()?;
            run(cargo()
                .args(["test", "--workspace", "--all-targets"])
                .args(&args))?;
            // The benchmark's smoke test: it must still run end to end (no performance checks).
            eprintln!("\n== cargo xtask bench --quick (smoke test) ==");
            bench::run(&workspace_root(), true)
        }
        Task::Bench { quick } => {
            require_root("the benchmark")?;
            setup::all()?;
            bench::run(&workspace_root(), quick)
        }
    }
}
