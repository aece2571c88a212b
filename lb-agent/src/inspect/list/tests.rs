//! `list` equals `plan` on every golden case, and after each case is applied on top of the
//! previous one's maps (churn).

use std::{net::IpAddr, path::Path};

use super::*;
use crate::{
    inspect::names::{MemoryNames, NameWriter},
    lbmap::{Writer, memory::MemoryMaps},
    plan::{self, NodeFacts},
    source::manifest::ManifestSource,
};

#[path = "../../../testdata/plan/node_file.rs"]
mod node_file;

fn node_facts(case: &Path) -> NodeFacts {
    let (name, addresses) = node_file::read(case);
    NodeFacts {
        name,
        addresses,
        ..NodeFacts::default()
    }
}

fn snat_of(maps: &MemoryMaps) -> SnatAddrs {
    let get = |f| maps.node_addrs.get(&f).copied().flatten();
    SnatAddrs {
        v4: match get(IpFamily::V4) {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        },
        v6: match get(IpFamily::V6) {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        },
        devices: Default::default(),
    }
}

#[test]
fn list_prints_what_plan_prints_on_every_golden_case_and_through_churn() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/plan");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "{cases:?}");
    let mut churned = Writer::new(MemoryMaps::default(), 1024);
    let mut churned_names = NameWriter::new(MemoryNames::default());
    for case in &cases {
        let facts = node_facts(case);
        let snapshot = ManifestSource::new(case.join("manifests"))
            .with_node_name(facts.name.as_deref())
            .read(false)
            .unwrap()
            .unwrap();
        let desired = plan::plan(&snapshot, &facts);
        let mut fresh = Writer::new(MemoryMaps::default(), 1024);
        let mut fresh_names = NameWriter::new(MemoryNames::default());
        for (writer, names) in [
            (&mut fresh, &mut fresh_names),
            (&mut churned, &mut churned_names),
        ] {
            writer.set_snat(&desired.snat).unwrap();
            let report = writer.apply(&desired.frontends);
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            names.update(&desired, writer.rev_nat_ids()).unwrap();
            let contents = MapContents::read(
                writer.maps(),
                names.store().list().unwrap(),
                snat_of(writer.maps()),
            )
            .unwrap();
            let listing = Listing::of(&contents);
            assert!(listing.unlisted.is_empty(), "{:?}", listing.unlisted);
            assert_eq!(
                listing.desired.to_string(),
                desired.to_string(),
                "{}",
                case.display()
            );
        }
    }
}

#[test]
fn filters_keep_one_service_or_family() {
    let f4: Frontend = crate::inspect::explain::parse_destination("10.96.0.1:80/TCP").unwrap();
    let f6: Frontend = crate::inspect::explain::parse_destination("[fd00::1]:80/TCP").unwrap();
    let mut listing = Listing::default();
    for (f, name) in [(f4, "a"), (f6, "b")] {
        listing.desired.frontends.insert(
            f,
            FrontendState {
                owner: ServicePortName {
                    service: parse_service(&format!("default/{name}")).unwrap(),
                    port: String::new(),
                    protocol: f.protocol,
                    family: f.family(),
                },
                kind: crate::model::FrontendKind::ClusterIp,
                backends: vec![],
                internal_backends: None,
                local_only: false,
                source_ranges: None,
                session_affinity: None,
                reject: true,
            },
        );
    }
    let mut v6 = Listing {
        desired: Desired {
            frontends: listing.desired.frontends.clone(),
            ..Desired::default()
        },
        unlisted: vec![],
    };
    v6.filter(&Filter {
        service: None,
        family: Some(IpFamily::V6),
    });
    assert_eq!(v6.desired.frontends.keys().collect::<Vec<_>>(), [&f6]);
    listing.filter(&Filter {
        service: Some(parse_service("default/a").unwrap()),
        family: None,
    });
    assert_eq!(listing.desired.frontends.keys().collect::<Vec<_>>(), [&f4]);
    assert!(
        parse_service("nope")
            .unwrap_err()
            .contains("NAMESPACE/NAME")
    );
    assert!(parse_family("5").is_err());
}
