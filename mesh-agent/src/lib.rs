//! The Apiary node agent: the data plane manager (BPF programs and maps),
//! standalone static configuration, and small tools. The `apiary` binary
//! (`src/main.rs`) is the command-line front of this library.

pub mod assigned;
pub mod attach;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod dns;
pub mod driver;
pub mod netdev;
pub mod netwatch;
pub mod overlay;
pub mod runtime;
pub mod task_worker;
pub mod taskfiles;
pub mod tasks;
pub mod tool;
pub mod volumes;
