//! The running log: admission checks, the single writer thread with group
//! commit, and the read paths. Neither gRPC nor the wire format is known here.

mod writer;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::api::convert::{InvalidEvent, decode_event};
use crate::crypto::{self, NoteSigner};
use crate::event::{Body, Event};
use crate::ledger::{
    Appender, Checkpoint, CommitError, EncodeError, Entry, Envelope, FoldCounts, Hash,
    LedgerReader, MAX_SIGNATURES, ReadError, Staged, Store, StoreError,
};
use crate::state::{
    ApplyError, AuthError, DecisionRecord, NEW_ENTRY_VERIFY_BUDGET, STATE_FORMAT, State,
    StateCodecError,
};

/// Where the service reads the time: integrated times, claimed-time checks,
/// and the "now" of decisions and obligation deadlines.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Unix time in nanoseconds.
    fn now_nanos(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_nanos(&self) -> i64 {
        now_nanos()
    }
}

/// A clock that moves only when told to: tests and simulations of
/// deadlines without waiting for them.
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// A clock reading `nanos`.
    pub fn new(nanos: i64) -> Self {
        ManualClock(std::sync::atomic::AtomicI64::new(nanos))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(
            i64::try_from(by.as_nanos()).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Sets the clock (integrated times still never decrease: the log raises
    /// a time that goes back to the previous entry's).
    pub fn set(&self, nanos: i64) {
        self.0.store(nanos, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Limits applied to every append.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest accepted DSSE payload.
    pub max_payload_bytes: usize,
    /// How far in the future a claimed time may be.
    pub max_clock_skew: Duration,
    /// How far in the past a claimed time may be.
    pub max_event_age: Duration,
    /// Most entries one group commit may take.
    pub max_batch: usize,
    /// The time source.
    pub clock: Arc<dyn Clock>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_payload_bytes: 1 << 20,
            max_clock_skew: Duration::from_secs(300),
            max_event_age: Duration::from_secs(7 * 24 * 3600),
            max_batch: 4096,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    #[error("envelope.payload_type is {got:?}; expected {expected:?}")]
    PayloadType { got: String, expected: &'static str },
    #[error("envelope.payload is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("envelope.signatures: {0}")]
    SignatureCount(String),
    #[error("envelope.payload: invalid event: {0}")]
    InvalidEvent(#[from] InvalidEvent),
    #[error(
        "claimed_time_unix_nanos is {ahead_secs} s in the future; the allowed clock skew is {max_secs} s"
    )]
    FutureTime { ahead_secs: i64, max_secs: u64 },
    #[error("claimed_time_unix_nanos is {behind_secs} s in the past; the limit is {max_secs} s")]
    TooOld { behind_secs: i64, max_secs: u64 },
    #[error("genesis events are created by `docket init`, not appended")]
    GenesisAppend,
    #[error("signature: {0}")]
    Auth(#[from] AuthError),
    #[error("event refused by state rules: {0}")]
    Rejected(#[from] ApplyError),
    #[error("event_id {event_id:?} already names entry {index} with different envelope bytes")]
    Duplicate { event_id: String, index: u64 },
    #[error("transport identity is {0} bytes; at most 65535")]
    IdentityTooLong(usize),
    #[error("entry encoding: {0}")]
    Encode(#[from] EncodeError),
    #[error("storage failure; nothing was appended: {0}")]
    Commit(#[from] CommitError),
    #[error("reading the log: {0}")]
    Read(#[from] ReadError),
    #[error(
        "the log is not accepting appends: the server is shutting down or stopped after a storage failure (see its log)"
    )]
    Stopped,
}

/// The checks of a new entry that depend on the state, stricter than the
/// fold (replay never runs them, so older logs keep what they recorded).
/// `Service::append` runs them before queuing, so that most refusals never
/// reach the writer, and the writer again under the state's write lock just
/// before the entry folds in, so that an entry folded in between (a commit
/// naming the reviewer, a key revoked) cannot slip past them.
pub(crate) fn check_against_state(st: &State, event: &Event) -> Result<(), AppendError> {
    match &event.body {
        // Under the built-in default nothing is authorized, break-glass
        // included: its review would need a second admin the default never
        // names. A log that recorded one before keeps it (allowed, reviewed).
        Body::DeployRequested(d) if d.break_glass && st.builtin_policy_in_force() => {
            Err(ApplyError::BuiltinBreakGlass.into())
        }
        Body::PolicyApproved { proposal_id } => st
            .check_policy_approval(&event.signer, proposal_id.as_str())
            .map_err(Into::into),
        Body::BreakGlassReviewed(r) => {
            match st.break_glass_reviewer_conflict(event.signer.as_str(), r.deployment_index) {
                Some(why) => Err(ApplyError::InvolvedReviewer {
                    deployment: r.deployment_index,
                    why,
                }
                .into()),
                None => Ok(()),
            }
        }
        body => st
            .check_new_identity(body)
            .map_err(|(field, reason)| InvalidEvent { field, reason }.into()),
    }
}

/// An envelope that passed [`Service::check_append`], for
/// [`Service::commit_append`] to queue.
pub struct CheckedAppend(Checked);

// Nearly every append is the large variant; boxing it would add an
// allocation to each.
#[allow(clippy::large_enum_variant)]
enum Checked {
    /// A retry of an entry already durable: its original receipt.
    Durable(Receipt),
    Queue {
        envelope: Envelope,
        event: Event,
        key: ed25519_dalek::VerifyingKey,
        keys_seen: usize,
        identity: String,
    },
}

/// A complete offline proof that an entry is in the log.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub index: u64,
    pub leaf: Hash,
    pub entry: Arc<Vec<u8>>,
    pub proof: Vec<Hash>,
    pub checkpoint: Arc<Checkpoint>,
    /// The envelope was already in the log; this is its original entry.
    pub duplicate: bool,
    /// For a DeployRequested entry, the decision recorded with it.
    pub decision: Option<DecisionRecord>,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("state tree: {0}")]
    State(#[from] StateCodecError),
    #[error("entry {index}: {reason}")]
    Replay { index: u64, reason: String },
    #[error("the log is empty; run `docket init` first")]
    Empty,
    #[error("state has folded {state} entries but the log holds only {log}")]
    StateAhead { state: u64, log: u64 },
    #[error("the log key on disk does not match the key named by genesis")]
    WrongLogKey,
    #[error(
        "the store's published mark (file {file} in the store's directory) records a checkpoint of tree size {size} that was handed out, but {reason}; the store recovered less than it had made durable (a damaged or truncated file?). Start from a backup taken after that checkpoint; `docket verify` names the same failure",
        file = crate::ledger::PUBLISHED_MARK_FILE
    )]
    PublishedMark { size: u64, reason: String },
}

/// The service stopped answering: shutting down, or stopped after a storage
/// failure, so facts in the state may never become durable.
#[derive(Debug, thiserror::Error)]
#[error(
    "the log is not durable past its last flush (shutting down, or stopped after a storage failure); no decision is given on facts that might be lost"
)]
pub struct Stopped;

pub(crate) struct WriteRequest {
    envelope: Envelope,
    event: Event,
    key: ed25519_dalek::VerifyingKey,
    /// How many keys the signer had (active and revoked) when `key` was
    /// found: keys are only ever added, so another count at the write
    /// means a key came in between and the writer authenticates again.
    keys_seen: usize,
    identity: String,
    reply: oneshot::Sender<Result<Committed, AppendError>>,
}

/// What the writer thread is asked to do.
// Nearly every job is an append; boxing it to shrink the rare manifest job
// would add an allocation to every append for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Job {
    Append(WriteRequest),
    /// Sign an evidence manifest digest with the log key.
    SignManifest {
        digest: Hash,
        reply: oneshot::Sender<String>,
    },
}

pub(crate) enum Committed {
    /// Appended now; durable under `checkpoint`.
    New {
        staged: Staged,
        checkpoint: Arc<Checkpoint>,
    },
    /// An identical envelope is durable at this index.
    Duplicate(u64),
}

/// The log service.
pub struct Service {
    config: Config,
    reader: LedgerReader<dyn Store>,
    state: Arc<RwLock<State>>,
    tx: mpsc::Sender<Job>,
    size: watch::Receiver<u64>,
    latest: Arc<RwLock<Arc<Checkpoint>>>,
    origin: String,
    verifier: crypto::NoteVerifier,
    /// Writer and flusher, joined on drop so that once a `Service` is gone
    /// its store is closed.
    threads: Vec<std::thread::JoinHandle<()>>,
    /// See [`Service::observe_exports`].
    export_observer: std::sync::OnceLock<ExportObserver>,
}

/// Called with each evidence export's progress as the export starts.
type ExportObserver = Box<dyn Fn(&Arc<crate::evidence::Progress>) + Send + Sync>;

impl Drop for Service {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop after its current batch.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        for h in self.threads.drain(..) {
            if h.join().is_err() {
                tracing::error!("a writer thread panicked");
            }
        }
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Folds entries `[state.next_index(), size)` into `state`: start-up catch-up
/// after a crash between the log write and the state write, a rebuild of
/// state written by another format, and `rebuild`. Every signature is
/// checked again, on the other cores while this thread folds (as `docket
/// verify` does); the first failure by index is returned, a bad signature
/// before a rule at the same index. After a failure `state` holds entries
/// past it and must be dropped.
pub fn fold_entries<S: Store + ?Sized>(
    reader: &LedgerReader<S>,
    state: &mut State,
    size: u64,
) -> Result<(), OpenError> {
    let from = state.next_index();
    if from >= size {
        return Ok(());
    }
    let (folded, bad) = crate::verify::with_signature_threads(|sink| {
        for index in from..size {
            let (bytes, _) = reader.entry(index)?.ok_or(OpenError::Replay {
                index,
                reason: "missing".into(),
            })?;
            let replay = |reason: String| OpenError::Replay { index, reason };
            let entry = Entry::decode(&bytes).map_err(|e| replay(e.to_string()))?;
            let event = decode_event(&entry.envelope.payload).map_err(|e| replay(e.to_string()))?;
            // The key the live fold found by checking the signature; the
            // check itself is the signature threads'.
            let keys = state
                .signer_keys(&event)
                .map_err(|e| replay(e.to_string()))?;
            let key = keys
                .key_for_fold(&entry.envelope, &event.body)
                .map_err(|e| replay(e.to_string()))?;
            sink(crate::verify::SigJob {
                index,
                keys,
                envelope: entry.envelope,
            });
            state
                .apply(index, entry.integrated_time_nanos, &event, &key)
                .map_err(|e| replay(e.to_string()))?;
        }
        Ok(())
    });
    let bad = bad.map(|(index, reason)| OpenError::Replay { index, reason });
    match (folded, bad) {
        (Ok(()), None) => Ok(()),
        (Ok(()), Some(b)) => Err(b),
        (Err(e), None) => Err(e),
        (Err(e), Some(b)) => match (&e, &b) {
            (OpenError::Replay { index: at, .. }, OpenError::Replay { index: bad_at, .. })
                if at < bad_at =>
            {
                Err(e)
            }
            _ => Err(b),
        },
    }
}

/// The persisted state, or `None` when it must be rebuilt from the log: it
/// is of another format, or does not load (it is derived data, so a damaged
/// state tree costs a replay, never the log).
fn load_state<S: Store + ?Sized>(reader: &LedgerReader<S>) -> Result<Option<State>, OpenError> {
    let pairs = reader.store().state_pairs()?;
    if pairs.is_empty() {
        return Ok(Some(State::new()));
    }
    let format = State::stored_format(&pairs);
    if format != Some(STATE_FORMAT) {
        tracing::info!(found = ?format, expected = STATE_FORMAT, "state tree has another format; rebuilding it from the log");
        return Ok(None);
    }
    match State::load(pairs) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            tracing::warn!(cause = %e, "state tree does not load; rebuilding it from the log");
            Ok(None)
        }
    }
}

