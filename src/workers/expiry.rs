//! Removes expired sessions, one-time login links, invitations and API tokens.

use std::time::Duration;

use super::{BoxFuture, Outcome, Worker};
use crate::service::Cell;

pub struct ExpiryWorker {
    pub cell: Cell,
    pub interval: Duration,
}

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
            Ok(Outcome {
                note: format!("purged {n} expired credentials"),
                more: false,
            })
        })
    }
}
