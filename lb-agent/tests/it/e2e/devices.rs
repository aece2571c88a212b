//! End-to-end, device selection: a device without Ethernet headers (a tun device) gets no
//! programs, by default or when `--devices` names it, and flows SNATed to other nodes leave
//! from the uplink's address (the source of the default route), not from a bridge's address
//! that sorts first, unless the FIB sends them out of the bridge (the bridge's own address).
//! Needs root; fails (never skips) without.

use std::time::Duration;

use lb_tests::{cluster::names, ip};

use super::ManifestCluster;

/// How long a log line the first scan or sync writes may take to appear.
const LOG_WAIT: Duration = Duration::from_secs(10);

/// Adds the uplink, bridge and tun device ([`lb_tests::netns::add_uplink_bridge_tun`]) to the
/// node's namespace, which has no default route before.
fn add_devices(c: &ManifestCluster) -> lb_tests::netns::UplinkBridgeTun {
    lb_tests::netns::add_uplink_bridge_tun(c.net.node()).unwrap()
}

#[test]
fn by_default_a_tun_device_is_left_out_and_snat_leaves_from_the_uplink_not_the_bridge() {
    let c = ManifestCluster::new();
    let d = add_devices(&c);
    let vip = ip("10.96.0.77");
    c.write_service("web", &[vip], &["b1"]);
    let agent = c.start_agent();
    agent
        .wait_log(&format!("not attaching to device {}", d.tun), LOG_WAIT)
        .unwrap();
    for needle in [
        format!("attached to external device {}", d.up),
        format!("attached to external device {}", d.bridge),
        "IPv4 node address for external traffic (the source of flows SNATed to other nodes' \
         backends): 10.77.0.2"
            .to_owned(),
        "IPv6 node address for external traffic (the source of flows SNATed to other nodes' \
         backends): fd00:77::2"
            .to_owned(),
        // Flows the FIB sends out of the bridge leave from the bridge's own addresses.
        format!("flows SNATed out of device {} (ifindex", d.bridge),
        ") leave from 10.1.0.1 and fd00:1::1".to_owned(),
    ] {
        agent.wait_log(&needle, LOG_WAIT).unwrap();
    }
    let logs = agent.logs();
    let skipped = logs
        .lines()
        .find(|l| l.contains(&format!("not attaching to device {}", d.tun)))
        .unwrap();
    assert!(skipped.contains("link type 65534"), "{skipped}");
    assert_eq!(
        logs.matches(&format!("device {}", d.tun)).count(),
        1,
        "one line about the tun device:\n{logs}"
    );
    assert!(
        !logs.contains(&format!("attached to external device {}", d.tun)),
        "{logs}"
    );
    // The pods' service still works.
    assert_eq!(c.net.tcp_spread(vip, 5), names(&["b1"]));
}

#[test]
fn a_tun_device_named_in_devices_is_refused_with_a_warning_and_the_agent_keeps_serving() {
    let c = ManifestCluster::new();
    let d = add_devices(&c);
    let vip = ip("10.96.0.78");
    c.write_service("web", &[vip], &["b1", "b2"]);
    let devices = format!("{},{}", d.up, d.tun);
    let agent = c.start(c.agent().args(["--devices", &devices]));
    let logs = agent
        .wait_log(&format!("--devices matches {}", d.tun), LOG_WAIT)
        .unwrap();
    let refused = logs
        .lines()
        .find(|l| l.contains(&format!("--devices matches {}", d.tun)))
        .unwrap();
    assert!(
        refused.contains("WARN") && refused.contains("not attached"),
        "{refused}"
    );
    agent
        .wait_log(&format!("attached to external device {}", d.up), LOG_WAIT)
        .unwrap();
    assert!(
        !agent
            .logs()
            .contains(&format!("attached to external device {}", d.tun))
    );
    assert_eq!(c.net.tcp_spread(vip, 20), names(&["b1", "b2"]));
}
