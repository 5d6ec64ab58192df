//! The gRPC Ledger service: wire ⇄ domain, and the one place that maps
//! domain errors to `tonic::Status`.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::Notify;
use tonic::{Request, Response, Status, Streaming};

use super::access::Guard;
use super::convert::{decision_to_pb, envelope_from_pb};
use super::pb;
use crate::ledger::ReadError;
use crate::service::{AppendError, Receipt, Service};

/// The tonic service over a [`Service`].
#[derive(Clone)]
pub struct LedgerApi {
    svc: Arc<Service>,
    guard: Guard,
    /// Becomes true when the server starts shutting down; following `Tail`
    /// streams end then, so the drain is not held open by them.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Bytes of envelopes all `AppendStream`s together may hold in flight
    /// ([`APPEND_STREAM_BUDGET`]).
    append_budget: Arc<ByteBudget>,
    /// `Tail` streams open at once ([`MAX_TAIL_STREAMS`]).
    tails: Arc<tokio::sync::Semaphore>,
}

/// How many `Tail` streams may be open at once, all clients together. Each
/// holds a task and up to [`TAIL_BACKLOG`] entries its client has not read,
/// within [`TAIL_UNREAD_BYTES`], and a following one stays open.
pub const MAX_TAIL_STREAMS: usize = 64;

/// The status message that ends an `AppendStream` when the server starts
/// shutting down (followed by the first message that was not read).
const SHUTTING_DOWN: &str = "the server is shutting down";

/// Entries a `Tail` stream reads ahead of its client.
const TAIL_BACKLOG: usize = 256;

/// Bytes of entries a `Tail` stream reads ahead of its client, besides the
/// one it has just read: with [`MAX_TAIL_STREAMS`] streams, at most 256 MiB
/// held for clients that do not read, whatever the entries' size.
const TAIL_UNREAD_BYTES: usize = 4 << 20;

/// How many bytes of received, not yet appended envelopes all
/// `AppendStream`s together may hold, besides the one message each stream
/// has read and waits to admit. Up to 256 appends of a stream are in
/// flight, and an envelope may have 8 MiB: without a budget one client
/// could make the server hold 2 GiB. A message waits for its share before
/// the next is read, so a client sending faster than the log appends is
/// slowed by HTTP/2 flow control instead.
pub(crate) const APPEND_STREAM_BUDGET: usize = 64 << 20;

/// A count of bytes in flight with a ceiling, shared by streams. Taking a
/// share is all or nothing: a waiter holds nothing until its whole share is
/// free, so a stream that is no longer polled (its client stopped reading)
/// cannot sit on part of the budget while it waits.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    size: usize,
    used: std::sync::Mutex<usize>,
    freed: Notify,
}

impl ByteBudget {
    pub(crate) fn new(size: usize) -> Arc<Self> {
        Arc::new(ByteBudget {
            size: size.max(1),
            used: std::sync::Mutex::new(0),
            freed: Notify::new(),
        })
    }

    /// Bytes not taken now.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.size
            - *self
                .used
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `want` bytes (at least 1, at most the whole budget) are
    /// free and takes them; they return when the share is dropped.
    pub(crate) async fn take(self: &Arc<Self>, want: usize) -> Share {
        let want = want.clamp(1, self.size);
        loop {
            // Registered before the check, so a release between the check
            // and the wait is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut used = self
                    .used
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if self.size - *used >= want {
                    *used += want;
                    return Share {
                        budget: self.clone(),
                        bytes: want,
                    };
                }
            }
            freed.await;
        }
    }
}

