//! Governance subcommands: policy, changes, reviews, CI reports, the
//! authorize gate, recorded deployments, obligations, violations and git
//! ingestion. Each one that changes something signs an event and appends it;
//! each one that asks reads the Governance service.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use ed25519_dalek::SigningKey;
use tonic::Code;

use super::client::{Conn, status_err};
use super::commands::{check_receipt_with, fresh_event_id, log_verifier, now_nanos, signer_of};
use super::text::printable;
use super::{CliError, CliResult, ConnArgs, SignArgs};
use crate::api::convert::{envelope_to_pb, sign_event};
use crate::api::pb;
use crate::event::{
    Body, BreakGlassReview, ChangeAmendment, ChangeOpening, ChangeReview, CiRun, CiStatus,
    DeployRequest, Event, PolicyProposal, PrincipalId, RecordId,
};
use crate::ingest::git::{GitSource, TrustedKey, observe, read_allowed_signers};

fn record_id(flag: &str, s: &str) -> Result<RecordId, CliError> {
    RecordId::parse(s).map_err(|e| CliError::usage(format!("{flag}: {e}")))
}

/// Refuses a malformed commit SHA before anything is signed or sent: a
/// usage error (exit 64), not a refusal by the server (exit 1), which a
/// pipeline would read like a denial.
fn check_commits<'a>(flag: &str, commits: impl IntoIterator<Item = &'a String>) -> CliResult {
    for c in commits {
        if !crate::event::git::is_object_id(c) {
            return Err(CliError::usage(format!(
                "{flag} {c:?}: not a commit SHA (40 or 64 lowercase hex digits)"
            )));
        }
    }
    Ok(())
}

/// Refuses a malformed artifact digest, like [`check_commits`].
fn check_digests<'a>(flag: &str, digests: impl IntoIterator<Item = &'a String>) -> CliResult {
    for d in digests {
        if !crate::event::is_digest(d) {
            return Err(CliError::usage(format!(
                "{flag} {d:?}: not an artifact digest (sha256: and 64 lowercase hex digits)"
            )));
        }
    }
    Ok(())
}

fn event(signer: PrincipalId, prefix: &str, event_id: Option<String>, body: Body) -> Event {
    Event {
        event_id: event_id.unwrap_or_else(|| fresh_event_id(prefix)),
        claimed_time_nanos: now_nanos(),
        signer,
        body,
    }
}

/// Signs, appends and verifies; prints the receipt as JSON.
async fn append(conn: &ConnArgs, key: &SigningKey, ev: Event) -> Result<pb::Receipt, CliError> {
    let (r, _) = super::commands::submit_verified(conn, key, ev).await?;
    Ok(r)
}

fn print_json(v: &serde_json::Value) {
    outln!("{}", super::text::json_pretty(v));
}

// === policy ===

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Propose a new policy document; it takes effect once approved as the
    /// policy in force demands.
    Propose {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        sign: SignArgs,
        /// Proposal id, e.g. policy-2026-11.
        #[arg(long)]
        id: String,
        /// The policy file (TOML, docs/policy.md).
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "")]
        description: String,
        /// The version this replaces; default: the version in force now.
        #[arg(long)]
        base_version: Option<u64>,
    },
    /// Approve a pending policy proposal.
    Approve {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        sign: SignArgs,
        id: String,
    },
    /// Show the policy in force, its history and the proposals.
    Show {
        #[command(flatten)]
        conn: ConnArgs,
        /// Print the text of the policy in force only.
        #[arg(long)]
        text: bool,
    },
}

