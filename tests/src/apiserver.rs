//! A test Kubernetes API server: the list/watch protocol over plain HTTP for Services,
//! EndpointSlices (discovery.k8s.io/v1) and Nodes, so the agent's real kube client, watchers and
//! reflectors run against it without a cluster.
//!
//! What it speaks, as the real API server does:
//! - lists with a `resourceVersion` in the list metadata, label and field selectors, and
//!   `limit`/`continue` pagination (served from a snapshot taken by the first page);
//! - watches from a resource version: the changes after it are replayed, then new ones streamed
//!   as newline-separated JSON events `ADDED`, `MODIFIED`, `DELETED` and, when asked for,
//!   `BOOKMARK`; an object that stops matching the selector is `DELETED` for that watch and one
//!   that starts matching is `ADDED`;
//! - a watch from a resource version older than the compaction point, or one that falls behind,
//!   gets an `ERROR` event with a `410 Gone` Status and ends (the client must relist).
//!
//! The objects outlive [`ApiServer::stop`], like etcd's: [`ApiServer::serve`] after a stop is
//! an API server restart, and watches resume or get 410 depending on [`ApiServer::compact`].

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    body::Body,
    http::{Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_millis(500);
/// Events a watch may fall behind before it is ended with 410, as the real watch cache ends
/// watchers that cannot keep up.
const WATCH_BUFFER: usize = 4096;
/// Most items in one list page unless [`ApiServer::set_page_size`] says otherwise.
const DEFAULT_PAGE_SIZE: usize = 500;

/// The resources served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// `v1` Services.
    Services,
    /// `discovery.k8s.io/v1` EndpointSlices.
    EndpointSlices,
    /// `v1` Nodes (cluster-scoped).
    Nodes,
}

impl Resource {
    const ALL: [Self; 3] = [Self::Services, Self::EndpointSlices, Self::Nodes];

    fn kind(self) -> &'static str {
        match self {
            Self::Services => "Service",
            Self::EndpointSlices => "EndpointSlice",
            Self::Nodes => "Node",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::Services | Self::Nodes => "v1",
            Self::EndpointSlices => "discovery.k8s.io/v1",
        }
    }

    /// The URL prefix of the resource's group version.
    fn group_prefix(self) -> &'static str {
        match self {
            Self::Services | Self::Nodes => "/api/v1",
            Self::EndpointSlices => "/apis/discovery.k8s.io/v1",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::EndpointSlices => "endpointslices",
            Self::Nodes => "nodes",
        }
    }

    fn namespaced(self) -> bool {
        self != Self::Nodes
    }

    fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.kind() == kind)
    }
}

/// `(resource, namespace, name)`; the namespace is empty for Nodes.
type Key = (Resource, String, String);

/// One stored change: `old` is absent for a creation, `new` for a deletion.
#[derive(Debug)]
struct Change {
    rv: u64,
    resource: Resource,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Clone, Debug)]
enum Msg {
    Change(Arc<Change>),
    /// Every open watch ends with 410 Gone.
    Expire,
}

#[derive(Debug)]
struct Inner {
    /// The resource version of the last change; versions are global, as etcd's revision.
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Changes after `compacted`, oldest first.
    history: VecDeque<Arc<Change>>,
    /// Watches must start at or after this version; older ones get 410.
    compacted: u64,
    next_uid: u64,
    page_size: usize,
    /// Continue token -> the rest of a paginated list and its resource version.
    pages: HashMap<String, (u64, VecDeque<Value>)>,
    next_page: u64,
    /// Lists and watches served per resource, for tests to see a relist happen.
    lists: HashMap<Resource, usize>,
    watches: HashMap<Resource, usize>,
}

