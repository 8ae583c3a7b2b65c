//! OCI images against a real distribution registry (Debian's `docker-registry`) started by each
//! test on a free loopback port, and OCI archives built by the tests.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use devcell::content::egress::Egress;
use devcell::content::image::{ImageRef, ImageStore, Puller, RegistryAuth};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// The egress rule for a registry on this host's loopback, where the tests run theirs.
pub fn loopback() -> Egress {
    Egress::new(&["127.0.0.0/8".into()]).unwrap()
}

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const USER: &str = "dev";
pub const PASSWORD: &str = "s3cret-pass";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A registry process, killed when the guard drops.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    pub addr: String,
    /// With HTTPS: the PEM of the test CA its certificate is from.
    pub ca: Option<String>,
}

impl Registry {
    /// Starts `docker-registry` with filesystem storage in a temporary directory, and with
    /// htpasswd Basic authentication when `auth` is set.
    pub async fn start(auth: bool) -> Registry {
        Self::start_full(auth, false).await
    }

    /// Over HTTPS on 127.0.0.2 (an address the pull client does not treat as a plain-HTTP
    /// local registry), with a certificate from a test CA.
    pub async fn start_tls() -> Registry {
        Self::start_full(false, true).await
    }

    async fn start_full(auth: bool, tls: bool) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "docker-registry is missing: apt-get install -y docker-registry"
        );
        let dir = tempfile::tempdir().unwrap();
        let host = if tls { "127.0.0.2" } else { "127.0.0.1" };
        let port = std::net::TcpListener::bind((host, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("{host}:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("storage").display()
        );
        let mut ca = None;
        if tls {
            let ca_file = dir.path().join("ca.pem");
            let (cert, key) = crate::acme::ca_and_leaf(&[host], &ca_file);
            std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
            std::fs::write(dir.path().join("key.pem"), key).unwrap();
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("cert.pem").display(),
                dir.path().join("key.pem").display()
            ));
            ca = Some(std::fs::read_to_string(ca_file).unwrap());
        }
        if auth {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", USER, PASSWORD])
                .output()
                .expect("htpasswd is missing: apt-get install -y apache2-utils");
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(&htpasswd, out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut registry = Registry {
            child,
            dir,
            addr,
            ca,
        };
        registry.wait_ready().await;
        registry
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn base(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// A client trusting the registry's test CA, if it has one.
    pub fn client(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder();
        if let Some(ca) = &self.ca {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap());
        }
        b.build().unwrap()
    }

    async fn wait_ready(&mut self) {
        let http = self.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("docker-registry exited with {status}: {}", self.log());
            }
            if let Ok(r) = http.get(format!("{}/v2/", self.base())).send().await
                && (r.status().is_success() || r.status() == reqwest::StatusCode::UNAUTHORIZED)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn image(&self, name: &str) -> ImageRef {
        ImageRef::parse(&format!("{}/{name}", self.addr)).unwrap()
    }

    /// Where the registry keeps a blob's bytes.
    fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes content the way `docker push` does: blobs by monolithic upload, then the manifest.
pub struct Pusher {
    http: reqwest::Client,
    base: String,
    auth: Option<(&'static str, &'static str)>,
}

impl Pusher {
    pub fn new(registry: &Registry, auth: bool) -> Pusher {
        Pusher {
            http: registry.client(),
            base: registry.base(),
            auth: auth.then_some((USER, PASSWORD)),
        }
    }

    fn with_auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    pub async fn blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let r = self
            .with_auth(
                self.http
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED, "start upload");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let mut url = if location.starts_with("http") {
            url::Url::parse(&location).unwrap()
        } else {
            url::Url::parse(&format!("{}{location}", self.base)).unwrap()
        };
        url.query_pairs_mut().append_pair("digest", &digest);
        let r = self
            .with_auth(self.http.put(url))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::CREATED, "finish upload");
        digest
    }

    pub async fn manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let r = self
            .with_auth(
                self.http
                    .put(format!("{}/v2/{repo}/manifests/{reference}", self.base)),
            )
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(
            status,
            reqwest::StatusCode::CREATED,
            "push manifest: {}",
            r.text().await.unwrap()
        );
    }

    /// Pushes an image's blobs and manifest under `tag`; returns the manifest digest.
    async fn image(&self, repo: &str, tag: &str, image: &TestImage) -> String {
        for layer in &image.layers {
            self.blob(repo, layer).await;
        }
        self.blob(repo, &image.config).await;
        self.manifest(repo, tag, OCI_MANIFEST, &image.manifest)
            .await;
        image.digest.clone()
    }
}

