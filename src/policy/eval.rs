//! Evaluation: which rule applies, and whether the facts satisfy it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use super::parse::{Policy, Rule};
use super::{Permission, Roles, glob_match};

/// The action of a deployment proper: an earlier allowed `deploy` of a
/// subject to the `promoted_from` environment counts for every action.
const DEPLOY: &str = "deploy";

/// The question: may `actor` do `action` to these subjects in `environment`?
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub action: String,
    pub environment: String,
    pub repository: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    /// Artifact digests (`sha256:...`) and/or commit SHAs being deployed.
    pub subjects: BTreeSet<String>,
    pub actor: String,
    /// The actor invokes break-glass: allowed without approvals if their
    /// roles permit it, and an obligation is opened.
    pub break_glass: bool,
    pub at: Timestamp,
}

/// What the fold knows of a principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalFacts {
    pub human: bool,
    pub roles: Roles,
}

/// A fingerprint of a set of subjects: BLAKE3 over the member count and the
/// members in order, each length-prefixed. Equal sets have equal keys and,
/// BLAKE3 being collision resistant, different sets different keys; so a
/// review keeps the key of what it saw, and a decision compares 32 bytes per
/// review instead of walking two sets of strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubjectsKey([u8; 32]);

impl SubjectsKey {
    /// The key of a set of subjects, given in ascending order (as a
    /// `BTreeSet<String>` or `BTreeSet<&str>` iterates them).
    pub fn of<I, S>(subjects: I) -> Self
    where
        I: IntoIterator<Item = S>,
        I::IntoIter: ExactSizeIterator,
        S: AsRef<str>,
    {
        let subjects = subjects.into_iter();
        let mut h = blake3::Hasher::new();
        h.update(&(subjects.len() as u64).to_le_bytes());
        for s in subjects {
            let s = s.as_ref();
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        SubjectsKey(*h.finalize().as_bytes())
    }
}

/// One review (approval or rejection) of a change, in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval<'a> {
    pub approver: Cow<'a, str>,
    /// The subjects (commits and digests) the reviewer saw, as a key.
    pub seen: SubjectsKey,
    /// When it was recorded, in nanoseconds since the Unix epoch.
    pub at_nanos: i64,
    /// False for a rejection.
    pub approve: bool,
    pub comment: Cow<'a, str>,
    /// The entry that recorded it.
    pub index: u64,
    /// The entry that revoked the key which signed it, or rotated it
    /// away: from then on the review no longer speaks for its reviewer.
    pub key_revoked_at: Option<u64>,
}

/// A CI run recorded for a subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CiFact<'a> {
    /// The principal that reported it.
    pub reporter: Cow<'a, str>,
    /// The entry that revoked or rotated away the key that signed the run,
    /// if one did: the run then no longer counts.
    pub key_revoked_at: Option<u64>,
    pub passed: bool,
    /// Words for reasons when it did not pass: "run 42 of build (github-actions), failed".
    pub description: String,
    /// The commit the run built the subject (a digest) from, when the
    /// change binds commits and not this one.
    pub built_from_unbound: Option<Cow<'a, str>>,
}

/// A change and everything known about its subjects. The strings borrow
/// from whoever built the facts (the state), so building them copies none;
/// [`ChangeFacts::into_owned`] makes a copy that outlives the builder (the
/// state keeps one per change until its next fold step).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ChangeFacts<'a> {
    pub id: Cow<'a, str>,
    pub revision: u32,
    /// Log index of the entry that made the current revision (the opening
    /// or the latest amend): a review recorded before it is stale, whatever
    /// it saw, since every amend is material.
    pub revised_at: u64,
    /// The repository the change is for (`None` when it names none).
    pub repository: Option<Cow<'a, str>>,
    /// The repositories its code was observed in: those of its commits
    /// (and of the commits its artifacts were built from) as ingested, and
    /// those its CI runs reported.
    pub code_repositories: BTreeSet<Cow<'a, str>>,
    /// Who opened or amended it: none of them may approve it.
    pub requesters: BTreeSet<Cow<'a, str>>,
    /// Current subjects: commit SHAs and artifact digests.
    pub subjects: BTreeSet<Cow<'a, str>>,
    /// `SubjectsKey::of(&subjects)` when whoever built the facts kept it
    /// (the state does, per revision); computed from `subjects` otherwise.
    pub subjects_key: Option<SubjectsKey>,
    pub environments: BTreeSet<Cow<'a, str>>,
    /// Principals who authored, committed or signed any commit of the
    /// change's code, each with how (the first such commit, in the order of
    /// `commits`).
    pub authors: BTreeMap<Cow<'a, str>, Authorship>,
    /// Why the authors are not fully known (an unobserved commit, an e-mail
    /// no principal claims): segregation of duties cannot be checked then.
    pub sod_gaps: Vec<String>,
    /// Principals of the CI runs that built its subjects.
    pub builders: BTreeSet<Cow<'a, str>>,
    /// The CI runs recorded per subject, oldest first.
    pub ci: BTreeMap<Cow<'a, str>, Vec<CiFact<'a>>>,
    /// Reviews in log order.
    pub approvals: Vec<Approval<'a>>,
    /// Its code as the log records it: the commits its current revision
    /// binds, then those its artifacts were built from, each once.
    pub commits: Vec<CommitFact<'a>>,
    /// Its digests for which no CI run names the commit they were built
    /// from: code Docket knows nothing of.
    pub unsourced_digests: Vec<Cow<'a, str>>,
}

