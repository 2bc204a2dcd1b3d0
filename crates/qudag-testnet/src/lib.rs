//! qudag-testnet: many `qudag-node run` processes on loopback addresses,
//! with churn (kill -9 and restart with the same key) and a partition (a
//! user-space UDP proxy that drops everything for a while), scraped during
//! the run, drained and stopped at the end, and the network-wide books
//! balanced. `cargo xtask testnet` drives it and writes docs/TESTNET.md; the
//! CI test in `qudag-node/tests/testnet.rs` runs a quick version.
//!
//! - [`plan`]: the sans-IO plan (addresses 127.0.1.x, topology, limits, steps).
//! - [`proc`]: node processes in their own process groups, killed on drop.
//! - [`proxy`]: the UDP forwarder that can cut a node off.
//! - [`scrape`]: bounded HTTP scrapes and the Prometheus text parser.
//! - [`books`]: each incarnation's books and the check that balances them
//!   (the invariant is in its docs).
//! - [`net`]: the run itself.
//!
//! What it does not do: touch any address outside 127.0.1.0/24, use more
//! than the fixed ports of a run, or leave a process behind (every wait is
//! bounded; every child is in a process group killed on drop, and the nodes
//! run with `--exit-with-parent`).

pub mod books;
pub mod net;
pub mod plan;
pub mod proc;
pub mod proxy;
pub mod scrape;

pub use net::{run, Report, Setup};
pub use plan::{Options, Scenario, Topology};
