//! Git ingestion on real repositories made by `git`, with keys made by
//! `ssh-keygen`: every signature verdict, and the checks the log applies to
//! what the ingester claims.

use std::path::Path;

use docket::api::convert::{decode_event, encode_event};
use docket::event::{Body, Event, PrincipalId, SignatureVerdict};
use docket::ingest::git::{GitSource, TrustedKey, observe, read_allowed_signers, recheck};

use crate::governance::{commit, git, repo, ssh_key, ssh_key_of, write_openssh_key};

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
    write_openssh_key(&ops_path, &ops);

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

    // Alice's signed commit with its author rewritten, keeping the old signature.
    let raw = git(&repo, &["cat-file", "commit", &signed]) + "\n";
    assert!(raw.contains("gpgsig -----BEGIN SSH SIGNATURE-----"));
    let forged = raw.replace(
        "author Alice <alice@example.com>",
        "author Mallory <mallory@example.com>",
    );
    assert_ne!(forged, raw);
    let rewritten = hash_object(&repo, &forged);
    // A commit whose OpenPGP signature is not a signature at all.
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
        &[],
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
    assert!(
        find(&pgp)
            .signature
            .detail
            .contains("OpenPGP signature not checked: malformed")
    );

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
        lie(&pgp, &|s| s.verdict = SignatureVerdict::Verified)
            .contains("so the verdict must be unverifiable")
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
        // A commit signed with a principal's key was signed by that
        // principal, whatever the ingester trusted: a verdict that leaves
        // ops out of the exclusions, or names someone else, is refused.
        let register = Event {
            event_id: "register-ops".into(),
            body: Body::PrincipalRegistered(docket::event::PrincipalSpec {
                id: PrincipalId::parse("ops").unwrap(),
                kind: docket::event::PrincipalKind::Human,
                display_name: String::new(),
                roles: ["dev".to_owned()].into(),
                keys: vec![ops.verifying_key()],
                emails: ["ops@example.com".to_owned()].into(),
            }),
            ..ev.clone()
        };
        s.svc
            .append(
                docket::api::convert::sign_event(&register, &s.admin_key()),
                "CN=test".into(),
            )
            .await
            .unwrap();
        let honest = find(&by_principal).clone();
        let mut n = 0;
        let mut submit = |edit: &dyn Fn(&mut docket::event::CommitSignature)| {
            let mut o = honest.clone();
            edit(&mut o.signature);
            n += 1;
            let ev = Event {
                event_id: format!("ops-commit-{n}"),
                body: Body::CommitObserved(Box::new(o)),
                ..ev.clone()
            };
            s.svc.append(
                docket::api::convert::sign_event(&ev, &s.admin_key()),
                "CN=test".into(),
            )
        };
        let before = s.size().await;
        let untrusted = submit(&|s| {
            s.verdict = SignatureVerdict::UntrustedKey;
            s.signer_identity.clear();
        })
        .await;
        let misnamed = submit(&|s| s.signer_identity = "alice@example.com".into()).await;
        for e in [untrusted, misnamed] {
            let e = e.unwrap_err().to_string();
            assert!(
                e.contains("commit_observed.signature")
                    && e.contains("signed with an active key of principal ops"),
                "{e}"
            );
        }
        assert_eq!(s.size().await, before);
        // Named by id or by one of ops's e-mails, it is taken.
        submit(&|s| s.signer_identity = "OPS@example.com".into())
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
        &[],
    )
    .unwrap();
    let shas: Vec<&str> = range.iter().map(|o| o.sha.as_str()).collect();
    assert_eq!(shas, [unsigned.as_str(), untrusted.as_str()]);
    // Nothing to read is a usage error, not an empty success.
    assert!(observe(&src(vec![]), &trusted, &[]).is_err());
}

/// A GnuPG home of its own, with keys made here.
struct Gpg {
    home: std::path::PathBuf,
}

