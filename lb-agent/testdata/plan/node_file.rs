//! The `node` file of a golden case (`name NAME`, `addresses A,B,...`), read by the golden
//! tests and by `lb-agent list`'s tests alike (included by `#[path]` in both).

use std::{net::IpAddr, path::Path};

/// The node name and the (sorted) node port addresses of the case in `dir`; a case without a
/// `node` file has neither.
pub fn read(dir: &Path) -> (Option<String>, Vec<IpAddr>) {
    let text = std::fs::read_to_string(dir.join("node")).unwrap_or_default();
    let (mut name, mut addresses) = (None, Vec::new());
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_once(' ') {
            Some(("name", n)) => name = Some(n.trim().to_owned()),
            Some(("addresses", list)) => {
                addresses = list
                    .split(',')
                    .map(|a| {
                        a.trim()
                            .parse::<IpAddr>()
                            .unwrap_or_else(|e| panic!("{}: {a:?}: {e}", dir.display()))
                    })
                    .collect();
                addresses.sort();
            }
            _ => panic!("{}: bad node line {line:?}", dir.display()),
        }
    }
    (name, addresses)
}
