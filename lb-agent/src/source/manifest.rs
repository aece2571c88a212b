//! The manifest source: Service and EndpointSlice objects from `*.yaml`, `*.yml` and `*.json`
//! files in one directory, as `kubectl get svc,endpointslices -o yaml` prints them (multi-document
//! YAML, `kind: List`, server-set fields and all), and this node's Node object when one is there
//! ([`ManifestSource::with_node_name`]): as from the API, its zone, eligibility and InternalIPs.
//!
//! A file or object that cannot be used is reported with file, kind, namespace/name and reason,
//! and the last good version of what it held stays in force: a bad edit never flushes a service
//! that was being served.

use std::{
    collections::BTreeMap,
    fs,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use k8s_openapi::api::{
    core::v1::{Node, Service as K8sService},
    discovery::v1::EndpointSlice as K8sEndpointSlice,
};
use serde::Deserialize;

use super::{
    convert,
    snapshot::{Changes, NodeState, Snapshot},
};
use crate::model::{EndpointSlice, Kind, ObjectKey, Service};

#[derive(Clone, Debug)]
enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Node(NodeState),
}

/// How long before a read a file's modification time must lie for its stamp to prove the file
/// unchanged later. File systems stamp writes with a coarse clock (a kernel tick, whole seconds on
/// some), so a same-size rewrite just after a read can keep the stamp; such "racily clean" files
/// (git's term) are compared by content instead.
const STAMP_GRANULARITY: Duration = Duration::from_secs(2);

/// Deepest nesting of YAML flow collections (`[...]`, `{...}`) read. serde_yaml rejects more than
/// 128 levels of nesting anyway, but only after libyaml has scanned the whole document, in time
/// that grows with length times flow depth: 160 KB of `{a: ` took seconds.
const MAX_FLOW_DEPTH: usize = 128;

#[derive(Clone, Debug, Default)]
struct FileState {
    /// Modification time and size when last read; unchanged files are not parsed again.
    stamp: Option<(SystemTime, u64)>,
    /// When the file was last read; a stamp this recent does not prove anything.
    read_at: Option<SystemTime>,
    /// Hash of the text last read (good or not): a touched file is not parsed again either.
    content: Option<u64>,
    objects: BTreeMap<ObjectKey, Object>,
}

/// What one reload found wrong or worth a warning. Every line names the file and the object.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// A file came, went, or holds other text than at the reload before.
    pub changed: bool,
}

/// The objects of a manifest directory, kept up to date by [`ManifestSource::reload`].
#[derive(Debug)]
pub struct ManifestSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Whose Node object is this node's.
    node_name: Option<String>,
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

impl ManifestSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            node_name: None,
        }
    }

    /// Takes the Node object of this name, when the directory holds one, as this node's
    /// ([`Snapshot::node`]); without a name, or without such an object, there is none.
    pub fn with_node_name(mut self, name: Option<&str>) -> Self {
        self.node_name = name.map(str::to_owned);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory again. Only a directory that cannot be listed is an error; then
    /// nothing changes.
    pub fn reload(&mut self) -> io::Result<Report> {
        let mut paths = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if is_manifest(&path) && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut report = Report::default();
        let mut files = BTreeMap::new();
        for path in paths {
            let previous = self.files.remove(&path).unwrap_or_default();
            let (was, was_read) = (previous.content, previous.stamp.is_some());
            let state = load_file(&path, previous, &mut report);
            report.changed |= !was_read || state.content != was;
            files.insert(path, state);
        }
        // What is left of the old files went away.
        report.changed |= !self.files.is_empty();
        self.files = files;
        Ok(report)
    }

    fn objects(&self) -> impl Iterator<Item = (&Path, &ObjectKey, &Object)> {
        self.files
            .iter()
            .flat_map(|(p, f)| f.objects.iter().map(move |(k, o)| (p.as_path(), k, o)))
    }

    /// Every usable object once; an object defined in two files is taken from the first file (in
    /// path order) and the second is reported.
    pub fn snapshot(&self) -> (Vec<Service>, Vec<EndpointSlice>, Vec<String>) {
        let mut seen: BTreeMap<&ObjectKey, &Path> = BTreeMap::new();
        let (mut services, mut slices, mut problems) = (Vec::new(), Vec::new(), Vec::new());
        for (path, key, object) in self.objects() {
            if let Some(first) = seen.get(key) {
                problems.push(format!(
                    "{}: {key}: also defined in {}; this copy is ignored",
                    path.display(),
                    first.display()
                ));
                continue;
            }
            seen.insert(key, path);
            match object {
                Object::Service(s) => services.push(s.clone()),
                Object::EndpointSlice(s) => slices.push(s.clone()),
                Object::Node(_) => {}
            }
        }
        (services, slices, problems)
    }

    /// The state of this node's Node object, taken from the first file (in path order) that
    /// defines it.
    pub fn node(&self) -> Option<NodeState> {
        let name = self.node_name.as_deref()?;
        self.objects().find_map(|(_, key, object)| match object {
            Object::Node(state) if key.name == name => Some(state.clone()),
            _ => None,
        })
    }
}

