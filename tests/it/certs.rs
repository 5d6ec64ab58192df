//! Client certificates over their life: an expired one and a revoked one
//! are refused at the TLS handshake, a revocation reaches connections
//! already open once the server reloads, a renewed certificate works, and a
//! reload with a bad file changes nothing. The server's own certificate
//! and the admin's expire and renew in place.

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
    let ci_channel = s.conn_as("ci").channel().await.unwrap();
    let mut ci = pb::ledger_client::LedgerClient::new(ci_channel.clone());
    ping(&mut ci).await.unwrap();
    // The standard health service answers any valid certificate, listed
    // for it or not.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ci_channel);
    let check = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    health.check(check.clone()).await.unwrap();
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
    // Health checks included...
    let e = health.check(check).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("is revoked"), "{e}");
    // ...and a new one is refused at the handshake by the CRL.
    let e = handshake(s.addr, &tls.ca_cert, &ci_pem).await.unwrap_err();
    assert!(e.contains("CertificateRevoked"), "{e}");

    // Renewed: a new serial, accepted once the server reloads; the revoked
    // one it replaced is not counted twice.
    let renewed = docket::tls::issue_client_cert(&tls, "ci", &clients, 30, true).unwrap();
    let replaced = renewed.replaced.unwrap();
    assert_eq!(replaced.info.serial, issued.serial);
    assert!(!replaced.newly, "it was revoked already");
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
    // A certificate another CA signed (under the same CA name) is not
    // replaced: this CA's CRL could not revoke it.
    std::fs::copy(&other.client_cert, out.join("them.pem")).unwrap();
    std::fs::copy(&other.client_key, out.join("them.key")).unwrap();
    let e = docket::tls::issue_client_cert(&mine, "them", &out, 1, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("which this data directory's CA did not sign"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(out.join("them.pem")).unwrap(),
        std::fs::read(&other.client_cert).unwrap()
    );
    std::fs::remove_file(out.join("them.pem")).unwrap();
    std::fs::remove_file(out.join("them.key")).unwrap();
    // Nothing was revoked by the refused renewals.
    assert!(pki::revoked(&mine).unwrap().is_empty());
    // A renewal revokes the certificate it replaces, and the pair on disk
    // is the new one.
    let (before, _) = pki::read_cert_info(&out.join("ci.pem")).unwrap();
    let renewed = docket::tls::issue_client_cert(&mine, "ci", &out, 1, true).unwrap();
    let replaced = renewed.replaced.unwrap();
    assert!(replaced.newly);
    assert_eq!(replaced.info.serial, before.serial);
    let revoked = pki::revoked(&mine).unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(
        (revoked[0].serial.as_str(), revoked[0].reason.as_str()),
        (before.serial.as_str(), "superseded")
    );
    docket::tls::client_config(&mine.ca_cert, &out.join("ci.pem"), &out.join("ci.key")).unwrap();
    assert_eq!(
        pki::read_cert_info(&out.join("ci.pem")).unwrap().0.serial,
        renewed.info.serial
    );
    assert!(!out.join("ci.pem.tmp").exists() && !out.join("ci.key.tmp").exists());
    // The CRL is re-signed from the list each time, also when nothing is
    // added, with a number that always grows.
    std::fs::remove_file(&mine.crl).unwrap();
    let e = pki::revoke(&mine, &out.join("ci.pem"), "unspecified").unwrap();
    assert!(e.is_some());
    let first = crl_number(&mine.crl);
    assert!(
        pki::revoke(&mine, &out.join("ci.pem"), "unspecified")
            .unwrap()
            .is_none()
    );
    assert!(crl_number(&mine.crl) > first);
    // The development PKI's own files are not a client's to renew.
    let e = docket::tls::issue_client_cert(&mine, "server", &dir.path().join("mine"), 1, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("would overwrite the development PKI's own server.pem"),
        "{e}"
    );

    // A CRL from another CA would make the server refuse every client:
    // the server refuses the file instead, naming it.
    pki::revoke(&other, &other.client_cert, "unspecified").unwrap();
    std::fs::copy(&other.crl, &mine.crl).unwrap();
    let refusal = || {
        docket::tls::server_config(
            &mine.ca_cert,
            &mine.server_cert,
            &mine.server_key,
            Some(&mine.crl),
        )
        .unwrap_err()
        .to_string()
    };
    let e = refusal();
    assert!(e.contains("not a revocation list of the client CA"), "{e}");
    // One that holds no CRL at all would revoke nothing: refused too.
    for junk in [&b""[..], b"garbage\n", &[0u8; 64]] {
        std::fs::write(&mine.crl, junk).unwrap();
        let e = refusal();
        assert!(e.contains("no revocation list"), "{junk:?}: {e}");
    }
    let listed = pki::list(&mine, &out).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].info.subject, "CN=ci");
    assert_eq!(
        listed[0].revoked.as_ref().map(|r| r.reason.as_str()),
        Some("unspecified")
    );
}