impl Gpg {
    fn new(dir: &Path) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let home = dir.join("gnupg");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        Gpg { home }
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = std::process::Command::new("gpg")
            .arg("--homedir")
            .arg(&self.home)
            .args([
                "--batch",
                "--yes",
                "--passphrase",
                "",
                "--pinentry-mode",
                "loopback",
            ])
            .args(args)
            .output()
            .expect("gpg is installed");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The fingerprints of `uid`'s primary key and subkeys, primary first.
    fn fingerprints(&self, uid: &str) -> Vec<String> {
        String::from_utf8(self.run(&["--with-colons", "--list-keys", uid]))
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("fpr:"))
            .map(|l| l.trim_matches(':').to_owned())
            .collect()
    }

    /// Makes a key for `uid` (algorithm `algo`, usage `usage`, no expiry);
    /// returns the fingerprints of its primary key and subkeys.
    fn key(&self, uid: &str, algo: &str, usage: &str) -> Vec<String> {
        self.run(&["--quick-gen-key", uid, algo, usage, "never"]);
        self.fingerprints(uid)
    }

    /// Pat, one Ed25519 key that certifies and signs, and Quinn, an RSA
    /// primary key for certification only with an RSA signing subkey (the
    /// usual smartcard layout): their fingerprints, primary key first.
    fn pat_and_quinn(&self) -> (Vec<String>, Vec<String>) {
        let pat = self.key("Pat <pat@example.com>", "ed25519", "sign");
        let quinn = self.key("Quinn <quinn@example.com>", "rsa2048", "cert");
        self.run(&["--quick-add-key", &quinn[0], "rsa2048", "sign", "never"]);
        (pat, self.fingerprints("quinn@example.com"))
    }

    /// Exports the keys of `uids` as an armored keyring at `path` and reads
    /// it back.
    fn keyring(&self, path: &Path, uids: &[&str]) -> docket::ingest::openpgp::Keyring {
        std::fs::write(
            path,
            self.run(&[&["--export", "--armor"][..], uids].concat()),
        )
        .unwrap();
        docket::ingest::openpgp::read_keyring(path).unwrap()
    }

    /// Commits a new file signed by `email`'s key with `git commit -S`.
    fn commit(&self, repo: &Path, name: &str, email: &str, file: &str) -> String {
        std::fs::write(repo.join(file), format!("{name} was here\n")).unwrap();
        git(repo, &["add", file]);
        let out = std::process::Command::new("git")
            .args(["-c", &format!("user.name={name}")])
            .args(["-c", &format!("user.email={email}")])
            .args(["-c", &format!("user.signingkey={email}")])
            .args(["-c", "commit.gpgsign=true", "commit", "-q", "-m"])
            .arg(format!("{file} by {name}"))
            .current_dir(repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("HOME", repo)
            .env("GNUPGHOME", &self.home)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git commit -S: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sha = git(repo, &["rev-parse", "HEAD"]);
        assert!(
            git(repo, &["cat-file", "commit", &sha])
                .contains("gpgsig -----BEGIN PGP SIGNATURE-----")
        );
        sha
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = std::process::Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// ECDSA P-384 and P-521 keys verify; `valid-after`/`valid-before` hold
/// against the committer time; a `cert-authority` line trusts no plain
/// signature; `namespaces` lists are ssh pattern lists (`?`, `*`, `!`),
/// and option values need their quotes. Each
/// verdict agrees with `git verify-commit` reading the same file.
#[test]
fn allowed_signers_are_read_as_git_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let p384 = ssh_key_of(dir.path(), "p384", "ecdsa", Some("384"));
    let p521 = ssh_key_of(dir.path(), "p521", "ecdsa", Some("521"));
    let expired = ssh_key(dir.path(), "expired");
    let future = ssh_key(dir.path(), "future");
    let ca = ssh_key(dir.path(), "ca");
    let multi = ssh_key(dir.path(), "multi");
    let glob = ssh_key(dir.path(), "glob");
    let negated = ssh_key(dir.path(), "negated");
    let pubkey = |k: &Path| std::fs::read_to_string(format!("{}.pub", k.display())).unwrap();
    let allowed = dir.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        format!(
            "p384@example.com {}\
             p521@example.com {}\
             old@example.com valid-before=\"20200101Z\" {}\
             new@example.com valid-after=\"20990101\" {}\
             ca@example.com cert-authority {}\
             multi@example.com,alias@example.com namespaces=\"file,git\" {}\
             glob@example.com namespaces=\"file,g?t\" {}\
             negated@example.com namespaces=\"*,!git\" {}",
            pubkey(&p384),
            pubkey(&p521),
            pubkey(&expired),
            pubkey(&future),
            pubkey(&ca),
            pubkey(&multi),
            pubkey(&glob),
            pubkey(&negated),
        ),
    )
    .unwrap();
    let trusted = read_allowed_signers(&allowed).unwrap();
    let ids: Vec<&str> = trusted.iter().map(|t| t.identity.as_str()).collect();
    assert_eq!(
        ids,
        [
            "p384@example.com",
            "p521@example.com",
            "old@example.com",
            "new@example.com",
            "multi@example.com",
            "alias@example.com",
            "glob@example.com"
        ]
    );
    let mut shas = Vec::new();
    for (n, key) in [
        &p384, &p521, &expired, &future, &ca, &multi, &glob, &negated,
    ]
    .into_iter()
    .enumerate()
    {
        let f = format!("f{n}.txt");
        shas.push(commit(&repo, "Dev", "dev@example.com", Some(key), &f, &f));
    }
    let src = GitSource {
        repo: repo.clone(),
        range: None,
        refs: vec!["main".into()],
        repository: None,
    };
    let all = observe(&src, &trusted, &[]).unwrap();
    let find = |sha: &str| all.iter().find(|o| o.sha == sha).unwrap();
    use SignatureVerdict::*;
    let want = [
        Verified,
        Verified,
        UntrustedKey,
        UntrustedKey,
        UntrustedKey,
        Verified,
        // Pattern lists as ssh-keygen matches them: `g?t` admits git, and
        // a negated pattern that matches excludes it whatever else does.
        Verified,
        UntrustedKey,
    ];
    for (sha, want) in shas.iter().zip(want) {
        let o = find(sha);
        assert_eq!(
            o.signature.verdict, want,
            "{}: {}",
            o.commit.summary, o.signature.detail
        );
        assert_eq!(recheck(o), Ok(()));
        let git_says = std::process::Command::new("git")
            .args([
                "-c",
                &format!("gpg.ssh.allowedSignersFile={}", allowed.display()),
                "verify-commit",
                sha,
            ])
            .current_dir(&repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert_eq!(
            git_says.status.success(),
            want == Verified,
            "{}: git says {}",
            o.commit.summary,
            String::from_utf8_lossy(&git_says.stderr)
        );
    }
    for (i, says) in [
        (
            2,
            "old@example.com's key is valid only before 2020-01-01T00:00:00Z",
        ),
        (3, "new@example.com's key is valid only after 2099-01-0"),
    ] {
        let detail = &find(&shas[i]).signature.detail;
        assert!(detail.contains(says), "{detail}");
    }
    assert_eq!(
        find(&shas[5]).signature.signer_identity,
        "multi@example.com"
    );

    // An option ssh-keygen does not know is refused with its line.
    std::fs::write(
        &allowed,
        format!("# one\nx@example.com no-touch-required {}", pubkey(&multi)),
    )
    .unwrap();
    let e = read_allowed_signers(&allowed).unwrap_err().to_string();
    assert!(
        e.contains("line 2") && e.contains("unknown option \"no-touch-required\""),
        "{e}"
    );
    // A value without its double quotes is refused, as ssh-keygen refuses
    // the line ("missing start quote"), rather than read as if quoted.
    for option in ["namespaces=git", "valid-after=20200101"] {
        std::fs::write(
            &allowed,
            format!("x@example.com {option} {}", pubkey(&multi)),
        )
        .unwrap();
        let e = read_allowed_signers(&allowed).unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("must be in double quotes"),
            "{option}: {e}"
        );
    }
    // A file from someone else's repository is read only if it is a
    // regular file within bounds: a device is refused by name, no line.
    let e = read_allowed_signers(std::path::Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "allowed-signers file /dev/zero: not a regular file");
}

