//! How far an export (or a verification) has got, for a progress bar.
//!
//! The exporting thread marks the start of each stage with its size and
//! stores a count as it goes; whoever shows the progress (the gRPC handler
//! streaming it to the client, or the CLI exporting offline) takes
//! [`Step`]s when [`Progress::changed`] fires or on its own timer. Every
//! stage's start and end is kept until taken, so a reader polling slowly
//! still sees each stage; counts in between are sampled.
//!
//! It also carries cancellation the other way: a reader that no longer
//! wants the result calls [`Progress::cancel`], and the working thread
//! stops at its next count instead of finishing work nobody will receive.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

/// A stage of building or checking a bundle, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Reading the period's entries to choose what the bundle carries.
    Scanning,
    /// Reading the chosen entries from the store.
    Reading,
    /// Computing their inclusion proofs.
    Proving,
    /// Folding them as the verifier will, and rendering the derived files.
    Folding,
    /// Signing the manifest with the log key.
    Signing,
    /// Verifying the finished bundle: every signature, proof and decision.
    Checking,
}

impl Stage {
    /// The stage's name on the wire and on screen.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Scanning => "scanning",
            Stage::Reading => "reading",
            Stage::Proving => "proving",
            Stage::Folding => "folding",
            Stage::Signing => "signing",
            Stage::Checking => "checking",
        }
    }
}

/// One observation: `done` of `total` units of `stage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub stage: Stage,
    pub done: u64,
    pub total: u64,
}

/// Shared between the working thread and whoever reports on it.
#[derive(Default)]
pub struct Progress {
    done: AtomicU64,
    cancelled: AtomicBool,
    inner: Mutex<Inner>,
    /// Wakes a working thread held by [`Progress::hold_at`].
    released: Condvar,
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    current: Option<(Stage, u64)>,
    pending: Vec<Step>,
    cancel_at: Option<Stage>,
    hold_at: Option<Stage>,
    /// The last step [`Progress::take`] returned.
    last: Option<Step>,
}

impl Inner {
    /// Records the running stage (if any) as complete.
    fn end_current(&mut self) {
        if let Some((stage, total)) = self.current.take() {
            self.pending.push(Step {
                stage,
                done: total,
                total,
            });
        }
    }
}

impl Progress {
    /// Marks the start of `stage`, which has `total` units; the stage
    /// before it (if any) is recorded as complete.
    pub fn start(&self, stage: Stage, total: u64) {
        let mut g = self.lock();
        g.end_current();
        g.pending.push(Step {
            stage,
            done: 0,
            total,
        });
        g.current = Some((stage, total));
        self.done.store(0, Ordering::Relaxed);
        if g.cancel_at == Some(stage) {
            self.cancelled.store(true, Ordering::Relaxed);
        }
        let hold = g.hold_at == Some(stage);
        drop(g);
        self.notify.notify_one();
        if hold {
            let mut g = self.lock();
            while !self.is_cancelled() {
                g = self.released.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// Records that `done` units of the current stage are complete.
    pub fn set(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
    }

    /// Records the current stage as complete.
    pub fn finish(&self) {
        self.lock().end_current();
        self.notify.notify_one();
    }

    /// The stage boundaries not yet taken, or else where the current stage
    /// stands if that moved since the last take (nothing when no stage is
    /// running or nothing moved).
    pub fn take(&self) -> Vec<Step> {
        let mut g = self.lock();
        let steps = if !g.pending.is_empty() {
            std::mem::take(&mut g.pending)
        } else {
            match g.current {
                Some((stage, total)) => {
                    let now = Step {
                        stage,
                        done: self.done.load(Ordering::Relaxed).min(total),
                        total,
                    };
                    if g.last == Some(now) {
                        return Vec::new();
                    }
                    vec![now]
                }
                None => return Vec::new(),
            }
        };
        g.last = steps.last().copied();
        steps
    }

    /// Asks the working thread to stop, and wakes whoever waits in
    /// [`Progress::changed`].
    pub fn cancel(&self) {
        // Stored under the lock, so a thread held in `start` cannot miss it
        // between its check and its wait.
        let g = self.lock();
        self.cancelled.store(true, Ordering::Relaxed);
        drop(g);
        self.released.notify_all();
        self.notify.notify_one();
    }

    /// Cancels as `stage` starts: for tests that stop an export at a chosen
    /// point.
    #[doc(hidden)]
    pub fn cancel_at(&self, stage: Stage) {
        self.lock().cancel_at = Some(stage);
    }

    /// Holds the working thread as `stage` starts (after reporting it)
    /// until the export is cancelled: for tests that need an export still
    /// running when its client goes away.
    #[doc(hidden)]
    pub fn hold_at(&self, stage: Stage) {
        self.lock().hold_at = Some(stage);
    }

    /// Whether [`Progress::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Resolves after the next stage boundary (or at once if one came since
    /// the last wait).
    pub async fn changed(&self) {
        self.notify.notified().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding this lock leaves plain data behind.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Cancels a [`Progress`] when dropped before [`CancelOnDrop::defuse`]:
/// held by a future whose work runs on other threads, so that dropping the
/// future (a client that went away) stops the work too.
pub struct CancelOnDrop(Option<std::sync::Arc<Progress>>);

impl CancelOnDrop {
    pub fn new(progress: std::sync::Arc<Progress>) -> Self {
        CancelOnDrop(Some(progress))
    }

    /// The work finished: dropping no longer cancels anything.
    pub fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            p.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_boundary_is_kept_until_taken() {
        let p = Progress::default();
        assert!(p.take().is_empty());
        p.start(Stage::Reading, 10);
        p.set(4);
        p.start(Stage::Proving, 3);
        p.set(2);
        let steps = p.take();
        let want = [
            (Stage::Reading, 0, 10),
            (Stage::Reading, 10, 10),
            (Stage::Proving, 0, 3),
        ];
        assert_eq!(steps.len(), want.len());
        for (s, (stage, done, total)) in steps.iter().zip(want) {
            assert_eq!((s.stage, s.done, s.total), (stage, done, total));
        }
        // With nothing pending, a take samples the running stage, once
        // for each count.
        let now = p.take();
        assert_eq!(
            (now[0].stage, now[0].done, now[0].total),
            (Stage::Proving, 2, 3)
        );
        assert!(p.take().is_empty(), "an unchanged count is not repeated");
        p.set(99);
        assert_eq!(
            p.take()[0].done,
            3,
            "a count never exceeds the stage's size"
        );
        p.finish();
        let end = p.take();
        assert_eq!((end[0].stage, end[0].done), (Stage::Proving, 3));
        assert!(p.take().is_empty());
    }

    #[test]
    fn a_held_stage_reports_itself_and_waits_for_cancel() {
        let p = std::sync::Arc::new(Progress::default());
        p.hold_at(Stage::Proving);
        let worker = {
            let p = p.clone();
            std::thread::spawn(move || {
                p.start(Stage::Reading, 1);
                p.start(Stage::Proving, 5);
                p.is_cancelled()
            })
        };
        // The held stage is reported before the thread waits.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            while p.take().last().map(|s| s.stage) != Some(Stage::Proving) {
                p.changed().await;
            }
        });
        assert!(!worker.is_finished(), "held until cancelled");
        p.cancel();
        assert!(worker.join().unwrap(), "released by the cancel");
    }
}
