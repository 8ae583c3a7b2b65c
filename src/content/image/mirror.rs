//! Registry mirrors: `[[image.mirrors]]` sends pulls of one registry's images to another
//! registry (an internal one, for air-gapped sites), under a path prefix.

use super::*;

/// Pulls of images on `registry` go to `host`, with `prefix` in front of the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The registry it stands in for, as references name it after parsing (Docker Hub is
    /// [`DOCKER_HUB`]).
    pub registry: String,
    pub host: String,
    pub prefix: String,
    /// As the operator wrote it, for messages.
    pub written: String,
}

impl Mirror {
    /// `registry` as users write it (`docker.io`, `ghcr.io`, `mcr.microsoft.com`) and `mirror`
    /// as `host[:port][/path]`.
    pub fn parse(registry: &str, mirror: &str) -> Result<Mirror, String> {
        let registry = registry.trim().trim_end_matches('/').to_ascii_lowercase();
        if registry.is_empty() || registry.contains(['/', ' ']) || registry.contains("://") {
            return Err(format!(
                "registry {registry:?}: give a registry host such as docker.io or ghcr.io"
            ));
        }
        let registry = match registry.as_str() {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            r => r.to_owned(),
        };
        let mirror = mirror.trim().trim_end_matches('/');
        if mirror.contains("://") {
            return Err(format!(
                "mirror {mirror:?}: leave out the scheme: write host[:port][/path]"
            ));
        }
        let (host, prefix) = match mirror.split_once('/') {
            Some((h, p)) => (h, p),
            None => (mirror, ""),
        };
        // The same rules as a reference's registry part.
        let probe = format!("{host}/x/y:z");
        let parsed = ImageRef::parse(&probe).map_err(|e| format!("mirror {mirror:?}: {e}"))?;
        if parsed.registry != host.to_ascii_lowercase() || host.is_empty() {
            return Err(format!(
                "mirror {mirror:?}: start it with a registry host (with a dot or a port, or localhost)"
            ));
        }
        if prefix
            .split('/')
            .any(|p| p.is_empty() && !prefix.is_empty())
        {
            return Err(format!("mirror {mirror:?}: the path has an empty part"));
        }
        Ok(Mirror {
            registry,
            host: parsed.registry,
            prefix: prefix.to_owned(),
            written: mirror.to_owned(),
        })
    }

    /// `image` as this mirror serves it.
    pub fn rewrite(&self, image: &ImageRef) -> ImageRef {
        let repository = if self.prefix.is_empty() {
            image.repository.clone()
        } else {
            format!("{}/{}", self.prefix, image.repository)
        };
        ImageRef {
            registry: self.host.clone(),
            repository,
            reference: image.reference.clone(),
        }
    }
}

impl ImageStore {
    /// Pulls of the mirrored registries go to their mirrors.
    pub fn with_mirrors(mut self, mirrors: Vec<Mirror>) -> ImageStore {
        self.mirrors = mirrors;
        self
    }

    /// Where a pull of `image` goes: its mirror's rewriting of it, or itself. Credentials are
    /// looked up for the returned reference's registry.
    pub fn source_of(&self, image: &ImageRef) -> (ImageRef, Option<&Mirror>) {
        match self
            .mirrors
            .iter()
            .find(|m| m.registry == image.registry.to_ascii_lowercase())
        {
            Some(m) => (m.rewrite(image), Some(m)),
            None => (image.clone(), None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_images_go_to_the_mirror_under_its_prefix() {
        let m = Mirror::parse("docker.io", "registry.internal:5000/hub").unwrap();
        assert_eq!(m.registry, DOCKER_HUB);
        let busybox = ImageRef::parse("busybox:1").unwrap();
        let r = m.rewrite(&busybox);
        assert_eq!(
            r.to_string(),
            "registry.internal:5000/hub/library/busybox:1"
        );
        let store = ImageStore::new("/nonexistent".into()).with_mirrors(vec![m]);
        let (src, via) = store.source_of(&busybox);
        assert_eq!(src.registry, "registry.internal:5000");
        assert!(via.is_some());
        let ghcr = ImageRef::parse("ghcr.io/o/r:1").unwrap();
        assert_eq!(store.source_of(&ghcr).0, ghcr);
    }

    #[test]
    fn mirrors_that_cannot_work_are_refused() {
        assert!(Mirror::parse("docker.io", "https://r.internal/hub").is_err());
        assert!(Mirror::parse("docker.io/library", "r.internal").is_err());
        assert!(Mirror::parse("", "r.internal").is_err());
        assert!(Mirror::parse("docker.io", "").is_err());
        let m = Mirror::parse("ghcr.io", "localhost:5000").unwrap();
        assert_eq!(m.prefix, "");
    }
}
