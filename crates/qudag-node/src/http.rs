//! The `/metrics` endpoint of `listen`: hyper's HTTP/1 server, one request
//! per connection.
//!
//! Answers: `GET` or `HEAD /metrics` is 200 with the Prometheus text format
//! ([`CONTENT_TYPE`]); any other path is 404; any other method is 405 (with
//! `Allow: GET, HEAD`). hyper answers a request it cannot parse with 400, and
//! a request head larger than [`MAX_HEAD`] bytes (a long target included) or
//! with more than [`MAX_HEADERS`] headers with 431 Request Header Fields Too
//! Large; it closes the connection without an answer when the head does not
//! arrive within the header timeout.
//!
//! Limits, so that slow or many clients cannot exhaust the process:
//!
//! - at most [`Limits::max_connections`] connections at once: a slot is taken
//!   *before* `accept`, so at the cap the server stops accepting and the
//!   kernel's listen backlog holds the rest (no descriptor is spent on them);
//! - the request head must arrive within [`Limits::header_timeout`], and the
//!   whole connection ends after [`Limits::connection_timeout`];
//! - keep-alive is off: the connection closes after the answer;
//! - the listen backlog is [`BACKLOG`] deep, so waiting clients queue in the
//!   kernel rather than in SYN retransmissions;
//! - when `accept` fails (for example `EMFILE`, too many open files) the loop
//!   backs off from [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`], logs once per
//!   back-off, and resets after the next successful accept: it never spins.
//!
//! It is meant for a scraper on a trusted network, not as a general web
//! server. This file uses nothing else from qudag-node or qudag-net (the
//! metrics text comes from a closure), because the `http_head` fuzz target
//! (`fuzz/fuzz_targets/http_head.rs`) compiles it too, with `#[path]`.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

/// The largest request head (request line and headers) read, in bytes; a
/// larger one is answered 431. hyper's buffer cannot be smaller than 8 KiB.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// The most request headers accepted; more are answered 431.
pub(crate) const MAX_HEADERS: usize = 32;
/// The Prometheus text exposition content type.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4";
/// Default cap on concurrent connections.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default time a client has to send its request head.
pub(crate) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the answer once the head is in: the whole connection is limited
/// to the header timeout plus this.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause after a failed `accept`.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause after repeated failed `accept`s.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The listen backlog: at the connection cap, this many more connections
/// wait in the kernel (without a descriptor in this process) to be accepted.
pub(crate) const BACKLOG: u32 = 1024;

/// Produces the metrics text for one answer.
pub(crate) type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The limits of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The most connections served at once (at least 1).
    pub(crate) max_connections: usize,
    /// How long a client may take to send its request head.
    pub(crate) header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

impl Limits {
    /// The most time one connection lives: the header timeout plus [`ANSWER_TIMEOUT`].
    pub(crate) fn connection_timeout(&self) -> Duration {
        self.header_timeout.saturating_add(ANSWER_TIMEOUT)
    }
}

/// Why serving one connection ended early.
#[derive(Debug)]
pub(crate) enum ConnError {
    /// hyper gave up (bad request, header timeout, I/O error).
    Http(hyper::Error),
    /// The connection outlived [`Limits::connection_timeout`].
    TimedOut,
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Http(e) => write!(f, "{e}"),
            ConnError::TimedOut => f.write_str("connection time limit reached"),
        }
    }
}

impl std::error::Error for ConnError {}

/// The answer to a request for `path` with `method`; `render` is called only for a 200.
pub(crate) fn answer(
    method: &Method,
    path: &str,
    render: &dyn Fn() -> String,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if method != Method::GET && method != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".to_owned(),
        )
    } else if path == "/metrics" {
        (StatusCode::OK, CONTENT_TYPE, render())
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// Serves one request on `io` within `limits`, then closes.
///
/// Any byte sequence is a valid input: a bad one ends in an error answer or
/// in closing the connection, never in a panic.
pub(crate) async fn serve_connection<I>(
    io: I,
    limits: Limits,
    render: Render,
) -> Result<(), ConnError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        // The old hand-written server sent `Content-Type:`; keep that spelling.
        .title_case_headers(true);
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let response = answer(req.method(), req.uri().path(), &*render);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    match tokio::time::timeout(limits.connection_timeout(), conn).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ConnError::Http(e)),
        Err(_) => Err(ConnError::TimedOut),
    }
}

