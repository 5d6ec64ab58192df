//! Connecting to a server with the data dir's development certificates by default.

use std::path::PathBuf;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::{CliError, ConnArgs};
use crate::api::pb::governance_client::GovernanceClient;
use crate::api::pb::ledger_client::LedgerClient;
use crate::datadir::DataDir;

/// Resolved connection settings.
#[derive(Debug, Clone)]
pub struct Conn {
    pub url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub plaintext: bool,
}

impl Conn {
    pub(crate) fn resolve(a: &ConnArgs) -> Result<Conn, CliError> {
        let dd = DataDir::new(&a.data.data);
        let tls = dd.tls();
        let scheme = if a.dangerous_plaintext {
            "http"
        } else {
            "https"
        };
        let url = match &a.server {
            Some(s) => s.clone(),
            None => {
                let cfg = dd.config().map_err(|e| {
                    CliError::usage(format!(
                        "no --server given and the data dir has no config: {e}"
                    ))
                })?;
                format!("{scheme}://{}", cfg.listen)
            }
        };
        Ok(Conn {
            url,
            ca: a.ca.clone().unwrap_or(tls.ca_cert),
            cert: a.cert.clone().unwrap_or(tls.client_cert),
            key: a.cert_key.clone().unwrap_or(tls.client_key),
            plaintext: a.dangerous_plaintext,
        })
    }

    /// Opens a channel (mTLS unless plaintext).
    pub async fn channel(&self) -> Result<Channel, CliError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| CliError::usage(format!("{}: {e}", p.display())))
        };
        let mut ep = Channel::from_shared(self.url.clone())
            .map_err(|e| CliError::usage(format!("--server {}: {e}", self.url)))?;
        if !self.plaintext {
            let host = self
                .url
                .split("://")
                .nth(1)
                .and_then(|r| {
                    r.rsplit_once(':')
                        .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
                })
                .unwrap_or_else(|| "localhost".into());
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(&self.ca)?))
                .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?))
                .domain_name(host);
            ep = ep
                .tls_config(tls)
                .map_err(|e| CliError::usage(format!("TLS settings: {e}")))?;
        }
        ep.connect().await.map_err(|e| {
            CliError::unavailable(format!(
                "connecting to {}: {e}. If the server refused the handshake, check that the client \
                 certificate ({}) is signed by the server's client CA; a missing or foreign \
                 certificate shows up as a transport error.",
                self.url,
                self.cert.display()
            ))
        })
    }

    /// A Ledger client.
    pub async fn ledger(&self) -> Result<LedgerClient<Channel>, CliError> {
        Ok(LedgerClient::new(self.channel().await?)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20))
    }

    /// A Governance client.
    pub async fn governance(&self) -> Result<GovernanceClient<Channel>, CliError> {
        Ok(GovernanceClient::new(self.channel().await?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(16 << 20))
    }
}

/// Turns a gRPC status into a CLI error that keeps the server's words.
pub fn status_err(what: &str, s: tonic::Status) -> CliError {
    let hint = if s.code() == tonic::Code::Unknown && s.message().contains("transport") {
        " (a transport error here often means the server refused our client certificate)"
    } else {
        ""
    };
    let message = format!("{what}: {:?}: {}{hint}", s.code(), s.message());
    // The call never reached a server that answered: a distinct exit code,
    // so a pipeline gate can retry instead of reading it as a denial.
    if s.code() == tonic::Code::Unavailable {
        CliError::unavailable(message)
    } else {
        CliError::failed(message)
    }
}