pub(crate) async fn policy(c: PolicyCmd) -> CliResult {
    match c {
        PolicyCmd::Propose {
            conn,
            sign,
            id,
            file,
            description,
            base_version,
        } => {
            let text = super::read_small_file("--file", &file, crate::policy::MAX_POLICY_BYTES)?;
            crate::policy::Policy::parse_new(&text)
                .map_err(|e| CliError::usage(format!("--file {}: {e}", file.display())))?;
            let base_version = match base_version {
                Some(v) => v,
                None => {
                    let mut g = Conn::resolve(&conn)?.governance().await?;
                    g.get_policy(pb::GetPolicyRequest {})
                        .await
                        .map_err(|s| status_err("get policy", s))?
                        .into_inner()
                        .active
                        .map(|v| v.version)
                        .unwrap_or(1)
                }
            };
            let (signer, key) = signer_of(&conn, &sign)?;
            let ev = event(
                signer,
                "policy-propose",
                None,
                Body::PolicyProposed(PolicyProposal {
                    proposal_id: record_id("--id", &id)?,
                    text,
                    base_version,
                    description,
                }),
            );
            let r = append(&conn, &key, ev).await?;
            outln!(
                "proposed {id} (replacing version {base_version}) at entry {}",
                r.index
            );
            Ok(())
        }
        PolicyCmd::Approve { conn, sign, id } => {
            let (signer, key) = signer_of(&conn, &sign)?;
            let ev = event(
                signer,
                "policy-approve",
                None,
                Body::PolicyApproved {
                    proposal_id: record_id("proposal id", &id)?,
                },
            );
            let r = append(&conn, &key, ev).await?;
            let mut g = Conn::resolve(&conn)?.governance().await?;
            let p = g
                .get_policy(pb::GetPolicyRequest {})
                .await
                .map_err(|s| status_err("get policy", s))?
                .into_inner();
            let state = p.proposals.iter().find(|q| q.proposal_id == id);
            match (state, p.active) {
                (Some(q), Some(a)) if q.status == "active" && a.proposal_id == id => outln!(
                    "approved {id} at entry {}: it is now policy version {} (approvals on record: {})",
                    r.index,
                    a.version,
                    a.approvers.join(", ")
                ),
                (Some(q), _) => outln!(
                    "approved {id} at entry {}: {} (approvals on record so far: {})",
                    r.index,
                    q.status,
                    q.approvers.join(", ")
                ),
                _ => outln!("approved {id} at entry {}", r.index),
            }
            Ok(())
        }
        PolicyCmd::Show { conn, text } => {
            let mut g = Conn::resolve(&conn)?.governance().await?;
            let p = g
                .get_policy(pb::GetPolicyRequest {})
                .await
                .map_err(|s| status_err("get policy", s))?
                .into_inner();
            if text {
                out!("{}", p.active.map(|a| a.text).unwrap_or_default());
                return Ok(());
            }
            let version = |v: &pb::PolicyVersion| {
                serde_json::json!({
                    "version": v.version, "digest": v.digest,
                    "activated_at_index": v.activated_at_index,
                    "proposal_id": v.proposal_id, "approvers": v.approvers,
                })
            };
            print_json(&serde_json::json!({
                "active": p.active.as_ref().map(version),
                "history": p.history.iter().map(version).collect::<Vec<_>>(),
                "proposals": p.proposals.iter().map(|q| serde_json::json!({
                    "proposal_id": q.proposal_id, "proposer": q.proposer,
                    "base_version": q.base_version, "status": q.status,
                    "approvers": q.approvers, "index": q.index, "digest": q.digest,
                    "expires_at": (q.expires_at_unix_nanos != 0)
                        .then(|| crate::state::gov::fmt_nanos(q.expires_at_unix_nanos)),
                })).collect::<Vec<_>>(),
            }));
            Ok(())
        }
    }
}

// === changes and reviews ===

#[derive(Subcommand, Debug)]
pub enum ChangeCmd {
    /// Open a change binding commits and/or artifact digests to environments.
    Open {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        sign: SignArgs,
        /// Change id, e.g. CHG-1042.
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "")]
        title: String,
        #[arg(long, default_value = "")]
        repository: String,
        /// Commit SHA (repeatable).
        #[arg(long = "commit")]
        commits: Vec<String>,
        /// Artifact digest sha256:... (repeatable).
        #[arg(long = "digest")]
        digests: Vec<String>,
        /// Target environment (repeatable).
        #[arg(long = "env", required = true)]
        environments: Vec<String>,
        #[arg(long, default_value = "")]
        ticket: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        event_id: Option<String>,
    },
    /// Replace a change's commits and digests: a new revision; earlier
    /// approvals become stale.
    Amend {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        sign: SignArgs,
        #[arg(long)]
        id: String,
        #[arg(long = "commit")]
        commits: Vec<String>,
        #[arg(long = "digest")]
        digests: Vec<String>,
        /// New target environments (default: keep).
        #[arg(long = "env")]
        environments: Vec<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show a change: revisions, reviews, deployments.
    Show {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
    },
}

async fn get_change(conn: &ConnArgs, id: &str) -> Result<pb::ChangeState, CliError> {
    let mut g = Conn::resolve(conn)?.governance().await?;
    Ok(g.get_change(pb::GetChangeRequest {
        change_id: id.to_owned(),
    })
    .await
    .map_err(|s| status_err("get change", s))?
    .into_inner())
}

pub(crate) async fn change(c: ChangeCmd) -> CliResult {
    match c {
        ChangeCmd::Open {
            conn,
            sign,
            id,
            title,
            repository,
            commits,
            digests,
            environments,
            ticket,
            description,
            event_id,
        } => {
            check_commits("--commit", &commits)?;
            check_digests("--digest", &digests)?;
            let (signer, key) = signer_of(&conn, &sign)?;
            let ev = event(
                signer,
                "change-open",
                event_id,
                Body::ChangeOpened(ChangeOpening {
                    change_id: record_id("--id", &id)?,
                    title,
                    repository,
                    commits: commits.into_iter().collect(),
                    artifact_digests: digests.into_iter().collect(),
                    environments: environments.into_iter().collect(),
                    ticket,
                    description,
                }),
            );
            let r = append(&conn, &key, ev).await?;
            outln!("opened change {id} at entry {}", r.index);
            Ok(())
        }
        ChangeCmd::Amend {
            conn,
            sign,
            id,
            commits,
            digests,
            environments,
            reason,
        } => {
            check_commits("--commit", &commits)?;
            check_digests("--digest", &digests)?;
            let (signer, key) = signer_of(&conn, &sign)?;
            let ev = event(
                signer,
                "change-amend",
                None,
                Body::ChangeAmended(ChangeAmendment {
                    change_id: record_id("--id", &id)?,
                    commits: commits.into_iter().collect(),
                    artifact_digests: digests.into_iter().collect(),
                    environments: environments.into_iter().collect(),
                    reason,
                }),
            );
            let r = append(&conn, &key, ev).await?;
            let c = get_change(&conn, &id).await?;
            outln!(
                "amended change {id} at entry {}: revision {}; approvals of earlier revisions are stale",
                r.index,
                c.revision
            );
            Ok(())
        }
        ChangeCmd::Show { conn, id } => {
            let c = get_change(&conn, &id).await?;
            print_json(&serde_json::json!({
                "change_id": c.change_id, "title": c.title, "repository": c.repository,
                "ticket": c.ticket, "requesters": c.requesters, "revision": c.revision,
                "commits": c.commits, "artifact_digests": c.artifact_digests,
                "environments": c.environments, "revision_indexes": c.revision_indexes,
                "deployments": c.deployments,
                "reviews": c.reviews.iter().map(|r| serde_json::json!({
                    "index": r.index, "reviewer": r.reviewer,
                    "verdict": if r.approve { "approve" } else { "reject" },
                    "seen_subjects": r.seen_subjects, "comment": r.comment,
                    "at": crate::state::gov::fmt_nanos(r.at_unix_nanos),
                })).collect::<Vec<_>>(),
            }));
            Ok(())
        }
    }
}