#[test]
fn openpgp_signature_verdicts_of_real_commits() {
    use docket::event::SignatureFormat;
    use docket::ingest::openpgp::{OpenPgpCert, read_keyring};

    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let gpg = Gpg::new(dir.path());
    let (pat, quinn) = gpg.pat_and_quinn();
    assert_eq!(quinn.len(), 2);
    // Quinn certifies Pat's key.
    gpg.run(&["--default-key", &quinn[0], "--quick-sign-key", &pat[0]]);
    // Rex: a key nobody exported to the keyring.
    let rex = gpg.key("Rex <rex@example.com>", "ed25519", "sign");
    // Sam: a key revoked after it signed.
    let sam = gpg.key("Sam <sam@example.com>", "ed25519", "sign");
    // Olga: a key made in 2020 that, by a later self-signature, expired in 2021.
    gpg.run(&[
        "--faked-system-time",
        "20200101T000000",
        "--quick-gen-key",
        "Olga <olga@example.com>",
        "ed25519",
        "sign",
        "never",
    ]);

    let by_pat = gpg.commit(&repo, "Pat", "pat@example.com", "p.txt");
    let by_quinn = gpg.commit(&repo, "Quinn", "quinn@example.com", "q.txt");
    let by_rex = gpg.commit(&repo, "Rex", "rex@example.com", "r.txt");
    let by_sam = gpg.commit(&repo, "Sam", "sam@example.com", "s.txt");
    let by_olga = gpg.commit(&repo, "Olga", "olga@example.com", "o.txt");
    let unsigned = commit(&repo, "Una", "una@example.com", None, "u.txt", "unsigned");
    // Pat's commit with its author rewritten, keeping the old signature.
    let raw = git(&repo, &["cat-file", "commit", &by_pat]) + "\n";
    let forged = hash_object(
        &repo,
        &raw.replace(
            "author Pat <pat@example.com>",
            "author Mallory <mallory@example.com>",
        ),
    );

    // Sam's key is revoked with the revocation certificate gpg made with it.
    let rev = std::fs::read_to_string(gpg.home.join(format!("openpgp-revocs.d/{}.rev", sam[0])))
        .unwrap()
        .replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----",
        );
    let rev_path = dir.path().join("sam.rev");
    std::fs::write(&rev_path, rev).unwrap();
    gpg.run(&["--import", rev_path.to_str().unwrap()]);
    let olga = gpg.fingerprints("olga@example.com");
    gpg.run(&[
        "--faked-system-time",
        "20200601T000000",
        "--quick-set-expire",
        &olga[0],
        "1y",
    ]);

    // Uma: a key that signed, and whose owner later (2030) moved to a new
    // e-mail: a new user ID, the first one revoked. What she signed before
    // stays hers; her identity is the current user ID.
    let uma = gpg.key("Uma <uma@example.com>", "ed25519", "sign");
    let by_uma = gpg.commit(&repo, "Uma", "uma@example.com", "m.txt");
    for args in [
        ["--quick-add-uid", &uma[0], "Uma <uma@work.example>"],
        ["--quick-revoke-uid", &uma[0], "Uma <uma@example.com>"],
    ] {
        gpg.run(&[&["--faked-system-time", "20300101T000000"][..], &args[..]].concat());
    }

    let keyring = dir.path().join("keyring.asc");
    let certs = gpg
        .keyring(
            &keyring,
            &[
                "pat@example.com",
                "quinn@example.com",
                "sam@example.com",
                "olga@example.com",
                "uma@work.example",
            ],
        )
        .certs;
    let ids: Vec<&str> = certs.iter().map(|c| c.identity.as_str()).collect();
    assert_eq!(
        ids,
        [
            "pat@example.com",
            "quinn@example.com",
            "sam@example.com",
            "olga@example.com",
            "uma@work.example"
        ]
    );

    let src = GitSource {
        repo: repo.clone(),
        range: None,
        refs: vec!["main".into(), forged.clone()],
        repository: Some("github.com/acme/payments".into()),
    };
    let all = observe(&src, &[], &certs).unwrap();
    let find = |sha: &str| {
        all.iter()
            .find(|o| o.sha == sha)
            .unwrap_or_else(|| panic!("{sha} not observed"))
            .clone()
    };
    let sig = |sha: &str| find(sha).signature;

    let p = sig(&by_pat);
    assert_eq!(
        (p.format, p.verdict),
        (SignatureFormat::OpenPgp, SignatureVerdict::Verified),
        "{}",
        p.detail
    );
    assert_eq!(p.signer_identity, "pat@example.com");
    assert_eq!(p.key_fingerprint, pat[0]);
    // The recorded certificate is Pat's as Pat signed it: Quinn's
    // certification is not part of it, so the exported key is not what was
    // recorded, and is refused as a recorded certificate.
    let pat_export = gpg.run(&["--export", "pat@example.com"]);
    assert!(!p.signer_key.is_empty() && p.signer_key.len() < pat_export.len());
    assert_eq!(
        OpenPgpCert::from_recorded(&p.signer_key).unwrap().identity,
        "pat@example.com"
    );
    let e = OpenPgpCert::from_recorded(&pat_export).unwrap_err();
    assert!(e.contains("parts its primary key did not sign"), "{e}");

    // A signing subkey verifies, and its own fingerprint is recorded.
    let q = sig(&by_quinn);
    assert_eq!(q.verdict, SignatureVerdict::Verified, "{}", q.detail);
    assert_eq!(
        (q.signer_identity.as_str(), q.key_fingerprint.as_str()),
        ("quinn@example.com", quinn[1].as_str())
    );

    let u = sig(&by_uma);
    assert_eq!(u.verdict, SignatureVerdict::Verified, "{}", u.detail);
    assert_eq!(u.signer_identity, "uma@work.example");

    let r = sig(&by_rex);
    assert_eq!(r.verdict, SignatureVerdict::UntrustedKey);
    assert_eq!(r.key_fingerprint, rex[0]);
    assert!(
        r.detail.contains("no certificate of the keyring"),
        "{}",
        r.detail
    );
    assert!(r.signer_key.is_empty());

    let s = sig(&by_sam);
    assert_eq!(s.verdict, SignatureVerdict::UntrustedKey);
    assert!(
        s.detail.contains("the certificate is revoked"),
        "{}",
        s.detail
    );
    assert_eq!(s.signer_identity, "sam@example.com");

    let o = sig(&by_olga);
    assert_eq!(o.verdict, SignatureVerdict::UntrustedKey);
    assert!(
        o.detail.contains("expired at Unix time 162"),
        "{}",
        o.detail
    );

    let f = sig(&forged);
    assert_eq!(f.verdict, SignatureVerdict::Bad);
    assert_eq!(f.key_fingerprint, pat[0]);
    assert!(f.detail.contains("changed after signing"), "{}", f.detail);
    assert_eq!(find(&forged).commit.author.email, "mallory@example.com");
    assert_eq!(sig(&unsigned).verdict, SignatureVerdict::Unsigned);

    // With no keyring, a good signature is from a key nobody trusts.
    let bare = observe(&src, &[], &[]).unwrap();
    let p0 = &bare.iter().find(|o| o.sha == by_pat).unwrap().signature;
    assert_eq!(p0.verdict, SignatureVerdict::UntrustedKey);
    assert_eq!(p0.key_fingerprint, pat[0]);

    // Every verdict survives the log's checks; lies about what the
    // signature and the recorded certificate show do not.
    for o in &all {
        decode_event(&as_event(o)).unwrap();
        assert_eq!(recheck(o), Ok(()), "{}", o.sha);
    }
    let lie = |sha: &str, edit: &dyn Fn(&mut docket::event::CommitSignature)| {
        let mut o = find(sha);
        edit(&mut o.signature);
        recheck(&o).unwrap_err()
    };
    let e = lie(&by_pat, &|s| s.verdict = SignatureVerdict::Bad);
    assert!(e.contains("bad but the OpenPGP signature verifies"), "{e}");
    let e = lie(&forged, &|s| s.verdict = SignatureVerdict::Verified);
    assert!(e.contains("does not verify over this commit"), "{e}");
    let e = lie(&by_pat, &|s| s.signer_key.clear());
    assert!(e.contains("must carry the signer's certificate"), "{e}");
    let e = lie(&by_pat, &|s| s.signer_key = q.signer_key.clone());
    assert!(
        e.contains("no key of this certificate made the signature"),
        "{e}"
    );
    let e = lie(&by_pat, &|s| s.key_fingerprint = quinn[1].clone());
    assert!(e.contains("is not that of the signing key"), "{e}");
    let e = lie(&by_pat, &|s| s.signer_key = pat_export.clone());
    assert!(
        e.starts_with("signer_key: ") && e.contains("did not sign"),
        "{e}"
    );
    let sam_cert = certs[2].bytes().to_vec();
    let e = lie(&by_sam, &|s| {
        s.verdict = SignatureVerdict::Verified;
        s.signer_key = sam_cert.clone();
    });
    assert!(
        e.contains("may not vouch for anything: the certificate is revoked"),
        "{e}"
    );
    // A certificate only comes with a verified or bad OpenPGP verdict.
    for (sha, verdict) in [
        (&unsigned, SignatureVerdict::Unsigned),
        (&by_rex, SignatureVerdict::UntrustedKey),
    ] {
        let mut o = find(sha);
        o.signature.verdict = verdict;
        o.signature.signer_key = p.signer_key.clone();
        let e = decode_event(&as_event(&o)).unwrap_err();
        assert_eq!(e.field, "commit_observed.signature.signer_key", "{e}");
    }

    // Edited signature packets. A signature that is not of a binary
    // document (here: its type byte made "standalone") or that uses SHA-1
    // is not checked at all, whatever key made it.
    let pat_sig = find(&by_pat).commit.signature.unwrap();
    for (offset, value, why) in [
        (1, 0x02, "not of a binary document"),
        (3, 2, "the hash SHA1"),
    ] {
        let mut packet = unarmor(&pat_sig);
        let body = header_len(&packet);
        packet[body + offset] = value;
        let sha = with_signature(&repo, &by_pat, &armor(&packet));
        let o = observe(
            &GitSource {
                refs: vec![sha.clone()],
                ..src.clone()
            },
            &[],
            &certs,
        )
        .unwrap()
        .into_iter()
        .find(|o| o.sha == sha)
        .unwrap();
        assert_eq!(o.signature.verdict, SignatureVerdict::Unverifiable, "{why}");
        assert!(o.signature.detail.contains(why), "{}", o.signature.detail);
        assert_eq!(recheck(&o), Ok(()));
        let mut lie = o.clone();
        lie.signature.verdict = SignatureVerdict::Verified;
        lie.signature.signer_key = p.signer_key.clone();
        lie.signature.key_fingerprint = pat[0].clone();
        let e = recheck(&lie).unwrap_err();
        assert!(e.contains(why) && e.contains("must be unverifiable"), "{e}");
    }
    // Issuer hints outside the signed area name nobody: Pat's signature with
    // Quinn's signing subkey added as an unsigned issuer fingerprint is
    // still Pat's, and cannot be passed off as a bad signature by Quinn.
    let mut packet = unarmor(&pat_sig);
    add_unhashed_issuer(&mut packet, &quinn[1]);
    let hinted = with_signature(&repo, &by_pat, &armor(&packet));
    let o = observe(
        &GitSource {
            refs: vec![hinted.clone()],
            ..src.clone()
        },
        &[],
        &certs,
    )
    .unwrap()
    .into_iter()
    .find(|o| o.sha == hinted)
    .unwrap();
    assert_eq!(
        o.signature.verdict,
        SignatureVerdict::Verified,
        "{}",
        o.signature.detail
    );
    assert_eq!(o.signature.key_fingerprint, pat[0]);
    let mut lie = o.clone();
    lie.signature.verdict = SignatureVerdict::Bad;
    lie.signature.signer_key = q.signer_key.clone();
    lie.signature.key_fingerprint = quinn[1].clone();
    let e = recheck(&lie).unwrap_err();
    assert!(
        e.contains("no key of this certificate made the signature"),
        "{e}"
    );

    // The CLI reads the keyring and reports each verdict.
    let out = std::process::Command::new(crate::common::BIN)
        .args(["git", "ingest", "--repo"])
        .arg(&repo)
        .args(["--ref", "main", "--dry-run", "--openpgp-keyring"])
        // No server: the dry run says it cannot read the principals' keys.
        .env("DOCKET_DATA", "/nonexistent/docket-data")
        .env_remove("DOCKET_SERVER")
        .arg(&keyring)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("warning: the principals' keys could not be read"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (sha, verdict) in [
        (&by_pat, "verified"),
        (&by_quinn, "verified"),
        (&by_rex, "untrusted-key"),
        (&unsigned, "unsigned"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{} {verdict} ", &sha[..12]))),
            "{sha} {verdict}: {text}"
        );
    }
    // A certificate that its own signatures do not hold together is
    // skipped with a warning, and its signatures are from an untrusted key;
    // the rest of the keyring still counts.
    let mut broken = gpg.run(&[
        "--export",
        "--export-options",
        "export-minimal",
        "pat@example.com",
    ]);
    *broken.last_mut().unwrap() ^= 1; // the self-signature's last byte
    let mixed = dir.path().join("mixed.gpg");
    std::fs::write(
        &mixed,
        [broken, gpg.run(&["--export", "quinn@example.com"])].concat(),
    )
    .unwrap();
    let ring = read_keyring(&mixed).unwrap();
    let ids: Vec<&str> = ring.certs.iter().map(|c| c.identity.as_str()).collect();
    assert_eq!(ids, ["quinn@example.com"]);
    assert_eq!(ring.skipped.len(), 1);
    assert!(
        ring.skipped[0].contains(&pat[0]) && ring.skipped[0].contains("signed by the primary key"),
        "{:?}",
        ring.skipped
    );
    let out = std::process::Command::new(crate::common::BIN)
        .args(["git", "ingest", "--repo"])
        .arg(&repo)
        .args(["--ref", "main", "--dry-run", "--openpgp-keyring"])
        // No server: the dry run says it cannot read the principals' keys.
        .env("DOCKET_DATA", "/nonexistent/docket-data")
        .env_remove("DOCKET_SERVER")
        .arg(&mixed)
        .output()
        .unwrap();
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("skipped certificate {}", pat[0])),
        "{err}"
    );
    assert!(
        text.contains(&format!("{} untrusted-key ", &by_pat[..12]))
            && text.contains(&format!("{} verified ", &by_quinn[..12])),
        "{text}"
    );
    // A keyring that is not one is a usage error naming the file.
    let junk = dir.path().join("junk.asc");
    std::fs::write(&junk, "not a key\n").unwrap();
    let out = std::process::Command::new(crate::common::BIN)
        .args(["git", "ingest", "--repo"])
        .arg(&repo)
        .args(["--ref", "main", "--dry-run", "--openpgp-keyring"])
        // No server: the dry run says it cannot read the principals' keys.
        .env("DOCKET_DATA", "/nonexistent/docket-data")
        .env_remove("DOCKET_SERVER")
        .arg(&junk)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("OpenPGP keyring") && err.contains("junk.asc"),
        "{err}"
    );

    // The server takes the honest verdict and refuses a forged one.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let s = crate::common::server().run().await;
        let submit = |obs: docket::event::CommitObservation, id: &str| {
            let ev = Event {
                event_id: id.into(),
                claimed_time_nanos: crate::common::now_nanos(),
                signer: PrincipalId::parse("admin").unwrap(),
                body: Body::CommitObserved(Box::new(obs)),
            };
            docket::api::convert::sign_event(&ev, &s.admin_key())
        };
        let before = s.size().await;
        let mut lie = find(&forged);
        lie.signature.verdict = SignatureVerdict::Verified;
        let e = s
            .svc
            .append(submit(lie, "forged"), "CN=test".into())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("commit_observed.signature") && e.contains("does not verify"),
            "{e}"
        );
        assert_eq!(s.size().await, before);
        s.svc
            .append(submit(find(&by_pat), "honest"), "CN=test".into())
            .await
            .unwrap();
        assert_eq!(s.size().await, before + 1);
    });
}

