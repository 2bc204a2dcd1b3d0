//! The network-wide books: each node incarnation's [`Books`] (from its final
//! JSON summary, or from the last scrape before it was killed), and
//! [`check`], which balances them.
//!
//! # The invariant
//!
//! A sender incarnation `s` counts, per destination node `R`: `accepted`,
//! `handed_back` (and of those `maybe`, handed back with `maybe_delivered`).
//! Every accepted message ends acknowledged or handed back, so once `s` has
//! drained (nothing in flight) and shut down, `delivered = accepted −
//! handed_back` is exactly what `R` acknowledged. `R` acknowledges a batch
//! only after its application took every message of it, so each incarnation
//! of `R` counts `received` per `(s's PeerId, s's incarnation)`, and:
//!
//! 1. Everywhere (final summaries and last scrapes): 0 duplicates, 0 gaps,
//!    0 malformed payloads.
//! 2. If `R` was never killed: `received == delivered`, exactly, for every
//!    sender incarnation that ended gracefully (a restarted sender's last
//!    incarnation included).
//! 3. If `R` was killed and restarted: `received_final ≤ delivered` for its
//!    last incarnation, and `Σ received ≤ delivered + maybe` over all its
//!    incarnations (a killed incarnation's count is its last scrape, a lower
//!    bound, so this upper bound still holds; `received − delivered` can be
//!    positive only by messages in flight at the kill, whose ACK was lost,
//!    and those come back as `maybe_delivered`).
//! 4. A killed sender incarnation's counts die with it: its streams are
//!    checked by (1) only.
//! 5. Messages are handed back only toward a node that was killed
//!    (`peer restarted`) or by a node on the partitioned path (`peer
//!    unreachable` past `unreachable_after`, or `connection limit` if the
//!    sender's own limit left no room to dial); never `shutdown` (the end
//!    drains first) and never anything else.
//! 6. Not vacuous: every graceful sender incarnation drained, and every
//!    ordered pair of never-killed nodes where the sender lists the receiver
//!    delivered at least `min_per_pair` (a twentieth of what the sender's
//!    generator sends each peer).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};

use crate::scrape::Samples;

/// What a sender incarnation counts for one destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// Accepted by `send`.
    pub accepted: u64,
    /// Handed back.
    pub handed_back: u64,
    /// Handed back with `maybe_delivered`.
    pub maybe: u64,
    /// Handed back by reason (summaries only).
    pub reasons: BTreeMap<String, u64>,
}

impl Sent {
    /// `accepted − handed_back`.
    pub fn delivered(&self) -> u64 {
        self.accepted.saturating_sub(self.handed_back)
    }
}

/// What a receiver incarnation counts for one sender incarnation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recv {
    /// Counter of the first message.
    pub first: u64,
    /// Counter of the last message.
    pub last: u64,
    /// Messages counted.
    pub received: u64,
    /// Duplicates seen.
    pub duplicates: u64,
    /// Gaps seen.
    pub gaps: u64,
    /// The first counter the first gap skipped.
    pub first_missing: u64,
}

/// The figures of one node incarnation beside its books.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Messages acknowledged by peers.
    pub acked: u64,
    /// Messages received.
    pub received: u64,
    /// Median send-to-ack latency, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// Connections in state connected.
    pub connections: u64,
    /// Connections evicted to make room.
    pub evictions: u64,
    /// Dials (entries into connecting).
    pub redials: u64,
    /// Bytes the manager holds.
    pub memory: u64,
    /// Resident set size.
    pub rss: u64,
    /// Messages in flight (accepted, neither acknowledged nor handed back).
    pub outstanding: u64,
}

