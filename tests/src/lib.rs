//! The lab: Apiary hosts as network namespaces on one machine.
//!
//! A [`Lab`] is N hosts (each a network namespace with `eth0` on a shared
//! bridge, its own underlay address and task subnet), one outside client
//! namespace, and the tasks and daemons started in them. It is the test
//! harness of the integration tests and, through `cargo xtask lab`, the
//! user's local lab. Names are unique per lab; dropping a lab tears it all
//! down, and [`sweep`] removes what a crashed run left behind.

pub mod lab;
pub mod net;
pub mod seed;
pub mod swarm;

pub use lab::{apiary_bin, sweep, Cli, Daemon, Host, Lab, Task};
pub use net::Ns;