/// The refusal that ends `stream`, which must come within 30 s (a bound
/// on a regression, not a wait: the stream ends as soon as it is told).
async fn refusal<T>(
    what: &str,
    stream: &mut (impl futures::Stream<Item = Result<T, tonic::Status>> + Unpin),
) -> tonic::Status {
    use futures::StreamExt as _;
    match tokio::time::timeout(std::time::Duration::from_secs(30), stream.next()).await {
        Ok(Some(Err(e))) => e,
        Ok(Some(Ok(_))) => panic!("{what}: a message instead of the refusal"),
        Ok(None) => panic!("{what}: ended without a status"),
        Err(_) => panic!("{what}: the stream did not end"),
    }
}

/// A reflection (v1) request that lists the services.
fn list_services() -> tonic_reflection::pb::v1::ServerReflectionRequest {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }
}

/// Streams opened before a revocation end once the server has reloaded:
/// an idle following Tail gets UNAUTHENTICATED at the reload, and an
/// AppendStream appends nothing more. So do the streams of the standard
/// services any certificate may call (Health/Watch, reflection), while
/// those of a certificate still valid go on.
#[tokio::test]
async fn open_streams_end_when_their_certificate_is_revoked() {
    use futures::StreamExt as _;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    let s = server()
        .with_access(
            r#"{"identities": {"CN=docket-admin": ["*"], "CN=siem": ["Tail"], "CN=ci": ["AppendStream"]}}"#,
        )
        .run()
        .await;
    let admin = s.admin_key();
    let tls = s.data.tls();
    let clients = s.dir.path().join("clients");
    // "mon" is in no list of access.json: health and reflection only.
    let mon = s.conn_as("mon").channel().await.unwrap();
    let mut watch = tonic_health::pb::health_client::HealthClient::new(mon.clone())
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // A reflection stream that has answered once, and its request side.
    let reflection = async |channel| {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut out = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(list_services()).await.unwrap();
        assert!(out.next().await.unwrap().is_ok());
        (tx, out)
    };
    let (mon_tx, mut mon_reflection) = reflection(mon).await;
    let (admin_tx, mut admin_reflection) = reflection(s.conn().channel().await.unwrap()).await;
    let mut siem = s.client_as("siem").await;
    let mut ci = s.client_as("ci").await;
    let mut tail = siem
        .tail(pb::TailRequest {
            from_index: 0,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tail.next().await.unwrap().unwrap().index, 0);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut appends = ci
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let ev = |id: &str| crate::common::signed(&crate::common::note(id, "admin"), &admin);
    tx.send(ev("before")).await.unwrap();
    let first = appends.next().await.unwrap().unwrap();
    assert!(matches!(
        first.result,
        Some(pb::append_stream_response::Result::Receipt(_))
    ));
    let size = s.size().await;
    assert_eq!(tail.next().await.unwrap().unwrap().index, size - 1);

    for cn in ["siem", "ci", "mon"] {
        pki::revoke(&tls, &clients.join(format!("{cn}.pem")), "key-compromise").unwrap();
    }
    s.reloader.reload().unwrap();

    // The idle Health/Watch and reflection streams are woken by the reload
    // and ended with the refusal; the admin's goes on answering.
    for (what, e) in [
        ("watch", refusal("watch", &mut watch).await),
        (
            "reflection",
            refusal("reflection", &mut mon_reflection).await,
        ),
    ] {
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{what}: {e}");
        assert!(e.message().contains("is revoked"), "{what}: {e}");
    }
    assert!(watch.next().await.is_none());
    assert!(mon_reflection.next().await.is_none());
    admin_tx.send(list_services()).await.unwrap();
    assert!(admin_reflection.next().await.unwrap().is_ok());

    // The AppendStream's next message is refused, and the stream ends.
    tx.send(ev("after")).await.unwrap();
    let e = appends.next().await.unwrap().unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("is revoked"), "{e}");
    assert_eq!(s.size().await, size);
    // The idle following Tail is woken by the reload and ended, before any
    // new entry could reach it.
    let e = tail.next().await.unwrap().unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(tail.next().await.is_none());
    // The client still holds its side of the AppendStream open; close it
    // so the server's drain can finish.
    drop((tx, appends, ci, siem, tail));
    drop((mon_tx, admin_tx, admin_reflection));
    s.stop().await;
}

