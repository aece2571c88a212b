//! Tells the agent when this namespace's devices or addresses change, so that it rescans at
//! once instead of on a fast timer: an rtnetlink socket in the link and address multicast
//! groups (`rtnetlink(7)`), with a slow safety-net tick, or a fast poll where no such socket can
//! be had.

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    sync::Arc,
    time::Duration,
};

use nix::{
    errno::Errno,
    libc,
    sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
    },
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::Notify,
    task::JoinHandle,
    time::{Instant, Interval, MissedTickBehavior},
};
use tracing::{debug, warn};

/// The multicast groups of RTM_NEWLINK/RTM_DELLINK and of RTM_NEWADDR/RTM_DELADDR for both
/// families (`linux/rtnetlink.h`).
const GROUPS: u32 = {
    let groups = libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR;
    groups as u32
};

/// Room for one message. Messages are only counted, never parsed, so one that does not fit
/// (the kernel then drops the rest of that datagram) still counts.
const READ_BUFFER: usize = 8192;

/// The least time between two notified wake-ups. A burst of messages (a new veth pair sends
/// several) then costs a scan or two, and a scan whose own attaching makes the kernel send
/// messages cannot turn into a busy loop; a new device still waits at most this long.
const MIN_SPACING: Duration = Duration::from_millis(100);

/// A running subscription; dropping it ends the subscription.
#[derive(Debug)]
pub struct NodeWatch {
    task: JoinHandle<io::Error>,
}

impl NodeWatch {
    /// Resolves when the subscription broke, with the error that broke it. Cancel-safe.
    pub async fn stopped(&mut self) -> io::Error {
        match (&mut self.task).await {
            Ok(e) => e,
            Err(join) => io::Error::other(join),
        }
    }
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes to link and address changes of the calling thread's network namespace and wakes
/// `changes` (one stored permit, [`Notify::notify_one`]) on every message, and on an overrun of
/// the socket's buffer, where messages were lost. Must be called within a tokio runtime.
pub fn watch(changes: Arc<Notify>) -> io::Result<NodeWatch> {
    // SAFETY: the AsyncFd owns the OwnedFd, whose descriptor stays the same and open until the
    // AsyncFd has deregistered it and drops it.
    let fd = unsafe { AsyncFd::register_with_interest(subscribe()?, Interest::READABLE) }?;
    Ok(NodeWatch {
        task: tokio::spawn(read_loop(fd, changes)),
    })
}

/// A non-blocking rtnetlink socket bound to [`GROUPS`].
fn subscribe() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkRoute,
    )?;
    // Port ID 0: the kernel picks a unique one.
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, GROUPS))?;
    Ok(fd)
}