enum Item<'a> {
    Dir(&'a str),
    File(&'a str, &'a str, u32),
    Symlink(&'a str, &'a str),
}

fn gzip_tar(items: &[Item<'_>]) -> (Vec<u8>, String) {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        match *item {
            Item::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Item::File(path, data, mode) => {
                h.set_mode(mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_bytes()).unwrap();
            }
            Item::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let diff_id = sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

pub struct TestImage {
    pub layers: Vec<Vec<u8>>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub digest: String,
}

/// Two layers: a base with a few files, and a top layer that deletes one of them with a
/// whiteout and empties a directory with an opaque marker.
pub fn test_image(arch: &str, marker: &str) -> TestImage {
    let (base, base_id) = gzip_tar(&[
        Item::Dir("bin/"),
        Item::File("bin/hello", "#!/bin/sh\necho hello\n", 0o4755),
        Item::File("etc/os-release", "ID=devcell-test\n", 0o644),
        Item::Dir("tmp/"),
        Item::File("tmp/delete-me", "old", 0o644),
        Item::Dir("opt/"),
        Item::File("opt/old/file", "old", 0o644),
        Item::File("opt/old-top", "old", 0o644),
    ]);
    let (top, top_id) = gzip_tar(&[
        Item::File("tmp/.wh.delete-me", "", 0o644),
        Item::Dir("opt/"),
        Item::File("opt/.wh..wh..opq", "", 0o644),
        Item::File("opt/new", marker, 0o644),
        Item::Symlink("bin/hi", "hello"),
        Item::Dir("work/"),
    ]);
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello=world"],
            "WorkingDir": "/work",
            "User": "1000:1000"
        },
        "rootfs": {"type": "layers", "diff_ids": [base_id, top_id]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": config.len(), "digest": sha256(&config)},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "size": base.len(), "digest": sha256(&base)},
            {"mediaType": OCI_LAYER_GZIP, "size": top.len(), "digest": sha256(&top)},
        ]
    }))
    .unwrap();
    TestImage {
        digest: sha256(&manifest),
        layers: vec![base, top],
        config,
        manifest,
    }
}

/// What every test image looks like once unpacked.
fn assert_unpacked(rootfs: &Path, marker: &str) {
    let hello = rootfs.join("bin/hello");
    assert_eq!(
        std::fs::read_to_string(&hello).unwrap(),
        "#!/bin/sh\necho hello\n"
    );
    // setuid is dropped.
    let mode = std::fs::metadata(&hello).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755);
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/hi")).unwrap(),
        Path::new("hello")
    );
    assert!(rootfs.join("etc/os-release").is_file());
    assert!(rootfs.join("tmp").is_dir());
    assert!(!rootfs.join("tmp/delete-me").exists(), "whiteout applied");
    assert!(!rootfs.join("tmp/.wh.delete-me").exists());
    assert!(!rootfs.join("opt/old").exists(), "opaque directory applied");
    assert!(!rootfs.join("opt/old-top").exists());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("opt/new")).unwrap(),
        marker
    );
    assert!(rootfs.join("work").is_dir());
}