/// The state of a log opened offline: the persisted state if it is of this
/// format and covers the whole log, else the fold of the log from genesis.
pub fn current_state<S: Store + ?Sized>(reader: &LedgerReader<S>) -> Result<State, OpenError> {
    let size = reader.size()?;
    let mut state = load_state(reader)?.unwrap_or_default();
    if state.next_index() > size {
        return Err(OpenError::StateAhead {
            state: state.next_index(),
            log: size,
        });
    }
    fold_entries(reader, &mut state, size)?;
    Ok(state)
}

impl Service {
    /// Creates a new log in `store` whose entry 0 is `genesis` (already signed).
    pub fn create_log<S: Store>(
        store: &Arc<S>,
        signer: NoteSigner,
        genesis: Envelope,
    ) -> Result<(), AppendError> {
        let event = decode_event(&genesis.payload)?;
        crate::api::known::check_known_fields(&genesis.payload)?;
        let Body::Genesis(g) = &event.body else {
            return Err(ApplyError::FirstNotGenesis(event.body.kind_name()).into());
        };
        if let Some(text) = &g.policy {
            crate::policy::Policy::parse_new(text).map_err(|e| InvalidEvent {
                field: "genesis.policy".into(),
                reason: e.to_string(),
            })?;
        }
        let origin = g.origin.clone();
        let mut state = State::new();
        let key = state.authenticate(&genesis, &event)?;
        let mut appender = Appender::open(store.clone(), signer, &origin)?;
        if appender.next_index() != 0 {
            return Err(ApplyError::GenesisNotFirst.into());
        }
        let now = appender.time_for(now_nanos());
        state.apply(0, now, &event, &key)?;
        let mut batch = appender.begin();
        let counts = FoldCounts {
            history_count: state.history_count(),
            basis: Vec::new(),
        };
        appender.stage(
            &mut batch,
            "docket-init",
            genesis,
            &event.event_id,
            now,
            counts,
        )?;
        let heads = state.gov().heads();
        appender.commit(batch, state.take_changes(), heads)?;
        Ok(())
    }

