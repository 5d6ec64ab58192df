//! Table-driven policy tests: every rule kind, the messages for bad
//! policies, and properties of approval counting.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use proptest::prelude::*;

use super::*;

const POLICY: &str = r#"
version = 1

[permissions]
open_change = ["dev", "ci"]
approve = ["dev", "security"]
break_glass = ["sre"]
report = ["ci"]
propose_policy = ["policy-admin"]
approve_policy = ["policy-admin"]

[policy_changes]
approvals = 2
roles = ["policy-admin"]

[[rule]]
name = "prod"
description = "two approvals, one from security, CI passed, promoted from staging"
match.environments = ["prod"]
match.repositories = ["github.com/acme/*"]
match.actions = ["deploy"]
approvals = 2
approver_roles = ["dev", "security"]
require_roles = [{ role = "security", count = 1 }]
ci_passed = true
promoted_from = "staging"
max_approval_age = "7d"

[[rule]]
name = "staging"
match.environments = ["staging"]
approvals = 1

[[rule]]
name = "dev-anything"
match.environments = ["dev*"]

[[freeze]]
name = "year-end"
start = "2026-12-20T00:00"
end = "2027-01-04T00:00"
zone = "Europe/Berlin"
environments = ["prod"]
"#;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn strs(v: &[&'static str]) -> BTreeSet<&'static str> {
    v.iter().copied().collect()
}

/// The same, as facts hold them.
fn cows(v: &[&'static str]) -> BTreeSet<Cow<'static, str>> {
    v.iter().map(|s| Cow::Borrowed(*s)).collect()
}

/// `who` as the author of the first of the change's `commits`, for
/// [`ChangeFacts::authors`].
fn wrote(who: &'static str) -> (Cow<'static, str>, Authorship) {
    (
        who.into(),
        Authorship {
            roles: Authorship::AUTHOR,
            commit: 0,
        },
    )
}

fn nanos(s: &str) -> i64 {
    i64::try_from(ts(s).as_nanosecond()).unwrap()
}

fn people() -> Principals {
    let p = |human, roles: &[&str]| PrincipalFacts {
        human,
        roles: set(roles),
    };
    Principals::from_iter([
        ("alice".into(), p(true, &["dev"])),
        ("bob".into(), p(true, &["dev"])),
        ("carol".into(), p(true, &["security"])),
        ("dave".into(), p(true, &["sre"])),
        ("erin".into(), p(true, &["qa"])),
        ("ci".into(), p(false, &["ci"])),
        ("bot".into(), p(false, &["dev"])),
    ])
}

const D: &str = "sha256:aaaa";
const NOW: &str = "2026-11-23T12:00:00Z";

/// Entry indices for reviews, increasing like a log's.
static NEXT_INDEX: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(10);

fn approval(who: &str, at: &str) -> Approval<'static> {
    Approval {
        approver: Cow::Owned(who.into()),
        seen: SubjectsKey::of(strs(&["c1", D])),
        at_nanos: nanos(at),
        approve: true,
        comment: Cow::Borrowed(""),
        index: NEXT_INDEX.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        key_revoked_at: None,
    }
}

fn rejection(who: &str, comment: &str) -> Approval<'static> {
    Approval {
        approve: false,
        comment: Cow::Owned(comment.into()),
        ..approval(who, NOW)
    }
}

fn passed() -> CiFact<'static> {
    CiFact {
        reporter: "ci".into(),
        passed: true,
        description: "run 7 of github-actions build passed at entry 3".into(),
        key_revoked_at: None,
        built_from_unbound: None,
    }
}

fn change(approvals: Vec<Approval<'static>>) -> ChangeFacts<'static> {
    ChangeFacts {
        id: "CHG-1".into(),
        revision: 1,
        revised_at: 0,
        repository: None,
        // Its commits were ingested from there: the repository the request
        // names is confirmed by a recorded fact.
        code_repositories: cows(&["github.com/acme/payments"]),
        requesters: cows(&["alice"]),
        subjects: cows(&["c1", D]),
        subjects_key: None,
        environments: cows(&["staging", "prod"]),
        authors: BTreeMap::from([wrote("alice")]),
        sod_gaps: Vec::new(),
        builders: cows(&["ci"]),
        ci: BTreeMap::from([("c1".into(), vec![passed()]), (D.into(), vec![passed()])]),
        approvals,
        commits: vec![signed_by("c1", "alice")],
        unsourced_digests: Vec::new(),
    }
}

/// A commit recorded as verified, signed by the principal `who`.
fn signed_by(sha: &'static str, who: &'static str) -> CommitFact<'static> {
    CommitFact {
        sha: sha.into(),
        built_into: None,
        verdict: Some("verified".into()),
        signer_identity: who.into(),
        signer: Some(who.into()),
    }
}

fn why_not(v: &Verdict) -> BTreeMap<String, String> {
    v.not_counted
        .iter()
        .map(|n| (n.approver.clone(), n.reason.clone()))
        .collect()
}

fn request(env: &str) -> Request {
    Request {
        action: "deploy".into(),
        environment: env.into(),
        repository: Some("github.com/acme/payments".into()),
        kind: Some("Deployment".into()),
        namespace: Some("payments".into()),
        subjects: set(&[D]),
        actor: "ci".into(),
        break_glass: false,
        at: ts(NOW),
    }
}

fn staged() -> Vec<Deployment<'static>> {
    vec![Deployment {
        action: "deploy".into(),
        environment: "staging".into(),
        subject: D.into(),
        at: ts("2026-11-22T12:00:00Z"),
    }]
}

/// Evaluates and compares decision, rule and a needle in the reasons.
fn check(
    req: Request,
    change: Option<ChangeFacts<'static>>,
    deployments: Vec<Deployment<'static>>,
    expect: (Decision, Option<&str>, &str),
) -> Verdict {
    let policy = Policy::parse(POLICY).unwrap();
    let principals = people();
    let facts = Facts {
        principals: &principals,
        change: change.as_ref(),
        subject_repositories: &BTreeSet::new(),
        unrecorded_subjects: &[],
        deployments: &deployments,
    };
    let v = evaluate(&policy, &req, &facts);
    assert_eq!(v.decision, expect.0, "{v:#?}");
    assert_eq!(v.rule.as_deref(), expect.1, "{v:#?}");
    assert!(
        v.reasons.iter().any(|r| r.contains(expect.2)),
        "no reason contains {:?}: {:#?}",
        expect.2,
        v.reasons
    );
    v
}

/// A prod deploy of `D`, staged, approved by `approvals`, with `runs` as
/// its CI: the verdict and the reasons joined.
fn decide_prod_with_runs(
    policy: &Policy,
    principals: &Principals,
    approvals: Vec<Approval<'static>>,
    runs: Vec<CiFact<'static>>,
) -> (Decision, String) {
    let mut c = change(approvals);
    c.ci.insert(D.into(), runs);
    let deployments = staged();
    let facts = Facts {
        principals,
        change: Some(&c),
        subject_repositories: &BTreeSet::new(),
        unrecorded_subjects: &[],
        deployments: &deployments,
    };
    let v = evaluate(policy, &request("prod"), &facts);
    (v.decision, v.reasons.join("; "))
}

/// `ci_reporters`: only runs by the named principals count for the rule's
/// CI check, so another CI identity's run neither satisfies it nor fails
/// it (it can still hold a deploy back through other facts, policy.md);
/// without the list the latest run by anyone decides.
#[test]
fn ci_reporters_decide_whose_runs_count() {
    use Decision::*;
    let pinned = Policy::parse(&POLICY.replacen(
        "ci_passed = true\n",
        "ci_passed = true\nci_reporters = [\"ci\"]\n",
        1,
    ))
    .unwrap();
    assert_eq!(pinned.rules[0].ci_reporters, set(&["ci"]));
    let open = Policy::parse(POLICY).unwrap();
    let run = |reporter: &'static str, passed: bool, n: u32| CiFact {
        reporter: reporter.into(),
        passed,
        description: format!("run {n} by {reporter}"),
        key_revoked_at: None,
        built_from_unbound: None,
    };
    let ok = vec![approval("bob", NOW), approval("carol", NOW)];
    let mut principals = people();
    principals.insert(
        "ci-sandbox".into(),
        PrincipalFacts {
            human: false,
            roles: set(&["ci"]),
        },
    );
    let decide = |policy: &Policy, runs: Vec<CiFact<'static>>| {
        decide_prod_with_runs(policy, &principals, ok.clone(), runs)
    };
    // A later failure reported by someone else: blocks only when any
    // reporter may speak.
    let runs = vec![run("ci", true, 1), run("ci-sandbox", false, 2)];
    assert_eq!(decide(&pinned, runs.clone()).0, Allow);
    assert_eq!(
        decide(&open, runs),
        (
            Deny,
            "the latest CI run for sha256:aaaa did not pass (run 2 by ci-sandbox)".into()
        )
    );
    // A pass reported only by someone else: counts only when any
    // reporter may speak.
    let runs = vec![run("ci-sandbox", true, 3)];
    assert_eq!(decide(&open, runs.clone()).0, Allow);
    assert_eq!(
        decide(&pinned, runs),
        (
            Deny,
            "no passing CI run by ci is recorded for sha256:aaaa; runs reported by ci-sandbox do not count under this rule".into()
        )
    );
    assert_eq!(
        decide(&pinned, vec![]),
        (
            Deny,
            "no passing CI run by ci is recorded for sha256:aaaa".into()
        )
    );
    // The trusted reporter's own latest run still decides.
    let runs = vec![
        run("ci", true, 4),
        run("ci", false, 5),
        run("ci-sandbox", true, 6),
    ];
    assert_eq!(
        decide(&pinned, runs),
        (
            Deny,
            "the latest CI run by ci for sha256:aaaa did not pass (run 5 by ci)".into()
        )
    );
}

/// A CI run counts only while its reporter may report under the policy in
/// force: taking the role from a runner takes its runs with it, as it does
/// an approver's approvals.
#[test]
fn runs_of_a_reporter_without_the_report_role_do_not_count() {
    use Decision::*;
    let policy = Policy::parse(POLICY).unwrap();
    let mut principals = people();
    let run = |reporter: &'static str, passed: bool| CiFact {
        reporter: reporter.into(),
        passed,
        description: format!("run by {reporter}"),
        key_revoked_at: None,
        built_from_unbound: None,
    };
    let mut decide = |sandbox_roles: &[&str], runs: Vec<CiFact<'static>>| {
        principals.insert(
            "ci-sandbox".into(),
            PrincipalFacts {
                human: false,
                roles: set(sandbox_roles),
            },
        );
        let ok = vec![approval("bob", NOW), approval("carol", NOW)];
        decide_prod_with_runs(&policy, &principals, ok, runs)
    };
    assert_eq!(decide(&["ci"], vec![run("ci-sandbox", true)]).0, Allow);
    assert_eq!(
        decide(&[], vec![run("ci-sandbox", true)]),
        (
            Deny,
            "no passing CI run is recorded for sha256:aaaa; runs reported by ci-sandbox do not count: they do not hold a role that may report under the policy in force (ci)".into()
        )
    );
    // Its later failure no longer speaks either: the trusted run before it decides.
    let runs = vec![run("ci", true), run("ci-sandbox", false)];
    assert_eq!(decide(&["ci"], runs.clone()).0, Deny);
    assert_eq!(decide(&[], runs).0, Allow);
}

