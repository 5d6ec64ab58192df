//! The fold's governance rules, through `State::apply` with real events:
//! properties of approval counting and policy activation, and the refusals.

use std::collections::BTreeSet;

use ed25519_dalek::SigningKey;
use proptest::prelude::*;

use super::*;
use crate::event::{
    ChangeAmendment, ChangeOpening, ChangeReview, DeployRequest, Genesis, PolicyProposal, RecordId,
};

fn key(n: u8) -> VerifyingKey {
    SigningKey::from_bytes(&[n; 32]).verifying_key()
}

fn id(s: &str) -> PrincipalId {
    PrincipalId::parse(s).unwrap()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const D2: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

const POLICY: &str = r#"
version = 1
[permissions]
register_principals = ["admin"]
change_roles = ["admin"]
propose_policy = ["policy-admin"]
approve_policy = ["policy-admin"]
open_change = ["dev", "ci"]
approve = ["dev", "security", "admin", "policy-admin", "sre"]
break_glass = ["sre"]
report = ["ci"]

[policy_changes]
approvals = 2
roles = ["policy-admin"]

[[rule]]
name = "prod"
match.environments = ["prod"]
approvals = 2
"#;

/// `POLICY` with its prod rule requiring `requirements` instead of two
/// approvals.
fn prod_rule_requiring(requirements: &str) -> String {
    format!(
        "{}{requirements}",
        POLICY.strip_suffix("approvals = 2\n").unwrap()
    )
}

/// A state folded from events applied one after another.
#[derive(Clone)]
struct Fold {
    st: State,
    t: i64,
}

impl Fold {
    fn new(policy: &str) -> Self {
        Fold::on(State::new(), policy)
    }

    /// Folds the genesis with `policy` into `st`, a fresh state.
    fn on(st: State, policy: &str) -> Self {
        let mut f = Fold {
            st,
            t: 1_000_000_000,
        };
        let g = Event {
            event_id: "genesis".into(),
            claimed_time_nanos: 1,
            signer: id("admin"),
            body: Body::Genesis(Genesis {
                origin: "test/log".into(),
                log_key: key(200),
                administrators: vec![PrincipalSpec {
                    id: id("admin"),
                    kind: PrincipalKind::Human,
                    display_name: String::new(),
                    roles: BTreeSet::new(),
                    keys: vec![key(1)],
                    emails: BTreeSet::new(),
                }],
                policy: Some(policy.to_owned()),
            }),
        };
        f.st.apply(0, f.t, &g, &key(1)).unwrap();
        f
    }

    fn apply(&mut self, signer: &str, body: Body) -> Result<u64, ApplyError> {
        let index = self.st.next_index();
        self.t += 1_000_000_000;
        let ev = Event {
            event_id: format!("e{index}"),
            claimed_time_nanos: self.t,
            signer: id(signer),
            body,
        };
        // Signatures are checked before the fold; it is handed the key that
        // verified, here the signer's first active key (key 1 for a signer
        // with none, which the fold refuses anyway).
        let signed_with = self
            .st
            .principal(signer)
            .and_then(|p| p.active_keys().next().copied())
            .unwrap_or_else(|| key(1));
        self.st
            .apply(index, self.t, &ev, &signed_with)
            .map(|()| index)
    }

    /// Applies `body` as signed by `signer` with key `k`.
    fn apply_signed(&mut self, signer: &str, k: u8, body: Body) -> Result<u64, ApplyError> {
        let index = self.st.next_index();
        self.t += 1_000_000_000;
        let ev = Event {
            event_id: format!("e{index}"),
            claimed_time_nanos: self.t,
            signer: id(signer),
            body,
        };
        self.st.apply(index, self.t, &ev, &key(k)).map(|()| index)
    }

    /// `who` rotates its own key `old` away to `new`; the entry's index.
    fn rotate_own(&mut self, who: &str, old: u8, new: u8) -> u64 {
        self.apply(
            who,
            Body::KeyRotated {
                principal: id(who),
                new_key: key(new),
                old_key: Some(key(old)),
            },
        )
        .unwrap()
    }

    /// The administrator takes `role` from `who`.
    fn take_role(&mut self, who: &str, role: &str) {
        self.try_take_role(who, role).unwrap();
    }

    /// The same, refused if `who` does not hold `role` (or is not
    /// registered).
    fn try_take_role(&mut self, who: &str, role: &str) -> Result<u64, ApplyError> {
        self.apply(
            "admin",
            Body::PrincipalUpdated(PrincipalUpdate {
                principal: id(who),
                grant_roles: BTreeSet::new(),
                revoke_roles: set(&[role]),
                add_emails: BTreeSet::new(),
                remove_emails: BTreeSet::new(),
                reason: String::new(),
            }),
        )
    }

    fn register(&mut self, who: &str, kind: PrincipalKind, roles: &[&str], keys: &[u8]) {
        self.apply(
            "admin",
            Body::PrincipalRegistered(PrincipalSpec {
                id: id(who),
                kind,
                display_name: String::new(),
                roles: set(roles),
                keys: keys.iter().map(|&k| key(k)).collect(),
                emails: BTreeSet::new(),
            }),
        )
        .unwrap();
    }

    /// Registers a human `dev` with key `k` and, if given, the e-mail that
    /// identifies them as a git author or committer.
    fn person(&mut self, who: &str, k: u8, email: Option<&str>) {
        self.apply(
            "admin",
            Body::PrincipalRegistered(PrincipalSpec {
                id: id(who),
                kind: PrincipalKind::Human,
                display_name: String::new(),
                roles: set(&["dev"]),
                keys: vec![key(k)],
                emails: email.map(|e| set(&[e])).unwrap_or_default(),
            }),
        )
        .unwrap();
    }

    /// Records the raw commit object `raw` as observed by `ci`; its SHA.
    fn observe(&mut self, raw: &[u8]) -> String {
        self.observe_signed(raw, crate::event::CommitSignature::unsigned())
    }

    /// The same, with the ingester's signature verdict `signature`.
    fn observe_signed(&mut self, raw: &[u8], signature: crate::event::CommitSignature) -> String {
        self.observe_with(raw, signature, crate::event::ChangedPaths::default())
    }

    /// The same, with the reporter's changed-path summary `changed`.
    fn observe_with(
        &mut self,
        raw: &[u8],
        signature: crate::event::CommitSignature,
        changed: crate::event::ChangedPaths,
    ) -> String {
        use crate::event::CommitObservation;
        use crate::event::git::{object_id, parse_commit};
        let sha = object_id(raw, 40).unwrap();
        self.apply(
            "ci",
            Body::CommitObserved(Box::new(CommitObservation {
                repository: "github.com/acme/payments".into(),
                sha: sha.clone(),
                commit: parse_commit(raw).unwrap(),
                raw: raw.to_vec(),
                changed,
                signature,
            })),
        )
        .unwrap();
        sha
    }

    /// Records a CI run by `who` of `commit` (may be empty) in `repo` that
    /// built `digest`.
    fn ci_run(
        &mut self,
        who: &str,
        repo: &str,
        commit: &str,
        digest: &str,
        status: crate::event::CiStatus,
    ) -> u64 {
        self.apply(
            who,
            Body::CiRunReported(crate::event::CiRun {
                repository: repo.into(),
                commit: commit.into(),
                artifact_digests: set(&[digest]),
                status,
                provider: String::new(),
                pipeline: String::new(),
                run_id: String::new(),
                url: String::new(),
                git_ref: String::new(),
            }),
        )
        .unwrap()
    }

    fn open(&mut self, signer: &str, change: &str, digest: &str) -> Result<u64, ApplyError> {
        self.open_for(signer, change, digest, &["prod"])
    }

    fn open_for(
        &mut self,
        signer: &str,
        change: &str,
        digest: &str,
        environments: &[&str],
    ) -> Result<u64, ApplyError> {
        self.apply(
            signer,
            Body::ChangeOpened(ChangeOpening {
                change_id: RecordId::parse(change).unwrap(),
                title: String::new(),
                repository: String::new(),
                commits: BTreeSet::new(),
                artifact_digests: set(&[digest]),
                environments: set(environments),
                ticket: String::new(),
                description: String::new(),
            }),
        )
    }

    /// Amends `change` to bind `digest` alone; empty `environments` keeps
    /// the current ones.
    fn amend(
        &mut self,
        signer: &str,
        change: &str,
        digest: &str,
        environments: &[&str],
    ) -> Result<u64, ApplyError> {
        self.apply(
            signer,
            Body::ChangeAmended(ChangeAmendment {
                change_id: RecordId::parse(change).unwrap(),
                commits: BTreeSet::new(),
                artifact_digests: set(&[digest]),
                environments: set(environments),
                reason: String::new(),
            }),
        )
    }

    /// Opens `change` for prod, as ci, binding `commits` and `digests`.
    fn open_code(&mut self, change: &str, commits: &[&str], digests: &[&str]) {
        self.apply(
            "ci",
            Body::ChangeOpened(ChangeOpening {
                change_id: RecordId::parse(change).unwrap(),
                title: String::new(),
                repository: String::new(),
                commits: set(commits),
                artifact_digests: set(digests),
                environments: set(&["prod"]),
                ticket: String::new(),
                description: String::new(),
            }),
        )
        .unwrap();
    }

    /// Amends `change`, as ci, to bind `commits` and `digests`.
    fn amend_code(&mut self, change: &str, commits: &[&str], digests: &[&str]) {
        self.apply(
            "ci",
            Body::ChangeAmended(ChangeAmendment {
                change_id: RecordId::parse(change).unwrap(),
                commits: set(commits),
                artifact_digests: set(digests),
                environments: BTreeSet::new(),
                reason: String::new(),
            }),
        )
        .unwrap();
    }

    /// An approval of `change` by `signer`, who saw exactly `seen`.
    fn approve_seen(&mut self, signer: &str, change: &str, seen: &[&str]) {
        self.apply(
            signer,
            Body::ChangeReviewed(ChangeReview {
                change_id: RecordId::parse(change).unwrap(),
                seen_subjects: set(seen),
                approve: true,
                comment: String::new(),
                revision: None,
            }),
        )
        .unwrap();
    }

    fn review(
        &mut self,
        signer: &str,
        change: &str,
        seen: &str,
        approve: bool,
    ) -> Result<u64, ApplyError> {
        self.apply(
            signer,
            Body::ChangeReviewed(ChangeReview {
                change_id: RecordId::parse(change).unwrap(),
                seen_subjects: set(&[seen]),
                approve,
                comment: String::new(),
                revision: None,
            }),
        )
    }

    fn deploy(&mut self, signer: &str, digest: &str) -> DecisionRecord {
        self.request(signer, "deploy", "prod", digest)
    }

    /// Records a request of `action` in `environment` and returns its decision.
    fn request(
        &mut self,
        signer: &str,
        action: &str,
        environment: &str,
        digest: &str,
    ) -> DecisionRecord {
        let i = self
            .apply(
                signer,
                Body::DeployRequested(DeployRequest {
                    action: action.into(),
                    environment: environment.into(),
                    repository: None,
                    kind: None,
                    namespace: None,
                    subjects: set(&[digest]),
                    change_id: None,
                    break_glass: false,
                    justification: String::new(),
                }),
            )
            .unwrap();
        self.st.gov().deployment(i).unwrap().decision.clone()
    }
}

#[derive(Debug, Clone)]
enum MalloryOp {
    Approve,
    Reject,
    ApproveStale,
    Amend,
    RotateKey(u8),
    Deploy,
}

fn mallory_op() -> impl Strategy<Value = MalloryOp> {
    prop_oneof![
        4 => Just(MalloryOp::Approve),
        1 => Just(MalloryOp::Reject),
        1 => Just(MalloryOp::ApproveStale),
        1 => Just(MalloryOp::Amend),
        1 => (100u8..150).prop_map(MalloryOp::RotateKey),
        2 => Just(MalloryOp::Deploy),
    ]
}

proptest! {
    /// However many keys and whichever roles mallory holds, and however she
    /// approves, rejects, amends, rotates keys and deploys, a rule needing
    /// two approvers never allows when she is the only approver.
    #[test]
    fn one_principal_never_satisfies_two_approvers(
        roles in proptest::collection::btree_set(
            prop_oneof![Just("dev"), Just("security"), Just("sre"), Just("policy-admin"), Just("ci"), Just("admin")], 0..6),
        nkeys in 1usize..4,
        human in any::<bool>(),
        ops in proptest::collection::vec(mallory_op(), 1..30),
    ) {
        let mut f = Fold::new(POLICY);
        let roles: Vec<&str> = roles.into_iter().collect();
        let keys: Vec<u8> = (0..nkeys as u8).map(|k| 10 + k).collect();
        let kind = if human { PrincipalKind::Human } else { PrincipalKind::Service };
        f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
        f.register("mallory", kind, &roles, &keys);
        f.open("ci", "CHG-1", D).unwrap();
        let mut current = D;
        let mut next_key = 0u8;
        for op in ops {
            match op {
                MalloryOp::Approve => { let _ = f.review("mallory", "CHG-1", current, true); }
                MalloryOp::Reject => { let _ = f.review("mallory", "CHG-1", current, false); }
                MalloryOp::ApproveStale => { let _ = f.review("mallory", "CHG-1", D, true); }
                MalloryOp::Amend => {
                    let to = if current == D { D2 } else { D };
                    if f.apply("mallory", Body::ChangeAmended(ChangeAmendment {
                        change_id: RecordId::parse("CHG-1").unwrap(),
                        commits: BTreeSet::new(),
                        artifact_digests: set(&[to]),
                        environments: BTreeSet::new(),
                        reason: String::new(),
                    })).is_ok() {
                        current = to;
                    }
                }
                MalloryOp::RotateKey(k) => {
                    next_key = next_key.wrapping_add(1);
                    let _ = f.apply("mallory", Body::KeyRotated {
                        principal: id("mallory"),
                        new_key: key(k.wrapping_add(next_key)),
                        old_key: None,
                    });
                }
                MalloryOp::Deploy => {
                    let d = f.deploy("mallory", current);
                    prop_assert!(!d.allow, "{d:#?}");
                    prop_assert!(d.counted.len() <= 1);
                }
            }
        }
        let d = f.deploy("ci", current);
        prop_assert!(!d.allow, "{d:#?}");
    }

    /// A proposed policy never becomes active with fewer distinct approvers
    /// (other than its proposer, holding a role the policy in force names)
    /// than the policy in force demands, whatever the order of proposals
    /// and approvals, and even when a proposal lowers the bar for later ones.
    #[test]
    fn policy_changes_need_what_the_policy_in_force_demands(
        admins in proptest::collection::vec(any::<bool>(), 5),
        steps in proptest::collection::vec((0usize..5, 0usize..3, any::<bool>(), 1u32..4), 1..40),
    ) {
        let mut f = Fold::new(POLICY);
        for (i, is_admin) in admins.iter().enumerate() {
            let roles: &[&str] = if *is_admin { &["policy-admin"] } else { &["dev"] };
            f.register(&format!("p{i}"), PrincipalKind::Human, roles, &[40 + i as u8]);
        }
        let mut proposals = 0usize;
        for (who, which, propose, bar) in steps {
            let signer = format!("p{who}");
            let before = f.st.gov().active_version().unwrap().clone();
            let before_policy = f.st.gov().policy().clone();
            if propose {
                let text = POLICY.replace("approvals = 2\nroles", &format!("approvals = {bar}\nroles"));
                let r = f.apply(&signer, Body::PolicyProposed(PolicyProposal {
                    proposal_id: RecordId::parse(&format!("P{proposals}")).unwrap(),
                    text,
                    base_version: before.version,
                    description: String::new(),
                }));
                if r.is_ok() { proposals += 1; }
            } else if proposals > 0 {
                let pid = RecordId::parse(&format!("P{}", which % proposals)).unwrap();
                let _ = f.apply(&signer, Body::PolicyApproved { proposal_id: pid });
            }
            let after = f.st.gov().active_version().unwrap().clone();
            if after.version != before.version {
                prop_assert_eq!(after.version, before.version + 1);
                let proposal = f.st.gov().proposals().find(|p| p.id == after.proposal_id).unwrap().clone();
                prop_assert_eq!(proposal.base_version, before.version);
                let qualified: BTreeSet<&String> = after.approvers.iter()
                    .filter(|a| **a != proposal.proposer)
                    .filter(|a| f.st.principal(a).is_some_and(|p|
                        p.kind == PrincipalKind::Human
                            && p.roles.iter().any(|r| before_policy.policy_changes.roles.contains(r))))
                    .collect();
                prop_assert!(qualified.len() as u32 >= before_policy.policy_changes.approvals,
                    "{after:?} activated with {qualified:?} under {:?}", before_policy.policy_changes);
            }
        }
    }
}

/// What mallory, an identity administrator, tries in order to approve a
/// change twice over: register puppets, add her keys to other people,
/// revoke or demote the other identity administrator, grant roles, approve
/// identity changes herself, and sign approvals as anyone whose active key
/// she holds.
#[derive(Debug, Clone)]
enum IdentityOp {
    /// Register `puppet{n}` (human, approver roles, maybe admin) with a key she holds.
    Puppet(u8, bool),
    /// Add a key she holds to someone else.
    AddKey(usize),
    /// Revoke someone else's first active key.
    Revoke(usize),
    /// Grant someone else (or a puppet) the admin or security role.
    Grant(usize, bool),
    /// Revoke the admin role of the other identity administrator.
    Demote,
    /// Approve the newest waiting identity change, signing as anyone she can.
    ApproveNewest(usize),
    /// Approve the change, signing as anyone she can.
    Review(usize),
    Deploy,
}

fn identity_op() -> impl Strategy<Value = IdentityOp> {
    prop_oneof![
        2 => (0u8..3, any::<bool>()).prop_map(|(n, a)| IdentityOp::Puppet(n, a)),
        2 => (0usize..6).prop_map(IdentityOp::AddKey),
        1 => (0usize..6).prop_map(IdentityOp::Revoke),
        1 => (0usize..6, any::<bool>()).prop_map(|(t, a)| IdentityOp::Grant(t, a)),
        1 => Just(IdentityOp::Demote),
        3 => (0usize..6).prop_map(IdentityOp::ApproveNewest),
        3 => (0usize..6).prop_map(IdentityOp::Review),
        1 => Just(IdentityOp::Deploy),
    ]
}

proptest! {
    /// While another identity administrator exists, mallory, holding the
    /// admin role (register principals, change roles) and whatever else,
    /// cannot make a rule needing two approvers allow with approvals she
    /// signs: no identity change of hers takes effect without someone
    /// else's approval, so every principal she can sign as is herself.
    #[test]
    fn one_identity_admin_cannot_mint_a_second_approver(
        extra in proptest::collection::btree_set(
            prop_oneof![Just("dev"), Just("security"), Just("policy-admin")], 0..3),
        ops in proptest::collection::vec(identity_op(), 1..40),
    ) {
        let mut f = Fold::new(POLICY);
        f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
        f.register("bob", PrincipalKind::Human, &["dev"], &[31]);
        f.register("admin2", PrincipalKind::Human, &["admin"], &[32]);
        let mut roles: Vec<&str> = extra.into_iter().collect();
        roles.push("admin");
        // admin2 exists: mallory's own registration waits for it.
        let entry = f.apply("admin", Body::PrincipalRegistered(PrincipalSpec {
            id: id("mallory"),
            kind: PrincipalKind::Human,
            display_name: String::new(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            keys: vec![key(40)],
            emails: BTreeSet::new(),
        })).unwrap();
        prop_assert!(f.st.principal("mallory").is_none());
        f.apply("admin2", Body::IdentityChangeApproved { entry }).unwrap();
        f.open("ci", "CHG-1", D).unwrap();
        let mut held: BTreeSet<[u8; 32]> = [key(40).to_bytes()].into();
        let mut next_key = 100u8;
        let names = |f: &Fold| -> Vec<String> {
            f.st.principals().map(|p| p.id.to_string()).collect()
        };
        // Whom mallory can sign as: principals with an active key she holds.
        let as_whom = |f: &Fold, held: &BTreeSet<[u8; 32]>| -> Vec<String> {
            f.st.principals()
                .filter(|p| p.active_keys().any(|k| held.contains(&k.to_bytes())))
                .map(|p| p.id.to_string())
                .collect()
        };
        for op in ops {
            let others: Vec<String> = names(&f).into_iter().filter(|n| n != "mallory").collect();
            match op {
                IdentityOp::Puppet(n, admin) => {
                    next_key = next_key.wrapping_add(1).max(100);
                    held.insert(key(next_key).to_bytes());
                    let roles: &[&str] = if admin { &["security", "admin"] } else { &["security"] };
                    let _ = f.apply("mallory", Body::PrincipalRegistered(PrincipalSpec {
                        id: id(&format!("puppet{n}")),
                        kind: PrincipalKind::Human,
                        display_name: String::new(),
                        roles: set(roles),
                        keys: vec![key(next_key)],
                        emails: BTreeSet::new(),
                    }));
                }
                IdentityOp::AddKey(t) => {
                    next_key = next_key.wrapping_add(1).max(100);
                    held.insert(key(next_key).to_bytes());
                    let target = &others[t % others.len()];
                    let _ = f.apply("mallory", Body::KeyRotated {
                        principal: id(target),
                        new_key: key(next_key),
                        old_key: None,
                    });
                }
                IdentityOp::Revoke(t) => {
                    let target = &others[t % others.len()];
                    let k = f.st.principal(target).and_then(|p| p.active_keys().next().copied());
                    if let Some(k) = k {
                        let _ = f.apply("mallory", Body::KeyRevoked {
                            principal: id(target), key: k, reason: String::new(),
                        });
                    }
                }
                IdentityOp::Grant(t, admin) => {
                    let target = &others[t % others.len()];
                    let _ = f.apply("mallory", Body::PrincipalUpdated(PrincipalUpdate {
                        principal: id(target),
                        grant_roles: set(&[if admin { "admin" } else { "security" }]),
                        revoke_roles: BTreeSet::new(),
                        add_emails: BTreeSet::new(),
                        remove_emails: BTreeSet::new(),
                        reason: String::new(),
                    }));
                }
                IdentityOp::Demote => {
                    let _ = f.apply("mallory", Body::PrincipalUpdated(PrincipalUpdate {
                        principal: id("admin2"),
                        grant_roles: BTreeSet::new(),
                        revoke_roles: set(&["admin"]),
                        add_emails: BTreeSet::new(),
                        remove_emails: BTreeSet::new(),
                        reason: String::new(),
                    }));
                }
                IdentityOp::ApproveNewest(w) => {
                    let newest = f.st.pending_identity_changes()
                        .filter(|p| p.applied.is_none())
                        .map(|p| p.entry)
                        .max();
                    let signers = as_whom(&f, &held);
                    if let Some(entry) = newest {
                        let _ = f.apply(&signers[w % signers.len()],
                            Body::IdentityChangeApproved { entry });
                    }
                }
                IdentityOp::Review(w) => {
                    let signers = as_whom(&f, &held);
                    let _ = f.review(&signers[w % signers.len()], "CHG-1", D, true);
                }
                IdentityOp::Deploy => {
                    let d = f.deploy("ci", D);
                    prop_assert!(!d.allow, "{d:#?}");
                }
            }
            // Nothing she signed about anyone else took effect.
            prop_assert_eq!(as_whom(&f, &held), vec!["mallory".to_string()]);
            prop_assert!(f.st.pending_identity_changes().all(|p| p.applied.is_none()
                || p.proposer.as_str() != "mallory"));
        }
        let d = f.deploy("ci", D);
        prop_assert!(!d.allow, "{d:#?}");
        prop_assert!(d.counted.len() <= 1, "{d:#?}");
    }
}

/// `expire_after`: a waiting identity change or policy proposal can be
/// approved until exactly its expiry, measured between the entries'
/// integrated times to the nanosecond, and not a nanosecond later; an
/// expired identity change can still be withdrawn by its proposer. The
/// expiries persist with the state.
#[test]
fn waiting_changes_expire_under_the_policy_in_force() {
    let policy = format!(
        "{}\n[identity_changes]\nexpire_after = \"1h\"\n",
        POLICY.replacen(
            "roles = [\"policy-admin\"]\n",
            "roles = [\"policy-admin\"]\nexpire_after = \"2h\"\n",
            1
        )
    );
    let p = crate::policy::Policy::parse(&policy).unwrap();
    assert_eq!(
        (
            p.identity_change_expiry_secs,
            p.policy_changes.expire_after_secs
        ),
        (Some(3600), Some(7200))
    );
    let mut f = Fold::new(&policy);
    for (who, k) in [("pa", 4), ("pb", 5), ("pc", 6)] {
        f.register(who, PrincipalKind::Human, &["policy-admin"], &[k]);
    }
    // From here on, admin's identity changes wait for admin2.
    f.register("admin2", PrincipalKind::Human, &["admin"], &[3]);
    let hour = 3_600_000_000_000_i64;
    let spec = |who: &str, k: u8| {
        Body::PrincipalRegistered(PrincipalSpec {
            id: id(who),
            kind: PrincipalKind::Human,
            display_name: String::new(),
            roles: set(&["dev"]),
            keys: vec![key(k)],
            emails: BTreeSet::new(),
        })
    };
    // Fold::apply moves the clock 1 s forward before each entry.
    let at_next = |f: &mut Fold, t: i64| f.t = t - 1_000_000_000;

    let on_time = f.apply("admin", spec("erin", 10)).unwrap();
    let proposed = f.t;
    let late = f.apply("admin", spec("gina", 11)).unwrap();
    let late_at = f.t;
    let waiting =
        f.st.pending_identity_changes()
            .find(|p| p.entry == late)
            .unwrap()
            .clone();
    assert_eq!(
        f.st.identity_change_expiry(&waiting).map(|(end, _)| end),
        Some(late_at + hour)
    );
    at_next(&mut f, proposed + hour);
    f.apply("admin2", Body::IdentityChangeApproved { entry: on_time })
        .unwrap();
    assert!(f.st.principal("erin").is_some());
    at_next(&mut f, late_at + hour + 1);
    let e = f
        .apply("admin2", Body::IdentityChangeApproved { entry: late })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "the identity change at entry {late} expired at {}, 1h after it was recorded \
             ([identity_changes] expire_after); propose it again",
            crate::state::gov::fmt_nanos(late_at + hour)
        )
    );
    assert!(f.st.principal("gina").is_none());
    f.apply(
        "admin",
        Body::IdentityChangeWithdrawn {
            entry: late,
            reason: "expired".into(),
        },
    )
    .unwrap();

    // Version 2 lets identity changes wait for ever.
    let v2 = policy.replace("\n[identity_changes]\nexpire_after = \"1h\"\n", "\n");
    assert_ne!(v2, policy);
    let propose = |f: &mut Fold, pid: &str, text: &str| {
        f.apply(
            "pa",
            Body::PolicyProposed(PolicyProposal {
                proposal_id: RecordId::parse(pid).unwrap(),
                text: text.to_owned(),
                base_version: 1,
                description: String::new(),
            }),
        )
        .unwrap();
        f.t
    };
    let approve = |f: &mut Fold, who: &str, pid: &str| {
        f.apply(
            who,
            Body::PolicyApproved {
                proposal_id: RecordId::parse(pid).unwrap(),
            },
        )
    };
    let stale = propose(&mut f, "STALE", &policy);
    let fresh = propose(&mut f, "FRESH", &v2);
    approve(&mut f, "pb", "FRESH").unwrap();
    let hal = f.apply("admin", spec("hal", 12)).unwrap();
    let hal_at = f.t;
    at_next(&mut f, stale + 2 * hour + 1);
    assert_eq!(
        approve(&mut f, "pb", "STALE"),
        Err(ApplyError::ProposalClosed {
            id: "STALE".into(),
            why: format!(
                "it expired at {}: the policy in force lets a proposal wait 2h for its \
                 approvals ([policy_changes] expire_after); propose it again",
                crate::state::gov::fmt_nanos(stale + 2 * hour)
            )
        })
    );
    at_next(&mut f, fresh + 2 * hour);
    approve(&mut f, "pc", "FRESH").unwrap();
    assert_eq!(f.st.gov().active_version().unwrap().proposal_id, "FRESH");
    // hal's registration had expired under version 1 when version 2 took
    // effect: expiry is final, version 2's lack of a limit does not revive
    // it. One recorded under version 2 waits for ever.
    let e = f
        .apply("admin2", Body::IdentityChangeApproved { entry: hal })
        .unwrap_err();
    assert_eq!(
        e,
        ApplyError::IdentityChangeExpired {
            entry: hal,
            at: crate::state::gov::fmt_nanos(hal_at + hour),
            after: "1h".into()
        }
    );
    let ivy = f.apply("admin", spec("ivy", 13)).unwrap();
    f.t += 400 * 24 * hour;
    f.apply("admin2", Body::IdentityChangeApproved { entry: ivy })
        .unwrap();
    assert!(f.st.principal("ivy").is_some() && f.st.principal("hal").is_none());

    let mut st = f.st.clone();
    let mut pairs = st.take_changes();
    pairs.sort();
    let loaded = State::load(pairs).unwrap();
    assert_eq!(
        loaded.pending_identity_changes().collect::<Vec<_>>(),
        f.st.pending_identity_changes().collect::<Vec<_>>()
    );
    assert_eq!(
        loaded.gov().proposals().collect::<Vec<_>>(),
        f.st.gov().proposals().collect::<Vec<_>>()
    );
}