#[tokio::test]
async fn pull_unpacks_layers_reads_config_and_caches() {
    crate::harness::install_crypto();
    let registry = Registry::start(false).await;
    let pusher = Pusher::new(&registry, false);
    let image = test_image("amd64", "v1");
    let digest = pusher.image("team/app", "v1", &image).await;

    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::new(tmp.path().join("images")).with_egress(loopback());
    let reference = registry.image("team/app:v1");
    let pulled = store
        .pull(&reference, &RegistryAuth::Anonymous, Puller::Operator)
        .await
        .unwrap();
    assert_eq!(pulled.digest, digest);
    assert_eq!(pulled.reference, reference.to_string());
    assert_eq!(
        pulled.rootfs,
        tmp.path()
            .join("images/rootfs")
            .join(digest.trim_start_matches("sha256:"))
    );
    assert_unpacked(&pulled.rootfs, "v1");
    assert!(
        pulled
            .env
            .contains(&("GREETING".into(), "hello=world".into()))
    );
    assert_eq!(pulled.working_dir.as_deref(), Some("/work"));
    assert_eq!(pulled.user.as_deref(), Some("1000:1000"));
    assert!(pulled.size_bytes > 0);
    let blob_mtime = |d: &str| {
        std::fs::metadata(
            tmp.path()
                .join("images/blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
        .modified()
        .unwrap()
    };
    let layer_digest = sha256(&image.layers[0]);
    let before = blob_mtime(&layer_digest);

    // The registry loses every blob but the manifest: a second pull must not need them.
    for blob in image.layers.iter().chain([&image.config]) {
        std::fs::remove_file(registry.blob_data(&sha256(blob))).unwrap();
    }
    let again = store
        .pull(&reference, &RegistryAuth::Anonymous, Puller::Operator)
        .await
        .unwrap();
    assert_eq!(again, pulled);
    assert_eq!(blob_mtime(&layer_digest), before);
    let by_digest = registry.image(&format!("team/app@{digest}"));
    let pinned = store
        .pull(&by_digest, &RegistryAuth::Anonymous, Puller::Operator)
        .await
        .unwrap();
    assert_eq!(pinned.rootfs, pulled.rootfs);

    let listed = store.list().unwrap();
    let names: Vec<&str> = listed.iter().map(|i| i.reference.as_str()).collect();
    assert!(names.contains(&reference.to_string().as_str()), "{names:?}");
    assert!(names.contains(&by_digest.to_string().as_str()), "{names:?}");

    // With the registry gone, the cached image still starts workspaces.
    drop(registry);
    let offline = store
        .pull(&reference, &RegistryAuth::Anonymous, Puller::Operator)
        .await
        .unwrap();
    assert_eq!(offline.rootfs, pulled.rootfs);
    let unknown = ImageRef::parse(&format!("{}/team/other:v1", reference.registry)).unwrap();
    let err = store
        .pull(&unknown, &RegistryAuth::Anonymous, Puller::Operator)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unreachable", "{err}");
}

#[tokio::test]
async fn tampered_blob_is_a_digest_mismatch() {
    crate::harness::install_crypto();
    let registry = Registry::start(false).await;
    let pusher = Pusher::new(&registry, false);
    let image = test_image("amd64", "tampered");
    pusher.image("team/app", "v1", &image).await;
    // Same length, different bytes: only the digest check can notice.
    let data = registry.blob_data(&sha256(&image.layers[1]));
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::new(tmp.path().join("images")).with_egress(loopback());
    let err = store
        .pull(
            &registry.image("team/app:v1"),
            &RegistryAuth::Anonymous,
            Puller::Operator,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "digest_mismatch", "{err}");
    // Nothing half-done is left: no tree, no unverified blob, no temporary file.
    let rootfs: Vec<_> = std::fs::read_dir(tmp.path().join("images/rootfs"))
        .unwrap()
        .collect();
    assert!(rootfs.is_empty(), "{rootfs:?}");
    let blobs: Vec<String> = std::fs::read_dir(tmp.path().join("images/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!blobs.iter().any(|b| b.starts_with(".tmp")), "{blobs:?}");
    assert!(
        !blobs.contains(
            &sha256(&image.layers[1])
                .trim_start_matches("sha256:")
                .to_owned()
        ),
        "{blobs:?}"
    );
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test]
async fn pull_picks_linux_amd64_from_an_index() {
    crate::harness::install_crypto();
    let registry = Registry::start(false).await;
    let pusher = Pusher::new(&registry, false);
    let amd64 = test_image("amd64", "amd64");
    let arm64 = test_image("arm64", "arm64");
    let amd64_digest = pusher.image("team/multi", &amd64.digest, &amd64).await;
    let arm64_digest = pusher.image("team/multi", &arm64.digest, &arm64).await;
    let entry = |image: &TestImage, arch: &str| {
        json!({"mediaType": OCI_MANIFEST, "size": image.manifest.len(), "digest": image.digest,
               "platform": {"os": "linux", "architecture": arch}})
    };
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(&arm64, "arm64"), entry(&amd64, "amd64")]
    }))
    .unwrap();
    pusher
        .manifest("team/multi", "both", OCI_INDEX, &index)
        .await;
    let arm_only = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry(&arm64, "arm64")]
    }))
    .unwrap();
    pusher
        .manifest("team/multi", "arm", OCI_INDEX, &arm_only)
        .await;

    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::new(tmp.path().join("images")).with_egress(loopback());
    let pulled = store
        .pull(
            &registry.image("team/multi:both"),
            &RegistryAuth::Anonymous,
            Puller::Operator,
        )
        .await
        .unwrap();
    assert_eq!(pulled.digest, amd64_digest);
    assert_unpacked(&pulled.rootfs, "amd64");

    let err = store
        .pull(
            &registry.image("team/multi:arm"),
            &RegistryAuth::Anonymous,
            Puller::Operator,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unsupported", "{err}");
    // A single-platform manifest for another architecture is refused too.
    let err = store
        .pull(
            &registry.image(&format!("team/multi@{arm64_digest}")),
            &RegistryAuth::Anonymous,
            Puller::Operator,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unsupported", "{err}");

    let err = store
        .pull(
            &registry.image("team/none:v1"),
            &RegistryAuth::Anonymous,
            Puller::Operator,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_found", "{err}");
}

#[tokio::test]
async fn basic_auth_registry_needs_credentials() {
    crate::harness::install_crypto();
    let registry = Registry::start(true).await;
    let pusher = Pusher::new(&registry, true);
    let image = test_image("amd64", "private");
    let digest = pusher.image("team/private", "v1", &image).await;

    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::new(tmp.path().join("images")).with_egress(loopback());
    let reference = registry.image("team/private:v1");
    let err = store
        .pull(&reference, &RegistryAuth::Anonymous, Puller::Operator)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unauthorized", "{err}");
    let wrong = RegistryAuth::Basic {
        username: USER.into(),
        password: "wrong".into(),
    };
    let err = store
        .pull(&reference, &wrong, Puller::Operator)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unauthorized", "{err}");
    assert!(!err.to_string().contains("wrong"), "{err}");

    let right = RegistryAuth::Basic {
        username: USER.into(),
        password: PASSWORD.into(),
    };
    let pulled = store
        .pull(&reference, &right, Puller::Operator)
        .await
        .unwrap();
    assert_eq!(pulled.digest, digest);
    assert_unpacked(&pulled.rootfs, "private");
}

/// A tar of an OCI image layout holding `images`, with `extra` raw entries appended.
pub fn oci_archive(images: &[(&TestImage, Option<&str>)], extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_old();
        let old = h.as_old_mut();
        old.name.fill(0);
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut manifests = Vec::new();
    for (image, name) in images {
        for blob in image.layers.iter().chain([&image.config, &image.manifest]) {
            let path = format!(
                "blobs/sha256/{}",
                sha256(blob).trim_start_matches("sha256:")
            );
            add(&path, blob);
        }
        let mut entry = json!({"mediaType": OCI_MANIFEST, "size": image.manifest.len(), "digest": image.digest});
        if let Some(name) = name {
            entry["annotations"] = json!({"org.opencontainers.image.ref.name": name});
        }
        manifests.push(entry);
    }
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
    )
    .unwrap();
    add("index.json", &index);
    for (name, data) in extra {
        add(name, data);
    }
    b.into_inner().unwrap()
}

#[test]
fn import_archive_reads_an_oci_layout() {
    let named = test_image("amd64", "named");
    let unnamed = test_image("amd64", "unnamed");
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("images.tar");
    std::fs::write(
        &archive,
        oci_archive(
            &[
                (&named, Some("example.com/team/tool:1.0")),
                (&unnamed, None),
            ],
            &[],
        ),
    )
    .unwrap();
    let store = ImageStore::new(tmp.path().join("images")).with_egress(loopback());
    let imported = store.import_archive(&archive).unwrap();
    assert_eq!(imported.len(), 2);
    assert_eq!(imported[0].reference, "example.com/team/tool:1.0");
    assert_eq!(imported[0].digest, named.digest);
    assert_unpacked(&imported[0].rootfs, "named");
    assert_eq!(imported[0].working_dir.as_deref(), Some("/work"));
    assert_eq!(imported[1].reference, unnamed.digest);
    assert_unpacked(&imported[1].rootfs, "unnamed");
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .any(|i| i.reference == "example.com/team/tool:1.0")
    );
    // Importing again is a no-op that finds the same trees.
    let again = store.import_archive(&archive).unwrap();
    assert_eq!(again, imported);
}

