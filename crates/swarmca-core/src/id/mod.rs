//! Node and cluster IDs (SwarmKit `identity.NewID`).

use crate::base36;
use crate::entropy::{Entropy, EntropyError};

/// Length of every generated ID.
pub const ID_LEN: usize = 25;

/// Generates a new 25-character lower-case base-36 ID.
///
/// 17 random bytes get their top bit set, so the base-36 form of the big-endian integer is
/// always 27 characters long; the first character is dropped and the next 25 are kept
/// (about 129 bits of entropy).
pub fn new_id(e: &mut dyn Entropy) -> Result<String, EntropyError> {
    let mut buf = [0u8; 17];
    e.fill(&mut buf)?;
    Ok(id_from_bytes(buf))
}

/// The deterministic part of [`new_id`]: turns 17 random bytes into an ID.
pub fn id_from_bytes(mut buf: [u8; 17]) -> String {
    buf[0] |= 0x80;
    base36::encode(&buf).chars().skip(1).take(ID_LEN).collect()
}

#[cfg(test)]
mod tests;
