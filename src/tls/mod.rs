//! rustls server configuration (TLS 1.3 only, client certificates required),
//! the TLS accept loop, transport identities, and the rcgen development PKI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

pub mod client;
pub mod pki;
pub use pki::issue_client_cert;

/// Why TLS material could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// Paths of the development PKI inside a data directory.
#[derive(Clone, Debug)]
pub struct PkiPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Certificates revoked so far ([`pki::revoke`]); absent until the first.
    pub revoked: PathBuf,
    /// The CA's certificate revocation list, re-signed at every revocation.
    pub crl: PathBuf,
}

impl PkiPaths {
    /// The standard layout under `dir` (normally `<data>/tls`).
    pub fn in_dir(dir: &Path) -> Self {
        PkiPaths {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            revoked: dir.join("revoked.json"),
            crl: dir.join("crl.pem"),
        }
    }
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    f.write_all(data.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Checks that every host can be named in a server certificate (a DNS name
/// or an IP address), before anything is written.
pub fn check_hosts(hosts: &[String]) -> Result<(), String> {
    for h in hosts {
        CertificateParams::new(vec![h.clone()])
            .map_err(|e| format!("{h:?} is not a DNS name or IP address: {e}"))?;
    }
    Ok(())
}

/// The common name of the server certificates the development CA issues.
pub const SERVER_CN: &str = "docket-server";

/// Creates a development CA (valid [`pki::CA_DAYS`]), a server certificate
/// for `hosts` (DNS names or IP addresses; [`pki::SERVER_DAYS`]) and a
/// client certificate with common name `client_cn` ([`pki::DEFAULT_DAYS`]),
/// each with a random serial. None is valid for ever: `docket cert
/// renew-server` and `docket cert renew-admin` renew the last two; the CA
/// cannot be renewed.
pub fn generate_dev_pki(
    dir: &Path,
    hosts: &[String],
    client_cn: &str,
) -> Result<PkiPaths, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let paths = PkiPaths::in_dir(dir);
    let now = pki::now_secs();
    let days = |d: u32| (now - pki::BACKDATE_SECS, now + i64::from(d) * 86_400);
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    let (not_before, not_after) = days(pki::CA_DAYS);
    ca.not_before = pki::odt(not_before)?;
    ca.not_after = pki::odt(not_after)?;
    ca.serial_number = Some(pki::random_serial());
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "Docket development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let (server_key, server_cert, _) = pki::sign_leaf(
        &issuer,
        pki::Leaf {
            names: hosts.to_vec(),
            cn: SERVER_CN,
            usage: ExtendedKeyUsagePurpose::ServerAuth,
            validity: days(pki::SERVER_DAYS),
        },
        &paths.server_cert,
    )?;
    let (client_key, client_cert, _) = pki::sign_leaf(
        &issuer,
        pki::Leaf {
            names: Vec::new(),
            cn: client_cn,
            usage: ExtendedKeyUsagePurpose::ClientAuth,
            validity: days(pki::DEFAULT_DAYS),
        },
        &paths.client_cert,
    )?;

    write(&paths.ca_cert, &ca_cert.pem(), false)?;
    write(&paths.ca_key, &issuer.key().serialize_pem(), true)?;
    write(&paths.server_cert, &server_cert.pem(), false)?;
    write(&paths.server_key, &server_key.serialize_pem(), true)?;
    write(&paths.client_cert, &client_cert.pem(), false)?;
    write(&paths.client_key, &client_key.serialize_pem(), true)?;
    Ok(paths)
}

/// Largest certificate, key or CRL file read: a wrong path could name a
/// device or a huge file. A CRL of 100,000 revoked certificates is a few MiB.
const MAX_PEM_BYTES: u64 = 16 << 20;

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::files::read_bounded(path, MAX_PEM_BYTES).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            reason: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// A rustls server config: TLS 1.3 only, ALPN h2, client certificates
/// required and verified against `client_ca`, and refused if a CRL in `crl`
/// (when given and present) revokes them.
pub fn server_config(
    client_ca: &Path,
    cert: &Path,
    key: &Path,
    crl: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = client_verifier(client_ca, crl, provider.clone())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert)?, private_key(key)?)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