struct Shared {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Msg>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The test API server. Objects are changed through its methods (as a controller or kubectl
/// would) and read by clients over HTTP.
pub struct ApiServer {
    shared: Arc<Shared>,
    /// The runtime serving the current incarnation; dropping it closes every connection.
    runtime: Option<tokio::runtime::Runtime>,
    addr: Option<SocketAddr>,
}

fn key_of(resource: Resource, obj: &Value) -> anyhow::Result<Key> {
    let meta = obj.get("metadata").context("object has no metadata")?;
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .context("object has no metadata.name")?;
    let namespace = if resource.namespaced() {
        meta.get("namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
    } else {
        ""
    };
    Ok((resource, namespace.to_owned(), name.to_owned()))
}

fn set_rv(obj: &mut Value, rv: u64) {
    obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiServer {
    /// An API server with no objects, not serving yet.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    rv: 1,
                    objects: BTreeMap::new(),
                    history: VecDeque::new(),
                    compacted: 1,
                    next_uid: 1,
                    page_size: DEFAULT_PAGE_SIZE,
                    pages: HashMap::new(),
                    next_page: 1,
                    lists: HashMap::new(),
                    watches: HashMap::new(),
                }),
                events,
            }),
            runtime: None,
            addr: None,
        }
    }

    /// Serves on `listener` (bound wherever the caller wants, e.g. inside a network namespace)
    /// until [`ApiServer::stop`] or drop. Calling it after a stop restarts the server.
    pub fn serve(&mut self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        self.stop();
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-apiserver")
            .enable_all()
            .build()?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let shared = self.shared.clone();
        let app = Router::new().fallback(move |method: Method, uri: Uri| {
            let shared = shared.clone();
            async move { handle(&shared, &method, &uri) }
        });
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        self.runtime = Some(runtime);
        self.addr = Some(addr);
        Ok(())
    }

    /// Serves on a new listener bound to `127.0.0.1:0` in the caller's network namespace.
    pub fn serve_local(&mut self) -> anyhow::Result<()> {
        self.serve(std::net::TcpListener::bind("127.0.0.1:0")?)
    }

    /// Stops serving: the listener and every connection (open watches included) are closed, as
    /// when the API server process dies. Objects stay.
    pub fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Waits for the runtime's threads so that the listener and connections are closed
            // on return; on a thread of its own because a runtime cannot be shut down with
            // waiting from inside another one's task (tests may call this from async code).
            let _ = std::thread::spawn(move || rt.shutdown_timeout(Duration::from_secs(5))).join();
        }
    }

    /// The address of the last [`ApiServer::serve`].
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// A kubeconfig for this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> anyhow::Result<String> {
        let addr = self.addr.context("the API server was never started")?;
        Ok(format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: \
             http://{addr}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: \
             test\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n"
        ))
    }

    /// Writes [`ApiServer::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.kubeconfig()?).with_context(|| format!("writing {path:?}"))
    }

    /// Items per list page at most (the client's `limit` can make pages smaller still).
    pub fn set_page_size(&self, n: usize) {
        self.shared.lock().page_size = n.max(1);
    }

    fn record(
        &self,
        inner: &mut Inner,
        resource: Resource,
        old: Option<Value>,
        new: Option<Value>,
    ) {
        let change = Arc::new(Change {
            rv: inner.rv,
            resource,
            old,
            new,
        });
        inner.history.push_back(change.clone());
        // Sent under the lock: a watch subscribes under it too, so it sees each change once,
        // either replayed from history or from the channel.
        let _ = self.shared.events.send(Msg::Change(change));
    }

    /// Creates or replaces an object (its `kind` says which resource); sets the server-owned
    /// metadata. Returns the new resource version.
    pub fn apply(&self, mut obj: Value) -> anyhow::Result<u64> {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let resource =
            Resource::from_kind(kind).with_context(|| format!("kind {kind:?} is not served"))?;
        let key = key_of(resource, &obj)?;
        let mut inner = self.shared.lock();
        inner.rv += 1;
        let rv = inner.rv;
        let old = inner.objects.get(&key).cloned();
        obj["apiVersion"] = Value::String(resource.api_version().to_owned());
        let meta = &mut obj["metadata"];
        if resource.namespaced() {
            meta["namespace"] = Value::String(key.1.clone());
        }
        match &old {
            Some(old) => {
                meta["uid"] = old["metadata"]["uid"].clone();
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            }
            None => {
                meta["uid"] =
                    Value::String(format!("00000000-0000-4000-8000-{:012x}", inner.next_uid));
                meta["creationTimestamp"] = Value::String("2025-01-01T00:00:00Z".to_owned());
                inner.next_uid += 1;
            }
        }
        set_rv(&mut obj, rv);
        inner.objects.insert(key, obj.clone());
        self.record(&mut inner, resource, old, Some(obj));
        Ok(rv)
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> anyhow::Result<bool> {
        let resource =
            Resource::from_kind(kind).with_context(|| format!("kind {kind:?} is not served"))?;
        let namespace = if resource.namespaced() { namespace } else { "" };
        let mut inner = self.shared.lock();
        let Some(old) = inner
            .objects
            .remove(&(resource, namespace.to_owned(), name.to_owned()))
        else {
            return Ok(false);
        };
        inner.rv += 1;
        self.record(&mut inner, resource, Some(old), None);
        Ok(true)
    }

    /// The stored object, if any.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = Resource::from_kind(kind)?;
        let namespace = if resource.namespaced() { namespace } else { "" };
        self.shared
            .lock()
            .objects
            .get(&(resource, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Forgets the history up to now, as etcd compaction does: a watch that resumes from an
    /// older resource version gets 410 Gone and must relist. Open watches are not touched.
    pub fn compact(&self) {
        let mut inner = self.shared.lock();
        inner.compacted = inner.rv;
        inner.history.clear();
        inner.pages.clear();
    }

    /// Compacts and ends every open watch with an ERROR event carrying 410 Gone.
    pub fn expire_watches(&self) {
        let inner = &mut *self.shared.lock();
        inner.compacted = inner.rv;
        inner.history.clear();
        inner.pages.clear();
        let _ = self.shared.events.send(Msg::Expire);
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Lists served so far for `kind` (every page counts).
    pub fn lists_served(&self, kind: &str) -> usize {
        Resource::from_kind(kind).map_or(0, |r| {
            self.shared.lock().lists.get(&r).copied().unwrap_or(0)
        })
    }

    /// Watches opened so far for `kind`.
    pub fn watches_served(&self, kind: &str) -> usize {
        Resource::from_kind(kind).map_or(0, |r| {
            self.shared.lock().watches.get(&r).copied().unwrap_or(0)
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- requests ----

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A label selector (`a`, `!a`, `a=b`, `a==b`, `a!=b`, `a in (b,c)`, `a notin (b,c)`,
/// comma-separated, all must hold).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn set_values(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

impl LabelSelector {
    /// Parses the selector syntax of `labelSelector=`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top_level(s) {
            let part = part.trim();
            let bad = || format!("cannot parse label selector requirement {part:?}");
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotIn(k.trim().to_owned(), vec![v.trim().to_owned()])
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::In(k.trim().to_owned(), vec![v.trim().to_owned()])
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().to_owned(), set_values(rest).ok_or_else(bad)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(k.trim().to_owned(), set_values(rest).ok_or_else(bad)?)
            } else if !part.is_empty() && !part.contains([' ', '(', ')']) {
                Requirement::Exists(part.to_owned())
            } else {
                return Err(bad());
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &serde_json::Map<String, Value>) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            // A missing label satisfies `!=` and `notin`, as in Kubernetes.
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| vs.iter().all(|x| x != v)),
        })
    }
}

/// A field selector over `metadata.name` and `metadata.namespace`.
#[derive(Clone, Debug, Default)]
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("cannot parse field selector {part:?}"));
            };
            if !matches!(field.trim(), "metadata.name" | "metadata.namespace") {
                return Err(format!("field label not supported: {}", field.trim()));
            }
            reqs.push((field.trim().to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self(reqs))
    }

    fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => obj["metadata"]["name"].as_str(),
                _ => obj["metadata"]["namespace"].as_str(),
            }
            .unwrap_or_default();
            (actual == value) == *equal
        })
    }
}