/// One node incarnation's books.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Books {
    /// Its PeerId (hex).
    pub peer_id: String,
    /// Its incarnation.
    pub incarnation: u64,
    /// Per destination PeerId.
    pub sent: BTreeMap<String, Sent>,
    /// Per (sender PeerId, sender incarnation).
    pub received: BTreeMap<(String, u64), Recv>,
    /// Malformed payloads received.
    pub malformed: u64,
    /// From a summary: whether it drained before shutting down.
    pub drained: Option<bool>,
    /// Its figures.
    pub figures: Figures,
}

fn u(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x as u64
    } else {
        0
    }
}

impl Books {
    /// From a scrape (Prometheus text, parsed); `peer_id` is known from the node's first line.
    pub fn from_samples(peer_id: &str, s: &Samples) -> Result<Books> {
        let incarnation = s
            .all("qudag_node_info")
            .first()
            .and_then(|x| x.label("incarnation"))
            .context("no qudag_node_info")?
            .parse()
            .context("bad incarnation label")?;
        let mut b = Books {
            peer_id: peer_id.to_owned(),
            incarnation,
            malformed: u(s.value("qudag_node_malformed_total", "", "")),
            ..Books::default()
        };
        for x in s.all("qudag_node_sent_total") {
            if let Some(p) = x.label("peer") {
                b.sent.entry(p.to_owned()).or_default().accepted = u(x.value);
            }
        }
        for x in s.all("qudag_node_handed_back_total") {
            if let Some(p) = x.label("peer") {
                b.sent.entry(p.to_owned()).or_default().handed_back = u(x.value);
            }
        }
        for x in s.all("qudag_node_handed_back_maybe_total") {
            if let Some(p) = x.label("peer") {
                b.sent.entry(p.to_owned()).or_default().maybe = u(x.value);
            }
        }
        type Field = fn(&mut Recv, u64);
        let fields: [(&str, Field); 6] = [
            ("qudag_node_first_missing", |r, v| r.first_missing = v),
            ("qudag_node_received_total", |r, v| r.received = v),
            ("qudag_node_duplicates_total", |r, v| r.duplicates = v),
            ("qudag_node_gaps_total", |r, v| r.gaps = v),
            ("qudag_node_received_first", |r, v| r.first = v),
            ("qudag_node_received_last", |r, v| r.last = v),
        ];
        for (name, set) in fields {
            for x in s.all(name) {
                let (Some(p), Some(inc)) = (x.label("peer"), x.label("incarnation")) else {
                    continue;
                };
                let Ok(inc) = inc.parse::<u64>() else {
                    continue;
                };
                set(
                    b.received.entry((p.to_owned(), inc)).or_default(),
                    u(x.value),
                );
            }
        }
        b.figures = Figures {
            acked: u(s.value("qudag_messages_acked_total", "", "")),
            received: u(s.value("qudag_messages_received_total", "", "")),
            p50_us: u(s.value("qudag_message_latency_quantile_seconds", "quantile", "0.5") * 1e6),
            p99_us: u(s.value("qudag_message_latency_quantile_seconds", "quantile", "0.99") * 1e6),
            connections: u(s.value("qudag_connections", "state", "connected")),
            evictions: u(s.value("qudag_connections_closed_total", "reason", "evicted")),
            redials: u(s.value(
                "qudag_connection_state_entries_total",
                "state",
                "connecting",
            )),
            memory: u(s.value("qudag_memory_bytes", "", "")),
            rss: u(s.value("qudag_node_rss_bytes", "", "")),
            outstanding: u(s.value("qudag_node_outstanding", "", "")),
        };
        Ok(b)
    }

