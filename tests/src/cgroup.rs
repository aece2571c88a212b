//! A cgroup2 directory of its own per test, so socket programs only ever affect the processes a
//! test puts there, never the machine's.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Magic number of cgroup2 (`statfs(2)`).
const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;
/// Where the harness mounts cgroup2 when the machine has none mounted.
const OWN_MOUNT: &str = "/run/lb-tests/cgroup2";

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// The machine's cgroup2 mount (unified or hybrid layout), mounting one if there is none.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    for candidate in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified", OWN_MOUNT] {
        if is_cgroup2(Path::new(candidate)) {
            return Ok(PathBuf::from(candidate));
        }
    }
    std::fs::create_dir_all(OWN_MOUNT)?;
    crate::netns::run(
        std::process::Command::new("mount").args(["-t", "cgroup2", "none", OWN_MOUNT]),
    )?;
    if !is_cgroup2(Path::new(OWN_MOUNT)) {
        bail!("mounted cgroup2 at {OWN_MOUNT} but it does not look like one");
    }
    Ok(PathBuf::from(OWN_MOUNT))
}

/// A child cgroup with a unique name; removed on drop once its processes are gone.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> anyhow::Result<Self> {
        let path = cgroup2_root()?.join(crate::unique_name("lbt-cg"));
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `cgroup.procs` file a process writes `0` to, to move itself here.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Exiting processes may linger for a moment.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
