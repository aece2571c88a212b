//! Runs `lb-agent` inside a node namespace, with its own pin directory and log file.

use std::{
    ffi::OsStr,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cgroup::TestCgroup, manifests::ManifestDir, netns::Netns, traffic::http_get};

/// Where the agent's health server listens inside the node namespace.
pub const HEALTHZ: &str = "127.0.0.1:10256";

/// A running agent; stopped (SIGTERM, then SIGKILL) and its pin directory removed on drop.
///
/// Its socket programs attach to a cgroup of its own ([`Agent::cgroup`]): only processes the
/// test moves there are affected, never the machine's.
pub struct Agent {
    child: Option<Child>,
    /// How the agent is started, for [`Agent::restart`].
    command: std::process::Command,
    pub pin_dir: PathBuf,
    pub cgroup: TestCgroup,
    log: PathBuf,
    keep_pin_dir: bool,
}

impl Agent {
    /// Starts `binary run --manifests DIR --pod-devices DEVICES --bpffs <unique>` in `node`.
    pub fn start(
        binary: &Path,
        node: &Netns,
        manifests: &ManifestDir,
        pod_devices: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(crate::unique_name("lbt"));
        Self::start_with_pin_dir(binary, node, manifests, pod_devices, &pin_dir, extra_args)
    }

    /// Like [`Agent::start`], with a given pin directory (to restart on the maps of an earlier
    /// run).
    pub fn start_with_pin_dir(
        binary: &Path,
        node: &Netns,
        manifests: &ManifestDir,
        pod_devices: &str,
        pin_dir: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let source = [OsStr::new("--manifests"), manifests.path().as_os_str()];
        Self::spawn(
            binary,
            node,
            &source,
            pod_devices,
            pin_dir,
            "node-a",
            extra_args,
        )
    }

    /// Like [`Agent::start`], for the node named `node_name` (endpoint locality).
    pub fn start_on_node(
        binary: &Path,
        node: &Netns,
        node_name: &str,
        manifests: &ManifestDir,
        pod_devices: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(crate::unique_name("lbt"));
        let source = [OsStr::new("--manifests"), manifests.path().as_os_str()];
        Self::spawn(
            binary,
            node,
            &source,
            pod_devices,
            &pin_dir,
            node_name,
            extra_args,
        )
    }

    /// Starts the agent with `source` (`--manifests DIR` or `--kubeconfig FILE`), its own cgroup
    /// and log file; `KUBECONFIG` is not passed on, so only the given source counts.
    fn spawn(
        binary: &Path,
        node: &Netns,
        source: &[&OsStr],
        pod_devices: &str,
        pin_dir: &Path,
        node_name: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let pin_dir = pin_dir.to_path_buf();
        let cgroup = TestCgroup::new()?;
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique_name("lb-agent-")));
        let mut command = node.command(binary);
        command
            .arg("run")
            .args(source)
            .arg("--pod-devices")
            .arg(pod_devices)
            .arg("--bpffs")
            .arg(&pin_dir)
            .arg("--healthz-bind-address")
            .arg(HEALTHZ)
            .args(["--node-name", node_name])
            .arg("--cgroup")
            .arg(cgroup.path())
            .args(extra_args)
            .env("RUST_LOG", "info,aya::bpf=error")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        let mut agent = Self {
            child: None,
            command,
            pin_dir,
            cgroup,
            log,
            keep_pin_dir: false,
        };
        agent.launch()?;
        Ok(agent)
    }

    /// Starts the agent's process, its output appended to the log.
    fn launch(&mut self) -> anyhow::Result<()> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = self
            .command
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {:?}", self.command))?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the agent again, with the same arguments and pin directory, after
    /// [`Agent::kill`] or [`Agent::stop`]: an upgrade or a restart after a crash.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "the agent is still running");
        self.launch()
    }

    /// Everything the agent logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `/healthz` to answer 200 (first full sync done).
    pub fn wait_healthy(&mut self, node: &Netns, timeout: Duration) -> anyhow::Result<()> {
        let addr: SocketAddr = HEALTHZ.parse()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!("agent exited with {status}; log:\n{}", self.logs());
            }
            if let Ok((200, _)) = http_get(node, addr, "/healthz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("agent not healthy after {timeout:?}; log:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return Ok(logs);
            }
            if Instant::now() > deadline {
                bail!("agent log has no {needle:?} after {timeout:?}; log:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the agent with SIGKILL, as a crash would, and waits for it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("agent already stopped")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Leaves the pin directory in place on drop (another run of the agent uses it).
    pub fn keep_pin_dir(&mut self) {
        self.keep_pin_dir = true;
    }

    /// Stops the agent gracefully and returns its exit status.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("agent already stopped")?;
        // SAFETY: plain kill(2) on our child's PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Ok(child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        if !self.keep_pin_dir {
            // Unpinning the links detaches the programs the agent left attached.
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("agent log kept at {}", self.log.display());
        }
    }
}

impl Agent {
    /// Starts `binary run --kubeconfig KUBECONFIG --pod-devices DEVICES --bpffs <unique>` in
    /// `node`: the agent with the Kubernetes source, otherwise set up as [`Agent::start`] does.
    pub fn start_kube(
        binary: &Path,
        node: &Netns,
        kubeconfig: &Path,
        pod_devices: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(crate::unique_name("lbt"));
        let source = [OsStr::new("--kubeconfig"), kubeconfig.as_os_str()];
        Self::spawn(
            binary,
            node,
            &source,
            pod_devices,
            &pin_dir,
            "node-a",
            extra_args,
        )
    }
}