    /// Opens an existing log and starts its writer thread.
    pub fn open<S: Store>(
        store: Arc<S>,
        signer: NoteSigner,
        config: Config,
    ) -> Result<Service, OpenError> {
        let store: Arc<dyn Store> = store;
        let reader = LedgerReader::new(store.clone());
        let size = reader.size()?;
        if size == 0 {
            return Err(OpenError::Empty);
        }
        // A store that recovered a shorter log than was published (a
        // damaged or truncated file) must not go on: it would hand out the
        // lost indices again, and receipts already given would not verify.
        // Checked before anything is written to it.
        if let Some((size, reason)) = reader.published_mark_problem(&signer.verifier())? {
            return Err(OpenError::PublishedMark { size, reason });
        }
        let mut state = match load_state(&reader)? {
            Some(s) => s,
            None => {
                // Written by another version of the fold, or unreadable:
                // the state is derived data, so derive it again.
                let mut rebuilt = State::new();
                fold_entries(&reader, &mut rebuilt, size)?;
                store.replace_state(rebuilt.take_changes())?;
                rebuilt
            }
        };
        if state.next_index() > size {
            return Err(OpenError::StateAhead {
                state: state.next_index(),
                log: size,
            });
        }
        if state.next_index() < size {
            tracing::info!(
                from = state.next_index(),
                to = size,
                "folding entries missing from state"
            );
            fold_entries(&reader, &mut state, size)?;
            store.write(crate::ledger::WriteBatch {
                log: Vec::new(),
                state: state.take_changes(),
            })?;
            store.flush()?;
        }
        let genesis = state.genesis().cloned().ok_or(OpenError::Empty)?;
        if genesis.log_key != *signer.verifier().key() {
            return Err(OpenError::WrongLogKey);
        }
        let verifier = signer.verifier();
        let appender = Appender::open(store.clone(), signer, &genesis.origin)?;
        let latest = match reader.latest_checkpoint_note()? {
            Some((s, note)) if s == size => Checkpoint::verify(&note, &verifier, &genesis.origin)
                .map_err(|e| OpenError::Replay {
                index: size,
                reason: format!("latest checkpoint: {e}"),
            })?,
            _ => appender.sign_current(state.gov().heads()),
        };
        let latest = Arc::new(RwLock::new(Arc::new(latest)));
        let state = Arc::new(RwLock::new(state));
        let (tx, rx) = mpsc::channel(config.max_batch * 2);
        let (size_tx, size_rx) = watch::channel(size);
        let w = writer::Writer {
            appender,
            state: state.clone(),
            max_batch: config.max_batch,
            clock: config.clock.clone(),
        };
        let f = writer::Flusher {
            store: store.clone(),
            latest: latest.clone(),
            size: size_tx,
        };
        let writer = std::thread::Builder::new()
            .name("docket-writer".into())
            .spawn(move || w.run(rx, f))
            .map_err(|e| OpenError::Replay {
                index: size,
                reason: format!("spawning the writer: {e}"),
            })?;
        Ok(Service {
            config,
            reader,
            state,
            tx,
            size: size_rx,
            latest,
            origin: genesis.origin,
            verifier,
            threads: vec![writer],
            export_observer: std::sync::OnceLock::new(),
        })
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The checkpoint verifier of this log.
    pub fn verifier(&self) -> &crypto::NoteVerifier {
        &self.verifier
    }

    /// A durable entry's bytes and leaf hash. Entries written but not yet
    /// flushed are not visible here.
    pub fn durable_entry(&self, index: u64) -> Result<Option<(Vec<u8>, Hash)>, ReadError> {
        if index >= self.latest_checkpoint().size {
            return Ok(None);
        }
        self.reader.entry(index)
    }

    /// Read access to the log (including written, not yet durable entries).
    pub fn reader(&self) -> &LedgerReader<dyn Store> {
        &self.reader
    }

    /// A watch of the durable log size.
    pub fn size_watch(&self) -> watch::Receiver<u64> {
        self.size.clone()
    }

    /// The latest signed checkpoint.
    pub fn latest_checkpoint(&self) -> Arc<Checkpoint> {
        // The lock is only held for pointer copies; poisoning needs a panic there.
        self.latest
            .read()
            .expect("checkpoint lock poisoned")
            .clone()
    }

    /// Runs `f` over the current state. The state may include entries that
    /// are written but not yet durable; answers that others act on use
    /// [`Service::read_durable`].
    ///
    /// Panics if the writer panicked while folding; the service's own
    /// readers use [`Service::try_state`], which answers [`Stopped`] then.
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        self.try_state(f).expect("state lock poisoned")
    }

