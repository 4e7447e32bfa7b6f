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

/// Reads one TLV; returns (tag, the whole encoded TLV, rest).
pub(crate) fn split_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (tag, _, rest) = read_tlv(input)?;
    let whole = input.get(..input.len() - rest.len())?;
    Some((tag, whole, rest))
}

/// Splits the contents of a constructed value into its elements (tag, whole TLV).
pub(crate) fn elements(mut contents: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !contents.is_empty() {
        let (tag, whole, rest) = split_tlv(contents)?;
        out.push((tag, whole));
        contents = rest;
    }
    Some(out)
}

/// Encodes one TLV with a definite length.
pub(crate) fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let len = value.len();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_round_trips_every_length_form() {
        for len in [0usize, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000] {
            let value = vec![0xab; len];
            let enc = tlv(TAG_OCTET_STRING, &value);
            let (tag, whole, rest) = split_tlv(&enc).unwrap();
            assert_eq!((tag, whole, rest), (TAG_OCTET_STRING, enc.as_slice(), &[][..]));
            assert_eq!(expect_all(&enc, TAG_OCTET_STRING).unwrap(), value.as_slice());
        }
        assert_eq!(tlv(TAG_SEQUENCE, &[]), vec![0x30, 0x00]);
        assert_eq!(&tlv(TAG_SEQUENCE, &[0; 0x80])[..3], &[0x30, 0x81, 0x80]);
        assert_eq!(&tlv(TAG_SEQUENCE, &[0; 0x100])[..4], &[0x30, 0x82, 0x01, 0x00]);
    }

    #[test]
    fn elements_splits_and_rejects_truncation() {
        let a = tlv(TAG_INTEGER, &[1]);
        let b = tlv(TAG_SEQUENCE, &[5, 0]);
        let both = [a.clone(), b.clone()].concat();
        assert_eq!(elements(&both).unwrap(), vec![(TAG_INTEGER, a.as_slice()), (TAG_SEQUENCE, b.as_slice())]);
        assert!(elements(&both[..both.len() - 1]).is_none());
    }
}