/// A manifest directory under watch: file events wake the agent, which then reads it again.
pub struct ManifestWatch {
    pub source: ManifestSource,
    /// Wakes the agent while alive.
    _watcher: notify::RecommendedWatcher,
}

impl ManifestSource {
    /// Watches the directory: every event that may change what it holds wakes `changes`.
    pub fn watch(self, changes: Changes) -> notify::Result<ManifestWatch> {
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if res.is_ok_and(|event| changes_manifests(&event)) {
                    changes.notify_one();
                }
            })?;
        notify::Watcher::watch(&mut watcher, &self.dir, notify::RecursiveMode::NonRecursive)?;
        Ok(ManifestWatch {
            source: self,
            _watcher: watcher,
        })
    }

    /// Reads the directory again and returns what it holds, with every problem of the files and
    /// of duplicate objects; with `only_if_changed`, `None` when no file changed since the last
    /// read.
    pub fn read(&mut self, only_if_changed: bool) -> io::Result<Option<Snapshot>> {
        let report = self.reload()?;
        if only_if_changed && !report.changed {
            return Ok(None);
        }
        let (services, slices, duplicates) = self.snapshot();
        Ok(Some(Snapshot {
            services,
            slices,
            problems: report.problems.into_iter().chain(duplicates).collect(),
            warnings: report.warnings,
            node: self.node(),
        }))
    }
}

/// Whether a file system event in the manifest directory may change what it holds. Reads and
/// opens are not changes: the watch also reports the agent's own reads of the directory, and
/// reacting to those would make every sync cause the next one.
fn changes_manifests(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
    let kind_matters = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        // Unknown kinds, and queue overflows (which carry no path): look again.
        EventKind::Any | EventKind::Other => true,
    };
    kind_matters
        && (event.need_rescan()
            || event.paths.is_empty()
            || event.paths.iter().any(|p| {
                crate::source::manifest::is_manifest(p)
                    // A ConfigMap volume: kubelet's atomic writer swaps the `..data` symlink that
                    // every manifest links through.
                    || p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(".."))
            }))
}

fn file_stamp(path: &Path) -> io::Result<(SystemTime, u64)> {
    let meta = fs::metadata(path)?;
    Ok((meta.modified()?, meta.len()))
}

/// `modified` is old enough, seen from `read_at`, that a later write cannot share it.
fn stamp_settled(modified: SystemTime, read_at: SystemTime) -> bool {
    read_at
        .duration_since(modified)
        .is_ok_and(|age| age >= STAMP_GRANULARITY)
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Reads one file. On any file-level failure the previous objects of the file stay.
fn load_file(path: &Path, previous: FileState, report: &mut Report) -> FileState {
    let read_at = SystemTime::now();
    let stamp = match file_stamp(path) {
        Ok(stamp) => stamp,
        Err(err) => {
            report.problems.push(format!("{}: {err}", path.display()));
            return previous;
        }
    };
    if previous.stamp == Some(stamp)
        && previous
            .read_at
            .is_some_and(|read| stamp_settled(stamp.0, read))
    {
        return previous;
    }
    // A read failure is not recorded: the file is tried again on the next reload.
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            report.problems.push(format!(
                "{}: {err}; keeping what the file held before",
                path.display()
            ));
            return previous;
        }
    };
    let content = Some(content_hash(&bytes));
    if previous.content == content {
        return FileState {
            stamp: Some(stamp),
            read_at: Some(read_at),
            ..previous
        };
    }
    // One document at a time: a large file never sits in memory as a tree of values, only the
    // objects it holds do. A parse error anywhere leaves the file's earlier objects in place.
    let mut objects = BTreeMap::new();
    let mut file_report = Report::default();
    let mut items = Vec::new();
    let mut index = 0;
    let parsed = std::str::from_utf8(&bytes)
        .map_err(|e| format!("not UTF-8 text: {e}"))
        .and_then(|text| {
            for_each_document(path, text, |doc| {
                index += 1;
                flatten_lists(doc, format!("document {index}"), &mut items);
                for (at, item) in items.drain(..) {
                    add_object(path, &at, &item, &previous, &mut objects, &mut file_report);
                }
            })
        });
    if let Err(reason) = parsed {
        report.problems.push(format!(
            "{}: {reason}; keeping what the file held before",
            path.display()
        ));
        return FileState {
            stamp: Some(stamp),
            read_at: Some(read_at),
            content,
            ..previous
        };
    }
    report.problems.extend(file_report.problems);
    report.warnings.extend(file_report.warnings);
    FileState {
        stamp: Some(stamp),
        read_at: Some(read_at),
        content,
        objects,
    }
}