#[test]
fn import_archive_refuses_hostile_and_corrupt_archives() {
    let image = test_image("amd64", "x");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let store = ImageStore::new(work.join("images")).with_egress(loopback());

    let archive = work.join("evil.tar");
    std::fs::write(
        &archive,
        oci_archive(&[(&image, Some("evil:1"))], &[("../evil", b"pwned")]),
    )
    .unwrap();
    let err = store.import_archive(&archive).unwrap_err();
    assert_eq!(err.code(), "hostile_archive", "{err}");
    assert!(err.to_string().contains("../evil"), "{err}");
    assert!(!tmp.path().join("evil").exists());
    assert!(!work.join("evil").exists());

    let archive = work.join("absolute.tar");
    std::fs::write(
        &archive,
        oci_archive(&[], &[("/tmp/devcell-evil", b"pwned")]),
    )
    .unwrap();
    let err = store.import_archive(&archive).unwrap_err();
    assert_eq!(err.code(), "hostile_archive", "{err}");

    // A blob whose content does not match its name.
    let bad_name = format!("blobs/sha256/{}", "0".repeat(64));
    let archive = work.join("corrupt.tar");
    std::fs::write(&archive, oci_archive(&[], &[(&bad_name, b"not that")])).unwrap();
    let err = store.import_archive(&archive).unwrap_err();
    assert_eq!(err.code(), "digest_mismatch", "{err}");
    assert!(store.list().unwrap().is_empty());
}