/// The OpenPGP packet inside an armored signature.
fn unarmor(armored: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = armored
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && !l.starts_with('=') && !l.is_empty())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn armor(packet: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "-----BEGIN PGP SIGNATURE-----\n\n{}\n-----END PGP SIGNATURE-----",
        base64::engine::general_purpose::STANDARD.encode(packet)
    )
}

/// The length of a packet's header (RFC 9580 §4.2).
fn header_len(p: &[u8]) -> usize {
    if p[0] & 0x40 == 0 {
        [2, 3, 5][(p[0] & 3) as usize]
    } else if p[1] < 192 {
        2
    } else if p[1] < 224 {
        3
    } else {
        6
    }
}

/// Appends an Issuer Fingerprint subpacket (v4) to the unhashed area of a
/// v4 signature packet, and re-frames the packet.
fn add_unhashed_issuer(packet: &mut Vec<u8>, fingerprint: &str) {
    let mut body = packet[header_len(packet)..].to_vec();
    assert_eq!(body[0], 4);
    let hashed = u16::from_be_bytes([body[4], body[5]]) as usize;
    let at = 6 + hashed;
    let unhashed = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    let mut sub = vec![22, 33, 4];
    sub.extend(hex::decode(fingerprint).unwrap());
    let grown = u16::try_from(unhashed + sub.len()).unwrap();
    body.splice(at + 2 + unhashed..at + 2 + unhashed, sub);
    body[at..at + 2].copy_from_slice(&grown.to_be_bytes());
    // An old-format header with a one-byte length, as gpg writes.
    *packet = [vec![0x88, u8::try_from(body.len()).unwrap()], body].concat();
}