/// What one list or watch request selects.
#[derive(Clone, Debug)]
struct Filter {
    resource: Resource,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let empty = serde_json::Map::new();
        let labels = obj["metadata"]["labels"].as_object().unwrap_or(&empty);
        self.namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.matches(labels)
            && self.fields.matches(obj)
    }

    /// The event a watch with this filter sees for a change, if any.
    fn event(&self, change: &Change) -> Option<(&'static str, Value)> {
        if change.resource != self.resource {
            return None;
        }
        let old = change.old.as_ref().filter(|o| self.matches(o));
        let new = change.new.as_ref().filter(|n| self.matches(n));
        match (old, new) {
            (Some(_), Some(new)) => Some(("MODIFIED", new.clone())),
            (None, Some(new)) => Some(("ADDED", new.clone())),
            // Deleted, or no longer selected: the last state the watch saw, at the new version.
            (Some(old), None) => {
                let mut old = old.clone();
                set_rv(&mut old, change.rv);
                Some(("DELETED", old))
            }
            (None, None) => None,
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_params(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(code, &status(code, reason, message))
}

/// `(resource, namespace, name)` of a request path.
fn route(path: &str) -> Option<(Resource, Option<String>, Option<String>)> {
    for resource in Resource::ALL {
        let Some(rest) = path.strip_prefix(resource.group_prefix()) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        let owned = |s: &str| Some(s.to_owned());
        match parts.as_slice() {
            [plural] if *plural == resource.plural() => return Some((resource, None, None)),
            [plural, name] if *plural == resource.plural() && !resource.namespaced() => {
                return Some((resource, None, owned(name)));
            }
            ["namespaces", ns, plural] if *plural == resource.plural() && resource.namespaced() => {
                return Some((resource, owned(ns), None));
            }
            ["namespaces", ns, plural, name]
                if *plural == resource.plural() && resource.namespaced() =>
            {
                return Some((resource, owned(ns), owned(name)));
            }
            _ => {}
        }
    }
    None
}

fn handle(shared: &Arc<Shared>, method: &Method, uri: &Uri) -> Response {
    if method != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the test API server is read-only over HTTP",
        );
    }
    let Some((resource, namespace, name)) = route(uri.path()) else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "the server could not find the requested resource ({})",
                uri.path()
            ),
        );
    };
    let params = query_params(uri);
    if let Some(name) = name {
        let inner = shared.lock();
        let key = (resource, namespace.unwrap_or_default(), name.clone());
        return match inner.objects.get(&key) {
            Some(obj) => json_response(StatusCode::OK, obj),
            None => error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} {name:?} not found", resource.plural()),
            ),
        };
    }
    let labels = match LabelSelector::parse(params.get("labelSelector").map_or("", |s| s)) {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let fields = match FieldSelector::parse(params.get("fieldSelector").map_or("", |s| s)) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let filter = Filter {
        resource,
        namespace,
        labels,
        fields,
    };
    if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) {
        watch(shared, filter, &params)
    } else {
        list(shared, &filter, &params)
    }
}

