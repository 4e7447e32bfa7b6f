use super::*;

/// Yields the bytes of a fixed pattern, cycling.
struct FixedEntropy(Vec<u8>);

impl Entropy for FixedEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        for (d, s) in dest.iter_mut().zip(self.0.iter().cycle()) {
            *d = *s;
        }
        Ok(())
    }
}

struct FailingEntropy;

impl Entropy for FailingEntropy {
    fn fill(&mut self, _dest: &mut [u8]) -> Result<(), EntropyError> {
        Err(EntropyError("broken".into()))
    }
}

#[test]
fn ids_are_25_lowercase_base36_chars() {
    let mut counter = 0u8;
    for _ in 0..200 {
        let mut e = FixedEntropy((0..17).map(|i| counter.wrapping_mul(31).wrapping_add(i * 7)).collect());
        counter = counter.wrapping_add(1);
        let id = new_id(&mut e).unwrap();
        assert_eq!(id.len(), ID_LEN);
        assert!(id.bytes().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()), "{id}");
    }
}

#[test]
fn id_is_deterministic_and_matches_independent_computation() {
    // Expected values computed with python3 big-integer arithmetic.
    let mut e = FixedEntropy((1..=17).collect());
    assert_eq!(new_id(&mut e).unwrap(), "ib7wwa7iw3swndjw6xned85q8");
    let mut e = FixedEntropy((1..=17).collect());
    assert_eq!(new_id(&mut e).unwrap(), "ib7wwa7iw3swndjw6xned85q8");
    // Extremes of the [2^135, 2^136) range still give 25 characters.
    assert_eq!(id_from_bytes([0; 17]), "hvy0lj3x0b883f8e30fyp2172");
    assert_eq!(id_from_bytes([0xff; 17]), "zrw1727u0mgg6ugs60vxe42e4");
}

#[test]
fn entropy_failure_is_reported() {
    let err = new_id(&mut FailingEntropy).unwrap_err();
    assert_eq!(err.to_string(), "entropy source failed: broken");
}
