//! DNS-01 records for the wildcard certificate: written through an RFC 2136 dynamic update
//! signed with TSIG (BIND, Knot, PowerDNS and most authoritative servers take them) or through
//! Route 53's API, and removed again once the CA has looked.

use std::sync::Arc;
use std::time::Duration;

use hickory_client::client::{Client, ClientHandle};
use hickory_client::proto::dnssec::rdata::tsig::TsigAlgorithm as HickoryTsig;
use hickory_client::proto::dnssec::tsig::TSigner;
use hickory_client::proto::op::ResponseCode;
use hickory_client::proto::rr::rdata::TXT;
use hickory_client::proto::rr::{Name, RData, Record};
use hickory_client::proto::runtime::TokioRuntimeProvider;
use hickory_client::proto::tcp::TcpClientStream;

use crate::config::{Config, DnsProvider, TsigAlgorithm};

/// TTL of the challenge records: short, they live for one validation.
const TTL: u32 = 60;

/// Where DNS-01 records go.
pub enum DnsWriter {
    Rfc2136 {
        server: std::net::SocketAddr,
        zone: Name,
        signer: Arc<TSigner>,
    },
    Route53 {
        zone_id: String,
        endpoint: Option<url::Url>,
        /// An HTTP client trusting `tls.trust_bundle` as well, when it is set.
        http: Option<aws_sdk_s3::config::SharedHttpClient>,
    },
}

impl DnsWriter {
    /// The writer `[tls.dns]` describes, if any; Route 53 trusts `trust` (the cell's
    /// `tls.trust_bundle`) besides the host's CA certificates.
    pub fn from_config(
        config: &Config,
        trust: Option<&crate::trust::Outbound>,
    ) -> Result<Option<DnsWriter>, String> {
        let dns = &config.tls.dns;
        match dns.provider {
            None => Ok(None),
            Some(DnsProvider::Rfc2136) => {
                use base64::Engine;
                let (Some(server), Some(key_name), Some(secret)) =
                    (dns.server, &dns.tsig_key_name, &dns.tsig_secret)
                else {
                    return Err(
                        "tls.dns: RFC 2136 needs server, tsig_key_name and tsig_secret".into(),
                    );
                };
                let zone_text = dns
                    .zone
                    .clone()
                    .or_else(|| config.server.workspace_domain.clone())
                    .ok_or("tls.dns.zone: which zone to update?")?;
                let zone = Name::from_ascii(format!("{}.", zone_text.trim_end_matches('.')))
                    .map_err(|e| format!("tls.dns.zone {zone_text:?}: {e}"))?;
                let key = base64::engine::general_purpose::STANDARD
                    .decode(secret.expose())
                    .map_err(|e| format!("tls.dns.tsig_secret is not base64: {e}"))?;
                let algorithm = match dns.tsig_algorithm {
                    TsigAlgorithm::HmacSha256 => HickoryTsig::HmacSha256,
                    TsigAlgorithm::HmacSha384 => HickoryTsig::HmacSha384,
                    TsigAlgorithm::HmacSha512 => HickoryTsig::HmacSha512,
                };
                let signer_name = Name::from_ascii(key_name)
                    .map_err(|e| format!("tls.dns.tsig_key_name {key_name:?}: {e}"))?;
                let signer = TSigner::new(key, algorithm, signer_name, 300)
                    .map_err(|e| format!("the TSIG key cannot sign: {e}"))?;
                Ok(Some(DnsWriter::Rfc2136 {
                    server,
                    zone,
                    signer: Arc::new(signer),
                }))
            }
            Some(DnsProvider::Route53) => Ok(Some(DnsWriter::Route53 {
                zone_id: dns
                    .route53_zone_id
                    .clone()
                    .ok_or("tls.dns.route53_zone_id is not set")?,
                endpoint: dns.route53_endpoint.clone(),
                http: trust.map(|t| t.aws_http_client()).transpose()?,
            })),
        }
    }

    /// Adds the TXT record `name` with `value` (other values of the name stay).
    pub async fn set_txt(&self, name: &str, value: &str) -> Result<(), String> {
        self.change(name, value, true).await
    }

    /// Removes the TXT record `name` with `value`.
    pub async fn remove_txt(&self, name: &str, value: &str) -> Result<(), String> {
        self.change(name, value, false).await
    }