/// How a principal took part in a change's code: what they were of one
/// commit, the first of [`ChangeFacts::commits`] they authored, committed
/// or signed. Plain numbers, so that keeping a change's facts copies no
/// string for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authorship {
    /// [`Authorship::AUTHOR`], [`Authorship::COMMITTER`] and
    /// [`Authorship::SIGNER`], or'ed together.
    pub roles: u8,
    /// The commit's index in [`ChangeFacts::commits`].
    pub commit: usize,
}

impl Authorship {
    pub const AUTHOR: u8 = 1;
    pub const COMMITTER: u8 = 2;
    pub const SIGNER: u8 = 4;

    /// The bit of a role as the state names it (`author`, `committer`,
    /// `signer`); 0 for any other word.
    pub fn role_bit(role: &str) -> u8 {
        match role {
            "author" => Self::AUTHOR,
            "committer" => Self::COMMITTER,
            "signer" => Self::SIGNER,
            _ => 0,
        }
    }

    /// "the author and committer of commit 0123456789ab", with " (built
    /// into sha256:0123456789ab)" when the change binds only the artifact
    /// built from it.
    pub fn describe(&self, commits: &[CommitFact<'_>]) -> String {
        let roles = match self.roles & 7 {
            Self::COMMITTER => "committer",
            3 => "author and committer",
            Self::SIGNER => "signer",
            5 => "author and signer",
            6 => "committer and signer",
            7 => "author, committer and signer",
            _ => "author",
        };
        // Recorded SHAs and digests are ASCII; `get` keeps any other
        // string whole rather than cut it inside a character.
        fn prefix(s: &str, n: usize) -> &str {
            s.get(..n).unwrap_or(s)
        }
        match commits.get(self.commit) {
            None => format!("the {roles} of a commit of the change"),
            Some(c) => match &c.built_into {
                None => format!("the {roles} of commit {}", prefix(&c.sha, 12)),
                Some(d) => format!(
                    "the {roles} of commit {} (built into {})",
                    prefix(&c.sha, 12),
                    prefix(d, 19)
                ),
            },
        }
    }
}

/// What the log records about one commit of a change's code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitFact<'a> {
    pub sha: Cow<'a, str>,
    /// The digest a CI run built from it, when the change does not bind it.
    pub built_into: Option<Cow<'a, str>>,
    /// The recorded signature verdict (`SignatureVerdict::name`); `None`
    /// when the commit was never observed.
    pub verdict: Option<Cow<'a, str>>,
    /// The signer identity recorded with a verified verdict.
    pub signer_identity: Cow<'a, str>,
    /// The principal that identity names, by id or e-mail.
    pub signer: Option<Cow<'a, str>>,
}

fn owned(s: Cow<'_, str>) -> Cow<'static, str> {
    Cow::Owned(s.into_owned())
}

impl CiFact<'_> {
    pub fn into_owned(self) -> CiFact<'static> {
        CiFact {
            reporter: owned(self.reporter),
            key_revoked_at: self.key_revoked_at,
            passed: self.passed,
            description: self.description,
            built_from_unbound: self.built_from_unbound.map(owned),
        }
    }
}

impl CommitFact<'_> {
    pub fn into_owned(self) -> CommitFact<'static> {
        CommitFact {
            sha: owned(self.sha),
            built_into: self.built_into.map(owned),
            verdict: self.verdict.map(owned),
            signer_identity: owned(self.signer_identity),
            signer: self.signer.map(owned),
        }
    }
}

impl Approval<'_> {
    pub fn into_owned(self) -> Approval<'static> {
        Approval {
            approver: owned(self.approver),
            seen: self.seen,
            at_nanos: self.at_nanos,
            approve: self.approve,
            comment: owned(self.comment),
            index: self.index,
            key_revoked_at: self.key_revoked_at,
        }
    }
}

impl ChangeFacts<'_> {
    /// The same facts, owning every string.
    pub fn into_owned(self) -> ChangeFacts<'static> {
        let set = |s: BTreeSet<Cow<'_, str>>| s.into_iter().map(owned).collect();
        ChangeFacts {
            id: owned(self.id),
            revision: self.revision,
            revised_at: self.revised_at,
            repository: self.repository.map(owned),
            code_repositories: set(self.code_repositories),
            requesters: set(self.requesters),
            subjects: set(self.subjects),
            subjects_key: self.subjects_key,
            environments: set(self.environments),
            authors: self
                .authors
                .into_iter()
                .map(|(p, a)| (owned(p), a))
                .collect(),
            sod_gaps: self.sod_gaps,
            builders: set(self.builders),
            ci: self
                .ci
                .into_iter()
                .map(|(s, runs)| (owned(s), runs.into_iter().map(CiFact::into_owned).collect()))
                .collect(),
            approvals: self
                .approvals
                .into_iter()
                .map(Approval::into_owned)
                .collect(),
            commits: self
                .commits
                .into_iter()
                .map(CommitFact::into_owned)
                .collect(),
            unsourced_digests: self.unsourced_digests.into_iter().map(owned).collect(),
        }
    }
}

/// A past deployment of a subject to an environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment<'a> {
    /// The recorded request's action: for promotion, a `deploy` counts for
    /// requests of every action, another action for that action only.
    pub action: Cow<'a, str>,
    pub environment: Cow<'a, str>,
    pub subject: Cow<'a, str>,
    pub at: Timestamp,
}

