//! The kernel side: loads the embedded programs with their maps pinned under `--bpffs`
//! ([`Programs::load`]), attaches them to devices and cgroups through pinned links
//! ([`attach`]), and keeps the file systems they need ([`fs`]). What the maps should hold is
//! [`crate::lbmap`]'s business; this module never writes a map entry.

pub mod attach;
pub mod compat;
mod fs;
mod object;
pub mod pins;
pub mod settings;

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapError as AyaMapError, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, Xdp,
        links::{FdLink, PinnedLink},
    },
};
use lb_ebpf::{map_names, program_names};
use thiserror::Error;

pub use self::{
    attach::{Attached, DatapathMode},
    fs::resolve_cgroup,
    pins::{ServiceCounterReader, cleanup, read_stats},
    settings::{FlowTimeouts, PortRange},
};

#[derive(Debug, Error)]
pub enum KernelError {
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
        source: aya::pin::PinError,
    },
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: AyaMapError,
    },
    #[error("reading this network namespace's cookie (--socket-lb-scope host needs Linux 5.14+)")]
    NetnsCookie(#[source] std::io::Error),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
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

/// Which sockets the socket programs translate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketLbScope {
    /// Every network namespace of the cgroup: pods' sockets connect to a backend directly.
    #[default]
    All,
    /// The agent's (host) network namespace only, as Cilium's `socketLB.hostNamespaceOnly`:
    /// pods see the service address on their sockets (service meshes, KubeVirt and Kata rely
    /// on that) and the TC programs translate their packets.
    Host,
}

/// Map sizes, flow lifetimes and SNAT ports, where to pin, and where and for whom socket
/// programs attach.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub pin_dir: PathBuf,
    pub max_services: u32,
    pub max_backends: u32,
    /// Entries of the confirmed flow tables, per family.
    pub max_flows: u32,
    /// Entries of the unconfirmed flow tables, per family.
    pub max_new_flows: u32,
    /// Entries of the SNAT maps, per family.
    pub max_snat: u32,
    pub max_sockets: u32,
    /// Session affinity entries per family (clients x frontends with affinity).
    pub max_affinity: u32,
    /// Flow lifetimes, the programs' globals.
    pub timeouts: FlowTimeouts,
    /// Source ports of SNATed flows, the programs' globals.
    pub snat_ports: PortRange,
    pub socket_lb: SocketLb,
    pub socket_lb_scope: SocketLbScope,
    /// What the per-frontend traffic counters count.
    pub service_counters: ServiceCounterLevel,
}

/// What the per-frontend traffic counters (`lb_ebpf::service_stats`) count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceCounterLevel {
    /// Nothing.
    Off,
    /// New flows, refusals and drops by rule: nothing on established packets; a new flow
    /// costs up to 14 % more when new flows spread over 10 000 services (BENCHMARKS.md).
    #[default]
    Flows,
    /// Also every translated packet and its bytes: established packets cost up to 33 % more
    /// when traffic spreads over 10 000 services, about 1 % with one (BENCHMARKS.md).
    Packets,
}

impl ServiceCounterLevel {
    /// The programs' global value (`lb_ebpf::service_stats::LEVEL_*`).
    pub fn global(self) -> u8 {
        match self {
            Self::Off => lb_ebpf::service_stats::LEVEL_OFF,
            Self::Flows => lb_ebpf::service_stats::LEVEL_FLOWS,
            Self::Packets => lb_ebpf::service_stats::LEVEL_PACKETS,
        }
    }
}

/// The cgroup sock_addr programs.
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

/// The socket programs' globals: the node's network namespace, and whether they translate in
/// it only (`--socket-lb-scope host`).
const HOST_NETNS_COOKIE: &str = "HOST_NETNS_COOKIE";
const HOST_ONLY: &str = "HOST_ONLY";

/// Subdirectory of the pin directory holding the pinned links.
const LINKS_DIR: &str = "links";

/// A program of the loaded object, as its type.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, KernelError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(KernelError::MissingProgram(name))?
        .try_into()
        .map_err(|source| KernelError::Program { name, source })
}

/// The loaded programs and where they are attached.
pub struct Programs {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// Device attachments.
    pub devices: attach::Devices,
    /// Links of the socket programs, pinned; held so they stay attached while the agent runs.
    _cgroup_links: Vec<PinnedLink>,
    /// Migrated maps whose old maps the old programs may still write, until this run's
    /// programs replaced them ([`Programs::finish_migrations`]).
    drain: Option<compat::Drain>,
}

