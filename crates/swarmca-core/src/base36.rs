//! Base-36 conversion of big-endian unsigned integers (digits `0-9a-z`).

/// Digit alphabet, lower case.
const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Writes `bytes` (a big-endian unsigned integer) in base 36, lower case, without padding.
///
/// Zero is written as `"0"`.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut num: Vec<u8> = bytes.to_vec();
    let mut digits = Vec::new();
    while num.iter().any(|&b| b != 0) {
        let mut rem: u32 = 0;
        for b in num.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            // cur < 36 * 256, so the quotient fits in a byte.
            *b = u8::try_from(cur / 36).unwrap_or(u8::MAX);
            rem = cur % 36;
        }
        digits.push(digit(rem));
    }
    if digits.is_empty() {
        digits.push('0');
    }
    digits.iter().rev().collect()
}

/// Writes `bytes` in base 36 and left-pads it with `'0'` to `width` characters.
pub(crate) fn encode_padded(bytes: &[u8], width: usize) -> String {
    format!("{:0>width$}", encode(bytes), width = width)
}

fn digit(v: u32) -> char {
    DIGITS.get(usize::try_from(v).unwrap_or(usize::MAX)).map_or('0', |&c| char::from(c))
}

/// Value of one base-36 digit; both letter cases are accepted.
pub(crate) fn digit_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'z' => Some(c - b'a' + 10),
        b'A'..=b'Z' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Why a base-36 string could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// A character outside `0-9a-zA-Z`.
    InvalidDigit,
    /// The value does not fit in the output.
    Overflow,
}

/// Parses a base-36 string (either case) into a 32-byte big-endian integer.
pub(crate) fn decode_256(s: &str) -> Result<[u8; 32], DecodeError> {
    let mut acc = [0u8; 32];
    for c in s.bytes() {
        let mut carry = u32::from(digit_value(c).ok_or(DecodeError::InvalidDigit)?);
        for b in acc.iter_mut().rev() {
            let v = u32::from(*b) * 36 + carry;
            *b = (v & 0xff) as u8;
            carry = v >> 8;
        }
        if carry != 0 {
            return Err(DecodeError::Overflow);
        }
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_small_values() {
        assert_eq!(encode(&[]), "0");
        assert_eq!(encode(&[0, 0]), "0");
        assert_eq!(encode(&[35]), "z");
        assert_eq!(encode(&[36]), "10");
        assert_eq!(encode(&[0x01, 0x00]), "74");
        assert_eq!(encode_padded(&[35], 4), "000z");
    }

    #[test]
    fn decode_round_trips_and_rejects_overflow() {
        let mut v = [0u8; 32];
        v[0] = 0xff;
        v[31] = 7;
        let s = encode(&v);
        assert_eq!(decode_256(&s), Ok(v));
        assert_eq!(decode_256(&s.to_uppercase()), Ok(v));
        assert_eq!(decode_256("zz-"), Err(DecodeError::InvalidDigit));
        // 2^256 is one more than the largest 32-byte value.
        let max = encode(&[0xff; 32]);
        assert_eq!(decode_256(&max), Ok([0xff; 32]));
        let mut two_256 = vec![1u8];
        two_256.extend_from_slice(&[0u8; 32]);
        assert_eq!(decode_256(&encode(&two_256)), Err(DecodeError::Overflow));
    }
}
