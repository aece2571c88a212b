//! Pinned maps against what this build wants. aya reuses any map pinned under a map's name,
//! whatever its type, sizes or meaning; [`prepare`] looks at each first and keeps it, migrates
//! it into a map of the new size, or has it recreated, before [`aya::EbpfLoader::load`] runs.
//!
//! What a build wants comes from the object's own map definitions (with the sizes of the
//! flags), so it never drifts from the kernel programs. What a pinned map means beyond its
//! shape is [`STATE_LAYOUT`], kept in the pin directory as the target of the `LAYOUT` symlink
//! (bpffs holds no regular files).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    io::{self, ErrorKind},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
    time::Instant,
};

use aya::maps::{MapData, MapInfo};
use aya_obj::{
    Object,
    generated::{BPF_F_RDONLY_PROG, bpf_map_type},
    maps::PinningType,
};

use super::KernelError;

/// The meaning of every pinned map's keys and values. **Bump it whenever a map's key or value
/// changes meaning without changing size** (a field reinterpreted, a flag bit reused, a
/// timestamp of another clock or kind); a change of type, size or flags is seen without it.
/// Maps pinned under another layout are recreated, their entries dropped.
///
/// - none (no `LAYOUT`): flows' `last_seen_ns`, an LRU SNAT map.
/// - `lb-state-2`: flows' absolute `expires_ns` and per-direction closing flags, an
///   unconfirmed flow table, a hash SNAT map (issue 11). Later, in padding that was always
///   zero, so without a bump: flows' `snat_slot` (0, the default SNAT address, is what older
///   entries meant) and SNAT entries' `rev_nat_id` (0: no frontend's counters).
pub const STATE_LAYOUT: &str = "lb-state-2";
/// The symlink in the pin directory whose target is the pinned maps' [`STATE_LAYOUT`].
pub const LAYOUT_FILE: &str = "LAYOUT";
/// Where maps being migrated are pinned while their entries are copied: a crash leaves them
/// there, and the next run puts them back ([`restore_unfinished`]).
const MIGRATING_DIR: &str = "migrating";
/// Where migrated maps stay pinned once copied, until the new programs replaced the old ones
/// on every device ([`Drain::finish`]): the old programs keep writing them (new flows) until
/// then. A crash leaves them there, and the next run copies what they hold first.
const DRAINING_DIR: &str = "draining";

/// Map types whose entries [`copy_entries`] copies: one value per key (no per-CPU values), and
/// keys that can be walked.
const COPYABLE: [bpf_map_type; 4] = [
    bpf_map_type::BPF_MAP_TYPE_HASH,
    bpf_map_type::BPF_MAP_TYPE_LRU_HASH,
    bpf_map_type::BPF_MAP_TYPE_LPM_TRIE,
    bpf_map_type::BPF_MAP_TYPE_ARRAY,
];

/// Whether a map type is an array: every index exists, so a copy writes over the new map's
/// (all-zero) entries, and only once: the programs never write the agent's arrays, so the old
/// map has nothing new to drain.
fn is_array(map_type: u32) -> bool {
    map_type == bpf_map_type::BPF_MAP_TYPE_ARRAY as u32
}

/// What the kernel says a map is, or what this build creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    /// `enum bpf_map_type`.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapShape {
    /// The shape of the map pinned at `path`.
    pub fn of_pin(path: &Path) -> Result<Self, aya::maps::MapError> {
        let info = MapInfo::from_pin(path)?;
        Ok(Self {
            map_type: info.map_type()? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        })
    }
}

/// What to do with a pinned map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The loader reuses it as it is.
    Keep,
    /// Same layout, another size: copied into a new map of `to` entries.
    Migrate { from: u32, to: u32 },
    /// Unpinned; the loader creates a new, empty one.
    Recreate(Reason),
}

