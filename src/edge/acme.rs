//! Certificates by ACME (RFC 8555, with instant-acme): the cell's own name by HTTP-01 or
//! TLS-ALPN-01, and `*.{workspace_domain}` by DNS-01. A loop (`certificates` in the worker
//! table) issues what is missing and renews at two thirds of a certificate's lifetime, or inside
//! the CA's renewal window (ACME Renewal Information) when it offers one. A failure keeps the
//! current certificate served and retries after a minute, doubling to six hours, never sooner
//! than the server's `Retry-After`. Account and certificates live in the store, private keys
//! sealed; at start the stored certificate is served at once, and a self-signed one only when
//! there is nothing else (loudly: `cert status`, the admin page and every dashboard page say so).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use time::OffsetDateTime;

use super::dns::DnsWriter;
use super::tls::{Loaded, Served};
use crate::config::{AcmeChallenge, Config};
use crate::service::{Cell, CertSource, CertStatus};
use crate::workers::{BoxFuture, Outcome, Worker};

/// The first wait after a failure; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);

/// HTTP-01 answers: token → key authorization, served on the plain listener.
#[derive(Debug, Default)]
pub struct Http01(RwLock<HashMap<String, String>>);

impl Http01 {
    pub fn answer(&self, token: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }
    fn set(&self, token: &str, key_authorization: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
    }
    fn remove(&self, token: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }
}

/// One certificate the cell keeps by ACME.
struct Plan {
    /// `main` or `wildcard`.
    slot: &'static str,
    names: Vec<String>,
    challenges: Vec<ChallengeType>,
}

/// Where one certificate stands.
#[derive(Default)]
struct SlotState {
    source: Option<CertSource>,
    /// When to renew; `None`: now.
    renew_at: Option<OffsetDateTime>,
    /// After a failure: not before then.
    retry_at: Option<OffsetDateTime>,
    failures: u32,
    last_error: Option<String>,
    /// When to ask the CA's renewal information again.
    ari_next: Option<OffsetDateTime>,
}

/// The ACME loop.
pub struct AcmeWorker {
    cell: Cell,
    served: Arc<Served>,
    http01: Arc<Http01>,
    metrics: Arc<crate::metrics::Metrics>,
    plans: Vec<Plan>,
    state: HashMap<&'static str, SlotState>,
    directory: String,
    contact: Vec<String>,
    tls: rustls::ClientConfig,
    account: Option<Account>,
    /// The latest `Retry-After` the ACME server sent with an error.
    retry_after: Arc<Mutex<Option<SystemTime>>>,
    dns: Option<Arc<DnsWriter>>,
}

