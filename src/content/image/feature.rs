//! devcontainer features: a directory with `devcontainer-feature.json` and `install.sh`, from
//! the repository (`./name`) or an OCI registry (an artifact whose one layer is the directory
//! as a tar, pulled through the same client and mirrors as images). The builder runs each
//! `install.sh` as a step of the image, so every feature is a layer of it.

use super::*;

/// A feature as `devcontainer.json` names it, with the options given there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureRef {
    /// `ghcr.io/devcontainers/features/node:1` or `./my-feature`.
    pub id: String,
    pub options: Vec<(String, String)>,
}

/// A feature ready to install.
#[derive(Debug, Clone)]
pub struct Feature {
    /// As named in the file, for logs.
    pub id: String,
    /// The directory holding `install.sh`.
    pub dir: PathBuf,
    /// What identifies its content: the artifact's digest, or a hash of the local files.
    pub content: String,
    /// The options as `install.sh` expects them: upper-cased names, defaults filled in.
    pub env: Vec<(String, String)>,
    /// `containerEnv` of the feature: the image's environment after it.
    pub container_env: Vec<(String, String)>,
    /// Feature ids (without version) this one installs after.
    installs_after: Vec<String>,
}

/// What `devcontainer-feature.json` says that installing needs.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    options: std::collections::BTreeMap<String, OptionSpec>,
    #[serde(default)]
    installs_after: Vec<String>,
    #[serde(default)]
    container_env: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct OptionSpec {
    #[serde(default)]
    default: Option<serde_json::Value>,
}

/// The variable name the specification gives an option: non-word characters become `_`,
/// letters upper case.
fn option_variable(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The id without its version or digest: `ghcr.io/devcontainers/features/node`.
fn base_id(id: &str) -> String {
    let id = id.split('@').next().unwrap_or(id);
    match id.rsplit_once(':') {
        Some((head, tail)) if !tail.contains('/') => head.to_owned(),
        _ => id.to_owned(),
    }
}

impl ImageStore {
    pub(super) fn features_dir(&self) -> PathBuf {
        self.root.join("features")
    }

    /// Fetches or finds each feature (`local_root`: the folder of `devcontainer.json`, which
    /// `./name` is relative to; `repo`: the repository, which a local feature may not leave)
    /// and puts them in install order (`installsAfter`, else as written).
    pub async fn prepare_features(
        &self,
        refs: &[FeatureRef],
        local_root: &Path,
        repo: &Path,
        auth_for: &(dyn Fn(&str) -> RegistryAuth + Sync),
    ) -> Result<Vec<Feature>, ImageError> {
        let mut features = Vec::new();
        for r in refs {
            let failed = |m: String| ImageError::BuildFailed {
                message: format!("feature {}: {m}", r.id),
            };
            let (dir, content) = if r.id.starts_with("./") || r.id.starts_with("../") {
                let real_repo = fs::canonicalize(repo).map_err(|e| failed(e.to_string()))?;
                let dir = fs::canonicalize(local_root.join(&r.id))
                    .map_err(|e| failed(format!("not found in the repository ({e})")))?;
                if !dir.starts_with(&real_repo) || !dir.is_dir() {
                    return Err(failed(
                        "is not a directory of the repository (a link out of it?)".into(),
                    ));
                }
                let content = super::build::hash_sources(
                    &dir,
                    &[".".into()],
                    &super::dockerfile::Ignore::default(),
                )
                .map_err(failed)?;
                (dir, content)
            } else if r.id.contains("://") || r.id.ends_with(".tgz") {
                return Err(failed(
                    "features from a URL are not supported; publish it to a registry or commit it as ./name"
                        .into(),
                ));
            } else {
                let image = ImageRef::parse(&r.id).map_err(|e| failed(e.to_string()))?;
                let (hex, dir) = self.pull_feature(&image, auth_for).await?;
                (dir, hex)
            };
            let manifest: Manifest = match fs::read(dir.join("devcontainer-feature.json")) {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| failed(format!("devcontainer-feature.json is invalid: {e}")))?,
                Err(_) => {
                    return Err(failed(
                        "has no devcontainer-feature.json; is it a feature?".into(),
                    ));
                }
            };
            if fs::symlink_metadata(dir.join("install.sh")).is_err() {
                return Err(failed("has no install.sh".into()));
            }
            let mut env: Vec<(String, String)> = manifest
                .options
                .iter()
                .filter_map(|(k, o)| o.default.as_ref().map(|d| (option_variable(k), text_of(d))))
                .collect();
            for (k, v) in &r.options {
                let k = option_variable(k);
                env.retain(|(k2, _)| *k2 != k);
                env.push((k, v.clone()));
            }
            features.push(Feature {
                id: r.id.clone(),
                dir,
                content,
                env,
                container_env: manifest.container_env.into_iter().collect(),
                installs_after: manifest.installs_after.iter().map(|a| base_id(a)).collect(),
            });
        }
        Ok(order(features))
    }

    /// Pulls a feature artifact (through the mirrors) and unpacks its layer once per digest.
    async fn pull_feature(
        &self,
        image: &ImageRef,
        auth_for: &(dyn Fn(&str) -> RegistryAuth + Sync),
    ) -> Result<(String, PathBuf), ImageError> {
        let (source, _) = self.source_of(image);
        let auth = auth_for(&source.registry);
        let mut registry = Registry::new(&source, &auth, &self.egress)?;
        let (digest, manifest) = registry.resolve(&image.reference).await?;
        let hex = digest.trim_start_matches("sha256:").to_owned();
        let dir = self.features_dir().join(&hex);
        if dir.is_dir() {
            super::build::touch(&dir);
            return Ok((digest, dir));
        }
        let layer = match manifest.layers().as_slice() {
            [one] => one.clone(),
            _ => {
                return Err(unsupported(format!(
                    "{image} is not a devcontainer feature (it has {} layers, a feature has one)",
                    manifest.layers().len()
                )));
            }
        };
        let blobs = self.blobs_dir();
        fs::create_dir_all(&blobs).map_err(io_err(format!("creating {}", blobs.display())))?;
        fs::create_dir_all(self.features_dir()).map_err(io_err(format!(
            "creating {}",
            self.features_dir().display()
        )))?;
        registry
            .fetch_blob(&layer, &blobs, MAX_DOCUMENT * 8, &|_| {})
            .await?;
        let tmp = Cleanup::dir(self.features_dir().join(temp_name(&hex)));
        fs::DirBuilder::new()
            .mode(0o755)
            .create(tmp.path())
            .map_err(io_err(format!("creating {}", tmp.path().display())))?;
        let mut unpacker = Unpacker::new(tmp.path(), self.limits);
        unpacker.apply_layer(
            &blobs.join(descriptor_hex(&layer)?),
            layer.media_type().as_ref(),
        )?;
        match fs::rename(tmp.path(), &dir) {
            Ok(()) => tmp.disarm(),
            Err(_) if dir.is_dir() => {}
            Err(e) => return Err(io_err(format!("keeping {}", dir.display()))(e)),
        }
        Ok((digest, dir))
    }
}

