//! Picks a node for a new task: the nodes that may take it (ready, active,
//! constraints, at most N of the service per node), then the one running
//! the fewest of this service's tasks, then the fewest tasks at all (spread).

use std::collections::HashMap;

use super::constraint::Constraint;
use crate::model::{Availability, Node, NodeId, Status};

/// Tasks per node so far: (of this service, of all services).
#[derive(Default)]
pub struct Load {
    pub service: HashMap<NodeId, u64>,
    pub total: HashMap<NodeId, u64>,
}

impl Load {
    pub fn add(&mut self, node: NodeId) {
        *self.service.entry(node).or_default() += 1;
        *self.total.entry(node).or_default() += 1;
    }
}

/// Why a node cannot take a new task of the service, if it cannot.
pub fn unfit(n: &Node, constraints: &[Constraint]) -> Option<&'static str> {
    if n.status != Status::Ready {
        return Some("down");
    }
    match n.availability {
        Availability::Active => {}
        Availability::Pause => return Some("paused"),
        Availability::Drain => return Some("drained"),
    }
    if constraints.iter().any(|c| !c.matches(n)) {
        return Some("not matching the constraints");
    }
    None
}

pub fn pick<'a>(
    nodes: impl Iterator<Item = &'a Node>,
    constraints: &[Constraint],
    max_per_node: Option<u64>,
    load: &Load,
) -> Result<NodeId, String> {
    let mut why: HashMap<&'static str, usize> = HashMap::new();
    let mut best: Option<(u64, u64, NodeId)> = None;
    let mut seen = 0;
    for n in nodes {
        seen += 1;
        if let Some(r) = unfit(n, constraints) {
            *why.entry(r).or_default() += 1;
            continue;
        }
        let mine = load.service.get(&n.id).copied().unwrap_or(0);
        if max_per_node.is_some_and(|m| mine >= m) {
            *why.entry("at --replicas-max-per-node").or_default() += 1;
            continue;
        }
        let key = (mine, load.total.get(&n.id).copied().unwrap_or(0), n.id);
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    match best {
        Some((_, _, id)) => Ok(id),
        None => {
            let mut reasons: Vec<String> =
                why.into_iter().map(|(r, k)| format!("{k} {r}")).collect();
            reasons.sort();
            Err(format!(
                "no suitable node ({seen} nodes: {})",
                if reasons.is_empty() {
                    "none in the swarm".to_string()
                } else {
                    reasons.join(", ")
                }
            ))
        }
    }
}
