//! The release manifest: what a signed release says about itself, read strictly.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::UpdateError;

/// The product every manifest names: a manifest for something else is refused.
pub const PRODUCT: &str = "devcell";
const FORMAT: u32 = 1;

/// Application releases apply by themselves; infrastructure ones wait for an owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Application,
    Infrastructure,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Application => "application",
            Kind::Infrastructure => "infrastructure",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "application" => Some(Kind::Application),
            "infrastructure" => Some(Kind::Infrastructure),
            _ => None,
        }
    }
}

/// One file of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Its file name beside the manifest: one plain name.
    pub name: String,
    /// What it runs on, e.g. `x86_64-linux`.
    pub target: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub product: String,
    pub version: semver::Version,
    pub channel: String,
    pub kind: Kind,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    /// The oldest running version this release may replace.
    pub min_version: semver::Version,
    pub artifacts: Vec<Artifact>,
}

impl Manifest {
    /// Parses and checks the shape of a manifest: format, product, names and digests.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, UpdateError> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| UpdateError::InvalidManifest(format!("the manifest is invalid: {e}")))?;
        let bad = |m: String| Err(UpdateError::InvalidManifest(m));
        if m.format != FORMAT {
            return bad(format!(
                "the manifest's format {} is not {FORMAT}; a newer devcell reads it",
                m.format
            ));
        }
        if m.product != PRODUCT {
            return bad(format!(
                "the manifest is for {:?}, not {PRODUCT}",
                m.product
            ));
        }
        if m.artifacts.is_empty() {
            return bad("the manifest names no artifact".into());
        }
        for a in &m.artifacts {
            let plain = !a.name.is_empty()
                && a.name != "."
                && a.name != ".."
                && !a.name.contains(['/', '\\', '\0'])
                && a.name != super::MANIFEST
                && a.name != super::SIGNATURE;
            if !plain {
                return bad(format!(
                    "artifact name {:?} is not one plain file name",
                    a.name
                ));
            }
            if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!("artifact {}: sha256 is not 64 hex digits", a.name));
            }
        }
        if m.expires <= m.created {
            return bad("the manifest expires before it was made".into());
        }
        Ok(m)
    }

    /// Whether the release may replace version `running` at `now`.
    pub fn check(&self, running: &semver::Version, now: OffsetDateTime) -> Result<(), UpdateError> {
        if now >= self.expires {
            return Err(UpdateError::Expired(format!(
                "release {} expired at {}; ask for a newer release",
                self.version,
                crate::human::moment(self.expires, now)
            )));
        }
        if self.version <= *running {
            return Err(UpdateError::NotNewer(format!(
                "release {} is not newer than {running}, which runs; devcell never installs an older or the same release",
                self.version
            )));
        }
        if *running < self.min_version {
            return Err(UpdateError::CannotUpdateFrom(format!(
                "release {} updates from {} or later; {running} runs: install {} first",
                self.version, self.min_version, self.min_version
            )));
        }
        Ok(())
    }
}
