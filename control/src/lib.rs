//! Apiary's control plane: the managers' Raft group (openraft, redb), the
//! cluster state it replicates, mutual TLS between daemons, and the HTTP/JSON
//! API the CLI and other daemons use.

pub mod api;
pub mod assignments;
pub mod client;
pub mod engine;
pub mod http;
pub mod logline;
pub mod manager;
pub mod model;
pub mod network;
pub mod networks;
pub mod node;
pub mod objects;
pub mod private_fs;
pub mod raft_types;
pub mod recover;
pub mod server;
pub mod services;
pub mod store;
pub mod tls;
