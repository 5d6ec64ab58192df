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
