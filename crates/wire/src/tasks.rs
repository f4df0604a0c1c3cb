//! The tasks serving the calls a channel received, by call id, so that a
//! cancellation from the peer stops the one it names, and so that they
//! end with the channel.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{AbortHandle, JoinSet};

use crate::worker::CallId;

/// Owned by a channel's read loop; dropping it aborts every call still
/// running (their answers would have nowhere to go).
#[derive(Debug, Default)]
pub struct CallTasks {
    tasks: JoinSet<CallId>,
    running: HashMap<CallId, AbortHandle>,
}

impl CallTasks {
    /// Runs `call` (the serving of call `id`) in a task of its own.
    pub fn spawn<F>(&mut self, id: CallId, call: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.tasks.spawn(async move {
            call.await;
            id
        });
        self.running.insert(id, handle);
    }

    /// Stops call `id` if it still runs; its answer is never sent.
    pub fn cancel(&mut self, id: CallId) {
        if let Some(handle) = self.running.remove(&id) {
            handle.abort();
        }
    }

    /// Forgets the calls that finished; call it now and then (each time
    /// the read loop wakes) so the table holds only what runs.
    pub fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            if let Ok(id) = done {
                self.running.remove(&id);
            }
        }
    }

    /// No call runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn abort_all(&mut self) {
        self.tasks.abort_all();
        self.running.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_cancelled_call_stops_and_finished_ones_are_forgotten() {
        let mut tasks = CallTasks::default();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(1, async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let _ = done_tx.send(());
        });
        tasks.spawn(2, async {});
        tasks.cancel(1);
        // The cancelled call's sender is dropped without sending.
        assert!(done_rx.await.is_err());
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                tasks.reap();
                if tasks.running.is_empty() && tasks.is_empty() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("both calls are gone from the table");
    }
}
