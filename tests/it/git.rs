//! Git ingestion on real repositories made by `git`, with keys made by
//! `ssh-keygen`: every signature verdict, and the checks the log applies to
//! what the ingester claims.

use std::path::Path;

use docket::api::convert::{decode_event, encode_event};
use docket::event::{Body, Event, PrincipalId, SignatureVerdict};
use docket::ingest::git::{GitSource, TrustedKey, observe, read_allowed_signers, recheck};

use crate::governance::{commit, git, repo, ssh_key};

/// Writes a new object of the given commit content; returns its id.
fn hash_object(repo: &Path, raw: &str) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("git")
        .args(["hash-object", "-t", "commit", "-w", "--stdin"])
        .current_dir(repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(raw.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn as_event(obs: &docket::event::CommitObservation) -> Vec<u8> {
    encode_event(&Event {
        event_id: format!("git:{}", obs.sha),
        claimed_time_nanos: 1,
        signer: PrincipalId::parse("ci").unwrap(),
        body: Body::CommitObserved(Box::new(obs.clone())),
    })
}

#[test]
fn signature_verdicts_of_real_commits() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let alice = ssh_key(dir.path(), "alice_ssh");
    let bob = ssh_key(dir.path(), "bob_ssh");
    // A principal's Docket key, written as an OpenSSH key so git can sign with it.
    let ops = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let ops_path = dir.path().join("ops_ssh");
    let private =
        ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&ops.to_bytes()));
    std::fs::write(
        &ops_path,
        private
            .to_openssh(ssh_key::LineEnding::LF)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    std::fs::write(
        format!("{}.pub", ops_path.display()),
        private.public_key().to_openssh().unwrap(),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&ops_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    let signed = commit(
        &repo,
        "Alice",
        "alice@example.com",
        Some(&alice),
        "a.txt",
        "signed by alice",
    );
    let unsigned = commit(
        &repo,
        "Carol",
        "carol@example.com",
        None,
        "b.txt",
        "not signed",
    );
    let untrusted = commit(
        &repo,
        "Bob",
        "bob@example.com",
        Some(&bob),
        "a.txt",
        "signed by bob",
    );
    let by_principal = commit(
        &repo,
        "Ops",
        "ops@example.com",
        Some(&ops_path),
        "c.txt",
        "signed with a Docket key",
    );

    // A real OpenPGP signature, made by gpg with a key generated here.
    let gnupg = dir.path().join("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let gpg = |args: &[&str]| {
        let out = std::process::Command::new("gpg")
            .arg("--homedir")
            .arg(&gnupg)
            .args(["--batch", "--passphrase", ""])
            .args(args)
            .output()
            .expect("gpg is installed");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    gpg(&[
        "--quick-gen-key",
        "Pat <pat@example.com>",
        "ed25519",
        "sign",
        "never",
    ]);
    std::fs::write(repo.join("d.txt"), "signed with gpg\n").unwrap();
    git(&repo, &["add", "d.txt"]);
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=Pat",
            "-c",
            "user.email=pat@example.com",
            "-c",
            "user.signingkey=pat@example.com",
            "-c",
            "commit.gpgsign=true",
            "commit",
            "-q",
            "-m",
            "signed with gpg",
        ])
        .current_dir(&repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", &repo)
        .env("GNUPGHOME", &gnupg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git commit -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let real_pgp = git(&repo, &["rev-parse", "HEAD"]);
    let _ = std::process::Command::new("gpgconf")
        .arg("--homedir")
        .arg(&gnupg)
        .args(["--kill", "gpg-agent"])
        .output();
    assert!(
        git(&repo, &["cat-file", "commit", &real_pgp])
            .contains("gpgsig -----BEGIN PGP SIGNATURE-----")
    );

    // Alice's signed commit with its author rewritten, keeping the old signature.
    let raw = git(&repo, &["cat-file", "commit", &signed]) + "\n";
    assert!(raw.contains("gpgsig -----BEGIN SSH SIGNATURE-----"));
    let forged = raw.replace(
        "author Alice <alice@example.com>",
        "author Mallory <mallory@example.com>",
    );
    assert_ne!(forged, raw);
    let rewritten = hash_object(&repo, &forged);
    // An OpenPGP-signed commit (the signature is not checked, only recorded).
    let plain = git(&repo, &["cat-file", "commit", &unsigned]) + "\n";
    let (head, msg) = plain.split_once("\n\n").unwrap();
    let pgp = hash_object(
        &repo,
        &format!(
            "{head}\ngpgsig -----BEGIN PGP SIGNATURE-----\n \n iQEzBAABCAAdFiEE\n -----END PGP SIGNATURE-----\n\n{msg}"
        ),
    );

    let allowed = dir.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        format!(
            "# trusted signers\nalice@example.com namespaces=\"git\" {}\nbob@example.com namespaces=\"file\" {}",
            std::fs::read_to_string(format!("{}.pub", alice.display())).unwrap(),
            std::fs::read_to_string(format!("{}.pub", bob.display())).unwrap(),
        ),
    )
    .unwrap();
    let mut trusted = read_allowed_signers(&allowed).unwrap();
    // Bob's key is allowed only for the "file" namespace: not trusted for git.
    assert_eq!(trusted.len(), 1);
    trusted.push(TrustedKey::principal("ops", &ops.verifying_key()));

    let src = |refs: Vec<String>| GitSource {
        repo: repo.clone(),
        range: None,
        refs,
        repository: Some("github.com/acme/payments".into()),
    };
    let all = observe(
        &src(vec!["main".into(), rewritten.clone(), pgp.clone()]),
        &trusted,
    )
    .unwrap();
    let find = |sha: &str| {
        all.iter()
            .find(|o| o.sha == sha)
            .unwrap_or_else(|| panic!("{sha} not observed"))
    };
    let verdict = |sha: &str| find(sha).signature.verdict;

    assert_eq!(verdict(&signed), SignatureVerdict::Verified);
    assert_eq!(find(&signed).signature.signer_identity, "alice@example.com");
    assert!(
        find(&signed)
            .signature
            .key_fingerprint
            .starts_with("SHA256:")
    );
    assert_eq!(verdict(&unsigned), SignatureVerdict::Unsigned);
    assert_eq!(verdict(&untrusted), SignatureVerdict::UntrustedKey);
    assert_eq!(verdict(&by_principal), SignatureVerdict::Verified);
    assert_eq!(find(&by_principal).signature.signer_identity, "ops");
    assert_eq!(verdict(&rewritten), SignatureVerdict::Bad);
    assert!(
        find(&rewritten)
            .signature
            .detail
            .contains("changed after signing")
    );
    assert_eq!(find(&rewritten).commit.author.email, "mallory@example.com");
    assert_eq!(verdict(&pgp), SignatureVerdict::Unverifiable);
    assert!(find(&pgp).signature.detail.contains("OpenPGP"));
    assert_eq!(verdict(&real_pgp), SignatureVerdict::Unverifiable);
    assert_eq!(
        find(&real_pgp).signature.format,
        docket::event::SignatureFormat::OpenPgp
    );
    assert_eq!(find(&real_pgp).commit.author.email, "pat@example.com");

    // Parents come before children; facts come from the raw object.
    let order: Vec<&str> = all.iter().map(|o| o.sha.as_str()).collect();
    let pos = |s: &str| order.iter().position(|o| *o == s).unwrap();
    assert!(pos(&signed) < pos(&unsigned) && pos(&unsigned) < pos(&untrusted));
    let first = find(&signed);
    assert!(first.commit.parents.is_empty());
    assert_eq!(first.changed.added, 1);
    assert_eq!(first.changed.paths, ["a.txt"]);
    assert_eq!(find(&untrusted).changed.modified, 1);
    assert_eq!(
        find(&unsigned).commit.parents,
        std::slice::from_ref(&signed)
    );

    // Every observation is a valid event, and the log re-derives the id.
    for o in &all {
        let ev = decode_event(&as_event(o)).unwrap();
        let Body::CommitObserved(back) = ev.body else {
            panic!()
        };
        assert_eq!(back.commit, o.commit);
    }
    // A raw object that does not hash to the claimed id is refused...
    let mut lie = find(&signed).clone();
    lie.raw = forged.clone().into_bytes();
    let e = decode_event(&as_event(&lie)).unwrap_err();
    assert_eq!(e.field, "commit_observed.raw_commit");
    assert!(
        e.reason
            .contains(&format!("hashes to commit {rewritten}, not {signed}")),
        "{e}"
    );
    // ...and so is a verdict that contradicts the object.
    let mut lie = find(&unsigned).clone();
    lie.signature.verdict = SignatureVerdict::Verified;
    lie.signature.format = docket::event::SignatureFormat::Ssh;
    let e = decode_event(&as_event(&lie)).unwrap_err();
    assert!(e.reason.contains("carries no signature"), "{e}");

    // The verdicts the ingester gave survive the log's re-check; lies about
    // what the SSH signature shows do not.
    for o in &all {
        assert_eq!(recheck(o), Ok(()), "{}", o.sha);
    }
    let lie = |sha: &str, edit: &dyn Fn(&mut docket::event::CommitSignature)| {
        let mut o = find(sha).clone();
        edit(&mut o.signature);
        recheck(&o).unwrap_err()
    };
    assert!(
        lie(&rewritten, &|s| s.verdict = SignatureVerdict::Verified)
            .contains("does not verify over this commit")
    );
    assert!(
        lie(&signed, &|s| s.verdict = SignatureVerdict::Bad).contains("verifies over this commit")
    );
    assert!(
        lie(&signed, &|s| s.key_fingerprint =
            find(&untrusted).signature.key_fingerprint.clone())
        .contains("is not that of the signing key")
    );
    assert!(
        lie(&pgp, &|s| s.verdict = SignatureVerdict::Verified).contains("not an SSH signature")
    );
    // The server applies it to every observation it is sent.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let s = crate::common::server().run().await;
        let mut forged = find(&rewritten).clone();
        forged.signature.verdict = SignatureVerdict::Verified;
        let ev = Event {
            event_id: "forged-verdict".into(),
            claimed_time_nanos: crate::common::now_nanos(),
            signer: PrincipalId::parse("admin").unwrap(),
            body: Body::CommitObserved(Box::new(forged)),
        };
        let before = s.size().await;
        let e = s
            .svc
            .append(
                docket::api::convert::sign_event(&ev, &s.admin_key()),
                "CN=test".into(),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("commit_observed.signature")
                && e.contains("does not verify over this commit"),
            "{e}"
        );
        assert_eq!(s.size().await, before);
        // The honest observation of the same commit is taken.
        let ev = Event {
            event_id: "honest-verdict".into(),
            body: Body::CommitObserved(Box::new(find(&rewritten).clone())),
            ..ev
        };
        s.svc
            .append(
                docket::api::convert::sign_event(&ev, &s.admin_key()),
                "CN=test".into(),
            )
            .await
            .unwrap();
    });

    // Ranges: only what B has and A does not.
    let range = observe(
        &GitSource {
            range: Some(format!("{signed}..{untrusted}")),
            ..src(vec![])
        },
        &trusted,
    )
    .unwrap();
    let shas: Vec<&str> = range.iter().map(|o| o.sha.as_str()).collect();
    assert_eq!(shas, [unsigned.as_str(), untrusted.as_str()]);
    // Nothing to read is a usage error, not an empty success.
    assert!(observe(&src(vec![]), &trusted).is_err());
}
