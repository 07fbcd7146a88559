//! Compose files as Docker's CLI reads them for `stack deploy`.

pub mod yaml;
