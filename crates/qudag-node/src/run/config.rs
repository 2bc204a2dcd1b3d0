//! The configuration of `qudag-node run`: a TOML file, every field of which
//! can also be given (and overridden) on the command line, checked as a
//! whole into a [`Config`] before anything starts.
//!
//! Reading the file and the key is IO; [`validate`] is pure (it takes the
//! node's own PeerId), so it is property-tested. A bad configuration is one
//! [`ConfigError`] naming the field, which `main` prints as one line and
//! turns into exit code 2.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qudag_net::{PeerAddr, PeerId};
use serde::Deserialize;

use super::payload::HEADER_LEN;
use crate::parse::{max_message_len, MAX_RATE, MAX_SECS, MIN_RATE};

/// The most peers a node may list.
pub(crate) const MAX_PEERS: usize = 1024;
/// `unreachable_after` must stay below the manager's `peer_idle_timeout` (300 s).
const MAX_UNREACHABLE_SECS: f64 = 299.0;

/// A configuration error: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config: {field}: {message}")]
pub(crate) struct ConfigError {
    /// The field, as spelled in the file (`peers[2]`, `traffic.rate`, ...).
    pub(crate) field: String,
    /// What is wrong, in one line.
    pub(crate) message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Where generated messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Target {
    /// Each round sends one message to every configured peer.
    All,
    /// Each round sends one message to one configured peer, picked at random.
    Random,
}

/// The file as written: every field optional, unknown fields refused.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Raw {
    /// `bind = "127.0.1.1:47000"`.
    pub(crate) bind: Option<String>,
    /// `key = "node.key"`, relative to the config file's directory.
    pub(crate) key: Option<PathBuf>,
    /// `peers = ["PEERID@ADDR", ...]`.
    pub(crate) peers: Option<Vec<String>>,
    /// `allow = ["PEERID", ...]`.
    pub(crate) allow: Option<Vec<String>>,
    /// `max_connections = 8`.
    pub(crate) max_connections: Option<u64>,
    /// `metrics = "127.0.1.1:47001"`.
    pub(crate) metrics: Option<String>,
    /// Seconds.
    pub(crate) unreachable_after: Option<f64>,
    /// Seconds.
    pub(crate) backoff_cap: Option<f64>,
    /// Seconds.
    pub(crate) idle_timeout: Option<f64>,
    /// Seconds.
    pub(crate) grace: Option<f64>,
    /// Seconds.
    pub(crate) park_every: Option<f64>,
    /// `[traffic]`.
    pub(crate) traffic: Option<RawTraffic>,
}

/// The `[traffic]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTraffic {
    /// Rounds per second.
    pub(crate) rate: Option<f64>,
    /// Bytes per message.
    pub(crate) size: Option<u64>,
    /// `"all"` or `"random"`.
    pub(crate) to: Option<String>,
}

/// The traffic generator, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Traffic {
    /// Rounds per second.
    pub(crate) rate: f64,
    /// Bytes per message (at least the header).
    pub(crate) size: usize,
    /// Where each round's messages go.
    pub(crate) to: Target,
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    /// The QUIC address to bind.
    pub(crate) bind: SocketAddr,
    /// The identity key file, if any (else a fresh identity).
    pub(crate) key: Option<PathBuf>,
    /// The peers to connect to and keep connected.
    pub(crate) peers: Vec<PeerAddr>,
    /// Only these peers may connect (None: everyone who proves an identity).
    pub(crate) allow: Option<Vec<PeerId>>,
    /// The connection limit (None: the library's default).
    pub(crate) max_connections: Option<usize>,
    /// Where to serve Prometheus metrics.
    pub(crate) metrics: Option<SocketAddr>,
    /// Messages wait this long without progress before they are handed back.
    pub(crate) unreachable_after: Duration,
    /// The largest redial backoff.
    pub(crate) backoff_cap: Duration,
    /// QUIC idle timeout (keep-alive is a quarter of it).
    pub(crate) idle_timeout: Duration,
    /// How long the shutdown waits for acknowledgements.
    pub(crate) grace: Duration,
    /// Return every connection to the pool this often (so a limit can evict).
    pub(crate) park_every: Option<Duration>,
    /// The traffic generator.
    pub(crate) traffic: Option<Traffic>,
}

/// Reads and parses a config file; a relative `key` is made relative to the file's directory.
pub(crate) fn read_file(path: &Path) -> Result<Raw, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
    })?;
    let mut raw = parse(&text)?;
    if let (Some(key), Some(dir)) = (&raw.key, path.parent()) {
        if key.is_relative() {
            raw.key = Some(dir.join(key));
        }
    }
    Ok(raw)
}