#[test]
fn identity_changes_wait_for_a_second_identity_admin() {
    let mut f = Fold::new(POLICY);
    // Alone, the genesis admin's changes take effect at once.
    f.register("bob", PrincipalKind::Human, &["dev"], &[2]);
    f.register("admin2", PrincipalKind::Human, &["admin"], &[3]);
    assert!(f.st.principal("admin2").is_some());
    // Now admin2 exists: a registration by admin waits.
    let spec = |who: &str, k: u8| {
        Body::PrincipalRegistered(PrincipalSpec {
            id: id(who),
            kind: PrincipalKind::Human,
            display_name: String::new(),
            roles: set(&["security"]),
            keys: vec![key(k)],
            emails: BTreeSet::new(),
        })
    };
    let reg = f.apply("admin", spec("erin", 5)).unwrap();
    assert!(f.st.principal("erin").is_none());
    let waiting: Vec<_> = f.st.pending_identity_changes().cloned().collect();
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        (
            waiting[0].entry,
            waiting[0].proposer.as_str(),
            waiting[0].subject.as_str()
        ),
        (reg, "admin", "erin")
    );
    assert_eq!(
        waiting[0].describe(),
        format!(
            "register erin (human) with roles security, key {}",
            crate::crypto::KeyId::of(&key(5))
        )
    );
    // Its own signer, a non-admin, and a non-pending entry are refused.
    assert_eq!(
        f.apply("admin", Body::IdentityChangeApproved { entry: reg }),
        Err(ApplyError::OwnIdentityChange(reg))
    );
    let e = f
        .apply("bob", Body::IdentityChangeApproved { entry: reg })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "\"bob\" may not approve identity changes: only a human principal whose roles give \
         `register_principals` (admin) or `change_roles` (admin) may"
    );
    assert_eq!(
        f.apply("admin2", Body::IdentityChangeApproved { entry: 1 }),
        Err(ApplyError::NoPendingIdentity(1))
    );
    // A second registration claiming the same key also waits (it is valid now).
    let twin = f.apply("admin", spec("erin2", 5)).unwrap();
    let ok = f
        .apply("admin2", Body::IdentityChangeApproved { entry: reg })
        .unwrap();
    let erin = f.st.principal("erin").unwrap();
    assert_eq!((erin.registered_at, erin.keys[0].added_at), (ok, ok));
    assert_eq!(
        f.apply("admin2", Body::IdentityChangeApproved { entry: reg }),
        Err(ApplyError::IdentityChangeApplied {
            entry: reg,
            at: ok,
            by: "admin2".into()
        })
    );
    // Re-checked when approved: the key is erin's by now.
    let e = f
        .apply("admin2", Body::IdentityChangeApproved { entry: twin })
        .unwrap_err();
    assert!(
        matches!(&e, ApplyError::IdentityChangeStale { entry, why }
            if *entry == twin && why.starts_with("key ") && why.ends_with("is already registered")),
        "{e}"
    );
    // Adding a key to bob, or revoking admin2's key, waits too; rotating
    // one's own key does not.
    let add = f
        .apply(
            "admin",
            Body::KeyRotated {
                principal: id("bob"),
                new_key: key(6),
                old_key: None,
            },
        )
        .unwrap();
    assert_eq!(f.st.principal("bob").unwrap().keys.len(), 1);
    f.apply(
        "admin",
        Body::KeyRevoked {
            principal: id("admin2"),
            key: key(3),
            reason: String::new(),
        },
    )
    .unwrap();
    assert_eq!(f.st.principal("admin2").unwrap().active_keys().count(), 1);
    f.apply(
        "bob",
        Body::KeyRotated {
            principal: id("bob"),
            new_key: key(7),
            old_key: Some(key(2)),
        },
    )
    .unwrap();
    assert_eq!(f.st.principal("bob").unwrap().active_keys().count(), 1);
    // admin2 approves adding the key: it is valid from that approval.
    let at = f
        .apply("admin2", Body::IdentityChangeApproved { entry: add })
        .unwrap();
    let bob = f.st.principal("bob").unwrap();
    assert_eq!(bob.keys.last().unwrap().added_at, at);
    assert_eq!(bob.active_keys().count(), 2);
    // A waiting change can be withdrawn by its proposer and no one else,
    // not even another identity administrator (who would otherwise hold a
    // veto over what two others agree on); then no approval applies it, and
    // an applied one cannot be withdrawn.
    let typo = f.apply("admin", spec("gina", 20)).unwrap();
    let withdraw = |entry: u64| Body::IdentityChangeWithdrawn {
        entry,
        reason: "typo".into(),
    };
    for who in ["bob", "admin2"] {
        let e = f.apply(who, withdraw(typo)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "\"{who}\" may not withdraw this identity change: only its proposer (\"admin\") \
                 may withdraw the change recorded at entry {typo}"
            )
        );
    }
    let w = f.apply("admin", withdraw(typo)).unwrap();
    let closed = || ApplyError::IdentityChangeWithdrawn {
        entry: typo,
        at: w,
        by: "admin".into(),
    };
    assert_eq!(
        f.apply("admin2", Body::IdentityChangeApproved { entry: typo }),
        Err(closed())
    );
    assert_eq!(f.apply("admin2", withdraw(typo)), Err(closed()));
    assert!(f.st.principal("gina").is_none());
    assert!(matches!(
        f.apply("admin2", withdraw(add)),
        Err(ApplyError::IdentityChangeApplied { entry, .. }) if entry == add
    ));
    assert_eq!(
        f.st.pending_identity_changes()
            .filter(|p| p.withdrawn.is_some())
            .map(|p| (p.entry, p.withdrawn.clone().unwrap()))
            .collect::<Vec<_>>(),
        vec![(typo, (w, id("admin")))]
    );
    // Waiting, applied and withdrawn changes persist and load back.
    let mut st = f.st.clone();
    let mut pairs = st.take_changes();
    pairs.sort();
    let loaded = State::load(pairs).unwrap();
    assert_eq!(
        loaded.pending_identity_changes().collect::<Vec<_>>(),
        f.st.pending_identity_changes().collect::<Vec<_>>()
    );
    assert_eq!(
        loaded.principals().collect::<Vec<_>>(),
        f.st.principals().collect::<Vec<_>>()
    );
    // What a signer queued no longer applies once a key it held then is
    // rotated away (the answer to a stolen key).
    let queued = f.apply("admin", spec("frank", 8)).unwrap();
    let rotated = f
        .apply(
            "admin",
            Body::KeyRotated {
                principal: id("admin"),
                new_key: key(9),
                old_key: Some(key(1)),
            },
        )
        .unwrap();
    let e = f
        .apply("admin2", Body::IdentityChangeApproved { entry: queued })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "the identity change at entry {queued} can no longer take effect: \"admin\"'s key {}, \
             active when it signed, was revoked at entry {rotated}",
            crate::crypto::KeyId::of(&key(1))
        )
    );
    // Revoking the other administrator's last key does not free anyone:
    // admin2 revokes its own key, and admin's next change still waits.
    f.apply(
        "admin2",
        Body::KeyRevoked {
            principal: id("admin2"),
            key: key(3),
            reason: String::new(),
        },
    )
    .unwrap();
    f.apply("admin", spec("gus", 10)).unwrap();
    assert!(f.st.principal("gus").is_none());
}