/// Writes a copy of commit `sha` whose `gpgsig` header is `armored`.
fn with_signature(repo: &Path, sha: &str, armored: &str) -> String {
    let raw = git(repo, &["cat-file", "commit", sha]) + "\n";
    let (head, msg) = raw.split_once("\n\n").unwrap();
    let kept: Vec<&str> = head
        .lines()
        .filter(|l| !l.starts_with("gpgsig ") && !l.starts_with(' '))
        .collect();
    let sig: Vec<String> = armored
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("gpgsig {l}")
            } else {
                format!(" {l}")
            }
        })
        .collect();
    hash_object(
        repo,
        &format!("{}\n{}\n\n{msg}", kept.join("\n"), sig.join("\n")),
    )
}

/// Good and author-rewritten observations of commits signed by an Ed25519
/// key and by an RSA signing subkey, made once for the property below.
fn openpgp_fixture() -> &'static [(
    docket::event::CommitObservation,
    docket::event::CommitObservation,
)] {
    static FIXTURE: std::sync::OnceLock<
        Vec<(
            docket::event::CommitObservation,
            docket::event::CommitObservation,
        )>,
    > = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let gpg = Gpg::new(dir.path());
        gpg.pat_and_quinn();
        let certs = gpg
            .keyring(
                &dir.path().join("keyring.asc"),
                &["pat@example.com", "quinn@example.com"],
            )
            .certs;
        let mut shas = Vec::new();
        for (name, email) in [("Pat", "pat@example.com"), ("Quinn", "quinn@example.com")] {
            let good = gpg.commit(&repo, name, email, &format!("{name}.txt"));
            let raw = git(&repo, &["cat-file", "commit", &good]) + "\n";
            let forged = hash_object(
                &repo,
                &raw.replace(&format!("author {name} <"), "author Mallory <"),
            );
            shas.push((good, forged));
        }
        let refs = shas
            .iter()
            .flat_map(|(g, f)| [g.clone(), f.clone()])
            .collect();
        let src = GitSource {
            repo: repo.clone(),
            range: None,
            refs,
            repository: Some("acme/app".into()),
        };
        let all = observe(&src, &[], &certs).unwrap();
        let find = |sha: &str| all.iter().find(|o| o.sha == sha).unwrap().clone();
        shas.iter()
            .map(|(g, f)| {
                let (good, forged) = (find(g), find(f));
                assert_eq!(good.signature.verdict, SignatureVerdict::Verified);
                assert_eq!(forged.signature.verdict, SignatureVerdict::Bad);
                (good, forged)
            })
            .collect()
    })
}