/// Why a pinned map is recreated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The pin directory's [`STATE_LAYOUT`] is another (`None`: it has none).
    Layout {
        pinned: Option<String>,
    },
    Type {
        pinned: u32,
        wanted: u32,
    },
    KeySize {
        pinned: u32,
        wanted: u32,
    },
    ValueSize {
        pinned: u32,
        wanted: u32,
    },
    Flags {
        pinned: u32,
        wanted: u32,
    },
    /// Another size, and a type whose entries are not copied (arrays and device maps, which
    /// the agent fills anew).
    Resized {
        map_type: u32,
        pinned: u32,
        wanted: u32,
    },
    /// Not a map the kernel describes: another kind of object, or a failing `BPF_OBJ_GET`.
    Unreadable(String),
}

fn type_name(map_type: u32) -> String {
    match bpf_map_type::try_from(map_type) {
        Ok(t) => format!("{t:?}"),
        Err(_) => format!("map type {map_type}"),
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Layout { pinned: Some(p) } => write!(
                f,
                "the pinned maps have layout {p:?}, this build {STATE_LAYOUT:?}"
            ),
            Self::Layout { pinned: None } => write!(
                f,
                "the pin directory has no {LAYOUT_FILE} (pinned by an agent older than layout \
                 versions), this build's layout is {STATE_LAYOUT:?}"
            ),
            Self::Type { pinned, wanted } => write!(
                f,
                "type {}, this build wants {}",
                type_name(*pinned),
                type_name(*wanted)
            ),
            Self::KeySize { pinned, wanted } => {
                write!(f, "key size {pinned}, this build wants {wanted}")
            }
            Self::ValueSize { pinned, wanted } => {
                write!(f, "value size {pinned}, this build wants {wanted}")
            }
            Self::Flags { pinned, wanted } => {
                write!(f, "flags {pinned:#x}, this build wants {wanted:#x}")
            }
            Self::Resized {
                map_type,
                pinned,
                wanted,
            } => write!(
                f,
                "max_entries {pinned}, this build wants {wanted} (a {} is not copied)",
                type_name(*map_type)
            ),
            Self::Unreadable(e) => write!(f, "not a readable BPF map ({e})"),
        }
    }
}

/// Whether the map `pinned` under the layout `pinned_layout` can serve as this build's
/// `wanted`: the layout first (a map of another meaning is never kept, whatever its shape), then
/// type, key and value sizes and flags, then the size.
pub fn decide(pinned_layout: Option<&str>, pinned: &MapShape, wanted: &MapShape) -> Decision {
    if pinned_layout != Some(STATE_LAYOUT) {
        return Decision::Recreate(Reason::Layout {
            pinned: pinned_layout.map(str::to_owned),
        });
    }
    let MapShape {
        map_type,
        key_size,
        value_size,
        max_entries,
        flags,
    } = *wanted;
    let reason = if pinned.map_type != map_type {
        Reason::Type {
            pinned: pinned.map_type,
            wanted: map_type,
        }
    } else if pinned.key_size != key_size {
        Reason::KeySize {
            pinned: pinned.key_size,
            wanted: key_size,
        }
    } else if pinned.value_size != value_size {
        Reason::ValueSize {
            pinned: pinned.value_size,
            wanted: value_size,
        }
    } else if pinned.flags != flags {
        Reason::Flags {
            pinned: pinned.flags,
            wanted: flags,
        }
    } else if pinned.max_entries == max_entries {
        return Decision::Keep;
    } else if COPYABLE.iter().any(|t| *t as u32 == map_type) {
        return Decision::Migrate {
            from: pinned.max_entries,
            to: max_entries,
        };
    } else {
        Reason::Resized {
            map_type,
            pinned: pinned.max_entries,
            wanted: max_entries,
        }
    };
    Decision::Recreate(reason)
}

