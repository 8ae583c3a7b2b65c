//! Looks for a new release on the channel (`update.channel_url`) every `update.check_interval`
//! and applies it when it may apply by itself (see `Cell::check_for_update`).

use std::time::Duration;

use super::{BoxFuture, Outcome, Worker};
use crate::service::Cell;

pub struct UpdateWorker {
    pub cell: Cell,
    pub interval: Duration,
}

/// While a release waits for the maintenance window, the loop looks every minute.
const WINDOW_CHECK: Duration = Duration::from_secs(60);

impl Worker for UpdateWorker {
    fn name(&self) -> &'static str {
        "updates"
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn run(&mut self) -> BoxFuture<'_, Result<Outcome, String>> {
        Box::pin(async move {
            let checked = self
                .cell
                .check_for_update()
                .await
                .map_err(|e| e.to_string())?;
            let more = checked.waits_for_window;
            if more {
                tokio::time::sleep(WINDOW_CHECK).await;
            }
            Ok(Outcome {
                note: checked.note,
                more,
            })
        })
    }
}
