//! The registry client (distribution v2): manifests, blobs, Basic and bearer-token
//! authentication, and the egress rule checked on every connection and redirect.

use super::*;

pub(super) struct Registry {
    http: reqwest::Client,
    egress: crate::content::egress::Egress,
    base: String,
    registry: String,
    repository: String,
    auth: RegistryAuth,
    /// The `Authorization` header the registry accepted (a bearer token or basic auth).
    authorization: Option<String>,
}

impl Registry {
    pub(super) fn new(
        image: &ImageRef,
        auth: &RegistryAuth,
        egress: &crate::content::egress::Egress,
    ) -> Result<Registry, ImageError> {
        let (resolver, redirects) = egress.for_http();
        let mut builder = reqwest::Client::builder();
        for cert in egress
            .trust()
            .map(|t| t.reqwest_certificates())
            .unwrap_or_default()
        {
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .dns_resolver(resolver)
            .redirect(redirects)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(format!("devcell/{}", crate::version::text()))
            .build()
            .map_err(|e| ImageError::Unreachable {
                registry: image.registry.clone(),
                message: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(Registry {
            http,
            egress: egress.clone(),
            base: image.base_url(),
            registry: image.registry.clone(),
            repository: image.repository.clone(),
            auth: auth.clone(),
            authorization: None,
        })
    }

    pub(super) fn what(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Refuses a URL the cell may not fetch for a workspace (checked with its port; the
    /// client's resolver and redirect policy keep to the same rule).
    pub(super) async fn check(&self, url: &str) -> Result<(), ImageError> {
        let parsed = url::Url::parse(url).map_err(|e| self.unreachable(e.to_string()))?;
        self.egress.check_url(&parsed).await.map_err(|e| match e {
            crate::content::egress::EgressError::Refused { .. } => ImageError::Refused {
                message: format!("registry {}: {e}", self.registry),
            },
            other => self.unreachable(other.to_string()),
        })
    }

    pub(super) fn unreachable(&self, message: impl Into<String>) -> ImageError {
        ImageError::Unreachable {
            registry: self.registry.clone(),
            message: message.into(),
        }
    }

    /// GETs `path` on the registry, answering one authentication challenge, and maps error
    /// statuses to errors.
    pub(super) async fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, ImageError> {
        let url = format!("{}{path}", self.base);
        self.check(&url).await?;
        let mut challenged = false;
        loop {
            let mut request = self.http.get(&url);
            if let Some(accept) = accept {
                request = request.header(reqwest::header::ACCEPT, accept);
            }
            if let Some(authorization) = &self.authorization {
                request = request.header(reqwest::header::AUTHORIZATION, authorization);
            }
            let response = request
                .send()
                .await
                .map_err(|e| self.unreachable(without_url(e)))?;
            let status = response.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let header = response
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                self.authenticate(&header).await?;
                continue;
            }
            return match status.as_u16() {
                200..=299 => Ok(response),
                401 | 403 => Err(ImageError::Unauthorized { what: self.what() }),
                404 => Err(ImageError::NotFound {
                    what: format!("{}{}", self.what(), path_tail(path)),
                }),
                429 => Err(self.unreachable("rate limited (HTTP 429); try again later")),
                code => Err(self.unreachable(format!("HTTP {code}"))),
            };
        }
    }

    pub(super) async fn authenticate(&mut self, header: &str) -> Result<(), ImageError> {
        let unauthorized = || ImageError::Unauthorized { what: self.what() };
        let Some(challenge) = parse_challenge(header) else {
            return Err(unauthorized());
        };
        match challenge.scheme.as_str() {
            "basic" => {
                self.authorization = Some(self.auth.basic_header().ok_or_else(unauthorized)?);
                Ok(())
            }
            "bearer" => {
                let realm = challenge.params.get("realm").ok_or_else(unauthorized)?;
                let mut url = url::Url::parse(realm)
                    .map_err(|e| self.unreachable(format!("invalid token realm {realm:?}: {e}")))?;
                // Credentials go to the realm only over TLS, unless the registry itself is a
                // local plain-HTTP one.
                if url.scheme() != "https" && !self.base.starts_with("http://") {
                    return Err(self.unreachable(format!("token realm {realm} is not https")));
                }
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = challenge.params.get("service") {
                        query.append_pair("service", service);
                    }
                    let scope = challenge
                        .params
                        .get("scope")
                        .cloned()
                        .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                    query.append_pair("scope", &scope);
                }
                self.check(url.as_str()).await?;
                let mut request = self.http.get(url);
                if let Some(basic) = self.auth.basic_header() {
                    request = request.header(reqwest::header::AUTHORIZATION, basic);
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| self.unreachable(without_url(e)))?;
                match response.status().as_u16() {
                    200..=299 => {}
                    401 | 403 => return Err(unauthorized()),
                    code => {
                        return Err(self.unreachable(format!("token service answered HTTP {code}")));
                    }
                }
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let token: Token = response.json().await.map_err(|e| {
                    self.unreachable(format!("invalid token response: {}", without_url(e)))
                })?;
                let token = token
                    .token
                    .or(token.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.unreachable("the token service returned no token"))?;
                self.authorization = Some(format!("Bearer {token}"));
                Ok(())
            }
            _ => Err(unauthorized()),
        }
    }

    /// Reads a small response body, refusing more than `max` bytes.
    pub(super) async fn body_capped(
        &self,
        mut response: reqwest::Response,
        max: u64,
    ) -> Result<Vec<u8>, ImageError> {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.unreachable(without_url(e)))?
        {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > max {
                return Err(ImageError::TooLarge {
                    what: "a manifest".to_owned(),
                    limit: human_bytes(max),
                });
            }
        }
        Ok(body)
    }

    pub(super) async fn manifest(&mut self, reference: &str) -> Result<Vec<u8>, ImageError> {
        let path = format!("/v2/{}/manifests/{reference}", self.repository);
        let response = self.get(&path, Some(ACCEPT_MANIFESTS)).await?;
        self.body_capped(response, MAX_DOCUMENT).await
    }

    /// Fetches the manifest for `reference` and, through an index, the linux/amd64 one;
    /// returns its digest and content, both verified.
    pub(super) async fn resolve(
        &mut self,
        reference: &Reference,
    ) -> Result<(String, ImageManifest), ImageError> {
        let bytes = self.manifest(reference.as_str()).await?;
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        if let Reference::Digest(expected) = reference
            && *expected != digest
        {
            return Err(ImageError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
        match parse_document(&bytes)? {
            Document::Manifest(m) => Ok((digest, *m)),
            Document::Index(index) => {
                let chosen = pick_platform(&index)?;
                let hex = descriptor_hex(chosen)?;
                let expected = format!("sha256:{hex}");
                let bytes = self.manifest(&expected).await?;
                let actual = format!("sha256:{}", sha256_hex(&bytes));
                if actual != expected {
                    return Err(ImageError::DigestMismatch { expected, actual });
                }
                match parse_document(&bytes)? {
                    Document::Manifest(m) => Ok((expected, *m)),
                    Document::Index(_) => Err(unsupported("an index nested in an index")),
                }
            }
        }
    }

    /// Downloads a blob into `blobs/<hex>` unless it is there, streaming through a temporary
    /// file that is renamed only once the content matches the digest.
    pub(super) async fn fetch_blob(
        &mut self,
        desc: &Descriptor,
        blobs: &Path,
        max: u64,
        received_so_far: &(dyn Fn(u64) + Sync),
    ) -> Result<(), ImageError> {
        let hex = descriptor_hex(desc)?;
        let dest = blobs.join(&hex);
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            return Ok(());
        }
        let expected = format!("sha256:{hex}");
        if desc.size() > max {
            return Err(ImageError::TooLarge {
                what: format!("blob {expected}"),
                limit: human_bytes(max),
            });
        }
        let mut response = self
            .get(&format!("/v2/{}/blobs/{expected}", self.repository), None)
            .await?;
        let tmp = Cleanup::file(blobs.join(temp_name(&hex)));
        let write_err = || io_err(format!("writing {}", tmp.path().display()));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp.path())
            .await
            .map_err(write_err())?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.unreachable(without_url(e)))?
        {
            received += chunk.len() as u64;
            if received > desc.size() {
                return Err(ImageError::DigestMismatch {
                    expected,
                    actual: format!("more than the {} bytes announced", desc.size()),
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(write_err())?;
            received_so_far(received);
        }
        file.sync_all().await.map_err(write_err())?;
        drop(file);
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != expected {
            return Err(ImageError::DigestMismatch { expected, actual });
        }
        tokio::fs::rename(tmp.path(), &dest)
            .await
            .map_err(io_err(format!("writing {}", dest.display())))?;
        tmp.disarm();
        Ok(())
    }
}

/// reqwest's messages name the URL; the message is enough and shorter.
pub(super) fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

pub(super) fn path_tail(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((_, tail)) if tail.starts_with("sha256:") => format!("@{tail}"),
        Some((_, tail)) => format!(":{tail}"),
        None => String::new(),
    }
}

pub(super) struct Challenge {
    /// Lowercase: `bearer` or `basic`.
    pub(super) scheme: String,
    pub(super) params: HashMap<String, String>,
}

/// Parses `WWW-Authenticate: Bearer realm="...",service="...",scope="..."` (RFC 7235), where
/// quoted values may hold commas (`scope="repository:a:pull,push"`).
pub(super) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
            value = value.trim().to_owned();
        }
        params.insert(key.trim().to_ascii_lowercase(), value);
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}
