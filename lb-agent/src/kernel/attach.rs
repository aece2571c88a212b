//! Attaching the programs to devices through pinned links. Pinned links outlive the agent, so
//! the datapath keeps serving while the agent restarts, and the next run swaps its programs in
//! with one atomic link update (no packet sees no program). TC and XDP share one algorithm,
//! [`attach_pinned`].

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_ebpf::program_names;

use super::{KernelError, program};

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

/// A program type whose attachments can be pinned and updated in place.
trait LinkedProgram {
    type Id;
    type Link: TryFrom<FdLink>;
    /// Attaches to where `link` points, in place of the program it runs.
    fn update(&mut self, link: Self::Link) -> Result<Self::Id, ProgramError>;
    fn take(&mut self, id: Self::Id) -> Result<Self::Link, ProgramError>;
    fn detach_id(&mut self, id: Self::Id) -> Result<(), ProgramError>;
}

impl LinkedProgram for SchedClassifier {
    type Id = SchedClassifierLinkId;
    type Link = SchedClassifierLink;
    fn update(&mut self, link: Self::Link) -> Result<Self::Id, ProgramError> {
        self.attach_to_link(link)
    }
    fn take(&mut self, id: Self::Id) -> Result<Self::Link, ProgramError> {
        self.take_link(id)
    }
    fn detach_id(&mut self, id: Self::Id) -> Result<(), ProgramError> {
        self.detach(id)
    }
}

impl LinkedProgram for Xdp {
    type Id = XdpLinkId;
    type Link = XdpLink;
    fn update(&mut self, link: Self::Link) -> Result<Self::Id, ProgramError> {
        self.attach_to_link(link)
    }
    fn take(&mut self, id: Self::Id) -> Result<Self::Link, ProgramError> {
        self.take_link(id)
    }
    fn detach_id(&mut self, id: Self::Id) -> Result<(), ProgramError> {
        self.detach(id)
    }
}

/// A program's attachment.
pub enum AttachedLink<Id> {
    Pinned(PinnedLink),
    /// A netlink attachment (no TCX before Linux 6.6, no XDP links before 5.9): detached with
    /// the program instead of surviving the agent.
    Owned(Id),
}

/// Attaches `prog` where the link pinned at `path` points (an earlier run's), updating it in
/// place, or anew with `attach` when there is none (or it is defunct: its device went away);
/// the new link is pinned at `path`.
fn attach_pinned<P>(
    prog: &mut P,
    name: &'static str,
    path: &Path,
    what: &str,
    attach: impl Fn(&mut P) -> Result<P::Id, ProgramError>,
) -> Result<AttachedLink<P::Id>, KernelError>
where
    P: LinkedProgram,
    FdLink: TryFrom<P::Link>,
{
    let earlier: Option<P::Link> = take_pinned_link(path);
    let id = match earlier.map(|link| prog.update(link)) {
        Some(Ok(id)) => id,
        _ => attach(prog).map_err(|source| KernelError::Program { name, source })?,
    };
    let link = prog
        .take(id)
        .map_err(|source| KernelError::Program { name, source })?;
    match FdLink::try_from(link) {
        Ok(fd) => pin_link(fd, path).map(AttachedLink::Pinned),
        Err(_) => {
            tracing::warn!(
                "{what}: attached through netlink (the kernel has no links for it); the program \
                 goes away with the agent instead of surviving a restart"
            );
            let id = attach(prog).map_err(|source| KernelError::Program { name, source })?;
            Ok(AttachedLink::Owned(id))
        }
    }
}

