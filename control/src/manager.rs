//! A node's Raft member: opening it, writes (leader only), reads that must be
//! current, and membership changes for promote/demote/join.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};

use crate::api::ApiError;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::model::{Command, NodeId, Outcome, Proposal};
use crate::network::Network;
use crate::raft_types::Raft;
use crate::store::{self, log::LogStore, sm::StateMachine};

/// How long a write or a current read waits for a quorum before giving up.
pub const QUORUM_WAIT: Duration = Duration::from_secs(4);

pub struct Manager {
    pub id: NodeId,
    pub raft: Raft,
    pub sm: StateMachine,
    proposals: mpsc::UnboundedSender<Pending>,
}

type Pending = (Command, oneshot::Sender<Result<Outcome, ApiError>>);

/// Bytes of a snapshot per install-snapshot message: sent as JSON numbers
/// (up to 4 bytes each), they stay well inside the API's Raft body limit.
pub const SNAPSHOT_CHUNK: u64 = 1 << 20;

/// Entries in flight at once; more requests wait and share the next entry.
const MAX_IN_FLIGHT: usize = 4;
/// Commands per entry at most.
const MAX_BATCH: usize = 1024;

/// Group commit: openraft flushes the log once per entry, so commands that
/// arrive while entries are in flight go into one entry together.
async fn propose(raft: Raft, mut rx: mpsc::UnboundedReceiver<Pending>) {
    // The entries in flight are polled by this task itself: no hop through
    // a spawned task on the commit path.
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            p = rx.recv(), if open && in_flight.len() < MAX_IN_FLIGHT => match p {
                None => open = false,
                Some(first) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(p) => batch.push(p),
                            Err(_) => break,
                        }
                    }
                    in_flight.push(commit(raft.clone(), batch));
                }
            },
            else => break,
        }
    }
}

async fn commit(raft: Raft, batch: Vec<Pending>) {
    let (cmds, replies): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
    let res = tokio::time::timeout(QUORUM_WAIT, raft.client_write(Proposal(cmds))).await;
    let fail = |e: &dyn Fn() -> ApiError, replies: Vec<oneshot::Sender<_>>| {
        for r in replies {
            let _ = r.send(Err(e()));
        }
    };
    match res {
        Err(_) => fail(
            &|| {
                ApiError::NoQuorum(format!(
                    "the change was not committed within {} s: fewer than a majority of managers answer (it takes effect if they return)",
                    QUORUM_WAIT.as_secs()
                ))
            },
            replies,
        ),
        Ok(Ok(r)) => {
            for (reply, out) in replies.into_iter().zip(r.data) {
                let _ = reply.send(match out.error {
                    Some(e) => Err(ApiError::Conflict(e)),
                    None => Ok(out),
                });
            }
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            fail(&|| ApiError::NotLeader, replies)
        }
        Ok(Err(e)) => {
            let msg = e.to_string();
            fail(&|| ApiError::Internal(msg.clone()), replies)
        }
    }
}

