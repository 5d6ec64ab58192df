//! Connecting to a server with the data dir's development certificates by default.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::Channel;

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
        // The client speaks TLS only to https:// URLs: an http:// one would send
        // every call in the clear, without the client certificate and
        // without checking who answers.
        match (url.split_once("://").map(|(s, _)| s), a.dangerous_plaintext) {
            (Some("https"), false) | (Some("http"), true) => {}
            (Some("http"), false) => {
                return Err(CliError::usage(format!(
                    "--server {url}: http:// would talk to the server without TLS, so without the \
                     client certificate and without checking the server's; use https://, or \
                     --dangerous-plaintext for a server started with it"
                )));
            }
            (Some("https"), true) => {
                return Err(CliError::usage(format!(
                    "--server {url}: --dangerous-plaintext talks without TLS, so the URL must be http://"
                )));
            }
            _ => {
                return Err(CliError::usage(format!(
                    "--server {url}: give the URL with its scheme, https://HOST:PORT"
                )));
            }
        }
        if a.dangerous_plaintext {
            tracing::warn!(
                server = %url,
                "--dangerous-plaintext: talking to the server without TLS; anyone on the path can read and answer these calls"
            );
        }
        Ok(Conn {
            url,
            ca: a.ca.clone().unwrap_or(tls.ca_cert),
            cert: a.cert.clone().unwrap_or(tls.client_cert),
            key: a.cert_key.clone().unwrap_or(tls.client_key),
            plaintext: a.dangerous_plaintext,
        })
    }

    /// Opens a channel (mTLS unless plaintext) whose calls must be answered
    /// within [`CALL_TIMEOUT`].
    pub async fn channel(&self) -> Result<Channel, CliError> {
        self.channel_with(Some(CALL_TIMEOUT)).await
    }

    /// Opens a channel. Every channel gives up connecting after
    /// [`CONNECT_TIMEOUT`] and pings the server while a call is open, so a
    /// server that stops answering is noticed; `call_timeout` bounds the wait
    /// for each call's response headers (`None`: no bound, for an export
    /// whose bundle is built before its first byte is sent).
    pub async fn channel_with(&self, call_timeout: Option<Duration>) -> Result<Channel, CliError> {
        // One bound for the certificate probe and the connection together.
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let bad_url =
            |e: &dyn std::fmt::Display| CliError::usage(format!("--server {}: {e}", self.url));
        let (mut ep, connector) = if self.plaintext {
            (
                Channel::from_shared(self.url.clone()).map_err(|e| bad_url(&e))?,
                None,
            )
        } else {
            // A bad certificate or key file is the caller's to fix (exit 64),
            // not a transport error to retry (exit 69): read them first.
            let cfg = crate::tls::client_config(&self.ca, &self.cert, &self.key)
                .map_err(|e| CliError::usage(format!("TLS files: {e}")))?;
            // An expired certificate is refused at the handshake, which a
            // client sees only as a transport error: say so first.
            if let Ok((info, _)) = crate::tls::pki::read_cert_info(&self.cert) {
                let now = jiff::Timestamp::now().as_second();
                if now > info.not_after {
                    return Err(CliError {
                        message: format!(
                            "client certificate {} ({}) expired at {}; ask for a new one \
                             (docket cert issue --cn NAME --replace)",
                            self.cert.display(),
                            info.subject,
                            crate::tls::pki::fmt_secs(info.not_after)
                        ),
                        code: EXIT_NO_PERMISSION,
                    });
                }
            }
            // The name the server's certificate must carry: the URL's host,
            // with or without a port (an IPv6 literal without its brackets).
            let host = server_host(&self.url)?;
            self.probe_certificate(cfg.clone(), &host, deadline).await?;
            let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| bad_url(&e))?;
            // Our own TLS transport (see `tls::client`), under an `http`
            // endpoint so that tonic does not wrap it in TLS of its own; the
            // origin keeps the requests' scheme and authority those of the URL.
            let (origin, addr) = origin_and_addr(&self.url)?;
            let ep = Channel::from_shared(format!("http://{addr}"))
                .map_err(|e| bad_url(&e))?
                .origin(origin);
            (
                ep,
                Some(crate::tls::client::Connector::new(
                    cfg,
                    name,
                    addr,
                    CONNECT_TIMEOUT,
                )),
            )
        };
        ep = ep
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_EVERY)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        if let Some(t) = call_timeout {
            ep = ep.timeout(t);
        }
        // tonic's connect_timeout bounds the connector (with TLS, its TLS
        // handshake too) but not the HTTP/2 handshake; this bounds them all,
        // and the certificate probe before them.
        let connect = async {
            match connector {
                Some(c) => ep.connect_with_connector(c).await,
                None => ep.connect().await,
            }
        };
        let connected = tokio::time::timeout_at(deadline, connect)
            .await
            .map_err(|_| self.handshake_timeout_err())?;
        connected.map_err(|e| {
            if let Some(alert) = certificate_refused(&e) {
                return self.certificate_refused_err(&alert);
            }
            CliError::unavailable(format!(
                "connecting to {}: {e}. If the server refused the handshake, check that the client \
                 certificate ({}) is signed by the server's client CA; a missing or foreign \
                 certificate shows up as a transport error.",
                self.url,
                self.cert.display()
            ))
        })
    }

    /// With TLS 1.3 a client finishes its handshake before the server has
    /// judged its certificate; a refusal (revoked, expired, unknown CA)
    /// reaches tonic only as a cancelled call, which reads like a server
    /// that did not answer (exit 69, "retry"). One handshake of our own,
    /// read until the server's first HTTP/2 frame, tells the two apart:
    /// a refused certificate is exit 77 naming the TLS alert. Anything else
    /// that goes wrong here is left for the real connection to report.
    async fn probe_certificate(
        &self,
        cfg: rustls::ClientConfig,
        host: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), CliError> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let Ok(uri) = self.url.parse::<http::Uri>() else {
            return Ok(());
        };
        let Some(uri_host) = uri.host().map(|h| h.trim_matches(['[', ']']).to_owned()) else {
            return Ok(());
        };
        let port = uri.port_u16().unwrap_or(443);
        let Ok(name) = rustls::pki_types::ServerName::try_from(host.to_owned()) else {
            return Ok(());
        };
        let probe = async {
            let tcp = tokio::net::TcpStream::connect((uri_host.as_str(), port))
                .await
                .ok()?;
            let mut tls = match tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
                .connect(name, tcp)
                .await
            {
                Ok(t) => t,
                Err(e) => return certificate_refused(&e),
            };
            if let Err(e) = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await {
                return certificate_refused(&e);
            }
            let mut byte = [0u8; 1];
            match tls.read(&mut byte).await {
                Err(e) => certificate_refused(&e),
                Ok(_) => None,
            }
        };
        match tokio::time::timeout_at(deadline, probe).await {
            Ok(Some(alert)) => Err(self.certificate_refused_err(&alert)),
            Ok(None) => Ok(()),
            Err(_) => Err(self.handshake_timeout_err()),
        }
    }

    fn certificate_refused_err(&self, alert: &str) -> CliError {
        CliError {
            message: format!(
                "connecting to {}: the server refused the client certificate {} ({alert}): \
                 it is revoked, expired or not from the server's client CA",
                self.url,
                self.cert.display()
            ),
            code: EXIT_NO_PERMISSION,
        }
    }

    fn handshake_timeout_err(&self) -> CliError {
        CliError::unavailable(format!(
            "connecting to {}: no TLS/HTTP/2 handshake within {} s; is it a Docket server, \
             and does it answer?",
            self.url,
            CONNECT_TIMEOUT.as_secs()
        ))
    }

    /// A Ledger client whose calls time out after [`CALL_TIMEOUT`].
    pub async fn ledger(&self) -> Result<LedgerClient<Channel>, CliError> {
        self.ledger_with(Some(CALL_TIMEOUT)).await
    }

    /// A Ledger client, with the given bound on each call.
    pub async fn ledger_with(
        &self,
        call_timeout: Option<Duration>,
    ) -> Result<LedgerClient<Channel>, CliError> {
        Ok(LedgerClient::new(self.channel_with(call_timeout).await?)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20))
    }

    /// A Governance client whose calls time out after [`CALL_TIMEOUT`].
    pub async fn governance(&self) -> Result<GovernanceClient<Channel>, CliError> {
        self.governance_with(Some(CALL_TIMEOUT)).await
    }

    /// A Governance client, with the given bound on each call.
    pub async fn governance_with(
        &self,
        call_timeout: Option<Duration>,
    ) -> Result<GovernanceClient<Channel>, CliError> {
        Ok(
            GovernanceClient::new(self.channel_with(call_timeout).await?)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(16 << 20),
        )
    }
}