/// A run signed with a key revoked or rotated away since no longer
/// counts, pass or fail, whoever reported it: a stolen runner key's word
/// goes with the key, as an approval's does.
#[test]
fn runs_signed_with_a_key_revoked_since_do_not_count() {
    use Decision::*;
    let policy = Policy::parse(POLICY).unwrap();
    let principals = people();
    let run = |passed: bool, key_revoked_at: Option<u64>| CiFact {
        reporter: "ci".into(),
        key_revoked_at,
        passed,
        description: "run by ci".into(),
        built_from_unbound: None,
    };
    let decide = |runs: Vec<CiFact<'static>>| {
        let ok = vec![approval("bob", NOW), approval("carol", NOW)];
        decide_prod_with_runs(&policy, &principals, ok, runs)
    };
    assert_eq!(decide(vec![run(true, None)]).0, Allow);
    assert_eq!(
        decide(vec![run(true, Some(40))]),
        (
            Deny,
            "no passing CI run is recorded for sha256:aaaa; runs signed with a key revoked or rotated away since do not count: by ci (its key was revoked or rotated away at entry 40)".into()
        )
    );
    // A failure signed with the stolen key holds nothing back: the run
    // before it, with the current key, decides.
    assert_eq!(decide(vec![run(true, None), run(false, Some(40))]).0, Allow);
    assert_eq!(decide(vec![run(true, None), run(false, None)]).0, Deny);
}

/// A digest of a change that binds commits must have been built from one
/// of them: approvers reviewed those commits, not the one CI says the
/// artifact holds.
#[test]
fn a_digest_built_from_a_commit_the_change_does_not_bind_is_denied() {
    use Decision::*;
    let ok = vec![approval("bob", NOW), approval("carol", NOW)];
    let mut c = change(ok.clone());
    c.ci.get_mut(D).unwrap().push(CiFact {
        reporter: "ci".into(),
        passed: true,
        description: String::new(),
        key_revoked_at: None,
        built_from_unbound: Some("0123456789abcdef0123456789abcdef01234567".into()),
    });
    check(
        request("prod"),
        Some(c.clone()),
        staged(),
        (
            Deny,
            Some("prod"),
            "sha256:aaaa was built from commit 0123456789ab (a CI run reported by ci), which change CHG-1 does not bind: its approvers did not review that code; amend the change to bind it",
        ),
    );
    // A run signed with a key revoked since says nothing...
    c.ci.get_mut(D).unwrap().last_mut().unwrap().key_revoked_at = Some(40);
    check(
        request("prod"),
        Some(c.clone()),
        staged(),
        (Allow, Some("prod"), "satisfied"),
    );
    c.ci.get_mut(D).unwrap().last_mut().unwrap().key_revoked_at = None;
    // ...and neither does a run by someone who may not report.
    c.ci.get_mut(D).unwrap().last_mut().unwrap().reporter = "bot".into();
    check(
        request("prod"),
        Some(c),
        staged(),
        (Allow, Some("prod"), "satisfied"),
    );
}

