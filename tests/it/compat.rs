//! Format compatibility: the ledger-v1 fixture, written by the first version
//! of the entry format, must verify with this version.

use std::path::PathBuf;

use docket::api::convert::decode_event;
use docket::crypto::NoteVerifier;
use docket::ledger::{Checkpoint, Entry, LedgerReader, SledStore};
use docket::state::State;

fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/ledger-v1")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn ledger_v1_fixture_still_verifies() {
    let verifier = NoteVerifier::from_vkey(fixture("log.vkey").trim()).unwrap();
    let note = fixture("checkpoint.txt");
    let cp = Checkpoint::verify(&note, &verifier, "docket.test/ledger-v1").unwrap();
    assert_eq!(cp.size, 11);
    let entries: Vec<(Vec<u8>, String)> = fixture("entries.hex")
        .lines()
        .map(|l| {
            let bytes = hex::decode(l).unwrap();
            let e = Entry::decode(&bytes).unwrap();
            let id = decode_event(&e.envelope.payload).unwrap().event_id;
            (bytes, id)
        })
        .collect();
    assert_eq!(entries.len(), 11);
    let store = std::sync::Arc::new(SledStore::temporary().unwrap());
    docket::ledger::import(&*store, entries.clone(), &note).unwrap();

    // Every check of `docket verify`, against the pinned log key.
    let report = docket::verify::verify_store(&*store, Some(&verifier)).unwrap();
    assert_eq!(
        (report.entries, report.checkpoints, report.root),
        (11, 1, cp.root)
    );

    // The identity history folds to what the fixture's README describes.
    let mut state = State::new();
    docket::service::fold_entries(&LedgerReader::new(store.clone()), &mut state, 11).unwrap();
    let alice = state.principal("alice").unwrap();
    assert_eq!(alice.roles.iter().collect::<Vec<_>>(), ["dev"]);
    assert_eq!(alice.keys.len(), 2);
    assert_eq!(alice.keys[0].revoked_at, Some(3), "rotated away at entry 3");
    assert_eq!(
        alice.keys[1].revoked_at,
        Some(5),
        "revoked by the admin at entry 5"
    );

    // The event-id index the server answers retries from is checked too:
    // an id pointed at another entry, or an id indexed for no entry.
    use docket::ledger::{Store as _, WriteBatch};
    let key_of = |id: &str| [b"x".as_slice(), id.as_bytes()].concat();
    let moved = SledStore::temporary().unwrap();
    docket::ledger::import(&moved, entries.clone(), &note).unwrap();
    let (i, digest) = moved.event(&entries[1].1).unwrap().unwrap();
    assert_eq!(i, 1);
    let value = [2u64.to_be_bytes().as_slice(), digest.as_slice()].concat();
    moved
        .write(WriteBatch {
            log: vec![(key_of(&entries[1].1), value)],
            state: Vec::new(),
        })
        .unwrap();
    let f = docket::verify::verify_store(&moved, Some(&verifier)).unwrap_err();
    assert_eq!(f.index, Some(1), "{f}");
    assert!(
        f.reason.contains("event-id index") && f.reason.contains("indexed to entry 2"),
        "{f}"
    );
    let ghost = SledStore::temporary().unwrap();
    docket::ledger::import(&ghost, entries.clone(), &note).unwrap();
    let value = [5u64.to_be_bytes().as_slice(), digest.as_slice()].concat();
    ghost
        .write(WriteBatch {
            log: vec![(key_of("never-appended"), value)],
            state: Vec::new(),
        })
        .unwrap();
    let f = docket::verify::verify_store(&ghost, Some(&verifier)).unwrap_err();
    assert_eq!(f.index, None, "{f}");
    assert_eq!(
        f.reason,
        "the event-id index holds 12 ids but the log holds 11 entries"
    );

    // One flipped bit in an entry's signature is caught at that entry.
    let mut bad = entries;
    let last = bad[4].0.len() - 1;
    bad[4].0[last] ^= 0x01;
    let tampered = SledStore::temporary().unwrap();
    docket::ledger::import(&tampered, bad, &note).unwrap();
    let f = docket::verify::verify_store(&tampered, Some(&verifier)).unwrap_err();
    assert_eq!(f.index, Some(4), "{f}");
    assert!(f.reason.contains("signature"), "{f}");
    // So does the replay behind start-up and `docket rebuild`, which checks
    // signatures on other threads while it folds.
    let e = docket::service::current_state(&LedgerReader::new(std::sync::Arc::new(tampered)))
        .unwrap_err();
    assert!(
        matches!(&e, docket::service::OpenError::Replay { index: 4, reason }
            if reason.starts_with("no signature verifies")),
        "{e}"
    );
}