/// Parses the text of a config file.
pub(crate) fn parse(text: &str) -> Result<Raw, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let message = one_line(e.message());
        let field = e
            .span()
            .and_then(|s| field_at(text, s.start))
            .or_else(|| field_of(&message))
            .unwrap_or_else(|| "file".to_owned());
        ConfigError::new(
            field,
            match line {
                Some(l) => format!("{message} (line {l})"),
                None => message,
            },
        )
    })
}

/// The key written on the line holding byte `at` (`table.key` inside a
/// table), if that line is a `key = value` line.
fn field_at(text: &str, at: usize) -> Option<String> {
    let at = at.min(text.len());
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let key = text[start..end].split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let table = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    })
}

/// The field a toml error message is about, if it names one.
fn field_of(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A duration field: seconds above 0 and at most `max`.
fn seconds(field: &str, v: Option<f64>, default: f64, max: f64) -> Result<Duration, ConfigError> {
    let x = v.unwrap_or(default);
    if !(x.is_finite() && x > 0.0 && x <= max) {
        return Err(ConfigError::new(
            field,
            format!("must be a number of seconds above 0 and at most {max}, got {x}"),
        ));
    }
    Duration::try_from_secs_f64(x)
        .ok()
        .filter(|d| *d >= Duration::from_millis(1))
        .ok_or_else(|| ConfigError::new(field, format!("{x} s is below 1 ms")))
}

fn addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim()
        .parse()
        .map_err(|_| ConfigError::new(field, format!("{s:?} is not an IP:PORT address")))
}

