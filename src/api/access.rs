//! Which transport identities (client certificate subjects) may call which
//! RPC of `docket.v1.Ledger` and `docket.v1.Governance`. Loaded from
//! `<data>/access.json`; checked by [`GuardLayer`] on each call's headers,
//! before its message is read, and again by [`Guard::check`], which every
//! handler of both services calls first.
//!
//! ```json
//! { "identities": { "CN=docket-admin": ["*"], "CN=siem": ["Tail", "GetCheckpoint"] } }
//! ```
//! An identity not listed may call none of these; `"*"` means every method.
//! The standard gRPC health and reflection services answer any identity
//! whose certificate the client CA signed. A certificate whose serial is
//! revoked (`<data>/tls/revoked.json`) or whose validity has ended may call
//! nothing at all, health and reflection included, even on a connection
//! opened before, and a stream it opened before ends (`Guard::recheck` for
//! ours, [`GuardLayer`]'s rechecked bodies for health and reflection). The
//! server re-reads both on SIGHUP (`Reloader`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, RwLock};

use tonic::Status;

/// Every method of `docket.v1.Ledger` and `docket.v1.Governance`, as named
/// in `access.json` (method names are unique across the two services).
pub const METHODS: &[&str] = &[
    "Append",
    "AppendStream",
    "GetEntry",
    "GetCheckpoint",
    "GetInclusionProof",
    "GetConsistencyProof",
    "Tail",
    "GetPrincipal",
    "ListPrincipals",
    "Ping",
    "Authorize",
    "GetDecision",
    "GetChange",
    "GetPolicy",
    "ListObligations",
    "ListViolations",
    "ExportEvidence",
];

/// What the guard checks a call against: `access.json` and the serials of
/// revoked client certificates. Replaced as a whole by a reload.
#[derive(Clone, Debug, Default)]
pub struct AccessState {
    pub policy: AccessPolicy,
    /// Lower-case hex serials ([`crate::tls::pki::revoked_serials`]).
    pub revoked: BTreeSet<String>,
}

/// Where the guard finds the current [`AccessState`]; a reload replaces it
/// and tells long-lived streams, which check their caller again.
#[derive(Debug)]
pub struct AccessCell {
    state: RwLock<Arc<AccessState>>,
    reloads: tokio::sync::watch::Sender<u64>,
}