impl Manager {
    /// `snapshot_every`: entries between snapshots (a tenth of that is
    /// kept behind each for followers a little behind).
    pub async fn open(
        dir: &Path,
        id: NodeId,
        net: Network,
        snapshot_every: u64,
    ) -> anyhow::Result<Self> {
        let db = store::open(&dir.join("raft.redb"))?;
        let wal = crate::store::wal::Wal::open(&dir.join("raft-log"))?;
        let log = LogStore::new(db.clone(), wal);
        let sm = StateMachine::open(db)?;
        let config = Config {
            cluster_name: "apiary".into(),
            // Also openraft's deadline for one AppendEntries: a batch on a
            // busy 2-core host can take more than 100 ms.
            heartbeat_interval: 150,
            // The max is also openraft's leader lease: followers refuse to
            // vote until it has passed since they last heard the leader.
            election_timeout_min: 400,
            election_timeout_max: 600,
            // Small RPCs stay well inside the deadline above.
            max_payload_entries: 64,
            install_snapshot_timeout: 2000,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every.max(10)),
            max_in_snapshot_log_to_keep: (snapshot_every / 10).max(1),
            ..Default::default()
        };
        let config = Arc::new(config.validate()?);
        let raft = Raft::new(id, config, net, log, sm.clone()).await?;
        let (proposals, rx) = mpsc::unbounded_channel();
        tokio::spawn(propose(raft.clone(), rx));
        tokio::spawn(log_leadership(raft.metrics()));
        Ok(Self {
            id,
            raft,
            sm,
            proposals,
        })
    }

    pub async fn initialize(&self, addr: &str) -> anyhow::Result<()> {
        let mut members = BTreeMap::new();
        members.insert(
            self.id,
            BasicNode {
                addr: addr.to_string(),
            },
        );
        self.raft.initialize(members).await?;
        Ok(())
    }

    /// The leader's id and API address, as this member knows it.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    /// Resolves once this member knows of a leader other than `from` (or
    /// of none).
    pub async fn leader_changed(&self, from: NodeId) {
        let mut metrics = self.raft.metrics();
        if metrics
            .wait_for(|m| m.current_leader != Some(from))
            .await
            .is_err()
        {
            // Raft stopped: no other leader will come from here.
            std::future::pending::<()>().await;
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    pub fn is_member(&self, id: NodeId) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
    }

    pub fn is_voter(&self) -> bool {
        self.voters().contains(&self.id)
    }

    /// Commits a command; only the leader may (callers forward otherwise).
    /// Concurrent writes share Raft entries (see [`propose`]).
    pub async fn write(&self, cmd: Command) -> Result<Outcome, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.proposals
            .send((cmd, tx))
            .map_err(|_| ApiError::Unavailable("this manager is shutting down".into()))?;
        rx.await
            .map_err(|_| ApiError::Unavailable("this manager is shutting down".into()))?
    }

    /// Confirms with a quorum that this leader is still the leader, so what
    /// it reads next is current.
    pub async fn ensure_current(&self) -> Result<(), ApiError> {
        // One round of heartbeats that a majority did not answer in time is,
        // on a loaded machine, more often late answers than a lost quorum:
        // asked again until the deadline (seen: `node ls` failing right
        // after a swarm formed, with every manager alive).
        const AGAIN: Duration = Duration::from_millis(50);
        let deadline = tokio::time::Instant::now() + QUORUM_WAIT;
        let no_quorum = format!(
            "cannot confirm the state with a majority of managers within {} s: an answer now could be stale, so none is given",
            QUORUM_WAIT.as_secs()
        );
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.raft.ensure_linearizable()).await {
                Err(_) => return Err(ApiError::NoQuorum(no_quorum)),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(
                    openraft::error::CheckIsLeaderError::ForwardToLeader(_),
                ))) => return Err(ApiError::NotLeader),
                Ok(Err(RaftError::APIError(
                    e @ openraft::error::CheckIsLeaderError::QuorumNotEnough(_),
                ))) => {
                    if tokio::time::Instant::now() + AGAIN >= deadline {
                        return Err(ApiError::NoQuorum(format!("{no_quorum} (last try: {e})")));
                    }
                    tokio::time::sleep(AGAIN).await;
                }
                // Raft itself stopped: asking again cannot help.
                Ok(Err(e)) => return Err(ApiError::Unavailable(e.to_string())),
            }
        }
    }

    /// Makes `id` a voter: a learner first (it catches up), then a voter.
    pub async fn add_voter(&self, id: NodeId, addr: &str) -> Result<(), ApiError> {
        let node = BasicNode {
            addr: addr.to_string(),
        };
        let wait = Duration::from_secs(15);
        let res = tokio::time::timeout(wait, self.raft.add_learner(id, node, true)).await;
        match res {
            Err(_) => {
                return Err(ApiError::Unavailable(format!(
                    "the new manager at {addr} did not catch up with the Raft log within {} s: check that it is reachable on that address",
                    wait.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(membership_err(e)),
            Ok(Ok(_)) => {}
        }
        self.change(ChangeMembers::AddVoterIds([id].into())).await
    }

    /// Removes `id` from the Raft group entirely.
    pub async fn remove_voter(&self, id: NodeId) -> Result<(), ApiError> {
        if self.voters().contains(&id) {
            self.change(ChangeMembers::RemoveVoters([id].into()))
                .await?;
        }
        if self.is_member(id) {
            self.change(ChangeMembers::RemoveNodes([id].into())).await?;
        }
        Ok(())
    }

    async fn change(&self, c: ChangeMembers<u64, BasicNode>) -> Result<(), ApiError> {
        match tokio::time::timeout(QUORUM_WAIT * 2, self.raft.change_membership(c, false)).await {
            Err(_) => Err(ApiError::NoQuorum(
                "the membership change was not committed: fewer than a majority of managers answer"
                    .into(),
            )),
            Ok(Err(e)) => Err(membership_err(e)),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

fn membership_err(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ApiError::NotLeader,
        other => ApiError::Conflict(other.to_string()),
    }
}

/// Logs when this member becomes the leader or stops being it, the moment
/// Raft says so (operators read failovers from it; the failover test times
/// elections by it).
async fn log_leadership(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
) {
    let mut leading = false;
    while metrics.changed().await.is_ok() {
        let (now, term) = {
            let m = metrics.borrow();
            (m.state == ServerState::Leader, m.current_term)
        };
        if now != leading {
            leading = now;
            if now {
                tracing::info!(term, "this node is now the Raft leader");
            } else {
                tracing::info!(term, "this node is no longer the Raft leader");
            }
        }
    }
}