/// Install order: a feature comes after those of the list it `installsAfter`; otherwise the
/// order of the file.
fn order(mut pending: Vec<Feature>) -> Vec<Feature> {
    let mut done: Vec<Feature> = Vec::new();
    while !pending.is_empty() {
        let ready = pending.iter().position(|f| {
            f.installs_after.iter().all(|after| {
                !pending
                    .iter()
                    .any(|p| !std::ptr::eq(p, f) && base_id(&p.id) == *after)
            })
        });
        // A cycle: the rest in file order.
        let i = ready.unwrap_or(0);
        done.push(pending.remove(i));
    }
    done
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn feature(id: &str, after: &[&str]) -> Feature {
        Feature {
            id: id.into(),
            dir: PathBuf::new(),
            content: String::new(),
            env: Vec::new(),
            container_env: Vec::new(),
            installs_after: after.iter().map(|a| (*a).into()).collect(),
        }
    }

    #[test]
    fn installs_after_orders_and_options_become_variables() {
        let ordered = order(vec![
            feature("./local", &["ghcr.io/x/node"]),
            feature("ghcr.io/x/node:1", &[]),
            feature("ghcr.io/x/other:2", &["ghcr.io/x/absent"]),
        ]);
        let ids: Vec<&str> = ordered.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["ghcr.io/x/node:1", "./local", "ghcr.io/x/other:2"]);
        assert_eq!(option_variable("node-version"), "NODE_VERSION");
        assert_eq!(base_id("ghcr.io/x/node:1"), "ghcr.io/x/node");
        assert_eq!(base_id("localhost:5000/f/node"), "localhost:5000/f/node");
    }
}
