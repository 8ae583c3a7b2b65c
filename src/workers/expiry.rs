//! Removes expired sessions, one-time login links, invitations and API tokens; hourly, what
//! image builds cached and no build used for `image.build_cache_keep`.

use std::time::Duration;

use super::{BoxFuture, Outcome, Worker};
use crate::service::Cell;

pub struct ExpiryWorker {
    pub cell: Cell,
    pub interval: Duration,
    /// When the build cache was last pruned.
    pub pruned_at: Option<std::time::Instant>,
}

const PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl Worker for ExpiryWorker {
    fn name(&self) -> &'static str {
        "expiry"
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn run(&mut self) -> BoxFuture<'_, Result<Outcome, String>> {
        Box::pin(async move {
            let n = self
                .cell
                .purge_expired(self.cell.now())
                .map_err(|e| e.to_string())?;
            let mut note = format!("purged {n} expired credentials");
            if self.pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                self.pruned_at = Some(std::time::Instant::now());
                let p = self
                    .cell
                    .prune_build_cache()
                    .await
                    .map_err(|e| e.to_string())?;
                note.push_str(&format!(
                    "; build cache: {} steps and {} trees unused, removed",
                    p.steps, p.trees
                ));
            }
            Ok(Outcome { note, more: false })
        })
    }
}