    /// Runs `f` over the current state, unless the writer panicked while
    /// folding (the state may hold half an event, and the writer stopped).
    fn try_state<R>(&self, f: impl FnOnce(&State) -> R) -> Result<R, Stopped> {
        Ok(f(&*self.state.read().map_err(|_| Stopped)?))
    }

    /// Resolves once the writer has stopped: after a storage failure or a
    /// panic while folding (never while the service lives otherwise). No
    /// append succeeds and no durable read answers after that; a server
    /// should exit so that a restart recovers the durable prefix.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut size = self.size.clone();
        async move { while size.changed().await.is_ok() {} }
    }

    /// Runs `f` over the current state and returns its result once every
    /// entry that state folded in is durable, so no answer rests on a fact a
    /// crash could still take back. Fails if the log stops before that.
    pub async fn read_durable<R>(&self, f: impl FnOnce(&State) -> R) -> Result<(R, u64), Stopped> {
        let (r, applied) = self.try_state(|s| (f(s), s.next_index()))?;
        let mut size = self.size.clone();
        size.wait_for(|s| *s >= applied)
            .await
            .map_err(|_| Stopped)?;
        Ok((r, applied))
    }

    /// Unix nanoseconds on the service's clock.
    pub fn now_nanos(&self) -> i64 {
        self.config.clock.now_nanos()
    }

    /// Checks and appends one envelope; returns once it is durable.
    pub async fn append(
        &self,
        envelope: Envelope,
        identity: String,
    ) -> Result<Receipt, AppendError> {
        let checked = self.check_append(envelope, identity).await?;
        self.commit_append(checked).await
    }

    /// The checks [`Service::append`] makes before it queues an envelope for
    /// the writer: shape, signature against the signer's keys, the state's
    /// rules as they stand now. Other appends may land before
    /// [`Service::commit_append`] queues it; the writer checks it again
    /// against the state it is written into (keys added or revoked meanwhile
    /// included), so what is written is what replay derives.
    pub async fn check_append(
        &self,
        envelope: Envelope,
        identity: String,
    ) -> Result<CheckedAppend, AppendError> {
        if envelope.payload_type != crypto::PAYLOAD_TYPE {
            return Err(AppendError::PayloadType {
                got: envelope.payload_type,
                expected: crypto::PAYLOAD_TYPE,
            });
        }
        if envelope.payload.len() > self.config.max_payload_bytes {
            return Err(AppendError::TooLarge {
                size: envelope.payload.len(),
                max: self.config.max_payload_bytes,
            });
        }
        let n = envelope.signatures.len();
        if n == 0 || n > MAX_SIGNATURES {
            return Err(AppendError::SignatureCount(format!(
                "{n} given; 1..={MAX_SIGNATURES} required"
            )));
        }
        for (i, s) in envelope.signatures.iter().enumerate() {
            for (field, len, max) in [("keyid", s.keyid.len(), 256), ("sig", s.sig.len(), 1024)] {
                if len > max {
                    return Err(AppendError::SignatureCount(format!(
                        "[{i}].{field} is {len} bytes; at most {max}"
                    )));
                }
            }
        }
        if identity.len() > u16::MAX as usize {
            return Err(AppendError::IdentityTooLong(identity.len()));
        }
        let event = decode_event(&envelope.payload)?;
        // A retry of an envelope already in the log gets its original receipt
        // whatever its age, without another signature check (the bytes are
        // the ones that were checked); the writer repeats this check atomically.
        if let Some((index, digest)) = self.reader.event(&event.event_id)? {
            if digest != envelope.digest() {
                return Err(AppendError::Duplicate {
                    event_id: event.event_id,
                    index,
                });
            }
            // Written but not yet durable: the writer answers after the flush.
            if index < self.latest_checkpoint().size {
                return Ok(CheckedAppend(Checked::Durable(
                    self.receipt_for(index, true)?,
                )));
            }
        }
        if matches!(event.body, Body::Genesis(_)) {
            return Err(AppendError::GenesisAppend);
        }
        // New entries carry no field this build does not know (replay still
        // skips them in entries recorded before this check).
        crate::api::known::check_known_fields(&envelope.payload)?;
        let now = self.config.clock.now_nanos();
        let skew = self.config.max_clock_skew.as_nanos() as i64;
        let age = self.config.max_event_age.as_nanos() as i64;
        if event.claimed_time_nanos > now.saturating_add(skew) {
            return Err(AppendError::FutureTime {
                ahead_secs: (event.claimed_time_nanos - now) / 1_000_000_000,
                max_secs: self.config.max_clock_skew.as_secs(),
            });
        }
        if event.claimed_time_nanos < now.saturating_sub(age) {
            return Err(AppendError::TooOld {
                behind_secs: (now - event.claimed_time_nanos) / 1_000_000_000,
                max_secs: self.config.max_event_age.as_secs(),
            });
        }
        let signer_keys = self
            .try_state(|s| s.signer_keys(&event))
            .map_err(|_| AppendError::Stopped)??;
        let keys_seen = signer_keys.count();
        let key = signer_keys.authenticate_within(&envelope, NEW_ENTRY_VERIFY_BUDGET)?;
        // Keys declared from now on are canonical encodings (ledger-format
        // §2.4); the decoder still reads others, which older logs may hold.
        let declared: Vec<(&str, &ed25519_dalek::VerifyingKey)> = match &event.body {
            Body::PrincipalRegistered(p) => p
                .keys
                .iter()
                .map(|k| ("principal_registered.principal.public_keys", k))
                .collect(),
            Body::KeyRotated { new_key, .. } => vec![("key_rotated.new_public_key", new_key)],
            _ => Vec::new(),
        };
        for (field, key) in declared {
            crypto::check_canonical(key).map_err(|e| InvalidEvent {
                field: field.into(),
                reason: e.to_string(),
            })?;
        }
        // The costly checks of content (a git signature, a policy document)
        // come after the signature, so only a registered signer can ask for them.
        if let Body::CommitObserved(c) = &event.body {
            let signer = crate::ingest::git::recheck_signer(c).map_err(|reason| InvalidEvent {
                field: "commit_observed.signature".into(),
                reason,
            })?;
            if let Some(key) = signer {
                self.try_state(|st| st.check_commit_signer(&key, &c.signature))
                    .map_err(|_| AppendError::Stopped)?
                    .map_err(|reason| InvalidEvent {
                        field: "commit_observed.signature".into(),
                        reason,
                    })?;
            }
        }
        // Words a reader must find in the record: new entries only (the
        // decoder, which replay uses, keeps its older, weaker checks).
        let blank = |t: &str| t.chars().all(invisible);
        if let Body::DeployRequested(d) = &event.body
            && d.break_glass
            && blank(&d.justification)
        {
            return Err(InvalidEvent {
                field: "deploy_requested.justification".into(),
                reason: "shows nothing but whitespace or invisible characters; a break-glass needs a justification its reviewer can read".into(),
            }
            .into());
        }
        if let Body::BreakGlassReviewed(r) = &event.body
            && !r.justified
            && blank(&r.comment)
        {
            return Err(InvalidEvent {
                field: "break_glass_reviewed.comment".into(),
                reason: "a review that finds a break-glass unjustified must say why".into(),
            }
            .into());
        }
        check_new_names(&event.body)?;
        self.try_state(|st| check_against_state(st, &event))
            .map_err(|_| AppendError::Stopped)??;
        if let Body::PolicyProposed(p) = &event.body {
            // The strict parse's contradiction checks grow with the square of
            // rules and patterns (seconds for a document at every limit):
            // asked only by a principal who may propose policy, and run off
            // the async workers so other calls go on meanwhile.
            self.try_state(|st| {
                st.check_permission(
                    &event.signer,
                    crate::policy::Permission::ProposePolicy,
                    "propose policy",
                )
            })
            .map_err(|_| AppendError::Stopped)??;
            let text = p.text.clone();
            tokio::task::spawn_blocking(move || crate::policy::Policy::parse_new(&text))
                .await
                .map_err(|_| AppendError::Stopped)?
                .map_err(|e| InvalidEvent {
                    field: "policy_proposed.text".into(),
                    reason: e.to_string(),
                })?;
        }
        Ok(CheckedAppend(Checked::Queue {
            envelope,
            event,
            key,
            keys_seen,
            identity,
        }))
    }

    /// Queues an envelope [`Service::check_append`] passed for the writer,
    /// which checks it again against the state it writes it into; returns
    /// once it is durable.
    pub async fn commit_append(&self, checked: CheckedAppend) -> Result<Receipt, AppendError> {
        let (envelope, event, key, keys_seen, identity) = match checked.0 {
            Checked::Durable(receipt) => return Ok(receipt),
            Checked::Queue {
                envelope,
                event,
                key,
                keys_seen,
                identity,
            } => (envelope, event, key, keys_seen, identity),
        };
        // Only a deployment has a decision to return with its receipt.
        let decided = matches!(event.body, Body::DeployRequested(_));
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Append(WriteRequest {
                envelope,
                event,
                key,
                keys_seen,
                identity,
                reply,
            }))
            .await
            .map_err(|_| AppendError::Stopped)?;
        match rx.await.map_err(|_| AppendError::Stopped)?? {
            Committed::New { staged, checkpoint } => {
                let proof = self.reader.inclusion_proof(staged.index, checkpoint.size)?;
                Ok(Receipt {
                    index: staged.index,
                    leaf: staged.leaf,
                    entry: staged.entry,
                    proof,
                    checkpoint,
                    duplicate: false,
                    decision: if decided {
                        self.decision_at(staged.index)
                            .map_err(|_| AppendError::Stopped)?
                    } else {
                        None
                    },
                })
            }
            Committed::Duplicate(index) => self.receipt_for(index, true),
        }
    }

    /// The receipt a durable entry got when it was appended: proven against
    /// the first checkpoint signed after it.
    pub fn receipt_for(&self, index: u64, duplicate: bool) -> Result<Receipt, AppendError> {
        let missing = || ReadError::OutOfRange {
            index,
            size: self.latest_checkpoint().size,
        };
        let (entry, leaf) = self.reader.entry(index)?.ok_or_else(missing)?;
        let (size, note) = self
            .reader
            .checkpoint_covering(index)?
            .ok_or_else(missing)?;
        let checkpoint = Checkpoint::verify(&note, &self.verifier, &self.origin).map_err(|e| {
            AppendError::Read(ReadError::Store(StoreError::Corrupt {
                what: "checkpoint",
                key: format!("size {size}: {e}"),
            }))
        })?;
        let proof = self.reader.inclusion_proof(index, size)?;
        Ok(Receipt {
            index,
            leaf,
            entry: Arc::new(entry),
            proof,
            checkpoint: Arc::new(checkpoint),
            duplicate,
            decision: self.decision_at(index).map_err(|_| AppendError::Stopped)?,
        })
    }

    /// Signs an evidence manifest digest with the log key, on the writer
    /// thread that holds it (the key never leaves it).
    pub async fn sign_manifest(&self, digest: Hash) -> Result<String, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::SignManifest { digest, reply })
            .await
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Has `f` called with the progress of every export from now on (once
    /// per service; later calls are ignored): a seam for tests that hold an
    /// export mid-way, as a gRPC client's export is when it goes away.
    #[doc(hidden)]
    pub fn observe_exports(
        &self,
        f: impl Fn(&Arc<crate::evidence::Progress>) + Send + Sync + 'static,
    ) {
        let _ = self.export_observer.set(Box::new(f));
    }

    /// Builds an evidence bundle for `scope` over the latest durable state:
    /// selection under the state's read lock, reading and rendering on a
    /// blocking thread, the manifest signed by the writer thread.
    pub async fn export_evidence(
        self: &Arc<Self>,
        scope: crate::evidence::Scope,
    ) -> Result<Vec<u8>, crate::evidence::ExportError> {
        self.export_evidence_with(scope, Arc::default()).await
    }

    /// [`Service::export_evidence`], reporting its stages into `progress`.
    /// Dropping the future cancels the work it started on other threads.
    pub async fn export_evidence_with(
        self: &Arc<Self>,
        scope: crate::evidence::Scope,
        progress: Arc<crate::evidence::Progress>,
    ) -> Result<Vec<u8>, crate::evidence::ExportError> {
        self.export_evidence_since(scope, None, progress).await
    }

    /// [`Service::export_evidence_with`], and with `since` (an earlier
    /// checkpoint note of this log) the bundle carries the consistency
    /// proof from it.
    pub async fn export_evidence_since(
        self: &Arc<Self>,
        scope: crate::evidence::Scope,
        since: Option<String>,
        progress: Arc<crate::evidence::Progress>,
    ) -> Result<Vec<u8>, crate::evidence::ExportError> {
        use crate::evidence::{
            CancelOnDrop, ExportError, Plan, Stage, export, parse_since, seal, seeds, select_with,
        };
        let since = since
            .map(|n| parse_since(&n, &self.verifier, &self.origin))
            .transpose()?;
        if let Some(observe) = self.export_observer.get() {
            observe(&progress);
        }
        let stop_if_dropped = CancelOnDrop::new(progress.clone());
        let result = async {
            let stopped = |e: Stopped| ExportError::Sign(e.to_string());
            let joined = |e: tokio::task::JoinError| ExportError::Sign(e.to_string());
            // The log size to export: everything below it is durable.
            let (plan, _) = self
                .read_durable(|s| Plan::of(s, &scope))
                .await
                .map_err(stopped)?;
            let plan = plan?;
            let size = plan.size();
            // Reading and decoding entries needs no lock.
            let (reader, scope2, p) = (self.reader.clone(), scope.clone(), progress.clone());
            let seeds = tokio::task::spawn_blocking(move || seeds(&reader, &plan, &scope2, &p))
                .await
                .map_err(joined)??;
            // The closure needs the state, briefly.
            let (selection, _) = self
                .read_durable(|s| select_with(s, seeds, &scope))
                .await
                .map_err(stopped)?;
            let selection = selection?;
            let note = self
                .reader
                .checkpoint_note(size)?
                .ok_or(ExportError::NoCheckpoint(size))?;
            let cp = Checkpoint::verify(&note, &self.verifier, &self.origin).map_err(|e| {
                ExportError::Sign(format!("stored checkpoint for size {size}: {e}"))
            })?;
            let (reader, scope2, p) = (self.reader.clone(), scope.clone(), progress.clone());
            let unsigned = tokio::task::spawn_blocking(move || {
                export(&reader, &cp, &selection, &scope2, since.as_ref(), &p)
            })
            .await
            .map_err(joined)??;
            progress.start(Stage::Signing, 1);
            let note = self
                .sign_manifest(unsigned.digest())
                .await
                .map_err(stopped)?;
            let key = self.verifier.clone();
            tokio::task::spawn_blocking(move || seal(unsigned, note, &key, &progress))
                .await
                .map_err(joined)?
        }
        .await;
        // Finished, well or not: nothing left to cancel.
        stop_if_dropped.defuse();
        result
    }

    /// The decision recorded with the DeployRequested entry at `index`.
    pub fn decision_at(&self, index: u64) -> Result<Option<DecisionRecord>, Stopped> {
        self.try_state(|s| s.gov().deployment(index).map(|d| d.decision.clone()))
    }
}

