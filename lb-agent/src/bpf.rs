//! The real datapath: loads the embedded kernel programs, pins their maps under `--bpffs`,
//! attaches programs to devices, and implements [`MapOps`] on the BPF maps.

use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::DevMapHash,
    maps::{
        Array, HashMap, MapData, MapError as AyaMapError, PerCpuArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
};
use ipnet::IpNet;
use lb_ebpf::{
    BACKEND_F_LOCAL, Backend4, Backend6, Flow4Key, Flow4Value, Flow6Key, Flow6Value, Service4Key,
    Service6Key, ServiceKey, ServiceValue, SourceRange, map_names, port_to_map, program_names,
};
use thiserror::Error;

use crate::{
    datapath::{BackendId, BackendKey, MapError, MapOps},
    ebpf_object::EBPF_OBJECT,
    model::{Frontend, IpFamily, Protocol},
};

/// Magic number of the BPF filesystem (`statfs(2)`).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, Error)]
pub enum BpfError {
    #[error("{path} is not on a BPF filesystem (mount one with `mount -t bpf bpf {path}`)")]
    NotBpfFs { path: String },
    #[error("creating pin directory {path}: {source}")]
    PinDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("{path} is not a cgroup2 directory (socket programs need cgroup v2)")]
    NotCgroup2 { path: String },
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("link of program {name}: {source}")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: AyaMapError,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// Where the socket programs attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketLb {
    /// No socket-level load balancing.
    Off,
    /// The host's cgroup2 root: `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`, or a cgroup2
    /// hierarchy the agent mounts when the host has only cgroup v1 hierarchies.
    HostRoot,
    /// A given cgroup2 directory: only processes below it are affected.
    Cgroup(PathBuf),
}

/// How external traffic (node ports, external IPs, load balancer IPs) is served on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DatapathMode {
    /// XDP in native (driver) mode on every external device, before the kernel allocates an
    /// skb, with the TC programs finishing what XDP leaves to them; TC alone where XDP cannot
    /// attach.
    Xdp,
    /// The TC programs only.
    Tc,
    /// XDP where the driver serves it without conditions on the other end, TC elsewhere. veth
    /// devices get TC: XDP can only send frames into a veth whose peer runs an XDP program too,
    /// which this side cannot check.
    Auto,
}

/// Map sizes, where to pin, and where socket programs attach.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub pin_dir: PathBuf,
    pub max_services: u32,
    pub max_backends: u32,
    pub max_flows: u32,
    pub max_sockets: u32,
    pub socket_lb: SocketLb,
}

/// The cgroup sock_addr programs and their attach points.
const SOCK_PROGRAMS: [&str; 8] = [
    program_names::SOCK_CONNECT4,
    program_names::SOCK_CONNECT6,
    program_names::SOCK_SENDMSG4,
    program_names::SOCK_SENDMSG6,
    program_names::SOCK_RECVMSG4,
    program_names::SOCK_RECVMSG6,
    program_names::SOCK_GETPEERNAME4,
    program_names::SOCK_GETPEERNAME6,
];

/// Magic number of cgroup2 (`statfs(2)`).
const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;
/// Where the agent mounts a cgroup2 hierarchy on hosts with only cgroup v1.
const OWN_CGROUP2: &str = "/run/lb-agent/cgroup2";

fn fs_magic(path: &Path) -> Option<i64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