    /// From the JSON summary line `run` prints at the end.
    pub fn from_summary(line: &str) -> Result<Books> {
        let j: serde_json::Value = serde_json::from_str(line).context("summary is not JSON")?;
        let n = |v: &serde_json::Value, k: &str| {
            v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0)
        };
        let mut b = Books {
            peer_id: j["peer_id"].as_str().context("no peer_id")?.to_owned(),
            incarnation: j["incarnation"].as_u64().context("no incarnation")?,
            malformed: n(&j, "malformed"),
            drained: j["drained"].as_bool(),
            ..Books::default()
        };
        if let Some(sent) = j["sent"].as_object() {
            for (p, v) in sent {
                let reasons = v["reasons"]
                    .as_object()
                    .map(|r| {
                        r.iter()
                            .map(|(k, x)| (k.clone(), x.as_u64().unwrap_or(0)))
                            .collect()
                    })
                    .unwrap_or_default();
                b.sent.insert(
                    p.clone(),
                    Sent {
                        accepted: n(v, "accepted"),
                        handed_back: n(v, "handed_back"),
                        maybe: n(v, "handed_back_maybe"),
                        reasons,
                    },
                );
            }
        }
        for r in j["received"].as_array().into_iter().flatten() {
            let from = r["from"]
                .as_str()
                .context("received without from")?
                .to_owned();
            b.received.insert(
                (from, n(r, "incarnation")),
                Recv {
                    first: n(r, "first"),
                    last: n(r, "last"),
                    received: n(r, "received"),
                    duplicates: n(r, "duplicates"),
                    gaps: n(r, "gaps"),
                    first_missing: n(r, "first_missing"),
                },
            );
        }
        let m = &j["metrics"];
        b.figures = Figures {
            acked: n(m, "messages_acked"),
            received: n(m, "messages_received"),
            p50_us: n(m, "latency_p50_us"),
            p99_us: n(m, "latency_p99_us"),
            connections: n(m, "connections"),
            evictions: n(m, "evictions"),
            redials: n(m, "redials"),
            memory: n(m, "memory_bytes"),
            rss: n(m, "rss_bytes"),
            outstanding: 0,
        };
        Ok(b)
    }
}

/// How an incarnation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// SIGTERM, drain, summary.
    Graceful,
    /// SIGKILL: its books are its last scrape.
    Killed,
}

/// One incarnation of a node, as the books see it.
#[derive(Debug, Clone)]
pub struct Incarnation {
    /// The node's index.
    pub node: usize,
    /// How it ended.
    pub end: End,
    /// Its books (`None`: killed before its first scrape).
    pub books: Option<Books>,
}

/// The books of one ordered pair of nodes, summed over incarnations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairBooks {
    /// Sender index.
    pub from: usize,
    /// Receiver index.
    pub to: usize,
    /// Delivered (accepted − handed back) by graceful sender incarnations.
    pub delivered: u64,
    /// Received from those incarnations, by every receiver incarnation.
    pub received: u64,
    /// Handed back by graceful sender incarnations.
    pub handed_back: u64,
    /// Of which maybe delivered.
    pub maybe: u64,
    /// Either node was killed at some point.
    pub churned: bool,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Every violation, one line each (empty: the books balance).
    pub violations: Vec<String>,
    /// The pairs, sender-major.
    pub pairs: Vec<PairBooks>,
    /// Duplicates over every record.
    pub duplicates: u64,
    /// Gaps over every record.
    pub gaps: u64,
    /// Delivered over every graceful sender incarnation.
    pub delivered: u64,
    /// Equalities checked (rule 2): graceful sender incarnation × never-killed receiver.
    pub exact_pairs: usize,
    /// Handed back, by reason, over graceful sender incarnations.
    pub handed_back: BTreeMap<String, u64>,
}

/// What the check needs to know about the run beside the books.
#[derive(Debug, Clone)]
pub struct RunFacts {
    /// Each node's PeerId (hex), by index.
    pub peer_ids: Vec<String>,
    /// Each node's peer list, by index.
    pub peers: Vec<Vec<usize>>,
    /// Nodes killed at least once.
    pub killed: Vec<bool>,
    /// The partitioned node, if any.
    pub partitioned: Option<usize>,
    /// The least a pair of never-killed nodes must have delivered, by sender
    /// (a twentieth of what its generator sends each peer).
    pub min_per_pair: Vec<u64>,
}

