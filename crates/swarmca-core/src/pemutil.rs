//! PEM scanning with Go's `encoding/pem` block-finding rules.
//!
//! Go's `pem.Decode` looks for `-----BEGIN ` at the start of the input or of a line, skips
//! anything before it, and when a candidate block is malformed keeps searching after it. A
//! located block whose body is plain base64 lines is decoded here (the common case, and on
//! the signing path); anything else (headers, unusual whitespace) is left to the `pem` crate,
//! whose rules the fast path is tested against.

use base64::Engine as _;

/// The base64 engine of the `pem` crate: standard alphabet, padding and canonical trailing
/// bits required.
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One decoded PEM block (headers are dropped).
pub(crate) struct Block {
    /// The label, e.g. `CERTIFICATE`.
    pub(crate) label: String,
    /// The decoded contents.
    pub(crate) der: Vec<u8>,
}

const BEGIN: &[u8] = b"-----BEGIN ";
const END: &[u8] = b"-----END ";

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let mut from = 0;
    loop {
        let at = from + hay.get(from..)?.iter().position(|&c| c == first)?;
        if hay.get(at..at + needle.len())? == needle {
            return Some(at);
        }
        from = at + 1;
    }
}

/// Finds the first well-formed PEM block; returns it and the input after it.
pub(crate) fn decode(data: &[u8]) -> Option<(Block, &[u8])> {
    let mut from = 0usize;
    loop {
        let rest = data.get(from..)?;
        let rel = find(rest, BEGIN)?;
        let start = from + rel;
        // A BEGIN line must start the input or a line.
        let at_line_start = start == 0 || data.get(start - 1) == Some(&b'\n');
        if at_line_start {
            if let Some((block, end)) = block_at(data, start) {
                return Some((block, data.get(end..).unwrap_or_default()));
            }
        }
        from = start + 1;
    }
}

/// Tries to read a block whose `-----BEGIN ` is at `start`; returns it and the offset after
/// its END line.
fn block_at(data: &[u8], start: usize) -> Option<(Block, usize)> {
    let after_begin = start + BEGIN.len();
    let tail = data.get(after_begin..)?;
    let eol = tail.iter().position(|&c| c == b'\n').unwrap_or(tail.len());
    let type_line = tail.get(..eol)?;
    let type_line = type_line.strip_suffix(b"\r").unwrap_or(type_line);
    let label = type_line.strip_suffix(b"-----")?;
    let label = std::str::from_utf8(label).ok()?;
    let end_marker = [END, label.as_bytes(), b"-----"].concat();
    let body_start = after_begin + eol;
    let end_rel = find(data.get(body_start..)?, &end_marker)?;
    let end_start = body_start + end_rel;
    // The END line must start a line and be followed by end of line or end of input.
    if data.get(end_start.checked_sub(1)?) != Some(&b'\n') {
        return None;
    }
    let mut end = end_start + end_marker.len();
    let after = data.get(end..).unwrap_or_default();
    let trailing_ws = after.iter().position(|&c| c != b' ' && c != b'\t').unwrap_or(after.len());
    match after.get(trailing_ws) {
        None => end += trailing_ws,
        Some(b'\n') => end += trailing_ws + 1,
        Some(b'\r') if after.get(trailing_ws + 1) == Some(&b'\n') => end += trailing_ws + 2,
        Some(_) => return None,
    }
    let body = data.get(body_start..end_start)?;
    let der = match decode_plain_body(body) {
        Some(plain) => plain.ok()?,
        None => {
            let parsed = pem::parse(data.get(start..end)?).ok()?;
            if parsed.tag() != label {
                return None;
            }
            parsed.into_contents()
        }
    };
    Some((Block { label: label.to_string(), der }, end))
}

