//! HTTPS by ACME against Debian's pebble with real validation: pebble-challtestsrv answers
//! pebble's DNS queries with 127.0.0.1 (or BIND does, authoritative for a test zone the cell
//! updates over RFC 2136), and pebble connects to the cell's listeners to validate HTTP-01 and
//! TLS-ALPN-01. The served chain is checked against pebble's root; certificates pebble issues
//! for seconds are renewed while a connection stays open; with pebble gone the current
//! certificate keeps being served.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::TestCell;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn need(exe: &str, package: &str) {
    assert!(
        Path::new(exe).exists(),
        "{exe} is missing: apt-get install -y {package} (bash tests/run.sh installs it)"
    );
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{what} exited before listening"
        );
        assert!(Instant::now() < until, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running pebble (and, unless another DNS server is named, pebble-challtestsrv answering
/// every name with 127.0.0.1).
pub struct Pebble {
    pub directory: String,
    /// The CA certificate the directory's own HTTPS is signed with (for `tls.acme.ca_bundle`).
    pub ca_bundle: PathBuf,
    management: u16,
    ca_pem: String,
    pebble: Child,
    dns: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Pebble {
    /// Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of the names it
    /// is asked for, issuing certificates valid for `validity` seconds (0: pebble's default).
    pub fn start(http_port: u16, tls_port: u16, validity: u64, dns: Option<SocketAddr>) -> Pebble {
        Self::start_env(http_port, tls_port, validity, dns, &[])
    }

    /// The same, with more environment for pebble (`PEBBLE_VA_ALWAYS_VALID` where nothing
    /// pebble can ask serves the records).
    pub fn start_env(
        http_port: u16,
        tls_port: u16,
        validity: u64,
        dns: Option<SocketAddr>,
        env: &[(&str, &str)],
    ) -> Pebble {
        need("/usr/bin/pebble", "pebble");
        need("/usr/bin/pebble-challtestsrv", "pebble");
        let dir = tempfile::tempdir().unwrap();
        // The certificate of pebble's own HTTPS, which the package does not ship.
        let ca_bundle = dir.path().join("ca.pem");
        let (cert, key) = ca_and_leaf(&["localhost", "127.0.0.1"], &ca_bundle);
        let ca_pem = std::fs::read_to_string(&ca_bundle).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();

        let dns = match dns {
            Some(addr) => (addr, None),
            None => {
                let port = free_port();
                let mgmt = free_port();
                let mut child = Command::new("/usr/bin/pebble-challtestsrv")
                    .args(["-dns01", &format!("127.0.0.1:{port}")])
                    .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                    .args(["-management", &format!("127.0.0.1:{mgmt}")])
                    .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                wait_listening(mgmt, &mut child, "pebble-challtestsrv");
                (SocketAddr::from(([127, 0, 0, 1], port)), Some(child))
            }
        };
        let (listen, management) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity,
        }});
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("pebble.log")).unwrap();
        let mut pebble = Command::new("/usr/bin/pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &dns.0.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_listening(listen, &mut pebble, "pebble");
        Pebble {
            directory: format!("https://localhost:{listen}/dir"),
            ca_bundle,
            management,
            ca_pem,
            pebble,
            dns: dns.1,
            _dir: dir,
        }
    }

    /// Pebble's issuing root (made anew at every start).
    pub async fn root(&self) -> CertificateDer<'static> {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        let pem = client
            .get(format!("https://localhost:{}/roots/0", self.management))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("pebble.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        if let Some(c) = &mut self.dns {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TLS connection to `port` asking for `name`, trusting only `root`.
pub async fn connect_verified(
    root: &CertificateDer<'static>,
    name: &str,
    port: u16,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

/// The leaf a TLS connection was served.
pub fn leaf(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One HTTP/1.1 request on an open connection; the status line of the answer.
pub async fn get(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    host: &str,
    path: &str,
) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let length: usize = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let head = text.find("\r\n\r\n").unwrap() + 4;
    let mut body = got.len() - head;
    while body < length {
        body += s.read(&mut buf).await.unwrap();
    }
    text.lines().next().unwrap().to_owned()
}

/// Waits until a connection asking for `name` is served a certificate that `root` vouches for.
pub async fn wait_issued(
    root: &CertificateDer<'static>,
    name: &str,
    port: u16,
    within: Duration,
    pebble: &Pebble,
    cell: &TestCell,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let until = Instant::now() + within;
    loop {
        if let Ok(s) = connect_verified(root, name, port).await {
            return s;
        }
        assert!(
            Instant::now() < until,
            "no certificate from pebble was served for {name}; status {:?}\npebble: {}",
            cell.cell().certificate_status(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `devcell_certificate_expiry_seconds` for `name` in a `/metrics` answer.
pub fn expiry_seconds(metrics: &str, name: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "devcell_certificate_expiry_seconds{{name=\"{name}\"}} "
            ))
        })
        .unwrap_or_else(|| panic!("no expiry for {name}: {metrics}"))
        .parse()
        .unwrap()
}

/// The main certificate's status once an attempt to get it has failed.
async fn first_failure(c: &TestCell, within: Duration) -> devcell::service::CertStatus {
    let until = Instant::now() + within;
    loop {
        let status = c.cell().certificate_status();
        let main = status.iter().find(|s| s.slot == "main").unwrap().clone();
        if main.failures > 0 {
            return main;
        }
        assert!(
            Instant::now() < until,
            "no failed attempt recorded: {main:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A CA of the test's own (its PEM written to `ca_file`) and a certificate from it for `names`:
/// the certificate's and its key's PEM.
pub fn ca_and_leaf(names: &[&str], ca_file: &Path) -> (String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(ca_file, ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (leaf.pem(), key.serialize_pem())
}

/// A TLS server configuration serving a certificate for `names` from a CA of the test's own,
/// whose PEM is written to `ca_file`.
pub fn tls_server(names: &[&str], ca_file: &Path) -> rustls::ServerConfig {
    let (cert, key) = ca_and_leaf(names, ca_file);
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap()
}

/// Pebble on two fresh ports and a cell getting `name` from it by `challenge`.
async fn pebble_and_cell(
    name: &str,
    challenge: devcell::config::AcmeChallenge,
    validity: u64,
) -> (Pebble, CertificateDer<'static>, (u16, u16), TestCell) {
    let ports = (free_port(), free_port());
    let pebble = Pebble::start(ports.0, ports.1, validity, None);
    let root = pebble.root().await;
    let c = acme_cell(&pebble, ports, name, challenge, |_| {}).await;
    (pebble, root, ports, c)
}

/// A cell on two fresh loopback ports getting `name` from `pebble` by `challenge`.
async fn acme_cell(
    pebble: &Pebble,
    ports: (u16, u16),
    name: &str,
    challenge: devcell::config::AcmeChallenge,
    tweak: impl FnOnce(&mut devcell::config::Config),
) -> TestCell {
    let (directory, bundle, name) = (
        pebble.directory.clone(),
        pebble.ca_bundle.clone(),
        name.to_owned(),
    );
    TestCell::start_with(
        move |config| {
            config.server.listen = SocketAddr::from(([127, 0, 0, 1], ports.0));
            config.server.https_listen = Some(SocketAddr::from(([127, 0, 0, 1], ports.1)));
            config.server.public_url =
                Some(url::Url::parse(&format!("https://{name}:{}/", ports.1)).unwrap());
            config.tls.acme.directory = url::Url::parse(&directory).unwrap();
            config.tls.acme.ca_bundle = Some(bundle);
            config.tls.acme.contact = vec!["ops@example.com".into()];
            config.tls.acme.challenge = challenge;
            tweak(config);
        },
        None,
    )
    .await
}

#[tokio::test]
async fn http01_gets_a_certificate_pebble_validated_which_survives_a_restart_with_its_key_sealed() {
    let name = "cell.devcell.test";
    let (pebble, root, ports, c) =
        pebble_and_cell(name, devcell::config::AcmeChallenge::Http01, 0).await;
    let mut s = wait_issued(&root, name, ports.1, Duration::from_secs(30), &pebble, &c).await;
    assert!(get(&mut s, name, "/healthz").await.contains("200"));
    let issued = leaf(&s);

    let status = c.cell().certificate_status();
    let main = status.iter().find(|s| s.slot == "main").unwrap();
    assert_eq!(main.source, devcell::service::CertSource::Acme, "{main:?}");
    assert_eq!(main.names, vec![name.to_string()]);
    assert!(main.last_error.is_none() && main.failures == 0, "{main:?}");
    assert!(
        main.issuer.as_deref().unwrap_or("").contains("Pebble"),
        "{main:?}"
    );
    // Pebble's default lifetime is years: renewal is planned two thirds in.
    let next = main.next_renewal.unwrap();
    assert!(
        next > time::OffsetDateTime::now_utc() + time::Duration::days(300),
        "{main:?}"
    );
    assert!(c.cell().certificate_warnings().is_empty());

    // Operators see it: `devcell cert status` through the admin socket, and the admin page.
    // Not a blocking spawn: the cell answering the admin socket runs on this test's thread.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_devcell"))
        .args(["cert", "status", "--data"])
        .arg(c.data_dir())
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains(name) && table.contains("acme") && table.contains("Pebble Intermediate"),
        "{table}"
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_devcell"))
        .args(["cert", "status", "--json", "--data"])
        .arg(c.data_dir())
        .output()
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["names"][0], name);
    assert_eq!(json[0]["source"], "acme");
    let admin = c.owner_page("/admin").await;
    assert!(
        admin.contains("TLS certificates") && admin.contains("by ACME"),
        "{admin}"
    );
    assert!(
        !admin.contains("cell-warnings"),
        "no warning while all is well"
    );
    // /metrics: seconds left for the name, from the issued certificate (years, with pebble).
    let metrics = c.metrics().await;
    let left = expiry_seconds(&metrics, name);
    assert!(left > 300 * 86_400, "{left}");

    // A client asking for TLS-ALPN-01 validation outside a validation gets no certificate at
    // all, never the real one.
    let mut probe = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    probe.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ports.1))
        .await
        .unwrap();
    let refused = tokio_rustls::TlsConnector::from(Arc::new(probe))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await;
    assert!(
        refused.is_err(),
        "a validation handshake outside a validation succeeded"
    );

    // The plain listener sends browsers to HTTPS.
    let res = c
        .http
        .get(format!("http://127.0.0.1:{}/w/x?y=1", ports.0))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 308);
    assert_eq!(
        res.headers()["location"],
        format!("https://{name}:{}/w/x?y=1", ports.1).as_str()
    );

    // Restarted without the ACME server: the stored certificate is served at once.
    let dir = c.stop_keep_data().await;
    let db = std::fs::read(dir.path().join("data/devcell.redb")).unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains("PRIVATE KEY"),
        "a private key is stored in the clear"
    );
    drop(pebble);
    let (n, port) = (name.to_owned(), ports.1);
    let c = TestCell::restart_with(
        dir,
        move |config| {
            config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            config.server.https_listen = Some(SocketAddr::from(([127, 0, 0, 1], port)));
            config.server.public_url =
                Some(url::Url::parse(&format!("https://{n}:{port}/")).unwrap());
            config.tls.acme.directory = url::Url::parse("https://localhost:9/dir").unwrap();
        },
        None,
    )
    .await;
    let s = connect_verified(&root, name, ports.1).await.unwrap();
    assert_eq!(
        leaf(&s),
        issued,
        "the stored certificate is served after a restart"
    );
    c.stop().await;
}

#[tokio::test]
async fn tls_alpn01_gets_a_certificate_and_renews_it_while_a_connection_stays_open() {
    // Certificates pebble issues for 15 seconds: renewal is due after 10.
    let name = "alpn.devcell.test";
    let (mut pebble, root, ports, c) =
        pebble_and_cell(name, devcell::config::AcmeChallenge::TlsAlpn01, 15).await;
    let mut open = wait_issued(&root, name, ports.1, Duration::from_secs(30), &pebble, &c).await;
    let first = leaf(&open);
    assert!(get(&mut open, name, "/healthz").await.contains("200"));

    // Renewed: new connections get the new certificate, the open one keeps working.
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        if let Ok(s) = connect_verified(&root, name, ports.1).await
            && leaf(&s) != first
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "the certificate was not renewed: {:?}\n{}",
            c.cell().certificate_status(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(get(&mut open, name, "/healthz").await.contains("200"));

    // Pebble gone: renewal fails, the current certificate keeps being served, the failure is
    // shown and retried after a minute.
    pebble.stop();
    let current = leaf(&connect_verified(&root, name, ports.1).await.unwrap());
    let status = first_failure(&c, Duration::from_secs(40)).await;
    let error = status.last_error.clone().unwrap();
    assert!(
        error.contains("localhost"),
        "the error names the server: {error}"
    );
    let retry = status.next_renewal.unwrap() - time::OffsetDateTime::now_utc();
    assert!(
        retry > time::Duration::seconds(40) && retry <= time::Duration::seconds(61),
        "retried after a minute: {retry}"
    );
    let s = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth(),
    ))
    .connect(
        ServerName::try_from(name.to_owned()).unwrap(),
        tokio::net::TcpStream::connect(("127.0.0.1", ports.1))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(leaf(&s), current, "the last certificate is still served");
    c.stop().await;
}

/// Accepts any certificate: for looking at what is served after it expired.
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// BIND, authoritative for `devcell.test` on a loopback port, taking RFC 2136 updates of TXT
/// records signed with the TSIG key `devcell`.
pub struct Bind {
    pub addr: SocketAddr,
    pub secret: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Bind {
    pub fn start() -> Bind {
        need("/usr/sbin/named", "bind9");
        need("/usr/sbin/tsig-keygen", "bind9-utils");
        let dir = tempfile::tempdir().unwrap();
        let key = Command::new("/usr/sbin/tsig-keygen")
            .args(["-a", "hmac-sha256", "devcell"])
            .output()
            .unwrap();
        let key = String::from_utf8(key.stdout).unwrap();
        let secret = key
            .lines()
            .find_map(|l| l.trim().strip_prefix("secret \""))
            .unwrap()
            .trim_end_matches("\";")
            .to_owned();
        let port = free_port();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("devcell.test.zone"),
            "$TTL 60\n\
             @ IN SOA ns.devcell.test. hostmaster.devcell.test. 1 60 60 600 60\n\
             @ IN NS ns.devcell.test.\n\
             ns IN A 127.0.0.1\n\
             cell IN A 127.0.0.1\n\
             *.ws IN A 127.0.0.1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("named.conf"),
            format!(
                "{key}\n\
                 options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; recursion no; dnssec-validation no; }};\n\
                 controls {{ }};\n\
                 zone \"devcell.test\" {{ type primary; file \"{d}/devcell.test.zone\"; update-policy {{ grant devcell zonesub TXT; }}; }};\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("named.log")).unwrap();
        let mut child = Command::new("/usr/sbin/named")
            .arg("-g")
            .arg("-c")
            .arg(dir.path().join("named.conf"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "named exited: {}",
                std::fs::read_to_string(dir.path().join("named.log")).unwrap_or_default()
            );
            assert!(Instant::now() < until, "named did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            secret,
            child,
            dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// The TXT values BIND serves for `name`.
    pub async fn txt(&self, name: &str) -> Vec<String> {
        use hickory_client::client::{Client, ClientHandle};
        use hickory_client::proto::rr::{DNSClass, Name, RecordType};
        let (stream, sender) = hickory_client::proto::tcp::TcpClientStream::new(
            self.addr,
            None,
            Some(Duration::from_secs(5)),
            hickory_client::proto::runtime::TokioRuntimeProvider::new(),
        );
        let (mut client, bg) = Client::new(stream, sender, None).await.unwrap();
        tokio::spawn(bg);
        let answer = client
            .query(
                Name::from_ascii(name).unwrap(),
                DNSClass::IN,
                RecordType::TXT,
            )
            .await
            .unwrap();
        answer
            .answers()
            .iter()
            .map(|r| r.data().to_string())
            .collect()
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn dns01_over_rfc2136_gets_the_wildcard_for_port_subdomains_and_cleans_up_its_record() {
    let bind = Bind::start();
    let ports = (free_port(), free_port());
    let pebble = Pebble::start(ports.0, ports.1, 0, Some(bind.addr));
    let root = pebble.root().await;
    let (server, secret) = (bind.addr, bind.secret.clone());
    let bundle = pebble.ca_bundle.clone();
    let c = acme_cell(
        &pebble,
        ports,
        "cell.devcell.test",
        devcell::config::AcmeChallenge::Http01,
        move |config| {
            // The ACME server's CA trusted through the bundle every outbound connection uses.
            config.tls.acme.ca_bundle = None;
            config.tls.trust_bundle = Some(bundle);
            config.server.workspace_domain = Some("ws.devcell.test".into());
            config.tls.dns.provider = Some(devcell::config::DnsProvider::Rfc2136);
            config.tls.dns.server = Some(server);
            config.tls.dns.zone = Some("devcell.test".into());
            config.tls.dns.tsig_key_name = Some("devcell".into());
            config.tls.dns.tsig_secret = Some(devcell::config::Secret::new(secret));
        },
    )
    .await;
    // A port's own origin is served the wildcard, the dashboard its own certificate.
    let port_host = "8080-01jabcdefghjkmnpqrstvwxyz0.ws.devcell.test";
    let s = wait_issued(
        &root,
        port_host,
        ports.1,
        Duration::from_secs(40),
        &pebble,
        &c,
    )
    .await;
    let wildcard = leaf(&s);
    let s = wait_issued(
        &root,
        "cell.devcell.test",
        ports.1,
        Duration::from_secs(20),
        &pebble,
        &c,
    )
    .await;
    assert_ne!(leaf(&s), wildcard);
    let status = c.cell().certificate_status();
    let w = status.iter().find(|s| s.slot == "wildcard").unwrap();
    assert_eq!(w.names, vec!["*.ws.devcell.test".to_string()]);
    assert_eq!(w.source, devcell::service::CertSource::Acme, "{w:?}");
    // The challenge record is gone once pebble has looked.
    let left = bind.txt("_acme-challenge.ws.devcell.test.").await;
    assert!(
        left.is_empty(),
        "records left behind: {left:?}\n{}",
        bind.log()
    );
    c.stop().await;
}

#[tokio::test]
async fn a_dns_update_with_a_wrong_tsig_key_is_refused_with_what_to_check() {
    let bind = Bind::start();
    let mut config = devcell::config::Config::default();
    config.server.workspace_domain = Some("ws.devcell.test".into());
    config.tls.dns.provider = Some(devcell::config::DnsProvider::Rfc2136);
    config.tls.dns.server = Some(bind.addr);
    config.tls.dns.zone = Some("devcell.test".into());
    config.tls.dns.tsig_key_name = Some("devcell".into());
    config.tls.dns.tsig_secret = Some(devcell::config::Secret::new(
        "zTrrEENZZBuXe5aqA0N/0VhYbWIUynfthtQbrEjD/Bs=",
    ));
    let writer = devcell::edge::dns::DnsWriter::from_config(&config, None)
        .unwrap()
        .unwrap();
    let err = writer
        .set_txt("_acme-challenge.ws.devcell.test", "x")
        .await
        .unwrap_err();
    assert!(err.contains("tsig"), "{err}");
    assert!(
        bind.txt("_acme-challenge.ws.devcell.test.")
            .await
            .is_empty()
    );

    // With the right key the record comes and goes.
    config.tls.dns.tsig_secret = Some(devcell::config::Secret::new(bind.secret.clone()));
    let writer = devcell::edge::dns::DnsWriter::from_config(&config, None)
        .unwrap()
        .unwrap();
    writer
        .set_txt("_acme-challenge.ws.devcell.test", "proof")
        .await
        .unwrap();
    assert_eq!(
        bind.txt("_acme-challenge.ws.devcell.test.").await,
        vec!["proof"]
    );
    writer
        .remove_txt("_acme-challenge.ws.devcell.test", "proof")
        .await
        .unwrap();
    assert!(
        bind.txt("_acme-challenge.ws.devcell.test.")
            .await
            .is_empty()
    );
}

/// Runs a boto3 script against moto's Route 53; its printed output.
fn route53(moto: &crate::backup::Moto, body: &str) -> String {
    let venv =
        std::env::var("DEVCELL_TEST_VENV").unwrap_or_else(|_| "/var/cache/devcell/venv".into());
    let script = format!(
        "import boto3\n\
         r = boto3.client('route53', endpoint_url='http://127.0.0.1:{}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n{body}",
        moto.port
    );
    let out = Command::new(Path::new(&venv).join("bin/python"))
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn txt_values(moto: &crate::backup::Moto, zone: &str) -> Vec<String> {
    let out = route53(
        moto,
        &format!(
            "for s in r.list_resource_record_sets(HostedZoneId='{zone}')['ResourceRecordSets']:\n    \
             if s['Type'] == 'TXT':\n        \
             for v in s['ResourceRecords']: print(s['Name'], v['Value'])\n"
        ),
    );
    out.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn dns01_through_route53_writes_the_record_and_removes_it_after_validation() {
    crate::harness::moto_credentials();
    let moto = crate::backup::Moto::start(free_port());
    let zone = route53(
        &moto,
        "z = r.create_hosted_zone(Name='ws.example.test', CallerReference='devcell')\nprint(z['HostedZone']['Id'].split('/')[-1])\n",
    );
    let mut config = devcell::config::Config::default();
    config.server.workspace_domain = Some("ws.example.test".into());
    config.tls.dns.provider = Some(devcell::config::DnsProvider::Route53);
    config.tls.dns.route53_zone_id = Some(zone.clone());
    config.tls.dns.route53_endpoint =
        Some(url::Url::parse(&format!("http://127.0.0.1:{}", moto.port)).unwrap());
    let writer = devcell::edge::dns::DnsWriter::from_config(&config, None)
        .unwrap()
        .unwrap();
    writer
        .set_txt("_acme-challenge.ws.example.test", "proof-value")
        .await
        .unwrap();
    let values = txt_values(&moto, &zone);
    assert!(
        values.iter().any(|v| v.contains("_acme-challenge.ws.example.test") && v.contains("\"proof-value\"")),
        "{values:?}"
    );
    writer
        .remove_txt("_acme-challenge.ws.example.test", "proof-value")
        .await
        .unwrap();
    assert!(txt_values(&moto, &zone).is_empty());

    // End to end: pebble cannot ask moto's zone over DNS, so it takes the record as proven
    // here; what the cell does with Route 53 is the same.
    let ports = (free_port(), free_port());
    let pebble = Pebble::start_env(
        ports.0,
        ports.1,
        0,
        None,
        &[("PEBBLE_VA_ALWAYS_VALID", "1")],
    );
    let root = pebble.root().await;
    let (z, endpoint) = (zone.clone(), config.tls.dns.route53_endpoint.clone());
    let c = acme_cell(
        &pebble,
        ports,
        "cell.example.test",
        devcell::config::AcmeChallenge::Http01,
        move |config| {
            config.server.workspace_domain = Some("ws.example.test".into());
            config.tls.dns.provider = Some(devcell::config::DnsProvider::Route53);
            config.tls.dns.route53_zone_id = Some(z);
            config.tls.dns.route53_endpoint = endpoint;
        },
    )
    .await;
    wait_issued(
        &root,
        "3000-x.ws.example.test",
        ports.1,
        Duration::from_secs(40),
        &pebble,
        &c,
    )
    .await;
    assert!(
        txt_values(&moto, &zone).is_empty(),
        "the record was left behind"
    );
    c.stop().await;
}

#[tokio::test]
async fn with_the_acme_server_unreachable_a_self_signed_certificate_is_served_and_said_everywhere()
{
    let ports = (free_port(), free_port());
    let dead = free_port();
    let c = TestCell::start_with(
        move |config| {
            config.server.listen = SocketAddr::from(([127, 0, 0, 1], ports.0));
            config.server.https_listen = Some(SocketAddr::from(([127, 0, 0, 1], ports.1)));
            config.server.public_url = Some(url::Url::parse("https://cell.devcell.test/").unwrap());
            config.tls.acme.directory =
                url::Url::parse(&format!("https://127.0.0.1:{dead}/dir")).unwrap();
        },
        None,
    )
    .await;
    let main = first_failure(&c, Duration::from_secs(20)).await;
    assert_eq!(main.source, devcell::service::CertSource::SelfSigned);
    let error = main.last_error.unwrap();
    assert!(
        error.contains("cannot reach the ACME server") && error.contains(&dead.to_string()),
        "{error}"
    );
    // Still serving, self-signed, and every page says so: the sign-in page to everyone, the
    // dashboard with the reason to administrators, and `cert status`.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve(
            "cell.devcell.test",
            SocketAddr::from(([127, 0, 0, 1], ports.1)),
        )
        .build()
        .unwrap();
    let login = client
        .get(format!("https://cell.devcell.test:{}/login", ports.1))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        login.contains("cell-warnings") && login.contains("self-signed"),
        "{login}"
    );
    assert!(
        !login.contains("ACME") && !login.contains(&dead.to_string()),
        "the sign-in page tells strangers about the cell's setup: {login}"
    );
    // Refusals and failures are pages too.
    let (status, missing) = c
        .owner_page_status("/workspaces/ws_01jabcdefghjkmnpqrstvwxyz0")
        .await;
    assert_eq!(status, 404);
    assert!(
        missing.contains("cell-warnings") && missing.contains("self-signed"),
        "{missing}"
    );
    let home = c.owner_page("/").await;
    assert!(
        home.contains("self-signed") && home.contains("cannot reach the ACME server"),
        "{home}"
    );
    // Not a blocking spawn: the cell answering the admin socket runs on this test's thread.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_devcell"))
        .args(["cert", "status", "--data"])
        .arg(c.data_dir())
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("SELF-SIGNED") && table.contains("1 failed"),
        "{table}"
    );
    c.stop().await;
}

#[tokio::test]
async fn an_unreachable_http01_challenge_is_reported_and_auto_falls_back_to_tls_alpn01() {
    let https = free_port();
    // Pebble looks for HTTP-01 answers on a port where nothing listens.
    let nowhere = free_port();
    let pebble = Pebble::start(nowhere, https, 0, None);
    let root = pebble.root().await;

    // HTTP-01 alone: the failure is reported with the CA's reason, and nothing else changes.
    let c = acme_cell(
        &pebble,
        (free_port(), https),
        "only-http.devcell.test",
        devcell::config::AcmeChallenge::Http01,
        |_| {},
    )
    .await;
    let main = first_failure(&c, Duration::from_secs(30)).await;
    let error = main.last_error.unwrap();
    assert!(
        error.starts_with("HTTP-01:") && error.to_lowercase().contains("refused"),
        "{error}"
    );
    assert_eq!(main.source, devcell::service::CertSource::SelfSigned);
    c.stop().await;

    // `auto`: HTTP-01 fails the same way, then TLS-ALPN-01 gets the certificate.
    let c = acme_cell(
        &pebble,
        (free_port(), https),
        "auto.devcell.test",
        devcell::config::AcmeChallenge::Auto,
        |_| {},
    )
    .await;
    wait_issued(
        &root,
        "auto.devcell.test",
        https,
        Duration::from_secs(40),
        &pebble,
        &c,
    )
    .await;
    c.stop().await;
}

/// An HTTPS server answering every request with `status`, `Retry-After: retry_after` and an
/// ACME problem document: an ACME server that is overloaded or rate limiting.
async fn refusing_acme_server(
    status: u16,
    retry_after: &str,
    dir: &Path,
) -> (u16, PathBuf, tokio::task::JoinHandle<()>) {
    let ca_file = dir.join("refusing-ca.pem");
    let config = tls_server(&["localhost"], &ca_file);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let retry_after = retry_after.to_owned();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, retry_after) = (acceptor.clone(), retry_after.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                // A directory and nonces as any ACME server gives them, then the refusal.
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let retry_after = retry_after.clone();
                        async move {
                            let base = format!("https://localhost:{port}");
                            let ok = |body: String| {
                                hyper::Response::builder()
                                    .status(200)
                                    .header("Replay-Nonce", "bm9uY2U")
                                    .header("Content-Type", "application/json")
                                    .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
                                    .unwrap()
                            };
                            let answer = match req.uri().path() {
                            "/dir" => ok(format!(
                                r#"{{"newNonce":"{base}/nonce","newAccount":"{base}/account","newOrder":"{base}/order"}}"#
                            )),
                            "/nonce" => ok(String::new()),
                            _ => hyper::Response::builder()
                                .status(status)
                                .header("Retry-After", retry_after)
                                .header("Replay-Nonce", "bm9uY2U")
                                .header("Content-Type", "application/problem+json")
                                .body(http_body_util::Full::new(hyper::body::Bytes::from_static(
                                    br#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new orders recently","status":429}"#,
                                )))
                                .unwrap(),
                        };
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, ca_file, task)
}

#[tokio::test]
async fn a_rate_limited_cell_waits_as_long_as_the_acme_server_asks() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ca_file, server) = refusing_acme_server(429, "7200", dir.path()).await;
    let c = TestCell::start_with(
        move |config| {
            config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            config.server.https_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            config.server.public_url = Some(url::Url::parse("https://cell.devcell.test/").unwrap());
            config.tls.acme.directory =
                url::Url::parse(&format!("https://localhost:{port}/dir")).unwrap();
            config.tls.acme.ca_bundle = Some(ca_file);
        },
        None,
    )
    .await;
    let main = first_failure(&c, Duration::from_secs(20)).await;
    let error = main.last_error.unwrap();
    assert!(
        error.contains("rate limited") && error.contains("too many new orders"),
        "{error}"
    );
    // Not the usual minute: the two hours the server asked for.
    let wait = main.next_renewal.unwrap() - time::OffsetDateTime::now_utc();
    assert!(
        wait > time::Duration::minutes(115) && wait <= time::Duration::minutes(120),
        "retry in {wait}"
    );
    c.stop().await;
    server.abort();
}

#[tokio::test]
async fn a_corrupt_stored_certificate_is_replaced_by_a_new_one_without_a_crash() {
    let name = "corrupt.devcell.test";
    let (pebble, root, ports, c) =
        pebble_and_cell(name, devcell::config::AcmeChallenge::Http01, 0).await;
    let first =
        leaf(&wait_issued(&root, name, ports.1, Duration::from_secs(30), &pebble, &c).await);
    let dir = c.stop_keep_data().await;

    // The stored chain is damaged while the cell is down.
    {
        use devcell::store::Reader as _;
        let store = devcell::store::Store::open(&dir.path().join("data/devcell.redb")).unwrap();
        let mut stored = store.read(|tx| tx.issued_certificates()).unwrap();
        assert_eq!(stored.len(), 1);
        stored[0].chain_pem =
            "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n".into();
        store
            .write(|tx| tx.put_issued_certificate(&stored[0]))
            .unwrap();
    }
    let (directory, bundle, n) = (
        pebble.directory.clone(),
        pebble.ca_bundle.clone(),
        name.to_owned(),
    );
    let c = TestCell::restart_with(
        dir,
        move |config| {
            config.server.listen = SocketAddr::from(([127, 0, 0, 1], ports.0));
            config.server.https_listen = Some(SocketAddr::from(([127, 0, 0, 1], ports.1)));
            config.server.public_url =
                Some(url::Url::parse(&format!("https://{n}:{}/", ports.1)).unwrap());
            config.tls.acme.directory = url::Url::parse(&directory).unwrap();
            config.tls.acme.ca_bundle = Some(bundle);
            config.tls.acme.challenge = devcell::config::AcmeChallenge::Http01;
        },
        None,
    )
    .await;
    // It starts, serves something at once, and gets a new certificate.
    let fresh =
        leaf(&wait_issued(&root, name, ports.1, Duration::from_secs(30), &pebble, &c).await);
    assert_ne!(fresh, first);
    c.stop().await;
}

/// Pebble 2.4 offers no renewal information (ARI, RFC 9773): this serves pebble's directory
/// with a `renewalInfo` endpoint added, whose window says "renew now" for the first certificate
/// asked about and "in a year" for any later one. Everything else goes to pebble itself.
async fn ari_in_front_of(pebble: &Pebble) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let cert = std::fs::read(pebble._dir.path().join("cert.pem")).unwrap();
    let key = std::fs::read(pebble._dir.path().join("key.pem")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            rustls::pki_types::PrivateKeyDer::from_pem_slice(&key).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let directory = pebble.directory.clone();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pebble.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let seen = asked.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, client, directory, seen) = (
                acceptor.clone(),
                client.clone(),
                directory.clone(),
                seen.clone(),
            );
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (client, directory, seen) =
                            (client.clone(), directory.clone(), seen.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let now = time::OffsetDateTime::now_utc();
                            let rfc = |t: time::OffsetDateTime| {
                                t.format(&time::format_description::well_known::Rfc3339)
                                    .unwrap()
                            };
                            let body = if path == "/dir" {
                                let mut dir: serde_json::Value = client
                                    .get(&directory)
                                    .send()
                                    .await
                                    .unwrap()
                                    .json()
                                    .await
                                    .unwrap();
                                dir["renewalInfo"] =
                                    format!("https://localhost:{port}/renewal-info").into();
                                dir.to_string()
                            } else {
                                let id = path.trim_start_matches("/renewal-info/").to_owned();
                                let mut seen = seen.lock().unwrap();
                                if !seen.contains(&id) {
                                    seen.push(id.clone());
                                }
                                let (start, end) = if seen.first() == Some(&id) {
                                    (
                                        now - time::Duration::hours(1),
                                        now + time::Duration::hours(1),
                                    )
                                } else {
                                    (
                                        now + time::Duration::days(365),
                                        now + time::Duration::days(366),
                                    )
                                };
                                serde_json::json!({"suggestedWindow": {"start": rfc(start), "end": rfc(end)}})
                                .to_string()
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("Content-Type", "application/json")
                                    .header("Retry-After", "3600")
                                    .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("https://localhost:{port}/dir"), asked)
}

#[tokio::test]
async fn a_renewal_window_from_the_ca_brings_renewal_forward() {
    let ports = (free_port(), free_port());
    // Pebble's certificates last years: two thirds in is far away.
    let pebble = Pebble::start(ports.0, ports.1, 0, None);
    let root = pebble.root().await;
    let (directory, asked) = ari_in_front_of(&pebble).await;
    let name = "ari.devcell.test";
    let c = acme_cell(
        &pebble,
        ports,
        name,
        devcell::config::AcmeChallenge::Http01,
        move |config| config.tls.acme.directory = url::Url::parse(&directory).unwrap(),
    )
    .await;
    let first =
        leaf(&wait_issued(&root, name, ports.1, Duration::from_secs(30), &pebble, &c).await);
    // The CA says "now" for the first certificate: a new one is served within a few runs.
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        let s = connect_verified(&root, name, ports.1).await.unwrap();
        if leaf(&s) != first {
            break;
        }
        assert!(
            Instant::now() < until,
            "not renewed in the CA's window: asked {:?}, {:?}",
            asked.lock().unwrap(),
            c.cell().certificate_status()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The new certificate's window is a year out, and that is when renewal is planned.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let status = c.cell().certificate_status();
        let main = status.iter().find(|s| s.slot == "main").unwrap().clone();
        let next = main.next_renewal.unwrap() - time::OffsetDateTime::now_utc();
        if asked.lock().unwrap().len() >= 2 && next > time::Duration::days(364) {
            assert!(next < time::Duration::days(367), "{main:?}");
            break;
        }
        assert!(
            Instant::now() < until,
            "{main:?} asked {:?}",
            asked.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    c.stop().await;
}

#[tokio::test]
async fn route53_behind_an_internal_ca_is_reached_once_the_trust_bundle_names_it() {
    crate::harness::moto_credentials();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    let (cert, key) = ca_and_leaf(&["127.0.0.1"], &ca_file);
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), key).unwrap();
    let port = free_port();
    let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let _moto = crate::backup::Moto::start_with(
        port,
        &["-c", c.to_str().unwrap(), "-k", k.to_str().unwrap()],
    );
    let mut config = devcell::config::Config::default();
    config.server.workspace_domain = Some("ws.example.test".into());
    config.tls.dns.provider = Some(devcell::config::DnsProvider::Route53);
    config.tls.dns.route53_zone_id = Some("Z0NOTCREATED".into());
    config.tls.dns.route53_endpoint =
        Some(url::Url::parse(&format!("https://127.0.0.1:{port}")).unwrap());

    // The host does not know the CA: the SDK refuses the server.
    let writer = devcell::edge::dns::DnsWriter::from_config(&config, None)
        .unwrap()
        .unwrap();
    let err = writer
        .set_txt("_acme-challenge.ws.example.test", "v")
        .await
        .unwrap_err();
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("dispatch failure"),
        "{err}"
    );

    // Trusting it through tls.trust_bundle (the same client S3 backups use), the request
    // reaches moto, which answers about the zone (it does not exist there).
    let trust = devcell::trust::Outbound::load(&ca_file).unwrap();
    let writer = devcell::edge::dns::DnsWriter::from_config(&config, Some(&trust))
        .unwrap()
        .unwrap();
    let err = writer
        .set_txt("_acme-challenge.ws.example.test", "v")
        .await
        .unwrap_err();
    assert!(err.contains("NoSuchHostedZone"), "{err}");
}
