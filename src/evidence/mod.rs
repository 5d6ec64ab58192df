//! Evidence bundles: one file that proves, to someone who trusts only the
//! log's public key, what changed, who approved it, under which policy, and
//! that the record is complete and untampered. The format is specified in
//! `docs/evidence-format.md`.
//!
//! - [`select`] picks the entries a scope needs (the scope's own entries,
//!   their facts, and the identity and policy history back to genesis).
//! - [`export`] reads them, folds them (the same fold the log runs), renders
//!   the derived files, and signs the manifest.
//! - [`verify`] checks a bundle offline and regenerates every derived file.
//!
//! **Architecture Invariant:** the verifier shares no state with the server:
//! it reads only the bundle and the trusted key, and everything it concludes
//! it recomputes from entry bytes.

mod bundle;
mod facts;
mod oscal;
mod progress;
mod report;
mod verify;

use std::collections::{BTreeMap, BTreeSet};

use crate::api::convert::decode_event;
use crate::event::Body;
use crate::ledger::{Checkpoint, Entry, Hash, LedgerReader, ReadError, Store, merkle};
use crate::state::State;
use crate::state::heads::{self, HeadProof};

pub use progress::{CancelOnDrop, Progress, Stage, Step};
pub use verify::{BundleFailure, Trust, VerifyReport, verify, verify_with};

/// The bundle format this Docket writes and reads.
pub const FORMAT: &str = "docket-evidence/1";

/// A compliance control a bundle can be scoped to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Control {
    /// SOC 2 CC8.1: changes are authorized, tested, approved and implemented.
    Soc2Cc81,
    /// ISO/IEC 27001:2022 Annex A 8.32: change management.
    Iso27001A832,
    /// HIPAA §164.312(b): audit controls.
    Hipaa164312b,
}

impl Control {
    /// Every control, in report order.
    pub const ALL: [Control; 3] = [
        Control::Soc2Cc81,
        Control::Iso27001A832,
        Control::Hipaa164312b,
    ];

    /// The name on the command line and in the manifest.
    pub fn key(self) -> &'static str {
        match self {
            Control::Soc2Cc81 => "soc2-cc8.1",
            Control::Iso27001A832 => "iso27001-a8.32",
            Control::Hipaa164312b => "hipaa-164.312b",
        }
    }

    /// Parses [`Control::key`].
    pub fn parse(s: &str) -> Option<Self> {
        Control::ALL.into_iter().find(|c| c.key() == s)
    }

    /// The control id in the OSCAL file (an NCName token).
    pub fn oscal_id(self) -> &'static str {
        match self {
            Control::Soc2Cc81 => "cc8.1",
            Control::Iso27001A832 => "a.8.32",
            Control::Hipaa164312b => "hipaa-164.312.b",
        }
    }

    /// A person's name for it.
    pub fn title(self) -> &'static str {
        match self {
            Control::Soc2Cc81 => "SOC 2 CC8.1 — change management",
            Control::Iso27001A832 => "ISO/IEC 27001:2022 A.8.32 — change management",
            Control::Hipaa164312b => "HIPAA §164.312(b) — audit controls",
        }
    }
}

/// What a bundle covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One change: its revisions, reviews, deployments and their facts.
    /// `complete` also carries every entry from the one that opened the
    /// change to the checkpoint, under one range proof, which proves that
    /// none of the change's entries was left out (docs/evidence-format.md
    /// §8.2).
    Change { id: String, complete: bool },
    /// Every entry integrated in `[from, to)` (Unix nanoseconds); the
    /// filters narrow the changes and decisions reported, never the entries.
    Period {
        from: i64,
        to: i64,
        environments: Vec<String>,
        repositories: Vec<String>,
    },
    /// A period, reported against one control.
    Control {
        control: Control,
        from: i64,
        to: i64,
    },
}

impl Scope {
    /// One change, without the range that proves it complete.
    pub fn change(id: impl Into<String>) -> Self {
        Scope::Change {
            id: id.into(),
            complete: false,
        }
    }

    /// In words, as `docket evidence verify` prints it.
    pub fn describe(&self) -> String {
        let t = crate::state::gov::fmt_nanos;
        match self {
            Scope::Change {
                id,
                complete: false,
            } => format!("change {id}"),
            Scope::Change { id, complete: true } => {
                format!("change {id}, with every entry from its opening to the checkpoint")
            }
            Scope::Period { .. } => format!("period {}", self.period_words()),
            Scope::Control { control, from, to } => {
                format!("control {} over {} to {}", control.key(), t(*from), t(*to))
            }
        }
    }