/// Bytes taken from a [`ByteBudget`], given back on drop.
#[derive(Debug)]
pub(crate) struct Share {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Drop for Share {
    fn drop(&mut self) {
        {
            let mut used = self
                .budget
                .used
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *used -= self.bytes;
        }
        self.budget.freed.notify_waiters();
    }
}

/// How many answered, unread responses one `AppendStream` may queue. When
/// they are all taken the stream reads no further message, but the appends
/// already admitted still run to completion and give their budget back.
const RESPONSE_BACKLOG: usize = 1024;

/// How many bytes of answered, unread responses one `AppendStream` may
/// queue, counted as the envelopes they answer (a receipt carries the
/// entry): a client that stops reading pins this much of its own, not a
/// thousand receipts of megabyte entries. Past it the stream reads no
/// further message, as for [`RESPONSE_BACKLOG`].
pub(crate) const UNREAD_REPLY_BUDGET: usize = 16 << 20;

/// Runs `work(sequence number, item)` on each item of `input`, up to
/// `depth` at once and each within the byte budget ([`gate`]), and yields
/// the results in input order. One task drives it apart from whoever reads
/// the results, and an item is admitted only with a place for its result
/// reserved among [`RESPONSE_BACKLOG`] ones and `weight(item)` bytes of
/// this stream's own `unread` bytes, which come back as the reader takes
/// the result. So the driver never waits for the reader: admitted work
/// always finishes and returns its share of the shared budget, even when
/// the client stops reading its responses (and HTTP/2 stops polling the
/// response stream), and what such a client pins is its own backlog.
/// Dropping the stream ends the input; work already admitted still
/// finishes.
pub(crate) fn pipeline<S, T, F, Fut, R>(
    input: S,
    budget: Arc<ByteBudget>,
    unread: usize,
    weight: impl Fn(&T) -> usize + Send + 'static,
    depth: usize,
    work: F,
) -> impl Stream<Item = R>
where
    S: Stream<Item = T> + Send + 'static,
    T: Send + 'static,
    F: Fn(u64, T) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(RESPONSE_BACKLOG);
    let unread = ByteBudget::new(unread);
    // A place for the result and its unread bytes first, then the shared
    // share: the next message is read only when all are there.
    let admitted = input
        .then(move |item| {
            let slots = tx.clone();
            let unread = unread.clone();
            let w = weight(&item);
            async move {
                let slot = slots.reserve_owned().await.ok()?;
                let held = unread.take(w).await;
                Some((slot, held, w, item))
            }
        })
        .take_while(|x| std::future::ready(x.is_some()))
        .filter_map(std::future::ready);
    let results = gate(admitted, budget, |(_, _, w, _): &(_, _, usize, T)| *w)
        .enumerate()
        .map(move |(seq, ((slot, held, _, item), share))| {
            let done = work(seq as u64, item);
            async move {
                let r = done.await;
                drop(share);
                (slot, held, r)
            }
        })
        .buffered(depth);
    tokio::spawn(async move {
        futures::pin_mut!(results);
        while let Some((slot, held, r)) = results.next().await {
            // Reserved: never waits. A reader that went away just drops it.
            slot.send((r, held));
        }
    });
    // The unread bytes come back as the reader takes each result.
    tokio_stream::wrappers::ReceiverStream::new(rx).map(|(r, _held)| r)
}

/// Passes the items of `input` on one at a time, each once its
/// `weight(item)` bytes of `budget` are its own; the share goes with the
/// item. The next item is not read from `input` while one waits.
pub(crate) fn gate<S, T>(
    input: S,
    budget: Arc<ByteBudget>,
    weight: impl Fn(&T) -> usize,
) -> impl Stream<Item = (T, Share)>
where
    S: Stream<Item = T>,
{
    input.then(move |item| {
        let want = weight(&item);
        let budget = budget.clone();
        async move {
            let share = budget.take(want).await;
            (item, share)
        }
    })
}

impl LedgerApi {
    /// Wraps a service; `guard` says which client certificate subjects may
    /// call which method.
    pub fn new(
        svc: Arc<Service>,
        guard: Guard,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        LedgerApi {
            svc,
            guard,
            stopping,
            append_budget: ByteBudget::new(APPEND_STREAM_BUDGET),
            tails: Arc::new(tokio::sync::Semaphore::new(MAX_TAIL_STREAMS)),
        }
    }

    fn authorize<T>(&self, req: &Request<T>, method: &'static str) -> Result<String, Status> {
        self.guard.check(req, method)
    }
}