/// Everything evaluation may look at.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub principals: &'a super::Principals,
    /// The change binding the request's subjects, if any.
    pub change: Option<&'a ChangeFacts<'a>>,
    /// The repositories the request's own subjects were observed in (their
    /// ingested commits, their CI runs), whether or not a change binds them.
    pub subject_repositories: &'a BTreeSet<&'a str>,
    /// The request's subjects that no ingested commit or CI run with a
    /// repository names: where they come from is unknown, whatever is
    /// recorded for the others.
    pub unrecorded_subjects: &'a [&'a str],
    pub deployments: &'a [Deployment<'a>],
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

/// Something that must happen after an allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Obligation {
    /// A post-hoc review by someone other than `not_by`.
    pub description: String,
    pub due: Timestamp,
    pub not_by: String,
}

/// An approval that counted towards a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    pub approver: String,
    /// The approver's roles, comma-separated.
    pub roles: String,
    pub index: u64,
}

/// A review that did not count, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotCounted {
    pub approver: String,
    pub reason: String,
    pub index: u64,
}

/// A decision with the rule that made it and reasons a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub rule: Option<String>,
    pub reasons: Vec<String>,
    /// Approvals counted towards the rule.
    pub counted: Vec<Counted>,
    /// Reviews not counted, with why.
    pub not_counted: Vec<NotCounted>,
    pub obligations: Vec<Obligation>,
}

impl Verdict {
    fn deny(rule: Option<&Rule>, reason: String) -> Self {
        Verdict {
            decision: Decision::Deny,
            rule: rule.map(|r| r.name.clone()),
            reasons: vec![reason],
            counted: Vec::new(),
            not_counted: Vec::new(),
            obligations: Vec::new(),
        }
    }
}

fn matches(patterns: &[String], value: Option<&str>) -> bool {
    if patterns.is_empty() {
        return true;
    }
    value.is_some_and(|v| patterns.iter().any(|p| glob_match(p, v)))
}

/// Which rule a request falls under, for one repository it may come from.
#[derive(Clone, Debug)]
enum Pick<'p> {
    Rule(&'p Rule),
    /// No rule matches: `defaults.unmatched` decides.
    Unmatched,
    /// The first rule that might apply filters on something the request
    /// leaves unknown, so the rule cannot be chosen.
    Unknown(&'p Rule, Unknown<'p>),
}

/// A field a rule filters on that the request leaves unknown.
#[derive(Clone, Debug)]
struct Unknown<'p> {
    what: &'static str,
    patterns: &'p [String],
    /// How to make it known.
    fix: Cow<'p, str>,
}

impl Pick<'_> {
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Pick::Rule(a), Pick::Rule(b)) => std::ptr::eq(*a, *b),
            (Pick::Unmatched, Pick::Unmatched) => true,
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            Pick::Rule(r) | Pick::Unknown(r, _) => format!("rule {:?}", r.name),
            Pick::Unmatched => "no rule".into(),
        }
    }
}

/// The first rule (in file order) that applies to `r` coming from
/// `repository`. A rule that filters on a repository, resource kind or
/// namespace the request leaves unknown might apply, and a later rule
/// might be laxer, so such a rule stops the search as [`Pick::Unknown`].
/// `repository_fix`: why the repository is unknown and how to make it
/// known, when `repository` is `None`.
fn pick<'p>(
    policy: &'p Policy,
    r: &Request,
    repository: Option<&str>,
    repository_fix: &'p str,
) -> Pick<'p> {
    'rules: for rule in &policy.rules {
        if !matches(&rule.environments, Some(&r.environment))
            || !matches(&rule.actions, Some(&r.action))
        {
            continue;
        }
        let mut unknown = None;
        for (patterns, value, what, fix) in [
            (
                &rule.repositories,
                repository,
                "repository",
                Cow::Borrowed(repository_fix),
            ),
            (
                &rule.kinds,
                r.kind.as_deref(),
                "resource kind",
                Cow::Borrowed("name it (--kind)"),
            ),
            (
                &rule.namespaces,
                r.namespace.as_deref(),
                "namespace",
                Cow::Borrowed("name it (--namespace)"),
            ),
        ] {
            match value {
                _ if patterns.is_empty() => {}
                None => {
                    if unknown.is_none() {
                        unknown = Some(Unknown {
                            what,
                            patterns,
                            fix,
                        });
                    }
                }
                Some(_) if !matches(patterns, value) => continue 'rules,
                Some(_) => {}
            }
        }
        return match unknown {
            Some(u) => Pick::Unknown(rule, u),
            None => Pick::Rule(rule),
        };
    }
    Pick::Unmatched
}

/// Why a rule cannot be chosen, and how to fix it.
fn unknown_reason(rule: &Rule, u: Unknown<'_>) -> String {
    let Unknown {
        what,
        patterns,
        fix,
    } = u;
    format!(
        "rule {:?} applies to the {what} {}, and this request's {what} is unknown: {fix}",
        rule.name,
        patterns.join(", ")
    )
}

/// The members, comma-separated.
fn list<S: AsRef<str>>(s: &BTreeSet<S>) -> String {
    let len = s.iter().map(|m| m.as_ref().len() + 2).sum::<usize>();
    let mut out = String::with_capacity(len.saturating_sub(2));
    for (i, m) in s.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(m.as_ref());
    }
    out
}

/// Whether more than `max_secs` passed from `then` (nanoseconds since the
/// epoch) to `now`, to the nanosecond.
fn older_than(now: Timestamp, then_nanos: i64, max_secs: i64) -> bool {
    now.as_nanosecond() - i128::from(then_nanos) > i128::from(max_secs) * 1_000_000_000
}

