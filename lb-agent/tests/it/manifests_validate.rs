//! Every manifest of the repository validates against a current Kubernetes schema (the
//! `kubernetes-validate` package from PyPI, which `cargo xtask setup` installs), strictly: an
//! unknown or misspelt field fails. Fails, never skips, when the validator cannot run. Also
//! checks that the deployment grants the agent only what it needs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_yaml::Value;

/// Validates every document of the files given as arguments (`kind: List` item by item) with
/// the newest schema the package ships; exits 1 on any invalid object or when there is none.
const VALIDATE: &str = r#"
import sys, yaml, kubernetes_validate as kv
version = kv.latest_version()
failed = count = 0
def check(path, where, doc):
    global failed, count
    if doc.get("kind") == "List":
        for j, item in enumerate(doc.get("items") or []):
            check(path, f"{where}.items[{j}]", item)
        return
    count += 1
    name = f"{path} {where} ({doc.get('kind')} {(doc.get('metadata') or {}).get('name')})"
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as e:
        failed += 1
        print(f"{name}: {e.message} at /{'/'.join(str(p) for p in e.path)}")
    except Exception as e:
        failed += 1
        print(f"{name}: {type(e).__name__}: {e}")
for path in sys.argv[1:]:
    with open(path) as f:
        for i, doc in enumerate(yaml.safe_load_all(f)):
            if doc is not None:
                check(path, f"document {i}", doc)
print(f"validated {count} objects against Kubernetes {version}: {failed} invalid")
sys.exit(1 if failed or count == 0 else 0)
"#;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// What `manifests/` holds besides Kubernetes objects: Prometheus rules and a Grafana
/// dashboard, which `lb-agent/tests/observability.rs` checks.
const NOT_KUBERNETES: &str = "observability";

/// Every `*.yaml`, `*.yml` and `*.json` below `dir`, sorted, but [`NOT_KUBERNETES`].
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}")) {
        let path = entry.unwrap().path();
        if path.is_dir() && path.file_name().is_some_and(|n| n == NOT_KUBERNETES) {
            continue;
        }
        if path.is_dir() {
            files.extend(manifest_files(&path));
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn every_manifest_validates_against_the_current_kubernetes_schema() {
    let files = manifest_files(&manifests_dir());
    assert!(
        files.iter().any(|f| f.ends_with("deploy/daemonset.yaml")),
        "no deployment manifests found in {files:?}"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(VALIDATE)
        .args(&files)
        .output()
        .expect("running python3 (install it, or run `cargo xtask setup`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'kubernetes_validate'"),
        "the kubernetes-validate package is missing: run `cargo xtask setup`\n{stderr}"
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    eprint!("{stdout}");
}

fn documents(file: &str) -> Vec<Value> {
    let path = manifests_dir().join("deploy").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn deployment_grants_only_what_the_agent_needs() {
    let rbac = documents("rbac.yaml");
    let role = of_kind(&rbac, "ClusterRole");
    let mut granted: Vec<(String, String)> = Vec::new();
    for rule in role["rules"].as_sequence().unwrap() {
        assert_eq!(
            strings(&rule["verbs"]),
            ["get", "list", "watch"],
            "{rule:?}"
        );
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                granted.push((group.to_owned(), resource.to_owned()));
            }
        }
    }
    granted.sort();
    let want = [
        ("", "nodes"),
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
    ]
    .map(|(g, r)| (g.to_owned(), r.to_owned()));
    assert_eq!(granted, want);

    let ds = documents("daemonset.yaml");
    let pod = &of_kind(&ds, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    assert_eq!(pod["tolerations"][0]["operator"].as_str(), Some("Exists"));
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(
        strings(&sc["capabilities"]["add"]),
        ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"]
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/livez")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    let node_name = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("NODE_NAME"))
        .expect("NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("spec.nodeName")
    );
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert!(
        ["/sys/fs/bpf", "/sys/fs/cgroup", "/run/netns"]
            .iter()
            .all(|m| mounts.contains(m)),
        "{mounts:?}"
    );

    // Every flag the DaemonSet passes exists in this build of the agent.
    let help = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let args = strings(&c["args"]);
    assert_eq!(args.first(), Some(&"run"));
    for arg in &args[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            help.contains(flag),
            "{flag} is not a flag of `lb-agent run`:\n{help}"
        );
    }
}
