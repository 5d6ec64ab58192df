//! A lean gRPC client for unary calls, written on the `h2` crate, for the
//! load generator.
//!
//! tonic's channel hands each call to a buffer worker task, and hyper sends
//! the request's DATA frame from a task of its own once the connection task
//! has opened the stream. The CLI's transport (`tls::client`) gets both frames
//! into one write, but the extra tasks stay, and in the load generator they
//! run on the same two cores as the server. This client queues the DATA frame
//! right behind the HEADERS before the connection task runs, as grpcio (under
//! the Python client) does, with no task of its own per call: it loads the
//! server the way pipelines' clients do without charging it for hyper's.
//!
//! It speaks only what the load generator needs: mutual TLS, unary calls,
//! uncompressed messages, and the gRPC status in the trailers (or in the
//! headers of a trailers-only reply).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::CliError;
use super::client::Conn;

/// One HTTP/2 connection; clones share it (each call is its own stream).
#[derive(Clone, Debug)]
pub struct H2Client {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
}

/// Why a call failed: transport, HTTP, or a gRPC status other than OK.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("HTTP status {0} (expected 200)")]
    HttpStatus(u16),
    #[error("gRPC status {code}: {message}")]
    Status { code: String, message: String },
    #[error("reply framing: {0}")]
    Framing(String),
    #[error("reply message: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl H2Client {
    /// Opens a mutual-TLS connection to `conn.url` (`https://host:port`).
    pub async fn connect(conn: &Conn) -> Result<Self, CliError> {
        let authority = conn
            .url
            .strip_prefix("https://")
            .ok_or_else(|| {
                CliError::usage(format!(
                    "--server {}: the lean client speaks only https",
                    conn.url
                ))
            })?
            .trim_end_matches('/')
            .to_owned();
        let host = super::client::server_host(&conn.url)?;
        let name = rustls::pki_types::ServerName::try_from(host)
            .map_err(|e| CliError::usage(format!("--server {}: {e}", conn.url)))?;
        let cfg = crate::tls::client_config(&conn.ca, &conn.cert, &conn.key)
            .map_err(|e| CliError::usage(e.to_string()))?;
        let failed = |e: &dyn std::fmt::Display| {
            CliError::failed(format!("connecting to {}: {e}", conn.url))
        };
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| failed(&e))?;
        tcp.set_nodelay(true).map_err(|e| failed(&e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| failed(&e))?;
        let (send, connection) = h2::client::handshake(tls).await.map_err(|e| failed(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "lean client connection ended");
            }
        });
        Ok(H2Client { send, authority })
    }

    /// Calls the unary method `path` (`/package.Service/Method`).
    pub async fn unary<Req, Resp>(&self, path: &str, req: &Req) -> Result<Resp, CallError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let len = req.encoded_len();
        let prefix_len = u32::try_from(len)
            .map_err(|_| CallError::Framing(format!("request of {len} bytes")))?;
        let mut body = BytesMut::with_capacity(5 + len);
        body.put_u8(0); // not compressed
        body.put_u32(prefix_len);
        req.encode_raw(&mut body);
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("https://{}{path}", self.authority))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())
            .map_err(|e| CallError::Framing(e.to_string()))?;
        let mut send = self.send.clone().ready().await?;
        let (response, mut stream) = send.send_request(request, false)?;
        // Queued before the connection task runs: HEADERS and DATA leave in
        // one write.
        stream.send_data(body.freeze(), true)?;
        let (head, mut recv) = response.await?.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(CallError::HttpStatus(head.status.as_u16()));
        }
        // A trailers-only reply carries its status in the headers.
        if head.headers.contains_key("grpc-status") {
            status_of(&head.headers)?;
            return Err(CallError::Framing(
                "trailers-only reply with status 0: no message".into(),
            ));
        }
        let mut reply = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            reply.extend_from_slice(&chunk);
        }
        let trailers = recv
            .trailers()
            .await?
            .ok_or_else(|| CallError::Framing("no trailers (no gRPC status)".into()))?;
        status_of(&trailers)?;
        match reply.as_ref() {
            [0, a, b, c, d, msg @ ..]
                if msg.len() == u32::from_be_bytes([*a, *b, *c, *d]) as usize =>
            {
                Ok(Resp::decode(msg)?)
            }
            [1, ..] => Err(CallError::Framing(
                "compressed reply (not requested)".into(),
            )),
            _ => Err(CallError::Framing(format!(
                "{} bytes is not one length-prefixed message",
                reply.len()
            ))),
        }
    }
}

/// `Ok` for `grpc-status: 0`, the status and its message otherwise.
fn status_of(h: &http::HeaderMap) -> Result<(), CallError> {
    let bytes = |k: &str| h.get(k).map_or(&[][..], http::HeaderValue::as_bytes);
    match bytes("grpc-status") {
        b"0" => Ok(()),
        b"" => Err(CallError::Framing("no grpc-status".into())),
        code => Err(CallError::Status {
            code: String::from_utf8_lossy(code).into_owned(),
            message: percent_decode(bytes("grpc-message")),
        }),
    }
}

/// `grpc-message` is percent-encoded UTF-8; a malformed escape is kept as is.
fn percent_decode(raw: &[u8]) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(
            percent_decode(b"subjects%5B0%5D: bad %E2%9C%97"),
            "subjects[0]: bad \u{2717}"
        );
        assert_eq!(percent_decode(b"100% sure, %zz %4"), "100% sure, %zz %4");
    }
}
