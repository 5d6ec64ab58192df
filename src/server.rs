//! Running the gRPC server: Ledger, health and reflection (v1 and v1alpha),
//! over mTLS unless the dangerous plaintext option is set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::access::{AccessPolicy, Guard};
use crate::api::{GovernanceApi, LedgerApi, pb};
use crate::service::Service;
use crate::tls::TlsError;

/// Transport settings of a server.
#[derive(Clone, Debug)]
pub enum Transport {
    /// TLS 1.3 with client certificates verified against `client_ca`;
    /// `access` says which certificate subjects may call which method.
    MutualTls {
        client_ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        access: AccessPolicy,
    },
    /// No TLS and no client identity. Only for local experiments.
    DangerousPlaintext,
}

impl Transport {
    /// mTLS with the development PKI of a data directory (`<data>/tls`) and
    /// its `access.json`.
    pub fn dev_mtls(data: &crate::datadir::DataDir) -> Result<Self, crate::datadir::DataDirError> {
        let tls = data.tls();
        Ok(Transport::MutualTls {
            client_ca: tls.ca_cert,
            cert: tls.server_cert,
            key: tls.server_key,
            access: data.access()?,
        })
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
    transport: Transport,
    /// Built at bind, so bad certificate files stop the server before it
    /// says it is serving.
    tls: Option<rustls::ServerConfig>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(
        addr: &str,
        svc: Arc<Service>,
        transport: Transport,
    ) -> Result<Self, ServeError> {
        let tls = match &transport {
            Transport::MutualTls {
                client_ca,
                cert,
                key,
                ..
            } => Some(crate::tls::server_config(client_ca, cert, key)?),
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
            transport,
            tls,
        })
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
        let guard = match &self.transport {
            Transport::MutualTls { access, .. } => Guard::new(access.clone()),
            Transport::DangerousPlaintext => Guard::dangerous_plaintext(),
        };
        let api = LedgerApi::new(self.svc.clone(), guard.clone(), stop_rx);
        let governance = GovernanceApi::new(self.svc.clone(), guard);
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
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ledger)
            .add_service(pb::governance_server::GovernanceServer::new(governance));
        match self.tls {
            Some(cfg) => {
                let incoming = crate::tls::incoming(self.listener, cfg);
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
