//! `qudag-node`: a command-line node over `qudag-net`, for people and for tests.
//!
//! Subcommands:
//!
//! - `demo`: the main job. Starts several in-process nodes that talk QUIC over
//!   127.0.0.1, pushes traffic through the connection manager with a progress
//!   bar and ends with a table of metrics. Needs nothing but this repository.
//! - `keygen --out FILE`: writes an identity key (mode 0600), prints its PeerId.
//! - `listen --bind ADDR`: prints `listening <peer_id>@<addr>` as its first
//!   line on stdout, then receives (optionally until `--expect N` messages),
//!   optionally serving Prometheus metrics over HTTP (`--metrics ADDR`; see
//!   `http.rs` for its limits).
//! - `send --to PEERID@ADDR --count N --size BYTES`: sends, waits for the
//!   acknowledgements, and exits 0 only if every message was delivered.
//! - `run --config FILE`: a long-running node with peers, limits, metrics and
//!   a traffic generator whose payloads every receiver checks (order, gaps,
//!   duplicates); prints a JSON summary on SIGTERM/SIGINT. A bad config is
//!   one line naming the field and exit code 2. See `run/mod.rs`.
//!
//! What it does not do: discovery, routing, resending handed-back messages,
//! or daemon management. Errors are printed as one `error: ...` line on
//! stderr with a non-zero exit code, with control characters escaped (they
//! may quote a peer); a numeric flag out of its documented range is a usage
//! error naming the flag (exit 2). Logs go to stderr and are filtered by
//! `RUST_LOG` (default `warn`).

mod demo;
mod http;
mod keygen;
mod listen;
mod parse;
mod report;
mod run;
mod send;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qudag_transport::PeerText;

/// Exit code of a run that failed (clap uses 2 for usage errors).
const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage error: a bad flag (clap) or a bad `run` config.
const EXIT_USAGE: u8 = 2;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "qudag-node",
    version,
    about = "A qudag-net node: demo, keygen, listen, send, run"
)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run several in-process nodes over QUIC on 127.0.0.1 and print their metrics.
    Demo(demo::DemoArgs),
    /// Write a new identity key file (mode 0600) and print its PeerId.
    Keygen(keygen::KeygenArgs),
    /// Listen for peers and receive messages.
    Listen(listen::ListenArgs),
    /// Send messages to a listening peer and wait until they are acknowledged.
    Send(send::SendArgs),
    /// Run a long-lived node from a config file: peers, limits, metrics, traffic.
    Run(run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Keygen(args) => keygen::run(&args),
        command => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(async move {
                match command {
                    Command::Demo(args) => demo::run(args).await,
                    Command::Listen(args) => listen::run(args).await,
                    Command::Send(args) => send::run(args).await,
                    Command::Run(args) => run::run(args).await,
                    Command::Keygen(args) => keygen::run(&args),
                }
            }),
            Err(e) => Err(anyhow::anyhow!("cannot start the tokio runtime: {e}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            // A bad `run` configuration is a usage error, like clap's.
            if e.downcast_ref::<run::config::ConfigError>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`), without colours
/// and through [`LogWriter`]: log fields can quote a peer.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| LogWriter)
        .init();
}

/// Writes log lines to stderr with every control character but the line
/// breaks escaped by [`PeerText`] (tracing-subscriber's own sanitising
/// leaves CR and the bidi overrides alone).
#[derive(Debug)]
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr()
            .lock()
            .write_all(escape_log(buf).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `buf` with its lines escaped by [`PeerText`], the line breaks kept.
fn escape_log(buf: &[u8]) -> String {
    let lines: Vec<String> = buf
        .split(|&b| b == b'\n')
        .map(|line| PeerText(line).to_string())
        .collect();
    lines.join("\n")
}

/// The error and its causes joined with `: `, skipping a cause whose text
/// the previous message already contains (some errors print their source).
fn chain_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !last.is_empty() && last.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        last = text;
    }
    out
}

/// The one line printed for a failed run. Error texts can quote a peer (a
/// close reason, a detail from the QUIC stack), so whatever could drive the
/// terminal is escaped with [`PeerText`] after folding.
pub(crate) fn error_line(e: &anyhow::Error) -> String {
    PeerText(one_line(&chain_text(e)).as_bytes()).to_string()
}

/// Folds a possibly multi-line message into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_folds_newlines_and_runs_of_spaces() {
        assert_eq!(one_line("a\nb  c\r\n d"), "a b c d");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn error_lines_escape_terminal_controls() {
        let e = anyhow::anyhow!("closed by peer (code 7: \x1b[2J\x1b]0;t\x07ok)\nnext")
            .context("cannot connect");
        let line = error_line(&e);
        assert_eq!(
            line,
            "cannot connect: closed by peer (code 7: \\u{1b}[2J\\u{1b}]0;t\\u{7}ok) next"
        );
        assert!(!line.chars().any(char::is_control));
    }

    #[test]
    fn log_lines_keep_their_breaks_and_lose_their_controls() {
        let out = escape_log(b"WARN closing: \x1b[2J\r\x07 fake\nnext \xe2\x80\xae line\n");
        assert_eq!(
            out,
            "WARN closing: \\u{1b}[2J\\u{d}\\u{7} fake\nnext \\u{202e} line\n"
        );
    }

    #[test]
    fn chain_text_skips_causes_already_printed() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(io)
            .context("i/o error: disk on fire")
            .context("cannot listen");
        assert_eq!(chain_text(&e), "cannot listen: i/o error: disk on fire");
        let e = anyhow::anyhow!("root").context("outer");
        assert_eq!(chain_text(&e), "outer: root");
    }

    #[test]
    fn cli_parses_every_subcommand() {
        Cli::command_is_valid();
        let c = Cli::try_parse_from(["qudag-node", "keygen", "--out", "k"]).unwrap();
        assert!(matches!(c.command, Command::Keygen(_)));
        let c = Cli::try_parse_from(["qudag-node", "demo", "--nodes", "3"]).unwrap();
        assert!(matches!(c.command, Command::Demo(a) if a.nodes == 3));
        assert!(Cli::try_parse_from(["qudag-node", "demo", "--nodes", "1"]).is_err());
        assert!(
            Cli::try_parse_from(["qudag-node", "send", "--to", "nope", "--count", "1"]).is_err()
        );
    }

    impl Cli {
        fn command_is_valid() {
            use clap::CommandFactory;
            Cli::command().debug_assert();
        }
    }
}
