//! HTTP/1.1 over plain TCP or TLS, with a small pool of keep-alive connections (see the
//! module documentation of `external`).

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::cfssl::append_capped;
use super::config::TlsState;
use super::error::*;

/// Where a connection goes: scheme, authority and (for `https`) the TLS configuration it was
/// made with.
struct PoolKey {
    https: bool,
    authority: String,
    tls: Option<Arc<ClientConfig>>,
}

impl PartialEq for PoolKey {
    fn eq(&self, o: &PoolKey) -> bool {
        let same_tls = match (&self.tls, &o.tls) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        self.https == o.https && self.authority == o.authority && same_tls
    }
}

/// An HTTP/1.1 connection: the request half, and the task driving the socket (aborted, which
/// closes the socket, when this is dropped).
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Idle keep-alive connections (see the module docs).
#[derive(Default)]
pub(super) struct Pool {
    idle: std::sync::Mutex<Vec<(PoolKey, Conn, tokio::time::Instant)>>,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PoolKey, Conn, tokio::time::Instant)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used live idle connection for `key`; expired or closed ones go.
    fn take(&self, key: &PoolKey) -> Option<Conn> {
        let now = tokio::time::Instant::now();
        let mut idle = self.lock();
        idle.retain(|(_, c, since)| !c.sender.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT);
        let i = idle.iter().rposition(|(k, ..)| k == key)?;
        Some(idle.remove(i).1)
    }

    /// Takes back the connection of an exchange, when it can be reused; returns the answer.
    fn keep(&self, key: PoolKey, (answer, conn): Exchanged) -> (u16, Vec<u8>) {
        if let Some(conn) = conn {
            let mut idle = self.lock();
            if idle.iter().filter(|(k, ..)| *k == key).count() < MAX_IDLE_PER_HOST {
                idle.push((key, conn, tokio::time::Instant::now()));
            }
        }
        answer
    }

    pub(super) fn clear(&self) {
        self.lock().clear();
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// POSTs `body` to `url`; returns the status and at most [`CERTIFICATE_MAX_SIZE`] bytes of
/// the body. Reuses an idle connection of `pool` when there is one, and returns the connection
/// to it after a complete answer.
pub(super) async fn post(
    pool: &Pool,
    url: &str,
    tls: &TlsState,
    body: Bytes,
) -> Result<(u16, Vec<u8>), ExternalCaError> {
    let transport = |e: String| ExternalCaError::Transport(e);
    let uri: Uri = url.parse().map_err(|e| transport(format!("parse {url:?}: {e}")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => {
            return Err(transport(format!(
                "Post {url:?}: unsupported protocol scheme {:?}",
                other.unwrap_or("")
            )))
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| transport(format!("Post {url:?}: no host in request URL")))?
        .as_str()
        .to_string();
    let host = uri.host().unwrap_or("");
    let bare_host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = || {
        Request::post(target.as_str())
            .header(HOST, authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("swarmca/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body.clone()))
            .map_err(|e| transport(e.to_string()))
    };
    let tls_cfg = if https {
        Some(tls.clone().map_err(|e| transport(format!("TLS configuration: {e}")))?)
    } else {
        None
    };
    let key = PoolKey { https, authority: authority.clone(), tls: tls_cfg.clone() };

    if let Some(conn) = pool.take(&key) {
        match exchange(conn, request()?).await {
            Ok(done) => return Ok(pool.keep(key, done)),
            // Closed by the peer while idle, before any answer: try a new connection.
            Err(Failed::BeforeAnswer(e)) => debug!(error = %e, "reused connection failed; reconnecting"),
            Err(Failed::After(e)) => return Err(e),
        }
    }

    let tcp = tokio::net::TcpStream::connect((bare_host.as_str(), port))
        .await
        .map_err(|e| transport(format!("dial tcp {bare_host}:{port}: {e}")))?;
    // Like Go's dialer: without it, a request written in two TLS records waits for the peer's
    // delayed ACK (about 40 ms per request).
    tcp.set_nodelay(true).map_err(|e| transport(format!("set TCP_NODELAY: {e}")))?;
    let tcp = QuietFlush::new(tcp);
    let conn = match tls_cfg {
        Some(cfg) => {
            let name = ServerName::try_from(bare_host.clone())
                .map_err(|e| transport(format!("invalid TLS server name {bare_host:?}: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| transport(format!("tls: {}", error_chain(&e))))?;
            connect(stream).await?
        }
        None => connect(tcp).await?,
    };
    match exchange(conn, request()?).await {
        Ok(done) => Ok(pool.keep(key, done)),
        Err(Failed::BeforeAnswer(e) | Failed::After(e)) => Err(e),
    }
}

/// A byte stream whose flush does nothing when nothing was written since the last flush —
/// what a TCP socket's flush does anyway. hyper flushes an idle keep-alive connection each
/// time it is polled; on a simulated socket every flush is a packet that wakes the peer, whose
/// own flush wakes this side again, so without this an idle pooled connection would never go
/// quiet under madsim.
#[derive(Debug)]
pub struct QuietFlush<S> {
    pub(super) io: S,
    dirty: bool,
}

impl<S> QuietFlush<S> {
    /// Wraps `io`.
    pub fn new(io: S) -> QuietFlush<S> {
        QuietFlush { io, dirty: false }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for QuietFlush<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for QuietFlush<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.dirty = true;
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.dirty = true;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.dirty {
            return std::task::Poll::Ready(Ok(()));
        }
        let r = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        if matches!(r, std::task::Poll::Ready(Ok(()))) {
            self.dirty = false;
        }
        r
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The HTTP/1.1 handshake over `io`; the connection is driven by a task of its own.
async fn connect<I>(io: I) -> Result<Conn, ExternalCaError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| ExternalCaError::Transport(error_chain(&e)))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn { sender, task })
}

/// An exchange's answer (status, body) and its connection, when that can be reused.
type Exchanged = ((u16, Vec<u8>), Option<Conn>);

/// How an exchange failed: before any answer arrived (the request may be retried on a new
/// connection), or after.
enum Failed {
    BeforeAnswer(ExternalCaError),
    After(ExternalCaError),
}

/// One request over `conn`: the status and body, and the connection when it can be reused
/// (the whole body was read and the peer keeps it open). Dropping this future drops the
/// connection.
async fn exchange(mut conn: Conn, req: Request<Full<Bytes>>) -> Result<Exchanged, Failed> {
    let transport = |e: hyper::Error| ExternalCaError::Transport(error_chain(&e));
    conn.sender.ready().await.map_err(|e| Failed::BeforeAnswer(transport(e)))?;
    let resp = conn.sender.send_request(req).await.map_err(|e| Failed::BeforeAnswer(transport(e)))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut complete = false;
    while buf.len() < CERTIFICATE_MAX_SIZE {
        match body.frame().await {
            None => {
                complete = true;
                break;
            }
            Some(Err(e)) => return Err(Failed::After(ExternalCaError::Body(error_chain(&e)))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    append_capped(&mut buf, &data);
                }
            }
        }
    }
    let reusable = complete && !conn.sender.is_closed();
    Ok(((status, buf), reusable.then_some(conn)))
}