/// The maps of `object` that are pinned by name, as this build creates them: with the sizes of
/// `max_entries` (the loader's `map_max_entries`), and the value size aya gives device maps.
pub fn wanted_maps(
    object: &[u8],
    max_entries: &HashMap<&str, u32>,
) -> Result<BTreeMap<String, MapShape>, aya_obj::ParseError> {
    let object = Object::parse(object)?;
    Ok(object
        .maps
        .iter()
        .filter(|(_, map)| map.pinning() == PinningType::ByName)
        .map(|(name, map)| {
            let map_type = map.map_type();
            let (mut value_size, mut flags) = (map.value_size(), map.map_flags());
            match bpf_map_type::try_from(map_type) {
                // aya sizes their values by what the kernel supports (`value_size_override` in
                // `EbpfLoader::load`), and the kernel makes them read-only to programs
                // (`dev_map_init_map` in kernel/bpf/devmap.c, `cpu_map_alloc` in cpumap.c).
                Ok(bpf_map_type::BPF_MAP_TYPE_DEVMAP | bpf_map_type::BPF_MAP_TYPE_DEVMAP_HASH) => {
                    value_size = if aya::features().devmap_prog_id() {
                        8
                    } else {
                        4
                    };
                    flags |= BPF_F_RDONLY_PROG;
                }
                Ok(bpf_map_type::BPF_MAP_TYPE_CPUMAP) => {
                    value_size = if aya::features().cpumap_prog_id() {
                        8
                    } else {
                        4
                    };
                    flags |= BPF_F_RDONLY_PROG;
                }
                _ => {}
            }
            let shape = MapShape {
                map_type,
                key_size: map.key_size(),
                value_size,
                max_entries: max_entries
                    .get(name.as_str())
                    .copied()
                    .unwrap_or_else(|| map.max_entries()),
                flags,
            };
            (name.clone(), shape)
        })
        .collect())
}

/// The layout of the maps pinned under `pin_dir`; `None` without a `LAYOUT` symlink.
pub fn read_layout(pin_dir: &Path) -> Option<String> {
    std::fs::read_link(pin_dir.join(LAYOUT_FILE))
        .ok()
        .map(|target| target.to_string_lossy().into_owned())
}