/// An idle following Tail, and an idle Health/Watch, are ended when their
/// client certificate expires, with nothing appended and no reload to wake
/// them. The certificate's end is the wall clock's, so this test waits for
/// it (about three seconds): what it waits on is the stream's next message,
/// not a sleep.
#[tokio::test]
async fn an_idle_tail_ends_when_its_certificate_expires() {
    use futures::StreamExt as _;
    let s = server()
        .with_access(r#"{"identities": {"CN=docket-admin": ["*"], "CN=brief": ["Tail"]}}"#)
        .run()
        .await;
    let tls = s.data.tls();
    let clients = s.dir.path().join("clients");
    let now = jiff::Timestamp::now().as_second();
    pki::issue_with_validity(&tls, "brief", &clients, (now - 60, now + 2), false).unwrap();
    let brief_conn = s.conn_as("brief");
    let mut watch =
        tonic_health::pb::health_client::HealthClient::new(brief_conn.channel().await.unwrap())
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
    assert!(watch.next().await.unwrap().is_ok());
    let mut brief = brief_conn.ledger().await.unwrap();
    let mut tail = brief
        .tail(pb::TailRequest {
            from_index: 0,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tail.next().await.unwrap().unwrap().index, 0);
    let size = s.size().await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(60), tail.next())
        .await
        .expect("the stream must end once the certificate has expired");
    let e = ended.unwrap().unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("expired"), "{e}");
    assert!(
        jiff::Timestamp::now().as_second() > now + 2,
        "ended before the certificate's end"
    );
    assert!(tail.next().await.is_none());
    // So does an idle Health/Watch on the same certificate.
    let e = refusal("watch", &mut watch).await;
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("expired"), "{e}");
    assert!(watch.next().await.is_none());
    assert_eq!(s.size().await, size);
    drop((tail, brief));
    s.stop().await;
}

fn crl_number(path: &Path) -> u64 {
    use rustls::pki_types::pem::PemObject as _;
    use x509_parser::prelude::FromDer as _;
    let pem = std::fs::read(path).unwrap();
    let der = rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
    u64::try_from(crl.crl_number().unwrap()).unwrap()
}

/// The serial of the certificate the server at `addr` presents.
async fn presented_serial(s: &crate::common::TestServer) -> String {
    let conn = s.conn();
    let cfg = docket::tls::client_config(&conn.ca, &conn.cert, &conn.key).unwrap();
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let der = &tls.get_ref().1.peer_certificates().unwrap()[0];
    pki::cert_info(der).unwrap().serial
}