impl AcmeWorker {
    /// Prepares the loop and serves at once what there is: the stored certificates, else a
    /// self-signed one per slot. An unreadable trust file is an error (nothing would validate).
    pub fn new(
        cell: Cell,
        config: &Config,
        served: Arc<Served>,
        http01: Arc<Http01>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<AcmeWorker, String> {
        let acme = &config.tls.acme;
        let mut extra: Vec<&std::path::Path> = Vec::new();
        extra.extend(acme.ca_bundle.as_deref());
        extra.extend(config.tls.trust_bundle.as_deref());
        let tls = crate::trust::client_config(&extra)?;
        let challenges = match acme.challenge {
            AcmeChallenge::Auto => vec![ChallengeType::Http01, ChallengeType::TlsAlpn01],
            AcmeChallenge::Http01 => vec![ChallengeType::Http01],
            AcmeChallenge::TlsAlpn01 => vec![ChallengeType::TlsAlpn01],
        };
        let mut plans = vec![Plan {
            slot: "main",
            names: config.acme_names(),
            challenges,
        }];
        if let Some(domain) = &config.server.workspace_domain {
            plans.push(Plan {
                slot: "wildcard",
                names: vec![format!("*.{}", domain.to_ascii_lowercase())],
                challenges: vec![ChallengeType::Dns01],
            });
        }
        let dns = DnsWriter::from_config(config, cell.trust())?.map(Arc::new);
        let mut worker = AcmeWorker {
            cell,
            served,
            http01,
            metrics,
            plans,
            state: HashMap::new(),
            directory: acme.directory.to_string(),
            contact: acme.contact.iter().map(|c| format!("mailto:{c}")).collect(),
            tls,
            account: None,
            retry_after: Default::default(),
            dns,
        };
        worker.serve_stored();
        Ok(worker)
    }

    /// Serves the stored certificate of each slot, or a self-signed one.
    fn serve_stored(&mut self) {
        let stored = self.cell.issued_certificates().unwrap_or_else(|e| {
            tracing::error!(error = %e, "stored certificates cannot be read; getting new ones");
            Vec::new()
        });
        for plan in &self.plans {
            let mut st = SlotState::default();
            let found = stored.iter().find(|c| c.slot == plan.slot).and_then(|c| {
                let key = self.cell.issued_certificate_key(c).ok()?;
                match Loaded::from_pem(c.chain_pem.as_bytes(), key.as_bytes(), "stored certificate") {
                    Ok(l) => Some((l, c.names == plan.names && c.directory == self.directory)),
                    Err(e) => {
                        tracing::error!(slot = plan.slot, error = %e, "the stored certificate is corrupt; getting a new one");
                        None
                    }
                }
            });
            match found {
                Some((loaded, current)) => {
                    // A certificate for other names or from another CA is served until the
                    // right one is issued, which is now.
                    st.renew_at = current.then(|| renewal_time(&loaded));
                    st.source = Some(CertSource::Acme);
                    self.served.set(plan.slot, loaded);
                }
                None => match Loaded::self_signed(&plan.names) {
                    Ok(loaded) => {
                        tracing::warn!(names = ?plan.names, "no certificate yet: serving a self-signed one until one is issued");
                        st.source = Some(CertSource::SelfSigned);
                        self.served.set(plan.slot, loaded);
                    }
                    Err(e) => tracing::error!(error = %e, "no certificate to serve"),
                },
            }
            self.state.insert(plan.slot, st);
        }
        self.publish();
    }

    fn publish(&self) {
        for plan in &self.plans {
            let st = self.state.get(plan.slot);
            let loaded = self.served.get(plan.slot);
            let st_default = SlotState::default();
            let st = st.unwrap_or(&st_default);
            let next = match (st.retry_at, st.renew_at) {
                (Some(r), _) => Some(r),
                (None, r) => r.or(Some(self.cell.now())),
            };
            self.cell.publish_certificate_status(CertStatus {
                slot: plan.slot.into(),
                names: plan.names.clone(),
                source: st.source.unwrap_or(CertSource::SelfSigned),
                issuer: loaded.as_ref().map(|l| l.issuer.clone()),
                not_after: loaded.as_ref().map(|l| l.not_after),
                next_renewal: next,
                last_error: st.last_error.clone(),
                failures: st.failures,
            });
        }
        self.served.report(&self.metrics);
    }

    fn http(&self) -> Box<dyn HttpClient> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.tls.clone())
            .https_only()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Box::new(Recording {
            client,
            retry_after: self.retry_after.clone(),
        })
    }

    /// The account, created on first use and kept in the store.
    async fn account(&mut self) -> Result<Account, String> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let stored = self
            .cell
            .acme_account(&self.directory)
            .map_err(|e| e.to_string())?;
        let account = match stored {
            Some(json) => {
                let credentials: AccountCredentials = serde_json::from_str(&json)
                    .map_err(|e| format!("the stored ACME account does not load: {e}"))?;
                Account::builder_with_http(self.http())
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| self.explain("loading the account", &e))?
            }
            None => {
                let contact: Vec<&str> = self.contact.iter().map(String::as_str).collect();
                let (account, credentials) = Account::builder_with_http(self.http())
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| self.explain("creating an account", &e))?;
                let json = serde_json::to_string(&credentials).map_err(|e| e.to_string())?;
                self.cell
                    .save_acme_account(&self.directory, &json)
                    .map_err(|e| e.to_string())?;
                tracing::info!(directory = %self.directory, "ACME account created");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// What went wrong while `doing` something, for operators: the server's problem document,
    /// or why it could not be reached (with the causes, which instant-acme's message leaves out).
    fn explain(&self, doing: &str, e: &instant_acme::Error) -> String {
        match e {
            instant_acme::Error::Api(problem) => {
                let mut text = format!(
                    "{doing}: the ACME server at {} answered: {problem}",
                    self.directory
                );
                if problem
                    .r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with(":rateLimited"))
                {
                    text.push_str(" (rate limited: the cell waits as long as the server asks)");
                }
                text
            }
            instant_acme::Error::Json(e) => format!(
                "{doing}: the server at {} did not answer as an ACME server does ({e}); check tls.acme.directory",
                self.directory
            ),
            other => {
                let mut causes = vec![other.to_string()];
                let mut source = std::error::Error::source(other);
                while let Some(s) = source {
                    causes.push(s.to_string());
                    source = s.source();
                }
                causes.dedup();
                let text = causes.join(": ");
                let hint = if text.contains("dns error") {
                    "this host cannot resolve its name; an air-gapped cell names an internal ACME server in tls.acme.directory"
                } else if text.contains("certificate") {
                    "its certificate is not trusted: put its CA in tls.acme.ca_bundle or tls.trust_bundle"
                } else {
                    "is it up, and does tls.acme.ca_bundle or tls.trust_bundle hold its CA?"
                };
                format!(
                    "{doing}: cannot reach the ACME server at {}: {text} ({hint})",
                    self.directory
                )
            }
        }
    }

    /// Gets a certificate for `plan`, trying its challenge types in turn.
    async fn issue(&mut self, plan: usize) -> Result<(Loaded, String, String), String> {
        let account = self.account().await?;
        let plan = &self.plans[plan];
        let identifiers: Vec<Identifier> = plan
            .names
            .iter()
            .map(|n| Identifier::Dns(n.clone()))
            .collect();
        let mut errors = Vec::new();
        for kind in &plan.challenges {
            match self.order(&account, &identifiers, kind.clone()).await {
                Ok(done) => return Ok(done),
                Err(e) => {
                    tracing::warn!(names = ?plan.names, challenge = ?kind, error = %e, "ACME order failed");
                    errors.push(format!("{}: {e}", challenge_name(kind)));
                }
            }
        }
        Err(errors.join("; "))
    }

    async fn order(
        &self,
        account: &Account,
        identifiers: &[Identifier],
        kind: ChallengeType,
    ) -> Result<(Loaded, String, String), String> {
        let mut order = account
            .new_order(&NewOrder::new(identifiers))
            .await
            .map_err(|e| self.explain("placing the order", &e))?;
        let mut undo = Undoing {
            steps: Vec::new(),
            http01: self.http01.clone(),
            served: self.served.clone(),
            dns: self.dns.clone(),
        };
        let result = self.prove(&mut order, kind, &mut undo.steps).await;
        undo.finish().await;
        result?;
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| format!("finalizing the order failed: {e}"))?;
        let chain = order
            .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(90)))
            .await
            .map_err(|e| format!("the certificate was not issued: {e}"))?;
        let loaded = Loaded::from_pem(chain.as_bytes(), key_pem.as_bytes(), "issued certificate")?;
        Ok((loaded, chain, key_pem))
    }

    /// Sets up the answer to each pending authorization's challenge, tells the server, and
    /// waits until the order is ready.
    async fn prove(
        &self,
        order: &mut instant_acme::Order,
        kind: ChallengeType,
        undo: &mut Vec<Undo>,
    ) -> Result<(), String> {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| e.to_string())?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("an authorization is {other:?}")),
            }
            let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                format!(
                    "the ACME server offers no {} challenge here",
                    challenge_name(&kind)
                )
            })?;
            let name = match challenge.identifier().identifier {
                Identifier::Dns(d) => d.clone(),
                other => return Err(format!("cannot prove {other:?}")),
            };
            let key_authorization = challenge.key_authorization();
            match kind {
                ChallengeType::Http01 => {
                    self.http01
                        .set(&challenge.token, key_authorization.as_str());
                    undo.push(Undo::Http01(challenge.token.clone()));
                }
                ChallengeType::TlsAlpn01 => {
                    let cert = alpn_certificate(&name, key_authorization.digest().as_ref())?;
                    self.served.challenge(&name, cert);
                    undo.push(Undo::TlsAlpn(name.clone()));
                }
                ChallengeType::Dns01 => {
                    let dns = self
                        .dns
                        .as_ref()
                        .ok_or("DNS-01 needs `tls.dns.provider` and its keys".to_string())?;
                    let record = format!("_acme-challenge.{name}");
                    let value = key_authorization.dns_value();
                    undo.push(Undo::Dns(record.clone(), value.clone()));
                    dns.set_txt(&record, &value).await?;
                }
                _ => return Err("unsupported challenge type".into()),
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("{name}: {e}"))?;
        }
        let status = order
            .poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(90)))
            .await
            .map_err(|e| format!("validation failed: {e}"))?;
        if status == OrderStatus::Ready {
            return Ok(());
        }
        // Why: the failed challenge's error.
        let mut reasons = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let Ok(mut authz) = authz else { continue };
            let _ = authz.refresh().await;
            for c in &authz.challenges {
                if let Some(e) = &c.error {
                    reasons.push(e.to_string());
                }
            }
        }
        Err(if reasons.is_empty() {
            format!("the order is {status:?}")
        } else {
            reasons.join("; ")
        })
    }

    /// Asks the CA when to renew `slot`, when it offers renewal information.
    async fn ask_renewal_window(&mut self, slot: &'static str) {
        let now = self.cell.now();
        let Some(st) = self.state.get(slot) else {
            return;
        };
        if st.ari_next.is_some_and(|t| now < t) || st.source != Some(CertSource::Acme) {
            return;
        }
        let Some(loaded) = self.served.get(slot) else {
            return;
        };
        let Ok(account) = self.account().await else {
            return;
        };
        let Some(leaf) = loaded.key.cert.first() else {
            return;
        };
        let Ok(id) = instant_acme::CertificateIdentifier::try_from(leaf) else {
            return;
        };
        let asked = account.renewal_info(&id).await;
        let Some(st) = self.state.get_mut(slot) else {
            return;
        };
        match asked {
            Ok((info, retry)) => {
                let window = (info.suggested_window.start, info.suggested_window.end);
                st.renew_at = Some(pick_in_window(window, now));
                st.ari_next = Some(now + retry.max(Duration::from_secs(3600)));
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                st.ari_next = Some(now + Duration::from_secs(24 * 3600));
            }
            Err(e) => {
                tracing::debug!(error = %e, "renewal information not available");
                st.ari_next = Some(now + Duration::from_secs(3600));
            }
        }
    }
}

