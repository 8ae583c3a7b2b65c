//! The backup loops: one takes owed and interval snapshots, the other applies retention,
//! prunes the store and releases the local files of stopped workspaces.

use std::time::Duration;

use super::{BoxFuture, Outcome, Worker};
use crate::service::Cell;

pub struct BackupWorker {
    pub cell: Cell,
    pub interval: Duration,
}

impl Worker for BackupWorker {
    fn name(&self) -> &'static str {
        "backups"
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn run(&mut self) -> BoxFuture<'_, Result<Outcome, String>> {
        Box::pin(async move {
            let (ok, failed) = self.cell.run_backups().await.map_err(|e| e.to_string())?;
            // Each failed workspace waits for its own retry time; the loop itself keeps its
            // pace, or one broken workspace would hold back every other's interval snapshot.
            let note = if failed > 0 {
                format!("{ok} snapshots taken; {failed} failed (each retried on its own schedule)")
            } else {
                format!("{ok} snapshots taken")
            };
            Ok(Outcome { note, more: false })
        })
    }
}

pub struct CleanupWorker {
    pub cell: Cell,
    pub interval: Duration,
}

impl Worker for CleanupWorker {
    fn name(&self) -> &'static str {
        "cleanup"
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn run(&mut self) -> BoxFuture<'_, Result<Outcome, String>> {
        Box::pin(async move {
            let pass = self.cell.clean_up().await.map_err(|e| e.to_string())?;
            Ok(Outcome {
                note: pass.to_string(),
                more: false,
            })
        })
    }
}
