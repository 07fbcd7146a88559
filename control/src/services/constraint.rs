//! Placement constraints, as Swarm writes them: `node.role==manager`,
//! `node.hostname!=h1`, `node.id==…`, `node.labels.zone==a`.

use serde::{Deserialize, Serialize};

use crate::model::{Node, Role};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    Role,
    Hostname,
    Id,
    Label(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub field: Field,
    pub equal: bool,
    pub value: String,
}

impl Constraint {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid constraint {s:?}: {why} (use node.role, node.hostname, node.id or node.labels.KEY with == or !=, e.g. node.role==manager)"
            )
        };
        let (lhs, equal, rhs) = if let Some((l, r)) = s.split_once("!=") {
            (l, false, r)
        } else if let Some((l, r)) = s.split_once("==") {
            (l, true, r)
        } else {
            return Err(bad("no == or !="));
        };
        let (lhs, value) = (lhs.trim(), rhs.trim());
        if value.is_empty() {
            return Err(bad("no value"));
        }
        let field = match lhs {
            "node.role" => {
                if value != "manager" && value != "worker" {
                    return Err(bad("a role is manager or worker"));
                }
                Field::Role
            }
            "node.hostname" => Field::Hostname,
            "node.id" => Field::Id,
            other => match other.strip_prefix("node.labels.") {
                Some(k) if !k.is_empty() => Field::Label(k.to_string()),
                _ => return Err(bad(&format!("unknown field {other:?}"))),
            },
        };
        Ok(Self {
            field,
            equal,
            value: value.to_string(),
        })
    }

    pub fn matches(&self, n: &Node) -> bool {
        let actual = match &self.field {
            Field::Role => Some(match n.role {
                Role::Manager => "manager".to_string(),
                Role::Worker => "worker".to_string(),
            }),
            Field::Hostname => Some(n.hostname.clone()),
            Field::Id => Some(crate::model::show_id(n.id)),
            Field::Label(k) => n.labels.get(k).cloned(),
        };
        (actual.as_deref() == Some(self.value.as_str())) == self.equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let c = Constraint::parse("node.labels.zone == a").unwrap();
        assert_eq!(c.field, Field::Label("zone".into()));
        assert!(Constraint::parse("node.role==boss")
            .unwrap_err()
            .contains("manager or worker"));
        assert!(Constraint::parse("node.color==red")
            .unwrap_err()
            .contains("node.color"));
        assert!(Constraint::parse("node.role").unwrap_err().contains("=="));
    }
}
