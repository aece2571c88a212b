//! Golden test, no root: Kubernetes YAML in (the demo manifests, including a `kind: List` dump),
//! expected map contents out, through the same pipeline the agent runs.

use std::path::Path;

use lb_agent::{
    datapath::{Writer, memory::MemoryMaps},
    manifest::ManifestSource,
    selection::{NodeContext, select},
};

fn render(maps: &MemoryMaps) -> String {
    let mut out = String::new();
    for ((frontend, slot), value) in &maps.services {
        if *slot == 0 {
            out.push_str(&format!("{frontend} count={}\n", value.count));
        } else {
            let backend = maps.backends[&value.backend_id];
            out.push_str(&format!(
                "{frontend} slot {slot} -> {}/{}\n",
                backend.addr, backend.protocol
            ));
        }
    }
    out
}

#[test]
fn demo_manifests_program_the_expected_maps() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/demo");
    let mut source = ManifestSource::new(&dir);
    let report = source.reload().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let (services, slices, duplicates) = source.snapshot();
    assert!(duplicates.is_empty(), "{duplicates:?}");
    let node = NodeContext {
        node_name: Some("node-a".into()),
        zone: None,
    };
    let selection = select(&services, &slices, &node);
    assert!(selection.problems.is_empty(), "{:?}", selection.problems);
    let mut writer = Writer::new(MemoryMaps::default(), 1000);
    let applied = writer.apply(&selection.frontends);
    assert!(applied.errors.is_empty(), "{:?}", applied.errors);
    let mut expected = String::new();
    for (vip, v4) in [
        ("10.96.0.10", true),
        ("10.96.0.20", true),
        ("[fd00:96::10]", false),
        ("[fd00:96::20]", false),
    ] {
        for (port, target, proto) in [(53, 5353, "UDP"), (80, 8080, "TCP")] {
            expected.push_str(&format!("{vip}:{port}/{proto} count=3\n"));
            for (slot, pod) in [(1, 2), (2, 3), (3, 4)] {
                let backend = if v4 {
                    format!("10.200.{pod}.2:{target}")
                } else {
                    format!("[fd00:200:{pod}::2]:{target}")
                };
                expected.push_str(&format!(
                    "{vip}:{port}/{proto} slot {slot} -> {backend}/{proto}\n"
                ));
            }
        }
    }
    assert_eq!(render(writer.maps()), expected);
    // 12 distinct (address, port, protocol) backends: 3 pods x 2 families x 2 ports.
    assert_eq!(writer.maps().backends.len(), 12);
}
