//! Stops running workspaces at their inactivity timeout or maximum lifetime, and warns their
//! users in the terminals shortly before.

use std::collections::HashMap;
use std::time::Duration;

use time::OffsetDateTime;

use super::{BoxFuture, Outcome, Worker};
use crate::domain::WorkspaceId;
use crate::service::Cell;

pub struct TimeoutWorker {
    cell: Cell,
    interval: Duration,
    /// The deadline each workspace's terminals were last warned about, so a warning is shown
    /// once per deadline (activity moves the deadline, and a later one is warned again).
    warned: HashMap<WorkspaceId, OffsetDateTime>,
}

impl TimeoutWorker {
    pub fn new(cell: Cell, interval: Duration) -> TimeoutWorker {
        TimeoutWorker {
            cell,
            interval,
            warned: HashMap::new(),
        }
    }
}

impl Worker for TimeoutWorker {
    fn name(&self) -> &'static str {
        "timeouts"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn run(&mut self) -> BoxFuture<'_, Result<Outcome, String>> {
        Box::pin(async move {
            let pass = self
                .cell
                .enforce_timeouts()
                .await
                .map_err(|e| e.to_string())?;
            let mut told = 0;
            for (id, deadline, text) in &pass.warnings {
                if self.warned.get(id) == Some(deadline) {
                    continue;
                }
                match self.cell.notify_terminals(id, text).await {
                    Ok(n) => {
                        told += n;
                        self.warned.insert(id.clone(), *deadline);
                    }
                    Err(e) => {
                        tracing::warn!(workspace = %id, error = %e, "could not warn the terminals")
                    }
                }
            }
            let warned_now: Vec<&WorkspaceId> = pass.warnings.iter().map(|(id, ..)| id).collect();
            self.warned.retain(|id, _| warned_now.contains(&id));
            Ok(Outcome {
                note: format!(
                    "{} stopped, {} about to stop ({told} terminals warned)",
                    pass.stopped.len(),
                    pass.warnings.len()
                ),
                more: false,
            })
        })
    }
}