#[test]
fn refusals_name_the_rule() {
    let mut f = Fold::new(POLICY);
    f.register("alice", PrincipalKind::Human, &["dev"], &[2]);
    f.register("pa", PrincipalKind::Human, &["policy-admin"], &[3]);
    f.register("ci", PrincipalKind::Ci, &["ci"], &[4]);
    let e = f.open("pa", "CHG-1", D).unwrap_err();
    assert_eq!(
        e.to_string(),
        "\"pa\" may not open changes: policy version 1 gives `open_change` to role(s) ci, dev"
    );
    f.open("alice", "CHG-1", D).unwrap();
    assert!(matches!(
        f.open("alice", "CHG-1", D),
        Err(ApplyError::ChangeExists(_))
    ));
    let e = f.review("alice", "CHG-1", D2, true).unwrap_err();
    assert!(
        e.to_string()
            .contains("match no revision of change \"CHG-1\""),
        "{e}"
    );
    assert!(matches!(
        f.review("alice", "CHG-9", D, true),
        Err(ApplyError::UnknownChange(_))
    ));
    // Nobody changes their own roles, and the last admin cannot lose the role.
    let own = f.apply(
        "admin",
        Body::PrincipalUpdated(PrincipalUpdate {
            principal: id("admin"),
            grant_roles: set(&["sre"]),
            revoke_roles: BTreeSet::new(),
            add_emails: BTreeSet::new(),
            remove_emails: BTreeSet::new(),
            reason: String::new(),
        }),
    );
    assert_eq!(own, Err(ApplyError::OwnRoles));
    // The proposer's own approval never counts; a stale base is refused.
    let propose = |f: &mut Fold, signer: &str, pid: &str, base: u64| {
        f.apply(
            signer,
            Body::PolicyProposed(PolicyProposal {
                proposal_id: RecordId::parse(pid).unwrap(),
                text: POLICY.to_owned(),
                base_version: base,
                description: String::new(),
            }),
        )
    };
    // Reviewing, proposing and approving policy each need their permission.
    let e = f.review("ci", "CHG-1", D, true).unwrap_err();
    assert!(
        e.to_string().starts_with("\"ci\" may not ")
            && e.to_string()
                .contains("gives `approve` to role(s) admin, dev, policy-admin, security, sre"),
        "{e}"
    );
    let e = propose(&mut f, "alice", "P0", 1).unwrap_err();
    assert!(
        e.to_string().starts_with("\"alice\" may not ")
            && e.to_string()
                .contains("gives `propose_policy` to role(s) policy-admin"),
        "{e}"
    );
    propose(&mut f, "pa", "P1", 1).unwrap();
    let e = f
        .apply(
            "alice",
            Body::PolicyApproved {
                proposal_id: RecordId::parse("P1").unwrap(),
            },
        )
        .unwrap_err();
    assert!(
        e.to_string().starts_with("\"alice\" may not ")
            && e.to_string()
                .contains("gives `approve_policy` to role(s) policy-admin"),
        "{e}"
    );
    let e = propose(&mut f, "pa", "P2", 7).unwrap_err();
    assert_eq!(e, ApplyError::StaleBase { base: 7, active: 1 });
    let e = f
        .apply(
            "pa",
            Body::PolicyApproved {
                proposal_id: RecordId::parse("P1").unwrap(),
            },
        )
        .unwrap_err();
    assert_eq!(e, ApplyError::OwnProposal("P1".into()));
    // A policy that would leave nobody able to register principals never activates.
    f.register("pb", PrincipalKind::Human, &["policy-admin"], &[5]);
    f.register("pc", PrincipalKind::Human, &["policy-admin"], &[6]);
    let locked = POLICY.replace(
        "register_principals = [\"admin\"]",
        "register_principals = [\"nobody\"]",
    );
    f.apply(
        "pa",
        Body::PolicyProposed(PolicyProposal {
            proposal_id: RecordId::parse("LOCK").unwrap(),
            text: locked,
            base_version: 1,
            description: String::new(),
        }),
    )
    .unwrap();
    f.apply(
        "pb",
        Body::PolicyApproved {
            proposal_id: RecordId::parse("LOCK").unwrap(),
        },
    )
    .unwrap();
    let e = f
        .apply(
            "pc",
            Body::PolicyApproved {
                proposal_id: RecordId::parse("LOCK").unwrap(),
            },
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("would leave no principal with an active key holding `register_principals`"),
        "{e}"
    );
    assert_eq!(f.st.gov().active_version().unwrap().version, 1);
    // Two policy admins other than the proposer activate P1.
    f.apply(
        "pb",
        Body::PolicyApproved {
            proposal_id: RecordId::parse("P1").unwrap(),
        },
    )
    .unwrap();
    assert_eq!(f.st.gov().active_version().unwrap().version, 1);
    f.apply(
        "pc",
        Body::PolicyApproved {
            proposal_id: RecordId::parse("P1").unwrap(),
        },
    )
    .unwrap();
    let v = f.st.gov().active_version().unwrap();
    assert_eq!(
        (v.version, v.approvers.clone()),
        (2, vec!["pb".to_string(), "pc".to_string()])
    );
    // LOCK was based on version 1, which is no longer in force.
    let e = f
        .apply(
            "pc",
            Body::PolicyApproved {
                proposal_id: RecordId::parse("LOCK").unwrap(),
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("version 2 is in force now"), "{e}");
}

#[test]
fn persisted_state_loads_back_equal() {
    let mut f = Fold::new(POLICY);
    f.register("alice", PrincipalKind::Human, &["dev"], &[2]);
    f.register("bob", PrincipalKind::Human, &["dev"], &[3]);
    f.register("carol", PrincipalKind::Human, &["security"], &[4]);
    f.open("alice", "CHG-1", D).unwrap();
    f.review("bob", "CHG-1", D, true).unwrap();
    f.review("carol", "CHG-1", D, true).unwrap();
    assert!(f.deploy("alice", D).allow);
    // Bob rotates his key: his approval no longer counts, and the loaded
    // state must know which keys were revoked as the live one does.
    f.apply(
        "bob",
        Body::KeyRotated {
            principal: id("bob"),
            new_key: key(13),
            old_key: Some(key(3)),
        },
    )
    .unwrap();
    assert!(!f.deploy("alice", D).allow);
    let mut st = f.st.clone();
    let pairs = st.take_changes();
    let mut sorted = pairs.clone();
    sorted.sort();
    let loaded = State::load(sorted).unwrap();
    // Dirty markers differ by construction; compare what the state answers.
    let req = crate::policy::Request {
        action: "deploy".into(),
        environment: "prod".into(),
        repository: None,
        kind: None,
        namespace: None,
        subjects: set(&[D]),
        actor: "alice".into(),
        break_glass: false,
        at: jiff::Timestamp::from_nanosecond(i128::from(st.last_time())).unwrap(),
    };
    assert_eq!(st.decide(&req, None), loaded.decide(&req, None));
    assert_eq!(st.gov().change("CHG-1"), loaded.gov().change("CHG-1"));
    assert_eq!(
        st.gov().deployments().collect::<Vec<_>>(),
        loaded.gov().deployments().collect::<Vec<_>>()
    );
    assert_eq!(st.gov().history(), loaded.gov().history());
    assert_eq!(st.principal_facts(), loaded.principal_facts());
}

/// A change that binds only an image digest still excludes the people who
/// wrote what is in the image: the CI run that reported the digest names
/// the commit it was built from. Until that commit is observed, its author
/// is unknown and the rule denies.
#[test]
fn the_author_of_the_commit_an_image_was_built_from_does_not_count() {
    use crate::event::CiStatus;
    use crate::event::git::object_id;
    let mut f = Fold::new(POLICY);
    for (who, email) in [
        ("alice", Some("alice@example.com")),
        ("bob", None),
        ("carol", None),
    ] {
        f.person(who, who.as_bytes()[0], email);
    }
    f.register("ci", PrincipalKind::Ci, &["ci"], &[9]);
    let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author Alice <alice@example.com> 1700000000 +0000\n\
committer Alice <alice@example.com> 1700000000 +0000\n\
\n\
retry declined cards once\n"
        .to_vec();
    let sha = object_id(&raw, 40).unwrap();
    f.ci_run("ci", "github.com/acme/payments", &sha, D, CiStatus::Passed);
    f.open("ci", "CHG-1", D).unwrap();
    f.review("alice", "CHG-1", D, true).unwrap();
    f.review("bob", "CHG-1", D, true).unwrap();

    let d = f.deploy("ci", D);
    assert!(!d.allow);
    let unknown = format!(
        "commit {} (built into sha256:aaaaaaaaaaaa) has not been observed (run `docket git ingest`), so its author is unknown",
        &sha[..12]
    );
    assert!(d.reasons.contains(&unknown), "{:?}", d.reasons);

    assert_eq!(f.observe(&raw), sha);
    let d = f.deploy("ci", D);
    assert!(!d.allow, "{:?}", d.reasons);
    assert!(!d.reasons.contains(&unknown), "{:?}", d.reasons);
    assert_eq!(
        d.counted
            .iter()
            .map(|c| c.approver.as_str())
            .collect::<Vec<_>>(),
        ["bob"]
    );
    assert!(
        d.not_counted.iter().any(|n| n.approver == "alice"
            && n.reason
                == format!(
                    "alice is the author and committer of commit {} (built into sha256:aaaaaaaaaaaa)",
                    &sha[..12]
                )),
        "{:?}",
        d.not_counted
    );

    f.review("carol", "CHG-1", D, true).unwrap();
    let d = f.deploy("ci", D);
    assert!(d.allow, "{:?}", d.reasons);
}

/// A rule with `ci_reporters` counts only the runs the named CI principals
/// reported: a sandbox CI identity, which may report runs, neither passes a
/// production digest's CI check nor fails it; the pinned identity's latest
/// run decides.
#[test]
fn only_the_ci_reporters_a_rule_names_speak_for_its_ci() {
    use crate::event::CiStatus;
    let policy = prod_rule_requiring("ci_passed = true\nci_reporters = [\"ci-payments\"]\n");
    let mut f = Fold::new(&policy);
    f.register("ci-payments", PrincipalKind::Ci, &["ci"], &[9]);
    f.register("ci-sandbox", PrincipalKind::Ci, &["ci"], &[10]);
    let report =
        |f: &mut Fold, who: &str, repo: &str, status: CiStatus| f.ci_run(who, repo, "", D, status);
    f.open("ci-payments", "CHG-1", D).unwrap();
    let payments = "github.com/acme/payments";
    report(&mut f, "ci-sandbox", payments, CiStatus::Passed);
    let d = f.deploy("ci-payments", D);
    assert!(!d.allow);
    assert!(
        d.reasons.iter().any(|r| *r
            == format!("no passing CI run by ci-payments is recorded for {D}; runs reported by ci-sandbox do not count under this rule")),
        "{:?}",
        d.reasons
    );
    report(&mut f, "ci-payments", payments, CiStatus::Passed);
    assert!(f.deploy("ci-payments", D).allow);
    report(&mut f, "ci-sandbox", payments, CiStatus::Failed);
    let d = f.deploy("ci-payments", D);
    assert!(d.allow, "{:?}", d.reasons);
    report(&mut f, "ci-payments", payments, CiStatus::Failed);
    let d = f.deploy("ci-payments", D);
    assert!(!d.allow);
    assert!(
        d.reasons.iter().any(|r| r.starts_with(&format!(
            "the latest CI run by ci-payments for {D} did not pass"
        ))),
        "{:?}",
        d.reasons
    );
}

/// Promotion order counts the recorded, allowed deploys, and for another
/// action the earlier requests of that action: a digest restarted in
/// staging has not been deployed there.
#[test]
fn promotion_counts_only_earlier_requests_of_the_same_action() {
    let policy = "version = 1\n[[rule]]\nname = \"prod\"\nmatch.environments = [\"prod\"]\npromoted_from = \"staging\"\n\n[[rule]]\nname = \"staging\"\nmatch.environments = [\"staging\"]\n";
    let mut f = Fold::new(policy);
    f.register("ci", PrincipalKind::Ci, &["ci"], &[9]);
    assert!(f.request("ci", "restart", "staging", D).allow);
    let d = f.deploy("ci", D);
    assert!(!d.allow);
    assert_eq!(
        d.reasons,
        [format!(
            "{D} has not been deployed to staging yet; deploy it there first (its allowed requests there were restart, which do not count as deploying it)"
        )]
    );
    // The restart itself is promoted: it was done in staging first.
    assert!(f.request("ci", "restart", "prod", D).allow);
    // A digest deployed to staging may be deployed, and then rolled back
    // to, in prod, without a staging rollback first.
    let e = "sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
    assert!(!f.request("ci", "rollback", "prod", e).allow);
    assert!(f.request("ci", "deploy", "staging", e).allow);
    assert!(f.request("ci", "rollback", "prod", e).allow);
    assert!(f.request("ci", "deploy", "staging", D).allow);
    assert!(f.deploy("ci", D).allow);
}

/// Every amend makes the reviews before it stale, also one that keeps the
/// subjects: widening a staging-only change to `prod` does not carry its
/// staging approvals along, and going back to an earlier revision's
/// subjects does not revive that revision's approvals.
#[test]
fn an_amend_that_keeps_the_subjects_still_makes_earlier_reviews_stale() {
    let mut f = Fold::new(POLICY);
    for (who, k) in [("bob", 2), ("carol", 3)] {
        f.register(who, PrincipalKind::Human, &["dev"], &[k]);
    }
    f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
    let amend = |f: &mut Fold, digest: &str, environments: &[&str]| {
        f.amend("ci", "CHG-1", digest, environments).unwrap();
    };
    f.open_for("ci", "CHG-1", D, &["staging"]).unwrap();
    let approve_both = |f: &mut Fold| {
        f.review("bob", "CHG-1", D, true).unwrap();
        f.review("carol", "CHG-1", D, true).unwrap();
    };
    approve_both(&mut f);
    let stale = |d: &DecisionRecord| {
        d.not_counted
            .iter()
            .filter(|n| n.reason == "stale: approved an earlier revision of the change")
            .count()
    };

    amend(&mut f, D, &["staging", "prod"]);
    let d = f.deploy("ci", D);
    assert!(
        !d.allow,
        "staging approvals carried to prod: {:?}",
        d.counted
    );
    assert_eq!((d.counted.len(), stale(&d)), (0, 2), "{d:?}");

    approve_both(&mut f);
    let d = f.deploy("ci", D);
    assert!(d.allow, "{:?}", d.reasons);
    assert_eq!(d.change, Some(("CHG-1".into(), 2)));

    amend(&mut f, D2, &[]);
    amend(&mut f, D, &[]);
    let d = f.deploy("ci", D);
    assert!(
        !d.allow,
        "revision 2's approvals came back: {:?}",
        d.counted
    );
    assert_eq!(d.change, Some(("CHG-1".into(), 4)));
    assert_eq!((d.counted.len(), stale(&d)), (0, 2), "{d:?}");
}

/// Each revision keeps the key of its own subjects, which decisions compare
/// with the key of what a review saw: after an amend to other subjects and
/// back, every revision's key is that of its subjects, and a review of the
/// current revision saw exactly that key.
#[test]
fn each_revision_keeps_the_key_of_its_subjects() {
    let mut f = Fold::new(POLICY);
    f.register("bob", PrincipalKind::Human, &["dev"], &[2]);
    f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
    f.open_for("ci", "CHG-1", D, &["staging"]).unwrap();
    f.amend("ci", "CHG-1", D2, &[]).unwrap();
    f.amend("ci", "CHG-1", D, &[]).unwrap();
    f.review("bob", "CHG-1", D, true).unwrap();
    let c = f.st.gov().change("CHG-1").expect("opened");
    let keys: Vec<_> = c.revisions.iter().map(|r| r.subjects_key).collect();
    for r in &c.revisions {
        assert_eq!(r.subjects_key, crate::policy::SubjectsKey::of(r.subjects()));
    }
    assert_ne!(keys[0], keys[1], "D and D2 share a key");
    assert_eq!(keys[0], keys[2]);
    assert_eq!(c.reviews[0].seen_key, keys[2]);
}

/// A review that names its revision is for that revision only. A review
/// signed for revision 1 (staging only) and handed in after an amendment
/// that adds prod would otherwise be recorded after revision 2 with the
/// same subjects, and count for it; it is refused, and so is one whose
/// subjects are not the named revision's. Naming the current revision
/// counts as before.
#[test]
fn a_review_naming_its_revision_never_counts_for_a_later_one() {
    let mut f = Fold::new(POLICY);
    for (who, k) in [("bob", 2), ("carol", 3)] {
        f.register(who, PrincipalKind::Human, &["dev"], &[k]);
    }
    f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
    f.open_for("ci", "CHG-1", D, &["staging"]).unwrap();
    let review = |revision: u32, seen: &str| {
        Body::ChangeReviewed(ChangeReview {
            change_id: RecordId::parse("CHG-1").unwrap(),
            seen_subjects: set(&[seen]),
            approve: true,
            comment: String::new(),
            revision: Some(revision),
        })
    };
    // Signed while revision 1 was current, not yet handed in.
    let (bob_1, carol_1) = (review(1, D), review(1, D));
    f.amend("ci", "CHG-1", D, &["staging", "prod"]).unwrap();
    for (who, body) in [("bob", bob_1), ("carol", carol_1)] {
        let e = f.apply(who, body).unwrap_err();
        assert_eq!(
            e.to_string(),
            "change \"CHG-1\" is at revision 2; this review is of revision 1: review the current revision"
        );
    }
    let d = f.deploy("ci", D);
    assert!(!d.allow && d.counted.is_empty(), "{d:?}");
    // The current revision named with other subjects.
    let e = f.apply("bob", review(2, D2)).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("seen_subjects are not those of revision 2 of change \"CHG-1\""),
        "{e}"
    );
    f.apply("bob", review(2, D)).unwrap();
    f.apply("carol", review(2, D)).unwrap();
    let d = f.deploy("ci", D);
    assert!(d.allow, "{:?}", d.reasons);
    assert_eq!(d.counted.len(), 2);
}