impl AccessCell {
    pub fn new(state: AccessState) -> Self {
        AccessCell {
            state: RwLock::new(Arc::new(state)),
            reloads: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The rules in force.
    pub fn get(&self) -> Arc<AccessState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `state` in force and wakes the streams that watch for it.
    pub fn replace(&self, state: AccessState) {
        *self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(state);
        self.reloads.send_modify(|n| *n += 1);
    }
}

/// Shared by the guard and the server's reloader.
pub type AccessSlot = Arc<AccessCell>;

/// The one place where transport identities are checked.
#[derive(Clone, Debug)]
pub struct Guard {
    /// `None` only for a dangerous plaintext server, where there is no
    /// transport identity to check.
    access: Option<AccessSlot>,
}

impl Guard {
    /// Checks client certificates against `access` (no revocations).
    pub fn new(access: AccessPolicy) -> Self {
        Self::shared(Arc::new(AccessCell::new(AccessState {
            policy: access,
            revoked: BTreeSet::new(),
        })))
    }

    /// Checks client certificates against whatever `slot` holds at each call.
    pub fn shared(slot: AccessSlot) -> Self {
        Guard { access: Some(slot) }
    }

    /// No TLS: every call is allowed and the identity is `dangerous-plaintext`.
    pub fn dangerous_plaintext() -> Self {
        Guard { access: None }
    }

    /// The caller's transport identity, if it may call `method`; every
    /// handler calls this first.
    pub fn check<T>(
        &self,
        req: &tonic::Request<T>,
        method: &'static str,
    ) -> Result<String, tonic::Status> {
        // Read once per connection, when its handshake completed.
        self.check_now(req.extensions().get::<crate::tls::Peer>(), method)
    }

    /// [`Guard::check`] of `peer` against the rules in force now.
    fn check_now(
        &self,
        peer: Option<&crate::tls::Peer>,
        method: &'static str,
    ) -> Result<String, Status> {
        let Some(slot) = &self.access else {
            return Ok("dangerous-plaintext".into());
        };
        let peer = peer
            .ok_or_else(|| Status::unauthenticated("no client certificate on this connection"))?;
        Self::check_peer(
            &slot.get(),
            peer,
            method,
            jiff::Timestamp::now().as_second(),
        )
    }

    /// The peer of a request, for [`Guard::recheck`] on a long-lived stream.
    pub fn peer_of<T>(req: &tonic::Request<T>) -> Option<crate::tls::Peer> {
        req.extensions().get::<crate::tls::Peer>().cloned()
    }

    /// Checks again, against the rules in force now, a caller that
    /// [`Guard::check`] let in when its stream began: a stream (AppendStream,
    /// Tail) ends once its certificate is revoked or expires, or its method
    /// is taken away, instead of running for as long as the client keeps it.
    pub fn recheck(
        &self,
        peer: Option<&crate::tls::Peer>,
        method: &'static str,
    ) -> Result<(), Status> {
        self.check_now(peer, method).map(drop)
    }

    /// Changes when the access rules are reloaded; `None` without TLS.
    pub fn reloads(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.access.as_ref().map(|c| c.reloads.subscribe())
    }

    /// [`Guard::check`] for a given peer at `now` (Unix seconds).
    pub fn check_peer(
        access: &AccessState,
        peer: &crate::tls::Peer,
        method: &'static str,
        now: i64,
    ) -> Result<String, Status> {
        let identity = Self::check_certificate(access, peer, method, now)?;
        if !access.policy.permits(identity, method) {
            tracing::warn!(%identity, method, "call refused by access.json");
            return Err(Status::permission_denied(format!(
                "transport identity {identity:?} may not call {method} \
                 (see access.json in the server's data directory)"
            )));
        }
        Ok(identity.to_owned())
    }

    /// For the services that are not ours (gRPC health, reflection), which
    /// any identity may call: that the caller's certificate, checked at the
    /// handshake, is still neither expired nor revoked. `path`: the call's.
    pub fn check_certificate_now(
        &self,
        peer: Option<&crate::tls::Peer>,
        path: &str,
    ) -> Result<(), Status> {
        let Some(slot) = &self.access else {
            return Ok(());
        };
        let peer = peer
            .ok_or_else(|| Status::unauthenticated("no client certificate on this connection"))?;
        Self::check_certificate(&slot.get(), peer, path, jiff::Timestamp::now().as_second())
            .map(drop)
    }

    /// The identity `peer`'s certificate names, if the certificate is still
    /// valid at `now` and not revoked; `what` names the call in the log.
    fn check_certificate<'p>(
        access: &AccessState,
        peer: &'p crate::tls::Peer,
        what: &str,
        now: i64,
    ) -> Result<&'p str, Status> {
        let identity: &str = peer.identity.as_deref().ok_or_else(|| {
            Status::unauthenticated("client certificate subject could not be read")
        })?;
        // The handshake checked both, but a connection can outlive its
        // certificate, and a revocation can come after it was made.
        if let Some(not_after) = peer.not_after.filter(|t| now > *t) {
            tracing::warn!(%identity, call = what, "call refused: client certificate expired");
            return Err(Status::unauthenticated(format!(
                "the client certificate of {identity:?} expired at {}; issue a new one \
                 (docket cert issue --replace)",
                crate::tls::pki::fmt_secs(not_after)
            )));
        }
        match peer.serial.as_deref() {
            Some(serial) if !access.revoked.contains(serial) => {}
            serial => {
                tracing::warn!(%identity, call = what, ?serial, "call refused: client certificate revoked or without serial");
                return Err(Status::unauthenticated(format!(
                    "the client certificate of {identity:?} (serial {}) is revoked \
                     (tls/revoked.json in the server's data directory)",
                    serial.unwrap_or("unreadable")
                )));
            }
        }
        Ok(identity)
    }
}

/// The method of `docket.v1.Ledger` or `docket.v1.Governance` an HTTP/2
/// request path (`/docket.v1.Ledger/Append`) names; `None` for other
/// services (health, reflection) and for names no service defines, which
/// tonic answers itself (`UNIMPLEMENTED`) without reading the message.
pub fn method_of_path(path: &str) -> Option<&'static str> {
    let name = path
        .strip_prefix("/docket.v1.Ledger/")
        .or_else(|| path.strip_prefix("/docket.v1.Governance/"))?;
    METHODS.iter().copied().find(|m| *m == name)
}

