//! Prometheus metrics of the cell, rendered at `/metrics` in the text exposition format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The matched route template (`/api/v1/workspaces/{id}`), never the raw path, so that
    /// ids do not explode the series count.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    pub name: String,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub worker_runs: Family<WorkerLabels, Counter>,
    pub worker_errors: Family<WorkerLabels, Counter>,
    pub worker_last_run: Family<WorkerLabels, Gauge>,
    /// 1 while the loop is backing off after errors.
    pub worker_failing: Family<WorkerLabels, Gauge>,
    pub workspaces: Gauge,
    pub backups: Counter,
    pub backup_failures: Counter,
    pub backup_bytes: Counter,
    /// Seconds until the served certificate expires, per name it holds.
    pub certificate_expiry: Family<CertLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("devcell");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        let worker_runs = Family::<WorkerLabels, Counter>::default();
        registry.register("worker_runs", "Background loop runs", worker_runs.clone());
        let worker_errors = Family::<WorkerLabels, Counter>::default();
        registry.register(
            "worker_errors",
            "Background loop runs that failed",
            worker_errors.clone(),
        );
        let worker_last_run = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_last_run_timestamp_seconds",
            "Unix time of the loop's last run",
            worker_last_run.clone(),
        );
        let worker_failing = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_failing",
            "1 while the loop backs off after errors",
            worker_failing.clone(),
        );
        let workspaces = Gauge::default();
        registry.register(
            "workspaces",
            "Workspace records in the cell",
            workspaces.clone(),
        );
        let backups = Counter::default();
        registry.register(
            "backups",
            "Workspace snapshots written and verified",
            backups.clone(),
        );
        let backup_failures = Counter::default();
        registry.register(
            "backup_failures",
            "Workspace snapshots that failed (retried with backoff)",
            backup_failures.clone(),
        );
        let backup_bytes = Counter::default();
        registry.register(
            "backup_added_bytes",
            "New data the snapshots added to the backup store, after deduplication",
            backup_bytes.clone(),
        );
        let certificate_expiry = Family::<CertLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until the certificate served for a name expires",
            certificate_expiry.clone(),
        );
        Metrics {
            registry,
            certificate_expiry,
            backups,
            backup_failures,
            backup_bytes,
            http_requests,
            worker_runs,
            worker_errors,
            worker_last_run,
            worker_failing,
            workspaces,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}