/// `max_approval_age` is measured from the integrated time of the review's
/// entry to the decision's, through the fold: an approval older than the
/// limit stops counting, and approving again counts.
#[test]
fn approvals_older_than_the_rules_limit_stop_counting() {
    let policy = POLICY.replace(
        "match.environments = [\"prod\"]\napprovals = 2",
        "match.environments = [\"prod\"]\napprovals = 2\nmax_approval_age = \"1h\"",
    );
    assert_ne!(policy, POLICY);
    let mut f = Fold::new(&policy);
    for (who, k) in [("bob", 2), ("carol", 3)] {
        f.register(who, PrincipalKind::Human, &["dev"], &[k]);
    }
    f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
    f.open("ci", "CHG-1", D).unwrap();
    f.review("bob", "CHG-1", D, true).unwrap();
    f.t += 2 * 3600 * 1_000_000_000; // two hours later
    f.review("carol", "CHG-1", D, true).unwrap();
    let d = f.deploy("ci", D);
    assert!(!d.allow, "{:?}", d.reasons);
    let counted: Vec<&str> = d.counted.iter().map(|c| c.approver.as_str()).collect();
    assert_eq!(counted, ["carol"]);
    assert!(
        d.not_counted.iter().any(|n| n.approver == "bob"
            && n.reason == "older than the rule's maximum approval age (1h)"),
        "{:?}",
        d.not_counted
    );
    f.review("bob", "CHG-1", D, true).unwrap();
    let d = f.deploy("ci", D);
    assert!(d.allow, "{:?}", d.reasons);
}