/// The pause schedule after failed `accept`s.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// The last pause, while failing.
    delay: Option<Duration>,
    /// Failures since the last success.
    failures: u64,
}

impl Backoff {
    /// Records a failure: the pause to take, and whether it is the first of
    /// this back-off (the one to log).
    pub(crate) fn failed(&mut self) -> (Duration, bool) {
        let first = self.delay.is_none();
        let delay = self
            .delay
            .map_or(BACKOFF_MIN, |d| d.saturating_mul(2).min(BACKOFF_MAX));
        self.delay = Some(delay);
        self.failures += 1;
        (delay, first)
    }

    /// Records a success; returns how many failures it ends, if any.
    pub(crate) fn succeeded(&mut self) -> Option<u64> {
        self.delay = None;
        Some(std::mem::take(&mut self.failures)).filter(|&n| n > 0)
    }
}

/// Errors of `accept` that concern one pending connection only (retry at once).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Binds the metrics listener at `addr` with a [`BACKLOG`]-deep queue.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves `/metrics` with `render` on `listener` within `limits` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, limits: Limits, render: Render) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = Backoff::default();
    loop {
        // The slot comes first: at the cap, nothing is accepted.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let stream = loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if let Some(n) = backoff.succeeded() {
                        tracing::info!(failures = n, "metrics endpoint accepting again");
                    }
                    break stream;
                }
                Err(e) if is_per_connection(&e) => {
                    tracing::debug!(error = %e, "metrics accept: connection gone");
                }
                Err(e) => {
                    let (delay, first) = backoff.failed();
                    if first {
                        tracing::warn!(
                            error = %e,
                            "metrics endpoint cannot accept; backing off (up to {BACKOFF_MAX:?}) until it can"
                        );
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, limits, render).await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn render() -> Render {
        Arc::new(|| "x 1\n# EOF\n".to_owned())
    }

    /// Sends `request` over an in-memory pipe and returns the whole answer
    /// and how serving ended.
    async fn exchange(request: &[u8], limits: Limits) -> (String, Result<(), ConnError>) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(serve_connection(server, limits, render()));
        client.write_all(request).await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        (
            String::from_utf8_lossy(&out).into_owned(),
            served.await.unwrap(),
        )
    }

    #[tokio::test]
    async fn get_metrics_is_200_prometheus_text() {
        let (out, end) = exchange(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            Limits::default(),
        )
        .await;
        assert!(end.is_ok(), "{end:?}");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.contains("Content-Type: text/plain; version=0.0.4\r\n"),
            "{out}"
        );
        assert!(out.contains("Content-Length: 10\r\n"), "{out}");
        assert!(
            out.to_ascii_lowercase().contains("connection: close\r\n"),
            "{out}"
        );
        assert!(out.ends_with("\r\n\r\nx 1\n# EOF\n"), "{out}");
        // A query string does not change the path; HTTP/1.0 is served too.
        let (out, _) = exchange(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", Limits::default()).await;
        assert!(
            out.starts_with("HTTP/1.0 200 OK\r\n") || out.starts_with("HTTP/1.1 200 OK\r\n"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn head_has_the_headers_and_no_body() {
        let (out, _) = exchange(
            b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            Limits::default(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.contains("Content-Type: text/plain; version=0.0.4\r\n"),
            "{out}"
        );
        assert!(out.ends_with("\r\n\r\n"), "{out}");
    }

    #[tokio::test]
    async fn other_paths_methods_and_bad_heads_get_errors() {
        let cases: [(&[u8], &str); 6] = [
            (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found\r\n"),
            (
                b"GET /metricsx HTTP/1.1\r\n\r\n",
                "HTTP/1.1 404 Not Found\r\n",
            ),
            (
                b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed\r\n",
            ),
            (
                b"DELETE /nope HTTP/1.1\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed\r\n",
            ),
            (
                b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
                "HTTP/1.1 400 Bad Request\r\n",
            ),
            (
                b"GET /metrics SPDY/3\r\n\r\n",
                "HTTP/1.1 400 Bad Request\r\n",
            ),
        ];
        for (request, status) in cases {
            let (out, _) = exchange(request, Limits::default()).await;
            assert!(
                out.starts_with(status),
                "{:?} -> {out:?}",
                String::from_utf8_lossy(request)
            );
            if status.contains("405") {
                assert!(out.contains("Allow: GET, HEAD\r\n"), "{out}");
            }
        }
    }

    #[tokio::test]
    async fn oversized_heads_and_too_many_headers_are_431() {
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 100, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        let (out, end) = exchange(&big, Limits::default()).await;
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        assert!(end.is_err());

        let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let (out, _) = exchange(&many, Limits::default()).await;
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");

        // A target longer than the head limit fills the buffer first: 431 too.
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "m".repeat(MAX_HEAD));
        let (out, _) = exchange(long.as_bytes(), Limits::default()).await;
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_is_cut_off_at_the_header_timeout() {
        let limits = Limits {
            header_timeout: Duration::from_secs(3),
            ..Limits::default()
        };
        let t0 = tokio::time::Instant::now();
        let (out, end) = exchange(b"GET /metr", limits).await;
        assert_eq!(out, "", "no answer to an unfinished head");
        assert!(
            matches!(end, Err(ConnError::Http(ref e)) if e.is_timeout()),
            "{end:?}"
        );
        // On the paused clock the cut-off is exactly the header timeout.
        assert_eq!(t0.elapsed(), limits.header_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_is_cut_off_at_the_connection_timeout() {
        // A big answer into a small pipe that nobody reads (the request fits).
        let (mut client, server) = tokio::io::duplex(64);
        client
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let big: Render = Arc::new(|| "y".repeat(1 << 20));
        let t0 = tokio::time::Instant::now();
        let end = serve_connection(server, Limits::default(), big).await;
        assert!(matches!(end, Err(ConnError::TimedOut)), "{end:?}");
        assert_eq!(t0.elapsed(), Limits::default().connection_timeout());
        drop(client);
    }

    #[test]
    fn backoff_doubles_to_the_cap_logs_once_and_resets() {
        let mut b = Backoff::default();
        let ms = |d: Duration| d.as_millis();
        let seq: Vec<(u128, bool)> = (0..6)
            .map(|_| b.failed())
            .map(|(d, f)| (ms(d), f))
            .collect();
        assert_eq!(
            seq,
            [
                (100, true),
                (200, false),
                (400, false),
                (800, false),
                (1000, false),
                (1000, false)
            ]
        );
        assert_eq!(b.succeeded(), Some(6));
        assert_eq!(b.succeeded(), None);
        assert_eq!(b.failed(), (BACKOFF_MIN, true));
    }

    #[tokio::test]
    async fn serves_metrics_and_404_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Limits::default(), render()));
        for (path, status) in [("/metrics", "200"), ("/nope", "404")] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{out}");
        }
        server.abort();
    }

    #[tokio::test]
    async fn at_the_cap_a_waiting_client_is_served_when_a_slot_frees() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 1,
            header_timeout: Duration::from_secs(60),
        };
        let server = tokio::spawn(serve(listener, limits, render()));
        // A silent client takes the only slot (it is accepted: its close below ends it).
        let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
        waiting
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        drop(silent);
        let mut out = String::new();
        waiting.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        server.abort();
    }

    proptest! {
        /// Any path other than /metrics is a 404 for GET; any method other
        /// than GET and HEAD is a 405; the body is never rendered for those.
        #[test]
        fn routing_is_total(path in "/[a-z0-9/?=]{0,40}", method in "[A-Z]{1,8}") {
            let path_only = path.split('?').next().unwrap_or("");
            let never = || -> String { panic!("rendered for a non-200") };
            let get = answer(&Method::GET, path_only, &|| "m".to_owned());
            if path_only == "/metrics" {
                prop_assert_eq!(get.status(), StatusCode::OK);
            } else {
                prop_assert_eq!(answer(&Method::GET, path_only, &never).status(), StatusCode::NOT_FOUND);
            }
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            if m != Method::GET && m != Method::HEAD {
                prop_assert_eq!(answer(&m, path_only, &never).status(), StatusCode::METHOD_NOT_ALLOWED);
            }
        }
    }
}