/// Balances the books (see the module docs for the rules).
pub fn check(ctx: &RunFacts, all: &[Incarnation]) -> Verdict {
    let mut v = Verdict::default();
    let n = ctx.peer_ids.len();
    let index: BTreeMap<&str, usize> = ctx
        .peer_ids
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let name = |i: usize| format!("node{i}");
    // Rule 1, and a node that lost its books entirely.
    for inc in all {
        let Some(b) = &inc.books else {
            if inc.end == End::Graceful {
                v.violations
                    .push(format!("{}: no summary at the end", name(inc.node)));
            }
            continue;
        };
        if b.malformed > 0 {
            v.violations.push(format!(
                "{} (incarnation {}): {} malformed payloads",
                name(inc.node),
                b.incarnation,
                b.malformed
            ));
        }
        for ((from, finc), r) in &b.received {
            v.duplicates += r.duplicates;
            v.gaps += r.gaps;
            if r.duplicates > 0 || r.gaps > 0 {
                let who = index
                    .get(from.as_str())
                    .map_or_else(|| from.clone(), |&i| name(i));
                v.violations.push(format!(
                    "{} (incarnation {}) from {who} (incarnation {finc}): {} duplicates, {} gaps (first {}, last {}, received {}, first missing {})",
                    name(inc.node), b.incarnation, r.duplicates, r.gaps, r.first, r.last, r.received,
                    r.first_missing
                ));
            }
        }
        if inc.end == End::Graceful && b.drained != Some(true) {
            v.violations.push(format!(
                "{}: did not drain before its shutdown",
                name(inc.node)
            ));
        }
    }
    // Receiver incarnations per node, the final (graceful) one last.
    let mut by_node: Vec<Vec<&Incarnation>> = vec![Vec::new(); n];
    for inc in all {
        if inc.node < n {
            by_node[inc.node].push(inc);
        }
    }
    for from in 0..n {
        for to in 0..n {
            if from == to {
                continue;
            }
            let churned = ctx.killed[from] || ctx.killed[to];
            let mut pair = PairBooks {
                from,
                to,
                churned,
                ..PairBooks::default()
            };
            let to_id = &ctx.peer_ids[to];
            for s in by_node[from].iter().filter(|i| i.end == End::Graceful) {
                let Some(sb) = &s.books else { continue };
                let sent = sb.sent.get(to_id).cloned().unwrap_or_default();
                let key = (ctx.peer_ids[from].clone(), sb.incarnation);
                let mut final_received = 0;
                let mut total_received = 0;
                for r in &by_node[to] {
                    let got = r
                        .books
                        .as_ref()
                        .and_then(|b| b.received.get(&key))
                        .map_or(0, |x| x.received);
                    total_received += got;
                    if r.end == End::Graceful {
                        final_received += got;
                    }
                }
                for (reason, k) in &sent.reasons {
                    *v.handed_back.entry(reason.clone()).or_insert(0) += k;
                    let allowed = match reason.as_str() {
                        "peer restarted" => ctx.killed[to],
                        // ("connection limit": the sender's own limit left no
                        // room to dial, which a churned path can also cause.)
                        "peer unreachable" | "peer unresponsive" | "connection limit" => {
                            ctx.partitioned == Some(from)
                                || ctx.partitioned == Some(to)
                                || ctx.killed[to]
                        }
                        _ => false,
                    };
                    if !allowed && *k > 0 {
                        v.violations.push(format!("{} → {}: {k} messages handed back as {reason:?}, which this run cannot explain", name(from), name(to)));
                    }
                }
                let delivered = sent.delivered();
                pair.delivered += delivered;
                pair.received += total_received;
                pair.handed_back += sent.handed_back;
                pair.maybe += sent.maybe;
                if !ctx.killed[to] {
                    v.exact_pairs += 1;
                    if total_received != delivered {
                        v.violations.push(format!(
                            "{} → {} (incarnation {}): delivered {delivered} (accepted {} − handed back {}) but received {total_received}",
                            name(from), name(to), sb.incarnation, sent.accepted, sent.handed_back
                        ));
                    }
                } else {
                    if final_received > delivered {
                        v.violations.push(format!(
                            "{} → {} (incarnation {}): the last incarnation of {} received {final_received}, more than the {delivered} delivered",
                            name(from), name(to), sb.incarnation, name(to)
                        ));
                    }
                    if total_received > delivered + sent.maybe {
                        v.violations.push(format!(
                            "{} → {} (incarnation {}): received {total_received} over all incarnations, more than delivered {delivered} + maybe delivered {}",
                            name(from), name(to), sb.incarnation, sent.maybe
                        ));
                    }
                }
            }
            if !churned {
                let listed = ctx.peers[from].contains(&to);
                let min = ctx.min_per_pair.get(from).copied().unwrap_or(0);
                if listed && pair.delivered < min {
                    v.violations.push(format!(
                        "{} → {}: only {} delivered (at least {} expected): the check would be vacuous",
                        name(from), name(to), pair.delivered, min
                    ));
                }
            }
            v.delivered += pair.delivered;
            if pair.delivered > 0 || pair.received > 0 || ctx.peers[from].contains(&to) {
                v.pairs.push(pair);
            }
        }
    }
    v
}

