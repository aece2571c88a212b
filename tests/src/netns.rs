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

/// The devices [`add_uplink_bridge_tun`] adds: names of the veth uplink, the bridge and the tun
/// device.
#[derive(Debug)]
pub struct UplinkBridgeTun {
    /// A veth uplink: 10.77.0.2/24 and fd00:77::2/64, the default routes of both families.
    pub up: String,
    /// A bridge: 10.1.0.1/24 and fd00:1::1/64, sorting before the uplink's addresses.
    pub bridge: String,
    /// A tun device (`ARPHRD_NONE`, no link-layer header): 10.2.0.1/24.
    pub tun: String,
}

/// Adds to `ns` (which must have no default route yet) a veth uplink holding the default
/// routes, a bridge whose addresses sort before the uplink's, and a tun device: the devices
/// of the SNAT address and link-type rules.
pub fn add_uplink_bridge_tun(ns: &Netns) -> anyhow::Result<UplinkBridgeTun> {
    let (up, bridge, tun) = (
        crate::unique_name("lbu"),
        crate::unique_name("lbb"),
        crate::unique_name("lbt"),
    );
    let peer = format!("{up}p");
    for cmd in [
        vec!["link", "add", &up, "type", "veth", "peer", "name", &peer],
        vec!["addr", "add", "10.77.0.2/24", "dev", &up],
        vec!["addr", "add", "fd00:77::2/64", "dev", &up, "nodad"],
        vec!["link", "set", &peer, "up"],
        vec!["link", "set", &up, "up"],
        vec!["route", "add", "default", "via", "10.77.0.1", "dev", &up],
        vec![
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:77::1",
            "dev",
            &up,
        ],
        vec!["link", "add", &bridge, "type", "bridge"],
        vec!["addr", "add", "10.1.0.1/24", "dev", &bridge],
        vec!["addr", "add", "fd00:1::1/64", "dev", &bridge, "nodad"],
        vec!["link", "set", &bridge, "up"],
        vec!["tuntap", "add", "mode", "tun", "name", &tun],
        vec!["addr", "add", "10.2.0.1/24", "dev", &tun],
        vec!["link", "set", &tun, "up"],
    ] {
        ns.ip(&cmd)?;
    }
    Ok(UplinkBridgeTun { up, bridge, tun })
}