/// Whitespace, or a character that shows nothing or is escaped on display
/// (`event::hidden`: control characters, zero-width and other
/// default-ignorable characters).
fn invisible(c: char) -> bool {
    c.is_whitespace() || crate::event::hidden(c)
}

/// For a new entry only (the decoder, which replay shares, reads what older
/// logs hold): the names rules and facts are compared by (environments,
/// actions, repositories, kinds, namespaces) hold no character that shows
/// as nothing, since "pr\u{34F}od" looks like "prod" but never matches it;
/// and a change's repository, free text in the format, is a name too (no
/// whitespace), as commits, CI runs and rules carry it.
fn check_new_names(body: &Body) -> Result<(), InvalidEvent> {
    fn listed<'a>(
        names: &mut Vec<(String, &'a str)>,
        field: &str,
        set: &'a std::collections::BTreeSet<String>,
    ) {
        // Without an index: the set is sorted, not in the wire's order.
        for n in set {
            names.push((field.to_owned(), n));
        }
    }
    let mut names: Vec<(String, &str)> = Vec::new();
    match body {
        Body::CommitObserved(c) => names.push(("commit_observed.repository".into(), &c.repository)),
        Body::CiRunReported(r) => names.push(("ci_run_reported.repository".into(), &r.repository)),
        Body::ChangeOpened(c) => {
            if c.repository.chars().any(char::is_whitespace) {
                return Err(InvalidEvent {
                    field: "change_opened.repository".into(),
                    reason: format!(
                        "{:?} contains whitespace; a repository is a name such as github.com/acme/payments",
                        c.repository
                    ),
                });
            }
            names.push(("change_opened.repository".into(), &c.repository));
            listed(&mut names, "change_opened.environments", &c.environments);
        }
        Body::ChangeAmended(c) => {
            listed(&mut names, "change_amended.environments", &c.environments)
        }
        Body::DeployRequested(d) => {
            names.push(("deploy_requested.action".into(), &d.action));
            names.push(("deploy_requested.environment".into(), &d.environment));
            for (field, v) in [
                ("deploy_requested.repository", &d.repository),
                ("deploy_requested.kind", &d.kind),
                ("deploy_requested.namespace", &d.namespace),
            ] {
                if let Some(v) = v {
                    names.push((field.into(), v));
                }
            }
        }
        _ => {}
    }
    for (field, name) in names {
        if let Some(c) = name.chars().find(|c| crate::event::hidden(*c)) {
            let shown: String = name
                .chars()
                .map(|c| match crate::event::hidden(c) {
                    true => format!("[U+{:04X}]", c as u32),
                    false => c.to_string(),
                })
                .collect();
            return Err(InvalidEvent {
                field,
                reason: format!(
                    "\"{shown}\" contains U+{:04X}, a character that shows as nothing: the name would look like another and never match it",
                    c as u32
                ),
            });
        }
    }
    Ok(())
}
