//! The load generator's lean HTTP/2 client against a real mutual-TLS
//! server: it must get exactly the replies tonic's client gets, and report
//! gRPC errors with their code and message rather than as replies.

use docket::api::pb;
use docket::cli::h2client::{CallError, H2Client};

use crate::common::server;

const AUTHORIZE: &str = "/docket.v1.Governance/Authorize";

fn request(subject: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        action: "deploy".into(),
        environment: "prod".into(),
        subjects: vec![subject.to_owned()],
        actor: "ci".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_lean_client_gets_the_decision_tonic_gets() {
    let s = server().run().await;
    let req = request(&format!("sha256:{}", "a".repeat(64)));
    let want = s
        .conn()
        .governance()
        .await
        .unwrap()
        .authorize(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(want.verdict, pb::Verdict::Deny as i32, "{want:?}");
    assert!(!want.reasons.is_empty(), "{want:?}");
    let lean = H2Client::connect(&s.conn()).await.unwrap();
    // Everything but the time the decision was made for.
    let same = |mut got: pb::Decision| {
        assert!(got.at_unix_nanos >= want.at_unix_nanos, "{got:?}");
        got.at_unix_nanos = want.at_unix_nanos;
        assert_eq!(got, want);
    };
    same(lean.unary(AUTHORIZE, &req).await.unwrap());
    // Concurrent calls share the one connection, each on its own stream.
    let calls = (0..32).map(|_| {
        let (lean, req) = (lean.clone(), req.clone());
        async move { lean.unary::<_, pb::Decision>(AUTHORIZE, &req).await }
    });
    for got in futures::future::join_all(calls).await {
        same(got.unwrap());
    }
}

#[tokio::test]
async fn the_lean_client_reports_grpc_errors_with_code_and_message() {
    let s = server().run().await;
    let lean = H2Client::connect(&s.conn()).await.unwrap();
    let status = |r: Result<pb::Decision, CallError>| match r {
        Err(CallError::Status { code, message }) => (code, message),
        other => panic!("expected a gRPC status, got {other:?}"),
    };

    let (code, message) = status(lean.unary(AUTHORIZE, &request("sha256:not-hex")).await);
    assert_eq!(code, "3", "INVALID_ARGUMENT: {message}");
    assert!(message.contains("sha256:not-hex"), "{message}");

    let (code, _) = status(
        lean.unary("/docket.v1.Governance/NoSuchMethod", &request("x"))
            .await,
    );
    assert_eq!(code, "12", "UNIMPLEMENTED");

    // A certificate from the server's CA whose identity access.json does not
    // name: refused by the same guard as tonic's calls.
    let nobody = H2Client::connect(&s.conn_as("nobody")).await.unwrap();
    let (code, message) = status(
        nobody
            .unary(AUTHORIZE, &request(&format!("sha256:{}", "a".repeat(64))))
            .await,
    );
    assert_eq!(code, "7", "PERMISSION_DENIED: {message}");
    assert!(message.contains("Authorize"), "{message}");

    // The connection still serves calls after the errors.
    let ok: Result<pb::Decision, _> = lean
        .unary(AUTHORIZE, &request(&format!("sha256:{}", "b".repeat(64))))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

/// A caller whose certificate may not call `Append` is refused on the call's
/// headers: the server answers before the message has arrived, so it never
/// buffers the 4 MiB this client announces and holds back. (Were the check
/// made after tonic read the message, no answer would come until the client
/// sent the rest, and the timeout below would fail the test.) A caller who
/// may call it gets no answer until the message is complete.
#[tokio::test]
async fn a_caller_without_access_is_refused_before_its_message_is_read() {
    use std::sync::Arc;
    use std::time::Duration;

    let s = server().run().await;
    // A raw HTTP/2 stream: headers, then only the first KiB of a message
    // whose gRPC prefix announces 4 MiB, and the stream left open.
    async fn start(conn: docket::cli::client::Conn) -> h2::client::ResponseFuture {
        let authority = conn.url.strip_prefix("https://").unwrap().to_owned();
        let cfg = docket::tls::client_config(&conn.ca, &conn.cert, &conn.key).unwrap();
        let tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
        let host = authority.rsplit_once(':').unwrap().0.to_owned();
        let name = rustls::pki_types::ServerName::try_from(host).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        let (send, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(connection);
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("https://{authority}/docket.v1.Ledger/Append"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())
            .unwrap();
        let mut send = send.ready().await.unwrap();
        let (response, mut stream) = send.send_request(request, false).unwrap();
        let mut part = vec![0u8];
        part.extend_from_slice(&(4u32 << 20).to_be_bytes());
        part.extend_from_slice(&[0x0a; 1024]);
        stream.send_data(part.into(), false).unwrap();
        // Kept open (never ended) for as long as the response is awaited.
        std::mem::forget(stream);
        response
    }

    let refused = tokio::time::timeout(Duration::from_secs(30), start(s.conn_as("nobody")).await)
        .await
        .expect("no answer before the message was complete: the body was waited for")
        .unwrap();
    assert_eq!(refused.status(), http::StatusCode::OK);
    let h = refused.headers();
    assert_eq!(h["grpc-status"], "7", "PERMISSION_DENIED: {h:?}");
    let message = h["grpc-message"].to_str().unwrap();
    assert!(message.contains("Append"), "{message}");

    // The admin may call Append: the server waits for the rest of its
    // message, and has not answered it by the time a refusal sent after it
    // came back.
    let mut waiting = start(s.conn()).await;
    let later = start(s.conn_as("nobody")).await.await.unwrap();
    assert_eq!(later.headers()["grpc-status"], "7");
    assert!(
        futures::FutureExt::now_or_never(&mut waiting).is_none(),
        "the admin's incomplete call was answered"
    );
}
