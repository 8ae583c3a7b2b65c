//! Image references (`registry/repository:tag@digest`) as users write them, and the
//! credentials a pull presents.

use super::*;

/// A parsed image reference, with Docker's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Host (and port) of the registry; [`DOCKER_HUB`] for Docker Hub.
    pub registry: String,
    /// The repository path, `library/ubuntu` for Docker Hub's official images.
    pub repository: String,
    pub reference: Reference,
}

/// A tag, or a manifest digest (`sha256:<64 hex>`), which pins the content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(String),
}

impl ImageRef {
    /// Parses a reference by Docker's rules: `ubuntu` is
    /// `registry-1.docker.io/library/ubuntu:latest`; the first path component is a registry
    /// when it has a dot or a port or is `localhost` (`host:5000/a/b:tag`); `@sha256:...` pins a
    /// digest and wins over a tag.
    pub fn parse(s: &str) -> Result<ImageRef, ImageError> {
        let bad = |reason: &str| ImageError::BadReference {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let input = s.trim();
        if input.is_empty() {
            return Err(bad("it is empty"));
        }
        if input.contains("://") {
            return Err(bad("leave out the scheme: write host/repository:tag"));
        }
        let (name, digest) = match input.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (input, None),
        };
        let last = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last..].rfind(':') {
            Some(i) => (&name[..last + i], Some(&name[last + i + 1..])),
            None => (name, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, rest)
            }
            _ => ("docker.io", name),
        };
        let hub = matches!(registry, "docker.io" | "index.docker.io" | DOCKER_HUB);
        let repository = if hub && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        if !registry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return Err(bad("the registry host has invalid characters"));
        }
        if repository.is_empty() || repository.len() > 255 {
            return Err(bad("the repository name is empty or too long"));
        }
        for part in repository.split('/') {
            let ok_chars = part.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            });
            let ends_ok = part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !ok_chars || !ends_ok {
                return Err(bad(
                    "repository names are lowercase letters, digits and . _ - between slashes",
                ));
            }
        }
        let reference = match (digest, tag) {
            (Some(d), _) => {
                if !d.strip_prefix("sha256:").is_some_and(is_sha256_hex) {
                    return Err(bad(
                        "the digest must be sha256: followed by 64 lowercase hex digits",
                    ));
                }
                Reference::Digest(d.to_owned())
            }
            (None, Some(t)) => {
                let valid = !t.is_empty()
                    && t.len() <= 128
                    && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
                if !valid {
                    return Err(bad(
                        "a tag is up to 128 letters, digits, _ . - (not starting with . or -)",
                    ));
                }
                Reference::Tag(t.to_owned())
            }
            (None, None) => Reference::Tag("latest".to_owned()),
        };
        Ok(ImageRef {
            registry: if hub { DOCKER_HUB } else { registry }.to_owned(),
            repository,
            reference,
        })
    }

    /// `http://` for registries on this machine (tests, local mirrors), `https://` otherwise.
    pub fn base_url(&self) -> String {
        let host = match self.registry.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or_default(),
            None => self.registry.split(':').next().unwrap_or_default(),
        };
        let scheme = if matches!(host, "localhost" | "127.0.0.1" | "::1") {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.registry)
    }
}

impl Reference {
    /// The tag or the digest, as the registry API takes it.
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) => t,
            Reference::Digest(d) => d,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}/{}:{t}", self.registry, self.repository),
            Reference::Digest(d) => write!(f, "{}/{}@{d}", self.registry, self.repository),
        }
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

pub(super) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------------------
// Credentials

/// The credential for a registry.
///
/// Amazon ECR is `Basic` with the user name `AWS` and, as password, the token that
/// `GetAuthorizationToken` returns (base64-decoded, the part after `AWS:`); it expires after
/// 12 hours, so the caller fetches a fresh one before each pull.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RegistryAuth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

// Written by hand so that logging a pull never prints a password.
impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

impl RegistryAuth {
    pub(super) fn basic_header(&self) -> Option<String> {
        match self {
            RegistryAuth::Anonymous => None,
            RegistryAuth::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
        }
    }
}