/// [`Guard`] as a tower layer around the server's routes: a call to a
/// method of ours is checked when its headers arrive, before anything reads
/// its body, so a client whose certificate may not call a method cannot
/// make the server buffer the message (up to 8 MiB for `Append`) it would
/// refuse. The handlers still call [`Guard::check`], which also gives them
/// the identity to record, and long-lived streams [`Guard::recheck`].
#[derive(Clone, Debug)]
pub struct GuardLayer(pub Guard);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;
    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.0.clone(),
        }
    }
}

/// The service [`GuardLayer`] makes.
#[derive(Clone, Debug)]
pub struct Guarded<S> {
    inner: S,
    guard: Guard,
}

impl<S, B> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Either<
            futures::future::Ready<Result<Self::Response, Self::Error>>,
            RecheckedResponse<S::Future>,
        >,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use futures::future::Either;
        let peer = req.extensions().get::<crate::tls::Peer>();
        let path = req.uri().path();
        let Some(method) = method_of_path(path) else {
            // Health and reflection: any valid certificate, checked again
            // before each message they send (their streams can last). The
            // recheck subscribes to reloads before this first check, so a
            // reload between the two still wakes the stream.
            let recheck = self
                .guard
                .access
                .is_some()
                .then(|| Recheck::new(self.guard.clone(), peer.cloned(), path));
            if let Err(status) = self.guard.check_certificate_now(peer, path) {
                return Either::Right(Either::Left(futures::future::ready(Ok(status.into_http()))));
            }
            return Either::Right(Either::Right(RecheckedResponse {
                inner: Box::pin(self.inner.call(req)),
                recheck,
            }));
        };
        if let Err(status) = self.guard.check_now(peer, method) {
            return Either::Right(Either::Left(futures::future::ready(Ok(status.into_http()))));
        }
        Either::Left(self.inner.call(req))
    }
}

/// The response of a service that is not ours (gRPC health, reflection),
/// whose body will check the caller's certificate again ([`Recheck`]).
pub struct RecheckedResponse<F> {
    inner: std::pin::Pin<Box<F>>,
    /// `None` without TLS, where there is nothing to check.
    recheck: Option<Recheck>,
}

impl<F, E> std::future::Future for RecheckedResponse<F>
where
    F: std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.get_mut();
        let response = std::task::ready!(this.inner.as_mut().poll(cx))?;
        std::task::Poll::Ready(Ok(match this.recheck.take() {
            Some(recheck) => response.map(|inner| {
                tonic::body::Body::new(RecheckedBody {
                    inner: Some(inner),
                    recheck,
                })
            }),
            None => response,
        }))
    }
}