fn client_verifier(
    client_ca: &Path,
    crl: Option<&Path>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(client_ca)? {
        roots.add(c)?;
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if let Some(crl) = crl.filter(|p| p.exists()) {
        let bad = |reason: String| TlsError::Pem {
            path: crl.display().to_string(),
            reason,
        };
        let crls = rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(&read(crl)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        // A file that holds none (empty, garbled, a wrong file copied in)
        // would silently revoke nothing.
        if crls.is_empty() {
            return Err(bad(
                "no revocation list (PEM `X509 CRL` block) found; remove the file to use none"
                    .into(),
            ));
        }
        // A CRL the CA did not sign would make the verifier refuse every
        // client certificate (its revocation status unknown, or the CRL's
        // signature bad): refuse the file instead, by name.
        let ca = certs(client_ca)?;
        for c in &crls {
            crl_of_ca(c, &ca).map_err(|e| {
                bad(format!(
                    "not a revocation list of the client CA {}: {e}",
                    client_ca.display()
                ))
            })?;
        }
        // A CRL past its next update still revokes what it lists (the
        // verifier's default). Only client certificates are looked up: the
        // CA is the trust anchor.
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    builder
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))
}

/// Checks that one of the certificates in `ca` issued and signed `crl`.
fn crl_of_ca(crl: &[u8], ca: &[CertificateDer<'_>]) -> Result<(), String> {
    use x509_parser::prelude::FromDer as _;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(crl)
        .map_err(|e| e.to_string())?;
    let mut why = "the client CA file holds no certificate".to_owned();
    for c in ca {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(c) else {
            continue;
        };
        if crl.issuer() != cert.subject() {
            why = format!("issued by {}, not by {}", crl.issuer(), cert.subject());
            continue;
        }
        match crl.verify_signature(cert.public_key()) {
            Ok(()) => return Ok(()),
            Err(e) => why = format!("its signature does not verify with the CA's key: {e}"),
        }
    }
    Err(why)
}

/// Whether the CA in `client_ca` issued `der` as a client certificate that
/// is valid now (revocation aside).
pub fn verify_client_cert(client_ca: &Path, der: &[u8]) -> Result<(), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    client_verifier(client_ca, None, provider)?
        .verify_client_cert(
            &CertificateDer::from(der.to_vec()),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .map(|_| ())
        .map_err(TlsError::Rustls)
}

/// A rustls client config to match [`server_config`]: TLS 1.3, ALPN h2,
/// servers verified against `ca`, and the client certificate `cert` with
/// its key. For clients that speak HTTP/2 themselves (the load generator's
/// lean client, tests); the CLI's tonic clients configure their own.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(cert)?, private_key(key)?)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// How many TLS handshakes may be under way at once. Until a handshake
/// completes the client is unauthenticated, so anyone who can reach the port
/// could otherwise make the server hold a task, a socket and rustls state
/// for every connection they open. When all are taken, connections wait in
/// the kernel's accept queue until a handshake ends (at the latest after
/// [`HANDSHAKE_TIMEOUT`]); connections already established are unaffected.
pub const MAX_HANDSHAKES: usize = 256;

/// How many of those one source address may hold. Without it, one host
/// renewing 256 silent connections every [`HANDSHAKE_TIMEOUT`] would keep
/// every other client from connecting; with it, that takes eight addresses.
/// A connection over the limit is closed at once.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 32;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Bounds on handshakes under way.
#[derive(Clone, Copy, Debug)]
struct HandshakeLimits {
    total: usize,
    per_address: usize,
    timeout: std::time::Duration,
}

/// Handshakes under way per source address.
type UnderWay = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One handshake counted against its source address until dropped.
struct AddressSlot {
    under_way: UnderWay,
    ip: std::net::IpAddr,
}

impl AddressSlot {
    fn take(under_way: &UnderWay, ip: std::net::IpAddr, limit: usize) -> Option<AddressSlot> {
        let mut map = under_way
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            under_way: under_way.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self
            .under_way
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently, so a
/// slow or failing client never holds up others. Failed handshakes (no client
/// certificate, a certificate from another CA) are logged and dropped. At
/// most [`MAX_HANDSHAKES`] are under way at once, [`MAX_HANDSHAKES_PER_ADDRESS`]
/// of them from one address.
/// The server's TLS configuration, replaced as a whole by a reload; each
/// handshake uses the one current when its connection was accepted.
pub type ConfigSlot = Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>;

pub fn incoming(
    listener: TcpListener,
    config: ConfigSlot,
) -> tokio_stream::wrappers::ReceiverStream<Result<ClientStream, std::io::Error>> {
    let limits = HandshakeLimits {
        total: MAX_HANDSHAKES,
        per_address: MAX_HANDSHAKES_PER_ADDRESS,
        timeout: HANDSHAKE_TIMEOUT,
    };
    incoming_limited(listener, config, limits)
}

fn incoming_limited(
    listener: TcpListener,
    config: ConfigSlot,
    limits: HandshakeLimits,
) -> tokio_stream::wrappers::ReceiverStream<Result<ClientStream, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.total));
    let under_way = UnderWay::default();
    tokio::spawn(async move {
        loop {
            // Taken before the accept: while every slot is in use, new
            // connections stay queued rather than each costing a task.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let (tcp, peer) = accept_with_backoff(|| listener.accept()).await;
            let Some(address_slot) = AddressSlot::take(&under_way, peer.ip(), limits.per_address)
            else {
                log_refused(peer, "too many handshakes under way from this address");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(
                config
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            );
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(limits.timeout, acceptor.accept(tcp)).await;
                drop((slot, address_slot));
                match handshake {
                    Ok(Ok(tls)) => {
                        let _ = conn_tx.send(Ok(ClientStream::new(tls))).await;
                    }
                    Ok(Err(e)) => log_refused(peer, &e.to_string()),
                    Err(_) => log_refused(peer, "handshake timed out"),
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Accepts plain TCP connections for `Transport::DangerousPlaintext`, with
/// the same backoff on resource exhaustion as [`incoming`].
pub fn incoming_plaintext(
    listener: TcpListener,
) -> impl futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |listener| async move {
        let (tcp, _) = accept_with_backoff(|| listener.accept()).await;
        let _ = tcp.set_nodelay(true);
        Some((Ok(tcp), listener))
    })
}

/// The first pause after an accept failure that is not the connection's own.
const ACCEPT_PAUSE_MIN: std::time::Duration = std::time::Duration::from_millis(5);
/// The longest pause between accept attempts.
const ACCEPT_PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits for the next connection from `accept`. A failure that concerns only
/// the connection being accepted (reset or aborted before it was taken) is
/// skipped at once. Any other (out of file descriptors, out of memory) would
/// repeat at once, so it is logged and retried after a pause that doubles
/// from [`ACCEPT_PAUSE_MIN`] to [`ACCEPT_PAUSE_MAX`]: an exhausted server
/// neither spins nor floods its log, and takes connections again as soon as
/// the resource comes back. Connections already open are not touched.
async fn accept_with_backoff<T, F, Fut>(mut accept: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    use std::io::ErrorKind;
    let mut pause = ACCEPT_PAUSE_MIN;
    loop {
        match accept().await {
            Ok(x) => return x,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionAborted
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionRefused
                ) =>
            {
                tracing::debug!(cause = %e, "a connection went away before it was accepted");
            }
            Err(e) => {
                tracing::warn!(
                    cause = %e,
                    retry_in_ms = pause.as_millis() as u64,
                    "accept failed; connections already open are served meanwhile"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
            }
        }
    }
}

fn log_refused(peer: SocketAddr, why: &str) {
    tracing::warn!(%peer, cause = why, "TLS handshake refused");
}

/// What the server knows of a client connection, read once when its TLS
/// handshake completes and handed to every request on it (as a request
/// extension) instead of re-parsing the certificate per call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The subject of the verified client certificate ([`identity_of`]);
    /// `None` when it could not be read.
    pub identity: Option<Arc<str>>,
    /// Its serial number (lower-case hex), checked against revocations on
    /// every call; `None` when it could not be read.
    pub serial: Option<Arc<str>>,
    /// The end of its validity (Unix seconds): calls on a connection that
    /// outlives its certificate are refused.
    pub not_after: Option<i64>,
}

impl Peer {
    /// How long until a stream should wake to find the certificate expired:
    /// one second past its end, so that the wall clock has passed it too.
    pub fn expires_in(&self) -> Option<std::time::Duration> {
        self.not_after.map(|t| {
            let left = t.saturating_sub(jiff::Timestamp::now().as_second());
            std::time::Duration::from_secs(u64::try_from(left).unwrap_or(0).saturating_add(1))
        })
    }

    /// What a verified client certificate (DER) tells about its holder.
    pub fn of_cert(der: &[u8]) -> Peer {
        match pki::cert_info(der) {
            Some(i) => Peer {
                identity: Some(Arc::from(i.subject)),
                serial: Some(Arc::from(i.serial)),
                not_after: Some(i.not_after),
            },
            None => Peer {
                identity: None,
                serial: None,
                not_after: None,
            },
        }
    }
}

/// A client's TLS stream after a completed mutual-TLS handshake.
pub struct ClientStream {
    tls: TlsStream<tokio::net::TcpStream>,
    peer: Peer,
}

impl ClientStream {
    fn new(tls: TlsStream<tokio::net::TcpStream>) -> Self {
        // The verifier demanded a certificate, so the chain is present; its
        // first element is the client's own.
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map_or(
                Peer {
                    identity: None,
                    serial: None,
                    not_after: None,
                },
                |leaf| Peer::of_cert(leaf),
            );
        ClientStream { tls, peer }
    }
}

impl tonic::transport::server::Connected for ClientStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl tokio::io::AsyncRead for ClientStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tls).poll_read(cx, buf)
    }
}

/// Writes are encrypted into rustls's outgoing buffer and reach the socket
/// at the next flush, so everything HTTP/2 writes between two flushes leaves
/// in one `writev`. Reporting no vectored writes makes h2 copy DATA payloads
/// under 1 KiB into its frame buffer instead of writing them (with a flush)
/// on their own: a unary reply's HEADERS, DATA and trailers then go out in
/// one write instead of two, and replies to many streams share writes.
impl tokio::io::AsyncWrite for ClientStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::io::Write as _;
        let this = self.get_mut();
        let taken = this.tls.get_mut().1.writer().write(buf)?;
        if taken > 0 || buf.is_empty() {
            return std::task::Poll::Ready(Ok(taken));
        }
        // rustls's outgoing buffer is full: send it, then take more.
        std::task::ready!(std::pin::Pin::new(&mut this.tls).poll_flush(cx))?;
        match this.tls.get_mut().1.writer().write(buf)? {
            0 => std::task::Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            n => std::task::Poll::Ready(Ok(n)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}

/// The transport identity of a client certificate: its subject, e.g. `CN=ci-runner`.
pub fn identity_of(cert: &[u8]) -> Option<String> {
    pki::cert_info(cert).map(|i| i.subject)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;
    use std::time::Duration;

    use super::*;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(24) // EMFILE: too many open files
    }

    /// Runs `accept_with_backoff` over scripted results (paused clock) and
    /// returns what it accepted, how many attempts it made and the virtual
    /// time it took.
    async fn run(script: Vec<io::Result<u32>>) -> (u32, usize, Duration) {
        let mut script = VecDeque::from(script);
        let mut attempts = 0;
        let start = tokio::time::Instant::now();
        let got = accept_with_backoff(|| {
            attempts += 1;
            let next = script.pop_front().expect("the script ends with a success");
            async move { next }
        })
        .await;
        (got, attempts, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_is_skipped_without_a_pause() {
        let (got, attempts, took) = run(vec![
            Err(io::ErrorKind::ConnectionAborted.into()),
            Err(io::ErrorKind::ConnectionReset.into()),
            Ok(7),
        ])
        .await;
        assert_eq!((got, attempts), (7, 3));
        assert_eq!(took, Duration::ZERO);
    }

    /// `took` is `pauses` ms of paused-clock sleeps; the timer rounds each
    /// sleep up to its next 1 ms tick, so allow that much per sleep.
    fn assert_paused_for(took: Duration, pauses: u64, sleeps: u64) {
        assert!(
            took >= Duration::from_millis(pauses) && took <= Duration::from_millis(pauses + sleeps),
            "took {took:?}, expected {pauses} ms of pauses"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn resource_exhaustion_backs_off_doubling_up_to_the_cap() {
        let mut script: Vec<io::Result<u32>> = (0..12).map(|_| Err(emfile())).collect();
        script.push(Ok(9));
        let (got, attempts, took) = run(script).await;
        assert_eq!((got, attempts), (9, 13));
        // 5 + 10 + 20 + ... + 640 = 1275 ms, then the 1 s cap four times.
        assert_paused_for(took, 1275 + 4 * 1000, 12);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pause_starts_small_again_after_a_success() {
        let mut script: VecDeque<io::Result<u32>> = VecDeque::from([
            Err(emfile()),
            Err(emfile()),
            Err(emfile()),
            Ok(1),
            Err(emfile()),
            Ok(2),
        ]);
        let mut next = || {
            let r = script.pop_front().expect("scripted");
            async move { r }
        };
        let start = tokio::time::Instant::now();
        assert_eq!(accept_with_backoff(&mut next).await, 1);
        assert_paused_for(start.elapsed(), 5 + 10 + 20, 3);
        let start = tokio::time::Instant::now();
        assert_eq!(accept_with_backoff(&mut next).await, 2);
        assert_paused_for(start.elapsed(), 5, 1);
    }

    /// A development PKI for client "tester", the server and client
    /// configurations made from it, and a listener on a loopback port.
    async fn loopback_pki() -> (
        tempfile::TempDir,
        rustls::ServerConfig,
        rustls::ClientConfig,
        TcpListener,
        std::net::SocketAddr,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_dev_pki(dir.path(), &["localhost".into()], "tester").unwrap();
        let server_cfg =
            server_config(&pki.ca_cert, &pki.server_cert, &pki.server_key, None).unwrap();
        let client_cfg = client_config(&pki.ca_cert, &pki.client_cert, &pki.client_key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (dir, server_cfg, client_cfg, listener, addr)
    }

    /// A mutual-TLS pair over loopback: the server side wrapped as the
    /// server wraps it, the client side plain tokio-rustls.
    async fn tls_pair() -> (
        ClientStream,
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        tempfile::TempDir,
    ) {
        let (dir, server_cfg, client_cfg, listener, addr) = loopback_pki().await;
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
                .connect(name, tcp)
                .await
                .unwrap()
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsAcceptor::from(Arc::new(server_cfg))
                .accept(tcp)
                .await
                .unwrap()
        };
        let (client, server) = tokio::join!(connect, accept);
        (ClientStream::new(server), client, dir)
    }

    /// A server accepting with the given handshake limits (an hour's
    /// timeout), its address, and a client configuration it accepts.
    async fn limited_server(
        total: usize,
        per_address: usize,
    ) -> (
        tokio_stream::wrappers::ReceiverStream<Result<ClientStream, io::Error>>,
        std::net::SocketAddr,
        rustls::ClientConfig,
        tempfile::TempDir,
    ) {
        let (dir, server_cfg, client_cfg, listener, addr) = loopback_pki().await;
        let limits = HandshakeLimits {
            total,
            per_address,
            timeout: std::time::Duration::from_secs(3600),
        };
        (
            incoming_limited(
                listener,
                Arc::new(std::sync::RwLock::new(Arc::new(server_cfg))),
                limits,
            ),
            addr,
            client_cfg,
            dir,
        )
    }

    /// While every handshake slot is held by a client that never speaks,
    /// the next client is not served; once that client goes away, it is.
    /// (Paused clock: the wait below is virtual time, and the stalled
    /// handshake's own timeout is an hour away.)
    #[tokio::test(start_paused = true)]
    async fn handshakes_under_way_are_capped() {
        use futures::StreamExt;
        let (mut served, addr, client_cfg, _dir) = limited_server(1, 1).await;
        let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let client = tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
                .connect(name, tcp)
                .await
        });
        let minute = std::time::Duration::from_secs(60);
        assert!(
            tokio::time::timeout(minute, served.next()).await.is_err(),
            "a client was served while the only handshake slot was taken"
        );
        drop(silent);
        let conn = tokio::time::timeout(minute, served.next()).await;
        let conn = conn.expect("the freed slot was not used").unwrap().unwrap();
        assert_eq!(conn.peer.identity.as_deref(), Some("CN=tester"));
        client.await.unwrap().unwrap();
    }

    /// One address holds at most its share of the handshake slots: a second
    /// silent connection from it is closed at once, while another address
    /// is still served (paused clock; 127.0.0.2 is a second loopback address).
    #[tokio::test(start_paused = true)]
    async fn one_address_cannot_take_every_handshake_slot() {
        use futures::StreamExt;
        use tokio::io::AsyncReadExt;
        let (mut served, addr, client_cfg, _dir) = limited_server(4, 1).await;
        let from = |ip: &str| {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            socket.connect(addr)
        };
        let _silent = from("127.0.0.1").await.unwrap();
        // The second from the same address is closed without a word.
        let mut second = from("127.0.0.1").await.unwrap();
        let mut buf = [0u8; 1];
        let minute = std::time::Duration::from_secs(60);
        let read = tokio::time::timeout(minute, second.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the connection over the address's limit was kept: {read:?}"
        );
        // Another address completes its handshake meanwhile.
        let tcp = from("127.0.0.2").await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let client = tokio::spawn(async move {
            tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
                .connect(name, tcp)
                .await
        });
        let conn = tokio::time::timeout(minute, served.next()).await;
        let conn = conn
            .expect("the other address was not served")
            .unwrap()
            .unwrap();
        assert_eq!(conn.peer.identity.as_deref(), Some("CN=tester"));
        client.await.unwrap().unwrap();
    }

    /// Sends "hello" through `w` and reads it from `r`.
    async fn hello(
        w: &mut (impl tokio::io::AsyncWrite + Unpin),
        r: &mut (impl tokio::io::AsyncRead + Unpin),
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        w.write_all(b"hello").await.unwrap();
        w.flush().await.unwrap();
        let mut got = [0u8; 5];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn replies_reach_the_socket_only_at_the_flush() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, mut client, _dir) = tls_pair().await;
        assert_eq!(server.peer.identity.as_deref(), Some("CN=tester"));
        // h2 must see an unvectored writer, or it writes DATA payloads over
        // 256 bytes apart from the frames queued behind them.
        assert!(!tokio::io::AsyncWrite::is_write_vectored(&server));
        // A first exchange also takes the session tickets off the socket.
        hello(&mut server, &mut client).await;

        server.write_all(b"headers,").await.unwrap();
        server.write_all(b"data,trailers").await.unwrap();
        // A non-blocking peek at the client's socket itself (tokio's
        // try_read answers from its cached readiness, not the socket).
        let mut probe = [std::mem::MaybeUninit::uninit(); 1];
        let unsent = socket2::SockRef::from(client.get_ref().0).peek(&mut probe);
        assert_eq!(
            unsent.map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock),
            "bytes reached the socket before the flush"
        );
        server.flush().await.unwrap();
        let mut got = [0u8; 21];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"headers,data,trailers");
    }

    /// Our client connector against one TLS accept on `listener`: what each
    /// side got.
    async fn connect_coalescing(
        server_cfg: rustls::ServerConfig,
        client_cfg: rustls::ClientConfig,
        listener: TcpListener,
        addr: SocketAddr,
    ) -> (
        io::Result<client::CoalescingStream>,
        io::Result<TlsStream<tokio::net::TcpStream>>,
    ) {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut connector = client::Connector::new(
            client_cfg,
            name,
            addr.to_string(),
            std::time::Duration::from_secs(10),
        );
        let connect = tower::Service::call(&mut connector, http::Uri::from_static("/"));
        let accept = async {
            let (tcp, _) = listener.accept().await?;
            TlsAcceptor::from(Arc::new(server_cfg)).accept(tcp).await
        };
        let (client, server) = tokio::join!(connect, accept);
        (client.map(hyper_util::rt::TokioIo::into_inner), server)
    }

    /// The client transport over a mutual-TLS connection, and the server's
    /// side of it.
    async fn coalescing_pair() -> (
        client::CoalescingStream,
        TlsStream<tokio::net::TcpStream>,
        tempfile::TempDir,
    ) {
        let (dir, server_cfg, client_cfg, listener, addr) = loopback_pki().await;
        let (client, server) = connect_coalescing(server_cfg, client_cfg, listener, addr).await;
        (client.unwrap(), server.unwrap(), dir)
    }

    /// Whether bytes wait on `tcp` (a non-blocking peek at the socket itself;
    /// tokio's try_read answers from its cached readiness).
    fn bytes_waiting(tcp: &tokio::net::TcpStream) -> bool {
        let mut probe = [std::mem::MaybeUninit::uninit(); 1];
        match socket2::SockRef::from(tcp).peek(&mut probe) {
            Ok(n) => n > 0,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("peek: {e}"),
        }
    }

    #[tokio::test]
    async fn a_client_flush_lets_the_frames_queued_behind_it_share_its_write() {
        use std::task::{Context, Poll};
        use tokio::io::{AsyncReadExt, AsyncWrite};
        let (mut client, mut server, _dir) = coalescing_pair().await;
        assert!(!tokio::io::AsyncWrite::is_write_vectored(&client));
        // A first exchange also takes the session tickets off the sockets.
        hello(&mut client, &mut server).await;

        let woken = Arc::new(Woken::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut pinned = std::pin::Pin::new(&mut client);
        // With nothing unsent a flush does not wait.
        assert!(matches!(
            pinned.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(woken.count(), 0);

        assert!(matches!(
            pinned.as_mut().poll_write(&mut cx, b"headers,"),
            Poll::Ready(Ok(8))
        ));
        // The first flush yields once, asking to be polled again at once.
        assert!(pinned.as_mut().poll_flush(&mut cx).is_pending());
        assert_eq!(woken.count(), 1, "a deferred flush must wake its task");
        assert!(
            !bytes_waiting(server.get_ref().0),
            "bytes reached the socket before the deferred flush"
        );
        // What the other tasks queue meanwhile goes out with it.
        assert!(matches!(
            pinned.as_mut().poll_write(&mut cx, b"data,"),
            Poll::Ready(Ok(5))
        ));
        assert!(matches!(
            pinned.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(woken.count(), 1);
        let mut got = [0u8; 13];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"headers,data,");

        // The next flush of new bytes yields again.
        assert!(matches!(
            pinned.as_mut().poll_write(&mut cx, b"x"),
            Poll::Ready(Ok(1))
        ));
        assert!(pinned.as_mut().poll_flush(&mut cx).is_pending());
        assert_eq!(woken.count(), 2);
    }

    #[tokio::test]
    async fn a_server_that_does_not_speak_http2_is_refused_at_connect() {
        let (_dir, mut server_cfg, client_cfg, listener, addr) = loopback_pki().await;
        server_cfg.alpn_protocols.clear();
        let (client, server) = connect_coalescing(server_cfg, client_cfg, listener, addr).await;
        assert!(server.is_ok(), "the handshake itself succeeds");
        let err = client.err().expect("connected without HTTP/2");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string()
                .contains("did not agree to HTTP/2 (ALPN h2)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_client_write_larger_than_the_tls_buffer_arrives_whole() {
        let (client, server, _dir) = coalescing_pair().await;
        a_big_write_arrives_whole(client, server).await;
    }

    /// Writes four times rustls's 64 KiB limit on buffered outgoing data
    /// through `w`, with a pattern that shows any lost, repeated or reordered
    /// chunk, and reads it back whole from `r`.
    async fn a_big_write_arrives_whole(
        mut w: impl tokio::io::AsyncWrite + Unpin,
        mut r: impl tokio::io::AsyncRead + Unpin,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let big: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut got = vec![0u8; big.len()];
        let (wrote, read) = tokio::join!(
            async {
                w.write_all(&big).await?;
                w.flush().await
            },
            r.read_exact(&mut got)
        );
        wrote.unwrap();
        read.unwrap();
        assert!(got == big, "the bytes read differ from the bytes written");
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicUsize);

    impl Woken {
        fn count(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_write_larger_than_the_tls_buffer_goes_out_without_a_flush() {
        let (server, client, _dir) = tls_pair().await;
        a_big_write_arrives_whole(server, client).await;
    }
}