/// The committer of a commit is excluded as an approver as well as its
/// author, when they differ (a maintainer who applied someone's patch).
#[test]
fn the_committer_is_excluded_too() {
    let mut f = Fold::new(POLICY);
    for (who, k) in [("alice", 2), ("bob", 3), ("carol", 4), ("dave", 5)] {
        f.person(who, k, Some(&format!("{who}@example.com")));
    }
    f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
    let sha = f.observe(
        b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author Alice <alice@example.com> 1700000000 +0000\n\
committer Bob <bob@example.com> 1700000100 +0000\n\
\n\
apply alice's patch\n",
    );
    f.open_code("CHG-1", &[&sha], &[]);
    for who in ["alice", "bob", "carol"] {
        f.review(who, "CHG-1", &sha, true).unwrap();
    }
    let d = f.deploy("ci", &sha);
    assert!(!d.allow, "{:?}", d.reasons);
    let why: BTreeMap<&str, &str> = d
        .not_counted
        .iter()
        .map(|n| (n.approver.as_str(), n.reason.as_str()))
        .collect();
    assert_eq!(
        why["alice"],
        format!("alice is the author of commit {}", &sha[..12])
    );
    assert_eq!(
        why["bob"],
        format!("bob is the committer of commit {}", &sha[..12])
    );
    f.review("dave", "CHG-1", &sha, true).unwrap();
    let d = f.deploy("ci", &sha);
    assert!(d.allow, "{:?}", d.reasons);
}

/// The verified signer of a commit is excluded like its author: the author
/// line is whatever the committer typed, the signing key is not. A signer
/// no principal answers to leaves segregation of duties unchecked.
#[test]
fn a_verified_signer_is_excluded_like_an_author() {
    use crate::event::{CommitSignature, SignatureFormat, SignatureVerdict};
    let mut f = Fold::new(POLICY);
    for (who, k) in [("alice", 2), ("bob", 3), ("carol", 4), ("dave", 5)] {
        f.person(who, k, Some(&format!("{who}@example.com")));
    }
    f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
    let signed_by = |identity: &str| CommitSignature {
        format: SignatureFormat::Ssh,
        verdict: SignatureVerdict::Verified,
        signer_identity: identity.into(),
        key_fingerprint: "SHA256:x".into(),
        detail: String::new(),
        signer_key: Vec::new(),
    };
    // Bob wrote "Alice" as author and committer, and signed with his key.
    let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author Alice <alice@example.com> 1700000000 +0000\n\
committer Alice <alice@example.com> 1700000100 +0000\n\
\n\
looks like alice's\n";
    let sha = f.observe_signed(raw, signed_by("bob"));
    f.open_code("CHG-1", &[&sha], &[]);
    for who in ["bob", "carol"] {
        f.review(who, "CHG-1", &sha, true).unwrap();
    }
    let d = f.deploy("ci", &sha);
    assert!(!d.allow, "{:?}", d.reasons);
    assert!(
        d.not_counted.iter().any(|n| n.approver == "bob"
            && n.reason == format!("bob is the signer of commit {}", &sha[..12])),
        "{:?}",
        d.not_counted
    );
    f.review("dave", "CHG-1", &sha, true).unwrap();
    assert!(f.deploy("ci", &sha).allow);

    // Signed by an allowed signer's e-mail: mapped to its principal.
    let raw2 = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author Alice <alice@example.com> 1700000200 +0000\n\
committer Alice <alice@example.com> 1700000200 +0000\n\
\n\
second\n";
    let by_mail = f.observe_signed(raw2, signed_by("Carol@Example.com"));
    // And by someone Docket does not know.
    let raw3 = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author Alice <alice@example.com> 1700000300 +0000\n\
committer Alice <alice@example.com> 1700000300 +0000\n\
\n\
third\n";
    let stranger = f.observe_signed(raw3, signed_by("mallory@elsewhere.example"));
    f.amend_code("CHG-1", &[&by_mail, &stranger], &[]);
    f.approve_seen("carol", "CHG-1", &[&by_mail, &stranger]);
    let d = f.deploy("ci", &by_mail);
    assert!(
        d.reasons.contains(&format!(
            "commit {}: signer mallory@elsewhere.example is neither a principal nor the e-mail of one, so segregation of duties cannot be checked",
            &stranger[..12]
        )),
        "{:?}",
        d.reasons
    );
    assert!(
        d.not_counted.iter().any(|n| n.approver == "carol"
            && n.reason == format!("carol is the signer of commit {}", &by_mail[..12])),
        "{:?}",
        d.not_counted
    );
}

/// Under a policy whose unmatched requests are allowed, a digest nothing
/// records cannot ride on one CI reported from another repository: each
/// subject's repository must be recorded, and a change's own repository is
/// its opener's word alone.
#[test]
fn an_unrecorded_subject_or_a_claimed_repository_does_not_pick_a_laxer_rule() {
    use crate::event::CiStatus;
    let policy = r#"
version = 1
[permissions]
register_principals = ["admin"]
change_roles = ["admin"]
open_change = ["dev", "ci"]
approve = ["dev"]
report = ["ci"]
[defaults]
unmatched = "allow"
[[rule]]
name = "payments"
match.environments = ["prod"]
match.repositories = ["github.com/acme/payments"]
approvals = 2
"#;
    let mut f = Fold::new(policy);
    f.person("mallory", 2, Some("mallory@example.com"));
    f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
    let docs = "sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
    let unknown = "sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
    f.ci_run(
        "ci",
        "github.com/acme/docs",
        "0123456789abcdef0123456789abcdef01234567",
        docs,
        CiStatus::Passed,
    );
    let deploy = |f: &mut Fold, subjects: &[&str]| {
        let i = f
            .apply(
                "mallory",
                Body::DeployRequested(DeployRequest {
                    action: "deploy".into(),
                    environment: "prod".into(),
                    repository: None,
                    kind: None,
                    namespace: None,
                    subjects: set(subjects),
                    change_id: None,
                    break_glass: false,
                    justification: String::new(),
                }),
            )
            .unwrap();
        f.st.gov().deployment(i).unwrap().decision.clone()
    };
    // The recorded digest alone: from docs, no rule, unmatched allows.
    assert!(deploy(&mut f, &[docs]).allow);
    // Next to a digest nothing records: its repository is unknown.
    let d = deploy(&mut f, &[docs, unknown]);
    assert!(!d.allow, "{:?}", d.reasons);
    assert!(
        d.reasons[0].contains(&format!(
            "no ingested commit or CI run says where {unknown} come(s) from"
        )),
        "{:?}",
        d.reasons
    );
    // A change that names a repository is its opener's word alone.
    f.apply(
        "mallory",
        Body::ChangeOpened(ChangeOpening {
            change_id: RecordId::parse("M-1").unwrap(),
            title: String::new(),
            repository: "github.com/acme/docs".into(),
            commits: BTreeSet::new(),
            artifact_digests: set(&[unknown]),
            environments: set(&["prod"]),
            ticket: String::new(),
            description: String::new(),
        }),
    )
    .unwrap();
    let d = deploy(&mut f, &[unknown]);
    assert!(!d.allow, "{:?}", d.reasons);
    assert!(
        d.reasons[0]
            .contains("change M-1 names github.com/acme/docs, and nothing recorded confirms it"),
        "{:?}",
        d.reasons
    );
}

/// Without a named change, the most recently revised change binding the
/// subjects is considered, and anyone with open_change can open one; a
/// denial then names the others, so the pipeline can name its own.
#[test]
fn a_denial_from_a_found_change_names_the_others_binding_the_subjects() {
    let mut f = Fold::new(POLICY);
    for (who, k) in [("alice", 2), ("bob", 3), ("carol", 4), ("mallory", 5)] {
        f.person(who, k, Some(&format!("{who}@example.com")));
    }
    f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
    f.open_code("CHG-1", &[], &[D]);
    for who in ["alice", "bob"] {
        f.review(who, "CHG-1", D, true).unwrap();
    }
    assert!(f.deploy("ci", D).allow);
    f.apply(
        "mallory",
        Body::ChangeOpened(ChangeOpening {
            change_id: RecordId::parse("GRIEF").unwrap(),
            title: String::new(),
            repository: String::new(),
            commits: BTreeSet::new(),
            artifact_digests: set(&[D]),
            environments: set(&["prod"]),
            ticket: String::new(),
            description: String::new(),
        }),
    )
    .unwrap();
    let d = f.deploy("ci", D);
    assert!(!d.allow);
    assert_eq!(d.change.as_ref().map(|(id, _)| id.as_str()), Some("GRIEF"));
    assert_eq!(
        d.reasons.last().unwrap(),
        "change GRIEF was considered as the most recently revised of those binding these subjects for prod; CHG-1 bind(s) them too: if the deployment is for one of those, name it (--change)"
    );
}

/// A refusal for a permission no role holds says so, not "to role(s) ".
#[test]
fn a_permission_no_role_holds_is_named_as_such() {
    let mut f = Fold::new("version = 1\n[permissions]\nopen_change = []\n");
    let e = f
        .apply(
            "admin",
            Body::ChangeOpened(ChangeOpening {
                change_id: RecordId::parse("CHG-1").unwrap(),
                title: String::new(),
                repository: String::new(),
                commits: BTreeSet::new(),
                artifact_digests: set(&[D]),
                environments: set(&["prod"]),
                ticket: String::new(),
                description: String::new(),
            }),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("policy version 1 gives `open_change` to no role"),
        "{e}"
    );
}

/// New break-glass requests under the built-in default policy are refused
/// at append (`Service::append`); one an older log recorded replays as it
/// was decided then: allowed, with its obligation, so that the review
/// recorded after it still applies.
#[test]
fn a_recorded_break_glass_under_the_built_in_default_replays_as_allowed() {
    let mut f = Fold::new(crate::policy::DEFAULT_POLICY);
    assert!(f.st.builtin_policy_in_force());
    let i = f
        .apply(
            "admin",
            Body::DeployRequested(DeployRequest {
                action: "deploy".into(),
                environment: "prod".into(),
                repository: None,
                kind: None,
                namespace: None,
                subjects: set(&[D]),
                change_id: None,
                break_glass: true,
                justification: "outage".into(),
            }),
        )
        .unwrap();
    let d = f.st.gov().deployment(i).unwrap().decision.clone();
    assert!(d.allow, "{:?}", d.reasons);
    assert_eq!(d.obligations.len(), 1);
    // Authorize, which records nothing, says what append would say.
    let req = crate::policy::Request {
        action: "deploy".into(),
        environment: "prod".into(),
        repository: None,
        kind: None,
        namespace: None,
        subjects: [D.to_owned()].into(),
        actor: "admin".into(),
        break_glass: true,
        at: jiff::Timestamp::from_nanosecond(i128::from(f.t)).unwrap(),
    };
    let a = f.st.authorize(&req, None);
    assert!(!a.allow);
    assert_eq!(a.reasons, [ApplyError::BuiltinBreakGlass.to_string()]);
}

/// A signer identity that is one principal's id and another's e-mail (a
/// log may hold such a pair from before new entries were refused it) is
/// both of them: the verdict does not say which, so neither may approve.
#[test]
fn a_signer_identity_naming_two_principals_excludes_both() {
    use crate::event::{CommitSignature, SignatureFormat, SignatureVerdict};
    let mut f = Fold::new(POLICY);
    f.person("erin@example.com", 2, None);
    f.person("bob", 3, Some("erin@example.com"));
    for (who, k) in [("carol", 4), ("dave", 5)] {
        f.person(who, k, Some(&format!("{who}@example.com")));
    }
    f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
    let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author Carol <carol@example.com> 1700000200 +0000\n\
committer Carol <carol@example.com> 1700000200 +0000\n\
\n\
whose?\n";
    let sha = f.observe_signed(
        raw,
        CommitSignature {
            format: SignatureFormat::Ssh,
            verdict: SignatureVerdict::Verified,
            signer_identity: "erin@example.com".into(),
            key_fingerprint: "SHA256:x".into(),
            detail: String::new(),
            signer_key: Vec::new(),
        },
    );
    f.open_code("CHG-1", &[&sha], &[]);
    for who in ["erin@example.com", "bob", "dave"] {
        f.review(who, "CHG-1", &sha, true).unwrap();
    }
    // Dave's is the only approval counted; two are needed.
    let d = f.deploy("ci", &sha);
    assert!(!d.allow, "{:?}", d.reasons);
    for who in ["erin@example.com", "bob"] {
        assert!(
            d.not_counted.iter().any(|n| n.approver == who
                && n.reason == format!("{who} is the signer of commit {}", &sha[..12])),
            "{who}: {:?}",
            d.not_counted
        );
    }
}

