//! One supervisor for every background loop. Each loop implements [`Worker`]; the supervisor
//! runs it on its interval, records its status (last run, next run, last error, error count),
//! backs off exponentially on errors, and stops every loop within a deadline on shutdown.

mod backups;
mod expiry;
mod reconcile;
mod timeouts;
mod updates;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use backups::{BackupWorker, CleanupWorker};
pub use expiry::ExpiryWorker;
pub use reconcile::ReconcileWorker;
pub use timeouts::TimeoutWorker;
pub use updates::UpdateWorker;

use crate::metrics::{Metrics, WorkerLabels};

pub use futures::future::BoxFuture;

/// What one run of a loop did.
pub struct Outcome {
    /// A short account for the status table ("purged 3 expired credentials").
    pub note: String,
    /// More work is waiting: run again soon instead of after the full interval.
    pub more: bool,
}

pub trait Worker: Send + 'static {
    fn name(&self) -> &'static str;
    /// Time between runs when all is well.
    fn interval(&self) -> Duration;
    fn run(&mut self) -> BoxFuture<'_, Result<Outcome, String>>;
    /// Called once when the cell stops, after the last run: ends what the loop started.
    fn stop(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Idle,
    Running,
    /// Waiting longer than usual after errors.
    Backoff,
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopped => "stopped",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Status {
    pub name: &'static str,
    pub state: State,
    pub interval: Duration,
    pub runs: u64,
    pub last_run: Option<OffsetDateTime>,
    pub next_run: Option<OffsetDateTime>,
    pub last_note: Option<String>,
    pub last_error: Option<String>,
    pub error_count: u64,
    pub consecutive_errors: u32,
}

/// The longest wait after repeated errors.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// A run that takes longer than this counts as failed (and is abandoned).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

pub fn backoff(interval: Duration, consecutive_errors: u32) -> Duration {
    if consecutive_errors == 0 {
        return interval;
    }
    let base = interval
        .min(Duration::from_secs(30))
        .max(Duration::from_secs(1));
    base.saturating_mul(1u32 << consecutive_errors.min(16))
        .min(MAX_BACKOFF)
}

pub struct Supervisor {
    statuses: Arc<RwLock<BTreeMap<&'static str, Status>>>,
    shutdown: watch::Sender<bool>,
    handles: Vec<(&'static str, JoinHandle<()>)>,
    metrics: Arc<Metrics>,
}

impl Supervisor {
    pub fn new(metrics: Arc<Metrics>) -> Supervisor {
        Supervisor {
            statuses: Arc::default(),
            shutdown: watch::channel(false).0,
            handles: Vec::new(),
            metrics,
        }
    }

    /// A read handle on the status table, for the API and the dashboard.
    pub fn statuses(&self) -> StatusBoard {
        StatusBoard(self.statuses.clone())
    }

    pub fn spawn(&mut self, mut worker: impl Worker) {
        let name = worker.name();
        let interval = worker.interval();
        let statuses = self.statuses.clone();
        let metrics = self.metrics.clone();
        let mut stop = self.shutdown.subscribe();
        let labels = WorkerLabels {
            worker: name.to_owned(),
        };
        let update = move |f: &mut dyn FnMut(&mut Status)| {
            if let Ok(mut s) = statuses.write()
                && let Some(st) = s.get_mut(name)
            {
                f(st);
            }
        };
        if let Ok(mut s) = self.statuses.write() {
            s.insert(
                name,
                Status {
                    name,
                    state: State::Idle,
                    interval,
                    runs: 0,
                    last_run: None,
                    next_run: Some(OffsetDateTime::now_utc()),
                    last_note: None,
                    last_error: None,
                    error_count: 0,
                    consecutive_errors: 0,
                },
            );
        }
        let handle = tokio::spawn(async move {
            let mut consecutive = 0u32;
            loop {
                if *stop.borrow() {
                    break;
                }
                let started = OffsetDateTime::now_utc();
                update(&mut |s| {
                    s.state = State::Running;
                    s.last_run = Some(started);
                });
                let result = tokio::select! {
                    r = tokio::time::timeout(RUN_TIMEOUT, worker.run()) => r.unwrap_or_else(|_| Err(format!("run took longer than {}s", RUN_TIMEOUT.as_secs()))),
                    _ = stop.changed() => break,
                };
                metrics.worker_runs.get_or_create(&labels).inc();
                metrics
                    .worker_last_run
                    .get_or_create(&labels)
                    .set(started.unix_timestamp());
                let wait = match &result {
                    Ok(o) => {
                        consecutive = 0;
                        if o.more {
                            Duration::from_millis(100)
                        } else {
                            interval
                        }
                    }
                    Err(e) => {
                        consecutive = consecutive.saturating_add(1);
                        metrics.worker_errors.get_or_create(&labels).inc();
                        tracing::warn!(worker = name, error = %e, consecutive, "background loop failed");
                        backoff(interval, consecutive)
                    }
                };
                metrics
                    .worker_failing
                    .get_or_create(&labels)
                    .set(i64::from(consecutive > 0));
                let next = OffsetDateTime::now_utc() + wait;
                update(&mut |s| {
                    s.runs += 1;
                    s.next_run = Some(next);
                    s.consecutive_errors = consecutive;
                    match &result {
                        Ok(o) => {
                            s.state = State::Idle;
                            s.last_note = Some(o.note.clone());
                        }
                        Err(e) => {
                            s.state = State::Backoff;
                            s.error_count += 1;
                            s.last_error = Some(e.clone());
                        }
                    }
                });
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => break,
                }
            }
            worker.stop().await;
            update(&mut |s| {
                s.state = State::Stopped;
                s.next_run = None;
            });
        });
        self.handles.push((name, handle));
    }

    /// Asks every loop to stop and waits up to `deadline` for them; stragglers are aborted.
    pub async fn shutdown(self, deadline: Duration) {
        let _ = self.shutdown.send(true);
        let until = tokio::time::Instant::now() + deadline;
        for (name, h) in self.handles {
            let abort = h.abort_handle();
            if tokio::time::timeout_at(until, h).await.is_err() {
                tracing::warn!(worker = name, "loop did not stop in time; aborted");
                abort.abort();
            }
        }
    }
}

#[derive(Clone)]
pub struct StatusBoard(Arc<RwLock<BTreeMap<&'static str, Status>>>);

impl StatusBoard {
    pub fn list(&self) -> Vec<Status> {
        self.0
            .read()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let i = Duration::from_secs(60);
        assert_eq!(backoff(i, 0), i);
        assert_eq!(backoff(i, 1), Duration::from_secs(60));
        assert_eq!(backoff(i, 2), Duration::from_secs(120));
        assert_eq!(backoff(i, 3), Duration::from_secs(240));
        assert_eq!(backoff(i, 30), MAX_BACKOFF);
    }

    struct Flaky {
        calls: u32,
    }

    impl Worker for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn interval(&self) -> Duration {
            Duration::from_millis(10)
        }
        fn run(&mut self) -> BoxFuture<'_, Result<Outcome, String>> {
            self.calls += 1;
            let fail = self.calls == 1;
            Box::pin(async move {
                if fail {
                    Err("store unreachable".into())
                } else {
                    Ok(Outcome {
                        note: "ok".into(),
                        more: false,
                    })
                }
            })
        }
    }

    #[tokio::test]
    async fn supervisor_records_errors_recovers_and_stops() {
        let mut sup = Supervisor::new(Arc::new(Metrics::default()));
        sup.spawn(Flaky { calls: 0 });
        let board = sup.statuses();
        // The first run fails; the retry after a 1 s backoff succeeds.
        let mut seen_error = false;
        for _ in 0..300 {
            let s = &board.list()[0];
            if s.error_count == 1 {
                seen_error = true;
                assert_eq!(s.last_error.as_deref(), Some("store unreachable"));
            }
            if s.runs >= 2 && s.state == State::Idle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen_error);
        let s = &board.list()[0];
        assert!(s.runs >= 2, "{s:?}");
        assert_eq!(s.consecutive_errors, 0);
        let t = std::time::Instant::now();
        sup.shutdown(Duration::from_secs(2)).await;
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(board.list()[0].state, State::Stopped);
    }
}