/// Records [`STATE_LAYOUT`] as the layout of the maps pinned under `pin_dir`, atomically (a
/// new symlink renamed over the old; bpffs refuses names with a dot).
fn write_layout(pin_dir: &Path) -> io::Result<()> {
    if read_layout(pin_dir).as_deref() == Some(STATE_LAYOUT) {
        return Ok(());
    }
    let tmp = pin_dir.join(format!("{LAYOUT_FILE}-new"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(STATE_LAYOUT, &tmp)?;
    std::fs::rename(&tmp, pin_dir.join(LAYOUT_FILE))
}

fn pin_error(path: &Path, source: io::Error) -> KernelError {
    KernelError::PinDir {
        path: path.display().to_string(),
        source,
    }
}

/// Puts back every map a run left under `migrating/` (it stopped before it attached anything,
/// so those are still the maps the attached programs use), replacing what that run pinned in
/// their place.
fn restore_unfinished(pin_dir: &Path) -> io::Result<()> {
    let dir = pin_dir.join(MIGRATING_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let to = pin_dir.join(entry.file_name());
        tracing::warn!(
            "pinned map {}: putting back the map an unfinished migration left in {}",
            entry.file_name().to_string_lossy(),
            dir.display()
        );
        std::fs::rename(entry.path(), &to)?;
    }
    std::fs::remove_dir(&dir)
}

/// A map moved aside to be copied into its new one after the load.
#[derive(Debug)]
struct Pending {
    name: String,
    from: u32,
    to: u32,
}

/// The migrations [`prepare`] set up. [`Migrations::finish`] copies the entries once the
/// loader created the new maps; dropped unfinished (the load failed), it puts the old maps back.
#[derive(Debug)]
#[must_use = "dropping the migrations puts the old maps back"]
pub struct Migrations {
    pin_dir: PathBuf,
    pending: Vec<Pending>,
    finished: bool,
}

/// Decides for every map of `wanted` pinned under `pin_dir` ([`decide`]) and acts before the
/// load: maps to recreate are unpinned, maps to migrate moved aside, the others left for the
/// loader to reuse. Fails only when the pin directory cannot be changed.
pub fn prepare(
    pin_dir: &Path,
    wanted: &BTreeMap<String, MapShape>,
) -> Result<Migrations, KernelError> {
    restore_unfinished(pin_dir).map_err(|e| pin_error(&pin_dir.join(MIGRATING_DIR), e))?;
    drain_leftovers(pin_dir);
    let layout = read_layout(pin_dir);
    let mut pending = Vec::new();
    for (name, want) in wanted {
        let path = pin_dir.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        let decision = match MapShape::of_pin(&path) {
            Ok(pinned) => decide(layout.as_deref(), &pinned, want),
            Err(e) => Decision::Recreate(Reason::Unreadable(e.to_string())),
        };
        match decision {
            Decision::Keep => {}
            Decision::Recreate(reason) => {
                tracing::warn!("recreating pinned map {name}: {reason}; its entries are dropped");
                std::fs::remove_file(&path).map_err(|e| pin_error(&path, e))?;
            }
            Decision::Migrate { from, to } => {
                let dir = pin_dir.join(MIGRATING_DIR);
                std::fs::create_dir_all(&dir).map_err(|e| pin_error(&dir, e))?;
                std::fs::rename(&path, dir.join(name)).map_err(|e| pin_error(&path, e))?;
                pending.push(Pending {
                    name: name.clone(),
                    from,
                    to,
                });
            }
        }
    }
    report_unknown(pin_dir, wanted);
    Ok(Migrations {
        pin_dir: pin_dir.to_path_buf(),
        pending,
        finished: false,
    })
}

/// Logs pinned objects this build does not use (an older build's maps): they stay, for a
/// rollback, until `lb-agent cleanup`.
fn report_unknown(pin_dir: &Path, wanted: &BTreeMap<String, MapShape>) {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = wanted.contains_key(&name)
            || name == LAYOUT_FILE
            || entry
                .file_type()
                .is_ok_and(|t| t.is_dir() || t.is_symlink());
        if !ours {
            tracing::info!(
                "{} is not a map of this build; left in place (`lb-agent cleanup` removes the \
                 pin directory)",
                entry.path().display()
            );
        }
    }
}

impl Migrations {
    /// Copies every migrated map's entries into the map the loader created in its place and
    /// records this build's [`STATE_LAYOUT`]. Call it after the load and before any program is
    /// attached, so that the new maps hold every flow the old programs tracked; failures are
    /// logged, never fatal (the flows they lose start anew). The old maps stay pinned, as the
    /// old programs still serve: [`Drain::finish`] copies what they added since, once the new
    /// programs replaced them.
    pub fn finish(mut self) -> Drain {
        let mut drain = Drain {
            pin_dir: self.pin_dir.clone(),
            names: Vec::new(),
        };
        for p in &self.pending {
            if migrate(&self.pin_dir, p) {
                drain.names.push(p.name.clone());
            }
        }
        self.finished = true;
        let dir = self.pin_dir.join(MIGRATING_DIR);
        if let Err(e) = std::fs::remove_dir(&dir)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", dir.display());
        }
        if let Err(e) = write_layout(&self.pin_dir) {
            tracing::warn!(
                "recording the maps' layout in {}: {e}; the next run will recreate them",
                self.pin_dir.join(LAYOUT_FILE).display()
            );
        }
        drain
    }
}

/// Migrated maps whose old map the old programs may still write ([`Migrations::finish`]).
#[derive(Debug)]
#[must_use = "the old maps stay pinned until the drain is finished"]
pub struct Drain {
    pin_dir: PathBuf,
    names: Vec<String>,
}

impl Drain {
    /// Whether there is anything to drain.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Copies the entries the old programs added to the old maps after the first copy (flows
    /// that started between the load and the attachment of the new programs) into the new
    /// maps, never over an entry the new programs wrote, and unpins the old maps. Call it once
    /// the new programs run on every device.
    pub fn finish(self) {
        for name in &self.names {
            drain_one(&self.pin_dir, name);
        }
        remove_draining_dir(&self.pin_dir);
    }
}

/// Copies a drained map (under `draining/`) into its pinned successor once more and unpins it.
fn drain_one(pin_dir: &Path, name: &str) {
    let old_path = pin_dir.join(DRAINING_DIR).join(name);
    let result = MapData::from_pin(&old_path)
        .map_err(|e| format!("opening the old map: {e}"))
        .and_then(|old| {
            let new = MapData::from_pin(pin_dir.join(name))
                .map_err(|e| format!("opening the new map: {e}"))?;
            copy_map(&old, &new).map_err(|e| e.to_string())
        });
    match result {
        Ok(c) => tracing::info!(
            "pinned map {name}: {} entries the old programs added during the migration copied",
            c.read
        ),
        Err(e) => tracing::warn!("draining the old map of {name}: {e}"),
    }
    if let Err(e) = std::fs::remove_file(&old_path) {
        tracing::warn!("unpinning the old map {}: {e}", old_path.display());
    }
}

