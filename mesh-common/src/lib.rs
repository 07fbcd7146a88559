//! Map layouts, map names and constants shared by Apiary's BPF programs
//! (`mesh-ebpf`) and the agent that loads them (`mesh-agent`).
//!
//! Everything here is `#[repr(C)]` with explicit padding so the BPF side and
//! userspace agree on every byte. Fields documented as "network order" hold
//! the value exactly as it appears on the wire. Map names live here so the
//! loader never repeats a string literal the BPF object defines.
#![no_std]

pub mod maps;
pub mod stats;

pub use maps::*;
pub use stats::*;

/// Rows per Maglev lookup table. Prime, and about 100× the number of
/// backends a service is expected to have, which keeps the imbalance
/// between backends near 1 % (Maglev paper, §3.4).
pub const MAGLEV_M: u32 = 1021;

/// Each service owns two Maglev tables; the service entry names the live one,
/// so a new table is written beside the old one and switched in with a single
/// map update (atomic for the BPF readers).
pub const MAGLEV_HALVES: u32 = 2;

/// Default UDP port of Apiary's encapsulation between nodes (an ingress node
/// forwarding a flow to a backend on another node keeps the client's address
/// inside; the outer header carries node addresses).
pub const DEFAULT_ENCAP_PORT: u16 = 6390;

/// Bytes added by the encapsulation: outer IPv4 header plus UDP header.
pub const ENCAP_OVERHEAD: u16 = 20 + 8;

/// Address families stored in [`maps::Backend::family`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
