//! BLAKE3 and Ed25519 against the standard vectors in tests/data/vectors.

use docket::crypto;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

fn vectors(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/vectors")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn blake3_official_vectors() {
    let v: serde_json::Value = serde_json::from_str(&vectors("blake3_test_vectors.json")).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 22);
    for c in cases {
        let len = c["input_len"].as_u64().unwrap() as usize;
        let input: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let expected = c["hash"].as_str().unwrap();
        // The vectors give extended output; the first 32 bytes are BLAKE3-256.
        assert_eq!(
            hex::encode(crypto::blake3_256(&input)),
            expected[..64],
            "input_len {len}"
        );
    }
}

#[test]
fn rfc8032_sign_and_verify() {
    let text = vectors("ed25519_sign.input");
    let mut n = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(':').collect();
        let sk = hex::decode(&f[0][..64]).unwrap();
        let pk = hex::decode(f[1]).unwrap();
        let msg = hex::decode(f[2]).unwrap();
        let sig = hex::decode(&f[3][..128]).unwrap();
        let key = SigningKey::from_bytes(&sk.try_into().unwrap());
        assert_eq!(key.verifying_key().as_bytes().as_slice(), pk.as_slice());
        assert_eq!(key.sign(&msg).to_bytes().as_slice(), sig.as_slice());
        assert_eq!(
            crypto::verify_strict(&key.verifying_key(), &msg, &sig),
            Ok(())
        );
        let mut bad = msg.clone();
        bad.push(0);
        assert!(crypto::verify_strict(&key.verifying_key(), &bad, &sig).is_err());
        n += 1;
    }
    assert!(n >= 1000, "only {n} vectors read");
}

#[test]
fn wycheproof_every_case_decided_as_the_vector_says() {
    let v: serde_json::Value =
        serde_json::from_str(&vectors("wycheproof_ed25519_test.json")).unwrap();
    let mut checked = 0;
    for g in v["testGroups"].as_array().unwrap() {
        let pk = hex::decode(g["publicKey"]["pk"].as_str().unwrap()).unwrap();
        for t in g["tests"].as_array().unwrap() {
            let msg = hex::decode(t["msg"].as_str().unwrap()).unwrap();
            let sig = hex::decode(t["sig"].as_str().unwrap()).unwrap();
            let accepted = <[u8; 32]>::try_from(pk.as_slice())
                .ok()
                .and_then(|a| VerifyingKey::from_bytes(&a).ok())
                .is_some_and(|k| crypto::verify_strict(&k, &msg, &sig).is_ok());
            let expected = match t["result"].as_str().unwrap() {
                "valid" => true,
                "invalid" => false,
                other => panic!("tcId {}: unexpected result {other}", t["tcId"]),
            };
            assert_eq!(accepted, expected, "tcId {} ({})", t["tcId"], t["comment"]);
            checked += 1;
        }
    }
    assert_eq!(checked, v["numberOfTests"].as_u64().unwrap());
}
