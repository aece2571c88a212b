//! The manifest source: Service and EndpointSlice objects from `*.yaml`, `*.yml` and `*.json`
//! files in one directory, as `kubectl get svc,endpointslices -o yaml` prints them (multi-document
//! YAML, `kind: List`, server-set fields and all).
//!
//! A file or object that cannot be used is reported with file, kind, namespace/name and reason,
//! and the last good version of what it held stays in force: a bad edit never flushes a service
//! that was being served.

use std::{
    collections::BTreeMap,
    fmt, fs, io,
    path::{Path, PathBuf},
    time::SystemTime,
};

use k8s_openapi::api::{
    core::v1::Service as K8sService, discovery::v1::EndpointSlice as K8sEndpointSlice,
};
use serde::Deserialize;

use crate::{
    convert,
    model::{EndpointSlice, Service},
};

/// Kinds of objects the proxy reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
        })
    }
}

/// `kind namespace/name` of an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

#[derive(Clone, Debug)]
enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
}

#[derive(Clone, Debug, Default)]
struct FileState {
    /// Modification time and size when last read; unchanged files are not parsed again.
    stamp: Option<(SystemTime, u64)>,
    objects: BTreeMap<ObjectKey, Object>,
}

/// What one reload found wrong or worth a warning. Every line names the file and the object.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// The objects of a manifest directory, kept up to date by [`ManifestSource::reload`].
#[derive(Debug)]
pub struct ManifestSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
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
        }
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
            let state = load_file(&path, previous, &mut report);
            files.insert(path, state);
        }
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
            }
        }
        (services, slices, problems)
    }
}

fn file_stamp(path: &Path) -> io::Result<(SystemTime, u64)> {
    let meta = fs::metadata(path)?;
    Ok((meta.modified()?, meta.len()))
}

/// Reads one file. On any file-level failure the previous objects of the file stay.
fn load_file(path: &Path, previous: FileState, report: &mut Report) -> FileState {
    let stamp = match file_stamp(path) {
        Ok(stamp) => stamp,
        Err(err) => {
            report.problems.push(format!("{}: {err}", path.display()));
            return previous;
        }
    };
    if previous.stamp == Some(stamp) {
        return previous;
    }
    let documents = match fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| parse_documents(path, &text))
    {
        Ok(docs) => docs,
        Err(reason) => {
            report.problems.push(format!(
                "{}: {reason}; keeping what the file held before",
                path.display()
            ));
            return FileState {
                stamp: Some(stamp),
                ..previous
            };
        }
    };
    let mut objects = BTreeMap::new();
    let mut items = Vec::new();
    for doc in documents {
        flatten_lists(doc, &mut items);
    }
    for item in items {
        match decode(&item) {
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
                let what = key
                    .as_ref()
                    .map_or_else(|| "object".to_owned(), ToString::to_string);
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
    FileState {
        stamp: Some(stamp),
        objects,
    }
}

fn parse_documents(path: &Path, text: &str) -> Result<Vec<serde_json::Value>, String> {
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        return Ok(vec![value]);
    }
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value =
            serde_yaml::Value::deserialize(doc).map_err(|e| format!("invalid YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        let value = serde_json::to_value(&value)
            .map_err(|e| format!("YAML document is not a Kubernetes object: {e}"))?;
        docs.push(value);
    }
    Ok(docs)
}

/// Expands `kind: List` (and `*List` kinds such as `ServiceList`) into their items.
fn flatten_lists(value: serde_json::Value, out: &mut Vec<serde_json::Value>) {
    let is_list = value
        .get("kind")
        .and_then(|k| k.as_str())
        .is_some_and(|k| k.ends_with("List"));
    if is_list && let Some(serde_json::Value::Array(items)) = value.get("items") {
        for item in items.clone() {
            flatten_lists(item, out);
        }
        return;
    }
    out.push(value);
}

enum Decoded {
    Ignored,
    Object(ObjectKey, Object, Vec<String>),
    Invalid(Option<ObjectKey>, String),
}

fn meta_str<'a>(value: &'a serde_json::Value, field: &str) -> Option<&'a str> {
    value.get("metadata")?.get(field)?.as_str()
}

fn decode(value: &serde_json::Value) -> Decoded {
    let Some(obj) = value.as_object() else {
        return Decoded::Invalid(None, "document is not an object".to_owned());
    };
    let kind_str = obj.get("kind").and_then(|k| k.as_str());
    let api_version = obj.get("apiVersion").and_then(|k| k.as_str());
    let kind = match (kind_str, api_version) {
        (Some("Service"), Some("v1")) => Kind::Service,
        (Some("EndpointSlice"), Some("discovery.k8s.io/v1")) => Kind::EndpointSlice,
        (Some("EndpointSlice"), Some(v)) => {
            return Decoded::Invalid(
                None,
                format!("EndpointSlice apiVersion {v:?} is not served; use discovery.k8s.io/v1"),
            );
        }
        (Some(_), _) => return Decoded::Ignored,
        (None, _) => return Decoded::Invalid(None, "document has no kind".to_owned()),
    };
    let key = ObjectKey {
        kind,
        namespace: meta_str(value, "namespace").unwrap_or("default").to_owned(),
        name: meta_str(value, "name").unwrap_or("").to_owned(),
    };
    if key.name.is_empty() {
        return Decoded::Invalid(None, format!("{kind} without metadata.name"));
    }
    let result = match kind {
        Kind::Service => serde_json::from_value::<K8sService>(value.clone())
            .map_err(|e| format!("not a valid Service: {e}"))
            .and_then(|svc| convert::service(&svc, Some(value), true))
            .map(|c| Some((Object::Service(c.value), c.warnings))),
        Kind::EndpointSlice => serde_json::from_value::<K8sEndpointSlice>(value.clone())
            .map_err(|e| format!("not a valid EndpointSlice: {e}"))
            .and_then(|s| convert::endpoint_slice(&s))
            .map(|c| c.map(|c| (Object::EndpointSlice(c.value), c.warnings))),
    };
    match result {
        Ok(Some((object, warnings))) => Decoded::Object(key, object, warnings),
        Ok(None) => Decoded::Ignored,
        Err(reason) => Decoded::Invalid(Some(key), reason),
    }
}
