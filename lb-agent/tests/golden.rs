//! Golden cases, no root: one folder per case under `testdata/plan/`, each with Kubernetes
//! manifests in (`manifests/`, a Node object named as the node among them counts as this
//! node's), the node's facts (`node`: `name NAME` and `addresses A,B` lines, the addresses
//! sorted as the device scan sorts them when it makes no SNAT choice), the `lb-agent plan` text
//! expected (`plan.txt`) and the map contents expected (`maps.txt`), through the same
//! [`plan::plan`] and [`Writer`] the agent runs.
//!
//! `GOLDEN_UPDATE=1 cargo test --test golden` rewrites the expected files from the code; review
//! the diff before committing it.

use std::path::{Path, PathBuf};

use lb_agent::{
    lbmap::{Writer, memory::MemoryMaps},
    plan::{self, NodeFacts},
    source::manifest::ManifestSource,
};

#[path = "../testdata/plan/node_file.rs"]
mod node_file;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/plan");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

fn node_facts(case: &Path) -> NodeFacts {
    let (name, addresses) = node_file::read(case);
    NodeFacts {
        name,
        addresses,
        ..NodeFacts::default()
    }
}

/// Compares `got` with the file, or rewrites the file with GOLDEN_UPDATE set.
fn expect(case: &Path, file: &str, got: &str) -> Result<(), String> {
    let path = case.join(file);
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::write(&path, got).unwrap();
        return Ok(());
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if want == got {
        Ok(())
    } else {
        Err(format!("{}: got\n{got}\nwant\n{want}", path.display()))
    }
}

#[test]
fn every_case_plans_and_programs_as_expected() {
    let cases = cases();
    assert!(cases.len() >= 8, "the table lost cases: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let facts = node_facts(case);
        let snapshot = ManifestSource::new(case.join("manifests"))
            .with_node_name(facts.name.as_deref())
            .read(false)
            .unwrap_or_else(|e| panic!("{}: {e}", case.display()))
            .expect("a first read always has a snapshot");
        let desired = plan::plan(&snapshot, &facts);
        let mut plan_text = desired.to_string();
        for problem in snapshot
            .problems
            .iter()
            .cloned()
            .chain(desired.problems.iter().map(ToString::to_string))
        {
            plan_text.push_str(&format!("error: {problem}\n"));
        }
        let mut writer = Writer::new(MemoryMaps::default(), 1000);
        writer.set_snat(&desired.snat).unwrap();
        let applied = writer.apply(&desired.frontends);
        assert!(
            applied.errors.is_empty(),
            "{}: {:?}",
            case.display(),
            applied.errors
        );
        failures.extend(expect(case, "plan.txt", &plan_text).err());
        failures.extend(expect(case, "maps.txt", &writer.maps().to_string()).err());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
