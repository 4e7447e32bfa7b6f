//! Injected randomness.
//!
//! The core never draws randomness itself (apart from *ring*'s internal use, see the crate
//! docs): callers pass an [`Entropy`] source, which production code backs with the OS CSPRNG
//! and simulations back with a seeded generator.

/// The entropy source failed to produce bytes.
#[derive(Debug, thiserror::Error)]
#[error("entropy source failed: {0}")]
pub struct EntropyError(pub String);

/// A source of random bytes.
pub trait Entropy {
    /// Fills `dest` entirely with random bytes.
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError>;
}
