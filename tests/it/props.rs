//! Property tests: for any sequence of appends, every receipt and proof
//! verifies and replaying the log reproduces the live state byte for byte.

use docket::api::convert::sign_event;
use docket::cli::commands::{RebuildOutcome, rebuild_compare};
use docket::crypto::NoteSigner;
use docket::event::{Body, Event, PrincipalId, PrincipalKind, PrincipalSpec};
use docket::ledger::merkle;
use docket::service::{Config, Service};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

use crate::common::now_nanos;

#[derive(Debug, Clone)]
enum Op {
    Note { signer: usize },
    Register { who: usize },
    Rotate { who: usize },
    Revoke { who: usize },
    Duplicate { back: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize).prop_map(|signer| Op::Note { signer }),
        2 => (0..4usize).prop_map(|who| Op::Register { who }),
        1 => (0..4usize).prop_map(|who| Op::Rotate { who }),
        1 => (0..4usize).prop_map(|who| Op::Revoke { who }),
        1 => (0..8usize).prop_map(|back| Op::Duplicate { back }),
    ]
}

fn id(i: usize) -> PrincipalId {
    PrincipalId::parse(&format!("user{i}")).unwrap()
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let admin = SigningKey::from_bytes(&[200; 32]);
    let log_key = SigningKey::from_bytes(&[201; 32]);
    let signer = NoteSigner::new("prop/log", log_key.clone());
    let store = crate::common::memory_log("prop/log", &admin, &log_key);
    let svc = Service::open(store.clone(), signer, Config::default()).unwrap();
    let verifier = svc.verifier().clone();
    // Each user's keys: derived deterministically; `generation[i]` counts rotations.
    let mut generation = [0u8; 4];
    let key = |i: usize, g: u8| SigningKey::from_bytes(&[(i as u8) * 16 + g + 1; 32]);
    let mut sent = Vec::new();
    let mut accepted = Vec::new();
    for (n, op) in ops.into_iter().enumerate() {
        let now = now_nanos();
        let (ev, k) = match op {
            Op::Note { signer } => (
                Event {
                    event_id: format!("op{n}"),
                    claimed_time_nanos: now,
                    signer: id(signer),
                    body: Body::Annotation {
                        subject: "s".into(),
                        kind: String::new(),
                        text: String::new(),
                        attributes: Default::default(),
                    },
                },
                key(signer, generation[signer]),
            ),
            Op::Register { who } => (
                Event {
                    event_id: format!("op{n}"),
                    claimed_time_nanos: now,
                    signer: PrincipalId::parse("admin").unwrap(),
                    body: Body::PrincipalRegistered(PrincipalSpec {
                        id: id(who),
                        kind: PrincipalKind::Service,
                        display_name: String::new(),
                        roles: Default::default(),
                        keys: vec![key(who, generation[who]).verifying_key()],
                        emails: Default::default(),
                    }),
                },
                admin.clone(),
            ),
            Op::Rotate { who } => {
                let old = key(who, generation[who]);
                let new = key(who, generation[who] + 1);
                (
                    Event {
                        event_id: format!("op{n}"),
                        claimed_time_nanos: now,
                        signer: id(who),
                        body: Body::KeyRotated {
                            principal: id(who),
                            new_key: new.verifying_key(),
                            old_key: Some(old.verifying_key()),
                        },
                    },
                    old,
                )
            }
            Op::Revoke { who } => (
                Event {
                    event_id: format!("op{n}"),
                    claimed_time_nanos: now,
                    signer: PrincipalId::parse("admin").unwrap(),
                    body: Body::KeyRevoked {
                        principal: id(who),
                        key: key(who, generation[who]).verifying_key(),
                        reason: String::new(),
                    },
                },
                admin.clone(),
            ),
            Op::Duplicate { back } => {
                if sent.is_empty() {
                    continue;
                }
                let (ev, k): &(Event, SigningKey) = &sent[sent.len() - 1 - back % sent.len()];
                (ev.clone(), k.clone())
            }
        };
        let res = svc.append(sign_event(&ev, &k), "CN=prop".into()).await;
        if let Ok(r) = res {
            if let (Op::Rotate { who }, false) = (&op, r.duplicate) {
                generation[*who] += 1;
            }
            accepted.push(r);
        }
        sent.push((ev, k));
    }
    // Every receipt verifies offline, and again against the final tree.
    let size = svc.latest_checkpoint().size;
    let root = svc.latest_checkpoint().root;
    for r in &accepted {
        docket::verify::verify_receipt(
            &r.entry,
            r.index,
            &r.leaf,
            &r.proof,
            &r.checkpoint.note,
            &verifier,
        )
        .map_err(TestCaseError::fail)?;
        let p = svc.reader().inclusion_proof(r.index, size).unwrap();
        prop_assert!(merkle::verify_inclusion(&r.leaf, r.index, size, &p, &root).is_ok());
        if r.checkpoint.size < size {
            let c = svc
                .reader()
                .consistency_proof(r.checkpoint.size, size)
                .unwrap();
            prop_assert!(
                merkle::verify_consistency(r.checkpoint.size, size, &c, &r.checkpoint.root, &root)
                    .is_ok()
            );
        }
    }
    match rebuild_compare(&store).unwrap() {
        RebuildOutcome::Equal { entries, .. } => prop_assert_eq!(entries, size),
        other => return Err(TestCaseError::fail(format!("{other:?}"))),
    }
    prop_assert_eq!(
        docket::verify::verify_store(&*store, Some(&verifier))
            .unwrap()
            .entries,
        size
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn any_append_sequence_keeps_proofs_and_rebuild_exact(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops))?;
    }
}
