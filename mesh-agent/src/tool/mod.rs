//! `apiary tool …`: small helpers shipped in the one binary.

pub mod whoami;