fn list(shared: &Shared, filter: &Filter, params: &HashMap<String, String>) -> Response {
    let mut inner = shared.lock();
    *inner.lists.entry(filter.resource).or_default() += 1;
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .map_or(inner.page_size, |l| l.min(inner.page_size));
    let (rv, mut items) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match inner.pages.remove(token) {
            Some(page) => page,
            None => {
                return error(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list \
                     result. You can start a new list without the continue parameter.",
                );
            }
        },
        None => (
            inner.rv,
            inner
                .objects
                .iter()
                .filter(|((r, _, _), obj)| *r == filter.resource && filter.matches(obj))
                .map(|(_, obj)| obj.clone())
                .collect(),
        ),
    };
    let rest = items.split_off(limit.min(items.len()));
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if !rest.is_empty() {
        let token = format!("{rv}-{}", inner.next_page);
        inner.next_page += 1;
        inner.pages.insert(token.clone(), (rv, rest));
        metadata["continue"] = Value::String(token);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", filter.resource.kind()),
            "apiVersion": filter.resource.api_version(),
            "metadata": metadata,
            "items": Vec::from(items),
        }),
    )
}

fn event_line(kind: &str, object: &Value) -> String {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    line
}

fn gone_line(message: &str) -> String {
    event_line("ERROR", &status(StatusCode::GONE, "Expired", message))
}

