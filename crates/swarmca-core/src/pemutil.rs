//! PEM scanning with Go's `encoding/pem` block-finding rules.
//!
//! Go's `pem.Decode` looks for `-----BEGIN ` at the start of the input or of a line, skips
//! anything before it, and when a candidate block is malformed keeps searching after it. The
//! base64 decoding of a located block is left to the `pem` crate.

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
    hay.windows(needle.len()).position(|w| w == needle)
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
    let parsed = pem::parse(data.get(start..end)?).ok()?;
    if parsed.tag() != label {
        return None;
    }
    Some((Block { label: label.to_string(), der: parsed.into_contents() }, end))
}

/// Encodes a block the way Go's `pem.EncodeToMemory` does (LF, 64-column lines, no headers).
pub(crate) fn encode(label: &str, der: &[u8]) -> Vec<u8> {
    let cfg = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der.to_vec()), cfg).into_bytes()
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
