//! The task manager on a thread of its own (swarm mode). Starting a
//! container takes a good part of a second; done on the runtime's own
//! thread it would hold back the data plane, so a node could keep sending
//! new connections to a backend another node already retired and stopped.
//! The runtime sends the tasks it wants; the worker brings them about and
//! answers with what runs and what happened.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use crate::config::TaskSpecConfig;
use crate::driver::Health;
use crate::tasks::{Reconciled, TaskManager};

/// How often the worker looks at its tasks (ended, health) unasked.
const TICK: Duration = Duration::from_millis(250);

/// A running task as the worker last saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub address: Option<Ipv4Addr>,
    pub health: Health,
}

/// What one pass did and what runs after it.
pub struct Pass {
    pub done: Reconciled,
    pub running: HashMap<String, Seen>,
    /// The engine's images, now and then (see [`IMAGES_EVERY`]).
    pub images: Option<Option<Vec<String>>>,
}

/// Passes between two listings of the engine's images.
const IMAGES_EVERY: u32 = 8;

pub struct TaskWorker {
    want: mpsc::Sender<Vec<TaskSpecConfig>>,
    passes: mpsc::Receiver<Pass>,
}

impl TaskWorker {
    pub fn spawn(tasks: TaskManager) -> std::io::Result<Self> {
        let (want_tx, want_rx) = mpsc::channel();
        let (pass_tx, pass_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("tasks".into())
            .spawn(move || run(tasks, want_rx, pass_tx))?;
        Ok(TaskWorker {
            want: want_tx,
            passes: pass_rx,
        })
    }

    /// The tasks to run from now on (the latest call wins).
    pub fn want(&self, tasks: Vec<TaskSpecConfig>) {
        let _ = self.want.send(tasks);
    }

    /// The passes finished since the last call, oldest first.
    pub fn passes(&self) -> Vec<Pass> {
        self.passes.try_iter().collect()
    }

    /// Waits for the next pass (at most `timeout`).
    pub fn next_pass(&self, timeout: Duration) -> Option<Pass> {
        self.passes.recv_timeout(timeout).ok()
    }
}

fn run(
    mut tasks: TaskManager,
    want_rx: mpsc::Receiver<Vec<TaskSpecConfig>>,
    pass_tx: mpsc::Sender<Pass>,
) {
    let mut want: Vec<TaskSpecConfig> = Vec::new();
    let mut n: u32 = 0;
    loop {
        match want_rx.recv_timeout(TICK) {
            Ok(w) => want = w,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(w) = want_rx.try_recv() {
            want = w;
        }
        let done = tasks.reconcile(&want);
        let mut running = HashMap::new();
        for t in &want {
            if let Some(health) = tasks.health(&t.name) {
                let address = tasks.address(&t.name);
                running.insert(t.name.clone(), Seen { address, health });
            }
        }
        let images = n.is_multiple_of(IMAGES_EVERY).then(|| tasks.images());
        n = n.wrapping_add(1);
        if pass_tx
            .send(Pass {
                done,
                running,
                images,
            })
            .is_err()
        {
            return;
        }
    }
}
