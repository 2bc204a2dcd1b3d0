//! A tiny HTTP/1.x server for `GET /metrics` (the Prometheus text format).
//!
//! It reads at most [`MAX_REQUEST`] bytes of request head under a
//! [`REQUEST_TIMEOUT`], answers once and closes the connection. It is meant
//! for a scraper on a trusted network, not as a general web server.

use std::sync::Arc;
use std::time::Duration;

use qudag_net::Metrics;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The most bytes of request head read before answering 431.
pub(crate) const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The Prometheus text exposition content type.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// What to answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /metrics` (or `HEAD`): 200 with the metrics.
    Metrics,
    /// Any other path: 404.
    NotFound,
    /// Not `GET`/`HEAD`: 405.
    MethodNotAllowed,
    /// No parseable request line within the limit: 400.
    BadRequest,
    /// The request head is larger than [`MAX_REQUEST`]: 431.
    TooLarge,
}

/// Decides the answer from the bytes read so far; `None` while the request
/// line is incomplete and the limit is not reached.
pub(crate) fn route(head: &[u8]) -> Option<Route> {
    let Some(end) = head.windows(2).position(|w| w == b"\r\n") else {
        return if head.len() >= MAX_REQUEST {
            Some(Route::TooLarge)
        } else {
            None
        };
    };
    let Ok(line) = std::str::from_utf8(&head[..end]) else {
        return Some(Route::BadRequest);
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Route::BadRequest);
    };
    if !version.starts_with("HTTP/1.") {
        return Some(Route::BadRequest);
    }
    if method != "GET" && method != "HEAD" {
        return Some(Route::MethodNotAllowed);
    }
    let path = target.split('?').next().unwrap_or(target);
    Some(if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    })
}

/// The full response for `route`; `metrics` is only called for [`Route::Metrics`].
pub(crate) fn response(route: Route, head_only: bool, metrics: impl FnOnce() -> String) -> Vec<u8> {
    let (status, ctype, body) = match route {
        Route::Metrics => ("200 OK", CONTENT_TYPE, metrics()),
        Route::NotFound => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
        Route::BadRequest => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
        Route::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large\n".to_owned(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Serves `/metrics` from `metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &metrics).await {
                        tracing::debug!(error = %e, "metrics request failed");
                    }
                });
            }
            Err(e) => tracing::debug!(error = %e, "metrics accept failed"),
        }
    }
}

/// Answers one request on `stream`.
async fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let route = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            if let Some(r) = route(&head) {
                return Ok::<Route, std::io::Error>(r);
            }
            let room = MAX_REQUEST - head.len();
            let n = stream.read(&mut buf[..room.min(1024)]).await?;
            if n == 0 {
                return Ok(Route::BadRequest);
            }
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or(Ok(Route::BadRequest))?;
    let head_only = head.starts_with(b"HEAD ");
    let out = response(route, head_only, || metrics.encode_prometheus());
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn check(head: &[u8], expect: Option<Route>) {
        assert_eq!(route(head), expect, "{:?}", String::from_utf8_lossy(head));
    }

    #[test]
    fn routes() {
        check(b"GET /metrics HTTP/1.1\r\n", Some(Route::Metrics));
        check(
            b"GET /metrics?x=1 HTTP/1.0\r\nHost: a\r\n\r\n",
            Some(Route::Metrics),
        );
        check(b"HEAD /metrics HTTP/1.1\r\n", Some(Route::Metrics));
        check(b"GET / HTTP/1.1\r\n", Some(Route::NotFound));
        check(b"GET /metricsx HTTP/1.1\r\n", Some(Route::NotFound));
        check(b"POST /metrics HTTP/1.1\r\n", Some(Route::MethodNotAllowed));
        check(b"GET /metrics\r\n", Some(Route::BadRequest));
        check(b"GET /metrics SPDY/3\r\n", Some(Route::BadRequest));
        check(b"\xff\xfe /metrics HTTP/1.1\r\n", Some(Route::BadRequest));
        check(b"GET /metr", None);
        check(&[b'a'; MAX_REQUEST], Some(Route::TooLarge));
    }

    #[test]
    fn responses_carry_status_type_and_length() {
        let ok = String::from_utf8(response(Route::Metrics, false, || "x 1\n".into())).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4\r\n"),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 4\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nx 1\n"), "{ok}");
        let head = String::from_utf8(response(Route::Metrics, true, || "x 1\n".into())).unwrap();
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        let nf = String::from_utf8(response(Route::NotFound, false, || unreachable!())).unwrap();
        assert!(nf.starts_with("HTTP/1.1 404 Not Found\r\n"), "{nf}");
    }

    #[tokio::test]
    async fn serves_metrics_and_404_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let server = tokio::spawn(serve(listener, metrics));
        for (path, status) in [("/metrics", "200"), ("/nope", "404")] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{out}");
            if status == "200" {
                assert!(out.contains("qudag_messages_queued"), "{out}");
                assert!(out.ends_with("# EOF\n"), "{out}");
            }
        }
        server.abort();
    }

    proptest! {
        /// Never panics, and never waits for more once the limit is reached.
        #[test]
        fn route_is_total_and_bounded(head in proptest::collection::vec(any::<u8>(), 0..(MAX_REQUEST + 64))) {
            let r = route(&head);
            if head.len() >= MAX_REQUEST {
                prop_assert!(r.is_some());
            }
        }

        /// Any path other than /metrics is a 404 for a well-formed GET.
        #[test]
        fn other_paths_are_not_found(path in "/[a-z0-9/]{0,40}") {
            prop_assume!(path != "/metrics");
            let head = format!("GET {path} HTTP/1.1\r\n");
            prop_assert_eq!(route(head.as_bytes()), Some(Route::NotFound));
        }
    }
}