/// "7d", "12h", "90s": the largest whole unit, as the policy language writes it.
pub fn human_secs(secs: i64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs % n == 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// Decides `req` under `policy`: the first rule (in file order) whose match
/// applies decides; freeze windows deny matching environments; break-glass
/// allows with an obligation.
pub fn evaluate(policy: &Policy, req: &Request, facts: &Facts<'_>) -> Verdict {
    let no_roles = Roles::new();
    let actor_roles = facts
        .principals
        .get(&req.actor)
        .map(|p| &p.roles)
        .unwrap_or(&no_roles);
    if req.break_glass {
        if !policy.permits(actor_roles, Permission::BreakGlass) {
            return Verdict::deny(
                None,
                format!(
                    "{} invoked break-glass but holds none of the roles allowed to: {}",
                    req.actor,
                    list(&policy.permissions[&Permission::BreakGlass])
                ),
            );
        }
        // Saturating where the recorded due time (i64 nanoseconds) does,
        // so that the reason and the obligation name the same instant.
        let latest = Timestamp::from_nanosecond(i128::from(i64::MAX)).unwrap_or(Timestamp::MAX);
        let due = req
            .at
            .checked_add(jiff::SignedDuration::from_secs(
                policy.break_glass_review_secs,
            ))
            .unwrap_or(latest)
            .min(latest);
        return Verdict {
            decision: Decision::Allow,
            rule: Some("break-glass".into()),
            reasons: vec![format!(
                "break-glass by {}: allowed without approvals and recorded; a review by someone else is due by {due}",
                req.actor
            )],
            counted: Vec::new(),
            not_counted: Vec::new(),
            obligations: vec![Obligation {
                description: format!(
                    "post-hoc review of {}'s break-glass {} to {}",
                    req.actor, req.action, req.environment
                ),
                due,
                not_by: req.actor.clone(),
            }],
        };
    }
    let frozen_here = |f: &&super::parse::Freeze| {
        f.environments.is_empty()
            || f.environments
                .iter()
                .any(|e| glob_match(e, &req.environment))
    };
    let covering = |at: Timestamp| {
        policy
            .freezes
            .iter()
            .filter(frozen_here)
            .filter(move |f| f.start <= at && at < f.end)
    };
    if let Some(first) = covering(req.at).next() {
        // Windows that overlap or touch make one freeze: say when the
        // last of them ends, not only the first window's end.
        let mut last = covering(req.at).max_by_key(|f| f.end).unwrap_or(first);
        while let Some(next) = covering(last.end).max_by_key(|f| f.end) {
            last = next;
        }
        let mut reason = format!(
            "freeze window {:?} is in force until {}",
            first.name, first.end_text
        );
        if last.end > first.end {
            reason.push_str(&format!(
                "; freeze window {:?} continues it, so deployments to {} stay frozen until {}",
                last.name, req.environment, last.end_text
            ));
        }
        return Verdict::deny(None, reason);
    }
    // Rules match on the repository of the code being deployed. A request
    // that names another repository than its change's is refused. Every
    // repository the log records for the code (its commits' observations
    // and its CI runs, for the change's code and the request's own
    // subjects) must fall under the same rule, and so must the ones the
    // change and the request name next to a record. A repository only
    // people name (the change's opener, the requester) is their word
    // alone: without a record it counts as unknown. So does the repository
    // of a subject nothing records, whatever is recorded for the others.
    // A rule that filters on something unknown stops the search. So
    // leaving the repository out, naming another, or pairing an unrecorded
    // artifact with a recorded one cannot select a laxer rule.
    let change_repo = facts
        .change
        .and_then(|c| c.repository.as_deref().map(|r| (c.id.as_ref(), r)));
    if let (Some(asked), Some((id, theirs))) = (req.repository.as_deref(), change_repo)
        && asked != theirs
    {
        return Verdict::deny(
            None,
            format!("the request names repository {asked} but change {id} is for {theirs}"),
        );
    }
    // What the log records (built on every decision, so without the
    // texts, which only a denial for an unknown repository needs).
    let recorded = || {
        let mut r: BTreeSet<&str> = BTreeSet::new();
        if let Some(c) = facts.change {
            r.extend(c.code_repositories.iter().map(|s| s.as_ref()));
        }
        r.extend(facts.subject_repositories.iter().copied());
        r
    };
    let mut repositories = recorded();
    let recorded_any = !repositories.is_empty();
    if recorded_any {
        repositories.extend(change_repo.map(|(_, r)| r));
        repositories.extend(req.repository.as_deref());
    }
    let unknown_too = !recorded_any || !facts.unrecorded_subjects.is_empty();
    let unknown_fix = if !unknown_too {
        String::new()
    } else if recorded_any {
        format!(
            "no ingested commit or CI run says where {} come(s) from, while the rest comes from {}; ingest its commits or report its CI run",
            facts.unrecorded_subjects.join(", "),
            list(&recorded())
        )
    } else {
        let mut claims: Vec<String> = Vec::new();
        if let Some((id, r)) = change_repo {
            claims.push(format!("change {id} names {r}"));
        }
        if let (Some(r), None) = (req.repository.as_deref(), change_repo) {
            claims.push(format!("the request names {r}"));
        }
        if claims.is_empty() {
            "neither the request nor its change names one and no ingested commit or CI run of it says; ingest its commits or report its CI run".to_owned()
        } else {
            format!(
                "{}, and nothing recorded confirms it: no ingested commit or CI run of what is deployed says; ingest its commits or report its CI run",
                claims.join("; ")
            )
        }
    };
    let mut picks: Vec<(Option<&str>, Pick<'_>)> = repositories
        .iter()
        .map(|r| (Some(*r), pick(policy, req, Some(r), "")))
        .collect();
    if unknown_too {
        picks.push((None, pick(policy, req, None, &unknown_fix)));
    }
    if let Some((_, Pick::Unknown(rule, u))) =
        picks.iter().find(|(_, p)| matches!(p, Pick::Unknown(..)))
    {
        return Verdict::deny(None, unknown_reason(rule, u.clone()));
    }
    let first = &picks[0].1;
    if picks.iter().any(|(_, p)| !p.same(first)) {
        let each: Vec<String> = picks
            .iter()
            .map(|(r, p)| format!("{} ({})", r.unwrap_or("?"), p.describe()))
            .collect();
        return Verdict::deny(
            None,
            format!(
                "the code comes from repositories that different rules govern: {}; Docket does not combine rules, so deploy them under separate changes",
                each.join(", ")
            ),
        );
    }
    let Pick::Rule(rule) = *first else {
        return if policy.unmatched_allows {
            Verdict {
                decision: Decision::Allow,
                rule: None,
                reasons: vec!["no rule matches and defaults.unmatched = \"allow\"".into()],
                counted: Vec::new(),
                not_counted: Vec::new(),
                obligations: Vec::new(),
            }
        } else {
            Verdict::deny(
                None,
                "no rule matches this request; unmatched requests are denied".into(),
            )
        };
    };
    evaluate_rule(policy, rule, req, facts)
}

/// Why `subject` lacks the passing CI run `rule` needs, if it does. The
/// latest run counts, among those the rule trusts (`ci_reporters`).
/// Whether a CI run's reporter may report under the policy in force.
/// Checked when the run was recorded, and again at each decision: a
/// reporter whose role was taken away (a compromised runner, say) takes its
/// runs with it, as an approver's does.
fn may_report(policy: &Policy, principals: &super::Principals, f: &CiFact<'_>) -> bool {
    reporter_may_report(policy, principals, &f.reporter)
}

/// Whether `reporter` holds a role that may report under `policy`: the
/// test [`may_report`] applies to a run, for whoever reads runs apart.
pub fn reporter_may_report(
    policy: &Policy,
    principals: &super::Principals,
    reporter: &str,
) -> bool {
    principals
        .get(reporter)
        .is_some_and(|p| policy.permits(&p.roles, Permission::Report))
}

/// Whether a CI run counts: its reporter may report ([`may_report`]) and
/// the key that signed it has not been revoked or rotated away since, so
/// a run signed with a stolen key goes with the key, as an approval does.
fn run_counts(policy: &Policy, principals: &super::Principals, f: &CiFact<'_>) -> bool {
    f.key_revoked_at.is_none() && may_report(policy, principals, f)
}

fn ci_reason(
    policy: &Policy,
    principals: &super::Principals,
    rule: &Rule,
    subject: &str,
    runs: Option<&Vec<CiFact<'_>>>,
) -> Option<String> {
    let (runs, dropped): (Vec<&CiFact<'_>>, Vec<&CiFact<'_>>) = runs
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .partition(|f| run_counts(policy, principals, f));
    let (unkeyed, demoted): (Vec<&CiFact<'_>>, Vec<&CiFact<'_>>) = dropped
        .into_iter()
        .partition(|f| f.key_revoked_at.is_some());
    let demoted: BTreeSet<&str> = demoted.iter().map(|f| f.reporter.as_ref()).collect();
    let mut note = String::new();
    if !demoted.is_empty() {
        note.push_str(&format!(
            "; runs reported by {} do not count: they do not hold a role that may report under the policy in force ({})",
            list(&demoted),
            list(&policy.permissions[&Permission::Report])
        ));
    }
    let unkeyed: BTreeSet<String> = unkeyed
        .iter()
        .map(|f| {
            format!(
                "{} (its key was revoked or rotated away at entry {})",
                f.reporter,
                f.key_revoked_at.unwrap_or_default()
            )
        })
        .collect();
    if !unkeyed.is_empty() {
        note.push_str(&format!(
            "; runs signed with a key revoked or rotated away since do not count: by {}",
            unkeyed.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if rule.ci_reporters.is_empty() {
        return match runs.last() {
            None => Some(format!("no passing CI run is recorded for {subject}{note}")),
            Some(f) if !f.passed => Some(format!(
                "the latest CI run for {subject} did not pass ({})",
                f.description
            )),
            Some(_) => None,
        };
    }
    let trusted = list(&rule.ci_reporters);
    match runs
        .iter()
        .rev()
        .find(|f| rule.ci_reporters.contains(f.reporter.as_ref()))
    {
        None => {
            let others: BTreeSet<&str> = runs.iter().map(|f| f.reporter.as_ref()).collect();
            Some(if others.is_empty() {
                format!("no passing CI run by {trusted} is recorded for {subject}{note}")
            } else {
                format!(
                    "no passing CI run by {trusted} is recorded for {subject}; runs reported by {} do not count under this rule{note}",
                    list(&others)
                )
            })
        }
        Some(f) if !f.passed => Some(format!(
            "the latest CI run by {trusted} for {subject} did not pass ({})",
            f.description
        )),
        Some(_) => None,
    }
}

/// Digests of the change that a CI run (by a reporter that may report)
/// says were built from a commit the change does not bind: its approvers
/// reviewed other code than the artifact holds.
fn provenance_reasons(
    policy: &Policy,
    principals: &super::Principals,
    c: &ChangeFacts<'_>,
) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (subject, runs) in &c.ci {
        for f in runs.iter().filter(|f| run_counts(policy, principals, f)) {
            if let Some(from) = f.built_from_unbound.as_deref()
                && seen.insert((subject.as_ref(), from))
            {
                out.push(format!(
                    "{subject} was built from commit {} (a CI run reported by {}), which change {} does not bind: its approvers did not review that code; amend the change to bind it",
                    &from[..12.min(from.len())],
                    f.reporter,
                    c.id
                ));
            }
        }
    }
    out
}

/// Why the change's code is not known to be signed by principals, for a
/// rule with `signed_commits`: each commit not observed, not verified, or
/// verified for a signer no principal is; or no commit known at all.
fn signature_reasons(rule: &Rule, c: &ChangeFacts<'_>) -> Vec<String> {
    let needs = format!(
        "rule {:?} requires every commit of the change's code to be signed by a principal (signed_commits)",
        rule.name
    );
    if c.commits.is_empty() && c.unsourced_digests.is_empty() {
        return vec![format!(
            "change {} binds no commit and no CI run names one its artifacts were built from, so whether its code is signed is unknown; {needs}",
            c.id
        )];
    }
    let unsourced = c.unsourced_digests.iter().map(|d| {
        format!(
            "no CI run names the commit {} was built from, so whether its code is signed is unknown; {needs}",
            &d[..19.min(d.len())]
        )
    });
    let commits = c
        .commits
        .iter()
        .filter_map(|f| {
            let short = &f.sha[..12.min(f.sha.len())];
            let label = match f.built_into.as_deref() {
                None => short.to_owned(),
                Some(d) => format!("{short} (built into {})", &d[..19.min(d.len())]),
            };
            let what = match (f.verdict.as_deref(), f.signer.as_deref()) {
                (Some("verified"), Some(_)) => return None,
                (None, _) => format!(
                    "commit {label} has not been observed (run `docket git ingest`), so whether it is signed is unknown"
                ),
                (Some("verified"), None) if f.signer_identity.is_empty() => {
                    format!("commit {label} is recorded as verified but names no signer")
                }
                (Some("verified"), None) => format!(
                    "commit {label} is signed by {}, who is neither a principal nor the e-mail of one",
                    f.signer_identity
                ),
                (Some("unsigned"), _) => format!("commit {label} is unsigned"),
                (Some("bad"), _) => format!(
                    "commit {label} is signed, but the signature does not verify (verdict bad)"
                ),
                (Some("untrusted-key"), _) => format!(
                    "commit {label} is signed with a key the ingester does not trust (verdict untrusted-key)"
                ),
                (Some("unverifiable"), _) => format!(
                    "commit {label} is signed, but the signature could not be checked (verdict unverifiable)"
                ),
                (Some(v), _) => format!("commit {label} has the signature verdict {v}"),
            };
            Some(format!("{what}; {needs}"))
        });
    commits.chain(unsourced).collect()
}

fn evaluate_rule(policy: &Policy, rule: &Rule, req: &Request, facts: &Facts<'_>) -> Verdict {
    let needs_change = rule.approvals > 0 || rule.ci_passed || rule.signed_commits;
    let mut reasons = Vec::new();
    if let Some(from) = &rule.promoted_from {
        for s in &req.subjects {
            // An earlier deploy counts for any action (a restart or a
            // rollback in prod of what was deployed to staging), and an
            // earlier request of the same action counts for that action;
            // restarting or deleting a digest in staging is not deploying
            // it there.
            let there = |d: &&Deployment<'_>| {
                d.environment == from.as_str() && d.subject == s.as_str() && d.at <= req.at
            };
            let earlier = facts
                .deployments
                .iter()
                .filter(there)
                .any(|d| d.action == DEPLOY || d.action == req.action.as_str());
            if !earlier {
                let others: BTreeSet<&str> = facts
                    .deployments
                    .iter()
                    .filter(there)
                    .map(|d| d.action.as_ref())
                    .collect();
                reasons.push(if others.is_empty() {
                    format!("{s} has not been deployed to {from} yet; deploy it there first")
                } else {
                    format!(
                        "{s} has not been deployed to {from} yet; deploy it there first (its allowed requests there were {}, which do not count as deploying it)",
                        list(&others)
                    )
                });
            }
        }
    }
    let change = match facts.change {
        Some(c) => Some(c),
        None if needs_change => {
            reasons.insert(
                0,
                format!(
                    "no change binds {} for {}; open a change for these subjects",
                    list(&req.subjects),
                    req.environment
                ),
            );
            return Verdict {
                decision: Decision::Deny,
                rule: Some(rule.name.clone()),
                reasons,
                counted: Vec::new(),
                not_counted: Vec::new(),
                obligations: Vec::new(),
            };
        }
        None => None,
    };
    // Every review lands in one of the two lists at most once.
    let reviews = change.map_or(0, |c| c.approvals.len());
    let mut counted: Vec<Counted> = Vec::with_capacity(reviews);
    let mut not_counted: Vec<NotCounted> = Vec::with_capacity(reviews);
    if let Some(c) = change {
        let unbound: BTreeSet<String> = req
            .subjects
            .iter()
            .filter(|s| !c.subjects.contains(s.as_str()))
            .cloned()
            .collect();
        if !unbound.is_empty() {
            reasons.push(format!("change {} does not bind {}", c.id, list(&unbound)));
        }
        if !c.environments.contains(req.environment.as_str()) {
            reasons.push(format!(
                "change {} does not target {}",
                c.id, req.environment
            ));
        }
        if rule.ci_passed {
            for s in &req.subjects {
                reasons.extend(ci_reason(
                    policy,
                    facts.principals,
                    rule,
                    s,
                    c.ci.get(s.as_str()),
                ));
            }
        }
        if rule.signed_commits {
            reasons.extend(signature_reasons(rule, c));
        }
        if rule.approvals > 0 {
            reasons.extend(c.sod_gaps.iter().cloned());
            reasons.extend(provenance_reasons(policy, facts.principals, c));
        }
        let current_subjects = c
            .subjects_key
            .unwrap_or_else(|| SubjectsKey::of(&c.subjects));
        debug_assert_eq!(current_subjects, SubjectsKey::of(&c.subjects));
        // A review speaks for this revision only if it came after it and
        // saw exactly its subjects.
        let is_fresh = |a: &Approval<'_>| a.index > c.revised_at && a.seen == current_subjects;
        // Each person's latest review of this revision speaks for them;
        // without one, their latest review (which is stale). A stale
        // review sent after a fresh one does not displace it, so a
        // rejection of this revision stands until its author approves
        // this revision or the change is amended.
        // Hash maps: each review looks its reviewer up, and the reviews
        // that speak are put back in log order below.
        let mut speaks: foldhash::HashMap<&str, &Approval<'_>> =
            foldhash::HashMap::with_capacity_and_hasher(reviews, Default::default());
        // A rejection that saw an earlier revision, sent after the person's
        // approval of this one, does not block, but it does withdraw that
        // approval: whatever the reviewer meant, the later word was "no".
        let mut withdrawn: foldhash::HashMap<&str, u64> = Default::default();
        for a in &c.approvals {
            // Withdrawn with its key, as if never made: a stolen key's
            // approval stops counting, and its rejection stops blocking,
            // once the key is revoked; the reviewer's earlier word stands.
            if let Some(at) = a.key_revoked_at {
                not_counted.push(NotCounted {
                    approver: a.approver.to_string(),
                    reason: format!(
                        "signed with a key of {} that was revoked or rotated away at entry {at}; review again with a current key",
                        a.approver
                    ),
                    index: a.index,
                });
                continue;
            }
            let slot = match speaks.entry(a.approver.as_ref()) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(a);
                    continue;
                }
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            };
            let prev = *slot;
            let (kept, dropped) = if is_fresh(a) || !is_fresh(prev) {
                (a, prev)
            } else {
                (prev, a)
            };
            *slot = kept;
            if kept.index < dropped.index && kept.approve && !dropped.approve {
                withdrawn.insert(a.approver.as_ref(), dropped.index);
            } else if kept.index > dropped.index {
                withdrawn.remove(a.approver.as_ref());
            }
            let reason = if kept.index > dropped.index {
                format!(
                    "superseded by {}'s later review (entry {})",
                    kept.approver, kept.index
                )
            } else if kept.approve && !dropped.approve {
                format!(
                    "stale: rejected an earlier revision of the change, after {}'s approval of this revision (entry {}), which it withdraws",
                    kept.approver, kept.index
                )
            } else {
                format!(
                    "stale: reviewed an earlier revision of the change; {}'s review of this revision (entry {}) stands",
                    kept.approver, kept.index
                )
            };
            not_counted.push(NotCounted {
                approver: dropped.approver.to_string(),
                reason,
                index: dropped.index,
            });
        }
        let mut current: Vec<&Approval<'_>> = speaks.into_values().collect();
        // Log order; by name too, so that facts built by hand with equal
        // indices cannot make the order depend on hashing.
        current.sort_unstable_by(|a, b| (a.index, &a.approver).cmp(&(b.index, &b.approver)));
        // The principal of each counted approver, in `counted`'s order.
        let mut counted_facts: Vec<&PrincipalFacts> = Vec::with_capacity(current.len());
        for a in current {
            let who = a.approver.to_string();
            let fresh = is_fresh(a);
            if !a.approve {
                if fresh {
                    let comment = if a.comment.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", a.comment)
                    };
                    reasons.push(format!(
                        "{who} rejected revision {} of change {} (entry {}){comment}",
                        c.revision, c.id, a.index
                    ));
                    not_counted.push(NotCounted {
                        approver: who,
                        reason: "rejected this revision".into(),
                        index: a.index,
                    });
                } else {
                    not_counted.push(NotCounted {
                        approver: who,
                        reason: "stale: rejected an earlier revision of the change".into(),
                        index: a.index,
                    });
                }
                continue;
            }
            let p = facts.principals.get(&who);
            let why_not = if !fresh {
                Some("stale: approved an earlier revision of the change".to_owned())
            } else if let Some(later) = withdrawn.get(a.approver.as_ref()) {
                Some(format!(
                    "withdrawn by {who}'s later rejection (entry {later}), which saw an earlier revision of the change"
                ))
            } else if let Some(max) = rule
                .max_approval_age_secs
                .filter(|max| older_than(req.at, a.at_nanos, *max))
            {
                Some(format!(
                    "older than the rule's maximum approval age ({})",
                    human_secs(max)
                ))
            } else if c.requesters.contains(who.as_str()) {
                Some(format!("{who} requested the change"))
            } else if let Some(how) = c.authors.get(who.as_str()) {
                Some(format!("{who} is {}", how.describe(&c.commits)))
            } else if c.builders.contains(who.as_str()) {
                Some(format!("{who} is the CI identity that built it"))
            } else if p.is_none() {
                Some(format!("{who} is not a registered principal"))
            } else if !p.is_some_and(|p| p.human) {
                Some(format!("{who} is not a human; approvals need people"))
            } else if !rule.approver_roles.is_empty()
                && !p.is_some_and(|p| p.roles.iter().any(|r| rule.approver_roles.contains(r)))
            {
                Some(format!(
                    "{who} holds none of the approver roles {}",
                    list(&rule.approver_roles)
                ))
            } else if !p.is_some_and(|p| policy.permits(&p.roles, Permission::Approve)) {
                // Checked when the review was recorded, and again now: a
                // role taken away since takes the approval with it.
                Some(format!(
                    "{who} does not hold a role that may approve under the policy in force ({})",
                    list(&policy.permissions[&Permission::Approve])
                ))
            } else {
                None
            };
            match why_not {
                Some(reason) => not_counted.push(NotCounted {
                    approver: who,
                    reason,
                    index: a.index,
                }),
                None => {
                    let roles = p.map(|p| list(&p.roles)).unwrap_or_default();
                    counted_facts.extend(p);
                    counted.push(Counted {
                        approver: who,
                        roles,
                        index: a.index,
                    });
                }
            }
        }
        // One person fills one role requirement: "one from security and
        // one from dba" asks for two people, even when one holds both roles.
        debug_assert_eq!(counted_facts.len(), counted.len());
        let holds: Vec<Vec<usize>> = counted_facts
            .iter()
            .map(|p| {
                (0..rule.require_roles.len())
                    .filter(|&r| p.roles.contains(&rule.require_roles[r].0))
                    .collect()
            })
            .collect();
        let need: Vec<u32> = rule.require_roles.iter().map(|(_, n)| *n).collect();
        let fills = fill_role_requirements(&need, &holds);
        for (r, (role, need)) in rule.require_roles.iter().enumerate() {
            let have = fills.iter().filter(|f| **f == Some(r)).count() as u32;
            if have >= *need {
                continue;
            }
            let elsewhere: Vec<String> = holds
                .iter()
                .enumerate()
                .filter(|(_, h)| h.contains(&r))
                .filter_map(|(a, _)| {
                    fills[a].filter(|&f| f != r).map(|f| {
                        format!(
                            "{} fills the one for {:?}",
                            counted[a].approver, rule.require_roles[f].0
                        )
                    })
                })
                .collect();
            let besides = if elsewhere.is_empty() {
                String::new()
            } else {
                format!(
                    " ({}; a person fills one role requirement only)",
                    elsewhere.join(", ")
                )
            };
            reasons.push(format!(
                "needs {need} approval(s) from role {role:?}; has {have}{besides}"
            ));
        }
        if (counted.len() as u32) < rule.approvals {
            reasons.push(format!(
                "needs {} approvals from distinct people; {} counted",
                rule.approvals,
                counted.len()
            ));
        }
    }
    let decision = if reasons.is_empty() {
        reasons.push(format!("rule {:?} is satisfied", rule.name));
        Decision::Allow
    } else {
        Decision::Deny
    };
    Verdict {
        decision,
        rule: Some(rule.name.clone()),
        reasons,
        counted,
        not_counted,
        obligations: Vec::new(),
    }
}