    /// A period scope's bounds and filters in words ("FROM to TO,
    /// environments prod"); empty for other scopes.
    pub(super) fn period_words(&self) -> String {
        let Scope::Period {
            from,
            to,
            environments,
            repositories,
        } = self
        else {
            return String::new();
        };
        let t = crate::state::gov::fmt_nanos;
        let mut s = format!("{} to {}", t(*from), t(*to));
        if !environments.is_empty() {
            s += &format!(", environments {}", environments.join(", "));
        }
        if !repositories.is_empty() {
            s += &format!(", repositories {}", repositories.join(", "));
        }
        s
    }

    /// A change scope without `--complete`: the bundle whose change head
    /// proves its change's entries complete.
    pub fn is_sparse_change(&self) -> bool {
        matches!(
            self,
            Scope::Change {
                complete: false,
                ..
            }
        )
    }

    pub(crate) fn period(&self) -> Option<(i64, i64)> {
        match self {
            Scope::Change { .. } => None,
            Scope::Period { from, to, .. } | Scope::Control { from, to, .. } => Some((*from, *to)),
        }
    }
}

/// Why a bundle could not be exported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error("change {0:?} does not exist")]
    UnknownChange(String),
    #[error("the period is empty: from ({from}) must be before to ({to})")]
    EmptyPeriod { from: String, to: String },
    #[error("reading the log: {0}")]
    Read(#[from] ReadError),
    #[error("entry {index}: {reason}")]
    Entry { index: u64, reason: String },
    #[error("no signed checkpoint covers tree size {0}")]
    NoCheckpoint(u64),
    #[error("signing the manifest: {0}")]
    Sign(String),
    #[error("policy version {version} of the state does not parse: {reason}")]
    Policy { version: u64, reason: String },
    #[error("the exported bundle failed its own verification ({0}); this is a bug")]
    SelfCheck(String),
    #[error("the export was cancelled")]
    Cancelled,
    /// The earlier checkpoint given to prove consistency from is not one
    /// of this log's (unsigned, another log's, malformed or too large).
    #[error("since_checkpoint: {0}")]
    Since(String),
    /// The earlier checkpoint is this log's, but the log no longer holds
    /// the tree it describes: its history was rewritten or cut back.
    #[error("since_checkpoint: {0}")]
    Diverged(String),
}

/// Stops an export whose result nobody waits for any more.
fn go_on(progress: &Progress) -> Result<(), ExportError> {
    if progress.is_cancelled() {
        return Err(ExportError::Cancelled);
    }
    Ok(())
}

/// The entries a scope needs, chosen from the state folded up to `size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub size: u64,
    /// Every entry index the bundle carries.
    pub indices: BTreeSet<u64>,
    /// A contiguous run proven with one range proof (a period and its
    /// boundary entries).
    pub range: Option<(u64, u64)>,
    /// The time the bundle's statuses (obligations) are computed for.
    pub as_of: i64,
    /// The decisions the log recorded for the deployments carried, which
    /// the bundle's own fold must reproduce.
    pub decisions: BTreeMap<u64, crate::state::DecisionRecord>,
    /// For a change bundle without `--complete`: its change's and proven
    /// subjects' leaves in the heads trees of the state at `size`.
    pub heads: Option<HeadProofs>,
}

/// A change's leaf in the change-heads tree (`heads.bin`) and its proven
/// subjects' leaves in the subject-heads tree (`subjects.bin`), of one state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadProofs {
    pub change: HeadProof,
    /// In ascending order of the subjects.
    pub subjects: Vec<(String, HeadProof)>,
}

/// What carried entries refer to: the seeds of the closure.
#[derive(Clone, Debug, Default)]
pub struct Refs {
    indices: BTreeSet<u64>,
    changes: BTreeSet<String>,
    subjects: BTreeSet<String>,
    deploys: BTreeSet<u64>,
}

impl Refs {
    /// Carries entry `index` and notes what its body refers to.
    fn seed_entry(&mut self, body: &Body, index: u64) {
        self.indices.insert(index);
        match body {
            Body::ChangeOpened(c) => {
                self.changes.insert(c.change_id.to_string());
            }
            Body::ChangeAmended(c) => {
                self.changes.insert(c.change_id.to_string());
            }
            Body::ChangeReviewed(c) => {
                self.changes.insert(c.change_id.to_string());
            }
            Body::DeployRequested(_) => {
                self.deploys.insert(index);
            }
            Body::BreakGlassReviewed(r) => {
                self.deploys.insert(r.deployment_index);
            }
            Body::CommitObserved(c) => {
                self.subjects.insert(c.sha.clone());
            }
            Body::CiRunReported(r) => {
                self.subjects.insert(r.commit.clone());
                self.subjects.extend(r.artifact_digests.iter().cloned());
            }
            _ => {}
        }
    }
}