/// The state of one open watch.
struct Watch {
    filter: Filter,
    pending: VecDeque<String>,
    rx: broadcast::Receiver<Msg>,
    /// The version of the last change this watch has processed, for bookmarks.
    seen: u64,
    bookmarks: bool,
    ticker: tokio::time::Interval,
    deadline: Option<tokio::time::Instant>,
    done: bool,
}

impl Watch {
    async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            if self.done {
                return None;
            }
            let deadline = self.deadline;
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Ok(Msg::Change(change)) => {
                        self.seen = change.rv;
                        if let Some((kind, obj)) = self.filter.event(&change) {
                            return Some(event_line(kind, &obj));
                        }
                    }
                    Ok(Msg::Expire) => {
                        self.done = true;
                        return Some(gone_line("too old resource version: the watch was expired"));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.done = true;
                        return Some(gone_line("the watch fell behind and was closed"));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.ticker.tick() => {
                    if self.bookmarks {
                        let r = self.filter.resource;
                        return Some(event_line("BOOKMARK", &json!({
                            "kind": r.kind(),
                            "apiVersion": r.api_version(),
                            "metadata": { "resourceVersion": self.seen.to_string() },
                        })));
                    }
                }
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => return None,
            }
        }
    }
}

fn watch(shared: &Shared, filter: Filter, params: &HashMap<String, String>) -> Response {
    let mut inner = shared.lock();
    *inner.watches.entry(filter.resource).or_default() += 1;
    let rx = shared.events.subscribe();
    let mut pending = VecDeque::new();
    let mut done = false;
    let requested = params
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let seen = inner.rv;
    match requested {
        // No version, or "0": start with the current state as ADDED events.
        "" | "0" => {
            for ((r, _, _), obj) in &inner.objects {
                if *r == filter.resource && filter.matches(obj) {
                    pending.push_back(event_line("ADDED", obj));
                }
            }
        }
        rv => match rv.parse::<u64>() {
            Ok(rv) if rv >= inner.compacted => {
                for change in inner.history.iter().filter(|c| c.rv > rv) {
                    if let Some((kind, obj)) = filter.event(change) {
                        pending.push_back(event_line(kind, &obj));
                    }
                }
            }
            Ok(rv) => {
                pending.push_back(gone_line(&format!(
                    "too old resource version: {rv} ({})",
                    inner.compacted
                )));
                done = true;
            }
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("resourceVersion {rv:?} is not a number"),
                );
            }
        },
    }
    drop(inner);
    let deadline = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(|t| tokio::time::Instant::now() + Duration::from_secs(t));
    let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    let state = Watch {
        filter,
        pending,
        rx,
        seen,
        bookmarks: params.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
        ticker,
        deadline,
        done,
    };
    let stream = futures::stream::unfold(state, |mut w| async move {
        w.next_line()
            .await
            .map(|line| (Ok::<_, Infallible>(line), w))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &e.to_string(),
            )
        })
}

// ---- object builders ----

/// A service port: name, port, protocol (`TCP`/`UDP`).
pub type Port<'a> = (&'a str, u16, &'a str);

