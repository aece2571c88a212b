//! Runs `lb-agent` inside a node namespace, with its own pin directory and log file.

use std::{
    ffi::{OsStr, OsString},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    cgroup::TestCgroup, http::http_get, manifests::ManifestDir, netns::Netns,
    topology::POD_DEVICE_GLOB,
};

/// Where the agent's health server listens inside the node namespace.
pub const HEALTHZ: &str = "127.0.0.1:10256";
/// The node name an agent gets unless [`AgentBuilder::node_name`] sets another, the one
/// [`crate::manifests::endpoint_slice`] puts on its endpoints.
pub const NODE_NAME: &str = "node-a";

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

/// How an [`Agent`] is started: built by [`Agent::builder`], run by [`AgentBuilder::start`].
///
/// The agent reads the pod devices of the [`crate::topology`] namespaces
/// ([`POD_DEVICE_GLOB`]), listens for health checks on [`HEALTHZ`] and attaches its socket
/// programs to a cgroup of its own.
#[derive(Debug)]
#[must_use = "an agent builder does nothing until `start`"]
pub struct AgentBuilder<'a> {
    binary: PathBuf,
    node: &'a Netns,
    source: Option<Source>,
    pin_dir: Option<PathBuf>,
    node_name: String,
    args: Vec<OsString>,
}

/// Where the agent reads its services from.
#[derive(Debug)]
enum Source {
    /// `--manifests DIR`.
    Manifests(PathBuf),
    /// `--kubeconfig FILE`: the Kubernetes source.
    Kubeconfig(PathBuf),
}

impl AgentBuilder<'_> {
    /// Reads services from the manifest directory `dir` (`--manifests`).
    pub fn manifests(mut self, dir: &ManifestDir) -> Self {
        self.source = Some(Source::Manifests(dir.path().to_path_buf()));
        self
    }

    /// Watches the API server of `kubeconfig` (`--kubeconfig`). `KUBECONFIG` is never passed
    /// on, so only this file counts.
    pub fn kubeconfig(mut self, kubeconfig: &Path) -> Self {
        self.source = Some(Source::Kubeconfig(kubeconfig.to_path_buf()));
        self
    }

    /// Pins under `dir` (to restart on the maps of an earlier run) instead of a directory
    /// of its own under `/sys/fs/bpf`.
    pub fn pin_dir(mut self, dir: &Path) -> Self {
        self.pin_dir = Some(dir.to_path_buf());
        self
    }

    /// The node the agent runs on (endpoint locality); [`NODE_NAME`] unless set.
    pub fn node_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.node_name);
        self
    }

    /// More arguments of `lb-agent run`, after those the builder sets.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Starts `binary run` in the node namespace with its own cgroup and log file. Returns as
    /// soon as the process runs: [`Agent::wait_healthy`] waits for its first full sync.
    pub fn start(self) -> anyhow::Result<Agent> {
        let (flag, source) = match self
            .source
            .context("the agent needs a source: manifests or kubeconfig")?
        {
            Source::Manifests(dir) => ("--manifests", dir),
            Source::Kubeconfig(file) => ("--kubeconfig", file),
        };
        let pin_dir = self
            .pin_dir
            .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf").join(crate::unique_name("lbt")));
        let cgroup = TestCgroup::new()?;
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique_name("lb-agent-")));
        let mut command = self.node.command(&self.binary);
        command
            .arg("run")
            .arg(flag)
            .arg(&source)
            .arg("--pod-devices")
            .arg(POD_DEVICE_GLOB)
            .arg("--bpffs")
            .arg(&pin_dir)
            .arg("--healthz-bind-address")
            .arg(HEALTHZ)
            .arg("--node-name")
            .arg(&self.node_name)
            .arg("--cgroup")
            .arg(cgroup.path())
            .args(&self.args)
            .env("RUST_LOG", "info,aya::bpf=error")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        let mut agent = Agent {
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
}

impl Agent {
    /// An agent running `binary` (`lb-agent`) in the node namespace `node`; set its source with
    /// [`AgentBuilder::manifests`] or [`AgentBuilder::kubeconfig`].
    pub fn builder(binary: impl AsRef<Path>, node: &Netns) -> AgentBuilder<'_> {
        AgentBuilder {
            binary: binary.as_ref().to_path_buf(),
            node,
            source: None,
            pin_dir: None,
            node_name: NODE_NAME.to_owned(),
            args: Vec::new(),
        }
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