enum Undo {
    Http01(String),
    TlsAlpn(String),
    Dns(String, String),
}

/// What an order set up to prove itself, taken down after validation; also when the order is
/// abandoned midway (the loop's run timed out, the cell stopped), from `Drop`.
struct Undoing {
    steps: Vec<Undo>,
    http01: Arc<Http01>,
    served: Arc<Served>,
    dns: Option<Arc<DnsWriter>>,
}

impl Undoing {
    async fn finish(mut self) {
        for step in std::mem::take(&mut self.steps) {
            self.undo(step).await;
        }
    }

    async fn undo(&self, step: Undo) {
        match step {
            Undo::Http01(token) => self.http01.remove(&token),
            Undo::TlsAlpn(name) => self.served.end_challenge(&name),
            Undo::Dns(name, value) => {
                if let Some(dns) = &self.dns
                    && let Err(e) = dns.remove_txt(&name, &value).await
                {
                    tracing::warn!(record = %name, error = %e, "the DNS-01 record was not removed");
                }
            }
        }
    }
}

impl Drop for Undoing {
    fn drop(&mut self) {
        let steps = std::mem::take(&mut self.steps);
        if steps.is_empty() {
            return;
        }
        let rest = Undoing {
            steps: Vec::new(),
            http01: self.http01.clone(),
            served: self.served.clone(),
            dns: self.dns.clone(),
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for step in steps {
                    rest.undo(step).await;
                }
            });
        }
    }
}