/// Rewrites `entries` from `from` on (each re-linked to the one before it),
/// then imports them with a checkpoint over them signed with `log_key`: what
/// an insider holding the data directory and the log key can make.
fn forged_store(
    mut entries: Vec<(Vec<u8>, String)>,
    from: usize,
    edit: impl Fn(usize, &mut Entry),
    origin: &str,
    log_key: &ed25519_dalek::SigningKey,
) -> SledStore {
    for i in from..entries.len() {
        let mut e = Entry::decode(&entries[i].0).unwrap();
        edit(i, &mut e);
        if i > 0 {
            e.prev_leaf_hash = docket::ledger::merkle::leaf_hash(&entries[i - 1].0);
        }
        entries[i].0 = e.encode().unwrap();
    }
    let leaves: Vec<[u8; 32]> = entries
        .iter()
        .map(|(b, _)| docket::ledger::merkle::leaf_hash(b))
        .collect();
    let cp = Checkpoint::sign(
        &docket::crypto::NoteSigner::new(origin, log_key.clone()),
        origin,
        leaves.len() as u64,
        &crate::common::mth(&leaves),
    );
    let store = SledStore::temporary().unwrap();
    docket::ledger::import(&store, entries, &cp.note).unwrap();
    store
}

fn stored(store: &SledStore) -> Vec<(Vec<u8>, String)> {
    use docket::ledger::Store as _;
    (0..store.size().unwrap())
        .map(|i| {
            let b = store.entry(i).unwrap().unwrap();
            let id = decode_event(&Entry::decode(&b).unwrap().envelope.payload)
                .unwrap()
                .event_id;
            (b, id)
        })
        .collect()
}