/// Decodes one item of a file into `objects`, reporting what is wrong with it; an invalid
/// object keeps its last good version from `previous`.
fn add_object(
    path: &Path,
    at: &str,
    item: &serde_json::Value,
    previous: &FileState,
    objects: &mut BTreeMap<ObjectKey, Object>,
    report: &mut Report,
) {
    match decode(item) {
        Decoded::Ignored => {}
        Decoded::Object(key, object, warnings) => {
            for w in warnings {
                report
                    .warnings
                    .push(format!("{}: {key}: {w}", path.display()));
            }
            if objects.contains_key(&key) {
                report.problems.push(format!(
                    "{}: {key}: appears twice in the file; the later copy wins",
                    path.display()
                ));
            }
            objects.insert(key, object);
        }
        Decoded::Invalid(key, reason) => {
            let kept = key
                .as_ref()
                .and_then(|k| previous.objects.get(k).map(|o| (k.clone(), o.clone())));
            let what = key.as_ref().map_or(at.to_owned(), ToString::to_string);
            let suffix = if kept.is_some() {
                "; keeping its last good version"
            } else {
                "; skipped"
            };
            report
                .problems
                .push(format!("{}: {what}: {reason}{suffix}", path.display()));
            if let Some((k, o)) = kept {
                objects.insert(k, o);
            }
        }
    }
}

/// Calls `f` with each document of a file in turn, empty YAML documents left out; `document N`
/// in messages counts the documents passed.
fn for_each_document(
    path: &Path,
    text: &str,
    mut f: impl FnMut(serde_json::Value),
) -> Result<(), String> {
    // Editors on Windows start files with a byte order mark; neither parser skips it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        f(value);
        return Ok(());
    }
    check_flow_depth(text).map_err(|e| format!("invalid YAML: {e}"))?;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value =
            serde_yaml::Value::deserialize(doc).map_err(|e| format!("invalid YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        let value = serde_json::to_value(&value)
            .map_err(|e| format!("YAML document is not a Kubernetes object: {e}"))?;
        f(value);
    }
    Ok(())
}

/// Rejects text whose flow collections nest deeper than [`MAX_FLOW_DEPTH`]. Every bracket counts,
/// those inside scalars too: real manifests stay far below the limit either way.
fn check_flow_depth(text: &str) -> Result<(), String> {
    let (mut depth, mut line) = (0_usize, 1_usize);
    for byte in text.bytes() {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err(format!(
                        "[...] and {{...}} nest deeper than {MAX_FLOW_DEPTH} levels at line {line}"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => line += 1,
            _ => {}
        }
    }
    Ok(())
}

/// Expands `kind: List` (and `*List` kinds such as `ServiceList`) into their items, each with
/// where it is (`document 2, items[3]`) for messages about objects without a name.
fn flatten_lists(
    mut value: serde_json::Value,
    at: String,
    out: &mut Vec<(String, serde_json::Value)>,
) {
    let item_kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .and_then(|k| k.strip_suffix("List"))
        .map(str::to_owned);
    let api_version = value.get("apiVersion").cloned();
    let items = match (&item_kind, value.get_mut("items")) {
        (Some(_), Some(serde_json::Value::Array(items))) => std::mem::take(items),
        _ => {
            out.push((at, value));
            return;
        }
    };
    let item_kind = item_kind.filter(|k| !k.is_empty());
    for (i, mut item) in items.into_iter().enumerate() {
        // Items of a typed list (`ServiceList`, as the API server returns it) carry neither
        // kind nor apiVersion: they are the list's.
        if let (Some(kind), Some(obj)) = (&item_kind, item.as_object_mut()) {
            obj.entry("kind")
                .or_insert_with(|| serde_json::Value::from(kind.as_str()));
            if obj.get("kind").and_then(|k| k.as_str()) == Some(kind.as_str())
                && let Some(v) = &api_version
            {
                obj.entry("apiVersion").or_insert_with(|| v.clone());
            }
        }
        flatten_lists(item, format!("{at}, items[{i}]"), out);
    }
}

enum Decoded {
    Ignored,
    Object(ObjectKey, Object, Vec<String>),
    Invalid(Option<ObjectKey>, String),
}

/// A non-empty string field of `metadata`.
fn meta_str<'a>(value: &'a serde_json::Value, field: &str) -> Option<&'a str> {
    value
        .get("metadata")?
        .get(field)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// The API group of an apiVersion: `discovery.k8s.io/v1` -> `discovery.k8s.io`, `v1` -> core.
fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

fn decode(value: &serde_json::Value) -> Decoded {
    let Some(obj) = value.as_object() else {
        return Decoded::Invalid(
            None,
            "not an object (a mapping with apiVersion and kind)".to_owned(),
        );
    };
    let api_version = obj.get("apiVersion").and_then(|k| k.as_str());
    let (kind, served) = match obj.get("kind").and_then(|k| k.as_str()) {
        Some("Service") => (Kind::Service, "v1"),
        Some("EndpointSlice") => (Kind::EndpointSlice, "discovery.k8s.io/v1"),
        Some("Node") => (Kind::Node, "v1"),
        Some(_) => return Decoded::Ignored,
        None => return Decoded::Invalid(None, "has no kind".to_owned()),
    };
    // The same kind name in another API group (Knative's serving.knative.dev Service) is another
    // kind; another version of the right group, or none, is a mistake worth reporting.
    if api_version.is_some_and(|v| api_group(v) != api_group(served)) {
        return Decoded::Ignored;
    }
    let namespace = match kind {
        Kind::Node => "",
        Kind::Service | Kind::EndpointSlice => meta_str(value, "namespace").unwrap_or("default"),
    };
    let key = ObjectKey {
        kind,
        namespace: namespace.to_owned(),
        name: meta_str(value, "name").unwrap_or("").to_owned(),
    };
    if key.name.is_empty() {
        let reason = match kind {
            Kind::Node => format!("{kind} has no metadata.name"),
            _ => format!("{kind} in namespace {} has no metadata.name", key.namespace),
        };
        return Decoded::Invalid(None, reason);
    }
    if api_version != Some(served) {
        let reason = match api_version {
            Some(v) => format!("apiVersion {v:?} is not served; use {served}"),
            None => format!("apiVersion is missing; use {served}"),
        };
        return Decoded::Invalid(Some(key), reason);
    }
    let result: Result<_, convert::ConvertError> = match kind {
        Kind::Service => K8sService::deserialize(value)
            .map_err(|e| format!("not a valid Service: {e}").into())
            .and_then(|svc| convert::service(&svc, Some(value), true))
            .map(|c| Some((Object::Service(c.value), c.warnings))),
        Kind::EndpointSlice => K8sEndpointSlice::deserialize(value)
            .map_err(|e| format!("not a valid EndpointSlice: {e}").into())
            .and_then(|s| convert::endpoint_slice(&s))
            .map(|c| c.map(|c| (Object::EndpointSlice(c.value), c.warnings))),
        Kind::Node => Node::deserialize(value)
            .map_err(|e| format!("not a valid Node: {e}").into())
            .map(|n| Some((Object::Node(convert::node_state(&n)), Vec::new()))),
    };
    match result {
        Ok(Some((object, warnings))) => Decoded::Object(key, object, warnings),
        Ok(None) => Decoded::Ignored,
        Err(reason) => Decoded::Invalid(Some(key), reason.to_string()),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod watch_tests {
    use notify::{
        Event,
        event::{
            AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
            RenameMode,
        },
    };

    use super::changes_manifests;

    fn event(kind: EventKind, paths: &[&str]) -> Event {
        paths
            .iter()
            .fold(Event::new(kind), |e, p| e.add_path(p.into()))
    }

    #[test]
    fn writes_renames_and_removals_of_manifests_count_reads_do_not() {
        let yaml = "/m/web.yaml";
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Content)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Remove(RemoveKind::File),
        ] {
            assert!(changes_manifests(&event(kind, &[yaml])), "{kind:?}");
        }
        // An atomic write: a hidden temporary file renamed to the manifest's name.
        assert!(changes_manifests(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/m/.web.yaml.tmp", yaml]
        )));
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert!(!changes_manifests(&event(kind, &["/m"])), "{kind:?}");
            assert!(!changes_manifests(&event(kind, &[yaml])), "{kind:?}");
        }
        assert!(
            !changes_manifests(&event(
                EventKind::Modify(ModifyKind::Data(DataChange::Content)),
                &["/m/.web.yaml.swp"]
            )),
            "an editor's swap file"
        );
        // A ConfigMap volume's update: `..data_tmp` renamed over `..data`.
        assert!(changes_manifests(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/m/..data_tmp", "/m/..data"]
        )));
    }
}