#[test]
fn every_rule_kind() {
    use Decision::*;
    let ok = vec![approval("bob", NOW), approval("carol", NOW)];
    // Satisfied: two distinct humans, one from security, CI passed, staged first.
    let v = check(
        request("prod"),
        Some(change(ok.clone())),
        staged(),
        (Allow, Some("prod"), "satisfied"),
    );
    assert_eq!(
        v.counted
            .iter()
            .map(|c| c.approver.as_str())
            .collect::<Vec<_>>(),
        ["bob", "carol"]
    );
    // Promotion order.
    check(
        request("prod"),
        Some(change(ok.clone())),
        vec![],
        (Deny, Some("prod"), "has not been deployed to staging"),
    );
    // Only the same action counts: a digest restarted in staging was not
    // deployed there.
    let mut restarted = staged();
    restarted[0].action = "restart".into();
    check(
        request("prod"),
        Some(change(ok.clone())),
        restarted,
        (
            Deny,
            Some("prod"),
            "sha256:aaaa has not been deployed to staging yet; deploy it there first (its allowed requests there were restart, which do not count as deploying it)",
        ),
    );
    // A deploy to staging counts for any action in prod (a restart, a
    // rollback); a restart in staging counts for a restart in prod.
    let mut restart = request("prod");
    restart.action = "restart".into();
    let mut restart_rule = Policy::parse(POLICY).unwrap();
    restart_rule.rules[0].actions.clear();
    let principals = people();
    let c = change(ok.clone());
    for (staged_as, allowed) in [("deploy", true), ("restart", true), ("delete", false)] {
        let mut d = staged();
        d[0].action = staged_as.into();
        let facts = Facts {
            principals: &principals,
            change: Some(&c),
            subject_repositories: &BTreeSet::new(),
            unrecorded_subjects: &[],
            deployments: &d,
        };
        let v = evaluate(&restart_rule, &restart, &facts);
        assert_eq!(
            v.decision == Allow,
            allowed,
            "staged as {staged_as}: {v:#?}"
        );
    }
    // CI must have passed for the exact digest...
    let mut no_ci = change(ok.clone());
    no_ci.ci.remove(D);
    check(
        request("prod"),
        Some(no_ci),
        staged(),
        (
            Deny,
            Some("prod"),
            "no passing CI run is recorded for sha256:aaaa",
        ),
    );
    // ...and its latest run decides.
    let mut failed = change(ok.clone());
    failed.ci.get_mut(D).unwrap().push(CiFact {
        reporter: "ci".into(),
        passed: false,
        description: "run 8 failed at entry 9".into(),
        key_revoked_at: None,
        built_from_unbound: None,
    });
    check(
        request("prod"),
        Some(failed),
        staged(),
        (
            Deny,
            Some("prod"),
            "the latest CI run for sha256:aaaa did not pass (run 8 failed at entry 9)",
        ),
    );
    // Role constraint: two devs are not enough.
    let v = check(
        request("prod"),
        Some(change(vec![approval("bob", NOW), approval("erin", NOW)])),
        staged(),
        (
            Deny,
            Some("prod"),
            "needs 1 approval(s) from role \"security\"; has 0",
        ),
    );
    assert_eq!(
        why_not(&v)["erin"],
        "erin holds none of the approver roles dev, security"
    );
    // Exclusions: requester/author, CI identity, non-humans, duplicates.
    let v = check(
        request("prod"),
        Some(change(vec![
            approval("alice", NOW),
            approval("ci", NOW),
            approval("bot", NOW),
            approval("carol", NOW),
            approval("carol", NOW),
        ])),
        staged(),
        (
            Deny,
            Some("prod"),
            "needs 2 approvals from distinct people; 1 counted",
        ),
    );
    let why = why_not(&v);
    assert_eq!(why["alice"], "alice requested the change");
    assert_eq!(why["ci"], "ci is the CI identity that built it");
    assert_eq!(why["bot"], "bot is not a human; approvals need people");
    // Carol approved twice: one person, one approval; the earlier one is superseded.
    assert!(
        why["carol"].starts_with("superseded by carol's later review"),
        "{why:?}"
    );
    assert_eq!(v.counted.len(), 1);
    // A commit author who is not the requester is excluded too.
    let mut authored = change(ok.clone());
    authored.authors.extend([wrote("bob")]);
    let v = check(
        request("prod"),
        Some(authored.clone()),
        staged(),
        (Deny, Some("prod"), "1 counted"),
    );
    assert_eq!(why_not(&v)["bob"], "bob is the author of commit c1");
    // The reason says what they were of which commit, and what it was
    // built into when the change binds only the artifact.
    authored.commits.push(CommitFact {
        built_into: Some(D.into()),
        ..signed_by("0123456789abcdef0123", "bob")
    });
    authored.authors.insert(
        "bob".into(),
        Authorship {
            roles: Authorship::AUTHOR | Authorship::COMMITTER | Authorship::SIGNER,
            commit: 1,
        },
    );
    let v = check(
        request("prod"),
        Some(authored),
        staged(),
        (Deny, Some("prod"), "1 counted"),
    );
    assert_eq!(
        why_not(&v)["bob"],
        format!("bob is the author, committer and signer of commit 0123456789ab (built into {D})")
    );
    // Whoever amended the change is a requester too.
    let mut amended_by_bob = change(ok.clone());
    amended_by_bob.requesters.insert("bob".into());
    let v = check(
        request("prod"),
        Some(amended_by_bob),
        staged(),
        (Deny, Some("prod"), "1 counted"),
    );
    assert_eq!(why_not(&v)["bob"], "bob requested the change");
    // Unknown authors: segregation of duties cannot be checked, so deny.
    let mut unknown = change(ok.clone());
    unknown.sod_gaps.push(
        "commit c1 has not been observed (run `docket git ingest`), so its author is unknown"
            .into(),
    );
    check(
        request("prod"),
        Some(unknown),
        staged(),
        (Deny, Some("prod"), "commit c1 has not been observed"),
    );
    // A rejection of the current revision blocks; an approval after it
    // from the same person replaces it.
    let v = check(
        request("prod"),
        Some(change(vec![
            approval("bob", NOW),
            approval("carol", NOW),
            rejection("erin", "breaks the billing export"),
        ])),
        staged(),
        (
            Deny,
            Some("prod"),
            "erin rejected revision 1 of change CHG-1",
        ),
    );
    assert!(
        v.reasons
            .iter()
            .any(|r| r.ends_with(": breaks the billing export"))
    );
    check(
        request("prod"),
        Some(change(vec![
            rejection("bob", "needs a test"),
            approval("bob", NOW),
            approval("carol", NOW),
        ])),
        staged(),
        (Allow, Some("prod"), "satisfied"),
    );
    // Stale approvals after an amend.
    let mut amended = change(ok.clone());
    amended.subjects.insert("c2".into());
    let v = check(
        request("prod"),
        Some(amended),
        staged(),
        (Deny, Some("prod"), "0 counted"),
    );
    assert!(v.not_counted.iter().all(|n| n.reason.starts_with("stale")));
    // A rejection of an earlier revision is stale too.
    let mut amended = change(vec![rejection("erin", "no")]);
    amended.subjects.insert("c2".into());
    let v = check(
        request("prod"),
        Some(amended),
        staged(),
        (Deny, Some("prod"), "0 counted"),
    );
    assert!(!v.reasons.iter().any(|r| r.contains("rejected")));
    // An amend that keeps the subjects (one that only adds `prod` to the
    // environments, or puts back subjects an earlier revision had) still
    // makes the reviews before it stale: they may not have seen it.
    let before = ok.clone();
    let mut amended = change(before);
    amended.revised_at = NEXT_INDEX.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    amended.revision = 2;
    let v = check(
        request("prod"),
        Some(amended.clone()),
        staged(),
        (Deny, Some("prod"), "0 counted"),
    );
    assert_eq!(v.not_counted.len(), 2, "{v:?}");
    assert!(v.not_counted.iter().all(|n| n.reason.starts_with("stale")));
    amended
        .approvals
        .extend([approval("bob", NOW), approval("carol", NOW)]);
    let v = check(
        request("prod"),
        Some(amended),
        staged(),
        (Allow, Some("prod"), "satisfied"),
    );
    assert_eq!(v.counted.len(), 2, "reviews after the amend count: {v:?}");
    // Maximum approval age.
    let old = vec![
        approval("bob", "2026-11-01T00:00:00Z"),
        approval("carol", NOW),
    ];
    let v = check(
        request("prod"),
        Some(change(old)),
        staged(),
        (Deny, Some("prod"), "1 counted"),
    );
    assert_eq!(
        why_not(&v)["bob"],
        "older than the rule's maximum approval age (7d)"
    );
    // The age is measured to the nanosecond: one nanosecond over 7 days
    // is too old, exactly 7 days is not.
    for (at, counts) in [
        ("2026-11-16T11:59:59.999999999Z", false),
        ("2026-11-16T12:00:00Z", true),
    ] {
        let v = check(
            request("prod"),
            Some(change(vec![approval("bob", at), approval("carol", NOW)])),
            staged(),
            if counts {
                (Allow, Some("prod"), "satisfied")
            } else {
                (Deny, Some("prod"), "1 counted")
            },
        );
        assert_eq!(
            v.counted.iter().any(|c| c.approver == "bob"),
            counts,
            "{at}"
        );
    }
    // A stale review sent after a rejection of the current revision does
    // not lift the rejection.
    let stale_seen = SubjectsKey::of(strs(&["c0"]));
    let v = check(
        request("prod"),
        Some(change(vec![
            approval("bob", NOW),
            approval("carol", NOW),
            rejection("erin", "breaks the billing export"),
            Approval {
                seen: stale_seen,
                ..approval("erin", NOW)
            },
        ])),
        staged(),
        (
            Deny,
            Some("prod"),
            "erin rejected revision 1 of change CHG-1",
        ),
    );
    assert!(
        v.not_counted.iter().any(|n| n.approver == "erin"
            && n.reason.starts_with("stale: reviewed an earlier revision of the change; erin's review of this revision (entry")),
        "{v:?}"
    );
    // A rejection that saw an earlier revision, sent after an approval of
    // this one, does not block, but it withdraws that approval.
    let v = check(
        request("prod"),
        Some(change(vec![
            approval("bob", NOW),
            approval("carol", NOW),
            Approval {
                seen: stale_seen,
                ..rejection("bob", "wrong change")
            },
        ])),
        staged(),
        (Deny, Some("prod"), "1 counted"),
    );
    assert!(!v.reasons.iter().any(|r| r.contains("rejected")), "{v:?}");
    let bob: Vec<&str> = v
        .not_counted
        .iter()
        .filter(|n| n.approver == "bob")
        .map(|n| n.reason.as_str())
        .collect();
    assert_eq!(bob.len(), 2, "{v:?}");
    assert!(
        bob.iter()
            .any(|r| r.starts_with("withdrawn by bob's later rejection (entry ")),
        "{bob:?}"
    );
    // The rejection says what it did, not that the approval stands.
    assert!(
        bob.iter().any(|r| r.starts_with(
            "stale: rejected an earlier revision of the change, after bob's approval of this revision (entry "
        ) && r.ends_with("), which it withdraws")),
        "{bob:?}"
    );
    // ...until an approval of this revision after it.
    let v = check(
        request("prod"),
        Some(change(vec![
            approval("bob", NOW),
            approval("carol", NOW),
            Approval {
                seen: stale_seen,
                ..rejection("bob", "wrong change")
            },
            approval("bob", NOW),
        ])),
        staged(),
        (Allow, Some("prod"), "satisfied"),
    );
    assert_eq!(v.counted.len(), 2, "{v:?}");
    // An approver who no longer holds a role that may approve does not
    // count, even under a rule that names no approver roles.
    let policy = Policy::parse(POLICY).unwrap();
    let mut principals = people();
    principals.get_mut("bob").unwrap().roles = set(&["former-staff"]);
    let staging_change = change(vec![approval("bob", NOW)]);
    let v = evaluate(
        &policy,
        &request("staging"),
        &Facts {
            principals: &principals,
            change: Some(&staging_change),
            subject_repositories: &BTreeSet::new(),
            unrecorded_subjects: &[],
            deployments: &[],
        },
    );
    assert_eq!(v.decision, Deny, "{v:?}");
    assert_eq!(
        why_not(&v)["bob"],
        "bob does not hold a role that may approve under the policy in force (dev, security)"
    );
    // No change at all, and nothing recorded says where the digest comes
    // from: the repository the request names is its word alone.
    check(
        request("prod"),
        None,
        staged(),
        (
            Deny,
            None,
            "this request's repository is unknown: the request names github.com/acme/payments, and nothing recorded confirms it",
        ),
    );
    // No change, but a CI run of the digest confirms the repository.
    let v = evaluate(
        &policy,
        &request("prod"),
        &Facts {
            principals: &people(),
            change: None,
            subject_repositories: &strs(&["github.com/acme/payments"]),
            unrecorded_subjects: &[],
            deployments: &staged(),
        },
    );
    assert_eq!(v.decision, Deny, "{v:?}");
    assert_eq!(v.rule.as_deref(), Some("prod"), "{v:?}");
    assert!(
        v.reasons.contains(
            &"no change binds sha256:aaaa for prod; open a change for these subjects".to_owned()
        ),
        "{v:?}"
    );
    // A change for other subjects or environments.
    let mut other = change(ok.clone());
    other.environments = cows(&["staging"]);
    check(
        request("prod"),
        Some(other),
        staged(),
        (Deny, Some("prod"), "does not target prod"),
    );
    // Freeze window, named with its end in its zone.
    let mut frozen = request("prod");
    frozen.at = ts("2026-12-24T10:00:00Z");
    check(
        frozen,
        Some(change(ok.clone())),
        staged(),
        (
            Deny,
            None,
            "freeze window \"year-end\" is in force until 2027-01-04T00:00 Europe/Berlin",
        ),
    );
    // The freeze ends at midnight Berlin time (23:00 UTC).
    let mut after = request("prod");
    after.at = ts("2027-01-03T23:00:00Z");
    let mut fresh = change(vec![
        approval("bob", "2027-01-03T22:00:00Z"),
        approval("carol", "2027-01-03T22:00:00Z"),
    ]);
    fresh
        .approvals
        .iter_mut()
        .for_each(|a| a.seen = SubjectsKey::of(strs(&["c1", D])));
    check(
        after,
        Some(fresh),
        staged(),
        (Allow, Some("prod"), "satisfied"),
    );
    // Matching: first matching rule decides; globs; unmatched is denied.
    check(
        request("dev-eu"),
        None,
        vec![],
        (Allow, Some("dev-anything"), "satisfied"),
    );
    check(
        request("staging"),
        Some(change(vec![approval("bob", NOW)])),
        vec![],
        (Allow, Some("staging"), "satisfied"),
    );
    // Code CI saw in a repository no rule names: unmatched, denied.
    let mut other_repo = request("prod");
    other_repo.repository = Some("github.com/other/x".into());
    let v = evaluate(
        &Policy::parse(POLICY).unwrap(),
        &other_repo,
        &Facts {
            principals: &people(),
            change: None,
            subject_repositories: &strs(&["github.com/other/x"]),
            unrecorded_subjects: &[],
            deployments: &[],
        },
    );
    assert_eq!((v.decision, v.rule.as_deref()), (Deny, None), "{v:?}");
    assert_eq!(
        v.reasons,
        ["no rule matches this request; unmatched requests are denied"]
    );
}

/// Windows that overlap or touch are one freeze for the deployer: the
/// denial says when the last of them ends, not only the first one's end.
#[test]
fn overlapping_freeze_windows_name_the_end_of_the_whole_freeze() {
    let policy = Policy::parse(&format!(
        "{POLICY}\n[[freeze]]\nname = \"january\"\nstart = \"2027-01-02T00:00\"\nend = \"2027-01-10T00:00\"\nzone = \"UTC\"\n\n[[freeze]]\nname = \"audit\"\nstart = \"2027-01-10T00:00\"\nend = \"2027-01-12T00:00\"\nzone = \"UTC\"\nenvironments = [\"prod\"]\n\n[[freeze]]\nname = \"staging-only\"\nstart = \"2027-01-03T00:00\"\nend = \"2027-02-01T00:00\"\nzone = \"UTC\"\nenvironments = [\"staging\"]\n"
    ))
    .unwrap();
    let principals = people();
    let deny_reason = |at: &str| {
        let mut req = request("prod");
        req.at = ts(at);
        let c = change(vec![approval("bob", NOW), approval("carol", NOW)]);
        let facts = Facts {
            principals: &principals,
            change: Some(&c),
            subject_repositories: &BTreeSet::new(),
            unrecorded_subjects: &[],
            deployments: &[],
        };
        let v = evaluate(&policy, &req, &facts);
        assert_eq!(v.decision, Decision::Deny, "{v:#?}");
        v.reasons.join("; ")
    };
    // year-end (to Jan 4, Berlin) overlaps january, which audit continues;
    // the staging-only window does not apply to prod.
    assert_eq!(
        deny_reason("2026-12-24T10:00:00Z"),
        "freeze window \"year-end\" is in force until 2027-01-04T00:00 Europe/Berlin; freeze window \"audit\" continues it, so deployments to prod stay frozen until 2027-01-12T00:00 UTC"
    );
    assert_eq!(
        deny_reason("2027-01-11T10:00:00Z"),
        "freeze window \"audit\" is in force until 2027-01-12T00:00 UTC"
    );
}

