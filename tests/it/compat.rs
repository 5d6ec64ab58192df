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

    // One flipped bit in an entry's signature is caught at that entry.
    let mut bad = entries;
    let last = bad[4].0.len() - 1;
    bad[4].0[last] ^= 0x01;
    let tampered = SledStore::temporary().unwrap();
    docket::ledger::import(&tampered, bad, &note).unwrap();
    let f = docket::verify::verify_store(&tampered, Some(&verifier)).unwrap_err();
    assert_eq!(f.index, Some(4), "{f}");
    assert!(f.reason.contains("signature"), "{f}");
}
