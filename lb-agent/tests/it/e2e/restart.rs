//! Restarting the agent (killed, then started again) loses nothing: pinned links keep the
//! programs attached while no agent runs, pinned maps keep the flows, and the next run swaps its
//! programs in atomically and takes the maps over without rewriting them.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use lb_tests::{
    cluster::BACKENDS,
    traffic::{TcpSession, tcp_request, udp_request},
};

use super::ManifestCluster;

const RESTARTS: usize = 3;

#[test]
fn killing_and_restarting_the_agent_fails_no_request() {
    let c = ManifestCluster::new();
    let vips: [IpAddr; 2] = [
        "10.96.2.10".parse().unwrap(),
        "fd00:96::2:10".parse().unwrap(),
    ];
    c.write_service("web", &vips, &BACKENDS);
    let start = |pin_dir: Option<&Path>| {
        let mut agent = c.agent();
        if let Some(dir) = pin_dir {
            agent = agent.pin_dir(dir);
        }
        c.start(agent)
    };
    let first = start(None);
    let pin_dir = first.pin_dir.clone();
    let client = c.net.client();

    // Long-lived connections, one per family, pinged throughout.
    let mut sessions: Vec<TcpSession> = vips
        .iter()
        .map(|vip| TcpSession::open(client, SocketAddr::new(*vip, 80)).unwrap())
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut agent = first;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let vip = vips[i % 2];
                let result = if i % 4 < 2 {
                    tcp_request(client, SocketAddr::new(vip, 80)).map(|_| ())
                } else {
                    udp_request(client, SocketAddr::new(vip, 53)).and_then(|(_, from)| {
                        anyhow::ensure!(from == SocketAddr::new(vip, 53), "answer from {from}");
                        Ok(())
                    })
                };
                done.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = result {
                    failed.fetch_add(1, Ordering::Relaxed);
                    errors.lock().unwrap().push(format!("{vip}: {e:#}"));
                }
                i += 1;
            }
        });
        for _ in 0..RESTARTS {
            std::thread::sleep(Duration::from_millis(300));
            agent.kill().unwrap();
            // No agent at all for a while: the pinned programs and maps keep serving.
            std::thread::sleep(Duration::from_millis(500));
            let next = start(Some(&pin_dir));
            // The killed run's Drop must not remove the pin directory the next run uses.
            agent.keep_pin_dir();
            agent = next;
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
    });
    for s in &mut sessions {
        s.ping()
            .unwrap_or_else(|e| panic!("connection to {} lost: {e}", s.server));
    }
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(done > 50, "only {done} requests ran");
    assert_eq!(
        failed,
        0,
        "{failed} of {done} requests failed: {:?}",
        errors.lock().unwrap()
    );
    drop(agent);
}