/// A log begun in entry format version 1 goes on in version 3: the writer
/// counts the identity and policy entries of the version-1 part too, and
/// `docket verify` checks every count and refuses a return to an earlier
/// version. So does a log begun in version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_or_2_log_goes_on_in_version_3() {
    use docket::api::convert::sign_event;
    use docket::event::{Body, PrincipalKind, PrincipalSpec};
    use docket::service::{Config, Service};
    use ed25519_dalek::SigningKey;
    let origin = "docket.test/upgrade";
    let admin = SigningKey::from_bytes(&[21; 32]);
    let log_key = SigningKey::from_bytes(&[22; 32]);
    let signer = || docket::crypto::NoteSigner::new(origin, log_key.clone());
    let register = |id: &str| {
        let ev = docket::event::Event {
            event_id: format!("register-{id}"),
            claimed_time_nanos: crate::common::now_nanos(),
            signer: docket::event::PrincipalId::parse("admin").unwrap(),
            body: Body::PrincipalRegistered(PrincipalSpec {
                id: docket::event::PrincipalId::parse(id).unwrap(),
                kind: PrincipalKind::Human,
                display_name: String::new(),
                roles: ["dev".to_owned()].into(),
                keys: vec![SigningKey::from_bytes(&[id.len() as u8; 32]).verifying_key()],
                emails: Default::default(),
            }),
        };
        sign_event(&ev, &admin)
    };
    let note = |id: &str| sign_event(&crate::common::note(id, "admin"), &admin);

    // Genesis, a registration and a note, rewritten as version 1.
    let first = crate::common::memory_log(origin, &admin, &log_key);
    let svc = Service::open(first.clone(), signer(), Config::default()).unwrap();
    svc.append(register("alice"), "CN=t".into()).await.unwrap();
    svc.append(note("n-1"), "CN=t".into()).await.unwrap();
    drop(svc);
    let v1 = forged_store(
        stored(&first),
        0,
        |_, e| {
            e.history_count = None;
            e.basis = None;
        },
        origin,
        &log_key,
    );
    for (b, _) in stored(&v1) {
        assert_eq!(b[0], 1, "the rewritten log is version 1");
    }
    docket::verify::verify_store(&v1, None).unwrap();
    let v2 = forged_store(stored(&first), 0, |_, e| e.basis = None, origin, &log_key);
    for (b, _) in stored(&v2) {
        assert_eq!(b[0], 2, "the rewritten log is version 2");
    }
    docket::verify::verify_store(&v2, None).unwrap();
    let v2 = std::sync::Arc::new(v2);
    let svc = Service::open(v2.clone(), signer(), Config::default()).unwrap();
    svc.append(note("n-2"), "CN=t".into()).await.unwrap();
    svc.append(note("n-3"), "CN=t".into()).await.unwrap();
    drop(svc);
    let on = stored(&v2);
    assert_eq!((on[2].0[0], on[3].0[0]), (2, 3), "version 3 after 2");
    docket::verify::verify_store(&*v2, None).unwrap();
    let back = forged_store(on, 4, |_, e| e.basis = None, origin, &log_key);
    let f = docket::verify::verify_store(&back, None).unwrap_err();
    assert_eq!(f.index, Some(4), "{f}");
    assert!(
        f.reason
            .contains("entry format version 1 or 2 after version-3 entry 3"),
        "{f}"
    );

    // The service appends version 3 after version 1, counting genesis and
    // alice.
    let v1 = std::sync::Arc::new(v1);
    let svc = Service::open(v1.clone(), signer(), Config::default()).unwrap();
    let n2 = svc.append(note("n-2"), "CN=t".into()).await.unwrap();
    let bob = svc.append(register("bob"), "CN=t".into()).await.unwrap();
    drop(svc);
    let grown = stored(&v1);
    let count = |i: u64| Entry::decode(&grown[i as usize].0).unwrap().history_count;
    assert_eq!((n2.index, count(n2.index)), (3, Some(2)));
    assert_eq!((bob.index, count(bob.index)), (4, Some(3)));
    assert_eq!(count(2), None);
    let report = docket::verify::verify_store(&*v1, None).unwrap();
    assert_eq!(report.entries, 5);

    // An insider's rewrites are caught at the rewritten entry: a count that
    // hides bob's registration, and a version-2 entry turned back into 1.
    let hidden = forged_store(
        grown.clone(),
        4,
        |_, e| e.history_count = Some(2),
        origin,
        &log_key,
    );
    let f = docket::verify::verify_store(&hidden, None).unwrap_err();
    assert_eq!(f.index, Some(4), "{f}");
    assert!(
        f.reason.contains(
            "history count: the entry says the log holds 2 identity and policy entries up to it, 3 were read"
        ),
        "{f}"
    );
    let back = forged_store(
        grown,
        4,
        |_, e| {
            e.history_count = None;
            e.basis = None;
        },
        origin,
        &log_key,
    );
    let f = docket::verify::verify_store(&back, None).unwrap_err();
    assert_eq!(f.index, Some(4), "{f}");
    assert!(
        f.reason
            .contains("entry format version 1 after version-2 entry 3"),
        "{f}"
    );
}