fn mutate(bytes: &mut Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) {
    for &(at, b) in edits {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] ^= b.max(1);
        }
    }
    if let Some(c) = cut {
        bytes.truncate(c % (bytes.len() + 1));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
    /// Whatever bytes a client puts in the recorded certificate or the
    /// commit's OpenPGP signature, the re-check answers (it never panics),
    /// and no edit makes it accept a genuinely good signature as bad or a
    /// signature over another commit as verified.
    #[test]
    fn mutated_openpgp_evidence_never_flips_a_verdict(
        which in 0usize..2,
        target in 0u8..3,
        edits in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..=255), 1..6),
        cut in proptest::option::weighted(0.2, proptest::prelude::any::<usize>()),
    ) {
        let (good, forged) = &openpgp_fixture()[which];
        let mut o = match target {
            0 => good.clone(),
            _ => forged.clone(),
        };
        match target {
            // A genuinely good signature claimed bad, with an edited certificate.
            0 => {
                o.signature.verdict = SignatureVerdict::Bad;
                mutate(&mut o.signature.signer_key, &edits, cut);
            }
            // A signature over the original commit claimed verified for the
            // rewritten one, with an edited certificate...
            1 => {
                o.signature.verdict = SignatureVerdict::Verified;
                mutate(&mut o.signature.signer_key, &edits, cut);
            }
            // ...or with an edited signature packet.
            _ => {
                o.signature.verdict = SignatureVerdict::Verified;
                let mut packet = unarmor(o.commit.signature.as_deref().unwrap());
                mutate(&mut packet, &edits, cut);
                o.commit.signature = Some(armor(&packet));
            }
        }
        let answer = recheck(&o);
        proptest::prop_assert!(answer.is_err(), "accepted: {:?}", o.signature);
    }
}

