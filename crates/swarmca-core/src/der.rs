//! A minimal DER reader, enough to take private-key structures apart.

/// DER tags used here.
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
/// `[0]` constructed, explicit.
pub(crate) const TAG_CTX0: u8 = 0xa0;
/// `[1]` constructed, explicit.
pub(crate) const TAG_CTX1: u8 = 0xa1;

/// Reads one tag-length-value; returns (tag, value, rest).
pub(crate) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (len_bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        len_bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let (value, rest) = rest.split_at_checked(len)?;
    Some((tag, value, rest))
}

/// Reads one TLV that must have tag `tag`; returns (value, rest).
pub(crate) fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, v, rest) = read_tlv(input)?;
    (t == tag).then_some((v, rest))
}

/// Reads a whole input that must be exactly one TLV with tag `tag`.
pub(crate) fn expect_all(input: &[u8], tag: u8) -> Option<&[u8]> {
    let (v, rest) = expect(input, tag)?;
    rest.is_empty().then_some(v)
}