/// The development PKI `init` makes is not valid for ever, and the server's
/// certificate renews in place: `docket cert renew-server` keeps its names,
/// a reload puts it in force for new connections, no certificate may
/// outlast the CA, and a server certificate that has expired is refused by
/// a reload (the running one stays) and stops a server from starting.
#[tokio::test]
async fn the_server_certificate_expires_and_renews() {
    let s = server().run().await;
    let tls = s.data.tls();
    let now = jiff::Timestamp::now().as_second();
    let days_left = |path: &Path| (pki::first_cert_end(path).unwrap() - now) / 86_400;
    for (path, days) in [
        (&tls.ca_cert, pki::CA_DAYS),
        (&tls.server_cert, pki::SERVER_DAYS),
        (&tls.client_cert, pki::DEFAULT_DAYS),
    ] {
        let left = days_left(path);
        assert!(
            (i64::from(days) - 1..=i64::from(days)).contains(&left),
            "{}: {left} days left",
            path.display()
        );
    }
    let (first, _) = pki::read_cert_info(&tls.server_cert).unwrap();
    assert_eq!(presented_serial(&s).await, first.serial);

    let out = s.cli(&["cert", "renew-server", "--days", "90"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("for localhost, 127.0.0.1, ::1")
            && out
                .stdout
                .contains(&format!("it replaces serial {}", first.serial)),
        "{}",
        out.stdout
    );
    let (renewed, _) = pki::read_cert_info(&tls.server_cert).unwrap();
    assert_ne!(renewed.serial, first.serial);
    assert!((89..=90).contains(&days_left(&tls.server_cert)));
    // The running server presents the old one until it reloads.
    assert_eq!(presented_serial(&s).await, first.serial);
    s.reloader.reload().unwrap();
    assert_eq!(presented_serial(&s).await, renewed.serial);
    ping(&mut s.client().await).await.unwrap();

    // The admin's certificate renews under its name; the old one is
    // revoked and, once the server reloads, refused.
    let old_admin = s.dir.path().join("old-admin.pem");
    std::fs::copy(&tls.client_cert, &old_admin).unwrap();
    std::fs::copy(&tls.client_key, old_admin.with_extension("key")).unwrap();
    let (admin_before, _) = pki::read_cert_info(&tls.client_cert).unwrap();
    let out = s.cli(&["cert", "renew-admin", "--days", "30"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let (admin, _) = pki::read_cert_info(&tls.client_cert).unwrap();
    assert_eq!(admin.subject, admin_before.subject);
    assert_ne!(admin.serial, admin_before.serial);
    assert!(
        out.stdout.contains(&format!(
            "revoked serial {} (superseded)",
            admin_before.serial
        )),
        "{}",
        out.stdout
    );
    handshake(s.addr, &tls.ca_cert, &old_admin).await.unwrap();
    s.reloader.reload().unwrap();
    let refused = handshake(s.addr, &tls.ca_cert, &old_admin)
        .await
        .unwrap_err();
    assert!(refused.contains("CertificateRevoked"), "{refused}");
    ping(&mut s.client().await).await.unwrap();

    // Nothing outlasts the CA that signs it.
    for e in [
        pki::renew_server_cert(&tls, &[], pki::MAX_DAYS)
            .unwrap_err()
            .to_string(),
        docket::tls::issue_client_cert(&tls, "long", &s.dir.path().join("c"), pki::MAX_DAYS, false)
            .unwrap_err()
            .to_string(),
    ] {
        assert!(e.contains("would outlast the CA"), "{e}");
    }
    assert_eq!(pki::read_cert_info(&tls.server_cert).unwrap().0, renewed);

    // An expired server certificate: the reload is refused and the running
    // configuration stays; a new server does not start on it.
    pki::issue_server_cert(&tls, &[], (now - 10 * 86_400, now - 86_400)).unwrap();
    let e = s.reloader.reload().unwrap_err().to_string();
    assert!(e.contains("the server certificate expired at"), "{e}");
    assert_eq!(presented_serial(&s).await, renewed.serial);
    let e = docket::server::Server::bind(
        "127.0.0.1:0",
        s.svc.clone(),
        docket::server::Transport::dev_mtls(&s.data).unwrap(),
    )
    .await
    .err()
    .expect("a server with an expired certificate does not start")
    .to_string();
    assert!(
        e.contains("expired at") && e.contains("docket cert renew-server"),
        "{e}"
    );
    s.stop().await;
}

/// An evidence export under way when its caller's certificate is revoked
/// stops handing over the bundle once the server has reloaded: the client
/// reads what was already in flight (checked before the revocation: at most
/// its 2 MiB receive window, one chunk h2 holds and one tonic has encoded),
/// then the refusal, and the rest of the bundle never leaves. With and
/// without progress reports (which send the bundle from a task of their
/// own).
#[tokio::test]
async fn an_export_under_way_ends_when_its_certificate_is_revoked() {
    use docket::event::{Body, Event, PrincipalId};
    use futures::StreamExt as _;
    let s = server()
        .with_access(
            r#"{"identities": {"CN=docket-admin": ["*"], "CN=auditor": ["ExportEvidence"], "CN=auditor2": ["ExportEvidence"]}}"#,
        )
        .run()
        .await;
    let admin = s.admin_key();
    // 600 notes of 16 KiB, the most a note may say: a bundle of more than
    // eight 1 MiB chunks.
    let notes: Vec<_> = (0..600)
        .map(|n| {
            let ev = Event {
                event_id: format!("big-{n}"),
                claimed_time_nanos: crate::common::now_nanos(),
                signer: PrincipalId::parse("admin").unwrap(),
                body: Body::Annotation {
                    subject: "repo/app".into(),
                    kind: "note".into(),
                    text: "x".repeat(16 << 10),
                    attributes: Default::default(),
                },
            };
            crate::common::signed(&ev, &admin)
        })
        .collect();
    let receipts: Vec<_> = s
        .client()
        .await
        .append_stream(futures::stream::iter(notes))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().result)
        .collect()
        .await;
    assert_eq!(receipts.len(), 600);
    assert!(
        receipts
            .iter()
            .all(|r| matches!(r, Some(pb::append_stream_response::Result::Receipt(_))))
    );
    let to = crate::common::now_nanos() + 3_600_000_000_000;
    let export = |progress| pb::ExportEvidenceRequest {
        scope: Some(pb::export_evidence_request::Scope::Period(
            pb::PeriodScope {
                from_unix_nanos: 1,
                to_unix_nanos: to,
                ..Default::default()
            },
        )),
        progress,
        complete: false,
        since_checkpoint: String::new(),
    };
    let tls = s.data.tls();
    let clients = s.dir.path().join("clients");
    let mut streams = Vec::new();
    for (cn, progress) in [("auditor", false), ("auditor2", true)] {
        let mut g = s.conn_as(cn).governance().await.unwrap();
        let mut stream = g
            .export_evidence(export(progress))
            .await
            .unwrap()
            .into_inner();
        // Read up to the bundle's first bytes.
        let first = loop {
            let c = stream.message().await.unwrap().expect("a chunk");
            if !c.data.is_empty() {
                break c;
            }
        };
        assert_eq!(first.offset, 0);
        assert!(
            first.total_bytes > 8 << 20,
            "a bundle of {} bytes",
            first.total_bytes
        );
        streams.push((cn, g, stream, first));
    }
    for (cn, ..) in &streams {
        pki::revoke(&tls, &clients.join(format!("{cn}.pem")), "key-compromise").unwrap();
    }
    s.reloader.reload().unwrap();
    for (cn, _g, mut stream, first) in streams {
        let mut received = first.data.len() as u64;
        let mut after = 0;
        let refusal = loop {
            match stream.message().await {
                Ok(Some(c)) => {
                    assert_eq!(c.offset, received, "{cn}");
                    received += c.data.len() as u64;
                    after += 1;
                }
                Ok(None) => panic!("{cn}: the whole bundle ({received} bytes) was sent"),
                Err(e) => break e,
            }
        };
        assert!(after <= 4, "{cn}: {after} chunks after the revocation");
        assert!(received < first.total_bytes, "{cn}");
        assert_eq!(
            refusal.code(),
            tonic::Code::Unauthenticated,
            "{cn}: {refusal}"
        );
        assert!(refusal.message().contains("is revoked"), "{cn}: {refusal}");
        assert!(stream.message().await.is_err() || stream.message().await.unwrap().is_none());
    }
    s.stop().await;
}