/// When a change binds commits, a digest it binds must have been built
/// from one of them: a CI run saying the image was built from another
/// commit denies, even when that commit's author is known and excluded.
#[test]
fn an_image_built_from_a_commit_the_change_does_not_bind_is_denied() {
    use crate::event::CiStatus;
    let mut f = Fold::new(POLICY);
    for (who, k) in [("alice", 2), ("bob", 3), ("carol", 4), ("mallory", 5)] {
        f.person(who, k, Some(&format!("{who}@example.com")));
    }
    f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
    let reviewed = f.observe(
        b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author Alice <alice@example.com> 1700000000 +0000\n\
committer Alice <alice@example.com> 1700000000 +0000\n\
\n\
reviewed\n",
    );
    let built = f.observe(
        b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author Mallory <mallory@example.com> 1700000100 +0000\n\
committer Mallory <mallory@example.com> 1700000100 +0000\n\
\n\
not reviewed\n",
    );
    f.ci_run(
        "ci",
        "github.com/acme/payments",
        &built,
        D,
        CiStatus::Passed,
    );
    f.open_code("CHG-1", &[&reviewed], &[D]);
    for who in ["bob", "carol"] {
        f.approve_seen(who, "CHG-1", &[&reviewed, D]);
    }
    let d = f.deploy("ci", D);
    assert!(!d.allow, "{:?}", d.reasons);
    assert_eq!(
        d.reasons,
        [format!(
            "{D} was built from commit {} (a CI run reported by ci), which change CHG-1 does not bind: its approvers did not review that code; amend the change to bind it",
            &built[..12]
        )]
    );
    // Bound, the commit is reviewed code: the same approvers, afresh, allow.
    f.amend_code("CHG-1", &[&reviewed, &built], &[D]);
    for who in ["bob", "carol"] {
        f.approve_seen(who, "CHG-1", &[&reviewed, &built, D]);
    }
    let d = f.deploy("ci", D);
    assert!(d.allow, "{:?}", d.reasons);
}

/// A deployment's decision basis (ledger-format §4.4) names every change
/// that could be considered, the considered change's subjects and the commit
/// its image was built from, each with the entries before it that concern
/// it: an amendment that dropped the digest still counts for its change,
/// every deployment request counts for its subjects whatever its verdict,
/// and a named change that does not exist counts 0.
#[test]
fn a_deployment_basis_names_what_its_decision_reads() {
    use crate::event::{ChangeAmendment, CiStatus};
    let mut f = Fold::new(POLICY);
    for (who, email) in [("alice", Some("alice@example.com")), ("bob", None)] {
        f.person(who, who.as_bytes()[0], email);
    }
    f.register("ci", PrincipalKind::Ci, &["ci"], &[9]);
    let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author Alice <alice@example.com> 1700000000 +0000\n\
committer Alice <alice@example.com> 1700000000 +0000\n\
\n\
cache exchange rates\n"
        .to_vec();
    let sha = f.observe(&raw);
    f.ci_run("ci", "github.com/acme/payments", &sha, D, CiStatus::Passed);
    f.open("ci", "CHG-1", D).unwrap();
    f.review("alice", "CHG-1", D, true).unwrap();
    f.review("bob", "CHG-1", D, true).unwrap();
    // A second change bound the digest once and was amended away from it.
    f.open("ci", "CHG-2", D).unwrap();
    f.apply(
        "ci",
        Body::ChangeAmended(ChangeAmendment {
            change_id: RecordId::parse("CHG-2").unwrap(),
            commits: BTreeSet::new(),
            artifact_digests: set(&[D2]),
            environments: BTreeSet::new(),
            reason: "wrong image".into(),
        }),
    )
    .unwrap();
    let request = |change: Option<&str>| Event {
        event_id: "probe".into(),
        claimed_time_nanos: 1,
        signer: id("ci"),
        body: Body::DeployRequested(DeployRequest {
            action: "deploy".into(),
            environment: "prod".into(),
            repository: None,
            kind: None,
            namespace: None,
            subjects: set(&[D]),
            change_id: change.map(|c| RecordId::parse(c).unwrap()),
            break_glass: false,
            justification: String::new(),
        }),
    };
    let sha_key = (format!("subject:{sha}"), 2);
    let d_key = |n: u64| (format!("subject:{D}"), n);
    let considered = vec![
        ("change:CHG-1".to_owned(), 3),
        ("change:CHG-2".to_owned(), 2),
        // Its observation and the CI run that built D from it (a hex SHA
        // sorts before `sha256:`).
        sha_key.clone(),
        // The CI run and both openings; not the amendment.
        d_key(3),
    ];
    assert_eq!(f.st.basis_for(&request(None)), considered);
    assert_eq!(f.st.basis_for(&request(Some("CHG-1"))), considered);
    // A change that does not exist is read too, and its count, 0, shows
    // it; no change is considered, so no commit is read.
    assert_eq!(
        f.st.basis_for(&request(Some("CHG-9"))),
        [
            ("change:CHG-1".to_owned(), 3),
            ("change:CHG-2".to_owned(), 2),
            ("change:CHG-9".to_owned(), 0),
            d_key(3),
        ]
    );
    // Other events read nothing.
    assert!(f.st.basis_for(&note_event()).is_empty());

    // alice wrote the code, so only bob counts: denied, and it counts for
    // the digest all the same.
    assert!(!f.deploy("ci", D).allow);
    let mut denied = considered.clone();
    denied[3] = d_key(4);
    assert_eq!(f.st.basis_for(&request(None)), denied);
    // With carol's approval it is allowed, and counts too.
    f.person("carol", b'k', None);
    f.review("carol", "CHG-1", D, true).unwrap();
    assert!(f.deploy("ci", D).allow);
    assert_eq!(
        f.st.basis_for(&request(None)),
        [
            ("change:CHG-1".to_owned(), 4),
            ("change:CHG-2".to_owned(), 2),
            sha_key,
            d_key(5),
        ]
    );
}

fn note_event() -> Event {
    Event {
        event_id: "note".into(),
        claimed_time_nanos: 1,
        signer: id("admin"),
        body: Body::Annotation {
            subject: "repo".into(),
            kind: "note".into(),
            text: String::new(),
            attributes: Default::default(),
        },
    }
}

/// A principal may rotate its own key without anyone's approval, and every
/// key it ever had stays in its record: the record is bounded, so a
/// principal rotating in a loop is refused with a reason instead of growing
/// past what its stored encoding counts (a u16) and no longer loading.
#[test]
fn a_principal_record_stays_within_its_bounds() {
    let mut f = Fold::new(POLICY);
    f.register("bob", PrincipalKind::Human, &["dev"], &[3]);
    let keys: Vec<VerifyingKey> = (0..crate::state::MAX_PER_PRINCIPAL as u32)
        .map(|n| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&n.to_be_bytes());
            seed[4] = 0xb0;
            SigningKey::from_bytes(&seed).verifying_key()
        })
        .collect();
    for k in &keys[..crate::state::MAX_PER_PRINCIPAL - 1] {
        f.apply(
            "bob",
            Body::KeyRotated {
                principal: id("bob"),
                new_key: *k,
                old_key: None,
            },
        )
        .unwrap();
    }
    let e = f
        .apply(
            "bob",
            Body::KeyRotated {
                principal: id("bob"),
                new_key: keys[crate::state::MAX_PER_PRINCIPAL - 1],
                old_key: None,
            },
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "principal \"bob\" already has 1024 keys (revoked ones included); at most 1024 are kept per principal"
    );
    // What was kept still stores and loads.
    let mut st = f.st.clone();
    let mut pairs = st.take_changes();
    pairs.sort();
    let loaded = State::load(pairs).unwrap();
    assert_eq!(
        loaded.principal("bob").unwrap().keys.len(),
        crate::state::MAX_PER_PRINCIPAL
    );
}

/// The changed-path counts are the reporter's word: counts whose sum does
/// not fit fold to the largest count, never overflow the writer's fold.
#[test]
fn changed_path_counts_past_u32_saturate() {
    let mut f = Fold::new(POLICY);
    f.register("ci", PrincipalKind::Ci, &["ci"], &[9]);
    let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author A <a@example.com> 1700000000 +0000\n\
committer A <a@example.com> 1700000000 +0000\n\nhuge\n";
    let sha = f.observe_with(
        raw,
        crate::event::CommitSignature::unsigned(),
        crate::event::ChangedPaths {
            added: u32::MAX,
            modified: 1,
            deleted: u32::MAX,
            paths: Vec::new(),
            truncated: true,
        },
    );
    assert_eq!(f.st.gov().commit(&sha).unwrap().changed_files, u32::MAX);
}

/// A break-glass review stands in for the skipped approvals, so whoever an
/// approval would exclude may not give it: the change's requester, the
/// authors of the commits it deployed or its image was built from, and the
/// CI identity that built the image. The fold still closes the obligation
/// with such a review (older logs may hold one); `Service::append` and the
/// writer refuse new ones.
#[test]
fn a_break_glass_reviewer_must_have_taken_no_part_in_it() {
    use crate::event::CiStatus;
    use crate::event::git::object_id;
    let mut f = Fold::new(POLICY);
    for (who, email) in [
        ("alice", Some("alice@example.com")),
        ("bob", None),
        ("carol", None),
        ("erin", None),
    ] {
        f.person(who, who.as_bytes()[0], email);
    }
    f.register("dave", PrincipalKind::Human, &["sre"], &[4]);
    // A human who reports CI runs by hand, and may approve.
    f.register("hank", PrincipalKind::Human, &["ci", "dev"], &[8]);
    f.register("ci", PrincipalKind::Ci, &["ci"], &[9]);
    let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author Alice <alice@example.com> 1700000000 +0000\n\
committer Alice <alice@example.com> 1700000000 +0000\n\
\n\
hotfix\n"
        .to_vec();
    let sha = object_id(&raw, 40).unwrap();
    assert_eq!(f.observe(&raw), sha);
    f.ci_run(
        "hank",
        "github.com/acme/payments",
        &sha,
        D,
        CiStatus::Passed,
    );
    f.open("bob", "CHG-1", D).unwrap();
    let bg = f
        .apply(
            "dave",
            Body::DeployRequested(DeployRequest {
                action: "deploy".into(),
                environment: "prod".into(),
                repository: None,
                kind: None,
                namespace: None,
                subjects: set(&[D]),
                change_id: None,
                break_glass: true,
                justification: "outage".into(),
            }),
        )
        .unwrap();
    let rec = f.st.gov().deployment(bg).unwrap();
    assert!(rec.decision.allow, "{:?}", rec.decision.reasons);
    assert_eq!(rec.decision.change, Some(("CHG-1".to_owned(), 1)));
    let conflict = |f: &Fold, who: &str| f.st.break_glass_reviewer_conflict(who, bg);
    assert_eq!(
        conflict(&f, "bob").as_deref(),
        Some("bob opened or amended change CHG-1, which it deployed")
    );
    assert_eq!(
        conflict(&f, "hank").unwrap(),
        format!(
            "hank reported the CI run at entry {} that built {D}",
            bg - 2
        )
    );
    assert_eq!(
        conflict(&f, "alice").unwrap(),
        format!(
            "alice is the author of commit {}, which {D} was built from",
            &sha[..12]
        )
    );
    assert_eq!(conflict(&f, "carol"), None);
    // The one who broke the glass gets the fold's own refusal, not this one.
    assert_eq!(conflict(&f, "dave"), None);
    // Not a break-glass: nothing to say (the fold names why).
    let plain = f.deploy("dave", D2);
    assert!(!plain.allow);
    assert_eq!(f.st.break_glass_reviewer_conflict("alice", bg + 1), None);
    // The fold itself still takes the author's review: replay of a log
    // recorded before the check keeps it.
    let before = f.st.gov().subject_head(D).unwrap().clone();
    let review = f
        .apply(
            "alice",
            Body::BreakGlassReviewed(crate::event::BreakGlassReview {
                deployment_index: bg,
                justified: true,
                comment: String::new(),
            }),
        )
        .unwrap();
    assert!(f.st.gov().obligation(bg).unwrap().review.is_some());
    // It concerns the deployment's subject too (ledger-format §6.6), beyond
    // what a decision basis counts for it (§4.4).
    let after = f.st.gov().subject_head(D).unwrap();
    assert_eq!(after.count, before.count + 1);
    assert_eq!(after.chain, heads::chain_step(&before.chain, review));
    assert_eq!(f.st.gov().subject_entry_count(D), before.count);
}

