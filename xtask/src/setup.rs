//! Installs the build and test prerequisites when they are missing.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

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

/// Where invoke-rc.d and deb-systemd-invoke ask whether a package's maintainer script may start
/// its service (policy-rc.d(8), `/usr/share/doc/init-system-helpers/README.policy-rc.d`).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// policy-rc.d's answer "action forbidden by policy".
const POLICY_FORBIDDEN: i32 = 101;

/// A policy-rc.d that forbids every service start while it lives: written when there is none
/// (and removed on drop), or one already there that forbids starts (left as it is).
struct NoServiceStarts {
    /// The file this guard wrote, to remove on drop.
    created: Option<PathBuf>,
}

impl NoServiceStarts {
    fn at(path: &Path) -> anyhow::Result<Self> {
        if path.exists() {
            let forbids = Command::new(path)
                .args(["prometheus", "start"])
                .output()
                .is_ok_and(|o| o.status.code() == Some(POLICY_FORBIDDEN));
            if !forbids {
                bail!(
                    "{} exists and does not forbid starting services (exit {POLICY_FORBIDDEN}); \
                     installing prometheus would start its server",
                    path.display()
                );
            }
            return Ok(Self { created: None });
        }
        // create_new: never over a policy another process wrote meanwhile.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let guard = Self {
            created: Some(path.to_owned()),
        };
        file.write_all(
            format!(
                "#!/bin/sh\n# Written by `cargo xtask setup` for one apt-get install; removed after it.\n\
                 exit {POLICY_FORBIDDEN}\n"
            )
            .as_bytes(),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(guard)
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.created
            && let Err(e) = std::fs::remove_file(path)
        {
            eprintln!("removing {}: {e}", path.display());
        }
    }
}

fn prometheus_running() -> bool {
    Command::new("pgrep")
        .args(["-x", "prometheus"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// promtool checks and unit-tests the alert rules in `manifests/observability/` and lints a live
/// scrape. Debian ships it in the `prometheus` package, whose postinst would start (and enable)
/// a Prometheus server: it is installed with service starts forbidden, and must leave none.
fn promtool() -> anyhow::Result<()> {
    if has_command("promtool") {
        return Ok(());
    }
    let running_before = prometheus_running();
    {
        let _no_starts = NoServiceStarts::at(Path::new(POLICY_RC_D))?;
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "prometheus"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // The postinst also enables the server at boot; only promtool is wanted here. Debian's
    // update-rc.d disables the SysV links and, where systemctl is, the systemd unit too.
    if has_command("update-rc.d") {
        run(Command::new("update-rc.d").args(["prometheus", "disable"]))?;
    }
    if !running_before && prometheus_running() {
        bail!("installing prometheus started a Prometheus server (pgrep -x prometheus)");
    }
    if !has_command("promtool") {
        bail!("the prometheus package is installed but promtool is not on PATH");
    }
    Ok(())
}

pub fn all() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    packages()?;
    kubernetes_validate()?;
    promtool()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn script(path: &Path, body: &str) {
        std::fs::write(path, body).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn forbids(path: &Path) -> bool {
        let status = Command::new(path).args(["prometheus", "start"]).status();
        status.unwrap().code() == Some(POLICY_FORBIDDEN)
    }

    // One test, not three: a file executed while another test thread's fork still holds a
    // writable descriptor of it fails with ETXTBSY.
    #[test]
    fn a_policy_is_written_for_the_install_only_when_there_is_none() {
        let dir = std::env::temp_dir().join(format!("xtask-policy-rc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let written = dir.join("none");
        {
            let _guard = NoServiceStarts::at(&written).unwrap();
            assert!(forbids(&written));
        }
        assert!(!written.exists(), "the policy written is removed");

        let forbidding = dir.join("forbidding");
        script(&forbidding, "#!/bin/sh\nexit 101\n");
        drop(NoServiceStarts::at(&forbidding).unwrap());
        assert!(forbidding.exists(), "a policy already there stays");

        let allowing = dir.join("allowing");
        script(&allowing, "#!/bin/sh\nexit 0\n");
        assert!(NoServiceStarts::at(&allowing).is_err());
        assert!(allowing.exists());

        std::fs::remove_dir_all(dir).unwrap();
    }
}
