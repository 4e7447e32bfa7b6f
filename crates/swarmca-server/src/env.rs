//! What the server takes from its environment: wall-clock time and entropy. Production passes
//! [`SystemClock`] and [`OsEntropy`]; a simulator passes its own (skewed clocks, seeded entropy).

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use swarmca_core::entropy::{Entropy, EntropyError};

/// A source of wall-clock time (certificate validity, chain checks).
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system clock. Under the madsim simulator `SystemTime::now` is already virtual.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Entropy from the operating system through `getrandom` (under the simulator the workspace's
/// getrandom shim routes it to the simulator's seeded source).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        getrandom::getrandom(dest).map_err(|e| EntropyError(e.to_string()))
    }
}

/// Entropy shared by the server's tasks.
pub type SharedEntropy = Arc<Mutex<dyn Entropy + Send>>;

/// Wraps an entropy source for sharing.
pub fn shared_entropy<E: Entropy + Send + 'static>(e: E) -> SharedEntropy {
    Arc::new(Mutex::new(e))
}

/// Fills a fixed-size array from shared entropy.
pub(crate) fn draw<const N: usize>(e: &SharedEntropy) -> Result<[u8; N], EntropyError> {
    let mut buf = [0u8; N];
    let mut g = e.lock().map_err(|_| EntropyError("entropy lock poisoned".into()))?;
    g.fill(&mut buf)?;
    Ok(buf)
}

/// Runs `f` with exclusive access to the shared entropy; a poisoned lock is an entropy error,
/// in whatever error type `f` returns.
pub(crate) fn with_entropy<T, E: From<EntropyError>>(
    e: &SharedEntropy,
    f: impl FnOnce(&mut dyn Entropy) -> Result<T, E>,
) -> Result<T, E> {
    let mut g = e.lock().map_err(|_| EntropyError("entropy lock poisoned".into()))?;
    f(&mut *g)
}