/// `docket approve` / `docket reject`.
#[derive(Args, Debug)]
pub struct ReviewArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    sign: SignArgs,
    /// The change id.
    change: String,
    #[arg(long, default_value = "")]
    comment: String,
    /// The exact commits and digests reviewed (repeatable); default: the
    /// change's current revision, as the server reports it now.
    #[arg(long = "seen")]
    seen: Vec<String>,
    /// The revision reviewed, as `docket change show` printed it: the review
    /// is refused, not recorded, if the change was amended since (without
    /// it, the revision current when this command runs is the one reviewed).
    #[arg(long)]
    revision: Option<u32>,
}

pub(crate) async fn review(a: ReviewArgs, approve: bool) -> CliResult {
    // The review names the revision it saw, so it counts for that one only:
    // if the change is amended before it is recorded, it is refused rather
    // than counted for what the reviewer never saw.
    let (seen, revision): (BTreeSet<String>, _) = if a.seen.is_empty() {
        let c = get_change(&a.conn, &a.change).await?;
        if let Some(read) = a.revision
            && read != c.revision
        {
            return Err(CliError::failed(format!(
                "change {} is at revision {}, not the revision {read} you reviewed: it was amended \
                 since; read it again (docket change show {}) and review that revision",
                a.change, c.revision, a.change
            )));
        }
        (
            c.commits.into_iter().chain(c.artifact_digests).collect(),
            Some(c.revision),
        )
    } else {
        for v in &a.seen {
            crate::event::check_subject(v).map_err(|e| CliError::usage(format!("--seen: {e}")))?;
        }
        (a.seen.into_iter().collect(), a.revision)
    };
    let (signer, key) = signer_of(&a.conn, &a.sign)?;
    let ev = event(
        signer.clone(),
        if approve { "approve" } else { "reject" },
        None,
        Body::ChangeReviewed(ChangeReview {
            change_id: record_id("change", &a.change)?,
            seen_subjects: seen.clone(),
            approve,
            comment: a.comment,
            revision,
        }),
    );
    let r = append(&a.conn, &key, ev).await?;
    outln!(
        "{signer} {} change {} at entry {} (seen: {})",
        if approve { "approved" } else { "rejected" },
        a.change,
        r.index,
        seen.into_iter().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

// === CI ===

/// What a CI system's environment says about the current run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CiEnv {
    pub provider: String,
    pub repository: String,
    pub commit: String,
    pub pipeline: String,
    pub run_id: String,
    pub url: String,
    pub git_ref: String,
}

/// Reads GitHub Actions or GitLab CI variables through `var`.
pub fn ci_env(var: impl Fn(&str) -> Option<String>) -> CiEnv {
    let v = |k: &str| var(k).unwrap_or_default();
    if v("GITHUB_ACTIONS") == "true" {
        // Both default as docket-ci.sh does, so `change open` and `ci
        // report` name the same repository even where a runner (act, say)
        // leaves the variable out.
        let server = Some(v("GITHUB_SERVER_URL"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "https://github.com".into());
        let host = server
            .split_once("://")
            .map(|(_, h)| h)
            .unwrap_or(&server)
            .trim_end_matches('/')
            .to_owned();
        let repo = v("GITHUB_REPOSITORY");
        let run = v("GITHUB_RUN_ID");
        // A re-run keeps the run id; its attempt number tells them apart.
        let attempt = v("GITHUB_RUN_ATTEMPT");
        let attempt =
            if attempt.bytes().all(|b| b.is_ascii_digit()) && !attempt.is_empty() && attempt != "1"
            {
                format!("/attempts/{attempt}")
            } else {
                String::new()
            };
        return CiEnv {
            provider: "github-actions".into(),
            repository: if host.is_empty() || repo.is_empty() {
                repo.clone()
            } else {
                format!("{host}/{repo}")
            },
            commit: v("GITHUB_SHA"),
            pipeline: v("GITHUB_WORKFLOW"),
            url: if server.is_empty() || repo.is_empty() || run.is_empty() {
                String::new()
            } else {
                format!(
                    "{}/{repo}/actions/runs/{run}{attempt}",
                    server.trim_end_matches('/')
                )
            },
            run_id: run,
            git_ref: v("GITHUB_REF"),
        };
    }
    if v("GITLAB_CI") == "true" {
        let host = Some(v("CI_SERVER_HOST"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "gitlab.com".into());
        let project = v("CI_PROJECT_PATH");
        let pipeline = match var("CI_PIPELINE_NAME").filter(|s| !s.is_empty()) {
            Some(p) => p,
            None => v("CI_JOB_NAME"),
        };
        return CiEnv {
            provider: "gitlab-ci".into(),
            repository: if host.is_empty() || project.is_empty() {
                project.clone()
            } else {
                format!("{host}/{project}")
            },
            commit: v("CI_COMMIT_SHA"),
            pipeline,
            run_id: v("CI_PIPELINE_ID"),
            url: v("CI_PIPELINE_URL"),
            git_ref: v("CI_COMMIT_REF_NAME"),
        };
    }
    CiEnv::default()
}

#[derive(Subcommand, Debug)]
pub enum CiCmd {
    /// Report a finished CI run: its status, the commit it built and the
    /// artifact digests it produced. Run ids, URLs and the commit come from
    /// GitHub Actions or GitLab CI variables when present.
    Report(CiReportArgs),
}

#[derive(Args, Debug)]
pub struct CiReportArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    sign: SignArgs,
    /// passed, failed or canceled.
    #[arg(long)]
    status: String,
    /// The commit built (default: GITHUB_SHA / CI_COMMIT_SHA).
    #[arg(long)]
    commit: Option<String>,
    /// Artifact digest produced, sha256:... (repeatable).
    #[arg(long = "digest")]
    digests: Vec<String>,
    #[arg(long)]
    repository: Option<String>,
    #[arg(long)]
    provider: Option<String>,
    #[arg(long)]
    pipeline: Option<String>,
    #[arg(long)]
    run_id: Option<String>,
    #[arg(long)]
    url: Option<String>,
    #[arg(long = "ref")]
    git_ref: Option<String>,
}

pub(crate) async fn ci(c: CiCmd) -> CliResult {
    let CiCmd::Report(a) = c;
    // A variable that is set but not UTF-8 is refused by name, not taken
    // for absent (which recorded the run without its id, URL or ref).
    let garbled = std::cell::RefCell::new(Vec::new());
    let env = ci_env(|k| match std::env::var(k) {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            garbled.borrow_mut().push(k.to_owned());
            None
        }
    });
    if let Some(k) = garbled.into_inner().first() {
        return Err(CliError::usage(format!(
            "{k} is set but not UTF-8; Docket records CI facts as text: fix the variable, or unset it and pass the value with its flag"
        )));
    }
    // Which variables the CI's commit and repository come from, for messages.
    let (commit_var, repository_var) = match env.provider.as_str() {
        "github-actions" => (Some("GITHUB_SHA"), Some("GITHUB_REPOSITORY")),
        "gitlab-ci" => (Some("CI_COMMIT_SHA"), Some("CI_PROJECT_PATH")),
        _ => (None, None),
    };
    let status = match a.status.as_str() {
        "passed" | "success" => CiStatus::Passed,
        "failed" | "failure" => CiStatus::Failed,
        "canceled" | "cancelled" => CiStatus::Canceled,
        other => {
            return Err(CliError::usage(format!(
                "--status {other:?}: expected passed, failed or canceled"
            )));
        }
    };
    let given = a.commit.is_some();
    let commit = a.commit.unwrap_or(env.commit);
    if commit.is_empty() {
        return Err(CliError::usage(match commit_var {
            Some(var) => format!(
                "{var} is not set or empty, so the commit this {} run built is unknown: pass --commit",
                env.provider
            ),
            None => "--commit is required outside GitHub Actions and GitLab CI".into(),
        }));
    }
    let from = if given {
        "--commit"
    } else {
        "the commit from the CI's variables (GITHUB_SHA or CI_COMMIT_SHA)"
    };
    check_commits(from, [&commit])?;
    check_digests("--digest", &a.digests)?;
    let repository = a.repository.unwrap_or(env.repository);
    if repository.is_empty() {
        return Err(CliError::usage(match repository_var {
            Some(var) => format!(
                "{var} is not set or empty, so the repository this {} run built is unknown: pass --repository",
                env.provider
            ),
            None => "--repository is required outside GitHub Actions and GitLab CI".into(),
        }));
    }
    let run = CiRun {
        repository,
        commit,
        artifact_digests: a.digests.into_iter().collect(),
        status,
        provider: a.provider.unwrap_or(env.provider),
        pipeline: a.pipeline.unwrap_or(env.pipeline),
        run_id: a.run_id.unwrap_or(env.run_id),
        url: a.url.unwrap_or(env.url),
        git_ref: a.git_ref.unwrap_or(env.git_ref),
    };
    let (signer, key) = signer_of(&a.conn, &a.sign)?;
    let via = [run.provider.as_str(), run.pipeline.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let summary = format!(
        "CI run {}{} {} for {}{}",
        if run.run_id.is_empty() {
            "(no id)"
        } else {
            &run.run_id
        },
        if via.is_empty() {
            String::new()
        } else {
            format!(" ({via})")
        },
        run.status.name(),
        run.commit,
        if run.artifact_digests.is_empty() {
            String::new()
        } else {
            format!(
                " -> {}",
                run.artifact_digests
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    let r = append(
        &a.conn,
        &key,
        event(signer, "ci", None, Body::CiRunReported(run)),
    )
    .await?;
    outln!("recorded {summary} at entry {}", r.index);
    Ok(())
}

// === authorize and deploy ===

/// What is being deployed where: shared by `authorize` and `deploy`.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Target environment.
    #[arg(long = "env")]
    environment: String,
    /// Artifact digest sha256:... being deployed (repeatable).
    #[arg(long = "digest")]
    digests: Vec<String>,
    /// Commit SHA being deployed (repeatable).
    #[arg(long = "commit")]
    commits: Vec<String>,
    /// The change; default: the one that binds the subjects and targets the environment.
    #[arg(long)]
    change: Option<String>,
    #[arg(long)]
    repository: Option<String>,
    /// Kubernetes resource kind, e.g. Deployment.
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
    #[arg(long, default_value = "deploy")]
    action: String,
    /// Break glass: with `deploy`, deploy without approvals under the
    /// break-glass permission, recorded with a review obligation; with
    /// `authorize`, which records nothing, always a deny that says whether
    /// the recorded deployment would be allowed.
    #[arg(long)]
    break_glass: bool,
    /// Print the decision as JSON.
    #[arg(long)]
    json: bool,
}

impl Target {
    /// The subjects, refused as a usage error when malformed.
    fn subjects(&self) -> Result<Vec<String>, CliError> {
        check_digests("--digest", &self.digests)?;
        check_commits("--commit", &self.commits)?;
        Ok(self.digests.iter().chain(&self.commits).cloned().collect())
    }
}

#[derive(Args, Debug)]
pub struct AuthorizeArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    target: Target,
    /// Who would act (default: the signer, DOCKET_SIGNER, or the data dir's admin).
    #[arg(long)]
    actor: Option<String>,
    #[arg(long, env = "DOCKET_SIGNER", hide = true)]
    signer: Option<String>,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    sign: SignArgs,
    #[command(flatten)]
    target: Target,
    /// Why break-glass is needed (required with --break-glass).
    #[arg(long, default_value = "")]
    justification: String,
}

/// The decision as JSON (also what `--json` prints).
pub fn decision_json(d: &pb::Decision) -> serde_json::Value {
    serde_json::json!({
        "verdict": if d.verdict == pb::Verdict::Allow as i32 { "allow" } else { "deny" },
        "rule": d.rule,
        "policy_version": d.policy_version,
        "policy_digest": d.policy_digest,
        "change_id": d.change_id,
        "change_revision": d.change_revision,
        "reasons": d.reasons,
        "counted": d.counted.iter().map(|c| serde_json::json!({
            "approver": c.approver, "roles": c.roles, "index": c.index})).collect::<Vec<_>>(),
        "not_counted": d.not_counted.iter().map(|c| serde_json::json!({
            "approver": c.approver, "reason": c.reason, "index": c.index})).collect::<Vec<_>>(),
        "obligations": d.obligations.iter().map(|o| serde_json::json!({
            "description": o.description,
            "due": crate::state::gov::fmt_nanos(o.due_unix_nanos),
            "not_by": o.not_by})).collect::<Vec<_>>(),
        "log_size": d.log_size,
        "at": crate::state::gov::fmt_nanos(d.at_unix_nanos),
        "recorded": d.recorded,
        "index": d.recorded.then_some(d.index),
    })
}

/// The decision in words, for a person reading a pipeline log.
pub fn decision_text(d: &pb::Decision, what: &str) -> String {
    use std::fmt::Write as _;
    let allow = d.verdict == pb::Verdict::Allow as i32;
    let mut s = String::new();
    let rule = if d.rule.is_empty() {
        "no rule".to_owned()
    } else {
        format!("rule {:?}", d.rule)
    };
    let _ = writeln!(
        s,
        "{} {what}: {rule}, policy version {}",
        if allow { "ALLOW" } else { "DENY" },
        d.policy_version
    );
    if !d.change_id.is_empty() {
        let _ = writeln!(
            s,
            "  change {} (revision {})",
            printable(&d.change_id),
            d.change_revision
        );
    }
    for r in &d.reasons {
        let _ = writeln!(s, "  - {}", printable(r));
    }
    for c in &d.counted {
        let _ = writeln!(
            s,
            "  counted:     {} ({}) [entry {}]",
            printable(&c.approver),
            printable(&c.roles),
            c.index
        );
    }
    for c in &d.not_counted {
        let _ = writeln!(
            s,
            "  not counted: {} — {} [entry {}]",
            printable(&c.approver),
            printable(&c.reason),
            c.index
        );
    }
    for o in &d.obligations {
        let _ = writeln!(
            s,
            "  obligation:  {}, due {}, not by {}",
            printable(&o.description),
            crate::state::gov::fmt_nanos(o.due_unix_nanos),
            printable(&o.not_by)
        );
    }
    if d.recorded {
        let _ = writeln!(s, "  recorded at entry {}", d.index);
    }
    s
}

fn finish(d: &pb::Decision, json: bool, what: &str) -> CliResult {
    if json {
        print_json(&decision_json(d));
    } else {
        out!("{}", decision_text(d, what));
    }
    if d.verdict == pb::Verdict::Allow as i32 {
        Ok(())
    } else {
        Err(CliError::failed(format!(
            "denied: {}",
            printable(d.reasons.first().map_or("", String::as_str))
        )))
    }
}

pub(crate) async fn authorize(a: AuthorizeArgs) -> CliResult {
    let actor = match a.actor.or(a.signer) {
        Some(s) => s,
        None => crate::datadir::DataDir::new(&a.conn.data.data)
            .config()
            .map(|c| c.admin)
            .map_err(|_| CliError::usage("give --actor (the principal who would deploy)"))?,
    };
    let t = &a.target;
    let subjects = t.subjects()?;
    let mut g = Conn::resolve(&a.conn)?.governance().await?;
    let d = g
        .authorize(pb::AuthorizeRequest {
            action: t.action.clone(),
            environment: t.environment.clone(),
            repository: t.repository.clone().unwrap_or_default(),
            kind: t.kind.clone().unwrap_or_default(),
            namespace: t.namespace.clone().unwrap_or_default(),
            subjects: subjects.clone(),
            change_id: t.change.clone().unwrap_or_default(),
            actor,
            break_glass: t.break_glass,
        })
        .await
        .map_err(|s| status_err("authorize", s))?
        .into_inner();
    finish(
        &d,
        t.json,
        &format!("{} {} to {}", t.action, subjects.join(", "), t.environment),
    )
}

pub(crate) async fn deploy(a: DeployArgs) -> CliResult {
    let t = &a.target;
    let subjects = t.subjects()?;
    let (signer, key) = signer_of(&a.conn, &a.sign)?;
    let ev = event(
        signer,
        "deploy",
        None,
        Body::DeployRequested(DeployRequest {
            action: t.action.clone(),
            environment: t.environment.clone(),
            repository: t.repository.clone(),
            kind: t.kind.clone(),
            namespace: t.namespace.clone(),
            subjects: subjects.iter().cloned().collect(),
            change_id: t
                .change
                .as_deref()
                .map(|c| record_id("--change", c))
                .transpose()?,
            break_glass: t.break_glass,
            justification: a.justification.clone(),
        }),
    );
    let r = append(&a.conn, &key, ev).await?;
    let d = r
        .decision
        .ok_or_else(|| CliError::failed("the receipt carries no decision"))?;
    finish(
        &d,
        t.json,
        &format!("{} {} to {}", t.action, subjects.join(", "), t.environment),
    )
}

// === obligations and violations ===

#[derive(Args, Debug)]
pub struct ObligationsArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Only open, overdue, closed or closed-late ones.
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    json: bool,
}

pub(crate) async fn obligations(a: ObligationsArgs) -> CliResult {
    let mut g = Conn::resolve(&a.conn)?.governance().await?;
    let r = g
        .list_obligations(pb::ListObligationsRequest {
            status: a.status.unwrap_or_default(),
        })
        .await
        .map_err(|s| status_err("list obligations", s))?
        .into_inner();
    let fmt = crate::state::gov::fmt_nanos;
    if a.json {
        print_json(&serde_json::json!({
            "as_of": fmt(r.as_of_unix_nanos),
            "obligations": r.obligations.iter().map(|o| serde_json::json!({
                "deployment_index": o.deployment_index, "actor": o.actor,
                "environment": o.environment, "subjects": o.subjects,
                "justification": o.justification, "opened": fmt(o.opened_unix_nanos),
                "due": fmt(o.due_unix_nanos), "status": o.status,
                // As in an evidence bundle: null until reviewed, so that no
                // reader takes entry 0 or "not justified" for a review.
                "review": (!o.reviewer.is_empty()).then(|| serde_json::json!({
                    "reviewer": o.reviewer, "index": o.review_index,
                    "justified": o.justified, "comment": o.comment,
                    "time": fmt(o.reviewed_unix_nanos),
                })),
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    outln!(
        "as of {}: {} obligation(s)",
        fmt(r.as_of_unix_nanos),
        r.obligations.len()
    );
    for o in &r.obligations {
        let review = if o.reviewer.is_empty() {
            String::new()
        } else {
            format!(
                "; reviewed by {} at entry {} ({})",
                o.reviewer,
                o.review_index,
                if o.justified {
                    "justified"
                } else {
                    "unjustified"
                }
            )
        };
        outln!(
            "{:<11} entry {}: break-glass by {} to {}, due {}{review}",
            o.status,
            o.deployment_index,
            o.actor,
            o.environment,
            fmt(o.due_unix_nanos)
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ViolationsArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[arg(long)]
    json: bool,
}

pub(crate) async fn violations(a: ViolationsArgs) -> CliResult {
    let mut g = Conn::resolve(&a.conn)?.governance().await?;
    let r = g
        .list_violations(pb::ListViolationsRequest {})
        .await
        .map_err(|s| status_err("list violations", s))?
        .into_inner();
    let fmt = crate::state::gov::fmt_nanos;
    if a.json {
        print_json(&serde_json::json!({
            "as_of": fmt(r.as_of_unix_nanos),
            "violations": r.violations.iter().map(|v| serde_json::json!({
                "kind": v.kind, "index": v.index, "description": v.description,
                "at": fmt(v.at_unix_nanos),
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    outln!(
        "as of {}: {} violation(s)",
        fmt(r.as_of_unix_nanos),
        r.violations.len()
    );
    for v in &r.violations {
        outln!("{:<24} {}", printable(&v.kind), printable(&v.description));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ReviewBreakGlassArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    sign: SignArgs,
    /// Entry index of the break-glass deployment (see `docket obligations`).
    deployment: u64,
    /// Record that the break-glass was not justified (a violation).
    #[arg(long)]
    unjustified: bool,
    #[arg(long, default_value = "")]
    comment: String,
}

pub(crate) async fn review_break_glass(a: ReviewBreakGlassArgs) -> CliResult {
    let (signer, key) = signer_of(&a.conn, &a.sign)?;
    let ev = event(
        signer.clone(),
        "break-glass-review",
        None,
        Body::BreakGlassReviewed(BreakGlassReview {
            deployment_index: a.deployment,
            justified: !a.unjustified,
            comment: a.comment,
        }),
    );
    let r = append(&a.conn, &key, ev).await?;
    outln!(
        "{signer} reviewed the break-glass deployment at entry {} ({}) at entry {}",
        a.deployment,
        if a.unjustified {
            "unjustified"
        } else {
            "justified"
        },
        r.index
    );
    Ok(())
}

// === git ===

#[derive(Subcommand, Debug)]
pub enum GitCmd {
    /// Record commits of a repository: sha, parents, tree, author,
    /// committer, changed paths and the signature verdict.
    Ingest(GitIngestArgs),
}

#[derive(Args, Debug)]
pub struct GitIngestArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    sign: SignArgs,
    /// The repository (a working tree or a bare repository).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// A..B: commits reachable from B but not from A.
    #[arg(long)]
    range: Option<String>,
    /// A ref or revision whose whole history is read (repeatable).
    #[arg(long = "ref")]
    refs: Vec<String>,
    /// Name recorded for the repository (default: from the origin remote).
    #[arg(long)]
    repository: Option<String>,
    /// An allowed-signers file (ssh-keygen format) of trusted SSH keys.
    #[arg(long, env = "DOCKET_ALLOWED_SIGNERS")]
    allowed_signers: Option<PathBuf>,
    /// A keyring of trusted OpenPGP certificates, armored or binary
    /// (e.g. `gpg --export --armor alice@example.com bob@example.com`).
    #[arg(long, env = "DOCKET_OPENPGP_KEYRING")]
    openpgp_keyring: Option<PathBuf>,
    /// Do not trust the principals' Docket keys as commit-signing keys.
    #[arg(long)]
    no_principal_keys: bool,
    /// Print what would be recorded and submit nothing (the principals'
    /// keys are still read from the server, when it answers, so that the
    /// verdicts are those the real run records).
    #[arg(long)]
    dry_run: bool,
}

/// The active keys of every principal, trusted as commit-signing keys.
async fn principal_keys(conn: &ConnArgs) -> Result<Vec<TrustedKey>, CliError> {
    let mut l = Conn::resolve(conn)?.ledger().await?;
    let ps = l
        .list_principals(pb::ListPrincipalsRequest {})
        .await
        .map_err(|s| status_err("list principals", s))?
        .into_inner();
    let mut out = Vec::new();
    for p in ps.principals {
        for k in p.keys.iter().filter(|k| !k.revoked) {
            if let Ok(key) = crate::crypto::parse_public_key(&k.public_key) {
                out.push(TrustedKey::principal(&p.id, &key));
            }
        }
    }
    Ok(out)
}

pub(crate) async fn git(c: GitCmd) -> CliResult {
    let GitCmd::Ingest(a) = c;
    // The principals' keys come first: a key that is a principal's is
    // recorded under the principal's id (the first holder names the
    // signer), which is what the server requires, whatever identity an
    // allowed-signers line gives the same key.
    let mut trusted: Vec<TrustedKey> = Vec::new();
    if !a.no_principal_keys {
        // A dry run asks too, so that it shows the verdicts the real run
        // records; without a server it says what it cannot show.
        match principal_keys(&a.conn).await {
            Ok(keys) => trusted.extend(keys),
            Err(e) if a.dry_run => eprintln!(
                "warning: the principals' keys could not be read ({}); commits signed with \
                 them show here as untrusted-key, and the real run records them as verified",
                e.message
            ),
            Err(e) => return Err(e),
        }
    }
    if let Some(p) = &a.allowed_signers {
        trusted.extend(read_allowed_signers(p).map_err(CliError::usage)?);
    }
    let src = GitSource {
        repo: a.repo.clone(),
        range: a.range.clone(),
        refs: a.refs.clone(),
        repository: a.repository.clone(),
    };
    let openpgp = match &a.openpgp_keyring {
        Some(p) => {
            let ring = crate::ingest::openpgp::read_keyring(p)
                .map_err(|e| CliError::usage(format!("OpenPGP keyring {}: {e}", p.display())))?;
            for why in &ring.skipped {
                eprintln!(
                    "warning: OpenPGP keyring {}: skipped {why}; its signatures will be untrusted-key",
                    p.display()
                );
            }
            ring.certs
        }
        None => Vec::new(),
    };
    let commits = observe(&src, &trusted, &openpgp).map_err(CliError::usage)?;
    let line = |c: &crate::event::CommitObservation, what: &str| {
        outln!(
            "{} {:<13} {:<30} {} <{}> {}",
            &c.sha[..12],
            c.signature.verdict.name(),
            what,
            printable(&c.commit.author.name),
            printable(&c.commit.author.email),
            printable(&c.commit.summary)
        );
    };
    if a.dry_run {
        for c in &commits {
            line(c, "(dry run)");
        }
        outln!("{} commit(s); nothing submitted", commits.len());
        return Ok(());
    }
    let (signer, key) = signer_of(&a.conn, &a.sign)?;
    let verifier = log_verifier(&a.conn)?;
    let mut ledger = Conn::resolve(&a.conn)?.ledger().await?;
    let (mut added, mut known) = (0usize, 0usize);
    for c in commits {
        let ev = Event {
            // One event id per commit, so a re-run records nothing twice.
            event_id: format!("git:{}", c.sha),
            claimed_time_nanos: now_nanos(),
            signer: signer.clone(),
            body: Body::CommitObserved(Box::new(c.clone())),
        };
        let env = sign_event(&ev, &key);
        match ledger
            .append(pb::AppendRequest {
                envelope: Some(envelope_to_pb(&env)),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                check_receipt_with(&verifier, &r, &env)?;
                line(&c, &format!("recorded at entry {}", r.index));
                added += 1;
            }
            Err(s)
                if s.code() == Code::AlreadyExists
                    || (s.code() == Code::FailedPrecondition
                        && s.message().contains("already observed")) =>
            {
                line(&c, "already recorded");
                known += 1;
            }
            Err(s) => return Err(status_err(&format!("recording commit {}", c.sha), s)),
        }
    }
    outln!("{added} commit(s) recorded, {known} already in the log");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn ci_variables_of_github_and_gitlab() {
        let gh: HashMap<&str, &str> = HashMap::from([
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_REPOSITORY", "acme/payments"),
            ("GITHUB_RUN_ID", "4242"),
            ("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567"),
            ("GITHUB_WORKFLOW", "build"),
            ("GITHUB_REF", "refs/heads/main"),
        ]);
        let e = ci_env(|k| gh.get(k).map(|v| v.to_string()));
        assert_eq!(
            e,
            CiEnv {
                provider: "github-actions".into(),
                repository: "github.com/acme/payments".into(),
                commit: "0123456789abcdef0123456789abcdef01234567".into(),
                pipeline: "build".into(),
                run_id: "4242".into(),
                url: "https://github.com/acme/payments/actions/runs/4242".into(),
                git_ref: "refs/heads/main".into(),
            }
        );
        let gl: HashMap<&str, &str> = HashMap::from([
            ("GITLAB_CI", "true"),
            ("CI_SERVER_HOST", "gitlab.example.com"),
            ("CI_PROJECT_PATH", "acme/payments"),
            ("CI_PIPELINE_ID", "77"),
            (
                "CI_PIPELINE_URL",
                "https://gitlab.example.com/acme/payments/-/pipelines/77",
            ),
            ("CI_COMMIT_SHA", "89abcdef0123456789abcdef0123456789abcdef"),
            ("CI_JOB_NAME", "build-image"),
            ("CI_COMMIT_REF_NAME", "main"),
        ]);
        let e = ci_env(|k| gl.get(k).map(|v| v.to_string()));
        assert_eq!(e.provider, "gitlab-ci");
        assert_eq!(e.repository, "gitlab.example.com/acme/payments");
        assert_eq!(e.pipeline, "build-image");
        assert_eq!(e.run_id, "77");
        assert!(e.url.ends_with("/pipelines/77"));
        // A re-run's attempt is in the URL; a missing server is the public
        // one, as docket-ci.sh assumes.
        let rerun = |extra: &[(&'static str, &'static str)], drop: &str| {
            let mut m = gh.clone();
            m.extend(extra.iter().copied());
            m.remove(drop);
            ci_env(|k| m.get(k).map(|v| v.to_string()))
        };
        assert_eq!(
            rerun(&[("GITHUB_RUN_ATTEMPT", "2")], "").url,
            "https://github.com/acme/payments/actions/runs/4242/attempts/2"
        );
        assert_eq!(
            rerun(&[("GITHUB_RUN_ATTEMPT", "1")], "").url,
            "https://github.com/acme/payments/actions/runs/4242"
        );
        assert_eq!(
            rerun(&[], "GITHUB_SERVER_URL").repository,
            "github.com/acme/payments"
        );
        let mut m = gl.clone();
        m.remove("CI_SERVER_HOST");
        let e = ci_env(|k| m.get(k).map(|v| v.to_string()));
        assert_eq!(e.repository, "gitlab.com/acme/payments");
        // Neither: nothing is guessed.
        assert_eq!(ci_env(|_| None), CiEnv::default());
    }
}
