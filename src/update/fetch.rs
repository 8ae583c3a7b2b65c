//! Fetching a release from its channel: a directory URL holding the manifest, its signature,
//! the artifacts and perhaps a key list. The manifest is checked (a trusted key, not expired,
//! newer than what runs and than the newest release seen) before any artifact is downloaded,
//! and no artifact is read past the size it declares.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt as _;

use super::{MANIFEST, MAX_DOCUMENT, Manifest, SIGNATURE, Trust, UpdateError, io_err, trust};

/// What the manifest must satisfy before artifacts are fetched.
#[derive(Clone, Debug)]
pub struct Check {
    pub trusted_keys: Vec<String>,
    pub running: semver::Version,
    pub newest_seen: Option<semver::Version>,
    /// The release already staged here: its version and its manifest's SHA-256. The same
    /// manifest again is not downloaded again.
    pub staged: Option<(semver::Version, String)>,
    pub now: time::OffsetDateTime,
}

fn client() -> Result<reqwest::Client, UpdateError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .user_agent(format!("devcell/{}", crate::version::text()))
        .build()
        .map_err(|e| UpdateError::Unreachable(format!("cannot make an HTTP client: {e}")))
}

/// Downloads `name` under `base` into `into/name`, refusing to read more than `limit` bytes.
/// `Ok(false)` when the channel does not have it (404).
async fn download(
    client: &reqwest::Client,
    base: &url::Url,
    name: &str,
    into: &Path,
    limit: u64,
    declared: bool,
) -> Result<bool, UpdateError> {
    let url = base
        .join(name)
        .map_err(|e| UpdateError::InvalidManifest(format!("{name} makes no URL: {e}")))?;
    let unreachable = |e: reqwest::Error| {
        UpdateError::Unreachable(format!(
            "fetching {url}: {e}; check update.channel_url and that this host reaches it"
        ))
    };
    let res = client.get(url.clone()).send().await.map_err(unreachable)?;
    if res.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(false);
    }
    if !res.status().is_success() {
        return Err(UpdateError::Unreachable(format!(
            "fetching {url}: the server answered {}",
            res.status()
        )));
    }
    let too_large = || {
        if declared {
            UpdateError::ArtifactTooLarge(format!(
                "the download of {name} is larger than the {limit} bytes its manifest declares; stopped reading"
            ))
        } else {
            UpdateError::InvalidManifest(format!("{name} is larger than {limit} bytes"))
        }
    };
    if res.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let path = into.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err(format!("writing {}", path.display())))?;
    let mut body = res.bytes_stream();
    let mut seen = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(unreachable)?;
        seen += chunk.len() as u64;
        if seen > limit {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(too_large());
        }
        file.write_all(&chunk)
            .map_err(io_err(format!("writing {}", path.display())))?;
    }
    file.sync_all()
        .map_err(io_err(format!("writing {}", path.display())))?;
    Ok(true)
}

/// Fetches the release at `channel` into the empty directory `into`, as the directory
/// [`super::verify_release`] checks; `None` when it is the release already staged (nothing
/// past its manifest is downloaded).
pub async fn release(
    channel: &url::Url,
    into: &Path,
    check: &Check,
) -> Result<Option<Manifest>, UpdateError> {
    let mut base = channel.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    let client = client()?;
    let mut trust = Trust::default().with_keys(&check.trusted_keys, "update.trusted_keys")?;
    if download(&client, &base, trust::KEY_LIST, into, MAX_DOCUMENT, false).await? {
        if !download(
            &client,
            &base,
            trust::KEY_LIST_SIGNATURE,
            into,
            MAX_DOCUMENT,
            false,
        )
        .await?
        {
            return Err(UpdateError::BadSignature(format!(
                "the channel has {} but not {}",
                trust::KEY_LIST,
                trust::KEY_LIST_SIGNATURE
            )));
        }
        trust = super::trust_for(into, trust)?;
    }
    if !download(&client, &base, MANIFEST, into, MAX_DOCUMENT, false).await? {
        return Err(UpdateError::Unreachable(format!(
            "{base} has no {MANIFEST}: is update.channel_url the release directory?"
        )));
    }
    if !download(&client, &base, SIGNATURE, into, MAX_DOCUMENT, false).await? {
        return Err(UpdateError::BadSignature(format!(
            "{SIGNATURE} is missing: the release is not signed"
        )));
    }
    let manifest_bytes = super::read_small(&into.join(MANIFEST))?;
    let signature =
        String::from_utf8_lossy(&super::read_small(&into.join(SIGNATURE))?).into_owned();
    trust.verify(&manifest_bytes, &signature, MANIFEST)?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    manifest.check(&check.running, check.now)?;
    if let Some(newest) = &check.newest_seen
        && manifest.version < *newest
    {
        return Err(UpdateError::NotNewer(format!(
            "the channel offers {}, older than {newest}, the newest release this cell has seen",
            manifest.version
        )));
    }
    if let Some((version, sha256)) = &check.staged {
        use sha2::Digest as _;
        if manifest.version == *version
            && hex::encode(sha2::Sha256::digest(&manifest_bytes)) == *sha256
        {
            return Ok(None);
        }
    }
    for a in &manifest.artifacts {
        if !download(&client, &base, &a.name, into, a.size, true).await? {
            return Err(UpdateError::Unreachable(format!(
                "the channel lists {} but does not serve it",
                a.name
            )));
        }
    }
    Ok(Some(manifest))
}
