//! HTTPS from the operator's certificate files: a client trusting their CA is served; renewed
//! files reach new connections without a restart while an open connection keeps working; files
//! that do not load change nothing; a cell whose files do not load at start does not start.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::harness::TestCell;

/// A test CA that signs leaf certificates for this host.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// An HTTP client that trusts this CA only and follows no redirect.
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    /// Writes a new leaf certificate for localhost and 127.0.0.1 with its key; returns its DER.
    fn issue(&self, cert: &Path, key: &Path) -> Vec<u8> {
        self.issue_until(cert, key, rcgen::date_time_ymd(2100, 1, 1))
    }

    /// The same, valid until `not_after`.
    fn issue_until(&self, cert: &Path, key: &Path, not_after: time::OffsetDateTime) -> Vec<u8> {
        let leaf_key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = not_after;
        let leaf = params.signed_by(&leaf_key, &self.issuer).unwrap();
        // Written aside and renamed in, as a renewal tool would.
        write_atomically(key, leaf_key.serialize_pem().as_bytes());
        write_atomically(cert, leaf.pem().as_bytes());
        leaf.der().to_vec()
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A TLS connection to the cell that trusts only the test CA.
async fn connect(ca: &Ca, port: u16) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("the cell's certificate is trusted through the CA")
}

/// A cell serving HTTPS from `cert` and `key`.
async fn files_cell(cert: &Path, key: &Path) -> TestCell {
    let (cert, key) = (cert.to_owned(), key.to_owned());
    TestCell::start_with(
        move |config| {
            config.tls.cert_file = Some(cert);
            config.tls.key_file = Some(key);
        },
        None,
    )
    .await
}

fn served_cert(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One HTTP/1.1 request on an open connection; the status line of the answer.
async fn get(s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, path: &str) -> String {
    crate::acme::get(s, "localhost", path).await
}

#[tokio::test]
async fn https_from_certificate_files_follows_their_renewal_without_dropping_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cell.pem"), tmp.path().join("cell.key"));
    let ca = Ca::new();
    let first = ca.issue(&cert, &key);
    let c = files_cell(&cert, &key).await;
    assert!(c.url("/").starts_with("https://"), "{}", c.url("/"));
    let port: u16 = c.url("").rsplit(':').next().unwrap().parse().unwrap();

    // A client trusting the CA gets the dashboard's API over HTTPS.
    let client = ca.client();
    let res = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let mut open = connect(&ca, port).await;
    assert_eq!(served_cert(&open), first);
    assert!(get(&mut open, "/healthz").await.contains("200"));

    // Renewed files: new connections get the new certificate within seconds, the open one
    // keeps working.
    let second = ca.issue(&cert, &key);
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let fresh = connect(&ca, port).await;
        if served_cert(&fresh) == second {
            break;
        }
        assert!(
            Instant::now() < until,
            "the renewed certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(get(&mut open, "/healthz").await.contains("200"));

    // /metrics says how long the certificate has left, per name it holds.
    let metrics = client
        .get(format!("https://localhost:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let left = |name: &str| crate::acme::expiry_seconds(&metrics, name);
    let until_2100 = 4_102_444_800 - time::OffsetDateTime::now_utc().unix_timestamp();
    for name in ["localhost", "127.0.0.1"] {
        assert!(
            (left(name) - until_2100).abs() < 60,
            "{name}: {}",
            left(name)
        );
    }

    // A renewal that has already expired is not served.
    ca.issue_until(&cert, &key, rcgen::date_time_ymd(2021, 1, 1));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(served_cert(&connect(&ca, port).await), second);

    // A key that is not the certificate's: logged, and the certificate in use stays.
    let stray = KeyPair::generate().unwrap();
    write_atomically(&key, stray.serialize_pem().as_bytes());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(served_cert(&connect(&ca, port).await), second);
    let res = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
}

#[tokio::test]
async fn a_cell_whose_certificate_files_do_not_load_does_not_start_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cell.pem"), tmp.path().join("cell.key"));
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let mut config = devcell::config::Config {
        data_dir: tmp.path().join("data"),
        ..Default::default()
    };
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.tls.cert_file = Some(cert.clone());
    config.tls.key_file = Some(key);
    let err = match devcell::server::start(config, devcell::server::Options::default()).await {
        Ok(_) => panic!("a cell started without a certificate to serve"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("cannot serve HTTPS") && err.contains(&cert.display().to_string()),
        "{err}"
    );
    assert!(
        !tmp.path().join("data").exists(),
        "nothing was started or created: {err}"
    );
}

#[tokio::test]
async fn with_an_https_address_the_plain_one_redirects_every_path_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cell.pem"), tmp.path().join("cell.key"));
    let ca = Ca::new();
    ca.issue(&cert, &key);
    let mut config = devcell::config::Config {
        data_dir: tmp.path().join("data"),
        ..Default::default()
    };
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.https_listen = Some("127.0.0.1:0".parse().unwrap());
    config.tls.cert_file = Some(cert);
    config.tls.key_file = Some(key);
    let running = devcell::server::start(config, devcell::server::Options::default())
        .await
        .unwrap();
    let plain = running
        .redirect_addr
        .expect("a plain listener that redirects");
    let secure = running.addr;
    assert_ne!(plain, secure);
    assert_eq!(running.url(), format!("https://{secure}"));

    let client = ca.client();
    let res = client
        .get(format!("http://{plain}/workspaces/ws_1?tab=ports"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        res.headers()["location"],
        format!("https://{secure}/workspaces/ws_1?tab=ports").as_str()
    );
    // The HTTPS address serves the cell itself.
    let res = client
        .get(format!("https://localhost:{}/healthz", secure.port()))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    running.stop().await;
}

#[tokio::test]
async fn sighup_reads_the_files_again_even_when_their_times_did_not_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cell.pem"), tmp.path().join("cell.key"));
    let ca = Ca::new();
    let first = ca.issue(&cert, &key);
    let times = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (cert_time, key_time) = (times(&cert), times(&key));
    let c = files_cell(&cert, &key).await;
    let port: u16 = c.url("").rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(served_cert(&connect(&ca, port).await), first);

    // New files that look unchanged (as a copy keeping times would leave them): the periodic
    // check does not see them.
    let second = ca.issue(&cert, &key);
    for (path, t) in [(&cert, cert_time), (&key, key_time)] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(served_cert(&connect(&ca, port).await), first);

    // SIGHUP makes the cell read them.
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while served_cert(&connect(&ca, port).await) != second {
        assert!(Instant::now() < until, "SIGHUP did not reload the files");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.stop().await;
}

#[tokio::test]
async fn a_trust_bundle_that_does_not_load_stops_the_start_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("ca.pem");
    std::fs::write(&bundle, "not a certificate").unwrap();
    let mut config = devcell::config::Config {
        data_dir: tmp.path().join("data"),
        ..Default::default()
    };
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.tls.trust_bundle = Some(bundle.clone());
    let err = match devcell::server::start(config, devcell::server::Options::default()).await {
        Ok(_) => panic!("a cell started with a trust bundle it cannot read"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("tls.trust_bundle") && err.contains(&bundle.display().to_string()),
        "{err}"
    );
}
