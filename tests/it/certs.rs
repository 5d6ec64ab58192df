//! Client certificates over their life: an expired one and a revoked one
//! are refused at the TLS handshake, a revocation reaches connections
//! already open once the server reloads, a renewed certificate works, and a
//! reload with a bad file changes nothing.

use std::path::Path;
use std::sync::Arc;

use docket::api::pb;
use docket::server::Reloaded;
use docket::tls::pki;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::server;

/// Completes a TLS handshake with `cert` and sends the HTTP/2 preface; Ok
/// once the server answers with HTTP/2 frames, Err with what the client
/// saw when the server refused the certificate (TLS 1.3 clients learn that
/// at their first read).
async fn handshake(addr: std::net::SocketAddr, ca: &Path, cert: &Path) -> Result<(), String> {
    let key = cert.with_extension("key");
    let cfg = docket::tls::client_config(ca, cert, &key).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 9];
    match tls.read(&mut buf).await {
        Ok(0) => Err("closed without a word".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

async fn ping(
    c: &mut pb::ledger_client::LedgerClient<tonic::transport::Channel>,
) -> Result<(), tonic::Status> {
    c.ping(pb::PingRequest {}).await.map(drop)
}

#[tokio::test]
async fn revoked_and_expired_client_certificates_are_refused() {
    let s = server()
        .with_access(r#"{"identities": {"CN=ci": ["Ping"], "CN=old": ["Ping"]}}"#)
        .run()
        .await;
    let tls = s.data.tls();
    let clients = s.dir.path().join("clients");
    let mut ci = s.client_as("ci").await;
    ping(&mut ci).await.unwrap();
    let ci_pem = clients.join("ci.pem");
    let (issued, _) = pki::read_cert_info(&ci_pem).unwrap();
    // Issued for the 30 days the helper asked for, not for ever.
    let now = jiff::Timestamp::now().as_second();
    assert!(
        (issued.not_after - now - 30 * 86_400).abs() < 600,
        "{issued:?}"
    );
    handshake(s.addr, &tls.ca_cert, &ci_pem).await.unwrap();

    // A certificate whose validity has ended is refused at the handshake.
    let old = pki::issue_with_validity(
        &tls,
        "old",
        &clients,
        (now - 2 * 86_400, now - 86_400),
        false,
    )
    .unwrap();
    let e = handshake(s.addr, &tls.ca_cert, &old.cert)
        .await
        .unwrap_err();
    assert!(e.contains("CertificateExpired"), "{e}");

    // Revoked on disk: nothing changes until the server reloads.
    let r = pki::revoke(&tls, &ci_pem, "key-compromise")
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.serial.as_str(), r.subject.as_str()),
        (issued.serial.as_str(), "CN=ci")
    );
    assert!(
        pki::revoke(&tls, &ci_pem, "key-compromise")
            .unwrap()
            .is_none()
    );
    ping(&mut ci).await.unwrap();
    assert_eq!(
        s.reloader.reload().unwrap(),
        Reloaded {
            identities: 2,
            revoked: 1
        }
    );
    // The connection opened before the revocation may call nothing more...
    let e = ping(&mut ci).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(
        e.message()
            .contains(&format!("(serial {}) is revoked", issued.serial)),
        "{e}"
    );
    // ...and a new one is refused at the handshake by the CRL.
    let e = handshake(s.addr, &tls.ca_cert, &ci_pem).await.unwrap_err();
    assert!(e.contains("CertificateRevoked"), "{e}");

    // Renewed: a new serial, accepted once the server reloads; the revoked
    // one it replaced is not counted twice.
    let renewed = docket::tls::issue_client_cert(&tls, "ci", &clients, 30, true).unwrap();
    assert_eq!(renewed.replaced.unwrap().serial, issued.serial);
    assert_ne!(renewed.info.serial, issued.serial);
    assert_eq!(s.reloader.reload().unwrap().revoked, 1);
    let mut ci = s.client_as("ci").await;
    ping(&mut ci).await.unwrap();

    // A new identity works only once access.json lists it and the server
    // has reloaded.
    let mut newcomer = s.client_as("newcomer").await;
    let e = ping(&mut newcomer).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    std::fs::write(
        s.data.access_path(),
        r#"{"identities": {"CN=ci": ["Ping"], "CN=newcomer": ["Ping"]}}"#,
    )
    .unwrap();
    s.reloader.reload().unwrap();
    ping(&mut newcomer).await.unwrap();

    // A bad access.json is refused, naming the file, and the rules in
    // force stay as they were.
    std::fs::write(
        s.data.access_path(),
        r#"{"identities": {"CN=ci": ["Pong"]}}"#,
    )
    .unwrap();
    let e = s.reloader.reload().unwrap_err().to_string();
    assert!(
        e.contains("access.json") && e.contains("unknown method \"Pong\""),
        "{e}"
    );
    ping(&mut newcomer).await.unwrap();
    ping(&mut ci).await.unwrap();
    s.stop().await;
}

/// Only a certificate of the data directory's own CA can be revoked by
/// its CRL; a renewal needs --replace; a bad reason is named.
#[tokio::test]
async fn revocation_and_renewal_refuse_what_they_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let mine = docket::tls::generate_dev_pki(&dir.path().join("mine"), &["localhost".into()], "me")
        .unwrap();
    let other =
        docket::tls::generate_dev_pki(&dir.path().join("other"), &["localhost".into()], "them")
            .unwrap();
    let e = pki::revoke(&mine, &other.client_cert, "unspecified")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is not a current client certificate of this data directory's CA"),
        "{e}"
    );
    assert!(!mine.revoked.exists() && !mine.crl.exists());

    let e = pki::revoke(&mine, &mine.client_cert, "lost")
        .unwrap_err()
        .to_string();
    assert!(e.contains("--reason: \"lost\" is not one of"), "{e}");
    assert!(!mine.revoked.exists());

    let out = dir.path().join("clients");
    docket::tls::issue_client_cert(&mine, "ci", &out, 1, false).unwrap();
    let e = docket::tls::issue_client_cert(&mine, "ci", &out, 1, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists; give --replace"), "{e}");
    for days in [0, pki::MAX_DAYS + 1] {
        let e = docket::tls::issue_client_cert(&mine, "ci", &out, days, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be between 1 and 3650"), "{e}");
    }
    // Nothing was revoked by the refused renewals.
    assert!(pki::revoked(&mine).unwrap().is_empty());
    let listed = pki::list(&mine, &out).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].info.subject, "CN=ci");
    assert!(listed[0].revoked.is_none());
}
