//! Picks nodes for new tasks: the nodes that may take them (ready, active,
//! constraints, at most N of the service per node), then the one running
//! the fewest of this service's tasks, then the fewest tasks at all
//! (spread), then the lowest id.

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

/// Places the tasks of one service: the fitting nodes in a heap in that
/// order, so a placement costs O(log nodes), not a scan (100,000 tasks on
/// 5,000 nodes).
pub struct Placer {
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(u64, u64, NodeId)>>,
    max_per_node: Option<u64>,
    why_none: String,
}

impl Placer {
    pub fn new<'a>(
        nodes: impl Iterator<Item = &'a Node>,
        constraints: &[Constraint],
        max_per_node: Option<u64>,
        load: &Load,
    ) -> Self {
        let mut why: HashMap<&'static str, usize> = HashMap::new();
        let mut heap = std::collections::BinaryHeap::new();
        let mut seen = 0;
        for n in nodes {
            seen += 1;
            match unfit(n, constraints) {
                Some(r) => *why.entry(r).or_default() += 1,
                None => heap.push(std::cmp::Reverse((
                    load.service.get(&n.id).copied().unwrap_or(0),
                    load.total.get(&n.id).copied().unwrap_or(0),
                    n.id,
                ))),
            }
        }
        let mut reasons: Vec<String> = why.into_iter().map(|(r, k)| format!("{k} {r}")).collect();
        if max_per_node.is_some() && !heap.is_empty() {
            reasons.push(format!("{} at --replicas-max-per-node", heap.len()));
        }
        reasons.sort();
        let why_none = format!(
            "no suitable node ({seen} nodes: {})",
            if reasons.is_empty() {
                "none in the swarm".to_string()
            } else {
                reasons.join(", ")
            }
        );
        Self {
            heap,
            max_per_node,
            why_none,
        }
    }

    pub fn next(&mut self, load: &mut Load) -> Result<NodeId, String> {
        let Some(std::cmp::Reverse((mine, total, id))) = self.heap.pop() else {
            return Err(self.why_none.clone());
        };
        if self.max_per_node.is_some_and(|m| mine >= m) {
            // The least loaded node is full, so all are.
            self.heap.push(std::cmp::Reverse((mine, total, id)));
            return Err(self.why_none.clone());
        }
        load.add(id);
        self.heap.push(std::cmp::Reverse((mine + 1, total + 1, id)));
        Ok(id)
    }
}