/// Assigns counted approvers to a rule's role requirements so that as many
/// requirements as possible are filled, each person filling at most one:
/// `need[r]` people are wanted for requirement `r`, and `holds[a]` lists the
/// requirements approver `a` could fill. Returns the requirement each
/// approver fills, if any. Approvers are taken in order and each one is
/// placed along a shortest augmenting path (a breadth-first search over
/// requirements, moving already placed approvers along), so the number
/// placed is the largest possible and the result depends only on the order
/// of the inputs. No recursion: a recorded policy may name many roles.
pub(super) fn fill_role_requirements(need: &[u32], holds: &[Vec<usize>]) -> Vec<Option<usize>> {
    let mut fills: Vec<Option<usize>> = vec![None; holds.len()];
    let mut filled: Vec<u32> = vec![0; need.len()];
    for a in 0..holds.len() {
        // For each requirement reached: how (None: `a` itself takes it;
        // Some((from, b)): approver `b` moves to it from requirement `from`).
        let mut via: Vec<Option<Option<(usize, usize)>>> = vec![None; need.len()];
        let mut queue = std::collections::VecDeque::new();
        for &r in &holds[a] {
            if via[r].is_none() {
                via[r] = Some(None);
                queue.push_back(r);
            }
        }
        let mut open = None;
        while let Some(r) = queue.pop_front() {
            if filled[r] < need[r] {
                open = Some(r);
                break;
            }
            for (b, f) in fills.iter().enumerate() {
                if *f != Some(r) {
                    continue;
                }
                for &r2 in &holds[b] {
                    if via[r2].is_none() {
                        via[r2] = Some(Some((r, b)));
                        queue.push_back(r2);
                    }
                }
            }
        }
        let Some(mut r) = open else { continue };
        filled[r] += 1;
        loop {
            match via[r] {
                Some(Some((from, b))) => {
                    fills[b] = Some(r);
                    r = from;
                }
                _ => {
                    fills[a] = Some(r);
                    break;
                }
            }
        }
    }
    fills
}

/// True when a proposed policy may take effect: at least
/// `current.policy_changes.approvals` distinct principals other than the
/// proposer, each holding one of `current.policy_changes.roles`, approved it.
pub fn policy_change_activates(
    current: &Policy,
    proposer: &str,
    approvers: &[String],
    principals: &super::Principals,
) -> bool {
    let rule = &current.policy_changes;
    let distinct: BTreeSet<&String> = approvers
        .iter()
        .filter(|a| a.as_str() != proposer)
        .filter(|a| {
            principals
                .get(a.as_str())
                .is_some_and(|p| p.human && p.roles.iter().any(|r| rule.roles.contains(r)))
        })
        .collect();
    distinct.len() as u32 >= rule.approvals
}
