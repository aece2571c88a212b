//! The file systems the programs need: a BPF filesystem for the pins, a cgroup2 hierarchy for
//! the socket programs.

use std::path::{Path, PathBuf};

use rustix::fs::{FsWord, statfs};

use super::{KernelError, SocketLb};

/// Magic number of the BPF filesystem (`statfs(2)`).
const BPF_FS_MAGIC: FsWord = 0xcafe4a11;
/// Magic number of cgroup2 (`statfs(2)`).
const CGROUP2_SUPER_MAGIC: FsWord = 0x63677270;
/// Where the agent mounts a cgroup2 hierarchy on hosts with only cgroup v1.
const OWN_CGROUP2: &str = "/run/lb-agent/cgroup2";
/// The usual BPF filesystem mount point; mounted by the agent when missing, as Cilium does.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

fn fs_magic(path: &Path) -> Option<FsWord> {
    statfs(path).ok().map(|st| st.f_type)
}

/// `mount -t FSTYPE SOURCE TARGET`.
fn mount_fs(source: &str, target: &str, fstype: &str) -> std::io::Result<()> {
    rustix::mount::mount(
        source,
        target,
        fstype,
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(std::io::Error::from)
}

/// The cgroup2 directory the socket programs attach to, mounting a cgroup2 hierarchy if the host
/// has none.
pub fn resolve_cgroup(socket_lb: &SocketLb) -> Result<Option<PathBuf>, KernelError> {
    match socket_lb {
        SocketLb::Off => Ok(None),
        SocketLb::Cgroup(dir) => {
            if fs_magic(dir) == Some(CGROUP2_SUPER_MAGIC) {
                Ok(Some(dir.clone()))
            } else {
                Err(KernelError::NotCgroup2 {
                    path: dir.display().to_string(),
                })
            }
        }
        SocketLb::HostRoot => {
            for candidate in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                if fs_magic(Path::new(candidate)) == Some(CGROUP2_SUPER_MAGIC) {
                    return Ok(Some(PathBuf::from(candidate)));
                }
            }
            let own = Path::new(OWN_CGROUP2);
            if fs_magic(own) != Some(CGROUP2_SUPER_MAGIC) {
                std::fs::create_dir_all(own).map_err(|source| KernelError::PinDir {
                    path: OWN_CGROUP2.to_owned(),
                    source,
                })?;
                if let Err(e) = mount_fs("none", OWN_CGROUP2, "cgroup2") {
                    return Err(KernelError::NotCgroup2 {
                        path: format!(
                            "{OWN_CGROUP2} (the host has no cgroup2 hierarchy and mounting one \
                             failed: {e})"
                        ),
                    });
                }
                tracing::info!(
                    "the host has only cgroup v1 hierarchies: mounted cgroup2 at {OWN_CGROUP2} \
                     for socket-level load balancing"
                );
            }
            Ok(Some(own.to_path_buf()))
        }
    }
}

fn is_bpffs(dir: &Path) -> bool {
    let probe = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    fs_magic(probe) == Some(BPF_FS_MAGIC)
}

/// Makes sure `dir` is on a BPF filesystem, mounting one at /sys/fs/bpf when `dir` is below it
/// and nothing is mounted there yet.
pub fn ensure_bpffs(dir: &Path) -> Result<(), KernelError> {
    if is_bpffs(dir) {
        return Ok(());
    }
    if dir.starts_with(DEFAULT_BPFFS) && Path::new(DEFAULT_BPFFS).is_dir() {
        if mount_fs("bpf", DEFAULT_BPFFS, "bpf").is_ok() {
            tracing::info!("mounted a BPF filesystem at {DEFAULT_BPFFS}");
        }
        if is_bpffs(dir) {
            return Ok(());
        }
    }
    Err(KernelError::NotBpfFs {
        path: dir.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_is_neither_bpffs_nor_cgroup2() {
        assert!(!is_bpffs(Path::new("/proc")));
        assert_ne!(fs_magic(Path::new("/proc")), Some(CGROUP2_SUPER_MAGIC));
        assert_eq!(fs_magic(Path::new("/no/such/path/at/all")), None);
    }
}