impl Programs {
    /// Loads the programs. Maps already pinned under `pin_dir` (by an earlier run of the agent
    /// with the same directory) are reused, so established flows survive a restart: as they are
    /// when they match this build, copied into maps of the new size when only their size
    /// differs, recreated empty when their layout differs ([`compat`]). The socket programs are
    /// attached at once. Take the agent's maps with [`crate::lbmap::bpf::BpfMaps::take`] on
    /// [`Programs::ebpf_mut`].
    pub fn load(opts: &LoadOptions) -> Result<Self, KernelError> {
        fs::ensure_bpffs(&opts.pin_dir)?;
        create_dir(&opts.pin_dir)?;
        settings::check_ephemeral_overlap(opts.snat_ports);
        let host_netns_cookie =
            crate::node::netns::own_cookie().map_err(KernelError::NetnsCookie)?;
        let host_only = u8::from(opts.socket_lb_scope == SocketLbScope::Host);
        let service_counters = opts.service_counters.global();
        let sizes = map_sizes(opts);
        let wanted = compat::wanted_maps(object::EBPF_OBJECT, &sizes.iter().copied().collect())
            .map_err(|e| KernelError::Load(e.into()))?;
        let migrations = compat::prepare(&opts.pin_dir, &wanted)?;

        let timeouts = opts.timeouts.globals();
        let snat_ports = opts.snat_ports.globals();
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(&opts.pin_dir)
            .override_global(HOST_NETNS_COOKIE, &host_netns_cookie, true)
            .override_global(HOST_ONLY, &host_only, true)
            .override_global(lb_ebpf::service_stats::GLOBAL, &service_counters, true);
        // `must_exist`: an object without one of the settings would silently run on its
        // defaults.
        for (name, ns) in &timeouts {
            loader.override_global(name, ns, true);
        }
        for (name, port) in &snat_ports {
            loader.override_global(name, port, true);
        }
        for &(name, max_entries) in &sizes {
            loader.map_max_entries(name, max_entries);
        }
        let mut ebpf = loader.load(object::EBPF_OBJECT)?;
        load_programs(&mut ebpf)?;
        // Nothing of this run is attached yet: the old programs still serve, with the old maps.
        let drain = migrations.finish();
        let links_dir = opts.pin_dir.join(LINKS_DIR);
        create_dir(&links_dir)?;
        let cgroup_links = attach_socket_programs(&mut ebpf, &opts.socket_lb, &links_dir)?;
        Ok(Self {
            ebpf,
            pin_dir: opts.pin_dir.clone(),
            devices: attach::Devices::new(links_dir),
            _cgroup_links: cgroup_links,
            drain: Some(drain),
        })
    }

    /// Copies what the old programs added to migrated maps since the load, and unpins the old
    /// maps ([`compat::Drain::finish`]): call it once this run's programs are on every device.
    pub fn finish_migrations(&mut self) {
        if let Some(drain) = self.drain.take() {
            drain.finish();
        }
    }

    /// The loaded object: for taking the agent's maps, attaching the kernel logger, and the
    /// packet tests.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches the pod programs to a device; see [`attach::Devices::attach_pod`].
    pub fn attach_pod_device(&mut self, device: &str, ifindex: u32) -> Result<(), KernelError> {
        self.devices.attach_pod(&mut self.ebpf, device, ifindex)
    }

    /// Detaches from a pod device, or forgets one that went away.
    pub fn detach_pod_device(&mut self, device: &str) {
        self.devices.detach_pod(&mut self.ebpf, device);
    }

    /// Attaches the external programs to a device; see [`attach::Devices::attach_ext`].
    pub fn attach_ext_device(
        &mut self,
        device: &str,
        ifindex: u32,
        mode: DatapathMode,
    ) -> Result<Attached, KernelError> {
        self.devices
            .attach_ext(&mut self.ebpf, device, ifindex, mode)
    }

    /// Takes the XDP program off an external device, leaving TC to serve it alone.
    pub fn detach_xdp(&mut self, device: &str) {
        self.devices.detach_xdp(&mut self.ebpf, device);
    }

    /// Detaches from an external device, or forgets one that went away.
    pub fn detach_ext_device(&mut self, device: &str) {
        self.devices.detach_ext(&mut self.ebpf, device);
    }

