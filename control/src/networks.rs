//! Swarm networks (`network create`, a stack's `NAME_default` and its
//! declared ones). The overlay is one L3 network for every task; a network
//! says which tasks may reach each other, by name (each agent's DNS) and
//! by the data plane's rule on both ends' memberships. A service that
//! names none is on the cluster's `default` network.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The network of services that name none (not an object; always there).
pub const DEFAULT: &str = "default";
/// Names Docker keeps for itself, refused for networks.
const RESERVED: &[&str] = &["default", "ingress", "bridge", "host", "none"];
pub const MAX_NETWORKS: usize = 1000;
/// A service is on at most this many networks.
pub const MAX_ATTACHMENTS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    /// Always `overlay`.
    pub driver: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
    pub created_at: u64,
}

/// A service's place on a network: the network's name and the names it
/// answers to there besides its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub target: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// Docker's network names, less the reserved ones.
pub fn valid_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
    if !ok {
        return Err(format!(
            "invalid network name {name:?}: letters, digits, '_', '.', '-', starting with a letter or digit"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!("network name {name:?} is reserved"));
    }
    Ok(())
}

impl Attachment {
    /// `--network NAME` or `--network name=NAME,alias=A,alias=B`.
    pub fn parse(s: &str) -> Result<Attachment, String> {
        let bad = |why: &str| format!("invalid --network {s:?}: {why}");
        if !s.contains('=') {
            return Ok(Attachment {
                target: s.to_string(),
                aliases: Vec::new(),
            });
        }
        let mut target = None;
        let mut aliases = Vec::new();
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("name" | "target", v)) => target = Some(v.to_string()),
                Some(("alias", v)) => aliases.push(v.to_string()),
                _ => return Err(bad("use NAME or name=NAME,alias=ALIAS")),
            }
        }
        let a = Attachment {
            target: target.ok_or_else(|| bad("name is required"))?,
            aliases,
        };
        a.check()?;
        Ok(a)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.target != DEFAULT {
            valid_name(&self.target)?;
        }
        if self.aliases.len() > 16 {
            return Err(format!("at most 16 aliases on network {}", self.target));
        }
        for a in &self.aliases {
            crate::services::valid_name(a).map_err(|_| format!("invalid alias {a:?}"))?;
            if a.to_ascii_lowercase().starts_with("tasks.") {
                return Err(format!(
                    "invalid alias {a:?}: `tasks.` names are the tasks' own"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_flags_and_names() {
        assert_eq!(Attachment::parse("backend").unwrap().target, "backend");
        let a = Attachment::parse("name=backend,alias=db,alias=database").unwrap();
        assert_eq!(a.aliases, ["db", "database"]);
        assert!(Attachment::parse("name=backend,alias=../x").is_err());
        assert!(Attachment::parse("alias=x").is_err());
        for bad in ["", "..", "a/b", "ingress", "host"] {
            assert!(valid_name(bad).is_err(), "{bad}");
        }
        assert!(valid_name("my_app_backend").is_ok());
    }
}