/// What a key signed stops speaking for its holder once the key is revoked
/// or rotated away (a stolen key's word goes with it): an approval stops
/// counting, a rejection stops blocking (the reviewer's earlier review
/// stands again), and a policy approval not yet acted on stops counting
/// towards activation. Decisions already recorded keep what they decided.
#[test]
fn what_a_revoked_key_signed_no_longer_counts() {
    let mut f = Fold::new(POLICY);
    f.register("alice", PrincipalKind::Human, &["dev"], &[2]);
    f.register("bob", PrincipalKind::Human, &["dev"], &[3]);
    f.register("carol", PrincipalKind::Human, &["security"], &[4, 14]);
    f.open("alice", "CHG-1", D).unwrap();
    let bob_review = f.review("bob", "CHG-1", D, true).unwrap();
    let review = |approve| {
        Body::ChangeReviewed(ChangeReview {
            change_id: RecordId::parse("CHG-1").unwrap(),
            seen_subjects: set(&[D]),
            approve,
            comment: String::new(),
            revision: None,
        })
    };
    f.apply_signed("carol", 4, review(true)).unwrap();
    let allowed = f.deploy("alice", D);
    assert!(allowed.allow, "{:?}", allowed.reasons);
    let allowed_at = f.st.next_index() - 1;

    // Bob rotates his key: his approval goes with it.
    let rotated = f.rotate_own("bob", 3, 13);
    let d = f.deploy("alice", D);
    assert!(!d.allow);
    assert!(
        d.not_counted.iter().any(|n| n.approver == "bob"
            && n.index == bob_review
            && n.reason
                == format!(
                    "signed with a key of bob that was revoked or rotated away at entry {rotated}; review again with a current key"
                )),
        "{:?}",
        d.not_counted
    );
    assert!(
        d.reasons.iter().any(|r| r.contains("1 counted")),
        "{:?}",
        d.reasons
    );
    // The recorded decision stands as it was made.
    assert!(f.st.gov().deployment(allowed_at).unwrap().decision.allow);
    // With his new key bob approves again.
    f.review("bob", "CHG-1", D, true).unwrap();
    assert!(f.deploy("alice", D).allow);

    // A rejection signed with carol's second key, which is then revoked as
    // stolen: her approval (first key) stands again.
    f.apply_signed("carol", 14, review(false)).unwrap();
    assert!(!f.deploy("alice", D).allow);
    f.apply(
        "admin",
        Body::KeyRevoked {
            principal: id("carol"),
            key: key(14),
            reason: "stolen".into(),
        },
    )
    .unwrap();
    let d = f.deploy("alice", D);
    assert!(d.allow, "{:?}", d.reasons);
    assert_eq!(
        d.counted
            .iter()
            .map(|c| c.approver.as_str())
            .collect::<Vec<_>>(),
        ["carol", "bob"]
    );

    // Policy approvals: two policy admins must approve. pb approves, then
    // rotates that key away; pc's approval would now activate the proposal
    // only by counting pb's withdrawn one, so a new entry is refused, while
    // the fold (replaying a log recorded before keys were kept) counts it.
    f.register("pa", PrincipalKind::Human, &["policy-admin"], &[5]);
    f.register("pb", PrincipalKind::Human, &["policy-admin"], &[6]);
    f.register("pc", PrincipalKind::Human, &["policy-admin"], &[7]);
    f.apply(
        "pa",
        Body::PolicyProposed(PolicyProposal {
            proposal_id: RecordId::parse("P1").unwrap(),
            text: POLICY.to_owned(),
            base_version: 1,
            description: String::new(),
        }),
    )
    .unwrap();
    let approve = || Body::PolicyApproved {
        proposal_id: RecordId::parse("P1").unwrap(),
    };
    let pb_first = f.apply("pb", approve()).unwrap();
    let rotated = f
        .apply(
            "pb",
            Body::KeyRotated {
                principal: id("pb"),
                new_key: key(16),
                old_key: Some(key(6)),
            },
        )
        .unwrap();
    let e = f.st.check_policy_approval(&id("pc"), "P1").unwrap_err();
    assert_eq!(
        e,
        ApplyError::WithdrawnPolicyApproval {
            id: "P1".into(),
            why: format!(
                "pb's (entry {pb_first}) was signed with a key revoked or rotated away at entry {rotated}"
            ),
        }
    );
    let mut replay = f.clone();
    replay.apply("pc", approve()).unwrap();
    assert_eq!(replay.st.gov().active_version().map(|v| v.version), Some(2));
    // pb approves again with the new key (the old approval no longer stops
    // it), which alone activates nothing; then pc's approval may.
    f.st.check_policy_approval(&id("pb"), "P1").unwrap();
    f.apply("pb", approve()).unwrap();
    assert_eq!(f.st.gov().active_version().map(|v| v.version), Some(1));
    assert_eq!(
        f.apply("pb", approve()),
        Err(ApplyError::AlreadyApproved {
            id: "P1".into(),
            signer: "pb".into()
        })
    );
    f.st.check_policy_approval(&id("pc"), "P1").unwrap();
    f.apply("pc", approve()).unwrap();
    let v = f.st.gov().active_version().unwrap();
    assert_eq!(v.version, 2);
    assert_eq!(v.approvers, ["pb", "pc"]);
}

/// A new entry's signature search is bounded: with a wrong keyid hint
/// and more keys than the budget allows attempts, it is refused naming
/// the keyid; with the right hint it costs one attempt. What it finds
/// within the budget is what the unbounded search (replay) finds.
#[test]
fn a_new_entrys_signature_search_is_bounded_and_agrees_with_replay() {
    let seeds: Vec<SigningKey> = (0..520u32)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            seed[31] = 9;
            SigningKey::from_bytes(&seed)
        })
        .collect();
    let keys = SignerKeys {
        signer: "ci".into(),
        active: seeds.iter().map(SigningKey::verifying_key).collect(),
        revoked: Vec::new(),
    };
    let ev = Event {
        event_id: "e1".into(),
        claimed_time_nanos: 1,
        signer: id("ci"),
        body: Body::PolicyApproved {
            proposal_id: RecordId::parse("P-1").unwrap(),
        },
    };
    let signed_by = |i: usize, hinted: bool| {
        let mut env = crate::api::convert::sign_event(&ev, &seeds[i]);
        if !hinted {
            env.signatures[0].keyid = String::new();
        }
        env
    };
    let last = seeds.len() - 1;
    let budget = NEW_ENTRY_VERIFY_BUDGET;
    // Hinted: found at once.
    assert_eq!(
        keys.authenticate_within(&signed_by(last, true), budget),
        Ok(seeds[last].verifying_key())
    );
    // Not hinted, early in the list: within the budget, the same key.
    let early = signed_by(3, false);
    assert_eq!(
        keys.authenticate_within(&early, budget),
        keys.authenticate(&early)
    );
    assert_eq!(keys.authenticate(&early), Ok(seeds[3].verifying_key()));
    // Not hinted, last of 520: more attempts than the budget allows.
    let costly = signed_by(last, false);
    let per_try =
        crate::crypto::pae(&costly.payload_type, &costly.payload).len() as u64 + VERIFY_FIXED_COST;
    assert!((budget / per_try) < seeds.len() as u64, "{per_try}");
    let e = keys.authenticate_within(&costly, budget).unwrap_err();
    assert!(
        matches!(e, AuthError::TooCostly { signatures: 1, keys: 520, tries, .. } if tries == budget / per_try),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("signatures: none verified within"),
        "{e}"
    );
    assert!(e.to_string().contains("keyid"), "{e}");
    // Replay, unbounded, still finds it.
    assert_eq!(keys.authenticate(&costly), Ok(seeds[last].verifying_key()));
}

/// The key a fold that checks signatures on other threads hands `apply`
/// for a review: with several active keys the one whose signature
/// verifies, whatever the keyid hint names; with one active key that key,
/// without checking here (a forged signature is left to the signature
/// threads, which `authenticate` with the same keys and refuse it).
#[test]
fn a_fold_attributes_a_review_to_the_key_that_signed_it() {
    let signing = [3u8, 13].map(|n| SigningKey::from_bytes(&[n; 32]));
    let ev = Event {
        event_id: "e1".into(),
        claimed_time_nanos: 1,
        signer: id("bob"),
        body: Body::ChangeReviewed(ChangeReview {
            change_id: RecordId::parse("CHG-1").unwrap(),
            seen_subjects: set(&[D]),
            approve: true,
            comment: String::new(),
            revision: None,
        }),
    };
    // Signed with the second key, the hint naming the first.
    let mut env = crate::api::convert::sign_event(&ev, &signing[1]);
    env.signatures[0].keyid = crate::crypto::KeyId::of(&key(3)).to_string();
    let two = SignerKeys {
        signer: "bob".into(),
        active: vec![key(3), key(13)],
        revoked: Vec::new(),
    };
    assert_eq!(two.preferred(&env), Some(key(3)));
    assert_eq!(two.key_for_fold(&env, &ev.body), Ok(key(13)));
    assert_eq!(two.authenticate(&env), Ok(key(13)));

    let one = SignerKeys {
        signer: "bob".into(),
        active: vec![key(3)],
        revoked: vec![(key(13), 7)],
    };
    let mut forged = crate::api::convert::sign_event(&ev, &signing[0]);
    forged.signatures[0].sig[0] ^= 1;
    assert_eq!(one.key_for_fold(&forged, &ev.body), Ok(key(3)));
    assert_eq!(
        one.authenticate(&forged),
        Err(AuthError::BadSignature("bob".into()))
    );
    // Signed with the revoked key: the fold takes the active one, and the
    // signature check refuses the entry.
    assert_eq!(one.key_for_fold(&env, &ev.body), Ok(key(3)));
    assert!(matches!(
        one.authenticate(&env),
        Err(AuthError::RevokedKey { revoked_at: 7, .. })
    ));
}

/// A CI run speaks for its reporter only while the key that signed it
/// stands and the reporter may report: a run signed with a key rotated
/// away since neither passes CI nor, from a reporter since demoted, adds a
/// commit to account for or a repository to pick the rule by.
#[test]
fn a_ci_run_no_longer_counting_passes_nothing_adds_no_commit_and_picks_no_rule() {
    use crate::event::CiStatus;
    let ci_policy = prod_rule_requiring("ci_passed = true\n");
    let mut f = Fold::new(&ci_policy);
    f.register("bob", PrincipalKind::Human, &["dev"], &[2]);
    f.register("carol", PrincipalKind::Human, &["dev"], &[3]);
    f.register("ci", PrincipalKind::Ci, &["ci"], &[9]);
    f.ci_run("ci", "github.com/acme/payments", "", D, CiStatus::Passed);
    f.open("ci", "CHG-1", D).unwrap();
    f.review("bob", "CHG-1", D, true).unwrap();
    f.review("carol", "CHG-1", D, true).unwrap();
    assert!(f.deploy("ci", D).allow);
    // The runner's key is stolen; it rotates away from it.
    let rotated = f.rotate_own("ci", 9, 19);
    let d = f.deploy("ci", D);
    assert!(!d.allow);
    assert!(
        d.reasons.contains(&format!(
            "no passing CI run is recorded for {D}; runs signed with a key revoked or rotated away since do not count: by ci (its key was revoked or rotated away at entry {rotated})"
        )),
        "{:?}",
        d.reasons
    );
    // A run signed with the new key counts.
    f.ci_run("ci", "github.com/acme/payments", "", D, CiStatus::Passed);
    assert!(f.deploy("ci", D).allow);

    // A runner that names a commit no one can ingest as the source of D
    // blocks approvals (the commit's authors are unknown) while it may
    // report, and no longer once it may not.
    let mut f = Fold::new(POLICY);
    f.register("bob", PrincipalKind::Human, &["dev"], &[2]);
    f.register("carol", PrincipalKind::Human, &["dev"], &[3]);
    f.register("ci", PrincipalKind::Ci, &["ci"], &[9]);
    f.register("ci-x", PrincipalKind::Ci, &["ci"], &[10]);
    let made_up = "0123456789abcdef0123456789abcdef01234567";
    f.ci_run("ci-x", "github.com/acme/docs", made_up, D, CiStatus::Passed);
    f.open("ci", "CHG-1", D).unwrap();
    f.review("bob", "CHG-1", D, true).unwrap();
    f.review("carol", "CHG-1", D, true).unwrap();
    let d = f.deploy("ci", D);
    assert!(!d.allow);
    assert!(
        d.reasons.iter().any(|r| r.starts_with(
            "commit 0123456789ab (built into sha256:aaaaaaaaaaaa) has not been observed"
        )),
        "{:?}",
        d.reasons
    );
    f.take_role("ci-x", "ci");
    let d = f.deploy("ci", D);
    assert!(d.allow, "{:?}", d.reasons);

    // Its repository no longer picks the rule either: a request for D
    // without a change, under a rule pinned to payments and a lax one
    // after it, stops at the pinned one ("repository is unknown").
    let pinned = "version = 1\n[permissions]\nregister_principals = [\"admin\"]\nchange_roles = [\"admin\"]\nreport = [\"ci\"]\nopen_change = [\"ci\"]\n\n[[rule]]\nname = \"payments\"\nmatch.environments = [\"prod\"]\nmatch.repositories = [\"github.com/acme/payments\"]\napprovals = 2\n\n[[rule]]\nname = \"other\"\nmatch.environments = [\"prod\"]\n";
    let mut f = Fold::new(pinned);
    f.register("ci", PrincipalKind::Ci, &["ci"], &[9]);
    f.register("ci-x", PrincipalKind::Ci, &["ci"], &[10]);
    f.ci_run("ci-x", "github.com/acme/docs", "", D, CiStatus::Failed);
    let d = f.deploy("ci", D);
    assert_eq!((d.allow, d.rule.as_deref()), (true, Some("other")));
    f.take_role("ci-x", "ci");
    let d = f.deploy("ci", D);
    assert!(!d.allow);
    assert!(
        d.reasons[0].starts_with(
            "rule \"payments\" applies to the repository github.com/acme/payments, and this request's repository is unknown"
        ),
        "{:?}",
        d.reasons
    );
}

/// What `Authorize` would ask about deploying `digest` to prod, as `actor`.
fn prod_question(f: &Fold, actor: &str, digest: &str) -> crate::policy::Request {
    crate::policy::Request {
        action: "deploy".into(),
        environment: "prod".into(),
        repository: None,
        kind: None,
        namespace: None,
        subjects: set(&[digest]),
        actor: actor.into(),
        break_glass: false,
        at: jiff::Timestamp::from_nanosecond(i128::from(f.t + 1)).unwrap(),
    }
}

/// A commit by `who` (`who@example.com`) with `message`, as git writes it.
fn commit_by(who: &str, message: &str) -> Vec<u8> {
    format!(
        "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author {who} <{who}@example.com> 1700000000 +0000\n\
committer {who} <{who}@example.com> 1700000000 +0000\n\
\n\
{message}\n"
    )
    .into_bytes()
}