/// What a scope needs from the log itself, read without the state: the
/// log size it is for, the period's range, the references of the entries
/// it carries for their own sake, and the time it is as of.
#[derive(Clone, Debug)]
pub struct Seeds {
    size: u64,
    range: Option<(u64, u64)>,
    refs: Refs,
    as_of: i64,
    heads: Option<HeadProofs>,
}

/// Follows references from seeds to every entry a decision among them
/// could depend on.
struct Closure<'a> {
    state: &'a State,
    limit: u64,
    refs: Refs,
}

impl Closure<'_> {
    fn add(&mut self, i: u64) {
        if i < self.limit {
            self.refs.indices.insert(i);
        }
    }

    /// Grows the closure until nothing new appears. Every index stays below
    /// the limit, so a state folded past it gives the same answer.
    fn run(&mut self) {
        let gov = self.state.gov();
        let limit = self.limit;
        let (mut done_c, mut done_s, mut done_d) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        loop {
            let new_c: Vec<String> = self.refs.changes.difference(&done_c).cloned().collect();
            let new_s: Vec<String> = self.refs.subjects.difference(&done_s).cloned().collect();
            let new_d: Vec<u64> = self.refs.deploys.difference(&done_d).copied().collect();
            if new_c.is_empty() && new_s.is_empty() && new_d.is_empty() {
                return;
            }
            for id in new_c {
                if let Some(c) = gov.change(&id) {
                    for r in c.revisions.iter().filter(|r| r.index < limit) {
                        self.add(r.index);
                        self.refs.subjects.extend(r.subjects());
                    }
                    for r in &c.reviews {
                        self.add(r.index);
                    }
                    for &d in c.deployments.iter().filter(|d| **d < limit) {
                        self.refs.deploys.insert(d);
                    }
                }
                done_c.insert(id);
            }
            for s in new_s {
                if let Some(c) = gov.commit(&s) {
                    self.add(c.index);
                }
                for r in gov.ci_runs_for(&s).filter(|r| r.index < limit) {
                    self.add(r.index);
                    self.refs.subjects.insert(r.commit.clone());
                    self.refs.subjects.extend(r.digests.iter().cloned());
                }
                // Denied requests too: every one concerns the subject's
                // count in a later decision basis (ledger-format §4.4).
                for d in gov.requests_of(&s).filter(|d| d.index < limit) {
                    self.refs.deploys.insert(d.index);
                }
                // Only a revision below the limit can have bound it: a
                // later amendment must not pull its change in.
                for c in gov.changes_ever_binding(&s) {
                    let bound = c.revisions.iter().any(|r| {
                        r.index < limit && (r.commits.contains(&s) || r.digests.contains(&s))
                    });
                    if bound {
                        self.refs.changes.insert(c.id.clone());
                    }
                }
                done_s.insert(s);
            }
            for d in new_d {
                if let Some(rec) = gov.deployment(d) {
                    self.add(d);
                    self.refs.subjects.extend(rec.subjects.iter().cloned());
                    if let Some((c, _)) = &rec.decision.change {
                        self.refs.changes.insert(c.clone());
                    }
                }
                if let Some(r) = gov.obligation(d).and_then(|o| o.review.as_ref()) {
                    self.add(r.index);
                }
                done_d.insert(d);
            }
        }
    }
}

fn read_entry<S: Store + ?Sized>(
    reader: &LedgerReader<S>,
    index: u64,
) -> Result<(Vec<u8>, Entry), ExportError> {
    let (bytes, _) = reader.entry(index)?.ok_or(ExportError::Entry {
        index,
        reason: "missing from the store".into(),
    })?;
    let e = Entry::decode(&bytes).map_err(|e| ExportError::Entry {
        index,
        reason: e.to_string(),
    })?;
    Ok((bytes, e))
}