/// Undoes [`attach_pinned`].
fn release<P: LinkedProgram>(prog: Option<&mut P>, link: AttachedLink<P::Id>, path: &Path) {
    match link {
        AttachedLink::Pinned(pinned) => {
            let _ = pinned.unpin();
        }
        AttachedLink::Owned(id) => {
            if let Some(prog) = prog {
                let _ = prog.detach_id(id);
            }
        }
    }
    let _ = std::fs::remove_file(path);
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

pub(super) fn pin_link(fd: FdLink, path: &Path) -> Result<PinnedLink, KernelError> {
    fd.pin(path).map_err(|source| KernelError::Pin {
        path: path.display().to_string(),
        source,
    })
}

/// Removes pinned links named `prefix*` other than `keep` (an earlier run's), which detaches them.
pub(super) fn remove_older_pins(dir: &Path, prefix: &str, keep: &Path) {
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

/// Why `mode` keeps XDP off `device`, if it does.
fn xdp_refusal(device: &str, mode: DatapathMode) -> Option<String> {
    match mode {
        DatapathMode::Tc => Some("--datapath-mode tc".to_owned()),
        DatapathMode::Xdp => None,
        DatapathMode::Auto => match crate::node::devices::driver(device).as_deref() {
            Some("veth") => Some(
                "a veth device (XDP could only send frames into it when its peer runs an XDP \
                 program too; --datapath-mode xdp forces it)"
                    .to_owned(),
            ),
            _ => None,
        },
    }
}

type TcLink = AttachedLink<SchedClassifierLinkId>;

/// The programs on an external device.
struct ExtDevice {
    ifindex: u32,
    tc: [TcLink; 2],
    xdp: Option<AttachedLink<XdpLinkId>>,
}

/// What [`Devices::attach_ext`] attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attached {
    /// TC and XDP: the device may take XDP redirects.
    Xdp,
    /// TC only, and why not XDP.
    TcOnly(String),
}

/// The devices the programs are attached to, by name.
pub struct Devices {
    links_dir: PathBuf,
    /// Pod device -> its ifindex and the links of the two pod programs.
    pod: HashMap<String, (u32, [TcLink; 2])>,
    external: HashMap<String, ExtDevice>,
}

/// The TC program, link pin name and attach point of each direction on a device.
const POD_TC: [(&str, &str, TcAttachType); 2] = [
    (
        program_names::TC_POD_INGRESS,
        "ingress",
        TcAttachType::Ingress,
    ),
    (program_names::TC_POD_EGRESS, "egress", TcAttachType::Egress),
];
const EXT_TC: [(&str, &str, TcAttachType); 2] = [
    (
        program_names::TC_EXT_INGRESS,
        "ext-ingress",
        TcAttachType::Ingress,
    ),
    (
        program_names::TC_POD_EGRESS,
        "ext-egress",
        TcAttachType::Egress,
    ),
];

impl Devices {
    pub(super) fn new(links_dir: PathBuf) -> Self {
        Self {
            links_dir,
            pod: HashMap::new(),
            external: HashMap::new(),
        }
    }

    /// Pod devices the programs are attached to, with their ifindex.
    pub fn pod(&self) -> impl Iterator<Item = (&str, u32)> {
        self.pod.iter().map(|(n, (i, _))| (n.as_str(), *i))
    }

    /// External devices the programs are attached to, with their ifindex.
    pub fn external(&self) -> impl Iterator<Item = (&str, u32)> {
        self.external.iter().map(|(n, d)| (n.as_str(), d.ifindex))
    }

    fn tc_pin_path(&self, ifindex: u32, direction: &str) -> PathBuf {
        self.links_dir.join(format!("tc-{ifindex}-{direction}"))
    }

    fn xdp_pin_path(&self, ifindex: u32) -> PathBuf {
        self.links_dir.join(format!("xdp-{ifindex}"))
    }

    /// Attaches both directions' TC programs; all or nothing.
    fn attach_tc_pair(
        &self,
        ebpf: &mut Ebpf,
        device: &str,
        ifindex: u32,
        programs: &[(&'static str, &str, TcAttachType); 2],
    ) -> Result<[TcLink; 2], KernelError> {
        // TCX (kernel 6.6+) needs no qdisc; on older kernels aya falls back to netlink, which
        // needs clsact. Adding it where it exists already is harmless.
        let _ = aya::programs::tc::qdisc_add_clsact(device);
        let mut links = Vec::with_capacity(2);
        for (name, direction, attach_type) in programs {
            let path = self.tc_pin_path(ifindex, direction);
            let result = program::<SchedClassifier>(ebpf, name).and_then(|prog| {
                attach_pinned(prog, name, &path, device, |p| {
                    p.attach(device, *attach_type)
                })
            });
            match result {
                Ok(link) => links.push(link),
                Err(e) => {
                    for ((name, direction, _), link) in programs.iter().zip(links) {
                        self.release_tc(ebpf, name, link, ifindex, direction);
                    }
                    return Err(e);
                }
            }
        }
        let [ingress, egress]: [TcLink; 2] = links
            .try_into()
            .unwrap_or_else(|_| unreachable!("two programs, two links"));
        Ok([ingress, egress])
    }

    fn release_tc(
        &self,
        ebpf: &mut Ebpf,
        name: &'static str,
        link: TcLink,
        ifindex: u32,
        direction: &str,
    ) {
        let prog = program::<SchedClassifier>(ebpf, name).ok();
        release(prog, link, &self.tc_pin_path(ifindex, direction));
    }

    /// Attaches the pod programs (ingress: DNAT, egress: reverse NAT) to a device.
    pub fn attach_pod(
        &mut self,
        ebpf: &mut Ebpf,
        device: &str,
        ifindex: u32,
    ) -> Result<(), KernelError> {
        let links = self.attach_tc_pair(ebpf, device, ifindex, &POD_TC)?;
        self.pod.insert(device.to_owned(), (ifindex, links));
        Ok(())
    }

    /// Detaches from a pod device that no longer matches, or forgets one that went away (its
    /// links went with it).
    pub fn detach_pod(&mut self, ebpf: &mut Ebpf, device: &str) {
        if let Some((ifindex, links)) = self.pod.remove(device) {
            for ((name, direction, _), link) in POD_TC.iter().zip(links) {
                self.release_tc(ebpf, name, link, ifindex, direction);
            }
        }
    }

    /// Attaches the external programs to a device of the node: TC ingress translates NodePort,
    /// ExternalIP and LoadBalancer traffic, TC egress restores the service address on replies,
    /// and with `mode` allowing it, XDP takes the same traffic first. The caller makes a device
    /// that runs XDP a redirect target ([`crate::lbmap::Writer::add_xdp_device`]), or takes XDP
    /// off again ([`Devices::detach_xdp`]) when it cannot.
    pub fn attach_ext(
        &mut self,
        ebpf: &mut Ebpf,
        device: &str,
        ifindex: u32,
        mode: DatapathMode,
    ) -> Result<Attached, KernelError> {
        let tc = self.attach_tc_pair(ebpf, device, ifindex, &EXT_TC)?;
        // XDP goes on only once TC is in place: XDP leaves to TC what it cannot finish.
        let (xdp, attached) = match xdp_refusal(device, mode) {
            Some(reason) => {
                // An earlier run's XDP program on this device goes, as the mode says.
                let _ = std::fs::remove_file(self.xdp_pin_path(ifindex));
                (None, Attached::TcOnly(reason))
            }
            None => match self.attach_xdp(ebpf, ifindex) {
                Ok(link) => (Some(link), Attached::Xdp),
                Err(e) => {
                    let _ = std::fs::remove_file(self.xdp_pin_path(ifindex));
                    (None, Attached::TcOnly(format!("XDP did not attach: {e}")))
                }
            },
        };
        self.external
            .insert(device.to_owned(), ExtDevice { ifindex, tc, xdp });
        Ok(attached)
    }

    /// Attaches the XDP program in native mode, replacing an earlier run's program on the same
    /// device in one atomic link update when its pinned link is there.
    fn attach_xdp(
        &self,
        ebpf: &mut Ebpf,
        ifindex: u32,
    ) -> Result<AttachedLink<XdpLinkId>, KernelError> {
        let name = program_names::XDP_EXT;
        let prog = program::<Xdp>(ebpf, name)?;
        attach_pinned(
            prog,
            name,
            &self.xdp_pin_path(ifindex),
            &format!("XDP on ifindex {ifindex}"),
            |p| p.attach_to_if_index(ifindex, XdpMode::Driver),
        )
    }

    /// Takes the XDP program off an external device; TC keeps serving it.
    pub fn detach_xdp(&mut self, ebpf: &mut Ebpf, device: &str) {
        let Some(dev) = self.external.get_mut(device) else {
            return;
        };
        if let Some(link) = dev.xdp.take() {
            let path = self.links_dir.join(format!("xdp-{}", dev.ifindex));
            release(
                program::<Xdp>(ebpf, program_names::XDP_EXT).ok(),
                link,
                &path,
            );
        }
    }

    /// Detaches from an external device, or forgets one that went away.
    pub fn detach_ext(&mut self, ebpf: &mut Ebpf, device: &str) {
        self.detach_xdp(ebpf, device);
        if let Some(ExtDevice { ifindex, tc, .. }) = self.external.remove(device) {
            for ((name, direction, _), link) in EXT_TC.iter().zip(tc) {
                self.release_tc(ebpf, name, link, ifindex, direction);
            }
        }
    }
}
