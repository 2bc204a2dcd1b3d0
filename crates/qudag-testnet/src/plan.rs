//! The plan of a testnet, sans-IO: addresses, who peers with whom, which
//! nodes have a connection limit, and when nodes are killed and partitioned.
//! Everything here is a pure function of [`Options`] (and its seed).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The most nodes a testnet runs (each takes 127.0.1.(i+1); proxies use 101.. and 151..).
pub const MAX_NODES: usize = 48;
/// The address a partitioned node really binds (its public address is the proxy's).
pub const HIDDEN_HOST: u8 = 200;

/// Who peers with whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Every node lists every other node.
    Mesh,
    /// Every node lists `k` other nodes, picked at random.
    Random(usize),
}

/// What happens during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Traffic only.
    Steady,
    /// Nodes of the second half are killed with SIGKILL and restarted with the same key.
    Churn,
    /// One node's traffic goes through a UDP proxy that drops everything for a while.
    Partition,
    /// Steady, then churn, then a partition, then steady again.
    All,
}

impl Scenario {
    /// Parses `steady`, `churn`, `partition` or `all`.
    pub fn parse(s: &str) -> Option<Scenario> {
        Some(match s {
            "steady" => Scenario::Steady,
            "churn" => Scenario::Churn,
            "partition" => Scenario::Partition,
            "all" => Scenario::All,
            _ => return None,
        })
    }

    /// The name, as parsed.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Churn => "churn",
            Scenario::Partition => "partition",
            Scenario::All => "all",
        }
    }
}

/// What a testnet is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of nodes (2 to [`MAX_NODES`]).
    pub nodes: usize,
    /// The scenario.
    pub scenario: Scenario,
    /// Length of the traffic phase.
    pub seconds: u64,
    /// The topology.
    pub topology: Topology,
    /// Generator rounds per second per node (`to = all`: one message to each peer per round).
    pub rate: f64,
    /// Bytes per message.
    pub size: usize,
    /// The QUIC port every node binds (the metrics port is the next one).
    pub port: u16,
    /// Seed of every random choice.
    pub seed: u64,
    /// Time between two kills in churn.
    pub churn_every: Duration,
    /// How long a killed node stays down.
    pub down_for: Duration,
    /// How long the partition lasts.
    pub partition_for: Duration,
    /// Testing only: node 0 does not count the Nth message it receives.
    pub fault_drop_received: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 8,
            scenario: Scenario::All,
            seconds: 60,
            topology: Topology::Mesh,
            rate: 20.0,
            size: 64,
            port: 47000,
            seed: 1,
            churn_every: Duration::from_secs(3),
            down_for: Duration::from_secs(1),
            partition_for: Duration::from_secs(10),
            fault_drop_received: None,
        }
    }
}

/// One node of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePlan {
    /// Its index.
    pub index: usize,
    /// The address peers dial (the proxy's for a partitioned node).
    pub public: SocketAddr,
    /// The address it binds.
    pub bind: SocketAddr,
    /// Its metrics endpoint.
    pub metrics: SocketAddr,
    /// Indexes of the peers it lists.
    pub peers: Vec<usize>,
    /// Its connection limit, when below its peer count.
    pub max_connections: Option<usize>,
    /// May be killed by churn.
    pub churnable: bool,
    /// Generator rounds per second.
    pub rate: f64,
    /// Each round sends to every peer (`true`) or to one random peer.
    pub to_all: bool,
}

impl NodePlan {
    /// Messages this node is expected to send to each peer over `seconds`.
    pub fn expected_per_peer(&self, seconds: u64) -> f64 {
        let per_round = if self.to_all {
            1.0
        } else {
            1.0 / self.peers.len().max(1) as f64
        };
        self.rate * per_round * seconds as f64
    }
}

/// A timed event of the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Churn runs from here.
    ChurnStart,
    /// Churn stops here (killed nodes are restarted).
    ChurnStop,
    /// The partition proxy drops everything from here.
    Cut,
    /// The partition proxy forwards again from here.
    Heal,
}

/// The whole plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The nodes.
    pub nodes: Vec<NodePlan>,
    /// The partitioned node, if the scenario has one.
    pub partitioned: Option<usize>,
    /// The scenario's steps, by offset from the start of traffic, in order.
    pub steps: Vec<(Duration, Step)>,
}