/// The first index in `[0, size)` integrated at or after `t` (`size` if none).
fn first_at_or_after<S: Store + ?Sized>(
    reader: &LedgerReader<S>,
    size: u64,
    t: i64,
) -> Result<u64, ExportError> {
    // Integrated times never decrease along the log (ledger-format §10).
    let (mut lo, mut hi) = (0u64, size);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if read_entry(reader, mid)?.1.integrated_time_nanos < t {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

fn body_at<S: Store + ?Sized>(
    reader: &LedgerReader<S>,
    index: u64,
) -> Result<(Body, i64), ExportError> {
    let (_, e) = read_entry(reader, index)?;
    let ev = decode_event(&e.envelope.payload).map_err(|err| ExportError::Entry {
        index,
        reason: err.to_string(),
    })?;
    Ok((ev.body, e.integrated_time_nanos))
}

/// The break-glass review deadlines of a log's policy versions: for each,
/// the index that activated it and its `break_glass_review` in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct Deadlines(Vec<(u64, i64)>);

impl Deadlines {
    /// Of every policy version `state` holds.
    pub fn of(state: &State) -> Result<Self, ExportError> {
        state
            .gov()
            .policy_versions()
            .iter()
            .map(|v| {
                crate::policy::Policy::parse(&v.text)
                    .map(|p| {
                        (
                            v.activated_at,
                            p.break_glass_review_secs.saturating_mul(1_000_000_000),
                        )
                    })
                    .map_err(|e| ExportError::Policy {
                        version: v.version,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()
            .map(Deadlines)
    }

    /// The longest review deadline of a version activated before entry `a`:
    /// how long before the first entry of a period a break-glass deployment
    /// can have been made and still come due in the period.
    pub fn lead_in(&self, a: u64) -> i64 {
        self.0
            .iter()
            .filter(|(at, _)| *at < a)
            .map(|(_, d)| *d)
            .max()
            .unwrap_or(0)
    }
}

/// What an export reads from the state before it scans the log, so the
/// scan itself needs no lock: the log size, the policy versions' review
/// deadlines, and where a complete change bundle's range starts.
#[derive(Clone, Debug)]
pub struct Plan {
    size: u64,
    deadlines: Deadlines,
    change_from: Option<u64>,
    heads: Option<HeadProofs>,
}

impl Plan {
    /// For exporting `scope` from the log of `state.next_index()` entries.
    pub fn of(state: &State, scope: &Scope) -> Result<Self, ExportError> {
        let size = state.next_index();
        let (change_from, heads) = match scope {
            Scope::Change { id, complete } => {
                let opened = change_opening(state, id, size)?;
                // Read now, with the state at exactly `size`: the trees
                // move with every entry concerning any change or subject.
                let heads = (!complete).then(|| head_proofs(state, id)).flatten();
                (complete.then_some(opened), heads)
            }
            _ => (None, None),
        };
        Ok(Plan {
            size,
            deadlines: Deadlines::of(state)?,
            change_from,
            heads,
        })
    }

    /// The log size the export is for.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The head proofs of change `id` and of its proven subjects in `state`
/// (none in a sparse fold, which keeps no trees).
fn head_proofs(state: &State, id: &str) -> Option<HeadProofs> {
    let gov = state.gov();
    let subjects = proven_subjects(state, id)
        .into_iter()
        .map(|s| gov.subject_head_proof(&s).map(|p| (s, p)))
        .collect::<Option<_>>()?;
    Some(HeadProofs {
        change: gov.change_head_proof(id)?,
        subjects,
    })
}

/// The index of the entry that opened change `id`, if that is below `size`.
fn change_opening(state: &State, id: &str, size: u64) -> Result<u64, ExportError> {
    state
        .gov()
        .change(id)
        .map(|ch| ch.revisions[0].index)
        .filter(|i| *i < size)
        .ok_or_else(|| ExportError::UnknownChange(id.to_owned()))
}

/// Reads what `scope` needs from the first `plan.size()` entries of the
/// log; no state is involved, so a server does this without holding any
/// lock.
pub fn seeds<S: Store + ?Sized>(
    reader: &LedgerReader<S>,
    plan: &Plan,
    scope: &Scope,
    progress: &Progress,
) -> Result<Seeds, ExportError> {
    let size = plan.size;
    let last = size - 1;
    let mut refs = Refs::default();
    refs.indices.insert(0);
    let mut range = None;
    // The last entry proves the bundle's time; whatever it is, it brings
    // the facts it rests on like any other carried entry.
    let (last_body, mut as_of) = body_at(reader, last)?;
    // Carries every entry of `start..end`, each seeding the closure.
    let scan = |refs: &mut Refs, start: u64, end: u64| -> Result<(), ExportError> {
        progress.start(Stage::Scanning, end - start);
        for i in start..end {
            go_on(progress)?;
            refs.seed_entry(&body_at(reader, i)?.0, i);
            progress.set(i - start + 1);
        }
        Ok(())
    };
    match scope.period() {
        None => {
            refs.seed_entry(&last_body, last);
            // A complete change bundle: everything from the change's
            // opening on, so nothing that concerns it can be left out.
            if let Some(start) = plan.change_from {
                range = Some((start, size));
                scan(&mut refs, start, size)?;
            }
        }
        Some((from, to)) => {
            if from >= to {
                return Err(ExportError::EmptyPeriod {
                    from: crate::state::gov::fmt_nanos(from),
                    to: crate::state::gov::fmt_nanos(to),
                });
            }
            let a = first_at_or_after(reader, size, from)?;
            let b = first_at_or_after(reader, size, to)?;
            // The range reaches back far enough to hold every break-glass
            // deployment that can come due in the period (the lead-in), so
            // an obligation that falls due, unreviewed, in the period is in
            // it. The boundary entries prove nothing of the lead-in and the
            // period was left out.
            let lead_from = from.saturating_sub(plan.deadlines.lead_in(a));
            let a_lead = if lead_from == from {
                a
            } else {
                first_at_or_after(reader, size, lead_from)?
            };
            let (start, end) = (a_lead.saturating_sub(1), (b + 1).min(size));
            range = Some((start, end));
            scan(&mut refs, start, end)?;
            if b < size {
                // The log reached the period's end: the bundle is as of then,
                // and the entry after the period is its right boundary.
                as_of = to;
            } else {
                refs.seed_entry(&last_body, last);
            }
        }
    }
    Ok(Seeds {
        size,
        range,
        refs,
        as_of,
        heads: plan.heads.clone(),
    })
}

/// Completes a selection from its seeds with the state: the closure of
/// facts and the identity and policy history. The state may have folded
/// more entries than `seeds` are for; nothing at or past that size is
/// chosen.
pub fn select_with(state: &State, seeds: Seeds, scope: &Scope) -> Result<Selection, ExportError> {
    let Seeds {
        size,
        range,
        refs,
        as_of,
        heads,
    } = seeds;
    let mut c = Closure {
        state,
        limit: range.map(|(_, e)| e).unwrap_or(size),
        refs,
    };
    if let Scope::Change { id, .. } = scope {
        change_opening(state, id, size)?;
        c.refs.changes.insert(id.clone());
    }
    for &h in state.gov().history() {
        c.add(h);
    }
    c.run();
    let decisions = c
        .refs
        .indices
        .iter()
        .filter_map(|i| state.gov().deployment(*i).map(|d| (*i, d.decision.clone())))
        .collect();
    Ok(Selection {
        size,
        indices: c.refs.indices,
        range,
        as_of,
        decisions,
        heads,
    })
}

/// Chooses the entries `scope` needs from the log of `state.next_index()`
/// entries (the state must be the fold of exactly those).
pub fn select<S: Store + ?Sized>(
    state: &State,
    reader: &LedgerReader<S>,
    scope: &Scope,
) -> Result<Selection, ExportError> {
    select_with(
        state,
        seeds(
            reader,
            &Plan::of(state, scope)?,
            scope,
            &Progress::default(),
        )?,
        scope,
    )
}

/// The bundle member holding the change's change-head proof
/// (evidence-format §6.6).
pub const HEADS: &str = "heads.bin";

/// The bundle member holding the change's proven subjects' subject-head
/// proofs (evidence-format §6.7).
pub const SUBJECTS: &str = "subjects.bin";

/// The proven subjects of change `id` in `state` (evidence-format §6.7):
/// every commit and digest any revision of it bound, and the commit of every
/// CI run naming one of those digests.
pub(crate) fn proven_subjects(state: &State, id: &str) -> BTreeSet<String> {
    let gov = state.gov();
    let mut out = BTreeSet::new();
    for r in gov
        .change(id)
        .map(|c| c.revisions.as_slice())
        .unwrap_or_default()
    {
        out.extend(r.commits.iter().cloned());
        for d in &r.digests {
            out.insert(d.clone());
            out.extend(gov.ci_runs_for(d).map(|run| run.commit.clone()));
        }
    }
    out
}

/// Checks that the change `id` of a bundle's fold is leaf `proof.index` of
/// the change heads a checkpoint signs (ledger-format §6.5): that the fold
/// holds every entry concerning it. Returns how many there are.
pub(crate) fn check_head(
    state: &State,
    id: &str,
    proof: &HeadProof,
    signed: &crate::ledger::HeadsRoot,
) -> Result<u64, String> {
    let Some(c) = state.gov().change(id) else {
        return Err(format!("no carried entry opens change {id}"));
    };
    let leaf = heads::leaf_hash(id, c.head.count, &c.head.chain);
    merkle::verify_inclusion(&leaf, proof.index, signed.size, &proof.path, &signed.root).map_err(
        |e| {
            format!(
                "the bundle carries {} entries concerning change {id}, which do not make the change \
                 head the checkpoint signs (leaf {} of {}: {e}); an entry concerning the change was left out",
                c.head.count, proof.index, signed.size
            )
        },
    )?;
    Ok(c.head.count)
}

/// Checks that `proofs` name exactly the proven subjects of change `id` in a
/// bundle's fold, and that each one's carried entries make its leaf in the
/// subject heads a checkpoint signs (ledger-format §6.6). Returns how many
/// subjects that proves; on failure, the member to blame and why.
pub(crate) fn check_subject_heads(
    state: &State,
    id: &str,
    proofs: &[(String, HeadProof)],
    signed: &crate::ledger::HeadsRoot,
) -> Result<u64, (&'static str, String)> {
    let proven = proven_subjects(state, id);
    if !proofs.iter().map(|(s, _)| s).eq(proven.iter()) {
        let list = |it: &mut dyn Iterator<Item = &String>| {
            it.map(String::as_str).collect::<Vec<_>>().join(", ")
        };
        return Err((
            SUBJECTS,
            format!(
                "it proves subjects [{}] but the proven subjects of change {id} are [{}]",
                list(&mut proofs.iter().map(|(s, _)| s)),
                list(&mut proven.iter())
            ),
        ));
    }
    for (s, proof) in proofs {
        // A proven subject is named by a carried entry, so the fold has met it.
        let (count, chain) = state
            .gov()
            .subject_head(s)
            .map_or((0, heads::EMPTY_CHAIN), |h| (h.count, h.chain));
        let leaf = heads::leaf_hash(s, count, &chain);
        merkle::verify_inclusion(&leaf, proof.index, signed.size, &proof.path, &signed.root)
            .map_err(|e| {
                (
                    "completeness",
                    format!(
                        "the bundle carries {count} entries concerning subject {s}, which do not make \
                         the subject head the checkpoint signs (leaf {} of {}: {e}); an entry \
                         concerning it was left out",
                        proof.index, signed.size
                    ),
                )
            })?;
    }
    Ok(proofs.len() as u64)
}

/// The bundle member holding the earlier checkpoint a bundle proves its
/// own consistent with (evidence-format §6.5).
pub const SINCE_CHECKPOINT: &str = "since/checkpoint.txt";
/// The bundle member holding that consistency proof.
pub const SINCE_CONSISTENCY: &str = "since/consistency.bin";
/// Largest earlier checkpoint note accepted (a checkpoint with its
/// signature is ~200 bytes; room is left for cosignatures).
pub const MAX_SINCE_NOTE: usize = 16 << 10;

/// Reads the earlier checkpoint an export is to prove its own consistent
/// with: it must be a note of this log (`origin`), signed by its key, for a
/// non-empty tree.
pub fn parse_since(
    note: &str,
    key: &crate::crypto::NoteVerifier,
    origin: &str,
) -> Result<Checkpoint, ExportError> {
    if note.len() > MAX_SINCE_NOTE {
        return Err(ExportError::Since(format!(
            "{} bytes; a checkpoint note is at most {MAX_SINCE_NOTE}",
            note.len()
        )));
    }
    let cp = Checkpoint::verify(note, key, origin).map_err(|e| {
        ExportError::Since(format!("not a checkpoint signed by this log's key: {e}"))
    })?;
    if cp.size == 0 {
        return Err(ExportError::Since(
            "is for an empty tree; there is nothing to prove consistent with".into(),
        ));
    }
    Ok(cp)
}

/// The consistency proof from `since` to `checkpoint`, after checking that
/// the log still holds the tree `since` describes.
fn since_proof<S: Store + ?Sized>(
    reader: &LedgerReader<S>,
    since: &Checkpoint,
    checkpoint: &Checkpoint,
) -> Result<Vec<Hash>, ExportError> {
    if since.size > checkpoint.size {
        return Err(ExportError::Diverged(format!(
            "is for tree size {}, but this log's latest checkpoint is for size {}: the log holds fewer entries than when that checkpoint was signed (restored from an older copy?)",
            since.size, checkpoint.size
        )));
    }
    let root = reader.root(since.size)?;
    if root != since.root {
        return Err(ExportError::Diverged(format!(
            "this log's root at tree size {} is {} but the checkpoint, signed by its key, says {}: the log's history differs from the one that checkpoint was signed for",
            since.size,
            hex::encode(root),
            hex::encode(since.root)
        )));
    }
    // The seal's self-check verifies it with the rest of the bundle.
    Ok(reader.consistency_proof(since.size, checkpoint.size)?)
}

/// A bundle built and awaiting its manifest signature.
pub struct Unsigned {
    files: BTreeMap<String, Vec<u8>>,
    digest: Hash,
    origin: String,
    entries: u64,
}

impl Unsigned {
    /// BLAKE3 of `manifest.json`: what the log key signs.
    pub fn digest(&self) -> Hash {
        self.digest
    }

    /// The bundle bytes, given the signed manifest note.
    pub fn finish(mut self, manifest_note: String) -> Vec<u8> {
        self.files
            .insert("manifest.sig".into(), manifest_note.into_bytes());
        bundle::write_tar(&self.files)
    }

    /// The log origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// Reads the selected entries and their proofs, folds them and renders the
/// bundle's files; the caller signs [`Unsigned::digest`]. With `since` (an
/// earlier checkpoint of this log, from [`parse_since`]), the bundle also
/// carries it and the consistency proof from it to `checkpoint`.
pub fn export<S: Store + ?Sized>(
    reader: &LedgerReader<S>,
    checkpoint: &Checkpoint,
    selection: &Selection,
    scope: &Scope,
    since: Option<&Checkpoint>,
    progress: &Progress,
) -> Result<Unsigned, ExportError> {
    if checkpoint.size != selection.size {
        return Err(ExportError::NoCheckpoint(selection.size));
    }
    let since = since
        .map(|s| Ok::<_, ExportError>((s, since_proof(reader, s, checkpoint)?)))
        .transpose()?;
    let mut entries = Vec::with_capacity(selection.indices.len());
    progress.start(Stage::Reading, selection.indices.len() as u64);
    for &i in &selection.indices {
        go_on(progress)?;
        entries.push((i, read_entry(reader, i)?.0));
        progress.set(entries.len() as u64);
    }
    let in_range = |i: u64| selection.range.is_some_and(|(s, e)| s <= i && i < e);
    let unproven = selection.indices.iter().filter(|&&i| !in_range(i)).count();
    progress.start(
        Stage::Proving,
        unproven as u64 + u64::from(selection.range.is_some()),
    );
    let mut proofs = Vec::with_capacity(unproven);
    for &i in &selection.indices {
        if in_range(i) {
            continue;
        }
        go_on(progress)?;
        proofs.push((i, reader.inclusion_proof(i, checkpoint.size)?));
        progress.set(proofs.len() as u64);
    }
    go_on(progress)?;
    let range = match selection.range {
        Some((start, end)) => {
            let (left, right) = merkle::range_proof(&Nodes(reader), start, end, checkpoint.size)?;
            Some(bundle::RangeProof {
                start,
                end,
                left,
                right,
            })
        }
        None => None,
    };
    let meta = facts::Meta {
        origin: checkpoint.origin.clone(),
        scope: scope.clone(),
        checkpoint_size: checkpoint.size,
        checkpoint_root: checkpoint.root,
        range: selection.range,
        as_of: selection.as_of,
        heads: checkpoint.changes.filter(|_| scope.is_sparse_change()),
        subjects: checkpoint.subjects.filter(|_| scope.is_sparse_change()),
    };
    progress.start(Stage::Folding, entries.len() as u64);
    let boundary = scope
        .period()
        .zip(selection.range)
        .map(|((_, to), (_, end))| (end - 1, to));
    let (folded, rendered) = facts::fold_then(
        &entries,
        facts::Signatures::Trust,
        boundary,
        progress,
        |f| facts::render(f, &meta),
    )
    .map_err(|f| match progress.is_cancelled() {
        true => ExportError::Cancelled,
        false => ExportError::Entry {
            index: f.index.unwrap_or(0),
            reason: f.reason,
        },
    })?;
    // The bundle's fold must reach the decisions the log recorded: if the
    // selection missed a fact a decision rested on, stop here rather than
    // hand out a bundle that re-evaluates to something else.
    for d in folded.state.gov().deployments() {
        if selection.decisions.get(&d.index) != Some(&d.decision) {
            return Err(ExportError::SelfCheck(format!(
                "the bundle's facts re-evaluate the decision of entry {} differently from the log",
                d.index
            )));
        }
    }
    // The change and subject heads must be what the bundle's own fold
    // gives, or the bundle would not verify.
    let (head, subject_heads) = match (&selection.heads, scope) {
        (Some(proofs), Scope::Change { id, .. }) => {
            let head = match meta.heads {
                Some(signed) => {
                    check_head(&folded.state, id, &proofs.change, &signed)
                        .map_err(ExportError::SelfCheck)?;
                    Some(&proofs.change)
                }
                None => None,
            };
            let subjects = match meta.subjects {
                Some(signed) => {
                    check_subject_heads(&folded.state, id, &proofs.subjects, &signed)
                        .map_err(|(_, e)| ExportError::SelfCheck(e))?;
                    Some(proofs.subjects.as_slice())
                }
                None => None,
            };
            (head, subjects)
        }
        _ if meta.heads.is_some() || meta.subjects.is_some() => {
            return Err(ExportError::SelfCheck(
                "the checkpoint signs heads, but the state gave no head proofs for the change"
                    .into(),
            ));
        }
        _ => (None, None),
    };
    let origin = meta.origin.clone();
    let mut files = rendered.files;
    files.insert(
        "facts/decisions.json".into(),
        facts::decisions_file(&folded.state, &rendered.decided),
    );
    files.insert("entries.bin".into(), bundle::encode_entries(&entries));
    files.insert("proofs.bin".into(), bundle::encode_proofs(&proofs));
    if let Some(r) = &range {
        files.insert("range.bin".into(), bundle::encode_range(r));
    }
    if let Some(p) = head {
        files.insert(HEADS.into(), bundle::encode_head(p));
    }
    if let Some(s) = subject_heads {
        files.insert(SUBJECTS.into(), bundle::encode_subject_heads(s));
    }
    files.insert(
        "checkpoint.txt".into(),
        checkpoint.note.clone().into_bytes(),
    );
    if let Some((s, proof)) = since {
        files.insert(SINCE_CHECKPOINT.into(), s.note.clone().into_bytes());
        files.insert(SINCE_CONSISTENCY.into(), bundle::encode_consistency(&proof));
    }
    let manifest = facts::manifest(&meta, entries.len() as u64, &files);
    let digest = crate::crypto::blake3_256(&manifest);
    files.insert("manifest.json".into(), manifest);
    Ok(Unsigned {
        files,
        digest,
        origin,
        entries: entries.len() as u64,
    })
}

/// The files of a bundle (the archive unpacked, not verified).
pub fn unpack(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let files = bundle::read_tar(bytes)?;
    Ok(files.into_iter().map(|(p, b)| (p, b.to_vec())).collect())
}

/// A bundle archive of `files`, in the canonical form the verifier expects
/// (for tools that re-seal a bundle, and for tests that forge one).
pub fn pack(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    bundle::write_tar(files)
}

/// Seals an exported bundle with its signed manifest note and checks the
/// result with the verifier an auditor runs: a bundle that would not verify
/// is never handed out.
pub fn seal(
    unsigned: Unsigned,
    manifest_note: String,
    key: &crate::crypto::NoteVerifier,
    progress: &Progress,
) -> Result<Vec<u8>, ExportError> {
    go_on(progress)?;
    progress.start(Stage::Checking, unsigned.entries);
    let bytes = unsigned.finish(manifest_note);
    verify_with(&bytes, &Trust::Key(key.clone()), progress).map_err(|f| {
        match progress.is_cancelled() {
            true => ExportError::Cancelled,
            false => ExportError::SelfCheck(f.to_string()),
        }
    })?;
    progress.finish();
    Ok(bytes)
}

/// Exports, signs with `signer` and seals in one step: for a log opened
/// offline, where this process holds the log key itself. `since` is an
/// earlier checkpoint note to prove the bundle's checkpoint consistent with.
pub fn export_offline<S: Store + ?Sized>(
    state: &State,
    reader: &LedgerReader<S>,
    signer: &crate::crypto::NoteSigner,
    scope: &Scope,
    since: Option<&str>,
    progress: &Progress,
) -> Result<Vec<u8>, ExportError> {
    let size = state.next_index();
    let note = reader
        .checkpoint_note(size)?
        .ok_or(ExportError::NoCheckpoint(size))?;
    let origin = state
        .genesis()
        .map(|g| g.origin.clone())
        .unwrap_or_default();
    let cp = Checkpoint::verify(&note, &signer.verifier(), &origin)
        .map_err(|e| ExportError::Sign(format!("stored checkpoint for size {size}: {e}")))?;
    let since = since
        .map(|n| parse_since(n, &signer.verifier(), &origin))
        .transpose()?;
    let plan = Plan::of(state, scope)?;
    let selection = select_with(state, seeds(reader, &plan, scope, progress)?, scope)?;
    let unsigned = export(reader, &cp, &selection, scope, since.as_ref(), progress)?;
    progress.start(Stage::Signing, 1);
    let note = crate::ledger::sign_manifest(signer, &origin, &unsigned.digest());
    seal(unsigned, note, &signer.verifier(), progress)
}

/// Reads stored Merkle nodes for proofs.
struct Nodes<'a, S: Store + ?Sized>(&'a LedgerReader<S>);

impl<S: Store + ?Sized> merkle::NodeSource for Nodes<'_, S> {
    type Error = ReadError;
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, ReadError> {
        self.0
            .store()
            .node(level, index)?
            .ok_or(ReadError::MissingNode { level, index })
    }
}

/// Most patterns one period filter may list.
pub const MAX_FILTERS: usize = 64;
/// Longest pattern of a period filter, in bytes.
pub const MAX_FILTER_BYTES: usize = 256;

/// A period's environment or repository filter (`field` names it in the
/// refusal): the bundle's manifest and report carry it, so it is bounded
/// and printable.
pub fn check_filters(field: &str, list: &[String]) -> Result<(), String> {
    if list.len() > MAX_FILTERS {
        return Err(format!(
            "{field}: {} patterns; at most {MAX_FILTERS}",
            list.len()
        ));
    }
    for (i, p) in list.iter().enumerate() {
        let why = if p.is_empty() {
            "is empty".to_owned()
        } else if p.len() > MAX_FILTER_BYTES {
            format!("is longer than {MAX_FILTER_BYTES} bytes")
        } else if p.chars().any(char::is_control) {
            "contains a control character".to_owned()
        } else {
            continue;
        };
        return Err(format!("{field}[{i}]: {p:?} {why}"));
    }
    Ok(())
}