/// Checks `raw` as a whole for a node whose own PeerId is `own`.
pub(crate) fn validate(raw: Raw, own: PeerId) -> Result<Config, ConfigError> {
    let bind = match &raw.bind {
        Some(s) => addr("bind", s)?,
        None => {
            return Err(ConfigError::new(
                "bind",
                "missing (e.g. bind = \"127.0.1.1:47000\")",
            ))
        }
    };
    let metrics = raw
        .metrics
        .as_deref()
        .map(|s| addr("metrics", s))
        .transpose()?;
    let list = raw.peers.unwrap_or_default();
    if list.len() > MAX_PEERS {
        return Err(ConfigError::new(
            "peers",
            format!("more than {MAX_PEERS} peers"),
        ));
    }
    let mut peers = Vec::with_capacity(list.len());
    let mut ids = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, s) in list.iter().enumerate() {
        let field = format!("peers[{i}]");
        let p: PeerAddr = s
            .trim()
            .parse()
            .map_err(|e| ConfigError::new(&field, format!("{s:?} is not PEERID@IP:PORT ({e})")))?;
        if p.peer == own {
            return Err(ConfigError::new(
                &field,
                "is this node itself (its own PeerId)",
            ));
        }
        if p.addr == bind {
            return Err(ConfigError::new(
                &field,
                format!("is this node's own bind address {bind}"),
            ));
        }
        if !ids.insert(p.peer) {
            return Err(ConfigError::new(
                &field,
                format!("peer {} is listed twice", p.peer),
            ));
        }
        if !addrs.insert(p.addr) {
            return Err(ConfigError::new(
                &field,
                format!("address {} is listed twice", p.addr),
            ));
        }
        peers.push(p);
    }
    let allow = match raw.allow {
        None => None,
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            let mut seen = HashSet::new();
            for (i, s) in list.iter().enumerate() {
                let field = format!("allow[{i}]");
                let id: PeerId = s.trim().parse().map_err(|e| {
                    ConfigError::new(&field, format!("{s:?} is not a PeerId ({e})"))
                })?;
                if !seen.insert(id) {
                    return Err(ConfigError::new(
                        &field,
                        format!("peer {id} is listed twice"),
                    ));
                }
                out.push(id);
            }
            if let Some((i, p)) = peers
                .iter()
                .enumerate()
                .find(|(_, p)| !seen.contains(&p.peer))
            {
                return Err(ConfigError::new(
                    format!("peers[{i}]"),
                    format!("peer {} is not on the allow list", p.peer),
                ));
            }
            Some(out)
        }
    };
    let max_connections = match raw.max_connections {
        None => None,
        Some(n @ 1..=65_536) => Some(n as usize),
        Some(n) => {
            return Err(ConfigError::new(
                "max_connections",
                format!("must be from 1 to 65536, got {n}"),
            ))
        }
    };
    let unreachable_after = seconds(
        "unreachable_after",
        raw.unreachable_after,
        10.0,
        MAX_UNREACHABLE_SECS,
    )?;
    let backoff_cap = seconds("backoff_cap", raw.backoff_cap, 5.0, 3600.0)?;
    let idle_timeout = seconds("idle_timeout", raw.idle_timeout, 10.0, 600.0)?;
    let grace = seconds("grace", raw.grace, 5.0, 3600.0)?;
    let park_every = raw
        .park_every
        .map(|x| seconds("park_every", Some(x), 0.0, MAX_SECS))
        .transpose()?;
    let traffic = match raw.traffic {
        None => None,
        Some(t) => {
            let rate = t.rate.unwrap_or(10.0);
            if !(MIN_RATE..=MAX_RATE.min(1e6)).contains(&rate) {
                return Err(ConfigError::new(
                    "traffic.rate",
                    format!("must be from {MIN_RATE} to 1000000 rounds per second, got {rate}"),
                ));
            }
            let max = max_message_len();
            let size = t.size.unwrap_or(64);
            let size = usize::try_from(size)
                .ok()
                .filter(|s| (HEADER_LEN..=max).contains(s))
                .ok_or_else(|| {
                    ConfigError::new(
                        "traffic.size",
                        format!("must be from {HEADER_LEN} to {max} bytes, got {size}"),
                    )
                })?;
            let to = match t.to.as_deref().unwrap_or("all") {
                "all" => Target::All,
                "random" => Target::Random,
                other => {
                    return Err(ConfigError::new(
                        "traffic.to",
                        format!("must be \"all\" or \"random\", got {other:?}"),
                    ))
                }
            };
            if peers.is_empty() {
                return Err(ConfigError::new("traffic", "needs at least one peer"));
            }
            Some(Traffic { rate, size, to })
        }
    };
    Ok(Config {
        bind,
        key: raw.key,
        peers,
        allow,
        max_connections,
        metrics,
        unreachable_after,
        backoff_cap,
        idle_timeout,
        grace,
        park_every,
        traffic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn own() -> PeerId {
        PeerId::from_bytes([1; 32])
    }

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    #[track_caller]
    fn err(text: &str, field: &str) {
        let e = parse(text)
            .and_then(|raw| validate(raw, own()))
            .expect_err("accepted");
        assert_eq!(e.field, field, "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn a_full_file_parses() {
        let text = format!(
            "bind = \"127.0.1.1:47000\"\nkey = \"n.key\"\npeers = [\"{}@127.0.1.2:47000\"]\n\
             allow = [\"{}\"]\nmax_connections = 4\nmetrics = \"127.0.1.1:47001\"\n\
             unreachable_after = 20\nbackoff_cap = 1.5\nidle_timeout = 5\ngrace = 3\npark_every = 2\n\
             [traffic]\nrate = 50\nsize = 100\nto = \"random\"\n",
            id(2),
            id(2)
        );
        let c = validate(parse(&text).unwrap(), own()).unwrap();
        assert_eq!(c.bind, "127.0.1.1:47000".parse().unwrap());
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.allow, Some(vec![id(2)]));
        assert_eq!(c.max_connections, Some(4));
        assert_eq!(c.backoff_cap, Duration::from_millis(1500));
        assert_eq!(c.park_every, Some(Duration::from_secs(2)));
        assert_eq!(
            c.traffic,
            Some(Traffic {
                rate: 50.0,
                size: 100,
                to: Target::Random
            })
        );
    }

    #[test]
    fn bad_files_name_the_field() {
        let p2 = format!("{}@127.0.1.2:47000", id(2));
        err("bind = \"127.0.1.1:1\"\nfoo = 1\n", "foo");
        err(
            "bind = \"127.0.1.1:1\"\n[traffic]\nspeed = 1\n",
            "traffic.speed",
        );
        err(
            "bind = \"127.0.1.1:1\"\n[traffic]\nrate = \"x\"\n",
            "traffic.rate",
        );
        err("bind = \"nowhere\"\n", "bind");
        err("", "bind");
        err("bind = 5\n", "bind");
        err("bind = \n", "bind");
        err("[[x]]\n", "x");
        err("bind = \"127.0.1.1:1\"\nmetrics = \"x:1\"\n", "metrics");
        err(
            &format!("bind = \"127.0.1.1:1\"\npeers = [\"{p2}\", \"{p2}\"]\n"),
            "peers[1]",
        );
        err(
            &format!(
                "bind = \"127.0.1.1:1\"\npeers = [\"{}@127.0.1.3:1\"]\n",
                own()
            ),
            "peers[0]",
        );
        err(
            "bind = \"127.0.1.1:1\"\npeers = [\"abc@127.0.1.3:1\"]\n",
            "peers[0]",
        );
        err(
            &format!(
                "bind = \"127.0.1.1:1\"\npeers = [\"{}@127.0.1.1:1\"]\n",
                id(3)
            ),
            "peers[0]",
        );
        err(
            &format!(
                "bind = \"127.0.1.1:1\"\npeers = [\"{p2}\"]\nallow = [\"{}\"]\n",
                id(3)
            ),
            "peers[0]",
        );
        err(
            "bind = \"127.0.1.1:1\"\nmax_connections = 0\n",
            "max_connections",
        );
        err(
            "bind = \"127.0.1.1:1\"\nunreachable_after = 400\n",
            "unreachable_after",
        );
        err("bind = \"127.0.1.1:1\"\ngrace = -1\n", "grace");
        err(
            &format!("bind = \"127.0.1.1:1\"\npeers = [\"{p2}\"]\n[traffic]\nsize = 3\n"),
            "traffic.size",
        );
        err(
            &format!("bind = \"127.0.1.1:1\"\npeers = [\"{p2}\"]\n[traffic]\nrate = 0\n"),
            "traffic.rate",
        );
        err(
            &format!("bind = \"127.0.1.1:1\"\npeers = [\"{p2}\"]\n[traffic]\nto = \"some\"\n"),
            "traffic.to",
        );
        err("bind = \"127.0.1.1:1\"\n[traffic]\n", "traffic");
    }

    #[test]
    fn unknown_field_error_has_the_line() {
        let e = parse("bind = \"127.0.1.1:1\"\n\nbogus = 2\n").unwrap_err();
        assert_eq!(e.field, "bogus");
        assert!(e.message.contains("line 3"), "{e}");
    }

    prop_compose! {
        fn peer_entry()(n in 2u8..12, host in 2u8..12, port in 1u16..4) -> String {
            format!("{}@127.0.1.{host}:{port}", id(n))
        }
    }

    proptest! {
        /// Any list of peers: accepted exactly when no PeerId and no address
        /// repeats; then the config keeps them in order.
        #[test]
        fn peer_lists(entries in proptest::collection::vec(peer_entry(), 0..8)) {
            let raw = Raw { bind: Some("127.0.1.1:9".into()), peers: Some(entries.clone()), ..Raw::default() };
            let parsed: Vec<PeerAddr> = entries.iter().map(|e| e.parse().unwrap()).collect();
            let unique_ids = parsed.iter().map(|p| p.peer).collect::<HashSet<_>>().len() == parsed.len();
            let unique_addrs = parsed.iter().map(|p| p.addr).collect::<HashSet<_>>().len() == parsed.len();
            match validate(raw, own()) {
                Ok(c) => {
                    prop_assert!(unique_ids && unique_addrs);
                    prop_assert_eq!(c.peers, parsed);
                }
                Err(e) => {
                    prop_assert!(!(unique_ids && unique_addrs));
                    prop_assert!(e.field.starts_with("peers["), "{}", e);
                }
            }
        }

        /// Any numbers in the numeric fields: accepted values are in range
        /// and every refusal names one of the fields that was set.
        #[test]
        fn numeric_fields(
            ua in proptest::option::of(-10.0f64..500.0),
            grace in proptest::option::of(prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -1.0f64..5000.0]),
            maxc in proptest::option::of(0u64..100_000),
            rate in proptest::option::of(-1.0f64..2e6),
            size in proptest::option::of(0u64..2_000_000),
        ) {
            let raw = Raw {
                bind: Some("127.0.1.1:9".into()),
                peers: Some(vec![format!("{}@127.0.1.2:9", id(2))]),
                unreachable_after: ua,
                grace,
                max_connections: maxc,
                traffic: Some(RawTraffic { rate, size, to: None }),
                ..Raw::default()
            };
            match validate(raw, own()) {
                Ok(c) => {
                    prop_assert!(c.unreachable_after.as_secs_f64() <= MAX_UNREACHABLE_SECS);
                    prop_assert!(!c.grace.is_zero());
                    prop_assert!(c.max_connections.is_none_or(|n| (1..=65_536).contains(&n)));
                    let t = c.traffic.unwrap();
                    prop_assert!(t.rate > 0.0 && t.size >= HEADER_LEN);
                }
                Err(e) => prop_assert!(
                    ["unreachable_after", "grace", "max_connections", "traffic.rate", "traffic.size"]
                        .contains(&e.field.as_str()),
                    "{}", e
                ),
            }
        }

        /// Any text: parsing returns a config or one one-line error, never panics.
        #[test]
        fn any_text(text in "[a-z_=\\[\\]\"0-9.:@ \n]{0,120}") {
            match parse(&text).and_then(|raw| validate(raw, own())) {
                Ok(_) => {}
                Err(e) => prop_assert!(!e.to_string().contains('\n')),
            }
        }
    }
}
