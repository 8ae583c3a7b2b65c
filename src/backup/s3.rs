//! The backup repository in S3 (or any S3-compatible store), through aws-sdk-s3: objects keyed
//! the way restic lays out a repository (`config`, `keys/<id>`, `snapshots/<id>`, `index/<id>`,
//! `data/<id[..2]>/<id>`) under the configured prefix, so `restic -r s3:...` reads it too.
//!
//! rustic_core calls a backend from its own threads and expects blocking calls; each call here
//! runs the SDK's future on the cell's tokio runtime (captured at construction) and waits.

use std::sync::OnceLock;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use rustic_core::{
    BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend,
};

use crate::config::S3Config;

#[derive(Debug)]
pub struct S3Backend {
    bucket: String,
    /// Empty, or ending with `/`.
    prefix: String,
    region: Option<String>,
    endpoint: Option<String>,
    /// `k=v&k2=v2`, the form PutObject's tagging takes.
    tagging: Option<String>,
    handle: tokio::runtime::Handle,
    client: OnceLock<Client>,
    /// An HTTP client trusting `tls.trust_bundle` as well, when it is set.
    http: Option<aws_sdk_s3::config::SharedHttpClient>,
}

impl S3Backend {
    pub fn from_config(
        c: &S3Config,
        trust: Option<&crate::trust::Outbound>,
    ) -> Result<S3Backend, String> {
        let bucket = c.bucket.clone().ok_or("backup.s3.bucket is not set")?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "S3 backups need the cell's async runtime".to_string())?;
        let prefix = c.prefix.trim_matches('/');
        let tagging = match c.tags.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(tags) => Some(parse_tags(tags)?),
        };
        Ok(S3Backend {
            bucket,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            region: c.region.clone(),
            endpoint: c
                .endpoint
                .as_ref()
                .map(|u| u.as_str().trim_end_matches('/').to_owned()),
            tagging,
            handle,
            client: OnceLock::new(),
            http: trust.map(|t| t.aws_http_client()).transpose()?,
        })
    }

    /// The SDK client, built on first use from the standard AWS chain (environment, profile,
    /// instance role) plus the configured region and endpoint.
    fn client(&self) -> &Client {
        self.client.get_or_init(|| {
            let (region, endpoint) = (self.region.clone(), self.endpoint.clone());
            let http = self.http.clone();
            self.handle.block_on(async move {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
                if let Some(http) = http {
                    loader = loader.http_client(http);
                }
                if let Some(r) = region {
                    loader = loader.region(aws_config::Region::new(r));
                }
                let shared = loader.load().await;
                let mut b = aws_sdk_s3::config::Builder::from(&shared).timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(std::time::Duration::from_secs(5))
                        .operation_attempt_timeout(std::time::Duration::from_secs(120))
                        .build(),
                );
                if shared.region().is_none() {
                    b = b.region(aws_config::Region::new("us-east-1"));
                }
                if let Some(e) = endpoint {
                    b = b.endpoint_url(e).force_path_style(true);
                }
                Client::from_conf(b.build())
            })
        })
    }

    fn key(&self, tpe: FileType, id: &Id) -> String {
        let hex = id.to_hex();
        match tpe {
            FileType::Config => format!("{}config", self.prefix),
            FileType::Pack => format!("{}data/{}/{}", self.prefix, &hex[..2], hex.as_str()),
            _ => format!("{}{}/{}", self.prefix, tpe.dirname(), hex.as_str()),
        }
    }

    fn fail(&self, what: &str, key: &str, reason: String) -> Box<RusticError> {
        RusticError::new(
            ErrorKind::Backend,
            "S3 {what} of `{key}` in bucket `{bucket}` failed: {reason}",
        )
        .attach_context("what", what.to_owned())
        .attach_context("key", key.to_owned())
        .attach_context("bucket", self.bucket.clone())
        .attach_context("reason", reason)
    }

    /// Every (key, size) under `prefix`, following continuation tokens.
    fn list_prefix(&self, prefix: &str) -> RusticResult<Vec<(String, u64)>> {
        let client = self.client().clone();
        let (bucket, prefix_s) = (self.bucket.clone(), prefix.to_owned());
        self.handle
            .block_on(async move {
                let mut out = Vec::new();
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix_s)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| error_text(&e))?;
                    for o in page.contents() {
                        if let Some(k) = o.key() {
                            out.push((k.to_owned(), o.size().unwrap_or(0).max(0) as u64));
                        }
                    }
                }
                Ok::<_, String>(out)
            })
            .map_err(|e| self.fail("list", prefix, e))
    }
}