/// How long connecting (TCP, TLS and HTTP/2) may take before the CLI gives
/// up with exit 69.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a call may wait for the server's response before the CLI gives
/// up with exit 69, so a pipeline gate facing a server that accepted the
/// connection but does not answer fails in a minute, not at the CI job's
/// own limit.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// HTTP/2 pings while a call is open, and how long an answer to one may take
/// before the connection counts as lost.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The server refused the request as malformed (`INVALID_ARGUMENT`); BSD's EX_DATAERR.
pub const EXIT_BAD_REQUEST: u8 = 65;
/// The server refused this caller (`PERMISSION_DENIED`, `UNAUTHENTICATED`,
/// or its client certificate at the handshake); BSD's EX_NOPERM.
pub const EXIT_NO_PERMISSION: u8 = 77;

/// The host of `--server URL`, the name the server's certificate must carry
/// (an IPv6 literal without its brackets), whether or not the URL names a
/// port.
pub fn server_host(url: &str) -> Result<String, CliError> {
    let uri = url
        .parse::<http::Uri>()
        .map_err(|e| CliError::usage(format!("--server {url}: {e}")))?;
    match uri.host() {
        Some(h) if !h.is_empty() => Ok(h.trim_matches(['[', ']']).to_owned()),
        _ => Err(CliError::usage(format!(
            "--server {url}: no host (expected https://HOST[:PORT])"
        ))),
    }
}

