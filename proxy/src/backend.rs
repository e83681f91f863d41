//! What the service runs on. The first backend is the in-process engine;
//! the replicated shards (issue 5) will be another, behind the same trait.

use imstore_engine::{Command, Engine, Error, Outcome};

/// Called once with a write's result, after it is durable. Must not block.
pub type Done = Box<dyn FnOnce(Result<Outcome, Error>) + Send>;

/// The store behind the service.
pub trait Backend: Send + Sync + 'static {
    /// Queues a write; `done` runs once it is durable or has failed.
    fn submit(&self, command: Command, done: Done);
    /// The engine that serves reads.
    fn engine(&self) -> &Engine;
}

/// One embedded engine: `imstore serve` on a local data directory.
pub struct EngineBackend {
    engine: Engine,
}

impl EngineBackend {
    /// Serves this engine.
    pub fn new(engine: Engine) -> Self {
        EngineBackend { engine }
    }
}

impl Backend for EngineBackend {
    fn submit(&self, command: Command, done: Done) {
        self.engine.submit(command, done);
    }

    fn engine(&self) -> &Engine {
        &self.engine
    }
}