/// What a health or reflection stream needs to check its caller again:
/// Health/Watch and ServerReflectionInfo last for as long as the client
/// keeps them, and like `Tail` they end once the caller's certificate is
/// revoked or expires. The check runs before each message, at each reload
/// of the access rules and revocations, and when the certificate expires.
struct Recheck {
    guard: Guard,
    peer: Option<crate::tls::Peer>,
    path: String,
    /// Wakes the stream at a reload; `None` once the server's side is gone.
    reloads: Option<tokio_stream::wrappers::WatchStream<u64>>,
    /// Wakes an idle stream one second after its certificate's end (so the
    /// wall clock has passed it too); `None` once fired.
    expiry: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Recheck {
    fn new(guard: Guard, peer: Option<crate::tls::Peer>, path: &str) -> Self {
        let reloads = guard
            .reloads()
            .map(tokio_stream::wrappers::WatchStream::from_changes);
        let expiry = peer
            .as_ref()
            .and_then(crate::tls::Peer::expires_in)
            .map(|d| Box::pin(tokio::time::sleep(d)));
        Recheck {
            guard,
            peer,
            path: path.to_owned(),
            reloads,
            expiry,
        }
    }

    /// Whether a reload or the certificate's end happened since last asked
    /// (and registers `cx` for the next).
    fn woken(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        use futures::Stream as _;
        use std::future::Future as _;
        let mut woken = false;
        while let Some(reloads) = self.reloads.as_mut() {
            match std::pin::Pin::new(reloads).poll_next(cx) {
                std::task::Poll::Ready(Some(_)) => woken = true,
                std::task::Poll::Ready(None) => self.reloads = None,
                std::task::Poll::Pending => break,
            }
        }
        if let Some(expiry) = self.expiry.as_mut()
            && expiry.as_mut().poll(cx).is_ready()
        {
            self.expiry = None;
            woken = true;
        }
        woken
    }

    fn check(&self) -> Result<(), Status> {
        self.guard
            .check_certificate_now(self.peer.as_ref(), &self.path)
    }
}

/// A response body that ends with the refusal, in place of its next
/// message, once [`Recheck`] refuses the caller.
struct RecheckedBody {
    /// `None` once ended.
    inner: Option<tonic::body::Body>,
    recheck: Recheck,
}

impl RecheckedBody {
    /// Ends the stream with `status` in its trailers, as gRPC ends a call.
    fn refuse(
        &mut self,
        status: Status,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        self.inner = None;
        let mut trailers = http::HeaderMap::new();
        std::task::Poll::Ready(Some(match status.add_header(&mut trailers) {
            Ok(()) => Ok(http_body::Frame::trailers(trailers)),
            Err(status) => Err(status),
        }))
    }
}

impl http_body::Body for RecheckedBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        if this.recheck.woken(cx)
            && let Err(status) = this.recheck.check()
        {
            return this.refuse(status);
        }
        let frame = std::task::ready!(std::pin::Pin::new(inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && f.is_data()
            && let Err(status) = this.recheck.check()
        {
            return this.refuse(status);
        }
        // Nothing follows the end or the trailers, a refusal included.
        if frame
            .as_ref()
            .is_none_or(|f| f.as_ref().is_ok_and(|f| f.is_trailers()))
        {
            this.inner = None;
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            http_body::Body::size_hint,
        )
    }
}

/// The access rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    allowed: BTreeMap<String, BTreeSet<&'static str>>,
}

/// Why `access.json` was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    identities: BTreeMap<String, Vec<String>>,
}

impl AccessPolicy {
    /// Allows `identity` every method.
    pub fn allow_all(identity: &str) -> Self {
        let mut p = AccessPolicy::default();
        p.allowed
            .insert(identity.to_owned(), METHODS.iter().copied().collect());
        p
    }

    /// Adds methods (names from [`METHODS`] or `"*"`) for `identity`.
    pub fn grant(&mut self, identity: &str, methods: &[String]) -> Result<(), AccessError> {
        let text = serde_json::json!({ "identities": { identity: methods } }).to_string();
        let extra = Self::parse(&text, "--allow")?;
        for (id, m) in extra.allowed {
            self.allowed.entry(id).or_default().extend(m);
        }
        Ok(())
    }

