//! Append, receipts, proofs, tail, identity events and refusals over mTLS.

use docket::api::convert::{envelope_to_pb, sign_event};
use docket::api::pb;
use docket::cli::client::Conn;
use docket::event::{Body, Event, PrincipalId, PrincipalKind, PrincipalSpec};
use docket::ledger::merkle;
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use tonic::Code;

use crate::common::{mth, note, now_nanos, server, signed, signed_bytes};

fn hashes(v: &[Vec<u8>]) -> Vec<[u8; 32]> {
    v.iter().map(|h| h.as_slice().try_into().unwrap()).collect()
}

#[tokio::test]
async fn append_receipt_verifies_offline() {
    let s = server().run().await;
    let mut c = s.client().await;
    let admin = s.admin_key();
    let r = c
        .append(signed(&note("e-1", "admin"), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.index, 1, "entry 0 is genesis");
    assert!(!r.duplicate);
    let proof = r.inclusion_proof.unwrap();
    let cp = r.checkpoint.unwrap();
    // Checked with nothing but the receipt and the log's verifier key file.
    let checked = docket::verify::verify_receipt(
        &r.entry,
        r.index,
        &r.leaf_hash.clone().try_into().unwrap(),
        &hashes(&proof.hashes),
        &cp.note,
        &s.verifier(),
    )
    .unwrap();
    assert_eq!(checked.size, 2);
    assert!(cp.note.starts_with("docket.test/log\n2\n"));
    // The entry records who sent it over mTLS.
    let entry = docket::ledger::Entry::decode(&r.entry).unwrap();
    assert_eq!(entry.transport_identity, "CN=docket-admin");
    // A tampered receipt does not verify.
    let mut bad_entry = r.entry.clone();
    let last = bad_entry.len() - 1;
    bad_entry[last] ^= 1;
    assert!(
        docket::verify::verify_receipt(
            &bad_entry,
            r.index,
            &r.leaf_hash.clone().try_into().unwrap(),
            &hashes(&proof.hashes),
            &cp.note,
            &s.verifier()
        )
        .is_err()
    );
}

#[tokio::test]
async fn inclusion_and_consistency_proofs_for_many_sizes() {
    let s = server().run().await;
    let mut c = s.client().await;
    let admin = s.admin_key();
    let reqs: Vec<_> = (0..40)
        .map(|i| signed(&note(&format!("p-{i}"), "admin"), &admin))
        .collect();
    let mut out = c
        .append_stream(futures::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(r) = out.message().await.unwrap() {
        assert!(
            matches!(
                r.result,
                Some(pb::append_stream_response::Result::Receipt(_))
            ),
            "{r:?}"
        );
        seqs.push(r.sequence);
    }
    assert_eq!(
        seqs,
        (0..40).collect::<Vec<_>>(),
        "responses keep request order"
    );
    let n = s.size().await;
    assert_eq!(n, 41);
    // Leaves computed by the test from the entry bytes, not taken from the server.
    let mut leaves = Vec::new();
    for i in 0..n {
        let e = c
            .get_entry(pb::GetEntryRequest { index: i })
            .await
            .unwrap()
            .into_inner();
        leaves.push(merkle::leaf_hash(&e.entry));
        assert_eq!(e.leaf_hash, leaves[i as usize].to_vec());
    }
    let cp = c
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cp.root_hash, mth(&leaves).to_vec());
    for size in 1..=n {
        let root = mth(&leaves[..size as usize]);
        for index in [0, size / 2, size - 1] {
            let p = c
                .get_inclusion_proof(pb::InclusionProofRequest {
                    index,
                    tree_size: size,
                })
                .await
                .unwrap()
                .into_inner();
            merkle::verify_inclusion(
                &leaves[index as usize],
                index,
                size,
                &hashes(&p.hashes),
                &root,
            )
            .unwrap_or_else(|e| panic!("inclusion {index} in {size}: {e}"));
        }
        for new in [size, (size + 7).min(n), n] {
            let p = c
                .get_consistency_proof(pb::ConsistencyProofRequest {
                    old_size: size,
                    new_size: new,
                })
                .await
                .unwrap()
                .into_inner();
            merkle::verify_consistency(
                size,
                new,
                &hashes(&p.hashes),
                &root,
                &mth(&leaves[..new as usize]),
            )
            .unwrap_or_else(|e| panic!("consistency {size} -> {new}: {e}"));
        }
    }
    let err = c
        .get_inclusion_proof(pb::InclusionProofRequest {
            index: 0,
            tree_size: n + 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("tree_size"), "{}", err.message());
}

#[tokio::test]
async fn tail_delivers_in_order_and_follows() {
    let s = server().run().await;
    let mut c = s.client().await;
    let admin = s.admin_key();
    for i in 0..5 {
        c.append(signed(&note(&format!("t-{i}"), "admin"), &admin))
            .await
            .unwrap();
    }
    let mut tail = c
        .tail(pb::TailRequest {
            from_index: 2,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut writer = s.client().await;
    let appender = tokio::spawn(async move {
        for i in 5..25 {
            writer
                .append(signed(&note(&format!("t-{i}"), "admin"), &admin))
                .await
                .unwrap();
        }
    });
    let mut expect = 2u64;
    while expect < 26 {
        let e = tail
            .message()
            .await
            .unwrap()
            .expect("stream stays open while following");
        assert_eq!(e.index, expect);
        let entry = docket::ledger::Entry::decode(&e.entry).unwrap();
        assert_eq!(entry.index, expect);
        expect += 1;
    }
    appender.await.unwrap();
    // Without follow the stream ends at the current size.
    let all: Vec<_> = c
        .tail(pb::TailRequest {
            from_index: 0,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(all.len(), 26);
    // From the end: nothing without follow; past it, a refusal naming the
    // field, with or without follow (it used to wait for ever).
    let none: Vec<_> = c
        .tail(pb::TailRequest {
            from_index: 26,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert!(none.is_empty());
    for follow in [false, true] {
        let e = c
            .tail(pb::TailRequest {
                from_index: u64::MAX,
                follow,
            })
            .await
            .expect_err("past the end");
        assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
        assert!(
            e.message().starts_with(&format!(
                "from_index: {} is beyond the end of the log, which has 26 entries",
                u64::MAX
            )),
            "{}",
            e.message()
        );
    }
}

/// Following `Tail` streams hold a task and a backlog each, so the server
/// keeps at most `MAX_TAIL_STREAMS` open; one more is refused with a reason,
/// and a client that goes away frees its slot.
#[tokio::test]
async fn tail_streams_are_capped_and_freed() {
    use docket::api::MAX_TAIL_STREAMS;
    let s = server().run().await;
    let mut c = s.client().await;
    let follow = pb::TailRequest {
        from_index: 1,
        follow: true,
    };
    let mut open = Vec::new();
    for _ in 0..MAX_TAIL_STREAMS {
        open.push(c.tail(follow).await.unwrap().into_inner());
    }
    let refused = c.tail(follow).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains(&format!("{MAX_TAIL_STREAMS} Tail streams are open")),
        "{}",
        refused.message()
    );
    // Every open stream still follows.
    c.append(signed(&note("after-cap", "admin"), &s.admin_key()))
        .await
        .unwrap();
    for t in &mut open {
        assert_eq!(t.message().await.unwrap().unwrap().index, 1);
    }
    // One client goes away: its slot comes back (the server notices the
    // closed stream; each try is a round trip, no timer).
    open.pop();
    let mut tries = 0;
    let again = loop {
        tries += 1;
        match c.tail(follow).await {
            Ok(t) => break t,
            Err(e) if e.code() == Code::ResourceExhausted && tries < 10_000 => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("after {tries} tries: {e}"),
        }
    };
    drop(again);
}

pub async fn expect_refused(
    s: &crate::common::TestServer,
    req: pb::AppendRequest,
    code: Code,
    needle: &str,
) {
    let before = s.size().await;
    let mut c = s.client().await;
    let err = c.append(req).await.expect_err("append must be refused");
    assert_eq!(err.code(), code, "{}", err.message());
    assert!(
        err.message().contains(needle),
        "message {:?} lacks {needle:?}",
        err.message()
    );
    assert_eq!(s.size().await, before, "log changed after a refused append");
}

fn register(id: &str, key: &SigningKey, roles: &[&str]) -> Event {
    Event {
        event_id: format!("register-{id}"),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse("admin").unwrap(),
        body: Body::PrincipalRegistered(PrincipalSpec {
            id: PrincipalId::parse(id).unwrap(),
            kind: PrincipalKind::Human,
            display_name: id.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            keys: vec![key.verifying_key()],
            emails: Default::default(),
        }),
    }
}

#[tokio::test]
async fn bad_input_is_refused_with_a_clear_status_and_the_log_unchanged() {
    let s = server().with_max_payload(4096).run().await;
    let admin = s.admin_key();
    let mut c = s.client().await;

    // A key whose bytes encode y + p: dalek reads it, RFC 8032 does not.
    let non_canonical = (2u8..19)
        .find_map(|small| {
            let mut enc = [0xffu8; 32];
            enc[31] = 0x7f;
            enc[0] = 0xed + small;
            ed25519_dalek::VerifyingKey::from_bytes(&enc)
                .ok()
                .filter(|k| !k.is_weak())
        })
        .unwrap();
    let mut ev = register("odd-key", &admin, &[]);
    if let Body::PrincipalRegistered(p) = &mut ev.body {
        p.keys = vec![non_canonical];
    }
    expect_refused(
        &s,
        signed(&ev, &admin),
        Code::InvalidArgument,
        "principal_registered.principal.public_keys: public key is not the canonical encoding",
    )
    .await;

    // Bad signature.
    let mut req = signed(&note("bad-sig", "admin"), &admin);
    req.envelope.as_mut().unwrap().signatures[0].sig[5] ^= 0x40;
    expect_refused(&s, req, Code::Unauthenticated, "no signature verifies").await;

    // Unknown signer.
    let stranger = SigningKey::from_bytes(&[42; 32]);
    expect_refused(
        &s,
        signed(&note("unknown", "mallory"), &stranger),
        Code::Unauthenticated,
        "\"mallory\" is not a registered principal",
    )
    .await;

    // A validly signed payload with a field this version does not define
    // (29 is reserved for a future body): prost would skip it, and a later
    // version could read the same signed bytes as another event.
    let mut payload = docket::api::convert::encode_event(&note("future", "admin"));
    payload.extend([0xe8, 0x01, 0x01]); // field 29, varint 1
    let req = signed_bytes(payload, &admin);
    expect_refused(
        &s,
        req,
        Code::InvalidArgument,
        "payload: has field number 29, which docket.v1.Event does not define",
    )
    .await;

    // Wrong payload type.
    let mut req = signed(&note("ptype", "admin"), &admin);
    req.envelope.as_mut().unwrap().payload_type = "application/json".into();
    expect_refused(&s, req, Code::InvalidArgument, "payload_type").await;

    // Oversized payload.
    let mut big = note("big", "admin");
    if let Body::Annotation { text, .. } = &mut big.body {
        *text = "x".repeat(5000);
    }
    expect_refused(
        &s,
        signed(&big, &admin),
        Code::ResourceExhausted,
        "envelope.payload is",
    )
    .await;

    // Malformed protobuf, correctly signed.
    let payload = vec![0x0a, 0xff, 0xff, 0xff];
    let req = signed_bytes(payload, &admin);
    expect_refused(
        &s,
        req,
        Code::InvalidArgument,
        "not a docket.v1.Event protobuf",
    )
    .await;

    // Future timestamp.
    let mut future = note("future", "admin");
    future.claimed_time_nanos = now_nanos() + 3_600_000_000_000;
    expect_refused(
        &s,
        signed(&future, &admin),
        Code::InvalidArgument,
        "claimed_time_unix_nanos is 3",
    )
    .await;

    // No signatures at all.
    let mut req = signed(&note("nosig", "admin"), &admin);
    req.envelope.as_mut().unwrap().signatures.clear();
    expect_refused(&s, req, Code::InvalidArgument, "envelope.signatures").await;

    // A signature too long to be one: the field, its size and the limit.
    let mut req = signed(&note("longsig", "admin"), &admin);
    req.envelope.as_mut().unwrap().signatures[0].sig = vec![7; 2000];
    expect_refused(
        &s,
        req,
        Code::InvalidArgument,
        "envelope.signatures: [0].sig is 2000 bytes; at most 1024",
    )
    .await;

    // A second genesis.
    let genesis_again = Event {
        event_id: "genesis-2".into(),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse("admin").unwrap(),
        body: Body::Genesis(docket::event::Genesis {
            origin: "x".into(),
            log_key: admin.verifying_key(),
            administrators: vec![],
            policy: None,
        }),
    };
    let env = sign_event(&genesis_again, &admin);
    let req = pb::AppendRequest {
        envelope: Some(envelope_to_pb(&env)),
    };
    expect_refused(&s, req, Code::InvalidArgument, "genesis.administrators").await;

    // Duplicate event_id: identical bytes return the original receipt...
    let original = signed(&note("dup", "admin"), &admin);
    let first = c.append(original.clone()).await.unwrap().into_inner();
    c.append(signed(&note("after-dup", "admin"), &admin))
        .await
        .unwrap();
    let again = c.append(original).await.unwrap().into_inner();
    assert!(again.duplicate);
    // The whole original receipt: same proof against the same checkpoint.
    assert_eq!(
        pb::Receipt {
            duplicate: false,
            ..again
        },
        first
    );
    // ...different bytes under the same id are refused.
    let mut other = note("dup", "admin");
    other.claimed_time_nanos += 1;
    expect_refused(
        &s,
        signed(&other, &admin),
        Code::AlreadyExists,
        "event_id \"dup\" already names entry",
    )
    .await;
}

#[tokio::test]
async fn identity_events_register_rotate_and_revoke() {
    let s = server().run().await;
    let admin = s.admin_key();
    let mut c = s.client().await;
    let bob1 = SigningKey::from_bytes(&[1; 32]);
    let bob2 = SigningKey::from_bytes(&[2; 32]);
    c.append(signed(&register("bob", &bob1, &["dev"]), &admin))
        .await
        .unwrap();
    c.append(signed(&note("bob-1", "bob"), &bob1))
        .await
        .unwrap();

    // bob is not an admin: he cannot register others.
    let carol = SigningKey::from_bytes(&[3; 32]);
    let mut reg = register("carol", &carol, &[]);
    reg.signer = PrincipalId::parse("bob").unwrap();
    expect_refused(
        &s,
        signed(&reg, &bob1),
        Code::FailedPrecondition,
        "\"bob\" may not register principals",
    )
    .await;

    // bob rotates his own key; the old one stops working.
    let rotate = Event {
        event_id: "bob-rotate".into(),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse("bob").unwrap(),
        body: Body::KeyRotated {
            principal: PrincipalId::parse("bob").unwrap(),
            new_key: bob2.verifying_key(),
            old_key: Some(bob1.verifying_key()),
        },
    };
    let rot = c.append(signed(&rotate, &bob1)).await.unwrap().into_inner();
    expect_refused(
        &s,
        signed(&note("bob-old", "bob"), &bob1),
        Code::Unauthenticated,
        &format!("was revoked at entry {}", rot.index),
    )
    .await;
    c.append(signed(&note("bob-new", "bob"), &bob2))
        .await
        .unwrap();

    // The admin revokes bob's new key.
    let revoke = Event {
        event_id: "bob-revoke".into(),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse("admin").unwrap(),
        body: Body::KeyRevoked {
            principal: PrincipalId::parse("bob").unwrap(),
            key: bob2.verifying_key(),
            reason: "left the company".into(),
        },
    };
    c.append(signed(&revoke, &admin)).await.unwrap();
    expect_refused(
        &s,
        signed(&note("bob-gone", "bob"), &bob2),
        Code::Unauthenticated,
        "revoked",
    )
    .await;

    // The only admin cannot lock everyone out.
    let lockout = Event {
        event_id: "admin-revoke".into(),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse("admin").unwrap(),
        body: Body::KeyRevoked {
            principal: PrincipalId::parse("admin").unwrap(),
            key: admin.verifying_key(),
            reason: String::new(),
        },
    };
    expect_refused(
        &s,
        signed(&lockout, &admin),
        Code::FailedPrecondition,
        "would leave no principal with an active key holding `register_principals`",
    )
    .await;

    let p = c
        .get_principal(pb::GetPrincipalRequest { id: "bob".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.keys.len(), 2);
    assert!(p.keys.iter().all(|k| k.revoked));
    assert_eq!(p.roles, vec!["dev".to_string()]);

    // Replaying the log from genesis reproduces the live state byte for byte.
    let outcome = docket::cli::commands::rebuild_compare(s.svc.reader().store()).unwrap();
    assert!(
        matches!(
            outcome,
            docket::cli::commands::RebuildOutcome::Equal { entries: 6, .. }
        ),
        "{outcome:?}"
    );
}

/// A commit's verified signer identity may be a principal id or an
/// e-mail, so new entries may not make one string both: an id that is
/// someone's e-mail, or an e-mail that is someone else's id.
#[tokio::test]
async fn an_id_and_an_email_of_two_principals_may_not_be_equal() {
    let s = server().run().await;
    let admin = s.admin_key();
    let mut c = s.client().await;
    let with_emails = |id: &str, k: u8, emails: &[&str]| {
        let mut ev = register(id, &SigningKey::from_bytes(&[k; 32]), &["dev"]);
        if let Body::PrincipalRegistered(p) = &mut ev.body {
            p.emails = emails.iter().map(|e| e.to_string()).collect();
        }
        ev
    };
    c.append(signed(&with_emails("erin@example.com", 1, &[]), &admin))
        .await
        .unwrap();
    c.append(signed(&with_emails("bob", 2, &["bob@example.com"]), &admin))
        .await
        .unwrap();
    expect_refused(
        &s,
        signed(&with_emails("carol", 3, &["erin@example.com"]), &admin),
        Code::InvalidArgument,
        "principal_registered.principal.emails: \"erin@example.com\" is the id of another principal",
    )
    .await;
    expect_refused(
        &s,
        signed(&with_emails("bob@example.com", 4, &[]), &admin),
        Code::InvalidArgument,
        "principal_registered.principal.id: \"bob@example.com\" is an e-mail of principal bob",
    )
    .await;
    let add = |email: &str| Event {
        event_id: format!("add-{email}"),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse("admin").unwrap(),
        body: Body::PrincipalUpdated(docket::event::PrincipalUpdate {
            principal: PrincipalId::parse("bob").unwrap(),
            grant_roles: Default::default(),
            revoke_roles: Default::default(),
            add_emails: [email.to_string()].into(),
            remove_emails: Default::default(),
            reason: String::new(),
        }),
    };
    expect_refused(
        &s,
        signed(&add("erin@example.com"), &admin),
        Code::InvalidArgument,
        "principal_updated.add_emails: \"erin@example.com\" is the id of another principal",
    )
    .await;
    // A principal's own id as its e-mail names no one else.
    c.append(signed(
        &with_emails("dave@example.com", 5, &["dave@example.com"]),
        &admin,
    ))
    .await
    .unwrap();
    c.append(signed(&add("bob@corp.example"), &admin))
        .await
        .unwrap();
}

/// An identity administrator with no active key still counts for the
/// two-person rule but can sign nothing, so the other's identity changes
/// would wait for ever: new entries may not make one, by revoking an
/// administrator's last key or by making a keyless principal one.
#[tokio::test]
async fn no_entry_leaves_an_identity_admin_without_a_key() {
    let s = server().run().await;
    let admin = s.admin_key();
    let mut c = s.client().await;
    let carol = SigningKey::from_bytes(&[3; 32]);
    let root2 = SigningKey::from_bytes(&[4; 32]);
    c.append(signed(&register("carol", &carol, &["dev"]), &admin))
        .await
        .unwrap();
    let revoke = |signer: &str, who: &str, key: &SigningKey| Event {
        event_id: format!("revoke-{who}-by-{signer}"),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse(signer).unwrap(),
        body: Body::KeyRevoked {
            principal: PrincipalId::parse(who).unwrap(),
            key: key.verifying_key(),
            reason: String::new(),
        },
    };
    // Carol, not an administrator, may give up her only key.
    c.append(signed(&revoke("carol", "carol", &carol), &carol))
        .await
        .unwrap();
    // While the admin is the only identity administrator this applies at once.
    c.append(signed(&register("root2", &root2, &["admin"]), &admin))
        .await
        .unwrap();
    expect_refused(
        &s,
        signed(&revoke("admin", "admin", &admin), &admin),
        Code::InvalidArgument,
        "key_revoked.public_key: this is the last active key of admin, an identity administrator",
    )
    .await;
    expect_refused(
        &s,
        signed(&revoke("admin", "root2", &root2), &admin),
        Code::InvalidArgument,
        "this is the last active key of root2",
    )
    .await;
    let grant = Event {
        event_id: "grant-carol".into(),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse("admin").unwrap(),
        body: Body::PrincipalUpdated(docket::event::PrincipalUpdate {
            principal: PrincipalId::parse("carol").unwrap(),
            grant_roles: ["admin".to_string()].into(),
            revoke_roles: Default::default(),
            add_emails: Default::default(),
            remove_emails: Default::default(),
            reason: String::new(),
        }),
    };
    expect_refused(
        &s,
        signed(&grant, &admin),
        Code::InvalidArgument,
        "principal_updated.grant_roles: carol has no active key",
    )
    .await;
    // Nor by way of a waiting change: dave, who has a key when the grant
    // is proposed, gives it up before the second administrator approves.
    let approve = |entry: u64| Event {
        event_id: format!("approve-{entry}"),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse("root2").unwrap(),
        body: Body::IdentityChangeApproved { entry },
    };
    let dave = SigningKey::from_bytes(&[6; 32]);
    let waiting = c
        .append(signed(&register("dave", &dave, &["dev"]), &admin))
        .await
        .unwrap()
        .into_inner()
        .index;
    c.append(signed(&approve(waiting), &root2)).await.unwrap();
    let mut grant_dave = grant.clone();
    grant_dave.event_id = "grant-dave".into();
    if let Body::PrincipalUpdated(u) = &mut grant_dave.body {
        u.principal = PrincipalId::parse("dave").unwrap();
    }
    let waiting = c
        .append(signed(&grant_dave, &admin))
        .await
        .unwrap()
        .into_inner()
        .index;
    c.append(signed(&revoke("dave", "dave", &dave), &dave))
        .await
        .unwrap();
    expect_refused(
        &s,
        signed(&approve(waiting), &root2),
        Code::InvalidArgument,
        &format!(
            "identity_change_approved.entry_index: the identity change at entry {waiting} can no longer take effect: principal_updated.grant_roles: dave has no active key"
        ),
    )
    .await;
    // Rotating to a new key stays possible, and then revoking the old one.
    let admin2 = SigningKey::from_bytes(&[5; 32]);
    c.append(signed(
        &Event {
            event_id: "admin-rotate".into(),
            claimed_time_nanos: now_nanos(),
            signer: PrincipalId::parse("admin").unwrap(),
            body: Body::KeyRotated {
                principal: PrincipalId::parse("admin").unwrap(),
                new_key: admin2.verifying_key(),
                old_key: Some(admin.verifying_key()),
            },
        },
        &admin,
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn clients_without_a_valid_certificate_are_refused() {
    let s = server().run().await;
    let before = s.size().await;
    let admin = s.admin_key();

    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    let pki =
        docket::tls::generate_dev_pki(other.path(), &["localhost".into()], "intruder").unwrap();
    let mut conn = s.conn();
    conn.cert = pki.client_cert.clone();
    conn.key = pki.client_key.clone();
    let foreign = match conn.ledger().await {
        Err(e) => e.message,
        Ok(mut c) => c
            .append(signed(&note("foreign", "admin"), &admin))
            .await
            .expect_err("a foreign certificate must not be able to append")
            .to_string(),
    };
    assert!(
        foreign.contains("transport") || foreign.contains("connect"),
        "{foreign}"
    );

    // No certificate at all.
    let tls = s.data.tls();
    let ep = tonic::transport::Channel::from_shared(format!("https://127.0.0.1:{}", s.addr.port()))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(
                    std::fs::read(&tls.ca_cert).unwrap(),
                ))
                .domain_name("127.0.0.1"),
        )
        .unwrap();
    let refused = match ep.connect().await {
        Err(e) => e.to_string(),
        Ok(ch) => pb::ledger_client::LedgerClient::new(ch)
            .append(signed(&note("anon", "admin"), &admin))
            .await
            .expect_err("a client without a certificate must not be able to append")
            .to_string(),
    };
    assert!(!refused.is_empty());
    assert_eq!(s.size().await, before);

    // Plain HTTP/2 without TLS does not reach the service either.
    let plain = Conn {
        plaintext: true,
        url: format!("http://127.0.0.1:{}", s.addr.port()),
        ..s.conn()
    };
    let r = match plain.ledger().await {
        Err(e) => Err(e.message),
        Ok(mut c) => c
            .ping(pb::PingRequest {})
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    assert!(r.is_err());
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let s = server().run().await;
    let ch = s.conn().channel().await.unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    let resp = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "docket.v1.Ledger".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn reflection_lists_services_in_v1_and_v1alpha() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as ReqV1;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as RespV1;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as ReqAlpha;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as RespAlpha;
    let s = server().run().await;
    let ch = s.conn().channel().await.unwrap();

    let mut v1 =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(ReqV1::ListServices(String::new())),
    };
    let mut out = v1
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(RespV1::ListServicesResponse(list)) =
        out.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"docket.v1.Ledger"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let mut alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(ch);
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(ReqAlpha::ListServices(String::new())),
    };
    let mut out = alpha
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(RespAlpha::ListServicesResponse(list)) =
        out.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    assert!(list.service.iter().any(|s| s.name == "docket.v1.Ledger"));
}

#[tokio::test]
async fn access_json_limits_each_identity_to_its_methods() {
    let s = server()
        .with_access(
            r#"{"identities": {"CN=docket-admin": ["*"], "CN=siem": ["Tail", "GetCheckpoint"]}}"#,
        )
        .run()
        .await;
    let admin = s.admin_key();
    let before = s.size().await;

    let mut siem = s.client_as("siem").await;
    siem.get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .unwrap();
    let err = siem
        .append(signed(&note("siem-1", "admin"), &admin))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("\"CN=siem\" may not call Append"),
        "{}",
        err.message()
    );

    // An identity that access.json does not name may call no method at all.
    let mut nobody = s.client_as("nobody").await;
    let mut refused = Vec::new();
    let mut check = |name: &str, r: Result<(), tonic::Status>| {
        let e = r.expect_err(name);
        assert_eq!(e.code(), Code::PermissionDenied, "{name}: {}", e.message());
        refused.push(name.to_owned());
    };
    check(
        "Append",
        nobody
            .append(signed(&note("n-1", "admin"), &admin))
            .await
            .map(drop),
    );
    check(
        "AppendStream",
        nobody
            .append_stream(futures::stream::iter([signed(
                &note("n-2", "admin"),
                &admin,
            )]))
            .await
            .map(drop),
    );
    check(
        "GetEntry",
        nobody
            .get_entry(pb::GetEntryRequest { index: 0 })
            .await
            .map(drop),
    );
    check(
        "GetCheckpoint",
        nobody
            .get_checkpoint(pb::GetCheckpointRequest {})
            .await
            .map(drop),
    );
    check(
        "GetInclusionProof",
        nobody
            .get_inclusion_proof(pb::InclusionProofRequest {
                index: 0,
                tree_size: 0,
            })
            .await
            .map(drop),
    );
    check(
        "GetConsistencyProof",
        nobody
            .get_consistency_proof(pb::ConsistencyProofRequest {
                old_size: 1,
                new_size: 0,
            })
            .await
            .map(drop),
    );
    check(
        "Tail",
        nobody
            .tail(pb::TailRequest {
                from_index: 0,
                follow: false,
            })
            .await
            .map(drop),
    );
    check(
        "GetPrincipal",
        nobody
            .get_principal(pb::GetPrincipalRequest { id: "admin".into() })
            .await
            .map(drop),
    );
    check("Ping", nobody.ping(pb::PingRequest {}).await.map(drop));
    check(
        "ListPrincipals",
        nobody
            .list_principals(pb::ListPrincipalsRequest {})
            .await
            .map(drop),
    );
    let mut gov = s.conn_as("nobody").governance().await.unwrap();
    check(
        "Authorize",
        gov.authorize(pb::AuthorizeRequest {
            environment: "prod".into(),
            subjects: vec![format!("sha256:{}", "a".repeat(64))],
            actor: "admin".into(),
            ..Default::default()
        })
        .await
        .map(drop),
    );
    check(
        "GetDecision",
        gov.get_decision(pb::GetDecisionRequest { index: 0 })
            .await
            .map(drop),
    );
    check(
        "GetChange",
        gov.get_change(pb::GetChangeRequest {
            change_id: "CHG-1".into(),
        })
        .await
        .map(drop),
    );
    check(
        "GetPolicy",
        gov.get_policy(pb::GetPolicyRequest {}).await.map(drop),
    );
    check(
        "ListObligations",
        gov.list_obligations(pb::ListObligationsRequest::default())
            .await
            .map(drop),
    );
    check(
        "ListViolations",
        gov.list_violations(pb::ListViolationsRequest {})
            .await
            .map(drop),
    );
    check(
        "ExportEvidence",
        gov.export_evidence(pb::ExportEvidenceRequest {
            scope: Some(pb::export_evidence_request::Scope::ChangeId("CHG-1".into())),
            progress: false,
            complete: false,
            since_checkpoint: String::new(),
        })
        .await
        .map(drop),
    );
    // Every method of both services was tried.
    let mut all: Vec<_> = docket::api::access::METHODS
        .iter()
        .map(|m| m.to_string())
        .collect();
    all.sort();
    refused.sort();
    assert_eq!(refused, all);
    assert_eq!(s.size().await, before);
}

#[tokio::test]
async fn shutdown_ends_following_tail_streams_and_drains() {
    let s = server().run().await;
    let mut c = s.client().await;
    let mut tail = c
        .tail(pb::TailRequest {
            from_index: 0,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    // Caught up: the genesis entry arrives, then the stream waits for more.
    assert_eq!(tail.message().await.unwrap().unwrap().index, 0);
    // Stopping the server must not wait for the follower to hang up; the
    // timeout only turns a hang into a failure.
    tokio::time::timeout(std::time::Duration::from_secs(20), s.stop())
        .await
        .expect("the server drained with a Tail follower connected");
    let end = tail.message().await;
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

/// `serve --dangerous-plaintext` is the one way to drop TLS: it serves plain
/// HTTP/2 (through the same backoff-guarded accept loop as mTLS), says so on
/// stdout, and logs a warning.
#[tokio::test]
async fn dangerous_plaintext_serves_without_tls_and_warns() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(crate::common::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--dangerous-plaintext",
            "--data",
        ])
        .arg(dir.path().join("data"))
        .env("DOCKET_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = loop {
        let line = lines.next().expect("server exited before serving").unwrap();
        if line.starts_with("docket serving log ") {
            break line;
        }
    };
    assert!(line.ends_with("WITHOUT TLS (dangerous)"), "{line}");
    let addr = line
        .split(" on ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let plain = Conn {
        url: format!("http://{addr}"),
        plaintext: true,
        ca: "unused".into(),
        cert: "unused".into(),
        key: "unused".into(),
    };
    let mut c = plain.ledger().await.unwrap();
    c.ping(pb::PingRequest {}).await.unwrap();
    let cp = c
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cp.tree_size, 1, "a fresh log holds its genesis entry");
    // The same port does not speak TLS.
    let pki = docket::datadir::DataDir::new(dir.path().join("data")).tls();
    let tls = Conn {
        url: format!("https://{addr}"),
        plaintext: false,
        ca: pki.ca_cert,
        cert: pki.client_cert,
        key: pki.client_key,
    };
    let refused = match tls.ledger().await {
        Err(e) => Err(e.message),
        Ok(mut c) => c
            .ping(pb::PingRequest {})
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
    };
    assert!(refused.is_err());
    child.kill().unwrap();
    child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("WARN") && err.contains("WITHOUT TLS"), "{err}");
}

/// One gRPC message frame: uncompressed, 4-byte big-endian length.
fn grpc_frame(out: &mut Vec<u8>, message: &[u8]) {
    out.push(0);
    out.extend((message.len() as u32).to_be_bytes());
    out.extend(message);
}

/// What a gRPC call sent as raw HTTP/2 got back: the status code, the
/// status message (percent-encoded, as on the wire) and the reply messages.
struct RawReply {
    status: String,
    message: String,
    replies: Vec<Vec<u8>>,
}

/// Sends `frames` (whole gRPC message frames) to `path` over raw HTTP/2 with
/// the admin certificate, since tonic's client only sends what encodes.
async fn raw_grpc(s: &crate::common::TestServer, path: &str, frames: Vec<u8>) -> RawReply {
    let conn = s.conn();
    let cfg = docket::tls::client_config(&conn.ca, &conn.cert, &conn.key).unwrap();
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let (h2, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = h2.send_request(req, false).unwrap();
    send.send_data(frames.into(), true).unwrap();

    let response = response.await.unwrap();
    // A call refused before any reply has its status in the headers.
    if let Some(status) = response.headers().get("grpc-status") {
        return RawReply {
            status: status.to_str().unwrap().to_owned(),
            message: response.headers()["grpc-message"]
                .to_str()
                .unwrap()
                .to_owned(),
            replies: Vec::new(),
        };
    }
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().expect("a gRPC status");
    let mut replies = Vec::new();
    let mut rest = &data[..];
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        replies.push(rest[5..5 + len].to_vec());
        rest = &rest[5 + len..];
    }
    RawReply {
        status: trailers["grpc-status"].to_str().unwrap().to_owned(),
        message: trailers["grpc-message"].to_str().unwrap().to_owned(),
        replies,
    }
}

/// An envelope whose payload_type is not UTF-8.
const BAD_ENVELOPE: &[u8] = b"\x0a\x05\x0a\x03\xff\xfe\xfd";

/// An AppendStream message that is not an AppendRequest ends the stream
/// with INVALID_ARGUMENT naming it, and nothing sent after it is appended
/// (it used to be, sometimes, while the client was told the stream had
/// failed).
#[tokio::test]
async fn append_stream_stops_at_an_unreadable_message() {
    use prost::Message as _;
    let s = server().run().await;
    let admin = s.admin_key();
    let before = s.size().await;
    let mut all = Vec::new();
    grpc_frame(
        &mut all,
        &signed(&note("stream-a", "admin"), &admin).encode_to_vec(),
    );
    grpc_frame(&mut all, BAD_ENVELOPE);
    for id in ["stream-b", "stream-c", "stream-d"] {
        grpc_frame(
            &mut all,
            &signed(&note(id, "admin"), &admin).encode_to_vec(),
        );
    }
    let reply = raw_grpc(&s, "/docket.v1.Ledger/AppendStream", all).await;
    assert_eq!(reply.status, "3", "{}", reply.message); // INVALID_ARGUMENT
    assert!(
        reply.message.contains("message%201") && reply.message.contains("Envelope.payload_type"),
        "{}",
        reply.message
    );
    // One reply, the receipt of the first message.
    assert_eq!(reply.replies.len(), 1);
    let first = pb::AppendStreamResponse::decode(&reply.replies[0][..]).unwrap();
    assert!(matches!(
        first.result,
        Some(pb::append_stream_response::Result::Receipt(_))
    ));
    // Nothing after the unreadable message reached the log.
    assert_eq!(s.size().await, before + 1);
    s.stop().await;
}

/// A unary request whose bytes are not the expected message is the
/// client's fault: INVALID_ARGUMENT naming the field prost could not read
/// (tonic's own codec says INTERNAL, which reads as a server bug), and
/// nothing is appended.
#[tokio::test]
async fn an_undecodable_unary_request_is_invalid_argument_naming_the_field() {
    let s = server().run().await;
    let before = s.size().await;
    let mut frames = Vec::new();
    grpc_frame(&mut frames, BAD_ENVELOPE);
    let reply = raw_grpc(&s, "/docket.v1.Ledger/Append", frames).await;
    assert_eq!(reply.status, "3", "{}", reply.message);
    assert!(
        reply
            .message
            .starts_with("message%20could%20not%20be%20decoded")
            && reply.message.contains("Envelope.payload_type")
            && reply.message.contains("UTF-8"),
        "{}",
        reply.message
    );
    assert!(reply.replies.is_empty());

    // environment (field 2) is not UTF-8.
    let mut frames = Vec::new();
    grpc_frame(&mut frames, b"\x12\x02\xff\xfe");
    let reply = raw_grpc(&s, "/docket.v1.Governance/Authorize", frames).await;
    assert_eq!(reply.status, "3", "{}", reply.message);
    assert!(
        reply.message.contains("AuthorizeRequest.environment"),
        "{}",
        reply.message
    );
    assert_eq!(s.size().await, before);
    s.stop().await;
}

/// A client that keeps its half of an AppendStream open does not hold the
/// server's drain open: at shutdown the appends under way are answered, the
/// stream ends with UNAVAILABLE naming the first message not read, and the
/// server stops (it used to wait for the client, and `docket serve` for its
/// 30-second drain deadline).
#[tokio::test]
async fn shutdown_ends_an_append_stream_the_client_keeps_open() {
    let s = server().run().await;
    let admin = s.admin_key();
    let svc = s.svc.clone();
    let before = s.size().await;
    let mut client = s.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(signed(&note("open-a", "admin"), &admin))
        .await
        .unwrap();
    let mut replies = client
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = replies.message().await.unwrap().expect("a receipt");
    assert!(matches!(
        first.result,
        Some(pb::append_stream_response::Result::Receipt(_))
    ));

    // `tx` stays open: the client has more to say.
    let stopped = tokio::spawn(s.stop());
    let end = replies
        .message()
        .await
        .expect_err("the stream ends with a status");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(
        end.message().contains("shutting down") && end.message().contains("message 1 "),
        "{}",
        end.message()
    );
    // A guard against a hang, not a wait: the server stops once the
    // stream has ended.
    tokio::time::timeout(std::time::Duration::from_secs(20), stopped)
        .await
        .expect("the server stopped with the client's half still open")
        .unwrap();
    assert_eq!(svc.latest_checkpoint().size, before + 1);
    drop(tx);
}

/// Hostile values get refusals a client can read: each names its field, a
/// quoted value is cut so the status stays far below gRPC's header limit,
/// and a period filter that would end up in a bundle's manifest must be
/// bounded and printable (it used to fail the bundle's self-check as an
/// INTERNAL "bug").
#[tokio::test]
async fn hostile_request_values_get_short_refusals_naming_the_field() {
    let s = server().run().await;
    let mut g = s.conn().governance().await.unwrap();
    let mut l = s.client().await;
    let short = |st: &tonic::Status, code: Code, start: &str| {
        assert_eq!(st.code(), code, "{st:?}");
        assert!(st.message().starts_with(start), "{:.200}", st.message());
        assert!(
            st.message().len() <= docket::api::MAX_STATUS_MESSAGE,
            "{} bytes",
            st.message().len()
        );
    };
    let huge = "x".repeat(100_000);

    let e = l
        .get_principal(pb::GetPrincipalRequest { id: huge.clone() })
        .await
        .unwrap_err();
    short(&e, Code::NotFound, "id: no principal \"xxx");
    assert!(
        e.message().ends_with("(cut: the message was 100019 bytes)"),
        "{:.100}",
        e.message()
    );
    let e = g
        .get_change(pb::GetChangeRequest {
            change_id: huge.clone(),
        })
        .await
        .unwrap_err();
    short(&e, Code::NotFound, "change_id: ");
    let e = g
        .authorize(pb::AuthorizeRequest {
            environment: "prod".into(),
            subjects: vec![huge.clone()],
            actor: "ci".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    short(&e, Code::InvalidArgument, "subjects");
    let e = g
        .list_obligations(pb::ListObligationsRequest {
            status: huge.clone(),
        })
        .await
        .unwrap_err();
    short(&e, Code::InvalidArgument, "status: ");

    let export = |scope| pb::ExportEvidenceRequest {
        scope: Some(scope),
        progress: false,
        complete: false,
        since_checkpoint: String::new(),
    };
    use pb::export_evidence_request::Scope as S;
    let period = |environments: Vec<String>| {
        S::Period(pb::PeriodScope {
            from_unix_nanos: 0,
            to_unix_nanos: now_nanos(),
            environments,
            repositories: vec![],
        })
    };
    let refused = |r: Result<
        tonic::Response<tonic::Streaming<pb::EvidenceChunk>>,
        tonic::Status,
    >| { r.map(drop).expect_err("export refused") };
    let e = refused(
        g.export_evidence(export(period(vec!["*a".into(); 100])))
            .await,
    );
    short(
        &e,
        Code::InvalidArgument,
        "period.environments: 100 patterns; at most 64",
    );
    let e = refused(
        g.export_evidence(export(period(vec!["\u{1b}[31m".into()])))
            .await,
    );
    short(&e, Code::InvalidArgument, "period.environments[0]: ");
    assert!(e.message().contains("control character"), "{}", e.message());
    let e = refused(g.export_evidence(export(period(vec![huge.clone()]))).await);
    short(&e, Code::InvalidArgument, "period.environments[0]: ");
    let e = refused(
        g.export_evidence(export(S::Period(pb::PeriodScope {
            from_unix_nanos: 10,
            to_unix_nanos: 10,
            environments: vec![],
            repositories: vec![],
        })))
        .await,
    );
    short(
        &e,
        Code::InvalidArgument,
        "period.to_unix_nanos: the period is empty",
    );
    let e = refused(
        g.export_evidence(export(S::ChangeId("../../x".into())))
            .await,
    );
    short(&e, Code::InvalidArgument, "change_id: ");
    let e = refused(
        g.export_evidence(export(S::ChangeId("CHG-404".into())))
            .await,
    );
    short(
        &e,
        Code::NotFound,
        "change_id: change \"CHG-404\" does not exist",
    );
    s.stop().await;
}