/// An entry recorded before appends refused unknown protobuf fields still
/// verifies and replays as it always did, and `docket verify` counts it, so
/// an operator knows before a version gives such a field a meaning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_with_unknown_fields_verify_and_are_counted() {
    use docket::api::convert::sign_event;
    use docket::service::{Config, Service};
    use ed25519_dalek::SigningKey;
    let origin = "docket.test/unknown";
    let admin = SigningKey::from_bytes(&[31; 32]);
    let log_key = SigningKey::from_bytes(&[32; 32]);
    let log = crate::common::memory_log(origin, &admin, &log_key);
    let svc = Service::open(
        log.clone(),
        docket::crypto::NoteSigner::new(origin, log_key.clone()),
        Config::default(),
    )
    .unwrap();
    for id in ["n-1", "n-2"] {
        svc.append(
            sign_event(&crate::common::note(id, "admin"), &admin),
            "CN=t".into(),
        )
        .await
        .unwrap();
    }
    drop(svc);
    // Entry 1's payload with field 29 of Event added, signed by the admin,
    // as a build before the check would have recorded it.
    let old = forged_store(
        stored(&log),
        1,
        |i, e| {
            if i == 1 {
                e.envelope.payload.extend([0xe8, 0x01, 0x01]);
                let sig = docket::crypto::sign_dsse(
                    &admin,
                    docket::crypto::PAYLOAD_TYPE,
                    &e.envelope.payload,
                );
                e.envelope.signatures[0].sig = sig.to_vec();
            }
        },
        origin,
        &log_key,
    );
    let report = docket::verify::verify_store(&old, None).unwrap();
    assert_eq!(report.entries, 3);
    assert_eq!(report.unknown_fields, 1);
    let (index, what) = report.first_unknown.unwrap();
    assert_eq!(index, 1);
    assert!(
        what.starts_with("payload: has field number 29, which docket.v1.Event does not define"),
        "{what}"
    );
    // Replay reads it as before: the note, field 29 skipped.
    let mut state = State::new();
    docket::service::fold_entries(&LedgerReader::new(std::sync::Arc::new(old)), &mut state, 3)
        .unwrap();
    assert_eq!(state.next_index(), 3);
    let clean = docket::verify::verify_store(&*log, None).unwrap();
    assert_eq!((clean.unknown_fields, clean.first_unknown), (0, None));
}

/// A log written before reviews and policy approvals kept their signing
/// key (state format 16): a policy activated by an approval whose key was
/// rotated away afterwards must still be active on replay, or every later
/// entry resting on it is refused and the server cannot start.
#[test]
fn a_policy_activated_before_keys_were_kept_replays_as_it_was() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/ledger-s17-policy");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let verifier = NoteVerifier::from_vkey(read("log.vkey").trim()).unwrap();
    let note = read("checkpoint.txt");
    let cp = Checkpoint::verify(&note, &verifier, "docket.local/log").unwrap();
    assert_eq!(cp.size, 9);
    let entries: Vec<(Vec<u8>, String)> = read("entries.hex")
        .lines()
        .map(|l| {
            let bytes = hex::decode(l).unwrap();
            let e = Entry::decode(&bytes).unwrap();
            (bytes, decode_event(&e.envelope.payload).unwrap().event_id)
        })
        .collect();
    let store = std::sync::Arc::new(SledStore::temporary().unwrap());
    docket::ledger::import(&*store, entries, &note).unwrap();
    let report = docket::verify::verify_store(&*store, Some(&verifier)).unwrap();
    assert_eq!((report.entries, report.root), (9, cp.root));
    let mut state = State::new();
    docket::service::fold_entries(&LedgerReader::new(store), &mut state, 9).unwrap();
    let v = state.gov().active_version().unwrap();
    assert_eq!((v.version, v.activated_at), (2, 7));
    assert_eq!(v.approvers, ["pa2", "pa3"]);
    let p3 = state.gov().proposals().find(|p| p.id == "P3").unwrap();
    assert_eq!(p3.base_version, 2);
}