#[test]
fn break_glass_allows_with_an_obligation_only_for_its_role() {
    let mut req = request("prod");
    req.break_glass = true;
    req.actor = "dave".into();
    req.at = ts("2026-12-24T10:00:00Z"); // even inside the freeze
    let v = check(
        req.clone(),
        None,
        vec![],
        (Decision::Allow, Some("break-glass"), "recorded"),
    );
    assert_eq!(v.obligations.len(), 1);
    assert_eq!(v.obligations[0].due, ts("2026-12-25T10:00:00Z"));
    assert_eq!(v.obligations[0].not_by, "dave");
    req.actor = "bob".into();
    check(
        req,
        None,
        vec![],
        (
            Decision::Deny,
            None,
            "bob invoked break-glass but holds none of the roles allowed to: sre",
        ),
    );
}

/// A deadline past what the recorded due time can hold (i64 nanoseconds,
/// in 2262) saturates there, in the reason as in the obligation; a new
/// document may not ask for more than 366 days.
#[test]
fn a_break_glass_deadline_too_far_saturates_alike_in_reason_and_obligation() {
    let recorded = POLICY.replacen(
        "[[rule]]",
        "[defaults]\nbreak_glass_review = \"1000000d\"\n\n[[rule]]",
        1,
    );
    assert!(recorded.contains("1000000d") && !POLICY.contains("[defaults]"));
    let policy = Policy::parse(&recorded).unwrap();
    let mut req = request("prod");
    req.break_glass = true;
    req.actor = "dave".into();
    let principals = people();
    let v = evaluate(
        &policy,
        &req,
        &Facts {
            principals: &principals,
            change: None,
            subject_repositories: &BTreeSet::new(),
            unrecorded_subjects: &[],
            deployments: &[],
        },
    );
    let latest = jiff::Timestamp::from_nanosecond(i128::from(i64::MAX)).unwrap();
    assert_eq!(v.obligations[0].due, latest);
    assert!(
        v.reasons[0].ends_with("is due by 2262-04-11T23:47:16.854775807Z"),
        "{:?}",
        v.reasons
    );
    let e = Policy::parse_new(&recorded).unwrap_err();
    assert!(
        e.message
            .contains("defaults.break_glass_review \"1000000d\" is longer than 366d"),
        "{e}"
    );
    let year = recorded.replace("1000000d", "366d");
    Policy::parse_new(&year).unwrap();
}

/// "One from security and one from dba" asks for two people: a person
/// holding both roles fills one of the requirements, and the approvals are
/// placed so that as many requirements as possible are filled.
#[test]
fn a_person_fills_one_role_requirement() {
    use Decision::*;
    let policy = Policy::parse_new(
        "version = 1\n[permissions]\napprove = [\"dev\", \"security\", \"dba\"]\n[[rule]]\nname = \"db\"\napprovals = 2\nrequire_roles = [{ role = \"security\", count = 1 }, { role = \"dba\", count = 1 }]\n",
    )
    .unwrap();
    let mut principals = people();
    let human = |roles: &[&str]| PrincipalFacts {
        human: true,
        roles: set(roles),
    };
    principals.insert("sam".into(), human(&["security", "dba"]));
    principals.insert("dina".into(), human(&["dba"]));
    let decide = |who: &[&str]| {
        let c = change(who.iter().map(|w| approval(w, NOW)).collect());
        let facts = Facts {
            principals: &principals,
            change: Some(&c),
            subject_repositories: &BTreeSet::new(),
            unrecorded_subjects: &[],
            deployments: &[],
        };
        let v = evaluate(&policy, &request("prod"), &facts);
        (v.decision, v.reasons.join("; "), v.counted.len())
    };
    // sam holds both roles: with bob, one requirement stays open.
    assert_eq!(
        decide(&["sam", "bob"]),
        (
            Deny,
            "needs 1 approval(s) from role \"dba\"; has 0 (sam fills the one for \"security\"; a person fills one role requirement only)".into(),
            2
        )
    );
    // carol (security) came second: sam moves over to dba.
    assert_eq!(decide(&["sam", "carol"]).0, Allow);
    assert_eq!(decide(&["dina", "sam"]).0, Allow);
    assert_eq!(
        decide(&["carol", "bob"]),
        (
            Deny,
            "needs 1 approval(s) from role \"dba\"; has 0".into(),
            2
        )
    );
}

/// The placement of approvers on role requirements fills as many as the
/// best assignment does (checked against every assignment of small cases).
#[test]
fn role_requirements_are_filled_as_far_as_any_assignment_can() {
    fn best(need: &mut [u32], holds: &[Vec<usize>]) -> usize {
        let Some((first, rest)) = holds.split_first() else {
            return 0;
        };
        let mut top = best(need, rest);
        for &r in first {
            if need[r] > 0 {
                need[r] -= 1;
                top = top.max(1 + best(need, rest));
                need[r] += 1;
            }
        }
        top
    }
    let case = (
        proptest::collection::vec(1u32..3, 1..4),
        proptest::collection::vec(proptest::collection::btree_set(0usize..3, 0..3), 0..6),
    );
    proptest!(ProptestConfig::with_cases(512), |((need, holds) in case)| {
        let holds: Vec<Vec<usize>> = holds
            .into_iter()
            .map(|h| h.into_iter().filter(|r| *r < need.len()).collect())
            .collect();
        let fills = super::eval::fill_role_requirements(&need, &holds);
        for (a, f) in fills.iter().enumerate() {
            if let Some(r) = f {
                prop_assert!(holds[a].contains(r), "{a} placed on {r} it does not hold");
            }
        }
        for (r, n) in need.iter().enumerate() {
            let placed = fills.iter().filter(|f| **f == Some(r)).count();
            prop_assert!(placed as u32 <= *n, "requirement {r} over-filled");
        }
        let placed = fills.iter().filter(|f| f.is_some()).count();
        prop_assert_eq!(placed, best(&mut need.clone(), &holds));
    });
}

