//! Appends checked before other appends landed (`Service::check_append`,
//! then others, then `Service::commit_append`): the writer checks them again
//! against the state it writes them into, so what it writes is what replay
//! derives from the log.

use docket::api::convert::sign_event;
use docket::cli::commands::{RebuildOutcome, rebuild_compare};
use docket::crypto::NoteSigner;
use docket::event::{
    Body, ChangeOpening, ChangeReview, Event, PrincipalId, PrincipalKind, PrincipalSpec, RecordId,
};
use docket::service::{AppendError, Config, Service};
use docket::state::AuthError;
use ed25519_dalek::SigningKey;

use crate::common::{digest, memory_log, now_nanos};

const ORIGIN: &str = "race/log";
fn admin() -> SigningKey {
    SigningKey::from_bytes(&[200; 32])
}

fn ev(id: &str, signer: &str, body: Body) -> Event {
    Event {
        event_id: id.into(),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse(signer).unwrap(),
        body,
    }
}

/// A log where admin opened CHG-1 (one digest, for prod) and registered bob,
/// an admin holding `bob_keys`.
async fn log_with_bob(
    bob_keys: &[&SigningKey],
) -> (std::sync::Arc<docket::ledger::SledStore>, Service) {
    let log_key = SigningKey::from_bytes(&[201; 32]);
    let store = memory_log(ORIGIN, &admin(), &log_key);
    let svc = Service::open(
        store.clone(),
        NoteSigner::new(ORIGIN, log_key),
        Config::default(),
    )
    .unwrap();
    let bob = Body::PrincipalRegistered(PrincipalSpec {
        id: PrincipalId::parse("bob").unwrap(),
        kind: PrincipalKind::Human,
        display_name: String::new(),
        roles: ["admin".to_owned()].into(),
        keys: bob_keys.iter().map(|k| k.verifying_key()).collect(),
        emails: Default::default(),
    });
    let change = Body::ChangeOpened(ChangeOpening {
        change_id: RecordId::parse("CHG-1").unwrap(),
        title: String::new(),
        repository: String::new(),
        commits: Default::default(),
        artifact_digests: [digest("app")].into(),
        environments: ["prod".to_owned()].into(),
        ticket: String::new(),
        description: String::new(),
    });
    for e in [ev("bob", "admin", bob), ev("chg", "admin", change)] {
        svc.append(sign_event(&e, &admin()), "CN=test".into())
            .await
            .unwrap();
    }
    (store, svc)
}

fn review_by_bob() -> Event {
    ev(
        "review",
        "bob",
        Body::ChangeReviewed(ChangeReview {
            change_id: RecordId::parse("CHG-1").unwrap(),
            seen_subjects: [digest("app")].into(),
            approve: true,
            comment: String::new(),
            revision: None,
        }),
    )
}

fn assert_rebuild_equal(store: &std::sync::Arc<docket::ledger::SledStore>, size: u64) {
    match rebuild_compare(store).unwrap() {
        RebuildOutcome::Equal { entries, .. } => assert_eq!(entries, size),
        other => panic!("the live state is not what replay derives: {other:?}"),
    }
}

/// The review carries two signatures: first one by a key bob adds after the
/// review was checked, then one by the key he held. Replay tries the keys
/// the signer holds at the entry, signature by signature, so it finds the
/// added key first; the review must keep that one, not the one its check
/// found, or the live state and a rebuild disagree about who signed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_added_after_a_review_was_checked_is_the_key_the_review_keeps() {
    let held = SigningKey::from_bytes(&[1; 32]);
    let added = SigningKey::from_bytes(&[2; 32]);
    let (store, svc) = log_with_bob(&[&held]).await;
    let review = review_by_bob();
    let mut envelope = sign_event(&review, &added);
    envelope
        .signatures
        .extend(sign_event(&review, &held).signatures);
    let checked = svc.check_append(envelope, "CN=test".into()).await.unwrap();

    let add_key = Body::KeyRotated {
        principal: PrincipalId::parse("bob").unwrap(),
        new_key: added.verifying_key(),
        old_key: None,
    };
    svc.append(
        sign_event(&ev("add", "bob", add_key), &held),
        "CN=test".into(),
    )
    .await
    .unwrap();
    let receipt = svc.commit_append(checked).await.unwrap();

    assert!(!receipt.duplicate);
    let kept = svc.with_state(|s| s.gov().change("CHG-1").unwrap().reviews[0].key);
    assert_eq!(
        kept,
        added.verifying_key().to_bytes(),
        "the review keeps the key replay finds first"
    );
    assert_rebuild_equal(&store, receipt.index + 1);
}

/// A review checked while its key was current, written after bob revoked
/// that key with his other one (the count of his keys is unchanged, so
/// nothing is authenticated again): refused, naming the revocation, and
/// nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_after_a_review_was_checked_refuses_the_review() {
    let held = SigningKey::from_bytes(&[1; 32]);
    let spare = SigningKey::from_bytes(&[3; 32]);
    let (store, svc) = log_with_bob(&[&held, &spare]).await;
    let checked = svc
        .check_append(sign_event(&review_by_bob(), &held), "CN=test".into())
        .await
        .unwrap();

    let revoke = Body::KeyRevoked {
        principal: PrincipalId::parse("bob").unwrap(),
        key: held.verifying_key(),
        reason: "laptop lost".into(),
    };
    let revoked = svc
        .append(
            sign_event(&ev("revoke", "bob", revoke), &spare),
            "CN=test".into(),
        )
        .await
        .unwrap();
    match svc.commit_append(checked).await {
        Err(AppendError::Auth(AuthError::RevokedKey { revoked_at, .. })) => {
            assert_eq!(revoked_at, revoked.index)
        }
        other => panic!("expected a refusal for the revoked key, got {other:?}"),
    }
    let size = svc.latest_checkpoint().size;
    assert_eq!(
        size,
        revoked.index + 1,
        "the refused review was not written"
    );
    assert!(svc.with_state(|s| s.gov().change("CHG-1").unwrap().reviews.is_empty()));
    assert_rebuild_equal(&store, size);
}