    async fn change(&self, name: &str, value: &str, add: bool) -> Result<(), String> {
        match self {
            DnsWriter::Rfc2136 {
                server,
                zone,
                signer,
            } => {
                let mut client = rfc2136_client(*server, signer.clone()).await?;
                let record = txt_record(name, value)?;
                let answer = if add {
                    client.append(record, zone.clone(), false).await
                } else {
                    client.delete_by_rdata(record, zone.clone()).await
                };
                let answer = answer.map_err(|e| update_failed(server, &e))?;
                check(answer.response_code(), server, name)
            }
            DnsWriter::Route53 {
                zone_id,
                endpoint,
                http,
            } => route53_change(zone_id, endpoint, http, name, value, add).await,
        }
    }
}

fn txt_record(name: &str, value: &str) -> Result<Record, String> {
    let name = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|e| format!("{name:?}: {e}"))?;
    Ok(Record::from_rdata(
        name,
        TTL,
        RData::TXT(TXT::new(vec![value.to_owned()])),
    ))
}

fn update_failed(server: &std::net::SocketAddr, e: &hickory_client::ClientError) -> String {
    tracing::debug!(error = ?e, "DNS update failed");
    format!(
        "the DNS update to {server} failed: {e}; check tls.dns.tsig_key_name, tsig_algorithm and tsig_secret (a server that does not know the key answers unsigned, which reads as this error)"
    )
}

fn check(code: ResponseCode, server: &std::net::SocketAddr, name: &str) -> Result<(), String> {
    match code {
        ResponseCode::NoError => Ok(()),
        ResponseCode::Refused | ResponseCode::NotAuth => Err(format!(
            "{server} refused the update of {name} ({code}): check that tls.dns.tsig_key_name and tsig_secret match a key the zone allows updates with (BIND: update-policy or allow-update)"
        )),
        ResponseCode::NotZone => Err(format!(
            "{server}: {name} is not in the zone named in tls.dns.zone ({code})"
        )),
        other => Err(format!(
            "{server} answered the update of {name} with {other}"
        )),
    }
}

async fn rfc2136_client(
    server: std::net::SocketAddr,
    signer: Arc<TSigner>,
) -> Result<Client, String> {
    let (stream, sender) = TcpClientStream::new(
        server,
        None,
        Some(Duration::from_secs(10)),
        TokioRuntimeProvider::new(),
    );
    let (client, background) =
        Client::with_timeout(stream, sender, Duration::from_secs(10), Some(signer))
            .await
            .map_err(|e| format!("cannot reach the DNS server {server}: {e}"))?;
    tokio::spawn(background);
    Ok(client)
}

async fn route53_change(
    zone_id: &str,
    endpoint: &Option<url::Url>,
    http: &Option<aws_sdk_s3::config::SharedHttpClient>,
    name: &str,
    value: &str,
    create: bool,
) -> Result<(), String> {
    use aws_sdk_route53::types::{
        Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
    };
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).region(
        aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1"),
    );
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint.as_str().trim_end_matches('/'));
    }
    if let Some(http) = http {
        loader = loader.http_client(http.clone());
    }
    let client = aws_sdk_route53::Client::new(&loader.load().await);
    let record = ResourceRecord::builder()
        .value(format!("\"{value}\""))
        .build()
        .map_err(|e| e.to_string())?;
    let set = ResourceRecordSet::builder()
        .name(name)
        .r#type(RrType::Txt)
        .ttl(i64::from(TTL))
        .resource_records(record)
        .build()
        .map_err(|e| e.to_string())?;
    let change = Change::builder()
        .action(if create {
            ChangeAction::Upsert
        } else {
            ChangeAction::Delete
        })
        .resource_record_set(set)
        .build()
        .map_err(|e| e.to_string())?;
    let batch = ChangeBatch::builder()
        .changes(change)
        .build()
        .map_err(|e| e.to_string())?;
    let answer = client
        .change_resource_record_sets()
        .hosted_zone_id(zone_id)
        .change_batch(batch)
        .send()
        .await
        .map_err(|e| {
            format!(
                "Route 53 did not change {name}: {}",
                aws_sdk_route53::error::DisplayErrorContext(&e)
            )
        })?;
    if !create {
        return Ok(());
    }
    // The CA looks only once the change is live on Route 53's servers.
    let Some(id) = answer.change_info().map(|c| c.id().to_owned()) else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let status = client
            .get_change()
            .id(&id)
            .send()
            .await
            .ok()
            .and_then(|c| c.change_info().map(|i| i.status().clone()));
        if status == Some(ChangeStatus::Insync) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "Route 53 did not apply the change of {name} within 3 minutes"
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