impl Verdict {
    /// True if no rule was broken.
    pub fn balanced(&self) -> bool {
        self.violations.is_empty()
    }

    /// A one-paragraph text of the verdict.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "books {}: {} pairs, {} exact equalities, {} delivered, {} duplicates, {} gaps, handed back {:?}",
            if self.balanced() { "balance" } else { "DO NOT balance" },
            self.pairs.len(),
            self.exact_pairs,
            self.delivered,
            self.duplicates,
            self.gaps,
            self.handed_back
        );
        for line in self.violations.iter().take(50) {
            let _ = write!(s, "\n  {line}");
        }
        if self.violations.len() > 50 {
            let _ = write!(s, "\n  ... and {} more", self.violations.len() - 50);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<String> {
        vec!["aa".into(), "bb".into()]
    }

    fn ctx(killed: [bool; 2]) -> RunFacts {
        RunFacts {
            peer_ids: ids(),
            peers: vec![vec![1], vec![0]],
            killed: killed.to_vec(),
            partitioned: None,
            min_per_pair: vec![10, 10],
        }
    }

    fn books(
        me: &str,
        inc: u64,
        to: &str,
        (accepted, back, maybe): (u64, u64, u64),
        from: (&str, u64),
        recv: u64,
    ) -> Books {
        let mut b = Books {
            peer_id: me.into(),
            incarnation: inc,
            drained: Some(true),
            ..Books::default()
        };
        let mut reasons = BTreeMap::new();
        if back > 0 {
            reasons.insert("peer restarted".into(), back);
        }
        b.sent.insert(
            to.into(),
            Sent {
                accepted,
                handed_back: back,
                maybe,
                reasons,
            },
        );
        if recv > 0 {
            b.received.insert(
                (from.0.into(), from.1),
                Recv {
                    first: 0,
                    last: recv - 1,
                    received: recv,
                    ..Recv::default()
                },
            );
        }
        b
    }

    fn graceful(node: usize, b: Books) -> Incarnation {
        Incarnation {
            node,
            end: End::Graceful,
            books: Some(b),
        }
    }

    #[test]
    fn equal_books_balance_and_a_lost_message_does_not() {
        let all = [
            graceful(0, books("aa", 1, "bb", (100, 0, 0), ("bb", 2), 50)),
            graceful(1, books("bb", 2, "aa", (50, 0, 0), ("aa", 1), 100)),
        ];
        let v = check(&ctx([false, false]), &all);
        assert!(v.balanced(), "{}", v.summary());
        assert_eq!((v.delivered, v.exact_pairs), (150, 2));

        let all = [
            graceful(0, books("aa", 1, "bb", (100, 0, 0), ("bb", 2), 50)),
            graceful(1, books("bb", 2, "aa", (50, 0, 0), ("aa", 1), 99)),
        ];
        let v = check(&ctx([false, false]), &all);
        assert!(!v.balanced());
        assert!(v.summary().contains("delivered 100"), "{}", v.summary());
    }

    #[test]
    fn gaps_duplicates_and_idle_pairs_are_violations() {
        let mut b1 = books("bb", 2, "aa", (50, 0, 0), ("aa", 1), 100);
        b1.received.get_mut(&("aa".to_owned(), 1)).unwrap().gaps = 1;
        let all = [
            graceful(0, books("aa", 1, "bb", (100, 0, 0), ("bb", 2), 50)),
            graceful(1, b1),
        ];
        assert!(check(&ctx([false, false]), &all)
            .summary()
            .contains("1 gaps"));

        let all = [
            graceful(0, books("aa", 1, "bb", (5, 0, 0), ("bb", 2), 5)),
            graceful(1, books("bb", 2, "aa", (5, 0, 0), ("aa", 1), 5)),
        ];
        assert!(check(&ctx([false, false]), &all)
            .summary()
            .contains("vacuous"));
    }

    #[test]
    fn a_killed_receiver_is_bounded_above() {
        // Node 1 was killed once: its first incarnation (last scrape) got 40
        // from node 0, its second got 55; node 0 delivered 95 and handed back
        // 5 maybe delivered (in flight at the kill).
        let killed = Incarnation {
            node: 1,
            end: End::Killed,
            books: Some(books("bb", 2, "aa", (30, 0, 0), ("aa", 1), 40)),
        };
        let fine = [
            graceful(0, books("aa", 1, "bb", (100, 5, 5), ("bb", 3), 20)),
            killed.clone(),
            graceful(1, books("bb", 3, "aa", (20, 0, 0), ("aa", 1), 55)),
        ];
        let v = check(&ctx([false, true]), &fine);
        assert!(v.balanced(), "{}", v.summary());
        // The last incarnation cannot have more than was delivered.
        let bad = [
            graceful(0, books("aa", 1, "bb", (100, 5, 5), ("bb", 3), 20)),
            killed,
            graceful(1, books("bb", 3, "aa", (20, 0, 0), ("aa", 1), 96)),
        ];
        assert!(!check(&ctx([false, true]), &bad).balanced());
        // "peer restarted" toward a node that was never killed is not explained.
        let all = [
            graceful(0, books("aa", 1, "bb", (100, 5, 5), ("bb", 2), 20)),
            graceful(1, books("bb", 2, "aa", (20, 0, 0), ("aa", 1), 95)),
        ];
        assert!(check(&ctx([false, false]), &all)
            .summary()
            .contains("cannot explain"));
    }

    #[test]
    fn summaries_parse() {
        let line = r#"{"peer_id":"aa","addr":"x","incarnation":7,"uptime_s":1.0,"drained":true,"sent":{"bb":{"accepted":3,"handed_back":1,"handed_back_maybe":1,"reasons":{"peer restarted":1},"foreign":0,"delivered":2}},"received":[{"from":"bb","incarnation":9,"first":0,"last":4,"received":5,"duplicates":0,"gaps":0,"missing":0}],"malformed":0,"metrics":{"messages_acked":2,"latency_p99_us":5}}"#;
        let b = Books::from_summary(line).unwrap();
        assert_eq!(b.incarnation, 7);
        assert_eq!(b.sent["bb"].delivered(), 2);
        assert_eq!(b.received[&("bb".to_owned(), 9)].received, 5);
        assert_eq!(b.figures.p99_us, 5);
        assert_eq!(b.drained, Some(true));
    }
}