/// The loopback address 127.0.1.`host`.
pub fn host(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, host)
}

/// The address of the proxy through which a partitioned node reaches node `q`.
pub fn via_proxy(q: usize, port: u16) -> SocketAddr {
    (host(101 + q as u8), port).into()
}

/// The fixed address a proxy uses upstream for client node `c`.
pub fn upstream_for(c: usize, port: u16) -> SocketAddr {
    (host(151 + c as u8), port).into()
}

/// A small deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

impl Plan {
    /// The plan for `o`.
    ///
    /// # Errors
    ///
    /// A message if the options are out of range.
    pub fn new(o: &Options) -> Result<Plan, String> {
        if !(2..=MAX_NODES).contains(&o.nodes) {
            return Err(format!("--nodes must be from 2 to {MAX_NODES}"));
        }
        if o.seconds < 10 {
            return Err("--seconds must be at least 10".into());
        }
        let n = o.nodes;
        let mut rng = Rng::new(o.seed);
        let partitioned = matches!(o.scenario, Scenario::Partition | Scenario::All).then_some(0);
        // Every fourth node (from the second) holds fewer connections than it
        // has peers, so that it evicts. Two such nodes do not peer: each at
        // its limit, with every other node competing for its slots, a pair
        // of them could not connect for `unreachable_after` in the first
        // 32-node run, and their messages came back as unreachable.
        let limited = |i: usize| i % 4 == 1 && n >= 4;
        let may_peer = |i: usize, j: usize| j != i && !(limited(i) && limited(j));
        let peers: Vec<Vec<usize>> = (0..n)
            .map(|i| match o.topology {
                Topology::Mesh => (0..n).filter(|&j| may_peer(i, j)).collect(),
                Topology::Random(k) => {
                    let mut others: Vec<usize> = (0..n).filter(|&j| may_peer(i, j)).collect();
                    // Fisher-Yates, then the first k.
                    for a in (1..others.len()).rev() {
                        let b = rng.below(a + 1);
                        others.swap(a, b);
                    }
                    others.truncate(k.max(1));
                    others.sort_unstable();
                    others
                }
            })
            .collect();
        let churn = matches!(o.scenario, Scenario::Churn | Scenario::All);
        let nodes = (0..n)
            .map(|i| {
                let public: SocketAddr = (host(i as u8 + 1), o.port).into();
                let bind = if partitioned == Some(i) {
                    (host(HIDDEN_HOST), o.port).into()
                } else {
                    public
                };
                // Half its peers, and at least 2.
                let want = peers[i].len();
                let max_connections = limited(i).then(|| (want / 2).max(2)).filter(|&m| m < want);
                // A limited node sends to one random peer per round, at a
                // quarter of the others' volume: sending to every peer every
                // round would reclaim each pooled connection at once and
                // leave nothing to evict, and two limited nodes could then
                // starve each other past `unreachable_after`.
                let to_all = max_connections.is_none();
                let rate = if to_all {
                    o.rate
                } else {
                    o.rate * want as f64 / 4.0
                };
                NodePlan {
                    index: i,
                    public,
                    bind,
                    metrics: (host(i as u8 + 1), o.port + 1).into(),
                    max_connections,
                    rate,
                    to_all,
                    peers: peers[i].clone(),
                    // The first half is never killed: it keeps exact books.
                    churnable: churn && i >= n / 2 && partitioned != Some(i),
                }
            })
            .collect();
        let t = Duration::from_secs(o.seconds);
        let frac = |f: f64| Duration::from_secs_f64(o.seconds as f64 * f);
        let mut steps = Vec::new();
        match o.scenario {
            Scenario::Steady => {}
            Scenario::Churn => {
                steps.push((frac(0.1), Step::ChurnStart));
                steps.push((
                    t.saturating_sub(Duration::from_secs(5)).max(frac(0.5)),
                    Step::ChurnStop,
                ));
            }
            Scenario::Partition => {
                steps.push((frac(0.3), Step::Cut));
                steps.push((frac(0.3) + o.partition_for, Step::Heal));
            }
            Scenario::All => {
                steps.push((frac(0.15), Step::ChurnStart));
                steps.push((frac(0.5), Step::ChurnStop));
                steps.push((frac(0.6), Step::Cut));
                steps.push((frac(0.6) + o.partition_for, Step::Heal));
            }
        }
        steps.sort_by_key(|s| s.0);
        if steps.iter().any(|s| s.0 + Duration::from_secs(2) > t) {
            return Err(format!(
                "--seconds {} is too short for the {} scenario",
                o.seconds,
                o.scenario.name()
            ));
        }
        Ok(Plan {
            nodes,
            partitioned,
            steps,
        })
    }