#[test]
fn bad_policies_are_refused_with_line_and_reason() {
    // The line is that of the field at fault, or of the section header when
    // the fault is the section as a whole.
    let cases: &[(&str, usize, &str)] = &[
        ("version = 2\n", 1, "unsupported policy version 2"),
        (
            "version = 1\ncolour = \"red\"\n",
            2,
            "unknown field `colour`",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\napprovals = 1\napprover_roles = []\n",
            5,
            "no one could approve",
        ),
        (
            "version = 1\n[permissions]\napprove = [\"security\"]\n[[rule]]\nname = \"a\"\napprovals = 1\nrequire_roles = [{ role = \"security\", count = 2 }]\n",
            6,
            "approvals = 1 but require_roles asks for 2",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\napprovals = 1\napprover_roles = [\"dev\"]\nrequire_roles = [{ role = \"security\", count = 1 }]\n",
            6,
            "not among approver_roles",
        ),
        (
            "version = 1\n[permissions]\napprove = []\n[[rule]]\nname = \"a\"\napprovals = 2\n",
            6,
            "approvals = 2 but no role holds the approve permission ([permissions] approve = []), so no approval could ever be given",
        ),
        (
            "version = 1\n[permissions]\napprove = [\"dev\"]\n[[rule]]\nname = \"a\"\napprovals = 1\napprover_roles = [\"dev\", \"qa\"]\n",
            7,
            "approver_roles names \"qa\", which does not hold the approve permission",
        ),
        (
            "version = 1\n[permissions]\napprove = [\"dev\"]\n[[rule]]\nname = \"a\"\napprovals = 1\nrequire_roles = [{ role = \"security\", count = 1 }]\n",
            7,
            "role \"security\", which does not hold the approve permission",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\nmatch.environments = [\"prod\"]\npromoted_from = \"prod\"\n",
            5,
            "promoted_from \"prod\" is also one of the environments",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\nmatch.environments = [\"prod*\"]\npromoted_from = \"prod-canary\"\n",
            5,
            "rule \"a\": promoted_from \"prod-canary\", but the rule matches it by the pattern \"prod*\" and no earlier rule decides those requests, so a first deploy to \"prod-canary\" could never be allowed; put a rule for \"prod-canary\" before it",
        ),
        (
            "version = 1\n[[rule]]\nname = \"prod\"\nmatch.environments = [\"prod\"]\npromoted_from = \"staging\"\n[[rule]]\nname = \"staging\"\nmatch.environments = [\"staging\"]\npromoted_from = \"prod\"\n",
            5,
            "promoted_from makes a ring (rule \"prod\" waits for a deploy to \"staging\", rule \"staging\" waits for a deploy to \"prod\"): a first deploy to any of them could never be allowed",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\npromoted_from = \"staging\"\n",
            4,
            "promoted_from \"staging\", but the rule matches every environment and no earlier rule",
        ),
        (
            "version = 1\n[[rule]]\nname = \"canary\"\nmatch.environments = [\"prod-canary\"]\nmatch.actions = [\"deploy\"]\n[[rule]]\nname = \"prod\"\nmatch.environments = [\"prod*\"]\npromoted_from = \"prod-canary\"\n",
            9,
            "\"prod*\" and no earlier rule decides those requests",
        ),
        (
            "version = 1\n[permissions]\napprove = [\"security\", \"dba\"]\n[[rule]]\nname = \"a\"\napprovals = 1\nrequire_roles = [{ role = \"security\", count = 1 }, { role = \"dba\", count = 1 }]\n",
            6,
            "approvals = 1 but require_roles asks for 2 people in all (1 from \"security\", 1 from \"dba\"), and a person fills one role requirement only; raise approvals to at least 2",
        ),
        (
            "version = 1\n[permissions]\napprove = [\"security\"]\n[[rule]]\nname = \"a\"\napprovals = 2\nrequire_roles = [\n  { role = \"security\", count = 1 },\n  { role = \"security\", count = 1 },\n]\n",
            9,
            "require_roles names role \"security\" twice; give it once with the total count",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\n\n[[rule]]\nname = \"a\"\n",
            6,
            "a rule named \"a\" is already defined",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\napprovals = 1\nmax_approval_age = \"7w\"\n",
            5,
            "not a duration",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\nmax_approval_age = \"7d\"\n",
            4,
            "max_approval_age is set but the rule requires no approvals",
        ),
        (
            "version = 1\n[identity_changes]\nexpire_after = \"7w\"\n",
            3,
            "identity_changes.expire_after: \"7w\" is not a duration like 90s, 30m, 12h or 7d",
        ),
        (
            "version = 1\n[identity_changes]\nexpire_after = \"+7d\"\n",
            3,
            "identity_changes.expire_after: \"+7d\" is not a duration like 90s, 30m, 12h or 7d",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\napprovals = 1\nmax_approval_age = \"7\u{e9}\"\n",
            5,
            "max_approval_age: \"7\u{e9}\" is not a duration like 90s, 30m, 12h or 7d",
        ),
        (
            "version = 1\n[identity_changes]\nexpires = \"7d\"\n",
            3,
            "unknown field `expires`",
        ),
        (
            "version = 1\n[policy_changes]\napprovals = 2\nroles = [\"admin\"]\nexpire_after = \"0d\"\n",
            5,
            "policy_changes.expire_after: \"0d\" must be positive",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\nci_reporters = [\"ci\"]\n",
            4,
            "ci_reporters is set but the rule does not require ci_passed = true",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\nci_passed = true\nci_reporters = []\n",
            5,
            "ci_reporters is empty, so no CI run could ever count",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\nci_passed = true\nci_reporters = [\"CI Bot\"]\n",
            5,
            "ci_reporters: principal id \"CI Bot\" must be",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\nci_passed = true\nci_reporters = [\"ci\", \"ci\"]\n",
            5,
            "ci_reporters names \"ci\" twice",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\nmatch.environmnts = [\"x\"]\n",
            4,
            "unknown field `environmnts`",
        ),
        (
            "version = 1\n[[rule]]\nname = \"all\"\n\n[[rule]]\nname = \"prod\"\nmatch.environments = [\"prod\"]\n",
            5,
            "rule \"prod\" can never apply: rule \"all\" (line 2) comes first",
        ),
        (
            "version = 1\n[[rule]]\nname = \"p\"\nmatch.environments = [\"prod*\"]\n\n[[rule]]\nname = \"eu\"\nmatch.environments = [\"prod-eu\"]\nmatch.actions = [\"deploy\"]\n",
            6,
            "rule \"eu\" can never apply: rule \"p\" (line 2)",
        ),
        (
            "version = 1\n[[freeze]]\nname = \"f\"\nstart = \"2026-12-20T00:00\"\nend = \"2026-12-19T00:00\"\nzone = \"UTC\"\n",
            5,
            "ends (2026-12-19T00:00) before it starts",
        ),
        (
            "version = 1\n[[freeze]]\nname = \"f\"\nstart = \"2026-12-20T00:00\"\nend = \"2026-12-21T00:00\"\nzone = \"Mars/Olympus\"\n",
            6,
            "unknown time zone",
        ),
        (
            "version = 1\n[[freeze]]\nname = \"f\"\nstart = \"20 Dec\"\nend = \"2026-12-21T00:00\"\nzone = \"UTC\"\n",
            4,
            "start \"20 Dec\" is not written like 2026-12-20 or 2026-12-20T00:00",
        ),
        (
            "version = 1\n[[freeze]]\nname = \"f\"\nstart = \"2026-13-40\"\nend = \"2026-12-21T00:00\"\nzone = \"UTC\"\n",
            4,
            "start \"2026-13-40\" is not a date-time like 2026-12-20T00:00: ",
        ),
        (
            "version = 1\n[[freeze]]\nname = \"f\"\nstart = \"2026-12-20T00:00\"\nend = \"2026-12-21T00:00\"\nzone = \"UTC\"\n[[freeze]]\nname = \"f\"\nstart = \"2026-12-22T00:00\"\nend = \"2026-12-23T00:00\"\nzone = \"UTC\"\n",
            8,
            "a freeze named \"f\" is already defined",
        ),
        (
            "version = 1\n[policy_changes]\napprovals = 0\nroles = [\"x\"]\n",
            2,
            "at least 1",
        ),
        (
            "version = 1\n[policy_changes]\napprovals = 1\nroles = [\"policy-admin\"]\n",
            2,
            "policy_changes.roles names \"policy-admin\", which does not hold the approve_policy permission",
        ),
        (
            "version = 1\n[defaults]\nunmatched = \"maybe\"\n",
            3,
            "must be \"deny\" or \"allow\"",
        ),
        (
            "version = 1\n[permissions]\napprove_all = [\"x\"]\n",
            3,
            "unknown field `approve_all`",
        ),
        ("version = 1\nrule = 5\n", 2, "invalid type"),
        (
            "version = 1\n[[freeze]]\nname = \"f\"\nstart = \"2026-12-20T00:00\"\nend = \"2027-01-04T00:00-08:00\"\nzone = \"Europe/Berlin\"\n",
            5,
            "end \"2027-01-04T00:00-08:00\" carries a UTC offset or a time zone; write the local time in the freeze's zone (zone = \"Europe/Berlin\") alone",
        ),
        (
            "version = 1\n[[freeze]]\nname = \"f\"\nstart = \"2026-12-20T00:00[America/Los_Angeles]\"\nend = \"2027-01-04T00:00\"\nzone = \"Europe/Berlin\"\n",
            4,
            "start \"2026-12-20T00:00[America/Los_Angeles]\" carries a UTC offset or a time zone",
        ),
        (
            "version = 1\n[[freeze]]\nname = \"f\"\nstart = \"2026-12-20T00:00+01:00\"\nend = \"2027-01-04T00:00\"\nzone = \"Europe/Berlin\"\n",
            4,
            "carries a UTC offset or a time zone",
        ),
        (
            "version = 1\n[[freeze]]\nname = \"f\"\nstart = \"2026-10-24T00:00\"\nend = \"2026-10-25T02:30\"\nzone = \"Europe/Berlin\"\n",
            5,
            "end \"2026-10-25T02:30\" happens twice in Europe/Berlin (a daylight-saving change)",
        ),
        (
            "version = 1\n[[freeze]]\nname = \"f\"\nstart = \"2026-03-29T02:30\"\nend = \"2026-04-01T00:00\"\nzone = \"Europe/Berlin\"\n",
            4,
            "start \"2026-03-29T02:30\" does not exist in Europe/Berlin",
        ),
        (
            "version = 1\n[[freeze]]\nname = \"f\"\nstart = \"2026-12-20T00:00\"\nend = \"2026-12-31T23:59:60\"\nzone = \"UTC\"\n",
            5,
            "end \"2026-12-31T23:59:60\" names a leap second (:60)",
        ),
        (
            "version = 1\n[policy_changes]\napprovals = 4294967295\nroles = [\"admin\"]\n",
            2,
            "policy_changes.approvals = 4294967295 is more than 100: the policy could never be changed again",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\napprovals = 101\n",
            4,
            "rule \"a\": approvals = 101 is more than 100",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\nmatch = { environments = [\"prod\", \"\"] }\n",
            2,
            "rule \"a\": match.environments[1] is empty",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\nmatch = { repositories = [\"\\u001b[31m\"] }\n",
            2,
            "rule \"a\": match.repositories[0] contains a control character",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\\u0000\"\n",
            3,
            "must be at most 256 bytes without control characters",
        ),
        (
            "version = 1\n[permissions]\napprove = [\"Security\"]\n",
            2,
            "permissions.approve: role \"Security\" could never be held: a principal's roles are 1..=64 of a-z 0-9 - _",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\napprovals = 1\napprover_roles = [\"dev\", \"qa team\"]\n",
            5,
            "rule \"a\": approver_roles: role \"qa team\" could never be held",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\napprovals = 1\nrequire_roles = [{ role = \"Sec\", count = 1 }]\n",
            5,
            "rule \"a\": require_roles: role \"Sec\" could never be held",
        ),
        (
            "version = 1\n[policy_changes]\napprovals = 1\nroles = [\"\"]\n",
            2,
            "policy_changes.roles: role \"\" could never be held",
        ),
        // A policy that could never be changed again.
        (
            "version = 1\n[permissions]\napprove_policy = []\n",
            2,
            "permissions.approve_policy is empty and no [policy_changes] table names roles: no one could approve a policy change, so this policy could never be changed",
        ),
        (
            "version = 1\n[permissions]\npropose_policy = []\n",
            2,
            "permissions.propose_policy is empty: no one could propose a policy change, so this policy could never be changed",
        ),
        // A waiting change must have time to gather its approvals.
        (
            "version = 1\n[policy_changes]\napprovals = 2\nroles = [\"admin\"]\nexpire_after = \"1s\"\n",
            5,
            "policy_changes.expire_after: \"1s\" is shorter than 1h",
        ),
        (
            "version = 1\n[identity_changes]\nexpire_after = \"59m\"\n",
            3,
            "identity_changes.expire_after: \"59m\" is shorter than 1h",
        ),
        // Permissions a rule or break-glass needs that no role holds.
        (
            "version = 1\n[permissions]\napprove = []\n",
            2,
            "permissions.break_glass is granted to {\"admin\"} (the default when it is not set) but no role holds approve ([permissions] approve = []), so no break-glass deployment could ever be reviewed and each would become a violation; set break_glass = [] if no one may break glass",
        ),
        (
            "version = 1\n[permissions]\nopen_change = []\n[[rule]]\nname = \"a\"\napprovals = 0\nci_passed = true\n",
            4,
            "ci_passed = true but no role holds the open_change permission ([permissions] open_change = []), so no change could be opened and the rule would deny every request",
        ),
        (
            "version = 1\n[[rule]]\nname = \"k\"\nmatch.kinds = [\"*\"]\n[[rule]]\nname = \"p\"\n",
            5,
            "rule \"p\" can never apply: rule \"k\" (line 2)",
        ),
        (
            "version = 1\n[[rule]]\nname = \"staging\"\nmatch.environments = [\"staging\"]\n[[rule]]\nname = \"prod\"\nmatch.environments = [\"prod\"]\npromoted_from = \"Staging\"\n",
            5,
            "rule \"prod\": promoted_from \"Staging\" names an environment no rule matches",
        ),
        (
            "version = 1\n[permissions]\nopen_change = []\n[[rule]]\nname = \"a\"\napprovals = 1\n",
            6,
            "approvals = 1 but no role holds the open_change permission ([permissions] open_change = []), so no change could be opened and the rule would deny every request",
        ),
        (
            "version = 1\n[permissions]\nreport = []\n[[rule]]\nname = \"a\"\nci_passed = true\n",
            4,
            "ci_passed = true but no role holds the report permission ([permissions] report = []), so no CI run could ever count",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\napprover_roles = [\"admin\"]\n",
            4,
            "rule \"a\": approver_roles is set but the rule requires no approvals",
        ),
        // Patterns no name could match, and a promotion from a pattern.
        (
            "version = 1\n[[rule]]\nname = \"a\"\nmatch.environments = [\"prod \"]\n",
            2,
            "match.environments[0] \"prod \" contains whitespace, which no name has",
        ),
        (
            "version = 1\n[[rule]]\nname = \"s\"\nmatch.environments = [\"staging\"]\n[[rule]]\nname = \"a\"\nmatch.environments = [\"prod\"]\npromoted_from = \"stag*\"\n",
            8,
            "promoted_from \"stag*\" is compared with the environment of earlier deploys as written",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\nmatch.environments = [\"prod\"]\npromoted_from = \"\"\n",
            5,
            "rule \"a\": promoted_from is empty",
        ),
        // A catch-all `*` comes first: the later rules never apply.
        (
            "version = 1\n[[rule]]\nname = \"all\"\nmatch.environments = [\"*\"]\n[[rule]]\nname = \"prod\"\nmatch.environments = [\"prod*\"]\n",
            5,
            "rule \"prod\" can never apply: rule \"all\" (line 2)",
        ),
        (
            "version = 1\n[[rule]]\nname = \"all\"\nmatch.environments = [\"*\"]\n[[rule]]\nname = \"rest\"\n",
            5,
            "rule \"rest\" can never apply: rule \"all\" (line 2)",
        ),
        // Freezes that could never deny, or whose denial could not say which.
        (
            "version = 1\n[[rule]]\nname = \"prod\"\nmatch.environments = [\"prod\"]\n[[freeze]]\nname = \"xmas\"\nstart = \"2026-12-20\"\nend = \"2027-01-04\"\nzone = \"UTC\"\nenvironments = [\"Prod\"]\n",
            5,
            "freeze \"xmas\": environments names \"Prod\", which no rule matches (\"prod\"), so requests for it are denied by default and the freeze could never deny one",
        ),
        (
            "version = 1\n[[freeze]]\nname = \"xmas\"\nstart = \"2026-12-20\"\nend = \"2027-01-04\"\nzone = \"UTC\"\nenvironments = [\"prod \"]\n",
            2,
            "freeze \"xmas\": environments[0] \"prod \" contains whitespace",
        ),
        (
            "version = 1\n[[freeze]]\nname = \"\"\nstart = \"2026-12-20\"\nend = \"2027-01-04\"\nzone = \"UTC\"\n",
            3,
            "freeze name \"\" must be 1 to 256 bytes without control characters",
        ),
        (
            "version = 1\n[[freeze]]\nname = \"f\"\nstart = \"2026-12-20\"\nend = \"2026-12-20T00:00\"\nzone = \"UTC\"\n",
            5,
            "ends (2026-12-20T00:00) when it starts (2026-12-20)",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\n[[rule]]\nname = \"b\"\nname = \"c\"\n",
            6,
            "duplicate key name",
        ),
        (
            "version = 1\n[[rule]]\nname = \"a\"\nsigned_commits = \"yes\"\n",
            4,
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            "version = 1\n[permissions]\nopen_change = []\n[[rule]]\nname = \"a\"\nsigned_commits = true\n",
            4,
            "signed_commits = true but no role holds the open_change permission ([permissions] open_change = []), so no change could be opened",
        ),
        (
            "version = 1\n[permissions]\nreport = []\n[[rule]]\nname = \"a\"\nsigned_commits = true\n",
            4,
            "signed_commits = true but no role holds the report permission ([permissions] report = []), so no commit could ever be recorded, signed or not",
        ),
    ];
    for (text, line, needle) in cases {
        let e = Policy::parse_new(text).expect_err(text);
        assert_eq!(e.line, *line, "{text}\n=> {e}");
        assert!(e.message.contains(needle), "{text}\n=> {e}");
    }
    // Contradictions refused only in new documents: a recorded one (folded
    // from a log or a bundle written before) still reads; everything else is
    // refused in both.
    let new_only = [
        "does not hold the approve permission",
        "no role holds the approve permission",
        "does not hold the approve_policy permission",
        "can never apply",
        "a freeze named",
        "happens twice in",
        "does not exist in",
        "carries a UTC offset",
        "and no earlier rule",
        "people in all",
        "twice; give it once",
        "is more than 100",
        "] is empty",
        "control character",
        "could never be held",
        "names a leap second",
        "could never be changed",
        "no role holds",
        "approver_roles is set but",
        "is shorter than 1h",
        "names an environment no rule matches",
        "contains whitespace",
        "compared with the environment",
        "promoted_from is empty",
        "which no rule matches",
        "freeze name",
        "promoted_from makes a ring",
    ];
    for (text, _, needle) in cases {
        let recorded = Policy::parse(text);
        if new_only.iter().any(|n| needle.contains(n)) {
            assert!(recorded.is_ok(), "{text}\n=> {recorded:?}");
        } else {
            assert!(recorded.is_err(), "{text}");
        }
    }
    assert!(Policy::parse(POLICY).is_ok());
    // promoted_from an environment the rule's pattern matches is fine when
    // an earlier rule decides every request there.
    for text in [
        "version = 1\n[[rule]]\nname = \"canary\"\nmatch.environments = [\"prod-canary\"]\n[[rule]]\nname = \"prod\"\nmatch.environments = [\"prod*\"]\npromoted_from = \"prod-canary\"\n",
        "version = 1\n[[rule]]\nname = \"staging\"\nmatch.environments = [\"staging\"]\n[[rule]]\nname = \"rest\"\npromoted_from = \"staging\"\n",
    ] {
        let p = Policy::parse_new(text).unwrap_or_else(|e| panic!("{text}\n=> {e}"));
        assert_eq!(p.rules.len(), 2);
    }
    // A narrower rule before a broader one is the intended use: both apply.
    let layered = "version = 1\n[[rule]]\nname = \"prod-payments\"\nmatch.environments = [\"prod\"]\nmatch.repositories = [\"github.com/acme/payments\"]\n\n[[rule]]\nname = \"prod\"\nmatch.environments = [\"prod\"]\n";
    assert_eq!(Policy::parse(layered).unwrap().rules.len(), 2);
}

#[test]
fn the_default_policy_parses_and_authorizes_nothing() {
    let p = Policy::parse(DEFAULT_POLICY).unwrap();
    assert!(p.rules.is_empty() && !p.unmatched_allows);
    assert_eq!(p.policy_changes.approvals, 2);
    for perm in Permission::ALL {
        assert!(p.permits(&set(&["admin"]), perm), "{perm:?}");
        assert!(!p.permits(&set(&["dev"]), perm), "{perm:?}");
    }
}

#[test]
fn permissions_and_policy_change_rule() {
    let p = Policy::parse(POLICY).unwrap();
    assert!(p.permits(&set(&["sre"]), Permission::BreakGlass));
    assert!(!p.permits(&set(&["dev"]), Permission::BreakGlass));
    // Unset permissions default to the admin role.
    assert!(p.permits(&set(&["admin"]), Permission::RegisterPrincipals));
    assert!(!p.permits(&set(&["dev"]), Permission::RegisterPrincipals));
    let mut principals = people();
    for who in ["pa1", "pa2", "pa3"] {
        principals.insert(
            who.into(),
            PrincipalFacts {
                human: true,
                roles: set(&["policy-admin"]),
            },
        );
    }
    let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(policy_change_activates(
        &p,
        "pa1",
        &v(&["pa2", "pa3"]),
        &principals
    ));
    assert!(
        !policy_change_activates(&p, "pa1", &v(&["pa1", "pa2"]), &principals),
        "the proposer does not count"
    );
    assert!(
        !policy_change_activates(&p, "pa1", &v(&["pa2", "pa2"]), &principals),
        "one person counts once"
    );
    assert!(
        !policy_change_activates(&p, "pa1", &v(&["pa2", "bob"]), &principals),
        "bob lacks the role"
    );
}

#[test]
fn globs() {
    for (p, t, m) in [
        ("*", "", true),
        ("prod", "prod", true),
        ("prod", "prod2", false),
        ("github.com/acme/*", "github.com/acme/x", true),
        ("github.com/acme/*", "github.com/acmex/y", false),
        ("*-eu-*", "prod-eu-1", true),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("prod-*", "prod-ü", true),
        ("*ß", "straß", true),
        ("ü*é", "überté", true),
        ("ü*é", "übertè", false),
        ("*", "日本", true),
        ("日*", "本日", false),
    ] {
        assert_eq!(glob_match(p, t), m, "{p} vs {t}");
    }
}

proptest! {
    /// No single principal, whatever roles it holds and however many
    /// approvals it signs, satisfies a rule needing two approvers.
    #[test]
    fn one_principal_never_satisfies_two_approvals(
        roles in proptest::collection::btree_set("[a-z]{1,8}|security|dev", 0..4),
        count in 1usize..6,
        human in any::<bool>(),
    ) {
        let policy = Policy::parse(POLICY).unwrap();
        let mut principals = people();
        principals.insert("mallory".into(), PrincipalFacts { human, roles: roles.clone() });
        let c = change((0..count).map(|_| approval("mallory", NOW)).collect());
        let deployments = staged();
        let facts = Facts { principals: &principals, change: Some(&c), subject_repositories: &BTreeSet::new(), unrecorded_subjects: &[], deployments: &deployments };
        let v = evaluate(&policy, &request("prod"), &facts);
        prop_assert_eq!(v.decision, Decision::Deny);
        prop_assert!(v.counted.len() <= 1);
    }

    /// A policy change never activates with fewer distinct qualified
    /// approvers than the policy in force demands.
    #[test]
    fn policy_change_needs_the_demanded_approvals(
        approvers in proptest::collection::vec(0usize..5, 0..8),
        proposer in 0usize..5,
    ) {
        let p = Policy::parse(POLICY).unwrap();
        let mut principals = Principals::default();
        for i in 0..5 {
            principals.insert(format!("p{i}"), PrincipalFacts { human: true, roles: set(&["policy-admin"]) });
        }
        let names: Vec<String> = approvers.iter().map(|i| format!("p{i}")).collect();
        let distinct_others: BTreeSet<_> = approvers.iter().filter(|&&i| i != proposer).collect();
        let active = policy_change_activates(&p, &format!("p{proposer}"), &names, &principals);
        prop_assert_eq!(active, distinct_others.len() >= 2);
    }
}

/// Rules match on the repository of the code being deployed: a request
/// that names none is matched as its change's, one that names another
/// repository than its change's is refused, every repository the code was
/// observed in must fall under the same rule, a repository only the
/// request names is unknown, and an unknown repository stops at the first
/// rule that filters on repositories. So a caller cannot reach a laxer rule
/// by leaving the repository out or naming another.
#[test]
fn the_change_decides_the_repository_a_rule_sees() {
    let policy = Policy::parse_new(
        r#"version = 1
[permissions]
approve = ["dev", "security"]

[[rule]]
name = "payments"
match.environments = ["prod"]
match.repositories = ["github.com/acme/payments"]
approvals = 2

[[rule]]
name = "prod"
match.environments = ["prod"]
"#,
    )
    .unwrap();
    let principals = people();
    let decide_seen =
        |repo: Option<&str>, change_repo: Option<&'static str>, seen: &[&'static str]| {
            let change = ChangeFacts {
                repository: change_repo.map(Cow::Borrowed),
                code_repositories: cows(seen),
                ..change(vec![approval("bob", NOW)])
            };
            let facts = Facts {
                principals: &principals,
                change: Some(&change),
                subject_repositories: &BTreeSet::new(),
                unrecorded_subjects: &[],
                deployments: &[],
            };
            let req = Request {
                repository: repo.map(str::to_owned),
                ..request("prod")
            };
            evaluate(&policy, &req, &facts)
        };
    let decide =
        |repo: Option<&str>, change_repo: Option<&'static str>| decide_seen(repo, change_repo, &[]);
    let payments = Some("github.com/acme/payments");
    for asked in [None, payments] {
        let v = decide_seen(asked, payments, &["github.com/acme/payments"]);
        assert_eq!(
            (v.decision, v.rule.as_deref()),
            (Decision::Deny, Some("payments")),
            "{asked:?}: {v:#?}"
        );
        assert!(
            v.reasons
                .contains(&"needs 2 approvals from distinct people; 1 counted".to_owned()),
            "{v:#?}"
        );
    }
    let v = decide(Some("github.com/acme/other"), payments);
    assert_eq!((v.decision, v.rule), (Decision::Deny, None));
    assert_eq!(
        v.reasons,
        [
            "the request names repository github.com/acme/other but change CHG-1 is for github.com/acme/payments"
        ]
    );
    // Nothing observed: the repository the request or the change names is
    // its opener's word alone, and counts as unknown whichever it names
    // (naming another would otherwise reach the laxer rule; naming the
    // first rule's could pass a stricter later one).
    let other = "github.com/acme/other";
    for named in ["github.com/acme/payments", other] {
        for (asked, claimed, who) in [
            (Some(named), None, format!("the request names {named}")),
            (None, Some(named), format!("change CHG-1 names {named}")),
            (
                Some(named),
                Some(named),
                format!("change CHG-1 names {named}"),
            ),
        ] {
            let v = decide(asked, claimed);
            assert_eq!(
                (v.decision, v.rule.as_deref()),
                (Decision::Deny, None),
                "{v:#?}"
            );
            assert_eq!(
                v.reasons,
                [format!(
                    "rule \"payments\" applies to the repository github.com/acme/payments, and this request's repository is unknown: {who}, and nothing recorded confirms it: no ingested commit or CI run of what is deployed says; ingest its commits or report its CI run"
                )]
            );
        }
    }
    // Nobody names one and nothing was observed: the first rule that
    // filters on repositories might be the one, so the answer is deny.
    let v = decide(None, None);
    assert_eq!((v.decision, v.rule), (Decision::Deny, None));
    assert_eq!(
        v.reasons,
        [
            "rule \"payments\" applies to the repository github.com/acme/payments, and this request's repository is unknown: neither the request nor its change names one and no ingested commit or CI run of it says; ingest its commits or report its CI run"
        ]
    );
    // A subject nothing records, deployed next to one recorded in another
    // repository: its own repository is unknown, so the laxer rule the
    // recorded one leads to is not enough.
    let docs = strs(&["github.com/acme/docs"]);
    let v = evaluate(
        &policy,
        &request("prod"),
        &Facts {
            principals: &principals,
            change: None,
            subject_repositories: &docs,
            unrecorded_subjects: &["sha256:dx"],
            deployments: &[],
        },
    );
    assert_eq!(
        (v.decision, v.rule.as_deref()),
        (Decision::Deny, None),
        "{v:#?}"
    );
    assert_eq!(
        v.reasons,
        [
            "rule \"payments\" applies to the repository github.com/acme/payments, and this request's repository is unknown: no ingested commit or CI run says where sha256:dx come(s) from, while the rest comes from github.com/acme/docs; ingest its commits or report its CI run"
        ]
    );
    // The repository the commits were ingested from (or CI reported)
    // counts even when the change and the request name none...
    let v = decide_seen(None, None, &["github.com/acme/payments"]);
    assert_eq!(v.rule.as_deref(), Some("payments"), "{v:#?}");
    // ...and a change that claims another repository than its code's cannot
    // pick the laxer rule with the claim.
    for (asked, claimed) in [
        (None, Some(other)),
        (Some(other), None),
        (Some(other), Some(other)),
    ] {
        let v = decide_seen(asked, claimed, &["github.com/acme/payments"]);
        assert_eq!(
            (v.decision, v.rule.as_deref()),
            (Decision::Deny, None),
            "{v:#?}"
        );
        assert_eq!(
            v.reasons,
            [
                "the code comes from repositories that different rules govern: github.com/acme/other (rule \"prod\"), github.com/acme/payments (rule \"payments\"); Docket does not combine rules, so deploy them under separate changes"
            ]
        );
    }
    // Without any change, where the subjects were observed still counts:
    // naming another repository does not reach a laxer rule.
    let seen = strs(&["github.com/acme/payments"]);
    let v = evaluate(
        &policy,
        &Request {
            repository: Some(other.to_owned()),
            ..request("prod")
        },
        &Facts {
            principals: &principals,
            change: None,
            subject_repositories: &seen,
            unrecorded_subjects: &[],
            deployments: &[],
        },
    );
    assert_eq!(
        (v.decision, v.rule.as_deref()),
        (Decision::Deny, None),
        "{v:#?}"
    );
    assert!(
        v.reasons[0].starts_with("the code comes from repositories that different rules govern"),
        "{v:#?}"
    );
    // Code observed only in repositories the same rule governs is decided
    // by that rule.
    let v = decide_seen(Some(other), Some(other), &[other, "github.com/acme/docs"]);
    assert_eq!(
        (v.decision, v.rule.as_deref()),
        (Decision::Allow, Some("prod")),
        "{v:#?}"
    );
}

/// `match.kinds`, `match.namespaces` and `match.actions`: a rule applies
/// only when every list it sets matches. A request that leaves out a field
/// a rule matches on (a kind, a namespace) is denied there, since the rule
/// might apply and a later one might be laxer.
#[test]
fn kinds_namespaces_and_actions_select_rules() {
    let policy = Policy::parse_new(
        r#"version = 1
[defaults]
unmatched = "deny"

[[rule]]
name = "payments-deployments"
match.kinds = ["Deployment", "StatefulSet"]
match.namespaces = ["payments-*"]
match.actions = ["deploy"]
"#,
    )
    .unwrap();
    let principals = people();
    let facts = Facts {
        principals: &principals,
        change: None,
        subject_repositories: &BTreeSet::new(),
        unrecorded_subjects: &[],
        deployments: &[],
    };
    let rule = |kind: Option<&str>, namespace: Option<&str>, action: &str| {
        let req = Request {
            kind: kind.map(str::to_owned),
            namespace: namespace.map(str::to_owned),
            action: action.into(),
            ..request("prod")
        };
        let v = evaluate(&policy, &req, &facts);
        (v.rule, v.reasons.join(" | "))
    };
    let applies = Some("payments-deployments".to_owned());
    assert_eq!(
        rule(Some("Deployment"), Some("payments-eu"), "deploy").0,
        applies
    );
    assert_eq!(
        rule(Some("StatefulSet"), Some("payments-us"), "deploy").0,
        applies
    );
    for (kind, namespace, action, why) in [
        (
            Some("CronJob"),
            Some("payments-eu"),
            "deploy",
            "no rule matches",
        ),
        (
            Some("Deployment"),
            Some("billing"),
            "deploy",
            "no rule matches",
        ),
        (
            Some("Deployment"),
            Some("payments-eu"),
            "rollback",
            "no rule matches",
        ),
        // A kind that does not match rules the rule out, whatever the
        // namespace.
        (Some("CronJob"), None, "deploy", "no rule matches"),
        (
            None,
            Some("payments-eu"),
            "deploy",
            "rule \"payments-deployments\" applies to the resource kind Deployment, StatefulSet, and this request's resource kind is unknown: name it (--kind)",
        ),
        (
            Some("Deployment"),
            None,
            "deploy",
            "rule \"payments-deployments\" applies to the namespace payments-*, and this request's namespace is unknown: name it (--namespace)",
        ),
    ] {
        let (rule, reasons) = rule(kind, namespace, action);
        assert_eq!(rule, None, "{kind:?} {namespace:?} {action}");
        assert!(
            reasons.starts_with(why),
            "{kind:?} {namespace:?} {action}: {reasons}"
        );
    }
}

/// Freeze zones come from the database compiled into the binary, whatever
/// the machine's zoneinfo says: here a `$TZDIR` whose `Europe/Berlin` is a
/// fixed UTC+5 would move the window's edges by four hours. The test runs
/// itself again in a child process with `TZDIR` set, so the variable is in
/// place before jiff first reads its global database.
#[test]
fn freeze_zones_ignore_the_machines_zoneinfo() {
    const CHILD: &str = "DOCKET_TEST_TZDIR_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let fake = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(
            fake.to_offset(ts("2026-12-20T00:00:00Z")),
            jiff::tz::offset(5),
            "the machine's zone lookup reads the fake zoneinfo"
        );
        let policy = Policy::parse_new(POLICY).unwrap();
        let freeze = &policy.freezes[0];
        assert_eq!(freeze.start, ts("2026-12-19T23:00:00Z"));
        assert_eq!(freeze.end, ts("2027-01-03T23:00:00Z"));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("Europe")).unwrap();
    // A TZif version 2 file: no transitions, one local time type (+05:00,
    // "+05"), and the footer "<+05>-5". Both data blocks are the same.
    let mut block = Vec::new();
    block.extend_from_slice(b"TZif2");
    block.extend_from_slice(&[0; 15]);
    for count in [0u32, 0, 0, 0, 1, 4] {
        block.extend_from_slice(&count.to_be_bytes());
    }
    block.extend_from_slice(&18_000i32.to_be_bytes());
    block.extend_from_slice(&[0, 0]);
    block.extend_from_slice(b"+05\0");
    let mut tzif = block.clone();
    tzif.extend_from_slice(&block);
    tzif.extend_from_slice(b"\n<+05>-5\n");
    std::fs::write(dir.path().join("Europe/Berlin"), &tzif).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "policy::tests::freeze_zones_ignore_the_machines_zoneinfo",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("TZDIR", dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the child ran the test: {text}");
}

/// Documents being introduced are bounded, so that checking one stays
/// fast (the check that a rule can apply at all is quadratic): one
/// pattern of 87,000 bytes, 65 patterns in a field, 257 rules.
#[test]
fn oversized_new_policies_are_refused_quickly() {
    let long = format!(
        "version = 1\n[[rule]]\nname = \"r1\"\nmatch = {{ environments = [\"*{}b\"] }}\n[[rule]]\nname = \"r2\"\nmatch = {{ environments = [\"{}\"] }}\n",
        "a".repeat(87_000),
        "a".repeat(175_000)
    );
    let e = Policy::parse_new(&long).unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    assert!(
        e.message
            .contains("rule \"r1\": match.environments[0] is 87002 bytes; at most 256"),
        "{e}"
    );
    let many: Vec<String> = (0..65).map(|i| format!("\"e{i}\"")).collect();
    let text = format!(
        "version = 1\n[[rule]]\nname = \"a\"\nmatch = {{ kinds = [{}] }}\n",
        many.join(", ")
    );
    let e = Policy::parse_new(&text).unwrap_err();
    assert!(
        e.message
            .contains("match.kinds lists 65 patterns; at most 64"),
        "{e}"
    );
    let mut text = "version = 1\n".to_owned();
    for i in 0..257 {
        text.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\nmatch = {{ environments = [\"e{i}\"] }}\n"
        ));
    }
    let e = Policy::parse_new(&text).unwrap_err();
    assert_eq!(e.line, 2 + 256 * 3, "{e}");
    assert!(e.message.contains("at most 256 rules"), "{e}");
    // 256 rules are fine.
    let cut = text.rfind("[[rule]]").unwrap();
    Policy::parse_new(&text[..cut]).unwrap();
}

/// A new freeze takes the documented forms only, `2026-12-20` and
/// `2026-12-20T00:00[:ss[.f]]`, in its zone's local time: an offset or a
/// zone after the date or the time (which jiff would read and drop), a
/// signed year and the basic form (which could hide a leap second) are
/// refused, each naming the form to write.
#[test]
fn a_freeze_time_is_written_in_the_documented_form() {
    let freeze = |start: &str| {
        format!(
            "version = 1\n[[freeze]]\nname = \"f\"\nstart = \"{start}\"\nend = \"2027-01-04T00:00\"\nzone = \"UTC\"\n"
        )
    };
    for ok in [
        "2026-12-20",
        "2026-12-20T00:00",
        "2026-12-20t00:00",
        "2026-12-20 00:00",
        "2026-12-20T00:00:59",
        "2026-12-20T00:00:59.123456789",
    ] {
        Policy::parse_new(&freeze(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for offset in [
        "2026-12-20T00:00-08:00",
        "2026-12-20T00:00Z",
        "2026-12-20T00:00[Europe/Paris]",
        "2026-12-20[Asia/Tokyo]",
        "2026-12-20+09:00",
    ] {
        let e = Policy::parse_new(&freeze(offset)).unwrap_err();
        // A Zulu time too, which jiff would refuse in words of its own.
        assert!(e.message.contains("carries a UTC offset"), "{offset}: {e}");
        assert_eq!(e.line, 4, "{e}");
    }
    for other in [
        "-009999-01-03T00:00",
        "+002026-12-20T00:00",
        "20261220T235960",
        "20261220",
        "2026-12-20T0000",
        "2026-12-20T00:00:5",
        "2026-12-20T00:00:00.",
        "2026-12-20T00:00:00.1234567890",
        "2026-12-20T00",
    ] {
        let e = Policy::parse_new(&freeze(other)).unwrap_err();
        assert!(
            e.message
                .contains("is not written like 2026-12-20 or 2026-12-20T00:00")
                || e.message.contains("is not a date-time"),
            "{other}: {e}"
        );
    }
    // A recorded document keeps the reading it was recorded under.
    Policy::parse(&freeze("20261220T2359")).unwrap();
}

/// A ring of three is refused like one of two; a ring that passes through
/// a rule filtering on more than the environment is not certain (requests
/// that rule does not match fall through to later rules), so it is kept.
#[test]
fn a_promotion_ring_is_refused_only_when_certain() {
    let ring = |extra: &str| {
        format!(
            "version = 1\n[[rule]]\nname = \"a\"\nmatch.environments = [\"a\"]\npromoted_from = \"c\"\n\
             [[rule]]\nname = \"b\"\nmatch.environments = [\"b\"]\n{extra}promoted_from = \"a\"\n\
             [[rule]]\nname = \"c\"\nmatch.environments = [\"c\"]\npromoted_from = \"b\"\n\
             [[rule]]\nname = \"rest\"\n"
        )
    };
    let e = Policy::parse_new(&ring("")).unwrap_err();
    assert_eq!(e.line, 5, "{e}");
    assert!(
        e.to_string().contains(
            "ring (rule \"a\" waits for a deploy to \"c\", rule \"c\" waits for a deploy to \"b\", rule \"b\" waits for a deploy to \"a\")"
        ),
        "{e}"
    );
    Policy::parse_new(&ring("match.repositories = [\"github.com/acme/*\"]\n")).unwrap();
    // Replay reads a recorded document as it was.
    Policy::parse(&ring("")).unwrap();
}

#[test]
fn signed_commits_needs_every_commit_signed_by_a_principal() {
    let text = r#"
version = 1

[permissions]
open_change = ["dev", "ci"]
approve = ["dev", "security"]
report = ["ci"]

[[rule]]
name = "prod"
match.environments = ["prod"]
signed_commits = true
"#;
    let signed = Policy::parse_new(text).unwrap();
    assert!(signed.rules[0].signed_commits);
    let lax = Policy::parse_new(&text.replace("signed_commits = true\n", "")).unwrap();
    assert!(!lax.rules[0].signed_commits);
    let principals = people();
    let decide = |policy: &Policy,
                  commits: Option<(Vec<CommitFact<'static>>, Vec<&'static str>)>| {
        let change = commits.map(|(commits, unsourced_digests)| ChangeFacts {
            commits,
            unsourced_digests: unsourced_digests.into_iter().map(Cow::Borrowed).collect(),
            ..change(Vec::new())
        });
        let facts = Facts {
            principals: &principals,
            change: change.as_ref(),
            subject_repositories: &BTreeSet::new(),
            unrecorded_subjects: &[],
            deployments: &[],
        };
        evaluate(policy, &request("prod"), &facts)
    };
    let needs = "; rule \"prod\" requires every commit of the change's code to be signed by a principal (signed_commits)";
    let recorded =
        |verdict: &'static str, identity: &'static str, signer: Option<&'static str>| CommitFact {
            verdict: Some(verdict.into()),
            signer_identity: identity.into(),
            signer: signer.map(Cow::Borrowed),
            ..signed_by("c1", "alice")
        };
    let unobserved = CommitFact {
        verdict: None,
        signer_identity: "".into(),
        signer: None,
        ..signed_by("c1", "alice")
    };
    let built_from = CommitFact {
        built_into: Some(D.into()),
        ..recorded("unsigned", "", None)
    };
    let built_from = CommitFact {
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        ..built_from
    };
    let cases: Vec<(Vec<CommitFact<'static>>, Vec<String>)> = vec![
        (vec![signed_by("c1", "alice")], vec![]),
        (
            vec![],
            vec![format!(
                "change CHG-1 binds no commit and no CI run names one its artifacts were built from, so whether its code is signed is unknown{needs}"
            )],
        ),
        (
            vec![unobserved],
            vec![format!(
                "commit c1 has not been observed (run `docket git ingest`), so whether it is signed is unknown{needs}"
            )],
        ),
        (
            vec![recorded("unsigned", "", None)],
            vec![format!("commit c1 is unsigned{needs}")],
        ),
        (
            vec![recorded("bad", "", None)],
            vec![format!(
                "commit c1 is signed, but the signature does not verify (verdict bad){needs}"
            )],
        ),
        (
            vec![recorded("untrusted-key", "", None)],
            vec![format!(
                "commit c1 is signed with a key the ingester does not trust (verdict untrusted-key){needs}"
            )],
        ),
        (
            vec![recorded("unverifiable", "", None)],
            vec![format!(
                "commit c1 is signed, but the signature could not be checked (verdict unverifiable){needs}"
            )],
        ),
        (
            vec![recorded("verified", "mallory@elsewhere.example", None)],
            vec![format!(
                "commit c1 is signed by mallory@elsewhere.example, who is neither a principal nor the e-mail of one{needs}"
            )],
        ),
        (
            vec![recorded("verified", "", None)],
            vec![format!(
                "commit c1 is recorded as verified but names no signer{needs}"
            )],
        ),
        // The code an artifact was built from counts as the change's code.
        (
            vec![signed_by("c1", "alice"), built_from],
            vec![format!(
                "commit 0123456789ab (built into sha256:aaaa) is unsigned{needs}"
            )],
        ),
    ];
    // A digest no CI run names a commit for is code Docket knows nothing
    // of, whatever commits the change binds besides.
    let unsourced = format!(
        "no CI run names the commit sha256:aaaa was built from, so whether its code is signed is unknown{needs}"
    );
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(c, e)| (c, Vec::new(), e))
        .chain([
            (vec![], vec![D], vec![unsourced.clone()]),
            (
                vec![signed_by("c1", "alice")],
                vec![D],
                vec![unsourced.clone()],
            ),
            (
                vec![recorded("unsigned", "", None)],
                vec![D],
                vec![format!("commit c1 is unsigned{needs}"), unsourced],
            ),
        ])
        .collect();
    for (commits, unsourced, expected) in cases {
        let commits = (commits, unsourced);
        let v = decide(&signed, Some(commits.clone()));
        if expected.is_empty() {
            assert_eq!(v.decision, Decision::Allow, "{commits:?}: {v:#?}");
            assert_eq!(v.reasons, ["rule \"prod\" is satisfied"]);
        } else {
            assert_eq!(v.decision, Decision::Deny, "{commits:?}: {v:#?}");
            assert_eq!(v.rule.as_deref(), Some("prod"));
            assert_eq!(v.reasons, expected, "{commits:?}");
        }
        // Without signed_commits the same facts are allowed: the rule is
        // what asks for signatures.
        let v = decide(&lax, Some(commits.clone()));
        assert_eq!(v.decision, Decision::Allow, "{commits:?}: {v:#?}");
    }
    // signed_commits decides on a change: without one, the request is denied.
    let v = decide(&signed, None);
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(
        v.reasons,
        ["no change binds sha256:aaaa for prod; open a change for these subjects"]
    );
    assert_eq!(decide(&lax, None).decision, Decision::Allow);
}