/// Decodes a block body made only of base64 characters and line breaks: `None` when the
/// body holds anything else (then the `pem` crate decides), `Some(Err)` when the base64 is
/// invalid.
fn decode_plain_body(body: &[u8]) -> Option<Result<Vec<u8>, base64::DecodeError>> {
    let is_b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=';
    if !body.iter().all(|&c| is_b64(c) || c == b'\n' || c == b'\r') {
        return None;
    }
    // CR only as part of CRLF, and no blank line: the shapes the pem crate reads the same way.
    let mut lines = body.split(|&c| c == b'\n');
    // The body starts with the BEGIN line's line break.
    if lines.next() != Some(&[][..]) && !body.is_empty() {
        return None;
    }
    // The body ends with the line break before the END line.
    let lines: Vec<&[u8]> = lines.collect();
    let (last, lines) = lines.split_last()?;
    if !last.is_empty() {
        return None;
    }
    let mut joined = Vec::with_capacity(body.len());
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line.contains(&b'\r') {
            return None;
        }
        joined.extend_from_slice(line);
    }
    Some(B64.decode(&joined))
}

/// Encodes a block the way Go's `pem.EncodeToMemory` does (LF, 64-column lines, no headers).
pub(crate) fn encode(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = B64.encode(der);
    let mut out = Vec::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.extend_from_slice(b"-----BEGIN ");
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(b"-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END ");
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(b"-----\n");
    out
}

/// Go's `bytes.TrimSpace` for ASCII whitespace.
pub(crate) fn trim_space(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() || *first == 0x0b {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() || *last == 0x0b {
            b = rest;
        } else {
            break;
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for the equivalence tests.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// What the `pem` crate alone makes of one block.
    fn reference(block: &[u8]) -> Option<Vec<u8>> {
        pem::parse(block).ok().map(|p| p.into_contents())
    }

    #[test]
    fn plain_bodies_decode_exactly_as_the_pem_crate_does() {
        let mut rng = Lcg(7);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut fast_taken = 0;
        for round in 0..4000 {
            let len = rng.below(200);
            let der: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let mut b64 = B64.encode(&der).into_bytes();
            // Damage some: a flipped character, a dropped or an extra '=', a stray byte.
            match rng.below(8) {
                0 if !b64.is_empty() => {
                    let i = rng.below(b64.len());
                    b64[i] = alphabet[rng.below(alphabet.len())];
                }
                1 => b64.push(b'='),
                2 => {
                    b64.pop();
                }
                3 if !b64.is_empty() => {
                    let i = rng.below(b64.len());
                    b64.insert(i, [b'\r', b' ', b'\t', b':', b'-', b'\n'][rng.below(6)]);
                }
                _ => {}
            }
            let width = [64, 76, 1, 3, 4, 1000][rng.below(6)];
            let eol: &[u8] = [&b"\n"[..], b"\r\n"][rng.below(2)];
            let mut block = b"-----BEGIN CERTIFICATE-----".to_vec();
            block.extend_from_slice(eol);
            for line in b64.chunks(width) {
                block.extend_from_slice(line);
                block.extend_from_slice(if rng.below(20) == 0 { b"\n\n" } else { eol });
            }
            block.extend_from_slice(b"-----END CERTIFICATE-----");
            block.extend_from_slice(eol);
            let ours = decode(&block).map(|(b, _)| b.der);
            assert_eq!(ours, reference(&block), "round {round}: {:?}", String::from_utf8_lossy(&block));
            let body_start = block.iter().position(|&c| c == b'\n').unwrap_or(0);
            let body_end = block.len() - b"-----END CERTIFICATE-----".len() - eol.len();
            if decode_plain_body(&block[body_start..body_end]).is_some() {
                fast_taken += 1;
            }
        }
        assert!(fast_taken > 1500, "the fast path was taken {fast_taken} times");
    }

    #[test]
    fn encode_matches_the_pem_crate_and_round_trips() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 95, 96, 97, 300, 1000] {
            let der: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let cfg = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
            let expected = pem::encode_config(&pem::Pem::new("CERTIFICATE", der.clone()), cfg).into_bytes();
            let ours = encode("CERTIFICATE", &der);
            assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&expected), "length {len}");
            let (block, rest) = decode(&ours).unwrap();
            assert_eq!((block.label.as_str(), block.der, rest), ("CERTIFICATE", der, &[][..]));
        }
    }
}