    /// The address node `from` dials to reach node `to`.
    pub fn dial_addr(&self, from: usize, to: usize, port: u16) -> SocketAddr {
        if self.partitioned == Some(from) {
            via_proxy(to, port)
        } else {
            self.nodes[to].public
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(nodes: usize, scenario: Scenario, topology: Topology) -> Options {
        Options {
            nodes,
            scenario,
            topology,
            seconds: 60,
            ..Options::default()
        }
    }

    #[test]
    fn mesh_with_limits_and_churnable_second_half() {
        let p = Plan::new(&opts(8, Scenario::All, Topology::Mesh)).unwrap();
        assert_eq!(p.nodes.len(), 8);
        // The limited nodes 1 and 5 do not peer with each other.
        for n in &p.nodes {
            let expect = if n.index % 4 == 1 { 6 } else { 7 };
            assert_eq!(n.peers.len(), expect, "node{}", n.index);
        }
        assert!(!p.nodes[1].peers.contains(&5) && !p.nodes[5].peers.contains(&1));
        assert!(p.nodes[0].peers.contains(&1));
        let limited: Vec<usize> = p
            .nodes
            .iter()
            .filter(|n| n.max_connections.is_some())
            .map(|n| n.index)
            .collect();
        assert_eq!(limited, [1, 5]);
        // Limited nodes send to one random peer per round, a quarter of the volume.
        assert!(p.nodes[0].to_all && !p.nodes[1].to_all);
        let full = p.nodes[0].expected_per_peer(60);
        assert!((p.nodes[1].expected_per_peer(60) - full / 4.0).abs() < 1e-9);
        assert!(p
            .nodes
            .iter()
            .all(|n| n.max_connections.is_none_or(|m| m < n.peers.len())));
        let churnable: Vec<usize> = p
            .nodes
            .iter()
            .filter(|n| n.churnable)
            .map(|n| n.index)
            .collect();
        assert_eq!(churnable, [4, 5, 6, 7]);
        assert_eq!(p.partitioned, Some(0));
        assert_eq!(p.nodes[0].bind.ip(), host(HIDDEN_HOST));
        assert_eq!(p.nodes[0].public.ip(), host(1));
        assert_eq!(p.dial_addr(0, 3, 47000), via_proxy(3, 47000));
        assert_eq!(p.dial_addr(3, 0, 47000), p.nodes[0].public);
        // Steps are in order and inside the run.
        assert!(p.steps.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(p.steps.len(), 4);
    }

    #[test]
    fn every_address_is_on_127_0_1() {
        for scenario in [
            Scenario::Steady,
            Scenario::Churn,
            Scenario::Partition,
            Scenario::All,
        ] {
            let p = Plan::new(&opts(MAX_NODES, scenario, Topology::Random(3))).unwrap();
            for n in &p.nodes {
                for a in [n.public, n.bind, n.metrics] {
                    let ip = match a.ip() {
                        std::net::IpAddr::V4(ip) => ip,
                        std::net::IpAddr::V6(_) => panic!("v6"),
                    };
                    assert_eq!(ip.octets()[..3], [127, 0, 1]);
                }
                assert_eq!(n.peers.len(), 3);
                assert!(!n.peers.contains(&n.index));
            }
        }
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(Plan::new(&opts(1, Scenario::Steady, Topology::Mesh)).is_err());
        assert!(Plan::new(&opts(MAX_NODES + 1, Scenario::Steady, Topology::Mesh)).is_err());
        let mut o = opts(4, Scenario::Partition, Topology::Mesh);
        o.seconds = 12;
        assert!(
            Plan::new(&o).is_err(),
            "a 10 s partition does not fit in 12 s"
        );
    }

    #[test]
    fn random_topology_is_deterministic_in_the_seed() {
        let a = Plan::new(&opts(16, Scenario::Steady, Topology::Random(4))).unwrap();
        let b = Plan::new(&opts(16, Scenario::Steady, Topology::Random(4))).unwrap();
        assert_eq!(a.nodes, b.nodes);
    }
}
