//! The gRPC Governance service: decisions, changes, policy, obligations and
//! violations, read from the state. Every answer is given only once the
//! facts it rests on are durable (`Service::read_durable`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::access::Guard;
use super::convert::{authorize_request, decision_to_pb};
use super::pb;
use crate::service::{Service, Stopped};
use crate::state::gov::{ObligationRec, ObligationStatus, violations};

/// The tonic Governance service over a [`Service`].
#[derive(Clone)]
pub struct GovernanceApi {
    svc: Arc<Service>,
    guard: Guard,
    /// Evidence exports under way ([`MAX_EXPORTS`]).
    exports: Arc<tokio::sync::Semaphore>,
}

/// Evidence exports the server runs at once, all clients together. Each
/// builds its bundle in memory (about 1.1 kB per entry carried, more while
/// it is checked), so a few period exports of a large log could otherwise
/// exhaust it.
pub const MAX_EXPORTS: usize = 2;

impl GovernanceApi {
    /// Wraps a service; `guard` is the same access check the Ledger uses.
    pub fn new(svc: Arc<Service>, guard: Guard) -> Self {
        GovernanceApi {
            svc,
            guard,
            exports: Arc::new(tokio::sync::Semaphore::new(MAX_EXPORTS)),
        }
    }
}

fn stopped(e: Stopped) -> Status {
    Status::unavailable(e.to_string())
}

fn obligation_pb(o: &ObligationRec, now: i64) -> pb::ObligationState {
    let r = o.review.as_ref().filter(|r| r.at_nanos <= now);
    pb::ObligationState {
        deployment_index: o.deployment_index,
        actor: o.actor.clone(),
        environment: o.environment.clone(),
        subjects: o.subjects.iter().cloned().collect(),
        justification: o.justification.clone(),
        opened_unix_nanos: o.opened_nanos,
        due_unix_nanos: o.due_nanos,
        status: o.status(now).name().to_owned(),
        reviewer: r.map(|r| r.reviewer.clone()).unwrap_or_default(),
        review_index: r.map(|r| r.index).unwrap_or(0),
        reviewed_unix_nanos: r.map(|r| r.at_nanos).unwrap_or(0),
        justified: r.is_some_and(|r| r.justified),
        comment: r.map(|r| r.comment.clone()).unwrap_or_default(),
    }
}

/// Maps every export error to a status; each variant is decided here.
fn export_status(e: &crate::evidence::ExportError) -> Status {
    use crate::evidence::ExportError as E;
    let msg = super::clip(e.to_string());
    match e {
        E::UnknownChange(_) => Status::not_found(format!("change_id: {msg}")),
        E::EmptyPeriod { .. } => Status::invalid_argument(msg),
        E::Sign(_) => Status::unavailable(msg),
        E::Cancelled => Status::cancelled(msg),
        E::Read(_) | E::Entry { .. } | E::NoCheckpoint(_) | E::SelfCheck(_) | E::Policy { .. } => {
            Status::internal(msg)
        }
        E::Since(_) => Status::invalid_argument(msg),
        E::Diverged(_) => Status::failed_precondition(msg),
    }
}