/// `team=platform,cost-center=42` → `team=platform&cost-center=42` (URL-encoded).
fn parse_tags(tags: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for pair in tags.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("backup.s3.tags: `{pair}` is not key=value"))?;
        out.push(format!(
            "{}={}",
            url::form_urlencoded::byte_serialize(k.trim().as_bytes()).collect::<String>(),
            url::form_urlencoded::byte_serialize(v.trim().as_bytes()).collect::<String>()
        ));
    }
    Ok(out.join("&"))
}

/// The SDK's errors print only their kind; the whole chain says what the service said.
fn error_text<E: std::error::Error>(e: &E) -> String {
    aws_sdk_s3::error::DisplayErrorContext(e).to_string()
}

impl ReadBackend for S3Backend {
    fn location(&self) -> String {
        format!("s3:{}/{}", self.bucket, self.prefix)
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        if tpe == FileType::Config {
            let key = self.key(FileType::Config, &Id::default());
            let found = self.list_prefix(&key)?;
            return Ok(found
                .into_iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, size)| (Id::default(), u32::try_from(size).unwrap_or(u32::MAX)))
                .collect());
        }
        let dir = format!("{}{}/", self.prefix, tpe.dirname());
        Ok(self
            .list_prefix(&dir)?
            .into_iter()
            .filter_map(|(key, size)| {
                let name = key.rsplit('/').next()?;
                Some((Id::parse_some(name, tpe)?, u32::try_from(size).ok()?))
            })
            .collect())
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        self.get(self.key(tpe, id), None)
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        if length == 0 {
            return Ok(Bytes::new());
        }
        let end = u64::from(offset) + u64::from(length) - 1;
        self.get(self.key(tpe, id), Some(format!("bytes={offset}-{end}")))
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.key(tpe, id)
    }
}

impl S3Backend {
    fn get(&self, key: String, range: Option<String>) -> RusticResult<Bytes> {
        let client = self.client().clone();
        let bucket = self.bucket.clone();
        let k = key.clone();
        self.handle
            .block_on(async move {
                let out = client
                    .get_object()
                    .bucket(bucket)
                    .key(k)
                    .set_range(range)
                    .send()
                    .await
                    .map_err(|e| error_text(&e))?;
                let body = out.body.collect().await.map_err(|e| error_text(&e))?;
                Ok::<_, String>(body.into_bytes())
            })
            .map_err(|e| self.fail("read", &key, e))
    }
}

impl WriteBackend for S3Backend {
    fn create(&self) -> RusticResult<()> {
        // The bucket must exist already (and belong to whoever pays for it); check it answers.
        let client = self.client().clone();
        let bucket = self.bucket.clone();
        self.handle
            .block_on(async move { client.head_bucket().bucket(bucket).send().await })
            .map(|_| ())
            .map_err(|e| error_text(&e))
            .map_err(|e| self.fail("check", "(bucket)", e))
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        let key = self.key(tpe, id);
        let mut body = Vec::with_capacity(content.size());
        for b in content.into_vec() {
            body.extend_from_slice(&b);
        }
        let client = self.client().clone();
        let (bucket, k, tagging) = (self.bucket.clone(), key.clone(), self.tagging.clone());
        self.handle
            .block_on(async move {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(k)
                    .set_tagging(tagging)
                    .body(ByteStream::from(body))
                    .send()
                    .await
            })
            .map(|_| ())
            .map_err(|e| self.fail("write", &key, error_text(&e)))
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        let key = self.key(tpe, id);
        let client = self.client().clone();
        let (bucket, k) = (self.bucket.clone(), key.clone());
        self.handle
            .block_on(async move { client.delete_object().bucket(bucket).key(k).send().await })
            .map(|_| ())
            .map_err(|e| self.fail("remove", &key, error_text(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_become_url_encoded_tagging() {
        assert_eq!(
            parse_tags("team=platform, cost center=4 2").unwrap(),
            "team=platform&cost+center=4+2"
        );
        assert!(parse_tags("nokey").unwrap_err().contains("`nokey`"));
    }
}