/// What a repository supplies (author, e-mail, summary) is printed with
/// control and text-reordering characters escaped: a commit cannot drive
/// the terminal of whoever ingests it, nor make its line read otherwise.
#[test]
fn ingest_prints_what_a_repository_says_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let tree = git(&repo, &["write-tree"]);
    let sha = hash_object(
        &repo,
        &format!(
            "tree {tree}\n\
             author Eve\u{1b}[2J <eve\u{202e}@example.com> 1700000000 +0000\n\
             committer Eve <eve@example.com> 1700000000 +0000\n\n\
             fix \u{9b}31m typo\u{200b}\n"
        ),
    );
    git(&repo, &["update-ref", "refs/heads/main", &sha]);
    let out = std::process::Command::new(crate::common::BIN)
        .args(["git", "ingest", "--repo"])
        .arg(&repo)
        .args(["--ref", "main", "--dry-run"])
        // No server: the dry run says it cannot read the principals' keys.
        .env("DOCKET_DATA", "/nonexistent/docket-data")
        .env_remove("DOCKET_SERVER")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with(&sha[..12]))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(r"Eve\u{1b}[2J <eve\u{202e}@example.com> fix \u{9b}31m typo\u{200b}"),
        "{line}"
    );
    assert!(
        !text.contains(['\u{1b}', '\u{202e}', '\u{9b}', '\u{200b}']),
        "{text}"
    );
}