/// The scope named by an export request; refusals name the field.
fn export_scope(r: pb::ExportEvidenceRequest) -> Result<crate::evidence::Scope, Status> {
    use crate::evidence::{Control, Scope};
    use pb::export_evidence_request::Scope as S;
    if r.complete && !matches!(r.scope, Some(S::ChangeId(_))) {
        return Err(Status::invalid_argument(
            "complete: applies only to a change_id scope; a period or control bundle always proves its period complete",
        ));
    }
    let ordered = |scope: &str, from: i64, to: i64| {
        if from >= to {
            return Err(Status::invalid_argument(format!(
                "{scope}.to_unix_nanos: the period is empty: from ({}) must be before to ({})",
                crate::state::gov::fmt_nanos(from),
                crate::state::gov::fmt_nanos(to)
            )));
        }
        Ok(())
    };
    match r.scope {
        Some(S::ChangeId(id)) if !id.is_empty() => {
            crate::event::RecordId::parse(&id)
                .map_err(|e| super::refusal(tonic::Code::InvalidArgument, format!("change_id: {e}")))?;
            Ok(Scope::Change {
                id,
                complete: r.complete,
            })
        }
        Some(S::Period(p)) => {
            ordered("period", p.from_unix_nanos, p.to_unix_nanos)?;
            filters("period.environments", &p.environments)?;
            filters("period.repositories", &p.repositories)?;
            Ok(Scope::Period {
                from: p.from_unix_nanos,
                to: p.to_unix_nanos,
                environments: p.environments,
                repositories: p.repositories,
            })
        }
        Some(S::Control(c)) => Ok(Scope::Control {
            control: Control::parse(&c.control).ok_or_else(|| {
                super::refusal(tonic::Code::InvalidArgument, format!(
                    "control.control: {:?} is not one of soc2-cc8.1, iso27001-a8.32, hipaa-164.312b",
                    c.control
                ))
            })?,
            from: {
                ordered("control", c.from_unix_nanos, c.to_unix_nanos)?;
                c.from_unix_nanos
            },
            to: c.to_unix_nanos,
        }),
        _ => Err(Status::invalid_argument(
            "scope: give change_id, period or control",
        )),
    }
}

fn filters(field: &str, list: &[String]) -> Result<(), Status> {
    crate::evidence::check_filters(field, list)
        .map_err(|m| super::refusal(tonic::Code::InvalidArgument, m))
}

/// Bundle bytes per streamed chunk.
const CHUNK: usize = 1 << 20;

/// How often a running export reports how far it has got (stage boundaries
/// are reported as they happen).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// An `ExportEvidence` stream whose every chunk is let through only if
/// `recheck` still admits the caller when the chunk is about to leave: an
/// export whose caller's certificate is revoked (and the server reloaded) or
/// expires, or whose identity loses `ExportEvidence`, ends with that
/// refusal instead of handing over the rest of the bundle. A chunk that
/// transport flow control already holds has been checked and may still
/// arrive; nothing is checked twice and nothing follows the refusal.
fn rechecked<S>(
    chunks: S,
    mut recheck: impl FnMut() -> Result<(), Status> + Send + 'static,
) -> impl futures::Stream<Item = Result<pb::EvidenceChunk, Status>> + Send + 'static
where
    S: futures::Stream<Item = Result<pb::EvidenceChunk, Status>> + Send + 'static,
{
    use futures::StreamExt as _;
    chunks.scan(false, move |refused, item| {
        let out = if *refused {
            None
        } else if let Err(status) = recheck() {
            *refused = true;
            Some(Err(status))
        } else {
            Some(item)
        };
        std::future::ready(out)
    })
}

/// A bundle cut into the chunks of an `ExportEvidence` stream.
fn bundle_chunks(bytes: Vec<u8>) -> impl Iterator<Item = pb::EvidenceChunk> {
    let total = bytes.len() as u64;
    let bytes = std::sync::Arc::new(bytes);
    (0..bytes.len().div_ceil(CHUNK).max(1)).map(move |i| {
        let start = i * CHUNK;
        let end = (start + CHUNK).min(bytes.len());
        pb::EvidenceChunk {
            total_bytes: total,
            offset: start as u64,
            data: bytes[start..end].to_vec(),
            progress: None,
        }
    })
}

#[tonic::async_trait]
impl pb::governance_server::Governance for GovernanceApi {
    type ExportEvidenceStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::EvidenceChunk, Status>> + Send + 'static>,
    >;

