//! The writers of a drill: a target's own workload, or the platform chain that writes each seq
//! through several targets in turn. Both run in their own task until the restore begins, and
//! hand over the ledger of every attempt.

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::stop::Stop;
use crate::clock::Clock;
use crate::targets::Target;
use crate::workload::{self, Ledger};

/// One target's workload, writing in its own task until [`Workload::stop`].
pub struct Workload {
    stop: CancellationToken,
    task: AbortOnDropHandle<Ledger>,
}

impl Workload {
    pub fn start(target: &dyn Target, rate: u32, clock: Clock) -> Workload {
        let stop = CancellationToken::new();
        let task = AbortOnDropHandle::new(tokio::spawn(workload::run(
            target.writer(),
            rate,
            clock,
            stop.clone(),
        )));
        Workload { stop, task }
    }

    /// Stops writing; the ledger of every attempt.
    pub async fn stop(self, target: &str) -> Result<Ledger, Stop> {
        self.stop.cancel();
        self.task
            .await
            .map_err(|e| Stop::Step(format!("{target} workload: {e}")))
    }
}

/// The platform workload: one task writing each seq through its targets in turn, stopped by
/// the first of them whose restore begins; each then takes its own ledger.
pub struct Chain {
    targets: Vec<String>,
    stop: CancellationToken,
    task: std::sync::Mutex<Option<AbortOnDropHandle<Vec<Ledger>>>>,
    ledgers: tokio::sync::OnceCell<Vec<Ledger>>,
}

impl Chain {
    /// Starts writing through `writers`, one per target of `targets`, in order.
    pub fn start(
        targets: Vec<String>,
        writers: Vec<Box<dyn workload::Writer>>,
        rate: u32,
        clock: Clock,
    ) -> Chain {
        let stop = CancellationToken::new();
        let task = AbortOnDropHandle::new(tokio::spawn(workload::run_chain(
            writers,
            rate,
            clock,
            stop.clone(),
        )));
        Chain {
            targets,
            stop,
            task: std::sync::Mutex::new(Some(task)),
            ledgers: tokio::sync::OnceCell::new(),
        }
    }

    pub fn writes_to(&self, target: &str) -> bool {
        self.targets.iter().any(|t| t == target)
    }

    /// The targets written, in the chain's order.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// Stops the workload (if it still writes) and returns `target`'s ledger.
    pub async fn ledger(&self, target: &str) -> Result<Ledger, Stop> {
        self.stop.cancel();
        let ledgers = self
            .ledgers
            .get_or_try_init(|| async {
                let task = self.task.lock().expect("not poisoned").take();
                match task {
                    Some(task) => task
                        .await
                        .map_err(|e| Stop::Step(format!("the platform workload: {e}"))),
                    None => Err(Stop::Step("the platform workload ended twice".into())),
                }
            })
            .await?;
        let i = self
            .targets
            .iter()
            .position(|t| t == target)
            .expect("a target of the platform workload");
        Ok(ledgers[i].clone())
    }

    /// Every target's ledger, once the workload has stopped.
    pub fn ledgers(&self) -> Option<&Vec<Ledger>> {
        self.ledgers.get()
    }
}

/// Whoever writes a target: its own workload, or the platform chain.
pub enum Writing<'c> {
    Own(Workload),
    Chain(&'c Chain),
}

impl Writing<'_> {
    /// Stops writing to `target`; its ledger.
    pub async fn stop(self, target: &str) -> Result<Ledger, Stop> {
        match self {
            Writing::Own(workload) => workload.stop(target).await,
            Writing::Chain(chain) => chain.ledger(target).await,
        }
    }
}