fn remove_draining_dir(pin_dir: &Path) {
    let dir = pin_dir.join(DRAINING_DIR);
    if let Err(e) = std::fs::remove_dir(&dir)
        && e.kind() != ErrorKind::NotFound
    {
        tracing::warn!("removing {}: {e}", dir.display());
    }
}

/// Finishes the drain a run left unfinished (it stopped before its programs were on every
/// device): what the old maps hold goes into the maps pinned now.
fn drain_leftovers(pin_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(pin_dir.join(DRAINING_DIR)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        tracing::warn!("pinned map {name}: finishing the drain an earlier run left");
        drain_one(pin_dir, &name);
    }
    remove_draining_dir(pin_dir);
}

impl Drop for Migrations {
    fn drop(&mut self) {
        if !self.finished
            && !self.pending.is_empty()
            && let Err(e) = restore_unfinished(&self.pin_dir)
        {
            tracing::error!(
                "putting the pinned maps back after a failed load in {}: {e}",
                self.pin_dir.display()
            );
        }
    }
}

/// Copies one map's entries from its old map (under `migrating/`) into the new one, then moves
/// the old one to `draining/` (`true`: [`Drain::finish`] copies it again), or unpins it (an
/// array, or a failed copy).
fn migrate(pin_dir: &Path, p: &Pending) -> bool {
    let Pending { name, from, to } = p;
    let old_path = pin_dir.join(MIGRATING_DIR).join(name);
    let mut array = false;
    let result = MapData::from_pin(&old_path)
        .map_err(|e| format!("opening the old map: {e}"))
        .and_then(|old| {
            let new = MapData::from_pin(pin_dir.join(name))
                .map_err(|e| format!("opening the new map: {e}"))?;
            array = old
                .info()
                .and_then(|i| i.map_type())
                .is_ok_and(|t| is_array(t as u32));
            copy_map(&old, &new).map_err(|e| e.to_string())
        });
    let copied = result.is_ok();
    match result {
        Ok(c) => {
            let dropped = c.dropped();
            let message = format!(
                "migrated pinned map {name}: max_entries {from} -> {to}, {} of {} entries \
                 copied, {dropped} dropped (did not fit) in {:?}",
                c.present, c.read, c.took
            );
            match c.first_error {
                Some(e) => tracing::warn!("{message}; first failed update: {e}"),
                None if dropped > 0 => tracing::warn!("{message}"),
                None => tracing::info!("{message}"),
            }
        }
        Err(e) => tracing::warn!(
            "migrating pinned map {name} (max_entries {from} -> {to}): {e}; its entries are \
             dropped"
        ),
    }
    if copied && !array {
        let dir = pin_dir.join(DRAINING_DIR);
        match std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::rename(&old_path, dir.join(name)))
        {
            Ok(()) => return true,
            Err(e) => tracing::warn!(
                "keeping the old map of {name} for a last copy in {}: {e}",
                dir.display()
            ),
        }
    }
    if let Err(e) = std::fs::remove_file(&old_path) {
        tracing::warn!("unpinning the old map {}: {e}", old_path.display());
    }
    false
}

/// What [`copy_map`] did.
#[derive(Debug)]
pub struct Copied {
    /// Entries read from the old map.
    pub read: u64,
    /// Entries in the new map afterwards: fewer than `read` when the new one is smaller (a
    /// full hash map refuses more, an LRU map evicts).
    pub present: u64,
    /// The first update that failed, other than for a key the new map has already.
    pub first_error: Option<io::Error>,
    pub took: std::time::Duration,
}

impl Copied {
    /// Entries read that the new map does not hold.
    pub fn dropped(&self) -> u64 {
        self.read.saturating_sub(self.present)
    }
}

