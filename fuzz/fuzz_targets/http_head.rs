//! Fuzz target: arbitrary bytes as a request to the `/metrics` endpoint's
//! connection-serving function (qudag-node's `src/http.rs`, compiled here
//! with `#[path]` so the fuzz build needs hyper and tokio, not all of
//! qudag-node). It must never panic, always end (on the paused clock its
//! timeouts cost nothing), and answer with at most one bounded HTTP response.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[allow(dead_code, unreachable_pub)]
#[path = "../../crates/qudag-node/src/http.rs"]
mod http;

/// The metrics body served: small, so any answer is bounded.
const BODY: &str = "qudag_test 1\n# EOF\n";
/// Status line and headers of one answer are far below this.
const MAX_ANSWER: usize = 1024 + BODY.len();

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(4096);
        let render: http::Render = Arc::new(|| BODY.to_owned());
        let serve = http::serve_connection(server, http::Limits::default(), render);
        let talk = async {
            // The server may stop reading (an error answer): a failed write is fine.
            let _ = client.write_all(data).await;
            let mut out = Vec::new();
            let _ = (&mut client).take(MAX_ANSWER as u64 + 1).read_to_end(&mut out).await;
            out
        };
        let (_, out) = tokio::join!(serve, talk);
        assert!(out.len() <= MAX_ANSWER, "answer of {} bytes", out.len());
        if !out.is_empty() {
            // hyper answers an HTTP/1.0 request in HTTP/1.0.
            let starts = |v: &[u8]| out.windows(v.len()).filter(|w| *w == v).count();
            assert!(
                out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
            assert_eq!(
                starts(b"HTTP/1.1 ") + starts(b"HTTP/1.0 "),
                1,
                "more than one answer: {:?}",
                String::from_utf8_lossy(&out)
            );
        }
    });
});