/// A registry double that speaks the token flow Docker Hub, GHCR and GitLab use: `401` with
/// `WWW-Authenticate: Bearer realm=...`, a token service behind Basic authentication, then
/// `Authorization: Bearer`. The real `docker-registry` needs a JWT-signing token server for
/// this, which Debian does not ship; its Basic flow is tested above.
struct TokenRegistry {
    addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn token_registry(image: &TestImage) -> TokenRegistry {
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode, Uri, header};
    use axum::response::{IntoResponse, Response};
    use base64::Engine as _;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    const TOKEN: &str = "good-token";
    #[derive(Clone)]
    struct S {
        realm: String,
        blobs: Arc<HashMap<String, (Vec<u8>, &'static str)>>,
        requests: Arc<Mutex<Vec<String>>>,
    }
    async fn token(
        State(s): State<S>,
        headers: HeaderMap,
        Query(q): Query<HashMap<String, String>>,
    ) -> Response {
        s.requests.lock().unwrap().push("token".into());
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        let authorized = headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.to_str().unwrap() == format!("Basic {basic}"));
        if !authorized
            || q.get("service").map(String::as_str) != Some("fake")
            || q.get("scope").map(String::as_str) != Some("repository:team/app:pull")
        {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        axum::Json(json!({"token": TOKEN})).into_response()
    }
    async fn v2(State(s): State<S>, headers: HeaderMap, uri: Uri) -> Response {
        let path = uri.path().to_owned();
        s.requests.lock().unwrap().push(path.clone());
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(&format!("Bearer {TOKEN}"))
        {
            let challenge = format!(
                r#"Bearer realm="{}",service="fake",scope="repository:team/app:pull""#,
                s.realm
            );
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
            )
                .into_response();
        }
        let key = path.rsplit('/').next().unwrap().to_owned();
        match s.blobs.get(&key) {
            Some((bytes, media_type)) => {
                ([(header::CONTENT_TYPE, *media_type)], bytes.clone()).into_response()
            }
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut blobs = HashMap::new();
    blobs.insert("v1".to_owned(), (image.manifest.clone(), OCI_MANIFEST));
    blobs.insert(image.digest.clone(), (image.manifest.clone(), OCI_MANIFEST));
    for blob in image.layers.iter().chain([&image.config]) {
        blobs.insert(sha256(blob), (blob.clone(), "application/octet-stream"));
    }
    let requests = Arc::new(Mutex::new(Vec::new()));
    let state = S {
        realm: format!("http://{addr}/token"),
        blobs: Arc::new(blobs),
        requests: requests.clone(),
    };
    let app = axum::Router::new()
        .route("/token", axum::routing::get(token))
        .fallback(v2)
        .with_state(state);
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    TokenRegistry {
        addr,
        requests,
        server,
    }
}

#[tokio::test]
async fn bearer_token_flow_and_cache_hits_download_no_blob() {
    crate::harness::install_crypto();
    let image = test_image("amd64", "bearer");
    let registry = token_registry(&image).await;
    let reference = ImageRef::parse(&format!("{}/team/app:v1", registry.addr)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::new(tmp.path().join("images")).with_egress(loopback());

    let err = store
        .pull(&reference, &RegistryAuth::Anonymous, Puller::Operator)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unauthorized", "{err}");

    let auth = RegistryAuth::Basic {
        username: USER.into(),
        password: PASSWORD.into(),
    };
    let pulled = store
        .pull(&reference, &auth, Puller::Operator)
        .await
        .unwrap();
    assert_eq!(pulled.digest, image.digest);
    assert_unpacked(&pulled.rootfs, "bearer");
    let blob_requests = |r: &TokenRegistry| {
        r.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.contains("/blobs/"))
            .count()
    };
    let after_first = blob_requests(&registry);
    assert!(after_first >= 3, "{:?}", registry.requests.lock().unwrap());

    // A second pull reads the manifest again but downloads no blob.
    let again = store
        .pull(&reference, &auth, Puller::Operator)
        .await
        .unwrap();
    assert_eq!(again.rootfs, pulled.rootfs);
    assert_eq!(blob_requests(&registry), after_first);
}

#[tokio::test]
async fn a_registry_behind_an_internal_ca_is_pulled_from_once_the_trust_bundle_names_it() {
    crate::harness::install_crypto();
    let registry = Registry::start_tls().await;
    let pusher = Pusher::new(&registry, false);
    let image = test_image("amd64", "tls");
    let digest = pusher.image("team/app", "v1", &image).await;
    let reference = registry.image("team/app:v1");
    let tmp = tempfile::tempdir().unwrap();

    // The host does not know the CA: the pull is refused.
    let store = ImageStore::new(tmp.path().join("images")).with_egress(loopback());
    let err = store
        .pull(&reference, &RegistryAuth::Anonymous, Puller::Operator)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unreachable", "{err}");

    // With tls.trust_bundle naming it, the image comes.
    let ca_file = tmp.path().join("ca.pem");
    std::fs::write(&ca_file, registry.ca.as_ref().unwrap()).unwrap();
    let trust = std::sync::Arc::new(devcell::trust::Outbound::load(&ca_file).unwrap());
    let store =
        ImageStore::new(tmp.path().join("images")).with_egress(loopback().with_trust(Some(trust)));
    let pulled = store
        .pull(&reference, &RegistryAuth::Anonymous, Puller::Operator)
        .await
        .unwrap();
    assert_eq!(pulled.digest, digest);
    assert_unpacked(&pulled.rootfs, "tls");
}