/// Copies every entry of `from` into `to`, a map of the same type, key and value sizes (a hash,
/// LRU hash or LPM trie map: never over an entry `to` has already; an array: every index both
/// have, over `to`'s). Entries that do not fit are left out: [`Copied::dropped`].
pub fn copy_map(from: &MapData, to: &MapData) -> Result<Copied, aya::maps::MapError> {
    use aya::maps::MapError;
    let (a, b) = (from.info()?, to.info()?);
    let (a_type, b_type) = (a.map_type()? as u32, b.map_type()? as u32);
    if !COPYABLE.iter().any(|t| *t as u32 == a_type) {
        return Err(MapError::InvalidMapType { map_type: a_type });
    }
    if b_type != a_type {
        return Err(MapError::InvalidMapType { map_type: b_type });
    }
    if a.key_size() != b.key_size() {
        return Err(MapError::InvalidKeySize {
            size: b.key_size() as usize,
            expected: a.key_size() as usize,
        });
    }
    if a.value_size() != b.value_size() {
        return Err(MapError::InvalidValueSize {
            size: b.value_size() as usize,
            expected: a.value_size() as usize,
        });
    }
    Ok(copy_entries(
        from.fd().as_fd(),
        to.fd().as_fd(),
        (a.key_size() as usize, a.value_size() as usize),
        a.max_entries().max(b.max_entries()),
        is_array(a_type),
    ))
}

/// Copies every entry of `from` into `to` (never over one `to` holds already), both maps of
/// `(key, value)` sizes; walks at most `2 * max_entries` keys, as a map the old programs keep
/// changing can send the walk back to its start.
fn copy_entries(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    (key_size, value_size): (usize, usize),
    max_entries: u32,
    overwrite: bool,
) -> Copied {
    let start = Instant::now();
    let limit = u64::from(max_entries) * 2 + 1024;
    let (mut key, mut next, mut value) = (
        vec![0_u8; key_size],
        vec![0_u8; key_size],
        vec![0_u8; value_size],
    );
    let (mut read, mut first_error) = (0, None);
    let mut first = true;
    for _ in 0..limit {
        match raw::next_key(from, (!first).then_some(&key[..]), &mut next) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                first_error.get_or_insert(e);
                break;
            }
        }
        first = false;
        std::mem::swap(&mut key, &mut next);
        // Gone meanwhile (expired, evicted): nothing to copy.
        if !matches!(raw::lookup(from, &key, &mut value), Ok(true)) {
            continue;
        }
        let update = if overwrite {
            raw::update(to, &key, &value)
        } else {
            raw::update_noexist(to, &key, &value)
        };
        match update {
            Ok(()) => read += 1,
            // Copied already: the walk went back to the start.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => {
                read += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    Copied {
        read,
        present: count_entries(to, key_size, limit),
        first_error,
        took: start.elapsed(),
    }
}

/// Number of entries of a map with keys of `key_size` bytes (at most `limit`).
pub(crate) fn count_entries(map: BorrowedFd<'_>, key_size: usize, limit: u64) -> u64 {
    let (mut key, mut next) = (vec![0_u8; key_size], vec![0_u8; key_size]);
    let mut n = 0;
    while n < limit {
        match raw::next_key(map, (n > 0).then_some(&key[..]), &mut next) {
            Ok(true) => n += 1,
            Ok(false) | Err(_) => break,
        }
        std::mem::swap(&mut key, &mut next);
    }
    n
}

/// The three map commands of `bpf(2)` a copy needs, on byte buffers of the map's own sizes
/// (aya's typed maps want the sizes at compile time).
mod raw {
    use super::*;

    /// `enum bpf_cmd` (`linux/bpf.h`).
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    /// Update flag: only create, never replace.
    const BPF_NOEXIST: u64 = 1;

