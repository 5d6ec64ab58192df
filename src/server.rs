//! Running the gRPC server: Ledger, health and reflection (v1 and v1alpha),
//! over mTLS unless the dangerous plaintext option is set.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::access::{AccessCell, AccessSlot, AccessState, Guard};
use crate::api::{GovernanceApi, LedgerApi, pb};
use crate::service::Service;
use crate::tls::{ConfigSlot, TlsError};

/// Transport settings of a server.
#[derive(Clone, Debug)]
pub enum Transport {
    /// TLS 1.3 with client certificates from the development CA of a data
    /// directory (`<data>/tls`), refused when its CRL or `revoked.json`
    /// lists them; `<data>/access.json` says which certificate subjects may
    /// call which method. All of it is re-read by [`Reloader::reload`].
    MutualTls { data: crate::datadir::DataDir },
    /// No TLS and no client identity. Only for local experiments.
    DangerousPlaintext,
}

impl Transport {
    /// mTLS with the development PKI of a data directory (`<data>/tls`) and
    /// its `access.json`, which must be readable now.
    pub fn dev_mtls(data: &crate::datadir::DataDir) -> Result<Self, crate::datadir::DataDirError> {
        data.access()?;
        Ok(Transport::MutualTls { data: data.clone() })
    }
}

/// Everything the mTLS transport reads from a data directory.
fn load_mtls(
    data: &crate::datadir::DataDir,
) -> Result<(rustls::ServerConfig, AccessState), ServeError> {
    let tls = data.tls();
    check_server_cert_end(&tls.server_cert)?;
    let cfg = crate::tls::server_config(
        &tls.ca_cert,
        &tls.server_cert,
        &tls.server_key,
        Some(&tls.crl),
    )?;
    let policy = data
        .access()
        .map_err(|e| ServeError::Access(e.to_string()))?;
    let revoked = crate::tls::pki::revoked_serials(&tls)?;
    Ok((cfg, AccessState { policy, revoked }))
}

/// Refuses a server certificate that has expired, since no client would
/// accept it, and warns of one that expires within
/// [`crate::tls::pki::RENEW_WITHIN_SECS`]; at start and at every reload.
fn check_server_cert_end(path: &std::path::Path) -> Result<(), ServeError> {
    use crate::tls::pki;
    let end = pki::first_cert_end(path)?;
    let left = end - jiff::Timestamp::now().as_second();
    if left <= 0 {
        return Err(ServeError::Tls(crate::tls::TlsError::Pem {
            path: path.display().to_string(),
            reason: format!(
                "the server certificate expired at {}; renew it with `docket cert renew-server`",
                pki::fmt_secs(end)
            ),
        }));
    }
    if left < pki::RENEW_WITHIN_SECS {
        tracing::warn!(
            certificate = %path.display(),
            expires = %pki::fmt_secs(end),
            days_left = left / 86_400,
            "the server certificate expires soon; renew it with `docket cert renew-server`, then SIGHUP"
        );
    }
    Ok(())
}

/// Re-reads the transport's files while the server runs (`docket serve`
/// does on SIGHUP): the server certificate and key, the CA, the CRL,
/// `revoked.json` and `access.json`. New connections use the new TLS
/// configuration; every call, on old connections too, is checked against
/// the new access rules and revocations.
#[derive(Clone)]
pub struct Reloader {
    data: crate::datadir::DataDir,
    tls: ConfigSlot,
    access: AccessSlot,
}

/// What a reload put in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// Transport identities `access.json` lists.
    pub identities: usize,
    /// Revoked client certificates.
    pub revoked: usize,
}

impl Reloader {
    /// Reads everything first and replaces nothing unless all of it is
    /// good: a bad file leaves the running configuration as it was.
    pub fn reload(&self) -> Result<Reloaded, ServeError> {
        let (cfg, state) = load_mtls(&self.data)?;
        let done = Reloaded {
            identities: state.policy.identities(),
            revoked: state.revoked.len(),
        };
        *self
            .tls
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(cfg);
        self.access.replace(state);
        Ok(done)
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("access rules: {0}")]
    Access(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// HTTP/2 streams one connection may have open at once. The Authorize
/// load generator keeps 64 in flight on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    svc: Arc<Service>,
    /// Built at bind, so bad certificate files stop the server before it
    /// says it is serving; `None` for a dangerous plaintext server.
    mtls: Option<Reloader>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(
        addr: &str,
        svc: Arc<Service>,
        transport: Transport,
    ) -> Result<Self, ServeError> {
        let mtls = match transport {
            Transport::MutualTls { data } => {
                let (cfg, state) = load_mtls(&data)?;
                Some(Reloader {
                    data,
                    tls: Arc::new(std::sync::RwLock::new(Arc::new(cfg))),
                    access: Arc::new(AccessCell::new(state)),
                })
            }
            Transport::DangerousPlaintext => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.to_owned(),
                source,
            })?;
        Ok(Server {
            listener,
            svc,
            mtls,
        })
    }

    /// The handle that re-reads the transport's files; `None` without TLS.
    pub fn reloader(&self) -> Option<Reloader> {
        self.mtls.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains in-flight calls.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            // Tell long-lived streams to end so the drain can finish.
            let _ = stop_tx.send(true);
        };
        let guard = match &self.mtls {
            Some(r) => Guard::shared(r.access.clone()),
            None => Guard::dangerous_plaintext(),
        };
        let api = LedgerApi::new(self.svc.clone(), guard.clone(), stop_rx);
        let governance = GovernanceApi::new(self.svc.clone(), guard.clone());
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<pb::ledger_server::LedgerServer<LedgerApi>>()
            .await;
        health_reporter
            .set_serving::<pb::governance_server::GovernanceServer<GovernanceApi>>()
            .await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        let ledger = pb::ledger_server::LedgerServer::new(api).max_decoding_message_size(8 << 20);
        let router = tonic::transport::Server::builder()
            // hyper sets no limit by default: one client could open any
            // number of streams on a connection.
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            // A peer that stops answering pings is dropped, with its
            // streams (a following Tail holds a task and a buffer).
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            // Transport identities are checked on a call's headers, before
            // its message is read (the handlers check again).
            .layer(crate::api::access::GuardLayer(guard))
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ledger)
            .add_service(pb::governance_server::GovernanceServer::new(governance));
        match self.mtls {
            Some(r) => {
                let incoming = crate::tls::incoming(self.listener, r.tls);
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await?;
            }
            None => {
                tracing::warn!(
                    "serving WITHOUT TLS (dangerous plaintext): no transport identity, no confidentiality"
                );
                let incoming = crate::tls::incoming_plaintext(self.listener);
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await?;
            }
        }
        Ok(())
    }
}
