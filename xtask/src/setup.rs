//! Installs the build and test prerequisites when they are missing.

use std::process::Command;

use anyhow::Context as _;

use crate::run;

/// The bpf-linker that links against the LLVM inside the Rust toolchain here; newer ones want a
/// system LLVM 21+.
const BPF_LINKER_VERSION: &str = "0.10.0";

/// Debian packages and a command each provides.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("util-linux", "nsenter"),
    ("procps", "sysctl"),
    // The two-node test topology: checksum offload off on its LAN devices.
    ("ethtool", "ethtool"),
    // `cargo xtask bench`: kube-proxy's two modes and the throughput client.
    ("iptables", "iptables-restore"),
    ("nftables", "nft"),
    ("iperf3", "iperf3"),
];

/// Debian packages and a file each provides: the font of the benchmark charts.
const PACKAGE_FILES: &[(&str, &str)] = &[(
    "fonts-dejavu-core",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)];

fn has_command(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn toolchain() -> String {
    std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into())
}

/// rust-src lets the eBPF build compile `core` for bpfel-unknown-none.
fn rust_src() -> anyhow::Result<()> {
    let tc = toolchain();
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", &tc])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &tc]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let installed = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if installed {
        return Ok(());
    }
    run(Command::new("cargo").args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
    ]))
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, cmd)| !has_command(cmd))
        .map(|(pkg, _)| *pkg)
        .chain(
            PACKAGE_FILES
                .iter()
                .filter(|(_, file)| !std::path::Path::new(file).exists())
                .map(|(pkg, _)| *pkg),
        )
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// kubernetes-validate (PyPI) ships the Kubernetes schemas the manifest test validates against.
fn kubernetes_validate() -> anyhow::Result<()> {
    if python_has("kubernetes_validate") {
        return Ok(());
    }
    if !python_has("pip") {
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(["python3", "python3-pip"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let pip = || {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "pip", "install", "--quiet", "kubernetes-validate"]);
        cmd
    };
    // Debian's own Python refuses installs outside a virtualenv (PEP 668).
    run(&mut pip()).or_else(|_| run(pip().arg("--break-system-packages")))
}

pub fn all() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    packages()?;
    kubernetes_validate()
}