fn challenge_name(kind: &ChallengeType) -> &'static str {
    match kind {
        ChallengeType::Http01 => "HTTP-01",
        ChallengeType::TlsAlpn01 => "TLS-ALPN-01",
        ChallengeType::Dns01 => "DNS-01",
        _ => "challenge",
    }
}

/// Two thirds into the certificate's lifetime (see [`crate::service::renewal_point`]).
fn renewal_time(loaded: &Loaded) -> OffsetDateTime {
    crate::service::renewal_point(loaded.not_before, loaded.not_after)
}

/// A time in the CA's suggested window: uniformly random, as RFC 9773 asks (so that many
/// clients do not renew at once); now when the window has begun.
pub fn pick_in_window(
    (start, end): (OffsetDateTime, OffsetDateTime),
    now: OffsetDateTime,
) -> OffsetDateTime {
    if end <= now || start <= now {
        return now;
    }
    let span = (end - start).whole_seconds().max(0);
    let offset = if span > 0 {
        rand::random_range(0..=span)
    } else {
        0
    };
    start + time::Duration::seconds(offset)
}

/// The wait before attempt `failures + 1`: a minute, doubling, at most six hours.
pub fn retry_delay(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY)
}

/// The self-signed certificate answering TLS-ALPN-01 validation of `name` (RFC 8737): the name
/// as its only SAN and the key authorization's digest in the critical acmeIdentifier extension.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| format!("challenge certificate: {e}"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("challenge certificate: {e}"))?;
    // Not through `Loaded`: rustls's check that key and certificate match parses the
    // certificate with webpki, which refuses the critical acmeIdentifier extension.
    let signing = super::tls::provider()
        .key_provider
        .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(
            key.serialize_der().into(),
        ))
        .map_err(|e| format!("challenge key: {e}"))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