/// Reads until the socket fails; returns why.
async fn read_loop(fd: AsyncFd<OwnedFd>, changes: Arc<Notify>) -> io::Error {
    let mut buf = [0u8; READ_BUFFER];
    loop {
        let mut guard = match fd.readable().await {
            Ok(guard) => guard,
            Err(e) => return e,
        };
        let read = guard.try_io(|fd| {
            recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(io::Error::from)
        });
        match read {
            // Drained: try_io cleared the readiness, wait for more.
            Err(_would_block) => {}
            Ok(Ok(_)) => changes.notify_one(),
            Ok(Err(e)) if e.raw_os_error() == Some(Errno::ENOBUFS as i32) => {
                // The kernel dropped messages for want of room; the rescan they cause covers
                // whatever they said.
                debug!("rtnetlink socket overrun: {e}");
                changes.notify_one();
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return e,
        }
    }
}

/// What wakes the device scan.
#[derive(Debug)]
pub struct Wakeups {
    inner: Inner,
    poll: Duration,
    /// No notified wake-up before this ([`MIN_SPACING`] after the last one).
    not_before: Option<Instant>,
}

#[derive(Debug)]
enum Inner {
    /// rtnetlink tells of each change; the tick catches anything lost all the same.
    Notified {
        watch: NodeWatch,
        changes: Arc<Notify>,
        safety_net: Interval,
    },
    /// No subscription: rescan on a timer.
    Poll(Interval),
}

impl Wakeups {
    /// Subscribes to rtnetlink with a rescan every `safety_net` besides; where subscribing
    /// fails, warns once and rescans every `poll`. Must be called within a tokio runtime, before
    /// the first scan so that no change between the two goes unnoticed.
    pub fn start(safety_net: Duration, poll: Duration) -> Self {
        let changes = Arc::new(Notify::new());
        let inner = match watch(changes.clone()) {
            Ok(watch) => {
                let mut safety_net =
                    tokio::time::interval_at(Instant::now() + safety_net, safety_net);
                safety_net.set_missed_tick_behavior(MissedTickBehavior::Delay);
                Inner::Notified {
                    watch,
                    changes,
                    safety_net,
                }
            }
            Err(e) => {
                warn!(
                    "subscribing to link and address changes over rtnetlink: {e}; rescanning \
                     devices every {poll:?} instead"
                );
                Inner::Poll(poll_interval(poll))
            }
        };
        Self {
            inner,
            poll,
            not_before: None,
        }
    }

    /// Whether changes are notified rather than polled for.
    pub fn is_notified(&self) -> bool {
        matches!(self.inner, Inner::Notified { .. })
    }

    /// Waits for the next reason to rescan. Cancel-safe: a change that comes while the caller
    /// is busy, or while another branch of its `select!` wins, wakes the next call.
    pub async fn next(&mut self) {
        let broken = match &mut self.inner {
            Inner::Poll(tick) => {
                tick.tick().await;
                return;
            }
            Inner::Notified {
                watch,
                changes,
                safety_net,
            } => {
                // Before taking the permit, so that a cancelled wait loses nothing.
                if let Some(at) = self.not_before {
                    tokio::time::sleep_until(at).await;
                }
                let woken = tokio::select! {
                    () = changes.notified() => None,
                    _ = safety_net.tick() => None,
                    e = watch.stopped() => Some(e),
                };
                self.not_before = Some(Instant::now() + MIN_SPACING);
                match woken {
                    None => return,
                    Some(e) => e,
                }
            }
        };
        warn!(
            "the rtnetlink subscription to link and address changes broke: {broken}; rescanning \
             devices every {:?} instead",
            self.poll
        );
        // The poll's first tick is immediate, and this wake-up rescans for what was missed.
        self.inner = Inner::Poll(poll_interval(self.poll));
    }
}

fn poll_interval(period: Duration) -> Interval {
    let mut tick = tokio::time::interval(period);
    // After a stall (a starved CPU, a stopped process) one tick, not a burst of missed ones.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;
    use lb_tests::netns::Netns;

    use super::*;

    /// Long enough for any test machine; a wake-up normally takes microseconds.
    const WAKE_TIMEOUT: Duration = Duration::from_secs(5);

    /// Waits for a wake-up of `changes`, then for the rest of the burst, and takes its permit,
    /// so that the next wait sees only later changes.
    async fn woken(changes: &Notify, what: &str) {
        tokio::time::timeout(WAKE_TIMEOUT, changes.notified())
            .await
            .unwrap_or_else(|_| panic!("no wake-up within {WAKE_TIMEOUT:?} after {what}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = changes.notified().now_or_never();
    }

    #[tokio::test]
    async fn wakes_on_link_and_address_changes_of_its_namespace() {
        lb_tests::require_root();
        let ns = Netns::new("lbwat").unwrap();
        let changes = Arc::new(Notify::new());
        let runtime = tokio::runtime::Handle::current();
        let subscriber = changes.clone();
        // The socket belongs to the namespace of the thread that creates it.
        let mut watch = ns
            .run(move || {
                let _runtime = runtime.enter();
                watch(subscriber)
            })
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            changes.notified().now_or_never().is_none(),
            "woken before any change"
        );

        ns.ip(&[
            "link", "add", "lbw0", "type", "veth", "peer", "name", "lbw1",
        ])
        .unwrap();
        woken(&changes, "adding a veth pair").await;
        // While the devices are down no IPv6 link-local address comes by itself.
        ns.ip(&["addr", "add", "10.9.8.7/24", "dev", "lbw0"])
            .unwrap();
        woken(&changes, "adding an IPv4 address").await;
        ns.ip(&["addr", "add", "fd00::9:8/64", "dev", "lbw0", "nodad"])
            .unwrap();
        woken(&changes, "adding an IPv6 address").await;
        ns.ip(&["addr", "del", "10.9.8.7/24", "dev", "lbw0"])
            .unwrap();
        woken(&changes, "deleting an address").await;
        ns.ip(&["link", "del", "lbw0"]).unwrap();
        woken(&changes, "deleting a veth pair").await;

        assert!(
            watch.stopped().now_or_never().is_none(),
            "the subscription broke"
        );
    }

    /// Wake-ups from `changes` and a subscription task that ends when `task` does.
    fn wakeups(
        task: impl Future<Output = io::Error> + Send + 'static,
        safety_net: Duration,
        poll: Duration,
    ) -> (Wakeups, Arc<Notify>) {
        let changes = Arc::new(Notify::new());
        let mut tick = tokio::time::interval_at(Instant::now() + safety_net, safety_net);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let inner = Inner::Notified {
            watch: NodeWatch {
                task: tokio::spawn(task),
            },
            changes: changes.clone(),
            safety_net: tick,
        };
        (
            Wakeups {
                inner,
                poll,
                not_before: None,
            },
            changes,
        )
    }

    #[tokio::test]
    async fn subscribing_needs_no_privilege() {
        let wakeups = Wakeups::start(Duration::from_secs(30), Duration::from_millis(500));
        assert!(wakeups.is_notified(), "{wakeups:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_wakes_at_once_and_the_safety_net_after_its_period() {
        let safety_net = Duration::from_secs(30);
        let (mut wakeups, changes) = wakeups(
            std::future::pending(),
            safety_net,
            Duration::from_millis(500),
        );
        let start = Instant::now();
        // A change that came while nobody waited is kept for the next wait.
        changes.notify_one();
        tokio::time::timeout(WAKE_TIMEOUT, wakeups.next())
            .await
            .expect("a notified change");
        assert_eq!(start.elapsed(), Duration::ZERO);
        tokio::time::timeout(safety_net * 2, wakeups.next())
            .await
            .expect("the safety-net tick");
        assert_eq!(start.elapsed(), safety_net);
        assert!(wakeups.is_notified());
    }

    #[tokio::test(start_paused = true)]
    async fn notified_wakeups_are_spaced() {
        let (mut wakeups, changes) = wakeups(
            std::future::pending(),
            Duration::from_secs(30),
            Duration::from_millis(500),
        );
        let start = Instant::now();
        for n in 0..3 {
            changes.notify_one();
            tokio::time::timeout(WAKE_TIMEOUT, wakeups.next())
                .await
                .expect("a notified change");
            assert_eq!(start.elapsed(), MIN_SPACING * n);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_subscription_falls_back_to_polling() {
        let poll = Duration::from_millis(500);
        let (mut wakeups, _changes) = wakeups(
            async { io::Error::other("gone") },
            Duration::from_secs(30),
            poll,
        );
        let start = Instant::now();
        // The break itself wakes: whatever it missed is rescanned.
        tokio::time::timeout(WAKE_TIMEOUT, wakeups.next())
            .await
            .expect("the break");
        assert!(!wakeups.is_notified());
        for n in 0..3 {
            tokio::time::timeout(WAKE_TIMEOUT, wakeups.next())
                .await
                .expect("a poll tick");
            assert_eq!(start.elapsed(), poll * n);
        }
    }
}