/// The cgroup2 directory the socket programs attach to, mounting a cgroup2 hierarchy if the host
/// has none.
pub fn resolve_cgroup(socket_lb: &SocketLb) -> Result<Option<PathBuf>, BpfError> {
    match socket_lb {
        SocketLb::Off => Ok(None),
        SocketLb::Cgroup(dir) => {
            if fs_magic(dir) == Some(CGROUP2_SUPER_MAGIC) {
                Ok(Some(dir.clone()))
            } else {
                Err(BpfError::NotCgroup2 {
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
                std::fs::create_dir_all(own).map_err(|source| BpfError::PinDir {
                    path: OWN_CGROUP2.to_owned(),
                    source,
                })?;
                if let Err(e) = mount_fs("none", OWN_CGROUP2, "cgroup2") {
                    return Err(BpfError::NotCgroup2 {
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

/// The loaded programs and the devices they are attached to.
pub struct Datapath {
    ebpf: Ebpf,
    /// Device name -> (ifindex, ingress link, egress link).
    pin_dir: PathBuf,
    /// Device name -> its ifindex and the links of the two pod programs.
    pod_devices: StdHashMap<String, (u32, [AttachedLink; 2])>,
    /// External device name -> its ifindex, the links of its TC ingress and egress programs, and
    /// of its XDP program when it runs one.
    ext_devices: StdHashMap<String, ExtDevice>,
    /// `LB_XDP_DEVICES`: the devices running the XDP program, where XDP may redirect frames.
    xdp_devices: DevMapHash<MapData>,
    cgroup: Option<PathBuf>,
    /// Links of the socket programs, pinned; held so they stay attached while the agent runs.
    _cgroup_links: Vec<PinnedLink>,
}

/// The programs on an external device.
struct ExtDevice {
    ifindex: u32,
    tc: [AttachedLink; 2],
    xdp: Option<AttachedXdp>,
}

/// The XDP program's attachment; pinned as the TC links are.
enum AttachedXdp {
    Pinned(PinnedLink),
    /// Netlink attachment (kernels before 5.9 have no XDP links): detached with the program.
    Owned(XdpLinkId),
}

/// A program's attachment. Pinned links outlive the agent, so the datapath keeps serving while
/// the agent restarts, and the next run swaps its programs in atomically.
enum AttachedLink {
    Pinned(PinnedLink),
    /// Netlink attachments (kernels before 6.6 have no TCX links): detached with the program.
    Owned(SchedClassifierLinkId),
}

/// Subdirectory of the pin directory holding the pinned links.
const LINKS_DIR: &str = "links";

/// The usual BPF filesystem mount point; mounted by the agent when missing, as Cilium does.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

fn is_bpffs(dir: &Path) -> bool {
    let probe = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    fs_magic(probe) == Some(BPF_FS_MAGIC)
}

/// `mount -t FSTYPE SOURCE TARGET`.
fn mount_fs(source: &str, target: &str, fstype: &str) -> std::io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).map_err(std::io::Error::other);
    let (source, target, fstype) = (c(source)?, c(target)?, c(fstype)?);
    // SAFETY: plain mount(2) with NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes sure `dir` is on a BPF filesystem, mounting one at /sys/fs/bpf when `dir` is below it
/// and nothing is mounted there yet.
fn ensure_bpffs(dir: &Path) -> Result<(), BpfError> {
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
    Err(BpfError::NotBpfFs {
        path: dir.display().to_string(),
    })
}

impl Datapath {
    /// Loads the programs. Maps already pinned under `pin_dir` (by an earlier run of the agent
    /// with the same directory) are reused, so established flows survive a restart.
    pub fn load(opts: &LoadOptions) -> Result<(Self, BpfMaps), BpfError> {
        ensure_bpffs(&opts.pin_dir)?;
        std::fs::create_dir_all(&opts.pin_dir).map_err(|source| BpfError::PinDir {
            path: opts.pin_dir.display().to_string(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&opts.pin_dir)
            .map_max_entries(map_names::SERVICES_V4, opts.max_services)
            .map_max_entries(map_names::SERVICES_V6, opts.max_services)
            .map_max_entries(map_names::BACKENDS_V4, opts.max_backends)
            .map_max_entries(map_names::BACKENDS_V6, opts.max_backends)
            .map_max_entries(map_names::FLOWS_V4, opts.max_flows)
            .map_max_entries(map_names::FLOWS_V6, opts.max_flows)
            .map_max_entries(map_names::SOCK_REVNAT_V4, opts.max_sockets)
            .map_max_entries(map_names::SOCK_REVNAT_V6, opts.max_sockets)
            .load(EBPF_OBJECT)?;
        {
            let name = program_names::XDP_EXT;
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(BpfError::MissingProgram(name))?
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            prog.load()
                .map_err(|source| BpfError::Program { name, source })?;
        }
        for name in [
            program_names::TC_POD_INGRESS,
            program_names::TC_POD_EGRESS,
            program_names::TC_EXT_INGRESS,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(BpfError::MissingProgram(name))?
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            prog.load()
                .map_err(|source| BpfError::Program { name, source })?;
        }
        let links_dir = opts.pin_dir.join(LINKS_DIR);
        std::fs::create_dir_all(&links_dir).map_err(|source| BpfError::PinDir {
            path: links_dir.display().to_string(),
            source,
        })?;
        let cgroup = resolve_cgroup(&opts.socket_lb)?;
        let mut cgroup_links = Vec::new();
        if let Some(dir) = &cgroup {
            let file = std::fs::File::open(dir).map_err(|source| BpfError::Cgroup {
                path: dir.display().to_string(),
                source,
            })?;
            for name in SOCK_PROGRAMS {
                let prog: &mut CgroupSockAddr = ebpf
                    .program_mut(name)
                    .ok_or(BpfError::MissingProgram(name))?
                    .try_into()
                    .map_err(|source| BpfError::Program { name, source })?;
                prog.load()
                    .map_err(|source| BpfError::Program { name, source })?;
                // Attached as a BPF link (kernel 5.7+), which always coexists with other programs
                // on the cgroup (a CNI's, systemd's); the kernel rejects any mode flag on links,
                // so the mode must be the flag-less `Single`.
                let id = prog
                    .attach(&file, CgroupAttachMode::Single)
                    .map_err(|source| BpfError::Program { name, source })?;
                let link = prog
                    .take_link(id)
                    .map_err(|source| BpfError::Program { name, source })?;
                let link: FdLink = link
                    .try_into()
                    .map_err(|source| BpfError::Link { name, source })?;
                // The new link is attached next to the earlier run's, which then goes: for a
                // moment both run, and the second finds nothing left to translate.
                let generation = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let path = links_dir.join(format!("cgroup-{name}-{generation}"));
                cgroup_links.push(pin_link(link, &path)?);
                remove_older_pins(&links_dir, &format!("cgroup-{name}-"), &path);
            }
            tracing::info!(cgroup = %dir.display(), "socket programs attached");
        } else {
            // Socket load balancing switched off: an earlier run's socket programs go too.
            remove_older_pins(&links_dir, "cgroup-", Path::new(""));
        }
        let maps = BpfMaps::take(&mut ebpf)?;
        let xdp_devices = take_map(&mut ebpf, map_names::XDP_DEVICES)?;
        Ok((
            Self {
                ebpf,
                pin_dir: opts.pin_dir.clone(),
                pod_devices: StdHashMap::new(),
                ext_devices: StdHashMap::new(),
                xdp_devices,
                cgroup,
                _cgroup_links: cgroup_links,
            },
            maps,
        ))
    }

    /// The cgroup the socket programs are attached to, if any.
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }

    /// The loaded object, for attaching the kernel logger.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Names of the pod devices programs are attached to.
    pub fn pod_devices(&self) -> impl Iterator<Item = (&str, u32)> {
        self.pod_devices.iter().map(|(n, (i, _))| (n.as_str(), *i))
    }

    fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier, BpfError> {
        self.ebpf
            .program_mut(name)
            .ok_or(BpfError::MissingProgram(name))?
            .try_into()
            .map_err(|source| BpfError::Program { name, source })
    }

    fn tc_pin_path(&self, ifindex: u32, direction: &str) -> PathBuf {
        self.pin_dir
            .join(LINKS_DIR)
            .join(format!("tc-{ifindex}-{direction}"))
    }

    /// Attaches one pod program, replacing an earlier run's program on the same device in one
    /// atomic link update when its pinned link is there (no packet sees no program).
    fn attach_tc(
        &mut self,
        name: &'static str,
        device: &str,
        ifindex: u32,
        attach_type: TcAttachType,
        direction: &str,
    ) -> Result<AttachedLink, BpfError> {
        let path = self.tc_pin_path(ifindex, direction);
        let earlier: Option<SchedClassifierLink> = take_pinned_link(&path);
        let prog = self.classifier(name)?;
        let id = match earlier.map(|link| prog.attach_to_link(link)) {
            Some(Ok(id)) => id,
            // No earlier link, or a defunct one (its device went away meanwhile).
            _ => prog
                .attach(device, attach_type)
                .map_err(|source| BpfError::Program { name, source })?,
        };
        let link = prog
            .take_link(id)
            .map_err(|source| BpfError::Program { name, source })?;
        match FdLink::try_from(link) {
            Ok(fd) => pin_link(fd, &path).map(AttachedLink::Pinned),
            Err(_) => {
                tracing::warn!(
                    "{device}: attached through netlink (no TCX before Linux 6.6); the program \
                     goes away with the agent instead of surviving a restart"
                );
                let id = prog
                    .attach(device, attach_type)
                    .map_err(|source| BpfError::Program { name, source })?;
                Ok(AttachedLink::Owned(id))
            }
        }
    }

    /// Attaches the pod programs (ingress: DNAT, egress: reverse NAT) to a device.
    pub fn attach_pod_device(&mut self, device: &str, ifindex: u32) -> Result<(), BpfError> {
        // TCX (kernel 6.6+) needs no qdisc; on older kernels aya falls back to netlink, which
        // needs clsact. Adding it where it exists already is harmless.
        let _ = aya::programs::tc::qdisc_add_clsact(device);
        let ingress = self.attach_tc(
            program_names::TC_POD_INGRESS,
            device,
            ifindex,
            TcAttachType::Ingress,
            "ingress",
        )?;
        let egress = match self.attach_tc(
            program_names::TC_POD_EGRESS,
            device,
            ifindex,
            TcAttachType::Egress,
            "egress",
        ) {
            Ok(link) => link,
            Err(e) => {
                self.release(program_names::TC_POD_INGRESS, ingress, ifindex, "ingress");
                return Err(e);
            }
        };
        self.pod_devices
            .insert(device.to_owned(), (ifindex, [ingress, egress]));
        Ok(())
    }

    fn release(&mut self, name: &'static str, link: AttachedLink, ifindex: u32, direction: &str) {
        match link {
            AttachedLink::Pinned(pinned) => {
                let _ = pinned.unpin();
            }
            AttachedLink::Owned(id) => {
                if let Ok(p) = self.classifier(name) {
                    let _ = p.detach(id);
                }
            }
        }
        let _ = std::fs::remove_file(self.tc_pin_path(ifindex, direction));
    }

    /// Names of the external devices programs are attached to.
    pub fn ext_devices(&self) -> impl Iterator<Item = (&str, u32)> {
        self.ext_devices
            .iter()
            .map(|(n, d)| (n.as_str(), d.ifindex))
    }

    /// Whether the XDP program runs on an external device.
    pub fn ext_device_has_xdp(&self, device: &str) -> bool {
        self.ext_devices
            .get(device)
            .is_some_and(|d| d.xdp.is_some())
    }

    /// Attaches the external programs to a device of the node: TC ingress translates NodePort,
    /// ExternalIP and LoadBalancer traffic, TC egress restores the service address on replies,
    /// and with `mode` allowing it, XDP takes the same traffic first. Returns why XDP does not
    /// run on the device, if it does not.
    pub fn attach_ext_device(
        &mut self,
        device: &str,
        ifindex: u32,
        mode: DatapathMode,
    ) -> Result<Option<String>, BpfError> {
        let _ = aya::programs::tc::qdisc_add_clsact(device);
        let ingress = self.attach_tc(
            program_names::TC_EXT_INGRESS,
            device,
            ifindex,
            TcAttachType::Ingress,
            "ext-ingress",
        )?;
        let egress = match self.attach_tc(
            program_names::TC_POD_EGRESS,
            device,
            ifindex,
            TcAttachType::Egress,
            "ext-egress",
        ) {
            Ok(link) => link,
            Err(e) => {
                self.release(
                    program_names::TC_EXT_INGRESS,
                    ingress,
                    ifindex,
                    "ext-ingress",
                );
                return Err(e);
            }
        };
        // XDP goes on only once TC is in place: XDP leaves to TC what it cannot finish.
        let (xdp, without_xdp) = match xdp_refusal(device, mode) {
            Some(reason) => (None, Some(reason)),
            None => match self.attach_xdp(ifindex) {
                Ok(link) => (Some(link), None),
                Err(e) => (None, Some(format!("XDP did not attach: {e}"))),
            },
        };
        let (xdp, without_xdp) = match xdp {
            Some(link) => match self.xdp_devices.insert(ifindex, ifindex, None, 0) {
                Ok(()) => (Some(link), None),
                Err(e) => {
                    self.release_xdp(link, ifindex);
                    (
                        None,
                        Some(format!("adding it to the XDP redirect targets failed: {e}")),
                    )
                }
            },
            None => {
                // An earlier run's XDP program on this device goes, as the mode says.
                self.release_xdp_pin(ifindex);
                (None, without_xdp)
            }
        };
        self.ext_devices.insert(
            device.to_owned(),
            ExtDevice {
                ifindex,
                tc: [ingress, egress],
                xdp,
            },
        );
        Ok(without_xdp)
    }

    fn xdp_pin_path(&self, ifindex: u32) -> PathBuf {
        self.pin_dir.join(LINKS_DIR).join(format!("xdp-{ifindex}"))
    }

    /// Attaches the XDP program in native mode, replacing an earlier run's program on the same
    /// device in one atomic link update when its pinned link is there.
    fn attach_xdp(&mut self, ifindex: u32) -> Result<AttachedXdp, BpfError> {
        let name = program_names::XDP_EXT;
        let path = self.xdp_pin_path(ifindex);
        let earlier: Option<XdpLink> = take_pinned_link(&path);
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(BpfError::MissingProgram(name))?
            .try_into()
            .map_err(|source| BpfError::Program { name, source })?;
        let id = match earlier.map(|link| prog.attach_to_link(link)) {
            Some(Ok(id)) => id,
            _ => prog
                .attach_to_if_index(ifindex, XdpMode::Driver)
                .map_err(|source| BpfError::Program { name, source })?,
        };
        let link = prog
            .take_link(id)
            .map_err(|source| BpfError::Program { name, source })?;
        match FdLink::try_from(link) {
            Ok(fd) => pin_link(fd, &path).map(AttachedXdp::Pinned),
            Err(_) => {
                tracing::warn!(
                    "ifindex {ifindex}: XDP attached through netlink (no XDP links before Linux \
                     5.9); the program goes away with the agent instead of surviving a restart"
                );
                let id = prog
                    .attach_to_if_index(ifindex, XdpMode::Driver)
                    .map_err(|source| BpfError::Program { name, source })?;
                Ok(AttachedXdp::Owned(id))
            }
        }
    }

    fn release_xdp(&mut self, link: AttachedXdp, ifindex: u32) {
        match link {
            AttachedXdp::Pinned(pinned) => {
                let _ = pinned.unpin();
            }
            AttachedXdp::Owned(id) => {
                let prog: Option<&mut Xdp> = self
                    .ebpf
                    .program_mut(program_names::XDP_EXT)
                    .and_then(|p| p.try_into().ok());
                if let Some(prog) = prog {
                    let _ = prog.detach(id);
                }
            }
        }
        self.release_xdp_pin(ifindex);
    }

    /// Removes the device from the redirect targets and an XDP link pinned for it, which
    /// detaches an earlier run's program.
    fn release_xdp_pin(&mut self, ifindex: u32) {
        let _ = self.xdp_devices.remove(ifindex);
        let _ = std::fs::remove_file(self.xdp_pin_path(ifindex));
    }

    /// Detaches from an external device, or forgets one that went away.
    pub fn detach_ext_device(&mut self, device: &str) {
        if let Some(ExtDevice {
            ifindex,
            tc: [ingress, egress],
            xdp,
        }) = self.ext_devices.remove(device)
        {
            if let Some(link) = xdp {
                self.release_xdp(link, ifindex);
            }
            self.release(
                program_names::TC_EXT_INGRESS,
                ingress,
                ifindex,
                "ext-ingress",
            );
            self.release(program_names::TC_POD_EGRESS, egress, ifindex, "ext-egress");
        }
    }

    /// Detaches from a device that no longer matches, or forgets one that went away (its links
    /// went with it).
    pub fn detach_pod_device(&mut self, device: &str) {
        if let Some((ifindex, [ingress, egress])) = self.pod_devices.remove(device) {
            self.release(program_names::TC_POD_INGRESS, ingress, ifindex, "ingress");
            self.release(program_names::TC_POD_EGRESS, egress, ifindex, "egress");
        }
    }
}

/// The link an earlier run pinned at `path`, unpinned to be updated with this run's program in
/// place; `None` when there is none, or it is of another kind or defunct.
fn take_pinned_link<L: TryFrom<FdLink>>(path: &Path) -> Option<L> {
    let earlier = path
        .exists()
        .then(|| PinnedLink::from_pin(path).ok())
        .flatten()
        .and_then(|pinned| pinned.unpin().ok())
        .and_then(|fd| L::try_from(fd).ok());
    let _ = std::fs::remove_file(path);
    earlier
}

fn pin_link(fd: FdLink, path: &Path) -> Result<PinnedLink, BpfError> {
    fd.pin(path).map_err(|source| BpfError::Pin {
        path: path.display().to_string(),
        source: std::io::Error::other(source.to_string()),
    })
}

/// Why `mode` keeps XDP off `device`, if it does.
fn xdp_refusal(device: &str, mode: DatapathMode) -> Option<String> {
    match mode {
        DatapathMode::Tc => Some("--datapath-mode tc".to_owned()),
        DatapathMode::Xdp => None,
        DatapathMode::Auto => match crate::devices::driver(device).as_deref() {
            Some("veth") => Some(
                "a veth device (XDP could only send frames into it when its peer runs an XDP \
                 program too; --datapath-mode xdp forces it)"
                    .to_owned(),
            ),
            _ => None,
        },
    }
}

/// Removes pinned links named `prefix*` other than `keep` (an earlier run's), which detaches them.
fn remove_older_pins(dir: &Path, prefix: &str, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path != keep && name.to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The datapath's counters (`lb_ebpf::stats`), summed over CPUs, read from the maps an agent
/// pinned under `pin_dir`; it need not be running.
pub fn read_stats(pin_dir: &Path) -> Result<Vec<(&'static str, u64)>, BpfError> {
    let name = map_names::STATS;
    let data =
        MapData::from_pin(pin_dir.join(name)).map_err(|source| BpfError::Map { name, source })?;
    let stats: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
        .map_err(|source| BpfError::Map { name, source })?;
    Ok(lb_ebpf::stats::NAMES
        .iter()
        .map(|&(index, label)| {
            let value = stats
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0);
            (label, value)
        })
        .collect())
}

/// Removes everything the agent left under `pin_dir`: pinned links (which detaches the
/// programs) and pinned maps. `lb-agent cleanup` runs this when uninstalling.
pub fn cleanup(pin_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(pin_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The agent's handles on the pinned maps.
pub struct BpfMaps {
    services_v4: HashMap<MapData, Service4Key, ServiceValue>,
    services_v6: HashMap<MapData, Service6Key, ServiceValue>,
    backends_v4: HashMap<MapData, u32, Backend4>,
    backends_v6: HashMap<MapData, u32, Backend6>,
    flows_v4: HashMap<MapData, Flow4Key, Flow4Value>,
    flows_v6: HashMap<MapData, Flow6Key, Flow6Value>,
    source_ranges_v4: LpmTrie<MapData, SourceRange<[u8; 4]>, u8>,
    source_ranges_v6: LpmTrie<MapData, SourceRange<[u8; 16]>, u8>,
    node_addr_v4: Array<MapData, [u8; 4]>,
    node_addr_v6: Array<MapData, [u8; 16]>,
    stats: PerCpuArray<MapData, u64>,
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<aya::maps::Map, Error = AyaMapError>,
{
    let map = ebpf.take_map(name).ok_or(BpfError::MissingMap(name))?;
    T::try_from(map).map_err(|source| BpfError::Map { name, source })
}

impl BpfMaps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(Self {
            services_v4: take_map(ebpf, map_names::SERVICES_V4)?,
            services_v6: take_map(ebpf, map_names::SERVICES_V6)?,
            backends_v4: take_map(ebpf, map_names::BACKENDS_V4)?,
            backends_v6: take_map(ebpf, map_names::BACKENDS_V6)?,
            flows_v4: take_map(ebpf, map_names::FLOWS_V4)?,
            flows_v6: take_map(ebpf, map_names::FLOWS_V6)?,
            source_ranges_v4: take_map(ebpf, map_names::SOURCE_RANGES_V4)?,
            source_ranges_v6: take_map(ebpf, map_names::SOURCE_RANGES_V6)?,
            node_addr_v4: take_map(ebpf, map_names::NODE_ADDR_V4)?,
            node_addr_v6: take_map(ebpf, map_names::NODE_ADDR_V6)?,
            stats: take_map(ebpf, map_names::STATS)?,
        })
    }

    /// Every IPv4 flow entry (forward and reply), for inspection and tests.
    pub fn flows_v4(&self) -> Vec<(Flow4Key, Flow4Value)> {
        self.flows_v4.iter().filter_map(Result::ok).collect()
    }

    /// Every IPv6 flow entry (forward and reply), for inspection and tests.
    pub fn flows_v6(&self) -> Vec<(Flow6Key, Flow6Value)> {
        self.flows_v6.iter().filter_map(Result::ok).collect()
    }

    /// Sets the node's address of a family that SNATed external flows leave from; `None` clears
    /// it (external flows to other nodes' backends are then dropped).
    pub fn set_node_addr(
        &mut self,
        family: IpFamily,
        addr: Option<IpAddr>,
    ) -> Result<(), MapError> {
        match (family, addr) {
            (IpFamily::V4, Some(IpAddr::V4(a))) => self.node_addr_v4.set(0, a.octets(), 0),
            (IpFamily::V4, _) => self.node_addr_v4.set(0, [0; 4], 0),
            (IpFamily::V6, Some(IpAddr::V6(a))) => self.node_addr_v6.set(0, a.octets(), 0),
            (IpFamily::V6, _) => self.node_addr_v6.set(0, [0; 16], 0),
        }
        .map_err(|e| io_err("update", map_names::NODE_ADDR_V4, e))
    }

    /// A counter of `lb_ebpf::stats`, summed over CPUs.
    pub fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }
}

fn io_err(op: &'static str, map: &'static str, e: AyaMapError) -> MapError {
    let source = match e {
        AyaMapError::SyscallError(s) => s.io_error,
        other => std::io::Error::other(other.to_string()),
    };
    MapError::Io { op, map, source }
}

/// Deleting an absent key is success: deletes are idempotent.
fn ignore_missing(r: Result<(), AyaMapError>) -> Result<(), AyaMapError> {
    match r {
        Err(AyaMapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}

fn service_key<A>(addr: A, frontend: &Frontend, slot: u16) -> ServiceKey<A> {
    ServiceKey {
        addr,
        port: port_to_map(frontend.addr.port()),
        slot,
        proto: frontend.protocol.number(),
        _pad: [0; 3],
    }
}

impl MapOps for BpfMaps {
    fn put_backend(&mut self, id: BackendId, backend: &BackendKey) -> Result<(), MapError> {
        let (port, proto) = (port_to_map(backend.addr.port()), backend.protocol.number());
        let flags = if backend.local { BACKEND_F_LOCAL } else { 0 };
        match backend.addr.ip() {
            IpAddr::V4(ip) => self
                .backends_v4
                .insert(
                    id,
                    Backend4 {
                        addr: ip.octets(),
                        port,
                        proto,
                        flags,
                    },
                    0,
                )
                .map_err(|e| io_err("insert", map_names::BACKENDS_V4, e)),
            IpAddr::V6(ip) => self
                .backends_v6
                .insert(
                    id,
                    Backend6 {
                        addr: ip.octets(),
                        port,
                        proto,
                        flags,
                    },
                    0,
                )
                .map_err(|e| io_err("insert", map_names::BACKENDS_V6, e)),
        }
    }

    fn delete_backend(&mut self, id: BackendId, family: IpFamily) -> Result<(), MapError> {
        match family {
            IpFamily::V4 => ignore_missing(self.backends_v4.remove(&id))
                .map_err(|e| io_err("delete", map_names::BACKENDS_V4, e)),
            IpFamily::V6 => ignore_missing(self.backends_v6.remove(&id))
                .map_err(|e| io_err("delete", map_names::BACKENDS_V6, e)),
        }
    }

    fn put_slot(
        &mut self,
        frontend: &Frontend,
        slot: u16,
        value: &ServiceValue,
    ) -> Result<(), MapError> {
        match frontend.addr.ip() {
            IpAddr::V4(ip) => self
                .services_v4
                .insert(service_key(ip.octets(), frontend, slot), value, 0)
                .map_err(|e| io_err("insert", map_names::SERVICES_V4, e)),
            IpAddr::V6(ip) => self
                .services_v6
                .insert(service_key(ip.octets(), frontend, slot), value, 0)
                .map_err(|e| io_err("insert", map_names::SERVICES_V6, e)),
        }
    }

    fn delete_slot(&mut self, frontend: &Frontend, slot: u16) -> Result<(), MapError> {
        match frontend.addr.ip() {
            IpAddr::V4(ip) => ignore_missing(self.services_v4.remove(&service_key(
                ip.octets(),
                frontend,
                slot,
            )))
            .map_err(|e| io_err("delete", map_names::SERVICES_V4, e)),
            IpAddr::V6(ip) => ignore_missing(self.services_v6.remove(&service_key(
                ip.octets(),
                frontend,
                slot,
            )))
            .map_err(|e| io_err("delete", map_names::SERVICES_V6, e)),
        }
    }

    fn put_source_range(&mut self, rev_nat_id: u16, range: &IpNet) -> Result<(), MapError> {
        match range {
            IpNet::V4(n) => self
                .source_ranges_v4
                .insert(
                    &range_key(rev_nat_id, n.prefix_len(), n.addr().octets()),
                    1,
                    0,
                )
                .map_err(|e| io_err("insert", map_names::SOURCE_RANGES_V4, e)),
            IpNet::V6(n) => self
                .source_ranges_v6
                .insert(
                    &range_key(rev_nat_id, n.prefix_len(), n.addr().octets()),
                    1,
                    0,
                )
                .map_err(|e| io_err("insert", map_names::SOURCE_RANGES_V6, e)),
        }
    }

    fn delete_source_range(&mut self, rev_nat_id: u16, range: &IpNet) -> Result<(), MapError> {
        match range {
            IpNet::V4(n) => ignore_missing(self.source_ranges_v4.remove(&range_key(
                rev_nat_id,
                n.prefix_len(),
                n.addr().octets(),
            )))
            .map_err(|e| io_err("delete", map_names::SOURCE_RANGES_V4, e)),
            IpNet::V6(n) => ignore_missing(self.source_ranges_v6.remove(&range_key(
                rev_nat_id,
                n.prefix_len(),
                n.addr().octets(),
            )))
            .map_err(|e| io_err("delete", map_names::SOURCE_RANGES_V6, e)),
        }
    }

    fn list_source_ranges(&self) -> Result<Vec<(u16, IpNet)>, MapError> {
        let mut out = Vec::new();
        for key in self.source_ranges_v4.keys() {
            let key = key.map_err(|e| io_err("iterate", map_names::SOURCE_RANGES_V4, e))?;
            let data = key.data();
            let prefix = key.prefix_len().saturating_sub(32) as u8;
            if let Ok(net) = ipnet::Ipv4Net::new(data.addr.into(), prefix) {
                out.push((u16::from_be(data.rev_nat_id), IpNet::V4(net)));
            }
        }
        for key in self.source_ranges_v6.keys() {
            let key = key.map_err(|e| io_err("iterate", map_names::SOURCE_RANGES_V6, e))?;
            let data = key.data();
            let prefix = key.prefix_len().saturating_sub(32) as u8;
            if let Ok(net) = ipnet::Ipv6Net::new(data.addr.into(), prefix) {
                out.push((u16::from_be(data.rev_nat_id), IpNet::V6(net)));
            }
        }
        Ok(out)
    }

    fn list_slots(&self) -> Result<Vec<(Frontend, u16, ServiceValue)>, MapError> {
        let mut out = Vec::new();
        for entry in self.services_v4.iter() {
            let (key, value) = entry.map_err(|e| io_err("iterate", map_names::SERVICES_V4, e))?;
            if let Some(f) = frontend_of(IpAddr::from(key.addr), &key) {
                out.push((f, key.slot, value));
            }
        }
        for entry in self.services_v6.iter() {
            let (key, value) = entry.map_err(|e| io_err("iterate", map_names::SERVICES_V6, e))?;
            if let Some(f) = frontend_of(IpAddr::from(key.addr), &key) {
                out.push((f, key.slot, value));
            }
        }
        Ok(out)
    }

    fn list_backends(&self) -> Result<Vec<(BackendId, IpFamily, Option<BackendKey>)>, MapError> {
        let mut out = Vec::new();
        for entry in self.backends_v4.iter() {
            let (id, b) = entry.map_err(|e| io_err("iterate", map_names::BACKENDS_V4, e))?;
            let key = backend_key(IpAddr::from(b.addr), b.port, b.proto, b.flags);
            out.push((id, IpFamily::V4, key));
        }
        for entry in self.backends_v6.iter() {
            let (id, b) = entry.map_err(|e| io_err("iterate", map_names::BACKENDS_V6, e))?;
            let key = backend_key(IpAddr::from(b.addr), b.port, b.proto, b.flags);
            out.push((id, IpFamily::V6, key));
        }
        Ok(out)
    }
}

/// The LPM key of a source range: 32 bits of rev-NAT ID and padding, then the prefix.
fn range_key<A>(rev_nat_id: u16, prefix_len: u8, addr: A) -> LpmKey<SourceRange<A>>
where
    SourceRange<A>: aya::Pod,
{
    LpmKey::new(
        32 + u32::from(prefix_len),
        SourceRange {
            rev_nat_id: rev_nat_id.to_be(),
            _pad: 0,
            addr,
        },
    )
}

fn protocol_of(proto: u8) -> Option<Protocol> {
    match proto {
        lb_ebpf::PROTO_TCP => Some(Protocol::Tcp),
        lb_ebpf::PROTO_UDP => Some(Protocol::Udp),
        _ => None,
    }
}

fn backend_key(addr: IpAddr, port: u16, proto: u8, flags: u8) -> Option<BackendKey> {
    Some(BackendKey {
        addr: std::net::SocketAddr::new(addr, lb_ebpf::port_from_map(port)),
        protocol: protocol_of(proto)?,
        local: flags & BACKEND_F_LOCAL != 0,
    })
}

fn frontend_of<A>(addr: IpAddr, key: &ServiceKey<A>) -> Option<Frontend> {
    let protocol = protocol_of(key.proto)?;
    Some(Frontend {
        addr: std::net::SocketAddr::new(addr, lb_ebpf::port_from_map(key.port)),
        protocol,
    })
}
