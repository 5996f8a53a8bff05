//! Run checkpoints: finished items are recorded in batches through the
//! store, so that a rerun after a crash skips them without re-checking.

use std::collections::HashMap;
use std::time::Duration;

use ferry_store::{Checkpoint, DoneItem, Known, Store};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Where to keep the checkpoint of a run.
#[derive(Debug, Clone)]
pub struct CheckpointSpec {
    pub store: Store,
}

pub(crate) struct Recorder {
    store: Store,
    pub(crate) checkpoint: Checkpoint,
    tx: Option<mpsc::Sender<DoneItem>>,
    task: Option<JoinHandle<Result<(), ferry_store::Error>>>,
}

const BATCH: usize = 512;

impl Recorder {
    pub(crate) async fn start(store: Store, key: &str, src: &str, dst: &str) -> crate::Result<Self> {
        let checkpoint = store.begin_run(key, src, dst).await?;
        let (tx, mut rx) = mpsc::channel::<DoneItem>(BATCH * 4);
        let writer = store.clone();
        let run_id = checkpoint.run_id;
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let deadline = tokio::time::sleep(Duration::from_millis(200));
                tokio::pin!(deadline);
                let mut closed = false;
                loop {
                    tokio::select! {
                        item = rx.recv() => match item {
                            Some(item) => {
                                batch.push(item);
                                if batch.len() >= BATCH {
                                    break;
                                }
                            }
                            None => {
                                closed = true;
                                break;
                            }
                        },
                        _ = &mut deadline => break,
                    }
                }
                if !batch.is_empty() {
                    writer.record_done(run_id, &batch).await?;
                    batch.clear();
                }
                if closed {
                    return Ok(());
                }
            }
        });
        Ok(Self { store, checkpoint, tx: Some(tx), task: Some(task) })
    }

    pub(crate) async fn done_in_dir(&self, dir: &str) -> HashMap<String, Known> {
        match self.store.done_in_dir(self.checkpoint.run_id, dir).await {
            Ok(known) => known,
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint lookup failed; checking items in full");
                HashMap::new()
            }
        }
    }

    pub(crate) async fn record(&self, item: DoneItem) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(item).await;
        }
    }

    /// Flush what is queued; when the run succeeded, forget the checkpoint.
    pub(crate) async fn finish(&mut self, success: bool) -> crate::Result<()> {
        self.tx.take();
        if let Some(task) = self.task.take() {
            task.await.expect("checkpoint writer panicked")?;
        }
        if success {
            self.store.finish_run(self.checkpoint.run_id).await?;
        }
        Ok(())
    }
}