impl Worker for AcmeWorker {
    fn name(&self) -> &'static str {
        "certificates"
    }
    fn interval(&self) -> Duration {
        Duration::from_secs(5)
    }
    fn run(&mut self) -> BoxFuture<'_, Result<Outcome, String>> {
        Box::pin(async move {
            let mut notes = Vec::new();
            for i in 0..self.plans.len() {
                let slot = self.plans[i].slot;
                self.ask_renewal_window(slot).await;
                let now = self.cell.now();
                let st = self.state.entry(slot).or_default();
                if st.retry_at.is_some_and(|t| now < t) || st.renew_at.is_some_and(|t| now < t) {
                    continue;
                }
                *self.retry_after.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let result = self.issue(i).await;
                let names = self.plans[i].names.clone();
                match result {
                    Ok((loaded, chain, key)) => {
                        if let Err(e) = self.cell.save_issued_certificate(
                            slot,
                            &names,
                            &self.directory,
                            &chain,
                            &key,
                            loaded.not_before,
                            loaded.not_after,
                        ) {
                            tracing::error!(error = %e, "the new certificate was not stored; it is served until the cell stops");
                        }
                        tracing::info!(names = ?names, not_after = %loaded.not_after, "certificate issued; new connections get it");
                        let st = self.state.entry(slot).or_default();
                        *st = SlotState {
                            source: Some(CertSource::Acme),
                            renew_at: Some(renewal_time(&loaded)),
                            ..SlotState::default()
                        };
                        self.served.set(slot, loaded);
                        notes.push(format!("{slot}: issued"));
                    }
                    Err(e) => {
                        let server_wait = self
                            .retry_after
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .and_then(|t| t.duration_since(SystemTime::now()).ok());
                        let st = self.state.entry(slot).or_default();
                        st.failures += 1;
                        let wait = retry_delay(st.failures).max(server_wait.unwrap_or_default());
                        st.retry_at = Some(now + wait);
                        tracing::warn!(names = ?names, error = %e, failures = st.failures, retry_in = %humantime::format_duration(wait), "getting a certificate failed; still serving the current one");
                        st.last_error = Some(e);
                        notes.push(format!("{slot}: failed, retrying"));
                    }
                }
            }
            self.publish();
            Ok(Outcome {
                note: if notes.is_empty() {
                    "nothing due".into()
                } else {
                    notes.join(", ")
                },
                more: false,
            })
        })
    }
}