/// A ClusterIP Service in `default` with the given cluster IPs (primary first) and ports, as the
/// API server stores it (families and policy filled in).
pub fn service(name: &str, cluster_ips: &[IpAddr], ports: &[Port<'_>]) -> Value {
    let families: Vec<&str> = cluster_ips
        .iter()
        .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" })
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, proto)| json!({ "name": n, "port": p, "protocol": proto, "targetPort": p }))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ips.first().map(ToString::to_string),
            "clusterIPs": cluster_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "ipFamilies": families,
            "ipFamilyPolicy": if cluster_ips.len() > 1 { "RequireDualStack" } else { "SingleStack" },
            "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "None",
            "ports": ports,
        },
        "status": { "loadBalancer": {} },
    })
}

/// An endpoint of a slice: address, ready, node name.
pub type Ep<'a> = (IpAddr, bool, &'a str);

/// An EndpointSlice of `service` in `default`; the family is taken from the first endpoint
/// (IPv4 when there is none and `v6` is false).
pub fn endpoint_slice(
    name: &str,
    service: &str,
    v6: bool,
    ports: &[Port<'_>],
    endpoints: &[Ep<'_>],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready, node)| {
            json!({
                "addresses": [ip.to_string()],
                "conditions": { "ready": ready, "serving": ready, "terminating": false },
                "nodeName": node,
            })
        })
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, proto)| json!({ "name": n, "port": p, "protocol": proto }))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": if v6 { "IPv6" } else { "IPv4" },
        "endpoints": endpoints,
        "ports": ports,
    })
}