    /// The map element member of `union bpf_attr`: `value` is `next_key` for
    /// `BPF_MAP_GET_NEXT_KEY`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    fn bpf(
        cmd: libc::c_long,
        map: BorrowedFd<'_>,
        key: *const u8,
        value: *mut u8,
        flags: u64,
    ) -> io::Result<()> {
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key as u64,
            value: value as u64,
            flags,
        };
        // SAFETY: `attr` is the command's member of `union bpf_attr`, passed with its size; the
        // buffers it points to are the map's key and value sizes (checked by the callers) and
        // outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &raw mut attr,
                std::mem::size_of::<ElemAttr>(),
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The key after `key` (the first with `None`) into `next`; `false` past the last.
    pub(super) fn next_key(
        map: BorrowedFd<'_>,
        key: Option<&[u8]>,
        next: &mut [u8],
    ) -> io::Result<bool> {
        debug_assert!(key.is_none_or(|k| k.len() == next.len()));
        let key = key.map_or(std::ptr::null(), <[u8]>::as_ptr);
        match bpf(BPF_MAP_GET_NEXT_KEY, map, key, next.as_mut_ptr(), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The value of `key` into `value`; `false` when there is none.
    pub(super) fn lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
        match bpf(
            BPF_MAP_LOOKUP_ELEM,
            map,
            key.as_ptr(),
            value.as_mut_ptr(),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets `key` to `value`, whether the map has it or not.
    pub(super) fn update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
        // The kernel only reads the value of an update.
        bpf(
            BPF_MAP_UPDATE_ELEM,
            map,
            key.as_ptr(),
            value.as_ptr().cast_mut(),
            0,
        )
    }

    /// Creates `key` with `value`; `AlreadyExists` when the map has it.
    pub(super) fn update_noexist(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
        // The kernel only reads the value of an update.
        bpf(
            BPF_MAP_UPDATE_ELEM,
            map,
            key.as_ptr(),
            value.as_ptr().cast_mut(),
            BPF_NOEXIST,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LRU: u32 = bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32;
    const HASH: u32 = bpf_map_type::BPF_MAP_TYPE_HASH as u32;
    const ARRAY: u32 = bpf_map_type::BPF_MAP_TYPE_ARRAY as u32;

    const fn shape(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> MapShape {
        MapShape {
            map_type,
            key_size,
            value_size,
            max_entries,
            flags: 0,
        }
    }

    const FLOWS: MapShape = shape(LRU, 16, 24, 524_288);
    const HERE: Option<&str> = Some(STATE_LAYOUT);

    #[test]
    fn the_same_map_is_kept() {
        assert_eq!(decide(HERE, &FLOWS, &FLOWS), Decision::Keep);
        let stats = shape(bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32, 4, 8, 16);
        assert_eq!(decide(HERE, &stats, &stats), Decision::Keep);
    }

    #[test]
    fn another_size_of_the_same_layout_is_migrated() {
        let bigger = MapShape {
            max_entries: 1 << 20,
            ..FLOWS
        };
        assert_eq!(
            decide(HERE, &FLOWS, &bigger),
            Decision::Migrate {
                from: 524_288,
                to: 1 << 20
            }
        );
        assert_eq!(
            decide(HERE, &bigger, &FLOWS),
            Decision::Migrate {
                from: 1 << 20,
                to: 524_288
            }
        );
        let snat = shape(HASH, 16, 24, 1024);
        let lpm = shape(bpf_map_type::BPF_MAP_TYPE_LPM_TRIE as u32, 12, 1, 64);
        for m in [snat, lpm] {
            let resized = MapShape {
                max_entries: 4096,
                ..m
            };
            assert!(matches!(
                decide(HERE, &m, &resized),
                Decision::Migrate { to: 4096, .. }
            ));
        }
    }

    #[test]
    fn another_size_of_a_per_cpu_array_is_recreated_of_an_array_migrated() {
        let stats = shape(bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32, 4, 8, 16);
        let more = MapShape {
            max_entries: 17,
            ..stats
        };
        let Decision::Recreate(reason) = decide(HERE, &stats, &more) else {
            panic!("a per-CPU array is not copied");
        };
        assert_eq!(
            reason.to_string(),
            "max_entries 16, this build wants 17 (a BPF_MAP_TYPE_PERCPU_ARRAY is not copied)"
        );
        // A plain array's entries are copied (the node's SNAT address slots grew so).
        let array = shape(ARRAY, 4, 4, 1);
        assert_eq!(
            decide(
                HERE,
                &array,
                &MapShape {
                    max_entries: 32,
                    ..array
                }
            ),
            Decision::Migrate { from: 1, to: 32 }
        );
    }

    #[test]
    fn another_layout_is_recreated_whatever_the_shape() {
        assert_eq!(
            decide(None, &FLOWS, &FLOWS),
            Decision::Recreate(Reason::Layout { pinned: None })
        );
        let Decision::Recreate(reason) = decide(Some("lb-state-1"), &FLOWS, &FLOWS) else {
            panic!("kept a map of another layout");
        };
        assert_eq!(
            reason.to_string(),
            format!("the pinned maps have layout \"lb-state-1\", this build {STATE_LAYOUT:?}")
        );
        assert!(
            Reason::Layout { pinned: None }
                .to_string()
                .contains("no LAYOUT"),
        );
        // Even one that only needs resizing.
        let bigger = MapShape {
            max_entries: 1 << 20,
            ..FLOWS
        };
        assert!(matches!(
            decide(Some("lb-state-1"), &FLOWS, &bigger),
            Decision::Recreate(Reason::Layout { .. })
        ));
    }

    #[test]
    fn another_type_or_key_or_value_size_or_flags_is_recreated_with_the_reason() {
        for (pinned, reason, text) in [
            (
                MapShape {
                    map_type: HASH,
                    ..FLOWS
                },
                Reason::Type {
                    pinned: HASH,
                    wanted: LRU,
                },
                "type BPF_MAP_TYPE_HASH, this build wants BPF_MAP_TYPE_LRU_HASH",
            ),
            (
                MapShape {
                    key_size: 12,
                    ..FLOWS
                },
                Reason::KeySize {
                    pinned: 12,
                    wanted: 16,
                },
                "key size 12, this build wants 16",
            ),
            (
                MapShape {
                    value_size: 8,
                    ..FLOWS
                },
                Reason::ValueSize {
                    pinned: 8,
                    wanted: 24,
                },
                "value size 8, this build wants 24",
            ),
            (
                MapShape { flags: 1, ..FLOWS },
                Reason::Flags {
                    pinned: 1,
                    wanted: 0,
                },
                "flags 0x1, this build wants 0x0",
            ),
        ] {
            // Also with another size: the layout decides before the size.
            for max_entries in [FLOWS.max_entries, 1024] {
                let pinned = MapShape {
                    max_entries,
                    ..pinned
                };
                assert_eq!(
                    decide(HERE, &pinned, &FLOWS),
                    Decision::Recreate(reason.clone())
                );
            }
            assert_eq!(reason.to_string(), text);
        }
        assert_eq!(
            Reason::Type {
                pinned: 4242,
                wanted: LRU
            }
            .to_string(),
            "type map type 4242, this build wants BPF_MAP_TYPE_LRU_HASH"
        );
    }

    /// The object's own definitions, with the flags' sizes: what the loader creates.
    #[test]
    fn wanted_maps_come_from_the_object_with_the_flags_sizes() {
        use lb_ebpf::{Flow4Key, Flow4Value, Snat6Key, Snat6Value, map_names};
        use std::mem::size_of;

        let sizes = HashMap::from([(map_names::FLOWS_V4, 1000), (map_names::SNAT_V6, 77)]);
        let wanted = wanted_maps(super::super::object::EBPF_OBJECT, &sizes).unwrap();
        assert_eq!(
            wanted[map_names::FLOWS_V4],
            MapShape {
                map_type: LRU,
                key_size: size_of::<Flow4Key>() as u32,
                value_size: size_of::<Flow4Value>() as u32,
                max_entries: 1000,
                flags: 0,
            }
        );
        assert_eq!(
            wanted[map_names::SNAT_V6],
            MapShape {
                map_type: HASH,
                key_size: size_of::<Snat6Key>() as u32,
                value_size: size_of::<Snat6Value>() as u32,
                max_entries: 77,
                flags: 0,
            }
        );
        assert_eq!(
            wanted[map_names::FLOWS_NEW_V4].max_entries,
            lb_ebpf::DEFAULT_MAX_NEW_FLOWS
        );
        assert!(
            wanted.keys().all(|name| name.starts_with("LB_")),
            "only the pinned maps: {:?}",
            wanted.keys()
        );
        assert!(wanted.contains_key(map_names::STATS));
    }
}