/// Maps every append error to a status; each variant is decided here.
pub(crate) fn append_status(e: &AppendError) -> Status {
    let msg = super::clip(e.to_string());
    match e {
        AppendError::PayloadType { .. }
        | AppendError::SignatureCount(_)
        | AppendError::InvalidEvent(_)
        | AppendError::FutureTime { .. }
        | AppendError::TooOld { .. }
        | AppendError::GenesisAppend
        | AppendError::IdentityTooLong(_)
        | AppendError::Encode(_) => Status::invalid_argument(msg),
        AppendError::TooLarge { .. } => Status::resource_exhausted(msg),
        AppendError::Auth(_) => Status::unauthenticated(msg),
        AppendError::Rejected(_) => Status::failed_precondition(msg),
        AppendError::Duplicate { .. } => Status::already_exists(msg),
        AppendError::Commit(_) | AppendError::Read(_) => Status::internal(msg),
        AppendError::Stopped => Status::unavailable(msg),
    }
}

fn read_status(e: &ReadError) -> Status {
    match e {
        ReadError::OutOfRange { .. } => Status::out_of_range(e.to_string()),
        ReadError::Store(_) | ReadError::MissingNode { .. } => Status::internal(e.to_string()),
    }
}

fn checkpoint_pb(cp: &crate::ledger::Checkpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        note: cp.note.clone(),
        tree_size: cp.size,
        root_hash: cp.root.to_vec(),
    }
}

fn receipt_pb(r: Receipt) -> pb::Receipt {
    pb::Receipt {
        index: r.index,
        leaf_hash: r.leaf.to_vec(),
        entry: r.entry.as_ref().clone(),
        inclusion_proof: Some(pb::InclusionProof {
            leaf_index: r.index,
            tree_size: r.checkpoint.size,
            hashes: r.proof.iter().map(|h| h.to_vec()).collect(),
        }),
        checkpoint: Some(checkpoint_pb(&r.checkpoint)),
        duplicate: r.duplicate,
        decision: r.decision.map(|d| decision_to_pb(d, Some(r.index))),
    }
}

/// The entry that approved or withdrew a waiting identity change (0 if none).
fn closing_entry(closed: &Option<(u64, crate::event::PrincipalId)>) -> u64 {
    closed.as_ref().map_or(0, |c| c.0)
}

/// Who signed that entry (empty if none).
fn closing_signer(closed: &Option<(u64, crate::event::PrincipalId)>) -> String {
    closed.as_ref().map(|c| c.1.to_string()).unwrap_or_default()
}