/// Repositories as CI and people make them, which the ingester must record
/// honestly or refuse plainly (from a run with hostile repositories): a
/// shallow clone's boundary commit, whose parent is absent, claims no
/// changed paths; a file name the log could not hold is counted, not
/// listed; an RSA key too short to verify gives "unverifiable", not a false
/// "bad"; a signature for another namespace says so; an allowed-signers
/// date at the end of year 9999 reads as "never"; a commit object too large
/// to record is named before anything is sent; `--ref` with `--range` is
/// refused instead of losing history.
#[test]
fn hostile_repositories_are_recorded_honestly_or_refused_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let rsa = ssh_key_of(dir.path(), "rsa1024", "rsa", Some("1024"));
    let alice = ssh_key(dir.path(), "alice_ssh");
    let first = commit(&repo, "Alice", "alice@example.com", None, "a.txt", "one");
    let short_rsa = commit(
        &repo,
        "Alice",
        "alice@example.com",
        Some(&rsa),
        "a.txt",
        "two",
    );
    let bell = commit(
        &repo,
        "Alice",
        "alice@example.com",
        None,
        "bel\u{7}",
        "a name with a control character",
    );
    // A file name that is not UTF-8 (Latin-1 "latén"), committed with b.txt.
    {
        use std::os::unix::ffi::OsStrExt as _;
        std::fs::write(repo.join(std::ffi::OsStr::from_bytes(b"lat\xe9n")), "x\n").unwrap();
    }
    git(&repo, &["add", "-A"]);
    let latin = commit(
        &repo,
        "Alice",
        "alice@example.com",
        None,
        "b.txt",
        "a name that is not UTF-8",
    );
    // Alice's key signed the commit for the "file" namespace, not "git".
    let plain = git(&repo, &["cat-file", "commit", &first]) + "\n";
    let payload = dir.path().join("payload");
    std::fs::write(&payload, &plain).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "file", "-f"])
        .arg(&alice)
        .arg(&payload)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let armored = std::fs::read_to_string(format!("{}.sig", payload.display())).unwrap();
    let (head, msg) = plain.split_once("\n\n").unwrap();
    let gpgsig = armored.trim_end().replace('\n', "\n ");
    let other_ns = hash_object(&repo, &format!("{head}\ngpgsig {gpgsig}\n\n{msg}"));

    let allowed = dir.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        format!(
            "alice@example.com valid-before=\"99991231\" {}rsa@example.com {}",
            std::fs::read_to_string(format!("{}.pub", alice.display())).unwrap(),
            std::fs::read_to_string(format!("{}.pub", rsa.display())).unwrap(),
        ),
    )
    .unwrap();
    let trusted = read_allowed_signers(&allowed).unwrap();
    assert_eq!(trusted.len(), 2);
    let src = |repo: &Path, refs: Vec<String>| GitSource {
        repo: repo.to_owned(),
        range: None,
        refs,
        repository: Some("github.com/acme/payments".into()),
    };
    let all = observe(
        &src(&repo, vec!["main".into(), other_ns.clone()]),
        &trusted,
        &[],
    )
    .unwrap();
    let find = |sha: &str| all.iter().find(|o| o.sha == sha).unwrap();
    let s = &find(&short_rsa).signature;
    assert_eq!(s.verdict, SignatureVerdict::Unverifiable, "{}", s.detail);
    assert!(
        s.detail
            .contains("RSA keys under 2048 or over 4096 bits (this one has 1024)"),
        "{}",
        s.detail
    );
    recheck(find(&short_rsa)).unwrap();
    let s = &find(&other_ns).signature;
    assert_eq!(s.verdict, SignatureVerdict::Bad, "{}", s.detail);
    assert!(
        s.detail.contains("for the namespace \"file\", not \"git\""),
        "{}",
        s.detail
    );
    let c = &find(&bell).changed;
    assert_eq!((c.added, c.paths.len(), c.truncated), (1, 0, true), "{c:?}");
    // Counted, not listed under a lossy spelling that names no file.
    let c = &find(&latin).changed;
    assert_eq!(
        (c.added, c.paths.as_slice(), c.truncated),
        (2, ["b.txt".to_owned()].as_slice(), true),
        "{c:?}"
    );
    // From a directory inside the work tree, as git finds its repository.
    std::fs::create_dir(repo.join("sub")).unwrap();
    let inside = observe(&src(&repo.join("sub"), vec![latin.clone()]), &trusted, &[]).unwrap();
    assert_eq!(inside.last().map(|o| o.sha.as_str()), Some(latin.as_str()));
    for o in &all {
        decode_event(&as_event(o)).unwrap();
    }

    // A shallow clone: its boundary commit's parent is not there.
    let shallow = dir.path().join("shallow");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--depth",
            "1",
            &format!("file://{}", repo.display()),
            shallow.to_str().unwrap(),
        ],
    );
    let got = observe(&src(&shallow, vec!["HEAD".into()]), &trusted, &[]).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sha, latin);
    let c = &got[0].changed;
    assert_eq!(
        (c.added, c.modified, c.deleted, c.paths.len(), c.truncated),
        (0, 0, 0, 0, true),
        "{c:?}"
    );

    // Too large to record: named by commit, before any append.
    let big = hash_object(&repo, &format!("{head}\n\n{}\n", "x".repeat(300 << 10)));
    let e = observe(&src(&repo, vec![big.clone()]), &trusted, &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("commit {big}: its object is"))
            && e.contains("at most 262144 bytes"),
        "{e}"
    );
    let e = observe(
        &GitSource {
            range: Some(format!("{first}..{bell}")),
            ..src(&repo, vec!["main".into()])
        },
        &trusted,
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not both"), "{e}");
}