/// A Node, with a `topology.kubernetes.io/zone` label when `zone` is given.
pub fn node(name: &str, zone: Option<&str>) -> Value {
    let mut labels = json!({ "kubernetes.io/hostname": name });
    if let Some(zone) = zone {
        labels["topology.kubernetes.io/zone"] = Value::String(zone.to_owned());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": labels },
        "spec": {},
    })
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Read, Write},
        net::TcpStream,
    };

    use super::*;
    use crate::ip;

    #[test]
    fn label_selectors_parse_and_match_like_kubernetes() {
        let labels = |pairs: &[(&str, &str)]| -> serde_json::Map<String, Value> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect()
        };
        type Labels = &'static [(&'static str, &'static str)];
        let cases: &[(&str, Labels, bool)] = &[
            ("", &[("a", "1")], true),
            (
                "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless",
                &[],
                true,
            ),
            (
                "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless",
                &[("service.kubernetes.io/service-proxy-name", "other")],
                false,
            ),
            (
                "!service.kubernetes.io/headless",
                &[("service.kubernetes.io/headless", "")],
                false,
            ),
            ("a", &[("a", "")], true),
            ("a", &[], false),
            ("a=1", &[("a", "1")], true),
            ("a==1", &[("a", "2")], false),
            ("a!=1", &[], true),
            ("a!=1", &[("a", "1")], false),
            ("a in (1, 2),b", &[("a", "2"), ("b", "x")], true),
            ("a notin (1,2)", &[("a", "2")], false),
            ("a notin (1,2)", &[("a", "3")], true),
        ];
        for (selector, l, want) in cases {
            let sel = LabelSelector::parse(selector).unwrap();
            assert_eq!(sel.matches(&labels(l)), *want, "{selector:?} on {l:?}");
        }
        assert!(LabelSelector::parse("a in 1").is_err());
    }

    #[test]
    fn query_strings_are_decoded() {
        let uri: Uri = "/api/v1/services?labelSelector=%21a%2C%21b&watch=true&x=a+b"
            .parse()
            .unwrap();
        let q = query_params(&uri);
        assert_eq!(q["labelSelector"], "!a,!b");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "a b");
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        (code, body)
    }

    fn list_items(addr: SocketAddr, path: &str) -> (u64, Vec<String>) {
        let (code, body) = get(addr, path);
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let names = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        (
            v["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
            names,
        )
    }

    /// Reads watch events (chunked transfer, one JSON event per line) until `n` are seen.
    fn watch_events(addr: SocketAddr, path: &str, n: usize) -> Vec<Value> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut events = Vec::new();
        let mut line = String::new();
        while events.len() < n {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
            // Chunk-size lines of the chunked encoding may parse as JSON numbers.
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(line.trim()) {
                events.push(v);
            }
        }
        events
    }

    #[test]
    fn list_watch_selectors_pagination_and_410() {
        let mut api = ApiServer::new();
        api.serve_local().unwrap();
        let addr = api.addr().unwrap();
        let ports = [("http", 80, "TCP")];
        api.apply(service("a", &[ip("10.96.0.1")], &ports)).unwrap();
        let mut b = service("b", &[ip("10.96.0.2")], &ports);
        b["metadata"]["labels"] = json!({ "service.kubernetes.io/service-proxy-name": "x" });
        api.apply(b).unwrap();
        api.apply(service("c", &[ip("10.96.0.3")], &ports)).unwrap();
        let sel = "labelSelector=%21service.kubernetes.io%2Fservice-proxy-name";
        let (rv, names) = list_items(addr, &format!("/api/v1/services?{sel}"));
        assert_eq!(names, ["a", "c"]);

        // Pagination: a page of one, then the rest from the same snapshot.
        api.set_page_size(1);
        let (code, body) = get(addr, "/api/v1/namespaces/default/services?limit=500");
        assert_eq!(code, 200);
        let page: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["items"].as_array().unwrap().len(), 1);
        let token = page["metadata"]["continue"].as_str().unwrap().to_owned();
        api.delete("Service", "default", "c").unwrap();
        let (_, rest) = list_items(addr, &format!("/api/v1/services?continue={token}"));
        assert_eq!(rest, ["b"]);
        // A token is good for one page.
        let (code, _) = get(addr, &format!("/api/v1/services?continue={token}"));
        assert_eq!(code, 410);
        api.set_page_size(500);

        // A watch from the list's version replays the deletion of c; the label removal on b
        // makes it appear as ADDED for a selector that excludes labelled services.
        api.apply(service("b", &[ip("10.96.0.2")], &ports)).unwrap();
        let events = watch_events(
            addr,
            &format!("/api/v1/services?watch=true&resourceVersion={rv}&{sel}"),
            2,
        );
        assert_eq!(events[0]["type"], "DELETED");
        assert_eq!(events[0]["object"]["metadata"]["name"], "c");
        assert_eq!(events[1]["type"], "ADDED");
        assert_eq!(events[1]["object"]["metadata"]["name"], "b");

        // After compaction the same watch gets 410 Gone.
        api.compact();
        let events = watch_events(
            addr,
            &format!("/api/v1/services?watch=true&resourceVersion={rv}"),
            1,
        );
        assert_eq!(events[0]["type"], "ERROR");
        assert_eq!(events[0]["object"]["code"], 410);

        // Field selectors pick one node; bookmarks carry the version.
        api.apply(node("n1", Some("z1"))).unwrap();
        api.apply(node("n2", None)).unwrap();
        let (_, nodes) = list_items(addr, "/api/v1/nodes?fieldSelector=metadata.name%3Dn2");
        assert_eq!(nodes, ["n2"]);
        let now = api.resource_version();
        let events = watch_events(
            addr,
            &format!("/api/v1/nodes?watch=true&resourceVersion={now}&allowWatchBookmarks=true"),
            1,
        );
        assert_eq!(events[0]["type"], "BOOKMARK");
        assert_eq!(
            events[0]["object"]["metadata"]["resourceVersion"],
            now.to_string()
        );
    }

    #[test]
    fn restart_keeps_objects_and_stop_closes_the_port() {
        let mut api = ApiServer::new();
        api.serve_local().unwrap();
        let addr = api.addr().unwrap();
        api.apply(node("n1", None)).unwrap();
        api.stop();
        assert!(TcpStream::connect(addr).is_err());
        api.serve(std::net::TcpListener::bind(addr).unwrap())
            .unwrap();
        let (_, nodes) = list_items(addr, "/api/v1/nodes");
        assert_eq!(nodes, ["n1"]);
        assert_eq!(get(addr, "/api/v1/pods").0, 404);
    }
}