/// The facts a read keeps are dropped by the next fold step: alice's
/// approval counts until the commit her change's image was built from is
/// ingested with her as its author, and from that step on it does not,
/// though the decision before it kept the change's facts.
#[test]
fn kept_facts_go_with_the_next_fold_step() {
    use crate::event::CiStatus;
    let mut f = Fold::new(POLICY);
    for who in ["alice", "bob", "carol"] {
        let email = format!("{who}@example.com");
        f.person(who, who.as_bytes()[0], Some(&email));
    }
    f.register("ci", PrincipalKind::Ci, &["ci"], &[9]);
    let raw = commit_by("alice", "round half to even");
    let sha = crate::event::git::object_id(&raw, 40).unwrap();
    f.ci_run("ci", "github.com/acme/payments", &sha, D, CiStatus::Passed);
    f.open("ci", "CHG-1", D).unwrap();
    f.review("alice", "CHG-1", D, true).unwrap();
    f.review("bob", "CHG-1", D, true).unwrap();
    let q = prod_question(&f, "ci", D);

    assert_eq!(f.st.facts_cache.len(), 0);
    let before = f.st.decide(&q, None);
    assert_eq!(f.st.facts_cache.len(), 1, "the change's facts are kept");
    assert_eq!(f.st.decide(&q, Some("CHG-1")), before);
    let counted = |d: &DecisionRecord| {
        d.counted
            .iter()
            .map(|c| c.approver.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(counted(&before), ["alice", "bob"]);
    // The author is unknown, so the decision denies, whoever approved.
    assert!(!before.allow);

    f.observe(&raw);
    assert_eq!(f.st.facts_cache.len(), 0, "a fold step drops them");
    let after = f.st.decide(&q, None);
    assert_eq!(counted(&after), ["bob"], "{after:#?}");
    assert!(
        after.not_counted.iter().any(|n| n.approver == "alice"
            && n.reason
                .starts_with("alice is the author and committer of commit ")),
        "{:?}",
        after.not_counted
    );
    assert_eq!(after, f.st.decide_fresh(&q, None));

    f.review("carol", "CHG-1", D, true).unwrap();
    let d = f.st.decide(&q, None);
    assert!(d.allow, "{:?}", d.reasons);
    assert_eq!(counted(&d), ["bob", "carol"]);
}

/// A step a [`kept_facts_agree_with_fresh_ones_after_every_step`] history
/// may take: each changes what a decision about CHG-1 reads.
#[derive(Debug, Clone)]
enum FactOp {
    Review(usize, bool),
    /// An ingested commit by one of the people, built into the digest by ci.
    Authored(usize),
    CiRun(bool),
    Amend,
    TakeDev(usize),
    RotateKey(usize),
    OpenOther,
}

const PEOPLE: [&str; 3] = ["alice", "bob", "carol"];

fn fact_op() -> impl Strategy<Value = FactOp> {
    prop_oneof![
        4 => (0..PEOPLE.len(), any::<bool>()).prop_map(|(p, a)| FactOp::Review(p, a)),
        2 => (0..PEOPLE.len()).prop_map(FactOp::Authored),
        2 => any::<bool>().prop_map(FactOp::CiRun),
        1 => Just(FactOp::Amend),
        1 => (0..PEOPLE.len()).prop_map(FactOp::TakeDev),
        1 => (0..PEOPLE.len()).prop_map(FactOp::RotateKey),
        1 => Just(FactOp::OpenOther),
    ]
}

proptest! {
    /// Whatever happens between two reads, the read after it decides as a
    /// decision built from scratch does: facts kept by one read never
    /// answer for a later state.
    #[test]
    fn kept_facts_agree_with_fresh_ones_after_every_step(
        ops in proptest::collection::vec(fact_op(), 1..25),
    ) {
        use crate::event::CiStatus;
        let mut f = Fold::new(POLICY);
        for (n, who) in PEOPLE.iter().enumerate() {
            let email = format!("{who}@example.com");
            f.person(who, 20 + n as u8, Some(&email));
        }
        f.register("ci", PrincipalKind::Ci, &["ci"], &[9]);
        f.open("ci", "CHG-1", D).unwrap();
        let mut current = D;
        let mut rotations = 0u8;
        let mut others = 0;
        for (step, op) in ops.into_iter().enumerate() {
            // A read before the step keeps the facts the step may outdate.
            for change in [None, Some("CHG-1")] {
                f.st.decide(&prod_question(&f, "ci", current), change);
            }
            let what = format!("step {step}: {op:?}");
            match op {
                FactOp::Review(p, approve) => {
                    let _ = f.review(PEOPLE[p], "CHG-1", current, approve);
                }
                FactOp::Authored(p) => {
                    let raw = commit_by(PEOPLE[p], &format!("step {step}"));
                    let sha = f.observe(&raw);
                    f.ci_run("ci", "github.com/acme/payments", &sha, current, CiStatus::Passed);
                }
                FactOp::CiRun(passed) => {
                    let status = if passed { CiStatus::Passed } else { CiStatus::Failed };
                    f.ci_run("ci", "github.com/acme/payments", "", current, status);
                }
                FactOp::Amend => {
                    let to = if current == D { D2 } else { D };
                    if f.amend("ci", "CHG-1", to, &[]).is_ok() {
                        current = to;
                    }
                }
                FactOp::TakeDev(p) => {
                    let _ = f.try_take_role(PEOPLE[p], "dev");
                }
                FactOp::RotateKey(p) => {
                    rotations = rotations.wrapping_add(1);
                    let _ = f.apply(PEOPLE[p], Body::KeyRotated {
                        principal: id(PEOPLE[p]),
                        new_key: key(100u8.wrapping_add(rotations)),
                        old_key: None,
                    });
                }
                FactOp::OpenOther => {
                    others += 1;
                    let _ = f.open("ci", &format!("CHG-{}", others + 1), current);
                }
            }
            for change in [None, Some("CHG-1")] {
                let q = prod_question(&f, "ci", current);
                let fresh = f.st.decide_fresh(&q, change);
                prop_assert_eq!(&f.st.decide(&q, change), &fresh, "after {}", what);
                prop_assert_eq!(&f.st.decide(&q, change), &fresh, "kept, after {}", what);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum SubjectOp {
    Observe(usize),
    Ci(usize, usize),
    Open(usize, Vec<usize>, Vec<usize>),
    Amend(usize, Vec<usize>, Vec<usize>),
    Deploy(Vec<usize>),
}

fn subject_op() -> impl Strategy<Value = SubjectOp> {
    let few = || proptest::collection::vec(0usize..3, 0..3);
    prop_oneof![
        (0usize..3).prop_map(SubjectOp::Observe),
        (0usize..3, 0usize..3).prop_map(|(c, d)| SubjectOp::Ci(c, d)),
        (0usize..3, few(), few()).prop_map(|(k, c, d)| SubjectOp::Open(k, c, d)),
        (0usize..3, few(), few()).prop_map(|(k, c, d)| SubjectOp::Amend(k, c, d)),
        proptest::collection::vec(0usize..6, 1..3).prop_map(SubjectOp::Deploy),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Each subject's head (ledger-format §6.6) counts the entries the
    /// decision basis counts for it (§4.4; break-glass reviews, which heads
    /// count too, are tested on their own) and chains their indices, the
    /// tree's root is that of the leaves hashed from scratch in the order
    /// subjects were met, and a state loaded from its records has the same
    /// heads.
    #[test]
    fn subject_heads_chain_every_entry_concerning_each_subject(
        ops in proptest::collection::vec(subject_op(), 1..30),
    ) {
        let mut f = Fold::new(POLICY);
        f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
        let raws: Vec<Vec<u8>> = (0..3)
            .map(|n| format!(
                "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
                 author A <a@example.com> 1700000000 +0000\n\
                 committer A <a@example.com> 1700000000 +0000\n\nc{n}\n"
            ).into_bytes())
            .collect();
        let commits: Vec<String> = raws
            .iter()
            .map(|r| crate::event::git::object_id(r, 40).unwrap())
            .collect();
        let digests: Vec<String> = (0..3).map(|n| format!("sha256:{}", format!("{n}").repeat(64))).collect();
        let subject = |n: usize| if n < 3 { commits[n].clone() } else { digests[n - 3].clone() };
        let pick = |v: &[usize], from: &[String]| v.iter().map(|n| from[*n].clone()).collect::<BTreeSet<_>>();
        for op in ops {
            let body = match op {
                SubjectOp::Observe(n) => Body::CommitObserved(Box::new(crate::event::CommitObservation {
                    repository: String::new(),
                    sha: commits[n].clone(),
                    commit: crate::event::git::parse_commit(&raws[n]).unwrap(),
                    raw: raws[n].clone(),
                    changed: crate::event::ChangedPaths::default(),
                    signature: crate::event::CommitSignature::unsigned(),
                })),
                SubjectOp::Ci(c, d) => Body::CiRunReported(crate::event::CiRun {
                    repository: String::new(),
                    commit: commits[c].clone(),
                    artifact_digests: [digests[d].clone()].into(),
                    status: crate::event::CiStatus::Passed,
                    provider: String::new(),
                    pipeline: String::new(),
                    run_id: String::new(),
                    url: String::new(),
                    git_ref: String::new(),
                }),
                SubjectOp::Open(k, c, d) => Body::ChangeOpened(ChangeOpening {
                    change_id: RecordId::parse(&format!("CHG-{k}")).unwrap(),
                    title: String::new(),
                    repository: String::new(),
                    commits: pick(&c, &commits),
                    artifact_digests: pick(&d, &digests),
                    environments: set(&["prod"]),
                    ticket: String::new(),
                    description: String::new(),
                }),
                SubjectOp::Amend(k, c, d) => Body::ChangeAmended(ChangeAmendment {
                    change_id: RecordId::parse(&format!("CHG-{k}")).unwrap(),
                    commits: pick(&c, &commits),
                    artifact_digests: pick(&d, &digests),
                    environments: BTreeSet::new(),
                    reason: String::new(),
                }),
                SubjectOp::Deploy(s) => Body::DeployRequested(DeployRequest {
                    action: "deploy".into(),
                    environment: "prod".into(),
                    repository: None,
                    kind: None,
                    namespace: None,
                    subjects: s.iter().map(|n| subject(*n)).collect(),
                    change_id: None,
                    break_glass: false,
                    justification: String::new(),
                }),
            };
            // Refused entries (an amendment of no change, an empty opening,
            // a commit observed twice) are not in the log and concern
            // nothing.
            let _ = f.apply("ci", body);
        }
        let gov = f.st.gov();
        let mut leaves: Vec<(u64, crate::ledger::Hash)> = Vec::new();
        for s in commits.iter().chain(&digests) {
            // The indices concerning `s`, from the records.
            let mut at: BTreeSet<u64> = BTreeSet::new();
            at.extend(gov.commit(s).map(|c| c.index));
            at.extend(gov.ci_runs_for(s).map(|r| r.index));
            at.extend(gov.requests_of(s).map(|d| d.index));
            for c in gov.changes_ever_binding(s) {
                at.extend(c.revisions.iter().filter(|r| r.subjects().contains(s)).map(|r| r.index));
            }
            // No op here breaks the glass, so no break-glass review adds
            // to what the decision basis counts.
            prop_assert_eq!(at.len() as u64, gov.subject_entry_count(s));
            match gov.subject_head(s) {
                None => prop_assert!(at.is_empty()),
                Some(h) => {
                    let chain = at.iter().fold(heads::EMPTY_CHAIN, |c, i| heads::chain_step(&c, *i));
                    prop_assert_eq!(h.count, at.len() as u64);
                    prop_assert_eq!(h.chain, chain);
                    leaves.push((h.number, heads::leaf_hash(s, h.count, &h.chain)));
                }
            }
        }
        // Numbered in the order first met: by the first index concerning
        // each, and so a permutation of 0..m.
        leaves.sort_unstable_by_key(|(n, _)| *n);
        let mut scratch = heads::HeadTree::default();
        for (n, (number, leaf)) in leaves.iter().enumerate() {
            prop_assert_eq!(*number, n as u64);
            scratch.push(*leaf);
        }
        let signed = gov.heads().subjects;
        prop_assert_eq!(signed.size, scratch.len());
        prop_assert_eq!(signed.root, scratch.root());
        for s in commits.iter().chain(&digests) {
            if let (Some(h), Some(p)) = (gov.subject_head(s), gov.subject_head_proof(s)) {
                let leaf = heads::leaf_hash(s, h.count, &h.chain);
                prop_assert!(crate::ledger::merkle::verify_inclusion(&leaf, p.index, signed.size, &p.path, &signed.root).is_ok());
            }
        }
        let mut pairs = f.st.clone().take_changes();
        pairs.sort();
        let loaded = State::load(pairs).unwrap();
        prop_assert_eq!(loaded.gov().heads(), gov.heads());
    }
}

/// A sparse fold (an evidence bundle's) keeps each change's and subject's
/// chain, which the bundle verifier checks, but no heads trees, whose
/// numbers and roots would mean nothing over some of the log's entries;
/// folding the genesis does not make it a full fold.
#[test]
fn a_sparse_fold_keeps_the_chains_but_no_trees() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let [full, sparse] = [State::new(), State::sparse()].map(|st| {
        let mut f = Fold::on(st, POLICY);
        f.register("ci", PrincipalKind::Ci, &["ci"], &[30]);
        f.open_code("CHG-1", &[], &[&digest]);
        f.deploy("ci", &digest);
        f.st
    });
    let (full, sparse) = (full.gov(), sparse.gov());
    assert_eq!(
        (full.heads().changes.size, full.heads().subjects.size),
        (1, 1)
    );
    assert_eq!(sparse.heads().changes.size, 0);
    assert_eq!(sparse.heads().subjects.size, 0);
    assert_eq!(
        full.change("CHG-1").unwrap().head,
        sparse.change("CHG-1").unwrap().head
    );
    assert_eq!(full.subject_head(&digest).unwrap().count, 2);
    assert_eq!(full.subject_head(&digest), sparse.subject_head(&digest));
}