/// The ACME client's HTTP: the cell's trust, and the `Retry-After` of error answers noted.
struct Recording {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        BodyWrapper<Bytes>,
    >,
    retry_after: Arc<Mutex<Option<SystemTime>>>,
}

impl HttpClient for Recording {
    fn request(
        &self,
        req: axum::http::Request<BodyWrapper<Bytes>>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>,
    > {
        let fut = self.client.request(req);
        let retry_after = self.retry_after.clone();
        Box::pin(async move {
            let rsp = fut.await;
            if let Ok(rsp) = &rsp
                && (rsp.status() == 429 || rsp.status() == 503)
                && let Some(at) = rsp
                    .headers()
                    .get(axum::http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after)
            {
                *retry_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
            }
            match rsp {
                Ok(rsp) => Ok(BytesResponse::from(rsp)),
                Err(e) => Err(instant_acme::Error::Other(Box::new(e))),
            }
        })
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(SystemTime::now() + Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_at_a_minute_and_grow_to_six_hours() {
        assert_eq!(retry_delay(1), Duration::from_secs(60));
        assert_eq!(retry_delay(2), Duration::from_secs(120));
        assert_eq!(retry_delay(5), Duration::from_secs(960));
        assert_eq!(retry_delay(12), MAX_RETRY);
        assert_eq!(retry_delay(400), MAX_RETRY);
    }

    #[test]
    fn renewal_picks_a_time_inside_the_window_or_now_once_it_began() {
        let now = OffsetDateTime::now_utc();
        let window = (now + time::Duration::days(3), now + time::Duration::days(4));
        for _ in 0..50 {
            let t = pick_in_window(window, now);
            assert!(t >= window.0 && t <= window.1, "{t} outside the window");
        }
        let begun = (
            now - time::Duration::hours(1),
            now + time::Duration::days(1),
        );
        assert_eq!(pick_in_window(begun, now), now);
    }

    #[tokio::test]
    async fn an_order_abandoned_midway_still_takes_its_answers_down() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http01 = Arc::new(Http01::default());
        let served = Arc::new(Served::default());
        http01.set("token", "token.thumbprint");
        served.challenge(
            "cell.example.com",
            alpn_certificate("cell.example.com", &[7; 32]).unwrap(),
        );
        let undo = Undoing {
            steps: vec![
                Undo::Http01("token".into()),
                Undo::TlsAlpn("cell.example.com".into()),
            ],
            http01: http01.clone(),
            served: served.clone(),
            dns: None,
        };
        // Dropped as a cancelled future drops it, without `finish`.
        drop(undo);
        for _ in 0..100 {
            if http01.answer("token").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(http01.answer("token"), None);
        assert!(
            served
                .challenges
                .read()
                .unwrap()
                .get("cell.example.com")
                .is_none()
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let soon = parse_retry_after("120").unwrap();
        let d = soon.duration_since(SystemTime::now()).unwrap();
        assert!(d > Duration::from_secs(110) && d <= Duration::from_secs(120));
        let date = parse_retry_after("Fri, 31 Dec 2100 23:59:59 GMT").unwrap();
        assert!(date > SystemTime::now() + Duration::from_secs(3600 * 24 * 365 * 50));
        assert!(parse_retry_after("soon").is_none());
    }
}