    #[tracing::instrument(skip_all)]
    async fn export_evidence(
        &self,
        req: Request<pb::ExportEvidenceRequest>,
    ) -> Result<Response<Self::ExportEvidenceStream>, Status> {
        self.guard.check(&req, "ExportEvidence")?;
        let peer = Guard::peer_of(&req);
        let guard = self.guard.clone();
        let recheck = move || guard.recheck(peer.as_ref(), "ExportEvidence");
        let mut req = req.into_inner();
        let with_progress = req.progress;
        let since = Some(std::mem::take(&mut req.since_checkpoint)).filter(|n| !n.is_empty());
        let scope = export_scope(req)?;
        // Held until the bundle's last chunk has gone (or the client left).
        let permit = self.exports.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_EXPORTS} evidence exports are under way, the most the server runs at once; retry when one ends"
            ))
        })?;
        let failed = |e: crate::evidence::ExportError| {
            let status = export_status(&e);
            // A scope the log cannot serve (an unknown change, say) is the
            // client's to fix; a warning is for what the operator must.
            match status.code() {
                tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::Cancelled => {
                    tracing::info!(cause = %e, "evidence export refused")
                }
                // A checkpoint signed by this log's key that the log no
                // longer matches: its history was rewritten or cut back.
                tonic::Code::FailedPrecondition => {
                    tracing::error!(cause = %e, "evidence export refused: the log differs from a checkpoint it signed")
                }
                _ => tracing::warn!(cause = %e, "evidence export failed"),
            }
            status
        };
        if !with_progress {
            let bytes = self
                .svc
                .export_evidence_since(scope, since, Default::default())
                .await
                .map_err(failed)?;
            let chunks = futures::stream::iter(bundle_chunks(bytes).map(move |c| {
                let _held = &permit;
                Ok(c)
            }));
            return Ok(Response::new(Box::pin(rechecked(chunks, recheck))));
        }
        // Progress reports go out while the bundle is built, then its bytes;
        // a failure arrives as the stream's status. A client that reads
        // slowly holds the export at its next await (the blocking stages
        // run on), which costs it nothing but its own time.
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let svc = self.svc.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let progress = std::sync::Arc::new(crate::evidence::Progress::default());
            let export = svc.export_evidence_since(scope, since, progress.clone());
            tokio::pin!(export);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let result = loop {
                let done = tokio::select! {
                    r = &mut export => Some(r),
                    () = progress.changed() => None,
                    _ = tick.tick() => None,
                    // The client went away: dropping the export stops it.
                    () = tx.closed() => return,
                };
                for step in progress.take() {
                    let chunk = pb::EvidenceChunk {
                        progress: Some(pb::ExportProgress {
                            stage: step.stage.name().into(),
                            done: step.done,
                            total: step.total,
                        }),
                        ..Default::default()
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return; // the client went away
                    }
                }
                if let Some(r) = done {
                    break r;
                }
            };
            match result {
                Err(e) => {
                    let _ = tx.send(Err(failed(e))).await;
                }
                Ok(bytes) => {
                    for chunk in bundle_chunks(bytes) {
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(rechecked(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            recheck,
        ))))
    }

    #[tracing::instrument(skip_all)]
    async fn authorize(
        &self,
        req: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        self.guard.check(&req, "Authorize")?;
        let (mut question, change) = authorize_request(req.into_inner(), self.svc.now_nanos())
            .map_err(|e| super::refusal(tonic::Code::InvalidArgument, e.to_string()))?;
        let (d, _) = self
            .svc
            .read_durable(|s| {
                // Never decide for a time before the newest fact in the state
                // (a clock stepped back must not undo a recorded deployment).
                if let Ok(t) = jiff::Timestamp::from_nanosecond(i128::from(s.last_time()))
                    && t > question.at
                {
                    question.at = t;
                }
                s.authorize(&question, change.as_deref())
            })
            .await
            .map_err(stopped)?;
        Ok(Response::new(decision_to_pb(d, None)))
    }

    async fn get_decision(
        &self,
        req: Request<pb::GetDecisionRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        self.guard.check(&req, "GetDecision")?;
        let index = req.into_inner().index;
        let (d, _) = self
            .svc
            .read_durable(|s| s.gov().deployment(index).map(|d| d.decision.clone()))
            .await
            .map_err(stopped)?;
        let d = d.ok_or_else(|| {
            Status::not_found(format!("index: entry {index} is not a recorded deployment"))
        })?;
        Ok(Response::new(decision_to_pb(d, Some(index))))
    }

    async fn get_change(
        &self,
        req: Request<pb::GetChangeRequest>,
    ) -> Result<Response<pb::ChangeState>, Status> {
        self.guard.check(&req, "GetChange")?;
        let id = req.into_inner().change_id;
        let (c, _) = self
            .svc
            .read_durable(|s| s.gov().change(&id).cloned())
            .await
            .map_err(stopped)?;
        let c = c.ok_or_else(|| {
            super::refusal(
                tonic::Code::NotFound,
                format!("change_id: no change {id:?}"),
            )
        })?;
        let cur = c.current();
        Ok(Response::new(pb::ChangeState {
            change_id: c.id.clone(),
            title: c.title.clone(),
            repository: c.repository.clone(),
            ticket: c.ticket.clone(),
            requesters: c.requesters.clone(),
            revision: c.revisions.len() as u32,
            commits: cur.commits.iter().cloned().collect(),
            artifact_digests: cur.digests.iter().cloned().collect(),
            environments: cur.environments.iter().cloned().collect(),
            reviews: c
                .reviews
                .iter()
                .map(|r| pb::Review {
                    index: r.index,
                    reviewer: r.reviewer.clone(),
                    seen_subjects: r.seen.iter().cloned().collect(),
                    approve: r.approve,
                    comment: r.comment.clone(),
                    at_unix_nanos: r.at_nanos,
                })
                .collect(),
            revision_indexes: c.revisions.iter().map(|r| r.index).collect(),
            deployments: c.deployments.clone(),
        }))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PolicyState>, Status> {
        self.guard.check(&req, "GetPolicy")?;
        let (state, _) = self
            .svc
            .read_durable(|s| {
                let gov = s.gov();
                let version = |v: &crate::state::gov::PolicyVersionRec| pb::PolicyVersion {
                    version: v.version,
                    digest: v.digest.clone(),
                    text: v.text.clone(),
                    activated_at_index: v.activated_at,
                    proposal_id: v.proposal_id.clone(),
                    approvers: v.approvers.clone(),
                };
                let active = gov.active_version().map(|v| v.version).unwrap_or(1);
                let now = s.now_from(self.svc.now_nanos());
                pb::PolicyState {
                    active: gov.active_version().map(version),
                    history: gov.policy_versions().iter().map(version).collect(),
                    proposals: gov
                        .proposals()
                        .map(|p| {
                            // Only a proposal that may still activate expires.
                            let expires = gov
                                .proposal_expires_at(p)
                                .filter(|_| p.activated_as.is_none() && p.base_version == active);
                            pb::PolicyProposal {
                                proposal_id: p.id.clone(),
                                proposer: p.proposer.clone(),
                                base_version: p.base_version,
                                digest: p.digest.clone(),
                                approvers: p.approvals.iter().map(|a| a.0.clone()).collect(),
                                index: p.index,
                                status: match p.activated_as {
                                    Some(_) => "active",
                                    None if p.base_version != active => "superseded",
                                    None if expires.is_some_and(|e| now > e) => "expired",
                                    None => "pending",
                                }
                                .into(),
                                expires_at_unix_nanos: expires.unwrap_or(0),
                            }
                        })
                        .collect(),
                }
            })
            .await
            .map_err(stopped)?;
        Ok(Response::new(state))
    }

    async fn list_obligations(
        &self,
        req: Request<pb::ListObligationsRequest>,
    ) -> Result<Response<pb::ListObligationsResponse>, Status> {
        self.guard.check(&req, "ListObligations")?;
        let want = req.into_inner().status;
        let wanted: Option<ObligationStatus> = match want.as_str() {
            "" => None,
            "open" => Some(ObligationStatus::Open),
            "overdue" => Some(ObligationStatus::Overdue),
            "closed" => Some(ObligationStatus::Closed),
            "closed-late" => Some(ObligationStatus::ClosedLate),
            other => {
                return Err(super::refusal(
                    tonic::Code::InvalidArgument,
                    format!("status: {other:?} is not one of open, overdue, closed, closed-late"),
                ));
            }
        };
        let clock = self.svc.now_nanos();
        let ((obligations, now), _) = self
            .svc
            .read_durable(|s| {
                let now = s.now_from(clock);
                let list = s
                    .gov()
                    .obligations()
                    .filter(|o| wanted.is_none_or(|w| o.status(now) == w))
                    .map(|o| obligation_pb(o, now))
                    .collect();
                (list, now)
            })
            .await
            .map_err(stopped)?;
        Ok(Response::new(pb::ListObligationsResponse {
            obligations,
            as_of_unix_nanos: now,
        }))
    }

    async fn list_violations(
        &self,
        req: Request<pb::ListViolationsRequest>,
    ) -> Result<Response<pb::ListViolationsResponse>, Status> {
        self.guard.check(&req, "ListViolations")?;
        let clock = self.svc.now_nanos();
        let ((list, now), _) = self
            .svc
            .read_durable(|s| {
                let now = s.now_from(clock);
                (violations(s.gov().obligations(), now), now)
            })
            .await
            .map_err(stopped)?;
        Ok(Response::new(pb::ListViolationsResponse {
            violations: list
                .into_iter()
                .map(|v| pb::Violation {
                    kind: v.kind.to_owned(),
                    index: v.index,
                    description: v.description,
                    at_unix_nanos: v.at_nanos,
                })
                .collect(),
            as_of_unix_nanos: now,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt as _;

    use super::*;

    /// The chunks of a bundle of `n` bytes, as the stream carries them.
    fn chunks(n: usize) -> impl futures::Stream<Item = Result<pb::EvidenceChunk, Status>> {
        futures::stream::iter(bundle_chunks(vec![7; n]).map(Ok))
    }

    /// Each chunk is checked as it leaves; the first refusal is the last
    /// item, however many chunks were left.
    #[tokio::test]
    async fn an_export_refused_on_recheck_ends_with_the_refusal() {
        let checks = Arc::new(AtomicUsize::new(0));
        let counted = checks.clone();
        let recheck = move || {
            if counted.fetch_add(1, Ordering::SeqCst) < 2 {
                Ok(())
            } else {
                Err(Status::unauthenticated("certificate revoked"))
            }
        };
        let got: Vec<_> = rechecked(chunks(5 * CHUNK), recheck)
            .map(|item| item.map(|c| c.offset).map_err(|s| s.code()))
            .collect()
            .await;
        assert_eq!(
            got,
            [Ok(0), Ok(CHUNK as u64), Err(tonic::Code::Unauthenticated)]
        );
        assert_eq!(
            checks.load(Ordering::SeqCst),
            3,
            "no check after the refusal"
        );
    }

    /// A caller admitted throughout gets every chunk, each checked once.
    #[tokio::test]
    async fn an_export_admitted_throughout_gets_every_chunk() {
        let checks = Arc::new(AtomicUsize::new(0));
        let counted = checks.clone();
        let recheck = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };
        let got: Vec<_> = rechecked(chunks(3 * CHUNK + 1), recheck)
            .map(|item| item.map(|c| (c.offset, c.data.len())).map_err(|s| s.code()))
            .collect()
            .await;
        assert_eq!(
            got,
            [
                Ok((0, CHUNK)),
                Ok((CHUNK as u64, CHUNK)),
                Ok((2 * CHUNK as u64, CHUNK)),
                Ok((3 * CHUNK as u64, 1))
            ]
        );
        assert_eq!(checks.load(Ordering::SeqCst), 4);
    }
}