    /// A counter of `lb_ebpf::stats`, summed over CPUs (0 when unreadable).
    pub fn stat(&self, index: u32) -> u64 {
        self.ebpf
            .map(map_names::STATS)
            .and_then(|map| PerCpuArray::<&MapData, u64>::try_from(map).ok())
            .map_or(0, |stats| pins::counter(&stats, index))
    }
}

/// The size of every map that depends on the options (the others keep the object's sizes).
fn map_sizes(opts: &LoadOptions) -> [(&'static str, u32); 16] {
    [
        (map_names::SERVICES_V4, opts.max_services),
        (map_names::SERVICES_V6, opts.max_services),
        (map_names::BACKENDS_V4, opts.max_backends),
        (map_names::BACKENDS_V6, opts.max_backends),
        (map_names::FLOWS_V4, opts.max_flows),
        (map_names::FLOWS_V6, opts.max_flows),
        (map_names::FLOWS_NEW_V4, opts.max_new_flows),
        (map_names::FLOWS_NEW_V6, opts.max_new_flows),
        (map_names::SNAT_V4, opts.max_snat),
        (map_names::SNAT_V6, opts.max_snat),
        (map_names::SOCK_REVNAT_V4, opts.max_sockets),
        (map_names::SOCK_REVNAT_V6, opts.max_sockets),
        (map_names::AFFINITY_V4, opts.max_affinity),
        (map_names::AFFINITY_V6, opts.max_affinity),
        (map_names::SOCK_AFFINITY, opts.max_affinity),
        // At most one match per backend slot, and every slot is a service map entry of one
        // family or the other.
        (
            map_names::AFFINITY_MATCH,
            opts.max_services.saturating_mul(2),
        ),
    ]
}

fn create_dir(path: &Path) -> Result<(), KernelError> {
    std::fs::create_dir_all(path).map_err(|source| KernelError::PinDir {
        path: path.display().to_string(),
        source,
    })
}

/// Loads the device programs into the kernel (the socket programs load as they attach).
fn load_programs(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    let name = program_names::XDP_EXT;
    program::<Xdp>(ebpf, name)?
        .load()
        .map_err(|source| KernelError::Program { name, source })?;
    for name in [
        program_names::TC_POD_INGRESS,
        program_names::TC_POD_EGRESS,
        program_names::TC_EXT_INGRESS,
    ] {
        program::<SchedClassifier>(ebpf, name)?
            .load()
            .map_err(|source| KernelError::Program { name, source })?;
    }
    Ok(())
}

/// Attaches the socket programs to the cgroup `socket_lb` names, through pinned links that
/// replace an earlier run's; with socket load balancing off, an earlier run's links go.
fn attach_socket_programs(
    ebpf: &mut Ebpf,
    socket_lb: &SocketLb,
    links_dir: &Path,
) -> Result<Vec<PinnedLink>, KernelError> {
    let Some(dir) = resolve_cgroup(socket_lb)? else {
        attach::remove_older_pins(links_dir, "cgroup-", Path::new(""));
        return Ok(Vec::new());
    };
    let file = std::fs::File::open(&dir).map_err(|source| KernelError::Cgroup {
        path: dir.display().to_string(),
        source,
    })?;
    let mut links = Vec::new();
    for name in SOCK_PROGRAMS {
        let prog = program::<CgroupSockAddr>(ebpf, name)?;
        prog.load()
            .map_err(|source| KernelError::Program { name, source })?;
        // Attached as a BPF link (kernel 5.7+), which always coexists with other programs on
        // the cgroup (a CNI's, systemd's); the kernel rejects any mode flag on links, so the
        // mode must be the flag-less `Single`.
        let id = prog
            .attach(&file, CgroupAttachMode::Single)
            .map_err(|source| KernelError::Program { name, source })?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(|source| KernelError::Program { name, source })?
            .try_into()
            .map_err(|source| KernelError::Link { name, source })?;
        // The new link is attached next to the earlier run's, which then goes: for a moment
        // both run, and the second finds nothing left to translate.
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = links_dir.join(format!("cgroup-{name}-{generation}"));
        links.push(attach::pin_link(link, &path)?);
        attach::remove_older_pins(links_dir, &format!("cgroup-{name}-"), &path);
    }
    tracing::info!(cgroup = %dir.display(), "socket programs attached");
    Ok(links)
}
