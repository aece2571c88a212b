//! The agent's periodic collection (`--gc-interval`): one run at start, then one every interval,
//! each on a blocking thread. A run never starts before the previous one has ended, and a
//! failed run is logged and retried at the next interval.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{task::JoinHandle, time::MissedTickBehavior};
use tracing::{debug, info, warn};

use super::{Collector, GcError, Report};

/// Default of `--gc-interval`. Cilium's CT GC starts at 5 min, but our SNAT entries of closed
/// flows hold a port until they are collected. With the flows' 10 s close lifetime, 30 s
/// frees a port within 40 s of the connection's end.
pub const DEFAULT_INTERVAL: &str = "30s";

/// Parses `--gc-interval`: a duration such as `30s`, `2m` or `1m30s`, not zero.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if interval.is_zero() {
        return Err("must not be 0".into());
    }
    Ok(interval)
}

/// Collects the maps pinned under `pin_dir` now and every `interval` after, until the runtime
/// stops. The maps are opened at the first run and again after any failed run, in case they
/// were replaced.
pub fn spawn(pin_dir: PathBuf, interval: Duration) -> JoinHandle<()> {
    let mut collector: Option<Collector> = None;
    spawn_runs(interval, move || {
        let mut c = match collector.take() {
            Some(c) => c,
            None => Collector::open(&pin_dir)?,
        };
        let result = c.run();
        if result.is_ok() {
            collector = Some(c);
        }
        result
    })
}

/// Calls `run` on a blocking thread now and every `interval` after. A call that outlasts the
/// interval delays the next one instead of overlapping it.
fn spawn_runs<F>(interval: Duration, run: F) -> JoinHandle<()>
where
    F: FnMut() -> Result<Report, GcError> + Send + 'static,
{
    // Shared with each blocking call, so that a panicking run leaves the next run its state.
    let run = Arc::new(Mutex::new(run));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let run = Arc::clone(&run);
            let outcome = tokio::task::spawn_blocking(move || {
                let mut run = run.lock().unwrap_or_else(PoisonError::into_inner);
                run()
            })
            .await;
            match outcome {
                Ok(Ok(report)) => {
                    crate::metrics::global().gc_ran(&report);
                    log(&report);
                }
                Ok(Err(e)) => warn!("flow GC: {e}"),
                Err(e) => warn!("flow GC run failed: {e}"),
            }
        }
    })
}

/// One info line for a run that deleted something, a debug line otherwise.
fn log(report: &Report) {
    let total = report.total();
    if total.collected > 0 {
        info!(
            collected = total.collected,
            scanned = total.scanned,
            "flow GC: {report}"
        );
    } else {
        debug!(scanned = total.scanned, "flow GC: {report}");
    }
    if total.incomplete {
        warn!(
            "flow GC: a map changed too fast to be walked to its end; the rest waits for the next run"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Bound of every async test, in the paused clock's time.
    const TEST_TIMEOUT: Duration = Duration::from_secs(3600);

    #[test]
    fn interval_is_a_duration_and_not_zero() {
        assert_eq!(
            parse_interval(DEFAULT_INTERVAL),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(parse_interval("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("30").is_err(), "a unit is required");
        assert!(parse_interval("soon").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn runs_at_start_and_every_interval_although_runs_fail() {
        let interval = Duration::from_secs(30);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = tokio::time::Instant::now();
        let calls = AtomicUsize::new(0);
        let task = spawn_runs(interval, move || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            tx.send(tokio::time::Instant::now()).expect("test listens");
            if n.is_multiple_of(2) {
                Err(GcError::Map {
                    op: "bpf_map_get_next_key",
                    map: "LB_FLOWS_V4",
                    source: aya::maps::MapError::KeyNotFound,
                })
            } else {
                Ok(Report::default())
            }
        });
        let times = tokio::time::timeout(TEST_TIMEOUT, async {
            let mut times = Vec::new();
            while times.len() < 4 {
                times.push(rx.recv().await.expect("runs go on") - start);
            }
            times
        })
        .await
        .expect("four runs in time");
        task.abort();
        assert_eq!(
            times,
            [0, 1, 2, 3].map(|n| interval * n),
            "at start, then every interval"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_run_delays_the_next_instead_of_overlapping_it() {
        let interval = Duration::from_millis(10);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (r, m) = (Arc::clone(&running), Arc::clone(&most));
        let task = spawn_runs(interval, move || {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            // Real time: several intervals of the (auto-advancing) paused clock go by.
            std::thread::sleep(Duration::from_millis(30));
            r.fetch_sub(1, Ordering::SeqCst);
            tx.send(()).expect("test listens");
            Ok(Report::default())
        });
        tokio::time::timeout(TEST_TIMEOUT, async {
            for _ in 0..5 {
                rx.recv().await.expect("runs go on");
            }
        })
        .await
        .expect("five runs in time");
        task.abort();
        assert_eq!(most.load(Ordering::SeqCst), 1, "runs overlapped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_run_does_not_stop_the_next() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut calls = 0;
        let task = spawn_runs(Duration::from_secs(1), move || {
            calls += 1;
            tx.send(calls).expect("test listens");
            assert!(calls != 1, "first run panics");
            Ok(Report::default())
        });
        let second = tokio::time::timeout(TEST_TIMEOUT, async {
            rx.recv().await.expect("first run");
            rx.recv().await.expect("second run")
        })
        .await
        .expect("two runs in time");
        task.abort();
        assert_eq!(second, 2, "the second run saw the first run's state");
    }
}
