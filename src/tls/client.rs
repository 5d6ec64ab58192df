//! The client side of a mutual-TLS connection, for tonic's client.
//!
//! hyper's HTTP/2 client sends a call's HEADERS frame from the connection
//! task, and its DATA frame only after a second task has seen the opened
//! stream's send capacity: with a transport that writes at every flush, that
//! is two TLS records in two `writev` calls and two wake-ups of the server for
//! every unary call. [`CoalescingStream`] holds a flush back for one turn of
//! the scheduler, which lets the body task queue its DATA frame first, so the
//! whole call leaves in one write, as grpcio's does.

use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A client's TLS stream whose writes are encrypted into rustls's outgoing
/// buffer and reach the socket at a flush, and whose flush first lets every
/// other ready task of the runtime run once.
pub struct CoalescingStream {
    tls: TlsStream<TcpStream>,
    /// Bytes taken since the last flush reached the socket.
    unsent: bool,
    /// This flush has already given the other tasks their turn.
    deferred: bool,
}

impl AsyncRead for CoalescingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for CoalescingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let taken = this.tls.get_mut().1.writer().write(buf)?;
        if taken > 0 || buf.is_empty() {
            this.unsent |= taken > 0;
            return Poll::Ready(Ok(taken));
        }
        // rustls's outgoing buffer is full: send it, then take more.
        ready!(Pin::new(&mut this.tls).poll_flush(cx))?;
        match this.tls.get_mut().1.writer().write(buf)? {
            0 => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            n => {
                this.unsent = true;
                Poll::Ready(Ok(n))
            }
        }
    }

    /// Without vectored writes h2 copies DATA payloads under 1 KiB into its
    /// own frame buffer (with them, only those of 256 bytes or less), so a
    /// call's frames reach rustls in one piece.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unsent && !this.deferred {
            // Rescheduled behind the tasks already ready to run; when polled
            // again h2 writes what they queued and flushes once more.
            this.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(Pin::new(&mut this.tls).poll_flush(cx))?;
        this.unsent = false;
        this.deferred = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}

/// Connects tonic's client over [`CoalescingStream`]: TCP to `addr`, then a
/// TLS handshake verifying the server's certificate for `name`, which must
/// agree on HTTP/2 (ALPN `h2`).
#[derive(Clone)]
pub struct Connector {
    cfg: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    addr: String,
    timeout: Duration,
}

impl Connector {
    /// `addr` is `host:port`; `name` the name the server's certificate must
    /// carry. When `host` resolves to several addresses they are tried in
    /// turn, each for its share of `timeout`, so one that drops packets does
    /// not use up the time of those after it.
    pub fn new(
        cfg: rustls::ClientConfig,
        name: ServerName<'static>,
        addr: String,
        timeout: Duration,
    ) -> Self {
        Connector {
            cfg: Arc::new(cfg),
            name,
            addr,
            timeout,
        }
    }
}

/// A TCP connection to one of `addr`'s addresses.
async fn tcp_connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let addrs: Vec<_> = tokio::net::lookup_host(addr).await?.collect();
    connect_first(addr, &addrs, timeout).await
}

/// A TCP connection to the first of `addrs` (what `name` resolved to) that
/// answers, each tried in turn for its share of `timeout`; else the last
/// one's error, naming it.
async fn connect_first(
    name: &str,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> io::Result<TcpStream> {
    let share = timeout / u32::try_from(addrs.len().max(1)).unwrap_or(u32::MAX);
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{name}: no address"));
    for &a in addrs {
        match tokio::time::timeout(share, TcpStream::connect(a)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => last = io::Error::new(e.kind(), format!("{a}: {e}")),
            Err(_) => {
                last = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{a}: no answer within {share:?}"),
                )
            }
        }
    }
    Err(last)
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<CoalescingStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tcp_connect(&this.addr, this.timeout).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(this.cfg)
                .connect(this.name, tcp)
                .await?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: the server did not agree to HTTP/2 (ALPN h2); is it a gRPC server?",
                        this.addr
                    ),
                ));
            }
            Ok(TokioIo::new(CoalescingStream {
                tls,
                unsent: false,
                deferred: false,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address nothing listens on: a port just released.
    async fn closed() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn the_first_address_that_answers_is_used() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let dead = closed().await;
        let tcp = connect_first("test", &[dead, live_addr], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(tcp.peer_addr().unwrap(), live_addr);
        let (_, from) = live.accept().await.unwrap();
        assert_eq!(from, tcp.local_addr().unwrap());
    }

    #[tokio::test]
    async fn when_none_answers_the_error_names_the_last_address() {
        let (a, b) = (closed().await, closed().await);
        let e = connect_first("test", &[a, b], Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        assert!(e.to_string().starts_with(&format!("{b}: ")), "{e}");
        let e = connect_first("test", &[], Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }
}