    /// Parses the JSON form; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, AccessError> {
        let invalid = |reason: String| AccessError::Invalid {
            path: origin.to_owned(),
            reason,
        };
        let f: File = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut allowed = BTreeMap::new();
        for (identity, methods) in f.identities {
            if identity.is_empty() {
                return Err(invalid("an identity is empty".into()));
            }
            let mut set = BTreeSet::new();
            for m in methods {
                if m == "*" {
                    set.extend(METHODS.iter().copied());
                } else if let Some(known) = METHODS.iter().find(|k| **k == m) {
                    set.insert(*known);
                } else {
                    return Err(invalid(format!(
                        "identities[{identity:?}]: unknown method {m:?}; known: {}",
                        METHODS.join(", ")
                    )));
                }
            }
            allowed.insert(identity, set);
        }
        Ok(AccessPolicy { allowed })
    }

    /// Reads `access.json`.
    pub fn load(path: &Path) -> Result<Self, AccessError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The JSON form, for `init` to write.
    pub fn to_json(&self) -> String {
        let map: BTreeMap<&str, Vec<&str>> = self
            .allowed
            .iter()
            .map(|(id, m)| {
                let all = m.len() == METHODS.len();
                (
                    id.as_str(),
                    if all {
                        vec!["*"]
                    } else {
                        m.iter().copied().collect()
                    },
                )
            })
            .collect();
        let v = serde_json::json!({ "identities": map });
        serde_json::to_string_pretty(&v).expect("a map of strings serialises") + "\n"
    }

    /// True when `identity` is listed (with any methods).
    pub fn lists(&self, identity: &str) -> bool {
        self.allowed.contains_key(identity)
    }

    /// How many transport identities are listed.
    pub fn identities(&self) -> usize {
        self.allowed.len()
    }

    /// True when `identity` may call `method`.
    pub fn permits(&self, identity: &str, method: &str) -> bool {
        self.allowed
            .get(identity)
            .is_some_and(|m| m.contains(method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every RPC of both services, as the compiled descriptors list them,
    /// is one the layer checks, under its own name; nothing else is.
    #[test]
    fn the_layer_checks_every_method_of_both_services() {
        use prost::Message;
        let set =
            prost_types::FileDescriptorSet::decode(crate::api::pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut seen = BTreeSet::new();
        for file in &set.file {
            for svc in &file.service {
                let full = format!("{}.{}", file.package(), svc.name());
                for m in &svc.method {
                    let path = format!("/{full}/{}", m.name());
                    assert_eq!(method_of_path(&path), Some(m.name()), "{path}");
                    seen.insert(m.name().to_owned());
                }
            }
        }
        let listed: BTreeSet<String> = METHODS.iter().map(|m| m.to_string()).collect();
        assert_eq!(seen, listed);
        assert_eq!(method_of_path("/grpc.health.v1.Health/Check"), None);
        assert_eq!(method_of_path("/docket.v1.Ledger/NoSuchMethod"), None);
        assert_eq!(method_of_path("/docket.v1.LedgerX/Append"), None);
    }

    #[test]
    fn parse_permits_and_refusals() {
        let p = AccessPolicy::parse(
            r#"{"identities": {"CN=a": ["*"], "CN=siem": ["Tail", "GetCheckpoint"]}}"#,
            "t",
        )
        .unwrap();
        assert!(p.permits("CN=a", "Append"));
        assert!(p.permits("CN=siem", "Tail"));
        assert!(!p.permits("CN=siem", "Append"));
        assert!(!p.permits("CN=other", "Ping"));
        let e = AccessPolicy::parse(r#"{"identities": {"CN=a": ["Apend"]}}"#, "access.json")
            .unwrap_err();
        assert!(e.to_string().contains("unknown method \"Apend\""), "{e}");
        let e = AccessPolicy::parse(r#"{"identites": {}}"#, "access.json").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let round = AccessPolicy::parse(&p.to_json(), "t").unwrap();
        assert_eq!(round, p);
    }

    fn peer(serial: &str, not_after: i64) -> crate::tls::Peer {
        crate::tls::Peer {
            identity: Some(Arc::from("CN=ci")),
            serial: Some(Arc::from(serial)),
            not_after: Some(not_after),
        }
    }

    /// Expiry and revocation are checked on every call, before access.json,
    /// so a connection opened earlier gains nothing by staying open.
    #[test]
    fn expired_and_revoked_certificates_may_call_nothing() {
        let mut state = AccessState {
            policy: AccessPolicy::allow_all("CN=ci"),
            revoked: BTreeSet::new(),
        };
        let now = 1_800_000_000;
        assert_eq!(
            Guard::check_peer(&state, &peer("0a", now), "Ping", now).unwrap(),
            "CN=ci"
        );
        let e = Guard::check_peer(&state, &peer("0a", now - 1), "Ping", now).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(
            e.message().contains("expired at 2027-01-15T07:59:59Z"),
            "{}",
            e.message()
        );

        state.revoked.insert("0a".into());
        let e = Guard::check_peer(&state, &peer("0a", now), "Ping", now).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(
            e.message().contains("(serial 0a) is revoked"),
            "{}",
            e.message()
        );
        // Another certificate of the same identity still works.
        assert!(Guard::check_peer(&state, &peer("0b", now), "Ping", now).is_ok());
        let no_serial = crate::tls::Peer {
            serial: None,
            ..peer("0b", now)
        };
        assert!(Guard::check_peer(&state, &no_serial, "Ping", now).is_err());

        state.policy = AccessPolicy::default();
        let e = Guard::check_peer(&state, &peer("0b", now), "Ping", now).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    }
}
