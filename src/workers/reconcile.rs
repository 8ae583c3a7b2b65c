//! Drives workspaces toward their desired state through the runtime, and writes the activity
//! agents report to the store in batches.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BoxFuture, Outcome, Worker};
use crate::domain::WorkspaceId;
use crate::service::Cell;

pub struct ReconcileWorker {
    cell: Cell,
    in_flight: Arc<Mutex<HashSet<WorkspaceId>>>,
    /// The workspaces' steps under way. Owned here, so they end with the worker when the cell
    /// stops (see `stop`) instead of going on (and launching sandboxes) behind it: what they
    /// leave half done, recovery at the next start finishes or undoes.
    tasks: tokio::task::JoinSet<()>,
    last_flush: Instant,
    recovered: bool,
}

/// Activity is written at most this often per pass.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// Without a wake-up, look again after this long.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

impl ReconcileWorker {
    pub fn new(cell: Cell) -> ReconcileWorker {
        ReconcileWorker {
            cell,
            in_flight: Arc::default(),
            tasks: tokio::task::JoinSet::new(),
            last_flush: Instant::now(),
            recovered: false,
        }
    }
}

impl Worker for ReconcileWorker {
    fn name(&self) -> &'static str {
        "reconcile"
    }

    fn interval(&self) -> Duration {
        // Each run waits for a wake-up (or the sweep) itself; a pause between runs would only
        // delay a start asked for right after the previous run.
        Duration::from_millis(1)
    }

    fn run(&mut self) -> BoxFuture<'_, Result<Outcome, String>> {
        Box::pin(async move {
            if !self.recovered {
                self.cell.recover().await.map_err(|e| e.to_string())?;
                self.recovered = true;
            } else {
                tokio::select! {
                    _ = self.cell.reconcile_wanted() => {}
                    _ = tokio::time::sleep(SWEEP_EVERY) => {}
                }
            }
            let ids = self
                .cell
                .workspaces_to_reconcile()
                .map_err(|e| e.to_string())?;
            // Forget the steps that have ended.
            while self.tasks.try_join_next().is_some() {}
            let mut started = 0;
            for id in ids {
                let fresh = self
                    .in_flight
                    .lock()
                    .map(|mut s| s.insert(id.clone()))
                    .unwrap_or(false);
                if !fresh {
                    continue;
                }
                started += 1;
                let (cell, in_flight) = (self.cell.clone(), self.in_flight.clone());
                self.tasks.spawn(async move {
                    if let Err(e) = cell.reconcile(&id).await {
                        tracing::warn!(workspace = %id, error = %e, "reconcile failed");
                    }
                    if let Ok(mut s) = in_flight.lock() {
                        s.remove(&id);
                    }
                    // Another step may follow right away (e.g. stop, then delete).
                    cell.wake();
                });
            }
            let mut flushed = 0;
            if self.last_flush.elapsed() >= FLUSH_EVERY {
                flushed = self
                    .cell
                    .flush_activity()
                    .await
                    .map_err(|e| e.to_string())?;
                self.last_flush = Instant::now();
            }
            Ok(Outcome {
                note: format!("{started} workspaces in progress; activity of {flushed} recorded"),
                more: false,
            })
        })
    }

    /// Ends the steps under way and waits until none runs any more: dropping them only asks,
    /// and a step between two waits (a sandbox launch is one) would go on for a moment.
    fn stop(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.tasks.shutdown())
    }
}