/// The origin of an `https` URL (with its port, 443 if none) and the
/// `host:port` to connect to.
fn origin_and_addr(url: &str) -> Result<(http::Uri, String), CliError> {
    let bad = |why: &dyn std::fmt::Display| CliError::usage(format!("--server {url}: {why}"));
    let uri = url.parse::<http::Uri>().map_err(|e| bad(&e))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad(
            &"expected https://HOST[:PORT] (or --dangerous-plaintext with http://)",
        ));
    }
    let host = uri.host().ok_or_else(|| bad(&"no host"))?;
    let addr = format!("{host}:{}", uri.port_u16().unwrap_or(443));
    let origin = format!("https://{addr}").parse().map_err(|e| bad(&e))?;
    Ok((origin, addr))
}

/// The TLS alert with which the server refused our client certificate, if
/// that is what `e` (or an error under it) reports.
pub fn certificate_refused(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    const REFUSALS: &[&str] = &[
        "CertificateRevoked",
        "CertificateExpired",
        "BadCertificate",
        "CertificateUnknown",
        "UnknownCA",
        "CertificateRequired",
        "AccessDenied",
    ];
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if let Some((_, alert)) = text.split_once("received fatal alert: ") {
            let alert = alert
                .split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap_or("");
            if REFUSALS.contains(&alert) {
                return Some(alert.to_owned());
            }
        }
        cur = err.source();
    }
    None
}