/// The wire form of a principal record.
pub(crate) fn principal_state_pb(p: &crate::state::PrincipalRecord) -> pb::PrincipalState {
    pb::PrincipalState {
        id: p.id.to_string(),
        kind: super::convert::principal_kind_pb(p.kind) as i32,
        display_name: p.display_name.clone(),
        roles: p.roles.iter().cloned().collect(),
        keys: p
            .keys
            .iter()
            .map(|k| pb::KeyState {
                public_key: k.key.to_bytes().to_vec(),
                keyid: crate::crypto::KeyId::of(&k.key).to_string(),
                added_at_index: k.added_at,
                revoked_at_index: k.revoked_at.unwrap_or(0),
                revoked: k.revoked_at.is_some(),
            })
            .collect(),
        registered_at_index: p.registered_at,
        emails: p.emails.iter().cloned().collect(),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerApi {
    #[tracing::instrument(skip_all)]
    async fn append(
        &self,
        req: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::Receipt>, Status> {
        let identity = self.authorize(&req, "Append")?;
        let env = req
            .into_inner()
            .envelope
            .ok_or_else(|| Status::invalid_argument("envelope: must be set"))?;
        match self.svc.append(envelope_from_pb(env), identity).await {
            Ok(r) => Ok(Response::new(receipt_pb(r))),
            Err(e) => {
                tracing::info!(cause = %e, "append refused");
                Err(append_status(&e))
            }
        }
    }

    type AppendStreamStream = BoxStream<pb::AppendStreamResponse>;

    #[tracing::instrument(skip_all)]
    async fn append_stream(
        &self,
        req: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let identity = self.authorize(&req, "AppendStream")?;
        let peer = Guard::peer_of(&req);
        let guard = self.guard.clone();
        let svc = self.svc.clone();
        // Nothing after a message that could not be read is appended: the
        // stream ends with that error, and a client that resends from the
        // first message without a receipt appends each event once (a resend
        // of one that made it is answered as a duplicate). Once the server
        // is shutting down, only the messages that have arrived already are
        // read (a client that sent everything and closed its half loses
        // nothing); the stream then ends with UNAVAILABLE at the first
        // message that had not arrived, so a client that keeps its half
        // open does not hold the drain open until its deadline.
        let input = futures::stream::unfold(
            Some((req.into_inner(), self.stopping.clone(), false)),
            |open| async move {
                use futures::FutureExt as _;
                let (mut messages, mut stopping, stopped) = open?;
                let item = if stopped {
                    None
                } else {
                    tokio::select! {
                        biased;
                        // Shutting down (or the server is gone).
                        _ = stopping.wait_for(|s| *s) => None,
                        item = messages.next() => Some(item?),
                    }
                };
                let item = match item {
                    Some(item) => item,
                    // Stopping: what has arrived, or the end.
                    None => match messages.next().now_or_never() {
                        Some(Some(item)) => item,
                        Some(None) => return None,
                        None => return Some((Err(Status::unavailable(SHUTTING_DOWN)), None)),
                    },
                };
                let stopped = stopped || *stopping.borrow();
                let more = item.is_ok().then_some((messages, stopping, stopped));
                Some((item, more))
            },
        );
        // Up to 256 appends of one stream are in flight at once, within the
        // shared byte budget; responses keep request order.
        let weight = |item: &Result<pb::AppendRequest, Status>| {
            item.as_ref().map_or(0, prost::Message::encoded_len)
        };
        let work = move |seq: u64, item: Result<pb::AppendRequest, Status>| {
            let svc = svc.clone();
            let identity = identity.clone();
            let (guard, peer) = (guard.clone(), peer.clone());
            async move {
                // Checked when the append starts, not when the message was
                // read: once the server has reloaded with this certificate
                // revoked, no message of the stream starts an append (one
                // already under way completes, and its receipt comes before
                // the refusal, which ends the stream).
                guard.recheck(peer.as_ref(), "AppendStream")?;
                let result = match item {
                    // Bytes that are no AppendRequest (see api::codec).
                    Err(status)
                        if status.code() == tonic::Code::InvalidArgument
                            && status.message().starts_with(super::codec::UNDECODABLE) =>
                    {
                        return Err(Status::invalid_argument(format!(
                            "message {seq}: {}; nothing after it was read",
                            status.message()
                        )));
                    }
                    Err(status) if status.message() == SHUTTING_DOWN => {
                        return Err(Status::unavailable(format!(
                            "{SHUTTING_DOWN}; message {seq} and those after it were not read: \
                             resend them when the server is back"
                        )));
                    }
                    Err(status) => return Err(status),
                    Ok(pb::AppendRequest { envelope: None }) => {
                        pb::append_stream_response::Result::Error(pb::AppendError {
                            code: tonic::Code::InvalidArgument as i32,
                            message: "envelope: must be set".into(),
                        })
                    }
                    Ok(pb::AppendRequest {
                        envelope: Some(env),
                    }) => match svc.append(envelope_from_pb(env), identity).await {
                        Ok(r) => pb::append_stream_response::Result::Receipt(receipt_pb(r)),
                        Err(e) => {
                            let s = append_status(&e);
                            pb::append_stream_response::Result::Error(pb::AppendError {
                                code: s.code() as i32,
                                message: s.message().to_owned(),
                            })
                        }
                    },
                };
                Ok(pb::AppendStreamResponse {
                    sequence: seq,
                    result: Some(result),
                })
            }
        };
        let out = pipeline(
            input,
            self.append_budget.clone(),
            UNREAD_REPLY_BUDGET,
            weight,
            256,
            work,
        );
        Ok(Response::new(Box::pin(out)))
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::EntryResponse>, Status> {
        self.authorize(&req, "GetEntry")?;
        let index = req.into_inner().index;
        match self.svc.durable_entry(index).map_err(|e| read_status(&e))? {
            Some((entry, leaf)) => Ok(Response::new(pb::EntryResponse {
                index,
                entry,
                leaf_hash: leaf.to_vec(),
            })),
            None => Err(Status::not_found(format!(
                "index: no entry {index}; the log has {} entries",
                self.svc.latest_checkpoint().size
            ))),
        }
    }

    async fn get_checkpoint(
        &self,
        req: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        self.authorize(&req, "GetCheckpoint")?;
        Ok(Response::new(checkpoint_pb(&self.svc.latest_checkpoint())))
    }

    async fn get_inclusion_proof(
        &self,
        req: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        self.authorize(&req, "GetInclusionProof")?;
        let r = req.into_inner();
        let latest = self.svc.latest_checkpoint().size;
        let size = if r.tree_size == 0 {
            latest
        } else {
            r.tree_size
        };
        if size > latest {
            return Err(Status::out_of_range(format!(
                "tree_size: {size} is beyond the latest checkpoint ({latest})"
            )));
        }
        if r.index >= size {
            return Err(Status::out_of_range(format!(
                "index: {} is not below tree_size {size}",
                r.index
            )));
        }
        let hashes = self
            .svc
            .reader()
            .inclusion_proof(r.index, size)
            .map_err(|e| read_status(&e))?;
        Ok(Response::new(pb::InclusionProof {
            leaf_index: r.index,
            tree_size: size,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        req: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        self.authorize(&req, "GetConsistencyProof")?;
        let r = req.into_inner();
        let latest = self.svc.latest_checkpoint().size;
        let new = if r.new_size == 0 { latest } else { r.new_size };
        if new > latest {
            return Err(Status::out_of_range(format!(
                "new_size: {new} is beyond the latest checkpoint ({latest})"
            )));
        }
        if r.old_size == 0 || r.old_size > new {
            return Err(Status::out_of_range(format!(
                "old_size: must be in 1..={new}, got {}",
                r.old_size
            )));
        }
        let hashes = self
            .svc
            .reader()
            .consistency_proof(r.old_size, new)
            .map_err(|e| read_status(&e))?;
        Ok(Response::new(pb::ConsistencyProof {
            old_size: r.old_size,
            new_size: new,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    type TailStream = BoxStream<pb::EntryResponse>;

    async fn tail(
        &self,
        req: Request<pb::TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        self.authorize(&req, "Tail")?;
        let peer = Guard::peer_of(&req);
        let guard = self.guard.clone();
        let permit = self.tails.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_TAIL_STREAMS} Tail streams are open, the most the server keeps at once; retry when one ends"
            ))
        })?;
        let pb::TailRequest { from_index, follow } = req.into_inner();
        let reader = self.svc.reader().clone();
        let mut size_rx = self.svc.size_watch();
        // Past the end is a mistake (a log restored from an older copy, or
        // another log), not a wait: OUT_OF_RANGE, as for the proofs.
        let size = *size_rx.borrow();
        if from_index > size {
            return Err(Status::out_of_range(format!(
                "from_index: {from_index} is beyond the end of the log, which has {size} entries; \
                 give at most {size} ({size} with follow waits for the next entry)"
            )));
        }
        let mut stopping = self.stopping.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(TAIL_BACKLOG);
        let unread = ByteBudget::new(TAIL_UNREAD_BYTES);
        let mut reloads = guard.reloads();
        // Wakes an idle following stream when its certificate expires.
        let expires_in = peer.as_ref().and_then(crate::tls::Peer::expires_in);
        tokio::spawn(async move {
            // Held until the stream's task ends.
            let _permit = permit;
            let mut next = from_index;
            let expiry = async {
                match expires_in {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(expiry);
            let mut expiry_seen = false;
            loop {
                // Nothing more for a certificate revoked, expired or
                // refused Tail since the stream began; checked when the
                // stream wakes for new entries, a reload or the expiry.
                if let Err(refused) = guard.recheck(peer.as_ref(), "Tail") {
                    let _ = tx.send((Err(refused), None)).await;
                    return;
                }
                let size = *size_rx.borrow_and_update();
                let read = |i: u64| match reader.entry(i) {
                    Ok(Some((entry, leaf))) => Ok(pb::EntryResponse {
                        index: i,
                        entry,
                        leaf_hash: leaf.to_vec(),
                    }),
                    Ok(None) => Err(Status::internal(format!("entry {i} is missing"))),
                    Err(e) => Err(read_status(&e)),
                };
                let recheck = || guard.recheck(peer.as_ref(), "Tail");
                if !send_entries(&mut next, size, read, recheck, &unread, &tx).await {
                    return;
                }
                if !follow {
                    return;
                }
                tokio::select! {
                    changed = size_rx.changed() => if changed.is_err() { return },
                    // Shutting down (or the server is gone): end the stream.
                    _ = stopping.wait_for(|s| *s) => return,
                    // The client went away: free its slot now, not at the
                    // next append.
                    () = tx.closed() => return,
                    // The access rules or revocations were reloaded.
                    Some(()) = async {
                        match &mut reloads {
                            Some(r) => r.changed().await.ok(),
                            None => std::future::pending().await,
                        }
                    } => {}
                    () = &mut expiry, if !expiry_seen => expiry_seen = true,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx).map(|(item, _held)| item),
        )))
    }

    async fn get_principal(
        &self,
        req: Request<pb::GetPrincipalRequest>,
    ) -> Result<Response<pb::PrincipalState>, Status> {
        self.authorize(&req, "GetPrincipal")?;
        let id = req.into_inner().id;
        let found = self
            .svc
            .read_durable(|s| s.principal(&id).map(principal_state_pb))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .0;
        let p = found.ok_or_else(|| {
            super::refusal(tonic::Code::NotFound, format!("id: no principal {id:?}"))
        })?;
        Ok(Response::new(p))
    }

    async fn list_principals(
        &self,
        req: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListPrincipalsResponse>, Status> {
        self.authorize(&req, "ListPrincipals")?;
        let clock = self.svc.now_nanos();
        let ((principals, identity_changes), _) = self
            .svc
            .read_durable(|s| {
                (
                    s.principals().map(principal_state_pb).collect(),
                    s.pending_identity_changes()
                        .map(|p| {
                            // Closed changes have no expiry; the fold never
                            // dates an entry before the last one.
                            let open = p.applied.is_none() && p.withdrawn.is_none();
                            let expires = s
                                .identity_change_expiry(p)
                                .map(|(end, _)| end)
                                .filter(|_| open);
                            let now = s.now_from(clock);
                            pb::PendingIdentityChange {
                                entry_index: p.entry,
                                proposer: p.proposer.to_string(),
                                subject: p.subject.to_string(),
                                description: p.describe(),
                                applied: p.applied.is_some(),
                                applied_at_index: closing_entry(&p.applied),
                                approved_by: closing_signer(&p.applied),
                                withdrawn: p.withdrawn.is_some(),
                                withdrawn_at_index: closing_entry(&p.withdrawn),
                                withdrawn_by: closing_signer(&p.withdrawn),
                                expires_at_unix_nanos: expires.unwrap_or(0),
                                expired: expires.is_some_and(|e| now > e),
                            }
                        })
                        .collect(),
                )
            })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::ListPrincipalsResponse {
            principals,
            identity_changes,
        }))
    }

    async fn ping(
        &self,
        req: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        self.authorize(&req, "Ping")?;
        Ok(Response::new(pb::PingResponse {}))
    }
}

/// What a `Tail` stream's task hands its client: an entry (or the error
/// that ends the stream) and the share of the stream's unread bytes it
/// holds until the client takes it.
type TailItem = (Result<pb::EntryResponse, Status>, Option<Share>);

/// Sends entries `*next..size` of a `Tail` stream, each read by `read`,
/// into `tx`, advancing `*next`. An entry first waits for its size in
/// `unread`, which it holds until its client takes it, so a client that
/// does not read holds at most that many bytes (and at most the channel's
/// capacity of entries). `recheck` runs before each entry; a refusal is
/// sent and ends the stream. False when the stream ends: a refusal, a
/// read error (sent), or a client gone.
async fn send_entries(
    next: &mut u64,
    size: u64,
    read: impl Fn(u64) -> Result<pb::EntryResponse, Status>,
    recheck: impl Fn() -> Result<(), Status>,
    unread: &Arc<ByteBudget>,
    tx: &tokio::sync::mpsc::Sender<TailItem>,
) -> bool {
    while *next < size {
        if let Err(refused) = recheck() {
            let _ = tx.send((Err(refused), None)).await;
            return false;
        }
        let item = read(*next);
        let failed = item.is_err();
        let held = match &item {
            Ok(e) => Some(unread.take(e.entry.len()).await),
            Err(_) => None,
        };
        if tx.send((item, held)).await.is_err() || failed {
            return false;
        }
        *next += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;

    use super::*;

    /// Work holds its share of the budget until it finishes, and gives it
    /// back then even when nobody reads the results; an item waiting for
    /// its share holds none of it meanwhile (paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_stream_nobody_reads_holds_no_budget() {
        let budget = ByteBudget::new(10);
        let (release, released) = tokio::sync::watch::channel(false);
        let work = move |seq: u64, w: usize| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                (seq, w)
            }
        };
        let input = futures::stream::iter([4usize, 4, 4]);
        let mut out = Box::pin(pipeline(input, budget.clone(), 1 << 20, |w| *w, 256, work));
        // Without a read, two items are taken in; the third waits for its
        // share, holding none of the 2 bytes left. (The driver runs while
        // the test sleeps on the paused clock.)
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        assert!(out.next().now_or_never().is_none());
        assert_eq!(budget.available(), 2);
        // Another stream can still take what is left.
        drop(budget.take(2).now_or_never().expect("2 bytes were free"));
        // The work finishes; nobody reads.
        release.send(true).unwrap();
        let minute = std::time::Duration::from_secs(60);
        let all = tokio::time::timeout(minute, budget.take(10))
            .await
            .expect("the budget did not come back while the results went unread");
        drop(all);
        let got: Vec<(u64, usize)> = out.collect().await;
        assert_eq!(got, [(0, 4), (1, 4), (2, 4)]);
        assert_eq!(budget.available(), 10);
    }

    /// A stream whose results go unread holds at most its own unread
    /// budget of them: the input is read no further until the reader takes
    /// one, while the shared budget is all given back.
    #[tokio::test(start_paused = true)]
    async fn unread_results_stop_the_input_at_the_streams_own_budget() {
        let budget = ByteBudget::new(100);
        let read = Arc::new(AtomicUsize::new(0));
        let counted = read.clone();
        let input = futures::stream::iter([4usize, 4, 4, 4]).inspect(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let work = |seq: u64, w: usize| async move { (seq, w) };
        let mut out = Box::pin(pipeline(input, budget.clone(), 10, |w| *w, 256, work));
        // Two results (8 of 10 unread bytes) are answered and queued; the
        // third item was read and waits for 4 unread bytes; the fourth is
        // not read. The shared budget is all back.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        assert_eq!(read.load(Ordering::SeqCst), 3);
        assert_eq!(budget.available(), 100);
        // Reading one lets the third in, and then the fourth is read.
        assert_eq!(out.next().await, Some((0, 4)));
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        assert_eq!(read.load(Ordering::SeqCst), 4);
        let rest: Vec<(u64, usize)> = out.collect().await;
        assert_eq!(rest, [(1, 4), (2, 4), (3, 4)]);
        assert_eq!(budget.available(), 100);
    }

    /// Items wait for their share of the budget, the input is not read
    /// further meanwhile, and an item larger than the whole budget still
    /// passes once the budget is free.
    #[tokio::test]
    async fn appends_in_flight_stay_within_the_byte_budget() {
        let budget = ByteBudget::new(10);
        let read = Arc::new(AtomicUsize::new(0));
        let counted = read.clone();
        let input = futures::stream::iter([6usize, 6, 3, 500]).inspect(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let mut gated = Box::pin(gate(input, budget.clone(), |w| *w));
        let (first, s1) = gated.next().await.unwrap();
        assert_eq!((first, budget.available()), (6, 4));
        // 6 more do not fit beside the first: the second waits, and the
        // third is not read.
        assert!(gated.next().now_or_never().is_none());
        assert_eq!(read.load(Ordering::SeqCst), 2);
        assert_eq!(budget.available(), 4);
        drop(s1);
        let (second, s2) = gated.next().await.unwrap();
        let (third, s3) = gated.next().await.unwrap();
        assert_eq!((second, third, budget.available()), (6, 3, 1));
        // 500 is clamped to the whole budget of 10: it waits for all of it.
        drop(s2);
        assert!(gated.next().now_or_never().is_none());
        drop(s3);
        let (fourth, s4) = gated.next().await.unwrap();
        assert_eq!((fourth, budget.available()), (500, 0));
        drop(s4);
        assert!(gated.next().await.is_none());
        assert_eq!(budget.available(), 10);
    }

    /// A `Tail` reply carrying entry `index` of `len` bytes.
    fn entry_of(index: u64, len: usize) -> pb::EntryResponse {
        pb::EntryResponse {
            index,
            entry: vec![7; len],
            leaf_hash: Vec::new(),
        }
    }

    /// A `Tail` client that does not read holds at most the stream's
    /// unread bytes of entries: the task reads one entry past them and
    /// waits, and reads on once the client takes one (paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_tail_nobody_reads_stops_at_its_unread_bytes() {
        let unread = ByteBudget::new(4_500);
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let read = move |i: u64| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(entry_of(i, 1_000))
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(TAIL_BACKLOG);
        let task = {
            let unread = unread.clone();
            tokio::spawn(async move {
                let mut next = 0;
                let more = send_entries(&mut next, 100, read, || Ok(()), &unread, &tx).await;
                (more, next)
            })
        };
        // Four entries (4,000 of 4,500 bytes) wait for the client; the
        // fifth was read and waits for its 1,000 bytes.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 5);
        assert_eq!(unread.available(), 500);
        // Taking one lets the fifth in and the sixth be read.
        let (first, share) = rx.recv().await.expect("an entry");
        assert_eq!(first.expect("read").index, 0);
        drop(share);
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 6);
        assert_eq!(unread.available(), 500);
        // A client that goes away ends the stream.
        drop(rx);
        let (more, next) = task.await.expect("the task ran");
        assert!(!more);
        assert_eq!(
            next, 5,
            "entries after the client left were counted as sent"
        );
    }

    /// A refusal on recheck (a certificate revoked mid-stream) is sent to
    /// the client and ends the stream before the next entry is read.
    #[tokio::test]
    async fn a_tail_refused_on_recheck_sends_the_refusal_and_reads_no_further() {
        let unread = ByteBudget::new(1 << 20);
        let (tx, mut rx) = tokio::sync::mpsc::channel(TAIL_BACKLOG);
        let checks = AtomicUsize::new(0);
        let recheck = || {
            if checks.fetch_add(1, Ordering::SeqCst) < 2 {
                Ok(())
            } else {
                Err(Status::permission_denied("certificate revoked"))
            }
        };
        let read = |i: u64| Ok(entry_of(i, 10));
        let mut next = 0;
        assert!(!send_entries(&mut next, 10, read, recheck, &unread, &tx).await);
        assert_eq!(next, 2);
        drop(tx);
        let mut got = Vec::new();
        while let Some((item, _)) = rx.recv().await {
            got.push(item.map(|e| e.index).map_err(|s| s.code()));
        }
        assert_eq!(got, [Ok(0), Ok(1), Err(tonic::Code::PermissionDenied)]);
    }
}
