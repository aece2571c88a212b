//! Network namespaces: created with `ip netns add`, entered per thread with `setns(2)`.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Runs a command and fails with its output when it does not succeed.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

impl Netns {
    /// Creates a namespace named `{prefix}{pid}x{n}` with loopback up.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let name = crate::unique_name(prefix);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind-mounted file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Sets sysctls inside the namespace.
    pub fn sysctl(&self, settings: &[&str]) -> anyhow::Result<()> {
        for s in settings {
            run(Command::new("ip").args(["netns", "exec", &self.name, "sysctl", "-q", "-w", s]))?;
        }
        Ok(())
    }

    /// Runs `f` on a new thread that has entered this namespace; sockets it creates belong to
    /// the namespace and may be used from any thread afterwards.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let file = File::open(self.path()).with_context(|| format!("opening {:?}", self.path()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a valid namespace fd; it only affects this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    bail!(
                        "setns into {}: {}",
                        self.name,
                        std::io::Error::last_os_error()
                    );
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace {} panicked", self.name))?
        })
    }

    /// A command that will run in this namespace (and in the caller's mount namespace, so
    /// /sys/fs/bpf stays visible, unlike with `ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