/// Turns a gRPC status into a CLI error that keeps the server's words.
pub fn status_err(what: &str, s: tonic::Status) -> CliError {
    let hint = if s.code() == tonic::Code::Unknown && s.message().contains("transport") {
        " (a transport error here often means the server refused our client certificate)"
    } else {
        ""
    };
    // The server's words may quote what a client wrote.
    let message = format!(
        "{what}: {:?}: {}{hint}",
        s.code(),
        super::text::printable(s.message())
    );
    // No answer came back: a distinct exit code, so a pipeline gate can
    // retry instead of reading it as a denial. Besides an unreachable
    // server, that is a connection lost during the call (tonic reports it
    // as Unknown "transport error") and a call that timed out (Cancelled
    // here, DeadlineExceeded from a server). A request that records
    // something may have been appended before the answer was lost.
    let no_answer = match s.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => true,
        tonic::Code::Unknown => s.message().contains("transport error"),
        _ => false,
    };
    // Only under a transport failure: a refusal's own message may quote
    // text a client wrote, alert names included.
    let transport = matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    );
    if let Some(alert) = std::error::Error::source(&s)
        .filter(|_| transport)
        .and_then(certificate_refused)
    {
        return CliError {
            message: format!(
                "{message}: the server refused the client certificate ({alert}): it is revoked, \
                 expired or not from the server's client CA"
            ),
            code: EXIT_NO_PERMISSION,
        };
    }
    if no_answer {
        return CliError::unavailable(format!(
            "{message}. No answer came back: nothing was decided by this call; if it records \
             something (deploy, approve, ...), check whether it was appended before retrying"
        ));
    }
    // Refusals that are no verdict on the change, so that a gate can tell
    // them from a denial (exit 1): the request itself was malformed, or
    // this client may not make it.
    match s.code() {
        tonic::Code::InvalidArgument => CliError {
            message: format!(
                "{message}. The server refused the request as malformed; nothing was decided"
            ),
            code: EXIT_BAD_REQUEST,
        },
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => CliError {
            message: format!(
                "{message}. This client's certificate or signer may not make this call; nothing was decided"
            ),
            code: EXIT_NO_PERMISSION,
        },
        _ => CliError::failed(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name checked against the server's certificate is the URL's host
    /// with or without a port (it was "localhost" for a URL without one).
    #[test]
    fn the_server_name_checked_is_the_urls_host() {
        let host = |u: &str| server_host(u).map_err(|e| e.message);
        assert_eq!(host("https://docket.corp").unwrap(), "docket.corp");
        assert_eq!(host("https://docket.corp:7443").unwrap(), "docket.corp");
        assert_eq!(host("https://docket.corp:7443/").unwrap(), "docket.corp");
        assert_eq!(host("https://[::1]:7443").unwrap(), "::1");
        assert_eq!(host("https://[::1]").unwrap(), "::1");
        assert_eq!(host("https://127.0.0.1").unwrap(), "127.0.0.1");
        let err = host("/just/a/path").unwrap_err();
        assert!(err.contains("--server /just/a/path: no host"), "{err}");
    }

    #[test]
    fn calls_without_an_answer_exit_69_and_refusals_exit_by_kind() {
        use tonic::{Code, Status};
        let code = |s: Status| status_err("authorize", s).code;
        assert_eq!(code(Status::unavailable("connection refused")), 69);
        assert_eq!(code(Status::cancelled("Timeout expired")), 69);
        assert_eq!(code(Status::deadline_exceeded("deadline")), 69);
        assert_eq!(code(Status::unknown("transport error")), 69);
        assert_eq!(code(Status::unknown("h2 protocol error")), 1);
        assert_eq!(code(Status::new(Code::PermissionDenied, "no")), 77);
        assert_eq!(code(Status::unauthenticated("no certificate")), 77);
        assert_eq!(code(Status::invalid_argument("commit: bad")), 65);
        assert_eq!(code(Status::failed_precondition("refused")), 1);
        assert_eq!(code(Status::already_exists("event id taken")), 1);
        assert_eq!(code(Status::not_found("no change CHG-9")), 1);
    }

    /// A server that accepts the TCP connection and then says nothing: the
    /// CLI gives up after CONNECT_TIMEOUT with exit 69 (paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_silent_server_is_given_up_on_when_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::tls::generate_dev_pki(dir.path(), &["localhost".into()], "ci").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move { listener.accept().await.map(|(tcp, _)| tcp) });
        let conn = Conn {
            url: format!("https://localhost:{}", addr.port()),
            ca: pki.ca_cert,
            cert: pki.client_cert,
            key: pki.client_key,
            plaintext: false,
        };
        let start = tokio::time::Instant::now();
        let e = conn
            .governance()
            .await
            .expect_err("connected to a silent server");
        assert_eq!(e.code, 69, "{}", e.message);
        assert!(start.elapsed() >= CONNECT_TIMEOUT, "{:?}", start.elapsed());
        drop(held);
    }

    /// A server that completes HTTP/2 but never answers the call: the CLI
    /// gives up after CALL_TIMEOUT with exit 69 (paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_call_without_an_answer_times_out_with_69() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut h2 = h2::server::handshake(tcp).await.unwrap();
            // Take requests and hold them unanswered.
            let mut held = Vec::new();
            while let Some(Ok(req)) = h2.accept().await {
                held.push(req);
            }
        });
        let conn = Conn {
            url: format!("http://{addr}"),
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            plaintext: true,
        };
        let mut g = conn.governance().await.unwrap();
        let start = tokio::time::Instant::now();
        let s = g
            .authorize(crate::api::pb::AuthorizeRequest::default())
            .await
            .expect_err("answered by a server that never answers");
        assert!(start.elapsed() >= CALL_TIMEOUT, "{:?}", start.elapsed());
        assert_eq!(status_err("authorize", s).code, 69);
        server.abort();
    }
}
